//! The faults operators cause: two switchovers in a row, and `PATCH /config` of
//! the timing or of the synchronous standby count.

use std::time::Duration;

use super::injected::Injected;
use super::planned::{resolve_target, PlannedFault, Target};
use crate::cluster::{Cluster, NODES};
use crate::error::{ChaosError, Result};
use crate::sys;

/// How long a REST call that waits for a switchover may take.
const SWITCHOVER_TIMEOUT: Duration = Duration::from_secs(45);
/// How long the second switchover is retried while the API refuses it
/// (the new primary's view not settled yet).
const SECOND_SWITCHOVER_WINDOW: Duration = Duration::from_secs(5);

/// `POST /switchover` to `from`'s API (leader `from`, candidate `to`), retried
/// while it is refused (412, 503, no answer) until `retry_for` has passed; the
/// final status and body.
fn post_switchover(
    cluster: &Cluster<'_>,
    from: usize,
    to: usize,
    retry_for: Duration,
) -> (u16, String) {
    let started = std::time::Instant::now();
    let body = serde_json::json!({
        "leader": cluster.nodes[from].name,
        "candidate": cluster.nodes[to].name,
    });
    loop {
        let answer = cluster.nodes[from]
            .rest
            .call("POST", "/switchover", &body, SWITCHOVER_TIMEOUT)
            .unwrap_or_else(|e| (0, e.to_string()));
        let refused = matches!(answer.0, 0 | 412 | 503);
        if !refused || started.elapsed() >= retry_for || sys::check_interrupt().is_err() {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The nodes the primary's `/patroni` lists as synchronous (or quorum) standbys.
fn synchronous_standbys(cluster: &Cluster<'_>, primary: usize) -> Vec<usize> {
    cluster.nodes[primary]
        .standbys()
        .unwrap_or_default()
        .iter()
        .filter(|s| s.synchronous)
        .filter_map(|s| cluster.nodes.iter().position(|n| n.name == s.name))
        .collect()
}

/// The synchronous standbys `primary` names, waiting up to
/// [`SECOND_SWITCHOVER_WINDOW`] for it to name one (right after a promotion
/// or at start-up it may name none yet).
fn wait_synchronous_standbys(cluster: &Cluster<'_>, primary: usize) -> Vec<usize> {
    let started = std::time::Instant::now();
    loop {
        let sync = synchronous_standbys(cluster, primary);
        if !sync.is_empty()
            || started.elapsed() >= SECOND_SWITCHOVER_WINDOW
            || sys::check_interrupt().is_err()
        {
            return sync;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The switchover candidate from `primary`: `preferred`, unless a synchronous
/// mode rules it out. There only a synchronous standby may take over (the
/// leader waits for one; Patroni refuses any other candidate with 412): an
/// operator picks one from `/patroni`, and so does this fault.
fn candidate(cluster: &Cluster<'_>, primary: usize, preferred: usize) -> usize {
    if !cluster.mode.is_synchronous() {
        return preferred;
    }
    let sync = wait_synchronous_standbys(cluster, primary);
    if sync.contains(&preferred) {
        preferred
    } else {
        sync.first().copied().unwrap_or(preferred)
    }
}

/// Waits until `node` answers `/primary` with 200, or `posted` reports that
/// the switchover request was answered with a failure. The time it took.
fn wait_promoted(
    cluster: &Cluster<'_>,
    node: usize,
    posted: &std::sync::Mutex<Option<(u16, String)>>,
) -> Result<Duration> {
    let started = std::time::Instant::now();
    loop {
        sys::check_interrupt()?;
        if cluster.nodes[node].rest.is_primary() {
            return Ok(started.elapsed());
        }
        if let Some((status, body)) = posted.lock().ok().and_then(|g| g.clone()) {
            if !(200..300).contains(&status) {
                return Err(ChaosError::Client(format!(
                    "switchover to {} answered {status}: {}",
                    cluster.nodes[node].name,
                    body.trim()
                )));
            }
        }
        if started.elapsed() > SWITCHOVER_TIMEOUT + Duration::from_secs(5) {
            return Err(ChaosError::Client(format!(
                "{} did not answer /primary within {:?} of the switchover request",
                cluster.nodes[node].name,
                started.elapsed()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// [`FaultKind::SecondSwitchover`](super::FaultKind::SecondSwitchover): primary -> replica A, and as soon as A answers
/// `/primary`, A -> the other replica B. Each request runs in its own thread so
/// that the second one is sent while the first request may still be waiting
/// for its answer, as an operator's second command would be.
pub(super) fn second_switchover(
    cluster: &mut Cluster<'_>,
    fault: &PlannedFault,
    primary: usize,
) -> Result<Injected> {
    let drawn = resolve_target(Target::Replica((fault.variant % 2) as usize), primary);
    let a = candidate(cluster, primary, drawn);
    let cluster: &Cluster<'_> = cluster;
    let first_answer = std::sync::Mutex::new(None);
    let second_answer = std::sync::Mutex::new(None);
    let at_us = sys::now_us();
    std::thread::scope(|scope| -> Result<Injected> {
        scope.spawn(|| {
            let answer = post_switchover(cluster, primary, a, Duration::ZERO);
            if let Ok(mut slot) = first_answer.lock() {
                *slot = Some(answer);
            }
        });
        let first = wait_promoted(cluster, a, &first_answer)?;
        let promoted = std::time::Instant::now();
        // The second target: the replica that was not part of the first
        // switchover, or one the new primary names as synchronous.
        let other = (0..NODES)
            .find(|i| *i != primary && *i != a)
            .unwrap_or(primary);
        let b = candidate(cluster, a, other);
        let second_slot = &second_answer;
        scope.spawn(move || {
            let answer = post_switchover(cluster, a, b, SECOND_SWITCHOVER_WINDOW);
            if let Ok(mut slot) = second_slot.lock() {
                *slot = Some(answer);
            }
        });
        let second = wait_promoted(cluster, b, &second_answer)?;
        // The gap is what the operator's second command waited after the
        // promotion, its own retries included.
        let total_second = promoted.elapsed();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        Ok(Injected {
            at_us,
            node: Some(primary),
            detail: format!(
                "switchover {} -> {} took {:.0} ms; then {} -> {} requested at once, {} answered /primary {:.0} ms after {}'s promotion",
                cluster.nodes[primary].name,
                cluster.nodes[a].name,
                ms(first),
                cluster.nodes[a].name,
                cluster.nodes[b].name,
                cluster.nodes[b].name,
                ms(total_second),
                cluster.nodes[a].name,
            ),
            switchover_ms: vec![ms(first), ms(second)],
        })
    })
    .and_then(|injected| {
        // Both requests must have been answered with success: a switchover
        // the API accepted and then reported failed is a finding.
        for (what, slot) in [("first", &first_answer), ("second", &second_answer)] {
            match slot.lock().ok().and_then(|g| g.clone()) {
                Some((status, _)) if (200..300).contains(&status) => {}
                Some((status, body)) => {
                    return Err(ChaosError::Client(format!(
                        "the {what} switchover answered {status}: {}",
                        body.trim()
                    )))
                }
                None => {
                    return Err(ChaosError::Client(format!(
                        "the {what} switchover request got no answer"
                    )))
                }
            }
        }
        Ok(injected)
    })
}

/// `PATCH /config` with `body` through `node`'s API, retried for up to 10 s
/// while it gets no 200 (a node that is changing roles may not answer).
fn patch_config(cluster: &Cluster<'_>, node: usize, body: &serde_json::Value) -> Result<()> {
    let started = std::time::Instant::now();
    loop {
        // Any node's API writes the key; start at `node` and go round.
        let at = (node + (started.elapsed().as_secs() as usize)) % NODES;
        let answer = cluster.nodes[at]
            .rest
            .call("PATCH", "/config", body, Duration::from_secs(5));
        match answer {
            Ok((200, _)) => return Ok(()),
            Ok((400, text)) => {
                return Err(ChaosError::Client(format!(
                    "PATCH /config {body} refused: {}",
                    text.trim()
                )))
            }
            other if started.elapsed() > Duration::from_secs(10) => {
                return Err(ChaosError::Client(format!(
                    "PATCH /config {body} failed for 10 s: {other:?}"
                )))
            }
            _ => {}
        }
        sys::sleep(Duration::from_millis(300))?;
    }
}

/// The ttl/loop_wait/retry_timeout combinations [`FaultKind::EditTiming`](super::FaultKind::EditTiming) moves
/// to; each keeps loop_wait + 2 x retry_timeout <= ttl.
pub(super) const TIMINGS: [(u64, u64, u64); 4] = [(8, 2, 3), (8, 1, 3), (7, 1, 3), (10, 2, 4)];

/// The combination `variant` picks, never `current`.
pub(super) fn other_timing(variant: u64, current: (u64, u64, u64)) -> (u64, u64, u64) {
    let start = (variant % TIMINGS.len() as u64) as usize;
    (0..TIMINGS.len())
        .map(|k| TIMINGS[(start + k) % TIMINGS.len()])
        .find(|t| *t != current)
        .unwrap_or(TIMINGS[start])
}

fn timing_json(t: (u64, u64, u64)) -> serde_json::Value {
    serde_json::json!({"ttl": t.0, "loop_wait": t.1, "retry_timeout": t.2})
}

/// [`FaultKind::EditTiming`](super::FaultKind::EditTiming).
pub(super) fn edit_timing(
    cluster: &mut Cluster<'_>,
    fault: &PlannedFault,
    primary: usize,
    timing: (u64, u64, u64),
) -> Result<Injected> {
    let new = other_timing(fault.variant, timing);
    patch_config(cluster, primary, &timing_json(new))?;
    let at_us = sys::now_us();
    let result = sys::sleep(fault.hold());
    let restored = patch_config(cluster, primary, &timing_json(timing));
    result?;
    restored?;
    Ok(Injected::new(
        None,
        at_us,
        format!(
            "PATCH /config ttl/loop_wait/retry_timeout {}/{}/{} -> {}/{}/{} for {:?}, then back",
            timing.0,
            timing.1,
            timing.2,
            new.0,
            new.1,
            new.2,
            fault.hold()
        ),
    ))
}

/// [`FaultKind::EditSyncCount`](super::FaultKind::EditSyncCount): `synchronous_node_count` 1 <-> 2 (with two
/// replicas, 2 is the most) and `synchronous_mode_strict` toggled.
pub(super) fn edit_sync_count(
    cluster: &mut Cluster<'_>,
    fault: &PlannedFault,
    primary: usize,
) -> Result<Injected> {
    let config = cluster.nodes[primary]
        .get_json("/config")
        .or_else(|| (0..NODES).find_map(|i| cluster.nodes[i].get_json("/config")))
        .ok_or_else(|| ChaosError::Client("no node answered GET /config".into()))?;
    let count = config
        .get("synchronous_node_count")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(1);
    let strict = config
        .get("synchronous_mode_strict")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    let new_count = if count >= 2 { 1 } else { 2 };
    patch_config(
        cluster,
        primary,
        &serde_json::json!({"synchronous_node_count": new_count, "synchronous_mode_strict": !strict}),
    )?;
    let at_us = sys::now_us();
    // The most synchronous standbys the primary reported during the hold:
    // evidence that the agents applied the new count.
    let until = std::time::Instant::now() + fault.hold();
    let mut most_sync = 0;
    let mut result = Ok(());
    while std::time::Instant::now() < until {
        if let Err(e) = sys::sleep(Duration::from_millis(250)) {
            result = Err(e);
            break;
        }
        let sync = cluster.nodes[primary]
            .standbys()
            .map_or(0, |s| s.iter().filter(|s| s.synchronous).count());
        most_sync = most_sync.max(sync);
    }
    let restored = patch_config(
        cluster,
        primary,
        &serde_json::json!({"synchronous_node_count": count, "synchronous_mode_strict": strict}),
    );
    result?;
    restored?;
    Ok(Injected::new(None, at_us, format!(
            "PATCH /config synchronous_node_count {count} -> {new_count}, synchronous_mode_strict {strict} -> {} for {:?} (up to {most_sync} synchronous standbys seen), then back",
            !strict,
            fault.hold()
        )))
}
