//! Human units in config files: durations like "10s" / "250ms" and sizes like "16MB" / "1GiB".

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A duration written with a unit: `ms`, `s`, `m` or `h` (e.g. "250ms", "10s", "1.5m").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HumanDuration(pub Duration);

/// A byte count written with an optional unit: B, kB/KB/KiB, MB/MiB, GB/GiB (powers of 1024,
/// as PostgreSQL's own settings read them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (number, unit) = split_number(s);
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            _ => {
                return Err(format!(
                    "invalid duration {s:?}: use a number with ms, s, m or h"
                ))
            }
        };
        let value: f64 = number
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: {number:?} is not a number"))?;
        if !(0.0..=1.0e9).contains(&value) {
            return Err(format!("invalid duration {s:?}: out of range"));
        }
        Ok(HumanDuration(Duration::from_secs_f64(value * scale)))
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (number, unit) = split_number(s);
        let scale: u64 = match unit {
            "" | "B" => 1,
            "kB" | "KB" | "KiB" => 1 << 10,
            "MB" | "MiB" => 1 << 20,
            "GB" | "GiB" => 1 << 30,
            "TB" | "TiB" => 1 << 40,
            _ => {
                return Err(format!(
                    "invalid size {s:?}: use a number with B, kB, MB or GB"
                ))
            }
        };
        let value: u64 = number
            .parse()
            .map_err(|_| format!("invalid size {s:?}: {number:?} is not a whole number"))?;
        value
            .checked_mul(scale)
            .map(ByteSize)
            .ok_or_else(|| format!("invalid size {s:?}: too large"))
    }
}

/// "16MB" -> ("16", "MB"); white space between number and unit is allowed.
fn split_number(s: &str) -> (&str, &str) {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    (&s[..end], s[end..].trim())
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}B", self.0)
    }
}

/// Accepts a string with units, or a bare integer (seconds for durations, bytes for sizes).
struct UnitVisitor<T>(&'static str, fn(u64) -> T);

impl<T: FromStr<Err = String>> Visitor<'_> for UnitVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        u64::try_from(v)
            .map(self.1)
            .map_err(|_| E::custom("must not be negative"))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        Ok((self.1)(v))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UnitVisitor(
            "a duration such as \"10s\" or \"250ms\"",
            |secs| HumanDuration(Duration::from_secs(secs)),
        ))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UnitVisitor("a size such as \"16MB\"", ByteSize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let d = |s: &str| s.parse::<HumanDuration>().map(|d| d.0);
        assert_eq!(d("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(d("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(d("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(d(" 2 h "), Ok(Duration::from_secs(7200)));
        assert!(d("10").is_err());
        assert!(d("s").is_err());
        assert!(d("-1s").is_err());
        assert!(d("1e99s").is_err());
    }

    #[test]
    fn sizes() {
        let b = |s: &str| s.parse::<ByteSize>().map(|b| b.0);
        assert_eq!(b("16MB"), Ok(16 << 20));
        assert_eq!(b("16 MiB"), Ok(16 << 20));
        assert_eq!(b("512kB"), Ok(512 << 10));
        assert_eq!(b("1GB"), Ok(1 << 30));
        assert_eq!(b("4096"), Ok(4096));
        assert!(b("1.5MB").is_err());
        assert!(b("16XB").is_err());
        assert!(b("99999999999TB").is_err());
    }
}
