//! A PostgreSQL connection that one batch task (`db::batch`) keeps between its batches, out
//! of the pool.
//!
//! Why: sqlx tests a connection with a round trip to the database (a ping) every time one
//! goes back to its pool. A batch task that took a pooled connection for each batch paid
//! that round trip, on both sides, for every statement it ran: as many wake-ups of
//! PostgreSQL as the statements themselves. Kept, the connection is tested by the pool's own
//! rule (only after it sat idle [`PING_WHEN_IDLE_FOR`], long enough to have died unnoticed),
//! and closed after any error; the next batch opens another.
//!
//! A kept connection runs its statements without table scans (`enable_seqscan = off`): every
//! statement of a batch task finds its rows by key, and PostgreSQL plans a statement prepared
//! on a connection once for good after its fifth run. Those runs come first — while a fleet's
//! tables are being filled and their statistics say they are empty, when a scan looks
//! cheapest — and a plan that scans `vehicles` for every batch then stays (check-ins fell
//! from about 1,900 to 1,000/s). The connection is never handed back to the pool, so the
//! setting reaches no other statement.

use std::sync::Arc;
use std::time::Instant;

use sqlx::{AnyConnection, AnyPool, Connection};
use tokio::sync::{Mutex, MutexGuard};

use super::PING_WHEN_IDLE_FOR;

/// The connection a batch task keeps, shared with the batches it runs (one at a time, so the
/// lock is never contended).
#[derive(Debug, Clone)]
pub(super) struct Held {
    pool: AnyPool,
    kept: Arc<Mutex<Option<Kept>>>,
}

/// A kept connection and when it was last used.
#[derive(Debug)]
struct Kept {
    conn: AnyConnection,
    used: Instant,
}

/// The held connection, for one batch: [`Lease::conn`] to run statements on it,
/// [`Lease::failed`] after one failed.
pub(super) struct Lease<'a> {
    pool: &'a AnyPool,
    kept: MutexGuard<'a, Option<Kept>>,
}

impl Held {
    /// Holds nothing yet: the first batch opens a connection from `pool`'s settings.
    pub(super) fn new(pool: AnyPool) -> Self {
        Held {
            pool,
            kept: Arc::new(Mutex::new(None)),
        }
    }

    /// The pool, for work done outside the batch (a check-in stored alone).
    pub(super) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The connection for a batch.
    pub(super) async fn lease(&self) -> Lease<'_> {
        Lease {
            pool: &self.pool,
            kept: self.kept.lock().await,
        }
    }
}

impl Lease<'_> {
    /// The kept connection, opened if none is kept, tested first if it sat idle.
    pub(super) async fn conn(&mut self) -> Result<&mut AnyConnection, sqlx::Error> {
        if let Some(mut kept) = self.kept.take() {
            let idle = kept.used.elapsed() >= PING_WHEN_IDLE_FOR;
            if !idle || kept.conn.ping().await.is_ok() {
                kept.used = Instant::now();
                return Ok(&mut self.kept.insert(kept).conn);
            }
            // Dead: dropped (its socket closed); another is opened below.
        }
        // Taken out of the pool for good: it never goes back, so the pool may open another
        // in its place, and the setting below reaches no other statement.
        let mut conn = self.pool.acquire().await?.detach();
        sqlx::query("SET enable_seqscan = off")
            .execute(&mut conn)
            .await?;
        let kept = self.kept.insert(Kept {
            conn,
            used: Instant::now(),
        });
        Ok(&mut kept.conn)
    }

    /// A statement on the connection failed: it is closed (it may be broken, or in a state
    /// no one should inherit), and the next batch opens another.
    pub(super) async fn failed(&mut self) {
        if let Some(kept) = self.kept.take() {
            // Closing politely can fail on a broken connection; it is gone either way.
            let _ = kept.conn.close().await;
        }
    }
}
