//! Public keys, key IDs and signatures in TUF's formats.
//!
//! TUF key objects (`{"keytype", "scheme", "keyval": {"public"}}`) as python-tuf and
//! securesystemslib write them:
//!
//! | keytype | scheme | `keyval.public` |
//! |---|---|---|
//! | `ed25519` | `ed25519` | 32 bytes, hex |
//! | `ecdsa` (or legacy `ecdsa-sha2-nistp256`) | `ecdsa-sha2-nistp256` | PEM SubjectPublicKeyInfo; DER (ASN.1) signatures |
//! | `rsa` | `rsassa-pss-sha256` | PEM SubjectPublicKeyInfo; PSS with MGF1-SHA256 |
//!
//! Every primitive comes from `aws-lc-rs`, the same library rustls uses, so that the project
//! links one crypto implementation.
//!
//! A key ID is the SHA-256 of the canonical JSON of the key object (TUF 4.2). Thresholds are
//! counted over distinct *key material*, not over key IDs, so a repository that lists the same
//! public key under two IDs cannot make one signature count twice.

use std::collections::BTreeMap;
use std::fmt;

use aws_lc_rs::signature::{self, ParsedPublicKey, RsaParameters, VerificationAlgorithm};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::canonical;
use crate::error::{Error, Result};
use crate::hash;

/// A key ID: lowercase hex of the SHA-256 of the key's canonical JSON.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(pub String);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for KeyId {
    fn from(s: &str) -> Self {
        KeyId(s.to_owned())
    }
}

/// The signature algorithms Rampart verifies and makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyScheme {
    /// Ed25519 (RFC 8032). Rampart's default.
    Ed25519,
    /// ECDSA over NIST P-256 with SHA-256, DER-encoded signatures.
    EcdsaP256Sha256,
    /// RSASSA-PSS with SHA-256 and MGF1-SHA256.
    RsaPssSha256,
}

impl KeyScheme {
    /// TUF's `keytype` for newly written keys.
    pub fn keytype(self) -> &'static str {
        match self {
            KeyScheme::Ed25519 => "ed25519",
            KeyScheme::EcdsaP256Sha256 => "ecdsa",
            KeyScheme::RsaPssSha256 => "rsa",
        }
    }

    /// TUF's `scheme`.
    pub fn scheme(self) -> &'static str {
        match self {
            KeyScheme::Ed25519 => "ed25519",
            KeyScheme::EcdsaP256Sha256 => "ecdsa-sha2-nistp256",
            KeyScheme::RsaPssSha256 => "rsassa-pss-sha256",
        }
    }

    /// Parses a scheme name as used on the command line (`ed25519`, `ecdsa`, `rsa`) or in TUF.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "ed25519" => Some(KeyScheme::Ed25519),
            "ecdsa" | "ecdsa-sha2-nistp256" => Some(KeyScheme::EcdsaP256Sha256),
            "rsa" | "rsassa-pss-sha256" => Some(KeyScheme::RsaPssSha256),
            _ => None,
        }
    }
}

/// The `keyval` object of a key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyVal {
    /// Public key: hex (ed25519) or PEM (ecdsa, rsa).
    pub public: String,
    /// Fields we do not know, kept so the key ID and signatures survive a round trip.
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, Value>,
}

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the 32-byte key follows.
pub const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// A TUF public key object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Key {
    /// `keytype`: `ed25519`, `ecdsa`, `rsa`, …
    pub keytype: String,
    /// `scheme`: `ed25519`, `ecdsa-sha2-nistp256`, `rsassa-pss-sha256`, …
    pub scheme: String,
    /// `keyval`.
    pub keyval: KeyVal,
    /// Fields we do not know (e.g. legacy `keyid_hash_algorithms`), kept verbatim.
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, Value>,
}

impl Key {
    /// Builds the key object for a public key of `scheme` (`public` as TUF writes it).
    pub fn new(scheme: KeyScheme, public: String) -> Self {
        Key {
            keytype: scheme.keytype().to_owned(),
            scheme: scheme.scheme().to_owned(),
            keyval: KeyVal {
                public,
                unrecognized: BTreeMap::new(),
            },
            unrecognized: BTreeMap::new(),
        }
    }

    /// The public key as a standard `PUBLIC KEY` (SubjectPublicKeyInfo) PEM, as OpenSSL
    /// writes it: what a supplier sends, or `rampart delegate --key` reads.
    pub fn to_spki_pem(&self) -> Result<String> {
        let bad = |reason: &str| Error::BadKey {
            keyid: "(public key)".into(),
            reason: reason.to_owned(),
        };
        match self.key_scheme() {
            Some(KeyScheme::Ed25519) => {
                let raw = hex::decode(&self.keyval.public)
                    .map_err(|_| bad("an ed25519 public key is 64 hex digits"))?;
                if raw.len() != 32 {
                    return Err(bad("an ed25519 public key is 32 bytes"));
                }
                let mut der = ED25519_SPKI_PREFIX.to_vec();
                der.extend_from_slice(&raw);
                Ok(pem_encode(&der, "PUBLIC KEY"))
            }
            // TUF already writes these as SubjectPublicKeyInfo PEM.
            Some(KeyScheme::EcdsaP256Sha256 | KeyScheme::RsaPssSha256) => {
                Ok(self.keyval.public.clone())
            }
            None => Err(bad("unsupported key type")),
        }
    }

    /// The key ID TUF computes: SHA-256 over the canonical JSON of this key object.
    pub fn key_id(&self) -> Result<KeyId> {
        let bytes = canonical::to_canonical_from(self)?;
        Ok(KeyId(hex::encode(hash::sha256(&bytes))))
    }

    /// The supported scheme of this key, or why it is not supported.
    pub fn key_scheme(&self) -> Option<KeyScheme> {
        match (self.keytype.as_str(), self.scheme.as_str()) {
            ("ed25519", "ed25519") => Some(KeyScheme::Ed25519),
            ("ecdsa" | "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256") => {
                Some(KeyScheme::EcdsaP256Sha256)
            }
            ("rsa", "rsassa-pss-sha256") => Some(KeyScheme::RsaPssSha256),
            _ => None,
        }
    }

    /// Parses the key material, ready to verify signatures.
    pub fn parse(&self, keyid: &KeyId) -> Result<PublicKey> {
        let bad = |reason: String| Error::BadKey {
            keyid: keyid.to_string(),
            reason,
        };
        let scheme = self.key_scheme().ok_or_else(|| {
            bad(format!(
                "unsupported key type {:?} with scheme {:?}",
                self.keytype, self.scheme
            ))
        })?;
        let material = match scheme {
            KeyScheme::Ed25519 => {
                let raw = decode_lower_hex(&self.keyval.public)
                    .ok_or_else(|| bad("ed25519 public key is not lowercase hex".into()))?;
                if raw.len() != 32 {
                    return Err(bad(format!(
                        "ed25519 public key has {} bytes, expected 32",
                        raw.len()
                    )));
                }
                raw
            }
            KeyScheme::EcdsaP256Sha256 | KeyScheme::RsaPssSha256 => {
                pem_decode(&self.keyval.public, "PUBLIC KEY").map_err(bad)?
            }
        };
        let algorithm: &'static dyn VerificationAlgorithm = match scheme {
            KeyScheme::Ed25519 => &signature::ED25519,
            KeyScheme::EcdsaP256Sha256 => &signature::ECDSA_P256_SHA256_ASN1,
            KeyScheme::RsaPssSha256 => &signature::RSA_PSS_2048_8192_SHA256,
        };
        let parsed = ParsedPublicKey::new(algorithm, &material)
            .map_err(|e| bad(format!("{} public key rejected: {e}", scheme.scheme())))?;
        Ok(PublicKey {
            scheme,
            material,
            parsed,
        })
    }
}

/// A key made ready once to verify many times: its key ID computed and its material parsed.
///
/// Why: a verifier that checks the same keys over and over (the director checks each
/// vehicle's registered keys on every manifest) would otherwise serialise each key to
/// canonical JSON and hash it, and decode its material, for every signature it checks.
/// Either step failing is kept, and answered where the key is used, as it would have been.
#[derive(Debug)]
pub struct PreparedKey {
    key_id: Result<KeyId>,
    public: Result<PublicKey>,
}

impl PreparedKey {
    /// Prepares `key`.
    pub fn new(key: &Key) -> Self {
        let key_id = key.key_id();
        let public = match &key_id {
            Ok(id) => key.parse(id),
            Err(e) => Err(e.clone()),
        };
        PreparedKey { key_id, public }
    }

    /// The key ID, or why it could not be computed.
    pub fn key_id(&self) -> Result<&KeyId> {
        self.key_id.as_ref().map_err(Clone::clone)
    }

    /// Whether one of `signatures` made under this key's ID is a valid signature of
    /// `message`. A key that did not parse verifies nothing.
    pub fn signed(&self, message: &[u8], signatures: &[Signature]) -> bool {
        let (Ok(id), Ok(public)) = (&self.key_id, &self.public) else {
            return false;
        };
        signatures
            .iter()
            .filter(|s| &s.keyid == id)
            .filter_map(Signature::bytes)
            .any(|sig| public.verify(message, &sig))
    }
}

/// A parsed public key.
#[derive(Debug)]
pub struct PublicKey {
    scheme: KeyScheme,
    /// Raw ed25519 bytes or SPKI DER: the identity used to count distinct keys.
    material: Vec<u8>,
    parsed: ParsedPublicKey,
}

/// PSS salt length securesystemslib used before it switched to the digest length.
static RSA_PSS_SHA256_MAX_SALT: RsaParameters =
    signature::RSA_PSS_2048_8192_SHA256.with_pss_salt_length(signature::RsaPssSaltLength::Max);

impl PublicKey {
    /// The scheme.
    pub fn scheme(&self) -> KeyScheme {
        self.scheme
    }

    /// The key material (raw ed25519 bytes or SPKI DER): equal material means the same key.
    pub fn material(&self) -> &[u8] {
        &self.material
    }

    /// Whether `sig` is a valid signature of `message` by this key.
    pub fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        if self.parsed.verify_sig(message, sig).is_ok() {
            return true;
        }
        // Older securesystemslib signed RSA-PSS with the maximum salt length; accept both.
        if self.scheme == KeyScheme::RsaPssSha256 {
            if let Ok(alt) = ParsedPublicKey::new(&RSA_PSS_SHA256_MAX_SALT, &self.material) {
                return alt.verify_sig(message, sig).is_ok();
            }
        }
        false
    }
}

/// One entry of a document's `signatures` list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signature {
    /// Key ID of the signing key.
    pub keyid: KeyId,
    /// Hex signature bytes.
    pub sig: String,
    /// Fields we do not know, kept verbatim.
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, Value>,
}

impl Signature {
    /// Builds a signature entry.
    pub fn new(keyid: KeyId, sig: &[u8]) -> Self {
        Signature {
            keyid,
            sig: hex::encode(sig),
            unrecognized: BTreeMap::new(),
        }
    }

    /// The signature bytes, if the hex decodes.
    pub fn bytes(&self) -> Option<Vec<u8>> {
        hex::decode(&self.sig).ok()
    }
}

/// Decodes lowercase hex only (what TUF writes), so that two spellings of one value cannot
/// exist.
pub(crate) fn decode_lower_hex(s: &str) -> Option<Vec<u8>> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    hex::decode(s).ok()
}

/// Decodes the body of a PEM block with the given label.
pub fn pem_decode(pem: &str, label: &str) -> std::result::Result<Vec<u8>, String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem
        .find(&begin)
        .ok_or_else(|| format!("no '{begin}' line in PEM"))?;
    let after = pem.get(start + begin.len()..).unwrap_or("");
    let stop = after
        .find(&end)
        .ok_or_else(|| format!("no '{end}' line in PEM"))?;
    let body: String = after
        .get(..stop)
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| format!("PEM body is not base64: {e}"))
}

/// Encodes DER as a PEM block the way OpenSSL (and so securesystemslib) writes it: 64-column
/// lines and a trailing newline.
pub fn pem_encode(der: &[u8], label: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ed25519_key_exports_as_the_rfc_8410_spki() {
        let key = Key::new(KeyScheme::Ed25519, "ab".repeat(32));
        let der = pem_decode(&key.to_spki_pem().unwrap(), "PUBLIC KEY").unwrap();
        assert_eq!(der.len(), 44);
        assert!(der.starts_with(&ED25519_SPKI_PREFIX));
        assert_eq!(hex::encode(&der[12..]), "ab".repeat(32));
        let short = Key::new(KeyScheme::Ed25519, "ab".repeat(31));
        assert!(short.to_spki_pem().is_err());
    }
    use crate::signer::{InMemorySigner, Signer};

    #[test]
    fn key_id_is_sha256_of_canonical_key_object() {
        let key = Key::new(KeyScheme::Ed25519, "ab".repeat(32));
        let canon = format!(
            r#"{{"keytype":"ed25519","keyval":{{"public":"{}"}},"scheme":"ed25519"}}"#,
            "ab".repeat(32)
        );
        let expected = hex::encode(hash::sha256(canon.as_bytes()));
        assert_eq!(key.key_id().unwrap().0, expected);
    }

    #[test]
    fn key_id_covers_unrecognized_fields() {
        let mut key = Key::new(KeyScheme::Ed25519, "ab".repeat(32));
        let plain = key.key_id().unwrap();
        key.unrecognized.insert(
            "keyid_hash_algorithms".into(),
            serde_json::json!(["sha256"]),
        );
        assert_ne!(key.key_id().unwrap(), plain);
    }

    #[test]
    fn verifies_each_supported_scheme_and_rejects_other_messages() {
        for scheme in [
            KeyScheme::Ed25519,
            KeyScheme::EcdsaP256Sha256,
            KeyScheme::RsaPssSha256,
        ] {
            let signer = InMemorySigner::generate(scheme).unwrap();
            let sig = signer.sign(b"message").unwrap();
            let public = signer.public_key().parse(&signer.key_id()).unwrap();
            assert!(public.verify(b"message", &sig), "{scheme:?}");
            assert!(!public.verify(b"messagf", &sig), "{scheme:?}");
            assert!(!public.verify(b"message", b"garbage"), "{scheme:?}");
        }
    }

    #[test]
    fn rejects_unknown_key_types() {
        let mut key = Key::new(KeyScheme::Ed25519, "ab".repeat(32));
        key.keytype = "dsa".into();
        let err = key.parse(&KeyId("x".into())).unwrap_err();
        assert_eq!(err.rule(), "bad-key");
    }

    #[test]
    fn rejects_malformed_key_material() {
        let short = Key::new(KeyScheme::Ed25519, "ab".repeat(31));
        assert!(short.parse(&KeyId("x".into())).is_err());
        let upper = Key::new(KeyScheme::Ed25519, "AB".repeat(32));
        assert!(upper.parse(&KeyId("x".into())).is_err());
        let pem = Key::new(KeyScheme::EcdsaP256Sha256, "not pem".into());
        assert!(pem.parse(&KeyId("x".into())).is_err());
        let wrong_curve_body = pem_encode(b"\x30\x03\x02\x01\x00", "PUBLIC KEY");
        let bad = Key::new(KeyScheme::RsaPssSha256, wrong_curve_body);
        assert!(bad.parse(&KeyId("x".into())).is_err());
    }

    #[test]
    fn ecdsa_key_type_accepts_legacy_name() {
        let signer = InMemorySigner::generate(KeyScheme::EcdsaP256Sha256).unwrap();
        let mut key = signer.public_key().clone();
        key.keytype = "ecdsa-sha2-nistp256".into();
        assert!(key.parse(&KeyId("x".into())).is_ok());
    }

    #[test]
    fn pem_round_trips() {
        let der = (0u8..200).collect::<Vec<_>>();
        let pem = pem_encode(&der, "PUBLIC KEY");
        assert!(pem.lines().all(|l| l.len() <= 64));
        assert_eq!(pem_decode(&pem, "PUBLIC KEY").unwrap(), der);
    }
}
