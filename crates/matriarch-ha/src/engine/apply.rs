//! What follows a promotion or a leader's plan: routes, the timeline
//! history, withdrawing the former leader, the failover report.

use std::collections::BTreeSet;

use chrono::Utc;
use matriarch_dcs::{Dcs, DcsError, Expected};
use matriarch_model::{
    HistoryEntry, Lsn, MemberName, Record, SynchronousMode, Timeline, TimelineHistory,
};
use matriarch_postgres::Postgres;
use matriarch_router::{Endpoint, Router};
use tracing::{info, warn};

use super::address::host_port;
use super::errors::ActionError;
use super::state::Engine;
use super::timeouts::bounded;
use crate::decide::Routes;

impl<D, P, R> Engine<D, P, R>
where
    D: Dcs + 'static,
    P: Postgres + 'static,
    R: Router,
{
    /// Takes the former leader out of the writer routes, bounded by
    /// `retry_timeout`; a failure is logged and the failover goes on.
    pub(super) async fn withdraw_former_leader(&self, former: &MemberName) {
        let conn_url = self
            .last_view
            .as_ref()
            .and_then(|view| view.members.get(former.as_str()))
            .and_then(|entry| entry.as_ref().ok())
            .map(|m| m.value.conn_url.clone())
            .or_else(|| {
                self.memory
                    .last_leader
                    .as_ref()
                    .filter(|l| &l.name == former)
                    .and_then(|l| l.conn_url.clone())
            });
        let Some((host, port)) = conn_url.as_deref().and_then(host_port) else {
            warn!(cluster = %self.dcs.layout().scope(), member = %self.name(), former = %former, "no address for the former leader: cannot withdraw it from the routers");
            return;
        };
        let endpoint = Endpoint {
            member: former.clone(),
            host,
            port,
        };
        match tokio::time::timeout(self.config.retry_timeout, self.router.withdraw(&endpoint)).await
        {
            Ok(Ok(())) => {
                info!(cluster = %self.dcs.layout().scope(), member = %self.name(), former = %former, "withdrew the former leader from the routers")
            }
            Ok(Err(error)) => {
                warn!(cluster = %self.dcs.layout().scope(), member = %self.name(), former = %former, %error, "could not withdraw the former leader: promoting anyway")
            }
            Err(_) => {
                warn!(cluster = %self.dcs.layout().scope(), member = %self.name(), former = %former, "withdrawing the former leader timed out: promoting anyway")
            }
        }
    }

    /// In a failover, how much WAL the former leader was last known to hold
    /// beyond the promoted position: logged, kept for the status, and
    /// returned as the history entry's reason.
    pub(super) fn failover_report(&mut self, promoted_at: Option<Lsn>) -> Option<String> {
        let former = self.failing_over_from.take()?;
        let known = self
            .memory
            .last_leader
            .as_ref()
            .filter(|l| l.name == former)
            .and_then(|l| l.optime);
        let (Some(known), Some(promoted_at)) = (known, promoted_at) else {
            warn!(cluster = %self.dcs.layout().scope(), member = %self.name(), former = %former, "failover: the former leader's last position or our own is unknown: possible loss not reported");
            return None;
        };
        let loss = known.bytes_ahead_of(promoted_at);
        warn!(
            cluster = %self.dcs.layout().scope(),
            member = %self.name(),
            former = %former,
            former_last_known = %known,
            promoted_at = %promoted_at,
            possible_loss_bytes = loss,
            synchronous = self.config.synchronous_mode != SynchronousMode::Off,
            "failover: the former leader may have held WAL this promotion does not have"
        );
        self.last_failover_loss = Some(loss);
        Some(HistoryEntry::failover_reason(&former, loss))
    }

    pub(super) async fn route(&self, routes: &Routes) -> Result<(), ActionError> {
        let primary = self
            .endpoint(&routes.primary)
            .ok_or_else(|| ActionError::NoAddress {
                member: routes.primary.clone(),
            })?;
        let replicas = routes
            .replicas
            .iter()
            .filter_map(|name| self.endpoint(name))
            .collect();
        self.router
            .route(&matriarch_router::Routes { primary, replicas })
            .await
            .map_err(ActionError::from)
    }

    /// Makes the `history` key list every timeline before `timeline`: the one
    /// this node just ended with its promotion at `switch_lsn`, and any that a
    /// leader before it failed to record. A switch point that is not known is
    /// taken as the previous one: lower than the truth, so a replica may rewind
    /// needlessly (pg_rewind then finds nothing to do) but never follows a
    /// history it diverged from.
    ///
    /// `reason` replaces the default reason of the entry for the timeline
    /// just ended (a failover's report, [`HistoryEntry::failover_reason`]).
    pub(super) async fn record_history(
        &self,
        timeline: Timeline,
        switch_lsn: Option<Lsn>,
        reason: Option<String>,
    ) {
        let retry = self.config.retry_timeout;
        for _ in 0..3 {
            let view = match bounded("read history", retry, self.dcs.read_view()).await {
                Ok(view) => view,
                Err(error) => {
                    warn!(member = %self.name(), %error, "could not read the timeline history");
                    return;
                }
            };
            let (mut history, expected) = match &view.history {
                Some(Ok(history)) => (history.value.clone(), Expected::Version(history.version)),
                Some(Err(error)) => {
                    warn!(member = %self.name(), %error, "the timeline history is unreadable: not rewriting it");
                    return;
                }
                None => (TimelineHistory::default(), Expected::Absent),
            };
            let ended = timeline.0.saturating_sub(1);
            let mut changed = false;
            for missing in 1..=ended {
                if history.0.iter().any(|entry| entry.timeline.0 == missing) {
                    continue;
                }
                let previous = history
                    .0
                    .iter()
                    .filter(|entry| entry.timeline.0 < missing)
                    .map(|entry| entry.switch_lsn)
                    .max()
                    .unwrap_or_default();
                let known = (missing == ended).then_some(switch_lsn).flatten();
                history.0.push(HistoryEntry {
                    timeline: Timeline(missing),
                    switch_lsn: known.unwrap_or(previous),
                    reason: if let (Some(reason), true) = (&reason, missing == ended) {
                        reason.clone()
                    } else if known.is_some() {
                        "promoted by matriarch".to_owned()
                    } else {
                        "switch point unknown; recorded by a later leader".to_owned()
                    },
                    timestamp: Some(Utc::now().fixed_offset()),
                    new_leader: (missing == ended).then(|| self.name().clone()),
                });
                changed = true;
            }
            if !changed {
                return;
            }
            history.0.sort_by_key(|entry| entry.timeline);
            match bounded(
                "write history",
                retry,
                self.dcs.write(&Record::History(history), expected),
            )
            .await
            {
                Ok(_) => return,
                Err(DcsError::Conflict { .. }) => continue,
                Err(error) => {
                    warn!(member = %self.name(), %error, "could not record the timeline switch");
                    return;
                }
            }
        }
    }

    /// A leader checks each loop that the history names every timeline
    /// before its own.
    pub(super) fn history_incomplete(&self, timeline: Option<Timeline>) -> bool {
        let (Some(timeline), Some(view)) = (timeline, &self.last_view) else {
            return false;
        };
        let recorded: BTreeSet<u32> = match &view.history {
            Some(Ok(history)) => history.value.0.iter().map(|e| e.timeline.0).collect(),
            Some(Err(_)) => return false,
            None => BTreeSet::new(),
        };
        (1..timeline.0).any(|t| !recorded.contains(&t))
    }
}
