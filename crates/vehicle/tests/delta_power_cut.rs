//! Power cuts while an ECU builds an image from a delta (issue 18): an ECU process
//! (`rampart-agent ecu`) running v1 gets the director's delta to v2 and is killed with SIGKILL
//! at a random moment — while the delta arrives, while the running slot is checked as its
//! source, while the applier writes the other slot, while that slot is read back or switched.
//! After every cut:
//!
//! * every slot the boot-control file describes holds exactly the image it names, and the
//!   ECU restarts running v1 or v2, nothing else;
//! * the delta, sent again as the primary's next cycle would, installs and the ECU runs v2,
//!   byte for byte.
//!
//! `DELTA_POWER_CUT_TRIALS` sets the number of trials (default 12), `POWER_CUT_SEED` the seed.
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
use rampart_core::uptane::{DeltaOffer, ImageRef, DELTA_FORMAT};
use rampart_vehicle::primary::request_report;
use rampart_vehicle::protocol::{self, InstallBegin, InstallResult, Kind, MetadataBundle};
use rampart_vehicle::secondary::LinkLimits;
use rampart_vehicle::slots::{BootControl, Slot};
use tokio::net::TcpStream;

mod common;

use common::{agent, ecu_config, ECU, HW, VIN};
use rampart_vehicle::testing::{env_u64, image_bytes, power_cut_seed, Rng, TestDirector};

const TARGET: &str = "ivi/app-2.bin";

/// v1, the next release v2 (a patched region, an insertion, a new tail), the delta between.
struct Release {
    v1: Vec<u8>,
    v2: Vec<u8>,
    delta: Vec<u8>,
    bundle: MetadataBundle,
    root: Vec<u8>,
}

fn release() -> Release {
    let v1 = image_bytes("v1", 3 * 1024 * 1024);
    let mut v2 = v1.clone();
    for b in v2.iter_mut().skip(10_000).step_by(4093).take(600) {
        *b ^= 0x5A;
    }
    v2.splice(1_000_000..1_000_000, image_bytes("inserted", 40_000));
    v2.extend_from_slice(&image_bytes("tail", 64_000));
    let mut delta = Vec::new();
    rampart_delta::create(&v1, &v2, &mut delta).unwrap();
    let offer = DeltaOffer {
        path: format!("{TARGET}.from-v1.bsdiff"),
        length: delta.len() as u64,
        hashes: compute_hashes(&delta),
        format: DELTA_FORMAT.into(),
        source: ImageRef {
            filename: "ivi/app-1.bin".into(),
            length: v1.len() as u64,
            hashes: compute_hashes(&v1),
        },
        encryption: None,
    };
    let mut director = TestDirector::new();
    let doc = director.assign_with_delta(VIN, ECU, HW, TARGET, &v2, 2, Some(offer));
    let version = serde_json::from_slice::<serde_json::Value>(&doc).unwrap()["signed"]["version"]
        .as_u64()
        .unwrap();
    Release {
        bundle: MetadataBundle {
            director: BTreeMap::from([(
                format!("{version}.targets.json"),
                String::from_utf8(doc).unwrap(),
            )]),
            image: BTreeMap::new(),
        },
        root: director.root(),
        v1,
        v2,
        delta,
    }
}

/// One ECU process whose factory image (slot A) is v1.
struct Ecu {
    dir: PathBuf,
    child: Option<Child>,
}

impl Drop for Ecu {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Ecu {
    fn create(dir: &Path, r: &Release) -> Ecu {
        let config = ecu_config(dir, &r.root, LinkLimits::default());
        std::fs::write(dir.join("slot-a"), &r.v1).unwrap();
        std::fs::write(dir.join("ecu.toml"), toml::to_string(&config).unwrap()).unwrap();
        Ecu {
            dir: dir.to_owned(),
            child: None,
        }
    }

    fn start(&mut self) -> SocketAddr {
        let _ = std::fs::remove_file(self.dir.join("state/listen-address"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("ecu.log"))
            .unwrap();
        self.child = Some(
            Command::new(agent())
                .args(["-v", "ecu", "--config"])
                .arg(self.dir.join("ecu.toml"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        common::wait_for_address(&self.dir.join("state/listen-address"))
    }

    /// SIGKILL: a power cut as far as the process can tell.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("ecu.log")).unwrap_or_default()
    }

    /// Invariant 5 on disk: every described slot holds exactly the image it names; the
    /// active one is v1 or v2.
    fn check(&self, r: &Release) -> Result<BootControl, String> {
        let bytes = std::fs::read(self.dir.join("boot-control.json")).map_err(|e| e.to_string())?;
        let bc: BootControl = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        for slot in [Slot::A, Slot::B] {
            if let Some(image) = bc.image(slot) {
                let path = self.dir.join(match slot {
                    Slot::A => "slot-a",
                    Slot::B => "slot-b",
                });
                let data = std::fs::read(&path).unwrap_or_default();
                if data.len() as u64 != image.length || compute_hashes(&data) != image.hashes {
                    return Err(format!(
                        "slot {slot:?} is described as {} but holds other bytes",
                        image.filename
                    ));
                }
            }
        }
        let active = bc
            .image(bc.active)
            .ok_or_else(|| "the active slot is not described".to_owned())?;
        let v1 = compute_hashes(&r.v1);
        let v2 = compute_hashes(&r.v2);
        if active.hashes != v1 && active.hashes != v2 {
            return Err(format!("the active slot holds {}", active.filename));
        }
        Ok(bc)
    }
}

/// Acts as the primary: INSTALL_BEGIN for a delta, the delta in chunks, IMAGE_END; the ECU's
/// answer, if any.
async fn send_delta(addr: SocketAddr, r: &Release) -> Option<InstallResult> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let begin = InstallBegin {
        target: TARGET.into(),
        bundle: r.bundle.clone(),
        length: r.delta.len() as u64,
        delta: true,
    };
    protocol::write_json(&mut s, Kind::InstallBegin, &begin)
        .await
        .ok()?;
    for chunk in r.delta.chunks(protocol::CHUNK) {
        protocol::write_frame(&mut s, Kind::ImageChunk, chunk)
            .await
            .ok()?;
    }
    protocol::write_frame(&mut s, Kind::ImageEnd, &[])
        .await
        .ok()?;
    let frame = tokio::time::timeout(Duration::from_secs(120), protocol::read_frame(&mut s))
        .await
        .ok()?
        .ok()?;
    (frame.kind == Kind::InstallResult)
        .then(|| protocol::parse_json(&frame).ok())
        .flatten()
}

async fn running(addr: SocketAddr) -> String {
    let report = request_report(&addr.to_string(), "n").await.unwrap();
    report["signed"]["installed_image"]["filename"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ecu_building_from_a_delta_survives_power_cuts() {
    let trials = env_u64("DELTA_POWER_CUT_TRIALS").unwrap_or(12);
    let seed = power_cut_seed();
    eprintln!("delta power cuts: {trials} trials, POWER_CUT_SEED={seed}");
    let r = release();
    let root = tempfile::tempdir().unwrap();

    // An uninterrupted delta install, to know how long one takes.
    let mut ecu = Ecu::create(&root.path().join("calibrate"), &r);
    let addr = ecu.start();
    let started = Instant::now();
    let result = send_delta(addr, &r).await.unwrap();
    let took = started.elapsed();
    assert!(result.ok, "{result:?}\n{}", ecu.log());
    assert_eq!(running(addr).await, TARGET);
    ecu.kill();
    eprintln!(
        "a delta install ({} bytes for a {} byte image) takes {took:?}",
        r.delta.len(),
        r.v2.len()
    );

    let mut rng = Rng::new(seed);
    let (mut cut_before_done, mut finished_anyway) = (0, 0);
    for n in 0..trials {
        let mut ecu = Ecu::create(&root.path().join(format!("trial-{n}")), &r);
        let addr = ecu.start();
        // Up to half again the calibrated time: some cuts land after the install ended.
        let cut_at = Duration::from_micros(rng.below(took.as_micros() as u64 * 3 / 2 + 1));
        let install = tokio::spawn({
            let r = Release {
                v1: Vec::new(),
                v2: Vec::new(),
                delta: r.delta.clone(),
                bundle: r.bundle.clone(),
                root: Vec::new(),
            };
            async move { send_delta(addr, &r).await }
        });
        tokio::time::sleep(cut_at).await;
        ecu.kill();
        let _ = install.await;
        let fail = |e: String, ecu: &Ecu| -> ! {
            panic!(
                "trial {n} (POWER_CUT_SEED={seed}, cut after {cut_at:?}): {e}\n{}",
                ecu.log()
            )
        };
        if let Err(e) = ecu.check(&r) {
            fail(e, &ecu);
        }
        let addr = ecu.start();
        if running(addr).await == TARGET {
            finished_anyway += 1;
        } else {
            cut_before_done += 1;
            // The primary's next cycle: the same delta again.
            match send_delta(addr, &r).await {
                Some(res) if res.ok => {}
                other => fail(format!("the retry did not install: {other:?}"), &ecu),
            }
        }
        if let Err(e) = ecu.check(&r) {
            fail(e, &ecu);
        }
        if running(addr).await != TARGET {
            fail("not running v2 after the retry".into(), &ecu);
        }
        let bc = ecu.check(&r).unwrap();
        let active = ecu.dir.join(match bc.active {
            Slot::A => "slot-a",
            Slot::B => "slot-b",
        });
        if std::fs::read(active).unwrap() != r.v2 {
            fail("the active slot is not v2".into(), &ecu);
        }
        ecu.kill();
    }
    eprintln!(
        "delta power cuts: {trials} trials passed (seed {seed}): cut before the install ended \
         {cut_before_done}, install had ended {finished_anyway}"
    );
}
