//! Planned switchovers: the leader stepping down when a request is due, and
//! taking the lock back (no promotion) when nobody took over.

use matriarch_model::{ClusterView, FailoverRequest, Lsn, Member, SynchronousMode, Versioned};

use super::action::{Action, DemoteMode};
use super::candidate::candidate_looks_able;
use super::inputs::Inputs;
use super::observed::LocalRole;
use super::plan::{Decision, EngineRole, Plan};
use super::view::{cluster_timeline, in_sync_key, member, wrote_sync_key};

/// The readable `failover` key, if it asks this leader (or any leader) to hand
/// over to another member and its scheduled time has come.
fn due_request_for_me<'v>(
    inputs: &Inputs<'_>,
    view: &'v ClusterView,
) -> Option<&'v Versioned<FailoverRequest>> {
    let me = &inputs.node.name;
    let Some(Ok(request)) = &view.failover else {
        return None;
    };
    let FailoverRequest {
        leader,
        candidate,
        scheduled_at,
    } = &request.value;
    let for_me = leader.as_ref().is_none_or(|l| l == me) && candidate.as_ref() != Some(me);
    let due = scheduled_at.is_none_or(|at| at <= inputs.wall_clock);
    (for_me && due).then_some(request)
}

/// The leader's side of a switchover: step down when the request is due and
/// a candidate is ready.
pub(super) fn planned_switchover(
    inputs: &Inputs<'_>,
    view: &ClusterView,
    plan: &mut Plan,
) -> Option<Decision> {
    let me = &inputs.node.name;
    let candidate = &due_request_for_me(inputs, view)?.value.candidate;
    // In synchronous mode only a synchronous standby can take over without
    // losing a commit, and only one could win the race after we step down.
    let synchronous = inputs.config.synchronous_mode != SynchronousMode::Off;
    let ready = |member: &Member| {
        member.name != *me
            && (!synchronous || in_sync_key(view, &member.name) && wrote_sync_key(view, me))
            && candidate_looks_able(inputs, view, member)
            && member.timeline >= inputs.local.timeline
            && lag_ok(inputs, member.wal_position(), inputs.local.wal_position)
    };
    let candidate_ready = match candidate {
        Some(name) => view
            .members
            .get(name.as_str())
            .and_then(|e| e.as_ref().ok())
            .is_some_and(|m| ready(&m.value)),
        None => view.healthy_records().any(ready),
    };
    if !candidate_ready {
        return None;
    }
    plan.push(Action::Demote(DemoteMode::Switchover));
    plan.push(Action::Withdraw);
    plan.push(Action::ReleaseLock);
    plan.actions.retain(|a| *a != Action::RenewLock);
    Some(Decision {
        actions: std::mem::take(&mut plan.actions),
        role: EngineRole::Demoting,
        reason: "switchover: stepping down for the candidate".to_owned(),
        demotion_deadline: plan.deadline,
        pending: None,
        restart_in_place_since: None,
    })
}

/// A member at `position` is within maximum_lag_on_failover of `reference`
/// (a switchover: the leader stepping down). An unknown position never is;
/// an unknown reference cannot be measured against and is not held against it.
pub(super) fn lag_ok(inputs: &Inputs<'_>, position: Option<Lsn>, reference: Option<Lsn>) -> bool {
    match (position, reference) {
        (Some(position), Some(reference)) => {
            reference.bytes_ahead_of(position) <= inputs.config.maximum_lag_on_failover
        }
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// A leader that stepped down for a switchover: its data directory was shut
/// down cleanly as a primary and has not run since. While nobody takes the
/// lock it waits (starting as a standby would let it race and promote onto
/// a new timeline); after a ttl with the lock free all along and no newer
/// timeline anywhere, nobody can have promoted from its history, so it takes
/// the lock back and starts the same data directory as primary: no
/// promotion, same timeline. The request is cleared and the reason reported.
pub(super) fn after_switchover(
    inputs: &Inputs<'_>,
    view: &ClusterView,
    plan: &mut Plan,
) -> Option<Decision> {
    let since = inputs.memory.stepped_down_at?;
    if inputs.local.role != (LocalRole::Stopped { crashed: false }) || !inputs.memory.ran_as_primary
    {
        return None;
    }
    let own = inputs.local.timeline?;
    let peer_newer = inputs
        .peers
        .values()
        .any(|p| p.timeline.is_some_and(|t| t > own));
    let me = &inputs.node.name;
    let others: Vec<&Member> = view.healthy_records().filter(|m| &m.name != me).collect();
    let record_newer = others.iter().any(|m| m.timeline.is_some_and(|t| t > own));
    // A new primary in a synchronous mode claims the sync key before it promotes.
    let sync_claimed = inputs.config.synchronous_mode != SynchronousMode::Off
        && matches!(&view.sync,
            Some(Ok(sync)) if sync.value.leader.as_ref().is_some_and(|l| l != me));
    if peer_newer
        || record_newer
        || sync_claimed
        || cluster_timeline(view).is_some_and(|cluster| cluster > own)
    {
        // Somebody was promoted after all: rejoin through the usual checks.
        return None;
    }
    // Starting the old data directory as primary is only safe when every
    // member confirms, by answering now, that it is on no newer timeline: a
    // record or a lock read may be late. Without that, after three ttls, give
    // up the take-back and rejoin through the usual race.
    let unconfirmed: Vec<&str> = others
        .iter()
        .filter(|m| {
            inputs
                .peers
                .get(&m.name)
                .is_none_or(|p| p.timeline.is_none())
        })
        .map(|m| m.name.as_str())
        .collect();
    let request = match &view.failover {
        Some(Ok(request)) => Some(request),
        _ => None,
    };
    if inputs.now >= since.saturating_add(inputs.config.ttl.saturating_mul(3)) {
        // The request goes, or the usual race's winner would be asked to
        // step down again.
        return request.map(|request| {
            plan.push(Action::ClearFailoverRequest(request.version));
            plan.take().done(
                EngineRole::Demoting,
                format!(
                    "switchover abandoned: cannot confirm that {} did not promote; rejoining through the usual race",
                    unconfirmed.join(", ")
                ),
            )
        });
    }
    let candidate = request.and_then(|r| r.value.candidate.clone());
    let who = candidate
        .as_ref()
        .map_or_else(|| "no candidate".to_owned(), |c| format!("candidate {c}"));
    let wait = inputs.config.ttl;
    let running_primary = inputs
        .peers
        .iter()
        .find(|(name, report)| report.running_primary && **name != inputs.node.name);
    if let Some((name, _)) = running_primary {
        // Nobody may run as primary without the lock; until that is
        // resolved, neither does this node.
        return Some(plan.take().wait(
            EngineRole::Demoting,
            format!("switchover: stepped down; {name} answers as a running primary: waiting"),
        ));
    }
    if inputs.now < since.saturating_add(wait) {
        return Some(plan.take().wait(
            EngineRole::Demoting,
            format!("switchover: stepped down, waiting up to {wait:?} for {who} to take the lock"),
        ));
    }
    if !unconfirmed.is_empty() {
        return Some(plan.take().wait(
            EngineRole::Demoting,
            format!(
                "switchover: stepped down; cannot confirm that {} did not promote: waiting",
                unconfirmed.join(", ")
            ),
        ));
    }
    let why = match candidate.as_ref().map(|c| (c, member(view, c))) {
        Some((_, None)) => "it has no member record".to_owned(),
        Some((_, Some(m))) if !candidate_looks_able(inputs, view, m) => format!(
            "its record shows it unable to take over: {} {}, timeline {}, the cluster's {}",
            format!("{:?}", m.role).to_ascii_lowercase(),
            m.state.as_str(),
            m.timeline
                .map_or_else(|| "unknown".to_owned(), |t| t.0.to_string()),
            cluster_timeline(view).map_or_else(|| "unknown".to_owned(), |t| t.0.to_string()),
        ),
        Some(_) => "it did not race for the lock".to_owned(),
        None => "no member raced for the lock".to_owned(),
    };
    let reason = format!(
        "{who} did not take over within {wait:?}: {why}; {} keeps leading on timeline {} (no promotion)",
        inputs.node.name, own.0
    );
    plan.push(Action::AcquireLock);
    if let Some(request) = request {
        plan.push(Action::ClearFailoverRequest(request.version));
    }
    plan.push(Action::SwitchoverAbandoned(reason.clone()));
    plan.start_primary_in_place(inputs);
    Some(plan.take().done(
        EngineRole::Leader,
        format!("switchover abandoned: {reason}"),
    ))
}

/// What the leader does about a request naming a candidate without a
/// member record.
pub(super) enum UnknownCandidate {
    /// Waits for the member to appear (why, shown as pending).
    Waiting(String),
    /// Clears the request (the plan has the action; why, for the log).
    Cleared(String),
}

/// A due request for this leader naming a candidate that has no member
/// record: a typo, or a member long gone. It is shown as pending, and
/// cleared once it waited a ttl (a live member refreshes its record every
/// loop_wait, and a record lives a ttl). Patroni clears such a request at
/// once; waiting a ttl lets a candidate that is just starting appear.
pub(super) fn unknown_candidate(
    inputs: &Inputs<'_>,
    view: &ClusterView,
    plan: &mut Plan,
) -> Option<UnknownCandidate> {
    let request = due_request_for_me(inputs, view)?;
    let candidate = request.value.candidate.as_ref()?;
    if view.members.contains_key(candidate.as_str()) {
        return None;
    }
    let seen_at = inputs
        .memory
        .failover_seen_at
        .filter(|(version, _)| *version == request.version)
        .map_or(inputs.now, |(_, at)| at);
    let ttl = inputs.config.ttl;
    if inputs.now >= seen_at.saturating_add(ttl) {
        plan.push(Action::ClearFailoverRequest(request.version));
        return Some(UnknownCandidate::Cleared(format!(
            "clearing the failover request: its candidate {candidate} has had no member record for {ttl:?}"
        )));
    }
    Some(UnknownCandidate::Waiting(format!(
        "a failover request names {candidate}, which has no member record: cleared unless it appears within {ttl:?}"
    )))
}
