//! Serving an axum [`Router`] over HTTPS with optional client certificates (mutual TLS).
//!
//! Public routes (repository metadata and images) are open to anyone; vehicle routes (the
//! director's manifest upload and per-vehicle targets) require a client certificate signed
//! by the fleet CA (see [`crate::pki`]). One listener serves both: the TLS handshake asks for
//! a certificate but lets a client without one through, while a certificate that is
//! presented must chain to the fleet CA, carry clientAuth and be within its validity — or
//! the handshake fails. Handlers learn who is calling from the [`ClientIdentity`] request
//! extension, or demand a vehicle with the [`RequireVehicle`] extractor.
//!
//! Invariants: a connection never blocks the accept loop (the handshake runs in the
//! connection's own task, bounded by the handshake timeout); a failing or hostile connection
//! is logged and dropped, never a reason to stop serving; no connection lives on without a
//! request in flight past the timeouts of [`crate::conn`], nor beyond its caps; every request
//! carries a `ClientIdentity` whose `vin` comes only from a verified certificate.

use rampart_core::rule::Rule;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinError, JoinSet};
use tokio_rustls::TlsAcceptor;
use tower::Service;

use crate::conn::{self, ConnectionOptions, ConnectionStats, Connections};
use crate::linger;
use crate::pki::{self, PkiFiles};

/// Longest a client may take to complete the TLS handshake (the default of
/// [`ConnectionOptions::handshake_timeout`]).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest an HTTP/1 client may take to send a request's headers (the default of
/// [`ConnectionOptions::header_read_timeout`]).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// After shutdown is requested, how long open connections get to finish their requests
/// before they are cut.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Result alias of the TLS layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file of the PKI directory is missing, unreadable or does not hold what it should.
    #[error("{}: {reason}", path.display())]
    PkiFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },

    /// rustls refused the certificates, key or verifier settings.
    #[error("TLS configuration refused: {reason}")]
    Config {
        /// rustls' reason.
        reason: String,
    },
}

impl Error {
    /// A short stable identifier of the rule that failed.
    pub fn rule(&self) -> Rule {
        match self {
            Error::PkiFile { .. } => Rule::PkiFile,
            Error::Config { .. } => Rule::TlsConfig,
        }
    }
}

/// Who sent a request, inserted as a request extension on every request served by
/// [`serve_tls`] or [`serve_plain`].
#[derive(Clone, Debug)]
pub struct ClientIdentity {
    /// The VIN of the verified client certificate (its subject CN), `None` when the client
    /// presented no certificate (or the connection is not TLS).
    pub vin: Option<String>,
    /// The serial of that certificate (lower-case hex), for revocation checks.
    pub serial: Option<String>,
    /// The peer's address.
    pub peer: SocketAddr,
}

/// The rustls configuration for the PKI in `pki_dir`: the server certificate and key; client
/// certificates optional but, when presented, verified against the fleet CA (chain,
/// clientAuth EKU, validity); ALPN `h2` and `http/1.1`. Uses the aws-lc-rs provider
/// explicitly, whatever the process default is.
pub fn server_config(pki_dir: &Path) -> Result<Arc<ServerConfig>> {
    let files = PkiFiles::in_dir(pki_dir);
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());

    let ca_certs = read_certs(&files.ca_cert)?;
    let mut roots = RootCertStore::empty();
    for cert in ca_certs {
        roots.add(cert).map_err(|e| Error::PkiFile {
            path: files.ca_cert.clone(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| Error::Config {
            reason: e.to_string(),
        })?;

    let chain = read_certs(&files.server_cert)?;
    rampart_client::store::check_secret_permissions(&files.server_key).map_err(|e| {
        Error::PkiFile {
            path: files.server_key.clone(),
            reason: e.to_string(),
        }
    })?;
    let key = PrivateKeyDer::from_pem_file(&files.server_key).map_err(|e| Error::PkiFile {
        path: files.server_key.clone(),
        reason: e.to_string(),
    })?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config {
            reason: e.to_string(),
        })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| Error::Config {
            reason: e.to_string(),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Session resumption for a fleet: TLS 1.3 tickets sealed with this process's rotating
    // key (stateless, so every vehicle can resume, not only the last 256 as with rustls's
    // default session cache), and a larger cache for TLS 1.2 clients. A vehicle that
    // reconnects every cycle then skips the certificate exchange and its signatures. A
    // resumed session carries the certificate it was established with: its VIN, serial (for
    // revocation) and validity are checked on every request (`vehicle_of_peer`).
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| Error::Config {
        reason: format!("TLS session tickets: {e}"),
    })?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
    Ok(Arc::new(config))
}

/// Serves `app` over TLS on `listener` until `shutdown` completes, then stops accepting,
/// lets open connections finish for up to [`SHUTDOWN_GRACE`] and returns; with the default
/// [`Connections`] (see [`serve_tls_with`]).
pub async fn serve_tls(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_tls_with(listener, config, app, Connections::default(), shutdown).await
}

/// [`serve_tls`] with the given connection timeouts and caps.
///
/// Each connection runs in its own task: TLS handshake (bounded), then HTTP/1.1 or HTTP/2
/// until it is idle too long (see [`crate::conn`]). Every request gets a [`ClientIdentity`]
/// extension (and axum's `ConnectInfo<SocketAddr>`). Handshake failures are logged at debug
/// level (scanners and clients with the wrong CA are routine), timeouts at info.
pub async fn serve_tls_with(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    app: Router,
    connections: Connections,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let acceptor = TlsAcceptor::from(config);
    let timeout = connections.options.handshake_timeout;
    let report = connections.on_certificate_refused.clone();
    serve_connections(listener, app, connections, shutdown, move |tcp, peer| {
        let acceptor = acceptor.clone();
        let report = report.clone();
        async move {
            match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let cert = vehicle_of_peer(stream.get_ref().1.peer_certificates(), peer);
                    Some((stream, cert))
                }
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    if let (Some(why), Some(report)) = (certificate_refusal(&e), &report) {
                        report(peer, why);
                    }
                    None
                }
                Err(_) => {
                    tracing::info!(%peer, ?timeout, "TLS handshake timed out");
                    None
                }
            }
        }
    })
    .await
}

/// Serves `app` over plain HTTP (no TLS), like [`serve_tls`] otherwise; every request's
/// [`ClientIdentity`] has `vin: None`. For a CDN-style origin of public files behind a
/// TLS-terminating proxy, and for tests.
pub async fn serve_plain(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_plain_with(listener, app, Connections::default(), shutdown).await
}

/// [`serve_plain`] with the given connection timeouts and caps.
pub async fn serve_plain_with(
    listener: TcpListener,
    app: Router,
    connections: Connections,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_connections(
        listener,
        app,
        connections,
        shutdown,
        |tcp, _peer| async move { Some((tcp, None)) },
    )
    .await
}

/// Extractor for routes only a vehicle may call: yields the VIN of the verified client
/// certificate, or rejects with 401 and
/// `{"error": "...", "rule": "client-certificate-required"}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequireVehicle(pub String);

/// Rejection of [`RequireVehicle`]: the request came without a fleet client certificate.
#[derive(Clone, Debug)]
pub struct VehicleCertificateRequired;

impl IntoResponse for VehicleCertificateRequired {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": "this route requires a vehicle client certificate issued by the fleet CA",
            "rule": Rule::ClientCertificateRequired,
        });
        (StatusCode::UNAUTHORIZED, Json(body)).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequireVehicle {
    type Rejection = VehicleCertificateRequired;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<ClientIdentity>()
            .and_then(|identity| identity.vin.clone())
            .map(RequireVehicle)
            .ok_or(VehicleCertificateRequired)
    }
}

/// Why a failed handshake refused the client's certificate, if that is why it failed.
fn certificate_refusal(e: &io::Error) -> Option<String> {
    let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    match tls {
        rustls::Error::InvalidCertificate(why) => Some(format!(
            "client certificate refused in the TLS handshake: {why:?}"
        )),
        rustls::Error::NoCertificatesPresented => {
            Some("the TLS handshake presented no client certificate where one was needed".into())
        }
        _ => None,
    }
}

/// The accept loop shared by [`serve_tls`] and [`serve_plain`]. `handshake` turns a TCP
/// connection into the stream HTTP is spoken over and the VIN of the client, or `None` to
/// drop the connection; it runs in the connection's task. A connection over a cap is closed
/// right after `accept`.
async fn serve_connections<H, F, S>(
    listener: TcpListener,
    app: Router,
    connections: Connections,
    shutdown: impl Future<Output = ()> + Send + 'static,
    handshake: H,
) -> io::Result<()>
where
    H: Fn(TcpStream, SocketAddr) -> F,
    F: Future<Output = Option<(S, Option<PeerVehicle>)>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Connections {
        options,
        stats,
        on_flood,
        on_certificate_refused: _,
    } = connections;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(options.h2_keep_alive_interval)
        .keep_alive_timeout(options.h2_keep_alive_timeout);
    let builder = Arc::new(builder);
    let table = conn::Table::new(&options, stats.clone());
    let floods = conn::FloodReports::new();
    let options = Arc::new(options);

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                log_join(joined);
            }
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                        accept_error_pause(&e).await;
                        continue;
                    }
                };
                let slot = match table.admit(peer.ip()) {
                    Ok(slot) => slot,
                    Err(refusal) => {
                        stats.refused.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%peer, ?refusal, "connection refused: cap reached");
                        if let Some(flood) = floods.note(peer.ip(), refusal, table.cap(refusal)) {
                            tracing::warn!(%peer, detail = %flood.detail(), "connection flood");
                            if let Some(report) = &on_flood {
                                report(flood);
                            }
                        }
                        drop(tcp);
                        continue;
                    }
                };
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
                }
                let handshake = handshake(tcp, peer);
                let connection = serve_connection(
                    handshake,
                    peer,
                    app.clone(),
                    builder.clone(),
                    Limits {
                        options: options.clone(),
                        stats: stats.clone(),
                        _slot: slot,
                    },
                    stop_rx.clone(),
                );
                tasks.spawn(connection);
            }
        }
    }

    drop(listener);
    // Receivers were all cloned before this send, so every connection task sees it.
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while let Some(joined) = tasks.join_next().await {
            log_join(joined);
        }
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            open = tasks.len(),
            grace = ?SHUTDOWN_GRACE,
            "connections still open after the shutdown grace period; closing them"
        );
        tasks.shutdown().await;
    }
    Ok(())
}

/// What bounds one connection: the options, the counters, and its place in the caps (freed
/// when the connection's task ends).
struct Limits {
    options: Arc<ConnectionOptions>,
    stats: Arc<ConnectionStats>,
    _slot: conn::Slot,
}

/// One connection: handshake, then HTTP until the client is done, the connection has been
/// idle too long (then it is asked to close, and cut after [`conn::CLOSE_GRACE`]), its client
/// stopped sending a request body or reading a response (then it is cut), or shutdown is
/// requested (in-flight requests finish, then it is closed).
async fn serve_connection<F, S>(
    handshake: F,
    peer: SocketAddr,
    app: Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) where
    F: Future<Output = Option<(S, Option<PeerVehicle>)>>,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let established = tokio::select! {
        established = handshake => established,
        () = stop_requested(&mut stop) => None,
    };
    let Some((stream, vehicle)) = established else {
        return;
    };
    let activity = conn::Activity::new();
    let (vin, serial) = vehicle.map_or((None, None), |v| (Some(v.vin), Some(v.serial)));
    let service = TowerToHyperService::new(WithIdentity {
        inner: app,
        identity: ClientIdentity { vin, serial, peer },
        activity: activity.clone(),
    });
    let options = &limits.options;
    let mut connection = pin!(builder.serve_connection(TokioIo::new(stream), service));
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stop_requested(&mut stop) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
        () = activity.stalled(options.stall_timeout) => {
            limits.stats.stalled.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, "cutting a connection whose client stopped sending or reading");
            // Dropping the connection closes the socket: nothing can be sent to this client.
            Ok(())
        }
        () = activity.idle(options.first_request_timeout, options.idle_timeout) => {
            limits.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "closing an idle connection");
            // Nothing is in flight, so it closes at once; a peer that keeps it busy anyway
            // (a request head trickling in) is cut after the grace period.
            connection.as_mut().graceful_shutdown();
            tokio::time::timeout(conn::CLOSE_GRACE, connection.as_mut())
                .await
                .unwrap_or(Ok(()))
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// The router, with the connection's [`ClientIdentity`] (and `ConnectInfo`) inserted into
/// each request.
#[derive(Clone)]
struct WithIdentity {
    inner: Router,
    identity: ClientIdentity,
    activity: Arc<conn::Activity>,
}

impl Service<Request<Incoming>> for WithIdentity {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        <Router as Service<Request<Body>>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, mut request: Request<Incoming>) -> Self::Future {
        let extensions = request.extensions_mut();
        // Whatever a client sends, these come from the connection, not from the request.
        extensions.insert(self.identity.clone());
        extensions.insert(ConnectInfo(self.identity.peer));
        // In flight until its response has been sent: the connection is not idle meanwhile.
        let in_flight = self.activity.start();
        // An early answer must reach the client before its unread body is let go.
        let activity = self.activity.clone();
        let (request, held) = linger::hold(request, Arc::new(move || activity.request_progress()));
        let response = self.inner.call(request);
        Box::pin(async move { Ok(linger::answer(response.await?, held, in_flight)) })
    }
}

/// The vehicle a verified client certificate names.
struct PeerVehicle {
    vin: String,
    /// The certificate's serial, lower-case hex.
    serial: String,
}

/// The VIN of a verified client certificate chain: the leaf's single subject CN, which must
/// also pass [`pki::validate_vin`]; and the leaf's serial. The chain has been verified by
/// rustls before this runs.
/// TLS 1.2 sessions kept for resumption (TLS 1.3 uses tickets).
const SESSION_CACHE: usize = 16 * 1024;

fn vehicle_of_peer(
    certs: Option<&[CertificateDer<'static>]>,
    peer: SocketAddr,
) -> Option<PeerVehicle> {
    let leaf = certs?.first()?;
    let (_, cert) = match x509_parser::parse_x509_certificate(leaf) {
        Ok(parsed) => parsed,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "verified client certificate does not parse");
            return None;
        }
    };
    // Verified at the full handshake; a resumed session is not verified again, so a
    // certificate that expired since is refused here.
    if !cert.validity().is_valid() {
        tracing::warn!(%peer, not_after = %cert.validity().not_after, "client certificate of a resumed session has expired; treated as anonymous");
        return None;
    }
    let mut common_names = cert.subject().iter_common_name();
    let (Some(cn), None) = (common_names.next(), common_names.next()) else {
        tracing::warn!(%peer, "client certificate has no single subject CN; treated as anonymous");
        return None;
    };
    let vin = match cn.as_str() {
        Ok(vin) => vin,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "client certificate CN is not a string");
            return None;
        }
    };
    match pki::validate_vin(vin) {
        Ok(()) => Some(PeerVehicle {
            vin: vin.to_owned(),
            serial: hex::encode(cert.raw_serial()),
        }),
        Err(e) => {
            tracing::warn!(%peer, error = %e, "client certificate CN is not a valid VIN");
            None
        }
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pki_file = |reason: String| Error::PkiFile {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pki_file(e.to_string()))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| pki_file(e.to_string()))?;
    if certs.is_empty() {
        return Err(pki_file("no certificate in the file".to_owned()));
    }
    Ok(certs)
}

/// Completes once shutdown is requested (or the accept loop is gone).
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it here rather than in the caller.
    let _ = stop.wait_for(|stop| *stop).await;
}

fn log_join(joined: std::result::Result<(), JoinError>) {
    if let Err(e) = joined {
        if e.is_panic() {
            tracing::error!(error = %e, "connection task panicked");
        }
    }
}

/// Errors from `accept` that concern one connection are skipped; others (out of file
/// descriptors…) get a pause so the loop does not spin while they last.
async fn accept_error_pause(e: &io::Error) {
    match e.kind() {
        io::ErrorKind::ConnectionAborted
        | io::ErrorKind::ConnectionRefused
        | io::ErrorKind::ConnectionReset => {
            tracing::debug!(error = %e, "accept: connection gone");
        }
        _ => {
            tracing::error!(error = %e, "accept failed; pausing for a second");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
