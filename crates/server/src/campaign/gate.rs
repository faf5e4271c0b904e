//! One judgement of a campaign at a time per server, and none waited for by a vehicle whose
//! check-in only confirmed installs.
//!
//! Judging a campaign reads its members (`evaluate`), which at 100,000 vehicles takes tens of
//! milliseconds; every check-in that confirms an install used to judge again, so a fleet
//! confirming at once queued one full judgement per vehicle. Now a check-in that finds a
//! judgement of the campaign under way leaves it to that one or to the next — the next
//! check-in's, or the periodic judgement (`[campaigns] check_every_secs`) — and answers at
//! once. A check-in that reported a *failure* still waits its turn and judges, so a halt it
//! causes withdraws instructions before its answer is signed, as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The per-campaign turns.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    turns: Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
}

/// A turn to judge, held while judging.
pub(crate) type Turn = tokio::sync::OwnedMutexGuard<()>;

impl Gate {
    fn turn_of(&self, campaign: i64) -> Arc<tokio::sync::Mutex<()>> {
        let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
        turns.entry(campaign).or_default().clone()
    }

    /// The turn, if no judgement of `campaign` is under way.
    pub(crate) fn try_turn(&self, campaign: i64) -> Option<Turn> {
        self.turn_of(campaign).try_lock_owned().ok()
    }

    /// The turn, after the judgement under way (if any).
    pub(crate) async fn turn(&self, campaign: i64) -> Turn {
        self.turn_of(campaign).lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_judgement_at_a_time_per_campaign() {
        let gate = Gate::default();
        let held = gate.try_turn(1).unwrap();
        assert!(
            gate.try_turn(1).is_none(),
            "a second judgement of campaign 1"
        );
        assert!(gate.try_turn(2).is_some(), "campaigns are independent");
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), gate.turn(1));
        assert!(
            waiting.await.is_err(),
            "a failure's judgement waits its turn"
        );
        drop(held);
        assert!(gate.try_turn(1).is_some());
    }
}
