//! `POST /switchover` and `POST /failover`: validated against the DCS view,
//! written as the `failover` key, then followed until the leader changes
//! (or the request is withdrawn, and why).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use matriarch_dcs::{DcsError, Expected};
use matriarch_model::{
    ClusterConfig, ClusterView, DcsKey, FailoverRequest, MemberName, MemberState, Record, Role,
    SynchronousMode,
};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{info, warn};

use super::body::{parse_body, JsonBody};
use super::response::{error, respond, Resp};
use super::state::{ApiState, SharedState};

/// `POST /switchover`.
pub(crate) async fn switchover(State(state): SharedState, JsonBody(body): JsonBody) -> Resp {
    state.switchover(body, false).await
}

/// `POST /failover`.
pub(crate) async fn failover(State(state): SharedState, JsonBody(body): JsonBody) -> Resp {
    state.switchover(body, true).await
}

/// `POST /switchover` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchoverBody {
    #[serde(default)]
    leader: Option<String>,
    #[serde(default)]
    candidate: Option<String>,
    #[serde(default)]
    scheduled_at: Option<String>,
}

/// `POST /failover` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FailoverBody {
    #[serde(default)]
    leader: Option<String>,
    candidate: Option<String>,
}

/// A DCS failure as a response: 409 for a concurrent change, 503 otherwise.
pub(crate) fn dcs_error(e: DcsError) -> Resp {
    match e {
        DcsError::Conflict { .. } => error(
            StatusCode::CONFLICT,
            format!("changed concurrently, try again: {e}"),
        ),
        other => error(StatusCode::SERVICE_UNAVAILABLE, format!("DCS: {other}")),
    }
}

fn member_name(text: &str, field: &str) -> Result<MemberName, Resp> {
    MemberName::new(text).map_err(|e| error(StatusCode::BAD_REQUEST, format!("{field}: {e}")))
}

/// An optional member name of the body's `field` (400 when it is not a valid name).
fn optional_member(text: Option<String>, field: &str) -> Result<Option<MemberName>, Resp> {
    text.as_deref().map(|t| member_name(t, field)).transpose()
}

impl ApiState {
    /// The DCS view, read now (503 when the DCS does not answer in time).
    pub(crate) async fn fresh_view(&self) -> Result<ClusterView, Resp> {
        let view = tokio::time::timeout(
            self.bootstrap_config.retry_timeout * 2,
            self.dcs.read_view(),
        )
        .await
        .map_err(|_| error(StatusCode::SERVICE_UNAVAILABLE, "DCS: no answer in time"))?
        .map_err(dcs_error)?;
        Ok(view)
    }

    /// Validates and writes a switchover/failover request, then waits for
    /// the outcome (unless scheduled).
    async fn switchover(&self, value: Value, failover: bool) -> Resp {
        let (leader, candidate, scheduled_at) = if failover {
            match parse_body::<FailoverBody>(value) {
                Ok(b) => {
                    if b.candidate.is_none() {
                        return error(StatusCode::BAD_REQUEST, "failover: `candidate` is required");
                    }
                    (b.leader, b.candidate, None)
                }
                Err(r) => return r,
            }
        } else {
            match parse_body::<SwitchoverBody>(value) {
                Ok(b) => {
                    if b.leader.is_none() {
                        return error(StatusCode::BAD_REQUEST, "switchover: `leader` is required");
                    }
                    (b.leader, b.candidate, b.scheduled_at)
                }
                Err(r) => return r,
            }
        };
        let (leader, candidate) = match (
            optional_member(leader, "leader"),
            optional_member(candidate, "candidate"),
        ) {
            (Ok(leader), Ok(candidate)) => (leader, candidate),
            (Err(r), _) | (_, Err(r)) => return r,
        };
        let scheduled_at = match scheduled_at
            .as_deref()
            .map(chrono::DateTime::parse_from_rfc3339)
            .transpose()
        {
            Ok(at) => at,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("scheduled_at: not an RFC 3339 time with offset: {e}"),
                )
            }
        };
        if let Some(at) = scheduled_at {
            if at < chrono::Utc::now() {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "cannot schedule a switchover in the past",
                );
            }
        }
        let view = match self.fresh_view().await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let current = view.leader_name().cloned();
        if let Some(leader) = &leader {
            if current.as_ref() != Some(leader) {
                return error(
                    StatusCode::PRECONDITION_FAILED,
                    format!(
                        "leader name does not match: {leader} is not the leader (the leader is {})",
                        current.as_ref().map_or("nobody", MemberName::as_str)
                    ),
                );
            }
        }
        if !failover && current.is_none() {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the cluster has no leader: use failover",
            );
        }
        let healthy: Vec<_> = view.healthy_records().collect();
        // In synchronous mode only a synchronous standby can take over without
        // losing a commit: like Patroni, refuse a switchover to another at once
        // instead of writing a request the leader will never carry out.
        let synchronous = matches!(&view.config,
            Some(Ok(config)) if config.value.synchronous_mode != SynchronousMode::Off);
        let sync_standbys: BTreeSet<MemberName> = match &view.sync {
            Some(Ok(sync)) => sync.value.sync_standbys.clone(),
            _ => BTreeSet::new(),
        };
        if synchronous && !failover {
            match &candidate {
                Some(candidate) if !sync_standbys.contains(candidate) => {
                    return error(
                        StatusCode::PRECONDITION_FAILED,
                        format!(
                            "candidate {candidate} is not a synchronous standby (candidate name does not match with sync_standby)"
                        ),
                    );
                }
                None if sync_standbys.is_empty() => {
                    return error(
                        StatusCode::PRECONDITION_FAILED,
                        "no good candidates: synchronous mode without a synchronous standby",
                    );
                }
                _ => {}
            }
        }
        match &candidate {
            Some(candidate) => {
                let Some(member) = healthy.iter().find(|m| &m.name == candidate) else {
                    return error(
                        StatusCode::PRECONDITION_FAILED,
                        format!("candidate {candidate} does not exist (no member record in the cluster)"),
                    );
                };
                if Some(candidate) == current.as_ref() {
                    return error(
                        StatusCode::PRECONDITION_FAILED,
                        format!("candidate {candidate} is already the leader"),
                    );
                }
                if !member.tags.allows_failover() {
                    return error(
                        StatusCode::PRECONDITION_FAILED,
                        format!("candidate {candidate} is tagged nofailover"),
                    );
                }
            }
            None => {
                let any = healthy.iter().any(|m| {
                    Some(&m.name) != current.as_ref()
                        && m.role == Role::Replica
                        && m.state == MemberState::Running
                        && m.tags.allows_failover()
                });
                if !any {
                    return error(
                        StatusCode::PRECONDITION_FAILED,
                        "no good candidates: no healthy replica",
                    );
                }
            }
        }
        // A reason the engine reports later must be told from an older one.
        let failure_before = self.status.get().last_switchover_failure;
        let request = FailoverRequest {
            leader: if failover { None } else { leader.clone() },
            candidate: candidate.clone(),
            scheduled_at,
        };
        if let Err(e) = self
            .dcs
            .write(&Record::Failover(request.clone()), Expected::Any)
            .await
        {
            return dcs_error(e);
        }
        info!(cluster = %self.scope, member = %self.name, ?candidate, failover, "switchover requested through the REST API");
        if scheduled_at.is_some() {
            return respond(
                StatusCode::ACCEPTED,
                json!({"message": "Switchover scheduled"}),
            );
        }
        // Wait for the outcome, as Patroni does.
        let config = view
            .config
            .as_ref()
            .and_then(|c| c.as_ref().ok())
            .map(|c| c.value.clone())
            .unwrap_or_else(|| self.bootstrap_config.clone());
        let deadline = Instant::now()
            + (config.ttl + config.loop_wait * 2 + config.retry_timeout * 2)
                .max(Duration::from_secs(30));
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let Ok(Ok(view)) =
                tokio::time::timeout(config.retry_timeout, self.dcs.read_view()).await
            else {
                continue;
            };
            let now = view.leader_name().cloned();
            if now.is_some() && now == current && view.failover.is_none() {
                // The leader withdrew the request and leads on: it stepped
                // down and nobody took over, or it never could.
                let leader = current.as_ref().map_or("the leader", MemberName::as_str);
                let reason = self
                    .switchover_failure(
                        &view,
                        leader,
                        failure_before.as_deref(),
                        config.retry_timeout,
                    )
                    .await;
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("Switchover failed: {reason}"),
                );
            }
            if now.is_some() && now != current {
                let new = now.as_ref().map_or("", MemberName::as_str);
                if candidate.as_ref().is_none_or(|c| Some(c) == now.as_ref()) {
                    return respond(
                        StatusCode::OK,
                        json!({"message": format!("Successfully {} over to \"{new}\"", if failover { "failed" } else { "switched" })}),
                    );
                }
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("Switchover failed: {new} took over instead"),
                );
            }
        }
        if let (false, Some(leader)) = (failover, &current) {
            if let Some(reason) = self.withdraw_stale_request(&request, leader, &config).await {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("Switchover failed: {reason}"),
                );
            }
        }
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Switchover status unknown: the leader did not change in time",
        )
    }

    /// A switchover the leader did not carry out in time (it never found the
    /// candidate ready, so it never stepped down): withdraws the request,
    /// if it is still ours and the leader still leads, so that it cannot
    /// fire later by surprise, and says why. `None` when that is not so.
    async fn withdraw_stale_request(
        &self,
        request: &FailoverRequest,
        leader: &MemberName,
        config: &ClusterConfig,
    ) -> Option<String> {
        let view = tokio::time::timeout(config.retry_timeout, self.dcs.read_view())
            .await
            .ok()?
            .ok()?;
        if view.leader_name() != Some(leader) {
            return None;
        }
        let Some(Ok(entry)) = &view.failover else {
            return None;
        };
        if entry.value != *request {
            return None;
        }
        if let Err(e) = self
            .dcs
            .delete(&DcsKey::Failover, Expected::Version(entry.version))
            .await
        {
            warn!(cluster = %self.scope, member = %self.name, error = %e, "could not withdraw the switchover request");
            return None;
        }
        let why = match &request.candidate {
            Some(candidate) => match view
                .members
                .get(candidate.as_str())
                .and_then(|e| e.as_ref().ok())
            {
                None => format!("candidate {candidate} has no member record"),
                Some(m) => format!(
                    "candidate {candidate} was never ready to take over (its record: {} {}, timeline {})",
                    format!("{:?}", m.value.role).to_ascii_lowercase(),
                    m.value.state.as_str(),
                    m.value.timeline.map_or_else(|| "unknown".to_owned(), |t| t.0.to_string()),
                ),
            },
            None => "no replica was ever ready to take over".to_owned(),
        };
        warn!(cluster = %self.scope, member = %self.name, %why, "switchover not carried out in time: request withdrawn");
        Some(format!(
            "{leader} did not step down: {why}; the request was withdrawn and {leader} keeps leading"
        ))
    }

    /// Why the leader abandoned a switchover, as its engine reported it
    /// (`last_switchover_failure`: this node's status, or the leader's
    /// `GET /patroni`), waiting up to `wait` for the report to appear.
    async fn switchover_failure(
        &self,
        view: &ClusterView,
        leader: &str,
        before: Option<&str>,
        wait: Duration,
    ) -> String {
        let deadline = Instant::now() + wait;
        let api_url = view
            .members
            .get(leader)
            .and_then(|entry| entry.as_ref().ok())
            .map(|m| m.value.api_url.clone())
            .filter(|url| !url.is_empty());
        loop {
            let reported = if leader == self.name.as_str() {
                self.status
                    .get()
                    .last_switchover_failure
                    .filter(|f| Some(f.as_str()) != before)
            } else if let Some(url) = &api_url {
                match self.http.get(url, wait.min(Duration::from_secs(2))).await {
                    Ok(response) if response.status == 200 => {
                        serde_json::from_slice::<Value>(&response.body)
                            .ok()
                            .and_then(|b| {
                                b.get("last_switchover_failure")?
                                    .as_str()
                                    .map(str::to_owned)
                            })
                    }
                    _ => None,
                }
            } else {
                None
            };
            if let Some(reason) = reported {
                return reason;
            }
            if Instant::now() >= deadline {
                return format!(
                    "the request was withdrawn without a new leader; {leader} keeps leading"
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
