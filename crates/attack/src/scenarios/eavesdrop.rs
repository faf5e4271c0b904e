//! Eavesdropping: the attacker reads everything that crosses the network between the vehicle
//! and the server (and the public image mirror), and also sits on the in-vehicle link
//! between the primary and the IVI. It wants the IVI's firmware in the clear (to reverse it,
//! to find vulnerabilities, to copy it).
//!
//! The scenario publishes a new IVI image with a recognisable plaintext, encrypted for the
//! IVI, runs a cycle, and shows that what the attacker captured — the HTTP response served to
//! the vehicle, the image chunks on the in-vehicle link, the file in the public mirror — is
//! ciphertext with no run of the plaintext in it; that the wrapped content key in the
//! director's metadata does not open with any other X25519 key; and that the IVI, and only
//! the IVI, turned it back into exactly the published plaintext.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use rampart_core::encryption::{decrypt_all, unwrap_key, EcuKeyPair, MAGIC};
use rampart_core::metadata::{Envelope, Targets};
use rampart_core::uptane::{DirectorCustom, EncryptedImage};
use rampart_vehicle::protocol::Kind;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};

use crate::harness::active_slot;
use crate::{Findings, Harness, Info};

/// Description.
pub(super) const INFO: Info = Info {
    name: "eavesdrop",
    attack: "eavesdropping",
    attacker: "passive listener on the cellular/Internet link (sees every request and response), read access to the public image mirror, and a passive tap on the in-vehicle link to the IVI; no ECU keys",
    control: "per-ECU image encryption: the image is published only as STREAM AES-256-GCM ciphertext under a random content key, and the director wraps that key (X25519 + HKDF + AES-GCM) for the target ECU's own key in its signed targets; the primary forwards ciphertext and only the ECU decrypts, while it writes its slot",
    expected: "defeated: the bytes on the wire, on the in-vehicle link and in the mirror are ciphertext with no 16-byte run of the plaintext; the wrapped key does not open with another X25519 key; the IVI installs exactly the published plaintext. Passive, so there is nothing for the vehicle to notice",
};

const TARGET: &str = "ivi/app-2.0.bin";
/// A window this long of the plaintext found in captured bytes counts as a leak.
const RUN: usize = 16;
const MARKER: &str = "CONFIDENTIAL";

/// A recognisable plaintext: text a reverse engineer would love to read.
fn secret_image(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 128);
    let mut i = 0u32;
    while out.len() < len {
        out.extend_from_slice(
            format!(
                "IVI navigation app 2.0 | {MARKER} map tile {i:06} | debug password hunter2 | do not disclose\n"
            )
            .as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

/// Every `RUN`-byte window of `plain`.
fn windows(plain: &[u8]) -> HashSet<&[u8]> {
    plain.windows(RUN).collect()
}

/// Offset of the first `RUN`-byte window of `hay` that also occurs in the plaintext.
fn leak(hay: &[u8], plain: &HashSet<&[u8]>) -> Option<usize> {
    hay.windows(RUN).position(|w| plain.contains(w))
}

fn describe_leak(what: &str, hay: &[u8], plain: &HashSet<&[u8]>) -> (bool, String) {
    match leak(hay, plain) {
        None => (
            true,
            format!(
                "{what}: {} bytes, no {RUN}-byte run of the plaintext, {MARKER:?} absent",
                hay.len()
            ),
        ),
        Some(at) => (
            false,
            format!("{what}: a run of the plaintext at offset {at}"),
        ),
    }
}

fn sha_hex(b: &[u8]) -> String {
    hex::encode(rampart_core::hash::sha256(b))
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// A passive tap on the in-vehicle link: relays every frame unchanged and keeps a copy of
/// the image bytes it saw.
struct Sniffer {
    address: String,
    image: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sniffer {
    async fn start(ecu: &str) -> anyhow::Result<Sniffer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let image = Arc::new(Mutex::new(Vec::new()));
        let (ecu, seen) = (ecu.to_owned(), image.clone());
        let task = tokio::spawn(async move {
            while let Ok((primary, _)) = listener.accept().await {
                let (ecu, seen) = (ecu.clone(), seen.clone());
                tokio::spawn(async move {
                    let _ = relay(primary, &ecu, seen).await;
                });
            }
        });
        Ok(Sniffer {
            address,
            image,
            task,
        })
    }

    fn image(&self) -> Vec<u8> {
        self.image.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

async fn relay(primary: TcpStream, ecu: &str, seen: Arc<Mutex<Vec<u8>>>) -> anyhow::Result<()> {
    let to_ecu = TcpStream::connect(ecu).await?;
    crate::bus::relay_frames(primary, to_ecu, |frame| {
        if frame.kind == Kind::ImageChunk {
            if let Ok(mut s) = seen.lock() {
                s.extend_from_slice(&frame.payload);
            }
        }
    })
    .await;
    Ok(())
}

/// Runs it.
pub(super) async fn run(h: Harness) -> anyhow::Result<Findings> {
    let mut h = h;
    let mut f = Findings::default();
    let plain = secret_image(150_000);
    let runs = windows(&plain);
    let ivi = h.ecu_id(1);

    // The release: encrypted for the IVI.
    h.lab.release(TARGET, "ivi-x", "2.0", &plain, true).await?;

    // The attacker listens: on the network (the proxy, forwarding everything) and on the
    // in-vehicle link to the IVI.
    let ivi_address = h
        .lab
        .vehicles
        .first()
        .and_then(|v| v.ecus.get(1))
        .and_then(|e| e.address.clone())
        .context("IVI has no address")?;
    let sniffer = Sniffer::start(&ivi_address).await?;
    if let Some(e) = h.lab.vehicles.first_mut().and_then(|v| v.ecus.get_mut(1)) {
        e.address = Some(sniffer.address.clone());
    }
    h.lab.write_primary_config(0, Some((&h.proxy.url, None)))?;
    h.proxy.clear_log();

    let run = h.cycle().await?;
    let log = h.proxy.log();

    // What crossed the network for the image.
    let image_get = log
        .iter()
        .rfind(|s| s.method == "GET" && s.path.contains("app-2.0.bin") && s.status == 200)
        .cloned();
    let wire = image_get
        .as_ref()
        .and_then(|s| h.proxy.captured(&s.path))
        .unwrap_or_default();
    if let Some(s) = &image_get {
        if !wire.is_empty() {
            f.evidence(format!(
                "network: the proxy captured the image response served to the vehicle: GET {} → {} bytes, sha256 {}…, starts with {:?}",
                s.path,
                wire.len(),
                sha_hex(&wire).get(..12).unwrap_or(""),
                String::from_utf8_lossy(wire.get(..4).unwrap_or_default())
            ));
        }
    }
    let bus = sniffer.image();
    if !bus.is_empty() {
        f.evidence(format!(
            "in-vehicle link: the tap relayed and copied {} bytes of image chunks on their way to {ivi}",
            bus.len()
        ));
    }
    sniffer.task.abort();

    // The director's instruction for the IVI, as it crossed the wire.
    let director_targets = log
        .iter()
        .filter(|s| s.path.contains("/director/") && s.path.ends_with("targets.json"))
        .filter(|s| s.status == 200)
        .filter_map(|s| h.proxy.captured(&s.path))
        .next_back()
        .context("no director targets metadata crossed the wire")?;
    let targets: Targets = Envelope::parse(&director_targets, "targets")?.typed("targets")?;
    let encryption: EncryptedImage = targets
        .targets
        .get(TARGET)
        .and_then(|t| t.custom.clone())
        .and_then(|c| serde_json::from_value::<DirectorCustom>(c).ok())
        .and_then(|c| c.ecus.get(&ivi).and_then(|a| a.encryption.clone()))
        .context("the director's targets have no encryption for the IVI")?;

    // 1. The response on the wire is the signed ciphertext, not the plaintext.
    let (no_run, detail) = describe_leak("image response", &wire, &runs);
    let is_ciphertext = wire.len() as u64 == encryption.ciphertext.length
        && encryption
            .ciphertext
            .hashes
            .get("sha256")
            .map(String::as_str)
            == Some(sha_hex(&wire).as_str())
        && wire.starts_with(&MAGIC)
        && wire != plain;
    f.check(
        "the image crossed the network as ciphertext only",
        is_ciphertext && no_run,
        format!(
            "{detail}; length and sha256 are the signed ciphertext's: {}",
            is_ciphertext
        ),
    );

    // 2. Nothing else on the wire carried the plaintext either.
    let mut leaks = Vec::new();
    let mut scanned = 0usize;
    for s in &log {
        if let Some(body) = h.proxy.captured(&s.path) {
            scanned += 1;
            if leak(&body, &runs).is_some() {
                leaks.push(s.path.clone());
            }
        }
    }
    f.check(
        "no response on the network carried any run of the plaintext",
        leaks.is_empty() && scanned > 0,
        if leaks.is_empty() {
            format!("{scanned} responses of this cycle scanned")
        } else {
            format!("plaintext in {}", leaks.join(", "))
        },
    );

    // 3. The in-vehicle link carried the same ciphertext.
    let (no_run, detail) = describe_leak("image chunks on the in-vehicle link", &bus, &runs);
    f.check(
        "the image crossed the in-vehicle link as ciphertext only",
        no_run && !bus.is_empty() && bus == wire,
        format!(
            "{detail}; identical to the ciphertext on the network: {}",
            bus == wire
        ),
    );

    // 4. The public mirror holds ciphertext only.
    let mut mirror = Vec::new();
    files_under(&h.lab.layout.image_targets(), &mut mirror);
    let plain_sha = sha_hex(&plain);
    let mut copies = Vec::new();
    let mut mirror_leaks = Vec::new();
    for p in &mirror {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.contains("app-2.0.bin") {
            copies.push(name.clone());
        }
        let bytes = std::fs::read(p).unwrap_or_default();
        if name.contains(&plain_sha) || leak(&bytes, &runs).is_some() {
            mirror_leaks.push(name);
        }
    }
    let only_enc = !copies.is_empty() && copies.iter().all(|n| n.ends_with(".enc"));
    f.check(
        "the public mirror holds the image as ciphertext only",
        only_enc && mirror_leaks.is_empty(),
        if mirror_leaks.is_empty() {
            format!(
                "{} files scanned; copies of {TARGET}: {}",
                mirror.len(),
                copies.join(", ")
            )
        } else {
            format!("plaintext in {}", mirror_leaks.join(", "))
        },
    );

    // 5. The wrapped content key opens with no other X25519 key.
    let mut other_keys = Vec::new();
    for _ in 0..3 {
        let other = EcuKeyPair::generate()?;
        other_keys.push(match unwrap_key(&other, &encryption.key) {
            Ok(_) => "opened".to_owned(),
            Err(e) => e.rule().to_string(),
        });
    }
    f.check(
        "the wrapped key does not open with another ECU's X25519 key",
        other_keys.iter().all(|r| r == "bad-key"),
        format!("3 other X25519 keys: {}", other_keys.join(", ")),
    );

    // 6. Control: with the IVI's own key (which the attacker does not have), the captured
    //    bytes are exactly the image — the checks above looked at the right bytes.
    let ivi_dir = h
        .lab
        .vehicles
        .first()
        .and_then(|v| v.ecus.get(1))
        .map(|e| e.dir.clone())
        .context("no IVI")?;
    let ivi_key = rampart_vehicle::secondary::load_encryption_key(&ivi_dir.join("x25519.hex"))?;
    let (opened, detail) = match unwrap_key(&ivi_key, &encryption.key) {
        Ok(k) => {
            let leaked_key = log.iter().any(|s| {
                h.proxy.captured(&s.path).is_some_and(|b| {
                    String::from_utf8_lossy(&b).contains(&hex::encode(k.as_bytes()))
                        || b.windows(32).any(|w| w == k.as_bytes())
                })
            });
            let decrypted = decrypt_all(&k, &wire).ok();
            (
                decrypted.as_deref() == Some(plain.as_slice()) && !leaked_key,
                format!(
                    "the IVI's key unwraps it and decrypts the captured bytes to the plaintext: {}; the content key itself never crossed the wire: {}",
                    decrypted.as_deref() == Some(plain.as_slice()),
                    !leaked_key
                ),
            )
        }
        Err(e) => (false, format!("the IVI's own key does not open it: {e}")),
    };
    f.check(
        "only the target ECU's key opens the image (control)",
        opened,
        detail,
    );

    // 7. The IVI installed exactly the plaintext.
    let installed = run
        .report
        .as_ref()
        .and_then(|r| r.get("updates"))
        .and_then(Value::as_array)
        .is_some_and(|u| {
            u.iter().any(|u| {
                u.get("target").and_then(Value::as_str) == Some(TARGET)
                    && u.get("status").and_then(Value::as_str) == Some("Installed")
                    && u.get("encrypted") == Some(&Value::Bool(true))
            })
        });
    let (slot_name, slot) = active_slot(&ivi_dir)?;
    f.check(
        "the IVI decrypted and installed exactly the published plaintext",
        run.success && installed && slot_name == TARGET && slot == plain,
        format!(
            "cycle ok: {}, update reported installed encrypted: {installed}; active slot holds {slot_name} ({} bytes, equal to the plaintext: {})",
            run.success,
            slot.len(),
            slot == plain
        ),
    );

    // 8. Nothing on the vehicle outside the IVI holds the plaintext (the primary only ever
    //    had ciphertext).
    let vehicle_dir = h
        .lab
        .vehicles
        .first()
        .map(|v| v.dir.clone())
        .context("no vehicle")?;
    let mut files = Vec::new();
    files_under(&vehicle_dir, &mut files);
    let outside: Vec<String> = files
        .iter()
        .filter(|p| !p.starts_with(&ivi_dir))
        .filter(|p| {
            std::fs::read(p)
                .map(|b| leak(&b, &runs).is_some())
                .unwrap_or(false)
        })
        .map(|p| p.display().to_string())
        .collect();
    f.check(
        "no other part of the vehicle (primary, other ECUs) holds the plaintext",
        outside.is_empty(),
        if outside.is_empty() {
            format!(
                "{} files outside the IVI scanned",
                files.iter().filter(|p| !p.starts_with(&ivi_dir)).count()
            )
        } else {
            outside.join(", ")
        },
    );

    // Trusted state only moved forward.
    let after = h.trust_state().await?;
    h.check_state(&mut f, &after, &[]);
    let view = after.director_view.get(&ivi).cloned().unwrap_or_default();
    f.check(
        "the director sees the IVI on the new image",
        view == TARGET,
        format!("{ivi}: {view}"),
    );
    Ok(f)
}
