//! The PKCS#11 signer against a real token: SoftHSM2 from Debian, in a private token store.
//!
//! `scripts/softhsm-setup DIR` installs SoftHSM2 when it is missing and writes a
//! `softhsm2.conf` whose token directory lives under DIR; this binary points `SOFTHSM2_CONF`
//! at it before the module is first loaded, so nothing global is touched. When SoftHSM2 cannot
//! be installed the tests fail: they never pass by skipping.
//!
//! PKCS#11 modules are initialised once per process, so every test here shares one token store
//! (tokens `rampart` and `rampart-pin`) and uses its own key labels.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use chrono::{Duration, Utc};
use rampart_core::key::{Key, KeyId, KeyScheme};
use rampart_core::metadata::{sign_role, Envelope, Expiry, MetaFile, Timestamp, SPEC_VERSION};
use rampart_core::signer::Signer;
use rampart_server::keys::pkcs11::{Pkcs11Config, Pkcs11Error, Pkcs11Signer};

const TOKEN: &str = "rampart";
/// A second token that is never logged in successfully, for the wrong-PIN test.
const PIN_TOKEN: &str = "rampart-pin";
const PIN: &str = "1234";
const SO_PIN: &str = "5678";

struct SoftHsm {
    module: PathBuf,
    _dir: tempfile::TempDir,
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Installs SoftHSM2 if needed, creates a private token store with two tokens and points
/// `SOFTHSM2_CONF` at it. Runs once per process, before any test loads the module.
fn softhsm() -> &'static SoftHsm {
    static HSM: OnceLock<SoftHsm> = OnceLock::new();
    HSM.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let script = root.join("scripts/softhsm-setup");
        // A static is never dropped, so each run leaves its (small) token store behind under
        // target/tmp; remove those of earlier runs.
        prune_stale_token_stores(Path::new(env!("CARGO_TARGET_TMPDIR")));
        let dir = tempfile::Builder::new()
            .prefix(STORE_PREFIX)
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let out = run(
            Command::new(&script).arg(dir.path()),
            "scripts/softhsm-setup (SoftHSM2 is required for these tests; CI installs Debian's softhsm2 with apt)",
        );
        let vars: BTreeMap<&str, &str> = out
            .lines()
            .filter_map(|l| l.split_once('='))
            .collect();
        let module = PathBuf::from(
            vars.get("SOFTHSM2_MODULE")
                .expect("softhsm-setup printed no SOFTHSM2_MODULE"),
        );
        let conf = *vars
            .get("SOFTHSM2_CONF")
            .expect("softhsm-setup printed no SOFTHSM2_CONF");
        assert!(module.is_file(), "{} is missing", module.display());
        for label in [TOKEN, PIN_TOKEN] {
            run(
                Command::new("softhsm2-util")
                    .env("SOFTHSM2_CONF", conf)
                    .args(["--init-token", "--free", "--label", label])
                    .args(["--pin", PIN, "--so-pin", SO_PIN]),
                "softhsm2-util --init-token",
            );
        }
        // Read by SoftHSM at C_Initialize, which happens after this (the module is loaded by
        // the first signer, and every test calls softhsm() first).
        std::env::set_var("SOFTHSM2_CONF", conf);
        SoftHsm { module, _dir: dir }
    })
}

const STORE_PREFIX: &str = "rampart-softhsm-";

/// Removes token stores of earlier runs (older than an hour, so a concurrent run keeps its own).
fn prune_stale_token_stores(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > std::time::Duration::from_secs(3600));
        if stale
            && entry
                .file_name()
                .to_string_lossy()
                .starts_with(STORE_PREFIX)
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn config(key: &str) -> Pkcs11Config {
    Pkcs11Config {
        module: softhsm().module.clone(),
        token_label: TOKEN.into(),
        pin: PIN.into(),
        key_label: key.into(),
    }
}

fn assert_verifies(signer: &dyn Signer, message: &[u8]) -> Vec<u8> {
    let sig = signer.sign(message).unwrap();
    let keyid = signer.key_id();
    assert_eq!(signer.public_key().key_id().unwrap(), keyid);
    let public = signer.public_key().parse(&keyid).unwrap();
    assert!(public.verify(message, &sig), "signature does not verify");
    assert!(!public.verify(b"another message", &sig));
    sig
}

#[test]
fn generated_ed25519_key_signs_and_rampart_core_verifies() {
    let signer = Pkcs11Signer::generate(&config("ed25519-sign"), KeyScheme::Ed25519).unwrap();
    assert_eq!(signer.scheme(), KeyScheme::Ed25519);
    let key = signer.public_key();
    assert_eq!(
        (key.keytype.as_str(), key.scheme.as_str()),
        ("ed25519", "ed25519")
    );
    assert_eq!(key.keyval.public.len(), 64, "32 bytes, hex");
    let sig = assert_verifies(&signer, b"canonical json bytes");
    assert_eq!(sig.len(), 64);
    // Ed25519 is deterministic.
    assert_eq!(signer.sign(b"canonical json bytes").unwrap(), sig);
}

#[test]
fn generated_p256_key_makes_der_signatures_rampart_core_verifies() {
    let signer = Pkcs11Signer::generate(&config("p256-sign"), KeyScheme::EcdsaP256Sha256).unwrap();
    assert_eq!(signer.scheme(), KeyScheme::EcdsaP256Sha256);
    let key = signer.public_key();
    assert_eq!(
        (key.keytype.as_str(), key.scheme.as_str()),
        ("ecdsa", "ecdsa-sha2-nistp256")
    );
    assert!(key
        .keyval
        .public
        .starts_with("-----BEGIN PUBLIC KEY-----\n"));
    for i in 0..50u32 {
        let message = format!("message {i}");
        let sig = assert_verifies(&signer, message.as_bytes());
        assert_eq!(sig.first(), Some(&0x30), "DER SEQUENCE");
        assert!((8..=72).contains(&sig.len()), "{} bytes", sig.len());
    }
}

#[test]
fn hsm_signers_sign_timestamp_metadata_that_envelope_verify_accepts() {
    let ed = Pkcs11Signer::generate(&config("timestamp-ed25519"), KeyScheme::Ed25519).unwrap();
    let ec = Pkcs11Signer::generate(&config("timestamp-p256"), KeyScheme::EcdsaP256Sha256).unwrap();
    let timestamp = Timestamp {
        type_: "timestamp".into(),
        spec_version: SPEC_VERSION.into(),
        version: 7,
        expires: Expiry::new(Utc::now() + Duration::days(1)),
        meta: BTreeMap::from([("snapshot.json".to_owned(), MetaFile::version_only(3))]),
        unrecognized: BTreeMap::new(),
    };
    let signers: [&dyn Signer; 2] = [&ed, &ec];
    let bytes = sign_role(&timestamp, &signers).unwrap();

    let keys: BTreeMap<KeyId, Key> = signers
        .iter()
        .map(|s| (s.key_id(), s.public_key().clone()))
        .collect();
    let keyids: Vec<KeyId> = keys.keys().cloned().collect();
    let envelope = Envelope::parse(&bytes, "timestamp").unwrap();
    envelope.verify("timestamp", &keys, &keyids, 2).unwrap();
    let parsed: Timestamp = envelope.typed("timestamp").unwrap();
    assert_eq!(parsed, timestamp);
    assert_eq!(parsed.snapshot_meta().unwrap().version, 3);

    // Each key alone meets a threshold of one, and a tampered document meets none.
    for keyid in &keyids {
        envelope
            .verify("timestamp", &keys, std::slice::from_ref(keyid), 1)
            .unwrap();
    }
    let tampered = String::from_utf8(bytes)
        .unwrap()
        .replace("\"version\": 7", "\"version\": 8");
    let envelope = Envelope::parse(tampered.as_bytes(), "timestamp").unwrap();
    let err = envelope.verify("timestamp", &keys, &keyids, 1).unwrap_err();
    assert_eq!(err.rule(), "threshold");
}

#[test]
fn reopening_a_key_by_label_gives_the_same_key_id() {
    for (label, scheme) in [
        ("reopen-ed25519", KeyScheme::Ed25519),
        ("reopen-p256", KeyScheme::EcdsaP256Sha256),
    ] {
        let generated = Pkcs11Signer::generate(&config(label), scheme).unwrap();
        let generated_id = generated.key_id();
        let generated_key = generated.public_key().clone();
        drop(generated);
        let opened = Pkcs11Signer::open(&config(label)).unwrap();
        assert_eq!(opened.key_id(), generated_id, "{label}");
        assert_eq!(opened.public_key(), &generated_key, "{label}");
        assert_eq!(opened.scheme(), scheme);
        assert_eq!(opened.key_label(), label);
        assert_eq!(opened.token_label(), TOKEN);
        assert_verifies(&opened, b"after reopening");
    }
}

/// An RFC 7512 URI, the PIN read from an environment variable, opens the key on the token.
#[test]
fn an_rfc7512_uri_opens_a_key() {
    let generated =
        Pkcs11Signer::generate(&config("from-rfc7512-uri"), KeyScheme::Ed25519).unwrap();
    let uri = format!(
        "pkcs11:token={TOKEN};object=from-rfc7512-uri;type=private?module-path={}&pin-source=env:RAMPART_TEST_HSM_PIN",
        softhsm().module.display()
    );
    let parsed = Pkcs11Config::parse_with_env(&uri, |v| {
        (v == "RAMPART_TEST_HSM_PIN").then(|| PIN.to_owned())
    })
    .unwrap();
    assert_eq!(parsed, config("from-rfc7512-uri"));
    let opened = Pkcs11Signer::open(&parsed).unwrap();
    assert_eq!(opened.key_id(), generated.key_id());
}

/// The earlier compact form still opens the key (with a deprecation warning).
#[test]
fn the_compact_config_string_opens_a_key() {
    let generated =
        Pkcs11Signer::generate(&config("from-config-string"), KeyScheme::Ed25519).unwrap();
    let uri = format!(
        "pkcs11:module={};token={TOKEN};key=from-config-string;pin={PIN}",
        softhsm().module.display()
    );
    let parsed: Pkcs11Config = uri.parse().unwrap();
    assert_eq!(parsed, config("from-config-string"));
    let opened = Pkcs11Signer::open(&parsed).unwrap();
    assert_eq!(opened.key_id(), generated.key_id());
}

#[test]
fn wrong_pin_is_a_clear_login_error() {
    softhsm();
    let mut wrong = config("any-key");
    wrong.token_label = PIN_TOKEN.into();
    wrong.pin = "9999".into();
    let err = Pkcs11Signer::open(&wrong).unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert!(matches!(err, Pkcs11Error::LoginFailed { .. }), "{msg}");
    assert!(
        msg.contains("login to token \"rampart-pin\" failed"),
        "{msg}"
    );
    assert!(msg.contains("CKR_PIN_INCORRECT"), "{msg}");
    assert!(!msg.contains("9999"), "the PIN leaked: {msg}");
    let err = Pkcs11Signer::generate(&wrong, KeyScheme::Ed25519).unwrap_err();
    assert!(matches!(err, Pkcs11Error::LoginFailed { .. }), "{err}");
}

#[test]
fn wrong_pin_is_refused_while_the_token_is_logged_in() {
    // PKCS#11 logs the whole process in: without its own check the second open would succeed.
    let good = Pkcs11Signer::generate(&config("logged-in"), KeyScheme::Ed25519).unwrap();
    let mut wrong = config("logged-in");
    wrong.pin = "4321".into();
    let err = Pkcs11Signer::open(&wrong).unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert!(matches!(err, Pkcs11Error::LoginFailed { .. }), "{msg}");
    assert!(msg.contains("PIN incorrect"), "{msg}");
    // The good signer is unaffected.
    assert_verifies(&good, b"still signing");
}

#[test]
fn unknown_key_label_is_a_clear_error() {
    let err = Pkcs11Signer::open(&config("no-such-key")).unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert!(matches!(err, Pkcs11Error::KeyNotFound { .. }), "{msg}");
    assert_eq!(
        msg,
        "PKCS#11 key not found: no private key labelled \"no-such-key\" on token \"rampart\""
    );
    // Through rampart-core's error type, as Signer users see it.
    let core: rampart_core::Error = err.into();
    assert!(core.to_string().contains("no-such-key"), "{core}");
}

#[test]
fn unknown_token_label_is_a_clear_error() {
    let mut c = config("any-key");
    c.token_label = "no-such-token".into();
    let err = Pkcs11Signer::open(&c).unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert!(matches!(err, Pkcs11Error::TokenNotFound { .. }), "{msg}");
    assert!(msg.contains("\"no-such-token\" not found"), "{msg}");
    assert!(
        msg.contains("\"rampart\""),
        "lists the tokens present: {msg}"
    );
}

#[test]
fn missing_module_is_a_clear_error() {
    let mut c = config("any-key");
    c.module = "/nonexistent/libpkcs11.so".into();
    let err = Pkcs11Signer::open(&c).unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert!(matches!(err, Pkcs11Error::ModuleLoad { .. }), "{msg}");
    assert!(msg.contains("/nonexistent/libpkcs11.so"), "{msg}");
}

#[test]
fn generating_over_an_existing_label_is_refused() {
    let first = Pkcs11Signer::generate(&config("taken"), KeyScheme::Ed25519).unwrap();
    let err = Pkcs11Signer::generate(&config("taken"), KeyScheme::EcdsaP256Sha256).unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert!(matches!(err, Pkcs11Error::Generate { .. }), "{msg}");
    assert!(msg.contains("already exists"), "{msg}");
    // The original key is still the one found by label.
    let reopened = Pkcs11Signer::open(&config("taken")).unwrap();
    assert_eq!(reopened.key_id(), first.key_id());
}

#[test]
fn rsa_keys_are_refused_with_a_clear_error() {
    let err = Pkcs11Signer::generate(&config("rsa"), KeyScheme::RsaPssSha256).unwrap_err();
    assert!(
        err.to_string()
            .contains("rsassa-pss-sha256 is not supported"),
        "{err}"
    );
}

#[test]
fn one_signer_signs_from_many_threads() {
    let signer =
        Arc::new(Pkcs11Signer::generate(&config("threads"), KeyScheme::EcdsaP256Sha256).unwrap());
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let signer = Arc::clone(&signer);
            std::thread::spawn(move || {
                for i in 0..10 {
                    assert_verifies(
                        signer.as_ref(),
                        format!("thread {t} message {i}").as_bytes(),
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn an_online_key_rotated_into_the_hsm_signs_what_the_server_serves() {
    use rampart_server::ceremony::{self, CeremonyOptions};
    use rampart_server::layout::Layout;
    use rampart_server::ops::{self, Which};
    use rampart_server::serve::{self, ServeOptions};

    let hsm = softhsm();
    let data = tempfile::tempdir().unwrap();
    let layout = Layout::new(data.path());
    let options = CeremonyOptions {
        listen: "127.0.0.1:0".into(),
        tls: false,
        ..CeremonyOptions::default()
    };
    ceremony::init(&layout, &options, Utc::now()).unwrap();
    let label = format!("server-timestamp-{}", std::process::id());
    let spec = format!(
        "pkcs11:token={TOKEN};object={label};type=private?module-path={}&pin-value={PIN}",
        hsm.module.display()
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let out = ops::rotate_into(&layout, Which::Image, "timestamp", &spec, Utc::now())
            .await
            .unwrap();
        assert_eq!(out.root_version, 2);
        let config = rampart_server::config::Config::load(&layout).unwrap();
        assert_eq!(config.online_keys.image_timestamp, spec);

        // The server loads the HSM key from its configuration and serves what it signed.
        let mut opts = ServeOptions::new(layout.clone());
        opts.danger_plain_http = true;
        let server = serve::start(opts).await.unwrap();
        let body = reqwest::get(format!("{}image/metadata/timestamp.json", server.url()))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let hsm_key = Pkcs11Signer::open(&config_for(&hsm.module, &label)).unwrap();
        let env = Envelope::parse(&body, "timestamp").unwrap();
        assert_eq!(env.signatures.len(), 1);
        assert_eq!(env.signatures[0].keyid, hsm_key.key_id());

        // A client that trusts root v1 follows the rotation and accepts the HSM's timestamp.
        let root1 = std::fs::read(layout.image_metadata().join("1.root.json")).unwrap();
        let root2 = std::fs::read(layout.image_metadata().join("2.root.json")).unwrap();
        let mut trusted =
            rampart_core::trusted::TrustedSet::new("image", &root1, Utc::now()).unwrap();
        trusted.update_root(&root2).unwrap();
        trusted.update_timestamp(&body).unwrap();
        server.stop().await.unwrap();
    });
}

fn config_for(module: &Path, label: &str) -> Pkcs11Config {
    Pkcs11Config {
        module: module.to_path_buf(),
        token_label: TOKEN.into(),
        pin: PIN.into(),
        key_label: label.into(),
    }
}

/// An AES-256 key generated on the token seals and opens content keys (bound to their
/// target), reopens by label, and is never generated twice under one label.
#[test]
fn aes_kek_on_the_token_seals_and_opens_content_keys() {
    use rampart_server::keys::kek::ContentKek;
    use rampart_server::keys::pkcs11::Pkcs11AesKey;

    let hsm = softhsm();
    let label = format!("kek-{}", std::process::id());
    let spec = format!(
        "pkcs11:module={};token={TOKEN};key={label};pin={PIN}",
        hsm.module.display()
    );
    let kek = ContentKek::generate_pkcs11(&spec).unwrap();
    let key = [9u8; 32];
    let sealed = kek.seal("ivi/app.bin", &key).unwrap();
    assert!(ContentKek::is_sealed(&sealed));
    assert!(!sealed.contains(&hex::encode(key)));
    assert_eq!(kek.open("ivi/app.bin", &sealed).unwrap(), key);
    assert!(
        kek.open("ivi/other.bin", &sealed).is_err(),
        "bound to the target"
    );
    let reopened = ContentKek::open_pkcs11(&spec).unwrap();
    assert_eq!(reopened.open("ivi/app.bin", &sealed).unwrap(), key);
    assert!(Pkcs11AesKey::generate(&config_for(&hsm.module, &label)).is_err());
    let missing = format!(
        "pkcs11:module={};token={TOKEN};key=no-such-kek;pin={PIN}",
        hsm.module.display()
    );
    assert!(ContentKek::open_pkcs11(&missing).is_err());
}

/// `rotate_content_kek` moves the stored content keys from the KEK file into a key generated
/// on the token; the configuration names the token, and the server starts with it.
#[test]
fn the_content_kek_moves_into_the_hsm_and_the_server_uses_it() {
    use rampart_core::encryption::{decrypt_all, ContentKey};
    use rampart_server::ceremony::{self, CeremonyOptions};
    use rampart_server::config::Config;
    use rampart_server::db::Db;
    use rampart_server::layout::Layout;
    use rampart_server::ops::{self, PublishRequest};
    use rampart_server::serve::{self, ServeOptions};

    let hsm = softhsm();
    let data = tempfile::tempdir().unwrap();
    let layout = Layout::new(data.path().join("data"));
    let options = CeremonyOptions {
        listen: "127.0.0.1:0".into(),
        tls: false,
        ..CeremonyOptions::default()
    };
    ceremony::init(&layout, &options, Utc::now()).unwrap();
    let label = format!("content-kek-{}", std::process::id());
    let spec = format!(
        "pkcs11:module={};token={TOKEN};key={label};pin={PIN}",
        hsm.module.display()
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let file = data.path().join("image.bin");
        std::fs::write(&file, b"navigation maps").unwrap();
        let request = PublishRequest {
            name: Some("ivi/maps.bin".into()),
            release_counter: Some(1),
            encrypt: true,
            ..PublishRequest::new(file, "ivi-hw")
        };
        ops::publish(&layout, &request, Utc::now()).await.unwrap();
        let config = Config::load(&layout).unwrap();
        let db = Db::connect(&config.database_url(&layout)).await.unwrap();
        let before = db.image_key("ivi/maps.bin").await.unwrap().unwrap();

        assert_eq!(ops::rotate_content_kek(&layout, &spec).await.unwrap(), 1);
        let config = Config::load(&layout).unwrap();
        assert_eq!(config.online_keys.content_kek, spec);
        let after = db.image_key("ivi/maps.bin").await.unwrap().unwrap();
        assert_ne!(after.content_key, before.content_key);
        let file_kek =
            rampart_server::keys::kek::ContentKek::load(&layout.online_keys().join("content-kek"))
                .unwrap();
        assert!(file_kek.open("ivi/maps.bin", &after.content_key).is_err());
        let kek = config.content_kek(&layout).unwrap();
        let key =
            ContentKey::from_bytes(&kek.open("ivi/maps.bin", &after.content_key).unwrap()).unwrap();
        let ciphertext =
            std::fs::read(layout.image_targets().join(&after.ciphertext_path)).unwrap();
        assert_eq!(decrypt_all(&key, &ciphertext).unwrap(), b"navigation maps");

        let mut opts = ServeOptions::new(layout.clone());
        opts.danger_plain_http = true;
        let server = serve::start(opts).await.unwrap();
        server.stop().await.unwrap();
    });
}
