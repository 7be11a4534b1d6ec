//! Exact rational numbers on big integers, used wherever an answer or a tool result must be compared or computed
//! without floating-point error. Operations take a bit budget so untrusted input cannot make a number grow without
//! bound.

use std::cmp::Ordering;
use std::fmt;

use num_bigint::{BigInt, Sign};
use num_integer::Integer;
use num_traits::{One, Signed, ToPrimitive, Zero};

/// Why an exact operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RationalError {
    #[error("division by zero")]
    DivisionByZero,
    #[error("result too large: it would need about {bits} bits, the limit is {limit}")]
    TooLarge { bits: u64, limit: u64 },
    #[error("exponent {0} is too large (the limit is {1})")]
    ExponentTooLarge(String, u64),
    #[error("exponent must be an integer, got {0}")]
    FractionalExponent(String),
    #[error("zero cannot be raised to a negative power")]
    ZeroToNegativePower,
}

/// A reduced fraction `num / den` with `den > 0`; every value has exactly one representation, so derived equality is
/// exact equality.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rational {
    num: BigInt,
    den: BigInt,
}

impl Rational {
    pub fn zero() -> Self {
        Rational {
            num: BigInt::zero(),
            den: BigInt::one(),
        }
    }

    pub fn from_integer(n: impl Into<BigInt>) -> Self {
        Rational {
            num: n.into(),
            den: BigInt::one(),
        }
    }

    /// `num / den`, reduced; `None` when `den` is zero.
    pub fn new(num: impl Into<BigInt>, den: impl Into<BigInt>) -> Option<Self> {
        let (num, den) = (num.into(), den.into());
        if den.is_zero() {
            return None;
        }
        Some(Self::reduce(num, den))
    }

    fn reduce(mut num: BigInt, mut den: BigInt) -> Self {
        if den.is_negative() {
            num = -num;
            den = -den;
        }
        if den.is_one() {
            // An integer is reduced already; the binary gcd would take time quadratic in its size.
            return Rational { num, den };
        }
        let g = num.gcd(&den);
        if !g.is_one() && !g.is_zero() {
            num /= &g;
            den /= &g;
        }
        Rational { num, den }
    }

    /// Parses a plain decimal such as `-12`, `3.50` or `.5` (no signs other than a leading `-`, no exponent).
    /// `max_digits` bounds the work done on untrusted text.
    pub fn parse_decimal(s: &str, max_digits: usize) -> Option<Self> {
        let (neg, body) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (int_part, frac_part) = match body.split_once('.') {
            Some((i, f)) => (i, f),
            None => (body, ""),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        if int_part.len() + frac_part.len() > max_digits
            || !int_part.bytes().all(|b| b.is_ascii_digit())
            || !frac_part.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let digits = format!("{int_part}{frac_part}");
        let mut num: BigInt = digits.parse().ok()?;
        if neg {
            num = -num;
        }
        let den = BigInt::from(10u32).pow(frac_part.len() as u32);
        Some(Self::reduce(num, den))
    }

    pub fn numer(&self) -> &BigInt {
        &self.num
    }

    pub fn denom(&self) -> &BigInt {
        &self.den
    }

    pub fn is_integer(&self) -> bool {
        self.den.is_one()
    }

    pub fn is_zero(&self) -> bool {
        self.num.is_zero()
    }

    pub fn is_negative(&self) -> bool {
        self.num.is_negative()
    }

    /// Bits needed to store the value: the size measure every limit is expressed in.
    pub fn bits(&self) -> u64 {
        self.num.bits() + self.den.bits()
    }

    pub fn to_f64(&self) -> f64 {
        match (self.num.to_f64(), self.den.to_f64()) {
            (Some(n), Some(d)) if n.is_finite() && d.is_finite() => n / d,
            _ => f64::NAN,
        }
    }

    pub fn to_i64(&self) -> Option<i64> {
        if self.is_integer() {
            self.num.to_i64()
        } else {
            None
        }
    }

    fn check(self, limit: u64) -> Result<Self, RationalError> {
        let bits = self.bits();
        if bits > limit {
            return Err(RationalError::TooLarge { bits, limit });
        }
        Ok(self)
    }

    pub fn neg(&self) -> Self {
        Rational {
            num: -self.num.clone(),
            den: self.den.clone(),
        }
    }

    pub fn add(&self, o: &Self, limit: u64) -> Result<Self, RationalError> {
        Self::reduce(&self.num * &o.den + &o.num * &self.den, &self.den * &o.den).check(limit)
    }

    pub fn sub(&self, o: &Self, limit: u64) -> Result<Self, RationalError> {
        self.add(&o.neg(), limit)
    }

    pub fn mul(&self, o: &Self, limit: u64) -> Result<Self, RationalError> {
        Self::reduce(&self.num * &o.num, &self.den * &o.den).check(limit)
    }

    pub fn div(&self, o: &Self, limit: u64) -> Result<Self, RationalError> {
        if o.is_zero() {
            return Err(RationalError::DivisionByZero);
        }
        Self::reduce(&self.num * &o.den, &self.den * &o.num).check(limit)
    }

    /// `self ^ exp` for an integer exponent. The size of the result is estimated *before* computing it, so
    /// `9^9^9^9` is refused in microseconds instead of exhausting memory.
    pub fn pow(&self, exp: &Self, limit: u64, max_exponent: u64) -> Result<Self, RationalError> {
        if !exp.is_integer() {
            return Err(RationalError::FractionalExponent(exp.to_string()));
        }
        let e_abs = exp.num.magnitude();
        let e = match e_abs.to_u64() {
            Some(e) if e <= max_exponent => e,
            _ => {
                return Err(RationalError::ExponentTooLarge(
                    abbreviate(&exp.to_string(), 40),
                    max_exponent,
                ))
            }
        };
        if self.is_zero() && exp.is_negative() {
            return Err(RationalError::ZeroToNegativePower);
        }
        // |num|, den are 0, 1 or grow: the result needs about e * (bits(num) - 1 + bits(den) - 1) bits.
        let unit = |b: &BigInt| {
            if b.magnitude().is_one() || b.is_zero() {
                0
            } else {
                b.bits()
            }
        };
        let estimate = e.saturating_mul(unit(&self.num).saturating_add(unit(&self.den)));
        if estimate > limit.saturating_add(2 * e) {
            return Err(RationalError::TooLarge {
                bits: estimate,
                limit,
            });
        }
        let e32 = u32::try_from(e)
            .map_err(|_| RationalError::ExponentTooLarge(e.to_string(), max_exponent))?;
        let (n, d) = (self.num.pow(e32), self.den.pow(e32));
        let r = if exp.is_negative() {
            Self::reduce(d, n)
        } else {
            Self::reduce(n, d)
        };
        r.check(limit)
    }

    /// A decimal rendering when the value has a finite one with at most `max_frac` digits after the point.
    pub fn to_exact_decimal(&self, max_frac: usize) -> Option<String> {
        let mut den = self.den.clone();
        let (two, five) = (BigInt::from(2u32), BigInt::from(5u32));
        let (mut twos, mut fives) = (0usize, 0usize);
        while den.is_even() && twos <= max_frac {
            den /= &two;
            twos += 1;
        }
        while (&den % &five).is_zero() && fives <= max_frac {
            den /= &five;
            fives += 1;
        }
        let places = twos.max(fives);
        if !den.is_one() || places > max_frac {
            return None;
        }
        let scaled = &self.num * BigInt::from(10u32).pow(places as u32) / &self.den;
        let (sign, mag) = (scaled.sign(), scaled.magnitude().to_string());
        let mag = format!("{mag:0>width$}", width = places + 1);
        let (i, f) = mag.split_at(mag.len() - places);
        let minus = if sign == Sign::Minus { "-" } else { "" };
        Some(if places == 0 {
            format!("{minus}{i}")
        } else {
            format!("{minus}{i}.{f}")
        })
    }
}

impl PartialOrd for Rational {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Rational {
    fn cmp(&self, other: &Self) -> Ordering {
        (&self.num * &other.den).cmp(&(&other.num * &self.den))
    }
}

impl fmt::Display for Rational {
    /// `7`, `-3/2`: the canonical exact form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_integer() {
            write!(f, "{}", self.num)
        } else {
            write!(f, "{}/{}", self.num, self.den)
        }
    }
}

/// Cuts long text for error messages, on a char boundary.
pub(crate) fn abbreviate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_string()
    } else {
        let head: String = s.chars().take(max_chars).collect();
        format!("{head}... ({} chars)", s.chars().count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Rational {
        Rational::parse_decimal(s, 100).unwrap()
    }

    #[test]
    fn parses_and_reduces() {
        assert_eq!(q("18.0"), q("18"));
        assert_eq!(q("0.50"), Rational::new(1, 2).unwrap());
        assert_eq!(q(".5").to_string(), "1/2");
        assert_eq!(q("-3.25").to_string(), "-13/4");
        assert!(Rational::parse_decimal("1.2.3", 100).is_none());
        assert!(Rational::parse_decimal("", 100).is_none());
        assert!(Rational::parse_decimal("-", 100).is_none());
        assert!(Rational::parse_decimal("12345", 3).is_none());
        assert_eq!(Rational::new(4, -6).unwrap().to_string(), "-2/3");
        assert!(Rational::new(1, 0).is_none());
    }

    #[test]
    fn arithmetic_is_exact_and_bounded() {
        let third = Rational::new(1, 3).unwrap();
        let sum = third.add(&third, 64).unwrap().add(&third, 64).unwrap();
        assert_eq!(sum, Rational::from_integer(1));
        assert_eq!(
            third.div(&Rational::zero(), 64),
            Err(RationalError::DivisionByZero)
        );
        let big = Rational::from_integer(BigInt::from(2u32).pow(60));
        assert!(matches!(
            big.mul(&big, 64),
            Err(RationalError::TooLarge { .. })
        ));
        assert_eq!(
            q("2").pow(&q("-2"), 64, 100).unwrap(),
            Rational::new(1, 4).unwrap()
        );
        assert!(matches!(
            q("9").pow(&q("387420489"), 4096, 10_000),
            Err(RationalError::ExponentTooLarge(..))
        ));
        assert!(matches!(
            q("9").pow(&q("5000"), 4096, 10_000),
            Err(RationalError::TooLarge { .. })
        ));
        assert_eq!(q("1").pow(&q("10000"), 64, 10_000).unwrap(), q("1"));
        assert_eq!(q("-1").pow(&q("9999"), 64, 10_000).unwrap(), q("-1"));
        assert!(matches!(
            q("2").pow(&q("0.5"), 64, 100),
            Err(RationalError::FractionalExponent(_))
        ));
        assert_eq!(
            Rational::zero().pow(&q("-1"), 64, 100),
            Err(RationalError::ZeroToNegativePower)
        );
    }

    #[test]
    fn decimal_rendering() {
        assert_eq!(q("3.5").to_exact_decimal(10).as_deref(), Some("3.5"));
        assert_eq!(q("-0.05").to_exact_decimal(10).as_deref(), Some("-0.05"));
        assert_eq!(q("42").to_exact_decimal(10).as_deref(), Some("42"));
        assert_eq!(Rational::new(1, 3).unwrap().to_exact_decimal(10), None);
        assert!(q("1") > q("0.999"));
    }
}
