//! Power cuts during an ECU's install (issue 11, item 15; DESIGN.md invariant 5): an ECU
//! process (`rampart-agent ecu`) is killed with SIGKILL at a random moment of an
//! installation — while the image streams into the inactive slot, while the slot is read
//! back, while the boot slot switches, during boot counting and the health check — and,
//! in some trials, killed again while it recovers. After every cut:
//!
//! * the boot-control file describes no slot whose bytes are not the image it names (a
//!   partly written slot is never described as a valid image), and the active and last
//!   good slots are described and valid;
//! * the restarted ECU boots and runs either the old or the new image, nothing else;
//! * the install, retried as the primary would, completes and the new image is active.
//!
//! `POWER_CUT_TRIALS` sets the number of trials (default 200), `POWER_CUT_SEED` the seed
//! (printed; by default from the clock), `POWER_CUT_DIR` where the ECUs live (default the
//! system temporary folder), `RAMPART_AGENT` another agent binary (e.g. an older build).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rampart_core::hash::compute_hashes;
use rampart_core::metadata::TargetFile;
use rampart_core::testing::TestRepo;
use rampart_core::uptane::{DirectorCustom, EcuAssignment, InstalledImage, DIRECTOR_VEHICLE_FIELD};
use rampart_vehicle::primary::request_report;
use rampart_vehicle::protocol::{self, InstallBegin, InstallResult, Kind, MetadataBundle};
use rampart_vehicle::secondary::{EcuConfig, LinkLimits};
use rampart_vehicle::slots::{BootControl, Slot};
use tokio::net::TcpStream;

mod common;

use common::{agent, ecu_config, ECU, HW, VIN};
use rampart_vehicle::testing::{env_u64, image_bytes, power_cut_seed, Rng};

const TARGET: &str = "ivi/app-2.bin";
// Several of the direct-I/O slot writer's buffers (`rampart_client::direct::BUFFER`), and not a
// whole number of them, so that cuts find partly written slots as often as empty ones.
const IMAGE_LEN: usize = 1408 * 1024;

fn installed(name: &str, data: &[u8], counter: u64) -> InstalledImage {
    InstalledImage {
        filename: name.into(),
        length: data.len() as u64,
        hashes: compute_hashes(data),
        release_counter: counter,
    }
}

/// The director's side: its root, and signed targets assigning `TARGET` to the ECU.
struct Director {
    root: Vec<u8>,
    bundle: MetadataBundle,
}

fn director(image: &[u8]) -> Director {
    let mut repo = TestRepo::new(chrono::Utc::now());
    let file = TargetFile {
        length: image.len() as u64,
        hashes: compute_hashes(image),
        custom: Some(
            DirectorCustom {
                release_counter: 2,
                maintenance_window: None,
                ecus: BTreeMap::from([(
                    ECU.to_owned(),
                    EcuAssignment {
                        hardware_id: HW.into(),
                        encryption: None,
                        delta: None,
                    },
                )]),
            }
            .to_value(),
        ),
        unrecognized: BTreeMap::new(),
    };
    let targets = repo.targets.get_mut("targets").unwrap();
    targets.targets.insert(TARGET.into(), file);
    targets.unrecognized.insert(
        DIRECTOR_VEHICLE_FIELD.into(),
        serde_json::json!({ "vin": VIN }),
    );
    repo.bump("targets");
    repo.publish();
    let version = repo.targets["targets"].version;
    let name = format!("{version}.targets.json");
    let text = String::from_utf8(repo.metadata[&name].clone()).unwrap();
    Director {
        root: repo.initial_root(),
        bundle: MetadataBundle {
            director: BTreeMap::from([(name, text)]),
            image: BTreeMap::new(),
        },
    }
}

/// What the slots hold before the install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Factory image in A, B never written: the install goes to the empty slot B.
    Fresh,
    /// A runs v1, B holds the factory image: the install overwrites a described slot (B).
    RunningA,
    /// B runs v1, A holds the factory image: the install overwrites a described slot (A).
    RunningB,
}

struct Images {
    factory: Vec<u8>,
    v1: Vec<u8>,
    v2: Vec<u8>,
}

/// One ECU process and its folder.
struct Ecu {
    dir: PathBuf,
    config: EcuConfig,
    child: Option<Child>,
    addr: Option<SocketAddr>,
}

impl Drop for Ecu {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Ecu {
    fn create(dir: &Path, director_root: &[u8], layout: Layout, images: &Images) -> Ecu {
        let mut config = ecu_config(dir, director_root, LinkLimits::default());
        // A slow health check widens the window between the slot switch and the commit, so
        // random cuts land in boot counting too.
        config.slots.health_check = Some("sleep 0.02".into());
        std::fs::write(dir.join("ecu.toml"), toml::to_string(&config).unwrap()).unwrap();
        let factory = installed("factory", &images.factory, 0);
        let v1 = installed("ivi/app-1.bin", &images.v1, 1);
        std::fs::write(dir.join("slot-a"), &images.factory).unwrap();
        let control = match layout {
            Layout::Fresh => None,
            Layout::RunningA => {
                std::fs::write(dir.join("slot-a"), &images.v1).unwrap();
                std::fs::write(dir.join("slot-b"), &images.factory).unwrap();
                Some((Slot::A, Some(v1), Some(factory)))
            }
            Layout::RunningB => {
                std::fs::write(dir.join("slot-b"), &images.v1).unwrap();
                Some((Slot::B, Some(factory), Some(v1)))
            }
        };
        if let Some((active, a, b)) = control {
            let bc = BootControl {
                active,
                last_good: active,
                pending: None,
                a,
                b,
                last_failure: None,
            };
            std::fs::write(
                dir.join("boot-control.json"),
                serde_json::to_vec_pretty(&bc).unwrap(),
            )
            .unwrap();
        }
        Ecu {
            dir: dir.to_owned(),
            config,
            child: None,
            addr: None,
        }
    }

    /// Starts the process (does not wait for it to listen).
    fn spawn(&mut self) {
        assert!(self.child.is_none());
        // A stale address from the previous run must not be taken for the new one.
        let _ = std::fs::remove_file(self.dir.join("state/listen-address"));
        self.addr = None;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("ecu.log"))
            .unwrap();
        let child = Command::new(agent())
            .args(["-v", "ecu", "--config"])
            .arg(self.dir.join("ecu.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Waits until the ECU listens (it boots first: boot counting and the health check).
    fn wait_listening(&mut self) -> SocketAddr {
        let path = self.dir.join("state/listen-address");
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(text) = std::fs::read_to_string(&path) {
                if let Ok(addr) = text.trim().parse() {
                    self.addr = Some(addr);
                    return addr;
                }
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("ECU exited with {status} at start:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!("ECU did not start:\n{}", self.log());
    }

    fn start(&mut self) -> SocketAddr {
        self.spawn();
        self.wait_listening()
    }

    /// SIGKILL: a power cut as far as the process can tell.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.addr = None;
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("ecu.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn boot_control(&self) -> BootControl {
        let bytes = std::fs::read(&self.config.slots.boot_control).unwrap();
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "boot-control.json does not parse ({e}):\n{}",
                String::from_utf8_lossy(&bytes)
            )
        })
    }

    fn slot_path(&self, slot: Slot) -> &Path {
        match slot {
            Slot::A => &self.config.slots.slot_a,
            Slot::B => &self.config.slots.slot_b,
        }
    }
}

/// Invariant 5 on disk: every slot the boot-control file describes holds exactly the image
/// it names; the active and last good slots are described; only a slot on trial is active
/// without being the last good one.
fn check_boot_control(ecu: &Ecu) -> Result<BootControl, String> {
    let bc = ecu.boot_control();
    for slot in [Slot::A, Slot::B] {
        let Some(image) = bc.image(slot) else {
            continue;
        };
        let data = std::fs::read(ecu.slot_path(slot)).unwrap_or_default();
        if data.len() as u64 != image.length || compute_hashes(&data) != image.hashes {
            return Err(format!(
                "slot {slot:?} is described as {} ({} bytes) but holds {} bytes that do not \
                 match it:\n{bc:#?}",
                image.filename,
                image.length,
                data.len()
            ));
        }
    }
    for (what, slot) in [("active", bc.active), ("last good", bc.last_good)] {
        if bc.image(slot).is_none() {
            return Err(format!(
                "the {what} slot {slot:?} describes no image:\n{bc:#?}"
            ));
        }
    }
    match &bc.pending {
        Some(p) if p.slot != bc.active => {
            return Err(format!(
                "slot {:?} on trial is not active:\n{bc:#?}",
                p.slot
            ))
        }
        None if bc.active != bc.last_good => {
            return Err(format!(
                "active slot {:?} is not the last good one and not on trial:\n{bc:#?}",
                bc.active
            ))
        }
        _ => {}
    }
    Ok(bc)
}

/// Acts as the primary: INSTALL_BEGIN with the bundle, the image in chunks, IMAGE_END;
/// after `stop_after` bytes of image (if given) it waits forever with the connection open.
/// Returns the ECU's answer, if any.
async fn send_install(
    addr: SocketAddr,
    bundle: &MetadataBundle,
    image: &[u8],
    stop_after: Option<usize>,
) -> Option<InstallResult> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let begin = InstallBegin {
        target: TARGET.into(),
        bundle: bundle.clone(),
        length: image.len() as u64,
        delta: false,
    };
    protocol::write_json(&mut s, Kind::InstallBegin, &begin)
        .await
        .ok()?;
    let mut sent = 0;
    for chunk in image.chunks(protocol::CHUNK) {
        if stop_after.is_some_and(|n| sent >= n) {
            // Hold the connection open: the cut, not a closed socket, must end the install.
            std::future::pending::<()>().await;
        }
        protocol::write_frame(&mut s, Kind::ImageChunk, chunk)
            .await
            .ok()?;
        sent += chunk.len();
    }
    protocol::write_frame(&mut s, Kind::ImageEnd, &[])
        .await
        .ok()?;
    let frame = tokio::time::timeout(Duration::from_secs(60), protocol::read_frame(&mut s))
        .await
        .ok()?
        .ok()?;
    match frame.kind {
        Kind::InstallResult => protocol::parse_json(&frame).ok(),
        _ => Some(InstallResult {
            ok: false,
            rule: Some(format!("{:?}", frame.kind)),
            message: String::from_utf8_lossy(&frame.payload).into_owned(),
        }),
    }
}

/// Waits (up to 5 s) until the file at `path` is `len` bytes long.
async fn wait_for_length(path: &Path, len: u64) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if std::fs::metadata(path).is_ok_and(|m| m.len() == len) {
            return;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// The image the ECU reports it runs, and the attack indicators it reports.
async fn running(addr: SocketAddr) -> Result<(InstalledImage, String), String> {
    let report = request_report(&addr.to_string(), "00ff")
        .await
        .map_err(|e| format!("no report: {e}"))?;
    let image = serde_json::from_value(report["signed"]["installed_image"].clone())
        .map_err(|e| format!("report without an installed image: {e}"))?;
    let attacks = report["signed"]["attacks_detected"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    Ok((image, attacks))
}

/// Where a cut left the ECU, judged from its disk (for the summary).
#[derive(Debug, Default)]
struct Tally {
    /// Target slot untouched or not yet written.
    before_write: u64,
    /// Target slot partly written (neither its old content nor the new image).
    mid_write: u64,
    /// New image fully in the slot, boot slot not switched.
    written_not_switched: u64,
    /// Switched, on trial (boot counting / health check).
    on_trial: u64,
    /// New image committed.
    committed: u64,
    /// Trials with a second cut during recovery.
    double_cuts: u64,
    /// Rollbacks seen after recovery.
    rolled_back: u64,
    /// Trials where the retry had to install again.
    retried: u64,
}

struct Trial<'a> {
    n: u64,
    director: &'a Director,
    images: &'a Images,
    /// Median duration of an uninterrupted install.
    install: Duration,
    root: &'a Path,
}

impl Trial<'_> {
    async fn run(&self, rng: &mut Rng, tally: &mut Tally) -> Result<(), String> {
        let layout = match rng.below(3) {
            0 => Layout::Fresh,
            1 => Layout::RunningA,
            _ => Layout::RunningB,
        };
        let dir = self.root.join(format!("trial-{}", self.n));
        let mut ecu = Ecu::create(&dir, &self.director.root, layout, self.images);
        let target_slot = match layout {
            Layout::Fresh | Layout::RunningA => Slot::B,
            Layout::RunningB => Slot::A,
        };
        let before = std::fs::read(ecu.slot_path(target_slot)).unwrap_or_default();
        let old = match layout {
            Layout::Fresh => installed("factory", &self.images.factory, 0),
            Layout::RunningA | Layout::RunningB => installed("ivi/app-1.bin", &self.images.v1, 1),
        };
        let addr = ecu.start();
        if running(addr).await?.0 != old {
            return Err("the ECU does not run its old image before the install".into());
        }

        // The cut: at a random byte of the stream (the connection held open), or after a
        // random delay spread over the whole install and a little past it.
        let by_offset = rng.chance(40);
        let offset = rng.below(IMAGE_LEN as u64 + 1) as usize;
        let window = self.install.as_micros() as u64 * 13 / 10;
        let delay = Duration::from_micros(rng.below(window.max(1)));
        let bundle = &self.director.bundle;
        let image = &self.images.v2;
        let mut send = Box::pin(send_install(
            addr,
            bundle,
            image,
            by_offset.then_some(offset),
        ));
        if by_offset {
            // Chunks are whole: the ECU will have received this much when it stalls, and
            // written it — through the page cache, or with direct I/O whole buffers of it
            // (the rest waits in its memory for the next bytes).
            let sent = offset.div_ceil(protocol::CHUNK) * protocol::CHUNK;
            let slot = ecu.slot_path(target_slot).to_owned();
            let granule = match slot.parent() {
                Some(dir) if rampart_client::direct::available_in(dir) => {
                    rampart_client::direct::BUFFER
                }
                _ => 1,
            };
            let written = wait_for_length(&slot, (sent.min(IMAGE_LEN) / granule * granule) as u64);
            let extra = Duration::from_micros(rng.below(1_000));
            tokio::select! {
                _ = &mut send => {}
                _ = async { written.await; tokio::time::sleep(extra).await } => {}
            }
        } else {
            tokio::select! {
                _ = &mut send => {}
                _ = tokio::time::sleep(delay) => {}
            }
        }
        // The connection is still open when the power goes: the ECU must not see the
        // primary hang up first (that is the failed-install path, not a cut).
        ecu.kill();
        drop(send);

        // (a) What the cut left on disk.
        let bc = check_boot_control(&ecu).map_err(|e| format!("after the cut: {e}"))?;
        let slot_now = std::fs::read(ecu.slot_path(target_slot)).unwrap_or_default();
        if bc.pending.is_some() {
            tally.on_trial += 1;
        } else if bc.image(bc.active).is_some_and(|i| i.filename == TARGET) {
            tally.committed += 1;
        } else if slot_now == *image {
            tally.written_not_switched += 1;
        } else if slot_now == before || slot_now.is_empty() {
            tally.before_write += 1;
        } else {
            tally.mid_write += 1;
        }

        // (b) It boots, running the old or the new image; sometimes the power goes again
        // while it recovers (during boot counting and the health check).
        if rng.chance(15) {
            tally.double_cuts += 1;
            ecu.spawn();
            std::thread::sleep(Duration::from_micros(rng.below(40_000)));
            ecu.kill();
            check_boot_control(&ecu).map_err(|e| format!("after a cut in recovery: {e}"))?;
        }
        let addr = ecu.start();
        let (now, attacks) = running(addr).await?;
        let new = installed(TARGET, image, 2);
        if now != old && now != new {
            return Err(format!(
                "after the cut the ECU runs {now:?}, neither the old {old:?} nor the new image"
            ));
        }
        check_boot_control(&ecu).map_err(|e| format!("after restart: {e}"))?;
        if attacks.contains("boot-failed") {
            tally.rolled_back += 1;
        }

        // (c) The primary's retry completes and the new image is active.
        if now != new {
            tally.retried += 1;
            let result = send_install(addr, bundle, image, None)
                .await
                .ok_or("the retry got no answer")?;
            if !result.ok {
                return Err(format!("the retry failed: {result:?}\n{}", ecu.log()));
            }
        }
        let (now, _) = running(addr).await?;
        if now != new {
            return Err(format!("after the retry the ECU runs {now:?}"));
        }
        let bc = check_boot_control(&ecu).map_err(|e| format!("after the retry: {e}"))?;
        if bc.image(bc.active) != Some(&new) || bc.pending.is_some() {
            return Err(format!("the new image is not the committed one:\n{bc:#?}"));
        }
        ecu.kill();
        drop(ecu);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}

/// An image that takes the ECU down during its health check at every boot (a hang ended by
/// the watchdog, a crash) never makes the health check fail; the attempts counted before
/// each try must still bring the ECU back to its old image after `max_boot_attempts`.
#[tokio::test]
async fn an_image_that_crashes_the_ecu_at_every_boot_is_rolled_back() {
    let root = tempfile::tempdir().unwrap();
    let images = Images {
        factory: image_bytes("factory", 1000),
        v1: image_bytes("v1", 5000),
        v2: image_bytes("v2", 70_000),
    };
    let director = director(&images.v2);
    let mut ecu = Ecu::create(root.path(), &director.root, Layout::RunningB, &images);
    // The health check's parent is the ECU process.
    ecu.config.slots.health_check = Some("kill -9 $PPID; sleep 5".into());
    let config = toml::to_string(&ecu.config).unwrap();
    std::fs::write(root.path().join("ecu.toml"), config).unwrap();
    let addr = ecu.start();
    let answer = send_install(addr, &director.bundle, &images.v2, None).await;
    assert!(answer.is_none(), "the ECU answered {answer:?}");
    ecu.child.take().unwrap().wait().unwrap();
    let mut crashes = 1;
    let addr = loop {
        ecu.spawn();
        let path = ecu.dir.join("state/listen-address");
        let start = Instant::now();
        let up = loop {
            if std::fs::read_to_string(&path).is_ok() {
                break true;
            }
            if ecu.child.as_mut().unwrap().try_wait().unwrap().is_some() {
                break false;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "{}", ecu.log());
            std::thread::sleep(Duration::from_millis(5));
        };
        if up {
            break ecu.wait_listening();
        }
        ecu.child = None;
        crashes += 1;
        assert!(
            crashes <= ecu.config.slots.max_boot_attempts,
            "the ECU crashed at boot {crashes} times and never rolled back:\n{:#?}",
            ecu.boot_control()
        );
    };
    let (now, attacks) = running(addr).await.unwrap();
    assert_eq!(now, installed("ivi/app-1.bin", &images.v1, 1));
    assert!(attacks.contains("boot-failed"), "{attacks}");
    let bc = check_boot_control(&ecu).unwrap();
    assert_eq!((bc.active, bc.pending), (Slot::B, None));
}

/// A rollback is written to the boot-control file first, and moved into the ECU's attack
/// indicators after: a cut between the two must not lose the report of the failed update.
#[tokio::test]
async fn a_rollback_is_reported_even_if_the_power_goes_right_after_it() {
    let root = tempfile::tempdir().unwrap();
    let images = Images {
        factory: image_bytes("factory", 1000),
        v1: image_bytes("v1", 5000),
        v2: image_bytes("v2", 7000),
    };
    let director = director(&images.v2);
    let ecu = Ecu::create(root.path(), &director.root, Layout::RunningB, &images);
    // What a rollback to slot B writes, before the ECU records the indicator.
    let mut bc = ecu.boot_control();
    std::fs::write(ecu.slot_path(Slot::A), &images.v2).unwrap();
    bc.a = Some(installed(TARGET, &images.v2, 2));
    bc.last_failure = Some(format!(
        "boot-failed: {TARGET} failed its health check 2 time(s); rolled back to slot B"
    ));
    std::fs::write(
        &ecu.config.slots.boot_control,
        serde_json::to_vec(&bc).unwrap(),
    )
    .unwrap();
    let mut ecu = ecu;
    let addr = ecu.start();
    let (now, attacks) = running(addr).await.unwrap();
    assert_eq!(now.filename, "ivi/app-1.bin");
    assert!(
        attacks.contains(&format!("boot-failed: {TARGET} failed its health check")),
        "the rollback was not reported: {attacks:?}"
    );
    // Reported once, and kept by the ECU (not by the boot-control file) from then on.
    assert_eq!(ecu.boot_control().last_failure, None);
    ecu.kill();
    let addr = ecu.start();
    let (_, attacks) = running(addr).await.unwrap();
    assert_eq!(attacks.matches("boot-failed").count(), 1, "{attacks}");
}

/// Median duration of an uninterrupted install, from INSTALL_BEGIN to INSTALL_RESULT.
async fn calibrate(root: &Path, director: &Director, images: &Images) -> Duration {
    let mut times = Vec::new();
    for (i, layout) in [Layout::Fresh, Layout::RunningA, Layout::RunningB]
        .into_iter()
        .enumerate()
    {
        let dir = root.join(format!("calibrate-{i}"));
        let mut ecu = Ecu::create(&dir, &director.root, layout, images);
        let addr = ecu.start();
        let start = Instant::now();
        let result = send_install(addr, &director.bundle, &images.v2, None).await;
        times.push(start.elapsed());
        let result = result.unwrap_or_else(|| panic!("no answer:\n{}", ecu.log()));
        assert!(result.ok, "{result:?}\n{}", ecu.log());
        assert_eq!(running(addr).await.unwrap().0.filename, TARGET);
        check_boot_control(&ecu).unwrap();
        drop(ecu);
        let _ = std::fs::remove_dir_all(&dir);
    }
    times.sort();
    times[1]
}

#[tokio::test]
async fn an_ecu_survives_power_cuts_at_any_point_of_an_install() {
    let trials = env_u64("POWER_CUT_TRIALS").unwrap_or(200);
    let seed = power_cut_seed();
    eprintln!("power cuts: {trials} trials, POWER_CUT_SEED={seed}");
    let root = match std::env::var_os("POWER_CUT_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let images = Images {
        factory: image_bytes("factory", 1000),
        v1: image_bytes("v1", IMAGE_LEN / 2 + 17),
        v2: image_bytes("v2", IMAGE_LEN),
    };
    let director = director(&images.v2);
    let install = calibrate(root.path(), &director, &images).await;
    eprintln!("an uninterrupted install takes {install:?}");
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut rng = Rng::new(seed);
    for n in 0..trials {
        let trial = Trial {
            n,
            director: &director,
            images: &images,
            install,
            root: root.path(),
        };
        if let Err(e) = trial.run(&mut rng, &mut tally).await {
            let dir = root.keep();
            panic!(
                "trial {n} of {trials} (POWER_CUT_SEED={seed}): {e}\n(ECU folder kept in {})",
                dir.join(format!("trial-{n}")).display()
            );
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "power cuts: {trials} trials passed in {:.1} s ({:.0} ms each), seed {seed}\n  \
         cut before the slot was written: {}\n  cut while the slot was written: {}\n  \
         cut after the slot was written, before the switch: {}\n  cut during boot \
         counting (on trial): {}\n  cut after the commit: {}\n  second cut during \
         recovery: {}\n  rollbacks after recovery: {}\n  installs retried: {}",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / trials.max(1) as f64,
        tally.before_write,
        tally.mid_write,
        tally.written_not_switched,
        tally.on_trial,
        tally.committed,
        tally.double_cuts,
        tally.rolled_back,
        tally.retried,
    );
}
