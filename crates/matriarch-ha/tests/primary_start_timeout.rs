//! A primary whose PostgreSQL stopped and cannot start again (issue 21: a
//! full disk): it restarts in place for `primary_start_timeout`, then hands
//! the lock to a healthy replica, never to nobody; it says why once; and it
//! does not take the lock straight back.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use matriarch_dcs::{Clock, Dcs, ManualClock, MemoryDcs};
use matriarch_ha::sim::{member_settings, running_member};
use matriarch_ha::*;
use matriarch_model::*;
use matriarch_postgres::memory::MemoryPostgresCluster;
use matriarch_router::RecordingRouter;

mod support;
use support::scene::{housekeeping, takes, Scene, SYSID};
use support::LogCapture;

fn name(n: &str) -> MemberName {
    MemberName::new(n).unwrap()
}

const CAUSE: &str =
    "PostgreSQL cannot start: no space left on device (/data/a/pg_wal: 0 bytes free)";

type World = Scene;

impl World {
    /// Leader `a` holds the lock; its PostgreSQL (that ran as primary) is
    /// stopped and its starts have failed since `failing_for` ago.
    fn leader_failing_for(failing_for: Duration) -> World {
        let now = Duration::from_secs(1000);
        let mut world = Scene::at("a", now);
        world.local = LocalPostgres {
            role: LocalRole::Stopped { crashed: true },
            system_id: Some(SYSID),
            timeline: Some(Timeline(1)),
            wal_position: Some(Lsn(1000)),
            ..LocalPostgres::no_data()
        };
        world.memory = Memory {
            lock_renewed_at: Some(now - Duration::from_secs(1)),
            ran_as_primary: true,
            primary_start_failed_since: Some(now - failing_for),
            primary_start_failures: 3,
            start_failure: Some(CAUSE.to_owned()),
            ..Memory::default()
        };
        world.put("leader", b"a".to_vec());
        world
    }

    /// A peer's record: a replica at `position` on timeline 1.
    fn replica(&mut self, n: &str, position: u64, tags: Tags) -> &mut Self {
        let member = Member {
            tags,
            ..record(n, Role::Replica, position, 1)
        };
        self.put(&format!("members/{n}"), encode_member(&member));
        self
    }
}

/// Member `n`'s record, running as `role` at `position` on `timeline`,
/// without a REST API.
fn record(n: &str, role: Role, position: u64, timeline: u32) -> Member {
    Member {
        api_url: String::new(),
        ..running_member(&name(n), role, position, timeline)
    }
}

fn hands_over(decision: &Decision) -> bool {
    decision.actions.contains(&Action::ReleaseLock)
}

fn restarts_in_place(decision: &Decision) -> bool {
    decision.actions.contains(&Action::StartPrimary)
        && decision.actions.contains(&Action::RenewLock)
        && !hands_over(decision)
}

#[test]
fn the_primary_restarts_in_place_until_primary_start_timeout_then_hands_over() {
    let timeout = ClusterConfig::default().primary_start_timeout;
    assert_eq!(timeout, Duration::from_secs(30), "matriarch's default");
    let mut before = World::leader_failing_for(timeout - Duration::from_millis(1));
    before.replica("b", 1000, Tags::default());
    let decision = before.decide();
    assert!(restarts_in_place(&decision), "{decision:?}");
    assert_eq!(decision.role, EngineRole::Leader);
    let pending = decision.pending.unwrap_or_default();
    assert!(pending.contains(CAUSE), "pending: {pending:?}");

    let mut at = World::leader_failing_for(timeout);
    at.replica("b", 1000, Tags::default());
    let decision = at.decide();
    assert!(hands_over(&decision), "{decision:?}");
    assert!(decision.actions.contains(&Action::Withdraw), "{decision:?}");
    assert!(
        !decision.actions.contains(&Action::RenewLock),
        "{decision:?}"
    );
    assert!(
        !decision.actions.contains(&Action::StartPrimary),
        "{decision:?}"
    );
    assert!(decision.reason.contains(CAUSE), "{}", decision.reason);
}

/// The engine's renewer keeps the lock while a start in place runs, up to
/// `primary_start_timeout` from the time the decision says the start counts
/// from.
#[test]
fn a_restart_in_place_counts_from_the_first_failed_start_then_from_itself() {
    let timeout = ClusterConfig::default().primary_start_timeout;
    // Within the timeout: from the first failed start of the run.
    let mut within = World::leader_failing_for(timeout - Duration::from_secs(1));
    within.replica("b", 1000, Tags::default());
    let decision = within.decide();
    assert!(restarts_in_place(&decision), "{decision:?}");
    assert_eq!(
        decision.restart_in_place_since,
        Some(within.now - (timeout - Duration::from_secs(1))),
        "the first failure's time"
    );

    // Past it, nobody to hand over to: this start counts from itself.
    let past = World::leader_failing_for(timeout * 20);
    let decision = past.decide();
    assert!(restarts_in_place(&decision), "{decision:?}");
    assert_eq!(decision.restart_in_place_since, Some(past.now));

    // Past it with a replica to take over: no start in place at all.
    let mut handing_over = World::leader_failing_for(timeout);
    handing_over.replica("b", 1000, Tags::default());
    let decision = handing_over.decide();
    assert!(hands_over(&decision), "{decision:?}");
    assert_eq!(decision.restart_in_place_since, None);

    // A first start (none failed yet) counts from itself.
    let mut first = World::leader_failing_for(Duration::ZERO);
    first.memory.primary_start_failed_since = None;
    first.memory.primary_start_failures = 0;
    let decision = first.decide();
    assert!(restarts_in_place(&decision), "{decision:?}");
    assert_eq!(decision.restart_in_place_since, Some(first.now));

    // A leader running its primary restarts nothing.
    let mut running = World::leader_failing_for(Duration::ZERO);
    running.running_primary_holding_the_lock(1000);
    let decision = running.decide();
    assert_eq!(decision.role, EngineRole::Leader, "{decision:?}");
    assert_eq!(decision.restart_in_place_since, None);
}

#[test]
fn a_timeout_of_zero_hands_over_after_the_first_failed_start() {
    let mut world = World::leader_failing_for(Duration::ZERO);
    world.config.primary_start_timeout = Duration::ZERO;
    world.replica("b", 1000, Tags::default());
    assert!(hands_over(&world.decide()));
}

#[test]
fn without_a_healthy_replica_the_primary_keeps_restarting_in_place() {
    let long = Duration::from_secs(600);
    // Nobody else at all.
    let alone = World::leader_failing_for(long);
    let decision = alone.decide();
    assert!(restarts_in_place(&decision), "{decision:?}");
    let pending = decision.pending.unwrap_or_default();
    assert!(
        pending.contains(CAUSE) && pending.contains("no healthy replica"),
        "pending: {pending:?}"
    );

    // A replica tagged nofailover.
    let mut nofailover = World::leader_failing_for(long);
    nofailover.replica(
        "b",
        1000,
        Tags {
            nofailover: true,
            ..Tags::default()
        },
    );
    assert!(restarts_in_place(&nofailover.decide()));

    // A replica that is not running.
    let mut stopped = World::leader_failing_for(long);
    let member = Member {
        state: MemberState::Stopped,
        ..record("b", Role::Replica, 1000, 1)
    };
    stopped.put("members/b", encode_member(&member));
    assert!(restarts_in_place(&stopped.decide()));

    // Asynchronous, and further behind than maximum_lag_on_failover.
    let mut behind = World::leader_failing_for(long);
    behind.config.maximum_lag_on_failover = 100;
    behind.replica("b", 800, Tags::default());
    assert!(restarts_in_place(&behind.decide()));
}

#[test]
fn in_synchronous_mode_only_a_synchronous_standby_is_handed_the_lock() {
    let long = Duration::from_secs(600);
    let sync = |standbys: &[&str]| SyncState {
        leader: Some(name("a")),
        sync_standbys: standbys.iter().map(|n| name(n)).collect::<BTreeSet<_>>(),
        quorum: None,
    };
    let mut world = World::leader_failing_for(long);
    world.config.synchronous_mode = SynchronousMode::On;
    world.replica("b", 1000, Tags::default());
    world.put("sync", Record::Sync(sync(&[])).encode());
    assert!(
        restarts_in_place(&world.decide()),
        "an asynchronous standby may lack acknowledged commits"
    );
    world.put("sync", Record::Sync(sync(&["b"])).encode());
    assert!(hands_over(&world.decide()));
}

#[test]
fn after_handing_over_it_neither_races_nor_starts_to_join_the_race() {
    let mut world = World::leader_failing_for(Duration::from_secs(600));
    world.entries.retain(|e| e.key != "leader");
    world.memory.lock_renewed_at = None;
    world.memory.primary_start_failed_since = None;
    world.memory.handed_over_at = Some(world.now - Duration::from_secs(1));
    world.replica("b", 900, Tags::default());
    let decision = world.decide();
    assert!(
        !takes(&decision, |a| matches!(
            a,
            Action::AcquireLock | Action::StartReplica { .. } | Action::StartPrimary
        )),
        "{decision:?}"
    );
    assert!(
        decision.pending.unwrap_or_default().contains(CAUSE),
        "the cause is still shown"
    );
    // Running read-only (started by hand), it still does not race.
    world.local.role = LocalRole::Replica { upstream: None };
    let decision = world.decide();
    assert!(
        !decision.actions.contains(&Action::AcquireLock),
        "{decision:?}"
    );
}

#[test]
fn primary_start_timeout_is_read_from_the_config_key_and_bad_values_are_refused() {
    let decode = |json: &str| decode_config(json.as_bytes()).map_err(|e| e.to_string());
    assert_eq!(
        decode(r#"{"primary_start_timeout": 12}"#)
            .unwrap()
            .primary_start_timeout,
        Duration::from_secs(12)
    );
    assert_eq!(
        decode(r#"{"primary_start_timeout": 0}"#)
            .unwrap()
            .primary_start_timeout,
        Duration::ZERO
    );
    for bad in [
        r#"{"primary_start_timeout": -1}"#,
        r#"{"primary_start_timeout": "soon"}"#,
        r#"{"primary_start_timeout": 1e30}"#,
        r#"{"primary_start_timeout": 86401}"#,
    ] {
        let error = decode(bad).expect_err(bad);
        assert!(error.contains("primary_start_timeout"), "{bad}: {error}");
    }
    // A known key now: written back as it was read.
    let config = decode(r#"{"primary_start_timeout": 12}"#).unwrap();
    let json = String::from_utf8(Record::Config(config).encode()).unwrap();
    assert!(json.contains(r#""primary_start_timeout":12"#), "{json}");
}

/// Three engines on the in-memory PostgreSQL twin and `MemoryDcs`, on a
/// manual clock: `a` bootstraps and leads, `b` and `c` follow; then `a`'s
/// disk fills up.
#[test]
fn a_primary_on_a_full_disk_hands_over_after_the_bound_and_says_why_once() {
    let logs = LogCapture::default();
    let _logging = logs.capture_this_thread();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let timeout = Duration::from_secs(10);
        let config = ClusterConfig {
            primary_start_timeout: timeout,
            ..ClusterConfig::default()
        };
        let clock = Arc::new(ManualClock::new());
        let layout = KeyLayout::new("service", "disk").unwrap();
        let store = MemoryDcs::with_clock(layout, Arc::clone(&clock) as Arc<dyn Clock>);
        let pg = MemoryPostgresCluster::new(SYSID);
        let mut engines: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|n| {
                Engine::new(
                    store.connect(),
                    pg.member(name(n)),
                    RecordingRouter::new("recording"),
                    member_settings(&name(n), config.clone()),
                    Arc::clone(&clock) as Arc<dyn Clock>,
                )
            })
            .collect();
        let statuses: Vec<_> = engines.iter().map(Engine::status).collect();
        let holder = || async {
            store
                .connect()
                .read_view()
                .await
                .unwrap()
                .leader_name()
                .map(|n| n.as_str().to_owned())
        };
        // One loop of every engine, a second apart.
        macro_rules! round {
            () => {{
                let mut decisions = Vec::new();
                for engine in engines.iter_mut() {
                    decisions.push(engine.run_once().await);
                    for _ in 0..10 {
                        tokio::task::yield_now().await;
                    }
                }
                pg.servers().replicate();
                clock.advance(Duration::from_secs(1));
                decisions
            }};
        }
        for _ in 0..30 {
            round!();
        }
        assert_eq!(
            holder().await.as_deref(),
            Some("a"),
            "a bootstrapped and leads"
        );
        let streaming = statuses[1..]
            .iter()
            .all(|s| s.get().role == EngineRole::Replica);
        assert!(streaming, "b and c follow a");

        let a_index = pg.member(name("a")).index();
        pg.servers().fill_disk(a_index, true);
        let filled_at = clock.now();
        let mut handed_over_at = None;
        let mut pendings = BTreeSet::new();
        for _ in 0..30 {
            let decisions = round!();
            if let Some(pending) = &decisions[0].pending {
                pendings.insert(pending.clone());
            }
            let now_holder = holder().await;
            if handed_over_at.is_none() && now_holder.as_deref() != Some("a") {
                handed_over_at = Some(clock.now().saturating_sub(filled_at));
            }
            if now_holder.as_deref().is_some_and(|h| h != "a") {
                break;
            }
        }
        let took = handed_over_at.expect("a replica took over");
        assert!(
            took >= timeout,
            "handed over after {took:?}, before primary_start_timeout {timeout:?}"
        );
        assert!(
            took <= timeout + config.ttl * 2,
            "handed over after {took:?}, long after primary_start_timeout {timeout:?}"
        );
        for _ in 0..5 {
            round!();
        }
        let new_holder = holder().await.expect("a leader");
        assert_ne!(new_holder, "a", "a did not take the lock back");
        // The cause: in `pending` of every decision while it lasted, in
        // the status now, and logged once.
        let status = statuses[0].get();
        let pending = status.pending.unwrap_or_default();
        assert!(
            pending.contains("no space left on device"),
            "a's status: {pending:?} ({})",
            status.reason
        );
        assert!(
            pendings
                .iter()
                .all(|p| p.contains("no space left on device")),
            "{pendings:?}"
        );
        let lines = logs.all();
        let logged: Vec<&String> = lines
            .iter()
            .filter(|l| l.starts_with("WARN") || l.starts_with("ERROR"))
            .filter(|l| l.to_ascii_lowercase().contains("no space left on device"))
            .collect();
        assert_eq!(logged.len(), 1, "logged once: {logged:#?}");
        assert!(
            logged[0].contains("cluster=disk") && logged[0].contains("member=a"),
            "{}",
            logged[0]
        );
    });
}

/// Replica `b` follows `a`, which leads on a newer timeline; `b` receives
/// nothing and has not for many loops.
fn replica_receiving_nothing(cause: Option<&str>) -> Decision {
    let mut world = World::leader_failing_for(Duration::ZERO);
    world.seen_by("b");
    world.put("leader", b"a".to_vec());
    let leader = record("a", Role::Primary, 5000, 2);
    world.put("members/a", encode_member(&leader));
    world.local = LocalPostgres {
        role: LocalRole::Replica {
            upstream: Some(name("a")),
        },
        receiving: false,
        ..world.local.clone()
    };
    world.memory = Memory {
        loops_not_streaming: 10,
        start_failure: cause.map(str::to_owned),
        ..Memory::default()
    };
    world.decide()
}

#[test]
fn a_replica_on_a_full_disk_says_so_instead_of_cycling_through_rewinds() {
    // Without a known cause, a silent replica stops to be rewound.
    let unknown = replica_receiving_nothing(None);
    assert!(
        takes(&unknown, |a| matches!(a, Action::Demote(_))),
        "{unknown:?}"
    );
    let cause =
        "PostgreSQL cannot write WAL: no space left on device (/data/b/pg_wal: 0 bytes free)";
    let full = replica_receiving_nothing(Some(cause));
    assert!(
        !takes(&full, |a| matches!(
            a,
            Action::Demote(_) | Action::Rewind(_)
        )),
        "{full:?}"
    );
    assert_eq!(full.role, EngineRole::Replica);
    assert!(
        full.pending.as_deref().unwrap_or_default().contains(cause),
        "{:?}",
        full.pending
    );
    // Its record does not claim to stream.
    let record = housekeeping(&full).member.expect("the record is published");
    assert_eq!(
        record.replication_state.as_deref(),
        Some("in archive recovery")
    );
}
