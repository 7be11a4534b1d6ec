//! Finding the final answer in a completion: the last complete `\boxed{...}`, else the text after the last `####`,
//! else (if configured) the last number. Everything here is linear in the completion length, so a 1 MB completion
//! full of unclosed braces costs milliseconds.

alp_macros::string_enum! {
    /// What to do when a completion has neither `\boxed{}` nor `####`.
    pub enum FinalNumberRule {
        /// No answer: the completion scores wrong.
        None => "none",
        /// The last number in the text (`1,234.5`, `-3`, `3/4`, `25%`).
        LastNumber => "last_number",
    }
}

alp_macros::string_enum! {
    /// Where the answer was found.
    pub enum Method {
        Boxed => "boxed",
        Hashes => "hashes",
        LastNumber => "last_number",
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    pub text: String,
    pub method: Method,
}

/// The part of a completion that holds the answer: after the last `</think>` (reasoning models put drafts in
/// the thinking block).
pub fn answer_region(completion: &str) -> &str {
    match completion.rfind("</think>") {
        Some(i) => &completion[i + "</think>".len()..],
        None => completion,
    }
}

/// Extracts the final answer text from a completion (see the module doc for the order of rules).
pub fn extract_answer(completion: &str, rule: FinalNumberRule) -> Option<Extracted> {
    let text = answer_region(completion);
    if let Some(b) = last_boxed(text) {
        return Some(Extracted {
            text: b.to_string(),
            method: Method::Boxed,
        });
    }
    if let Some(h) = after_last_hashes(text) {
        return Some(Extracted {
            text: h.to_string(),
            method: Method::Hashes,
        });
    }
    match rule {
        FinalNumberRule::None => None,
        FinalNumberRule::LastNumber => last_number(text).map(|n| Extracted {
            text: n.to_string(),
            method: Method::LastNumber,
        }),
    }
}

/// For each `{` at byte `i`, the byte index of its matching `}` (escaped `\{`, `\}` are ignored). One pass with a
/// stack, so every lookup afterwards is O(1).
fn matching_braces(s: &[u8]) -> Vec<Option<usize>> {
    let mut close = vec![None; s.len()];
    let mut stack = Vec::new();
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'\\' if i + 1 < s.len() && (s[i + 1] == b'{' || s[i + 1] == b'}') => i += 1,
            b'{' => stack.push(i),
            b'}' => {
                if let Some(open) = stack.pop() {
                    close[open] = Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    close
}

/// Content of the last complete `\boxed{...}` or `\fbox{...}` (nested braces allowed); `\boxed 5` without braces
/// takes the next word. An unclosed last box is skipped in favour of an earlier complete one.
pub fn last_boxed(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    let mut starts: Vec<(usize, usize)> = Vec::new();
    for cmd in ["\\boxed", "\\fbox"] {
        starts.extend(text.match_indices(cmd).map(|(i, m)| (i, i + m.len())));
    }
    if starts.is_empty() {
        return None;
    }
    starts.sort_unstable();
    let close = matching_braces(bytes);
    for &(_, after) in starts.iter().rev() {
        let mut j = after;
        while j < bytes.len() && bytes[j] == b' ' {
            j += 1;
        }
        if j < bytes.len() && bytes[j] == b'{' {
            if let Some(end) = close[j] {
                return Some(&text[j + 1..end]);
            }
        } else if j > after && j < bytes.len() {
            // `\boxed 42`: the word up to whitespace or `$`.
            let end = text[j..]
                .find(|c: char| c.is_whitespace() || c == '$')
                .map_or(text.len(), |k| j + k);
            if end > j {
                return Some(&text[j..end]);
            }
        }
    }
    None
}

/// The rest of the line after the last `####`, if not empty.
pub fn after_last_hashes(text: &str) -> Option<&str> {
    let i = text.rfind("####")?;
    let rest = text[i + 4..].trim_start_matches('#');
    let line = rest.split('\n').next().unwrap_or("").trim();
    (!line.is_empty()).then_some(line)
}

/// The last number in the text, with its sign, thousands separators, decimals, a `/denominator` and a `%`.
pub fn last_number(text: &str) -> Option<&str> {
    let b = text.as_bytes();
    let digits_left = |to: usize| {
        b[..to]
            .iter()
            .rev()
            .take_while(|c| c.is_ascii_digit())
            .count()
    };
    let digits_right = |from: usize| b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    let end = b.iter().rposition(|c| c.is_ascii_digit())? + 1;
    let mut start = end - digits_left(end);
    let (mut seen_point, mut seen_slash, mut seen_comma) = (false, false, false);
    // Grow leftwards over a separator only when digits sit on both sides and the token stays one number:
    // a comma must head a group of exactly three digits and follow at most three.
    while start >= 2 && b[start - 2].is_ascii_digit() {
        let left = digits_left(start - 1);
        let ok = match b[start - 1] {
            b',' => digits_right(start) == 3 && left <= 3 && !seen_slash,
            b'.' => !seen_point && !seen_comma && !seen_slash,
            b'/' => !seen_slash,
            _ => false,
        };
        if !ok {
            break;
        }
        match b[start - 1] {
            b',' => seen_comma = true,
            b'.' => seen_point = true,
            _ => seen_slash = true,
        }
        start -= 1 + left;
    }
    if start > 0 && b[start - 1] == b'-' && (start < 2 || !b[start - 2].is_ascii_alphanumeric()) {
        start -= 1;
    }
    let end = if end < b.len() && b[end] == b'%' {
        end + 1
    } else {
        end
    };
    Some(&text[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxed_nested_and_last() {
        assert_eq!(last_boxed(r"so \boxed{\frac{1}{2}}"), Some(r"\frac{1}{2}"));
        assert_eq!(last_boxed(r"\boxed{1} then \boxed{2}"), Some("2"));
        assert_eq!(last_boxed(r"\boxed{1} then \boxed{2"), Some("1"));
        assert_eq!(last_boxed(r"\boxed 7 done"), Some("7"));
        assert_eq!(last_boxed(r"\fbox{9}"), Some("9"));
        assert_eq!(last_boxed(r"\boxed{\{1,2\}}"), Some(r"\{1,2\}"));
        assert_eq!(last_boxed("no box"), None);
        assert_eq!(last_boxed(r"\boxed"), None);
    }

    #[test]
    fn hashes_and_last_number() {
        assert_eq!(after_last_hashes("a\n#### 18\n"), Some("18"));
        assert_eq!(after_last_hashes("#### 1\n#### 2 apples"), Some("2 apples"));
        assert_eq!(after_last_hashes("####   "), None);
        assert_eq!(last_number("it is 1,234.5 today."), Some("1,234.5"));
        assert_eq!(last_number("numbers 3,4,5"), Some("5"));
        assert_eq!(last_number("5-3"), Some("3"));
        assert_eq!(last_number("total: -3"), Some("-3"));
        assert_eq!(last_number("about 3/4 of it"), Some("3/4"));
        assert_eq!(last_number("up 25% now"), Some("25%"));
        assert_eq!(last_number("1234,567"), Some("567"));
        assert_eq!(last_number("12,345,678 ok"), Some("12,345,678"));
        assert_eq!(last_number("x-1.5"), Some("1.5"));
        assert_eq!(last_number("(-2)"), Some("-2"));
        assert_eq!(last_number("none"), None);
    }

    #[test]
    fn thinking_is_ignored() {
        let c = "<think>maybe \\boxed{3}</think> The answer is 4";
        let e = extract_answer(c, FinalNumberRule::LastNumber).unwrap();
        assert_eq!((e.text.as_str(), e.method), ("4", Method::LastNumber));
        assert_eq!(extract_answer(c, FinalNumberRule::None), None);
    }
}
