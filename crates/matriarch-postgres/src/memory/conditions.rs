//! The world around the in-memory servers: how WAL ships to a replica, what
//! pg_rewind finds, which timeline a replica reports.

use std::time::Duration;

use matriarch_model::MemberName;

/// A replica about to receive WAL from its upstream ([`Conditions::ship`]).
#[derive(Debug)]
pub struct ShippingLink<'a> {
    /// The replica.
    pub replica: &'a MemberName,
    /// The server it streams from.
    pub upstream: &'a MemberName,
    /// How many records it lacks.
    pub behind: usize,
}

/// What one round of WAL shipping does to a replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shipment {
    /// How many of the missing records arrive (more than missing: all).
    pub records: usize,
    /// It runs a restartpoint first: pg_control takes the timeline it replays.
    pub restartpoint: bool,
    /// Shipping stalls for this long instead (a slow network, a busy disk).
    pub stall_for: Option<Duration>,
}

impl Shipment {
    /// Everything missing arrives.
    pub fn everything() -> Self {
        Shipment {
            records: usize::MAX,
            restartpoint: false,
            stall_for: None,
        }
    }
}

/// The world around the servers: how WAL ships and what pg_rewind finds.
/// The defaults are a perfect network.
pub trait Conditions: Send {
    /// What arrives at a replica in one round of shipping.
    fn ship(&mut self, _link: &ShippingLink<'_>) -> Shipment {
        Shipment::everything()
    }

    /// pg_rewind of `member` finds the WAL it needs gone (the reason), or
    /// not (`None`). Asked only when a rewind has something to undo.
    fn rewind_blocked(&mut self, _member: &MemberName) -> Option<String> {
        None
    }
}

/// A perfect network: every record arrives at once, pg_rewind always works.
#[derive(Clone, Copy, Debug, Default)]
pub struct PerfectConditions;

impl Conditions for PerfectConditions {}

/// Which timeline a running replica reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TimelineReport {
    /// The one it replays, as [`crate::PgController`] reads it
    /// (IDENTIFY_SYSTEM): what real PostgreSQL reports.
    #[default]
    Replayed,
    /// pg_control's: its last restartpoint's, behind after a timeline
    /// switch until the next restartpoint. The defect of the controller
    /// before issue 14, kept so a simulation can plant it back.
    ControlFile,
}
