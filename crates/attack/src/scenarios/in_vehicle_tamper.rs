//! Tampering on the in-vehicle link: the attacker sits on the bus between the primary
//! (gateway) and a secondary ECU — a compromised gateway port, a device spliced into the
//! harness. The image arrived at the primary intact and verified; the attacker alters it on
//! its last hop:
//!
//! 1. one bit of an image chunk for the IVI (an encrypted image) is flipped;
//! 2. every connection to the BCM is replaced by garbage (an oversized frame header and
//!    junk), to crash it or smuggle bytes into its slot;
//! 3. one bit of an image chunk for the BCM (a plain image; the BCM does only partial
//!    verification) is flipped.
//!
//! Each ECU verifies what it receives itself (its own metadata and hashes, and for the IVI
//! the AEAD of every chunk), writes only the inactive slot, and reports what it saw in its
//! next signed version report.

use rampart_core::rule::Rule;
use rampart_lab::image_bytes;
use serde_json::Value;

use crate::bus::{BusTap, Tamper};
use crate::harness::{active_slot, pending_indicators};
use crate::{Findings, Harness, Info};

/// Description.
pub(super) const INFO: Info = Info {
    name: "in-vehicle-tamper",
    attack: "tampered image on the in-vehicle network (man in the middle on the bus)",
    attacker: "on the in-vehicle link between the primary and one ECU: relays, alters or replaces frames (flips a bit in an image chunk, sends garbage); no keys",
    control: "the ECU verifies the image itself while it streams into the inactive slot: ciphertext hashes and per-chunk AEAD (encrypted images), plaintext length and hashes from its own verified metadata; the in-vehicle protocol bounds and checks every frame; the active slot is never touched; the ECU counts rejected frames and reports every refusal in its next signed version report",
    expected: "defeated: the IVI refuses the altered image (decryption-failed or hash-mismatch) and keeps its old slot; the BCM refuses the garbage (oversized-frame), counts it and keeps running, and refuses its altered image (hash-mismatch) even with partial verification; the attack indicators reach the server as vehicle events from those ECUs; the genuine images install once the tap is gone",
};

const IVI_TARGET: &str = "ivi/app-2.0.bin";
const BCM_TARGET: &str = "bcm/fw-2.0.bin";

/// Runs it.
pub(super) async fn run(h: Harness) -> anyhow::Result<Findings> {
    let mut h = h;
    let mut f = Findings::default();
    let (ivi, bcm) = (h.ecu_id(1), h.ecu_id(2));
    let (ivi_dir, ivi_address) = (h.ecu_dir(1)?, h.ecu_address(1)?);
    let (bcm_dir, bcm_address) = (h.ecu_dir(2)?, h.ecu_address(2)?);
    let ivi_old = image_bytes("ivi/app-1.0.bin", 120_000);
    let bcm_old = image_bytes("bcm/fw-1.0.bin", 120_000);

    // ── 1. A flipped bit in the IVI's (encrypted) image on the bus. ──
    let ivi_new = image_bytes(IVI_TARGET, 150_000);
    h.lab
        .release(IVI_TARGET, "ivi-x", "2.0", &ivi_new, true)
        .await?;
    let flip = BusTap::start(&ivi_address, Tamper::FlipImageBit).await?;
    h.point_ecu_at(1, &flip.address)?;
    let mark = h.newest_event_id().await?;
    let run = h.cycle().await?;
    for line in flip.log() {
        f.evidence(format!("bus tap (IVI link): {line}"));
    }
    h.check_refused(&mut f, &run);
    h.check_noticed(
        &mut f,
        &run,
        &[Rule::DecryptionFailed, Rule::HashMismatch],
        "vehicle",
    )
    .await?;
    let event = h
        .event_since(
            mark,
            "vehicle",
            &ivi,
            &[Rule::DecryptionFailed, Rule::HashMismatch],
        )
        .await?;
    f.check(
        "the IVI itself reported the attack in its signed report",
        event.is_some(),
        event.unwrap_or_else(|| format!("no vehicle event from {ivi}")),
    );
    let (name, slot) = active_slot(&ivi_dir)?;
    f.check(
        "the IVI keeps its old slot, intact",
        name == "ivi/app-1.0.bin" && slot == ivi_old,
        format!(
            "active slot: {name}, {} bytes, equal to the genuine 1.0 image: {}",
            slot.len(),
            slot == ivi_old
        ),
    );
    let after = h.trust_state().await?;
    h.check_state(&mut f, &after, &[IVI_TARGET]);
    f.check(
        "the director's view of the IVI is unchanged",
        after.director_view.get(&ivi) == h.baseline.director_view.get(&ivi),
        format!("{ivi}: {:?}", after.director_view.get(&ivi)),
    );

    // ── 2. Garbage on the BCM's link (the IVI's tap stays). ──
    let bcm_new = image_bytes(BCM_TARGET, 100_000);
    h.lab
        .release(BCM_TARGET, "bcm-1", "2.0", &bcm_new, false)
        .await?;
    let garbage = BusTap::start(&bcm_address, Tamper::Garbage).await?;
    h.point_ecu_at(2, &garbage.address)?;
    let run = h.cycle().await?;
    let sent = garbage.log();
    if let Some(line) = sent.first() {
        f.evidence(format!(
            "bus tap (BCM link): {line} — {} time(s) this cycle",
            sent.len()
        ));
    }
    h.check_refused(&mut f, &run);
    // The primary, for its part, could not talk to the BCM and says so.
    h.check_noticed(&mut f, &run, &[Rule::EcuUnreachable], "vehicle")
        .await?;
    // The ECU handles each garbage connection on its own and writes repeated indicators at
    // most once a second: give the last one a moment.
    let mut rejected = 0;
    for _ in 0..80 {
        let state: Value = std::fs::read(bcm_dir.join("state/ecu-state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        rejected = state
            .get("rejected_frames")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        if rejected as usize >= sent.len() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let pending = pending_indicators(&bcm_dir);
    f.check(
        "the BCM refused every garbage frame and counted it for its next report",
        rejected as usize >= sent.len()
            && !sent.is_empty()
            && pending.iter().any(|a| a.starts_with("oversized-frame")),
        format!(
            "{rejected} rejected frame(s) counted; pending indicator: {}",
            pending.last().map_or("(none)", String::as_str)
        ),
    );
    let (name, slot) = active_slot(&bcm_dir)?;
    f.check(
        "the BCM keeps running its old slot, intact",
        name == "bcm/fw-1.0.bin" && slot == bcm_old,
        format!(
            "active slot: {name}, {} bytes, equal to the genuine 1.0 image: {}",
            slot.len(),
            slot == bcm_old
        ),
    );
    let after = h.trust_state().await?;
    h.check_state(&mut f, &after, &[IVI_TARGET, BCM_TARGET]);

    // ── 3. A flipped bit in the BCM's (plain) image: the BCM does partial verification. ──
    let flip_bcm = BusTap::start(&bcm_address, Tamper::FlipImageBit).await?;
    h.point_ecu_at(2, &flip_bcm.address)?;
    let mark = h.newest_event_id().await?;
    let run = h.cycle().await?;
    for line in flip_bcm.log() {
        f.evidence(format!("bus tap (BCM link): {line}"));
    }
    h.check_refused(&mut f, &run);
    let event = h
        .event_since(mark, "vehicle", &bcm, &[Rule::HashMismatch])
        .await?;
    f.check(
        "the BCM (partial verification) refused the altered image and reported it",
        event.is_some(),
        event.unwrap_or_else(|| format!("no hash-mismatch event from {bcm}")),
    );
    // Its first report of this cycle carried the garbage it counted before.
    let event = h
        .event_since(
            mark,
            "vehicle",
            &bcm,
            &[
                Rule::OversizedFrame,
                Rule::GarbageFrame,
                Rule::TruncatedFrame,
            ],
        )
        .await?;
    f.check(
        "the BCM reported the garbage in its next signed report (vehicle event)",
        event.is_some(),
        event.unwrap_or_else(|| format!("no rejected-frame event from {bcm}")),
    );
    let (name, slot) = active_slot(&bcm_dir)?;
    f.check(
        "the BCM still runs its old slot, intact",
        name == "bcm/fw-1.0.bin" && slot == bcm_old,
        format!(
            "active slot: {name}, equal to the genuine 1.0 image: {}",
            slot == bcm_old
        ),
    );
    let after = h.trust_state().await?;
    h.check_state(&mut f, &after, &[IVI_TARGET, BCM_TARGET]);

    // ── The attacker leaves the bus. ──
    h.point_ecu_at(1, &ivi_address)?;
    h.point_ecu_at(2, &bcm_address)?;
    h.check_recovers(&mut f).await?;
    let (ivi_name, ivi_slot) = active_slot(&ivi_dir)?;
    let (bcm_name, bcm_slot) = active_slot(&bcm_dir)?;
    let view = h.lab.installed(&h.vin()).await?;
    f.check(
        "the genuine images install once the tap is gone",
        ivi_name == IVI_TARGET
            && ivi_slot == ivi_new
            && bcm_name == BCM_TARGET
            && bcm_slot == bcm_new
            && view.get(&ivi).map(String::as_str) == Some(IVI_TARGET)
            && view.get(&bcm).map(String::as_str) == Some(BCM_TARGET),
        format!(
            "{ivi} runs {ivi_name} (exact: {}), {bcm} runs {bcm_name} (exact: {}); director: {view:?}",
            ivi_slot == ivi_new,
            bcm_slot == bcm_new
        ),
    );
    Ok(f)
}
