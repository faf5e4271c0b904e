//! A compromised secondary: the attacker owns the body controller (BCM) — its process is
//! replaced by one that answers the primary as the attacker likes. It tries to make the
//! director believe what is not true, so that an update looks done when it is not, or an
//! ECU it does not control looks different:
//!
//! 1. an impostor BCM without the BCM's key signs reports with its own key, claiming the
//!    pending BCM release is installed (and a huge report counter, to lock the genuine BCM
//!    out as a "replay" later);
//! 2. the BCM with its own genuine key speaks for another ECU: a report signed by the BCM,
//!    filed under the BCM, claiming to be the IVI and to run other software; it also tells
//!    the primary an install succeeded that it never wrote;
//! 3. a genuine, older BCM report, captured earlier on the in-vehicle link, is replayed.
//!
//! The director verifies every ECU report against that ECU's registered key and ID, and its
//! counter against the last accepted one: each forgery is dropped and recorded, while the
//! rest of the vehicle keeps updating.

use rampart_core::rule::Rule;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use chrono::Utc;
use rampart_core::key::KeyScheme;
use rampart_core::metadata::Expiry;
use rampart_core::signer::InMemorySigner;
use rampart_core::uptane::manifest::{sign_ecu_report, EcuVersionReport, ECU_REPORT_TYPE};
use rampart_core::uptane::InstalledImage;
use rampart_lab::image_bytes;
use rampart_vehicle::protocol::{self, InstallBegin, InstallResult, Kind, ReportRequest};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::{Findings, Harness, Info};

/// Description.
pub(super) const INFO: Info = Info {
    name: "compromised-secondary",
    attack: "compromised secondary ECU (forged ECU version reports)",
    attacker: "controls one secondary (the BCM): replaces its software, answers the primary's report requests and install requests as it likes, knows the BCM's own signing key (for the second variant) and recorded an earlier genuine BCM report on the in-vehicle link; no other ECU's key, no primary key",
    control: "the director verifies each ECU version report inside the signed vehicle manifest against that ECU's registered key and ECU ID and refuses a report counter that is not above the last accepted one; a refused report is dropped (not the whole manifest), listed in rejected_reports and recorded as a security event; assignments complete only on a verified report",
    expected: "defeated: the impostor's report is refused (bad-signature), the BCM speaking for the IVI is refused (manifest), the replayed report is dropped by the primary for its stale nonce (and flagged) before it can reach the director; the director's view and counters of the BCM and the IVI stay what the genuine ECUs reported, the BCM's assignment stays pending until the genuine BCM installs it, and the T-BOX and IVI keep updating. Limit (Uptane's): a BCM whose key is extracted can still misreport its own state — the compromise stays confined to that ECU",
};

const BCM_TARGET: &str = "bcm/fw-2.0.bin";
const TBOX_TARGET: &str = "tbox/fw-2.0.bin";

/// What the fake ECU answers to a report request.
#[derive(Clone)]
enum Answer {
    /// A report signed with `signer`, with these fields.
    Forged {
        signer: Arc<InMemorySigner>,
        signer_name: &'static str,
        ecu_id: String,
        image: InstalledImage,
        counter: u64,
    },
    /// A captured report document, verbatim.
    Replay(Vec<u8>),
}

/// A fake ECU on the in-vehicle link, speaking the real protocol.
struct FakeEcu {
    address: String,
    log: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeEcu {
    async fn start(answer: Answer) -> anyhow::Result<FakeEcu> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (answer, l) = (answer.clone(), l.clone());
                tokio::spawn(async move {
                    if let Ok(line) = serve(stream, &answer).await {
                        if let Ok(mut l) = l.lock() {
                            l.push(line);
                        }
                    }
                });
            }
        });
        Ok(FakeEcu { address, log, task })
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for FakeEcu {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, answer: &Answer) -> anyhow::Result<String> {
    let frame = protocol::read_frame(&mut stream).await?;
    match frame.kind {
        Kind::ReportRequest => {
            let req: ReportRequest = protocol::parse_json(&frame)?;
            let (bytes, what) = match answer {
                Answer::Forged {
                    signer,
                    signer_name,
                    ecu_id,
                    image,
                    counter,
                } => {
                    let report = EcuVersionReport {
                        type_: ECU_REPORT_TYPE.into(),
                        ecu_id: ecu_id.clone(),
                        installed_image: image.clone(),
                        attacks_detected: String::new(),
                        latest_verified_time: Expiry::new(Utc::now()),
                        report_counter: *counter,
                        nonce: req.nonce.clone(),
                        unrecognized: Default::default(),
                    };
                    (
                        sign_ecu_report(&report, signer.as_ref())?,
                        format!(
                            "a report signed with {signer_name}, as ECU {ecu_id}, claiming {} (counter {counter})",
                            image.filename
                        ),
                    )
                }
                Answer::Replay(doc) => (
                    doc.clone(),
                    format!(
                        "a replayed genuine report ({} bytes, sha256 {}…)",
                        doc.len(),
                        hex::encode(rampart_core::hash::sha256(doc))
                            .get(..12)
                            .unwrap_or("")
                    ),
                ),
            };
            protocol::write_frame(&mut stream, Kind::Report, &bytes).await?;
            let _ = stream.shutdown().await;
            Ok(format!(
                "answered the primary's report request (nonce {}…) with {what}",
                req.nonce.get(..8).unwrap_or("")
            ))
        }
        Kind::InstallBegin => {
            let begin: InstallBegin = protocol::parse_json(&frame)?;
            let mut received = 0u64;
            while let Ok(f) = protocol::read_frame(&mut stream).await {
                match f.kind {
                    Kind::ImageChunk => received += f.payload.len() as u64,
                    _ => break,
                }
            }
            protocol::write_json(
                &mut stream,
                Kind::InstallResult,
                &InstallResult {
                    ok: true,
                    rule: None,
                    message: format!("installed {}", begin.target),
                },
            )
            .await?;
            let _ = stream.shutdown().await;
            Ok(format!(
                "told the primary it installed {} ({received} bytes received, nothing written)",
                begin.target
            ))
        }
        other => Ok(format!("ignored a {other:?} frame")),
    }
}

/// What the director stores for one ECU: installed target and last report counter.
async fn director_record(h: &Harness, ecu_id: &str) -> anyhow::Result<Record> {
    let v = h.lab.admin_get(&format!("vehicles/{}", h.vin())).await?;
    let ecu = v
        .get("ecus")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .find(|e| e.get("ecu_id").and_then(Value::as_str) == Some(ecu_id))
        })
        .cloned()
        .unwrap_or_default();
    Ok((
        ecu.pointer("/installed/target")
            .and_then(Value::as_str)
            .unwrap_or("(nothing reported)")
            .to_owned(),
        ecu.get("last_report_counter").and_then(Value::as_u64),
    ))
}

/// Status of the assignment of `target` to `ecu_id`.
async fn assignment_status(h: &Harness, ecu_id: &str, target: &str) -> anyhow::Result<String> {
    let all = h
        .lab
        .admin_get(&format!("assignments?vin={}", h.vin()))
        .await?;
    Ok(all
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| {
            a.get("ecu_id").and_then(Value::as_str) == Some(ecu_id)
                && a.get("target").and_then(Value::as_str) == Some(target)
        })
        .filter_map(|a| a.get("status").and_then(Value::as_str))
        .next_back()
        .unwrap_or("(none)")
        .to_owned())
}

/// The director's rejected_reports in its answer to the vehicle's last manifest (as the proxy
/// saw it): (ECU, rule).
fn rejected_reports(h: &Harness) -> Vec<(String, String)> {
    h.proxy
        .captured("/manifest")
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v.get("rejected_reports").cloned())
        .and_then(|r| r.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|r| {
            (
                r.get("ecu_id")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                r.get("rule")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            )
        })
        .collect()
}

fn check_rejected(f: &mut Findings, h: &Harness, ecu: &str, rule: &str) {
    let rejected = rejected_reports(h);
    let ok = rejected.iter().any(|(e, r)| e == ecu && r == rule);
    f.check(
        format!("the director refused the {ecu} report ({rule}) and told the vehicle"),
        ok,
        format!("rejected_reports in the director's answer: {rejected:?}"),
    );
}

/// The director's view of an ECU: its image and report counter.
type Record = (String, Option<u64>);

/// Puts an impostor answering `answer` in the BCM's place and runs a cycle; what the
/// impostor did becomes evidence (labelled `who`). Returns it (it leaves when dropped), the
/// run, and the director's view of the BCM and the IVI before the cycle.
async fn impostor_cycle(
    h: &mut Harness,
    f: &mut Findings,
    answer: Answer,
    who: &str,
) -> anyhow::Result<(FakeEcu, rampart_lab::VehicleRun, Record, Record)> {
    let fake = FakeEcu::start(answer).await?;
    h.point_ecu_at(2, &fake.address)?;
    let bcm_before = director_record(h, &h.ecu_id(2)).await?;
    let ivi_before = director_record(h, &h.ecu_id(1)).await?;
    let run = h.cycle().await?;
    for line in fake.log() {
        f.evidence(format!("{who}: {line}"));
    }
    Ok((fake, run, bcm_before, ivi_before))
}

/// Runs it.
pub(super) async fn run(h: Harness) -> anyhow::Result<Findings> {
    let mut h = h;
    let mut f = Findings::default();
    let (tbox, ivi, bcm) = (h.ecu_id(0), h.ecu_id(1), h.ecu_id(2));
    let (bcm_dir, bcm_address) = (h.ecu_dir(2)?, h.ecu_address(2)?);

    // A release in flight for the BCM (what the attacker wants to look installed) and for
    // the T-BOX (the rest of the vehicle must keep updating).
    let bcm_bytes = image_bytes(BCM_TARGET, 100_000);
    let bcm_release = h
        .lab
        .release(BCM_TARGET, "bcm-1", "2.0", &bcm_bytes, false)
        .await?;
    h.lab
        .release(
            TBOX_TARGET,
            "tbox-a",
            "2.0",
            &image_bytes(TBOX_TARGET, 110_000),
            false,
        )
        .await?;
    let claimed = InstalledImage {
        filename: BCM_TARGET.into(),
        length: bcm_bytes.len() as u64,
        hashes: rampart_core::hash::compute_hashes(&bcm_bytes),
        release_counter: bcm_release.release_counter,
    };

    // The attacker records one genuine BCM report on the in-vehicle link (for step 3).
    let captured = rampart_vehicle::primary::request_report(&bcm_address, "a77ac4e700c0ffee")
        .await
        .context("recording a genuine BCM report")?;
    let captured_counter = captured
        .pointer("/signed/report_counter")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let captured = serde_json::to_vec(&captured)?;

    // ── 1. An impostor BCM signs with its own key and claims the new release. ──
    h.ecu_mut(2)?.stop().await?;
    let attacker = Arc::new(InMemorySigner::generate(KeyScheme::Ed25519)?);
    let (fake, run, bcm_before, ivi_before) = impostor_cycle(
        &mut h,
        &mut f,
        Answer::Forged {
            signer: attacker,
            signer_name: "the attacker's key",
            ecu_id: bcm.clone(),
            image: claimed.clone(),
            counter: 1_000_000,
        },
        "impostor BCM",
    )
    .await?;
    check_rejected(&mut f, &h, &bcm, "bad-signature");
    h.check_event(&mut f, &[Rule::BadSignature], "server")
        .await?;
    let bcm_now = director_record(&h, &bcm).await?;
    f.check(
        "the director's view of the BCM is unchanged (image and report counter)",
        bcm_now == bcm_before,
        format!("{bcm}: {bcm_now:?} (before: {bcm_before:?})"),
    );
    let status = assignment_status(&h, &bcm, BCM_TARGET).await?;
    f.check(
        "the BCM's assignment did not complete on a forged report",
        status == "pending",
        format!("{BCM_TARGET} for {bcm}: {status}"),
    );
    let tbox_now = director_record(&h, &tbox).await?;
    let ivi_now = director_record(&h, &ivi).await?;
    f.check(
        "the rest of the vehicle keeps working (T-BOX updated, its and the IVI's reports accepted)",
        run.success && tbox_now.0 == TBOX_TARGET && ivi_now.1 > ivi_before.1,
        format!(
            "cycle ok: {}; {tbox}: {}; {ivi} report counter {:?} → {:?}",
            run.success, tbox_now.0, ivi_before.1, ivi_now.1
        ),
    );
    drop(fake);

    // ── 2. The BCM, with its own key, speaks for the IVI (and lies about an install). ──
    let bcm_key = std::fs::read_to_string(bcm_dir.join("key.pem"))?;
    let (fake, run, bcm_before, ivi_before) = impostor_cycle(
        &mut h,
        &mut f,
        Answer::Forged {
            signer: Arc::new(InMemorySigner::from_pkcs8_pem_any(&bcm_key)?),
            signer_name: "the BCM's own key",
            ecu_id: ivi.clone(),
            image: InstalledImage {
                filename: "ivi/app-0.9.bin".into(),
                length: 1,
                hashes: rampart_core::hash::compute_hashes(b"x"),
                release_counter: 0,
            },
            counter: 1_000_000,
        },
        "compromised BCM",
    )
    .await?;
    check_rejected(&mut f, &h, &bcm, "manifest");
    h.check_event(&mut f, &[Rule::Manifest], "server").await?;
    let ivi_now = director_record(&h, &ivi).await?;
    f.check(
        "the director's view of the IVI is what the IVI itself reported",
        ivi_now.0 == ivi_before.0 && ivi_now.1 > ivi_before.1 && ivi_now.1 < Some(1_000_000),
        format!("{ivi}: {ivi_now:?} (before: {ivi_before:?})"),
    );
    let bcm_now = director_record(&h, &bcm).await?;
    let status = assignment_status(&h, &bcm, BCM_TARGET).await?;
    let told_installed = run
        .stdout
        .contains(&format!("{BCM_TARGET} installed on {bcm}"));
    f.check(
        "a false 'installed' from the BCM does not complete its assignment",
        bcm_now == bcm_before && status == "pending",
        format!(
            "primary told 'installed': {told_installed}; director: {bcm}: {bcm_now:?}, assignment {status}"
        ),
    );
    drop(fake);

    // The genuine BCM comes back and installs the release for real.
    let bin = h.lab.options.bin.clone();
    let bcm_handle = h.ecu_mut(2)?;
    bcm_handle.start(&bin)?;
    let genuine = bcm_handle.listening().await?;
    h.point_ecu_at(2, &genuine)?;
    let run = h.cycle().await?;
    let bcm_now = director_record(&h, &bcm).await?;
    let status = assignment_status(&h, &bcm, BCM_TARGET).await?;
    f.check(
        "the genuine BCM is not locked out: its reports are accepted and its release completes",
        run.success && bcm_now.0 == BCM_TARGET && status == "installed",
        format!(
            "cycle ok: {}; {bcm}: {bcm_now:?}; assignment {status}",
            run.success
        ),
    );

    // ── 3. A genuine, older BCM report is replayed on the in-vehicle link. ──
    let fake = FakeEcu::start(Answer::Replay(captured)).await?;
    h.point_ecu_at(2, &fake.address)?;
    let bcm_before = director_record(&h, &bcm).await?;
    let mark = h.newest_event_id().await?;
    let run = h.cycle().await?;
    for line in fake.log() {
        f.evidence(format!(
            "bus replay: {line} (counter {captured_counter}, claims bcm/fw-1.0.bin)"
        ));
    }
    // The primary drops a report that does not answer its nonce, so the replay never reaches
    // the director (which would refuse its old counter anyway).
    f.check(
        "the primary dropped the replayed report (it never reached the director)",
        run.stderr.contains("report dropped") && rejected_reports(&h).is_empty(),
        crate::harness::first_line_with(&run.stderr, "report dropped"),
    );
    let stale = h
        .event_since(mark, "vehicle", &tbox, &[Rule::StaleReport])
        .await?;
    let said = run.stderr.contains("stale-report");
    f.check(
        "the primary noticed the report did not answer its nonce (stale-report)",
        said && stale.is_some(),
        stale.unwrap_or_else(|| "no stale-report event from the primary".to_owned()),
    );
    let bcm_now = director_record(&h, &bcm).await?;
    f.check(
        "the director's view of the BCM did not go back to the replayed state",
        bcm_now == bcm_before && bcm_now.0 == BCM_TARGET,
        format!("{bcm}: {bcm_now:?} (before: {bcm_before:?})"),
    );
    drop(fake);

    // The attacker leaves: the genuine BCM reports again.
    h.point_ecu_at(2, &genuine)?;
    let before = director_record(&h, &bcm).await?;
    h.check_recovers(&mut f).await?;
    let after_rec = director_record(&h, &bcm).await?;
    let rejected = rejected_reports(&h);
    f.check(
        "after the attacker leaves, every ECU report is accepted again",
        rejected.is_empty() && after_rec.1 > before.1,
        format!(
            "rejected_reports: {rejected:?}; {bcm} report counter {:?} → {:?}",
            before.1, after_rec.1
        ),
    );
    let after = h.trust_state().await?;
    h.check_state(&mut f, &after, &["ivi/app-0.9.bin"]);
    Ok(f)
}
