//! Erasing the evidence from the in-vehicle bus: an attacker on the link attacks an ECU,
//! which refuses and notes it as an attack indicator for its next signed report, then tries
//! to make the ECU forget before the vehicle's next cycle carries the note to the director:
//!
//! 1. it asks the ECU for reports itself, and drops them (an ECU that forgets what it has
//!    reported once would lose the note here);
//! 2. it asks with a 1 MiB nonce (too large to sign into a report that fits its frame);
//! 3. it sends the ECU a director receipt signed with its own key, acknowledging everything;
//! 4. it replays a genuine director receipt recorded on the link during an earlier cycle.
//!
//! Only the director's signed receipt, checked by the ECU against its own trusted director
//! root, for a report that carried the note, makes the ECU forget it.

use rampart_core::key::KeyScheme;
use rampart_core::rule::Rule;
use rampart_core::signer::{InMemorySigner, Signer};
use rampart_core::uptane::receipt::{sign_receipt, ManifestReceipt};
use rampart_vehicle::primary::{request_report, send_receipt};
use rampart_vehicle::protocol::{self, InstallBegin, Kind, MetadataBundle};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::bus::{BusTap, Tamper};
use crate::harness::pending_indicators;
use crate::{Findings, Harness, Info};

/// Description.
pub(super) const INFO: Info = Info {
    name: "bus-indicator-erasure",
    attack: "erasing an ECU's attack indicators from the in-vehicle bus",
    attacker: "a device on the in-vehicle link, no keys: connects to the IVI directly and sends it any frame; recorded the link during an earlier cycle (a genuine director receipt)",
    control: "an ECU keeps every attack indicator in each signed report until the director's receipt — signed with the director targets key and checked against the ECU's own trusted director root, naming its VIN, ECU ID and a report counter at or above the report that first carried it — acknowledges it; report requests forget nothing, and their nonces are bounded before the counter moves",
    expected: "defeated: the reports the attacker took, the oversized nonce (malformed-frame / oversized-frame), the attacker-signed receipt (threshold) and the replayed genuine receipt forget nothing; the next genuine cycle carries the IVI's indicator to the director, which records it; after that cycle's genuine receipt the IVI has nothing pending",
};

/// Runs it.
pub(super) async fn run(mut h: Harness) -> anyhow::Result<Findings> {
    let mut f = Findings::default();
    let vin = h.vin();
    let ivi = h.ecu_id(1);
    let ivi_dir = h.ecu_dir(1)?;
    let ivi_address = h.ecu_address(1)?;

    // 0. A genuine cycle passes a tap on the IVI's link: the attacker records its receipt.
    let tap = BusTap::start(&ivi_address, Tamper::None).await?;
    h.point_ecu_at(1, &tap.address)?;
    let run = h.cycle().await?;
    if !run.success {
        anyhow::bail!("the genuine cycle failed:\n{}", run.stderr);
    }
    let old_receipt = tap
        .recorded(Kind::Ack)
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no receipt crossed the IVI's link"))?;
    f.evidence(format!(
        "bus tap recorded a genuine director receipt on the IVI's link ({} bytes)",
        old_receipt.len()
    ));
    h.point_ecu_at(1, &ivi_address)?;

    // 1. The attack the IVI notices: an install it must refuse, sent directly over the bus.
    let mark = h.newest_event_id().await?;
    let refused = attack_the_ivi(&ivi_address).await?;
    let refused_rule = refused.as_str();
    f.evidence(format!(
        "attacker sent the IVI an INSTALL_BEGIN with a made-up bundle; the IVI refused it ({refused_rule})"
    ));
    f.check(
        "the IVI noted the attack for its next report",
        pending_indicators(&ivi_dir)
            .iter()
            .any(|p| p.starts_with(refused_rule)),
        format!("pending: {}", pending_indicators(&ivi_dir).join(" | ")),
    );

    // 2. Erasure attempts.
    let mut taken = 0;
    for nonce in ["e1", "e2", "e3"] {
        if let Ok(report) = request_report(&ivi_address, nonce).await {
            let carried = report
                .pointer("/signed/attacks_detected")
                .and_then(Value::as_str)
                .is_some_and(|a| a.contains(refused_rule));
            taken += usize::from(carried);
        }
    }
    f.evidence(format!(
        "attacker asked the IVI for 3 reports and dropped them ({taken} carried the indicator)"
    ));
    let answer = oversized_nonce(&ivi_address).await?;
    f.evidence(format!(
        "attacker asked with a 1 MiB nonce; the IVI answered {answer}"
    ));
    f.check(
        "the IVI refused the 1 MiB nonce",
        answer.contains("oversized-frame") || answer.contains("malformed-frame"),
        answer.clone(),
    );
    let own = InMemorySigner::generate(KeyScheme::Ed25519)?;
    let counter = report_counter(&ivi_dir) + 1_000;
    let forged = sign_receipt(
        &ManifestReceipt::new(
            &vin,
            u64::MAX / 2,
            std::collections::BTreeMap::from([(ivi.clone(), counter)]),
        ),
        &[&own as &dyn Signer],
    )?;
    let forged_answer = send_receipt(&ivi_address, &forged).await;
    f.evidence(format!(
        "attacker sent an ACK with a receipt signed by its own key; the IVI answered {}",
        describe(&forged_answer)
    ));
    f.check(
        "the IVI refused the attacker-signed receipt (threshold)",
        forged_answer
            .as_ref()
            .is_err_and(|e| e.to_string().contains("threshold")),
        describe(&forged_answer),
    );
    let replayed = send_receipt(&ivi_address, &old_receipt).await;
    f.evidence(format!(
        "attacker replayed the recorded genuine receipt; the IVI answered {}",
        describe(&replayed)
    ));
    let still = pending_indicators(&ivi_dir);
    f.check(
        "after every attempt the IVI still holds the indicator",
        still.iter().any(|p| p.starts_with(refused_rule)),
        format!("pending: {}", still.join(" | ")),
    );

    // 3. The vehicle's next cycle carries it to the director.
    let run = h.cycle().await?;
    f.check(
        "the next genuine cycle succeeds",
        run.success,
        run.stderr.lines().last().unwrap_or_default().to_owned(),
    );
    let recorded = h.event_since(mark, "vehicle", &ivi, &[refused]).await?;
    f.check(
        format!("the director recorded the IVI's indicator ({refused_rule})"),
        recorded.is_some(),
        recorded.unwrap_or_else(|| "no such event".into()),
    );
    let noted = h
        .event_since(mark, "vehicle", &ivi, &[Rule::Threshold])
        .await?;
    f.check(
        "the director recorded the forged receipt the IVI refused (threshold)",
        noted.is_some(),
        noted.unwrap_or_else(|| "no such event".into()),
    );
    let left = pending_indicators(&ivi_dir);
    f.check(
        "the genuine receipt of that cycle cleared what the director now has",
        left.is_empty(),
        format!("pending: {}", left.join(" | ")),
    );
    h.check_state(&mut f, &h.trust_state().await?, &[]);
    Ok(f)
}

/// Sends the IVI an install it must refuse; returns the rule it named.
async fn attack_the_ivi(address: &str) -> anyhow::Result<Rule> {
    let mut s = TcpStream::connect(address).await?;
    let begin = InstallBegin {
        target: "ivi/app-6.6.bin".into(),
        bundle: MetadataBundle::default(),
        length: 4,
        delta: false,
    };
    protocol::write_json(&mut s, Kind::InstallBegin, &begin).await?;
    protocol::write_frame(&mut s, Kind::ImageChunk, b"evil").await?;
    protocol::write_frame(&mut s, Kind::ImageEnd, &[]).await?;
    let answer = protocol::read_frame(&mut s).await?;
    let v: Value = serde_json::from_slice(&answer.payload)?;
    v.get("rule")
        .and_then(Value::as_str)
        .and_then(|r| r.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("the IVI did not refuse the install by a rule: {v}"))
}

/// Asks for a report with a 1 MiB nonce; returns what the IVI answered.
async fn oversized_nonce(address: &str) -> anyhow::Result<String> {
    let payload = format!("{{\"nonce\":\"{}\"}}", "a".repeat(1 << 20));
    let mut s = TcpStream::connect(address).await?;
    s.write_all(&protocol::header(Kind::ReportRequest, payload.len() as u32))
        .await?;
    let _ = s.write_all(payload.as_bytes()).await;
    Ok(match protocol::read_frame(&mut s).await {
        Ok(f) => format!("{:?}: {}", f.kind, String::from_utf8_lossy(&f.payload)),
        Err(e) => format!("nothing ({e})"),
    })
}

fn describe<T: std::fmt::Debug>(r: &Result<T, rampart_vehicle::error::Error>) -> String {
    match r {
        Ok(v) => format!("{v:?}"),
        Err(e) => e.to_string(),
    }
    .chars()
    .take(160)
    .collect()
}

fn report_counter(dir: &std::path::Path) -> u64 {
    std::fs::read(dir.join("state/ecu-state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .unwrap_or_default()
        .get("report_counter")
        .and_then(Value::as_u64)
        .unwrap_or(0)
}
