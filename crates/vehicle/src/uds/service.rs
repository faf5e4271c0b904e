//! UDS (ISO 14229-1) vocabulary: service identifiers, negative response codes, the data
//! identifiers and routines Rampart's bootloader serves, and the seed/key function.

use std::path::Path;

use aws_lc_rs::hmac;
use rampart_core::uptane::InstalledImage;

use crate::error::{Error, Result};

/// Service identifiers of requests (a positive response is the SID + 0x40).
pub mod sid {
    /// DiagnosticSessionControl.
    pub const SESSION_CONTROL: u8 = 0x10;
    /// ECUReset.
    pub const ECU_RESET: u8 = 0x11;
    /// ReadDataByIdentifier.
    pub const READ_DATA: u8 = 0x22;
    /// SecurityAccess.
    pub const SECURITY_ACCESS: u8 = 0x27;
    /// RoutineControl.
    pub const ROUTINE_CONTROL: u8 = 0x31;
    /// RequestDownload.
    pub const REQUEST_DOWNLOAD: u8 = 0x34;
    /// TransferData.
    pub const TRANSFER_DATA: u8 = 0x36;
    /// RequestTransferExit.
    pub const TRANSFER_EXIT: u8 = 0x37;
    /// TesterPresent.
    pub const TESTER_PRESENT: u8 = 0x3E;
    /// A negative response.
    pub const NEGATIVE: u8 = 0x7F;
}

/// Negative response codes this bootloader sends (ISO 14229-1 table A.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Nrc {
    /// 0x11 serviceNotSupported.
    ServiceNotSupported = 0x11,
    /// 0x12 subFunctionNotSupported.
    SubFunctionNotSupported = 0x12,
    /// 0x13 incorrectMessageLengthOrInvalidFormat.
    IncorrectMessageLength = 0x13,
    /// 0x22 conditionsNotCorrect.
    ConditionsNotCorrect = 0x22,
    /// 0x24 requestSequenceError.
    RequestSequenceError = 0x24,
    /// 0x31 requestOutOfRange.
    RequestOutOfRange = 0x31,
    /// 0x33 securityAccessDenied.
    SecurityAccessDenied = 0x33,
    /// 0x35 invalidKey.
    InvalidKey = 0x35,
    /// 0x36 exceededNumberOfAttempts.
    ExceededNumberOfAttempts = 0x36,
    /// 0x37 requiredTimeDelayNotExpired.
    RequiredTimeDelayNotExpired = 0x37,
    /// 0x70 uploadDownloadNotAccepted.
    UploadDownloadNotAccepted = 0x70,
    /// 0x71 transferDataSuspended.
    TransferDataSuspended = 0x71,
    /// 0x72 generalProgrammingFailure.
    GeneralProgrammingFailure = 0x72,
    /// 0x73 wrongBlockSequenceCounter.
    WrongBlockSequenceCounter = 0x73,
    /// 0x78 requestCorrectlyReceived-ResponsePending.
    ResponsePending = 0x78,
    /// 0x7F serviceNotSupportedInActiveSession.
    ServiceNotSupportedInActiveSession = 0x7F,
}

impl Nrc {
    /// Its name in ISO 14229-1.
    pub fn name(self) -> &'static str {
        match self {
            Nrc::ServiceNotSupported => "serviceNotSupported",
            Nrc::SubFunctionNotSupported => "subFunctionNotSupported",
            Nrc::IncorrectMessageLength => "incorrectMessageLengthOrInvalidFormat",
            Nrc::ConditionsNotCorrect => "conditionsNotCorrect",
            Nrc::RequestSequenceError => "requestSequenceError",
            Nrc::RequestOutOfRange => "requestOutOfRange",
            Nrc::SecurityAccessDenied => "securityAccessDenied",
            Nrc::InvalidKey => "invalidKey",
            Nrc::ExceededNumberOfAttempts => "exceededNumberOfAttempts",
            Nrc::RequiredTimeDelayNotExpired => "requiredTimeDelayNotExpired",
            Nrc::UploadDownloadNotAccepted => "uploadDownloadNotAccepted",
            Nrc::TransferDataSuspended => "transferDataSuspended",
            Nrc::GeneralProgrammingFailure => "generalProgrammingFailure",
            Nrc::WrongBlockSequenceCounter => "wrongBlockSequenceCounter",
            Nrc::ResponsePending => "requestCorrectlyReceived-ResponsePending",
            Nrc::ServiceNotSupportedInActiveSession => "serviceNotSupportedInActiveSession",
        }
    }

    /// The code for a byte, if it is one this crate names.
    pub fn from_byte(b: u8) -> Option<Nrc> {
        [
            Nrc::ServiceNotSupported,
            Nrc::SubFunctionNotSupported,
            Nrc::IncorrectMessageLength,
            Nrc::ConditionsNotCorrect,
            Nrc::RequestSequenceError,
            Nrc::RequestOutOfRange,
            Nrc::SecurityAccessDenied,
            Nrc::InvalidKey,
            Nrc::ExceededNumberOfAttempts,
            Nrc::RequiredTimeDelayNotExpired,
            Nrc::UploadDownloadNotAccepted,
            Nrc::TransferDataSuspended,
            Nrc::GeneralProgrammingFailure,
            Nrc::WrongBlockSequenceCounter,
            Nrc::ResponsePending,
            Nrc::ServiceNotSupportedInActiveSession,
        ]
        .into_iter()
        .find(|n| *n as u8 == b)
    }
}

/// The negative response `0x7F SID NRC`.
pub fn negative(service: u8, nrc: Nrc) -> Vec<u8> {
    vec![sid::NEGATIVE, service, nrc as u8]
}

/// Diagnostic sessions (0x10 sub-functions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Session {
    /// 0x01 defaultSession.
    Default = 0x01,
    /// 0x02 programmingSession.
    Programming = 0x02,
    /// 0x03 extendedDiagnosticSession.
    Extended = 0x03,
}

/// Data identifiers served by ReadDataByIdentifier.
pub mod did {
    /// Active diagnostic session (one byte).
    pub const ACTIVE_SESSION: u16 = 0xF186;
    /// Boot software identification (ASCII).
    pub const BOOT_SOFTWARE_ID: u16 = 0xF180;
    /// Application software version (ASCII): the Uptane target name of the running image.
    pub const APPLICATION_SOFTWARE: u16 = 0xF189;
    /// ECU serial number (ASCII): the Uptane ECU identifier.
    pub const ECU_SERIAL: u16 = 0xF18C;
    /// VIN (17 ASCII characters).
    pub const VIN: u16 = 0xF190;
    /// Rampart (vehicle-manufacturer range): the running image's length and release counter
    /// (8 bytes each, big endian), SHA-256 (32 bytes) and SHA-512 (64 bytes): what the
    /// gateway reports to the director.
    pub const RUNNING_IMAGE: u16 = 0xF1A0;
    /// Rampart: the hardware identifier (ASCII).
    pub const HARDWARE_ID: u16 = 0xF1A1;
    /// Rampart: the ECU's security log — the number of this read (8 bytes) and the attack
    /// indicators not yet cleared (`rule: message` lines).
    pub const SECURITY_LOG: u16 = 0xF1A2;
}

/// Routine identifiers served by RoutineControl.
pub mod routine {
    /// eraseMemory: erases the inactive flash bank.
    pub const ERASE_MEMORY: u16 = 0xFF00;
    /// checkProgrammingDependencies: verifies the downloaded image against the director's
    /// signed targets metadata (the option record) and, only if it holds, makes its bank
    /// the one the next reset boots.
    pub const CHECK_DEPENDENCIES: u16 = 0xFF01;
    /// clearSecurityLog (Rampart): forgets the security-log entries a numbered read of DID
    /// 0xF1A2 returned (option record: that number, 8 bytes); needs security access.
    pub const CLEAR_SECURITY_LOG: u16 = 0xFF02;
    /// Routine status: correct.
    pub const STATUS_OK: u8 = 0x00;
    /// Routine status: incorrect (followed by the failed rule's name in ASCII).
    pub const STATUS_FAILED: u8 = 0x01;
}

/// SecurityAccess level served (sub-functions 0x01 requestSeed / 0x02 sendKey).
pub const SECURITY_LEVEL: u8 = 0x01;
/// Bytes in a seed and in a key.
pub const SEED_LEN: usize = 16;

/// The key for `seed` at `level`: the first 16 bytes of HMAC-SHA256 under the ECU's secret
/// over a fixed label, the level and the seed. A keyed MAC, so that seeing any number of
/// seed/key pairs on the bus teaches nothing about the key for a fresh seed.
pub fn security_key(secret: &[u8], level: u8, seed: &[u8]) -> [u8; SEED_LEN] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(b"rampart-uds-security-access-v1");
    ctx.update(&[level]);
    ctx.update(seed);
    let tag = ctx.sign();
    let mut out = [0u8; SEED_LEN];
    for (o, t) in out.iter_mut().zip(tag.as_ref()) {
        *o = *t;
    }
    out
}

/// Length of DID 0xF1A0's value.
pub const RUNNING_IMAGE_LEN: usize = 112;

/// DID 0xF1A0's value for `image`: length and release counter (8 bytes each, big endian),
/// SHA-256, SHA-512 (a hash the image does not list is zeros).
pub fn encode_running_image(image: &InstalledImage) -> Vec<u8> {
    let mut v = Vec::with_capacity(RUNNING_IMAGE_LEN);
    v.extend_from_slice(&image.length.to_be_bytes());
    v.extend_from_slice(&image.release_counter.to_be_bytes());
    for (name, len) in [("sha256", 32), ("sha512", 64)] {
        let digest = image
            .hashes
            .get(name)
            .and_then(|h| hex::decode(h).ok())
            .filter(|d| d.len() == len)
            .unwrap_or_else(|| vec![0; len]);
        v.extend_from_slice(&digest);
    }
    v
}

/// The image DID 0xF1A0's `value` describes, named `filename` (DID 0xF189); `None` when the
/// value is not [`RUNNING_IMAGE_LEN`] bytes.
pub fn decode_running_image(filename: String, value: &[u8]) -> Option<InstalledImage> {
    let number = |at: usize| {
        value
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
    };
    if value.len() != RUNNING_IMAGE_LEN {
        return None;
    }
    let mut hashes = rampart_core::hash::Hashes::new();
    hashes.insert("sha256".into(), hex::encode(value.get(16..48)?));
    hashes.insert("sha512".into(), hex::encode(value.get(48..)?));
    Some(InstalledImage {
        filename,
        length: number(0)?,
        release_counter: number(8)?,
        hashes,
    })
}

/// DID 0xF1A2's value: the number of this read (8 bytes), then the log's lines.
pub fn encode_security_log(number: u64, text: &str) -> Vec<u8> {
    let mut v = number.to_be_bytes().to_vec();
    v.extend_from_slice(text.as_bytes());
    v
}

/// The read number and the text of DID 0xF1A2's `value` (`(0, "")` when too short).
pub fn decode_security_log(value: &[u8]) -> (u64, String) {
    match value.split_first_chunk::<8>() {
        Some((n, text)) => (
            u64::from_be_bytes(*n),
            String::from_utf8_lossy(text).into_owned(),
        ),
        None => (0, String::new()),
    }
}

/// Reads a security-access secret file (mode 0600, hex, at least 16 bytes): the ECU's and
/// the gateway's copy alike.
pub fn read_secret(path: &Path) -> Result<Vec<u8>> {
    rampart_client::store::check_secret_permissions(path)?;
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_secret(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

/// Parses a security-access secret: hex, at least 16 bytes.
pub fn parse_secret(text: &str) -> std::result::Result<Vec<u8>, String> {
    let bytes = hex::decode(text.trim()).map_err(|e| format!("not hex: {e}"))?;
    if bytes.len() < 16 {
        return Err(format!(
            "{} bytes; a security-access secret has at least 16",
            bytes.len()
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_secret_level_and_seed() {
        let a = security_key(b"0123456789abcdef", 1, &[7; 16]);
        assert_eq!(a, security_key(b"0123456789abcdef", 1, &[7; 16]));
        assert_ne!(a, security_key(b"0123456789abcdeF", 1, &[7; 16]));
        assert_ne!(a, security_key(b"0123456789abcdef", 3, &[7; 16]));
        assert_ne!(a, security_key(b"0123456789abcdef", 1, &[8; 16]));
    }

    #[test]
    fn the_running_image_and_the_log_round_trip_through_their_dids() {
        let image = InstalledImage {
            filename: "seat/fw-5.2.bin".into(),
            length: 300_000,
            hashes: rampart_core::hash::compute_hashes(b"seat"),
            release_counter: 7,
        };
        let value = encode_running_image(&image);
        assert_eq!(value.len(), RUNNING_IMAGE_LEN);
        assert_eq!(
            decode_running_image(image.filename.clone(), &value),
            Some(image)
        );
        assert_eq!(decode_running_image("x".into(), &value[..100]), None);
        assert_eq!(
            decode_security_log(&encode_security_log(9, "rollback: old")),
            (9, "rollback: old".to_owned())
        );
        assert_eq!(decode_security_log(&[1, 2]), (0, String::new()));
    }

    #[test]
    fn nrc_bytes_round_trip() {
        for b in 0..=255u8 {
            if let Some(n) = Nrc::from_byte(b) {
                assert_eq!(n as u8, b);
                assert!(!n.name().is_empty());
            }
        }
        assert_eq!(
            negative(0x34, Nrc::SecurityAccessDenied),
            [0x7F, 0x34, 0x33]
        );
    }
}
