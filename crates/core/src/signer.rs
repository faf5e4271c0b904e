//! Signing: the [`Signer`] seam and an in-memory implementation.
//!
//! Like rustls' crypto providers, key sources sit behind one trait: key files and in-memory
//! keys here, PKCS#11 HSMs in the server crate. The core only ever asks a signer for its public
//! key and for a signature over bytes it has canonicalised itself.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};

use crate::error::{Error, Result};
use crate::key::{pem_decode, pem_encode, Key, KeyId, KeyScheme};

/// Something that can sign metadata: a key file, an HSM slot, a cloud KMS key.
pub trait Signer: Send + Sync {
    /// The TUF public key object of this signer.
    fn public_key(&self) -> &Key;

    /// The key ID (SHA-256 of the canonical public key object).
    fn key_id(&self) -> KeyId;

    /// Signs `message` (already canonical JSON) and returns the raw signature bytes.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>>;
}

enum KeyPairKind {
    Ed25519(Ed25519KeyPair),
    Ecdsa(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

/// A private key held in memory (loaded from a PKCS#8 file or freshly generated).
pub struct InMemorySigner {
    pair: KeyPairKind,
    public: Key,
    keyid: KeyId,
    pkcs8: Vec<u8>,
}

impl std::fmt::Debug for InMemorySigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemorySigner")
            .field("keyid", &self.keyid)
            .field("scheme", &self.public.scheme)
            .finish_non_exhaustive()
    }
}

fn crypto(e: impl std::fmt::Display) -> Error {
    Error::Crypto(e.to_string())
}

impl InMemorySigner {
    /// Generates a fresh key (RSA keys are 3072 bits).
    pub fn generate(scheme: KeyScheme) -> Result<Self> {
        let pkcs8 = match scheme {
            // PKCS#8 v1 (RFC 8410 without the public key): what OpenSSL 3 reads.
            KeyScheme::Ed25519 => Ed25519KeyPair::generate()
                .and_then(|k| k.to_pkcs8v1())
                .map_err(crypto)?
                .as_ref()
                .to_vec(),
            KeyScheme::EcdsaP256Sha256 => {
                EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_ASN1_SIGNING)
                    .and_then(|k| k.to_pkcs8v1())
                    .map_err(crypto)?
                    .as_ref()
                    .to_vec()
            }
            KeyScheme::RsaPssSha256 => {
                let pair = RsaKeyPair::generate(KeySize::Rsa3072).map_err(crypto)?;
                let der: aws_lc_rs::encoding::Pkcs8V1Der<'static> =
                    pair.as_der().map_err(crypto)?;
                der.as_ref().to_vec()
            }
        };
        Self::from_pkcs8(scheme, &pkcs8)
    }

    /// Loads a PKCS#8 DER private key of the given scheme.
    pub fn from_pkcs8(scheme: KeyScheme, pkcs8: &[u8]) -> Result<Self> {
        let bad = |e: &dyn std::fmt::Display| Error::BadKey {
            keyid: "(private key)".into(),
            reason: format!("cannot load {} PKCS#8 key: {e}", scheme.scheme()),
        };
        let (pair, public) = match scheme {
            KeyScheme::Ed25519 => {
                let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|e| bad(&e))?;
                let public = hex::encode(pair.public_key().as_ref());
                (KeyPairKind::Ed25519(pair), public)
            }
            KeyScheme::EcdsaP256Sha256 => {
                let pair =
                    EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8)
                        .map_err(|e| bad(&e))?;
                let der: aws_lc_rs::encoding::PublicKeyX509Der<'static> =
                    pair.public_key().as_der().map_err(|e| bad(&e))?;
                let public = pem_encode(der.as_ref(), "PUBLIC KEY");
                (KeyPairKind::Ecdsa(pair), public)
            }
            KeyScheme::RsaPssSha256 => {
                let pair = RsaKeyPair::from_pkcs8(pkcs8).map_err(|e| bad(&e))?;
                let der: aws_lc_rs::encoding::PublicKeyX509Der<'static> =
                    pair.public_key().as_der().map_err(|e| bad(&e))?;
                let public = pem_encode(der.as_ref(), "PUBLIC KEY");
                (KeyPairKind::Rsa(pair), public)
            }
        };
        let public = Key::new(scheme, public);
        let keyid = public.key_id()?;
        Ok(InMemorySigner {
            pair,
            public,
            keyid,
            pkcs8: pkcs8.to_vec(),
        })
    }

    /// Loads a `-----BEGIN PRIVATE KEY-----` PEM file's contents.
    pub fn from_pkcs8_pem(scheme: KeyScheme, pem: &str) -> Result<Self> {
        let der = pem_decode(pem, "PRIVATE KEY").map_err(|reason| Error::BadKey {
            keyid: "(private key)".into(),
            reason,
        })?;
        Self::from_pkcs8(scheme, &der)
    }

    /// Loads a PKCS#8 PEM private key of whichever supported scheme it is.
    pub fn from_pkcs8_pem_any(pem: &str) -> Result<Self> {
        let der = pem_decode(pem, "PRIVATE KEY").map_err(|reason| Error::BadKey {
            keyid: "(private key)".into(),
            reason,
        })?;
        [
            KeyScheme::Ed25519,
            KeyScheme::EcdsaP256Sha256,
            KeyScheme::RsaPssSha256,
        ]
        .into_iter()
        .find_map(|scheme| Self::from_pkcs8(scheme, &der).ok())
        .ok_or_else(|| Error::BadKey {
            keyid: "(private key)".into(),
            reason: "not an ed25519, P-256 or RSA PKCS#8 private key".into(),
        })
    }

    /// The private key as PKCS#8 PEM, for writing to a key file.
    pub fn to_pkcs8_pem(&self) -> String {
        pem_encode(&self.pkcs8, "PRIVATE KEY")
    }

    /// The scheme of this key.
    pub fn scheme(&self) -> KeyScheme {
        match self.pair {
            KeyPairKind::Ed25519(_) => KeyScheme::Ed25519,
            KeyPairKind::Ecdsa(_) => KeyScheme::EcdsaP256Sha256,
            KeyPairKind::Rsa(_) => KeyScheme::RsaPssSha256,
        }
    }
}

impl Signer for InMemorySigner {
    fn public_key(&self) -> &Key {
        &self.public
    }

    fn key_id(&self) -> KeyId {
        self.keyid.clone()
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        let rng = SystemRandom::new();
        match &self.pair {
            KeyPairKind::Ed25519(pair) => Ok(pair.sign(message).as_ref().to_vec()),
            KeyPairKind::Ecdsa(pair) => {
                Ok(pair.sign(&rng, message).map_err(crypto)?.as_ref().to_vec())
            }
            KeyPairKind::Rsa(pair) => {
                let mut sig = vec![0u8; pair.public_modulus_len()];
                pair.sign(&signature::RSA_PSS_SHA256, &rng, message, &mut sig)
                    .map_err(crypto)?;
                Ok(sig)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkcs8_pem_round_trip_keeps_the_key_id() {
        for scheme in [KeyScheme::Ed25519, KeyScheme::EcdsaP256Sha256] {
            let a = InMemorySigner::generate(scheme).unwrap();
            let b = InMemorySigner::from_pkcs8_pem(scheme, &a.to_pkcs8_pem()).unwrap();
            assert_eq!(a.key_id(), b.key_id());
            assert_eq!(b.scheme(), scheme);
        }
    }

    #[test]
    fn any_scheme_loader_recognises_each_key_type() {
        for scheme in [
            KeyScheme::Ed25519,
            KeyScheme::EcdsaP256Sha256,
            KeyScheme::RsaPssSha256,
        ] {
            let a = InMemorySigner::generate(scheme).unwrap();
            let b = InMemorySigner::from_pkcs8_pem_any(&a.to_pkcs8_pem()).unwrap();
            assert_eq!(b.scheme(), scheme);
            assert_eq!(a.key_id(), b.key_id());
        }
        assert!(InMemorySigner::from_pkcs8_pem_any(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        )
        .is_err());
    }

    #[test]
    fn loading_a_key_as_the_wrong_scheme_fails() {
        let a = InMemorySigner::generate(KeyScheme::Ed25519).unwrap();
        assert!(
            InMemorySigner::from_pkcs8_pem(KeyScheme::EcdsaP256Sha256, &a.to_pkcs8_pem()).is_err()
        );
    }
}
