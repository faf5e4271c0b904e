//! The `expires` field: a UTC time written exactly as `YYYY-MM-DDTHH:MM:SSZ`.

use std::fmt;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const FORMAT: &str = "%Y-%m-%dT%H:%M:%SZ";

/// An expiry time. Keeps the string it was read from so a round trip writes the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry {
    raw: String,
    at: DateTime<Utc>,
}

impl Expiry {
    /// An expiry at `at` (sub-second precision is dropped, as TUF's format has none).
    pub fn new(at: DateTime<Utc>) -> Self {
        let raw = at.format(FORMAT).to_string();
        // Re-parse so `at` equals what the string says (sub-seconds dropped).
        let at = parse(&raw).unwrap_or(at);
        Expiry { raw, at }
    }

    /// The time.
    pub fn at(&self) -> DateTime<Utc> {
        self.at
    }

    /// Whether the metadata is expired at `now`: TUF asks that `expires` be *higher* than the
    /// reference time, so metadata expiring exactly now is expired (as in python-tuf).
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.at <= now
    }
}

fn parse(s: &str) -> Option<DateTime<Utc>> {
    // Exactly 20 characters: chrono alone would also take "+2030-…" or 5-digit years.
    if s.len() != 20 || !s.is_ascii() {
        return None;
    }
    NaiveDateTime::parse_from_str(s, FORMAT)
        .ok()
        .map(|n| n.and_utc())
}

impl fmt::Display for Expiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl Serialize for Expiry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

impl<'de> Deserialize<'de> for Expiry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        let at = parse(&raw).ok_or_else(|| {
            serde::de::Error::custom(format_args!(
                "expires {raw:?} is not of the form YYYY-MM-DDTHH:MM:SSZ"
            ))
        })?;
        Ok(Expiry { raw, at })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tuf_format_only() {
        let e: Expiry = serde_json::from_str("\"2030-01-02T03:04:05Z\"").unwrap();
        assert_eq!(e.at().to_rfc3339(), "2030-01-02T03:04:05+00:00");
        for bad in [
            "\"2030-01-02T03:04:05.5Z\"",
            "\"2030-01-02 03:04:05Z\"",
            "\"2030-01-02T03:04:05+01:00\"",
            "\"2030-13-02T03:04:05Z\"",
            "\"tomorrow\"",
        ] {
            assert!(serde_json::from_str::<Expiry>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn expired_from_the_expiry_second_on() {
        let e: Expiry = serde_json::from_str("\"2030-01-01T00:00:00Z\"").unwrap();
        assert!(!e.is_expired(e.at() - chrono::Duration::seconds(1)));
        assert!(e.is_expired(e.at()));
    }
}
