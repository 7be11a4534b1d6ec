//! [`ProcessGroup::agree`]: ranks check, before training together, that they share what they must.
use crate::error::{DistError, Result};
use crate::group::ProcessGroup;

/// Longest value quoted in a disagreement message (digests are short; a whole config is cut).
const QUOTE: usize = 160;

fn encode(items: &[(&str, &str)]) -> Vec<u8> {
    let mut out = String::new();
    for (key, value) in items {
        // Debug-quoted: no raw newline or tab survives, so lines and fields split cleanly.
        out.push_str(&format!("{key:?}\t{value:?}\n"));
    }
    out.into_bytes()
}

fn decode(bytes: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn quote(v: &str) -> String {
    if v.chars().count() <= QUOTE {
        v.to_string()
    } else {
        format!("{}...\"", v.chars().take(QUOTE).collect::<String>())
    }
}

/// Every difference between rank 0's items and the others', one phrase each.
fn differences(all: &[Vec<(String, String)>]) -> Vec<String> {
    let reference = &all[0];
    let mut out = Vec::new();
    for (rank, items) in all.iter().enumerate().skip(1) {
        for (key, value) in reference {
            match items.iter().find(|(k, _)| k == key) {
                None => out.push(format!(
                    "rank {rank} has no {key} (rank 0 has {})",
                    quote(value)
                )),
                Some((_, v)) if v != value => out.push(format!(
                    "{key}: rank {rank} has {}, rank 0 has {}",
                    quote(v),
                    quote(value)
                )),
                Some(_) => {}
            }
        }
        for (key, value) in items {
            if !reference.iter().any(|(k, _)| k == key) {
                out.push(format!(
                    "rank {rank} has {key} = {} that rank 0 has not",
                    quote(value)
                ));
            }
        }
    }
    out
}

impl ProcessGroup {
    /// Checks that every rank passed the same `(name, value)` items (a config digest, the binary's
    /// version, the model's digest, the world size, ...): `Ok` on every rank when they agree, else
    /// the same [`DistError::Disagreement`] on every rank, naming each item that differs from rank
    /// 0's and the ranks' values. One `all_gather_bytes`.
    pub fn agree(&self, items: &[(&str, &str)]) -> Result<()> {
        let all: Vec<Vec<(String, String)>> = self
            .all_gather_bytes(&encode(items))?
            .iter()
            .map(|b| decode(b))
            .collect();
        let diffs = differences(&all);
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(DistError::Disagreement(diffs.join("; ")))
        }
    }
}
