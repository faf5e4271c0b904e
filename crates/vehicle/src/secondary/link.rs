//! The ECU's side of the in-vehicle link: accepting connections from the primary (or
//! whoever else is on the bus) within fixed limits, one request per connection, and
//! streaming an image into the inactive slot.
//!
//! Everything here is bounded, because anything on the bus can connect: connections in
//! total and per peer address (excess ones are closed at once and counted as a
//! `connection-flood` indicator), the time to send a frame, and the bytes buffered by all
//! frames being received ([`MemoryBudget`]). Failing `accept` (out of file descriptors)
//! pauses and goes on; it never stops the ECU.

use rampart_core::rule::Rule;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use rampart_core::encryption::{unwrap_key, Decryptor};
use rampart_core::hash::StreamVerifier;
use rampart_core::uptane::InstalledImage;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};

use super::Secondary;
use crate::error::{Error, Result};
use crate::protocol::{
    self, ErrorPayload, FrameError, InstallBegin, InstallResult, Kind, MemoryBudget, ReportRequest,
};
use crate::slots::BootOutcome;

/// Limits of the in-vehicle link (`[limits]` in `ecu.toml`; every field optional).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkLimits {
    /// Connections served at once, in total.
    pub max_connections: usize,
    /// Connections served at once from one peer address.
    pub max_connections_per_peer: usize,
    /// Seconds a new connection has to send its first complete frame.
    pub first_frame_timeout_secs: u64,
    /// Seconds each later frame of an operation (image chunks) may take.
    pub frame_timeout_secs: u64,
    /// Bytes all frames being received may buffer together.
    pub buffer_budget_bytes: usize,
}

impl Default for LinkLimits {
    fn default() -> Self {
        LinkLimits {
            max_connections: 32,
            max_connections_per_peer: 4,
            first_frame_timeout_secs: 10,
            frame_timeout_secs: 30,
            buffer_budget_bytes: 8 * 1024 * 1024,
        }
    }
}

impl LinkLimits {
    fn first_frame_timeout(&self) -> Duration {
        Duration::from_secs(self.first_frame_timeout_secs.max(1))
    }

    fn frame_timeout(&self) -> Duration {
        Duration::from_secs(self.frame_timeout_secs.max(1))
    }
}

/// What every connection of one ECU shares.
struct Link {
    limits: LinkLimits,
    budget: MemoryBudget,
    total: Arc<Semaphore>,
    per_peer: Arc<StdMutex<HashMap<IpAddr, usize>>>,
    flood: StdMutex<FloodNote>,
    /// A deferred write of indicators is scheduled.
    flush_scheduled: AtomicBool,
}

/// A connection's place within the limits; given back when dropped.
struct Slot {
    _total: OwnedSemaphorePermit,
    peer: IpAddr,
    per_peer: Arc<StdMutex<HashMap<IpAddr, usize>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut map) = self.per_peer.lock() {
            if let Some(n) = map.get_mut(&self.peer) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&self.peer);
                }
            }
        }
    }
}

/// Refused connections, turned into at most one indicator per interval.
#[derive(Default)]
struct FloodNote {
    refused: u64,
    since_note: u64,
    last_note: Option<Instant>,
}

const FLOOD_NOTE_INTERVAL: Duration = Duration::from_secs(10);

impl Link {
    fn new(limits: LinkLimits) -> Self {
        Link {
            budget: MemoryBudget::new(limits.buffer_budget_bytes),
            total: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            per_peer: Arc::default(),
            flood: StdMutex::default(),
            flush_scheduled: AtomicBool::new(false),
            limits,
        }
    }

    /// A place for a connection from `peer`, if the limits allow one.
    fn admit(&self, peer: IpAddr) -> Option<Slot> {
        let permit = self.total.clone().try_acquire_owned().ok()?;
        let mut map = self.per_peer.lock().ok()?;
        let n = map.entry(peer).or_insert(0);
        if *n >= self.limits.max_connections_per_peer.max(1) {
            return None;
        }
        *n += 1;
        Some(Slot {
            _total: permit,
            peer,
            per_peer: self.per_peer.clone(),
        })
    }

    /// Counts a refused connection; says what to record when an indicator is due.
    fn refused(&self, peer: SocketAddr) -> Option<String> {
        let mut note = self.flood.lock().ok()?;
        note.refused += 1;
        note.since_note += 1;
        let due = note
            .last_note
            .is_none_or(|at| at.elapsed() >= FLOOD_NOTE_INTERVAL);
        if !due {
            return None;
        }
        note.last_note = Some(Instant::now());
        let message = format!(
            "{} connection(s) refused ({} in all), the latest from {peer}: more than {} at once \
             from one address or {} in total",
            note.since_note,
            note.refused,
            self.limits.max_connections_per_peer,
            self.limits.max_connections
        );
        note.since_note = 0;
        Some(message)
    }

    async fn read_frame(
        &self,
        stream: &mut TcpStream,
        timeout: Duration,
    ) -> std::result::Result<protocol::Frame, FrameError> {
        tokio::time::timeout(
            timeout,
            protocol::read_frame_within(stream, Some(&self.budget)),
        )
        .await
        .map_err(|_| FrameError::Truncated)?
    }
}

/// Serves the primary on `listener` within `limits` until the task is dropped.
pub async fn serve(ecu: Arc<Mutex<Secondary>>, listener: TcpListener, limits: LinkLimits) {
    let link = Arc::new(Link::new(limits));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                accept_error_pause(&e).await;
                continue;
            }
        };
        let Some(slot) = link.admit(peer.ip()) else {
            // Closed at once: a flood costs a file descriptor for no longer than this.
            drop(stream);
            if let Some(message) = link.refused(peer) {
                tracing::warn!(%peer, "{message}");
                let ecu = ecu.clone();
                let link = link.clone();
                tokio::spawn(async move {
                    let deferred = ecu
                        .lock()
                        .await
                        .record_repeatable(Rule::ConnectionFlood, &message);
                    link.flush_later(&ecu, deferred);
                });
            }
            continue;
        };
        let ecu = ecu.clone();
        let link = link.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = handle(ecu, stream, &link).await {
                tracing::debug!(%peer, error = %e, "in-vehicle connection ended");
            }
        });
    }
}

/// Errors from `accept` that concern one connection are skipped; others (out of file
/// descriptors, out of memory) pause the loop briefly so it does not spin, then it goes on.
async fn accept_error_pause(e: &io::Error) {
    match e.kind() {
        io::ErrorKind::ConnectionAborted
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::Interrupted => {
            tracing::debug!(error = %e, "accept: connection gone");
        }
        _ => {
            tracing::error!(error = %e, "accept failed; pausing for 100 ms");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Link {
    /// After a deferred indicator write, makes sure it happens within about a second.
    fn flush_later(self: &Arc<Self>, ecu: &Arc<Mutex<Secondary>>, deferred: bool) {
        if !deferred || self.flush_scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let (ecu, link) = (ecu.clone(), self.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            link.flush_scheduled.store(false, Ordering::Release);
            ecu.lock().await.flush();
        });
    }
}

async fn refuse(
    ecu: &Arc<Mutex<Secondary>>,
    link: &Arc<Link>,
    stream: &mut TcpStream,
    err: &FrameError,
) {
    let deferred = ecu.lock().await.record_rejected_frame(err);
    link.flush_later(ecu, deferred);
    answer_error(stream, err.rule(), &err.to_string()).await;
}

async fn answer_error(stream: &mut TcpStream, rule: Rule, message: &str) {
    let _ = protocol::write_json(
        stream,
        Kind::Error,
        &ErrorPayload {
            rule: rule.to_string(),
            message: message.into(),
        },
    )
    .await;
    let _ = stream.shutdown().await;
}

/// One connection from the primary: one request, one answer.
async fn handle(ecu: Arc<Mutex<Secondary>>, mut stream: TcpStream, link: &Arc<Link>) -> Result<()> {
    let frame = match link
        .read_frame(&mut stream, link.limits.first_frame_timeout())
        .await
    {
        Ok(f) => f,
        Err(FrameError::Closed) => return Ok(()),
        Err(e) => {
            refuse(&ecu, link, &mut stream, &e).await;
            return Ok(());
        }
    };
    match frame.kind {
        Kind::ReportRequest => {
            let req = match ReportRequest::parse(&frame) {
                Ok(r) => r,
                Err(e) => {
                    refuse(&ecu, link, &mut stream, &e).await;
                    return Ok(());
                }
            };
            let report = ecu.lock().await.report(&req.nonce, Utc::now())?;
            protocol::write_frame(&mut stream, Kind::Report, &report).await?;
        }
        Kind::InstallBegin => {
            let begin: InstallBegin = match protocol::parse_json(&frame) {
                Ok(b) => b,
                Err(e) => {
                    refuse(&ecu, link, &mut stream, &e).await;
                    return Ok(());
                }
            };
            let result = install(&ecu, &mut stream, begin, link).await;
            protocol::write_json(&mut stream, Kind::InstallResult, &result).await?;
        }
        Kind::Ack => {
            let mut guard = ecu.lock().await;
            match guard.acknowledge(&frame.payload) {
                Ok(forgotten) => {
                    drop(guard);
                    let result = InstallResult {
                        ok: true,
                        rule: None,
                        message: format!(
                            "the director has this ECU's reports; {forgotten} indicator(s) forgotten"
                        ),
                    };
                    protocol::write_json(&mut stream, Kind::InstallResult, &result).await?;
                }
                Err(e) => {
                    let rule = e.rule();
                    let message = format!("manifest receipt refused: {e}");
                    guard.record_attack(rule, &message);
                    drop(guard);
                    answer_error(&mut stream, rule, &message).await;
                }
            }
        }
        Kind::Boot => {
            let outcome = ecu.lock().await.boot()?;
            let result = InstallResult {
                ok: !matches!(outcome, BootOutcome::RolledBack { .. }),
                rule: None,
                message: format!("{outcome:?}"),
            };
            protocol::write_json(&mut stream, Kind::InstallResult, &result).await?;
        }
        other => refuse(&ecu, link, &mut stream, &FrameError::Unexpected(other)).await,
    }
    Ok(())
}

/// Where received plaintext goes: the inactive slot (a whole image) or the ECU's delta file.
enum Dest {
    Slot(crate::slots::SlotWriter),
    Delta(super::delta::DeltaFile),
}

impl Dest {
    fn put(&mut self, data: &[u8]) -> Result<()> {
        match self {
            Dest::Slot(w) => Ok(w.write(data)?),
            Dest::Delta(f) => f.put(data),
        }
    }
}

/// Receives an image (or a delta) that was verified by [`Secondary::verify`]: ciphertext
/// checked against the signed ciphertext hashes, decrypted in constant memory, plaintext
/// checked against the signed length and hashes while it goes into the inactive slot (or the
/// delta file).
struct Receiver {
    expected: u64,
    received: u64,
    ciphertext: Option<StreamVerifier>,
    decryptor: Option<Decryptor>,
    plaintext: StreamVerifier,
    writer: Dest,
    buf: Vec<u8>,
}

impl Receiver {
    fn chunk(&mut self, data: &[u8]) -> Result<()> {
        self.received += data.len() as u64;
        if self.received > self.expected {
            return Err(rampart_core::Error::LengthExceeded {
                what: "image on the in-vehicle link".into(),
                max: self.expected,
            }
            .into());
        }
        match (&mut self.ciphertext, &mut self.decryptor) {
            (Some(cv), Some(dec)) => {
                cv.update(data)?;
                self.buf.clear();
                dec.update(data, &mut self.buf)?;
                self.plaintext.update(&self.buf)?;
                self.writer.put(&self.buf)?;
            }
            _ => {
                self.plaintext.update(data)?;
                self.writer.put(data)?;
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Dest> {
        if let (Some(cv), Some(dec)) = (self.ciphertext.take(), self.decryptor.take()) {
            cv.finish()?;
            self.buf.clear();
            dec.finish(&mut self.buf)?;
            self.plaintext.update(&self.buf)?;
            self.writer.put(&self.buf)?;
        }
        self.plaintext.finish()?;
        Ok(self.writer)
    }
}

async fn install(
    ecu: &Arc<Mutex<Secondary>>,
    stream: &mut TcpStream,
    begin: InstallBegin,
    link: &Link,
) -> InstallResult {
    // One installation at a time: the ECU is locked for its duration.
    let mut guard = ecu.lock().await;
    match install_locked(&mut guard, stream, &begin, link).await {
        Ok(message) => InstallResult {
            ok: true,
            rule: None,
            message,
        },
        Err(e) => {
            let rule = e.rule();
            guard.record_attack(rule, &e.to_string());
            InstallResult {
                ok: false,
                rule: Some(rule.to_string()),
                message: e.to_string(),
            }
        }
    }
}

async fn install_locked(
    ecu: &mut Secondary,
    stream: &mut TcpStream,
    begin: &InstallBegin,
    link: &Link,
) -> Result<String> {
    let now = Utc::now();
    let instruction = ecu.verify(&begin.target, &begin.bundle, now)?;
    // A delta is checked against what this ECU runs before a byte of it is taken.
    let offer = if begin.delta {
        Some(super::delta::usable_offer(ecu, &instruction)?.clone())
    } else {
        None
    };
    let (encryption, what, plain_length, plain_hashes) = match &offer {
        Some(o) => (o.encryption.as_ref(), o.path.clone(), o.length, &o.hashes),
        None => (
            instruction.encryption.as_ref(),
            instruction.target.clone(),
            instruction.file.length,
            &instruction.file.hashes,
        ),
    };
    let (ciphertext, decryptor, expected) = match encryption {
        Some(enc) => {
            let key_pair = ecu.decryption.as_ref().ok_or_else(|| {
                Error::Config("image is encrypted but this ECU has no decryption key".into())
            })?;
            let content_key = unwrap_key(key_pair, &enc.key)?;
            let cv = StreamVerifier::new(
                "ciphertext",
                Some(enc.ciphertext.length),
                enc.ciphertext.length,
                Some(&enc.ciphertext.hashes),
            )?;
            (
                Some(cv),
                Some(Decryptor::new(&content_key)),
                enc.ciphertext.length,
            )
        }
        None => (None, None, plain_length),
    };
    if begin.length != expected {
        return Err(rampart_core::Error::LengthMismatch {
            what: format!("{what} announced by the primary"),
            expected,
            actual: begin.length,
        }
        .into());
    }
    let plaintext =
        StreamVerifier::new(&what, Some(plain_length), plain_length, Some(plain_hashes))?;
    let writer = match offer {
        Some(_) => Dest::Delta(super::delta::DeltaFile::create(ecu)?),
        None => Dest::Slot(ecu.slots.begin_write()?),
    };
    let mut rx = Receiver {
        expected,
        received: 0,
        ciphertext,
        decryptor,
        plaintext,
        writer,
        buf: Vec::with_capacity(protocol::CHUNK + 64),
    };
    loop {
        let frame = link
            .read_frame(stream, link.limits.frame_timeout())
            .await
            .map_err(|e| {
                ecu.state.rejected_frames += 1;
                Error::Frame(e)
            })?;
        match frame.kind {
            Kind::ImageChunk => rx.chunk(&frame.payload)?,
            Kind::ImageEnd => break,
            other => return Err(Error::Frame(FrameError::Unexpected(other))),
        }
    }
    let writer = match (rx.finish()?, &offer) {
        (Dest::Slot(w), _) => w,
        (Dest::Delta(mut file), Some(offer)) => {
            let path = file.close()?.to_path_buf();
            ecu.tell(&format!(
                "building {} from {} and the delta {} ({} bytes)",
                instruction.target, offer.source.filename, offer.path, offer.length
            ));
            super::delta::build(ecu, offer, &path, &instruction)?
        }
        (Dest::Delta(_), None) => {
            return Err(Error::Protocol("delta bytes without a delta offer".into()))
        }
    };
    let image = InstalledImage {
        filename: instruction.target.clone(),
        length: instruction.file.length,
        hashes: instruction.file.hashes.clone(),
        release_counter: instruction.release_counter,
    };
    let slot = ecu.slots.commit_write(writer, image)?;
    ecu.tell(&format!(
        "{} written to slot {slot:?} and verified; booting it",
        instruction.target
    ));
    // Reboot into the new slot (simulated): boot counting until committed or rolled back.
    loop {
        match ecu.boot()? {
            BootOutcome::Committed(s) => {
                return Ok(format!("installed {} in slot {s:?}", instruction.target))
            }
            BootOutcome::RolledBack { failed, to } => {
                return Err(Error::BootFailed(format!(
                    "{} failed its health check in slot {failed:?}; rolled back to slot {to:?}",
                    instruction.target
                )))
            }
            BootOutcome::Retrying { .. } | BootOutcome::Normal => continue,
        }
    }
}
