//! An ECU builds an image from a delta (issue 18): the delta the director offered arrives
//! (checked against its signed length and hashes, decrypted if it was encrypted for this ECU)
//! into a file of the ECU's state folder; the running slot must be the delta's source, byte for
//! byte; the applier (`rampart-delta`, bounded memory) reads the running slot and writes the
//! inactive one, and every byte it writes goes through the full image's signed length and
//! hashes first. Only then does the slot commit as for a full image. Any failure leaves the
//! running slot as it was and the inactive one undescribed, and the primary falls back to the
//! full image.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rampart_core::hash::StreamVerifier;
use rampart_core::rule::Rule;
use rampart_core::uptane::{DeltaOffer, DirectorInstruction, DELTA_FORMAT};

use super::Secondary;
use crate::error::{Error, Result};
use crate::slots::SlotWriter;

/// Where received delta bytes go: a file of the ECU's state folder, removed when dropped.
pub(super) struct DeltaFile {
    path: PathBuf,
    file: Option<BufWriter<File>>,
}

impl DeltaFile {
    /// Creates (truncates) the delta file of `ecu`.
    pub(super) fn create(ecu: &Secondary) -> Result<DeltaFile> {
        let path = ecu.config.state_dir.join("delta.incoming");
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        Ok(DeltaFile {
            path,
            file: Some(BufWriter::new(file)),
        })
    }

    /// Appends received bytes.
    pub(super) fn put(&mut self, data: &[u8]) -> Result<()> {
        match &mut self.file {
            Some(f) => f.write_all(data).map_err(|e| Error::io(&self.path, e)),
            None => Ok(()),
        }
    }

    /// Closes the file for reading.
    pub(super) fn close(&mut self) -> Result<&Path> {
        if let Some(f) = self.file.take() {
            f.into_inner()
                .map_err(|e| Error::io(&self.path, e.into_error()))?;
        }
        Ok(&self.path)
    }
}

impl Drop for DeltaFile {
    fn drop(&mut self) {
        self.file = None;
        let _ = std::fs::remove_file(&self.path);
    }
}

fn refused(offer: &DeltaOffer, rule: Rule, message: String) -> Error {
    Error::Delta {
        target: offer.path.clone(),
        rule,
        message,
    }
}

/// The director's delta offer for `instruction`, if it is one this ECU can use on what it
/// runs: a known format, made from the image in the running slot (its length and hashes as
/// recorded at install, and the slot's bytes read back against them).
pub(super) fn usable_offer<'a>(
    ecu: &Secondary,
    instruction: &'a DirectorInstruction,
) -> Result<&'a DeltaOffer> {
    let offer = instruction.delta.as_ref().ok_or_else(|| {
        Error::Protocol(format!(
            "the primary sent a delta for {}, but the director offered this ECU none",
            instruction.target
        ))
    })?;
    if offer.format != DELTA_FORMAT {
        return Err(refused(
            offer,
            Rule::DeltaCorrupt,
            format!("format {:?}; this ECU applies {DELTA_FORMAT}", offer.format),
        ));
    }
    let running = ecu.running();
    if !offer.source.is(&running) {
        return Err(refused(
            offer,
            Rule::DeltaSource,
            format!(
                "it is made from {} and this ECU runs {}",
                offer.source.filename, running.filename
            ),
        ));
    }
    // The slot itself, not only its record: a slot that changed under the record would build
    // garbage (caught by the result's hashes, but later and with a less useful error).
    ecu.slots
        .check_running(offer.source.length, &offer.source.hashes)
        .map_err(|e| refused(offer, Rule::DeltaSource, format!("the running slot: {e}")))?;
    Ok(offer)
}

/// Writes what the applier builds into the inactive slot, each byte checked against the full
/// image's signed length and hashes on the way; the first failure is kept (the applier sees a
/// plain I/O error).
struct CheckedSlot<'a> {
    verifier: &'a mut StreamVerifier,
    writer: &'a mut SlotWriter,
    failed: Option<Error>,
}

impl Write for CheckedSlot<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let step = self
            .verifier
            .update(data)
            .map_err(Error::from)
            .and_then(|()| self.writer.write(data).map_err(Error::from));
        match step {
            Ok(()) => Ok(data.len()),
            Err(e) => {
                let text = e.to_string();
                self.failed = Some(e);
                Err(std::io::Error::other(text))
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Builds the instructed image from the running slot and the delta at `delta` (already
/// checked against the offer's signed length and hashes) into a new slot writer, the result
/// checked against `instruction`'s signed length and hashes.
pub(super) fn build(
    ecu: &mut Secondary,
    offer: &DeltaOffer,
    delta: &Path,
    instruction: &DirectorInstruction,
) -> Result<SlotWriter> {
    let header = rampart_delta::read_header(delta)
        .map_err(|e| refused(offer, Rule::DeltaCorrupt, e.to_string()))?;
    if header.result_len != instruction.file.length {
        return Err(refused(
            offer,
            Rule::DeltaCorrupt,
            format!(
                "it builds {} bytes; {} is {} bytes",
                header.result_len, instruction.target, instruction.file.length
            ),
        ));
    }
    let source_path = ecu.slots.running_path().to_path_buf();
    let source = File::open(&source_path).map_err(|e| Error::io(&source_path, e))?;
    let mut verifier = StreamVerifier::new(
        &instruction.target,
        Some(instruction.file.length),
        instruction.file.length,
        Some(&instruction.file.hashes),
    )?;
    let mut writer = ecu.slots.begin_write()?;
    let mut sink = CheckedSlot {
        verifier: &mut verifier,
        writer: &mut writer,
        failed: None,
    };
    let applied = rampart_delta::apply(
        std::io::BufReader::with_capacity(64 * 1024, source),
        offer.source.length,
        delta,
        &mut sink,
    );
    if let Some(e) = sink.failed.take() {
        return Err(match e {
            Error::Verification(v) => refused(
                offer,
                Rule::DeltaCorrupt,
                format!("it does not build {}: {v}", instruction.target),
            ),
            other => other,
        });
    }
    match applied {
        Ok(_) => {}
        Err(rampart_delta::DeltaError::Source(e)) => {
            return Err(refused(offer, Rule::DeltaSource, e.to_string()))
        }
        Err(e) => return Err(refused(offer, Rule::DeltaCorrupt, e.to_string())),
    }
    verifier.finish().map_err(|e| {
        refused(
            offer,
            Rule::DeltaCorrupt,
            format!("it does not build {}: {e}", instruction.target),
        )
    })?;
    Ok(writer)
}
