//! The invariants checked at the end of a run or of a scenario; those
//! checked whenever they can change live with the world
//! ([`super::world::World::check_single_writer`], the lost-write check in
//! [`super::world::World::settle`], the lock check in
//! [`super::postgres::SimPostgres`]).

use std::time::Duration;

use matriarch_dcs::Dcs;
use tokio::time::Instant;

use super::cluster::{member_name, Cluster};
use super::world::lock;

/// The DCS cut off from every node for 3 × ttl, with every member reachable
/// (the primary must stay writable, nobody promoted) or with one replica's
/// agent killed just before (the primary must stop writing within ttl).
pub(super) async fn failsafe_outage(cluster: &mut Cluster, reach_all: bool) {
    let ttl = cluster.config.ttl;
    let primary = {
        let world = lock(&cluster.world);
        let now = Instant::now();
        (0..world.nodes.len()).find(|&i| world.writable(i, now))
    };
    let Some(primary) = primary else {
        lock(&cluster.world).violation("no writable primary before the DCS outage".to_owned());
        return;
    };
    if !reach_all {
        let replica = (0..cluster.nodes.len())
            .find(|&i| i != primary)
            .unwrap_or_default();
        cluster.crash_agent(replica);
        lock(&cluster.world).log(format!("{}: agent killed", member_name(replica)));
    }
    let promotions = lock(&cluster.world).promotions;
    for node in &cluster.nodes {
        node.dcs.inner.set_reachable(false);
    }
    let cut_at = Instant::now();
    lock(&cluster.world).log("the DCS is cut off from every node".to_owned());
    while Instant::now() < cut_at + ttl * 3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut world = lock(&cluster.world);
        let now = Instant::now();
        let writable = world.writable(primary, now);
        if reach_all && !writable {
            let name = world.nodes[primary].name.clone();
            world.violation(format!(
                "failsafe: {name} stopped taking writes during a DCS outage although every member was reachable"
            ));
            break;
        }
        if !reach_all && writable && now >= cut_at + ttl {
            let name = world.nodes[primary].name.clone();
            world.violation(format!(
                "failsafe: {name} still writable a ttl into a DCS outage although a member did not answer"
            ));
            break;
        }
    }
    for node in &cluster.nodes {
        node.dcs.inner.set_reachable(true);
    }
    lock(&cluster.world).log("the DCS is reachable again".to_owned());
    tokio::time::sleep(ttl * 2).await;
    let mut world = lock(&cluster.world);
    if reach_all {
        let now = Instant::now();
        if world.promotions != promotions || !world.writable(primary, now) {
            let name = world.nodes[primary].name.clone();
            let since = world.promotions - promotions;
            world.violation(format!(
                "failsafe: {name} did not stay the primary after the DCS outage ({since} promotion(s) since)"
            ));
        }
    }
}

/// Liveness once faults stopped: one writable primary, the lock holder.
pub(super) async fn check_primary(cluster: &Cluster) -> Option<usize> {
    let view = cluster.store.read_view().await.ok();
    let holder = view.as_ref().and_then(|v| v.leader_name().cloned());
    if let Some(Some(Ok(history))) = view.as_ref().map(|v| &v.history) {
        let line = history
            .value
            .0
            .iter()
            .map(|e| format!("tl{}@{}", e.timeline, e.switch_lsn))
            .collect::<Vec<_>>()
            .join(" ");
        lock(&cluster.world).log(format!("history: {line}"));
    }
    let mut world = lock(&cluster.world);
    let now = Instant::now();
    let writers: Vec<usize> = (0..world.nodes.len())
        .filter(|&i| world.writable(i, now))
        .collect();
    match (
        holder.as_ref().and_then(|h| world.index(h)),
        writers.as_slice(),
    ) {
        (Some(leader), [writer]) if leader == *writer => Some(leader),
        _ => {
            let states: Vec<String> = {
                let servers = world.pg.servers();
                world
                    .nodes
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        let pg = servers.server(i);
                        let upstream = pg.upstream.as_ref().map(|u| u.member.to_string());
                        let prefix = pg.upstream.as_ref().and_then(|u| {
                            let source = servers.index_of(&u.member)?;
                            let theirs = servers.server(source).data.as_ref()?;
                            Some(pg.data.as_ref()?.is_prefix_of(theirs))
                        });
                        format!(
                            "{}: agent {} pg {} {} tl {:?} pos {:?} upstream {upstream:?} fence {:?} stalled {:?} sync '{}' prefix of upstream {prefix:?}",
                            n.name,
                            if n.agent_up { "up" } else { "down" },
                            if pg.running { "running" } else { "stopped" },
                            if pg.in_recovery { "replica" } else { "primary" },
                            pg.data.as_ref().map(|d| d.timeline.0),
                            pg.position(),
                            n.fence_until.map(|f| f.saturating_duration_since(now)),
                            pg.stalled_until,
                            pg.sync_names,
                        )
                    })
                    .collect()
            };
            for line in states {
                world.log(line);
            }
            world.violation(format!(
                "no single writable primary 2 × ttl + loop_wait after faults stopped (lock: {holder:?}, writable: {writers:?})"
            ));
            None
        }
    }
}

/// Liveness once a primary leads: every other node streams from it.
pub(super) fn check_followers(cluster: &Cluster, leader: usize) {
    let mut world = lock(&cluster.world);
    let stragglers: Vec<String> = {
        let servers = world.pg.servers();
        let leader_server = servers.server(leader);
        let leader_data = leader_server.data.clone();
        let leader_records = leader_data.as_ref().map_or(0, |d| d.wal.len());
        servers
            .all()
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != leader)
            .filter(|(_, server)| {
                let following = server.streams_from() == Some(&leader_server.name)
                    && match (&server.data, &leader_data) {
                        (Some(own), Some(theirs)) => own.is_prefix_of(theirs),
                        _ => false,
                    };
                !following
            })
            .map(|(_, server)| {
                let common = match (&server.data, &leader_data) {
                    (Some(own), Some(theirs)) => own.common_records(theirs),
                    _ => 0,
                };
                format!(
                    "{} (running {}, in recovery {}, upstream {:?}, timeline {:?}, {} records, {} in common with the leader's {})",
                    server.name,
                    server.running,
                    server.in_recovery,
                    server.upstream.as_ref().map(|u| u.member.to_string()),
                    server.data.as_ref().map(|d| d.timeline.0),
                    server.data.as_ref().map_or(0, |d| d.wal.len()),
                    common,
                    leader_records
                )
            })
            .collect()
    };
    if !stragglers.is_empty() {
        let leader_name = world.nodes[leader].name.clone();
        world.violation(format!(
            "{stragglers:?} not following {leader_name} a ttl after it led"
        ));
    }
}
