//! The text of the top-gap tokens: decoded with the run's own tokenizer (the latest checkpoint's, the
//! created preset's, or `model.path`'s), one token at a time so the table can mark the token itself.
use std::path::PathBuf;

use alp_tokenizer::Tokenizer;

use super::rollouts::TopToken;
use super::runs::{Problem, Run};
use crate::run_dir::RunDir;

/// Where the run's tokenizer can be, in order.
fn tokenizer_dirs(run: &Run) -> Vec<PathBuf> {
    let dir = RunDir::new(&run.root);
    let mut dirs = Vec::new();
    if let Ok(Some((checkpoint, _))) = dir.latest_checkpoint() {
        dirs.push(checkpoint.join("model"));
    }
    dirs.push(dir.initial_model());
    let config = std::fs::read_to_string(dir.config_toml())
        .ok()
        .and_then(|t| toml::from_str::<toml::Value>(&t).ok());
    if let Some(path) = config
        .as_ref()
        .and_then(|c| c.get("model")?.get("path")?.as_str().map(PathBuf::from))
    {
        dirs.push(path);
    }
    dirs
}

/// Fills in `before`, `token` and `after` of each top token; without a tokenizer they show token
/// ids and a [`Problem`] says why.
pub fn decode_context(run: &Run, top: &mut [TopToken], problems: &mut Vec<Problem>) {
    if top.is_empty() {
        return;
    }
    let dirs = tokenizer_dirs(run);
    let tokenizer = dirs
        .iter()
        .filter(|d| d.join("tokenizer.json").is_file())
        .find_map(|d| Tokenizer::from_dir(d).ok());
    if tokenizer.is_none() {
        problems.push(Problem {
            path: run.root.clone(),
            message: format!(
                "no readable tokenizer.json in {}: the mismatch table shows token ids instead of text",
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    let piece = |id: i32| -> String {
        match &tokenizer {
            Some(t) => t
                .decode(&[id.max(0) as u32], false)
                .unwrap_or_else(|_| format!("<{id}>")),
            None => format!("<{id}>"),
        }
    };
    let text = |ids: &[i32]| ids.iter().map(|&id| piece(id)).collect::<String>();
    for t in top {
        t.before = text(&t.before_ids);
        t.token = piece(t.token_id);
        t.after = text(&t.after_ids);
    }
}
