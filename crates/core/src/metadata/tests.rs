//! Tests of parsing, verification and round trips of metadata documents.

use super::*;
use crate::key::KeyScheme;
use crate::signer::InMemorySigner;
use serde_json::json;

fn signer() -> InMemorySigner {
    InMemorySigner::generate(KeyScheme::Ed25519).unwrap()
}

fn timestamp_value(version: u64) -> Value {
    json!({
        "_type": "timestamp",
        "spec_version": "1.0.31",
        "version": version,
        "expires": "2030-01-01T00:00:00Z",
        "meta": {"snapshot.json": {"version": 1}},
    })
}

fn keys_of(signers: &[&InMemorySigner]) -> (BTreeMap<KeyId, Key>, Vec<KeyId>) {
    let mut keys = BTreeMap::new();
    let mut ids = Vec::new();
    for s in signers {
        keys.insert(s.key_id(), s.public_key().clone());
        ids.push(s.key_id());
    }
    (keys, ids)
}

#[test]
fn signed_metadata_verifies_and_parses() {
    let s = signer();
    let doc = sign_role(&timestamp_value(3), &[&s]).unwrap();
    let env = Envelope::parse(&doc, "timestamp").unwrap();
    let (keys, ids) = keys_of(&[&s]);
    env.verify("timestamp", &keys, &ids, 1).unwrap();
    let ts: Timestamp = env.typed("timestamp").unwrap();
    assert_eq!(ts.version, 3);
}

#[test]
fn threshold_counts_distinct_key_material_not_key_ids() {
    let s = signer();
    let doc = sign_role(&timestamp_value(1), &[&s]).unwrap();
    let mut env = Envelope::parse(&doc, "timestamp").unwrap();
    // The same key listed under a second ID, with the signature duplicated under it.
    let alias = KeyId("alias".into());
    let mut keys = BTreeMap::new();
    keys.insert(s.key_id(), s.public_key().clone());
    keys.insert(alias.clone(), s.public_key().clone());
    let mut dup = env.signatures[0].clone();
    dup.keyid = alias.clone();
    env.signatures.push(dup);
    let err = env
        .verify("timestamp", &keys, &[s.key_id(), alias], 2)
        .unwrap_err();
    assert_eq!(
        err,
        Error::ThresholdNotMet {
            role: "timestamp".into(),
            valid: 1,
            threshold: 2
        }
    );
}

#[test]
fn signatures_by_unauthorised_keys_do_not_count() {
    let (a, b) = (signer(), signer());
    let doc = sign_role(&timestamp_value(1), &[&b]).unwrap();
    let env = Envelope::parse(&doc, "timestamp").unwrap();
    let (keys, _) = keys_of(&[&a, &b]);
    let err = env
        .verify("timestamp", &keys, &[a.key_id()], 1)
        .unwrap_err();
    assert_eq!(err.rule(), "threshold");
}

#[test]
fn tampered_signed_part_fails_verification() {
    let s = signer();
    let doc = sign_role(&timestamp_value(1), &[&s]).unwrap();
    let mut value: Value = serde_json::from_slice(&doc).unwrap();
    value["signed"]["version"] = json!(2);
    let env = Envelope::parse(&serde_json::to_vec(&value).unwrap(), "timestamp").unwrap();
    let (keys, ids) = keys_of(&[&s]);
    assert!(env.verify("timestamp", &keys, &ids, 1).is_err());
}

#[test]
fn zero_threshold_never_verifies() {
    let s = signer();
    let doc = sign_role(&timestamp_value(1), &[&s]).unwrap();
    let env = Envelope::parse(&doc, "timestamp").unwrap();
    let (keys, ids) = keys_of(&[&s]);
    assert!(env.verify("timestamp", &keys, &ids, 0).is_err());
}

#[test]
fn duplicate_signature_key_ids_are_malformed() {
    let s = signer();
    let doc = sign_role(&timestamp_value(1), &[&s, &s]).unwrap();
    assert_eq!(
        Envelope::parse(&doc, "timestamp").unwrap_err().rule(),
        "malformed"
    );
}

#[test]
fn wrong_type_is_named() {
    let s = signer();
    let doc = sign_role(&timestamp_value(1), &[&s]).unwrap();
    let env = Envelope::parse(&doc, "snapshot").unwrap();
    let err = env.typed::<Snapshot>("snapshot").unwrap_err();
    assert_eq!(
        err,
        Error::WrongType {
            expected: "snapshot".into(),
            found: "timestamp".into()
        }
    );
}

#[test]
fn unsupported_spec_version_is_rejected() {
    let mut v = timestamp_value(1);
    v["spec_version"] = json!("2.0.0");
    let doc = sign_role(&v, &[&signer()]).unwrap();
    let err = Envelope::parse(&doc, "timestamp")
        .unwrap()
        .typed::<Timestamp>("timestamp")
        .unwrap_err();
    assert_eq!(err.rule(), "spec-version");
}

#[test]
fn unknown_fields_survive_a_round_trip_and_signatures_still_verify() {
    let s = signer();
    let value = json!({
        "_type": "targets",
        "spec_version": "1.0.31",
        "version": 1,
        "expires": "2030-01-01T00:00:00Z",
        "x-vendor": {"nested": [1, "two"]},
        "targets": {
            "a.bin": {"length": 3, "hashes": {"sha256": "00".repeat(32)},
                      "custom": {"hardwareId": "hw", "weird": null}, "extra": true}
        },
        "delegations": {
            "keys": {},
            "roles": [{"name": "supplier", "keyids": [], "threshold": 1, "terminating": false,
                       "paths": ["a/*"], "hardware_ids": ["hw"], "note": "x"}]
        }
    });
    let doc = sign_role(&value, &[&s]).unwrap();
    let env = Envelope::parse(&doc, "targets").unwrap();
    let typed: Targets = env.typed("targets").unwrap();
    let again = crate::canonical::to_canonical_from(&typed).unwrap();
    assert_eq!(again, env.canonical_signed);
    let resigned = serde_json::json!({"signed": typed, "signatures": env.signatures});
    let env2 = Envelope::parse(&serde_json::to_vec(&resigned).unwrap(), "targets").unwrap();
    let (keys, ids) = keys_of(&[&s]);
    env2.verify("targets", &keys, &ids, 1).unwrap();
    assert_eq!(
        typed.delegations.unwrap().roles.unwrap()[0].hardware_ids(),
        Some(vec!["hw".to_string()])
    );
}

#[test]
fn root_requires_all_top_level_roles_and_positive_thresholds() {
    let s = signer();
    let mut root = json!({
        "_type": "root", "spec_version": "1.0.31", "version": 1, "consistent_snapshot": true,
        "expires": "2030-01-01T00:00:00Z",
        "keys": {s.key_id().0: s.public_key()},
        "roles": {
            "root": {"keyids": [s.key_id()], "threshold": 1},
            "timestamp": {"keyids": [s.key_id()], "threshold": 1},
            "snapshot": {"keyids": [s.key_id()], "threshold": 1},
            "targets": {"keyids": [s.key_id()], "threshold": 1}
        }
    });
    let parse = |v: &Value| {
        Envelope::parse(&sign_role(v, &[&s]).unwrap(), "root")
            .unwrap()
            .typed::<Root>("root")
    };
    parse(&root).unwrap();
    root["roles"]["targets"]["threshold"] = json!(0);
    assert!(parse(&root).is_err());
    root["roles"]["targets"]["threshold"] = json!(1);
    root["roles"]["timestamp"]["keyids"] = json!([s.key_id(), s.key_id()]);
    assert!(parse(&root).is_err());
    root["roles"]["timestamp"]["keyids"] = json!([s.key_id()]);
    root["roles"].as_object_mut().unwrap().remove("snapshot");
    assert_eq!(parse(&root).unwrap_err().rule(), "missing-role");
}

#[test]
fn delegations_need_exactly_one_of_roles_and_succinct_roles() {
    let s = signer();
    let value = json!({
        "_type": "targets", "spec_version": "1.0", "version": 1,
        "expires": "2030-01-01T00:00:00Z", "targets": {},
        "delegations": {"keys": {}}
    });
    let env = Envelope::parse(&sign_role(&value, &[&s]).unwrap(), "targets").unwrap();
    assert!(env.typed::<Targets>("targets").is_err());
}

#[test]
fn version_zero_and_negative_lengths_are_malformed() {
    let s = signer();
    let mut v = timestamp_value(0);
    let env = Envelope::parse(&sign_role(&v, &[&s]).unwrap(), "timestamp").unwrap();
    assert!(env.typed::<Timestamp>("timestamp").is_err());
    v = timestamp_value(1);
    v["meta"]["snapshot.json"]["length"] = json!(-1);
    let env = Envelope::parse(&sign_role(&v, &[&s]).unwrap(), "timestamp").unwrap();
    assert!(env.typed::<Timestamp>("timestamp").is_err());
}

#[test]
fn add_signatures_keeps_existing_ones() {
    let (a, b) = (signer(), signer());
    let doc = sign_role(&timestamp_value(1), &[&a]).unwrap();
    let doc = add_signatures(&doc, &[&b]).unwrap();
    let env = Envelope::parse(&doc, "timestamp").unwrap();
    let (keys, ids) = keys_of(&[&a, &b]);
    env.verify("timestamp", &keys, &ids, 2).unwrap();
}

/// Two envelopes of one document read alike: the same canonical bytes, type, signatures and
/// tree, and the same typed role or the same rule broken (the message of a document read from
/// its canonical bytes also names a column).
fn assert_same_envelope(a: &Envelope, b: &Envelope, shown: &str) {
    assert_eq!(a.canonical_signed, b.canonical_signed, "{shown}");
    assert_eq!(a.type_field(), b.type_field(), "{shown}");
    assert_eq!(a.signatures, b.signatures, "{shown}");
    assert_eq!(
        a.signed_value().unwrap(),
        b.signed_value().unwrap(),
        "{shown}"
    );
    let (ta, tb) = (
        a.typed::<Timestamp>("timestamp"),
        b.typed::<Timestamp>("timestamp"),
    );
    assert_eq!(ta.as_ref().ok(), tb.as_ref().ok(), "{shown}");
    assert_eq!(
        ta.err().map(|e| e.rule()),
        tb.err().map(|e| e.rule()),
        "{shown}"
    );
}

/// The two parse paths (canonicalised while parsing, or through the strict tree) accept and
/// refuse the same documents and produce the same canonical bytes, `_type`, signatures and
/// typed role — for sorted documents (the fast path's), unsorted ones, escapes, control
/// characters, unicode, duplicates, floats, huge integers and wrong shapes.
#[test]
fn fast_and_tree_parse_paths_agree() {
    let s = signer();
    let sorted_doc = sign_role(&timestamp_value(3), &[&s]).unwrap();
    let sig = serde_json::to_string(&Signature::new(s.key_id(), &[1, 2, 3])).unwrap();
    let cases: Vec<Vec<u8>> = vec![
        sorted_doc.clone(),
        serde_json::to_vec(&serde_json::from_slice::<Value>(&sorted_doc).unwrap()).unwrap(),
        // Unsorted at the top, inside `signed`, inside a nested object.
        format!(r#"{{"signed":{{"_type":"timestamp"}},"signatures":[{sig}]}}"#).into_bytes(),
        format!(r#"{{"signatures":[{sig}],"signed":{{"version":1,"_type":"timestamp"}}}}"#)
            .into_bytes(),
        format!(r#"{{"signatures":[{sig}],"signed":{{"_type":"t","m":{{"b":1,"a":2}}}}}}"#)
            .into_bytes(),
        // Escapes, unicode, a control character (escaped in JSON, raw in canonical form).
        format!(r#"{{"signatures":[{sig}],"signed":{{"_type":"ti\"me\\stamp","x":"\u00e9\u0041"}}}}"#)
            .into_bytes(),
        format!(r#"{{"signatures":[{sig}],"signed":{{"_type":"timestamp","x":"a\nb\u0001"}}}}"#)
            .into_bytes(),
        format!(r#"{{"signatures":[{sig}],"signed":{{"_type":"timestamp","a":1,"a!":2,"é":[1,[],{{}}]}}}}"#)
            .into_bytes(),
        // Duplicates (adjacent, so "sorted" but not strictly), floats, huge integers.
        format!(r#"{{"signatures":[{sig}],"signed":{{"_type":"timestamp","a":1,"a":1}}}}"#)
            .into_bytes(),
        format!(r#"{{"signatures":[{sig}],"signatures":[],"signed":{{"_type":"timestamp"}}}}"#)
            .into_bytes(),
        format!(r#"{{"signatures":[{sig}],"signed":{{"_type":"timestamp","v":1.5}}}}"#)
            .into_bytes(),
        format!(r#"{{"signatures":[{sig}],"signed":{{"_type":"timestamp","v":18446744073709551616}}}}"#)
            .into_bytes(),
        format!(r#"{{"signatures":[{sig}],"signed":{{"_type":"timestamp","v":-9223372036854775808}}}}"#)
            .into_bytes(),
        // Wrong shapes.
        br#"[1,2]"#.to_vec(),
        br#"{"signatures":[]}"#.to_vec(),
        br#"{"signed":{}}"#.to_vec(),
        br#"{"signatures":{"a":1},"signed":{}}"#.to_vec(),
        br#"{"signatures":[],"signed":{"_type":7}}"#.to_vec(),
        br#"{"signatures":[],"signed":"x"}"#.to_vec(),
        format!(r#"{{"signatures":[{sig},{sig}],"signed":{{}}}}"#).into_bytes(),
        br#"{"signatures":[],"signed":{}} trailing"#.to_vec(),
        br#"{"signatures":[],"signed":{}"#.to_vec(),
        br#"{"signatures":[],"signed":{},"z":[1,2,{"b":0,"a":0}]}"#.to_vec(),
    ];
    let mut fast_taken = 0;
    let mut tree_borrowed = 0;
    for doc in &cases {
        let shown = String::from_utf8_lossy(doc);
        let via_either = Envelope::parse(doc, "timestamp");
        let via_tree = Envelope::parse_tree(doc, "timestamp");
        // A document already parsed into a tree (an ECU report inside a manifest) reads the
        // same as its bytes.
        if let Ok(tree) = crate::canonical::parse_strict(doc, "timestamp metadata") {
            let of_tree = Envelope::from_tree(&tree, "timestamp");
            match (&of_tree, &via_tree) {
                (Ok(a), Ok(b)) => {
                    // The tree is borrowed, not copied, unless its canonical bytes are not
                    // JSON text (a control character).
                    let raw_control = a.canonical_signed.iter().any(|&b| b < 0x20);
                    assert_eq!(a.signed.is_some(), raw_control, "{shown}");
                    tree_borrowed += usize::from(!raw_control);
                    assert_same_envelope(a, b, &shown);
                }
                (Err(a), Err(b)) => assert_eq!(a, b, "{shown}"),
                _ => panic!("the tree disagrees on {shown}: {of_tree:?} vs {via_tree:?}"),
            }
        }
        match (&via_either, &via_tree) {
            (Ok(a), Ok(b)) => {
                if a.signed.is_none() {
                    fast_taken += 1;
                }
                assert_same_envelope(a, b, &shown);
            }
            (Err(a), Err(b)) => assert_eq!(a, b, "{shown}"),
            _ => panic!("paths disagree on {shown}: {via_either:?} vs {via_tree:?}"),
        }
    }
    assert!(
        fast_taken >= 5,
        "the fast path is taken for sorted documents"
    );
    assert!(
        tree_borrowed >= 5,
        "a parsed tree's envelope keeps no copy of it"
    );
}

/// A targets role read from a document builds its entries only when they are used, yet is
/// refused as a whole when any entry is malformed (whichever parse path read it), and
/// serialises to the same canonical bytes, so its signatures still verify.
#[test]
fn targets_read_lazily_are_checked_whole_and_round_trip() {
    let s = signer();
    let entry = |n: u64| {
        json!({
            "length": n,
            "hashes": {"sha256": format!("{n:064x}")},
            "custom": {"hardwareIds": ["hw"], "x": [1, {"b": 2, "a": 1}]},
            "later": true,
        })
    };
    let mut targets = json!({
        "_type": "targets",
        "spec_version": "1.0.31",
        "version": 1,
        "expires": "2030-01-01T00:00:00Z",
        "targets": {"a.bin": entry(1), "dir/\"q\".bin": entry(2), "z.bin": entry(3)},
    });
    let doc = sign_role(&targets, &[&s]).unwrap();
    for tree in [false, true] {
        let env = if tree {
            Envelope::parse_tree(&doc, "targets").unwrap()
        } else {
            Envelope::parse(&doc, "targets").unwrap()
        };
        assert_eq!(env.signed.is_some(), tree);
        let t: Targets = env.typed("targets").unwrap();
        assert!(t.targets.is_lazy());
        assert_eq!(t.targets.len(), 3);
        assert_eq!(t.targets.get("dir/\"q\".bin").unwrap().length, 2);
        let (keys, ids) = keys_of(&[&s]);
        env.verify("targets", &keys, &ids, 1).unwrap();
        assert_eq!(
            canonical::to_canonical(&serde_json::to_value(&t).unwrap()).unwrap(),
            env.canonical_signed
        );
    }
    for (field, bad) in [
        ("hashes", json!({})),
        ("length", json!("1")),
        ("hashes", json!({"sha256": 1})),
    ] {
        targets["targets"]["dir/\"q\".bin"][field] = bad;
        let doc = sign_role(&targets, &[&s]).unwrap();
        for env in [
            Envelope::parse(&doc, "targets").unwrap(),
            Envelope::parse_tree(&doc, "targets").unwrap(),
        ] {
            let e = env.typed::<Targets>("targets").unwrap_err();
            assert_eq!(e.rule(), "malformed");
            assert!(e.to_string().contains("dir/\\\"q\\\".bin"), "{e}");
        }
        targets["targets"]["dir/\"q\".bin"] = entry(2);
    }
}
