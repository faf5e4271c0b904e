//! Group commit of check-ins on SQLite: one writer task stores the check-ins that arrive
//! together in one transaction and answers them after the commit. When one of them is
//! refused, the batch is stored again with each check-in in a savepoint of its own.
//!
//! Why: SQLite has one writer at a time, and every commit waits for its write-ahead log to
//! reach the disk (`synchronous=FULL`, so that an accepted manifest counter survives a power
//! cut). One transaction per check-in made check-ins wait on each other's disk flushes — and
//! on SQLite's busy handler, which polls for the lock with sleeps. Here the flush is shared
//! by every check-in of a batch, and nothing polls.
//!
//! The guarantees are those of one transaction per check-in: each is decided in order inside
//! the batch (a replay of a manifest accepted earlier in the same batch is refused, its
//! savepoint rolled back, nothing of it written); a check-in is answered only once the batch
//! is on disk; if the commit fails, every check-in of the batch gets the error and nothing of
//! the batch is stored. PostgreSQL does not need this: it commits concurrent transactions
//! with one flush by itself.

use sqlx::Acquire;

use super::batch::{same, Batches, OwnedCheckin};
use super::{db_err, now_text, Checkin, Db};
use crate::error::{Error, Result};

/// At most this many check-ins in one transaction: a batch is whatever arrived while the
/// previous one was being written, so this only bounds a burst.
const MAX_BATCH: usize = 128;

/// The handle the pool's users share (`db::batch`); the writer task ends when the last one
/// is dropped.
#[derive(Debug, Clone)]
pub(super) struct GroupCommit {
    batches: Batches<OwnedCheckin, Result<Vec<i64>>>,
}

impl GroupCommit {
    /// Starts the writer on the current Tokio runtime; `db` is the database without a group
    /// commit of its own (the writer stores through [`Db::record_checkin_in`]).
    pub(super) fn start(db: Db) -> Self {
        let batches = Batches::start(MAX_BATCH, move |batch| {
            let db = db.clone();
            async move { store(&db, &batch).await }
        });
        GroupCommit { batches }
    }

    /// Stores `checkin` in the next batch and answers as [`Db::record_checkin`] does; `None`
    /// if the writer is gone (its runtime ended), for the caller to store it by itself.
    pub(super) async fn record(&self, checkin: &Checkin<'_>) -> Option<Result<Vec<i64>>> {
        self.batches.run(OwnedCheckin::from(checkin)).await
    }
}

/// Stores a batch in one transaction; one answer per check-in, in order.
///
/// First without savepoints (two statements fewer per check-in): when every check-in of the
/// batch is accepted, that is the answer. A check-in refused (a replay, most often a copy of
/// a manifest accepted earlier in the same batch) may have written part of itself, so the
/// whole transaction is rolled back and the batch is stored again, each check-in in its own
/// savepoint; nothing of the first attempt remains. A transaction that cannot begin or commit
/// fails every check-in of the batch, as before.
async fn store(db: &Db, batch: &[OwnedCheckin]) -> Vec<Result<Vec<i64>>> {
    match store_all_or_none(db, batch).await {
        Attempt::Stored(answers) => answers,
        Attempt::Refused => store_each(db, batch).await,
        Attempt::Failed(e) => batch.iter().map(|_| Err(same(&e))).collect(),
    }
}

/// What storing a whole batch without savepoints came to.
enum Attempt {
    /// Every check-in accepted, the batch on disk: the answers.
    Stored(Vec<Result<Vec<i64>>>),
    /// A check-in was refused: nothing stored.
    Refused,
    /// The transaction could not begin or commit: nothing stored.
    Failed(Error),
}

async fn store_all_or_none(db: &Db, batch: &[OwnedCheckin]) -> Attempt {
    let mut tx = match db.pool.begin().await {
        Ok(tx) => tx,
        Err(e) => return Attempt::Failed(db_err("begin")(e)),
    };
    let now = now_text();
    let mut answers = Vec::with_capacity(batch.len());
    for job in batch {
        match db.record_checkin_in(&mut tx, &job.borrowed(), &now).await {
            Ok(done) => answers.push(Ok(done)),
            // Rolled back before the batch is stored again (by then on another connection of
            // the pool, which would otherwise wait for this one's write lock).
            Err(_) => {
                return match tx.rollback().await {
                    Ok(()) => Attempt::Refused,
                    Err(e) => Attempt::Failed(db_err("roll back")(e)),
                };
            }
        }
    }
    match tx.commit().await {
        Ok(()) => Attempt::Stored(answers),
        Err(e) => Attempt::Failed(db_err("commit")(e)),
    }
}

/// The batch in one transaction, each check-in in a savepoint of its own: a refused one is
/// rolled back alone.
async fn store_each(db: &Db, batch: &[OwnedCheckin]) -> Vec<Result<Vec<i64>>> {
    let failed = |e: &Error| batch.iter().map(|_| Err(same(e))).collect();
    let mut tx = match db.pool.begin().await {
        Ok(tx) => tx,
        Err(e) => return failed(&db_err("begin")(e)),
    };
    let now = now_text();
    let mut answers = Vec::with_capacity(batch.len());
    for job in batch {
        let checkin = job.borrowed();
        let mut savepoint = match tx.begin().await {
            Ok(sp) => sp,
            Err(e) => return failed(&db_err("savepoint")(e)),
        };
        match db.record_checkin_in(&mut savepoint, &checkin, &now).await {
            Ok(done) => {
                if let Err(e) = savepoint.commit().await {
                    return failed(&db_err("release savepoint")(e));
                }
                answers.push(Ok(done));
            }
            Err(refused) => {
                if let Err(e) = savepoint.rollback().await {
                    // The transaction's state is unknown: none of the batch is kept.
                    return failed(&db_err("roll back savepoint")(e));
                }
                answers.push(Err(refused));
            }
        }
    }
    if let Err(e) = tx.commit().await {
        return failed(&db_err("commit")(e));
    }
    answers
}
