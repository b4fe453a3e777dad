//! Standby clusters in `decide`: the lock holder is a standby leader that
//! follows the source and never promotes; the race winner follows the
//! source; removing the section promotes; an unreadable config key
//! promotes nothing.

use std::time::Duration;

use matriarch_ha::sim::running_member;
use matriarch_ha::*;
use matriarch_model::*;

mod support;
use support::scene::{acts, housekeeping, takes, Scene};

fn name(n: &str) -> MemberName {
    MemberName::new(n).unwrap()
}

fn source() -> StandbyCluster {
    StandbyCluster {
        host: Some("10.0.0.1".to_owned()),
        port: Some(5433),
        primary_slot_name: Some("standby_a".to_owned()),
        ..StandbyCluster::default()
    }
}

/// Member `me` of a standby cluster whose source is [`source`], running
/// as a replica at 500 on timeline 1 following `upstream` (a member) or,
/// with `None`, the source itself.
fn standby_member(me: &str, upstream: Option<&str>) -> Scene {
    let mut scene = Scene::at(me, Duration::from_secs(100));
    scene.config.standby_cluster = Some(Box::new(source()));
    scene.running_replica(upstream, 500, 1);
    scene.local.standby_source = upstream.is_none().then(source);
    scene
}

/// [`standby_member`] holding the lock (renewed a second ago).
fn standby_leader(me: &str) -> Scene {
    let mut scene = standby_member(me, None);
    scene.put("leader", me.as_bytes().to_vec());
    scene.memory.lock_renewed_at = Some(scene.now - Duration::from_secs(1));
    scene
}

fn peer(scene: &mut Scene, n: &str, role: Role, position: u64) {
    let member = Member {
        api_url: String::new(),
        ..running_member(&name(n), role, position, 1)
    };
    scene.put(&format!("members/{n}"), encode_member(&member));
}

fn published_role(decision: &Decision) -> Role {
    let member = housekeeping(decision).member;
    member.expect("a member record").role
}

fn promotes(decision: &Decision) -> bool {
    takes(decision, |a| {
        matches!(a, Action::Promote | Action::StartPrimary)
    })
}

/// What a standby leader does when not on `source`: renews the lock and
/// turns to it.
fn renews_and_follows(source: StandbyCluster) -> [Action; 2] {
    [
        Action::RenewLock,
        Action::FollowStandbySource(Box::new(source)),
    ]
}

#[test]
fn the_standby_leader_keeps_following_the_source_and_never_promotes() {
    let decision = standby_leader("a").decide();
    assert_eq!(acts(&decision), [Action::RenewLock], "{decision:?}");
    assert_eq!(decision.role, EngineRole::Leader);
    assert_eq!(published_role(&decision), Role::StandbyLeader);
}

#[test]
fn a_lock_holder_following_something_else_is_pointed_at_the_source() {
    // Just took the lock after following the former standby leader.
    let mut scene = standby_leader("a");
    scene.local.role = LocalRole::Replica {
        upstream: Some(name("b")),
    };
    scene.local.standby_source = None;
    let decision = scene.decide();
    assert_eq!(acts(&decision), renews_and_follows(source()));
    assert!(!promotes(&decision));
}

#[test]
fn a_changed_source_is_followed_again() {
    // edit-config pointed host/port at the source's new primary.
    let mut scene = standby_leader("a");
    let mut moved = source();
    moved.host = Some("10.0.0.2".to_owned());
    scene.config.standby_cluster = Some(Box::new(moved.clone()));
    assert_eq!(acts(&scene.decide()), renews_and_follows(moved));
}

#[test]
fn a_stopped_standby_leader_starts_as_a_replica_of_the_source() {
    let mut scene = standby_leader("a");
    scene.local.role = LocalRole::Stopped { crashed: true };
    // Even a data directory that once ran as primary: never started as one.
    scene.memory.ran_as_primary = true;
    let decision = scene.decide();
    assert_eq!(acts(&decision), renews_and_follows(source()));
}

#[test]
fn a_primary_holding_the_lock_of_a_standby_cluster_steps_down() {
    let mut scene = standby_leader("a");
    scene.local.role = LocalRole::Primary;
    let decision = scene.decide();
    assert_eq!(
        acts(&decision),
        [
            Action::RenewLock,
            Action::Demote(DemoteMode::Graceful),
            Action::Withdraw
        ]
    );
}

#[test]
fn removing_the_section_promotes_the_standby_leader() {
    let mut scene = standby_leader("a");
    scene.config.standby_cluster = None;
    let decision = scene.decide();
    assert!(promotes(&decision), "{decision:?}");
    assert_eq!(published_role(&decision), Role::Replica);
}

#[test]
fn the_other_members_follow_the_standby_leader() {
    let mut scene = standby_member("b", Some("a"));
    scene.put("leader", b"a".to_vec());
    peer(&mut scene, "a", Role::StandbyLeader, 500);
    let decision = scene.decide();
    assert!(!promotes(&decision), "{decision:?}");
    assert!(
        !takes(&decision, |a| matches!(
            a,
            Action::FollowStandbySource(_) | Action::Follow(_)
        )),
        "{decision:?}"
    );
    assert_eq!(decision.role, EngineRole::Replica);
    assert_eq!(published_role(&decision), Role::Replica);

    // One that followed the source (it was standby leader before) turns to it.
    let mut former = standby_member("b", None);
    former.put("leader", b"a".to_vec());
    peer(&mut former, "a", Role::StandbyLeader, 500);
    assert_eq!(acts(&former.decide()), [Action::Follow(name("a"))]);
}

#[test]
fn when_the_standby_leader_dies_the_best_replica_takes_the_lock_and_follows_the_source() {
    let mut scene = standby_member("b", Some("a"));
    peer(&mut scene, "b", Role::Replica, 500);
    let decision = scene.decide();
    assert_eq!(
        acts(&decision),
        [
            Action::AcquireLock,
            Action::FollowStandbySource(Box::new(source()))
        ],
        "{decision:?}"
    );
    assert!(!promotes(&decision));
}

#[test]
fn the_same_race_in_a_normal_cluster_promotes() {
    let mut scene = standby_member("b", Some("a"));
    scene.config.standby_cluster = None;
    peer(&mut scene, "b", Role::Replica, 500);
    assert!(promotes(&scene.decide()));
}

#[test]
fn an_unreadable_config_key_promotes_nothing() {
    // Written behind matriarch's back with a bad standby_cluster: the engine
    // keeps its last valid configuration, which may not have the section.
    let bad =
        br#"{"ttl": 30, "loop_wait": 10, "retry_timeout": 10, "standby_cluster": {"port": "x"}}"#;
    let mut holder = standby_leader("a");
    holder.config.standby_cluster = None;
    holder.put("config", bad.to_vec());
    let decision = holder.decide();
    assert!(!promotes(&decision), "{decision:?}");
    assert!(decision.pending.is_some(), "{decision:?}");

    let mut racer = standby_member("b", Some("a"));
    racer.config.standby_cluster = None;
    racer.put("config", bad.to_vec());
    peer(&mut racer, "b", Role::Replica, 500);
    let decision = racer.decide();
    assert!(
        !takes(&decision, |a| matches!(
            a,
            Action::AcquireLock | Action::Promote
        )),
        "{decision:?}"
    );
}

#[test]
fn a_standby_leader_without_data_gives_the_lock_up_like_any_leader() {
    let mut scene = standby_leader("a");
    scene.local = LocalPostgres::no_data();
    let decision = scene.decide();
    assert!(has_release(&decision), "{decision:?}");
}

fn has_release(decision: &Decision) -> bool {
    decision.actions.contains(&Action::ReleaseLock)
}

#[test]
fn a_new_standby_cluster_races_to_bootstrap_like_any_other() {
    // The engine's bootstrap clones the source instead of running initdb.
    let mut scene = Scene::at("a", Duration::from_secs(100));
    scene.config.standby_cluster = Some(Box::new(source()));
    scene.remove("initialize");
    assert_eq!(acts(&scene.decide()), [Action::Bootstrap]);
}
