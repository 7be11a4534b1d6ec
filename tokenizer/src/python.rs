//! Python-compatible text for template values.
//!
//! Chat templates are written for Jinja2, where `{{ x }}` prints Python's `str(x)` and
//! transformers' `tojson` filter is `json.dumps(x, ensure_ascii=False, ...)`. minijinja prints
//! `true`/`none` and serialises JSON its own way, so both are reimplemented here to be byte-identical
//! to CPython (floats use `repr`, separators and indentation follow `json.dumps`).

use minijinja::value::{Value, ValueKind};
use std::fmt::Write;

/// Options of Python's `json.dumps` that transformers' `tojson` filter exposes.
#[derive(Debug, Clone, Default)]
pub struct JsonOptions {
    pub ensure_ascii: bool,
    /// `None`: single line. `Some(s)`: newline plus `s` repeated per nesting level.
    pub indent: Option<String>,
    /// `(item_separator, key_separator)`; `None` picks Python's default for the indent mode.
    pub separators: Option<(String, String)>,
    pub sort_keys: bool,
}

/// Python's `json.dumps(value, **opts)` for a minijinja value.
pub fn json_dumps(value: &Value, opts: &JsonOptions) -> Result<String, String> {
    let (item_sep, key_sep) = match &opts.separators {
        Some((i, k)) => (i.clone(), k.clone()),
        None if opts.indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let enc = JsonEncoder {
        opts,
        item_sep,
        key_sep,
    };
    let mut out = String::new();
    enc.write(&mut out, value, 0)?;
    Ok(out)
}

struct JsonEncoder<'a> {
    opts: &'a JsonOptions,
    item_sep: String,
    key_sep: String,
}

impl JsonEncoder<'_> {
    fn newline(&self, out: &mut String, level: usize) {
        if let Some(ind) = &self.opts.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    }

    fn write(&self, out: &mut String, v: &Value, level: usize) -> Result<(), String> {
        match v.kind() {
            ValueKind::Undefined => Err("Object of type Undefined is not JSON serializable".into()),
            ValueKind::None => {
                out.push_str("null");
                Ok(())
            }
            ValueKind::Bool => {
                out.push_str(if v.is_true() { "true" } else { "false" });
                Ok(())
            }
            ValueKind::Number => {
                out.push_str(&json_number(v)?);
                Ok(())
            }
            ValueKind::String => {
                json_string(out, v.as_str().unwrap_or_default(), self.opts.ensure_ascii);
                Ok(())
            }
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter().map_err(|e| e.to_string())?.collect();
                if items.is_empty() {
                    out.push_str("[]");
                    return Ok(());
                }
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(out, level + 1);
                    self.write(out, item, level + 1)?;
                }
                self.newline(out, level);
                out.push(']');
                Ok(())
            }
            ValueKind::Map => {
                let mut pairs = Vec::new();
                for key in v.try_iter().map_err(|e| e.to_string())? {
                    let val = v.get_item(&key).map_err(|e| e.to_string())?;
                    pairs.push((json_key(&key)?, val));
                }
                if pairs.is_empty() {
                    out.push_str("{}");
                    return Ok(());
                }
                if self.opts.sort_keys {
                    pairs.sort_by(|a, b| a.0.cmp(&b.0));
                }
                out.push('{');
                for (i, (key, val)) in pairs.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(out, level + 1);
                    json_string(out, key, self.opts.ensure_ascii);
                    out.push_str(&self.key_sep);
                    self.write(out, val, level + 1)?;
                }
                self.newline(out, level);
                out.push('}');
                Ok(())
            }
            other => Err(format!("Object of type {other} is not JSON serializable")),
        }
    }
}

/// Dict keys as `json.dumps` coerces them (str, int, float, bool, None).
fn json_key(key: &Value) -> Result<String, String> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_string()),
        ValueKind::Number => json_number(key),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.into()),
        ValueKind::None => Ok("null".into()),
        other => Err(format!(
            "keys must be str, int, float, bool or None, not {other}"
        )),
    }
}

fn json_number(v: &Value) -> Result<String, String> {
    if v.is_integer() {
        let n = i128::try_from(v.clone()).map_err(|e| e.to_string())?;
        return Ok(n.to_string());
    }
    let f = f64::try_from(v.clone()).map_err(|e| e.to_string())?;
    Ok(if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        float_repr(f)
    })
}

/// A JSON string literal as `json.dumps` writes it.
pub fn json_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            // ensure_ascii escapes everything outside ' '..='~', DEL included.
            c if ensure_ascii && (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// CPython's `repr(float)`: shortest round-trip digits, exponent form outside 1e-4 <= |x| < 1e16.
pub fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.into();
    }
    // Rust's `{:e}` also prints the shortest round-trip digits; only the layout differs.
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let ndigits = digits.len() as i32;
    // Python's decpt: value = 0.DIGITS * 10^decpt.
    let decpt = exp + 1;
    let body = if -4 < decpt && decpt <= 16 {
        if decpt <= 0 {
            format!("0.{}{}", "0".repeat((-decpt) as usize), digits)
        } else if decpt >= ndigits {
            format!("{}{}.0", digits, "0".repeat((decpt - ndigits) as usize))
        } else {
            let (a, b) = digits.split_at(decpt as usize);
            format!("{a}.{b}")
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let e = decpt - 1;
        let esign = if e < 0 { '-' } else { '+' };
        format!("{first}{frac}e{esign}{:02}", e.abs())
    };
    format!("{sign}{body}")
}

/// Python's `str(x)` for what a Jinja2 `{{ x }}` prints.
pub fn py_str(v: &Value) -> String {
    match v.kind() {
        ValueKind::String => v.as_str().unwrap_or_default().to_string(),
        ValueKind::Undefined => String::new(),
        _ => py_repr(v),
    }
}

/// Python's `repr(x)`: used inside containers and for non-strings.
pub fn py_repr(v: &Value) -> String {
    match v.kind() {
        ValueKind::Undefined => String::new(),
        ValueKind::None => "None".into(),
        ValueKind::Bool => if v.is_true() { "True" } else { "False" }.into(),
        ValueKind::Number => {
            if v.is_integer() {
                v.to_string()
            } else {
                f64::try_from(v.clone())
                    .map(float_repr)
                    .unwrap_or_else(|_| v.to_string())
            }
        }
        ValueKind::String => str_repr(v.as_str().unwrap_or_default()),
        ValueKind::Seq => match v.try_iter() {
            Ok(items) => {
                let parts: Vec<String> = items.map(|x| py_repr(&x)).collect();
                format!("[{}]", parts.join(", "))
            }
            Err(_) => v.to_string(),
        },
        ValueKind::Map => match v.try_iter() {
            Ok(keys) => {
                let parts: Vec<String> = keys
                    .map(|k| {
                        let val = v.get_item(&k).unwrap_or_default();
                        format!("{}: {}", py_repr(&k), py_repr(&val))
                    })
                    .collect();
                format!("{{{}}}", parts.join(", "))
            }
            Err(_) => v.to_string(),
        },
        _ => v.to_string(),
    }
}

/// Python's `repr(str)`: single quotes unless the text has `'` and no `"`.
fn str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..0xa0).contains(&(c as u32)) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_matches_cpython() {
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456789.125, "123456789.125"),
            (-2.5e-300, "-2.5e-300"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (2.675, "2.675"),
        ];
        for (f, want) in cases {
            assert_eq!(float_repr(f), want, "repr({f:e})");
        }
    }

    #[test]
    fn json_dumps_layouts() {
        let v = Value::from(minijinja::value::Serde(serde_json::json!({
            "a": [1, 2.0, "é\n"], "b": {}, "c": [], "d": null, "e": true
        })));
        let compact = json_dumps(&v, &JsonOptions::default()).unwrap();
        assert_eq!(
            compact,
            r#"{"a": [1, 2.0, "é\n"], "b": {}, "c": [], "d": null, "e": true}"#
        );
        let opts = JsonOptions {
            indent: Some("  ".into()),
            ensure_ascii: true,
            ..Default::default()
        };
        let pretty = json_dumps(&v, &opts).unwrap();
        assert_eq!(
            pretty,
            "{\n  \"a\": [\n    1,\n    2.0,\n    \"\\u00e9\\n\"\n  ],\n  \"b\": {},\n  \"c\": [],\n  \"d\": null,\n  \"e\": true\n}"
        );
    }

    #[test]
    fn py_str_of_containers() {
        let v = Value::from(minijinja::value::Serde(
            serde_json::json!({"k": [true, null, "it's", 1.0]}),
        ));
        assert_eq!(py_str(&v), r#"{'k': [True, None, "it's", 1.0]}"#);
    }
}
