//! Attacks on the diagnostic link of a legacy ECU (UDS on DoIP), the vehicle's ECU 3, which
//! the primary flashes as its gateway:
//!
//! * a rogue tester on the in-vehicle Ethernet — a device on the OBD port or a spliced
//!   harness — without the ECU's secret: RequestDownload without security access, and a
//!   SecurityAccess brute force;
//! * a man in the middle between gateway and ECU during a genuine flash ([`DiagTap`]): the
//!   image's bytes replaced by a recorded older flash, a block counter that skips, the link
//!   cut in the middle of the transfer.
//!
//! Each must leave the ECU running what it ran, be counted in the ECU's security log, reach
//! the director in the report the gateway makes for the ECU, and not stop the genuine update
//! once the attacker is gone.

use std::time::{Duration, Instant};

use rampart_core::rule::Rule;
use rampart_lab::image_bytes;
use rampart_vehicle::error::Error;
use rampart_vehicle::uds::gateway::{read_state, Tester, UdsLink};

use crate::diag::{DiagTamper, DiagTap};
use crate::harness::LEGACY_BASELINE;
use crate::{Findings, Harness, Info};

/// The legacy ECU's index in the harness's vehicle.
const SEAT: usize = 3;
/// The release the man in the middle interferes with (as long as the baseline, so that the
/// recorded older flash fits it block for block).
const NEW: &str = "seat/fw-2.0.bin";
const LEN: usize = 120_000;

/// Description: RequestDownload without security access.
pub(super) const UNAUTHENTICATED: Info = Info {
    name: "uds-unauthenticated-download",
    attack: "unauthenticated reprogramming of a legacy ECU (rogue diagnostic tester)",
    attacker: "a device on the in-vehicle Ethernet (OBD port, spliced harness) speaking DoIP and UDS to the ECU's bootloader; no security-access secret",
    control: "the bootloader serves no programming service (erase, RequestDownload, TransferData, verify) without security access in the programming session (NRC 0x33); every refusal is counted in its security log, which the gateway reports to the director in the ECU's vouched report",
    expected: "defeated: RequestDownload and erase answered with NRC 0x33, the ECU runs its image, the server records security-access-denied from the ECU",
};

/// Description: SecurityAccess brute force.
pub(super) const BRUTE_FORCE: Info = Info {
    name: "uds-security-brute-force",
    attack: "SecurityAccess brute force on a legacy ECU",
    attacker: "a rogue tester trying keys for seeds, resetting the ECU to get new attempts",
    control: "keys are HMAC-SHA256 of a 16-byte random seed under a per-ECU secret; 3 wrong keys and the ECU answers 0x36 and refuses seeds (0x37) for the delay; the count is kept on disk, so a reset or power cycle does not lift it",
    expected: "defeated: 0x35, 0x35, 0x36, then 0x37 for every seed during the delay, also after an ECUReset; invalid-security-key reaches the server; the genuine update installs after the delay",
};

/// Description: a recorded flash replayed in place of the new image.
pub(super) const REPLAYED: Info = Info {
    name: "uds-replayed-flash",
    attack: "replayed flash sequence with another image (man in the middle on the diagnostic link)",
    attacker: "between the gateway and the ECU during a genuine flash: relays the DoIP session the gateway unlocked, but replaces every TransferData block with the bytes of the recorded older flash",
    control: "the ECU's verify routine checks the written bank against the director's signed targets for this ECU (partial verification from its own director root): the bank only switches when length and hashes match",
    expected: "defeated: the verify routine refuses (hash-mismatch), the ECU keeps its running bank, the vehicle and the server name hash-mismatch from the ECU, the genuine image installs once the tap is gone",
};

/// Description: a block counter that skips.
pub(super) const COUNTER: Info = Info {
    name: "uds-wrong-block-counter",
    attack: "TransferData with a wrong block sequence counter (man in the middle on the diagnostic link)",
    attacker: "between the gateway and the ECU during a genuine flash: changes the block sequence counter of one TransferData request (a dropped or injected block)",
    control: "the bootloader takes blocks only in sequence (NRC 0x73), a repeat of the last block only as a repeat; the gateway stops the flash on the refusal; the running bank is never written",
    expected: "defeated: NRC 0x73, the flash fails (block-sequence) and the ECU keeps its image; block-sequence reaches the server from the ECU; the genuine image installs once the tap is gone",
};

/// Description: a flash cut in the middle.
pub(super) const INTERRUPTED: Info = Info {
    name: "uds-interrupted-flash",
    attack: "interrupted flash of a legacy ECU (link cut, then a power cycle)",
    attacker: "between the gateway and the ECU: cuts the link in the middle of the transfer; the ECU then loses power",
    control: "two flash banks: the erase routine stops describing the inactive bank before its first byte changes, the bank is described again only after the verify routine read it back; the running bank is never written, so the ECU boots what it ran and the next flash starts over",
    expected: "defeated: the flash fails, the ECU runs its image before and after a power cycle, the written bank is described nowhere, the failure reaches the server, and the next cycle installs the image",
};

fn seat(h: &Harness) -> anyhow::Result<(String, String, UdsLink)> {
    let e = h.ecu(SEAT)?;
    let config = rampart_vehicle::uds::load_config(&e.config)?;
    let link = UdsLink {
        logical_address: config.logical_address,
        // The rogue tester takes an address of the external test equipment range.
        tester_address: 0x0E00,
        security_secret: e.dir.join("no-secret-here"),
    };
    Ok((e.ecu_id.clone(), h.ecu_address(SEAT)?, link))
}

fn nrc(r: &Result<Vec<u8>, Error>) -> Option<u8> {
    match r {
        Err(Error::Diagnostic { nrc, .. }) => Some(*nrc),
        _ => None,
    }
}

/// The ECU still runs the baseline, by its boot-control file and by what it answers.
async fn check_keeps_baseline(h: &Harness, f: &mut Findings) -> anyhow::Result<()> {
    let (ecu, address, link) = seat(h)?;
    let after = h.trust_state().await?;
    h.check_state(f, &after, &[NEW]);
    let state = read_state(&address, &link, &ecu).await?;
    let baseline = image_bytes(LEGACY_BASELINE.0, 120_000);
    f.check(
        "the legacy ECU runs its image, unchanged (F189 and F1A0 read back)",
        state.image.filename == LEGACY_BASELINE.0
            && state.image.hashes == rampart_core::hash::compute_hashes(&baseline),
        format!(
            "{ecu} runs {} ({} bytes)",
            state.image.filename, state.image.length
        ),
    );
    Ok(())
}

/// The rules the ECU counted in its security log so far (not yet cleared).
fn ecu_log(h: &Harness) -> anyhow::Result<String> {
    let state = std::fs::read_to_string(h.ecu_dir(SEAT)?.join("state/uds-state.json"))?;
    Ok(state)
}

/// A cycle; then the server must hold a vehicle event with one of `rules` from the ECU.
async fn check_reported(h: &Harness, f: &mut Findings, rules: &[Rule]) -> anyhow::Result<()> {
    let (ecu, _, _) = seat(h)?;
    let mark = h.newest_event_id().await?;
    let run = h.cycle().await?;
    let event = h.event_since(mark, "vehicle", &ecu, rules).await?;
    f.check(
        "the gateway's report for the ECU carried its security log to the server",
        event.is_some(),
        event.unwrap_or_else(|| {
            format!(
                "no vehicle event from {ecu}; vehicle said: {}",
                run.stderr
                    .lines()
                    .rev()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" | ")
            )
        }),
    );
    Ok(())
}

/// RequestDownload and erase without security access.
pub(super) async fn unauthenticated(h: Harness) -> anyhow::Result<Findings> {
    let mut f = Findings::default();
    let (ecu, address, link) = seat(&h)?;
    let mut t = Tester::connect(&address, &link, &ecu).await?;
    t.request(&[0x10, 0x02]).await?;
    f.evidence(format!(
        "rogue tester 0x0E00 activated routing on {ecu}'s DoIP entity ({address}) and entered the programming session"
    ));
    let download = t
        .request(&[0x34, 0x00, 0x44, 0, 0, 0, 0, 0, 0x01, 0xD4, 0xC0])
        .await;
    let erase = t.request(&[0x31, 0x01, 0xFF, 0x00]).await;
    let transfer = t.request(&[0x36, 0x01, 0xDE, 0xAD]).await;
    f.check(
        "RequestDownload refused: securityAccessDenied (0x33)",
        nrc(&download) == Some(0x33),
        format!("{download:?}"),
    );
    f.check(
        "the erase routine refused: securityAccessDenied (0x33)",
        nrc(&erase) == Some(0x33),
        format!("{erase:?}"),
    );
    f.check(
        "TransferData without a download refused",
        nrc(&transfer).is_some(),
        format!("{transfer:?}"),
    );
    drop(t);
    let log = ecu_log(&h)?;
    f.check(
        "the ECU counted it in its security log",
        log.contains(Rule::SecurityAccessDenied.as_str()),
        "security-access-denied in uds-state.json".to_owned(),
    );
    check_keeps_baseline(&h, &mut f).await?;
    check_reported(&h, &mut f, &[Rule::SecurityAccessDenied]).await?;
    // The director acknowledged the report: the gateway cleared what it carried.
    let log = ecu_log(&h)?;
    f.check(
        "the ECU forgot it only once the director had it",
        !log.contains(Rule::SecurityAccessDenied.as_str()),
        "cleared after the director's receipt".to_owned(),
    );
    Ok(f)
}

/// Keys tried until the ECU locks, a reset, more seeds.
pub(super) async fn brute_force(h: Harness) -> anyhow::Result<Findings> {
    let mut f = Findings::default();
    let (ecu, address, link) = seat(&h)?;
    let mut t = Tester::connect(&address, &link, &ecu).await?;
    t.request(&[0x10, 0x02]).await?;
    let mut answers = Vec::new();
    for guess in 0u8..3 {
        let seed = t.request(&[0x27, 0x01]).await?;
        f.evidence(format!(
            "seed {} received; key guess {guess} sent",
            hex::encode(seed.get(2..).unwrap_or_default())
        ));
        let mut key = vec![0x27, 0x02];
        key.extend_from_slice(&[guess; 16]);
        answers.push(nrc(&t.request(&key).await));
    }
    let locked_at = Instant::now();
    f.check(
        "wrong keys: invalidKey, invalidKey, exceededNumberOfAttempts",
        answers == [Some(0x35), Some(0x35), Some(0x36)],
        format!("{answers:02X?}"),
    );
    let mut refused = 0;
    let tries = 50;
    for _ in 0..tries {
        if nrc(&t.request(&[0x27, 0x01]).await) == Some(0x37) {
            refused += 1;
        }
    }
    f.check(
        "no seed (so no key) during the delay: requiredTimeDelayNotExpired (0x37)",
        refused == tries,
        format!("{refused} of {tries} seed requests refused with 0x37"),
    );
    // A reset to buy new attempts: the socket closes with it.
    let reset = t.request(&[0x11, 0x01]).await;
    drop(t);
    let mut t = Tester::connect(&address, &link, &ecu).await?;
    t.request(&[0x10, 0x02]).await?;
    let after_reset = nrc(&t.request(&[0x27, 0x01]).await);
    f.check(
        "an ECUReset does not lift the delay",
        reset.is_ok() && after_reset == Some(0x37),
        format!("reset {reset:02X?}, then seed: NRC {after_reset:02X?}"),
    );
    drop(t);
    check_keeps_baseline(&h, &mut f).await?;
    check_reported(&h, &mut f, &[Rule::InvalidSecurityKey]).await?;
    // The lockout is for the attacker's time, not forever: after the delay the gateway,
    // with the secret, flashes the genuine release.
    let delay = Duration::from_millis(
        rampart_vehicle::uds::load_config(&h.ecu(SEAT)?.config)?.security_delay_ms,
    );
    tokio::time::sleep((delay + Duration::from_secs(1)).saturating_sub(locked_at.elapsed())).await;
    h.lab
        .release(NEW, LEGACY_BASELINE.1, "2.0", &image_bytes(NEW, LEN), false)
        .await?;
    h.check_installs_once_gone(&mut f, &ecu, NEW).await?;
    Ok(f)
}

/// Releases [`NEW`] and runs the cycle that flashes it with the tap in the diagnostic link;
/// what the tap did is the evidence.
async fn flash_through_tap(
    h: &mut Harness,
    f: &mut Findings,
    address: &str,
    tamper: DiagTamper,
) -> anyhow::Result<rampart_lab::VehicleRun> {
    h.lab
        .release(NEW, LEGACY_BASELINE.1, "2.0", &image_bytes(NEW, LEN), false)
        .await?;
    let tap = DiagTap::start(address, tamper).await?;
    h.point_ecu_at(SEAT, &tap.address)?;
    let run = h.cycle().await?;
    let log = tap.log();
    for line in log.iter().take(3) {
        f.evidence(format!("DoIP tap: {line}"));
    }
    if log.len() > 3 {
        f.evidence(format!("DoIP tap: … {} alterations in all", log.len()));
    }
    Ok(run)
}

/// A genuine flash through a tap that alters it; then the same release without the tap.
async fn tampered_flash(
    h: Harness,
    tamper: DiagTamper,
    rules: &[Rule],
    ecu_rules: &[Rule],
) -> anyhow::Result<Findings> {
    let mut h = h;
    let mut f = Findings::default();
    let (ecu, address, _) = seat(&h)?;
    let mark = h.newest_event_id().await?;
    let run = flash_through_tap(&mut h, &mut f, &address, tamper).await?;
    h.check_refused(&mut f, &run);
    h.check_noticed(&mut f, &run, rules, "vehicle").await?;
    // The ECU's own security log, in the report the gateway made for it.
    let event = h.event_since(mark, "vehicle", &ecu, ecu_rules).await?;
    f.check(
        "the ECU's security log reached the server (the gateway's report for it)",
        event.is_some(),
        event.unwrap_or_else(|| format!("no vehicle event from {ecu}")),
    );
    check_keeps_baseline(&h, &mut f).await?;
    h.point_ecu_at(SEAT, &address)?;
    h.check_installs_once_gone(&mut f, &ecu, NEW).await?;
    Ok(f)
}

/// The recorded older flash's bytes in place of the new image's.
pub(super) async fn replayed(h: Harness) -> anyhow::Result<Findings> {
    let recorded = image_bytes(LEGACY_BASELINE.0, LEN);
    tampered_flash(
        h,
        DiagTamper::ReplaceImage(recorded),
        &[Rule::HashMismatch],
        &[Rule::HashMismatch],
    )
    .await
}

/// A block counter that skips.
pub(super) async fn wrong_counter(h: Harness) -> anyhow::Result<Findings> {
    tampered_flash(
        h,
        DiagTamper::SkipCounter(2),
        &[Rule::BlockSequence],
        &[Rule::BlockSequence],
    )
    .await
}

/// The link cut mid-transfer, then a power cycle of the ECU.
pub(super) async fn interrupted(h: Harness) -> anyhow::Result<Findings> {
    let mut h = h;
    let mut f = Findings::default();
    let (ecu, address, _) = seat(&h)?;
    let run = flash_through_tap(&mut h, &mut f, &address, DiagTamper::CutAfter(3)).await?;
    h.check_refused(&mut f, &run);
    h.check_noticed(&mut f, &run, &[Rule::Protocol], "vehicle")
        .await?;
    // The power goes: the ECU process is killed and started again.
    let dir = h.ecu_dir(SEAT)?;
    {
        let bin = h.lab.options.bin.clone();
        let e = h.ecu_mut(SEAT)?;
        e.stop().await?;
        e.start(&bin)?;
        e.listening().await?;
    }
    let address = h.ecu_address(SEAT)?;
    let bc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("boot-control.json"))?)?;
    let active = bc.get("active").and_then(|a| a.as_str()).unwrap_or("a");
    let other = if active == "a" { "b" } else { "a" };
    f.check(
        "the half-written bank is described nowhere (boot-control)",
        bc.get(other).is_none_or(serde_json::Value::is_null)
            && bc.get("pending").is_none_or(serde_json::Value::is_null),
        format!(
            "active {active}; bank {other}: {}",
            bc.get(other).cloned().unwrap_or_default()
        ),
    );
    check_keeps_baseline(&h, &mut f).await?;
    h.point_ecu_at(SEAT, &address)?;
    h.check_installs_once_gone(&mut f, &ecu, NEW).await?;
    Ok(f)
}
