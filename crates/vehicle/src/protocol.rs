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
//!
//! One operation per connection: the primary connects, sends a request (and for an install
//! the image frames), reads one answer, closes. An ECU that receives garbage, an unknown
//! kind, an oversized or truncated frame answers `ERROR` (when it can), closes, and counts
//! it; the count appears as an attack indicator in its next version report.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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
            _ => return None,
        })
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
    /// Payload over the limit.
    #[error("frame of {0} bytes exceeds the {MAX_PAYLOAD}-byte limit")]
    Oversized(u32),
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
    pub fn rule(&self) -> &'static str {
        match self {
            FrameError::Closed => "closed",
            FrameError::Truncated => "truncated-frame",
            FrameError::BadMagic(_) | FrameError::BadVersion(_) | FrameError::UnknownKind(_) => {
                "garbage-frame"
            }
            FrameError::Oversized(_) => "oversized-frame",
            FrameError::Unexpected(_) => "unexpected-frame",
            FrameError::Malformed(_) => "malformed-frame",
            FrameError::Io(_) => "io",
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
    let len = u32::try_from(payload.len()).map_err(|_| FrameError::Oversized(u32::MAX))?;
    if len > MAX_PAYLOAD {
        return Err(FrameError::Oversized(len));
    }
    w.write_all(&header(kind, len)).await?;
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

/// Reads one frame, checking the header before reading (or allocating for) the payload.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Frame, FrameError> {
    let mut head = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        let n = r.read(head.get_mut(got..).unwrap_or_default()).await?;
        if n == 0 {
            return Err(if got == 0 {
                FrameError::Closed
            } else {
                FrameError::Truncated
            });
        }
        got += n;
    }
    let [m0, m1, version, kind, l0, l1, l2, l3] = head;
    if [m0, m1] != MAGIC {
        return Err(FrameError::BadMagic([m0, m1]));
    }
    if version != VERSION {
        return Err(FrameError::BadVersion(version));
    }
    let kind = Kind::from_u8(kind).ok_or(FrameError::UnknownKind(kind))?;
    let len = u32::from_be_bytes([l0, l1, l2, l3]);
    if len > MAX_PAYLOAD {
        return Err(FrameError::Oversized(len));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    })?;
    Ok(Frame { kind, payload })
}

/// Parses a JSON payload.
pub fn parse_json<T: for<'de> Deserialize<'de>>(frame: &Frame) -> Result<T, FrameError> {
    serde_json::from_slice(&frame.payload).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// `REPORT_REQUEST` payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRequest {
    /// Fresh nonce the ECU must include in its signed report.
    pub nonce: String,
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
