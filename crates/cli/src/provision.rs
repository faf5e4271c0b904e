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
    /// An ECU: ID,HARDWARE_ID[,full|partial[,encrypted]] (default full, in clear), or
    /// ID,HARDWARE_ID,uds for a legacy ECU the primary flashes over UDS on DoIP (its bootloader
    /// is `rampart uds-ecu`; its reports are the primary's). The first is the T-BOX the
    /// primary runs on: it signs with the primary's key. Repeat per ECU.
    #[arg(long = "ecu", required = true)]
    ecus: Vec<String>,
    /// Server URL the vehicle uses (default: https:// and `listen` of the server's
    /// rampart.toml).
    #[arg(long)]
    server: Option<String>,
    /// Port on 127.0.0.1 of the first ECU's in-vehicle link (a legacy ECU's DoIP entity);
    /// the next ECUs take the ports after it.
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
    /// A legacy ECU, flashed over UDS on DoIP.
    uds: bool,
}

fn parse_ecu(spec: &str) -> anyhow::Result<EcuSpec> {
    let usage = || {
        format!("--ecu {spec:?}: expected ID,HARDWARE_ID[,full|partial[,encrypted]] or ID,HARDWARE_ID,uds")
    };
    let parts: Vec<&str> = spec.split(',').map(str::trim).collect();
    let (Some(id), Some(hw)) = (parts.first(), parts.get(1)) else {
        bail!(usage());
    };
    if id.is_empty() || hw.is_empty() || parts.len() > 4 {
        bail!(usage());
    }
    let uds = parts.get(2) == Some(&"uds");
    if uds && parts.len() > 3 {
        bail!(usage());
    }
    let verification = match parts.get(2).copied().unwrap_or("full") {
        "full" => Verification::Full,
        // A legacy ECU's bootloader checks the director's targets: partial verification.
        "partial" | "uds" => Verification::Partial,
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
        uds,
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
    rampart_server::pki::validate_iso_vin(&args.vin)?;
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
    // The image repository's newest root, from wherever it is kept (a bucket included).
    let image_repo = rampart_server::ops::image_repo_with(&layout, &config)?;
    let image_root = image_repo.root_bytes(image_repo.latest_root_version()?)?;
    copy(&director_root, &out.join("director-root.json"))?;
    std::fs::write(out.join("image-root.json"), &image_root)
        .with_context(|| format!("writing {}", out.join("image-root.json").display()))?;
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
        let port = u32::from(args.first_port) + i as u32;
        let port = u16::try_from(port).context("--first-port: the ports run past 65535")?;
        if spec.uds {
            let legacy = legacy_ecu(&out, &dir, spec, &args.vin, i, port, &director_root)?;
            let _ = write!(
                register,
                " \\\n    --ecu {},{},{},partial",
                spec.id,
                spec.hardware_id,
                primary_key.display()
            );
            ecu_refs.push_str(&legacy);
            continue;
        }
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
            std::fs::write(dir.join("image-root.json"), &image_root)?;
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
        let (command, file) = if spec.uds {
            ("uds-ecu", "uds-ecu.toml")
        } else {
            ("ecu", "ecu.toml")
        };
        rampart_cli::say!(
            "  {:<20} rampart {command} --config {}",
            format!("{}/{file}", spec.id),
            out.join(&spec.id).join(file).display()
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

/// A legacy ECU's files: `uds-ecu.toml`, bank A with its factory image, the director root,
/// its security-access secret (0600) and the gateway's copy of it (`gateway-ID.hex` beside
/// `vehicle.toml`). Returns its `[[ecus]]` table for `vehicle.toml`.
fn legacy_ecu(
    out: &Path,
    dir: &Path,
    spec: &EcuSpec,
    vin: &str,
    index: usize,
    port: u16,
    director_root: &Path,
) -> anyhow::Result<String> {
    copy(director_root, &dir.join("director-root.json"))?;
    std::fs::write(
        dir.join("bank-a"),
        format!("factory firmware of {}\n", spec.id),
    )?;
    let secret = hex::encode(rampart_core::hash::sha256(
        rampart_core::encryption::EcuKeyPair::generate()?
            .private_bytes()
            .as_slice(),
    ));
    rampart_cli::vehicle_cmds::write_private(&dir.join("security-secret.hex"), secret.as_bytes())?;
    let gateway_secret = format!("gateway-{}.hex", spec.id);
    rampart_cli::vehicle_cmds::write_private(&out.join(&gateway_secret), secret.as_bytes())?;
    let mut config = rampart_vehicle::uds::UdsEcuConfig::in_folder(
        Path::new(""),
        &spec.id,
        &spec.hardware_id,
        vin,
    );
    config.listen = format!("127.0.0.1:{port}");
    config.logical_address =
        rampart_vehicle::uds::logical_address_of(index).context("too many ECUs")?;
    config.factory_image = format!("factory-{}", spec.hardware_id);
    let path = dir.join("uds-ecu.toml");
    std::fs::write(
        &path,
        format!(
            "# uds-ecu.toml — a legacy ECU's bootloader, UDS on DoIP (written by `rampart provision`;\n\
             # every field: docs/uds-doip.md). Relative paths are relative to this file's folder.\n\
             # Run it with: rampart uds-ecu --config uds-ecu.toml\n\n{}",
            toml::to_string_pretty(&config)?
        ),
    )
    .with_context(|| format!("writing {}", path.display()))?;
    Ok(format!(
        "\n[[ecus]]\necu_id = {}\nhardware_id = {}\n# Its DoIP entity: the primary flashes it over UDS, as its gateway.\naddress = {}\nverification = \"partial\"\n[ecus.uds]\nlogical_address = 0x{:04X}\n# The ECU's security-access secret (hex, 0600), the same as in its folder.\nsecurity_secret = {}\n",
        toml_str(&spec.id),
        toml_str(&spec.hardware_id),
        toml_str(&config.listen),
        config.logical_address,
        toml_str(&gateway_secret),
    ))
}

/// A TOML string literal.
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn toml_path(p: &Path) -> String {
    toml_str(&p.to_string_lossy())
}

/// A TOML document written field by field, each with the comment that says what it means.
#[derive(Default)]
struct Commented(String);

impl Commented {
    /// A comment line (`# …`), or a blank line for "".
    fn note(&mut self, text: &str) -> &mut Self {
        if text.is_empty() {
            self.0.push('\n');
        } else {
            let _ = writeln!(self.0, "# {text}");
        }
        self
    }

    /// `key = value`, `value` already TOML (a quoted string, a number).
    fn set(&mut self, key: &str, value: impl std::fmt::Display) -> &mut Self {
        let _ = writeln!(self.0, "{key} = {value}");
        self
    }

    /// A line as it is (a table header).
    fn line(&mut self, text: &str) -> &mut Self {
        let _ = writeln!(self.0, "{text}");
        self
    }
}

/// `ecu.toml`, every field with what it means (paths relative to the file's folder).
fn ecu_toml(c: &EcuConfig) -> String {
    let mut t = Commented::default();
    t.note("ecu.toml — one ECU (written by `rampart provision`; every field: docs/vehicle-config.md).")
        .note("Relative paths are relative to this file's folder. Run it with: rampart ecu --config ecu.toml")
        .note("")
        .note("Who it is: the director knows it by this ID (`rampart admin register --ecu`).")
        .set("ecu_id", toml_str(&c.ecu_id))
        .note("What it is: images are assigned by hardware ID.")
        .set("hardware_id", toml_str(&c.hardware_id))
        .note("The vehicle it is built into (metadata for any other VIN is refused).")
        .set("vin", toml_str(&c.vin))
        .note("Where the primary reaches it on the in-vehicle network (`address` in vehicle.toml).")
        .set("listen", toml_str(&c.listen))
        .note("Its signing key (PKCS#8 PEM, mode 0600): signs its version reports.")
        .set("key", toml_path(&c.key));
    match &c.encryption_key {
        Some(p) => t
            .note(
                "Its X25519 key (hex, 0600): images assigned with --encrypt are decrypted with it.",
            )
            .set("encryption_key", toml_path(p)),
        None => t.note("encryption_key = \"x25519.hex\"   # for images assigned with --encrypt"),
    };
    let verification = match c.verification {
        Verification::Full => "\"full\"",
        Verification::Partial => "\"partial\"",
    };
    t.note("full: checks the director and the image repository itself; partial: the director's targets only.")
        .set("verification", verification)
        .note("The director's root it was provisioned with (newer roots are fetched and checked against it).")
        .set("director_root", toml_path(&c.director_root));
    if let Some(p) = &c.image_root {
        t.note("The image repository's root (full verification).")
            .set("image_root", toml_path(p));
    }
    t.note("Its trusted state: metadata versions, counters, attack indicators.")
        .set("state_dir", toml_path(&c.state_dir))
        .note("The name of the image in slot A before any update.")
        .set("factory_image", toml_str(&c.factory_image))
        .note("")
        .note("A/B slots: an update is written to the inactive slot, verified, then booted.")
        .line("[slots]")
        .set("slot_a", toml_path(&c.slots.slot_a))
        .set("slot_b", toml_path(&c.slots.slot_b))
        .note("Which slot boots; replaced atomically, never describes a half-written slot.")
        .set("boot_control", toml_path(&c.slots.boot_control))
        .note("Boots of a new image without a healthy answer before it rolls back.")
        .set("max_boot_attempts", c.slots.max_boot_attempts)
        .note("health_check = \"/usr/local/bin/self-test\"   # exit 0 = the new image is healthy")
        .note("")
        .note("[limits] of the in-vehicle link (connections, timeouts, buffered bytes): defaults, see docs/vehicle-config.md.");
    t.0
}

/// `vehicle.toml` (paths relative to the file's folder); `ecus` are its `[[ecus]]` tables.
fn vehicle_toml(vin: &str, ecu_id: &str, server: &str, tls: bool, ecus: &str) -> String {
    let (vin, ecu_id, server) = (toml_str(vin), toml_str(ecu_id), toml_str(server));
    let tls = if tls {
        "# The fleet CA: the only one trusted for HTTPS.
ca = \"ca.pem\"
# The vehicle's certificate and key (PEM, 0600): who it is to the server.
client_cert = \"vehicle-cert.pem\"
"
    } else {
        ""
    };
    format!(
        "# vehicle.toml — the primary, the vehicle's update agent on its T-BOX (written by
# `rampart provision`; every field: docs/vehicle-config.md). Relative paths are relative to
# this file's folder. Run it with: rampart vehicle --config vehicle.toml

# The vehicle, and the primary's own ECU (its key signs the vehicle's manifests).
vin = {vin}
ecu_id = {ecu_id}
# The server: director and image repository.
server = {server}
# image_base = \"https://cdn.example/image/\"   # images and their metadata from a mirror
{tls}# The primary's signing key (PKCS#8 PEM, 0600).
key = \"primary-key.pem\"
# The roots it was provisioned with.
director_root = \"director-root.json\"
image_root = \"image-root.json\"
# Its trusted state: metadata of both repositories, manifest counter, root archive.
state_dir = \"primary-state\"
# Seconds between cycles (without --once).
poll_seconds = 300
# precondition = \"/usr/local/bin/parked-and-charged\"   # exit 0 = may install now
# A download slower than this (bytes/s), or stalled this long (s), is a slow-retrieval attack.
min_bytes_per_second = 1024
stall_seconds = 20

# The vehicle's ECUs, the T-BOX first; `description` and `unavailable` are shown to the owner.
{ecus}
# \"Check in now\" nudges over MQTT (optional; polling stays the fallback). A nudge only makes
# the vehicle check in early, at most once every min_interval_seconds.
# [nudges]
# url = \"mqtts://broker.example:8883\"   # TLS with `ca`, identified by `client_cert`
# topic_prefix = \"rampart/vehicles\"     # listens on PREFIX/VIN/nudge
# min_interval_seconds = 30
"
    )
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
        assert!(!s.encrypted && s.verification == Verification::Partial && !s.uds);
        let s = parse_ecu("SEAT-1,seat-uds,uds").unwrap();
        assert!(s.uds && s.verification == Verification::Partial);
        for bad in [
            "IVI-1",
            "IVI-1,",
            "IVI-1,ivi-x,half",
            "IVI-1,ivi-x,full,zip",
            "a,b,full,encrypted,x",
            "SEAT-1,seat-uds,uds,encrypted",
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

    #[test]
    fn the_commented_vehicle_toml_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let ecus = "[[ecus]]\necu_id = \"TBOX-1\"\nhardware_id = \"tbox-a\"\naddress = \"127.0.0.1:7101\"\nverification = \"full\"\n";
        let text = vehicle_toml(
            "WVW00000000000001",
            "TBOX-1",
            "https://ota.example:8443/",
            true,
            ecus,
        );
        std::fs::write(dir.path().join("vehicle.toml"), text).unwrap();
        let c = rampart_vehicle::primary::load_config(&dir.path().join("vehicle.toml")).unwrap();
        assert_eq!(
            (c.vin.as_str(), c.ecu_id.as_str()),
            ("WVW00000000000001", "TBOX-1")
        );
        assert_eq!(c.server, "https://ota.example:8443/");
        assert_eq!(c.ca, Some(dir.path().join("ca.pem")));
        assert_eq!(c.client_cert, Some(dir.path().join("vehicle-cert.pem")));
        assert_eq!(c.key, dir.path().join("primary-key.pem"));
        assert_eq!(c.ecus.len(), 1);
        assert_eq!(c.ecus[0].address, "127.0.0.1:7101");
    }
}
