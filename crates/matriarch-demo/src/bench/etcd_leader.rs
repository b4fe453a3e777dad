//! The etcd side of the stability benchmark: [`watch_leader`] records every
//! change of the etcd cluster's leader, [`kill_leader_every`] SIGKILLs the
//! leader at a fixed period and restarts it on its data a few seconds later.
//! Both run on their own thread until `stop` is set.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use matriarch_testkit::EtcdCluster;
use serde_json::{json, Value};

/// How long a killed etcd leader stays down before it is restarted.
pub const DOWN_FOR: Duration = Duration::from_secs(3);
/// How often the etcd leader is asked for.
const POLL: Duration = Duration::from_millis(250);
/// How long a restarted member may take to be healthy again.
const HEALTHY_WITHIN: Duration = Duration::from_secs(60);

/// Seconds from `start` to now, to the millisecond.
fn since(start: Instant) -> f64 {
    (start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0
}

/// Sleeps `duration`, waking early (false) when `stop` is set.
fn sleep_unless(stop: &AtomicBool, duration: Duration) -> bool {
    let end = Instant::now() + duration;
    while Instant::now() < end {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(100)));
    }
    !stop.load(Ordering::Relaxed)
}

/// The name of the etcd leader, or `None` while no running member names one.
fn leader_name(etcd: &EtcdCluster) -> Option<String> {
    etcd.leader().ok().map(|i| etcd.member(i).name().to_owned())
}

/// Asks for the etcd leader every 250 ms until `stop`; every change (a new
/// leader, or none) as `{"t_s", "leader"}`, `t_s` counted from `start`.
pub fn watch_leader(etcd: &EtcdCluster, start: Instant, stop: &AtomicBool) -> Vec<Value> {
    let mut changes = Vec::new();
    let mut last: Option<Option<String>> = None;
    loop {
        let leader = leader_name(etcd);
        if last.as_ref() != Some(&leader) {
            changes.push(json!({"t_s": since(start), "leader": leader}));
            last = Some(leader);
        }
        if !sleep_unless(stop, POLL) {
            return changes;
        }
    }
}

/// Every `every` (the first `every` after `start`) until `stop`: finds the etcd
/// leader, SIGKILLs it, restarts it on its data [`DOWN_FOR`] later and waits for
/// it to be healthy. Each step as `{"t_s", "event"}`; a step that failed says so
/// and the next period starts all the same.
pub fn kill_leader_every(
    etcd: &EtcdCluster,
    every: Duration,
    start: Instant,
    stop: &AtomicBool,
) -> Vec<Value> {
    let mut log = Vec::new();
    let mut record = |event: String| log.push(json!({"t_s": since(start), "event": event}));
    let mut next = start + every;
    while sleep_unless(stop, next.saturating_duration_since(Instant::now())) {
        next += every;
        let leader = match etcd.leader() {
            Ok(i) => i,
            Err(e) => {
                record(format!("no etcd leader to kill: {e}"));
                continue;
            }
        };
        let member = etcd.member(leader);
        member.kill();
        record(format!("SIGKILL etcd leader {}", member.name()));
        std::thread::sleep(DOWN_FOR);
        match member.restart() {
            Ok(()) => record(format!("{} restarted on its data", member.name())),
            Err(e) => {
                record(format!("cannot restart {}: {e}", member.name()));
                continue;
            }
        }
        match member.wait_healthy(HEALTHY_WITHIN) {
            Ok(()) => record(format!("{} healthy", member.name())),
            Err(e) => record(format!("{} not healthy: {e}", member.name())),
        }
    }
    log
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_ends_the_sleep_early() {
        let stop = AtomicBool::new(true);
        let begun = Instant::now();
        assert!(!sleep_unless(&stop, Duration::from_secs(10)));
        assert!(begun.elapsed() < Duration::from_secs(1));
        let go = AtomicBool::new(false);
        assert!(sleep_unless(&go, Duration::from_millis(10)));
    }
}
