//! A queue whose waiting requests one task takes together, a batch at a time: what the
//! check-in path uses to share work between the requests that arrive while the previous
//! batch runs — on SQLite one transaction and disk flush (`db::group_commit`), on PostgreSQL
//! one statement (`db::quiet_batch` for the check-ins' writes, `db::role_reads` for the
//! reads of director documents).
//!
//! Why on PostgreSQL: a check-in's cost there is mostly per statement — the backend's
//! wake-up, its executor set up, and sqlx's round trip — not per row. A batch shares all of
//! that, on a connection its task keeps (`db::held`: no ping each time it would go back to
//! the pool). Nothing waits on purpose: a batch is whatever queued while the last one ran,
//! so a lone request goes at once.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

use super::{Checkin, NewEvent, ReportUpdate};
use crate::error::Error;

/// Requests waiting (beyond this, senders wait: back-pressure).
const QUEUE: usize = 1024;

/// The handle a batch's users share; the task ends when the last one is dropped.
#[derive(Debug)]
pub(super) struct Batches<J, A> {
    jobs: mpsc::Sender<(J, oneshot::Sender<A>)>,
}

impl<J, A> Clone for Batches<J, A> {
    fn clone(&self) -> Self {
        Batches {
            jobs: self.jobs.clone(),
        }
    }
}

impl<J: Send + 'static, A: Send + 'static> Batches<J, A> {
    /// Starts the task on the current Tokio runtime: `handle` gets up to `max` requests that
    /// queued together and answers each, in order (an answer missing at the end is dropped,
    /// and its caller learns the task is gone).
    pub(super) fn start<F, Fut>(max: usize, mut handle: F) -> Self
    where
        F: FnMut(Vec<J>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<A>> + Send,
    {
        let (jobs, mut queue) = mpsc::channel::<(J, oneshot::Sender<A>)>(QUEUE);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max);
            while queue.recv_many(&mut batch, max).await > 0 {
                let (requests, answers): (Vec<J>, Vec<oneshot::Sender<A>>) =
                    batch.drain(..).unzip();
                for (answer, result) in answers.into_iter().zip(handle(requests).await) {
                    // A caller that stopped waiting (its request was cancelled) has nothing
                    // to learn.
                    let _ = answer.send(result);
                }
            }
        });
        Batches { jobs }
    }

    /// Queues `job` for the next batch and waits for its answer; `None` if the task is gone
    /// (its runtime ended), for the caller to do the work by itself.
    pub(super) async fn run(&self, job: J) -> Option<A> {
        let (answer, answered) = oneshot::channel();
        self.jobs.send((job, answer)).await.ok()?;
        answered.await.ok()
    }
}

/// A check-in a batch's task can own.
#[derive(Debug)]
pub(super) struct OwnedCheckin {
    pub(super) vin: String,
    pub(super) counter: u64,
    pub(super) nonce: String,
    pub(super) document: String,
    pub(super) reports: Vec<ReportUpdate>,
    remote: Option<String>,
    events: Vec<OwnedEvent>,
    progress: Vec<(String, String, &'static str)>,
    update_failures: bool,
}

#[derive(Debug)]
struct OwnedEvent {
    source: String,
    rule: String,
    vin: Option<String>,
    ecu_id: Option<String>,
    remote: Option<String>,
    detail: String,
}

impl From<&Checkin<'_>> for OwnedCheckin {
    fn from(c: &Checkin<'_>) -> Self {
        OwnedCheckin {
            vin: c.vin.to_owned(),
            counter: c.counter,
            nonce: c.nonce.to_owned(),
            document: c.document.to_owned(),
            reports: c.reports.clone(),
            remote: c.remote.map(str::to_owned),
            events: c
                .events
                .iter()
                .map(|e| OwnedEvent {
                    source: e.source.to_owned(),
                    rule: e.rule.to_owned(),
                    vin: e.vin.map(str::to_owned),
                    ecu_id: e.ecu_id.map(str::to_owned),
                    remote: e.remote.map(str::to_owned),
                    detail: e.detail.to_owned(),
                })
                .collect(),
            progress: c.progress.clone(),
            update_failures: c.update_failures,
        }
    }
}

impl OwnedCheckin {
    /// The check-in as the storing paths take it.
    pub(super) fn borrowed(&self) -> Checkin<'_> {
        Checkin {
            vin: &self.vin,
            counter: self.counter,
            nonce: &self.nonce,
            document: &self.document,
            reports: self.reports.clone(),
            remote: self.remote.as_deref(),
            events: self
                .events
                .iter()
                .map(|e| NewEvent {
                    source: &e.source,
                    rule: &e.rule,
                    vin: e.vin.as_deref(),
                    ecu_id: e.ecu_id.as_deref(),
                    remote: e.remote.as_deref(),
                    detail: &e.detail,
                })
                .collect(),
            progress: self.progress.clone(),
            update_failures: self.update_failures,
        }
    }
}

/// The error of a failed batch, for each of its requests (errors are not `Clone`).
pub(super) fn same(e: &Error) -> Error {
    Error::Database(e.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::sync::{Arc, Mutex};

    /// Requests that queue while a batch runs go together in the next one, each answered
    /// with its own result.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_queues_together_goes_together_and_each_gets_its_answer() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&sizes);
        let batches = Batches::start(64, move |jobs: Vec<u32>| {
            seen.lock().unwrap().push(jobs.len());
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                jobs.into_iter().map(|j| j * 10).collect::<Vec<_>>()
            }
        });
        let mut handles = Vec::new();
        for j in 0..30u32 {
            let b = batches.clone();
            handles.push(tokio::spawn(async move { (j, b.run(j).await) }));
        }
        for h in handles {
            let (j, answer) = h.await.unwrap();
            assert_eq!(answer, Some(j * 10));
        }
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 30);
        assert!(sizes.len() < 30, "no batch held more than one: {sizes:?}");
    }
}
