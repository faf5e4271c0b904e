//! The gateway's side of the legacy path: a UDS tester on DoIP, as the primary uses it to
//! flash an ECU that is not an Uptane secondary, and to read what it runs.
//!
//! The primary has already fully verified the image (both repositories, Uptane 5.4.4.2).
//! The flash follows the sequence bootloaders expect — programming session, security access
//! (seed and key from the ECU's secret), erase, RequestDownload, TransferData blocks,
//! RequestTransferExit, the verify routine with the director's signed targets (the ECU's own
//! partial verification, a second line), ECUReset — then a new connection reads the software
//! version back: the flash counts only if the ECU now runs the target. "Response pending"
//! (NRC 0x78) is waited out up to P2*; every other negative response fails the flash with
//! the rule it stands for.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rampart_core::rule::Rule;
use rampart_core::uptane::InstalledImage;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::doip::{activation, Header, Message, HEADER_LEN};
use super::service::{self, did, routine, sid, Nrc, SECURITY_LEVEL};
use crate::error::{Error, Result};
use crate::report::Progress;

/// `[ecus.uds]` of `vehicle.toml`: how the gateway reaches a legacy ECU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UdsLink {
    /// The ECU's DoIP logical address.
    pub logical_address: u16,
    /// The gateway's tester address (external test equipment range).
    #[serde(default = "default_tester")]
    pub tester_address: u16,
    /// The ECU's security-access secret (hex, 0600): the gateway computes keys with it.
    pub security_secret: PathBuf,
}

fn default_tester() -> u16 {
    0x0E80
}

/// How long the ECU has to answer (P2 client, generous).
const P2: Duration = Duration::from_secs(5);
/// How long a "response pending" may keep us waiting, each time.
const P2_STAR: Duration = Duration::from_secs(30);
/// At most this many "response pending" answers to one request.
const MAX_PENDING: u32 = 20;
/// The largest DoIP payload we read from an ECU.
const MAX_PAYLOAD: u32 = 1 << 20;

/// What a legacy ECU says it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyState {
    /// The image (DIDs 0xF189 and 0xF1A0).
    pub image: InstalledImage,
    /// Number of the security-log read (to acknowledge it later).
    pub log_read: u64,
    /// The security log: attack indicators, `rule: message` per line.
    pub log: String,
}

/// A tester connection with routing activated.
pub struct Tester {
    read: tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
    stream: tokio::net::tcp::OwnedWriteHalf,
    tester: u16,
    ecu: u16,
    ecu_id: String,
}

fn nrc_rule(nrc: u8) -> Rule {
    match Nrc::from_byte(nrc) {
        Some(Nrc::SecurityAccessDenied) => Rule::SecurityAccessDenied,
        Some(Nrc::InvalidKey | Nrc::ExceededNumberOfAttempts) => Rule::InvalidSecurityKey,
        Some(Nrc::RequiredTimeDelayNotExpired) => Rule::SecurityDelay,
        Some(Nrc::WrongBlockSequenceCounter) => Rule::BlockSequence,
        _ => Rule::DiagnosticRefused,
    }
}

impl Tester {
    /// Connects to `address` and activates routing for `tester` to ECU `ecu`.
    pub async fn connect(address: &str, link: &UdsLink, ecu_id: &str) -> Result<Tester> {
        let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(address))
            .await
            .map_err(|_| Error::Protocol(format!("ECU {ecu_id} at {address}: no DoIP connection")))?
            .map_err(|e| Error::Protocol(format!("ECU {ecu_id} at {address}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let (read, stream) = stream.into_split();
        let mut t = Tester {
            read: tokio::io::BufReader::with_capacity(64 * 1024, read),
            stream,
            tester: link.tester_address,
            ecu: link.logical_address,
            ecu_id: ecu_id.to_owned(),
        };
        t.send(Message::RoutingActivationRequest {
            source: t.tester,
            activation_type: 0x00,
            oem: None,
        })
        .await?;
        loop {
            match t.receive(P2).await? {
                Message::RoutingActivationResponse { code, .. } if code == activation::SUCCESS => {
                    return Ok(t)
                }
                Message::RoutingActivationResponse { code, .. } => {
                    return Err(Error::Protocol(format!(
                        "ECU {ecu_id}: routing activation refused (code 0x{code:02X})"
                    )))
                }
                _ => continue,
            }
        }
    }

    async fn send(&mut self, m: Message) -> Result<()> {
        self.stream
            .write_all(&m.encode(0x02))
            .await
            .map_err(|e| Error::Protocol(format!("ECU {}: {e}", self.ecu_id)))
    }

    async fn receive(&mut self, wait: Duration) -> Result<Message> {
        let ecu = self.ecu_id.clone();
        let lost = |what: &str| Error::Protocol(format!("ECU {ecu}: {what}"));
        let mut head = [0u8; HEADER_LEN];
        tokio::time::timeout(wait, self.read.read_exact(&mut head))
            .await
            .map_err(|_| lost("no answer in time"))?
            .map_err(|e| lost(&format!("connection lost: {e}")))?;
        let header = Header::parse(&head, MAX_PAYLOAD)
            .map_err(|n| lost(&format!("bad DoIP header: {}", n.describe())))?;
        let mut payload = vec![0u8; header.length as usize];
        tokio::time::timeout(wait, self.read.read_exact(&mut payload))
            .await
            .map_err(|_| lost("answer cut short"))?
            .map_err(|e| lost(&format!("connection lost: {e}")))?;
        let m = Message::decode(header.payload_type, &payload)
            .map_err(|n| lost(&format!("bad DoIP message: {}", n.describe())))?;
        if let Message::GenericNack(code) = m {
            return Err(lost(&format!("DoIP negative acknowledge 0x{code:02X}")));
        }
        Ok(m)
    }

    /// Sends one UDS request and returns its positive response; waits out "response
    /// pending"; a negative response is an error naming the service, the code and its rule.
    pub async fn request(&mut self, req: &[u8]) -> Result<Vec<u8>> {
        let service = req.first().copied().unwrap_or_default();
        let bytes = super::doip::encode_diagnostic(0x02, self.tester, self.ecu, req);
        self.stream
            .write_all(&bytes)
            .await
            .map_err(|e| Error::Protocol(format!("ECU {}: {e}", self.ecu_id)))?;
        let mut wait = P2;
        let mut pending = 0;
        loop {
            match self.receive(wait).await? {
                Message::DiagnosticNack { code, .. } => {
                    return Err(Error::Protocol(format!(
                        "ECU {}: diagnostic message refused (DoIP code 0x{code:02X})",
                        self.ecu_id
                    )))
                }
                Message::AliveCheckRequest => {
                    self.send(Message::AliveCheckResponse {
                        source: self.tester,
                    })
                    .await?;
                }
                Message::Diagnostic { source, data, .. } if source == self.ecu => match *data {
                    [sid::NEGATIVE, s, nrc]
                        if s == service && nrc == Nrc::ResponsePending as u8 =>
                    {
                        pending += 1;
                        if pending > MAX_PENDING {
                            return Err(Error::Protocol(format!(
                                "ECU {}: still pending after {MAX_PENDING} answers",
                                self.ecu_id
                            )));
                        }
                        wait = P2_STAR;
                    }
                    [sid::NEGATIVE, s, nrc] if s == service => {
                        let name = Nrc::from_byte(nrc).map_or("unknown", Nrc::name);
                        return Err(Error::Diagnostic {
                            ecu: self.ecu_id.clone(),
                            service,
                            nrc,
                            name: name.to_owned(),
                            rule: nrc_rule(nrc),
                        });
                    }
                    [first, ..] if first == service.wrapping_add(0x40) => return Ok(data),
                    _ => {
                        return Err(Error::Protocol(format!(
                            "ECU {}: answer {:02X?} does not answer service 0x{service:02X}",
                            self.ecu_id,
                            data.get(..data.len().min(8)).unwrap_or_default()
                        )))
                    }
                },
                // Acknowledgements, and anything else that is not the answer.
                _ => {}
            }
        }
    }

    async fn read_did(&mut self, id: u16) -> Result<Vec<u8>> {
        let [a, b] = id.to_be_bytes();
        let answer = self.request(&[sid::READ_DATA, a, b]).await?;
        match answer.as_slice() {
            [0x62, x, y, value @ ..] if [*x, *y] == [a, b] => Ok(value.to_vec()),
            _ => Err(Error::Protocol(format!(
                "ECU {}: answer to DID 0x{id:04X} names another",
                self.ecu_id
            ))),
        }
    }

    /// Security access with the ECU's secret.
    async fn unlock(&mut self, secret: &[u8]) -> Result<()> {
        let seed = self
            .request(&[sid::SECURITY_ACCESS, SECURITY_LEVEL])
            .await?;
        let seed = seed.get(2..).unwrap_or_default();
        if seed.iter().all(|b| *b == 0) {
            return Ok(()); // already unlocked
        }
        let key = service::security_key(secret, SECURITY_LEVEL, seed);
        let mut req = vec![sid::SECURITY_ACCESS, SECURITY_LEVEL + 1];
        req.extend_from_slice(&key);
        self.request(&req).await?;
        Ok(())
    }
}

/// What the ECU at `address` runs, and its security log (default session, no access needed).
pub async fn read_state(address: &str, link: &UdsLink, ecu_id: &str) -> Result<LegacyState> {
    let mut t = Tester::connect(address, link, ecu_id).await?;
    let name = t.read_did(did::APPLICATION_SOFTWARE).await?;
    let image = t.read_did(did::RUNNING_IMAGE).await?;
    let log = t.read_did(did::SECURITY_LOG).await?;
    let filename = String::from_utf8(name)
        .map_err(|_| Error::Protocol(format!("ECU {ecu_id}: software version is not text")))?;
    let image = service::decode_running_image(filename, &image).ok_or_else(|| {
        Error::Protocol(format!(
            "ECU {ecu_id}: DID 0xF1A0 is not {} bytes",
            service::RUNNING_IMAGE_LEN
        ))
    })?;
    let (log_read, log) = service::decode_security_log(&log);
    Ok(LegacyState {
        image,
        log_read,
        log,
    })
}

/// Tells the ECU to forget the security log up to read `number` (the director has it).
pub async fn clear_log(address: &str, link: &UdsLink, ecu_id: &str, number: u64) -> Result<()> {
    let secret = service::read_secret(&link.security_secret)?;
    let mut t = Tester::connect(address, link, ecu_id).await?;
    t.request(&[sid::SESSION_CONTROL, 0x03]).await?;
    t.unlock(&secret).await?;
    let [a, b] = routine::CLEAR_SECURITY_LOG.to_be_bytes();
    let mut req = vec![sid::ROUTINE_CONTROL, 0x01, a, b];
    req.extend_from_slice(&number.to_be_bytes());
    t.request(&req).await?;
    let _ = t.request(&[sid::SESSION_CONTROL, 0x01]).await;
    Ok(())
}

/// One flash: the image at `image` (`length` bytes, fully verified by the primary) as
/// `target`, with the director's signed targets for the ECU's verify routine.
pub struct Flash<'a> {
    /// Where the ECU listens (host:port).
    pub address: &'a str,
    /// How to reach it.
    pub link: &'a UdsLink,
    /// Its Uptane ECU ID.
    pub ecu_id: &'a str,
    /// The target name.
    pub target: &'a str,
    /// The image file.
    pub image: &'a Path,
    /// Its length.
    pub length: u64,
    /// The director's targets metadata (signed).
    pub director_targets: &'a [u8],
}

impl Flash<'_> {
    /// Runs the sequence; `progress` follows the bytes transferred. Ok once the ECU reads
    /// back the new software version after its reset.
    pub async fn run(&self, progress: &mut dyn Progress) -> Result<()> {
        let secret = service::read_secret(&self.link.security_secret)?;
        let mut t = Tester::connect(self.address, self.link, self.ecu_id).await?;
        t.request(&[sid::SESSION_CONTROL, 0x02]).await?;
        t.unlock(&secret).await?;
        let [ea, eb] = routine::ERASE_MEMORY.to_be_bytes();
        let erased = t.request(&[sid::ROUTINE_CONTROL, 0x01, ea, eb]).await?;
        if erased.get(4) != Some(&routine::STATUS_OK) {
            return Err(Error::Protocol(format!(
                "ECU {}: erase routine failed ({erased:02X?})",
                self.ecu_id
            )));
        }
        let size_len: u8 = if self.length <= u64::from(u32::MAX) {
            4
        } else {
            8
        };
        let mut req = vec![sid::REQUEST_DOWNLOAD, 0x00, (size_len << 4) | 4, 0, 0, 0, 0];
        let size = self.length.to_be_bytes();
        req.extend_from_slice(size.get(8 - usize::from(size_len)..).unwrap_or_default());
        let answer = t.request(&req).await?;
        let width = usize::from(answer.get(1).copied().unwrap_or_default() >> 4);
        let max = answer
            .get(2..2 + width)
            .filter(|b| !b.is_empty())
            .map(|b| b.iter().fold(0usize, |n, x| (n << 8) | usize::from(*x)))
            .ok_or_else(|| {
                Error::Protocol(format!(
                    "ECU {}: RequestDownload answer {answer:02X?}",
                    self.ecu_id
                ))
            })?;
        if max < 3 {
            return Err(Error::Protocol(format!(
                "ECU {}: maxNumberOfBlockLength {max}",
                self.ecu_id
            )));
        }
        let block = (max - 2).min(1 << 20);
        // Read ahead in large pieces: a file read is a hop to the blocking pool, which must
        // not happen once per block.
        let mut file = tokio::io::BufReader::with_capacity(
            4 << 20,
            tokio::fs::File::open(self.image)
                .await
                .map_err(|e| Error::io(self.image, e))?,
        );
        let mut buf = vec![0u8; block + 2];
        let mut counter: u8 = 1;
        let mut sent = 0u64;
        while sent < self.length {
            let want = usize::try_from(self.length - sent)
                .unwrap_or(block)
                .min(block);
            buf.truncate(2);
            buf.resize(2 + want, 0);
            let (head, body) = buf.split_at_mut(2);
            file.read_exact(body)
                .await
                .map_err(|e| Error::io(self.image, e))?;
            head.copy_from_slice(&[sid::TRANSFER_DATA, counter]);
            let answer = t.request(&buf).await?;
            if answer != [0x76, counter] {
                return Err(Error::Protocol(format!(
                    "ECU {}: TransferData answer {answer:02X?} for block {counter}",
                    self.ecu_id
                )));
            }
            sent += want as u64;
            progress.set(sent);
            counter = counter.wrapping_add(1);
        }
        t.request(&[sid::TRANSFER_EXIT]).await?;
        let [va, vb] = routine::CHECK_DEPENDENCIES.to_be_bytes();
        let mut req = vec![sid::ROUTINE_CONTROL, 0x01, va, vb];
        req.extend_from_slice(self.director_targets);
        let verdict = t.request(&req).await?;
        match verdict.get(4..) {
            Some([routine::STATUS_OK, ..]) => {}
            Some([_, rule @ ..]) => {
                let rule = String::from_utf8_lossy(rule).into_owned();
                return Err(Error::EcuRefused {
                    ecu: self.ecu_id.to_owned(),
                    rule: rule.parse().unwrap_or(Rule::DiagnosticRefused),
                    message: format!(
                        "its verify routine refused {} ({rule}); the running bank stays",
                        self.target
                    ),
                });
            }
            _ => {
                return Err(Error::Protocol(format!(
                    "ECU {}: verify routine answered {verdict:02X?}",
                    self.ecu_id
                )))
            }
        }
        t.request(&[sid::ECU_RESET, 0x01]).await?;
        drop(t);
        // The ECU reboots; ask it what it runs now.
        let mut last = None;
        for _ in 0..50 {
            match read_state(self.address, self.link, self.ecu_id).await {
                Ok(state) if state.image.filename == self.target => return Ok(()),
                Ok(state) => {
                    return Err(Error::EcuRefused {
                        ecu: self.ecu_id.to_owned(),
                        rule: Rule::UnconfirmedInstall,
                        message: format!(
                            "after its reset it runs {}, not {}",
                            state.image.filename, self.target
                        ),
                    })
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last.unwrap_or_else(|| Error::Protocol(format!("ECU {} is gone", self.ecu_id))))
    }
}
