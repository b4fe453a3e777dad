//! One test per situation the decision function covers.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use matriarch_ha::sim::running_member;
use matriarch_ha::*;
use matriarch_model::*;

mod support;
use support::scene::{acts, takes, Scene};

fn name(n: &str) -> MemberName {
    MemberName::new(n).unwrap()
}

/// A cluster as one node sees it; tests change what they need and call `decide`.
type World = Scene;

impl World {
    fn new(me: &str) -> World {
        Scene::at(me, Duration::from_secs(100))
    }

    /// Member `me` leads: it holds the lock (renewed a second ago) over a
    /// primary at position 500 on timeline 1.
    fn leading(me: &str) -> World {
        let mut world = World::new(me);
        world
            .leader(me)
            .primary(500, 1)
            .renewed(Duration::from_secs(1));
        world
    }

    /// Member `me` holds the lock (renewed a second ago) over a PostgreSQL
    /// that ran as primary and has stopped.
    fn crashed_leader(me: &str) -> World {
        let mut world = World::new(me);
        world.leader(me).stopped().renewed(Duration::from_secs(1));
        world.memory.ran_as_primary = true;
        world
    }

    /// [`World::new`] with `failsafe_mode` on.
    fn in_failsafe_mode(me: &str) -> World {
        let mut world = World::new(me);
        world.config.failsafe_mode = true;
        world
    }

    fn leader(&mut self, holder: &str) -> &mut Self {
        self.put("leader", holder.as_bytes().to_vec());
        self
    }

    fn record(&mut self, record: Record) -> &mut Self {
        self.put(&record.key().relative_path(), record.encode());
        self
    }

    /// The routes last applied: `primary` and `replicas`.
    fn routed(&mut self, primary: &str, replicas: &[&str]) -> &mut Self {
        self.memory.routed = Some(Routes {
            primary: name(primary),
            replicas: replicas.iter().map(|n| name(n)).collect(),
        });
        self
    }

    /// The history key: `timeline` ended at `switch_lsn`, when `new_leader`
    /// was promoted for `reason`.
    fn forked(
        &mut self,
        timeline: u32,
        switch_lsn: u64,
        reason: &str,
        new_leader: &str,
    ) -> &mut Self {
        self.record(Record::History(TimelineHistory(vec![HistoryEntry {
            timeline: Timeline(timeline),
            switch_lsn: Lsn(switch_lsn),
            reason: reason.to_owned(),
            timestamp: None,
            new_leader: Some(name(new_leader)),
        }])))
    }

    /// A failsafe heartbeat from `leader`, received `ago` seconds before now.
    fn heartbeat_from(&mut self, leader: &str, ago: f64) -> &mut Self {
        self.failsafe.heartbeat = Some(ReceivedHeartbeat {
            leader: name(leader),
            received_at: self.now - Duration::from_secs_f64(ago),
        });
        self
    }

    /// Cut off from the DCS, with the last failsafe round sent `sent_ago`
    /// seconds before now and answered by `acknowledged`, not by `missing`.
    fn cut_off_after_round(
        &mut self,
        sent_ago: f64,
        acknowledged: &[&str],
        missing: &[&str],
    ) -> &mut Self {
        self.reachable = false;
        self.failsafe.round = Some(round(self, sent_ago, acknowledged, missing));
        self
    }

    /// A peer's member record.
    fn peer(&mut self, n: &str, role: Role, position: u64, timeline: u32) -> &mut Self {
        self.peer_with(n, role, position, timeline, Tags::default())
    }

    fn peer_with(
        &mut self,
        n: &str,
        role: Role,
        position: u64,
        timeline: u32,
        tags: Tags,
    ) -> &mut Self {
        let member = Member {
            api_url: String::new(),
            tags,
            ..running_member(&name(n), role, position, timeline)
        };
        self.put(&format!("members/{n}"), encode_member(&member));
        self
    }

    fn replica(&mut self, upstream: Option<&str>, position: u64, timeline: u32) -> &mut Self {
        self.running_replica(upstream, position, timeline)
    }

    fn primary(&mut self, position: u64, timeline: u32) -> &mut Self {
        self.replica(None, position, timeline);
        self.local.role = LocalRole::Primary;
        self.memory.ran_as_primary = true;
        self
    }

    fn stopped(&mut self) -> &mut Self {
        self.replica(None, 100, 1);
        self.local.role = LocalRole::Stopped { crashed: false };
        self
    }

    /// We hold the lock, renewed `ago` before now.
    fn renewed(&mut self, ago: Duration) -> &mut Self {
        self.memory.lock_renewed_at = Some(self.now - ago);
        self
    }

    /// Nobody holds the lock: `me` replicates at `position` from `upstream`,
    /// `other` at `other_position` (all on timeline 1).
    fn leaderless(
        me: &str,
        upstream: &str,
        position: u64,
        other: &str,
        other_position: u64,
    ) -> World {
        let mut world = World::new(me);
        world
            .replica(Some(upstream), position, 1)
            .peer(other, Role::Replica, other_position, 1);
        world
    }

    /// Member `me` replicates at 500 from a, whose lock expired; c
    /// replicates behind it at 400.
    fn leader_gone(me: &str) -> World {
        World::leaderless(me, "a", 500, "c", 400)
    }

    /// Member `n`'s answer to a direct REST probe.
    fn probed(
        &mut self,
        n: &str,
        position: u64,
        timeline: u32,
        running_primary: bool,
    ) -> &mut Self {
        self.peers.insert(
            name(n),
            PeerReport {
                wal_position: Some(Lsn(position)),
                timeline: Some(Timeline(timeline)),
                running_primary,
            },
        );
        self
    }
}

/// Asserts that the node demotes at once and withdraws from the router.
#[track_caller]
fn assert_demotes_at_once(world: &World) {
    assert_eq!(
        acts(&world.decide()),
        [Action::Demote(DemoteMode::Immediate), Action::Withdraw]
    );
}

/// A leader's hand-over: demote in `mode`, withdraw from the router,
/// release the lock.
fn steps_down(mode: DemoteMode) -> [Action; 3] {
    [Action::Demote(mode), Action::Withdraw, Action::ReleaseLock]
}

/// Asserts that the node's only step is a graceful stop (to rewind).
#[track_caller]
fn assert_stops_to_rewind(world: &World) {
    assert_eq!(
        acts(&world.decide()),
        [Action::Demote(DemoteMode::Graceful)]
    );
}

/// Asserts that a replica not streaming for one loop fewer than `loops`
/// waits (`why`), and for `loops` stops to rewind.
#[track_caller]
fn assert_stops_to_rewind_after(world: &mut World, loops: u32, why: &str) {
    world.memory.loops_not_streaming = loops - 1;
    assert!(acts(&world.decide()).is_empty(), "{why}");
    world.memory.loops_not_streaming = loops;
    assert_stops_to_rewind(world);
}

fn has(decision: &Decision, wanted: &Action) -> bool {
    decision.actions.contains(wanted)
}

fn promotes(decision: &Decision) -> bool {
    takes(decision, |a| {
        matches!(
            a,
            Action::Promote | Action::AcquireLock | Action::StartPrimary
        )
    })
}

/// Whether a replica whose leader is gone races for the lock.
#[derive(Clone, Copy, Debug)]
enum Race {
    /// It races (takes the lock, or starts to).
    Runs,
    /// It holds back, saying why (`""`: any reason).
    Waits(&'static str),
}

/// Asserts that `world`'s node does what `race` says, naming `case`.
#[track_caller]
fn assert_race(case: &str, world: &World, race: Race) {
    let decision = world.decide();
    match race {
        Race::Runs => assert!(promotes(&decision), "{case}: {decision:?}"),
        Race::Waits(why) => {
            assert!(!promotes(&decision), "{case}: {decision:?}");
            assert!(decision.reason.contains(why), "{case}: {}", decision.reason);
        }
    }
}

// ---- bootstrap ----

#[test]
fn empty_cluster_and_no_data_races_to_bootstrap() {
    let mut world = World::new("a");
    world.remove("initialize");
    let decision = world.decide();
    assert_eq!(acts(&decision), [Action::Bootstrap]);
    assert!(matches!(decision.actions[0], Action::PublishMember(_)));
}

#[test]
fn bootstrap_in_progress_elsewhere_makes_others_wait() {
    let mut world = World::new("b");
    world.put("initialize", encode_initialize(&Initialize::InProgress));
    let decision = world.decide();
    assert!(acts(&decision).is_empty(), "{decision:?}");
    assert_eq!(decision.role, EngineRole::Uninitialized);
}

#[test]
fn new_node_clones_from_the_running_leader() {
    let mut world = World::new("b");
    world.leader("a").peer("a", Role::Primary, 500, 1);
    assert_eq!(acts(&world.decide()), [Action::CloneFrom(name("a"))]);
}

#[test]
fn new_node_prefers_a_clonefrom_replica() {
    let mut world = World::new("c");
    let tags = Tags {
        clonefrom: true,
        ..Tags::default()
    };
    world
        .leader("a")
        .peer("a", Role::Primary, 500, 1)
        .peer_with("b", Role::Replica, 500, 1, tags);
    assert_eq!(acts(&world.decide()), [Action::CloneFrom(name("b"))]);
}

#[test]
fn new_node_waits_when_there_is_no_leader_to_clone_from() {
    let world = World::new("b");
    assert!(acts(&world.decide()).is_empty());
}

// ---- leader ----

/// How long after a renewal was sent a leader that could not renew must stop
/// taking writes: ttl minus the write-stop margin (3.5 s at the defaults, 4/1/1.5).
fn fence_window(world: &World) -> Duration {
    world.config.ttl - world.config.write_stop_margin(world.config.ttl)
}

#[test]
fn leader_renews_its_lock_every_loop() {
    let mut world = World::leading("a");
    world.routed("a", &[]);
    let decision = world.decide();
    assert_eq!(acts(&decision), [Action::RenewLock]);
    assert_eq!(decision.role, EngineRole::Leader);
    assert_eq!(
        decision.demotion_deadline,
        Some(world.now - Duration::from_secs(1) + fence_window(&world))
    );
}

#[test]
fn leader_routes_when_routes_changed() {
    let mut world = World::leading("a");
    world.peer("b", Role::Replica, 500, 1);
    let noload = Tags {
        noloadbalance: true,
        ..Tags::default()
    };
    world.peer_with("c", Role::Replica, 500, 1, noload);
    let expected = Routes {
        primary: name("a"),
        replicas: BTreeSet::from([name("b")]),
    };
    assert!(has(&world.decide(), &Action::Route(expected.clone())));
    world.memory.routed = Some(expected);
    assert!(!takes(&world.decide(), |a| matches!(a, Action::Route(_))));
}

/// How a primary cut off from the DCS ends its loop.
enum CutOff {
    /// Retries the renewal, to demote by the renewal's deadline.
    Renews,
    /// Keeps leading on the failsafe round, as if it had renewed when the
    /// round was sent.
    Extends,
    /// Demotes at once and withdraws from the router, saying why (`""`: any
    /// reason).
    Demotes(&'static str),
}

/// When the last renewal was sent.
#[derive(Clone, Copy)]
enum Renewed {
    /// This many seconds ago.
    Ago(f64),
    /// This many seconds longer ago than the fence window ([`fence_window`]):
    /// its deadline passed that long ago (0: it passes now).
    PastDeadline(f64),
}

/// A primary cut off from the DCS (its deadline: [`fence_window`] after the
/// last renewal or acknowledged failsafe round was sent).
struct CutOffCase {
    name: &'static str,
    failsafe_mode: bool,
    renewed: Renewed,
    /// Seconds since the last round every member acknowledged was sent.
    acked_ago: Option<f64>,
    /// The last failsafe round: sent this many seconds ago, acknowledged by
    /// the first members and not by the second.
    round: Option<(f64, &'static [&'static str], &'static [&'static str])>,
    outcome: CutOff,
}

#[test]
fn primary_cut_off_from_the_dcs_leads_until_its_deadline() {
    let cases = [
        CutOffCase {
            name: "leader that cannot reach the DCS keeps trying before the deadline",
            failsafe_mode: false,
            renewed: Renewed::Ago(1.0),
            acked_ago: None,
            round: None,
            outcome: CutOff::Renews,
        },
        CutOffCase {
            name: "leader that cannot reach the DCS demotes by the deadline",
            failsafe_mode: false,
            renewed: Renewed::PastDeadline(0.0),
            acked_ago: None,
            round: None,
            outcome: CutOff::Demotes(""),
        },
        CutOffCase {
            name: "failsafe mode off ignores an acknowledged round",
            failsafe_mode: false,
            renewed: Renewed::PastDeadline(0.0),
            acked_ago: None,
            round: Some((0.5, &["b", "c"], &[])),
            outcome: CutOff::Demotes(""),
        },
        CutOffCase {
            name: "failsafe primary keeps leading when every member acknowledged",
            failsafe_mode: true,
            renewed: Renewed::Ago(2.5),
            acked_ago: None,
            round: Some((0.5, &["b", "c"], &[])),
            outcome: CutOff::Extends,
        },
        CutOffCase {
            // The renewal alone would have demoted (0.5 s ago), the last
            // acknowledged round did not.
            name: "failsafe primary whose deadline passed on the renewal keeps leading on the round",
            failsafe_mode: true,
            renewed: Renewed::PastDeadline(0.5),
            acked_ago: Some(2.0),
            round: Some((0.3, &["b"], &[])),
            outcome: CutOff::Extends,
        },
        CutOffCase {
            name: "failsafe primary missing an acknowledgement retries the renewal before its deadline",
            failsafe_mode: true,
            renewed: Renewed::Ago(1.0),
            acked_ago: None,
            round: Some((0.5, &["b"], &["c"])),
            outcome: CutOff::Renews,
        },
        CutOffCase {
            name: "failsafe primary demotes by its deadline when a member did not acknowledge",
            failsafe_mode: true,
            renewed: Renewed::PastDeadline(0.0),
            acked_ago: None,
            round: Some((0.5, &["b"], &["c"])),
            outcome: CutOff::Demotes("no acknowledgement from c"),
        },
        CutOffCase {
            // The deadline passed 1 s ago; the round went 0.5 s ago.
            name: "failsafe round sent after the deadline does not revive a primary",
            failsafe_mode: true,
            renewed: Renewed::PastDeadline(1.0),
            acked_ago: None,
            round: Some((0.5, &["b", "c"], &[])),
            outcome: CutOff::Demotes(""),
        },
    ];
    for case in cases {
        let name = case.name;
        let mut world = if case.failsafe_mode {
            World::in_failsafe_mode("a")
        } else {
            World::new("a")
        };
        let window = fence_window(&world);
        let renewed_ago = match case.renewed {
            Renewed::Ago(ago) => secs(ago),
            Renewed::PastDeadline(by) => window + secs(by),
        };
        world.primary(500, 1).renewed(renewed_ago);
        world.memory.failsafe_acked_at = case.acked_ago.map(|ago| world.now - secs(ago));
        match case.round {
            Some((sent_ago, acknowledged, missing)) => {
                world.cut_off_after_round(sent_ago, acknowledged, missing);
            }
            None => world.reachable = false,
        }
        let decision = world.decide();
        let deadline_after = |sent_ago: Duration| Some(world.now - sent_ago + window);
        match case.outcome {
            CutOff::Renews => {
                assert_eq!(decision.actions, [Action::RenewLock], "{name}");
                assert_eq!(decision.role, EngineRole::Leader, "{name}");
                assert_eq!(
                    decision.demotion_deadline,
                    deadline_after(renewed_ago),
                    "{name}"
                );
            }
            CutOff::Extends => {
                let (sent_ago, ..) = case.round.expect("a round to extend on");
                let round_sent_at = world.now - secs(sent_ago);
                assert_eq!(
                    decision.actions,
                    [Action::FailsafeExtend { round_sent_at }],
                    "{name}"
                );
                assert_eq!(decision.role, EngineRole::Leader, "{name}");
                assert_eq!(
                    decision.demotion_deadline,
                    deadline_after(secs(sent_ago)),
                    "{name}"
                );
            }
            CutOff::Demotes(why) => {
                assert_eq!(
                    decision.actions,
                    [Action::Demote(DemoteMode::Immediate), Action::Withdraw],
                    "{name}"
                );
                assert_eq!(decision.role, EngineRole::Demoting, "{name}");
                assert!(decision.reason.contains(why), "{name}: {}", decision.reason);
            }
        }
    }
}

#[test]
fn demotion_deadline_leaves_time_to_demote_before_the_lock_expires() {
    let mut world = World::new("a");
    world.primary(500, 1).renewed(Duration::ZERO);
    world.reachable = false;
    let deadline = world.decide().demotion_deadline.unwrap();
    let lock_expiry = world.now + world.config.ttl;
    let margin = world.config.write_stop_margin(world.config.ttl);
    assert!(margin > Duration::ZERO);
    assert!(deadline + margin <= lock_expiry);
}

#[test]
fn leader_whose_renewals_fail_while_reads_work_demotes_by_the_deadline() {
    let mut world = World::leading("a");
    let deadline = fence_window(&world);
    world.renewed(deadline);
    assert_demotes_at_once(&world);
}

#[test]
fn leader_whose_postgres_crashed_restarts_it_then_hands_the_lock_over_when_it_will_not_start() {
    let mut world = World::crashed_leader("a");
    assert_eq!(
        acts(&world.decide()),
        [Action::RenewLock, Action::StartPrimary],
        "a crashed primary restarts as primary"
    );
    world.memory.primary_start_failures = 2;
    // Failing for primary_start_timeout, with a healthy replica to take
    // over (tests/primary_start_timeout.rs covers the rest).
    world.memory.primary_start_failed_since =
        Some(world.now - ClusterConfig::default().primary_start_timeout);
    world.peer("b", Role::Replica, 100, 1);
    assert_eq!(
        acts(&world.decide()),
        [Action::ReleaseLock, Action::Withdraw],
        "one that will not start hands the lock over"
    );
}

#[test]
fn lock_holder_running_as_replica_promotes_then_routes() {
    let mut world = World::leading("b");
    world.replica(None, 500, 1);
    let decision = world.decide();
    let acts = acts(&decision);
    assert_eq!(acts[0], Action::RenewLock);
    assert_eq!(acts[1], Action::Promote);
    assert!(matches!(acts[2], Action::Route(_)));
}

// ---- replicas ----

#[test]
fn replica_following_the_leader_does_nothing_else() {
    let mut world = World::new("b");
    world.leader("a").replica(Some("a"), 500, 1);
    assert!(acts(&world.decide()).is_empty());
}

#[test]
fn replica_corrects_its_upstream_when_the_leader_changed() {
    let mut world = World::new("b");
    world.leader("c").replica(Some("a"), 500, 2);
    assert_eq!(acts(&world.decide()), [Action::Follow(name("c"))]);
}

#[test]
fn stopped_replica_checks_its_timeline_then_starts_following() {
    let mut world = World::new("b");
    world.leader("a").stopped();
    assert_eq!(acts(&world.decide()), [Action::Rewind(name("a"))]);
    world
        .memory
        .record(&Action::Rewind(name("a")), &Outcome::Done, world.now);
    assert_eq!(
        acts(&world.decide()),
        [Action::StartReplica {
            upstream: Some(name("a"))
        }]
    );
    // Checked against another leader does not count.
    world.leader("c");
    assert_eq!(acts(&world.decide()), [Action::Rewind(name("c"))]);
}

#[test]
fn primary_without_the_lock_demotes_at_once_when_another_holds_it() {
    let mut world = World::new("a");
    world.leader("b").primary(500, 1);
    let decision = world.decide();
    assert_eq!(
        acts(&decision),
        [Action::Demote(DemoteMode::Immediate), Action::Withdraw]
    );
    assert!(!promotes(&decision));
}

#[test]
fn primary_without_the_lock_demotes_at_once_when_the_lock_is_free() {
    let mut world = World::new("a");
    world.primary(500, 1);
    assert_demotes_at_once(&world);
}

#[test]
fn former_primary_running_as_replica_stops_to_rewind() {
    let mut world = World::new("a");
    world.leader("b").replica(None, 500, 1);
    world.memory.ran_as_primary = true;
    assert_stops_to_rewind(&world);
}

#[test]
fn diverged_former_primary_reclones_when_rewind_is_impossible() {
    let mut world = World::new("a");
    world.leader("b").peer("b", Role::Primary, 900, 2).stopped();
    world.memory.rewind_impossible = true;
    assert_eq!(acts(&world.decide()), [Action::CloneFrom(name("b"))]);
}

// ---- leader gone: the race ----

#[test]
fn leader_gone_best_replica_races_promotes_and_routes() {
    let world = World::leader_gone("b");
    let decision = world.decide();
    let acts = acts(&decision);
    assert_eq!(acts[..2], [Action::AcquireLock, Action::Promote]);
    assert!(matches!(&acts[2], Action::Route(r) if r.primary == name("b")));
    assert_eq!(decision.role, EngineRole::Candidate);
}

/// Sets up a situation on a world.
type Situation = fn(&mut World);

/// Whether b, replicating at 500 on timeline 1 from a whose lock expired,
/// races: one case a situation, set up on that world.
#[test]
fn leader_gone_replica_races_unless_another_member_should_lead() {
    fn nofailover() -> Tags {
        Tags {
            nofailover: true,
            ..Tags::default()
        }
    }
    let cases: [(&str, Situation, Race); 10] = [
        (
            "replica behind a peer does not race",
            |w| {
                w.replica(Some("a"), 400, 1)
                    .peer("c", Role::Replica, 500, 1);
            },
            Race::Waits("c is a better candidate"),
        ),
        (
            "peer position from a direct probe counts",
            |w| {
                w.peer("c", Role::Replica, 400, 1)
                    .probed("c", 600, 1, false);
            },
            Race::Waits(""),
        ),
        (
            "a nofailover peer ahead does not block the race",
            |w| {
                w.peer_with("c", Role::Replica, 510, 1, nofailover());
            },
            Race::Runs,
        ),
        (
            "replica lagging more than maximum_lag_on_failover does not race",
            |w| {
                w.config.maximum_lag_on_failover = 100;
                w.peer_with("c", Role::Replica, 700, 1, nofailover());
            },
            Race::Waits("maximum_lag_on_failover"),
        ),
        (
            "replica on an older timeline does not race",
            |w| {
                w.peer("c", Role::Replica, 100, 2);
            },
            Race::Waits("timeline"),
        ),
        (
            "failsafe replica with a fresh heartbeat does not race for the expired lock",
            |w| {
                w.config.failsafe_mode = true;
                // Acknowledged a second less than a ttl ago.
                let ago = w.config.ttl.as_secs_f64() - 1.0;
                w.record(failsafe_key(&["a", "b"])).heartbeat_from("a", ago);
            },
            Race::Waits("failsafe heartbeat from a"),
        ),
        (
            "failsafe replica whose heartbeat is older than ttl races again",
            |w| {
                w.config.failsafe_mode = true;
                w.record(failsafe_key(&["a", "b"])).heartbeat_from("a", 5.0);
            },
            Race::Runs,
        ),
        (
            "failsafe heartbeat is honoured even after failsafe mode was switched off",
            |w| {
                w.heartbeat_from("a", 1.0);
            },
            Race::Waits(""),
        ),
        (
            "failsafe mode member missing from the failsafe key does not race",
            |w| {
                w.config.failsafe_mode = true;
                w.record(failsafe_key(&["a", "c"]));
            },
            Race::Waits("not a member of the failsafe key"),
        ),
        (
            "failsafe mode member of the failsafe key races as usual",
            |w| {
                w.config.failsafe_mode = true;
                w.record(failsafe_key(&["a", "b"]));
            },
            Race::Runs,
        ),
    ];
    for (case, situation, race) in cases {
        let mut world = World::new("b");
        world.replica(Some("a"), 500, 1);
        situation(&mut world);
        assert_race(case, &world, race);
    }
}

#[test]
fn leader_gone_tie_goes_to_higher_failover_priority() {
    let mut world = World::new("b");
    let high = Tags {
        failover_priority: 5,
        ..Tags::default()
    };
    world
        .replica(Some("a"), 500, 1)
        .peer_with("c", Role::Replica, 500, 1, high);
    assert!(!promotes(&world.decide()));
    world.node.tags.failover_priority = 6;
    assert!(promotes(&world.decide()));
}

#[test]
fn leader_gone_tie_of_priority_goes_to_the_smaller_name() {
    let world = World::leaderless("b", "x", 500, "c", 500);
    assert!(promotes(&world.decide()));
    let world = World::leaderless("d", "x", 500, "c", 500);
    assert!(!promotes(&world.decide()));
}

#[test]
fn leader_gone_nofailover_replica_never_races() {
    let mut world = World::new("b");
    world.replica(Some("a"), 500, 1);
    world.node.tags.nofailover = true;
    assert!(!promotes(&world.decide()));
    world.node.tags = Tags {
        failover_priority: 0,
        ..Tags::default()
    };
    assert!(!promotes(&world.decide()));
}

#[test]
fn leader_gone_history_newer_than_own_timeline_blocks_the_race() {
    let mut world = World::new("b");
    world.forked(1, 300, "promoted", "c");
    world.replica(Some("a"), 500, 1);
    assert!(!promotes(&world.decide()));
}

#[test]
fn leader_gone_replica_of_another_cluster_does_not_race() {
    let mut world = World::new("b");
    world.replica(Some("a"), 500, 1);
    world.local.system_id = Some(SystemId(42));
    assert!(!promotes(&world.decide()));
}

#[test]
fn leader_gone_stopped_replica_starts_read_only_to_join_the_race() {
    let mut world = World::new("b");
    world.stopped();
    assert_eq!(
        acts(&world.decide()),
        [Action::StartReplica { upstream: None }]
    );
}

#[test]
fn unreadable_leader_key_is_never_a_free_lock() {
    let mut world = World::new("b");
    world.put("leader", b"bad name!".to_vec());
    world.replica(Some("a"), 500, 1);
    let decision = world.decide();
    assert!(!promotes(&decision));
    assert_eq!(decision.role, EngineRole::Uncertain);
}

#[test]
fn unreadable_leader_key_demotes_a_running_primary() {
    let mut world = World::new("a");
    world.put("leader", b"bad name!".to_vec());
    world.primary(500, 1).renewed(Duration::from_secs(1));
    assert_demotes_at_once(&world);
}

#[test]
fn unreachable_dcs_never_leads_a_replica_to_promote() {
    let mut world = World::new("b");
    world.replica(Some("a"), 500, 1);
    world.reachable = false;
    assert!(world.decide().actions.is_empty());
}

// ---- switchover and failover ----

fn switchover(world: &mut World, leader: Option<&str>, candidate: Option<&str>, at: Option<&str>) {
    world.record(Record::Failover(FailoverRequest {
        leader: leader.map(name),
        candidate: candidate.map(name),
        scheduled_at: at.map(|t| t.parse().unwrap()),
    }));
}

#[test]
fn switchover_leader_steps_down_when_the_candidate_is_ready() {
    let mut world = World::leading("a");
    world.peer("b", Role::Replica, 500, 1);
    switchover(&mut world, Some("a"), Some("b"), None);
    assert_eq!(acts(&world.decide()), steps_down(DemoteMode::Switchover));
}

#[test]
fn switchover_to_a_missing_candidate_does_nothing() {
    let mut world = World::leading("a");
    world.routed("a", &[]);
    switchover(&mut world, Some("a"), Some("zz"), None);
    assert_eq!(acts(&world.decide()), [Action::RenewLock]);
}

#[test]
fn switchover_to_any_eligible_replica() {
    let mut world = World::leading("a");
    world.peer("b", Role::Replica, 500, 1);
    switchover(&mut world, Some("a"), None, None);
    assert!(has(&world.decide(), &Action::ReleaseLock));
}

#[test]
fn scheduled_switchover_waits_for_its_time() {
    let mut world = World::leading("a");
    world.peer("b", Role::Replica, 500, 1);
    switchover(
        &mut world,
        Some("a"),
        Some("b"),
        Some("2026-11-28T13:00:00+00:00"),
    );
    assert!(!has(&world.decide(), &Action::ReleaseLock));
    world.wall = Utc.with_ymd_and_hms(2026, 11, 28, 13, 0, 1).unwrap();
    assert!(has(&world.decide(), &Action::ReleaseLock));
}

#[test]
fn switchover_only_the_named_candidate_races() {
    let mut world = World::leaderless("c", "a", 500, "b", 400);
    switchover(&mut world, Some("a"), Some("b"), None);
    assert!(!promotes(&world.decide()));
    let mut world = World::leaderless("b", "a", 400, "c", 500);
    switchover(&mut world, Some("a"), Some("b"), None);
    assert!(
        promotes(&world.decide()),
        "the named candidate races even if a peer is ahead within the lag limit"
    );
}

#[test]
fn failover_request_for_a_departed_candidate_falls_back_to_the_normal_race() {
    let mut world = World::new("c");
    world.replica(Some("a"), 500, 1);
    switchover(&mut world, None, Some("gone"), None);
    assert!(promotes(&world.decide()));
}

#[test]
fn new_leader_clears_the_request_it_carried_out() {
    let mut world = World::leading("b");
    world.primary(500, 2);
    switchover(&mut world, Some("a"), Some("b"), None);
    assert!(takes(&world.decide(), |a| matches!(
        a,
        Action::ClearFailoverRequest(_)
    )));
}

// ---- pause ----

#[test]
fn paused_replica_never_starts_stops_or_promotes() {
    let mut world = World::new("b");
    world.config.pause = true;
    world.replica(Some("a"), 500, 1);
    assert!(acts(&world.decide()).is_empty());
    world.stopped();
    assert!(acts(&world.decide()).is_empty());
}

#[test]
fn paused_leader_keeps_its_lock_and_changes_nothing() {
    let mut world = World::new("a");
    world.config.pause = true;
    world.leader("a").stopped().renewed(Duration::from_secs(1));
    assert_eq!(acts(&world.decide()), [Action::RenewLock]);
}

#[test]
fn paused_primary_does_not_demote_when_another_holds_the_lock() {
    let mut world = World::new("a");
    world.config.pause = true;
    world.leader("b").primary(500, 1);
    assert!(acts(&world.decide()).is_empty());
}

// ---- synchronous mode ----

fn sync_key(world: &mut World, leader: &str, standbys: &[&str]) {
    sync_key_quorum(world, leader, standbys, Some(1));
}

#[test]
fn sync_mode_only_a_synchronous_standby_promotes() {
    // b is the sync standby at 500, c an asynchronous one at 600.
    for (case, me, position, other, other_position, race) in [
        (
            "the async one does not race",
            "c",
            600,
            "b",
            500,
            Race::Waits(""),
        ),
        (
            "the sync standby wins over a fresher async one",
            "b",
            500,
            "c",
            600,
            Race::Runs,
        ),
    ] {
        let mut world = World::new(me);
        world.config.synchronous_mode = SynchronousMode::On;
        world
            .replica(Some("a"), position, 1)
            .peer(other, Role::Replica, other_position, 1);
        sync_key(&mut world, "a", &["b"]);
        assert_race(case, &world, race);
    }
}

#[test]
fn sync_mode_without_a_sync_key_nobody_promotes() {
    let mut world = World::new("b");
    world.config.synchronous_mode = SynchronousMode::On;
    world.replica(Some("a"), 500, 1);
    assert!(!promotes(&world.decide()));
}

#[test]
fn sync_mode_needs_enough_of_the_key_visible() {
    // Key {b, c} with one acknowledgement per commit: the commit may be on c
    // only, so b may promote only while c is visible (and not ahead).
    let mut world = World::new("b");
    world.config.synchronous_mode = SynchronousMode::On;
    world.replica(Some("a"), 500, 1);
    sync_key(&mut world, "a", &["b", "c"]);
    assert!(!promotes(&world.decide()));
    world.peer("c", Role::Replica, 500, 1);
    // A record may be a loop old: only a position c reports now counts.
    assert!(!promotes(&world.decide()));
    let fresh = |position| PeerReport {
        wal_position: Some(Lsn(position)),
        timeline: Some(Timeline(1)),
        running_primary: false,
    };
    world.peers.insert(name("c"), fresh(500));
    assert!(promotes(&world.decide()));
    world.peers.insert(name("c"), fresh(520));
    assert!(!promotes(&world.decide()), "c holds a commit b lacks");
}

#[test]
fn sync_mode_the_primary_that_wrote_the_key_may_lead_again() {
    let mut world = World::new("a");
    world.config.synchronous_mode = SynchronousMode::On;
    world.replica(None, 500, 1);
    sync_key(&mut world, "a", &["b"]);
    assert!(promotes(&world.decide()));
}

#[test]
fn sync_mode_race_winner_empties_the_key_before_promoting() {
    let mut world = World::new("b");
    world.config.synchronous_mode = SynchronousMode::On;
    world.replica(Some("a"), 500, 1);
    sync_key(&mut world, "a", &["b"]);
    let acts = acts(&world.decide());
    assert_eq!(acts[0], Action::AcquireLock);
    assert!(matches!(&acts[1], Action::WriteSyncState { standbys, .. } if standbys.is_empty()));
    assert_eq!(acts[2], Action::Promote);
}

fn sync_leader() -> World {
    let mut world = World::leading("a");
    world.config.synchronous_mode = SynchronousMode::On;
    world.peer("b", Role::Replica, 500, 1).routed("a", &["b"]);
    world.local.streaming_standbys = BTreeSet::from([name("b")]);
    world
}

/// The next change to the synchronous standbys: to PostgreSQL's
/// `synchronous_standby_names`, or to the sync key.
#[derive(Debug, PartialEq)]
enum SyncStep {
    Postgres(BTreeSet<MemberName>),
    Key(BTreeSet<MemberName>),
}

/// The sync change `world`'s leader takes next, if any.
fn sync_step(world: &World) -> Option<SyncStep> {
    match sync_action(&world.decide())? {
        Action::SetSyncStandbys { standbys, .. } => Some(SyncStep::Postgres(standbys)),
        Action::WriteSyncState { standbys, .. } => Some(SyncStep::Key(standbys)),
        other => unreachable!("not a sync action: {other:?}"),
    }
}

fn names(members: &[&str]) -> BTreeSet<MemberName> {
    members.iter().map(|n| name(n)).collect()
}

/// [`sync_leader`] in strict mode, with no standby streaming.
fn strict_leader_alone() -> World {
    let mut world = sync_leader();
    world.config.synchronous_mode_strict = true;
    world.local.streaming_standbys.clear();
    world
}

fn sync_action(decision: &Decision) -> Option<Action> {
    decision
        .actions
        .iter()
        .find(|a| {
            matches!(
                a,
                Action::WriteSyncState { .. } | Action::SetSyncStandbys { .. }
            )
        })
        .cloned()
}

#[test]
fn sync_mode_adding_a_first_standby_sets_postgres_before_the_key() {
    let mut world = sync_leader();
    sync_key(&mut world, "a", &[]);
    assert_eq!(sync_step(&world), Some(SyncStep::Postgres(names(&["b"]))));
    set_postgres_sync(&mut world, &BTreeSet::from([name("b")]), 1);
    world.memory.sync_standbys_since = Some(Lsn(500));
    // b streams but has not flushed what was acknowledged before it was named.
    world.local.standby_flush.insert(name("b"), Lsn(450));
    assert_eq!(sync_action(&world.decide()), None);
    world.local.standby_flush.insert(name("b"), Lsn(500));
    assert_eq!(sync_step(&world), Some(SyncStep::Key(names(&["b"]))));
    sync_key(&mut world, "a", &["b"]);
    assert_eq!(sync_action(&world.decide()), None);
}

#[test]
fn sync_mode_replacing_a_standby_grows_the_key_first() {
    let mut world = sync_leader();
    sync_key(&mut world, "a", &["c"]);
    set_postgres_sync(&mut world, &BTreeSet::from([name("c")]), 1);
    // c is gone; b streams.
    assert_eq!(sync_step(&world), Some(SyncStep::Key(names(&["b", "c"]))));
    sync_key(&mut world, "a", &["b", "c"]);
    assert_eq!(sync_step(&world), Some(SyncStep::Postgres(names(&["b"]))));
    set_postgres_sync(&mut world, &BTreeSet::from([name("b")]), 1);
    // The key drops c once b holds what c acknowledged before PostgreSQL
    // switched (see the test after `drive_sync`).
    b_caught_up(&mut world);
    assert_eq!(sync_step(&world), Some(SyncStep::Key(names(&["b"]))));
}

#[test]
fn sync_mode_going_asynchronous_empties_the_key_before_postgres() {
    let mut world = sync_leader();
    world.local.streaming_standbys.clear();
    sync_key(&mut world, "a", &["b"]);
    set_postgres_sync(&mut world, &BTreeSet::from([name("b")]), 1);
    assert_eq!(sync_step(&world), Some(SyncStep::Key(names(&[]))));
    sync_key(&mut world, "a", &[]);
    assert_eq!(sync_step(&world), Some(SyncStep::Postgres(names(&[]))));
}

#[test]
fn quorum_mode_names_every_eligible_standby_for_any_n() {
    let mut world = sync_leader();
    world.config.synchronous_mode = SynchronousMode::Quorum;
    world.config.synchronous_node_count = 1;
    world.peer("c", Role::Replica, 500, 1);
    world.local.streaming_standbys = BTreeSet::from([name("b"), name("c")]);
    sync_key(&mut world, "a", &["b"]);
    set_postgres_sync(&mut world, &BTreeSet::from([name("b")]), 1);
    // ANY 1 (b, c): the key grows to both first, then PostgreSQL follows.
    let step = sync_action(&world.decide());
    assert!(
        matches!(&step, Some(Action::WriteSyncState { standbys, count: 1, .. }) if *standbys == BTreeSet::from([name("b"), name("c")])),
        "{step:?}"
    );
    sync_key(&mut world, "a", &["b", "c"]);
    let step = sync_action(&world.decide());
    assert!(
        matches!(&step, Some(Action::SetSyncStandbys { standbys, count: 1, .. }) if *standbys == BTreeSet::from([name("b"), name("c")])),
        "{step:?}"
    );
    set_postgres_sync(&mut world, &BTreeSet::from([name("b"), name("c")]), 1);
    assert_eq!(sync_action(&world.decide()), None);
    // FIRST 1 with the same members names one.
    world.config.synchronous_mode = SynchronousMode::On;
    let step = sync_action(&world.decide());
    assert!(
        matches!(&step, Some(Action::SetSyncStandbys { standbys, .. }) if standbys.len() == 1),
        "{step:?}"
    );
}

#[test]
fn sync_mode_strict_keeps_waiting_for_its_standby() {
    let mut world = strict_leader_alone();
    sync_key(&mut world, "a", &["b"]);
    set_postgres_sync(&mut world, &BTreeSet::from([name("b")]), 1);
    assert_eq!(sync_action(&world.decide()), None);
}

/// Found by the simulation (seed 8474): the sync key was garbage when the
/// operator turned strict mode on, and the leader, leaving the unreadable key
/// alone, kept PostgreSQL asynchronous: every commit was acknowledged with no
/// standby holding it. Waiting for any standby changes nobody's eligibility
/// (the key is untouched) and keeps strict mode's promise.
#[test]
fn sync_mode_strict_with_an_unreadable_sync_key_makes_postgres_wait_for_any_standby() {
    let mut world = sync_leader();
    world.config.synchronous_mode_strict = true;
    world.put("sync", b"\xff\xfe not json".to_vec());
    set_postgres_sync(&mut world, &BTreeSet::new(), 0);
    let decision = world.decide();
    assert!(
        matches!(
            sync_action(&decision),
            Some(Action::SetSyncStandbys { ref standbys, any_standby: true, .. }) if standbys.is_empty()
        ),
        "{:?}",
        acts(&decision)
    );
    assert!(
        !acts(&decision)
            .iter()
            .any(|a| matches!(a, Action::WriteSyncState { .. })),
        "the unreadable key is left to an operator"
    );
    // Already waiting: nothing more to do.
    world.local.sync_any_standby = true;
    world.local.sync_count = 1;
    assert_eq!(sync_action(&world.decide()), None);
}

// ---- memory ----

#[test]
fn memory_tracks_renewals_rewinds_and_routes() {
    let mut memory = Memory::default();
    memory.record(&Action::AcquireLock, &Outcome::Done, Duration::from_secs(7));
    assert_eq!(memory.lock_renewed_at, Some(Duration::from_secs(7)));
    memory.record(&Action::RenewLock, &Outcome::Failed, Duration::from_secs(8));
    assert_eq!(
        memory.lock_renewed_at,
        Some(Duration::from_secs(7)),
        "a failed renewal moves nothing"
    );
    memory.record(&Action::Promote, &Outcome::Done, Duration::from_secs(8));
    assert!(memory.ran_as_primary);
    memory.record(
        &Action::Rewind(name("b")),
        &Outcome::RewindImpossible,
        Duration::from_secs(9),
    );
    assert!(memory.rewind_impossible);
    memory.record(
        &Action::CloneFrom(name("b")),
        &Outcome::Done,
        Duration::from_secs(9),
    );
    assert!(!memory.ran_as_primary && !memory.rewind_impossible);
    memory.record(
        &Action::ReleaseLock,
        &Outcome::Done,
        Duration::from_secs(10),
    );
    assert_eq!(memory.lock_renewed_at, None);
}

#[test]
fn replica_that_never_streams_from_its_leader_stops_to_rewind() {
    let mut world = World::new("b");
    world.leader("a").replica(Some("a"), 500, 1);
    world.local.receiving = false;
    world.memory.loops_not_streaming = LOOPS_BEFORE_REWIND + 3;
    // A leader on the same timeline that does not stream is down, not ahead:
    // its replicas keep running to race when its lock expires.
    world.peer("a", Role::Primary, 500, 1);
    assert!(acts(&world.decide()).is_empty());
    world.peer("a", Role::Primary, 600, 2);
    world.local.receiving = false;
    assert_stops_to_rewind_after(
        &mut world,
        LOOPS_BEFORE_REWIND,
        "slow to connect is not yet diverged",
    );
}

#[test]
fn replica_past_the_fork_point_of_its_timeline_stops_to_rewind() {
    let mut world = World::new("b");
    world.forked(1, 400, "promoted", "c");
    world.leader("c").replica(Some("c"), 500, 1);
    assert_stops_to_rewind(&world);
    world.replica(Some("c"), 400, 1);
    assert!(
        acts(&world.decide()).is_empty(),
        "at the fork point it can still follow"
    );
}

/// Found by the simulation (seed 8296): the history key told of a fork of
/// timeline 1 (a promotion whose new primary was lost since), while the lock
/// went back to a primary still on timeline 1. Its replicas share that
/// timeline's WAL past the stale fork point: stopping them to rewind (which
/// finds nothing to do) looped for ever.
#[test]
fn replica_of_a_leader_still_on_its_timeline_is_not_diverged_by_a_stale_fork() {
    let mut world = World::new("b");
    world.forked(1, 400, "promoted", "c");
    world
        .leader("a")
        .replica(Some("a"), 500, 1)
        .peer("a", Role::Primary, 600, 1);
    assert!(
        acts(&world.decide()).is_empty(),
        "{:?}",
        acts(&world.decide())
    );
    // Once the leader reports the newer timeline, the fork is real.
    world.peer("a", Role::Primary, 600, 2);
    assert_stops_to_rewind(&world);
}

/// Found by the simulation (seeds 5192, 11332, asynchronous mode): a
/// promotion whose history write was lost, then another from the older
/// timeline, gave two forks the same timeline number. A replica of the first
/// follows the second's primary on "its" timeline and never receives WAL
/// (the records do not chain): it must stop and let pg_rewind compare the
/// histories, once the leader has been seen alive long enough that a dead
/// one would have lost its lock.
#[test]
fn replica_never_streaming_from_a_live_leader_on_its_timeline_stops_to_rewind() {
    let mut world = World::new("b");
    world
        .leader("a")
        .replica(Some("a"), 500, 2)
        .peer("a", Role::Primary, 900, 2);
    world.local.receiving = false;
    let loops_for_two_ttls =
        u32::try_from((world.config.ttl * 2).as_millis() / world.config.loop_wait.as_millis())
            .unwrap();
    assert_stops_to_rewind_after(
        &mut world,
        loops_for_two_ttls,
        "a leader silent for less than two ttls may be dead and about to lose its lock",
    );
}

#[test]
fn memory_counts_loops_without_streaming() {
    let mut memory = Memory::default();
    let mut local = LocalPostgres::no_data();
    local.role = LocalRole::Replica {
        upstream: Some(name("a")),
    };
    memory.observed(&local);
    memory.observed(&local);
    assert_eq!(memory.loops_not_streaming, 2);
    local.receiving = true;
    memory.observed(&local);
    assert_eq!(memory.loops_not_streaming, 0);
}

#[test]
fn lock_holder_with_a_stopped_replica_releases_the_lock_instead_of_starting_it_as_primary() {
    let mut world = World::new("b");
    world.leader("b").stopped().renewed(Duration::from_secs(1));
    let decision = world.decide();
    assert_eq!(acts(&decision), [Action::ReleaseLock]);
    assert!(!promotes(&decision));
}

#[test]
fn lock_taken_on_a_stale_decision_is_released_when_no_longer_the_best_candidate() {
    let mut world = World::leading("b");
    world.replica(None, 400, 1).peer("c", Role::Replica, 500, 1);
    let decision = world.decide();
    assert!(!decision.actions.contains(&Action::Promote), "{decision:?}");
    assert!(decision.actions.contains(&Action::ReleaseLock));
}

// ---- failsafe mode ----

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// A running replica's record with a REST API URL.
fn api_peer(world: &mut World, n: &str, position: u64) {
    let member = running_member(&name(n), Role::Replica, position, 1);
    world.put(&format!("members/{n}"), encode_member(&member));
}

/// [`World::leading`] a, with `failsafe_mode` as given and b's record
/// (REST API included).
fn leader_beside_b(failsafe_mode: bool) -> World {
    let mut world = World::leading("a");
    world.config.failsafe_mode = failsafe_mode;
    api_peer(&mut world, "b", 500);
    world
}

fn failsafe_key(members: &[&str]) -> Record {
    Record::Failsafe(Failsafe(
        members
            .iter()
            .map(|n| (name(n), format!("http://{n}:8008/patroni")))
            .collect(),
    ))
}

fn round(world: &World, sent_ago: f64, acknowledged: &[&str], missing: &[&str]) -> FailsafeRound {
    FailsafeRound {
        sent_at: world.now - secs(sent_ago),
        acknowledged: acknowledged.iter().map(|n| name(n)).collect(),
        missing: missing.iter().map(|n| name(n)).collect(),
    }
}

#[test]
fn failsafe_leader_writes_the_failsafe_key_with_every_member_api() {
    let mut world = leader_beside_b(true);
    api_peer(&mut world, "c", 400);
    let decision = world.decide();
    let Some(Record::Failsafe(expected)) = Some(failsafe_key(&["a", "b", "c"])) else {
        unreachable!()
    };
    assert!(
        has(&decision, &Action::WriteFailsafe(expected)),
        "{decision:?}"
    );
}

#[test]
fn failsafe_leader_leaves_an_unchanged_failsafe_key_alone() {
    let mut world = leader_beside_b(true);
    world.record(failsafe_key(&["a", "b"]));
    let decision = world.decide();
    assert!(
        !takes(&decision, |a| matches!(a, Action::WriteFailsafe(_))),
        "{decision:?}"
    );
}

#[test]
fn failsafe_mode_off_leader_writes_no_failsafe_key() {
    let world = leader_beside_b(false);
    assert!(!takes(&world.decide(), |a| matches!(
        a,
        Action::WriteFailsafe(_)
    )));
}

#[test]
fn failsafe_primary_retakes_the_lock_that_expired_during_the_outage() {
    let mut world = World::in_failsafe_mode("a");
    world.primary(500, 1).renewed(secs(8.0));
    world.memory.failsafe_acked_at = Some(world.now - secs(1.0));
    let decision = world.decide();
    assert_eq!(acts(&decision), [Action::AcquireLock]);
    assert_eq!(decision.role, EngineRole::Leader);
}

#[test]
fn primary_without_failsafe_acknowledgements_still_demotes_when_the_lock_expired() {
    let mut world = World::in_failsafe_mode("a");
    world.primary(500, 1).renewed(secs(8.0));
    assert_demotes_at_once(&world);
}

#[test]
fn failsafe_extension_is_remembered_and_cleared_by_the_next_renewal() {
    let mut memory = Memory {
        lock_renewed_at: Some(secs(10.0)),
        ..Memory::default()
    };
    memory.record(
        &Action::FailsafeExtend {
            round_sent_at: secs(12.0),
        },
        &Outcome::Done,
        secs(12.5),
    );
    assert_eq!(memory.failsafe_acked_at, Some(secs(12.0)));
    memory.record(&Action::RenewLock, &Outcome::Done, secs(14.0));
    assert_eq!(memory.failsafe_acked_at, None);
    // Without the lock a round extends nothing.
    let mut memory = Memory::default();
    memory.record(
        &Action::FailsafeExtend {
            round_sent_at: secs(12.0),
        },
        &Outcome::Done,
        secs(12.5),
    );
    assert_eq!(memory.failsafe_acked_at, None);
}

// ---- failover: the former leader withdrawn first, its last position remembered ----

fn former_leader(world: &mut World, n: &str, optime: u64) {
    world.memory.last_leader = Some(LastLeader {
        name: name(n),
        conn_url: Some(format!("postgres://{n}:5432/postgres")),
        optime: Some(Lsn(optime)),
    });
}

#[test]
fn failover_withdraws_the_former_leader_after_taking_the_lock_and_before_promoting() {
    let mut world = World::leader_gone("b");
    former_leader(&mut world, "a", 600);
    let acts = acts(&world.decide());
    assert_eq!(
        acts[..3],
        [
            Action::AcquireLock,
            Action::WithdrawFormerLeader(name("a")),
            Action::Promote
        ]
    );
}

#[test]
fn failover_in_synchronous_mode_withdraws_before_the_sync_key_and_the_promotion() {
    let mut world = World::new("b");
    world.config.synchronous_mode = SynchronousMode::On;
    world.replica(Some("a"), 500, 1);
    world.record(Record::Sync(SyncState {
        leader: Some(name("a")),
        sync_standbys: BTreeSet::from([name("b")]),
        quorum: None,
    }));
    former_leader(&mut world, "a", 500);
    let acts = acts(&world.decide());
    assert_eq!(acts[0], Action::AcquireLock);
    assert_eq!(acts[1], Action::WithdrawFormerLeader(name("a")));
    assert!(matches!(acts[2], Action::WriteSyncState { .. }));
    assert_eq!(acts[3], Action::Promote);
}

#[test]
fn switchover_candidate_does_not_withdraw_the_leader_that_stepped_down() {
    let mut world = World::new("b");
    world.replica(Some("a"), 500, 1);
    former_leader(&mut world, "a", 500);
    switchover(&mut world, Some("a"), Some("b"), None);
    let decision = world.decide();
    assert!(promotes(&decision), "{decision:?}");
    assert!(!takes(&decision, |a| matches!(
        a,
        Action::WithdrawFormerLeader(_)
    )));
}

#[test]
fn first_promotion_without_a_former_leader_withdraws_nobody() {
    let mut world = World::new("b");
    world.replica(Some("a"), 500, 1);
    let decision = world.decide();
    assert!(promotes(&decision));
    assert!(!takes(&decision, |a| matches!(
        a,
        Action::WithdrawFormerLeader(_)
    )));
}

#[test]
fn replica_remembers_the_newest_position_of_its_leader_from_status_or_record() {
    let mut world = World::new("b");
    world.leader("a").peer("a", Role::Primary, 700, 1);
    world.record(Record::Status(LeaderStatus {
        optime: Lsn(650),
        ..LeaderStatus::default()
    }));
    let mut memory = Memory::default();
    memory.saw_view(&ClusterView::decode(1, world.entries.clone()), &name("b"));
    let last = memory.last_leader.clone().unwrap();
    assert_eq!(last.name, name("a"));
    assert_eq!(last.optime, Some(Lsn(700)));
    assert_eq!(last.conn_url.as_deref(), Some("postgres://a:5432/postgres"));

    // The lock expired; the status the leader wrote last is newer still.
    world.remove("leader");
    world.remove("members/a");
    world.record(Record::Status(LeaderStatus {
        optime: Lsn(900),
        ..LeaderStatus::default()
    }));
    memory.saw_view(&ClusterView::decode(2, world.entries.clone()), &name("b"));
    let last = memory.last_leader.clone().unwrap();
    assert_eq!(last.optime, Some(Lsn(900)));
    assert_eq!(last.conn_url.as_deref(), Some("postgres://a:5432/postgres"));

    // Promoting reports it once, then forgets it.
    memory.record(&Action::Promote, &Outcome::Done, secs(1.0));
    assert_eq!(memory.last_leader, None);
}

#[test]
fn failsafe_primary_told_the_lock_expired_keeps_its_failsafe_deadline_to_retake_it() {
    let mut world = World::in_failsafe_mode("a");
    world.primary(500, 1);
    world.memory.failsafe_acked_at = Some(world.now - secs(1.0));
    world.memory.lock_lost();
    assert_eq!(world.memory.failsafe_acked_at, Some(world.now - secs(1.0)));
    let decision = world.decide();
    assert_eq!(acts(&decision), [Action::AcquireLock]);
    // Past that deadline it demotes.
    world.memory.failsafe_acked_at = Some(world.now - fence_window(&world));
    assert_demotes_at_once(&world);
}

#[test]
fn failsafe_round_does_not_extend_a_lock_this_node_was_told_it_lost() {
    let mut world = World::in_failsafe_mode("a");
    world.primary(500, 1);
    world.memory.failsafe_acked_at = Some(world.now - secs(2.5));
    world.cut_off_after_round(0.1, &["b"], &[]);
    let decision = world.decide();
    assert!(!takes(&decision, |a| matches!(
        a,
        Action::FailsafeExtend { .. }
    )));
}

// ---- synchronous replication: ordering of the sync key and PostgreSQL ----

fn sync_key_quorum(world: &mut World, leader: &str, standbys: &[&str], quorum: Option<u32>) {
    world.record(Record::Sync(SyncState {
        leader: Some(name(leader)),
        sync_standbys: standbys.iter().map(|s| name(s)).collect(),
        quorum,
    }));
}

/// What PostgreSQL's `synchronous_standby_names` says, as the leader observes it.
fn set_postgres_sync(world: &mut World, standbys: &BTreeSet<MemberName>, count: u32) {
    world.local.sync_standbys = standbys.clone();
    world.local.sync_count = if standbys.is_empty() { 0 } else { count };
}

/// The sync key and `synchronous_standby_names` as a test drives them.
#[derive(Debug)]
struct SyncDrive {
    key: BTreeSet<MemberName>,
    key_quorum: u32,
    postgres: BTreeSet<MemberName>,
    postgres_count: u32,
}

/// Runs the leader's sync steps, applying each, until it takes none; after
/// every step checks what promotion relies on: the key (when not empty)
/// covers every standby PostgreSQL may wait on and claims no more
/// acknowledgements per commit than PostgreSQL enforces.
fn drive_sync(world: &mut World, mut state: SyncDrive) -> SyncDrive {
    for _ in 0..12 {
        sync_key_quorum(
            world,
            "a",
            &state.key.iter().map(MemberName::as_str).collect::<Vec<_>>(),
            Some(state.key_quorum),
        );
        set_postgres_sync(world, &state.postgres, state.postgres_count);
        let Some(step) = sync_action(&world.decide()) else {
            return state;
        };
        world.memory.record(&step, &Outcome::Done, world.now);
        match step {
            Action::WriteSyncState {
                standbys, count, ..
            } => {
                state.key = standbys;
                state.key_quorum = count;
            }
            Action::SetSyncStandbys {
                standbys, count, ..
            } => {
                state.postgres = standbys;
                state.postgres_count = if state.postgres.is_empty() { 0 } else { count };
            }
            other => panic!("unexpected {other:?}"),
        }
        if !state.key.is_empty() {
            assert!(
                state.key.is_superset(&state.postgres) && !state.postgres.is_empty(),
                "the key must cover PostgreSQL's standbys: {state:?}"
            );
            assert!(
                state.key_quorum <= state.postgres_count,
                "the key claims more acknowledgements than PostgreSQL enforces: {state:?}"
            );
        }
    }
    panic!("no stable state after 12 steps: {state:?}");
}

/// b has flushed up to 500, where the leader was when PostgreSQL named it.
fn b_caught_up(world: &mut World) {
    world.memory.sync_standbys_since = Some(Lsn(500));
    world.local.standby_flush.insert(name("b"), Lsn(500));
}

/// The key and PostgreSQL both on `standbys`, `count` of them per commit.
fn settled(standbys: &[&str], count: u32) -> SyncDrive {
    let standbys = names(standbys);
    SyncDrive {
        key: standbys.clone(),
        key_quorum: count,
        postgres: standbys,
        postgres_count: count,
    }
}

/// [`drive_sync`] on a `mode` leader with standbys b and c, from `start`
/// after `synchronous_node_count` changed to `count`.
fn drive_node_count(mode: SynchronousMode, count: u32, start: SyncDrive) -> SyncDrive {
    let mut world = sync_leader();
    world.config.synchronous_mode = mode;
    two_standbys(&mut world);
    world.config.synchronous_node_count = count;
    drive_sync(&mut world, start)
}

fn two_standbys(world: &mut World) {
    world.peer("c", Role::Replica, 500, 1);
    world.local.streaming_standbys = BTreeSet::from([name("b"), name("c")]);
    world.local.standby_flush = BTreeMap::from([(name("b"), Lsn(500)), (name("c"), Lsn(500))]);
    world.memory.sync_standbys_since = Some(Lsn(500));
}

#[test]
fn sync_mode_replacing_a_standby_shrinks_the_key_only_once_the_new_one_holds_every_acknowledged_commit(
) {
    // PostgreSQL switched from c to b at 500: commits before were
    // acknowledged by c alone. Dropping c from the key before b holds them
    // would let b be promoted without them.
    let mut world = sync_leader();
    sync_key(&mut world, "a", &["b", "c"]);
    set_postgres_sync(&mut world, &BTreeSet::from([name("b")]), 1);
    world.memory.sync_standbys_since = Some(Lsn(500));
    world.local.standby_flush.insert(name("b"), Lsn(450));
    assert_eq!(
        sync_action(&world.decide()),
        None,
        "b lacks commits c acknowledged before 500"
    );
    // The position was forgotten (agent restart): PostgreSQL is set again
    // to take a new one, the key stays.
    world.memory.sync_standbys_since = None;
    assert_eq!(sync_step(&world), Some(SyncStep::Postgres(names(&["b"]))));
    b_caught_up(&mut world);
    assert_eq!(sync_step(&world), Some(SyncStep::Key(names(&["b"]))));
}

#[test]
fn sync_mode_a_standby_counts_as_caught_up_only_past_a_position_taken_once_postgres_named_it() {
    // The position recorded with the change is taken before PostgreSQL
    // applies it: commits acknowledged meanwhile did not wait for b.
    let mut world = sync_leader();
    sync_key(&mut world, "a", &[]);
    let step = sync_action(&world.decide()).expect("PostgreSQL names b first");
    assert!(matches!(&step, Action::SetSyncStandbys { .. }), "{step:?}");
    world.memory.record(&step, &Outcome::Done, world.now);
    set_postgres_sync(&mut world, &BTreeSet::from([name("b")]), 1);
    world.local.wal_position = Some(Lsn(600));
    world.local.standby_flush.insert(name("b"), Lsn(550));
    let step = sync_action(&world.decide());
    assert!(
        !matches!(&step, Some(Action::WriteSyncState { standbys, .. }) if !standbys.is_empty()),
        "b has flushed only 550 of the 600 written while PostgreSQL switched: {step:?}"
    );
    if let Some(step) = step {
        world.memory.record(&step, &Outcome::Done, world.now);
    }
    world.local.standby_flush.insert(name("b"), Lsn(600));
    assert_eq!(sync_step(&world), Some(SyncStep::Key(names(&["b"]))));
}

#[test]
fn sync_mode_raising_synchronous_node_count_changes_postgres_before_the_key() {
    // FIRST 1 (b) → FIRST 2 (b, c): until PostgreSQL waits for both, a
    // commit may be on b only, and c must not count as synchronous.
    let end = drive_node_count(SynchronousMode::On, 2, settled(&["b"], 1));
    assert_eq!(end.postgres, BTreeSet::from([name("b"), name("c")]));
    assert_eq!((end.postgres_count, end.key_quorum), (2, 2), "{end:?}");
    assert_eq!(end.key, end.postgres);
}

#[test]
fn sync_mode_lowering_synchronous_node_count_changes_the_key_before_postgres() {
    let end = drive_node_count(SynchronousMode::On, 1, settled(&["b", "c"], 2));
    assert_eq!((end.postgres_count, end.key_quorum), (1, 1), "{end:?}");
    assert_eq!(end.postgres.len(), 1);
}

#[test]
fn quorum_mode_a_new_synchronous_node_count_reaches_postgres_and_the_key() {
    for (from, to) in [(1, 2), (2, 1)] {
        let end = drive_node_count(SynchronousMode::Quorum, to, settled(&["b", "c"], from));
        let both = BTreeSet::from([name("b"), name("c")]);
        assert_eq!((end.postgres_count, end.key_quorum), (to, to), "{end:?}");
        assert_eq!((&end.key, &end.postgres), (&both, &both));
    }
}

#[test]
fn sync_mode_a_count_above_the_number_of_standbys_waits_for_all_of_them_and_no_more() {
    // ANY 3 of two standbys would stall every commit; the key then claims
    // as many acknowledgements as PostgreSQL waits for.
    let end = drive_node_count(
        SynchronousMode::Quorum,
        3,
        SyncDrive {
            key: BTreeSet::new(),
            key_quorum: 3,
            postgres: BTreeSet::new(),
            postgres_count: 0,
        },
    );
    assert_eq!(end.postgres, BTreeSet::from([name("b"), name("c")]));
    assert_eq!((end.postgres_count, end.key_quorum), (2, 2), "{end:?}");
}

#[test]
fn sync_mode_a_key_without_a_quorum_claims_one_acknowledgement_per_commit() {
    // A key written without `quorum` (by Patroni, or an older version) says
    // nothing of how many standbys acknowledged: assume one, so c needs b
    // visible, whatever synchronous_node_count says now.
    let mut world = World::new("c");
    world.config.synchronous_mode = SynchronousMode::On;
    world.config.synchronous_node_count = 2;
    world.replica(Some("a"), 500, 1);
    sync_key_quorum(&mut world, "a", &["b", "c"], None);
    let decision = world.decide();
    assert!(!promotes(&decision), "{decision:?}");
}

#[test]
fn sync_mode_strict_leader_without_standbys_makes_commits_wait_for_any_standby() {
    // Strict mode must not acknowledge commits alone. Just promoted: the
    // key is ours and empty, PostgreSQL names nobody, no standby streams
    // yet. Just bootstrapped: no sync key at all yet, nobody may promote on
    // it, so PostgreSQL can start waiting before the key is claimed.
    for (case, empty_key) in [("just promoted", true), ("just bootstrapped", false)] {
        let mut world = strict_leader_alone();
        if empty_key {
            sync_key(&mut world, "a", &[]);
        }
        let step = sync_action(&world.decide());
        assert!(
            matches!(&step, Some(Action::SetSyncStandbys { standbys, any_standby: true, .. }) if standbys.is_empty()),
            "{case}: strict mode acknowledges commits without a standby: {step:?}"
        );
    }
}

#[test]
fn leader_gone_replica_too_far_behind_the_former_leaders_last_position_does_not_race() {
    // Asynchronous loss is bounded by maximum_lag_on_failover, measured from
    // what the former leader was last known to hold, as in Patroni.
    let from_memory: Situation = |world| {
        world.memory.last_leader = Some(LastLeader {
            name: name("a"),
            conn_url: None,
            optime: Some(Lsn(1_000_000)),
        });
    };
    let from_status = |world: &mut World| {
        world.record(Record::Status(LeaderStatus {
            optime: Lsn(1_000_000),
            ..LeaderStatus::default()
        }));
    };
    for (source, known) in [("memory", from_memory), ("the leader status", from_status)] {
        let mut world = World::new("b");
        world.config.maximum_lag_on_failover = 100;
        world
            .replica(Some("a"), 500, 1)
            .peer("c", Role::Replica, 450, 1);
        known(&mut world);
        assert_race(
            &format!("last position from {source}"),
            &world,
            Race::Waits("maximum_lag_on_failover"),
        );
        // An operator's failover request naming it overrides the bound.
        world.record(Record::Failover(FailoverRequest {
            leader: None,
            candidate: Some(name("b")),
            scheduled_at: None,
        }));
        assert!(promotes(&world.decide()));
        world.remove("failover");
        // Within the bound it races.
        world.config.maximum_lag_on_failover = 1_000_000;
        assert!(promotes(&world.decide()));
    }
}

// ---- the former leader still answering as a running primary ----

#[test]
fn former_leader_still_answering_as_a_running_primary_is_not_raced_until_its_fence_expired() {
    let mut world = World::new("b");
    world
        .replica(Some("a"), 500, 1)
        .peer("a", Role::Primary, 500, 1);
    former_leader(&mut world, "a", 500);
    world.probed("a", 500, 1, true);
    let ttl = world.config.ttl;
    // The lock was read free 1 s ago: a's fence may allow writes for up to a ttl more.
    world.memory.lock_free_since = Some(world.now - Duration::from_secs(1));
    assert_race(
        "lock read free 1 s ago",
        &world,
        Race::Waits("running primary"),
    );
    // Never seen free before this loop: the same.
    world.memory.lock_free_since = None;
    assert!(!promotes(&world.decide()));
    // A ttl after the lock was first read free, its fence has stopped writes.
    world.memory.lock_free_since = Some(world.now - ttl - Duration::from_secs(1));
    assert!(promotes(&world.decide()));
}

#[test]
fn former_leader_answering_as_a_replica_does_not_hold_the_race_up() {
    let mut world = World::new("b");
    world.replica(Some("a"), 500, 1);
    former_leader(&mut world, "a", 500);
    world.probed("a", 400, 1, true);
    if let Some(report) = world.peers.get_mut(&name("a")) {
        report.running_primary = false;
    }
    world.memory.lock_free_since = Some(world.now - Duration::from_secs(1));
    assert!(promotes(&world.decide()));
}

// ---- a switchover nobody took over ----

/// `a` stopped its primary (timeline 2, at 800) for a switchover to `b`
/// `ago` before now; the lock is free.
fn stepped_down(world: &mut World, ago: Duration) {
    world.primary(800, 2);
    world.local.role = LocalRole::Stopped { crashed: false };
    world.memory.stepped_down_at = Some(world.now - ago);
    world.peer("b", Role::Replica, 800, 2);
    // b answers its REST API: on the former leader's timeline.
    world.probed("b", 800, 2, false);
    switchover(world, Some("a"), Some("b"), None);
}

#[test]
fn switchover_former_leader_takes_back_only_what_every_member_confirms() {
    // b does not answer: its promotion may be unseen (its writes late).
    let mut world = World::new("a");
    let late = world.config.ttl + Duration::from_secs(1);
    stepped_down(&mut world, late);
    world.peers.clear();
    let decision = world.decide();
    assert!(!promotes(&decision), "{decision:?}");
    assert!(
        !acts(&decision).contains(&Action::StartPrimary),
        "{decision:?}"
    );
    assert!(
        decision.reason.contains("cannot confirm that b"),
        "{decision:?}"
    );
    // After three ttls the take-back is given up: the usual race decides.
    let mut world = World::new("a");
    let much_later = world.config.ttl * 3 + Duration::from_secs(1);
    stepped_down(&mut world, much_later);
    world.peers.clear();
    let decision = world.decide();
    assert!(
        !acts(&decision).contains(&Action::StartPrimary),
        "{decision:?}"
    );
    // In a synchronous mode, another leader's sync key means it promoted.
    let mut world = World::new("a");
    world.config.synchronous_mode = SynchronousMode::On;
    stepped_down(&mut world, late);
    sync_key(&mut world, "b", &[]);
    let decision = world.decide();
    assert!(
        !acts(&decision).contains(&Action::StartPrimary),
        "{decision:?}"
    );
}

#[test]
fn switchover_not_taken_over_the_former_leader_waits_then_starts_as_primary_on_its_timeline() {
    let mut world = World::new("a");
    stepped_down(&mut world, Duration::from_secs(1));
    let waiting = world.decide();
    assert_eq!(acts(&waiting), [], "{waiting:?}");
    let late = world.config.ttl + Duration::from_secs(1);
    stepped_down(&mut world, late);
    let decision = world.decide();
    let acts = acts(&decision);
    assert_eq!(acts.len(), 4, "{decision:?}");
    assert_eq!(acts[0], Action::AcquireLock);
    assert!(
        matches!(acts[1], Action::ClearFailoverRequest(_)),
        "{acts:?}"
    );
    assert!(
        matches!(&acts[2], Action::SwitchoverAbandoned(why) if why.contains("candidate b")),
        "{acts:?}"
    );
    assert_eq!(acts[3], Action::StartPrimary);
    // The same data directory, started in place: the renewer keeps the lock
    // taken back while it starts.
    assert_eq!(decision.restart_in_place_since, Some(world.now));
}

#[test]
fn switchover_former_leader_never_starts_as_primary_once_the_cluster_moved_on() {
    let mut world = World::new("a");
    let late = world.config.ttl + Duration::from_secs(1);
    stepped_down(&mut world, late);
    // b was promoted onto timeline 3 (and its lock is gone already).
    world.forked(2, 800, "promoted by matriarch", "b");
    let decision = world.decide();
    assert!(!promotes(&decision), "{decision:?}");
    // A peer reports a newer timeline, or answers as a running primary.
    for (timeline, running_primary) in [(3, false), (2, true)] {
        let mut world = World::new("a");
        stepped_down(&mut world, late);
        world.probed("b", 900, timeline, running_primary);
        let decision = world.decide();
        assert!(!promotes(&decision), "{decision:?}");
    }
    // Crashed since: not the data directory it stopped cleanly either.
    let mut world = World::new("a");
    let late = world.config.ttl + Duration::from_secs(1);
    stepped_down(&mut world, late);
    world.local.role = LocalRole::Stopped { crashed: true };
    assert!(!promotes(&world.decide()));
}

#[test]
fn memory_forgets_a_switchover_once_the_data_directory_runs_or_another_leads() {
    let mut memory = Memory::default();
    let at = Duration::from_secs(5);
    memory.record(&Action::Demote(DemoteMode::Switchover), &Outcome::Done, at);
    assert_eq!(memory.stepped_down_at, Some(at));
    let mut world = World::new("a");
    world.replica(None, 800, 2);
    memory.observed(&world.local);
    assert_eq!(memory.stepped_down_at, None, "ran as a standby since");

    memory.record(&Action::Demote(DemoteMode::Switchover), &Outcome::Done, at);
    world.leader("b").peer("b", Role::Primary, 900, 3);
    memory.saw_view(&ClusterView::decode(1, world.entries.clone()), &name("a"));
    assert_eq!(memory.stepped_down_at, None, "b took over");

    memory.record(&Action::Demote(DemoteMode::Graceful), &Outcome::Done, at);
    assert_eq!(memory.stepped_down_at, None, "not a switchover");
}

#[test]
fn the_leader_observes_how_many_acknowledgements_postgres_waits_for_and_any_standby() {
    use matriarch_postgres::{LocalState, PgRole, ServerState, SyncStandbyNames};
    let mut state = LocalState {
        server: ServerState::Running(PgRole::Primary),
        ..LocalState::empty()
    };
    state.synchronous_standby_names = Some(SyncStandbyNames::any(2, ["b", "c"]).unwrap());
    let local = local_postgres(&state);
    assert_eq!(local.sync_standbys, BTreeSet::from([name("b"), name("c")]));
    assert_eq!((local.sync_count, local.sync_any_standby), (2, false));
    state.synchronous_standby_names = Some(SyncStandbyNames::first(1, ["*"]).unwrap());
    let local = local_postgres(&state);
    assert!(local.sync_standbys.is_empty());
    assert_eq!((local.sync_count, local.sync_any_standby), (1, true));
    state.synchronous_standby_names = Some(SyncStandbyNames::Off);
    let local = local_postgres(&state);
    assert_eq!((local.sync_count, local.sync_any_standby), (0, false));
}

#[test]
fn sync_mode_strict_race_winner_makes_postgres_wait_for_any_standby_before_promoting() {
    // As Patroni: the promoted primary must not acknowledge a commit alone
    // in the loop before its leader upkeep names standbys.
    let mut world = World::new("b");
    world.config.synchronous_mode = SynchronousMode::On;
    world.config.synchronous_mode_strict = true;
    world.replica(Some("a"), 500, 1);
    sync_key(&mut world, "a", &["b"]);
    let acts = acts(&world.decide());
    let wait_any = acts.iter().position(|a| {
        matches!(a, Action::SetSyncStandbys { standbys, any_standby: true, .. } if standbys.is_empty())
    });
    let promote = acts.iter().position(|a| *a == Action::Promote);
    assert!(promote.is_some(), "{acts:?}");
    assert!(
        wait_any.is_some_and(|w| Some(w) < promote),
        "no wait for any standby before the promotion: {acts:?}"
    );
}

// ---- hostile member records and silent waits ----

/// A leftover or forged record the REST probe cannot confirm: running
/// replica, on timeline 1, at `position`.
const GHOST_POSITION: u64 = 1 << 50;

fn ghost_world() -> World {
    let mut world = World::leader_gone("b");
    world
        .peer("ghost", Role::Replica, GHOST_POSITION, 1)
        .record(Record::Status(LeaderStatus {
            optime: Lsn(600),
            ..LeaderStatus::default()
        }));
    world
}

#[test]
fn leader_gone_unprobed_record_far_ahead_of_the_former_leader_does_not_block_the_race() {
    let world = ghost_world();
    let decision = world.decide();
    assert!(promotes(&decision), "{decision:?}");
    let view = ClusterView::decode(1, world.entries.clone());
    let ignored = implausible_records(&world.node.name, &view, &world.peers, &world.memory);
    assert_eq!(ignored.keys().collect::<Vec<_>>(), [&name("ghost")]);
}

#[test]
fn leader_gone_probed_peer_far_ahead_still_blocks_the_race() {
    // A peer that answers for itself is alive: its claim is not ignored.
    let mut world = ghost_world();
    world.probed("ghost", GHOST_POSITION, 1, false);
    let decision = world.decide();
    assert!(!promotes(&decision), "{decision:?}");
}

#[test]
fn leader_gone_unprobed_record_on_an_impossible_timeline_does_not_block_the_race() {
    let mut world = World::new("b");
    world
        .replica(Some("a"), 500, 2)
        .peer("ghost", Role::Replica, 510, 9)
        .record(Record::History(TimelineHistory(vec![HistoryEntry {
            timeline: Timeline(1),
            switch_lsn: Lsn(100),
            reason: "test".to_owned(),
            timestamp: None,
            new_leader: Some(name("a")),
        }])));
    let decision = world.decide();
    assert!(promotes(&decision), "{decision:?}");
}

#[test]
fn leader_gone_unprobed_record_slightly_ahead_still_blocks_the_race() {
    // Records lag the leader's status: a little ahead of it is plausible.
    let mut world = ghost_world();
    world.peer("ghost", Role::Replica, 700, 1);
    let decision = world.decide();
    assert!(!promotes(&decision), "{decision:?}");
    assert!(
        decision.reason.contains("ghost is a better candidate"),
        "{decision:?}"
    );
}

#[test]
fn not_racing_and_waiting_decisions_say_what_is_pending() {
    let world = World::leaderless("b", "a", 400, "c", 500);
    let decision = world.decide();
    assert!(!promotes(&decision));
    let pending = decision.pending.as_deref().unwrap_or_default();
    assert!(pending.contains("c is a better candidate"), "{decision:?}");

    let mut world = World::new("b");
    world.remove("initialize");
    world.stopped();
    let decision = world.decide();
    assert!(
        decision
            .pending
            .as_deref()
            .unwrap_or_default()
            .contains("waiting for an operator"),
        "{decision:?}"
    );

    // Following a live leader is not a wait.
    let mut world = World::new("b");
    world
        .leader("a")
        .peer("a", Role::Primary, 500, 1)
        .replica(Some("a"), 400, 1);
    assert_eq!(world.decide().pending, None);
}

#[test]
fn following_without_receiving_wal_is_pending_with_a_stable_reason() {
    let mut world = World::new("b");
    world
        .leader("a")
        .peer("a", Role::Primary, 500, 1)
        .replica(Some("a"), 400, 1);
    world.local.receiving = false;
    world.memory.loops_not_streaming = LOOPS_BEFORE_REWIND;
    let first = world.decide().pending;
    assert!(
        first
            .as_deref()
            .unwrap_or_default()
            .contains("following a without receiving WAL"),
        "{first:?}"
    );
    // The reason is logged when it changes: it must not change every loop.
    world.memory.loops_not_streaming = LOOPS_BEFORE_REWIND + 3;
    assert_eq!(world.decide().pending, first);
}

/// A leader whose PostgreSQL does not answer keeps the lock for a ttl (a
/// slow answer is no reason to fail over), then stops renewing: it tries to
/// stop PostgreSQL and hand the lock over, and if PostgreSQL cannot even be
/// stopped, its fence stops writes before the lock expires.
#[test]
fn a_leader_whose_postgres_stays_silent_for_a_ttl_stops_renewing() {
    let mut world = World::leading("a");
    world.local.role = LocalRole::Unknown;
    world.memory.postgres_answered_at = Some(world.now - world.config.ttl + Duration::from_secs(1));
    let decision = world.decide();
    assert_eq!(decision.role, EngineRole::Leader, "{decision:?}");
    assert!(has(&decision, &Action::RenewLock), "{decision:?}");

    world.memory.postgres_answered_at = Some(world.now - world.config.ttl);
    let decision = world.decide();
    assert_eq!(decision.role, EngineRole::Demoting, "{decision:?}");
    assert_eq!(acts(&decision), steps_down(DemoteMode::Immediate));
}

/// A due request naming a member without a record is pending on the leader
/// for a ttl after it was first seen, then cleared; the leader keeps leading.
#[test]
fn a_failover_request_for_a_member_without_a_record_is_pending_then_cleared() {
    let mut world = World::leading("a");
    world.record(Record::Failover(FailoverRequest {
        leader: Some(name("a")),
        candidate: Some(name("ghost")),
        scheduled_at: None,
    }));
    let version = match &ClusterView::decode(1, world.entries.clone()).failover {
        Some(Ok(request)) => request.version,
        other => panic!("{other:?}"),
    };
    world.memory.failover_seen_at = Some((version, world.now - Duration::from_secs(1)));
    let decision = world.decide();
    assert_eq!(decision.role, EngineRole::Leader, "{decision:?}");
    assert!(
        decision
            .pending
            .as_deref()
            .is_some_and(|p| p.contains("ghost")),
        "{decision:?}"
    );
    assert!(!has(&decision, &Action::ClearFailoverRequest(version)));

    world.memory.failover_seen_at = Some((version, world.now - world.config.ttl));
    let decision = world.decide();
    assert_eq!(decision.role, EngineRole::Leader, "{decision:?}");
    assert!(
        has(&decision, &Action::ClearFailoverRequest(version)),
        "{decision:?}"
    );
    assert!(!has(&decision, &Action::Demote(DemoteMode::Switchover)));
}

// ---- arbitrary bytes in every key ----

/// A small deterministic generator (xorshift), so a failing case replays.
struct Bytes(u64);

impl Bytes {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Random bytes, or JSON of the wrong shape, or a valid-looking prefix.
    fn value(&mut self) -> Vec<u8> {
        const SHAPES: &[&[u8]] = &[
            b"",
            b"null",
            b"{}",
            b"[]",
            b"{\"leader\": 17, \"sync_standby\": [1, 2], \"quorum\": \"many\"}",
            b"{\"ttl\": \"soon\", \"loop_wait\": -1, \"synchronous_mode\": 3}",
            b"{\"xlog_location\": 18446744073709551615, \"timeline\": 4294967295, \"role\": \"master\", \"state\": \"running\"}",
            b"[[1, \"0/0\", \"x\"], [\"a\"]]",
            b"{\"optime\": -5, \"slots\": 3}",
            b"\"a\"",
            b"a\0b",
        ];
        match self.below(3) {
            0 => SHAPES[self.below(SHAPES.len() as u64) as usize].to_vec(),
            1 => {
                let len = self.below(4096) as usize;
                (0..len).map(|_| self.next() as u8).collect()
            }
            _ => {
                let shape = SHAPES[self.below(SHAPES.len() as u64) as usize];
                let cut = self.below(shape.len() as u64 + 1) as usize;
                shape[..cut].to_vec()
            }
        }
    }
}

/// Every key the cluster reads, by its path below the scope.
fn every_key() -> Vec<&'static str> {
    let members = ["members/a", "members/b", "members/c"];
    support::CLUSTER_KEYS.into_iter().chain(members).collect()
}

fn promotes_or_takes_the_lock(decision: &Decision) -> bool {
    acts(decision)
        .iter()
        .any(|a| matches!(a, Action::Promote | Action::AcquireLock))
}

/// Issue 21: arbitrary bytes in any key (or several at once) never make a
/// replica of a live leader, or a replica that cannot read the leader key,
/// promote or take the lock, and never panic.
#[test]
fn arbitrary_bytes_in_any_key_never_lead_to_a_promotion() {
    let every_key = every_key();
    let mut bytes = Bytes(0x9e37_79b9_7f4a_7c15);
    for case in 0..3000 {
        let mut world = World::new("b");
        world
            .leader("a")
            .replica(Some("a"), 500, 1)
            .peer("a", Role::Primary, 600, 1)
            .peer("c", Role::Replica, 400, 1);
        let garbled = 1 + bytes.below(3);
        let mut keys = Vec::new();
        for _ in 0..garbled {
            let key = every_key[bytes.below(every_key.len() as u64) as usize];
            world.put(key, bytes.value());
            keys.push(key);
        }
        let decision = world.decide();
        // A garbled leader key is unreadable, never free; a readable one
        // still names the live leader `a`, or something that is not `b`.
        let leader_readable_as_b = matches!(
            ClusterView::decode(1, world.entries.clone()).leader_name(),
            Some(holder) if holder.as_str() == "b"
        );
        assert!(
            leader_readable_as_b || !promotes_or_takes_the_lock(&decision),
            "case {case}: garbage in {keys:?} led to {:?}",
            acts(&decision)
        );
    }
}

#[test]
fn sync_priority_zero_is_never_synchronous_and_higher_goes_first() {
    // b alone, sync_priority 0: nothing to make synchronous.
    let mut world = sync_leader();
    let never = Tags {
        sync_priority: 0,
        ..Tags::default()
    };
    sync_key(&mut world, "a", &[]);
    assert!(
        sync_action(&world.decide()).is_some(),
        "b is made synchronous by default"
    );
    world.peer_with("b", Role::Replica, 500, 1, never);
    assert_eq!(sync_action(&world.decide()), None);

    // b synchronous now, c streams with a higher sync_priority: c takes
    // the one place (Patroni sorts by sync_priority first).
    let mut world = sync_leader();
    let high = Tags {
        sync_priority: 5,
        ..Tags::default()
    };
    world.peer_with("c", Role::Replica, 500, 1, high);
    world.local.streaming_standbys = BTreeSet::from([name("b"), name("c")]);
    sync_key(&mut world, "a", &["b"]);
    set_postgres_sync(&mut world, &BTreeSet::from([name("b")]), 1);
    let step = sync_action(&world.decide());
    assert!(
        matches!(&step, Some(Action::WriteSyncState { standbys, .. } | Action::SetSyncStandbys { standbys, .. }) if standbys.contains(&name("c"))),
        "{step:?}"
    );
    // With equal priorities the current one stays.
    world.peer("c", Role::Replica, 500, 1);
    assert_eq!(sync_action(&world.decide()), None);
}
