//! The slot checks of the conformance suite ([`crate::Postgres::reconcile_slots`]).

use std::collections::BTreeMap;

use matriarch_model::{DesiredSlots, IgnoreSlotRule, SlotKind, SlotReport};

use super::harness::{cluster, observe, primary_position, wait_replayed, Harness};
use crate::{Postgres, PostgresError, StopMode};

async fn reconcile<H: Harness>(harness: &H, index: usize, desired: &DesiredSlots) -> SlotReport {
    harness
        .member(index)
        .reconcile_slots(desired)
        .await
        .unwrap_or_else(|err| panic!("reconcile slots on member {index}: {err}"))
}

fn physical(names: &[&str]) -> BTreeMap<String, SlotKind> {
    names
        .iter()
        .map(|name| ((*name).to_owned(), SlotKind::Physical))
        .collect()
}

/// The physical slot `keeper` and the logical slot `cdc` (`test_decoding`
/// on `postgres`).
fn keeper_and_cdc() -> BTreeMap<String, SlotKind> {
    let mut slots = physical(&["keeper"]);
    slots.insert(
        "cdc".to_owned(),
        SlotKind::Logical {
            database: "postgres".to_owned(),
            plugin: "test_decoding".to_owned(),
        },
    );
    slots
}

fn names(set: &std::collections::BTreeSet<String>) -> Vec<&str> {
    set.iter().map(String::as_str).collect()
}

/// The leader's reconcile: creates the wanted physical and logical slots,
/// drops the unwanted, never an ignored one or one a replica streams
/// through, and reports every slot with its position.
pub async fn reconcile_slots_creates_drops_and_spares_ignored_and_active<H: Harness>(harness: &H) {
    cluster(harness, 1).await;
    let replica_slot = harness.upstream(1).member.slot_name();
    let first = reconcile(
        harness,
        0,
        &DesiredSlots {
            slots: physical(&["stale", "foreign", &replica_slot]),
            ..DesiredSlots::default()
        },
    )
    .await;
    assert!(first.dropped.is_empty(), "{first:#?}");
    for name in ["stale", "foreign", replica_slot.as_str()] {
        assert!(first.slots.contains_key(name), "{name} missing: {first:#?}");
    }

    let wanted = keeper_and_cdc();
    let desired = DesiredSlots {
        slots: wanted,
        advance_to: BTreeMap::new(),
        drop_others: true,
        ignore: vec![IgnoreSlotRule {
            name: Some("foreign".to_owned()),
            ..IgnoreSlotRule::default()
        }],
    };
    let second = reconcile(harness, 0, &desired).await;
    assert_eq!(names(&second.created), vec!["cdc", "keeper"], "{second:#?}");
    assert_eq!(names(&second.dropped), vec!["stale"], "{second:#?}");
    assert!(
        second.skipped.contains_key(&replica_slot),
        "the slot a replica streams through is not dropped: {second:#?}"
    );
    assert!(
        !second.slots.contains_key("foreign"),
        "an ignored slot is not reported: {second:#?}"
    );
    for name in ["cdc", "keeper", replica_slot.as_str()] {
        let slot = second
            .slots
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing: {second:#?}"));
        assert!(
            slot.position.is_some(),
            "{name} has no position: {second:#?}"
        );
    }
    assert!(second.slots[&replica_slot].active, "{second:#?}");
    assert_eq!(second.slots["cdc"].kind.type_name(), "logical");

    // Unchanged desire: nothing to do, everything still there.
    let third = reconcile(harness, 0, &desired).await;
    assert!(
        third.created.is_empty() && third.dropped.is_empty() && third.advanced.is_empty(),
        "{third:#?}"
    );
    // The ignored slot survived: seen once nothing ignores it.
    let all = reconcile(harness, 0, &DesiredSlots::default()).await;
    assert!(all.slots.contains_key("foreign"), "{all:#?}");
}

/// A replica keeps copies of the leader's physical slots, advanced to the
/// positions it is given (never backwards, never past what it replayed);
/// a logical copy is reported skipped, not an error; a stopped server is
/// [`PostgresError::NotRunning`].
pub async fn replica_slot_copies_advance_never_backwards<H: Harness>(harness: &H) {
    cluster(harness, 1).await;
    let wanted = keeper_and_cdc();
    let created = reconcile(
        harness,
        1,
        &DesiredSlots {
            slots: wanted.clone(),
            ..DesiredSlots::default()
        },
    )
    .await;
    assert_eq!(names(&created.created), vec!["keeper"], "{created:#?}");
    assert!(created.skipped.contains_key("cdc"), "{created:#?}");

    harness.write(0).await;
    let target = primary_position(&observe(harness, 0).await);
    wait_replayed(harness, 1, 0).await;
    let advanced = reconcile(
        harness,
        1,
        &DesiredSlots {
            slots: wanted.clone(),
            advance_to: [("keeper".to_owned(), target)].into(),
            ..DesiredSlots::default()
        },
    )
    .await;
    assert_eq!(names(&advanced.advanced), vec!["keeper"], "{advanced:#?}");
    assert_eq!(advanced.slots["keeper"].position, Some(target));

    let lower = matriarch_model::Lsn(target.0.saturating_sub(1));
    let not_back = reconcile(
        harness,
        1,
        &DesiredSlots {
            slots: wanted,
            advance_to: [("keeper".to_owned(), lower)].into(),
            ..DesiredSlots::default()
        },
    )
    .await;
    assert!(not_back.advanced.is_empty(), "{not_back:#?}");
    assert_eq!(not_back.slots["keeper"].position, Some(target));

    let replica = harness.member(1);
    replica.stop(StopMode::Fast).await.expect("stop member 1");
    let err = replica
        .reconcile_slots(&DesiredSlots::default())
        .await
        .expect_err("reconcile on a stopped server");
    assert!(matches!(err, PostgresError::NotRunning { .. }), "{err}");
}
