//! Arbitrary software installation: the attacker on the network serves its own firmware in
//! place of a published image, then its own targets metadata, then its own timestamp — each
//! signed, where it needs a signature, with the attacker's own key.

use rampart_core::rule::Rule;
use std::sync::Arc;

use rampart_core::key::KeyScheme;
use rampart_core::metadata::{sign_role, Envelope, TargetFile, Targets, Timestamp};
use rampart_core::signer::InMemorySigner;
use rampart_lab::image_bytes;

use crate::proxy::{Action, Intercept};
use crate::{Findings, Harness, Info};

/// Description.
pub(super) const INFO: Info = Info {
    name: "arbitrary-software",
    attack: "arbitrary software installation",
    attacker: "man in the middle between vehicle and server (or a hostile mirror); no signing keys",
    control: "every image is checked against the length and all hashes signed in both repositories; snapshot pins the hashes of targets metadata; every role needs the threshold of signatures from keys its trusted delegator authorises",
    expected: "defeated: forged image refused (hash-mismatch), forged targets refused (length/hash pinned by snapshot), forged timestamp refused (threshold); nothing installed; the vehicle reports it, the server records it; the genuine release installs once the attacker leaves",
};

fn sha12(s: &crate::proxy::Served) -> String {
    s.sha256
        .as_deref()
        .and_then(|h| h.get(..12))
        .unwrap_or("")
        .to_owned()
}

/// Runs it.
pub(super) async fn run(h: Harness) -> anyhow::Result<Findings> {
    let mut f = Findings::default();
    let attacker = Arc::new(InMemorySigner::generate(KeyScheme::Ed25519)?);

    // 1. The attacker's firmware in place of a published image (same length).
    let genuine = image_bytes("tbox/fw-2.0.bin", 150_000);
    h.lab
        .release("tbox/fw-2.0.bin", "tbox-a", "2.0", &genuine, false)
        .await?;
    h.proxy.add(Intercept::get(
        "fw-2.0.bin",
        Action::Replace(image_bytes("attacker firmware", genuine.len())),
    ));
    let run = h.cycle().await?;
    for s in h.proxy.forged() {
        f.evidence(format!(
            "image: proxy served the attacker's firmware ({} bytes, sha256 {}…) for {}",
            s.bytes,
            sha12(&s),
            s.path
        ));
    }
    h.check_rejected(&mut f, &run, &[Rule::HashMismatch], &["tbox/fw-2.0.bin"])
        .await?;

    // 2. New targets metadata from the attacker (its own key), listing its firmware.
    h.proxy.clear();
    h.proxy.clear_log();
    h.lab
        .release(
            "tbox/fw-2.1.bin",
            "tbox-a",
            "2.1",
            &image_bytes("tbox/fw-2.1.bin", 140_000),
            false,
        )
        .await?;
    let key = attacker.clone();
    let evil = image_bytes("attacker firmware 2", 99_000);
    h.proxy.add(Intercept::get(
        "/image/metadata/",
        Action::Mutate(Arc::new(move |body: &[u8]| {
            let Ok(env) = Envelope::parse(body, "targets") else {
                return body.to_vec();
            };
            let Ok(mut t) = env.typed::<Targets>("targets") else {
                return body.to_vec();
            };
            for file in t.targets.values_mut() {
                *file = TargetFile {
                    length: evil.len() as u64,
                    hashes: rampart_core::hash::compute_hashes(&evil),
                    custom: file.custom.clone(),
                    unrecognized: Default::default(),
                };
            }
            sign_role(&t, &[key.as_ref()]).unwrap_or_else(|_| body.to_vec())
        })),
    ));
    let run = h.cycle().await?;
    let forged: Vec<_> = h
        .proxy
        .log()
        .into_iter()
        .filter(|s| s.forged() && s.path.contains("targets.json"))
        .collect();
    for s in &forged {
        f.evidence(format!(
            "targets: proxy served attacker-signed targets metadata for {} (sha256 {}…)",
            s.path,
            sha12(s)
        ));
    }
    f.check(
        "the forged targets metadata reached the vehicle",
        !forged.is_empty(),
        format!("{} forged targets responses", forged.len()),
    );
    h.check_rejected(
        &mut f,
        &run,
        &[Rule::LengthMismatch, Rule::HashMismatch],
        &["tbox/fw-2.0.bin", "tbox/fw-2.1.bin"],
    )
    .await?;

    // 3. A timestamp signed by the attacker (pointing at the current snapshot).
    h.proxy.clear();
    h.proxy.clear_log();
    let key = attacker.clone();
    h.proxy.add(Intercept::get(
        "/image/metadata/timestamp.json",
        Action::Mutate(Arc::new(move |body: &[u8]| {
            let Ok(env) = Envelope::parse(body, "timestamp") else {
                return body.to_vec();
            };
            let Ok(mut t) = env.typed::<Timestamp>("timestamp") else {
                return body.to_vec();
            };
            t.version += 10;
            sign_role(&t, &[key.as_ref()]).unwrap_or_else(|_| body.to_vec())
        })),
    ));
    let run = h.cycle().await?;
    let forged: Vec<_> = h.proxy.forged();
    for s in &forged {
        f.evidence(format!(
            "timestamp: proxy served an attacker-signed timestamp for {} (sha256 {}…)",
            s.path,
            sha12(s)
        ));
    }
    h.check_rejected(
        &mut f,
        &run,
        &[Rule::Threshold],
        &["tbox/fw-2.0.bin", "tbox/fw-2.1.bin"],
    )
    .await?;

    // 4. The attacker leaves: the genuine release installs.
    h.check_recovers(&mut f).await?;
    let tbox = h.ecu_id(0);
    h.check_runs(
        &mut f,
        "the genuine release installs once the attacker leaves",
        &tbox,
        "tbox/fw-2.1.bin",
    )
    .await?;
    Ok(f)
}
