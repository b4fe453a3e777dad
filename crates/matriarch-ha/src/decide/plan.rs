//! A decision and the plan that builds it.

use std::time::Duration;

use super::action::Action;
use super::inputs::Inputs;

/// The role the engine plays after this loop, for reporting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineRole {
    /// Holds the lock and runs the primary.
    Leader,
    /// Follows the leader.
    Replica,
    /// Racing for or being promoted into leadership.
    Candidate,
    /// Stepping down.
    Demoting,
    /// Not yet part of a running cluster.
    Uninitialized,
    /// Cannot tell (DCS unreachable, unreadable keys): acts only for safety.
    Uncertain,
}

/// The output of [`decide`](super::decide).
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The plan, run in order until one fails.
    pub actions: Vec<Action>,
    /// The role after this loop.
    pub role: EngineRole,
    /// Why, in a few words, for the log.
    pub reason: String,
    /// The time (monotonic) by which this node must have stopped taking
    /// writes unless it renews the lock first; the loop wakes up for it.
    pub demotion_deadline: Option<Duration>,
    /// Why this node holds back (does not race, does not follow, waits for
    /// something or someone): shown as `pending` in `GET /patroni` and
    /// logged at info when it begins. `None` when nothing is held back.
    pub pending: Option<String>,
    /// Set when this plan restarts the stopped primary in place (this node
    /// leads and [`Action::StartPrimary`] is in the plan): the time
    /// (monotonic) the start counts from. The lock's renewer keeps renewing
    /// while the start runs, up to `primary_start_timeout` from then. A run
    /// of failed starts counts from its first, up to `primary_start_timeout`;
    /// past it (restarting in place only because no replica could take
    /// over) each start counts from itself.
    pub restart_in_place_since: Option<Duration>,
}

/// The plan under construction.
pub(super) struct Plan {
    pub(super) actions: Vec<Action>,
    pub(super) deadline: Option<Duration>,
    /// Appended to the reason (why failsafe did not keep a primary leading).
    pub(super) reason_note: Option<String>,
    /// See [`Decision::restart_in_place_since`].
    pub(super) restart_in_place_since: Option<Duration>,
}

impl Plan {
    /// An empty plan.
    pub(super) fn new() -> Self {
        Plan {
            actions: Vec::new(),
            deadline: None,
            reason_note: None,
            restart_in_place_since: None,
        }
    }

    /// Moves the plan out, for a helper that decides the whole loop.
    pub(super) fn take(&mut self) -> Plan {
        Plan {
            actions: std::mem::take(&mut self.actions),
            deadline: self.deadline,
            reason_note: self.reason_note.take(),
            restart_in_place_since: self.restart_in_place_since.take(),
        }
    }

    /// The decision: this plan, with `role` and why (and the note, if any).
    pub(super) fn done(self, role: EngineRole, reason: impl Into<String>) -> Decision {
        let mut reason = reason.into();
        if let Some(note) = self.reason_note {
            reason = format!("{reason} ({note})");
        }
        Decision {
            actions: self.actions,
            role,
            reason,
            demotion_deadline: self.deadline,
            pending: None,
            restart_in_place_since: self.restart_in_place_since,
        }
    }

    pub(super) fn push(&mut self, action: Action) {
        self.actions.push(action);
    }

    /// Starts the stopped primary again in place, as the leader, counting
    /// from [`Inputs::start_in_place_since`].
    pub(super) fn start_primary_in_place(&mut self, inputs: &Inputs<'_>) {
        self.push(Action::StartPrimary);
        self.restart_in_place_since = Some(inputs.start_in_place_since());
    }

    /// Gives the lock up instead of renewing it: the plan so far, then
    /// `ReleaseLock`.
    pub(super) fn release_lock(mut self, role: EngineRole, reason: impl Into<String>) -> Decision {
        self.actions.retain(|a| *a != Action::RenewLock);
        self.push(Action::ReleaseLock);
        self.done(role, reason)
    }

    /// A decision to hold back: the reason is also what is pending.
    pub(super) fn wait(self, role: EngineRole, reason: impl Into<String>) -> Decision {
        let mut decision = self.done(role, reason);
        decision.pending = Some(decision.reason.clone());
        decision
    }
}
