//! `rampart tuf-client`: a standalone TUF client over rampart-core, with the command line
//! TUF implementations use to test each other.
//!
//! ```text
//! rampart tuf-client --metadata-dir D init TRUSTED_ROOT
//! rampart tuf-client --metadata-url U --metadata-dir D refresh
//! rampart tuf-client --metadata-url U --metadata-dir D --target-name N [--target-name N2 …]
//!                    --target-dir T --target-base-url B download
//! ```
//! Exit status 0 on success, 1 on any failure. The metadata directory holds exactly the bytes
//! that were accepted, under unversioned names; targets go to `T/<percent-encoded path>`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Subcommand;
use rampart_client::fetch::encode_target_path;
use rampart_client::{download_target, run, FetchConfig, HttpFetcher, MetadataStore, TlsConfig};
use rampart_core::client::{safe_file_name, target_url_path, Client, Config};

/// Options of `tuf-client` (given before its subcommand, in any order).
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Directory of trusted metadata.
    #[arg(long, value_name = "DIR")]
    metadata_dir: PathBuf,

    /// Base URL of the repository's metadata (ending in `/`); required by refresh and
    /// download.
    #[arg(long, value_name = "URL")]
    metadata_url: Option<String>,

    /// Target to download (repeatable; downloaded in order, stopping at the first failure).
    #[arg(long = "target-name", value_name = "NAME")]
    target_names: Vec<String>,

    /// Directory to download targets into.
    #[arg(long, value_name = "DIR")]
    target_dir: Option<PathBuf>,

    /// Base URL of the repository's targets (ending in `/`).
    #[arg(long, value_name = "URL")]
    target_base_url: Option<String>,

    #[command(subcommand)]
    action: TufAction,
}

#[derive(Debug, Subcommand)]
enum TufAction {
    /// Copy a trusted root into the metadata directory (no network).
    Init {
        /// The root metadata file to trust.
        trusted_root: PathBuf,
    },
    /// Run the TUF client workflow: root chain, timestamp, snapshot, targets.
    Refresh,
    /// Refresh, then download each --target-name.
    Download,
}

/// Runs the subcommand.
pub(crate) fn main(args: Args) -> anyhow::Result<()> {
    let store = MetadataStore::open(&args.metadata_dir)?;
    match &args.action {
        TufAction::Init { trusted_root } => {
            let bytes = std::fs::read(trusted_root)
                .with_context(|| format!("reading {}", trusted_root.display()))?;
            // Refuse to start from a root that does not even verify against itself.
            rampart_core::trusted::TrustedSet::new("local", &bytes, chrono::Utc::now())
                .context("the trusted root does not verify")?;
            store.write("root.json", &bytes)?;
            Ok(())
        }
        TufAction::Refresh | TufAction::Download => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(refresh_and_download(&args, &store))
        }
    }
}

async fn refresh_and_download(args: &Args, store: &MetadataStore) -> anyhow::Result<()> {
    let Some(metadata_url) = args.metadata_url.as_deref() else {
        bail!(
            "--metadata-url URL is required for refresh and download \
             (rampart tuf-client --metadata-url URL --metadata-dir DIR refresh)"
        );
    };
    let metadata_url = with_slash(metadata_url);
    let root = store
        .read("root.json")?
        .context("no trusted root.json in the metadata directory (run `init` first)")?;
    let now = chrono::Utc::now();
    let mut client = Client::new(metadata_url.as_str(), &root, now, Config::default())?;
    let fetcher = HttpFetcher::new(FetchConfig::default(), &TlsConfig::default())?;
    client.start_refresh();
    run(&mut client, &fetcher, &metadata_url, store).await?;
    tracing::info!("refresh complete");
    if matches!(args.action, TufAction::Refresh) {
        return Ok(());
    }
    let (Some(target_dir), Some(base)) = (&args.target_dir, &args.target_base_url) else {
        bail!("download needs --target-dir and --target-base-url");
    };
    if args.target_names.is_empty() {
        bail!("download needs at least one --target-name");
    }
    let base = with_slash(base);
    let consistent = client.trusted().root().signed.consistent_snapshot();
    for name in &args.target_names {
        client.start_lookup(name, None)?;
        run(&mut client, &fetcher, &metadata_url, store).await?;
        let info = client
            .found_target()
            .cloned()
            .with_context(|| format!("target {name} not found"))?;
        let url = format!(
            "{base}{}",
            encode_target_path(&target_url_path(&info, consistent))
        );
        let file_name = safe_file_name(&info.path);
        let dest = target_dir.join(&file_name);
        let outcome = download_target(
            &fetcher,
            &url,
            &dest,
            info.file.length,
            &info.file.hashes,
            &mut |_, _| {},
        )
        .await?;
        tracing::info!(target = %name, ?outcome, dest = %dest.display(), "target ready");
    }
    Ok(())
}

fn with_slash(url: &str) -> String {
    if url.ends_with('/') {
        url.to_owned()
    } else {
        format!("{url}/")
    }
}
