//! Why PostgreSQL does not start, when it can be told (a full disk): kept
//! in [`crate::Memory::start_failure`] for the decision's reason and
//! `pending`, and logged once when it begins, not once per attempt.

use matriarch_dcs::Dcs;
use matriarch_postgres::{Postgres, PostgresError};
use matriarch_router::Router;
use tracing::{debug, error};

use super::errors::{ActionError, PostgresCallError};
use super::state::Engine;
use crate::decide::Action;

/// `PostgreSQL cannot <what>: no space left on device (<path>: <free>)`
/// when `error` says the disk is full.
fn no_space_cause(what: &str, error: &PostgresError) -> Option<String> {
    let PostgresError::NoSpace {
        path, free_bytes, ..
    } = error
    else {
        return None;
    };
    let free = free_bytes.map_or_else(
        || "free space unknown".to_owned(),
        |free| format!("{free} bytes free"),
    );
    Some(format!(
        "PostgreSQL cannot {what}: no space left on device ({}: {free})",
        path.display()
    ))
}

/// The cause a running replica that receives nothing reports when its
/// disk is full.
fn disk_full_cause(error: &PostgresError) -> Option<String> {
    no_space_cause("write WAL", error)
}

/// The cause of a failed start worth reporting as such: PostgreSQL cannot
/// write for lack of space. Other failures are logged as they come.
pub(super) fn start_failure_cause(error: &ActionError) -> Option<String> {
    match error {
        ActionError::Postgres(PostgresCallError::Failed(error)) => no_space_cause("start", error),
        _ => None,
    }
}

impl<D, P, R> Engine<D, P, R>
where
    D: Dcs + 'static,
    P: Postgres + 'static,
    R: Router,
{
    /// Asks whether the disk is full (a running replica receives nothing):
    /// the cause is noted and logged once when it begins, and forgotten
    /// once the disk has room again.
    pub(super) async fn check_disk_full(&mut self) {
        let timeout = self.config.retry_timeout;
        let full = tokio::time::timeout(timeout, self.postgres.disk_full())
            .await
            .ok()
            .flatten();
        match full.as_ref().and_then(disk_full_cause) {
            Some(cause) => {
                if self.memory.start_failure.is_none() {
                    error!(cluster = %self.dcs.layout().scope(), member = %self.name(), "{cause}");
                }
                self.memory.start_failure = Some(cause);
            }
            None => self.memory.start_failure = None,
        }
    }

    /// Notes why a start failed, if the cause is known; returns whether it
    /// was (then it is logged here: at error when it begins, at debug while
    /// it lasts), so the caller does not log it again.
    pub(super) fn note_start_failure(&mut self, action: &Action, failure: &ActionError) -> bool {
        if !matches!(
            action,
            Action::StartPrimary | Action::StartReplica { .. } | Action::Rewind(_)
        ) {
            return false;
        }
        let Some(cause) = start_failure_cause(failure) else {
            return false;
        };
        // The free space may differ between attempts: the cause begins once
        // per run of failures, whatever the figures.
        if self.memory.start_failure.is_some() {
            debug!(cluster = %self.dcs.layout().scope(), member = %self.name(), ?action, %failure, "PostgreSQL still cannot start");
        } else {
            error!(cluster = %self.dcs.layout().scope(), member = %self.name(), ?action, %failure, "{cause}");
        }
        self.memory.start_failure = Some(cause);
        true
    }
}
