//! Turning an extracted answer into a comparable value: strip LaTeX and formatting noise, then read it as an exact
//! rational when it is a number (`1,200`, `$18.00`, `-3`, `25%`, `3/4`, `\frac{3}{4}`, `2\frac{1}{2}`, `18 dollars`).

use crate::rational::Rational;

/// Longest literal the answer parser reads; longer digit strings are not plausible answers and would only cost time.
const MAX_DIGITS: usize = 200;

/// Removes LaTeX wrappers and formatting that never change a value.
pub fn normalize(answer: &str) -> String {
    let mut s = answer.trim().to_string();
    for wrapper in [
        "\\text", "\\textbf", "\\textrm", "\\mathrm", "\\mathbf", "\\mbox", "\\boxed",
    ] {
        s = unwrap_command(&s, wrapper);
    }
    for (from, to) in [
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("\\left", ""),
        ("\\right", ""),
        ("\\displaystyle", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", " "),
        ("\\:", " "),
        ("\\ ", " "),
        ("~", " "),
        ("\\$", ""),
        ("$", ""),
        ("\\%", "%"),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("°", ""),
        ("\u{2212}", "-"),
        ("\u{2013}", "-"),
    ] {
        if s.contains(from) {
            s = s.replace(from, to);
        }
    }
    // `x = 5`, `16 - 7 = 9`: the value is the right-hand side.
    if let Some(i) = s.rfind('=') {
        s = s[i + 1..].to_string();
    }
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    s.trim_end_matches(['.', ' '])
        .trim_start_matches(':')
        .trim()
        .to_string()
}

/// Replaces `\cmd{X}` by `X` (innermost braces matched), everywhere in `s`.
fn unwrap_command(s: &str, cmd: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(cmd) {
        let after = &rest[i + cmd.len()..];
        // `\textbf` must not be taken for `\text` followed by `bf`.
        if after.starts_with(|c: char| c.is_ascii_alphabetic()) {
            out.push_str(&rest[..i + cmd.len()]);
            rest = after;
            continue;
        }
        let body = after.trim_start();
        match body
            .strip_prefix('{')
            .and_then(|b| balanced_prefix(b).map(|end| (b, end)))
        {
            Some((b, end)) => {
                out.push_str(&rest[..i]);
                out.push_str(&b[..end]);
                rest = &b[end + 1..];
            }
            None => {
                out.push_str(&rest[..i + cmd.len()]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Given text just after a `{`, the byte index of its matching `}`.
fn balanced_prefix(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// Reads a normalised answer as an exact number, or `None` if it is not one. Trailing unit words
/// (`18 dollars`, `5 cm`) are allowed; anything else after the number (more digits, operators) is not.
pub fn parse_number(normalized: &str) -> Option<Rational> {
    let s = normalized.trim();
    let s = s.strip_suffix('%').unwrap_or(s).trim_end();
    let (neg, body) = match s.strip_prefix('-').or_else(|| s.strip_prefix('+')) {
        Some(rest) => (s.starts_with('-'), rest.trim_start()),
        None => (false, s),
    };
    let (value, rest) = parse_magnitude(body)?;
    if !is_unit_suffix(rest) {
        return None;
    }
    Some(if neg { value.neg() } else { value })
}

/// A non-negative number at the start of `s`: decimal, `a/b`, `\frac{a}{b}`, `\frac12`, or a mixed number
/// `2 1/2` / `2\frac{1}{2}`. Returns the value and the unparsed rest.
fn parse_magnitude(s: &str) -> Option<(Rational, &str)> {
    if let Some(r) = parse_latex_frac(s) {
        return Some(r);
    }
    let (whole, rest) = parse_decimal_prefix(s)?;
    // Fraction `a/b` (spaces allowed around the slash).
    let after = rest.trim_start();
    if let Some(den_text) = after.strip_prefix('/') {
        let (den, rest2) = parse_decimal_prefix(den_text.trim_start())?;
        return Some((whole.div(&den, u64::MAX).ok()?, rest2));
    }
    // Mixed number: whole part followed by a proper fraction.
    if whole.is_integer() {
        if let Some((frac, rest2)) = parse_latex_frac(after).or_else(|| {
            (rest.starts_with(' '))
                .then(|| parse_simple_fraction(after))
                .flatten()
        }) {
            if !frac.is_zero() && frac < Rational::from_integer(1) {
                return Some((whole.add(&frac, u64::MAX).ok()?, rest2));
            }
        }
    }
    Some((whole, rest))
}

fn parse_simple_fraction(s: &str) -> Option<(Rational, &str)> {
    let (num, rest) = parse_decimal_prefix(s)?;
    let den_text = rest.trim_start().strip_prefix('/')?;
    let (den, rest) = parse_decimal_prefix(den_text.trim_start())?;
    Some((num.div(&den, u64::MAX).ok()?, rest))
}

/// `\frac{a}{b}` with signed decimal parts, or the shorthand `\frac12`.
fn parse_latex_frac(s: &str) -> Option<(Rational, &str)> {
    let body = s.strip_prefix("\\frac")?.trim_start();
    let (num_text, rest) = brace_group_or_digit(body)?;
    let (den_text, rest) = brace_group_or_digit(rest.trim_start())?;
    let num = parse_number(&normalize(num_text))?;
    let den = parse_number(&normalize(den_text))?;
    Some((num.div(&den, u64::MAX).ok()?, rest))
}

fn brace_group_or_digit(s: &str) -> Option<(&str, &str)> {
    if let Some(inner) = s.strip_prefix('{') {
        let end = balanced_prefix(inner)?;
        return Some((&inner[..end], &inner[end + 1..]));
    }
    let c = s.chars().next()?;
    c.is_ascii_digit().then(|| s.split_at(1))
}

/// `1,234.50` / `.5` / `18`: a decimal with optional thousands separators (groups of exactly three).
fn parse_decimal_prefix(s: &str) -> Option<(Rational, &str)> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut digits = String::new();
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_digit() {
            digits.push(c as char);
            i += 1;
        } else if c == b','
            && !digits.is_empty()
            && b.len() >= i + 4
            && b[i + 1..i + 4].iter().all(u8::is_ascii_digit)
            && b.get(i + 4).is_none_or(|d| !d.is_ascii_digit())
        {
            i += 1;
        } else {
            break;
        }
    }
    let mut frac = String::new();
    if i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            frac.push(b[i] as char);
            i += 1;
        }
    }
    if digits.is_empty() && frac.is_empty() {
        return None;
    }
    let text = if frac.is_empty() {
        digits
    } else {
        format!("{digits}.{frac}")
    };
    Some((Rational::parse_decimal(&text, MAX_DIGITS)?, &s[i..]))
}

/// Unit words after a number: letters, spaces, `/`, `^`, and punctuation, but no digits or operators.
fn is_unit_suffix(rest: &str) -> bool {
    let rest = rest.trim();
    rest.is_empty()
        || (rest.len() <= 40
            && rest
                .starts_with(|c: char| c.is_alphabetic() || c == '%' || c == '\'' || c == '\u{a2}')
            && rest
                .chars()
                .all(|c| c.is_alphabetic() || matches!(c, ' ' | '.' | '/' | '\'' | '%' | '\u{a2}')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(s: &str) -> Option<String> {
        parse_number(&normalize(s)).map(|r| r.to_string())
    }

    #[test]
    fn numbers() {
        assert_eq!(num("1,200").as_deref(), Some("1200"));
        assert_eq!(num("$18.00").as_deref(), Some("18"));
        assert_eq!(num("\\$18").as_deref(), Some("18"));
        assert_eq!(num("-3").as_deref(), Some("-3"));
        assert_eq!(num("\u{2212}3").as_deref(), Some("-3"));
        assert_eq!(num("25\\%").as_deref(), Some("25"));
        assert_eq!(num("3/4").as_deref(), Some("3/4"));
        assert_eq!(num("\\frac{3}{4}").as_deref(), Some("3/4"));
        assert_eq!(num("\\dfrac{-6}{4}").as_deref(), Some("-3/2"));
        assert_eq!(num("-\\frac{1}{2}").as_deref(), Some("-1/2"));
        assert_eq!(num("\\frac12").as_deref(), Some("1/2"));
        assert_eq!(num("2\\frac{1}{2}").as_deref(), Some("5/2"));
        assert_eq!(num("2 1/2").as_deref(), Some("5/2"));
        assert_eq!(num("18 \\text{ dollars}").as_deref(), Some("18"));
        assert_eq!(num("\\text{18 dollars}").as_deref(), Some("18"));
        assert_eq!(num("x = 5").as_deref(), Some("5"));
        assert_eq!(num("90^\\circ").as_deref(), Some("90"));
        assert_eq!(num("18.").as_deref(), Some("18"));
        assert_eq!(num("0.5").as_deref(), Some("1/2"));
        assert_eq!(num("18 or 20"), None);
        assert_eq!(num("1, 2"), None);
        assert_eq!(num("\\sqrt{2}"), None);
        assert_eq!(num("3/0"), None);
        assert_eq!(num(""), None);
    }

    #[test]
    fn unwraps_text_commands() {
        assert_eq!(unwrap_command("\\text{a}b\\text{c}", "\\text"), "abc");
        assert_eq!(unwrap_command("\\textbf{a}", "\\text"), "\\textbf{a}");
        assert_eq!(
            unwrap_command("\\text{unclosed", "\\text"),
            "\\text{unclosed"
        );
        assert_eq!(normalize(" \\left( 3 \\right). "), "( 3 )");
    }
}
