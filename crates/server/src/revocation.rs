//! Which vehicle certificates are revoked, as the API checks before every vehicle route.
//!
//! The check is on the path of every check-in and metadata request, so it must be cheap: a
//! database query costs about as much as a quarter of a whole metadata request (103 µs of
//! 366 µs, measured on SQLite). So each instance keeps the revocation list in memory and asks
//! the database at most once per refresh interval whether it changed (one `COUNT`/`MAX`
//! query; the list is re-read only when it did). A revocation written by `rampart pki revoke`
//! (from any machine, into the shared database) thus takes effect on every instance within
//! the interval, without a restart. With an interval of zero the database is asked on every
//! request instead.
//!
//! The list is fleet-wide configuration read from the database, not per-vehicle state: an
//! instance that restarts or never saw a request reads it afresh.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use crate::db::{Db, Revocation};
use crate::error::Result;

/// Default of [`Revocations::new`]'s refresh interval (`[pki] revocation_refresh_ms`).
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(1);

/// The revocation list of one instance.
pub struct Revocations {
    db: Db,
    refresh: Duration,
    snapshot: RwLock<Snapshot>,
    /// One reload at a time; requests meanwhile wait for it rather than query too.
    reloading: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Snapshot {
    checked: Option<Instant>,
    /// Row count and highest ID when read: any revoke or unrevoke changes one of them.
    version: (u64, i64),
    by_vin: HashMap<String, Revocation>,
    by_serial: HashMap<String, Revocation>,
}

impl Revocations {
    /// The revocations in `db`, re-checked at most every `refresh` (zero: every request).
    pub fn new(db: Db, refresh: Duration) -> Self {
        Revocations {
            db,
            refresh,
            snapshot: RwLock::new(Snapshot::default()),
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// The revocation that applies to a certificate for `vin` with `serial`, if any.
    pub async fn of(&self, vin: &str, serial: Option<&str>) -> Result<Option<Revocation>> {
        if self.refresh.is_zero() {
            return self.db.revocation_of(vin, serial).await;
        }
        if !self.fresh() {
            let _reload = self.reloading.lock().await;
            // Another request may have reloaded while this one waited.
            if !self.fresh() {
                self.reload().await?;
            }
        }
        let snapshot = self
            .snapshot
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(snapshot
            .by_vin
            .get(vin)
            .or_else(|| serial.and_then(|s| snapshot.by_serial.get(s)))
            .cloned())
    }

    fn fresh(&self) -> bool {
        self.snapshot
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .checked
            .is_some_and(|t| t.elapsed() < self.refresh)
    }

    async fn reload(&self) -> Result<()> {
        let version = self.db.revocations_version().await?;
        let unchanged = {
            let snapshot = self
                .snapshot
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            snapshot.checked.is_some() && snapshot.version == version
        };
        let lists = if unchanged {
            None
        } else {
            let all = self.db.revocations().await?;
            let mut by_vin = HashMap::new();
            let mut by_serial = HashMap::new();
            for r in all {
                if let Some(vin) = &r.vin {
                    by_vin.entry(vin.clone()).or_insert_with(|| r.clone());
                }
                if let Some(serial) = &r.serial {
                    by_serial.entry(serial.clone()).or_insert_with(|| r.clone());
                }
            }
            tracing::debug!(
                vins = by_vin.len(),
                serials = by_serial.len(),
                "revocation list reloaded"
            );
            Some((by_vin, by_serial))
        };
        let mut snapshot = self
            .snapshot
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        snapshot.checked = Some(Instant::now());
        snapshot.version = version;
        if let Some((by_vin, by_serial)) = lists {
            snapshot.by_vin = by_vin;
            snapshot.by_serial = by_serial;
        }
        Ok(())
    }
}
