//! Helpers shared by the integration tests: a throw-away database on each backend, and a
//! TLS client configuration for the fleet CA.
//!
//! PostgreSQL: the admin URL comes from `RAMPART_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`, what `scripts/postgres-up` provides). Every
//! test gets its own database (`rampart_test_<pid>_<nanos>_<n>`), dropped afterwards even if
//! the test fails. An unreachable server fails the test — it is never skipped silently —
//! unless `RAMPART_SKIP_POSTGRES=1`.
#![allow(dead_code)]

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::Connection;

/// Default admin URL (trust authentication on loopback, as `scripts/postgres-up` sets up).
pub(crate) const DEFAULT_POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The PostgreSQL admin URL the tests use.
pub(crate) fn postgres_admin_url() -> String {
    std::env::var("RAMPART_TEST_POSTGRES")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_POSTGRES_ADMIN_URL.to_owned())
}

/// Whether PostgreSQL tests are skipped on purpose (`RAMPART_SKIP_POSTGRES=1`).
pub(crate) fn skip_postgres() -> bool {
    std::env::var("RAMPART_SKIP_POSTGRES").is_ok_and(|v| v.trim() == "1")
}

/// `admin_url` with its database name replaced by `name` (query string kept).
pub(crate) fn with_database_name(admin_url: &str, name: &str) -> String {
    let scheme_end = admin_url.find("://").map_or(0, |i| i + 3);
    let (base, query) = match admin_url.find('?') {
        Some(q) => admin_url.split_at(q),
        None => (admin_url, ""),
    };
    let authority_end = base
        .get(scheme_end..)
        .and_then(|rest| rest.find('/'))
        .map_or(base.len(), |i| scheme_end + i);
    format!("{}/{name}{query}", &base[..authority_end])
}

/// A database created for one test on the PostgreSQL server.
pub(crate) struct PgDatabase {
    admin_url: String,
    /// Database name.
    pub name: String,
    /// URL of the database.
    pub url: String,
}

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

async fn admin_connection(admin_url: &str) -> sqlx::PgConnection {
    let attempt = tokio::time::timeout(
        Duration::from_secs(10),
        sqlx::PgConnection::connect(admin_url),
    )
    .await;
    match attempt {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => panic!(
            "PostgreSQL at {admin_url} is unreachable: {e}\n\
             Run ./scripts/postgres-up (or point RAMPART_TEST_POSTGRES at a server, \
             or set RAMPART_SKIP_POSTGRES=1 to skip the PostgreSQL tests)"
        ),
        Err(_) => panic!(
            "PostgreSQL at {admin_url} did not answer within 10 s.\n\
             Run ./scripts/postgres-up (or point RAMPART_TEST_POSTGRES at a server, \
             or set RAMPART_SKIP_POSTGRES=1 to skip the PostgreSQL tests)"
        ),
    }
}

impl PgDatabase {
    /// Creates a fresh, uniquely named database. Panics (with what to do) if the server is
    /// unreachable.
    pub(crate) async fn create() -> PgDatabase {
        let admin_url = postgres_admin_url();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!(
            "rampart_test_{}_{}_{}",
            std::process::id(),
            nanos,
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = admin_connection(&admin_url).await;
        sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on {admin_url}: {e}"));
        let _ = conn.close().await;
        let url = with_database_name(&admin_url, &name);
        PgDatabase {
            admin_url,
            name,
            url,
        }
    }

    /// Drops the database (closing any connection still open to it).
    pub(crate) async fn drop_database(self) {
        let mut conn = admin_connection(&self.admin_url).await;
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        if let Err(e) = sqlx::raw_sql(&sql).execute(&mut conn).await {
            eprintln!("warning: could not drop test database {}: {e}", self.name);
        }
        let _ = conn.close().await;
    }
}

/// Runs `test` in its own task and re-raises its panic, after `cleanup` ran either way.
async fn run_then<Fut, C>(test: Fut, cleanup: C)
where
    Fut: Future<Output = ()> + Send + 'static,
    C: Future<Output = ()>,
{
    let result = tokio::spawn(test).await;
    cleanup.await;
    match result {
        Ok(()) => {}
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("test task failed: {e}"),
    }
}

/// Runs `test` with the URL of a fresh SQLite database file (in a temporary directory).
pub(crate) async fn with_sqlite<F, Fut>(test: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("rampart.db").display());
    run_then(test(url), async move { drop(dir) }).await;
}

/// Runs `test` with the URL of a fresh PostgreSQL database, dropped afterwards. Skipped only
/// with `RAMPART_SKIP_POSTGRES=1`.
pub(crate) async fn with_postgres<F, Fut>(test: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    if skip_postgres() {
        eprintln!("RAMPART_SKIP_POSTGRES=1: PostgreSQL test skipped");
        return;
    }
    let db = PgDatabase::create().await;
    let url = db.url.clone();
    run_then(test(url), db.drop_database()).await;
}

/// A TLS client trusting the fleet CA `ca_pem`, offering `alpn`, presenting the certificate
/// and key of `identity_pem` (one PEM holding both) when given.
pub(crate) fn tls_client_config(
    ca_pem: &[u8],
    identity_pem: Option<&[u8]>,
    alpn: &[&[u8]],
) -> rustls::ClientConfig {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem).unwrap())
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity_pem {
        Some(pem) => {
            let certs = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(pem).unwrap();
            builder.with_client_auth_cert(certs, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}
