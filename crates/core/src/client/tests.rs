//! Tests of the client workflow: one per rule of TUF 5.3–5.6, driven against in-memory
//! repositories.

use super::*;
use crate::testing::{drive, test_now, Files, TestRepo};
use chrono::Duration;

fn client(repo: &TestRepo) -> Client {
    Client::new("image", &repo.initial_root(), repo.now, Config::default()).unwrap()
}

fn refresh(repo: &TestRepo, local: &mut Files) -> Result<crate::testing::Trace> {
    refresh_at(repo, local, repo.now)
}

fn refresh_at(
    repo: &TestRepo,
    local: &mut Files,
    now: DateTime<Utc>,
) -> Result<crate::testing::Trace> {
    let root = local
        .get("root.json")
        .cloned()
        .unwrap_or_else(|| repo.initial_root());
    let mut c = Client::new("image", &root, now, Config::default())?;
    c.start_refresh();
    drive(&mut c, &repo.metadata, local)
}

fn version_of(local: &Files, name: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(&local[name]).unwrap();
    v["signed"]["version"].as_u64().unwrap()
}

#[test]
fn refresh_persists_exactly_the_accepted_bytes_of_each_role() {
    let repo = TestRepo::new(test_now());
    let mut local = Files::new();
    let trace = refresh(&repo, &mut local).unwrap();
    assert_eq!(
        trace.fetched,
        [
            "2.root.json",
            "timestamp.json",
            "1.snapshot.json",
            "1.targets.json"
        ]
    );
    assert_eq!(
        trace.persisted,
        ["timestamp.json", "snapshot.json", "targets.json"]
    );
    assert_eq!(local["timestamp.json"], repo.metadata["timestamp.json"]);
    assert_eq!(local["snapshot.json"], repo.metadata["1.snapshot.json"]);
    assert_eq!(local["targets.json"], repo.metadata["1.targets.json"]);
}

#[test]
fn second_refresh_with_nothing_new_uses_the_local_copies() {
    let repo = TestRepo::new(test_now());
    let mut local = Files::new();
    refresh(&repo, &mut local).unwrap();
    let trace = refresh(&repo, &mut local).unwrap();
    assert_eq!(trace.fetched, ["2.root.json", "timestamp.json"]);
    assert!(trace.persisted.is_empty());
}

#[test]
fn non_consistent_repositories_use_unversioned_paths() {
    let mut repo = TestRepo::new(test_now());
    repo.root.consistent_snapshot = Some(false);
    repo.root.version = 1;
    repo.publish_root();
    repo.publish();
    let mut local = Files::new();
    let trace = refresh(&repo, &mut local).unwrap();
    assert_eq!(
        trace.fetched,
        [
            "2.root.json",
            "timestamp.json",
            "snapshot.json",
            "targets.json"
        ]
    );
}

#[test]
fn root_rotation_walks_each_version_and_persists_the_last() {
    let mut repo = TestRepo::new(test_now());
    let mut local = Files::new();
    refresh(&repo, &mut local).unwrap();
    repo.rotate_keys("root", 3, 2);
    repo.rotate_keys("root", 1, 1);
    repo.publish();
    let trace = refresh(&repo, &mut local).unwrap();
    assert_eq!(
        &trace.fetched[..3],
        ["2.root.json", "3.root.json", "4.root.json"]
    );
    assert_eq!(version_of(&local, "root.json"), 3);
    assert_eq!(local["root.json"], repo.metadata["3.root.json"]);
}

#[test]
fn root_not_signed_by_the_old_root_threshold_is_rejected() {
    let mut repo = TestRepo::new(test_now());
    let mut local = Files::new();
    refresh(&repo, &mut local).unwrap();
    // Sign version 2 with the new key only.
    repo.signers.remove("root");
    repo.rotate_keys("root", 1, 1);
    let err = refresh(&repo, &mut local).unwrap_err();
    assert_eq!(
        err,
        Error::ThresholdNotMet {
            role: "root".into(),
            valid: 0,
            threshold: 1
        }
    );
    assert!(!local.contains_key("root.json"), "trusted root unchanged");
}

#[test]
fn root_not_signed_by_its_own_new_threshold_is_rejected() {
    let mut repo = TestRepo::new(test_now());
    let old = crate::signer::InMemorySigner::from_pkcs8_pem(
        crate::key::KeyScheme::Ed25519,
        &repo.signers["root"][0].to_pkcs8_pem(),
    )
    .unwrap();
    repo.rotate_keys("root", 3, 2);
    // Re-sign version 2 with the old key and only one of the new ones.
    let doc = crate::metadata::sign_role(&repo.root, &[&old, &repo.signers["root"][0]]).unwrap();
    repo.metadata.insert("2.root.json".into(), doc);
    let err = refresh(&repo, &mut Files::new()).unwrap_err();
    assert_eq!(
        err,
        Error::ThresholdNotMet {
            role: "root".into(),
            valid: 1,
            threshold: 2
        }
    );
}

#[test]
fn root_version_that_skips_ahead_is_rejected() {
    let mut repo = TestRepo::new(test_now());
    repo.rotate_keys("timestamp", 1, 1);
    let v2 = repo.metadata.remove("2.root.json").unwrap();
    repo.metadata.insert("3.root.json".into(), v2.clone());
    repo.root.version = 3;
    // Serve a correctly signed version 3 under the name 2.root.json.
    repo.rotate_keys("snapshot", 1, 1);
    let v4 = repo.metadata["4.root.json"].clone();
    repo.metadata.insert("2.root.json".into(), v4);
    let err = refresh(&repo, &mut Files::new()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ThresholdNotMet { .. } | Error::VersionMismatch { .. }
        ),
        "{err}"
    );
}

#[test]
fn expired_final_root_is_rejected() {
    let repo = TestRepo::new(test_now());
    let err = refresh_at(&repo, &mut Files::new(), repo.now + Duration::days(400)).unwrap_err();
    assert_eq!(err.rule(), "expired");
    assert!(
        err.to_string().starts_with("root metadata expired"),
        "{err}"
    );
}

#[test]
fn expired_timestamp_is_a_freeze_attack() {
    let repo = TestRepo::new(test_now());
    let err = refresh_at(&repo, &mut Files::new(), repo.now + Duration::days(2)).unwrap_err();
    assert!(
        matches!(err, Error::ExpiredMetadata { ref role, .. } if role == "timestamp"),
        "{err}"
    );
}

/// What a client gets when it names the timestamp it holds and the server answers 304 (the
/// runner hands the held copy over as the fetched bytes): the same version again, which must
/// still be refused once it has expired — a 304 from an attacker is a freeze like any other.
#[test]
fn a_held_timestamp_offered_again_is_still_a_freeze_once_expired() {
    let repo = TestRepo::new(test_now());
    let mut local = Files::new();
    refresh(&repo, &mut local).unwrap();
    // Same bytes again, in time: nothing new, fine.
    refresh(&repo, &mut local).unwrap();
    let err = refresh_at(&repo, &mut local, repo.now + Duration::days(2)).unwrap_err();
    assert!(
        matches!(err, Error::ExpiredMetadata { ref role, .. } if role == "timestamp"),
        "{err}"
    );
}

#[test]
fn older_timestamp_is_a_rollback() {
    let mut repo = TestRepo::new(test_now());
    let old_ts = repo.metadata["timestamp.json"].clone();
    repo.publish();
    let mut local = Files::new();
    refresh(&repo, &mut local).unwrap();
    repo.metadata.insert("timestamp.json".into(), old_ts);
    let err = refresh(&repo, &mut local).unwrap_err();
    assert_eq!(
        err,
        Error::OlderMetadata {
            role: "timestamp".into(),
            trusted: 2,
            new: 1
        }
    );
    assert_eq!(version_of(&local, "timestamp.json"), 2);
}

#[test]
fn timestamp_listing_an_older_snapshot_is_a_rollback() {
    let mut repo = TestRepo::new(test_now());
    repo.publish();
    let mut local = Files::new();
    refresh(&repo, &mut local).unwrap();
    repo.timestamp.version += 1;
    repo.timestamp
        .meta
        .get_mut("snapshot.json")
        .unwrap()
        .version = 1;
    repo.publish_timestamp();
    let err = refresh(&repo, &mut local).unwrap_err();
    assert_eq!(err.rule(), "rollback");
}

#[test]
fn snapshot_not_matching_the_timestamp_hash_is_rejected() {
    let mut repo = TestRepo::new(test_now());
    let mut doc: serde_json::Value =
        serde_json::from_slice(&repo.metadata["1.snapshot.json"]).unwrap();
    doc["signed"]["expires"] = "2099-01-01T00:00:00Z".into();
    let bytes = serde_json::to_vec_pretty(&doc).unwrap();
    repo.metadata
        .insert("1.snapshot.json".into(), bytes[..bytes.len()].to_vec());
    let err = refresh(&repo, &mut Files::new()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::HashMismatch { .. } | Error::LengthMismatch { .. }
        ),
        "{err}"
    );
}

#[test]
fn snapshot_rolling_back_a_targets_version_is_rejected() {
    let mut repo = TestRepo::new(test_now());
    repo.bump("targets");
    repo.publish();
    let mut local = Files::new();
    refresh(&repo, &mut local).unwrap();
    repo.targets.get_mut("targets").unwrap().version = 1;
    repo.publish();
    let err = refresh(&repo, &mut local).unwrap_err();
    assert_eq!(
        err,
        Error::OlderMetadata {
            role: "targets (as listed by snapshot)".into(),
            trusted: 2,
            new: 1
        }
    );
}

#[test]
fn snapshot_dropping_a_role_is_rejected() {
    let mut repo = TestRepo::new(test_now());
    repo.delegate("targets", "supplier", &["*"], false, None);
    repo.bump("targets");
    repo.publish();
    let mut local = Files::new();
    refresh(&repo, &mut local).unwrap();
    repo.targets.remove("supplier");
    repo.publish();
    let err = refresh(&repo, &mut local).unwrap_err();
    assert_eq!(err.rule(), "missing-role");
}

#[test]
fn snapshot_version_must_be_the_one_timestamp_lists() {
    let mut repo = TestRepo::new(test_now());
    repo.publish();
    // Serve snapshot v1 in place of v2, with a timestamp that lists v2 but v1's hashes.
    let v1 = repo.metadata["1.snapshot.json"].clone();
    repo.metadata.insert("2.snapshot.json".into(), v1.clone());
    let meta = repo.timestamp.meta.get_mut("snapshot.json").unwrap();
    meta.length = Some(v1.len() as u64);
    meta.hashes = Some(crate::hash::compute_hashes(&v1));
    repo.timestamp.version += 1;
    repo.publish_timestamp();
    let err = refresh(&repo, &mut Files::new()).unwrap_err();
    assert_eq!(
        err,
        Error::VersionMismatch {
            role: "snapshot".into(),
            expected: 2,
            found: 1,
            listed_by: "timestamp".into()
        }
    );
}

#[test]
fn expired_snapshot_is_rejected() {
    let mut repo = TestRepo::new(test_now());
    repo.snapshot.expires = crate::metadata::Expiry::new(repo.now - Duration::seconds(1));
    repo.publish();
    let err = refresh(&repo, &mut Files::new()).unwrap_err();
    assert!(
        matches!(err, Error::ExpiredMetadata { ref role, .. } if role == "snapshot"),
        "{err}"
    );
}

#[test]
fn targets_version_must_match_snapshot() {
    let mut repo = TestRepo::new(test_now());
    repo.publish();
    repo.bump("targets");
    let t = crate::metadata::sign_role(&repo.targets["targets"], &[&repo.signers["targets"][0]])
        .unwrap();
    repo.metadata.insert("1.targets.json".into(), t);
    let err = refresh(&repo, &mut Files::new()).unwrap_err();
    assert_eq!(err.rule(), "version-mismatch");
}

#[test]
fn targets_signed_by_an_unauthorised_key_are_rejected() {
    let mut repo = TestRepo::new(test_now());
    let intruder = crate::signer::InMemorySigner::generate(crate::key::KeyScheme::Ed25519).unwrap();
    repo.signers.insert("targets".into(), vec![intruder]);
    repo.publish();
    let err = refresh(&repo, &mut Files::new()).unwrap_err();
    assert_eq!(
        err,
        Error::ThresholdNotMet {
            role: "targets".into(),
            valid: 0,
            threshold: 1
        }
    );
}

#[test]
fn expired_targets_are_rejected() {
    let mut repo = TestRepo::new(test_now());
    repo.targets.get_mut("targets").unwrap().expires = crate::metadata::Expiry::new(repo.now);
    repo.publish();
    let err = refresh(&repo, &mut Files::new()).unwrap_err();
    assert!(
        matches!(err, Error::ExpiredMetadata { ref role, .. } if role == "targets"),
        "{err}"
    );
}

#[test]
fn oversized_timestamp_is_endless_data() {
    let mut repo = TestRepo::new(test_now());
    let mut big = repo.metadata["timestamp.json"].clone();
    big.extend(std::iter::repeat_n(b' ', 20_000));
    repo.metadata.insert("timestamp.json".into(), big);
    let err = refresh(&repo, &mut Files::new()).unwrap_err();
    assert_eq!(err.rule(), "endless-data");
}

#[test]
fn missing_timestamp_is_reported_not_found() {
    let mut repo = TestRepo::new(test_now());
    repo.metadata.remove("timestamp.json");
    let err = refresh(&repo, &mut Files::new()).unwrap_err();
    assert_eq!(err.rule(), "not-found");
}

#[test]
fn a_snapshot_served_as_timestamp_is_the_wrong_type() {
    let mut repo = TestRepo::new(test_now());
    let snap = repo.metadata["1.snapshot.json"].clone();
    repo.metadata.insert("timestamp.json".into(), snap);
    let err = refresh(&repo, &mut Files::new()).unwrap_err();
    assert_eq!(err.rule(), "wrong-type");
}

#[test]
fn fast_forward_recovery_after_timestamp_key_rotation() {
    let mut repo = TestRepo::new(test_now());
    let mut local = Files::new();
    refresh(&repo, &mut local).unwrap();
    // The attacker with the timestamp key pushes version 1000.
    repo.timestamp.version = 1000;
    repo.publish_timestamp();
    refresh(&repo, &mut local).unwrap();
    assert_eq!(version_of(&local, "timestamp.json"), 1000);
    // The repository rotates the timestamp key and starts again from a low version.
    repo.rotate_keys("timestamp", 1, 1);
    repo.timestamp.version = 1;
    repo.publish();
    let trace = refresh(&repo, &mut local).unwrap();
    assert_eq!(trace.removed, ["timestamp.json", "snapshot.json"]);
    assert_eq!(version_of(&local, "timestamp.json"), 2);
}

#[test]
fn without_rotation_the_inflated_timestamp_keeps_blocking() {
    let mut repo = TestRepo::new(test_now());
    let mut local = Files::new();
    refresh(&repo, &mut local).unwrap();
    repo.timestamp.version = 1000;
    repo.publish_timestamp();
    refresh(&repo, &mut local).unwrap();
    repo.timestamp.version = 5;
    repo.publish();
    assert_eq!(refresh(&repo, &mut local).unwrap_err().rule(), "rollback");
}

#[test]
fn root_rotation_cap_stops_the_chain() {
    let mut repo = TestRepo::new(test_now());
    for _ in 0..3 {
        repo.rotate_keys("root", 1, 1);
    }
    repo.publish();
    let mut c = Client::new(
        "image",
        &repo.initial_root(),
        repo.now,
        Config {
            max_root_rotations: 2,
            ..Config::default()
        },
    )
    .unwrap();
    c.start_refresh();
    let mut local = Files::new();
    let trace = drive(&mut c, &repo.metadata, &mut local).unwrap();
    assert_eq!(&trace.fetched[..2], ["2.root.json", "3.root.json"]);
    assert!(!trace.fetched.contains(&"4.root.json".to_string()));
}

fn lookup(
    repo: &TestRepo,
    local: &mut Files,
    target: &str,
    hw: Option<&str>,
) -> Result<TargetInfo> {
    let mut c = client(repo);
    c.start_refresh();
    drive(&mut c, &repo.metadata, local)?;
    c.start_lookup(target, hw)?;
    drive(&mut c, &repo.metadata, local)?;
    Ok(c.found_target().cloned().unwrap())
}

#[test]
fn lookup_finds_top_level_targets() {
    let mut repo = TestRepo::new(test_now());
    repo.add_target("targets", "fw/ecu.bin", b"image", None);
    repo.bump("targets");
    repo.publish();
    let info = lookup(&repo, &mut Files::new(), "fw/ecu.bin", None).unwrap();
    assert_eq!(info.role, "targets");
    assert_eq!(info.file.length, 5);
    assert_eq!(
        target_url_path(&info, true),
        format!("fw/{}.ecu.bin", info.file.hashes["sha256"])
    );
}

#[test]
fn lookup_walks_delegations_in_pre_order() {
    let mut repo = TestRepo::new(test_now());
    repo.delegate("targets", "a", &["fw/*"], false, None);
    repo.delegate("a", "a1", &["fw/*"], false, None);
    repo.delegate("targets", "b", &["fw/*"], false, None);
    repo.add_target("a1", "fw/x.bin", b"from a1", None);
    repo.add_target("b", "fw/x.bin", b"from b", None);
    repo.bump("targets");
    repo.publish();
    let mut local = Files::new();
    let info = lookup(&repo, &mut local, "fw/x.bin", None).unwrap();
    assert_eq!(info.role, "a1");
    assert!(local.contains_key("a1.json"));
}

#[test]
fn terminating_delegation_stops_the_search() {
    let mut repo = TestRepo::new(test_now());
    repo.delegate("targets", "a", &["fw/*"], true, None);
    repo.delegate("targets", "b", &["fw/*"], false, None);
    repo.add_target("b", "fw/x.bin", b"from b", None);
    repo.publish();
    let err = lookup(&repo, &mut Files::new(), "fw/x.bin", None).unwrap_err();
    assert_eq!(err.rule(), "target-not-found");
}

#[test]
fn delegated_role_cannot_sign_outside_its_paths() {
    let mut repo = TestRepo::new(test_now());
    repo.delegate("targets", "supplier", &["supplier/*"], false, None);
    repo.add_target("supplier", "fw/x.bin", b"evil", None);
    repo.publish();
    let err = lookup(&repo, &mut Files::new(), "fw/x.bin", None).unwrap_err();
    assert_eq!(err.rule(), "target-not-found");
}

#[test]
fn hardware_id_restriction_skips_other_suppliers() {
    let mut repo = TestRepo::new(test_now());
    repo.delegate("targets", "acme", &["*"], false, Some(&["ivi-1"]));
    repo.delegate("targets", "bosch", &["*"], false, Some(&["tbox-1"]));
    repo.add_target("acme", "app.bin", b"acme", None);
    repo.add_target("bosch", "app.bin", b"bosch", None);
    repo.publish();
    let mut local = Files::new();
    assert_eq!(
        lookup(&repo, &mut local, "app.bin", Some("tbox-1"))
            .unwrap()
            .role,
        "bosch"
    );
    assert_eq!(
        lookup(&repo, &mut local, "app.bin", Some("ivi-1"))
            .unwrap()
            .role,
        "acme"
    );
    assert_eq!(
        lookup(&repo, &mut local, "app.bin", Some("other"))
            .unwrap_err()
            .rule(),
        "target-not-found"
    );
}

#[test]
fn delegated_role_signed_by_wrong_key_is_rejected() {
    let mut repo = TestRepo::new(test_now());
    repo.delegate("targets", "supplier", &["*"], false, None);
    repo.add_target("supplier", "x.bin", b"x", None);
    let intruder = crate::signer::InMemorySigner::generate(crate::key::KeyScheme::Ed25519).unwrap();
    repo.signers.insert("supplier".into(), vec![intruder]);
    repo.publish();
    let err = lookup(&repo, &mut Files::new(), "x.bin", None).unwrap_err();
    assert_eq!(
        err,
        Error::ThresholdNotMet {
            role: "supplier".into(),
            valid: 0,
            threshold: 1
        }
    );
}

/// Key confusion (python-tuf and go-tuf are open to it): `release` is delegated by two
/// parents with different keys and paths. Once it is trusted through `parent-a`, a lookup
/// through `parent-b` must check it against `parent-b`'s keys again, or whoever holds
/// `parent-a`'s delegated key can serve targets under paths only `parent-b` may delegate.
#[test]
fn a_role_reached_through_another_delegator_is_verified_against_it() {
    let mut repo = TestRepo::new(test_now());
    repo.delegate("targets", "parent-a", &["*/*"], false, None);
    repo.delegate("targets", "parent-b", &["*/*"], false, None);
    repo.delegate("parent-a", "release", &["a/*"], false, None);
    let key_a = repo.signers.remove("release").unwrap();
    repo.delegate("parent-b", "release", &["b/*"], false, None);
    // The attacker holds parent-a's key for `release` and signs a target under b/.
    repo.signers.insert("release".into(), key_a);
    repo.add_target("release", "a/app.bin", b"a", None);
    repo.add_target("release", "b/brakes.bin", b"evil", None);
    repo.bump("targets");
    repo.publish();

    let mut c = client(&repo);
    let mut local = Files::new();
    c.start_refresh();
    drive(&mut c, &repo.metadata, &mut local).unwrap();
    c.start_lookup("a/app.bin", None).unwrap();
    drive(&mut c, &repo.metadata, &mut local).unwrap();
    assert_eq!(c.found_target().unwrap().role, "release");

    c.start_lookup("b/brakes.bin", None).unwrap();
    let err = drive(&mut c, &repo.metadata, &mut local).unwrap_err();
    assert_eq!(
        err,
        Error::ThresholdNotMet {
            role: "release".into(),
            valid: 0,
            threshold: 1
        }
    );
    assert!(c.found_target().is_none());
    // A fresh client (the role read from the local store) refuses it the same way.
    let err = lookup(&repo, &mut local, "b/brakes.bin", None).unwrap_err();
    assert_eq!(err.rule(), "threshold");
}

#[test]
fn delegation_walk_is_capped() {
    let mut repo = TestRepo::new(test_now());
    let mut parent = "targets".to_string();
    for i in 0..40 {
        let name = format!("r{i}");
        repo.delegate(&parent, &name, &["*"], false, None);
        parent = name;
    }
    repo.add_target(&parent, "deep.bin", b"x", None);
    repo.publish();
    let err = lookup(&repo, &mut Files::new(), "deep.bin", None).unwrap_err();
    assert_eq!(err.rule(), "delegation-limit");
}

#[test]
fn role_names_are_percent_encoded_for_files_and_urls() {
    assert_eq!(metadata_file_name("../x"), "..%2Fx.json");
    assert_eq!(metadata_file_name("a b/c?d"), "a%20b%2Fc%3Fd.json");
    assert_eq!(metadata_file_name(".."), "...json");
    assert_eq!(
        metadata_file_name("supplier-1_v2.~"),
        "supplier-1_v2.~.json"
    );
    assert_eq!(safe_file_name(".."), "%2E%2E");
    assert_eq!(safe_file_name("."), "%2E");
    assert_eq!(safe_file_name("fw/a.bin"), "fw%2Fa.bin");
}

#[test]
fn traversal_role_name_is_fetched_and_stored_encoded() {
    let mut repo = TestRepo::new(test_now());
    repo.delegate("targets", "../evil", &["*"], false, None);
    repo.add_target("../evil", "x.bin", b"x", None);
    repo.publish();
    let mut local = Files::new();
    let info = lookup(&repo, &mut local, "x.bin", None).unwrap();
    assert_eq!(info.role, "../evil");
    assert!(local.contains_key("..%2Fevil.json"));
    assert!(!local.keys().any(|k| k.contains('/')));
}

#[test]
fn lookup_before_refresh_is_a_workflow_error() {
    let repo = TestRepo::new(test_now());
    assert_eq!(
        client(&repo).start_lookup("x", None).unwrap_err().rule(),
        "workflow"
    );
}
