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
    /// Parses a PKCS#11 URI (RFC 7512), reading a PIN source from the process environment
    /// or a file:
    ///
    /// ```text
    /// pkcs11:token=rampart;object=timestamp;type=private?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=env:RAMPART_HSM_PIN
    /// ```
    ///
    /// Path attributes: `token` (label, selects the slot) and `object` (the key's
    /// `CKA_LABEL`) are required; `type` may be `private` or `secret`; `x-…` attributes are
    /// ignored (RFC 7512 §2.3). Query attributes: `module-path` (required), and the PIN as
    /// `pin-source=file:PATH` (RFC 7512), `pin-source=env:VAR` (Rampart's extension) or
    /// `pin-value=PIN` (tests). Values may be percent-encoded. Rampart's earlier compact form
    /// `pkcs11:module=PATH;token=LABEL;key=LABEL;pin-env=VAR` is still accepted, with a
    /// deprecation warning naming the URI to write instead.
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
            bad("a PKCS#11 key must be a pkcs11: URI (RFC 7512), e.g. pkcs11:token=LABEL;object=LABEL?module-path=PATH&pin-source=env:VAR".into())
        })?;
        let (path, query) = body.split_once('?').unwrap_or((body, ""));
        let legacy = path.split(';').any(|a| {
            matches!(
                a.trim().split_once('=').map(|(n, _)| n.trim()),
                Some("module" | "key" | "pin" | "pin-env")
            )
        });
        if legacy && query.is_empty() {
            let config = Self::parse_legacy(body, env)?;
            tracing::warn!(
                uri = %config.uri(),
                "deprecated PKCS#11 key form module=…;token=…;key=…: write the RFC 7512 URI \
                 instead (the PIN as pin-source=env:VAR or file:PATH)"
            );
            return Ok(config);
        }
        Self::parse_rfc7512(path, query, env)
    }

    /// The RFC 7512 URI of this key, without its PIN (for messages).
    pub fn uri(&self) -> String {
        let enc = |v: &str| percent_encoding::utf8_percent_encode(v, URI_VALUE).to_string();
        format!(
            "pkcs11:token={};object={}?module-path={}",
            enc(&self.token_label),
            enc(&self.key_label),
            enc(&self.module.to_string_lossy())
        )
    }

    fn parse_rfc7512(
        path: &str,
        query: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, Pkcs11Error> {
        let bad = |m: String| Pkcs11Error::Config(m);
        let mut attrs: BTreeMap<String, String> = BTreeMap::new();
        let split = |part: &str, n: usize| -> Result<(String, String), Pkcs11Error> {
            let (name, value) = part.split_once('=').ok_or_else(|| {
                // Do not echo the segment: it might be a PIN typed without "pin-value=".
                bad(format!("attribute {n} is not NAME=VALUE"))
            })?;
            let value = percent_encoding::percent_decode_str(value.trim())
                .decode_utf8()
                .map_err(|_| {
                    bad(format!(
                        "attribute {:?} is not UTF-8 once decoded",
                        name.trim()
                    ))
                })?;
            Ok((name.trim().to_owned(), value.into_owned()))
        };
        for (n, part) in path.split(';').chain(query.split('&')).enumerate() {
            if part.trim().is_empty() {
                continue;
            }
            let (name, value) = split(part, n + 1)?;
            if name.starts_with("x-") {
                continue;
            }
            let known = matches!(
                name.as_str(),
                "token" | "object" | "type" | "module-path" | "pin-source" | "pin-value"
            );
            if !known {
                return Err(bad(format!(
                    "attribute {name:?} is not supported (Rampart selects a key by token, object and \
                     type, loads module-path, and takes the PIN from pin-source or pin-value)"
                )));
            }
            if value.is_empty() {
                return Err(bad(format!("attribute {name:?} is empty")));
            }
            if attrs.insert(name.clone(), value).is_some() {
                return Err(bad(format!("attribute {name:?} given twice")));
            }
        }
        let required = |name: &str| {
            attrs
                .get(name)
                .cloned()
                .ok_or_else(|| bad(format!("missing attribute {name:?}")))
        };
        if let Some(t) = attrs.get("type") {
            if !matches!(t.as_str(), "private" | "secret") {
                return Err(bad(format!(
                    "type={t}: the key must be a private key (a signer) or a secret key (the content KEK)"
                )));
            }
        }
        let token_label = required("token")?;
        let key_label = required("object")?;
        let module = PathBuf::from(required("module-path")?);
        if token_label.len() > MAX_TOKEN_LABEL {
            return Err(bad(format!(
                "token label {token_label:?} is longer than {MAX_TOKEN_LABEL} bytes"
            )));
        }
        let pin = match (attrs.get("pin-value"), attrs.get("pin-source")) {
            (Some(_), Some(_)) => {
                return Err(bad("give either pin-value or pin-source, not both".into()))
            }
            (None, None) => {
                return Err(bad(
                    "missing PIN: add pin-source=env:VAR or pin-source=file:PATH".into(),
                ))
            }
            (Some(pin), None) => pin.clone(),
            (None, Some(source)) => read_pin_source(source, &env)?,
        };
        Ok(Pkcs11Config {
            module,
            token_label,
            pin,
            key_label,
        })
    }

    /// Rampart's earlier compact form `module=PATH;token=LABEL;key=LABEL;pin-env=VAR` (or
    /// `pin=PIN`), `body` being what follows `pkcs11:`.
    fn parse_legacy(body: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self, Pkcs11Error> {
        let bad = |m: String| Pkcs11Error::Config(m);
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

/// What a PIN source names: `env:VAR` or `file:PATH` (the file's first line).
fn read_pin_source(
    source: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<String, Pkcs11Error> {
    let bad = |m: String| Pkcs11Error::Config(m);
    if let Some(var) = source.strip_prefix("env:") {
        return env(var).ok_or_else(|| {
            bad(format!(
                "environment variable {var} (pin-source) is not set or not UTF-8"
            ))
        });
    }
    let path = source
        .strip_prefix("file://")
        .or_else(|| source.strip_prefix("file:"))
        .ok_or_else(|| bad("pin-source must be env:VAR or file:PATH".into()))?;
    rampart_client::store::check_secret_permissions(std::path::Path::new(path))
        .map_err(|e| bad(format!("pin-source: {e}")))?;
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("pin-source {path}: {e}")))?;
    let pin = text.lines().next().unwrap_or_default().to_owned();
    if pin.is_empty() {
        return Err(bad(format!("pin-source {path} is empty")));
    }
    Ok(pin)
}

/// Characters kept as they are in a URI value: unreserved ones and `/` (paths read better).
const URI_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

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
            ("module=/m.so;token=t;key=k;pin=1", "must be a pkcs11: URI"),
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
    fn parses_rfc7512_uris() {
        let env = |name: &str| (name == "RAMPART_HSM_PIN").then(|| "4321".to_owned());
        let c = Pkcs11Config::parse_with_env(
            "pkcs11:token=rampart;object=timestamp;type=private?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=env:RAMPART_HSM_PIN",
            env,
        )
        .unwrap();
        assert_eq!(c.module, PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
        assert_eq!(
            (c.token_label.as_str(), c.key_label.as_str()),
            ("rampart", "timestamp")
        );
        assert_eq!(c.pin, "4321");
        // Percent-encoded values, vendor attributes ignored, the PIN from a private file.
        let dir = tempfile::tempdir().unwrap();
        let pin_file = dir.path().join("pin");
        std::fs::write(&pin_file, "s3cret\n").unwrap();
        std::fs::set_permissions(
            &pin_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let uri = format!(
            "pkcs11:token=My%20Token;object=content%2Dkek;type=secret;x-vendor=1?module-path=%2Fopt%2Fhsm.so&pin-source=file:{}",
            pin_file.display()
        );
        let c = Pkcs11Config::parse_with_env(&uri, |_: &str| None).unwrap();
        assert_eq!(c.token_label, "My Token");
        assert_eq!(c.key_label, "content-kek");
        assert_eq!(c.module, PathBuf::from("/opt/hsm.so"));
        assert_eq!(c.pin, "s3cret");
        // uri() names the same key (without its PIN).
        let again =
            Pkcs11Config::parse_with_env(&format!("{}&pin-value=s3cret", c.uri()), |_: &str| None)
                .unwrap();
        assert_eq!(again, c);
        assert!(!c.uri().contains("s3cret"));
    }

    #[test]
    fn rejects_bad_rfc7512_uris_without_leaking_the_pin() {
        let none = |_: &str| None;
        for (input, expect) in [
            (
                "pkcs11:token=t;object=k?pin-value=1",
                "missing attribute \"module-path\"",
            ),
            (
                "pkcs11:object=k?module-path=/m.so&pin-value=1",
                "missing attribute \"token\"",
            ),
            (
                "pkcs11:token=t?module-path=/m.so&pin-value=1",
                "missing attribute \"object\"",
            ),
            (
                "pkcs11:token=t;object=k;slot-id=3?module-path=/m.so&pin-value=1",
                "\"slot-id\" is not supported",
            ),
            (
                "pkcs11:token=t;object=k?module-path=/m.so&pin-value=1&pin-source=env:X",
                "not both",
            ),
            ("pkcs11:token=t;object=k?module-path=/m.so", "missing PIN"),
            (
                "pkcs11:token=t;object=k;type=public?module-path=/m.so&pin-value=1",
                "type=public",
            ),
            (
                "pkcs11:token=t;object=k?module-path=/m.so&pin-source=env:UNSET",
                "UNSET (pin-source) is not set",
            ),
            (
                "pkcs11:token=t;object=k?module-path=/m.so&pin-source=|cat pin",
                "env:VAR or file:PATH",
            ),
            (
                "pkcs11:token=t;object=k?module-path=/m.so&s3cret",
                "is not NAME=VALUE",
            ),
            (
                "pkcs11:token=t;token=u;object=k?module-path=/m.so&pin-value=1",
                "given twice",
            ),
        ] {
            let err = Pkcs11Config::parse_with_env(input, none).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(expect), "{input}: {msg}");
            assert!(!msg.contains("s3cret"), "{input}: {msg}");
        }
        // A PIN file others can read is refused, naming the fix.
        let dir = tempfile::tempdir().unwrap();
        let pin_file = dir.path().join("pin");
        std::fs::write(&pin_file, "s3cret").unwrap();
        std::fs::set_permissions(
            &pin_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
        let uri = format!(
            "pkcs11:token=t;object=k?module-path=/m.so&pin-source=file:{}",
            pin_file.display()
        );
        let msg = Pkcs11Config::parse_with_env(&uri, none)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("chmod 600"), "{msg}");
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
