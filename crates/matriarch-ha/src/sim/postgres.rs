//! What each simulated node's engine drives: its PostgreSQL (the in-memory
//! PostgreSQL, watched for the lock and lost-write invariants), its write
//! fence, and its REST API as peers reach it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use matriarch_dcs::{Dcs, MemoryDcs};
use matriarch_model::{FailsafeHeartbeat, Member, MemberName, SystemId, Timeline};
use matriarch_postgres::{
    BootstrapSpec, LocalState, Postgres, PostgresError, RewindOutcome, StartAs, StopMode,
    SyncStandbyNames, Upstream,
};
use tokio::time::Instant;

use super::time::real_span;
use super::world::{lock, World};
use crate::{FailsafeSender, Fence, FenceError, PeerProbe, PeerReport};

/// A simulated node's PostgreSQL: its server in the world's
/// [`matriarch_postgres::MemoryPostgresCluster`], with the checks that need
/// the lock holder around each change of role; also its write fence.
#[derive(Clone)]
pub(super) struct SimPostgres {
    pub(super) index: usize,
    pub(super) world: Arc<Mutex<World>>,
    /// Reads the lock holder for the invariant, whatever this node can reach.
    pub(super) oracle: MemoryDcs,
}

impl SimPostgres {
    async fn holds_lock(&self) -> bool {
        let name = lock(&self.world).nodes[self.index].name.clone();
        match self.oracle.read_view().await {
            Ok(view) => view.leader_name() == Some(&name),
            Err(_) => false,
        }
    }

    fn name(&self, world: &World) -> MemberName {
        world.nodes[self.index].name.clone()
    }
}

#[async_trait]
impl Postgres for SimPostgres {
    async fn observe(&self) -> Result<LocalState, PostgresError> {
        let world = lock(&self.world);
        let state = world.pg.servers().observe(self.index);
        Ok(state)
    }

    async fn bootstrap(&self, _spec: &BootstrapSpec) -> Result<SystemId, PostgresError> {
        let mut world = lock(&self.world);
        let system_id = world.pg.servers().bootstrap(self.index)?;
        let name = self.name(&world);
        world.log(format!("{name}: bootstrapped"));
        Ok(system_id)
    }

    /// As the daemon does (its hooks around `PgController`): a stopped data
    /// directory that pg_rewind could not repair is emptied first.
    async fn clone_replica(&self, source: &Upstream) -> Result<(), PostgresError> {
        let mut world = lock(&self.world);
        let cloned = {
            let mut servers = world.pg.servers();
            if servers.server(self.index).data.is_some() {
                servers.remove_data(self.index)?;
            }
            servers.clone_replica(self.index, source)
        };
        let name = self.name(&world);
        match &cloned {
            Ok(()) => world.log(format!("{name}: cloned from {}", source.member)),
            Err(error) => world.log(format!("{name}: clone failed: {error}")),
        }
        world.note_vanished("a clone");
        cloned
    }

    async fn start(&self, as_role: StartAs) -> Result<(), PostgresError> {
        if as_role == StartAs::Primary && !self.holds_lock().await {
            let mut world = lock(&self.world);
            let name = self.name(&world);
            // Paused between its renewal and the start, a node may start
            // after its lock expired: the fence, armed at the renewal and
            // expired since, keeps it from taking writes. Without a fence
            // in force the start is a second writer in the making.
            if world.fence_open(self.index, Instant::now()) {
                world.violation(format!(
                    "{name} started as primary without holding the lock"
                ));
            } else {
                world.log(format!(
                    "{name} started as primary after its lock expired, fenced off"
                ));
            }
        }
        let mut world = lock(&self.world);
        let was_running = world.pg.servers().server(self.index).running;
        world.pg.servers().start(self.index, &as_role)?;
        if was_running {
            return Ok(());
        }
        let name = self.name(&world);
        world.log(format!("{name}: started as {as_role:?}"));
        if as_role == StartAs::Primary {
            world.settle(self.index, "started as primary");
        }
        world.check_single_writer();
        Ok(())
    }

    async fn stop(&self, mode: StopMode) -> Result<(), PostgresError> {
        let mut world = lock(&self.world);
        world.pg.servers().stop(self.index, mode);
        let name = self.name(&world);
        world.log(format!("{name}: stopped ({mode:?})"));
        Ok(())
    }

    async fn promote(&self) -> Result<Timeline, PostgresError> {
        let holds = self.holds_lock().await;
        let mut world = lock(&self.world);
        let name = self.name(&world);
        if !holds {
            world.violation(format!("{name} promoted without holding the lock"));
        }
        let was_primary = world.pg.servers().server(self.index).is_running_primary();
        let timeline = world.pg.servers().promote(self.index)?;
        if was_primary {
            return Ok(timeline);
        }
        world.promotions += 1;
        let missing = world.settle(self.index, "promoted");
        world.log(format!(
            "{name}: promoted to timeline {}, {missing} acknowledged writes missing",
            timeline.0
        ));
        world.check_single_writer();
        Ok(timeline)
    }

    async fn demote(&self, mode: StopMode, follow: Option<Upstream>) -> Result<(), PostgresError> {
        let mut world = lock(&self.world);
        let result = world.pg.servers().demote(self.index, mode, follow.as_ref());
        let name = self.name(&world);
        let to = follow.map(|upstream| upstream.member);
        world.log(format!("{name}: demoted ({mode:?}), following {to:?}"));
        result
    }

    async fn follow(&self, upstream: &Upstream) -> Result<(), PostgresError> {
        let world = lock(&self.world);
        let followed = world.pg.servers().follow(self.index, upstream);
        followed
    }

    async fn rewind(&self, source: &Upstream) -> Result<RewindOutcome, PostgresError> {
        let mut world = lock(&self.world);
        let outcome = world.pg.servers().rewind(self.index, source)?;
        if outcome == RewindOutcome::Rewound {
            let name = self.name(&world);
            let records = world
                .pg
                .servers()
                .server(self.index)
                .data
                .as_ref()
                .map_or(0, |data| data.wal.len());
            world.log(format!(
                "{name}: rewound from {} to {records} records",
                source.member
            ));
        }
        Ok(outcome)
    }

    async fn set_synchronous_standby_names(
        &self,
        names: &SyncStandbyNames,
    ) -> Result<(), PostgresError> {
        let mut world = lock(&self.world);
        world
            .pg
            .servers()
            .set_synchronous_standby_names(self.index, names)?;
        let name = self.name(&world);
        world.log(format!("{name}: synchronous_standby_names = '{names}'"));
        Ok(())
    }
}

#[async_trait]
impl Fence for SimPostgres {
    async fn arm(&self, valid_for: Duration) -> Result<(), FenceError> {
        let mut world = lock(&self.world);
        // `valid_for` is on this node's clock.
        let real = real_span(valid_for, world.nodes[self.index].drift_ppm);
        world.nodes[self.index].fence_until = Some(Instant::now() + real);
        world.check_single_writer();
        Ok(())
    }

    async fn disarm(&self) -> Result<(), FenceError> {
        lock(&self.world).nodes[self.index].fence_until = None;
        Ok(())
    }
}

/// Asking peers for their positions over their REST API: only agents that
/// run and can be reached answer.
pub(super) struct SimProbe {
    pub(super) index: usize,
    pub(super) world: Arc<Mutex<World>>,
}

#[async_trait]
impl PeerProbe for SimProbe {
    async fn probe(&self, members: &[Member]) -> BTreeMap<MemberName, PeerReport> {
        let world = lock(&self.world);
        let servers = world.pg.servers();
        members
            .iter()
            .filter_map(|member| {
                let j = world.index(&member.name)?;
                let server = servers.server(j);
                if !world.nodes[j].agent_up || !servers.reachable(self.index, j) || !server.running
                {
                    return None;
                }
                Some((
                    member.name.clone(),
                    PeerReport {
                        wal_position: Some(server.position()?),
                        timeline: servers.reported_timeline(j),
                        running_primary: server.is_running_primary(),
                    },
                ))
            })
            .collect()
    }
}

/// `POST /failsafe` to peers: only agents that run and can be reached answer,
/// through their engine's [`crate::FailsafeHandle`].
pub(super) struct SimFailsafe {
    pub(super) index: usize,
    pub(super) world: Arc<Mutex<World>>,
}

#[async_trait]
impl FailsafeSender for SimFailsafe {
    async fn send(
        &self,
        members: &[(MemberName, String)],
        heartbeat: &FailsafeHeartbeat,
        _timeout: Duration,
    ) -> BTreeSet<MemberName> {
        let world = lock(&self.world);
        members
            .iter()
            .filter(|(name, _)| {
                let Some(j) = world.index(name) else {
                    return false;
                };
                let node = &world.nodes[j];
                node.agent_up
                    && world.reachable(self.index, j)
                    && node
                        .failsafe
                        .as_ref()
                        .is_some_and(|handle| handle.receive(heartbeat).is_ok())
            })
            .map(|(name, _)| name.clone())
            .collect()
    }
}
