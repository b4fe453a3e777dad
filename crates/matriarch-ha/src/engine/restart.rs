//! Restarts asked for through the REST API, carried out inside the loop.

use matriarch_dcs::Dcs;
use matriarch_postgres::{Postgres, StartAs, StopMode};
use matriarch_router::Router;
use tracing::{info, warn};

use super::errors::{RestartError, RestartFailure, RestartRefusal};
use super::state::Engine;
use super::timeouts::pg_bounded;
use crate::decide::{Action, Decision, EngineRole, LocalPostgres, LocalRole, Outcome};

impl<D, P, R> Engine<D, P, R>
where
    D: Dcs + 'static,
    P: Postgres + 'static,
    R: Router,
{
    /// Carries out a restart asked for through [`RestartHandle`], after this
    /// loop's plan; `true` if one was asked for (PostgreSQL may have changed).
    pub(super) async fn serve_restart(
        &mut self,
        decision: &Decision,
        local: &LocalPostgres,
    ) -> bool {
        let Ok(reply) = self.restarts.try_recv() else {
            return false;
        };
        let result = self.restart_postgres(decision, local).await;
        match &result {
            Ok(done) => {
                info!(cluster = %self.dcs.layout().scope(), member = %self.name(), %done, "restart through the REST API")
            }
            Err(error) => {
                warn!(cluster = %self.dcs.layout().scope(), member = %self.name(), %error, "restart through the REST API")
            }
        }
        let _ = reply.send(result);
        true
    }

    /// Stops PostgreSQL cleanly and starts it again in the same role. A
    /// primary only while this member leads: the lock is renewed and the
    /// fence armed before stopping (a refusal changes nothing) and again
    /// before starting (a lock lost meanwhile leaves it stopped for the next
    /// loop to decide).
    pub(super) async fn restart_postgres(
        &mut self,
        decision: &Decision,
        local: &LocalPostgres,
    ) -> Result<String, RestartError> {
        if self.long_task.is_some() {
            return Err(RestartError::Refused(RestartRefusal::LongActionRunning));
        }
        let timeout = self.settings.postgres_timeout;
        match &local.role {
            LocalRole::Primary => {
                if decision.role != EngineRole::Leader || self.memory.lock_renewed_at.is_none() {
                    return Err(RestartError::Refused(RestartRefusal::NotLeader {
                        reason: decision.reason.clone(),
                    }));
                }
                if !self.renew_for_restart(local).await {
                    return Err(RestartError::Refused(RestartRefusal::LockNotRenewed));
                }
                pg_bounded(timeout, self.postgres.stop(StopMode::Fast))
                    .await
                    .map_err(|e| RestartError::Failed(RestartFailure::Stop(e)))?;
                // Stopping may take long: the lock and the fence again, right
                // before a writable primary starts.
                if !self.renew_for_restart(local).await {
                    return Err(RestartError::Failed(RestartFailure::LockLostWhileStopped));
                }
                let sent_at = self.clock.now();
                let started = pg_bounded(timeout, self.postgres.start(StartAs::Primary)).await;
                let outcome = if started.is_ok() {
                    Outcome::Done
                } else {
                    Outcome::Failed
                };
                self.memory.record(&Action::StartPrimary, &outcome, sent_at);
                started.map_err(|e| RestartError::Failed(RestartFailure::Start(e)))?;
                Ok("restarted as primary".to_owned())
            }
            LocalRole::Replica { upstream } => {
                let start_as = match upstream {
                    Some(name) => match self.upstream(name) {
                        Some(upstream) => StartAs::ReplicaOf(upstream),
                        None => {
                            return Err(RestartError::Refused(RestartRefusal::NoUpstreamAddress {
                                upstream: name.clone(),
                            }))
                        }
                    },
                    None => StartAs::Standby,
                };
                pg_bounded(timeout, self.postgres.stop(StopMode::Fast))
                    .await
                    .map_err(|e| RestartError::Failed(RestartFailure::Stop(e)))?;
                pg_bounded(timeout, self.postgres.start(start_as))
                    .await
                    .map_err(|e| RestartError::Failed(RestartFailure::Start(e)))?;
                Ok("restarted as a replica".to_owned())
            }
            LocalRole::NoData | LocalRole::Stopped { .. } => {
                Err(RestartError::Refused(RestartRefusal::NotRunning))
            }
            LocalRole::Unknown => Err(RestartError::Refused(RestartRefusal::StateUnknown)),
        }
    }

    /// Renews the lock and arms the fence, as [`Action::RenewLock`] does.
    pub(super) async fn renew_for_restart(&mut self, local: &LocalPostgres) -> bool {
        let sent_at = self.clock.now();
        let outcome = self.execute(&Action::RenewLock, local).await;
        self.memory.record(&Action::RenewLock, &outcome, sent_at);
        outcome == Outcome::Done
    }
}
