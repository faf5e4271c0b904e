//! `rampart serve`: the image repository folder, the director and the admin API over HTTPS,
//! plus background tasks that re-sign the image repository's timestamp and snapshot before
//! they expire, prune security events and stored manifests by the retention of `[events]`
//! and `[manifests]` (also at start), judge running campaigns every `[campaigns]
//! check_every_secs`, run the V-SOC engine every `[vsoc] check_every_secs` and, with a
//! webhook configured, deliver incidents and events.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::api::{router, AppState};
use crate::config::{Config, EventsConfig, ManifestsConfig};
use crate::conn::{ConnectionOptions, Connections, Flood};
use crate::db::Db;
use crate::director::Director;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::vsoc::export::ExportConfig;

/// Options of one server run (flags over the configuration file).
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Data directory.
    pub layout: Layout,
    /// Listen address (overrides the configuration; `127.0.0.1:0` for an ephemeral port).
    pub listen: Option<String>,
    /// Database URL (overrides the configuration).
    pub database: Option<String>,
    /// Serve plain HTTP even if the configuration says TLS (labs only).
    pub danger_plain_http: bool,
    /// How often to check whether timestamp/snapshot need re-signing.
    pub refresh_every: Duration,
    /// Connection timeouts and caps (overrides `[server]` of the configuration).
    pub connections: Option<ConnectionOptions>,
}

impl ServeOptions {
    /// Defaults for a data directory.
    pub fn new(layout: Layout) -> Self {
        ServeOptions {
            layout,
            listen: None,
            database: None,
            danger_plain_http: false,
            refresh_every: Duration::from_secs(60),
            connections: None,
        }
    }
}

/// A running server.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Whether it speaks TLS.
    pub tls: bool,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl Running {
    /// Base URL (`https://127.0.0.1:PORT/`).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/", self.addr)
    }

    /// Stops the server and waits for it.
    pub async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        self.task
            .await
            .map_err(|e| Error::Config(format!("server task: {e}")))?
            .map_err(|e| Error::Config(format!("server: {e}")))
    }

    /// Waits until the server ends by itself.
    pub async fn wait(self) -> Result<()> {
        let (_keep, task) = (self.stop, self.task);
        task.await
            .map_err(|e| Error::Config(format!("server task: {e}")))?
            .map_err(|e| Error::Config(format!("server: {e}")))
    }
}

/// Starts the server: loads the secrets (admin token, TLS key, online keys, content KEK —
/// refusing any that others can read), opens the database (running migrations, sealing
/// content keys left in plain text, pruning events), binds, and serves until stopped.
pub async fn start(opts: ServeOptions) -> Result<Running> {
    let layout = opts.layout.clone();
    let config = Config::load(&layout)?;
    // Every secret is loaded (and its permissions checked) before anything starts, so a
    // refusal leaves nothing running behind it.
    let tls = config.tls && !opts.danger_plain_http;
    let admin_token = crate::pki::load_admin_token(&layout.pki())
        .map_err(|e| Error::Config(format!("admin token: {e}")))?;
    let tls_config = if tls {
        Some(
            crate::tls::server_config(&layout.pki())
                .map_err(|e| Error::Config(format!("TLS: {e}")))?,
        )
    } else {
        None
    };
    let director_keys = config.director_keys(&layout)?;
    let image_keys = config.image_online_keys(&layout)?;
    let kek = Arc::new(config.content_kek(&layout)?);

    let db_url = opts
        .database
        .clone()
        .unwrap_or_else(|| config.database_url(&layout));
    let db = Db::connect(&db_url)
        .await?
        .with_event_window(config.events.window());
    let sealed = crate::keys::kek::seal_plaintext_content_keys(&db, &kek).await?;
    if sealed > 0 {
        tracing::info!(sealed, "sealed content keys stored in plain text");
    }
    // Retention first: a server that was down for long starts within its bounds.
    prune_events(&db, &config.events, &config.vsoc.export).await;
    let mut director =
        Director::new(db.clone(), director_keys, layout.director_public()).with_content_kek(kek);
    if let Some(nudger) = nudger(&config, &layout)? {
        director = director.with_nudger(nudger);
    }
    director.set_event_policy(config.events.policy());
    let state = AppState::with_revocation_refresh(
        director,
        &layout,
        admin_token,
        config.limits.limits(),
        tls,
        config.pki.revocation_refresh(),
    )
    .with_console(config.console.clone())
    .with_vsoc(config.vsoc.clone())
    .with_image_repository(crate::ops::image_repo_with(&layout, &config)?);
    if config.vsoc.export.webhook() {
        // A webhook without its secret is a configuration error, found at start.
        config.vsoc.export.secret()?;
    }
    let connections = connections(&opts, &config, &state);
    let app = router(state.clone(), &layout.root().join("public/image"));

    let listen = opts.listen.clone().unwrap_or_else(|| config.listen.clone());
    let listener = TcpListener::bind(&listen)
        .await
        .map_err(|e| Error::Config(format!("cannot listen on {listen}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Config(e.to_string()))?;

    // Background tasks, from here on nothing fails: pruning of security events, webhook
    // deliveries and manifests, and online re-signing of the image repository's timestamp
    // and snapshot.
    let pruner = {
        let (db, events, export) = (
            db.clone(),
            config.events.clone(),
            config.vsoc.export.clone(),
        );
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(events.prune_every()).await;
                prune_events(&db, &events, &export).await;
            }
        })
    };
    // Manifests are pruned at start too, but not before serving: after an upgrade, or with
    // a shorter retention, the first run may delete millions of rows (10,000 a statement).
    let manifest_pruner = {
        let manifests = config.manifests.clone();
        tokio::spawn(async move {
            loop {
                prune_manifests(&db, &manifests).await;
                tokio::time::sleep(manifests.prune_every()).await;
            }
        })
    };
    let judge = {
        let state = state.clone();
        let every = config.campaigns.check_every();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                crate::campaign::tick(state.director(), chrono::Utc::now()).await;
            }
        })
    };
    let vsoc = {
        let state = state.clone();
        let vsoc = config.vsoc.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(vsoc.check_every()).await;
                if let Err(e) =
                    crate::vsoc::evaluate(state.director(), &vsoc, chrono::Utc::now()).await
                {
                    tracing::error!(error = %e, "V-SOC round failed");
                }
            }
        })
    };
    let webhook = config.vsoc.export.webhook().then(|| {
        tokio::spawn(crate::vsoc::export::run(
            state.director().db().clone(),
            config.vsoc.export.clone(),
            config.vsoc.check_every(),
        ))
    });
    let repo = state.image_repository().clone();
    let every = opts.refresh_every;
    let refresher = tokio::spawn(async move {
        let keys = std::sync::Arc::new(image_keys);
        loop {
            let (repo, keys) = (repo.clone(), keys.clone());
            let result =
                tokio::task::spawn_blocking(move || repo.refresh_online(&keys, chrono::Utc::now()))
                    .await;
            match result {
                Ok(Ok(done)) if !done.is_empty() => {
                    tracing::info!(?done, "re-signed image repository metadata")
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "could not re-sign image repository metadata")
                }
                Err(e) => tracing::error!(error = %e, "re-signing task failed"),
            }
            tokio::time::sleep(every).await;
        }
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
        refresher.abort();
        pruner.abort();
        manifest_pruner.abort();
        judge.abort();
        vsoc.abort();
        if let Some(w) = webhook {
            w.abort();
        }
    };
    let task = match tls_config {
        Some(tls_config) => tokio::spawn(crate::tls::serve_tls_with(
            listener,
            tls_config,
            app,
            connections,
            shutdown,
        )),
        None => {
            tracing::warn!(
                "serving plain HTTP: vehicle identity rests on manifest signatures alone (lab mode)"
            );
            tokio::spawn(crate::tls::serve_plain_with(
                listener,
                app,
                connections,
                shutdown,
            ))
        }
    };
    tracing::info!(%addr, tls, database = %redact(&db_url), "rampart server listening");
    Ok(Running {
        addr,
        tls,
        task,
        stop,
    })
}

/// The connection layer: `[server]` (or the options' override) capped by the open-files
/// limit, counters shown by `/metrics`, floods recorded as `connection-flood` events (written
/// in the background: the accept loop never waits for the database).
fn connections(opts: &ServeOptions, config: &Config, state: &AppState) -> Connections {
    let mut options = opts
        .connections
        .clone()
        .unwrap_or_else(|| config.server.connection_options());
    crate::conn::cap_to_open_files_limit(&mut options);
    let mut connections = Connections::new(options);
    connections.stats = state.connection_stats();
    let flood_state = state.clone();
    connections.on_flood = Some(Arc::new(move |flood: Flood| {
        let state = flood_state.clone();
        tokio::spawn(async move {
            state
                .director()
                .event(
                    "server",
                    rampart_core::rule::Rule::ConnectionFlood.as_str(),
                    None,
                    None,
                    Some(&flood.address.to_string()),
                    &flood.detail(),
                )
                .await;
        });
    }));
    let state = state.clone();
    connections.on_certificate_refused = Some(Arc::new(move |peer, why: String| {
        let state = state.clone();
        tokio::spawn(async move {
            state
                .director()
                .event(
                    "server",
                    rampart_core::rule::Rule::ClientCertificateRefused.as_str(),
                    None,
                    None,
                    Some(&peer.to_string()),
                    &why,
                )
                .await;
        });
    }));
    connections
}

/// The nudge publisher of `[mqtt]`, if a broker is configured.
fn nudger(config: &Config, layout: &Layout) -> Result<Option<crate::nudge::Nudger>> {
    let mqtt = &config.mqtt;
    if mqtt.url.trim().is_empty() {
        return Ok(None);
    }
    let mut broker = rampart_client::nudge::Broker {
        url: mqtt.url.trim().to_owned(),
        ..Default::default()
    };
    if broker.url.starts_with("mqtts://") {
        let ca = mqtt
            .ca
            .clone()
            .unwrap_or_else(|| layout.pki().join("ca.pem"));
        broker.ca_pem = Some(std::fs::read(&ca).map_err(|e| Error::io(&ca, e))?);
    }
    if let Some(user) = &mqtt.username {
        let password = match &mqtt.password_file {
            Some(f) => {
                rampart_client::store::check_secret_permissions(f)
                    .map_err(|e| Error::Config(e.to_string()))?;
                std::fs::read_to_string(f).map_err(|e| Error::io(f, e))?
            }
            None => String::new(),
        };
        broker.credentials = Some((user.clone(), password.trim().to_owned()));
    }
    let prefix = mqtt
        .topic_prefix
        .clone()
        .unwrap_or_else(|| rampart_client::nudge::DEFAULT_PREFIX.to_owned());
    tracing::info!(broker = %broker.url, %prefix, "nudging vehicles over MQTT");
    Ok(Some(crate::nudge::Nudger::start(&broker, &prefix)?))
}

/// Applies the retention of `[manifests]`.
async fn prune_manifests(db: &Db, manifests: &ManifestsConfig) {
    let now = chrono::Utc::now();
    let pruned = db
        .prune_manifests(now, manifests.quiet_max_age(), manifests.max_age())
        .await;
    log_pruned("stored manifests", pruned);
}

/// Applies the retention of `[events]` to security events and to the webhook's deliveries
/// of them.
async fn prune_events(db: &Db, events: &EventsConfig, export: &ExportConfig) {
    let now = chrono::Utc::now();
    let pruned = db
        .prune_events(now, events.max_age(), events.max_rows())
        .await;
    log_pruned("security events", pruned);
    if let Some(age) = events.max_age() {
        let pruned = crate::vsoc::export::prune(db, export, now, age).await;
        log_pruned("webhook deliveries", pruned);
    }
}

/// What a retention run did, in the log; an error is logged, never returned: retention must
/// never stop the server.
fn log_pruned(what: &str, pruned: Result<u64>) {
    match pruned {
        Ok(0) => {}
        Ok(n) => tracing::info!(deleted = n, "pruned {what}"),
        Err(e) => tracing::error!(error = %e, "could not prune {what}"),
    }
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(a)) if a > s => format!(
            "{}://…@{}",
            url.get(..s).unwrap_or(""),
            url.get(a + 1..).unwrap_or("")
        ),
        _ => url.to_owned(),
    }
}
