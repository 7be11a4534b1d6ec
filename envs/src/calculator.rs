//! A safe exact calculator for untrusted expressions (model output): `+ - * / ^` (also `**`, `×`, `÷`), unary
//! minus, parentheses, decimals. Hard limits on input length, nesting depth, literal size, exponent and result
//! size make every evaluation take bounded time and memory; recursion is bounded by the depth limit, so 10,000
//! nested parentheses are an error, not a stack overflow.

use serde::{Deserialize, Serialize};

use crate::rational::{abbreviate, Rational, RationalError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Longest expression accepted, in characters.
    pub max_len: usize,
    /// Deepest nesting of parentheses, unary signs and powers.
    pub max_depth: usize,
    /// Most digits in one literal.
    pub max_literal_digits: usize,
    /// Largest value (numerator plus denominator bits) of any intermediate result.
    pub max_bits: u64,
    /// Largest absolute exponent.
    pub max_exponent: u64,
    /// Most work for one expression, in estimated machine-word operations (see [`op_cost`]): the size
    /// limits alone admit expressions that take minutes (thousands of operations on numbers near
    /// `max_bits`), so the total work is bounded too.
    pub max_work: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_len: 1000,
            max_depth: 64,
            max_literal_digits: 100,
            max_bits: 4096,
            max_exponent: 4096,
            max_work: DEFAULT_MAX_WORK,
        }
    }
}

/// The default [`Limits::max_work`]: about a second of arithmetic at worst.
pub const DEFAULT_MAX_WORK: u64 = 1 << 30;

/// Estimated word operations of `a op b`, computed from the operands' sizes before the operation runs.
/// The result of `a op b` has about `bits(a) + bits(b)` bits (`e * bits(a)` for a power); multiplying
/// is quadratic in its words, and reducing a fraction (a binary gcd) about 64 times that.
/// A power the size checks of [`Rational::pow`] refuse (exponent or estimated result too large) costs
/// nothing here, so it is refused for its own, clearer reason.
fn op_cost(op: Op, a: &Rational, b: &Rational, limits: &Limits) -> u64 {
    let bits = match op {
        Op::Pow => match b.to_i64().map(i64::unsigned_abs) {
            Some(e) if e <= limits.max_exponent => e
                .saturating_mul(a.bits())
                .min(limits.max_bits.saturating_mul(2)),
            _ => 0,
        },
        _ => a.bits().saturating_add(b.bits()),
    };
    let words = bits / 64 + 1;
    let integer = a.is_integer()
        && b.is_integer()
        && match op {
            Op::Div => false,
            Op::Pow => !b.is_negative(),
            _ => true,
        };
    let square = words.saturating_mul(words);
    if integer {
        square
    } else {
        square.saturating_mul(64)
    }
}

/// Which constructs are allowed: the calculator tool takes everything, the Countdown checker only integers and
/// the four operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grammar {
    pub decimals: bool,
    pub power: bool,
    pub unary_minus: bool,
    /// Refuse any operation whose result is not an integer (Countdown's strict rule).
    pub integer_intermediates: bool,
}

impl Grammar {
    pub const FULL: Grammar = Grammar {
        decimals: true,
        power: true,
        unary_minus: true,
        integer_intermediates: false,
    };
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalcError {
    #[error("the expression is empty")]
    Empty,
    #[error("the expression is {len} characters long; the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("the expression nests deeper than {max} levels")]
    TooDeep { max: usize },
    #[error("unexpected character {ch:?} at position {pos}; allowed: digits, . + - * / ^ ( ) and spaces")]
    UnexpectedChar { ch: char, pos: usize },
    #[error("{what} is not allowed here (position {pos})")]
    NotAllowed { what: &'static str, pos: usize },
    #[error("expected {expected} at position {pos}, found {found}")]
    Expected {
        expected: &'static str,
        found: String,
        pos: usize,
    },
    #[error("a number at position {pos} has more than {max} digits")]
    LiteralTooLong { pos: usize, max: usize },
    #[error("malformed number {text:?} at position {pos}")]
    BadNumber { text: String, pos: usize },
    #[error("{what} at position {pos} gives {value}, which is not an integer")]
    NonInteger {
        what: &'static str,
        value: String,
        pos: usize,
    },
    #[error("{source} (at position {pos})")]
    Arithmetic { source: RationalError, pos: usize },
    #[error("the expression needs too much computation (the operation at position {pos} exceeds the work limit of {max} word operations); use smaller numbers or fewer operations")]
    TooMuchWork { max: u64, pos: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(Rational),
    Op(Op),
    Open,
    Close,
}

/// The outcome of an evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub value: Rational,
    /// Every literal in the order written (Countdown checks them against the given numbers).
    pub literals: Vec<Rational>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Calculator {
    pub limits: Limits,
    pub grammar: Grammar,
}

impl Default for Calculator {
    fn default() -> Self {
        Calculator {
            limits: Limits::default(),
            grammar: Grammar::FULL,
        }
    }
}

impl Calculator {
    pub fn new(limits: Limits, grammar: Grammar) -> Self {
        Calculator { limits, grammar }
    }

    pub fn evaluate(&self, expr: &str) -> Result<Evaluation, CalcError> {
        let len = expr.chars().count();
        if len > self.limits.max_len {
            return Err(CalcError::TooLong {
                len,
                max: self.limits.max_len,
            });
        }
        let toks = self.lex(expr)?;
        if toks.is_empty() {
            return Err(CalcError::Empty);
        }
        let mut p = Parser {
            toks: &toks,
            at: 0,
            calc: self,
            literals: Vec::new(),
            work: 0,
        };
        let value = p.expr(0)?;
        if let Some((pos, t)) = toks.get(p.at) {
            return Err(CalcError::Expected {
                expected: "an operator or the end",
                found: describe(t),
                pos: *pos,
            });
        }
        Ok(Evaluation {
            value,
            literals: p.literals,
        })
    }

    fn lex(&self, s: &str) -> Result<Vec<(usize, Tok)>, CalcError> {
        let g = self.grammar;
        let chars: Vec<char> = s.chars().collect();
        let mut out = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            let pos = i;
            i += 1;
            let tok = match c {
                ' ' | '\t' | '\n' | '\r' => continue,
                '0'..='9' | '.' => {
                    let mut text = String::from(c);
                    while i < chars.len() {
                        let d = chars[i];
                        // A comma counts as a thousands separator only before exactly three digits.
                        let group = d == ','
                            && chars
                                .get(i + 1..i + 4)
                                .is_some_and(|g| g.iter().all(char::is_ascii_digit))
                            && !chars.get(i + 4).is_some_and(char::is_ascii_digit);
                        if d.is_ascii_digit() || d == '.' {
                            text.push(d);
                        } else if !group {
                            break;
                        }
                        i += 1;
                        if text.len() > self.limits.max_literal_digits + 1 {
                            return Err(CalcError::LiteralTooLong {
                                pos,
                                max: self.limits.max_literal_digits,
                            });
                        }
                    }
                    if text.contains('.') && !g.decimals {
                        return Err(CalcError::NotAllowed {
                            what: "a decimal number",
                            pos,
                        });
                    }
                    let v = Rational::parse_decimal(&text, self.limits.max_literal_digits)
                        .ok_or(CalcError::BadNumber { text, pos })?;
                    Tok::Num(v)
                }
                '+' => Tok::Op(Op::Add),
                '-' | '\u{2212}' => Tok::Op(Op::Sub),
                '*' if chars.get(i) == Some(&'*') => {
                    i += 1;
                    Tok::Op(Op::Pow)
                }
                '*' | '\u{d7}' | '\u{b7}' => Tok::Op(Op::Mul),
                '/' | '\u{f7}' => Tok::Op(Op::Div),
                '^' => Tok::Op(Op::Pow),
                '(' => Tok::Open,
                ')' => Tok::Close,
                ch => return Err(CalcError::UnexpectedChar { ch, pos }),
            };
            if tok == Tok::Op(Op::Pow) && !g.power {
                return Err(CalcError::NotAllowed {
                    what: "a power",
                    pos,
                });
            }
            out.push((pos, tok));
        }
        Ok(out)
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Num(v) => format!("the number {}", abbreviate(&v.to_string(), 20)),
        Tok::Op(op) => format!("the operator {:?}", op).to_lowercase(),
        Tok::Open => "'('".into(),
        Tok::Close => "')'".into(),
    }
}

struct Parser<'a> {
    toks: &'a [(usize, Tok)],
    at: usize,
    calc: &'a Calculator,
    literals: Vec<Rational>,
    /// Work spent so far ([`op_cost`] summed).
    work: u64,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at).map(|(_, t)| t)
    }

    fn pos(&self) -> usize {
        self.toks
            .get(self.at)
            .map_or_else(|| self.toks.last().map_or(0, |(p, _)| p + 1), |(p, _)| *p)
    }

    fn enter(&self, depth: usize) -> Result<usize, CalcError> {
        if depth >= self.calc.limits.max_depth {
            return Err(CalcError::TooDeep {
                max: self.calc.limits.max_depth,
            });
        }
        Ok(depth + 1)
    }

    /// expr := term (('+' | '-') term)*
    fn expr(&mut self, depth: usize) -> Result<Rational, CalcError> {
        let mut acc = self.term(depth)?;
        while let Some(Tok::Op(op @ (Op::Add | Op::Sub))) = self.peek().cloned() {
            let pos = self.pos();
            self.at += 1;
            let rhs = self.term(depth)?;
            acc = self.apply(op, &acc, &rhs, pos)?;
        }
        Ok(acc)
    }

    /// term := unary (('*' | '/') unary)*
    fn term(&mut self, depth: usize) -> Result<Rational, CalcError> {
        let mut acc = self.unary(depth)?;
        while let Some(Tok::Op(op @ (Op::Mul | Op::Div))) = self.peek().cloned() {
            let pos = self.pos();
            self.at += 1;
            let rhs = self.unary(depth)?;
            acc = self.apply(op, &acc, &rhs, pos)?;
        }
        Ok(acc)
    }

    /// unary := ('-' | '+') unary | power  (so `-2^2` is `-(2^2)`, as in mathematics and Python)
    fn unary(&mut self, depth: usize) -> Result<Rational, CalcError> {
        match self.peek() {
            Some(Tok::Op(op @ (Op::Sub | Op::Add))) => {
                let (neg, pos) = (*op == Op::Sub, self.pos());
                if !self.calc.grammar.unary_minus {
                    return Err(CalcError::NotAllowed {
                        what: "a unary sign",
                        pos,
                    });
                }
                self.at += 1;
                let v = self.unary(self.enter(depth)?)?;
                Ok(if neg { v.neg() } else { v })
            }
            _ => self.power(depth),
        }
    }

    /// power := atom ('^' unary)?  (right-associative: `2^3^2` is `2^(3^2)`)
    fn power(&mut self, depth: usize) -> Result<Rational, CalcError> {
        let base = self.atom(depth)?;
        if let Some(Tok::Op(Op::Pow)) = self.peek() {
            let pos = self.pos();
            self.at += 1;
            let exp = self.unary(self.enter(depth)?)?;
            return self.apply(Op::Pow, &base, &exp, pos);
        }
        Ok(base)
    }

    /// atom := number | '(' expr ')'
    fn atom(&mut self, depth: usize) -> Result<Rational, CalcError> {
        let pos = self.pos();
        match self.toks.get(self.at).map(|(_, t)| t.clone()) {
            Some(Tok::Num(v)) => {
                self.at += 1;
                self.literals.push(v.clone());
                Ok(v)
            }
            Some(Tok::Open) => {
                self.at += 1;
                let v = self.expr(self.enter(depth)?)?;
                match self.peek() {
                    Some(Tok::Close) => {
                        self.at += 1;
                        Ok(v)
                    }
                    other => Err(CalcError::Expected {
                        expected: "')'",
                        found: other.map_or_else(|| "the end".to_string(), describe),
                        pos: self.pos(),
                    }),
                }
            }
            Some(t) => Err(CalcError::Expected {
                expected: "a number or '('",
                found: describe(&t),
                pos,
            }),
            None => Err(CalcError::Expected {
                expected: "a number or '('",
                found: "the end".into(),
                pos,
            }),
        }
    }

    fn apply(
        &mut self,
        op: Op,
        a: &Rational,
        b: &Rational,
        pos: usize,
    ) -> Result<Rational, CalcError> {
        let l = &self.calc.limits;
        self.work = self.work.saturating_add(op_cost(op, a, b, l));
        if self.work > l.max_work {
            return Err(CalcError::TooMuchWork {
                max: l.max_work,
                pos,
            });
        }
        let r = match op {
            Op::Add => a.add(b, l.max_bits),
            Op::Sub => a.sub(b, l.max_bits),
            Op::Mul => a.mul(b, l.max_bits),
            Op::Div => a.div(b, l.max_bits),
            Op::Pow => a.pow(b, l.max_bits, l.max_exponent),
        }
        .map_err(|source| CalcError::Arithmetic { source, pos })?;
        if self.calc.grammar.integer_intermediates && !r.is_integer() {
            let what = match op {
                Op::Div => "a division",
                Op::Pow => "a power",
                _ => "an operation",
            };
            return Err(CalcError::NonInteger {
                what,
                value: r.to_string(),
                pos,
            });
        }
        Ok(r)
    }
}

/// How the calculator tool shows a result: an integer, a finite decimal, or an exact fraction with an
/// approximation.
pub fn format_value(v: &Rational) -> String {
    if let Some(d) = v.to_exact_decimal(20) {
        return d;
    }
    format!("{v} (approximately {})", approx(v))
}

fn approx(v: &Rational) -> String {
    let f = v.to_f64();
    if f.is_finite() {
        format!("{f:.12}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        "out of floating-point range".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(s: &str) -> Result<String, CalcError> {
        Calculator::default()
            .evaluate(s)
            .map(|e| format_value(&e.value))
    }

    #[test]
    fn evaluates_exactly() {
        assert_eq!(eval("1 + 2 * 3").unwrap(), "7");
        assert_eq!(eval("(1 + 2) * 3").unwrap(), "9");
        assert_eq!(eval("7 / 2").unwrap(), "3.5");
        assert_eq!(eval("1/3 + 1/3 + 1/3").unwrap(), "1");
        assert_eq!(eval("2^3^2").unwrap(), "512");
        assert_eq!(eval("2**10").unwrap(), "1024");
        assert_eq!(eval("-2^2").unwrap(), "-4");
        assert_eq!(eval("2^-2").unwrap(), "0.25");
        assert_eq!(eval("1,200 * 3").unwrap(), "3600");
        assert_eq!(eval("0.1 + 0.2").unwrap(), "0.3");
        assert_eq!(eval("12 × 3 ÷ 4").unwrap(), "9");
        assert_eq!(eval("10 - -3").unwrap(), "13");
        assert_eq!(eval("1/3").unwrap(), "1/3 (approximately 0.333333333333)");
    }

    #[test]
    fn refuses_with_reasons() {
        assert_eq!(eval(""), Err(CalcError::Empty));
        assert!(matches!(
            eval("1/0"),
            Err(CalcError::Arithmetic {
                source: RationalError::DivisionByZero,
                ..
            })
        ));
        assert!(matches!(eval("9^9^9^9"), Err(CalcError::Arithmetic { .. })));
        assert!(matches!(
            eval("2 + x"),
            Err(CalcError::UnexpectedChar { ch: 'x', pos: 4 })
        ));
        assert!(matches!(eval("(1 + 2"), Err(CalcError::Expected { .. })));
        assert!(matches!(eval("1 2"), Err(CalcError::Expected { .. })));
        assert!(matches!(eval("1.2.3"), Err(CalcError::BadNumber { .. })));
        let deep = format!("{}1{}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(matches!(eval(&deep), Err(CalcError::TooLong { .. })));
        let calc = Calculator::new(
            Limits {
                max_len: 100_000,
                ..Limits::default()
            },
            Grammar::FULL,
        );
        assert!(matches!(
            calc.evaluate(&deep),
            Err(CalcError::TooDeep { max: 64 })
        ));
        assert!(matches!(
            eval(&"9".repeat(200)),
            Err(CalcError::LiteralTooLong { .. })
        ));
        let e = eval("3 % 2").unwrap_err().to_string();
        assert!(e.contains("'%'") && e.contains("allowed"), "{e}");
    }

    #[test]
    fn countdown_grammar() {
        let g = Grammar {
            decimals: false,
            power: false,
            unary_minus: false,
            integer_intermediates: true,
        };
        let c = Calculator::new(Limits::default(), g);
        let e = c.evaluate("(100 - 4) / 8 * 3").unwrap();
        assert_eq!(e.value, Rational::from_integer(36));
        assert_eq!(e.literals.len(), 4);
        assert!(matches!(
            c.evaluate("7 / 2 * 2"),
            Err(CalcError::NonInteger { .. })
        ));
        assert!(matches!(
            c.evaluate("-3 + 5"),
            Err(CalcError::NotAllowed { .. })
        ));
        assert!(matches!(
            c.evaluate("2^3"),
            Err(CalcError::NotAllowed { .. })
        ));
        assert!(matches!(
            c.evaluate("1.5 * 2"),
            Err(CalcError::NotAllowed { .. })
        ));
    }
}
