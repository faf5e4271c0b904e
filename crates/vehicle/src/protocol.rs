//! The in-vehicle protocol between the primary (through the gateway) and secondary ECUs.
//!
//! A small, versioned, length-framed protocol over TCP. Nothing that arrives on the bus is
//! trusted: frames are bounded and checked before anything is allocated, and the metadata
//! and images they carry are verified by the ECU itself (full or partial verification). The
//! protocol only has to be hard to crash, not hard to forge.
//!
//! ```text
//! frame   = magic "RV" | version 0x01 | kind (u8) | length (u32, big-endian) | payload
//! payload ≤ MAX_PAYLOAD (1 MiB); image data travels as many IMAGE_CHUNK frames of ≤ 64 KiB
//! ```
//!
//! | kind | name | payload | direction |
//! |---|---|---|---|
//! | 1 | `REPORT_REQUEST` | JSON `{"nonce"}` | primary → ECU |
//! | 2 | `REPORT` | signed ECU version report (JSON) | ECU → primary |
//! | 3 | `INSTALL_BEGIN` | JSON [`InstallBegin`]: target, metadata bundle, bytes to follow | primary → ECU |
//! | 4 | `IMAGE_CHUNK` | raw image bytes | primary → ECU |
//! | 5 | `IMAGE_END` | empty | primary → ECU |
//! | 6 | `INSTALL_RESULT` | JSON [`InstallResult`] | ECU → primary |
//! | 7 | `ERROR` | JSON `{"rule", "message"}` | either |
//! | 8 | `BOOT` | JSON `{}`: simulate a reboot (run boot counting now) | primary → ECU |
//! | 9 | `ACK` | the director's signed manifest receipt (JSON) | primary → ECU |
//!
//! Each kind has its own payload limit ([`Kind::max_payload`]), checked in the header before
//! anything is read; a payload is then allocated only as its bytes arrive, and an ECU draws
//! the bytes it buffers from one [`MemoryBudget`], so many connections announcing large
//! frames cost what they actually sent, within a fixed total. [`FrameDecoder`] is the
//! sans-IO decoder (fuzzed: `fuzz/fuzz_targets/frame.rs`); [`read_frame`] drives it over a
//! socket without ever reading past the end of a frame.
//!
//! One operation per connection: the primary connects, sends a request (and for an install
//! the image frames), reads one answer, closes. An ECU that receives garbage, an unknown
//! kind, an oversized or truncated frame answers `ERROR` (when it can), closes, and counts
//! it; the count appears as an attack indicator in its next version report.

use rampart_core::rule::Rule;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Frame magic.
pub const MAGIC: [u8; 2] = *b"RV";
/// Protocol version.
pub const VERSION: u8 = 1;
/// Largest payload accepted in one frame.
pub const MAX_PAYLOAD: u32 = 1024 * 1024;
/// Size of image chunks the primary sends.
pub const CHUNK: usize = 64 * 1024;
/// Header length.
pub const HEADER_LEN: usize = 8;
/// Longest nonce a `REPORT_REQUEST` may carry (the primary sends 32 hex characters). A nonce
/// is signed into the report: an unbounded one would let anyone on the bus make reports too
/// large to send.
pub const MAX_NONCE_LEN: usize = 64;
/// Payload limit of small control frames (`REPORT_REQUEST`, `BOOT`).
const SMALL_PAYLOAD: u32 = 1024;
/// Payload limit of answers (`REPORT`, `INSTALL_RESULT`, `ERROR`) and receipts (`ACK`).
const ANSWER_PAYLOAD: u32 = 64 * 1024;

/// Frame kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Ask for a signed version report.
    ReportRequest = 1,
    /// A signed version report.
    Report = 2,
    /// Start an installation.
    InstallBegin = 3,
    /// Image bytes.
    ImageChunk = 4,
    /// End of image bytes.
    ImageEnd = 5,
    /// Outcome of an installation.
    InstallResult = 6,
    /// An error.
    Error = 7,
    /// Simulated reboot.
    Boot = 8,
    /// The director's receipt for a manifest that carried this ECU's report.
    Ack = 9,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::ReportRequest,
            2 => Kind::Report,
            3 => Kind::InstallBegin,
            4 => Kind::ImageChunk,
            5 => Kind::ImageEnd,
            6 => Kind::InstallResult,
            7 => Kind::Error,
            8 => Kind::Boot,
            9 => Kind::Ack,
            _ => return None,
        })
    }

    /// Largest payload a frame of this kind may announce.
    pub fn max_payload(self) -> u32 {
        match self {
            Kind::ReportRequest | Kind::Boot => SMALL_PAYLOAD,
            Kind::ImageEnd => 0,
            Kind::ImageChunk => CHUNK as u32,
            Kind::Report | Kind::InstallResult | Kind::Error | Kind::Ack => ANSWER_PAYLOAD,
            Kind::InstallBegin => MAX_PAYLOAD,
        }
    }
}

/// Why a frame was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The connection ended cleanly before a frame started.
    #[error("connection closed")]
    Closed,
    /// The connection ended inside a frame.
    #[error("truncated frame")]
    Truncated,
    /// Not our magic.
    #[error("bad magic {0:02x?}")]
    BadMagic([u8; 2]),
    /// A version we do not speak.
    #[error("unsupported protocol version {0}")]
    BadVersion(u8),
    /// A kind we do not know.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// Payload over the limit of its kind.
    #[error("{kind:?} frame of {length} bytes exceeds its {max}-byte limit")]
    Oversized {
        /// Kind announced.
        kind: Kind,
        /// Length announced.
        length: u32,
        /// Limit of that kind.
        max: u32,
    },
    /// The ECU's buffer budget is spent (too many frames being received at once).
    #[error("in-vehicle buffer budget of {budget} bytes exhausted")]
    Busy {
        /// The budget, in bytes.
        budget: usize,
    },
    /// A frame that is well-formed but not expected here.
    #[error("unexpected {0:?} frame")]
    Unexpected(Kind),
    /// A JSON payload that does not parse.
    #[error("malformed payload: {0}")]
    Malformed(String),
    /// Socket error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// Stable rule name.
    pub fn rule(&self) -> Rule {
        match self {
            FrameError::Closed => Rule::Closed,
            FrameError::Truncated => Rule::TruncatedFrame,
            FrameError::BadMagic(_) | FrameError::BadVersion(_) | FrameError::UnknownKind(_) => {
                Rule::GarbageFrame
            }
            FrameError::Oversized { .. } => Rule::OversizedFrame,
            FrameError::Busy { .. } => Rule::MemoryBudget,
            FrameError::Unexpected(_) => Rule::UnexpectedFrame,
            FrameError::Malformed(_) => Rule::MalformedFrame,
            FrameError::Io(_) => Rule::Io,
        }
    }
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Kind.
    pub kind: Kind,
    /// Payload.
    pub payload: Vec<u8>,
}

/// Encodes a frame header for a payload of `len` bytes.
pub fn header(kind: Kind, len: u32) -> [u8; HEADER_LEN] {
    let l = len.to_be_bytes();
    [
        MAGIC[0], MAGIC[1], VERSION, kind as u8, l[0], l[1], l[2], l[3],
    ]
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: Kind,
    payload: &[u8],
) -> Result<(), FrameError> {
    let max = kind.max_payload();
    let length = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    if length > max {
        return Err(FrameError::Oversized { kind, length, max });
    }
    w.write_all(&header(kind, length)).await?;
    w.write_all(payload).await?;
    Ok(())
}

/// Writes a JSON frame.
pub async fn write_json<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    kind: Kind,
    value: &T,
) -> Result<(), FrameError> {
    let payload = serde_json::to_vec(value).map_err(|e| FrameError::Malformed(e.to_string()))?;
    write_frame(w, kind, &payload).await
}

/// Checks a frame header: magic, version, kind, and the length against the kind's limit.
pub fn decode_header(head: [u8; HEADER_LEN]) -> Result<(Kind, u32), FrameError> {
    let [m0, m1, version, kind, l0, l1, l2, l3] = head;
    if [m0, m1] != MAGIC {
        return Err(FrameError::BadMagic([m0, m1]));
    }
    if version != VERSION {
        return Err(FrameError::BadVersion(version));
    }
    let kind = Kind::from_u8(kind).ok_or(FrameError::UnknownKind(kind))?;
    let length = u32::from_be_bytes([l0, l1, l2, l3]);
    let max = kind.max_payload();
    if length > max {
        return Err(FrameError::Oversized { kind, length, max });
    }
    Ok((kind, length))
}

/// Sans-IO decoder of one frame: bytes go in as they arrive, a frame comes out when complete.
/// It never asks for more than the current frame needs ([`FrameDecoder::wanted`]), so a
/// reader can stop exactly at the frame's end, and the payload grows only with bytes that
/// actually arrived.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    head: [u8; HEADER_LEN],
    head_len: usize,
    body: Option<(Kind, u32, Vec<u8>)>,
}

impl FrameDecoder {
    /// A decoder waiting for a header.
    pub fn new() -> Self {
        FrameDecoder::default()
    }

    /// How many more bytes the current frame needs (header first, then payload).
    pub fn wanted(&self) -> usize {
        match &self.body {
            None => HEADER_LEN - self.head_len,
            Some((_, length, payload)) => (*length as usize).saturating_sub(payload.len()),
        }
    }

    /// Feeds bytes; returns how many were used and the frame, once complete. Bytes after the
    /// end of the frame are not used. After an error the decoder must be dropped.
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, Option<Frame>), FrameError> {
        let mut used = 0;
        if self.body.is_none() {
            let take = self.wanted().min(input.len());
            let (src, _) = input.split_at(take);
            if let Some(dst) = self.head.get_mut(self.head_len..self.head_len + take) {
                dst.copy_from_slice(src);
            }
            self.head_len += take;
            used += take;
            if self.head_len < HEADER_LEN {
                return Ok((used, None));
            }
            let (kind, length) = decode_header(self.head)?;
            self.body = Some((kind, length, Vec::new()));
        }
        let rest = input.get(used..).unwrap_or_default();
        let take = self.wanted().min(rest.len());
        if let Some((_, _, payload)) = self.body.as_mut() {
            payload.extend_from_slice(rest.get(..take).unwrap_or_default());
        }
        used += take;
        if self.wanted() > 0 {
            return Ok((used, None));
        }
        let frame = self
            .body
            .take()
            .map(|(kind, _, payload)| Frame { kind, payload });
        self.head_len = 0;
        Ok((used, frame))
    }

    /// The connection ended: [`FrameError::Closed`] between frames, else truncation.
    pub fn end_of_input(&self) -> FrameError {
        if self.head_len == 0 && self.body.is_none() {
            FrameError::Closed
        } else {
            FrameError::Truncated
        }
    }
}

/// Bytes an ECU may hold in frames still being received, shared by all its connections.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    bytes: usize,
    permits: Arc<Semaphore>,
}

impl MemoryBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Self {
        MemoryBudget {
            bytes,
            permits: Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))),
        }
    }

    /// Bytes not drawn now.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    fn draw(&self, held: &mut Option<OwnedSemaphorePermit>, n: usize) -> Result<(), FrameError> {
        let busy = FrameError::Busy { budget: self.bytes };
        let n = u32::try_from(n).map_err(|_| busy)?;
        let permit = self
            .permits
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| FrameError::Busy { budget: self.bytes })?;
        match held {
            Some(h) => h.merge(permit),
            None => *held = Some(permit),
        }
        Ok(())
    }
}

/// Reads one frame (see [`read_frame_within`]) with no budget beyond the per-kind limits.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Frame, FrameError> {
    read_frame_within(r, None).await
}

/// Reads one frame: the header is checked before any payload is read, the payload is
/// allocated as it arrives, and, with a `budget`, every buffered byte is drawn from it first
/// (given back when this returns). Never reads past the end of the frame.
pub async fn read_frame_within<R: AsyncRead + Unpin>(
    r: &mut R,
    budget: Option<&MemoryBudget>,
) -> Result<Frame, FrameError> {
    let mut decoder = FrameDecoder::new();
    let mut held = None;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let want = decoder.wanted().clamp(1, buf.len());
        let Some(dst) = buf.get_mut(..want) else {
            return Err(FrameError::Truncated);
        };
        let n = r.read(dst).await?;
        if n == 0 {
            return Err(decoder.end_of_input());
        }
        if let Some(budget) = budget {
            budget.draw(&mut held, n)?;
        }
        let (_, frame) = decoder.feed(buf.get(..n).unwrap_or_default())?;
        if let Some(frame) = frame {
            return Ok(frame);
        }
    }
}

/// Parses a JSON payload.
pub fn parse_json<T: for<'de> Deserialize<'de>>(frame: &Frame) -> Result<T, FrameError> {
    serde_json::from_slice(&frame.payload).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// `REPORT_REQUEST` payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRequest {
    /// Fresh nonce the ECU must include in its signed report (at most [`MAX_NONCE_LEN`]
    /// printable ASCII characters).
    pub nonce: String,
}

impl ReportRequest {
    /// Parses a `REPORT_REQUEST` and checks its nonce.
    pub fn parse(frame: &Frame) -> Result<Self, FrameError> {
        let req: ReportRequest = parse_json(frame)?;
        if req.nonce.is_empty()
            || req.nonce.len() > MAX_NONCE_LEN
            || !req.nonce.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(FrameError::Malformed(format!(
                "nonce must be 1 to {MAX_NONCE_LEN} printable ASCII characters (got {} bytes)",
                req.nonce.len()
            )));
        }
        Ok(req)
    }
}

/// Metadata an ECU needs to verify an update itself, exactly as the repositories signed it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MetadataBundle {
    /// Director files by path (`N.root.json`, `timestamp.json`, `N.snapshot.json`, `N.targets.json`).
    pub director: BTreeMap<String, String>,
    /// Image repository files by path (empty for partial verification).
    pub image: BTreeMap<String, String>,
}

/// `INSTALL_BEGIN` payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallBegin {
    /// Target path the director assigned to this ECU.
    pub target: String,
    /// Metadata to verify it.
    pub bundle: MetadataBundle,
    /// Bytes of image data that follow (ciphertext if encrypted).
    pub length: u64,
    /// The bytes are the delta the director offered this ECU, not the image: the ECU builds
    /// the image from its running one (absent: `false`, the whole image).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delta: bool,
}

/// `INSTALL_RESULT` payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallResult {
    /// Whether the image was verified, written and the boot slot switched.
    pub ok: bool,
    /// Failed rule, if not ok.
    #[serde(default)]
    pub rule: Option<String>,
    /// Message.
    #[serde(default)]
    pub message: String,
}

/// `ERROR` payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorPayload {
    /// Rule.
    pub rule: String,
    /// Message.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let mut buf = Vec::new();
        write_json(
            &mut buf,
            Kind::ReportRequest,
            &ReportRequest { nonce: "ab".into() },
        )
        .await
        .unwrap();
        write_frame(&mut buf, Kind::ImageChunk, &[1, 2, 3])
            .await
            .unwrap();
        let mut r = buf.as_slice();
        let f = read_frame(&mut r).await.unwrap();
        assert_eq!(parse_json::<ReportRequest>(&f).unwrap().nonce, "ab");
        assert_eq!(read_frame(&mut r).await.unwrap().payload, vec![1, 2, 3]);
        assert!(matches!(read_frame(&mut r).await, Err(FrameError::Closed)));
    }

    #[tokio::test]
    async fn garbage_is_refused_by_rule() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"GET / HTTP/1.1\r\n".to_vec(), "garbage-frame"),
            ([b'R', b'V', 9, 1, 0, 0, 0, 0].to_vec(), "garbage-frame"),
            ([b'R', b'V', 1, 99, 0, 0, 0, 0].to_vec(), "garbage-frame"),
            (
                header(Kind::Report, MAX_PAYLOAD + 1).to_vec(),
                "oversized-frame",
            ),
            (
                [&header(Kind::Report, 10)[..], b"abc"].concat(),
                "truncated-frame",
            ),
            (b"RV\x01".to_vec(), "truncated-frame"),
        ];
        for (bytes, rule) in cases {
            let mut r = bytes.as_slice();
            let err = read_frame(&mut r).await.unwrap_err();
            assert_eq!(err.rule(), rule, "{bytes:?}");
        }
    }

    #[tokio::test]
    async fn oversized_frames_are_not_written() {
        let mut buf = Vec::new();
        let big = vec![0u8; MAX_PAYLOAD as usize + 1];
        assert!(write_frame(&mut buf, Kind::Report, &big).await.is_err());
        assert!(buf.is_empty());
    }

    #[test]
    fn the_decoder_gives_the_same_frames_however_the_bytes_are_cut() {
        let mut wire = Vec::new();
        for (kind, payload) in [
            (Kind::ReportRequest, &br#"{"nonce":"ab"}"#[..]),
            (Kind::ImageEnd, &b""[..]),
            (Kind::ImageChunk, &[7u8; 3000][..]),
        ] {
            wire.extend_from_slice(&header(kind, payload.len() as u32));
            wire.extend_from_slice(payload);
        }
        for piece in [1, 2, 7, 8, 9, 100, wire.len()] {
            let mut frames = Vec::new();
            let mut decoder = FrameDecoder::new();
            for chunk in wire.chunks(piece) {
                let mut chunk = chunk;
                while !chunk.is_empty() {
                    let (used, frame) = decoder.feed(chunk).unwrap();
                    frames.extend(frame);
                    chunk = &chunk[used..];
                }
            }
            assert!(matches!(decoder.end_of_input(), FrameError::Closed));
            assert_eq!(frames.len(), 3, "pieces of {piece}");
            assert_eq!(frames[2].payload, vec![7u8; 3000]);
        }
    }

    #[tokio::test]
    async fn each_kind_has_its_own_limit() {
        let cases = [
            (Kind::ReportRequest, SMALL_PAYLOAD + 1),
            (Kind::Boot, SMALL_PAYLOAD + 1),
            (Kind::ImageEnd, 1),
            (Kind::ImageChunk, CHUNK as u32 + 1),
            (Kind::Ack, ANSWER_PAYLOAD + 1),
            (Kind::InstallBegin, MAX_PAYLOAD + 1),
        ];
        for (kind, length) in cases {
            let head = header(kind, length);
            let mut r = &head[..];
            let err = read_frame(&mut r).await.unwrap_err();
            assert_eq!(err.rule(), "oversized-frame", "{kind:?}");
            let mut sink = Vec::new();
            let payload = vec![0u8; length as usize];
            assert!(write_frame(&mut sink, kind, &payload).await.is_err());
            assert!(sink.is_empty());
        }
    }

    #[tokio::test]
    async fn buffered_bytes_come_from_the_budget_and_go_back() {
        let budget = MemoryBudget::new(64 * 1024);
        // A frame announcing 1 MiB that sends 10 KiB costs 10 KiB (then is truncated).
        let mut wire = header(Kind::InstallBegin, MAX_PAYLOAD).to_vec();
        wire.extend_from_slice(&[b' '; 10 * 1024]);
        let err = read_frame_within(&mut &wire[..], Some(&budget))
            .await
            .unwrap_err();
        assert_eq!(err.rule(), "truncated-frame");
        assert_eq!(budget.available(), 64 * 1024, "given back");
        // One that really sends more than the budget is refused.
        let mut wire = header(Kind::InstallBegin, 100 * 1024).to_vec();
        wire.extend_from_slice(&[b' '; 100 * 1024]);
        let err = read_frame_within(&mut &wire[..], Some(&budget))
            .await
            .unwrap_err();
        assert_eq!(err.rule(), "memory-budget");
        assert_eq!(budget.available(), 64 * 1024);
        // Within the budget it reads normally.
        let mut wire = header(Kind::InstallBegin, 2).to_vec();
        wire.extend_from_slice(b"{}");
        let frame = read_frame_within(&mut &wire[..], Some(&budget))
            .await
            .unwrap();
        assert_eq!(frame.payload, b"{}");
    }

    #[test]
    fn nonces_are_bounded_and_printable() {
        let req = |nonce: &str| Frame {
            kind: Kind::ReportRequest,
            payload: serde_json::to_vec(&ReportRequest {
                nonce: nonce.into(),
            })
            .unwrap(),
        };
        assert!(ReportRequest::parse(&req(&"a".repeat(32))).is_ok());
        for bad in [String::new(), "a".repeat(MAX_NONCE_LEN + 1), "a\nb".into()] {
            let err = ReportRequest::parse(&req(&bad)).unwrap_err();
            assert_eq!(err.rule(), "malformed-frame", "{bad:?}");
        }
    }

    #[tokio::test]
    async fn malformed_json_payload_is_named() {
        let frame = Frame {
            kind: Kind::ReportRequest,
            payload: b"{nope".to_vec(),
        };
        assert_eq!(
            parse_json::<ReportRequest>(&frame).unwrap_err().rule(),
            "malformed-frame"
        );
    }
}
