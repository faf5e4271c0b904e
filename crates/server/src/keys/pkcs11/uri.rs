//! Naming a key on a token: [`Pkcs11Config`] and the strings that spell it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use super::*;

/// Where a PKCS#11 key lives and how to log in to its token.
#[derive(Clone, PartialEq, Eq)]
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module (shared library), e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// Label of the token; selects the slot.
    pub token_label: String,
    /// User PIN of the token. Never printed by `Debug`.
    pub pin: String,
    /// `CKA_LABEL` of the key pair.
    pub key_label: String,
}

impl fmt::Debug for Pkcs11Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Config")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("pin", &"<redacted>")
            .field("key_label", &self.key_label)
            .finish()
    }
}

impl Pkcs11Config {
    /// Parses the compact config form
    /// `pkcs11:module=PATH;token=LABEL;key=LABEL;pin-env=VAR` (or `pin=PIN` instead of
    /// `pin-env`), reading the PIN from the process environment.
    pub fn parse(s: &str) -> Result<Self, Pkcs11Error> {
        Self::parse_with_env(s, |name| std::env::var(name).ok())
    }

    /// Like [`Pkcs11Config::parse`], with `env` looking up environment variables (for tests
    /// and for callers with their own environment).
    pub fn parse_with_env(
        s: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, Pkcs11Error> {
        let bad = |m: String| Pkcs11Error::Config(m);
        let body = s.trim().strip_prefix("pkcs11:").ok_or_else(|| {
            bad("a PKCS#11 key must start with \"pkcs11:\" (pkcs11:module=PATH;token=LABEL;key=LABEL;pin-env=VAR)".into())
        })?;
        let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
        for part in body.split(';') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let Some((name, value)) = part.split_once('=') else {
                // Do not echo the segment: it might be a PIN typed without "pin=".
                return Err(bad(format!(
                    "segment {} is not NAME=VALUE",
                    fields.len() + 1
                )));
            };
            let (name, value) = (name.trim(), value.trim());
            if !matches!(name, "module" | "token" | "key" | "pin" | "pin-env") {
                return Err(bad(format!(
                    "unknown attribute {name:?} (known: module, token, key, pin, pin-env)"
                )));
            }
            if value.is_empty() {
                return Err(bad(format!("attribute {name:?} is empty")));
            }
            if fields.insert(name, value).is_some() {
                return Err(bad(format!("attribute {name:?} given twice")));
            }
        }
        let required = |name: &str| {
            fields
                .get(name)
                .map(|v| (*v).to_owned())
                .ok_or_else(|| bad(format!("missing attribute {name:?}")))
        };
        let module = PathBuf::from(required("module")?);
        let token_label = required("token")?;
        let key_label = required("key")?;
        if token_label.len() > MAX_TOKEN_LABEL {
            return Err(bad(format!(
                "token label {token_label:?} is longer than {MAX_TOKEN_LABEL} bytes"
            )));
        }
        let pin = match (fields.get("pin"), fields.get("pin-env")) {
            (Some(_), Some(_)) => {
                return Err(bad("give either \"pin\" or \"pin-env\", not both".into()))
            }
            (None, None) => {
                return Err(bad(
                    "missing PIN: add pin-env=VAR (environment variable holding the PIN)".into(),
                ))
            }
            (Some(pin), None) => (*pin).to_owned(),
            (None, Some(var)) => env(var).ok_or_else(|| {
                bad(format!(
                    "environment variable {var} (pin-env) is not set or not UTF-8"
                ))
            })?,
        };
        Ok(Pkcs11Config {
            module,
            token_label,
            pin,
            key_label,
        })
    }
}

impl FromStr for Pkcs11Config {
    type Err = Pkcs11Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Maximum length of a PKCS#11 token label (`CK_TOKEN_INFO.label`).
pub(super) const MAX_TOKEN_LABEL: usize = 32;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn parses_the_compact_config_form() {
        let env = |name: &str| (name == "RAMPART_HSM_PIN").then(|| "4321".to_owned());
        let c = Pkcs11Config::parse_with_env(
            "pkcs11:module=/usr/lib/softhsm/libsofthsm2.so;token=rampart;key=timestamp;pin-env=RAMPART_HSM_PIN",
            env,
        )
        .unwrap();
        assert_eq!(c.module, PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
        assert_eq!(c.token_label, "rampart");
        assert_eq!(c.key_label, "timestamp");
        assert_eq!(c.pin, "4321");

        let c: Pkcs11Config = "pkcs11:module=/m.so; token=t; key=k; pin=1234;"
            .parse()
            .unwrap();
        assert_eq!(c.pin, "1234");
        assert_eq!(c.token_label, "t");
    }

    #[test]
    fn rejects_bad_config_strings_without_leaking_the_pin() {
        let none = |_: &str| None;
        for (input, expect) in [
            ("module=/m.so;token=t;key=k;pin=1", "must start with"),
            ("pkcs11:token=t;key=k;pin=1", "missing attribute \"module\""),
            (
                "pkcs11:module=/m.so;key=k;pin=1",
                "missing attribute \"token\"",
            ),
            (
                "pkcs11:module=/m.so;token=t;pin=1",
                "missing attribute \"key\"",
            ),
            ("pkcs11:module=/m.so;token=t;key=k", "missing PIN"),
            (
                "pkcs11:module=/m.so;token=t;key=k;pin=1;pin-env=X",
                "not both",
            ),
            (
                "pkcs11:module=/m.so;token=t;key=k;pin-env=UNSET",
                "UNSET (pin-env) is not set",
            ),
            (
                "pkcs11:module=/m.so;token=t;key=k;key=j;pin=1",
                "given twice",
            ),
            (
                "pkcs11:module=/m.so;token=t;key=k;slot=3;pin=1",
                "unknown attribute \"slot\"",
            ),
            ("pkcs11:module=/m.so;token=t;key=;pin=1", "\"key\" is empty"),
            (
                "pkcs11:module=/m.so;token=t;key=k;s3cret",
                "is not NAME=VALUE",
            ),
        ] {
            let err = Pkcs11Config::parse_with_env(input, none).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(expect), "{input}: {msg}");
            assert!(!msg.contains("s3cret"), "{input}: {msg}");
        }
        let long = format!("pkcs11:module=/m.so;token={};key=k;pin=1", "x".repeat(33));
        assert!(Pkcs11Config::parse_with_env(&long, none).is_err());
    }

    #[test]
    fn debug_does_not_print_the_pin() {
        let c = Pkcs11Config {
            module: "/m.so".into(),
            token_label: "t".into(),
            pin: "s3cret-pin".into(),
            key_label: "k".into(),
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret-pin"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }
}
