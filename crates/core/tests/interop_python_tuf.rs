//! Interoperability with python-tuf (PyPI `tuf` 7.0.1), in both directions.
//!
//! * python-tuf → Rampart: every case under `crates/core/tests/fixtures/python-tuf/` was written by
//!   `tests/interop/make_fixtures.py` with python-tuf's Metadata API. Each is run through
//!   [`Client`] (refresh, then the lookups of its `expect.json`), and the outcome must be the
//!   one `expect.json` names. Every metadata file must also survive a parse / re-serialise
//!   round trip byte for byte (canonical form), unknown fields included.
//! * Rampart → python-tuf: [`rampart_signed_repository_for_python_tuf`] writes a repository
//!   signed by rampart-core to `target/interop/rampart-repo`, which
//!   `tests/interop/verify_rampart.py` then checks with python-tuf's `ngclient.Updater`.
//!
//! * `path-patterns.json` holds python-tuf's verdicts for a grid of delegation path patterns
//!   and paths; rampart-core's `is_delegated_path` must agree with each.
//!
//! `scripts/test` runs the fixture script before `cargo test` and the verifier after it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use rampart_core::canonical::to_canonical_from;
use rampart_core::client::{metadata_file_name, target_url_path, Action, Client, Config, Fetched};
use rampart_core::hash::{compute_hashes, verify_bytes};
use rampart_core::key::{KeyId, KeyScheme};
use rampart_core::metadata::{
    add_signatures, is_delegated_path, sign_role, DelegatedRole, Delegations, Envelope, Expiry,
    MetaFile, RoleKeys, Root, Snapshot, TargetFile, Targets, Timestamp, HARDWARE_IDS_FIELD,
    SPEC_VERSION,
};
use rampart_core::signer::{InMemorySigner, Signer};

/// Files by path relative to a base directory (`/`-separated).
type Files = BTreeMap<String, Vec<u8>>;

/// The committed fixtures, or those in `RAMPART_PYTHON_TUF_FIXTURES` (scripts/test makes
/// fresh ones there, outside the work tree).
fn fixtures_dir() -> PathBuf {
    std::env::var_os("RAMPART_PYTHON_TUF_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/python-tuf"))
}

/// Every case directory (one with an `expect.json`); fails if there is none.
fn cases() -> Vec<PathBuf> {
    let dir = fixtures_dir();
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; generate it with tests/interop/make_fixtures.py",
            dir.display()
        )
    });
    let mut out: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("expect.json").is_file())
        .collect();
    out.sort();
    assert!(
        !out.is_empty(),
        "no python-tuf fixture cases in {}; generate them with tests/interop/make_fixtures.py",
        dir.display()
    );
    out
}

/// All files under `dir`, recursively, keyed by their `/`-separated relative path. A missing
/// `dir` is an empty tree: git does not track empty folders, so a case whose repository has
/// no target files arrives in a clean clone without its `targets/` folder.
fn read_tree(dir: &Path) -> Files {
    if !dir.exists() {
        return Files::new();
    }
    fn walk(base: &Path, dir: &Path, out: &mut Files) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                let rel = path.strip_prefix(base).unwrap();
                let rel: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_str().unwrap().to_owned())
                    .collect();
                out.insert(rel.join("/"), fs::read(&path).unwrap());
            }
        }
    }
    let mut out = Files::new();
    walk(dir, dir, &mut out);
    out
}

fn case_name(dir: &Path) -> String {
    dir.file_name().unwrap().to_string_lossy().into_owned()
}

/// `3.root.json` → `root.json`, `1.a%20b.json` → `a%20b.json`, `timestamp.json` unchanged.
fn unversioned(path: &str) -> &str {
    match path.split_once('.') {
        Some((n, rest)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => rest,
        _ => path,
    }
}

/// What one run of the state machine did.
#[derive(Debug, Default)]
struct Trace {
    fetched: Vec<String>,
    persisted: Vec<String>,
}

/// Why [`drive`] stopped before `Done`.
#[derive(Debug)]
enum Stop {
    /// The client refused something (the verdict under test).
    Refused(rampart_core::Error),
    /// The client broke an invariant this harness checks.
    Harness(String),
}

/// Runs `client` until `Done`: local reads and writes against `local`, fetches against
/// `remote`. Checks that every persisted document is exactly the one just served, under its
/// unversioned name.
fn drive(
    client: &mut Client,
    remote: &Files,
    local: &mut Files,
    trace: &mut Trace,
) -> Result<(), Stop> {
    let mut last: Option<(String, Vec<u8>)> = None;
    loop {
        match client.next_action().map_err(Stop::Refused)? {
            Action::ReadLocal { name } => client
                .provide_local(local.get(&name).cloned())
                .map_err(Stop::Refused)?,
            Action::Fetch { path, .. } => {
                trace.fetched.push(path.clone());
                let fetched = match remote.get(&path) {
                    Some(bytes) => {
                        last = Some((path.clone(), bytes.clone()));
                        Fetched::Bytes(bytes.clone())
                    }
                    None => Fetched::NotFound,
                };
                client
                    .provide_fetched(&path, fetched)
                    .map_err(Stop::Refused)?;
            }
            Action::Persist { name, bytes } => {
                let Some((path, served)) = &last else {
                    return Err(Stop::Harness(format!("persist of {name} before any fetch")));
                };
                if name != unversioned(path) {
                    return Err(Stop::Harness(format!(
                        "persisted {name} after fetching {path}"
                    )));
                }
                if bytes != *served {
                    return Err(Stop::Harness(format!(
                        "persisted {name} differs from served {path}"
                    )));
                }
                trace.persisted.push(name.clone());
                local.insert(name, bytes);
            }
            Action::Remove { name } => {
                local.remove(&name);
            }
            Action::Done => return Ok(()),
        }
    }
}

fn str_field<'a>(v: &'a Value, key: &str) -> Result<&'a str, String> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("expect.json: missing string {key:?} in {v}"))
}

/// Runs one lookup of `expect.json` on a refreshed client; `Ok(true)` if the target was found
/// (and its bytes, served under the consistent-snapshot name, verified).
fn check_lookup(
    client: &mut Client,
    lookup: &Value,
    remote: &Files,
    targets: &Files,
    local: &mut Files,
    trace: &mut Trace,
) -> Result<bool, String> {
    let target = str_field(lookup, "target")?;
    client
        .start_lookup(target, None)
        .map_err(|e| format!("start_lookup {target}: {e}"))?;
    let outcome = drive(client, remote, local, trace);
    match (lookup.get("found_in").and_then(Value::as_str), outcome) {
        (Some(role), Ok(())) => {
            let info = client
                .found_target()
                .ok_or(format!("{target:?}: lookup done but nothing found"))?;
            if info.role != role || info.path != target {
                return Err(format!(
                    "{target:?} found as {:?} in {}, expected in {role}",
                    info.path, info.role
                ));
            }
            let consistent = client.trusted().root().signed.consistent_snapshot();
            let url = target_url_path(info, consistent);
            let bytes = targets
                .get(&url)
                .ok_or(format!("{target:?}: target file {url:?} not served"))?;
            verify_bytes(
                target,
                bytes,
                Some(info.file.length),
                Some(&info.file.hashes),
            )
            .map_err(|e| format!("{target:?}: downloaded bytes: {e}"))?;
            Ok(true)
        }
        (None, Err(Stop::Refused(e))) => {
            let rule = str_field(lookup, "rule")?;
            if e.rule() != rule {
                return Err(format!(
                    "lookup {target:?}: {} ({e}), expected {rule}",
                    e.rule()
                ));
            }
            Ok(false)
        }
        (_, Err(Stop::Harness(msg))) => Err(msg),
        (Some(role), Err(Stop::Refused(e))) => Err(format!(
            "lookup {target:?}: {} ({e}), expected found in {role}",
            e.rule()
        )),
        (None, Ok(())) => {
            let role = client.found_target().map(|i| i.role.clone());
            Err(format!(
                "lookup {target:?} found it in {role:?}, expected {}",
                lookup["rule"]
            ))
        }
    }
}

/// Runs one case; returns a one-line summary or what went wrong.
fn run_case(dir: &Path) -> Result<String, String> {
    let expect: Value = serde_json::from_slice(&fs::read(dir.join("expect.json")).unwrap())
        .map_err(|e| format!("expect.json: {e}"))?;
    let remote = read_tree(&dir.join("metadata"));
    let targets = read_tree(&dir.join("targets"));
    let now: DateTime<Utc> = DateTime::parse_from_rfc3339(str_field(&expect, "reference_time")?)
        .map_err(|e| format!("reference_time: {e}"))?
        .with_timezone(&Utc);
    let trusted_root = remote
        .get(str_field(&expect, "trusted_root")?)
        .ok_or("trusted root file missing")?;

    let mut client = Client::new("python-tuf", trusted_root, now, Config::default())
        .map_err(|e| format!("trusted root refused: {e}"))?;
    let mut local = Files::new();
    let mut trace = Trace::default();
    client.start_refresh();
    let refresh = drive(&mut client, &remote, &mut local, &mut trace);
    match (str_field(&expect, "refresh")?, refresh) {
        ("ok", Ok(())) => {}
        ("error", Err(Stop::Refused(e))) => {
            let rule = str_field(&expect, "rule")?;
            if e.rule() != rule {
                return Err(format!(
                    "refresh failed with {} ({e}), expected {rule}",
                    e.rule()
                ));
            }
            return Ok(format!("refresh refused: {} ({e})", e.rule()));
        }
        (_, Err(Stop::Harness(msg))) => return Err(msg),
        (want, Ok(())) => return Err(format!("refresh succeeded, expected {want} {expect}")),
        (want, Err(Stop::Refused(e))) => {
            return Err(format!(
                "refresh failed with {} ({e}), expected {want}",
                e.rule()
            ))
        }
    }
    let root_version = client.trusted().root().signed.version;
    if let Some(v) = expect.get("root_version").and_then(Value::as_u64) {
        if root_version != v {
            return Err(format!("trusted root version {root_version}, expected {v}"));
        }
    }
    let lookups = expect["lookups"].as_array().ok_or("lookups not a list")?;
    let mut found = 0;
    let mut lookup_failures = Vec::new();
    for lookup in lookups {
        match check_lookup(
            &mut client,
            lookup,
            &remote,
            &targets,
            &mut local,
            &mut trace,
        ) {
            Ok(true) => found += 1,
            Ok(false) => {}
            Err(why) => lookup_failures.push(why),
        }
    }
    if !lookup_failures.is_empty() {
        return Err(lookup_failures.join("; "));
    }

    // A second client, started from what the first persisted, needs nothing but the root
    // probe and the timestamp: the persisted bytes are valid trusted metadata.
    let persisted_root = local
        .get("root.json")
        .cloned()
        .unwrap_or_else(|| trusted_root.clone());
    let mut again = Client::new("python-tuf", &persisted_root, now, Config::default())
        .map_err(|e| format!("persisted root refused: {e}"))?;
    let mut trace2 = Trace::default();
    again.start_refresh();
    drive(&mut again, &remote, &mut local, &mut trace2)
        .map_err(|e| format!("second refresh from persisted state failed: {e:?}"))?;
    let expected_fetches = [
        format!("{}.root.json", root_version + 1),
        "timestamp.json".into(),
    ];
    if trace2.fetched != expected_fetches || !trace2.persisted.is_empty() {
        return Err(format!("second refresh did more than needed: {trace2:?}"));
    }
    Ok(format!(
        "refresh ok (root v{root_version}), {} lookups ({found} found and downloaded), {} fetches",
        lookups.len(),
        trace.fetched.len()
    ))
}

/// A clean clone has no empty folders: a case without target files has no `targets/`, and
/// that must read as "no targets", not fail (plain `cargo test` on a fresh checkout).
#[test]
fn a_case_without_a_targets_folder_has_no_targets() {
    let case = fixtures_dir().join("attack-expired-timestamp");
    let empty = std::env::temp_dir().join(format!("rampart-no-targets-{}", std::process::id()));
    assert!(read_tree(&empty.join("targets")).is_empty());
    assert!(!read_tree(&case.join("metadata")).is_empty());
}

#[test]
fn python_tuf_repositories_verify_as_expected() {
    let mut report = String::new();
    let mut failures = 0;
    for dir in cases() {
        match run_case(&dir) {
            Ok(summary) => writeln!(report, "ok   {:36} {summary}", case_name(&dir)).unwrap(),
            Err(why) => {
                failures += 1;
                writeln!(report, "FAIL {:36} {why}", case_name(&dir)).unwrap();
            }
        }
    }
    println!("{report}");
    assert_eq!(failures, 0, "python-tuf interop failures:\n{report}");
}

/// Parses `bytes` as the role its `_type` names and re-serialises it canonically.
fn round_trip(name: &str, bytes: &[u8]) -> Result<(), String> {
    let env = Envelope::parse(bytes, name).map_err(|e| e.to_string())?;
    let canonical = match env.type_field() {
        Some("root") => to_canonical_from(&env.typed::<Root>(name).map_err(|e| e.to_string())?),
        Some("timestamp") => {
            to_canonical_from(&env.typed::<Timestamp>(name).map_err(|e| e.to_string())?)
        }
        Some("snapshot") => {
            to_canonical_from(&env.typed::<Snapshot>(name).map_err(|e| e.to_string())?)
        }
        Some("targets") => {
            to_canonical_from(&env.typed::<Targets>(name).map_err(|e| e.to_string())?)
        }
        other => return Err(format!("unexpected _type {other:?}")),
    }
    .map_err(|e| e.to_string())?;
    if canonical != env.canonical_signed {
        return Err(format!(
            "re-serialised signed part differs:\n  read:  {}\n  wrote: {}",
            String::from_utf8_lossy(&env.canonical_signed),
            String::from_utf8_lossy(&canonical)
        ));
    }
    Ok(())
}

#[test]
fn python_tuf_metadata_round_trips_canonically() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for dir in cases() {
        let files = read_tree(&dir.join("metadata"));
        assert!(!files.is_empty(), "{}: no metadata", dir.display());
        // Cases that Rampart must refuse as malformed (e.g. integers beyond 64 bits) must
        // fail to parse somewhere, rather than round-trip.
        let expect: Value =
            serde_json::from_slice(&fs::read(dir.join("expect.json")).unwrap()).unwrap();
        let malformed_expected = expect["refresh"] == "error" && expect["rule"] == "malformed";
        let mut malformed_seen = false;
        for (name, bytes) in files {
            checked += 1;
            match round_trip(&name, &bytes) {
                Err(why) if malformed_expected && why.contains("malformed") => {
                    malformed_seen = true
                }
                Err(why) => failures.push(format!("{}/{name}: {why}", case_name(&dir))),
                Ok(()) => {}
            }
        }
        if malformed_expected && !malformed_seen {
            failures.push(format!(
                "{}: expected a malformed file, all parsed",
                case_name(&dir)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    println!("{checked} metadata files round-trip canonically");
}

#[test]
fn python_tuf_path_pattern_verdicts_agree() {
    let path = fixtures_dir().join("path-patterns.json");
    let doc: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    let verdicts = doc["verdicts"].as_array().unwrap();
    assert!(!verdicts.is_empty(), "{}: no verdicts", path.display());
    let mut disagreements = Vec::new();
    for v in verdicts {
        let pattern = v[0].as_str().unwrap();
        let target = v[1].as_str().unwrap();
        let python = v[2].as_bool().unwrap();
        let rampart = is_delegated_path(Some(&[pattern.to_owned()]), None, target);
        if rampart != python {
            disagreements.push(format!(
                "pattern {pattern:?} path {target:?}: python-tuf {python}, rampart {rampart}"
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} of {} verdicts differ:\n{}",
        disagreements.len(),
        verdicts.len(),
        disagreements.join("\n")
    );
    println!(
        "{} path-pattern verdicts agree with python-tuf",
        verdicts.len()
    );
}

// ---------------------------------------------------------------------------------------
// Rampart → python-tuf
// ---------------------------------------------------------------------------------------

fn far() -> Expiry {
    Expiry::new(
        DateTime::parse_from_rfc3339("2099-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc),
    )
}

fn signer(scheme: KeyScheme) -> InMemorySigner {
    InMemorySigner::generate(scheme).unwrap()
}

fn ids(signers: &[&InMemorySigner]) -> Vec<KeyId> {
    signers.iter().map(|s| s.key_id()).collect()
}

fn target_file(content: &[u8], custom: Option<Value>) -> TargetFile {
    TargetFile {
        length: content.len() as u64,
        hashes: compute_hashes(content),
        custom,
        unrecognized: BTreeMap::new(),
    }
}

fn meta_for(version: u64, bytes: &[u8]) -> MetaFile {
    let mut meta = MetaFile::version_only(version);
    meta.length = Some(bytes.len() as u64);
    meta.hashes = Some(compute_hashes(bytes));
    meta
}

fn unrecognized(key: &str, value: Value) -> BTreeMap<String, Value> {
    BTreeMap::from([(key.to_owned(), value)])
}

#[test]
fn rampart_signed_repository_for_python_tuf() {
    use KeyScheme::{EcdsaP256Sha256 as Ecdsa, Ed25519, RsaPssSha256 as Rsa};

    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/interop/rampart-repo");
    if out.exists() {
        fs::remove_dir_all(&out).unwrap();
    }
    let metadata_dir = out.join("metadata");
    let targets_dir = out.join("targets");
    fs::create_dir_all(&metadata_dir).unwrap();
    fs::create_dir_all(&targets_dir).unwrap();

    let root_ed = signer(Ed25519);
    let root_ec = signer(Ecdsa);
    let root_rsa = signer(Rsa);
    let timestamp_1 = signer(Ed25519);
    let timestamp_2 = signer(Ecdsa);
    let snapshot_key = signer(Ecdsa);
    let targets_key = signer(Rsa);
    let acme_keys = [signer(Ed25519), signer(Ecdsa)];

    let mut metadata = Files::new();
    let mut target_files = Files::new();

    // Root v1: root 2-of-2 (ed25519 + ecdsa), timestamp ed25519, snapshot ecdsa, targets rsa.
    let keys_of = |signers: &[&InMemorySigner]| {
        signers
            .iter()
            .map(|s| (s.key_id(), s.public_key().clone()))
            .collect::<BTreeMap<_, _>>()
    };
    let mut root = Root {
        type_: "root".into(),
        spec_version: SPEC_VERSION.into(),
        consistent_snapshot: Some(true),
        version: 1,
        expires: far(),
        keys: keys_of(&[
            &root_ed,
            &root_ec,
            &timestamp_1,
            &snapshot_key,
            &targets_key,
        ]),
        roles: BTreeMap::from([
            ("root".into(), RoleKeys::new(ids(&[&root_ed, &root_ec]), 2)),
            ("timestamp".into(), RoleKeys::new(ids(&[&timestamp_1]), 1)),
            ("snapshot".into(), RoleKeys::new(ids(&[&snapshot_key]), 1)),
            ("targets".into(), RoleKeys::new(ids(&[&targets_key]), 1)),
        ]),
        unrecognized: unrecognized("x-rampart", json!({"fleet": "demo", "n": [1, 2]})),
    };
    let root_1 = sign_role(&root, &[&root_ed, &root_ec]).unwrap();
    metadata.insert("1.root.json".into(), root_1.clone());

    // Root v2: root keys ecdsa → rsa (2-of-2 stays), timestamp key rotated. Signed by v1's
    // threshold and v2's; the second signature is added afterwards (offline signing flow).
    root.version = 2;
    root.keys.remove(&root_ec.key_id());
    root.keys.remove(&timestamp_1.key_id());
    root.keys.extend(keys_of(&[&root_rsa, &timestamp_2]));
    root.roles
        .insert("root".into(), RoleKeys::new(ids(&[&root_ed, &root_rsa]), 2));
    root.roles
        .insert("timestamp".into(), RoleKeys::new(ids(&[&timestamp_2]), 1));
    let root_2 = sign_role(&root, &[&root_ed, &root_ec]).unwrap();
    let root_2 = add_signatures(&root_2, &[&root_rsa]).unwrap();
    metadata.insert("2.root.json".into(), root_2);

    // Targets: two targets with custom data, and a delegation (path patterns, hardware_ids
    // extension) to a role whose name needs percent-encoding.
    let mut add_target = |name: &str, content: &[u8], custom: Option<Value>| {
        let file = target_file(content, custom);
        let (dir, base) = match name.rsplit_once('/') {
            Some((d, b)) => (format!("{d}/"), b),
            None => (String::new(), name),
        };
        for digest in file.hashes.values() {
            target_files.insert(format!("{dir}{digest}.{base}"), content.to_vec());
        }
        (name.to_owned(), file)
    };
    let mut top = BTreeMap::from([
        add_target(
            "firmware/ecu-a.bin",
            b"ECU A firmware image\n",
            Some(json!({
                "hardware_ids": ["ecu-a"],
                "release_counter": 7,
                "nested": {"list": [1, -2, {"deep": null}], "empty": {}, "flag": true},
            })),
        ),
        add_target(
            "notes/caf\u{e9} e\u{301}.txt",
            b"non-ASCII name, composed and decomposed\n",
            Some(json!({"note": "quote\" backslash\\ tab\t \u{1F600}", "a": 1, "a!": 2})),
        ),
    ]);
    if let Some(file) = top.get_mut("firmware/ecu-a.bin") {
        file.unrecognized = unrecognized("x-target-extension", json!({"k": [true, null]}));
    }
    let acme_role = "suppliers/acme";
    let acme_targets = BTreeMap::from([add_target(
        "acme/ecu.bin",
        b"supplier image\n",
        Some(json!({"hardware_ids": ["ecu-acme"], "release_counter": 1})),
    )]);
    let targets = Targets {
        type_: "targets".into(),
        spec_version: SPEC_VERSION.into(),
        version: 1,
        expires: far(),
        targets: top.into(),
        delegations: Some(Delegations {
            keys: keys_of(&[&acme_keys[0], &acme_keys[1]]),
            roles: Some(vec![DelegatedRole {
                name: acme_role.into(),
                keyids: ids(&[&acme_keys[0], &acme_keys[1]]),
                threshold: 2,
                terminating: true,
                paths: Some(vec!["acme/*".into(), "acme/v[0-9]/*.bin".into()]),
                path_hash_prefixes: None,
                unrecognized: unrecognized(HARDWARE_IDS_FIELD, json!(["ecu-acme"])),
            }]),
            succinct_roles: None,
            unrecognized: BTreeMap::new(),
        }),
        unrecognized: unrecognized("x-rampart", json!({"release": "2030.1"})),
    };
    let acme = Targets {
        type_: "targets".into(),
        spec_version: SPEC_VERSION.into(),
        version: 3,
        expires: far(),
        targets: acme_targets.into(),
        delegations: None,
        unrecognized: BTreeMap::new(),
    };
    let targets_bytes = sign_role(&targets, &[&targets_key]).unwrap();
    let acme_bytes = sign_role(&acme, &[&acme_keys[0], &acme_keys[1]]).unwrap();
    metadata.insert("1.targets.json".into(), targets_bytes.clone());
    metadata.insert(
        format!("3.{}", metadata_file_name(acme_role)),
        acme_bytes.clone(),
    );

    let snapshot = Snapshot {
        type_: "snapshot".into(),
        spec_version: SPEC_VERSION.into(),
        version: 4,
        expires: far(),
        meta: BTreeMap::from([
            ("targets.json".into(), meta_for(1, &targets_bytes)),
            (format!("{acme_role}.json"), MetaFile::version_only(3)),
        ]),
        unrecognized: BTreeMap::new(),
    };
    let snapshot_bytes = sign_role(&snapshot, &[&snapshot_key]).unwrap();
    metadata.insert("4.snapshot.json".into(), snapshot_bytes.clone());
    let timestamp = Timestamp {
        type_: "timestamp".into(),
        spec_version: SPEC_VERSION.into(),
        version: 5,
        expires: far(),
        meta: BTreeMap::from([("snapshot.json".into(), meta_for(4, &snapshot_bytes))]),
        unrecognized: BTreeMap::new(),
    };
    metadata.insert(
        "timestamp.json".into(),
        sign_role(&timestamp, &[&timestamp_2]).unwrap(),
    );

    for (dir, files) in [(&metadata_dir, &metadata), (&targets_dir, &target_files)] {
        for (rel, bytes) in files {
            let path = dir.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, bytes).unwrap();
        }
    }
    let mut expected_targets = Vec::new();
    for (role, t) in [("targets", &targets), (acme_role, &acme)] {
        for (path, file) in &t.targets {
            expected_targets.push(json!({
                "path": path,
                "role": role,
                "length": file.length,
                "sha256": file.hashes["sha256"],
                "custom": file.custom,
            }));
        }
    }
    let expect = json!({
        "trusted_root": "1.root.json",
        "root_version": 2,
        "roles": ["root", "timestamp", "snapshot", "targets", acme_role],
        "targets": expected_targets,
    });
    fs::write(
        out.join("expect.json"),
        serde_json::to_vec_pretty(&expect).unwrap(),
    )
    .unwrap();

    // Rampart itself must accept what it wrote (read back from disk).
    let remote = read_tree(&metadata_dir);
    let served_targets = read_tree(&targets_dir);
    let now = DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let mut client = Client::new("rampart", &root_1, now, Config::default()).unwrap();
    let mut local = Files::new();
    let mut trace = Trace::default();
    client.start_refresh();
    drive(&mut client, &remote, &mut local, &mut trace).unwrap();
    assert_eq!(client.trusted().root().signed.version, 2);
    for t in expect["targets"].as_array().unwrap() {
        let path = t["path"].as_str().unwrap();
        client.start_lookup(path, None).unwrap();
        drive(&mut client, &remote, &mut local, &mut trace).unwrap();
        let info = client.found_target().unwrap();
        assert_eq!(info.role, t["role"].as_str().unwrap());
        let bytes = &served_targets[&target_url_path(info, true)];
        verify_bytes(path, bytes, Some(info.file.length), Some(&info.file.hashes)).unwrap();
    }
    for (name, bytes) in &remote {
        round_trip(name, bytes).unwrap();
    }
    println!(
        "wrote {} metadata and {} target files to {}",
        metadata.len(),
        target_files.len(),
        out.display()
    );
}
