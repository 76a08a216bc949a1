//! Value types that config strings parse into: sizes ("50MiB") and durations ("5m").
//! Parse errors surface through serde, so the TOML loader reports them with file, line and key.

use serde::{Deserialize, Deserializer, de};
use std::time::Duration;

/// A byte count written as `123`, `64KiB`, `50MiB`, `1GiB` (also `KB`/`MB`/`GB` as powers of 1000).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl Size {
    pub fn parse(s: &str) -> Result<Size, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("invalid size {s:?}: expected e.g. \"50MiB\""))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            u => {
                return Err(format!(
                    "invalid size unit {u:?} in {s:?}: use B, KiB, MiB or GiB"
                ));
            }
        };
        n.checked_mul(mult)
            .map(Size)
            .ok_or_else(|| format!("size {s:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Size(n)),
            Raw::S(s) => Size::parse(&s).map_err(de::Error::custom),
        }
    }
}

/// A duration written as `30s`, `5m`, `1h`, `5d` (or `500ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn parse(s: &str) -> Result<Dur, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            format!("invalid duration {s:?}: expected e.g. \"30s\", \"5m\", \"1h\", \"5d\"")
        })?;
        let per: u64 = match unit {
            "ms" => return Ok(Dur(Duration::from_millis(n))),
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86400,
            "" => return Err(format!("duration {s:?} needs a unit: s, m, h or d")),
            u => {
                return Err(format!(
                    "invalid duration unit {u:?} in {s:?}: use s, m, h or d"
                ));
            }
        };
        n.checked_mul(per)
            .map(|secs| Dur(Duration::from_secs(secs)))
            .ok_or_else(|| format!("duration {s:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Dur::parse(&s).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(Size::parse("50MiB").unwrap().0, 50 << 20);
        assert_eq!(Size::parse("1GiB").unwrap().0, 1 << 30);
        assert_eq!(Size::parse("10KB").unwrap().0, 10_000);
        assert_eq!(Size::parse("123").unwrap().0, 123);
        assert!(Size::parse("12XB").unwrap_err().contains("unit"));
        assert!(Size::parse("MiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(Dur::parse("5m").unwrap().0, Duration::from_secs(300));
        assert_eq!(Dur::parse("5d").unwrap().0, Duration::from_secs(5 * 86400));
        assert_eq!(Dur::parse("250ms").unwrap().0, Duration::from_millis(250));
        assert!(Dur::parse("5").unwrap_err().contains("needs a unit"));
        assert!(Dur::parse("5w").is_err());
        // Seconds past u64 are an error, as sizes are (fuzz target config_load: it panicked).
        assert!(
            Dur::parse("999999999999999999m")
                .unwrap_err()
                .contains("too large")
        );
        assert_eq!(
            Dur::parse("999999999999999999s").unwrap().0,
            Duration::from_secs(999_999_999_999_999_999)
        );
    }
}
