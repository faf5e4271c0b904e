//! Measure 6: flashing a legacy ECU over UDS on DoIP, against the same image sent to an
//! Uptane ECU over the in-vehicle protocol. Both on loopback, in this process; both ECUs
//! check the director's signed targets (partial verification), write an A/B slot and read it
//! back against the signed hashes before they switch.
//!
//! UDS: the gateway's tester (`rampart_vehicle::uds::gateway::Flash`: programming session,
//! security access, erase, RequestDownload, TransferData blocks of maxNumberOfBlockLength,
//! exit, verify routine, reset, read-back) against `rampart uds-ecu`'s entity. In-vehicle
//! protocol: install-begin, image chunks, install-end to a `Secondary`, as the primary sends
//! them. Each run flashes a new target name (the same bytes), so each is a real install.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rampart_vehicle::protocol::{self, InstallBegin, InstallResult, Kind, MetadataBundle};
use rampart_vehicle::report::{LogReporter, Progress};
use rampart_vehicle::secondary::{serve, LinkLimits, Secondary};
use rampart_vehicle::testing::{ecu_config, image_bytes, TestDirector, ECU, HW, VIN};
use rampart_vehicle::uds::gateway::{Flash, UdsLink};
use rampart_vehicle::uds::UdsEcuConfig;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

use crate::{median, Args};

struct Quiet;

impl Progress for Quiet {
    fn set(&mut self, _: u64) {}
    fn finish(self: Box<Self>) {}
}

fn secret(path: &std::path::Path) -> anyhow::Result<()> {
    std::fs::write(path, "b5".repeat(32))?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(())
}

/// Seconds per UDS flash of `image`, `runs` times.
async fn uds(
    dir: &std::path::Path,
    image: &[u8],
    runs: usize,
    block: Option<u16>,
) -> anyhow::Result<Vec<f64>> {
    let d = dir.join("uds");
    std::fs::create_dir_all(&d)?;
    let mut director = TestDirector::new();
    std::fs::write(d.join("director-root.json"), director.root())?;
    std::fs::write(d.join("bank-a"), b"factory")?;
    secret(&d.join("security-secret.hex"))?;
    let mut config = UdsEcuConfig::in_folder(&d, ECU, HW, VIN);
    config.bank_size = image.len() as u64 + 1;
    if let Some(b) = block {
        config.max_block_length = b;
    }
    let entity = rampart_vehicle::uds::entity::start(config, Arc::new(LogReporter)).await?;
    let address = entity.addr().to_string();
    tokio::spawn(entity.serve());
    let file = d.join("image.bin");
    std::fs::write(&file, image)?;
    let link = UdsLink {
        logical_address: 0x0010,
        tester_address: 0x0E80,
        security_secret: d.join("security-secret.hex"),
    };
    let mut seconds = Vec::new();
    for run in 0..runs {
        let target = format!("bench-{run}.bin");
        let targets = director.assign(VIN, ECU, HW, &target, image, run as u64 + 1);
        let started = Instant::now();
        Flash {
            address: &address,
            link: &link,
            ecu_id: ECU,
            target: &target,
            image: &file,
            length: image.len() as u64,
            director_targets: &targets,
        }
        .run(&mut Quiet)
        .await
        .with_context(|| format!("UDS flash {run}"))?;
        seconds.push(started.elapsed().as_secs_f64());
    }
    Ok(seconds)
}

/// Seconds per in-vehicle-protocol install of `image`, `runs` times.
async fn in_vehicle(dir: &std::path::Path, image: &[u8], runs: usize) -> anyhow::Result<Vec<f64>> {
    let d = dir.join("ivp");
    let mut director = TestDirector::new();
    let limits = LinkLimits::default();
    let config = ecu_config(&d, &director.root(), limits.clone());
    let mut seconds = Vec::new();
    for run in 0..runs {
        // Each run boots the ECU (boot counting confirms the last install's slot), as the
        // UDS flash's ECUReset does.
        let ecu = Secondary::open(config.clone())?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let server = tokio::spawn(serve(
            Arc::new(tokio::sync::Mutex::new(ecu)),
            listener,
            limits.clone(),
        ));
        let target = format!("bench-{run}.bin");
        let targets = director.assign(VIN, ECU, HW, &target, image, run as u64 + 1);
        let version = serde_json::from_slice::<Value>(&targets)?
            .pointer("/signed/version")
            .and_then(Value::as_u64)
            .context("targets without a version")?;
        let bundle = MetadataBundle {
            director: BTreeMap::from([(
                format!("{version}.targets.json"),
                String::from_utf8(targets)?,
            )]),
            image: BTreeMap::new(),
        };
        let started = Instant::now();
        let mut s = TcpStream::connect(address).await?;
        let begin = InstallBegin {
            target,
            bundle,
            length: image.len() as u64,
            delta: false,
        };
        protocol::write_json(&mut s, Kind::InstallBegin, &begin).await?;
        for chunk in image.chunks(protocol::CHUNK) {
            protocol::write_frame(&mut s, Kind::ImageChunk, chunk).await?;
        }
        protocol::write_frame(&mut s, Kind::ImageEnd, &[]).await?;
        let frame =
            tokio::time::timeout(Duration::from_secs(600), protocol::read_frame(&mut s)).await??;
        let result: InstallResult = match frame.kind {
            Kind::InstallResult => protocol::parse_json(&frame)?,
            other => bail!(
                "install {run}: {other:?} {}",
                String::from_utf8_lossy(&frame.payload)
            ),
        };
        if !result.ok {
            bail!(
                "install {run} refused: {:?} {}",
                result.rule,
                result.message
            );
        }
        seconds.push(started.elapsed().as_secs_f64());
        drop(s);
        server.abort();
        let _ = server.await;
    }
    Ok(seconds)
}

/// `flash --mib N --runs R [--block maxNumberOfBlockLength]` (default: the ECU's, 16386).
pub(crate) fn main(args: &Args) -> anyhow::Result<Value> {
    let mib: usize = args.num("mib", 64)?;
    let runs: usize = args.num("runs", 3)?;
    let block: Option<u16> = args.get("block").map(str::parse).transpose()?;
    let image = image_bytes("flash-bench", mib << 20);
    let dir = tempfile::tempdir()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut uds_s = Vec::new();
        let mut ivp_s = Vec::new();
        uds_s.extend(uds(dir.path(), &image, runs, block).await?);
        ivp_s.extend(in_vehicle(dir.path(), &image, runs).await?);
        let (u, i) = (median(&mut uds_s), median(&mut ivp_s));
        let mibs = |s: f64| if s > 0.0 { mib as f64 / s } else { 0.0 };
        Ok(json!({
            "mib": mib,
            "runs": runs,
            "max_block_length": block.unwrap_or(16 * 1024 + 2),
            "uds_doip_seconds": u,
            "in_vehicle_seconds": i,
            "uds_doip_mib_s": mibs(u),
            "in_vehicle_mib_s": mibs(i),
            "ratio": if i > 0.0 { mibs(u) / mibs(i) } else { 0.0 },
        }))
    })
}
