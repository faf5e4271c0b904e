//! `rampart provision`: everything one vehicle needs from the server's data dir, as a
//! factory would install it — the vehicle's certificate and the fleet CA, the current roots
//! of both repositories, a signing key per ECU (X25519 keys where images come encrypted), and
//! a commented `vehicle.toml` and `ecu.toml` per ECU whose paths are relative to their own
//! folder (an ECU's folder can be copied to its device). It prints, and writes as
//! `register.sh`, the `rampart admin register` line that tells the director about the
//! vehicle.
//!
//! The fields of both files are documented in `docs/vehicle-config.md`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use rampart_core::key::KeyScheme;
use rampart_core::signer::Signer;
use rampart_server::config::Config;
use rampart_vehicle::secondary::{EcuConfig, Verification};

use crate::server_cmds::DataDir;

/// `rampart provision`.
#[derive(Debug, Args)]
pub(crate) struct ProvisionArgs {
    #[command(flatten)]
    data: DataDir,
    /// The vehicle's VIN (17 characters; not I, O or Q).
    #[arg(long)]
    vin: String,
    /// Folder to write into (new or empty).
    #[arg(long)]
    out: PathBuf,
    /// An ECU: ID,HARDWARE_ID[,full|partial[,encrypted]] (default full, in clear). The first
    /// is the T-BOX the primary runs on: it signs with the primary's key. Repeat per ECU.
    #[arg(long = "ecu", required = true)]
    ecus: Vec<String>,
    /// Server URL the vehicle uses (default: https:// and `listen` of the server's
    /// rampart.toml).
    #[arg(long)]
    server: Option<String>,
    /// Port on 127.0.0.1 of the first ECU's in-vehicle link; the next ECUs take the ports
    /// after it.
    #[arg(long, default_value_t = 7101)]
    first_port: u16,
    /// Validity of the vehicle certificate, in days.
    #[arg(long, default_value_t = 365)]
    cert_days: u32,
}

/// One ECU as `--ecu` gives it.
struct EcuSpec {
    id: String,
    hardware_id: String,
    verification: Verification,
    encrypted: bool,
}

fn parse_ecu(spec: &str) -> anyhow::Result<EcuSpec> {
    let usage = || format!("--ecu {spec:?}: expected ID,HARDWARE_ID[,full|partial[,encrypted]]");
    let parts: Vec<&str> = spec.split(',').map(str::trim).collect();
    let (Some(id), Some(hw)) = (parts.first(), parts.get(1)) else {
        bail!(usage());
    };
    if id.is_empty() || hw.is_empty() || parts.len() > 4 {
        bail!(usage());
    }
    let verification = match parts.get(2).copied().unwrap_or("full") {
        "full" => Verification::Full,
        "partial" => Verification::Partial,
        _ => bail!(usage()),
    };
    let encrypted = match parts.get(3).copied() {
        None => false,
        Some("encrypted") => true,
        Some(_) => bail!(usage()),
    };
    Ok(EcuSpec {
        id: (*id).to_owned(),
        hardware_id: (*hw).to_owned(),
        verification,
        encrypted,
    })
}

/// The newest `N.root.json` in `dir` (a vehicle is provisioned with the current root).
fn newest_root(dir: &Path) -> anyhow::Result<PathBuf> {
    let newest = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n: u64 = name.strip_suffix(".root.json")?.parse().ok()?;
            Some((n, e.path()))
        })
        .max_by_key(|(n, _)| *n);
    newest.map(|(_, p)| p).with_context(|| {
        format!(
            "no N.root.json in {} (run `rampart repo init`)",
            dir.display()
        )
    })
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::copy(from, to)
        .map(|_| ())
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))
}

/// Runs `rampart provision`.
pub(crate) fn provision(args: ProvisionArgs) -> anyhow::Result<()> {
    rampart_server::pki::validate_vin(&args.vin)?;
    let specs = args
        .ecus
        .iter()
        .map(|s| parse_ecu(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let layout = args.data.layout();
    let config = Config::load(&layout)?;
    let server = match &args.server {
        Some(s) => s.clone(),
        None => format!(
            "{}://{}/",
            if config.tls { "https" } else { "http" },
            config.listen
        ),
    };
    let out = std::path::absolute(&args.out)?;
    if std::fs::read_dir(&out).is_ok_and(|mut d| d.next().is_some()) {
        bail!(
            "--out {}: the folder is not empty; give a new or empty folder",
            out.display()
        );
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    // The vehicle: its identity on the network, the roots it trusts, the primary's key.
    let director_root = newest_root(&layout.director_public())?;
    let image_root = newest_root(&layout.image_metadata())?;
    copy(&director_root, &out.join("director-root.json"))?;
    copy(&image_root, &out.join("image-root.json"))?;
    if config.tls {
        let cert =
            rampart_server::pki::issue_vehicle_cert(&layout.pki(), &args.vin, args.cert_days)?;
        rampart_cli::vehicle_cmds::write_private(
            &out.join("vehicle-cert.pem"),
            format!("{}{}", cert.cert_pem, cert.key_pem).as_bytes(),
        )?;
        copy(&layout.pki().join("ca.pem"), &out.join("ca.pem"))?;
    }
    let primary_key = out.join("primary-key.pem");
    let primary_signer = rampart_server::keys::generate_key_file(&primary_key, KeyScheme::Ed25519)?;

    let mut register = format!(
        "rampart admin --data-dir {} register --vin {} --primary {}",
        args.data.data_dir.display(),
        args.vin,
        specs.first().map_or("", |s| s.id.as_str())
    );
    let mut ecu_refs = String::new();
    for (i, spec) in specs.iter().enumerate() {
        let dir = out.join(&spec.id);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let key = dir.join("key.pem");
        if i == 0 {
            // The primary's own ECU is the same device: one key.
            copy(&primary_key, &key)?;
            std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        } else {
            rampart_server::keys::generate_key_file(&key, KeyScheme::Ed25519)?;
        }
        copy(&director_root, &dir.join("director-root.json"))?;
        if spec.verification == Verification::Full {
            copy(&image_root, &dir.join("image-root.json"))?;
        }
        std::fs::write(
            dir.join("slot-a"),
            format!("factory firmware of {}\n", spec.id),
        )?;
        let mut ecu = EcuConfig::in_folder(
            Path::new(""),
            &spec.id,
            &spec.hardware_id,
            &args.vin,
            spec.verification,
        );
        let port = u32::from(args.first_port) + i as u32;
        let port = u16::try_from(port).context("--first-port: the ports run past 65535")?;
        ecu.listen = format!("127.0.0.1:{port}");
        ecu.factory_image = format!("factory-{}", spec.hardware_id);
        let mut encryption_public = None;
        if spec.encrypted {
            let pair = rampart_core::encryption::EcuKeyPair::generate()?;
            rampart_cli::vehicle_cmds::write_private(
                &dir.join("x25519.hex"),
                hex::encode(pair.private_bytes()).as_bytes(),
            )?;
            ecu.encryption_key = Some(PathBuf::from("x25519.hex"));
            encryption_public = Some(hex::encode(pair.public_key()));
        }
        std::fs::write(dir.join("ecu.toml"), ecu_toml(&ecu))
            .with_context(|| format!("writing {}", dir.join("ecu.toml").display()))?;
        let verification = match spec.verification {
            Verification::Full => "full",
            Verification::Partial => "partial",
        };
        let _ = write!(
            register,
            " \\\n    --ecu {},{},{},{verification}{}",
            spec.id,
            spec.hardware_id,
            key.display(),
            encryption_public
                .as_deref()
                .map(|p| format!(",{p}"))
                .unwrap_or_default()
        );
        let _ = write!(
            ecu_refs,
            "\n[[ecus]]\necu_id = {}\nhardware_id = {}\naddress = {}\nverification = \"{verification}\"\n",
            toml_str(&spec.id),
            toml_str(&spec.hardware_id),
            toml_str(&ecu.listen),
        );
    }
    std::fs::write(
        out.join("vehicle.toml"),
        vehicle_toml(
            &args.vin,
            specs.first().map_or("", |s| s.id.as_str()),
            &server,
            config.tls,
            &ecu_refs,
        ),
    )?;

    rampart_cli::say!(
        "provisioned {} in {} (primary key ID {})",
        args.vin,
        out.display(),
        primary_signer.key_id()
    );
    rampart_cli::say!("  vehicle.toml     the primary (T-BOX): server {server}");
    for spec in &specs {
        rampart_cli::say!(
            "  {:<16} rampart ecu --config {}",
            format!("{}/ecu.toml", spec.id),
            out.join(&spec.id).join("ecu.toml").display()
        );
    }
    let script = out.join("register.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n# Tells the director about {} and its ECUs (run it where `rampart provision` ran,\n# with the server running). Written by `rampart provision`.\nset -e\n{register}\n",
            args.vin
        ),
    )
    .with_context(|| format!("writing {}", script.display()))?;
    rampart_cli::say!(
        "\nTell the director about the vehicle (with the server running): sh {}\n{register}",
        script.display()
    );
    rampart_cli::say!(
        "\nThen start each ECU, and the primary: rampart vehicle --config {} --once",
        out.join("vehicle.toml").display()
    );
    Ok(())
}

/// A TOML string literal.
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn toml_path(p: &Path) -> String {
    toml_str(&p.to_string_lossy())
}

/// `ecu.toml`, every field with what it means (paths relative to the file's folder).
fn ecu_toml(c: &EcuConfig) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# ecu.toml — one ECU (written by `rampart provision`; every field: docs/vehicle-config.md).\n# Relative paths are relative to this file's folder. Run it with: rampart ecu --config ecu.toml\n"
    );
    let _ = writeln!(
        t,
        "# Who it is: the director knows it by this ID (`rampart admin register --ecu`)."
    );
    let _ = writeln!(t, "ecu_id = {}", toml_str(&c.ecu_id));
    let _ = writeln!(t, "# What it is: images are assigned by hardware ID.");
    let _ = writeln!(t, "hardware_id = {}", toml_str(&c.hardware_id));
    let _ = writeln!(
        t,
        "# The vehicle it is built into (reports from any other VIN are refused)."
    );
    let _ = writeln!(t, "vin = {}", toml_str(&c.vin));
    let _ = writeln!(
        t,
        "# Where the primary reaches it on the in-vehicle network (`address` in vehicle.toml)."
    );
    let _ = writeln!(t, "listen = {}", toml_str(&c.listen));
    let _ = writeln!(
        t,
        "# Its signing key (PKCS#8 PEM, mode 0600): signs its version reports."
    );
    let _ = writeln!(t, "key = {}", toml_path(&c.key));
    match &c.encryption_key {
        Some(p) => {
            let _ = writeln!(t, "# Its X25519 key (hex, 0600): images assigned with --encrypt are decrypted with it.");
            let _ = writeln!(t, "encryption_key = {}", toml_path(p));
        }
        None => {
            let _ = writeln!(
                t,
                "# encryption_key = \"x25519.hex\"   # for images assigned with --encrypt"
            );
        }
    }
    let _ = writeln!(t, "# full: checks the director and the image repository itself; partial: the director's targets only.");
    let _ = writeln!(
        t,
        "verification = \"{}\"",
        match c.verification {
            Verification::Full => "full",
            Verification::Partial => "partial",
        }
    );
    let _ = writeln!(t, "# The director's root it was provisioned with (newer roots are fetched and checked against it).");
    let _ = writeln!(t, "director_root = {}", toml_path(&c.director_root));
    if let Some(p) = &c.image_root {
        let _ = writeln!(t, "# The image repository's root (full verification).");
        let _ = writeln!(t, "image_root = {}", toml_path(p));
    }
    let _ = writeln!(
        t,
        "# Its trusted state: metadata versions, counters, attack indicators."
    );
    let _ = writeln!(t, "state_dir = {}", toml_path(&c.state_dir));
    let _ = writeln!(t, "# The name of the image in slot A before any update.");
    let _ = writeln!(t, "factory_image = {}", toml_str(&c.factory_image));
    let _ = writeln!(
        t,
        "\n# A/B slots: an update is written to the inactive slot, verified, then booted."
    );
    let _ = writeln!(t, "[slots]");
    let _ = writeln!(t, "slot_a = {}", toml_path(&c.slots.slot_a));
    let _ = writeln!(t, "slot_b = {}", toml_path(&c.slots.slot_b));
    let _ = writeln!(
        t,
        "# Which slot boots; replaced atomically, never describes a half-written slot."
    );
    let _ = writeln!(t, "boot_control = {}", toml_path(&c.slots.boot_control));
    let _ = writeln!(
        t,
        "# Boots of a new image without a healthy answer before it rolls back."
    );
    let _ = writeln!(t, "max_boot_attempts = {}", c.slots.max_boot_attempts);
    let _ = writeln!(
        t,
        "# health_check = \"/usr/local/bin/self-test\"   # exit 0 = the new image is healthy"
    );
    let _ = writeln!(t, "\n# [limits] of the in-vehicle link (connections, timeouts, buffered bytes): defaults, see docs/vehicle-config.md.");
    t
}

/// `vehicle.toml` (paths relative to the file's folder).
fn vehicle_toml(vin: &str, ecu_id: &str, server: &str, tls: bool, ecus: &str) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# vehicle.toml — the primary, the vehicle's update agent on its T-BOX (written by\n# `rampart provision`; every field: docs/vehicle-config.md). Relative paths are relative to\n# this file's folder. Run it with: rampart vehicle --config vehicle.toml\n"
    );
    let _ = writeln!(
        t,
        "# The vehicle, and the primary's own ECU (its key signs the vehicle's manifests)."
    );
    let _ = writeln!(t, "vin = {}", toml_str(vin));
    let _ = writeln!(t, "ecu_id = {}", toml_str(ecu_id));
    let _ = writeln!(t, "# The server: director and image repository.");
    let _ = writeln!(t, "server = {}", toml_str(server));
    let _ = writeln!(
        t,
        "# image_base = \"https://cdn.example/image/\"   # images and their metadata from a mirror"
    );
    if tls {
        let _ = writeln!(t, "# The fleet CA: the only one trusted for HTTPS.");
        let _ = writeln!(t, "ca = \"ca.pem\"");
        let _ = writeln!(
            t,
            "# The vehicle's certificate and key (PEM, 0600): who it is to the server."
        );
        let _ = writeln!(t, "client_cert = \"vehicle-cert.pem\"");
    }
    let _ = writeln!(t, "# The primary's signing key (PKCS#8 PEM, 0600).");
    let _ = writeln!(t, "key = \"primary-key.pem\"");
    let _ = writeln!(t, "# The roots it was provisioned with.");
    let _ = writeln!(t, "director_root = \"director-root.json\"");
    let _ = writeln!(t, "image_root = \"image-root.json\"");
    let _ = writeln!(
        t,
        "# Its trusted state: metadata of both repositories, manifest counter, root archive."
    );
    let _ = writeln!(t, "state_dir = \"primary-state\"");
    let _ = writeln!(t, "# Seconds between cycles (without --once).");
    let _ = writeln!(t, "poll_seconds = 300");
    let _ = writeln!(
        t,
        "# precondition = \"/usr/local/bin/parked-and-charged\"   # exit 0 = may install now"
    );
    let _ = writeln!(t, "# A download slower than this (bytes/s), or stalled this long (s), is a slow-retrieval attack.");
    let _ = writeln!(t, "min_bytes_per_second = 1024");
    let _ = writeln!(t, "stall_seconds = 20");
    let _ = writeln!(t, "\n# The vehicle's ECUs, the T-BOX first; `description` and `unavailable` are shown to the owner.");
    t.push_str(ecus);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecu_specs_parse_and_refuse_what_they_do_not_know() {
        let s = parse_ecu("IVI-1,ivi-x,full,encrypted").unwrap();
        assert_eq!((s.id.as_str(), s.hardware_id.as_str()), ("IVI-1", "ivi-x"));
        assert!(s.encrypted && s.verification == Verification::Full);
        let s = parse_ecu("BCM-1,bcm-1,partial").unwrap();
        assert!(!s.encrypted && s.verification == Verification::Partial);
        for bad in [
            "IVI-1",
            "IVI-1,",
            "IVI-1,ivi-x,half",
            "IVI-1,ivi-x,full,zip",
            "a,b,full,encrypted,x",
        ] {
            assert!(parse_ecu(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_commented_ecu_toml_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = EcuConfig::in_folder(
            Path::new(""),
            "IVI-1",
            "ivi-x",
            "WVW00000000000001",
            Verification::Full,
        );
        c.listen = "127.0.0.1:7102".into();
        c.encryption_key = Some("x25519.hex".into());
        std::fs::write(dir.path().join("ecu.toml"), ecu_toml(&c)).unwrap();
        let back = rampart_vehicle::secondary::load_config(&dir.path().join("ecu.toml")).unwrap();
        let expected = EcuConfig {
            key: dir.path().join("key.pem"),
            encryption_key: Some(dir.path().join("x25519.hex")),
            ..EcuConfig::in_folder(
                dir.path(),
                "IVI-1",
                "ivi-x",
                "WVW00000000000001",
                Verification::Full,
            )
        };
        assert_eq!(back.listen, "127.0.0.1:7102");
        assert_eq!(
            EcuConfig {
                listen: expected.listen.clone(),
                ..back
            },
            expected
        );
    }
}
