//! Measure 4: footprint of the vehicle agent. A lab (`rampart-lab`: server in this process,
//! HTTPS with client certificates, one vehicle with a T-BOX, an IVI taking encrypted images
//! and a body controller) whose ECUs and primary run as processes of the binary under test;
//! three images are published and assigned, and the primary's update cycle runs under
//! `/usr/bin/time -v`, which reports its peak RSS. The ECUs' peak RSS is read from
//! `/proc/PID/status` (`VmHWM`) before they are stopped.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context};
use rampart_lab::{image_bytes, Lab, LabOptions};
use serde_json::{json, Value};

use crate::Args;

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn max_rss_kib(time_output: &str) -> Option<u64> {
    time_output
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
        .and_then(|v| v.trim().parse().ok())
}

/// One lab update with `bin` as the vehicle-side binary.
async fn measure(bin: &Path, root: &Path, image_mib: usize, time: &str) -> anyhow::Result<Value> {
    let _ = std::fs::remove_dir_all(root);
    let mut options = LabOptions::new(root, bin, 1);
    options.plain_http = false;
    let mut lab = Lab::create(options).await?;
    let size = image_mib * 1024 * 1024;
    let images = [
        ("tbox/fw-2.bin", "tbox-a", size, false),
        ("ivi/nav-2.bin", "ivi-x", size, true),
        ("bcm/body-2.bin", "bcm-1", 256 * 1024, false),
    ];
    for (name, hw, len, encrypt) in images {
        lab.release(name, hw, "2.0", &image_bytes(name, len), encrypt)
            .await
            .with_context(|| format!("releasing {name}"))?;
    }
    lab.start_ecus().await?;
    let vehicle = lab.vehicles.first().context("no vehicle")?;
    let out = tokio::process::Command::new(time)
        .arg("-v") // GNU time's verbose report: its maximum resident set size
        .arg(bin)
        .args(vehicle.once_args("auto"))
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {time}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report: Option<Value> = stdout.lines().rev().find_map(|l| {
        serde_json::from_str::<Value>(l)
            .ok()
            .filter(Value::is_object)
    });
    let installed = report
        .as_ref()
        .and_then(|r| r.get("updates"))
        .and_then(Value::as_array)
        .map(|u| {
            u.iter()
                .filter(|x| x.get("status").and_then(Value::as_str) == Some("Installed"))
                .count()
        })
        .unwrap_or(0);
    let mut ecus = serde_json::Map::new();
    for e in &vehicle.ecus {
        if let Some(pid) = e.child.as_ref().and_then(|c| c.id()) {
            ecus.insert(e.spec.ecu_id.clone(), json!(vm_hwm_kib(pid)));
        }
    }
    let primary_rss = max_rss_kib(&stderr);
    lab.stop().await?;
    if !out.status.success() || installed != images.len() {
        bail!(
            "the update did not install everything ({installed} of {}):\n{stdout}\n{stderr}",
            images.len()
        );
    }
    Ok(json!({
        "binary": bin,
        "binary_bytes": std::fs::metadata(bin)?.len(),
        "primary_peak_rss_kib": primary_rss.context("no peak RSS in /usr/bin/time output")?,
        "ecu_peak_rss_kib": ecus,
        "image_mib": image_mib,
        "updates_installed": installed,
    }))
}

/// `footprint --agent PATH [--compare PATH] --root DIR [--image-mib N]`.
pub(crate) fn main(args: &Args) -> anyhow::Result<Value> {
    let agent = PathBuf::from(args.req("agent")?);
    let root = PathBuf::from(args.req("root")?);
    let image_mib: usize = args.num("image-mib", 64)?;
    let time = args.get("time").unwrap_or("/usr/bin/time").to_owned();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let agent_result = measure(&agent, &root.join("agent"), image_mib, &time).await?;
        let compare = match args.get("compare") {
            Some(bin) => {
                Some(measure(Path::new(bin), &root.join("compare"), image_mib, &time).await?)
            }
            None => None,
        };
        let _ = std::fs::remove_dir_all(&root);
        Ok(json!({"agent": agent_result, "compare": compare}))
    })
}
