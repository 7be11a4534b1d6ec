//! Units and exact conversions. Every unit is an integer multiple of its family's base unit, so a
//! conversion from a larger unit to a smaller one is a whole number.

/// A unit: its symbol, its family and how many base units it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    pub symbol: &'static str,
    pub family: &'static str,
    /// Size in the family's base unit (millimetres, grams, seconds).
    pub base: u64,
}

pub const UNITS: &[Unit] = &[
    Unit {
        symbol: "mm",
        family: "length",
        base: 1,
    },
    Unit {
        symbol: "cm",
        family: "length",
        base: 10,
    },
    Unit {
        symbol: "m",
        family: "length",
        base: 1_000,
    },
    Unit {
        symbol: "km",
        family: "length",
        base: 1_000_000,
    },
    Unit {
        symbol: "g",
        family: "mass",
        base: 1,
    },
    Unit {
        symbol: "kg",
        family: "mass",
        base: 1_000,
    },
    Unit {
        symbol: "s",
        family: "time",
        base: 1,
    },
    Unit {
        symbol: "min",
        family: "time",
        base: 60,
    },
    Unit {
        symbol: "h",
        family: "time",
        base: 3_600,
    },
];

pub const FAMILIES: &[&str] = &["length", "mass", "time"];

pub fn unit(symbol: &str) -> Option<Unit> {
    UNITS.iter().copied().find(|u| u.symbol == symbol)
}

/// Why a conversion cannot be done; the text goes back to the model as the tool's reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConvertError {
    UnknownUnit(String),
    Incompatible { from: Unit, to: Unit },
    NotWhole,
}

impl std::fmt::Display for ConvertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConvertError::UnknownUnit(u) => {
                let known: Vec<&str> = UNITS.iter().map(|u| u.symbol).collect();
                write!(f, "unknown unit {u:?}; known: {}", known.join(", "))
            }
            ConvertError::Incompatible { from, to } => write!(
                f,
                "cannot convert {} ({}) to {} ({})",
                from.symbol, from.family, to.symbol, to.family
            ),
            ConvertError::NotWhole => write!(f, "the result is not a whole number"),
        }
    }
}

/// `value` in `from` expressed in `to`, when it is a whole number.
pub fn convert(value: u64, from: &str, to: &str) -> Result<u64, ConvertError> {
    let f = unit(from).ok_or_else(|| ConvertError::UnknownUnit(from.to_string()))?;
    let t = unit(to).ok_or_else(|| ConvertError::UnknownUnit(to.to_string()))?;
    if f.family != t.family {
        return Err(ConvertError::Incompatible { from: f, to: t });
    }
    let base = value.checked_mul(f.base).ok_or(ConvertError::NotWhole)?;
    if base % t.base != 0 {
        return Err(ConvertError::NotWhole);
    }
    Ok(base / t.base)
}

/// Every (from, to) pair of one family whose conversion of a whole number is whole: larger to
/// smaller units, in table order.
pub fn whole_pairs(families: &[String]) -> Vec<(Unit, Unit)> {
    let mut pairs = Vec::new();
    for from in UNITS
        .iter()
        .filter(|u| families.iter().any(|f| f == u.family))
    {
        for to in UNITS.iter().filter(|t| t.family == from.family) {
            if from.base > to.base && from.base % to.base == 0 {
                pairs.push((*from, *to));
            }
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_by_hand() {
        assert_eq!(convert(3, "km", "m"), Ok(3_000));
        assert_eq!(convert(2, "h", "min"), Ok(120));
        assert_eq!(convert(7, "kg", "g"), Ok(7_000));
        assert_eq!(convert(30, "cm", "m"), Err(ConvertError::NotWhole));
        assert!(matches!(
            convert(1, "m", "g"),
            Err(ConvertError::Incompatible { .. })
        ));
        assert!(matches!(
            convert(1, "yd", "m"),
            Err(ConvertError::UnknownUnit(_))
        ));
        // length: 6 pairs among 4 units; mass: 1; time: 3.
        assert_eq!(whole_pairs(&["length".into()]).len(), 6);
        assert_eq!(whole_pairs(&["mass".into(), "time".into()]).len(), 4);
    }
}
