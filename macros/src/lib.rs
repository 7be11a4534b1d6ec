//! The one way the workspace spells an enum as a string (config keys, CLI flags, logs, JSON):
//! [`string_enum!`] declares the enum with its canonical spellings (and optional aliases) and
//! generates `as_str`, `ALL`, `FromStr`, `Display`, `Serialize` and `Deserialize`. An unknown
//! spelling is refused with [`UnknownValue`], which lists the allowed spellings and suggests the
//! closest one, whether it comes from a TOML file, a JSON row or a command-line flag.
//!
//! ```
//! alp_macros::string_enum! {
//!     /// A fruit.
//!     pub enum Fruit: "fruit" {
//!         Apple => "apple",
//!         /// Aliases parse to the variant; the first spelling is the one written back.
//!         Pear => "pear" | "poire",
//!     }
//! }
//! assert_eq!("poire".parse::<Fruit>().unwrap(), Fruit::Pear);
//! assert_eq!(Fruit::Pear.as_str(), "pear");
//! assert_eq!(
//!     "appel".parse::<Fruit>().unwrap_err().to_string(),
//!     "unknown fruit \"appel\"; allowed: apple, pear; did you mean `apple`?"
//! );
//! ```
use std::fmt;

#[doc(hidden)]
pub mod __private {
    pub use serde;
}

/// A spelling no variant has: what kind of value it was, the spelling, and the allowed ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownValue {
    /// What the value is called in messages: `value`, `split`, `dtype`, ...
    pub what: &'static str,
    pub got: String,
    /// The canonical spellings, in declaration order.
    pub allowed: &'static [&'static str],
}

impl fmt::Display for UnknownValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown {} {:?}; allowed: {}",
            self.what,
            self.got,
            self.allowed.join(", ")
        )?;
        // Case does not make a typo less likely to be one (`CPU` for `cpu`).
        match closest(&self.got.to_lowercase(), self.allowed.iter().copied()) {
            Some(s) => write!(f, "; did you mean `{s}`?"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for UnknownValue {}

/// The candidate most similar to `word`, if any is similar enough to be a likely typo
/// (Jaro-Winkler similarity of at least 0.8); of equally similar ones, the first.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut best: Option<(f64, &'a str)> = None;
    for c in candidates {
        let score = strsim::jaro_winkler(word, c);
        if score >= 0.8 && best.is_none_or(|(b, _)| score > b) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c)
}

/// Declares an enum spelled as a string. `pub enum Name: "what" { Variant => "text" | "alias", .. }`;
/// `: "what"` (the noun in error messages) defaults to `value`. The enum derives `Debug, Clone, Copy,
/// PartialEq, Eq, Hash`; further attributes (`#[derive(Default)]` with `#[default]` on a variant)
/// pass through. Serialisation writes the first spelling, so aliases read old files and never
/// change what is written.
#[macro_export]
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident $(: $what:literal)? {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal $(| $alias:literal)* ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name { $( $(#[$vmeta])* $variant ),+ }

        impl $name {
            /// Every canonical spelling, in declaration order.
            pub const ALL: &'static [&'static str] = &[$($text),+];
            /// What a value is called in error messages.
            pub const WHAT: &'static str = $crate::__what_or_value!($($what)?);

            /// The canonical spelling of this value (what configs and logs hold).
            pub fn as_str(self) -> &'static str {
                match self { $( $name::$variant => $text ),+ }
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::UnknownValue;
            fn from_str(s: &str) -> ::std::result::Result<Self, $crate::UnknownValue> {
                match s {
                    $( $text $(| $alias)* => Ok($name::$variant), )+
                    other => Err($crate::UnknownValue {
                        what: Self::WHAT,
                        got: other.to_string(),
                        allowed: Self::ALL,
                    }),
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl $crate::__private::serde::Serialize for $name {
            fn serialize<S: $crate::__private::serde::Serializer>(
                &self,
                s: S,
            ) -> ::std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> $crate::__private::serde::Deserialize<'de> for $name {
            fn deserialize<D: $crate::__private::serde::Deserializer<'de>>(
                d: D,
            ) -> ::std::result::Result<Self, D::Error> {
                let s = <::std::string::String as $crate::__private::serde::Deserialize>::deserialize(d)?;
                s.parse()
                    .map_err(<D::Error as $crate::__private::serde::de::Error>::custom)
            }
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __what_or_value {
    () => {
        "value"
    };
    ($what:literal) => {
        $what
    };
}

#[cfg(test)]
mod tests {
    string_enum! {
        /// Test enum.
        #[derive(Default)]
        enum Mode {
            Fast => "fast",
            #[default]
            Slow => "slow" | "careful",
        }
    }

    #[test]
    fn spellings_round_trip_and_aliases_parse() {
        for s in Mode::ALL {
            assert_eq!(s.parse::<Mode>().unwrap().as_str(), *s);
        }
        assert_eq!("careful".parse::<Mode>().unwrap(), Mode::Slow);
        assert_eq!(Mode::default(), Mode::Slow);
        assert_eq!(Mode::WHAT, "value");
        assert_eq!(Mode::Fast.to_string(), "fast");
    }

    #[test]
    fn unknown_spellings_list_the_allowed_ones_and_suggest() {
        let e = "fsat".parse::<Mode>().unwrap_err().to_string();
        assert_eq!(
            e,
            "unknown value \"fsat\"; allowed: fast, slow; did you mean `fast`?"
        );
        let e = "FAST".parse::<Mode>().unwrap_err().to_string();
        assert!(e.ends_with("did you mean `fast`?"), "{e}");
        assert_eq!(super::closest("qwen", ["qwen2", "qwen3"]), Some("qwen2"));
        let e = "zzz".parse::<Mode>().unwrap_err().to_string();
        assert_eq!(e, "unknown value \"zzz\"; allowed: fast, slow");
    }
}
