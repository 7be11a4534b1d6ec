//! Math answer checking: extract the final answer from a completion, normalise it, compare exactly with the gold.

pub mod extract;
pub mod normalize;

pub use extract::{extract_answer, Extracted, FinalNumberRule, Method};
pub use normalize::{normalize, parse_number};

/// Answers longer than this are never plausible and are not parsed (keeps grading linear on huge completions).
pub const MAX_ANSWER_CHARS: usize = 1000;

/// The verdict on one completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grade {
    pub correct: bool,
    /// The answer as found in the completion (before normalisation), if any.
    pub extracted: Option<String>,
    pub method: Option<Method>,
}

/// Grades `completion` against the gold answer `gold` (a number such as `1,200` or `\frac{3}{4}`, or text).
pub fn grade(completion: &str, gold: &str, rule: FinalNumberRule) -> Grade {
    match extract_answer(completion, rule) {
        None => Grade {
            correct: false,
            extracted: None,
            method: None,
        },
        Some(e) => Grade {
            correct: answers_match(&e.text, gold, e.method),
            extracted: Some(e.text),
            method: Some(e.method),
        },
    }
}

/// Exact comparison: numbers compare as rationals; when the gold is not a number, normalised texts compare
/// (spaces and case ignored). An answer after `####` may carry trailing words ("18. So she makes 18"), so its
/// first number counts when the whole line is not one.
pub fn answers_match(predicted: &str, gold: &str, method: Method) -> bool {
    if predicted.len() > MAX_ANSWER_CHARS || gold.len() > MAX_ANSWER_CHARS {
        return false;
    }
    let (pn, gn) = (normalize(predicted), normalize(gold));
    match parse_number(&gn) {
        Some(g) => {
            let p = parse_number(&pn).or_else(|| {
                if method == Method::Hashes {
                    first_number(&pn).and_then(|t| parse_number(&normalize(t)))
                } else {
                    None
                }
            });
            p == Some(g)
        }
        None => squash(&pn) == squash(&gn) && !gn.is_empty(),
    }
}

fn squash(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

/// The first number-like token (`-1,234.5`, `3/4`) in a line.
fn first_number(s: &str) -> Option<&str> {
    let start = s.find(|c: char| c.is_ascii_digit())?;
    let start = if start > 0 && s.as_bytes()[start - 1] == b'-' {
        start - 1
    } else {
        start
    };
    let len = s[start..]
        .char_indices()
        .find(|&(i, c)| {
            !(c.is_ascii_digit() || matches!(c, ',' | '.' | '/') || (i == 0 && c == '-'))
        })
        .map_or(s.len() - start, |(i, _)| i);
    Some(s[start..start + len].trim_end_matches([',', '.', '/']))
}

/// The gold answer of a GSM8K `answer` field: the text after the last `####`.
pub fn gsm8k_gold(answer: &str) -> Option<String> {
    extract::after_last_hashes(answer).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grades() {
        let g = grade(
            "so she makes \\boxed{18} dollars",
            "18",
            FinalNumberRule::None,
        );
        assert!(g.correct);
        assert_eq!(g.extracted.as_deref(), Some("18"));
        assert!(grade("#### 18. She makes 18 a day.", "18", FinalNumberRule::None).correct);
        assert!(!grade("#### 19", "18", FinalNumberRule::None).correct);
        assert!(!grade("nothing", "18", FinalNumberRule::LastNumber).correct);
        assert!(grade("\\boxed{A}", "a", FinalNumberRule::None).correct);
        assert!(!grade("\\boxed{}", "", FinalNumberRule::None).correct);
        assert_eq!(gsm8k_gold("x\n#### 1,200").as_deref(), Some("1,200"));
        assert_eq!(first_number("18. So 20"), Some("18"));
        assert_eq!(first_number("costs -1,234.5 total"), Some("-1,234.5"));
    }
}
