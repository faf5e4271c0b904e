//! Per-ECU image encryption: X25519 key wrapping and a streaming AEAD (STREAM) for images.
//!
//! Uptane signs images but does not hide them; an eavesdropper on the cellular link or the
//! in-vehicle bus could read firmware meant for one ECU. Rampart therefore lets the director
//! encrypt an image so that only the ECU it is meant for can read it, and lets that ECU decrypt
//! while the image streams in, in memory bounded by one chunk whatever the image size.
//!
//! Two layers, both built only on `aws-lc-rs` (the crate's one crypto library):
//!
//! * **Key wrapping** ([`wrap_key`], [`unwrap_key`]). Every ECU holds a static X25519
//!   [`EcuKeyPair`]. An image is encrypted under a random 32-byte [`ContentKey`], which is
//!   wrapped for the ECU: a fresh ephemeral X25519 key agrees a shared secret with the ECU's
//!   public key, HKDF-SHA256 (salt = `ephemeral_public || recipient_public`, info =
//!   `"rampart key wrap v1"`) turns it into a 32-byte key-encryption key, and AES-256-GCM seals
//!   the content key under it with an all-zero nonce and the scheme string as AAD. The zero
//!   nonce is safe because every wrap uses a fresh ephemeral key and so a fresh KEK, which
//!   seals exactly one message. Putting both public keys in the salt binds the KEK to this
//!   recipient and this ephemeral key. The result, a [`WrappedKey`], is a small JSON object
//!   meant to live in the director's *signed* targets metadata:
//!
//!   ```json
//!   { "scheme": "x25519-hkdf-sha256-aes256gcm",
//!     "ephemeral_public": "<64 hex digits>",
//!     "wrapped_key": "<96 hex digits: 32-byte key + 16-byte tag>" }
//!   ```
//!
//! * **Streaming AEAD** ([`Encryptor`], [`Decryptor`]): the STREAM construction of
//!   Hoang–Reyhanitabar–Rogaway–Vizár ("Online Authenticated-Encryption and its Nonce-Reuse
//!   Misuse-Resistance", CRYPTO 2015), as used by age and Tink. Wire format:
//!
//!   ```text
//!   header (16 bytes) = "RMPE" || version 0x01 || chunk_size (u32, big-endian) || nonce prefix (7 random bytes)
//!   chunk i           = AES-256-GCM(stream key, nonce_i, aad = header, plaintext_i) || 16-byte tag
//!   nonce_i (12)      = nonce prefix (7) || i (u32, big-endian) || last (1 for the final chunk, else 0)
//!   stream key        = HKDF-SHA256(ikm = content key, salt = nonce prefix, info = "rampart image stream v1")
//!   ```
//!
//!   Every plaintext chunk is exactly `chunk_size` bytes except the final one, which holds
//!   1..=`chunk_size` bytes, or 0 bytes when (and only when) the whole plaintext is empty. So a
//!   plaintext whose length is a multiple of the chunk size ends with a *full* final chunk;
//!   there is never an empty trailing chunk. The counter in the nonce stops reordering and
//!   dropping of chunks; the last flag stops truncation at a chunk boundary and extension past
//!   the end; the header as AAD binds the chunk size and the version to every chunk. Deriving
//!   a per-stream key from the random prefix means one content key may encrypt more than one
//!   stream without nonce reuse (with a 56-bit prefix, two streams collide with probability
//!   about n²/2⁵⁷ for n streams — keep to one content key per image).
//!
//! Chunk sizes are bounded to [`MIN_CHUNK_SIZE`]..=[`MAX_CHUNK_SIZE`] (1 KiB to 1 MiB) so that a
//! hostile header cannot make the decryptor allocate much, and the 32-bit counter allows at
//! most 2³² chunks; going past it is an error ([`Error::LengthExceeded`]), never a wrap.
//!
//! The decryptor releases a chunk's plaintext only once that chunk has authenticated, but the
//! image *as a whole* is authentic (not truncated) only once [`Decryptor::finish`] returns
//! `Ok`. Callers must not install or run anything before that. The decryptor cannot know a
//! chunk is the final one until it sees either more bytes or `finish`, so it always holds back
//! the latest complete chunk — at most `chunk_size + 16` bytes buffered (plus the 16-byte
//! header), see [`Decryptor::buffered_capacity`].
//!
//! Failures name their rule: [`Error::DecryptionFailed`] (`decryption-failed`: a chunk did not
//! authenticate — tampering, reordering, trailing data or the wrong key), [`Error::Truncated`]
//! (`truncated`: the stream ended before its final chunk), [`Error::Malformed`] (`malformed`:
//! a bad header, a bad [`WrappedKey`] encoding or an invalid X25519 point) and
//! [`Error::BadKey`] (`bad-key`: a wrapped content key that does not open with this ECU's
//! key — wrapped for another ECU, or altered).

use std::fmt;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::agreement::{self, UnparsedPublicKey, X25519};
use aws_lc_rs::hkdf::{Salt, HKDF_SHA256};
use aws_lc_rs::rand;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::key::decode_lower_hex;

/// The only key-wrapping scheme: X25519, HKDF-SHA256, AES-256-GCM. Named in every
/// [`WrappedKey`] so that a future scheme can be introduced without ambiguity.
pub const WRAP_SCHEME: &str = "x25519-hkdf-sha256-aes256gcm";

/// Magic bytes at the start of an encrypted image, so that a plaintext image or another format
/// handed to the decryptor is refused at once rather than after a failed tag.
pub const MAGIC: [u8; 4] = *b"RMPE";

/// Version of the stream format written in the header; other versions are refused.
pub const FORMAT_VERSION: u8 = 1;

/// Length of the stream header in bytes.
pub const HEADER_LEN: usize = 16;

/// Length of the AES-256-GCM tag appended to every chunk.
pub const TAG_LEN: usize = 16;

/// Smallest chunk size accepted: below it the per-chunk tag overhead stops being negligible.
pub const MIN_CHUNK_SIZE: u32 = 1024;

/// Largest chunk size accepted: bounds what a hostile header can make the decryptor allocate.
pub const MAX_CHUNK_SIZE: u32 = 1 << 20;

/// Default chunk size (64 KiB): small enough for ECU RAM, large enough for a 0.025 % overhead.
pub const DEFAULT_CHUNK_SIZE: u32 = 64 * 1024;

/// Length of a content key, an X25519 key and an AES-256 key.
const KEY_LEN: usize = 32;

/// Length of the random nonce prefix in the header.
const PREFIX_LEN: usize = 7;

const WRAP_INFO: &[u8] = b"rampart key wrap v1";
const STREAM_INFO: &[u8] = b"rampart image stream v1";

fn crypto(what: &str) -> impl Fn(aws_lc_rs::error::Unspecified) -> Error + '_ {
    move |_| Error::Crypto(what.to_owned())
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0u8; N];
    rand::fill(&mut out).map_err(crypto("system random number generator failed"))?;
    Ok(out)
}

/// HKDF-SHA256 extract-and-expand to an AES-256-GCM key.
fn derive_aead_key(ikm: &[u8], salt: &[u8], info: &[u8]) -> Result<LessSafeKey> {
    let mut okm = [0u8; KEY_LEN];
    let info = [info];
    Salt::new(HKDF_SHA256, salt)
        .extract(ikm)
        .expand(&info, &AES_256_GCM)
        .and_then(|o| o.fill(&mut okm))
        .map_err(crypto("HKDF-SHA256 expansion failed"))?;
    let key = UnboundKey::new(&AES_256_GCM, &okm).map_err(crypto("AES-256-GCM key setup failed"));
    okm.fill(0);
    Ok(LessSafeKey::new(key?))
}

/// The symmetric key an image is encrypted under (32 random bytes).
///
/// Its `Debug` output never shows the key, so that it cannot leak into logs; the bytes are
/// overwritten (best effort) when it is dropped.
#[derive(Clone)]
pub struct ContentKey([u8; KEY_LEN]);

impl ContentKey {
    /// A fresh random key from the system RNG: one per image.
    pub fn generate() -> Result<Self> {
        random().map(ContentKey)
    }

    /// A key from its 32 bytes, e.g. one kept by the director to wrap for further ECUs.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        <[u8; KEY_LEN]>::try_from(bytes)
            .map(ContentKey)
            .map_err(|_| Error::malformed("content key", "must be exactly 32 bytes"))
    }

    /// The raw key bytes. Secret: only for storing the key where secrets are kept.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for ContentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ContentKey(<redacted>)")
    }
}

impl Drop for ContentKey {
    fn drop(&mut self) {
        self.0.fill(0);
        std::hint::black_box(&self.0);
    }
}

/// An ECU's static X25519 key pair for receiving wrapped content keys.
///
/// The private half never leaves the ECU; the public half is registered with the director
/// (in the ECU's inventory entry) so that the director can wrap content keys for it.
pub struct EcuKeyPair {
    private: agreement::PrivateKey,
    private_bytes: [u8; KEY_LEN],
    public: [u8; KEY_LEN],
}

impl fmt::Debug for EcuKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EcuKeyPair")
            .field("public", &hex::encode(self.public))
            .finish_non_exhaustive()
    }
}

impl Drop for EcuKeyPair {
    fn drop(&mut self) {
        self.private_bytes.fill(0);
        std::hint::black_box(&self.private_bytes);
    }
}

impl EcuKeyPair {
    /// A fresh key pair from the system RNG (provisioning).
    pub fn generate() -> Result<Self> {
        let mut bytes: [u8; KEY_LEN] = random()?;
        let pair = Self::from_private_bytes(&bytes);
        bytes.fill(0);
        pair
    }

    /// Loads a key pair from the 32-byte X25519 private scalar written by
    /// [`EcuKeyPair::private_bytes`]. Any 32 bytes are a valid X25519 private key (RFC 7748
    /// clamps them), so only the length is checked.
    pub fn from_private_bytes(bytes: &[u8]) -> Result<Self> {
        let private_bytes = <[u8; KEY_LEN]>::try_from(bytes)
            .map_err(|_| Error::malformed("ECU private key", "must be exactly 32 bytes"))?;
        let private = agreement::PrivateKey::from_private_key(&X25519, &private_bytes)
            .map_err(|e| Error::malformed("ECU private key", e))?;
        let public = private
            .compute_public_key()
            .map_err(crypto("X25519 public key computation failed"))?;
        let public = <[u8; KEY_LEN]>::try_from(public.as_ref())
            .map_err(|_| Error::Crypto("X25519 public key is not 32 bytes".into()))?;
        Ok(EcuKeyPair {
            private,
            private_bytes,
            public,
        })
    }

    /// The 32-byte private scalar, for storing in the ECU's secure storage. Secret.
    pub fn private_bytes(&self) -> [u8; KEY_LEN] {
        self.private_bytes
    }

    /// The 32-byte public key to register with the director.
    pub fn public_key(&self) -> [u8; KEY_LEN] {
        self.public
    }
}

/// A content key wrapped for one ECU, as carried in signed director metadata.
///
/// The fields are exactly the JSON members; hex is lowercase, as elsewhere in TUF metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    /// Always [`WRAP_SCHEME`]; anything else is refused.
    pub scheme: String,
    /// Hex of the 32-byte ephemeral X25519 public key of this wrap.
    pub ephemeral_public: String,
    /// Hex of the 48-byte AES-256-GCM ciphertext of the content key (32 bytes + 16-byte tag).
    pub wrapped_key: String,
}

/// X25519 agreement followed by HKDF-SHA256 to the key-encryption key.
///
/// Fails if the peer point is invalid or of low order, which shows as an all-zero shared
/// secret (RFC 7748 §6.1); aws-lc refuses those itself and the explicit check is a second line.
fn key_encryption_key(
    private: &agreement::PrivateKey,
    peer_public: &[u8; KEY_LEN],
    ephemeral_public: &[u8; KEY_LEN],
    recipient_public: &[u8; KEY_LEN],
    what: &str,
) -> Result<LessSafeKey> {
    let bad_point = || {
        Error::malformed(
            what,
            "X25519 agreement failed: invalid or low-order public key",
        )
    };
    let mut salt = [0u8; 2 * KEY_LEN];
    for (d, s) in salt
        .iter_mut()
        .zip(ephemeral_public.iter().chain(recipient_public.iter()))
    {
        *d = *s;
    }
    agreement::agree(
        private,
        UnparsedPublicKey::new(&X25519, peer_public),
        bad_point(),
        |shared| {
            if shared.iter().all(|b| *b == 0) {
                return Err(bad_point());
            }
            derive_aead_key(shared, &salt, WRAP_INFO)
        },
    )
}

fn public_key_array(bytes: &[u8], what: &str) -> Result<[u8; KEY_LEN]> {
    <[u8; KEY_LEN]>::try_from(bytes)
        .map_err(|_| Error::malformed(what, "X25519 public key must be exactly 32 bytes"))
}

/// Wraps `dek` for the ECU whose X25519 public key is `recipient_public` (32 bytes).
///
/// Each call uses a fresh ephemeral key, so wrapping the same key twice gives different
/// results and the zero AES-GCM nonce is never reused under one key-encryption key.
pub fn wrap_key(recipient_public: &[u8], dek: &ContentKey) -> Result<WrappedKey> {
    let recipient = public_key_array(recipient_public, "ECU public key")?;
    let ephemeral =
        agreement::PrivateKey::generate(&X25519).map_err(crypto("X25519 key generation failed"))?;
    let ephemeral_public = ephemeral
        .compute_public_key()
        .map_err(crypto("X25519 public key computation failed"))?;
    let ephemeral_public = <[u8; KEY_LEN]>::try_from(ephemeral_public.as_ref())
        .map_err(|_| Error::Crypto("X25519 public key is not 32 bytes".into()))?;
    let kek = key_encryption_key(
        &ephemeral,
        &recipient,
        &ephemeral_public,
        &recipient,
        "ECU public key",
    )?;
    let mut sealed = dek.as_bytes().to_vec();
    kek.seal_in_place_append_tag(
        Nonce::assume_unique_for_key([0u8; 12]),
        Aad::from(WRAP_SCHEME.as_bytes()),
        &mut sealed,
    )
    .map_err(crypto("AES-256-GCM seal failed"))?;
    Ok(WrappedKey {
        scheme: WRAP_SCHEME.to_owned(),
        ephemeral_public: hex::encode(ephemeral_public),
        wrapped_key: hex::encode(sealed),
    })
}

/// Unwraps a content key wrapped for `ecu` by [`wrap_key`].
///
/// Refuses unknown schemes, bad hex, wrong lengths and invalid or low-order ephemeral keys
/// ([`Error::Malformed`]), and a wrapped key that does not authenticate under this ECU's key
/// ([`Error::BadKey`], keyed by this ECU's public key): wrapped for another ECU, or altered.
pub fn unwrap_key(ecu: &EcuKeyPair, wrapped: &WrappedKey) -> Result<ContentKey> {
    const WHAT: &str = "wrapped key";
    if wrapped.scheme != WRAP_SCHEME {
        return Err(Error::malformed(
            WHAT,
            format!(
                "unknown scheme {:?} (supported: {WRAP_SCHEME})",
                wrapped.scheme
            ),
        ));
    }
    let ephemeral = decode_lower_hex(&wrapped.ephemeral_public)
        .ok_or_else(|| Error::malformed(WHAT, "ephemeral_public is not lowercase hex"))?;
    let ephemeral = public_key_array(&ephemeral, WHAT)?;
    let mut sealed = decode_lower_hex(&wrapped.wrapped_key)
        .ok_or_else(|| Error::malformed(WHAT, "wrapped_key is not lowercase hex"))?;
    if sealed.len() != KEY_LEN + TAG_LEN {
        return Err(Error::malformed(
            WHAT,
            format!(
                "wrapped_key must be {} bytes, found {}",
                KEY_LEN + TAG_LEN,
                sealed.len()
            ),
        ));
    }
    let kek = key_encryption_key(&ecu.private, &ephemeral, &ephemeral, &ecu.public, WHAT)?;
    let opened = kek.open_in_place(
        Nonce::assume_unique_for_key([0u8; 12]),
        Aad::from(WRAP_SCHEME.as_bytes()),
        &mut sealed,
    );
    let key = match opened {
        Ok(plain) => ContentKey::from_bytes(plain),
        Err(_) => Err(Error::BadKey {
            keyid: hex::encode(ecu.public),
            reason: "the wrapped content key does not open with this ECU's key \
                     (wrapped for another ECU, or altered)"
                .into(),
        }),
    };
    sealed.fill(0);
    key
}

/// Exact length of the encrypted stream (header included) for a plaintext of
/// `plaintext_len` bytes, for the length and hashes of the encrypted image in signed metadata.
///
/// Returns `u64::MAX` — a length no stream can have — when no stream can exist: a chunk size
/// outside [`MIN_CHUNK_SIZE`]..=[`MAX_CHUNK_SIZE`] or more than 2³² chunks.
pub fn encrypted_length(plaintext_len: u64, chunk_size: u32) -> u64 {
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        return u64::MAX;
    }
    let chunks = plaintext_len.div_ceil(u64::from(chunk_size)).max(1);
    if chunks > 1 << 32 {
        return u64::MAX;
    }
    (HEADER_LEN as u64)
        .saturating_add(plaintext_len)
        .saturating_add(chunks.saturating_mul(TAG_LEN as u64))
}

/// The 12-byte nonce of chunk `index`; refuses counters past 2³²−1 and a non-final chunk at
/// 2³²−1 (no counter would be left for the chunk that must follow it).
fn chunk_nonce(prefix: &[u8; PREFIX_LEN], index: u64, last: bool, limit: Error) -> Result<Nonce> {
    let counter = u32::try_from(index).map_err(|_| limit.clone())?;
    if !last && counter == u32::MAX {
        return Err(limit);
    }
    let mut nonce = [0u8; 12];
    let counter = counter.to_be_bytes();
    let flag = [u8::from(last)];
    for (d, s) in nonce
        .iter_mut()
        .zip(prefix.iter().chain(counter.iter()).chain(flag.iter()))
    {
        *d = *s;
    }
    Ok(Nonce::assume_unique_for_key(nonce))
}

/// The largest plaintext a stream with this chunk size can carry (2³² chunks).
fn max_plaintext(chunk_size: usize) -> u64 {
    (chunk_size as u64).saturating_mul(1 << 32)
}

fn check_chunk_size(chunk_size: u32, what: &str) -> Result<usize> {
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        return Err(Error::malformed(
            what,
            format!("chunk size {chunk_size} is outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}"),
        ));
    }
    usize::try_from(chunk_size).map_err(|_| Error::malformed(what, "chunk size too large"))
}

/// Encrypts an image as a STREAM, in memory bounded by one chunk.
///
/// The 16-byte header is emitted at the front of the output of the first call to
/// [`Encryptor::update`] or [`Encryptor::finish`], whichever comes first, so concatenating
/// every output gives the complete stream; [`Encryptor::header`] shows it in advance.
/// A full chunk is held back until more plaintext arrives, since only then is it known not to
/// be the final one.
pub struct Encryptor {
    key: LessSafeKey,
    header: [u8; HEADER_LEN],
    prefix: [u8; PREFIX_LEN],
    chunk_size: usize,
    buf: Vec<u8>,
    next_chunk: u64,
    header_written: bool,
    failed: Option<Error>,
}

impl fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encryptor")
            .field("chunk_size", &self.chunk_size)
            .field("next_chunk", &self.next_chunk)
            .finish_non_exhaustive()
    }
}

impl Encryptor {
    /// Starts a stream under `key` with chunks of `chunk_size` plaintext bytes
    /// ([`MIN_CHUNK_SIZE`]..=[`MAX_CHUNK_SIZE`]; [`DEFAULT_CHUNK_SIZE`] unless there is a
    /// reason). A random nonce prefix is drawn for the stream.
    pub fn new(key: &ContentKey, chunk_size: u32) -> Result<Self> {
        Self::with_prefix(key, chunk_size, random()?)
    }

    fn with_prefix(key: &ContentKey, chunk_size: u32, prefix: [u8; PREFIX_LEN]) -> Result<Self> {
        let size = check_chunk_size(chunk_size, "encryption chunk size")?;
        let mut header = [0u8; HEADER_LEN];
        let version = [FORMAT_VERSION];
        let size_be = chunk_size.to_be_bytes();
        for (d, s) in header.iter_mut().zip(
            MAGIC
                .iter()
                .chain(version.iter())
                .chain(size_be.iter())
                .chain(prefix.iter()),
        ) {
            *d = *s;
        }
        Ok(Encryptor {
            key: derive_aead_key(key.as_bytes(), &prefix, STREAM_INFO)?,
            header,
            prefix,
            chunk_size: size,
            buf: Vec::with_capacity(size),
            next_chunk: 0,
            header_written: false,
            failed: None,
        })
    }

    /// The stream header (magic, version, chunk size, nonce prefix).
    pub fn header(&self) -> [u8; HEADER_LEN] {
        self.header
    }

    fn write_header(&mut self, out: &mut Vec<u8>) {
        if !self.header_written {
            out.extend_from_slice(&self.header);
            self.header_written = true;
        }
    }

    fn seal(&mut self, plaintext: &[u8], last: bool, out: &mut Vec<u8>) -> Result<()> {
        let limit = Error::LengthExceeded {
            what: "image to encrypt".into(),
            max: max_plaintext(self.chunk_size),
        };
        let nonce = chunk_nonce(&self.prefix, self.next_chunk, last, limit)?;
        let start = out.len();
        out.extend_from_slice(plaintext);
        let sealed = match out.get_mut(start..) {
            Some(dst) => self
                .key
                .seal_in_place_separate_tag(nonce, Aad::from(&self.header), dst)
                .map_err(crypto("AES-256-GCM seal failed")),
            None => Err(Error::Crypto("output buffer shrank".into())),
        };
        match sealed {
            Ok(tag) => {
                out.extend_from_slice(tag.as_ref());
                self.next_chunk = self.next_chunk.saturating_add(1);
                Ok(())
            }
            Err(e) => {
                out.truncate(start);
                Err(e)
            }
        }
    }

    fn sticky(&mut self, r: Result<()>) -> Result<()> {
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    /// Encrypts the next `plaintext` bytes and appends whatever ciphertext is complete to
    /// `out` (possibly nothing but the header). After an error every later call fails too.
    pub fn update(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.write_header(out);
        let r = self.update_inner(plaintext, out);
        self.sticky(r)
    }

    fn update_inner(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let mut input = plaintext;
        while !input.is_empty() {
            if self.buf.len() == self.chunk_size {
                // More plaintext follows, so the held-back chunk is not the final one.
                let chunk = std::mem::take(&mut self.buf);
                let r = self.seal(&chunk, false, out);
                self.buf = chunk;
                self.buf.clear();
                r?;
            }
            if self.buf.is_empty() && input.len() > self.chunk_size {
                // A whole chunk with more after it: seal straight from the input.
                if let Some((chunk, rest)) = input.split_at_checked(self.chunk_size) {
                    self.seal(chunk, false, out)?;
                    input = rest;
                    continue;
                }
            }
            let room = self.chunk_size.saturating_sub(self.buf.len());
            let (head, rest) = input.split_at(room.min(input.len()));
            self.buf.extend_from_slice(head);
            input = rest;
        }
        Ok(())
    }

    /// Seals the final chunk (the held-back plaintext, empty only if the whole plaintext was)
    /// and appends it to `out`, after the header if nothing was written yet.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<()> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        self.write_header(out);
        let chunk = std::mem::take(&mut self.buf);
        self.seal(&chunk, true, out)
    }
}

/// State of a decryptor once the header has been read.
struct Body {
    key: LessSafeKey,
    header: [u8; HEADER_LEN],
    prefix: [u8; PREFIX_LEN],
    chunk_size: usize,
    /// Ciphertext of the chunk not yet known to be or not to be the final one; never more
    /// than `chunk_size + TAG_LEN` bytes.
    buf: Vec<u8>,
    next_chunk: u64,
}

impl Body {
    fn full(&self) -> usize {
        self.chunk_size.saturating_add(TAG_LEN)
    }

    /// Authenticates and decrypts chunk `next_chunk` straight into `out`. On failure `out` is
    /// left as it was, so no unauthenticated plaintext ever reaches the caller.
    fn open(&self, chunk: &[u8], last: bool, out: &mut Vec<u8>) -> Result<()> {
        let limit = Error::LengthExceeded {
            what: "encrypted image".into(),
            max: encrypted_length(
                max_plaintext(self.chunk_size),
                u32::try_from(self.chunk_size).unwrap_or(u32::MAX),
            ),
        };
        let nonce = chunk_nonce(&self.prefix, self.next_chunk, last, limit)?;
        let failed = Error::DecryptionFailed {
            chunk: self.next_chunk,
        };
        let ct_len = chunk.len().checked_sub(TAG_LEN).ok_or(failed.clone())?;
        let (ciphertext, tag) = chunk.split_at_checked(ct_len).ok_or(failed.clone())?;
        let start = out.len();
        out.resize(start.saturating_add(ct_len), 0);
        let opened = match out.get_mut(start..) {
            Some(dst) => self
                .key
                .open_separate_gather(nonce, Aad::from(&self.header), ciphertext, tag, dst)
                .is_ok(),
            None => false,
        };
        if opened {
            Ok(())
        } else {
            if let Some(dst) = out.get_mut(start..) {
                dst.fill(0);
            }
            out.truncate(start);
            Err(failed)
        }
    }
}

enum State {
    Header { buf: [u8; HEADER_LEN], len: usize },
    Body(Body),
}

/// Decrypts and authenticates a STREAM-encrypted image as it arrives, in memory bounded by one
/// chunk, accepting the ciphertext split at any points.
///
/// Plaintext is appended to the output only after its chunk authenticated; the stream as a
/// whole (its final chunk, hence no truncation) is authentic only when
/// [`Decryptor::finish`] returns `Ok`. After an error every later call fails too.
pub struct Decryptor {
    key: ContentKey,
    state: State,
    failed: Option<Error>,
}

impl fmt::Debug for Decryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Decryptor");
        if let State::Body(b) = &self.state {
            d.field("chunk_size", &b.chunk_size)
                .field("next_chunk", &b.next_chunk);
        }
        d.finish_non_exhaustive()
    }
}

impl Decryptor {
    /// Starts decrypting a stream encrypted under `key`.
    pub fn new(key: &ContentKey) -> Self {
        Decryptor {
            key: key.clone(),
            state: State::Header {
                buf: [0u8; HEADER_LEN],
                len: 0,
            },
            failed: None,
        }
    }

    /// Bytes of buffer this decryptor holds: the header plus at most one chunk and its tag,
    /// whatever the size of the stream or of the pieces it is fed in.
    pub fn buffered_capacity(&self) -> usize {
        match &self.state {
            State::Header { .. } => HEADER_LEN,
            State::Body(b) => HEADER_LEN.saturating_add(b.buf.capacity()),
        }
    }

    /// The chunk size read from the header, once the header is complete.
    pub fn chunk_size(&self) -> Option<u32> {
        match &self.state {
            State::Header { .. } => None,
            State::Body(b) => u32::try_from(b.chunk_size).ok(),
        }
    }

    fn parse_header(&self, header: [u8; HEADER_LEN]) -> Result<Body> {
        const WHAT: &str = "encrypted image header";
        let [m0, m1, m2, m3, version, c0, c1, c2, c3, p0, p1, p2, p3, p4, p5, p6] = header;
        if [m0, m1, m2, m3] != MAGIC {
            return Err(Error::malformed(
                WHAT,
                "bad magic: not a Rampart encrypted image",
            ));
        }
        if version != FORMAT_VERSION {
            return Err(Error::malformed(
                WHAT,
                format!("unsupported format version {version} (supported: {FORMAT_VERSION})"),
            ));
        }
        let chunk_size = check_chunk_size(u32::from_be_bytes([c0, c1, c2, c3]), WHAT)?;
        let prefix = [p0, p1, p2, p3, p4, p5, p6];
        Ok(Body {
            key: derive_aead_key(self.key.as_bytes(), &prefix, STREAM_INFO)?,
            header,
            prefix,
            chunk_size,
            buf: Vec::with_capacity(chunk_size.saturating_add(TAG_LEN)),
            next_chunk: 0,
        })
    }

    /// Feeds the next ciphertext bytes and appends the plaintext of every chunk now known not
    /// to be the final one, once it authenticated.
    pub fn update(&mut self, ciphertext: &[u8], out: &mut Vec<u8>) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.update_inner(ciphertext, out);
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    fn update_inner(&mut self, ciphertext: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let mut input = ciphertext;
        while !input.is_empty() {
            match &mut self.state {
                State::Header { buf, len } => {
                    let mut taken = 0;
                    for (d, s) in buf.iter_mut().skip(*len).zip(input.iter()) {
                        *d = *s;
                        taken += 1;
                    }
                    *len = len.saturating_add(taken);
                    input = input.get(taken..).unwrap_or_default();
                    if *len >= HEADER_LEN {
                        let header = *buf;
                        self.state = State::Body(self.parse_header(header)?);
                    }
                }
                State::Body(body) => {
                    let full = body.full();
                    if body.buf.len() == full {
                        // More bytes follow, so the held-back chunk is not the final one.
                        body.open(&body.buf, false, out)?;
                        body.buf.clear();
                        body.next_chunk = body.next_chunk.saturating_add(1);
                    }
                    if body.buf.is_empty() && input.len() > full {
                        // A whole chunk with more after it: open straight from the input.
                        if let Some((chunk, rest)) = input.split_at_checked(full) {
                            body.open(chunk, false, out)?;
                            body.next_chunk = body.next_chunk.saturating_add(1);
                            input = rest;
                            continue;
                        }
                    }
                    let room = full.saturating_sub(body.buf.len());
                    let (head, rest) = input.split_at(room.min(input.len()));
                    body.buf.extend_from_slice(head);
                    input = rest;
                }
            }
        }
        Ok(())
    }

    /// Ends the stream: authenticates the held-back chunk as the final one and appends its
    /// plaintext. Fails with [`Error::Truncated`] if the stream ended before its final chunk —
    /// no or a partial header, a header only, fewer bytes than a tag after the last complete
    /// chunk, or a cut exactly at a chunk boundary (the held-back chunk authenticates as a
    /// non-final chunk) — and with [`Error::DecryptionFailed`] if the final chunk does not
    /// authenticate (tampering, a cut inside a chunk, trailing data, the wrong key).
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<()> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let body = match &self.state {
            State::Header { .. } => return Err(Error::Truncated { chunks: 0 }),
            State::Body(body) => body,
        };
        if body.buf.len() < TAG_LEN {
            return Err(Error::Truncated {
                chunks: body.next_chunk,
            });
        }
        match body.open(&body.buf, true, out) {
            Ok(()) => Ok(()),
            Err(e) => {
                if body.buf.len() == body.full() {
                    // Distinguish a cut at a chunk boundary from tampering: does the chunk
                    // authenticate as a non-final one? Its plaintext is not released.
                    let start = out.len();
                    let not_last = body.open(&body.buf, false, out);
                    out.truncate(start);
                    if not_last.is_ok() {
                        return Err(Error::Truncated {
                            chunks: body.next_chunk.saturating_add(1),
                        });
                    }
                }
                Err(e)
            }
        }
    }
}

/// Encrypts a whole image held in memory with [`DEFAULT_CHUNK_SIZE`] chunks.
pub fn encrypt_all(key: &ContentKey, plaintext: &[u8]) -> Result<Vec<u8>> {
    let mut enc = Encryptor::new(key, DEFAULT_CHUNK_SIZE)?;
    let expected = encrypted_length(plaintext.len() as u64, DEFAULT_CHUNK_SIZE);
    let mut out = Vec::with_capacity(usize::try_from(expected).unwrap_or(0));
    enc.update(plaintext, &mut out)?;
    enc.finish(&mut out)?;
    Ok(out)
}

/// Decrypts and authenticates a whole encrypted image held in memory (any chunk size).
pub fn decrypt_all(key: &ContentKey, ciphertext: &[u8]) -> Result<Vec<u8>> {
    let mut dec = Decryptor::new(key);
    let mut out = Vec::with_capacity(ciphertext.len());
    dec.update(ciphertext, &mut out)?;
    dec.finish(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: u32 = MIN_CHUNK_SIZE;
    const SMALL_FULL: usize = MIN_CHUNK_SIZE as usize + TAG_LEN;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i.wrapping_mul(31) % 251) as u8).collect()
    }

    fn encrypt(key: &ContentKey, plaintext: &[u8], chunk_size: u32) -> Vec<u8> {
        let mut enc = Encryptor::new(key, chunk_size).unwrap();
        let mut out = Vec::new();
        enc.update(plaintext, &mut out).unwrap();
        enc.finish(&mut out).unwrap();
        out
    }

    fn decrypt_in_pieces(key: &ContentKey, ciphertext: &[u8], sizes: &[usize]) -> Result<Vec<u8>> {
        let mut dec = Decryptor::new(key);
        let mut out = Vec::new();
        let mut rest = ciphertext;
        let mut i = 0;
        while !rest.is_empty() {
            let n = sizes[i % sizes.len()].min(rest.len());
            let (piece, tail) = rest.split_at(n);
            dec.update(piece, &mut out)?;
            rest = tail;
            i += 1;
        }
        dec.finish(&mut out)?;
        Ok(out)
    }

    /// A small deterministic generator for irregular split points.
    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        *seed >> 33
    }

    /// Stream of `chunks` chunks with the last one 5 bytes long.
    fn small_stream(key: &ContentKey, chunks: usize) -> (Vec<u8>, Vec<u8>) {
        let plain = data((chunks - 1) * SMALL as usize + 5);
        let ct = encrypt(key, &plain, SMALL);
        (plain, ct)
    }

    #[test]
    fn round_trips_at_chunk_boundary_sizes_for_several_chunk_sizes() {
        let key = ContentKey::generate().unwrap();
        for chunk in [MIN_CHUNK_SIZE, 1500, 4096, DEFAULT_CHUNK_SIZE] {
            let c = chunk as usize;
            for len in [0, 1, c - 1, c, c + 1, 2 * c, 3 * c + 5] {
                let plain = data(len);
                let ct = encrypt(&key, &plain, chunk);
                assert_eq!(ct.len() as u64, encrypted_length(len as u64, chunk));
                assert_eq!(
                    decrypt_all(&key, &ct).unwrap(),
                    plain,
                    "chunk {chunk} len {len}"
                );
            }
        }
    }

    #[test]
    fn header_has_magic_version_chunk_size_and_prefix() {
        let key = ContentKey::generate().unwrap();
        let enc = Encryptor::new(&key, 4096).unwrap();
        let header = enc.header();
        assert_eq!(&header[..4], b"RMPE");
        assert_eq!(header[4], 1);
        assert_eq!(&header[5..9], &4096u32.to_be_bytes());
        let ct = {
            let mut out = Vec::new();
            enc.finish(&mut out).unwrap();
            out
        };
        assert_eq!(&ct[..HEADER_LEN], &header);
        assert_eq!(ct.len(), HEADER_LEN + TAG_LEN);
    }

    #[test]
    fn encryptor_emits_the_header_with_the_first_update() {
        let key = ContentKey::generate().unwrap();
        let mut enc = Encryptor::new(&key, SMALL).unwrap();
        let mut out = Vec::new();
        enc.update(b"abc", &mut out).unwrap();
        assert_eq!(out, enc.header());
        enc.update(b"", &mut out).unwrap();
        assert_eq!(out.len(), HEADER_LEN);
    }

    #[test]
    fn a_full_final_chunk_is_not_followed_by_an_empty_chunk() {
        let key = ContentKey::generate().unwrap();
        let ct = encrypt(&key, &data(2 * SMALL as usize), SMALL);
        assert_eq!(ct.len(), HEADER_LEN + 2 * SMALL_FULL);
    }

    #[test]
    fn encrypted_length_equals_real_output_length_for_many_sizes() {
        let key = ContentKey::generate().unwrap();
        let mut seed = 7;
        let mut sizes: Vec<usize> = (0..40).collect();
        sizes.extend((0..40).map(|_| lcg(&mut seed) as usize % 20_000));
        sizes.extend([1023, 1024, 1025, 2047, 2048, 2049, 10 * 1024]);
        for chunk in [MIN_CHUNK_SIZE, 2048, 3000] {
            for &len in &sizes {
                let ct = encrypt(&key, &data(len), chunk);
                assert_eq!(ct.len() as u64, encrypted_length(len as u64, chunk));
            }
        }
        assert_eq!(encrypted_length(0, DEFAULT_CHUNK_SIZE), 32);
        assert_eq!(encrypted_length(1, 0), u64::MAX);
        assert_eq!(encrypted_length(1, 1 << 31), u64::MAX);
        assert_eq!(encrypted_length(u64::MAX, MAX_CHUNK_SIZE), u64::MAX);
        let most = u64::from(MIN_CHUNK_SIZE) << 32;
        assert_eq!(
            encrypted_length(most, MIN_CHUNK_SIZE),
            16 + most + 16 * (1 << 32)
        );
        assert_eq!(encrypted_length(most + 1, MIN_CHUNK_SIZE), u64::MAX);
    }

    #[test]
    fn one_byte_at_a_time_gives_identical_plaintext() {
        let key = ContentKey::generate().unwrap();
        for len in [0, 1, 1024, 3 * 1024 + 5] {
            let plain = data(len);
            let ct = encrypt(&key, &plain, SMALL);
            assert_eq!(decrypt_in_pieces(&key, &ct, &[1]).unwrap(), plain);
        }
    }

    #[test]
    fn irregular_split_points_give_identical_plaintext() {
        let key = ContentKey::generate().unwrap();
        let plain = data(5 * SMALL as usize + 123);
        let ct = encrypt(&key, &plain, SMALL);
        let mut seed = 42;
        for _ in 0..30 {
            let sizes: Vec<usize> = (0..17)
                .map(|_| 1 + lcg(&mut seed) as usize % 3000)
                .collect();
            assert_eq!(decrypt_in_pieces(&key, &ct, &sizes).unwrap(), plain);
        }
        // Splits inside the header and exactly at chunk boundaries.
        for sizes in [
            vec![3, 13, SMALL_FULL],
            vec![HEADER_LEN, SMALL_FULL],
            vec![15, 1, SMALL_FULL - 1, 1],
            vec![HEADER_LEN + SMALL_FULL + 1, 2 * SMALL_FULL],
        ] {
            assert_eq!(decrypt_in_pieces(&key, &ct, &sizes).unwrap(), plain);
        }
    }

    #[test]
    fn encryptor_output_does_not_depend_on_split_points() {
        let key = ContentKey::generate().unwrap();
        let plain = data(4 * SMALL as usize + 9);
        let prefix = [9u8; PREFIX_LEN];
        let mut whole = Vec::new();
        let mut enc = Encryptor::with_prefix(&key, SMALL, prefix).unwrap();
        enc.update(&plain, &mut whole).unwrap();
        enc.finish(&mut whole).unwrap();
        let mut seed = 3;
        for _ in 0..10 {
            let mut pieces = Vec::new();
            let mut enc = Encryptor::with_prefix(&key, SMALL, prefix).unwrap();
            let mut rest = &plain[..];
            while !rest.is_empty() {
                let n = (1 + lcg(&mut seed) as usize % 2500).min(rest.len());
                enc.update(&rest[..n], &mut pieces).unwrap();
                rest = &rest[n..];
            }
            enc.finish(&mut pieces).unwrap();
            assert_eq!(pieces, whole);
        }
    }

    #[test]
    fn truncation_at_every_chunk_boundary_is_reported_as_truncated() {
        let key = ContentKey::generate().unwrap();
        let (_, ct) = small_stream(&key, 4);
        for k in 0..4 {
            let cut = HEADER_LEN + k * SMALL_FULL;
            let err = decrypt_all(&key, &ct[..cut]).unwrap_err();
            assert_eq!(err, Error::Truncated { chunks: k as u64 }, "cut at {cut}");
            assert_eq!(err.rule(), "truncated");
            // Also when fed in pieces.
            let err = decrypt_in_pieces(&key, &ct[..cut], &[7]).unwrap_err();
            assert_eq!(err.rule(), "truncated");
        }
    }

    #[test]
    fn missing_or_partial_header_is_truncated() {
        let key = ContentKey::generate().unwrap();
        let (_, ct) = small_stream(&key, 2);
        for cut in [0, 1, 4, HEADER_LEN - 1, HEADER_LEN] {
            let err = decrypt_all(&key, &ct[..cut]).unwrap_err();
            assert_eq!(err, Error::Truncated { chunks: 0 });
        }
        // Fewer bytes than a tag after a complete chunk.
        let err = decrypt_all(&key, &ct[..HEADER_LEN + SMALL_FULL + 10]).unwrap_err();
        assert_eq!(err, Error::Truncated { chunks: 1 });
    }

    #[test]
    fn truncation_mid_chunk_is_detected() {
        let key = ContentKey::generate().unwrap();
        let (_, ct) = small_stream(&key, 3);
        for cut in [
            HEADER_LEN + 16,
            HEADER_LEN + 500,
            HEADER_LEN + SMALL_FULL - 1,
            HEADER_LEN + SMALL_FULL + 100,
            ct.len() - 1,
        ] {
            let err = decrypt_all(&key, &ct[..cut]).unwrap_err();
            assert!(
                matches!(err.rule().as_str(), "truncated" | "decryption-failed"),
                "cut at {cut}: {err}"
            );
        }
    }

    #[test]
    fn every_proper_prefix_of_a_stream_is_rejected() {
        let key = ContentKey::generate().unwrap();
        let (_, ct) = small_stream(&key, 3);
        for cut in 0..ct.len() {
            assert!(decrypt_all(&key, &ct[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn reordered_chunks_are_detected() {
        let key = ContentKey::generate().unwrap();
        let (_, ct) = small_stream(&key, 4);
        let c0 = HEADER_LEN..HEADER_LEN + SMALL_FULL;
        let c1 = HEADER_LEN + SMALL_FULL..HEADER_LEN + 2 * SMALL_FULL;
        let mut swapped = ct[..HEADER_LEN].to_vec();
        swapped.extend_from_slice(&ct[c1.clone()]);
        swapped.extend_from_slice(&ct[c0.clone()]);
        swapped.extend_from_slice(&ct[c1.end..]);
        assert_eq!(swapped.len(), ct.len());
        let err = decrypt_all(&key, &swapped).unwrap_err();
        assert_eq!(err, Error::DecryptionFailed { chunk: 0 });
    }

    #[test]
    fn dropped_chunk_is_detected() {
        let key = ContentKey::generate().unwrap();
        let (_, ct) = small_stream(&key, 4);
        let mut dropped = ct[..HEADER_LEN + SMALL_FULL].to_vec();
        dropped.extend_from_slice(&ct[HEADER_LEN + 2 * SMALL_FULL..]);
        let err = decrypt_all(&key, &dropped).unwrap_err();
        assert_eq!(err, Error::DecryptionFailed { chunk: 1 });
    }

    #[test]
    fn flipped_bit_in_header_ciphertext_or_tag_is_detected() {
        let key = ContentKey::generate().unwrap();
        let (_, ct) = small_stream(&key, 3);
        for i in 0..ct.len() {
            let mut bad = ct.clone();
            bad[i] ^= 1 << (i % 8);
            let err = decrypt_all(&key, &bad).unwrap_err();
            if i < 9 {
                // Magic, version, chunk size.
                assert!(
                    matches!(err.rule().as_str(), "malformed" | "decryption-failed"),
                    "byte {i}: {err}"
                );
            } else {
                assert_eq!(err.rule(), "decryption-failed", "byte {i}: {err}");
            }
        }
        // The nonce prefix, a ciphertext byte and a tag byte of the final chunk, specifically.
        for i in [HEADER_LEN - 1, HEADER_LEN + 1, ct.len() - 1] {
            let mut bad = ct.clone();
            bad[i] ^= 0x80;
            assert!(matches!(
                decrypt_all(&key, &bad),
                Err(Error::DecryptionFailed { .. })
            ));
        }
    }

    #[test]
    fn trailing_data_after_the_final_chunk_is_detected() {
        let key = ContentKey::generate().unwrap();
        // Final chunk full-size, then one extra byte.
        let full = encrypt(&key, &data(2 * SMALL as usize), SMALL);
        let mut bad = full.clone();
        bad.push(0);
        assert_eq!(
            decrypt_all(&key, &bad).unwrap_err(),
            Error::DecryptionFailed { chunk: 1 }
        );
        // Final chunk short, then garbage.
        let (_, short) = small_stream(&key, 2);
        for extra in [1, 15, 16, 17, SMALL_FULL, 3 * SMALL_FULL] {
            let mut bad = short.clone();
            bad.extend(std::iter::repeat_n(0xa5, extra));
            assert_eq!(
                decrypt_all(&key, &bad).unwrap_err().rule(),
                "decryption-failed"
            );
        }
        // A valid chunk of the same stream appended after the final one.
        let mut bad = full.clone();
        bad.extend_from_slice(&full[HEADER_LEN..HEADER_LEN + SMALL_FULL]);
        assert_eq!(
            decrypt_all(&key, &bad).unwrap_err().rule(),
            "decryption-failed"
        );
        // A second complete stream appended.
        let mut bad = full.clone();
        bad.extend_from_slice(&full);
        assert_eq!(
            decrypt_all(&key, &bad).unwrap_err().rule(),
            "decryption-failed"
        );
    }

    #[test]
    fn wrong_content_key_fails_authentication() {
        let key = ContentKey::generate().unwrap();
        let other = ContentKey::generate().unwrap();
        let ct = encrypt_all(&key, b"firmware").unwrap();
        assert_eq!(
            decrypt_all(&other, &ct).unwrap_err(),
            Error::DecryptionFailed { chunk: 0 }
        );
    }

    #[test]
    fn failed_chunk_releases_no_plaintext_and_errors_are_sticky() {
        let key = ContentKey::generate().unwrap();
        let (_, ct) = small_stream(&key, 3);
        let mut bad = ct.clone();
        bad[HEADER_LEN + SMALL_FULL + 3] ^= 1;
        let mut dec = Decryptor::new(&key);
        let mut out = Vec::new();
        let err = dec.update(&bad, &mut out).unwrap_err();
        assert_eq!(err, Error::DecryptionFailed { chunk: 1 });
        assert_eq!(out, data(SMALL as usize), "only chunk 0 was released");
        assert_eq!(dec.update(&[], &mut out).unwrap_err(), err);
        assert_eq!(dec.finish(&mut out).unwrap_err(), err);
        assert_eq!(out.len(), SMALL as usize);
    }

    #[test]
    fn hostile_headers_are_malformed() {
        let key = ContentKey::generate().unwrap();
        let good = Encryptor::new(&key, SMALL).unwrap().header();
        let with = |f: &dyn Fn(&mut [u8; HEADER_LEN])| {
            let mut h = good;
            f(&mut h);
            h
        };
        let hostile = [
            with(&|h| h[..4].copy_from_slice(b"RMPF")),
            with(&|h| h[4] = 2),
            with(&|h| h[4] = 0),
            with(&|h| h[5..9].copy_from_slice(&0u32.to_be_bytes())),
            with(&|h| h[5..9].copy_from_slice(&(1u32 << 31).to_be_bytes())),
            with(&|h| h[5..9].copy_from_slice(&(MIN_CHUNK_SIZE - 1).to_be_bytes())),
            with(&|h| h[5..9].copy_from_slice(&(MAX_CHUNK_SIZE + 1).to_be_bytes())),
            with(&|h| h[5..9].copy_from_slice(&u32::MAX.to_be_bytes())),
        ];
        for header in hostile {
            let mut dec = Decryptor::new(&key);
            let mut out = Vec::new();
            let err = dec.update(&header, &mut out).unwrap_err();
            assert!(matches!(err, Error::Malformed { .. }), "{err}");
            assert_eq!(err.rule(), "malformed");
            assert!(dec.buffered_capacity() <= HEADER_LEN);
            assert!(out.is_empty());
        }
        // The bounds themselves are accepted.
        for size in [MIN_CHUNK_SIZE, MAX_CHUNK_SIZE] {
            let header = with(&|h| h[5..9].copy_from_slice(&size.to_be_bytes()));
            let mut dec = Decryptor::new(&key);
            dec.update(&header, &mut Vec::new()).unwrap();
            assert_eq!(dec.chunk_size(), Some(size));
        }
    }

    #[test]
    fn encryptor_rejects_chunk_sizes_out_of_bounds() {
        let key = ContentKey::generate().unwrap();
        for size in [
            0,
            1,
            MIN_CHUNK_SIZE - 1,
            MAX_CHUNK_SIZE + 1,
            1 << 31,
            u32::MAX,
        ] {
            assert_eq!(
                Encryptor::new(&key, size).unwrap_err().rule(),
                "malformed",
                "{size}"
            );
        }
    }

    #[test]
    fn decryptor_memory_stays_within_one_chunk_for_a_multi_mib_stream() {
        let key = ContentKey::generate().unwrap();
        let plain = data(5 * 1024 * 1024 + 77);
        let bound = HEADER_LEN + DEFAULT_CHUNK_SIZE as usize + TAG_LEN;
        let ct = encrypt_all(&key, &plain).unwrap();
        for piece in [ct.len(), 100_000, 65_552, 4096, 1] {
            let mut dec = Decryptor::new(&key);
            let mut out = Vec::new();
            for p in ct.chunks(piece) {
                dec.update(p, &mut out).unwrap();
                assert!(
                    dec.buffered_capacity() <= bound,
                    "{} > {bound}",
                    dec.buffered_capacity()
                );
            }
            dec.finish(&mut out).unwrap();
            assert_eq!(out, plain);
        }
        // The largest chunk size keeps the same bound.
        let big = encrypt(&key, &plain, MAX_CHUNK_SIZE);
        let mut dec = Decryptor::new(&key);
        let mut out = Vec::new();
        for p in big.chunks(300_000) {
            dec.update(p, &mut out).unwrap();
            assert!(dec.buffered_capacity() <= HEADER_LEN + MAX_CHUNK_SIZE as usize + TAG_LEN);
        }
        dec.finish(&mut out).unwrap();
        assert_eq!(out, plain);
    }

    #[test]
    fn counter_overflow_is_an_error_not_a_wrap() {
        let key = ContentKey::generate().unwrap();
        let plain = data(2 * SMALL as usize + 1);
        // Encryptor: a non-final chunk at counter 2^32-1 would need a counter 2^32 after it.
        let mut enc = Encryptor::new(&key, SMALL).unwrap();
        enc.next_chunk = u64::from(u32::MAX);
        let err = enc.update(&plain, &mut Vec::new()).unwrap_err();
        assert_eq!(err.rule(), "endless-data");
        // A final chunk at counter 2^32-1 is still allowed, and decrypts.
        let mut enc = Encryptor::new(&key, SMALL).unwrap();
        enc.next_chunk = u64::from(u32::MAX);
        let mut ct = Vec::new();
        enc.update(b"last", &mut ct).unwrap();
        enc.finish(&mut ct).unwrap();
        let mut dec = Decryptor::new(&key);
        let mut out = Vec::new();
        dec.update(&ct[..HEADER_LEN], &mut out).unwrap();
        match &mut dec.state {
            State::Body(b) => b.next_chunk = u64::from(u32::MAX),
            State::Header { .. } => panic!("header not parsed"),
        }
        dec.update(&ct[HEADER_LEN..], &mut out).unwrap();
        dec.finish(&mut out).unwrap();
        assert_eq!(out, b"last");
        // Decryptor: more chunks than the counter allows.
        let ct = encrypt(&key, &plain, SMALL);
        let mut dec = Decryptor::new(&key);
        dec.update(&ct[..HEADER_LEN], &mut Vec::new()).unwrap();
        match &mut dec.state {
            State::Body(b) => b.next_chunk = u64::from(u32::MAX),
            State::Header { .. } => panic!("header not parsed"),
        }
        let err = dec.update(&ct[HEADER_LEN..], &mut Vec::new()).unwrap_err();
        assert_eq!(err.rule(), "endless-data");
    }

    #[test]
    fn one_content_key_encrypts_several_streams_under_different_keys() {
        let key = ContentKey::generate().unwrap();
        let plain = data(3000);
        let a = encrypt(&key, &plain, SMALL);
        let b = encrypt(&key, &plain, SMALL);
        assert_ne!(a[9..HEADER_LEN], b[9..HEADER_LEN], "fresh nonce prefix");
        assert_ne!(a[HEADER_LEN..], b[HEADER_LEN..]);
        assert_eq!(decrypt_all(&key, &a).unwrap(), plain);
        assert_eq!(decrypt_all(&key, &b).unwrap(), plain);
        // A header from one stream with the chunks of another fails.
        let mut mixed = a[..HEADER_LEN].to_vec();
        mixed.extend_from_slice(&b[HEADER_LEN..]);
        assert_eq!(
            decrypt_all(&key, &mixed).unwrap_err(),
            Error::DecryptionFailed { chunk: 0 }
        );
    }

    #[test]
    fn encrypt_all_and_decrypt_all_round_trip() {
        let key = ContentKey::generate().unwrap();
        for len in [0, 1, 70_000, 200_000] {
            let plain = data(len);
            let ct = encrypt_all(&key, &plain).unwrap();
            assert_eq!(
                ct.len() as u64,
                encrypted_length(len as u64, DEFAULT_CHUNK_SIZE)
            );
            assert_eq!(decrypt_all(&key, &ct).unwrap(), plain);
        }
    }

    #[test]
    fn debug_output_does_not_show_secret_keys() {
        let key = ContentKey::from_bytes(&[0xab; 32]).unwrap();
        let shown = format!("{key:?}");
        assert!(!shown.contains("ab, ") && !shown.contains("171"), "{shown}");
        let ecu = EcuKeyPair::from_private_bytes(&[0xcd; 32]).unwrap();
        let shown = format!("{ecu:?}");
        assert!(!shown.contains(&hex::encode([0xcd; 32])), "{shown}");
        assert!(shown.contains(&hex::encode(ecu.public_key())));
        assert!(ContentKey::from_bytes(&[0; 31]).is_err());
    }

    #[test]
    fn ecu_key_pair_round_trips_through_private_bytes() {
        let ecu = EcuKeyPair::generate().unwrap();
        let again = EcuKeyPair::from_private_bytes(&ecu.private_bytes()).unwrap();
        assert_eq!(ecu.public_key(), again.public_key());
        assert_ne!(
            ecu.public_key(),
            EcuKeyPair::generate().unwrap().public_key()
        );
        assert_eq!(
            EcuKeyPair::from_private_bytes(&[1; 31]).unwrap_err().rule(),
            "malformed"
        );
    }

    #[test]
    fn x25519_matches_rfc_7748_test_vector() {
        // RFC 7748 §6.1: Alice's private key and public key.
        let alice = EcuKeyPair::from_private_bytes(
            &hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            hex::encode(alice.public_key()),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }

    #[test]
    fn wrap_unwrap_round_trip() {
        let ecu = EcuKeyPair::generate().unwrap();
        let dek = ContentKey::generate().unwrap();
        let wrapped = wrap_key(&ecu.public_key(), &dek).unwrap();
        let unwrapped = unwrap_key(&ecu, &wrapped).unwrap();
        assert_eq!(unwrapped.as_bytes(), dek.as_bytes());
        // Each wrap uses a fresh ephemeral key.
        let again = wrap_key(&ecu.public_key(), &dek).unwrap();
        assert_ne!(again.ephemeral_public, wrapped.ephemeral_public);
        assert_ne!(again.wrapped_key, wrapped.wrapped_key);
        assert_eq!(unwrap_key(&ecu, &again).unwrap().as_bytes(), dek.as_bytes());
        // End to end: the unwrapped key decrypts the image.
        let ct = encrypt_all(&dek, b"ecu image").unwrap();
        assert_eq!(decrypt_all(&unwrapped, &ct).unwrap(), b"ecu image");
    }

    #[test]
    fn wrapped_key_serializes_as_documented_json() {
        let ecu = EcuKeyPair::generate().unwrap();
        let wrapped = wrap_key(&ecu.public_key(), &ContentKey::generate().unwrap()).unwrap();
        let json = serde_json::to_value(&wrapped).unwrap();
        let obj = json.as_object().unwrap();
        assert_eq!(obj.len(), 3);
        assert_eq!(obj["scheme"], "x25519-hkdf-sha256-aes256gcm");
        assert_eq!(obj["ephemeral_public"].as_str().unwrap().len(), 64);
        assert_eq!(obj["wrapped_key"].as_str().unwrap().len(), 96);
        let back: WrappedKey = serde_json::from_value(json).unwrap();
        assert_eq!(back, wrapped);
        unwrap_key(&ecu, &back).unwrap();
    }

    #[test]
    fn unwrap_with_another_ecus_key_fails() {
        let ecu = EcuKeyPair::generate().unwrap();
        let other = EcuKeyPair::generate().unwrap();
        let wrapped = wrap_key(&ecu.public_key(), &ContentKey::generate().unwrap()).unwrap();
        let err = unwrap_key(&other, &wrapped).unwrap_err();
        assert_eq!(err.rule(), "bad-key");
    }

    #[test]
    fn tampered_wrapped_key_fails() {
        let ecu = EcuKeyPair::generate().unwrap();
        let wrapped = wrap_key(&ecu.public_key(), &ContentKey::generate().unwrap()).unwrap();
        let flip = |s: &str, i: usize| {
            let mut b = hex::decode(s).unwrap();
            b[i] ^= 1;
            hex::encode(b)
        };
        for i in [0, 17, 30] {
            let mut bad = wrapped.clone();
            bad.ephemeral_public = flip(&bad.ephemeral_public, i);
            let err = unwrap_key(&ecu, &bad).unwrap_err();
            assert!(
                matches!(err.rule().as_str(), "bad-key" | "malformed"),
                "{err}"
            );
        }
        for i in [0, 31, 32, 47] {
            let mut bad = wrapped.clone();
            bad.wrapped_key = flip(&bad.wrapped_key, i);
            assert_eq!(unwrap_key(&ecu, &bad).unwrap_err().rule(), "bad-key");
        }
        // Another wrap's ephemeral key with this wrap's ciphertext.
        let other = wrap_key(&ecu.public_key(), &ContentKey::generate().unwrap()).unwrap();
        let mut bad = wrapped.clone();
        bad.ephemeral_public = other.ephemeral_public;
        assert_eq!(unwrap_key(&ecu, &bad).unwrap_err().rule(), "bad-key");
    }

    #[test]
    fn unknown_scheme_bad_hex_and_wrong_lengths_are_malformed() {
        let ecu = EcuKeyPair::generate().unwrap();
        let wrapped = wrap_key(&ecu.public_key(), &ContentKey::generate().unwrap()).unwrap();
        let cases: Vec<fn(&mut WrappedKey)> = vec![
            |w| w.scheme = "x25519-hkdf-sha256-aes128gcm".into(),
            |w| w.scheme = String::new(),
            |w| w.ephemeral_public = w.ephemeral_public.to_uppercase(),
            |w| w.ephemeral_public.push('0'),
            |w| w.ephemeral_public.push_str("00"),
            |w| w.ephemeral_public.truncate(62),
            |w| w.ephemeral_public = "zz".repeat(32),
            |w| w.wrapped_key.truncate(94),
            |w| w.wrapped_key.push_str("00"),
            |w| w.wrapped_key = String::new(),
            |w| w.wrapped_key.replace_range(0..1, "g"),
        ];
        for case in cases {
            let mut bad = wrapped.clone();
            case(&mut bad);
            let err = unwrap_key(&ecu, &bad).unwrap_err();
            assert_eq!(err.rule(), "malformed", "{bad:?}: {err}");
        }
        assert_eq!(
            wrap_key(&[0; 31], &ContentKey::generate().unwrap())
                .unwrap_err()
                .rule(),
            "malformed"
        );
    }

    #[test]
    fn low_order_points_are_rejected() {
        let ecu = EcuKeyPair::generate().unwrap();
        let dek = ContentKey::generate().unwrap();
        let wrapped = wrap_key(&ecu.public_key(), &dek).unwrap();
        // Points of small order on Curve25519 (0, 1 and an order-8 point): agreement with them
        // gives an all-zero shared secret.
        let low_order = [
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0100000000000000000000000000000000000000000000000000000000000000",
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        ];
        for point in low_order {
            let mut bad = wrapped.clone();
            bad.ephemeral_public = point.into();
            let err = unwrap_key(&ecu, &bad).unwrap_err();
            assert_eq!(err.rule(), "malformed", "{point}: {err}");
            let point = hex::decode(point).unwrap();
            assert_eq!(wrap_key(&point, &dek).unwrap_err().rule(), "malformed");
        }
    }
}
