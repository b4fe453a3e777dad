//! Synchronous replication: the leader's upkeep of `synchronous_standby_names`
//! and the `sync` key, and the check a synchronous standby passes before it races.

use std::collections::BTreeSet;

use matriarch_model::{ClusterView, Lsn, Member, MemberName, MemberState, Role, SynchronousMode};

use super::action::Action;
use super::inputs::Inputs;
use super::plan::Plan;

/// What `synchronous_standby_names` says, or should say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SyncSetting {
    /// The standbys named.
    standbys: BTreeSet<MemberName>,
    /// How many acknowledgements a commit waits for (0: asynchronous).
    count: u32,
    /// `*`: any standby may acknowledge (strict mode without a standby).
    any_standby: bool,
}

impl SyncSetting {
    fn asynchronous() -> Self {
        SyncSetting {
            standbys: BTreeSet::new(),
            count: 0,
            any_standby: false,
        }
    }

    fn any_standby() -> Self {
        SyncSetting {
            standbys: BTreeSet::new(),
            count: 1,
            any_standby: true,
        }
    }

    fn is_asynchronous(&self) -> bool {
        self.standbys.is_empty() && !self.any_standby
    }
}

/// The `sync` key as the leader reads it: a key without `quorum` claims one
/// acknowledgement per commit, the least it can mean.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SyncKey {
    standbys: BTreeSet<MemberName>,
    quorum: u32,
}

/// The next step that moves `synchronous_standby_names` (P, waiting for
/// `P.count` of its standbys) and the `sync` key (K, claiming `K.quorum`
/// acknowledgements per commit) towards the desired setting, one step per
/// loop, such that at every moment either K is empty (no automatic
/// promotion at all) or K ⊇ P, P is not empty or `*`, K.quorum ≤ P.count,
/// and every acknowledged commit is on K.quorum members of K. Then any
/// |K| − K.quorum + 1 members of K include one that holds it (see `sync_verdict`).
///
/// - Going asynchronous (or to `*`): the key is emptied first, then PostgreSQL.
/// - From asynchronous: PostgreSQL first (K stays empty meanwhile), then the
///   key once the new standbys flushed past the position PostgreSQL named
///   them at (they then hold every earlier commit).
/// - Replacing standbys or changing the count: the key grows to the union
///   and lowers its quorum to the smaller count first, then PostgreSQL
///   changes, then the key drops members or raises its quorum, once every
///   standby it keeps flushed past the position PostgreSQL changed at:
///   commits before were acknowledged under the old setting.
pub(super) fn sync_step(
    desired: &SyncSetting,
    in_postgres: &SyncSetting,
    key: &SyncKey,
    key_is_ours: bool,
    streaming: &BTreeSet<MemberName>,
    caught_up: &dyn Fn(&BTreeSet<MemberName>) -> Option<bool>,
) -> Option<SyncStep> {
    let in_key = &key.standbys;
    let empty_key = || {
        Some(SyncStep::Key(SyncKey {
            standbys: BTreeSet::new(),
            quorum: desired.count.max(1),
        }))
    };
    let key_valid = in_key.is_empty()
        || (!in_postgres.standbys.is_empty()
            && !in_postgres.any_standby
            && in_key.is_superset(&in_postgres.standbys)
            && key.quorum <= in_postgres.count);
    if !key_is_ours || !key_valid {
        // Claim the key, or repair it, by the one always-safe state.
        return if in_key.is_empty() && key_is_ours {
            None
        } else {
            empty_key()
        };
    }
    if desired.standbys.is_empty() {
        if !in_key.is_empty() {
            return empty_key();
        }
        if in_postgres != desired {
            return Some(SyncStep::Postgres(desired.clone()));
        }
        return None;
    }
    if in_key.is_empty() {
        if in_postgres != desired {
            return Some(SyncStep::Postgres(desired.clone()));
        }
        // Commits before PostgreSQL named them were acknowledged without
        // them: they enter the key once they hold those too.
        return match caught_up(&desired.standbys) {
            Some(true) if desired.standbys.is_subset(streaming) => Some(SyncStep::Key(SyncKey {
                standbys: desired.standbys.clone(),
                quorum: desired.count,
            })),
            // The position was forgotten (agent restart), or taken before
            // the change applied: take it again.
            None => Some(SyncStep::Postgres(desired.clone())),
            _ => None,
        };
    }
    if !in_key.is_superset(&desired.standbys) || key.quorum > desired.count {
        return Some(SyncStep::Key(SyncKey {
            standbys: in_key.union(&desired.standbys).cloned().collect(),
            quorum: key.quorum.min(desired.count),
        }));
    }
    if in_postgres != desired {
        return Some(SyncStep::Postgres(desired.clone()));
    }
    if in_key != &desired.standbys || key.quorum != desired.count {
        return match caught_up(&desired.standbys) {
            Some(true) => Some(SyncStep::Key(SyncKey {
                standbys: desired.standbys.clone(),
                quorum: desired.count,
            })),
            None => Some(SyncStep::Postgres(desired.clone())),
            Some(false) => None,
        };
    }
    None
}

/// One step of [`sync_step`].
#[derive(Debug, PartialEq, Eq)]
pub(super) enum SyncStep {
    Key(SyncKey),
    Postgres(SyncSetting),
}

/// The leader's synchronous replication upkeep.
pub(super) fn maintain_sync(inputs: &Inputs<'_>, view: &ClusterView, plan: &mut Plan) {
    let config = inputs.config;
    let me = &inputs.node.name;
    let (key, key_version, key_is_ours) = match &view.sync {
        Some(Ok(sync)) => (
            SyncKey {
                standbys: sync.value.sync_standbys.clone(),
                quorum: sync.value.quorum.unwrap_or(1),
            },
            Some(sync.version),
            sync.value.leader.as_ref() == Some(me),
        ),
        // A malformed sync key may hide who can be promoted: leave it to an
        // operator rather than guess. In strict mode PostgreSQL must still
        // not acknowledge a commit alone meanwhile: waiting for any standby
        // makes no one more eligible, so that much is safe to do.
        Some(Err(_)) => {
            let local = inputs.local;
            let waits = local.sync_any_standby || !local.sync_standbys.is_empty();
            if config.synchronous_mode != SynchronousMode::Off
                && config.synchronous_mode_strict
                && !waits
            {
                plan.push(Action::SetSyncStandbys {
                    standbys: BTreeSet::new(),
                    count: 1,
                    at: None,
                    any_standby: true,
                });
            }
            return;
        }
        None => (
            SyncKey {
                standbys: BTreeSet::new(),
                quorum: 1,
            },
            None,
            false,
        ),
    };
    let local = inputs.local;
    let in_postgres = if local.sync_any_standby {
        SyncSetting {
            count: local.sync_count.max(1),
            ..SyncSetting::any_standby()
        }
    } else if local.sync_standbys.is_empty() {
        SyncSetting::asynchronous()
    } else {
        SyncSetting {
            standbys: local.sync_standbys.clone(),
            count: local.sync_count,
            any_standby: false,
        }
    };
    let desired = if config.synchronous_mode == SynchronousMode::Off {
        SyncSetting::asynchronous()
    } else {
        let mut ranked: Vec<&Member> = view
            .healthy_records()
            .filter(|m| {
                &m.name != me
                    && m.tags.allows_sync()
                    && m.role == Role::Replica
                    && m.state == MemberState::Running
                    && local.streaming_standbys.contains(&m.name)
            })
            .collect();
        // Higher `sync_priority` first (Patroni sorts by it before
        // anything else); then the current ones, so that the set does not
        // flap.
        ranked.sort_by(|a, b| {
            b.tags
                .sync_priority
                .cmp(&a.tags.sync_priority)
                .then(
                    local
                        .sync_standbys
                        .contains(&b.name)
                        .cmp(&local.sync_standbys.contains(&a.name)),
                )
                .then(b.tags.failover_priority.cmp(&a.tags.failover_priority))
                .then(a.name.cmp(&b.name))
        });
        // FIRST n names n standbys; a quorum (ANY n) names every eligible
        // standby, so that any n of them can acknowledge a commit and one slow
        // standby does not stall it. `sync_verdict` then needs |key| − n + 1
        // of them visible to promote.
        let count = config.synchronous_node_count.max(1);
        let wanted = if config.synchronous_mode == SynchronousMode::Quorum {
            ranked.len()
        } else {
            count as usize
        };
        let standbys: BTreeSet<MemberName> = ranked
            .into_iter()
            .take(wanted)
            .map(|m| m.name.clone())
            .collect();
        if standbys.is_empty() && config.synchronous_mode_strict {
            // Strict: keep waiting for the standbys we have rather than go
            // asynchronous; with none (just promoted or bootstrapped), wait
            // for any standby, as Patroni's `*`.
            if in_postgres.is_asynchronous() {
                SyncSetting::any_standby()
            } else {
                in_postgres.clone()
            }
        } else if standbys.is_empty() {
            SyncSetting::asynchronous()
        } else {
            // More acknowledgements than standbys would stall every commit
            // (Patroni caps it the same way).
            let count = count.min(u32::try_from(standbys.len()).unwrap_or(u32::MAX));
            SyncSetting {
                standbys,
                count,
                any_standby: false,
            }
        }
    };
    if config.synchronous_mode == SynchronousMode::Off
        && view.sync.is_none()
        && in_postgres.is_asynchronous()
    {
        return;
    }
    let step = if view.sync.is_none() && desired.any_standby && !in_postgres.any_standby {
        // No key at all (just bootstrapped): nobody can be promoted on it, so
        // PostgreSQL may start waiting before the key is claimed.
        Some(SyncStep::Postgres(desired.clone()))
    } else {
        sync_step(
            &desired,
            &in_postgres,
            &key,
            key_is_ours,
            &local.streaming_standbys,
            &|standbys: &BTreeSet<MemberName>| {
                let since = inputs.memory.sync_standbys_since?;
                Some(standbys.iter().all(|name| {
                    local
                        .standby_flush
                        .get(name)
                        .is_some_and(|flushed| *flushed >= since)
                }))
            },
        )
    };
    match step {
        Some(SyncStep::Key(key)) => plan.push(Action::WriteSyncState {
            standbys: key.standbys,
            count: key.quorum,
            expected: key_version,
        }),
        Some(SyncStep::Postgres(setting)) => {
            // A position counts only if taken while PostgreSQL already waited
            // for these standbys; a changing step takes none (the next loop
            // takes it, see `sync_step`).
            let at = if setting == in_postgres {
                local.wal_position
            } else {
                None
            };
            plan.push(Action::SetSyncStandbys {
                standbys: setting.standbys,
                count: setting.count.max(1),
                at,
                any_standby: setting.any_standby,
            });
        }
        None => {}
    }
}

/// In synchronous mode, a commit was acknowledged by `count` of the standbys
/// in the `sync` key. Only a member of the key may promote, and only when
/// enough of the key's members are visible that one of them must hold every
/// acknowledged commit (|key| − count + 1) and it is the freshest of them.
pub(super) fn sync_verdict(
    inputs: &Inputs<'_>,
    view: &ClusterView,
    peers: &[(&Member, Option<Lsn>)],
    own_position: Lsn,
) -> Result<(), String> {
    let me = &inputs.node.name;
    let Some(Ok(sync)) = &view.sync else {
        return Err("synchronous mode without a readable sync key".to_owned());
    };
    if sync.value.leader.as_ref() == Some(me) {
        // The primary that wrote the key acknowledged every commit itself, and
        // nobody was promoted since: a promotion rewrites the key first.
        return Ok(());
    }
    let key = &sync.value.sync_standbys;
    if !key.contains(me) {
        return Err("not a synchronous standby".to_owned());
    }
    // The key's quorum is what the leader made PostgreSQL enforce before it
    // wrote it; a key without one (Patroni's, or an older version's) proves
    // one acknowledgement only. synchronous_node_count is what is wanted, not
    // what was enforced.
    let count = sync.value.quorum.unwrap_or(1).max(1) as usize;
    // Only a position the standby reported just now counts: its record may be
    // a loop old and miss the commit that decides the race. (The old primary
    // stopped acknowledging before its lock expired, so fresh positions are final.)
    let visible: Vec<Lsn> = peers
        .iter()
        .filter(|(m, _)| key.contains(&m.name))
        .filter_map(|(m, _)| {
            inputs
                .peers
                .get(&m.name)
                .and_then(|report| report.wal_position)
        })
        .collect();
    let needed = key.len().saturating_sub(count) + 1;
    if visible.len() + 1 < needed {
        return Err(format!(
            "only {} of the {} synchronous standbys visible, {needed} needed",
            visible.len() + 1,
            key.len()
        ));
    }
    if visible.iter().any(|p| *p > own_position) {
        return Err("another synchronous standby is ahead".to_owned());
    }
    Ok(())
}
