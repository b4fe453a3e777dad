//! PostgreSQL write-ahead log positions and timelines.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// A position in PostgreSQL's write-ahead log (`pg_lsn`), printed and parsed in
/// PostgreSQL's `X/Y` form (two hexadecimal halves of a 64-bit byte offset).
///
/// In DCS values it is stored as a plain integer of bytes, as Patroni does
/// (`xlog_location`, `optime`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The zero position (`0/0`), which PostgreSQL uses for "invalid".
    pub const ZERO: Lsn = Lsn(0);

    /// How many bytes `self` is ahead of `other` (zero when it is not ahead).
    pub fn bytes_ahead_of(self, other: Lsn) -> u64 {
        self.0.saturating_sub(other.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = ModelError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| ModelError::InvalidLsn {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        let (high, low) = input
            .split_once('/')
            .ok_or_else(|| invalid("expected two hexadecimal numbers separated by '/'"))?;
        let half = |part: &str| -> Result<u64, ModelError> {
            // from_str_radix accepts a leading '+', PostgreSQL does not.
            if part.is_empty() || part.len() > 8 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid("each half must be 1 to 8 hexadecimal digits"));
            }
            u64::from_str_radix(part, 16).map_err(|_| invalid("not hexadecimal"))
        };
        Ok(Lsn((half(high)? << 32) | half(low)?))
    }
}

/// A PostgreSQL timeline id: it starts at 1 and grows by one at every promotion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timeline(pub u32);

impl fmt::Display for Timeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The database system identifier that `initdb` chose; every member of one
/// cluster shares it, and the `initialize` key records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SystemId(pub u64);

impl fmt::Display for SystemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for SystemId {
    type Err = ModelError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input.is_empty() || !input.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ModelError::InvalidSystemId {
                input: input.to_owned(),
            });
        }
        input
            .parse::<u64>()
            .map(SystemId)
            .map_err(|_| ModelError::InvalidSystemId {
                input: input.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_parses_and_prints_postgres_form() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn, Lsn(0x16_B374_D848));
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn::ZERO);
        assert_eq!(Lsn(0x3000060).to_string(), "0/3000060");
        assert_eq!("ffffffff/ffffffff".parse::<Lsn>().unwrap(), Lsn(u64::MAX));
    }

    #[test]
    fn malformed_lsn_is_a_clear_error() {
        for bad in [
            "",
            "16",
            "/1",
            "1/",
            "x/1",
            "1/2/3",
            "+1/2",
            "1/-2",
            "123456789/0",
            " 1/2",
        ] {
            let err = bad.parse::<Lsn>().unwrap_err();
            assert!(
                matches!(&err, ModelError::InvalidLsn { input, .. } if input == bad),
                "{bad:?} gave {err:?}"
            );
            assert!(err.to_string().contains("LSN"), "{err}");
        }
    }

    #[test]
    fn lag_never_underflows() {
        assert_eq!(Lsn(100).bytes_ahead_of(Lsn(40)), 60);
        assert_eq!(Lsn(40).bytes_ahead_of(Lsn(100)), 0);
    }

    #[test]
    fn system_id_rejects_non_digits() {
        assert_eq!(
            "7221239846937620000".parse::<SystemId>().unwrap().0,
            7221239846937620000
        );
        for bad in ["", "-1", "12a", "99999999999999999999999"] {
            assert!(bad.parse::<SystemId>().is_err(), "{bad}");
        }
    }
}
