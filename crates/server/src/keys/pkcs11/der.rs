//! DER helpers: the TUF public key of a token's EC point, raw ECDSA signatures as DER.

use rampart_core::key::{pem_encode, Key, KeyScheme};

/// DER of the OID id-Ed25519 (1.3.101.112, RFC 8410): `CKA_EC_PARAMS` of Ed25519 keys.
pub(super) const ED25519_PARAMS_OID: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

/// DER PrintableString "edwards25519": the alternative `CKA_EC_PARAMS` PKCS#11 3.0 allows.
pub(super) const ED25519_PARAMS_NAME: &[u8] = b"\x13\x0cedwards25519";

/// DER of the OID prime256v1 / secp256r1 (1.2.840.10045.3.1.7): `CKA_EC_PARAMS` of P-256.
pub(super) const P256_PARAMS_OID: &[u8] =
    &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// SubjectPublicKeyInfo DER up to the point: SEQUENCE { SEQUENCE { id-ecPublicKey,
/// prime256v1 }, BIT STRING (66 bytes, 0 unused bits) ... }. The 65-byte point follows.
pub(super) const P256_SPKI_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// Length of an uncompressed P-256 point (`04 || X || Y`).
pub(super) const P256_POINT_LEN: usize = 65;
/// Length of an Ed25519 public key.
pub(super) const ED25519_KEY_LEN: usize = 32;

/// Builds the TUF key object from a token's `CKA_EC_POINT`.
pub(super) fn tuf_public_key(scheme: KeyScheme, ec_point: &[u8]) -> Result<Key, String> {
    match scheme {
        KeyScheme::Ed25519 => {
            let raw = unwrap_ec_point(ec_point, ED25519_KEY_LEN).ok_or_else(|| {
                format!(
                    "CKA_EC_POINT is not an Ed25519 public key ({} bytes)",
                    ec_point.len()
                )
            })?;
            Ok(Key::new(scheme, hex::encode(raw)))
        }
        KeyScheme::EcdsaP256Sha256 => {
            let point = unwrap_ec_point(ec_point, P256_POINT_LEN)
                .filter(|p| p.first() == Some(&0x04))
                .ok_or_else(|| {
                    format!(
                        "CKA_EC_POINT is not an uncompressed P-256 point ({} bytes)",
                        ec_point.len()
                    )
                })?;
            let mut spki = P256_SPKI_PREFIX.to_vec();
            spki.extend_from_slice(point);
            Ok(Key::new(scheme, pem_encode(&spki, "PUBLIC KEY")))
        }
        other => Err(format!("scheme {} is not supported", other.scheme())),
    }
}

/// The key bytes of a `CKA_EC_POINT`: the content of a DER OCTET STRING (what the standard
/// asks for), or the bytes as they are when a token returns them raw.
pub(super) fn unwrap_ec_point(value: &[u8], expected_len: usize) -> Option<&[u8]> {
    if let Some(inner) = der_octet_string(value) {
        if inner.len() == expected_len {
            return Some(inner);
        }
    }
    (value.len() == expected_len).then_some(value)
}

/// The content of `value` if it is exactly one DER OCTET STRING.
pub(super) fn der_octet_string(value: &[u8]) -> Option<&[u8]> {
    let (&tag, rest) = value.split_first()?;
    if tag != 0x04 {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 2 {
            return None;
        }
        let (len_bytes, rest) = rest.split_at_checked(n)?;
        let len = len_bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, rest)
    };
    (rest.len() == len).then_some(rest)
}

/// Converts a PKCS#11 ECDSA signature (`r || s`, each half the length) into the DER
/// `SEQUENCE { INTEGER r, INTEGER s }` TUF verifies.
pub(super) fn ecdsa_raw_to_der(raw: &[u8]) -> Result<Vec<u8>, String> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) {
        return Err(format!(
            "token returned a {}-byte ECDSA signature, expected r || s of equal halves",
            raw.len()
        ));
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let mut body = der_integer(r);
    body.extend_from_slice(&der_integer(s));
    let mut out = vec![0x30];
    push_der_len(&mut out, body.len());
    out.extend_from_slice(&body);
    Ok(out)
}

/// DER INTEGER of an unsigned big-endian number: no superfluous leading zeros, and one zero
/// byte in front when the top bit is set (so the value stays positive).
pub(super) fn der_integer(unsigned: &[u8]) -> Vec<u8> {
    let start = unsigned
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(unsigned.len());
    let digits = unsigned.get(start..).unwrap_or(&[]);
    let mut content = Vec::with_capacity(digits.len() + 1);
    match digits.first() {
        None => content.push(0),
        Some(b) if b & 0x80 != 0 => {
            content.push(0);
            content.extend_from_slice(digits);
        }
        Some(_) => content.extend_from_slice(digits),
    }
    let mut out = vec![0x02];
    push_der_len(&mut out, content.len());
    out.extend_from_slice(&content);
    out
}

pub(super) fn push_der_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        let significant = bytes.get(skip..).unwrap_or(&[]);
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, UnparsedPublicKey};

    use super::*;
    use rampart_core::key::pem_encode;

    #[test]
    fn der_integers_follow_the_leading_zero_rules() {
        assert_eq!(der_integer(&[0x00, 0x00]), vec![0x02, 0x01, 0x00]);
        assert_eq!(der_integer(&[]), vec![0x02, 0x01, 0x00]);
        assert_eq!(der_integer(&[0x00, 0x7f]), vec![0x02, 0x01, 0x7f]);
        assert_eq!(der_integer(&[0x00, 0x80]), vec![0x02, 0x02, 0x00, 0x80]);
        assert_eq!(
            der_integer(&[0xff, 0x01]),
            vec![0x02, 0x03, 0x00, 0xff, 0x01]
        );
        assert_eq!(
            der_integer(&[0x00, 0x00, 0x01, 0x02]),
            vec![0x02, 0x02, 0x01, 0x02]
        );
    }

    #[test]
    fn der_lengths_use_long_form_from_128() {
        let mut v = Vec::new();
        push_der_len(&mut v, 127);
        assert_eq!(v, [0x7f]);
        v.clear();
        push_der_len(&mut v, 128);
        assert_eq!(v, [0x81, 0x80]);
        v.clear();
        push_der_len(&mut v, 300);
        assert_eq!(v, [0x82, 0x01, 0x2c]);
    }

    #[test]
    fn raw_ecdsa_signatures_become_der_that_aws_lc_verifies() {
        // Fixed-length signatures from aws-lc-rs play the token's part; 2000 of them cover
        // r/s with the top bit set and with leading zero bytes.
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
                .unwrap();
        let verifier = UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_ASN1,
            pair.public_key().as_ref(),
        );
        let mut short_r_or_s = 0;
        for i in 0u32..2000 {
            let msg = i.to_be_bytes();
            let raw = pair.sign(&rng, &msg).unwrap();
            let raw = raw.as_ref();
            if raw[0] == 0 || raw[32] == 0 {
                short_r_or_s += 1;
            }
            let der = ecdsa_raw_to_der(raw).unwrap();
            verifier.verify(&msg, &der).unwrap();
        }
        assert!(
            short_r_or_s > 0,
            "no signature exercised the leading-zero rule"
        );
    }

    #[test]
    fn odd_length_raw_signatures_are_refused() {
        assert!(ecdsa_raw_to_der(&[1, 2, 3]).is_err());
        assert!(ecdsa_raw_to_der(&[]).is_err());
    }

    #[test]
    fn ec_points_are_unwrapped_from_octet_strings_or_taken_raw() {
        let raw = [7u8; 32];
        let mut wrapped = vec![0x04, 0x20];
        wrapped.extend_from_slice(&raw);
        assert_eq!(unwrap_ec_point(&wrapped, 32), Some(&raw[..]));
        assert_eq!(unwrap_ec_point(&raw, 32), Some(&raw[..]));
        assert_eq!(unwrap_ec_point(&raw[..31], 32), None);

        let mut point = vec![0x04];
        point.extend_from_slice(&[9u8; 64]);
        let mut wrapped = vec![0x04, 0x41];
        wrapped.extend_from_slice(&point);
        assert_eq!(unwrap_ec_point(&wrapped, 65), Some(&point[..]));
        assert_eq!(unwrap_ec_point(&point, 65), Some(&point[..]));
        let mut long_form = vec![0x04, 0x81, 0x41];
        long_form.extend_from_slice(&point);
        assert_eq!(unwrap_ec_point(&long_form, 65), Some(&point[..]));
    }

    #[test]
    fn p256_spki_matches_what_aws_lc_writes() {
        use aws_lc_rs::encoding::AsDer;
        let rng = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref())
                .unwrap();
        let point = pair.public_key().as_ref().to_vec();
        let mut ec_point = vec![0x04, 0x41];
        ec_point.extend_from_slice(&point);
        let key = tuf_public_key(KeyScheme::EcdsaP256Sha256, &ec_point).unwrap();
        let der: aws_lc_rs::encoding::PublicKeyX509Der<'static> =
            pair.public_key().as_der().unwrap();
        assert_eq!(key.keyval.public, pem_encode(der.as_ref(), "PUBLIC KEY"));
        assert!(key.parse(&key.key_id().unwrap()).is_ok());
    }
}
