//! Vehicle-side commands: the primary (`vehicle`), a secondary ECU (`ecu`), key generation.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use rampart_core::key::KeyScheme;
use rampart_vehicle::consent::ConsentMode;

/// `rampart vehicle`.
#[derive(Debug, Args)]
pub struct VehicleArgs {
    /// Configuration of the primary (vehicle.toml).
    #[arg(long, default_value = "vehicle.toml")]
    config: PathBuf,
    /// Run one cycle and exit. Exit status: 0 every update due installed (or none was due)
    /// and every ECU answered; 1 something failed (an update, an ECU, the server,
    /// verification); 3 nothing failed but an update waits (declined, or a precondition).
    #[arg(long)]
    once: bool,
    /// How the owner's consent is obtained: ask, auto, deny or file:PATH (a head unit
    /// answers {"approve": true|false} in PATH; the format is in docs/consent.md).
    #[arg(long, default_value = "ask")]
    consent: String,
    /// Print the cycle report as JSON on stdout at the end (with --once).
    #[arg(long)]
    json: bool,
    /// Update from an offline bundle (a workshop laptop, a USB stick) instead of the network:
    /// one cycle, verified exactly as online (`rampart offline-bundle create` makes it).
    #[arg(long, value_name = "FILE")]
    from_bundle: Option<PathBuf>,
    /// With --from-bundle: where the signed reports go, for `rampart admin import-reports`
    /// (default: FILE.reports.jsonl next to the bundle).
    #[arg(long, value_name = "FILE", requires = "from_bundle")]
    reports: Option<PathBuf>,
}

/// `rampart ecu`.
#[derive(Debug, Args)]
pub struct EcuArgs {
    /// Configuration of the ECU (ecu.toml).
    #[arg(long, default_value = "ecu.toml")]
    config: PathBuf,
}

/// `rampart uds-ecu`.
#[derive(Debug, Args)]
pub struct UdsEcuArgs {
    /// Configuration of the ECU (uds-ecu.toml; every field in docs/uds-doip.md).
    #[arg(long, default_value = "uds-ecu.toml")]
    config: PathBuf,
    /// TCP and UDP address to serve DoIP on (instead of the file's `listen`).
    #[arg(long)]
    listen: Option<String>,
    /// DoIP logical address (instead of the file's `logical_address`), e.g. 0x0010.
    #[arg(long, value_parser = parse_u16)]
    logical_address: Option<u16>,
}

/// A 16-bit number, decimal or 0x-hexadecimal.
fn parse_u16(s: &str) -> Result<u16, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u16::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|e| format!("{s:?}: {e} (a number up to 0xFFFF)"))
}

/// `rampart keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the signing key (PKCS#8 PEM, 0600; OpenSSL reads it).
    #[arg(long)]
    out: PathBuf,
    /// Key type: ed25519, ecdsa or rsa.
    #[arg(long, default_value = "ed25519")]
    scheme: String,
    /// Also write its public key here (SubjectPublicKeyInfo PEM, as `openssl pkey -pubout`
    /// writes it): what a supplier sends for `rampart delegate --key`, or a vehicle's ECU
    /// for registration.
    #[arg(long)]
    public_out: Option<PathBuf>,
    /// Also write an X25519 key (hex, 0600) for encrypted images here; prints its public half.
    #[arg(long)]
    x25519: Option<PathBuf>,
}

/// Runs the primary.
pub fn vehicle(args: VehicleArgs) -> anyhow::Result<()> {
    let config = rampart_vehicle::primary::load_config(&args.config)?;
    let consent: ConsentMode = args.consent.parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let reporter = std::sync::Arc::new(crate::terminal::TerminalReporter);
    let report = match &args.from_bundle {
        Some(bundle) => {
            let reports = args
                .reports
                .clone()
                .unwrap_or_else(|| rampart_vehicle::primary::offline::default_reports(bundle));
            rt.block_on(rampart_vehicle::primary::offline::run_from_bundle(
                config, bundle, &reports, consent, reporter,
            ))?
        }
        None => rt.block_on(rampart_vehicle::primary::run_with(
            config, consent, args.once, reporter,
        ))?,
    };
    if args.json {
        crate::say!("{}", serde_json::to_string(&report)?);
    }
    crate::exit::cycle_result(report.outcome())
}

/// Runs an ECU.
pub fn ecu(args: EcuArgs) -> anyhow::Result<()> {
    let config = rampart_vehicle::secondary::load_config(&args.config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        tokio::select! {
            r = rampart_vehicle::secondary::run_with(config, std::sync::Arc::new(crate::terminal::TerminalReporter)) => r.map_err(anyhow::Error::from),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}

/// Runs a legacy ECU's bootloader (UDS over DoIP).
pub fn uds_ecu(args: UdsEcuArgs) -> anyhow::Result<()> {
    let mut config = rampart_vehicle::uds::load_config(&args.config)?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(address) = args.logical_address {
        config.logical_address = address;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        tokio::select! {
            r = rampart_vehicle::uds::run_with(config, std::sync::Arc::new(crate::terminal::TerminalReporter)) => r.map_err(anyhow::Error::from),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}

/// Generates keys for an ECU or a primary.
pub fn keygen(args: KeygenArgs) -> anyhow::Result<()> {
    let scheme = KeyScheme::from_name(&args.scheme)
        .with_context(|| format!("unknown scheme {}", args.scheme))?;
    let signer = rampart_server::keys::generate_key_file(&args.out, scheme)?;
    crate::say!(
        "signing key {} (key ID {})",
        args.out.display(),
        rampart_core::signer::Signer::key_id(&signer)
    );
    if let Some(path) = &args.public_out {
        let pem = rampart_core::signer::Signer::public_key(&signer).to_spki_pem()?;
        std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))?;
        crate::say!("public key {}", path.display());
    }
    if let Some(path) = args.x25519 {
        let pair = rampart_core::encryption::EcuKeyPair::generate()?;
        write_private(&path, hex::encode(pair.private_bytes()).as_bytes())?;
        crate::say!(
            "X25519 key {} (public {})",
            path.display(),
            hex::encode(pair.public_key())
        );
    }
    Ok(())
}

/// Writes a secret file with mode 0600 (refusing to overwrite).
pub fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}
