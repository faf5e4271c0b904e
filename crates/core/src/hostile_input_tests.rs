//! Hostile input: thousands of mutated documents fed to every entry point that takes bytes
//! from the network or the in-vehicle link. Each must answer with an error or a verdict —
//! never a panic — and must leave trusted state as it was when it rejects.
//!
//! Deterministic (a fixed xorshift seed) so a failure reproduces; `cargo fuzz` targets can go
//! deeper, this keeps the guarantee in every test run.

use std::collections::BTreeMap;

use crate::client::{Action, Client, Config, Fetched};
use crate::metadata::{Envelope, Root, Snapshot, Targets, Timestamp};
use crate::testing::{drive, test_now, Files, TestRepo};
use crate::trusted::TrustedSet;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % (n.max(1) as u64)) as usize
    }
}

/// One random structural or byte-level mutation.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    let tokens: [&[u8]; 12] = [
        b"{",
        b"}",
        b"[",
        b"]",
        b"\"",
        b",",
        b":",
        b"null",
        b"-1",
        b"18446744073709551616",
        b"1.5",
        b"\\u0000",
    ];
    for _ in 0..=rng.below(3) {
        let at = rng.below(out.len() + 1);
        match rng.below(6) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 => {
                let t = tokens[rng.below(tokens.len())];
                out.splice(at..at, t.iter().copied());
            }
            2 if !out.is_empty() => {
                let end = (at + rng.below(16)).min(out.len());
                out.drain(at.min(end)..end);
            }
            3 => out.truncate(at),
            4 if !out.is_empty() => {
                // Duplicate a slice (repeated keys, nested garbage).
                let start = rng.below(out.len());
                let end = (start + rng.below(64)).min(out.len());
                let piece = out[start..end].to_vec();
                out.splice(at..at, piece);
            }
            _ => {
                let i = rng.below(out.len().max(1));
                if let Some(b) = out.get_mut(i) {
                    *b = rng.next() as u8;
                }
            }
        }
    }
    out
}

fn repo() -> TestRepo {
    let mut repo = TestRepo::new(test_now());
    repo.delegate("targets", "supplier", &["fw/*"], false, Some(&["hw-1"]));
    repo.add_target(
        "supplier",
        "fw/a.bin",
        b"aaaa",
        Some(serde_json::json!({"hardware_id": "hw-1", "release_counter": 1})),
    );
    repo.bump("targets");
    repo.publish();
    repo
}

const ROUNDS: usize = 1500;

#[test]
fn mutated_metadata_never_panics_the_parsers() {
    let repo = repo();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let docs: Vec<&Vec<u8>> = repo.metadata.values().collect();
    for _ in 0..ROUNDS * 4 {
        let doc = docs[rng.below(docs.len())];
        let bytes = mutate(&mut rng, doc);
        if let Ok(env) = Envelope::parse(&bytes, "fuzz") {
            let _ = env.typed::<Root>("root");
            let _ = env.typed::<Timestamp>("timestamp");
            let _ = env.typed::<Snapshot>("snapshot");
            let _ = env.typed::<Targets>("targets");
        }
    }
}

#[test]
fn mutated_metadata_is_rejected_by_the_workflow_without_changing_trust() {
    let repo = repo();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let run = |remote: &Files, local: &mut Files| {
        let mut c = Client::new("fuzz", &repo.initial_root(), repo.now, Config::default())?;
        c.start_refresh();
        let mut trace = drive(&mut c, remote, local)?;
        c.start_lookup("fw/a.bin", Some("hw-1"))?;
        trace.fetched.extend(drive(&mut c, remote, local)?.fetched);
        Ok::<_, crate::Error>(trace)
    };
    let mut baseline = Files::new();
    let fetched = run(&repo.metadata, &mut baseline).unwrap().fetched;
    let fetched: Vec<&String> = fetched
        .iter()
        .filter(|p| repo.metadata.contains_key(*p))
        .collect();
    assert_eq!(
        fetched.len(),
        4,
        "timestamp, snapshot, targets, supplier: {fetched:?}"
    );
    let mut rejected = 0;
    for _ in 0..ROUNDS {
        let mut remote = repo.metadata.clone();
        let name = fetched[rng.below(fetched.len())];
        let mutated = mutate(&mut rng, &remote[name]);
        remote.insert(name.clone(), mutated);
        let mut local = Files::new();
        if run(&remote, &mut local).is_err() {
            rejected += 1;
            // A rejected update persists nothing but what the honest repository would have.
            for (k, v) in &local {
                assert_eq!(baseline.get(k), Some(v), "{name} mutated; {k} persisted");
            }
        }
    }
    // Whitespace and signature-list edits can leave a document valid; most edits must not.
    assert!(
        rejected > ROUNDS / 2,
        "mutations should mostly be rejected: {rejected}"
    );
}

#[test]
fn garbage_for_every_fetch_never_panics_the_client() {
    let repo = repo();
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    for _ in 0..ROUNDS / 3 {
        let mut c = Client::new("fuzz", &repo.initial_root(), repo.now, Config::default()).unwrap();
        c.start_refresh();
        let mut local: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for _ in 0..20 {
            let Ok(action) = c.next_action() else { break };
            let step = match action {
                Action::ReadLocal { .. } => {
                    let junk = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
                    c.provide_local(if rng.below(2) == 0 { None } else { Some(junk) })
                }
                Action::Fetch { path, .. } => {
                    let base = repo.metadata.get(&path).cloned().unwrap_or_default();
                    let fetched = match rng.below(3) {
                        0 => Fetched::NotFound,
                        1 => Fetched::Bytes(mutate(&mut rng, &base)),
                        _ => Fetched::Bytes(base),
                    };
                    c.provide_fetched(&path, fetched)
                }
                Action::Persist { name, bytes } => {
                    local.insert(name, bytes);
                    Ok(())
                }
                Action::Remove { name } => {
                    local.remove(&name);
                    Ok(())
                }
                Action::Done => break,
            };
            if step.is_err() {
                break;
            }
        }
    }
}

#[test]
fn mutated_roots_never_panic_the_trusted_set() {
    let repo = repo();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let root = repo.initial_root();
    for _ in 0..ROUNDS {
        let bytes = mutate(&mut rng, &root);
        if let Ok(mut set) = TrustedSet::new("fuzz", &bytes, repo.now) {
            let ts = mutate(&mut rng, &repo.metadata["timestamp.json"]);
            let _ = set.update_root(&mutate(&mut rng, &root));
            let _ = set.update_timestamp(&ts);
        }
    }
}

#[test]
fn mutated_manifests_and_ciphertexts_never_panic() {
    use crate::encryption::{decrypt_all, encrypt_all, ContentKey};
    use crate::key::KeyScheme;
    use crate::signer::{InMemorySigner, Signer};
    use crate::uptane::manifest::*;
    use crate::uptane::InstalledImage;

    let primary = InMemorySigner::generate(KeyScheme::Ed25519).unwrap();
    let report = EcuVersionReport {
        type_: ECU_REPORT_TYPE.into(),
        ecu_id: "TBOX-1".into(),
        installed_image: InstalledImage {
            filename: "a.bin".into(),
            length: 1,
            hashes: crate::hash::compute_hashes(b"a"),
            release_counter: 1,
        },
        attacks_detected: String::new(),
        latest_verified_time: crate::metadata::Expiry::new(test_now()),
        report_counter: 1,
        nonce: "00".into(),
        unrecognized: BTreeMap::new(),
    };
    let report_doc: serde_json::Value =
        serde_json::from_slice(&sign_ecu_report(&report, &primary).unwrap()).unwrap();
    let manifest = VehicleManifest {
        type_: VEHICLE_MANIFEST_TYPE.into(),
        vin: "VIN".into(),
        primary_ecu_id: "TBOX-1".into(),
        manifest_counter: 1,
        nonce: "00".into(),
        ecu_version_reports: BTreeMap::from([("TBOX-1".to_string(), report_doc)]),
        attacks_detected: String::new(),
        update_failures: Vec::new(),
        progress: Vec::new(),
        unrecognized: BTreeMap::new(),
    };
    let bytes = sign_vehicle_manifest(&manifest, &primary).unwrap();
    let primary_key = crate::key::PreparedKey::new(primary.public_key());
    let ecu_keys = BTreeMap::from([(
        "TBOX-1".to_string(),
        crate::key::PreparedKey::new(primary.public_key()),
    )]);
    let keys = VehicleKeys {
        vin: "VIN",
        primary_ecu_id: "TBOX-1",
        primary_key: &primary_key,
        ecu_keys: &ecu_keys,
    };
    assert!(verify_vehicle_manifest(&bytes, &keys).is_ok());
    let key = ContentKey::generate().unwrap();
    let ciphertext = encrypt_all(&key, &[7u8; 5000]).unwrap();
    let mut rng = Rng(0x0bad_5eed_0bad_5eed);
    for _ in 0..ROUNDS {
        let m = mutate(&mut rng, &bytes);
        if m != bytes {
            let _ = verify_vehicle_manifest(&m, &keys);
        }
        let c = mutate(&mut rng, &ciphertext);
        if c != ciphertext {
            assert!(
                decrypt_all(&key, &c).is_err(),
                "tampered ciphertext accepted"
            );
        }
    }
}
