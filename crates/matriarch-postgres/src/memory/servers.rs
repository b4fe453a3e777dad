//! Every server of a [`super::MemoryPostgresCluster`], and what PostgreSQL
//! does to them: the operations of the [`crate::Postgres`] trait, commits,
//! WAL shipping, crashes.

use std::time::Duration;

use matriarch_model::{MemberName, SystemId, Timeline};

use super::clock::MemoryClock;
use super::conditions::{Conditions, ShippingLink, TimelineReport};
use super::server::{DataDirectory, Server, WalRecord};
use crate::{
    DataDirectoryState, LocalState, Operation, PgRole, PostgresError, ReplicationConnection,
    RewindOutcome, ServerState, StandbySyncState, StartAs, StopMode, SyncStandbyNames, Upstream,
    WalPositions, WalSenderState,
};

/// What became of a commit ([`Servers::commit`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Commit {
    /// Acknowledged to the client: in the primary's WAL and, when
    /// `synchronous_standby_names` asks for it, flushed by these standbys.
    Acknowledged {
        /// The write's record id.
        id: u64,
        /// The synchronous standbys that confirmed it (empty: asynchronous).
        standbys: Vec<MemberName>,
    },
    /// In the primary's WAL, but the commit waits for synchronous standbys
    /// that are not there: the client is never told it committed.
    Waiting {
        /// The write's record id.
        id: u64,
    },
    /// Not a running primary: nothing was written.
    Refused,
}

/// The servers of one cluster, locked ([`super::MemoryPostgresCluster::servers`]).
pub struct Servers {
    pub(super) servers: Vec<Server>,
    pub(super) system_id: SystemId,
    pub(super) clock: Box<dyn MemoryClock>,
    pub(super) conditions: Box<dyn Conditions>,
    pub(super) timeline_report: TimelineReport,
    /// The id of the next write.
    pub(super) next_write: u64,
}

fn data_dir(name: &MemberName) -> std::path::PathBuf {
    format!("memory:{name}").into()
}

fn unreachable_source(operation: Operation, source: &Upstream) -> PostgresError {
    PostgresError::Unexpected {
        operation,
        context: format!("connecting to {}", source.member),
        message: "could not connect: the server is not running or not reachable".to_owned(),
    }
}

impl Servers {
    /// Every server, in the order they were added.
    pub fn all(&self) -> &[Server] {
        &self.servers
    }

    /// Server `index`.
    pub fn server(&self, index: usize) -> &Server {
        &self.servers[index]
    }

    /// The index of member `name`.
    pub fn index_of(&self, name: &MemberName) -> Option<usize> {
        self.servers.iter().position(|server| &server.name == name)
    }

    /// The cluster's clock, now.
    pub fn now(&self) -> Duration {
        self.clock.now()
    }

    /// `a` and `b` can reach each other.
    pub fn reachable(&self, a: usize, b: usize) -> bool {
        !self.servers[a].isolated && !self.servers[b].isolated
    }

    /// Cuts server `index` off from every other server, or joins it again.
    pub fn set_isolated(&mut self, index: usize, isolated: bool) {
        self.servers[index].isolated = isolated;
    }

    /// Holds up WAL shipping to server `index` for `duration`.
    pub fn stall(&mut self, index: usize, duration: Duration) {
        let until = self.now() + duration;
        self.servers[index].stalled_until = Some(until);
    }

    /// Lets WAL ship to every server again.
    pub fn clear_stalls(&mut self) {
        for server in &mut self.servers {
            server.stalled_until = None;
        }
    }

    fn stalled(&self, index: usize) -> bool {
        let now = self.now();
        self.servers[index]
            .stalled_until
            .is_some_and(|until| until > now)
    }

    /// The server `upstream` names, if it is one of these.
    fn resolve(&self, upstream: &Upstream) -> Option<usize> {
        self.index_of(&upstream.member)
    }

    /// The timeline server `index` reports.
    pub fn reported_timeline(&self, index: usize) -> Option<Timeline> {
        let server = &self.servers[index];
        let data = server.data.as_ref()?;
        if self.timeline_report == TimelineReport::ControlFile && server.is_running_replica() {
            return Some(data.control_timeline);
        }
        Some(data.timeline)
    }

    /// Server `index` would hold the WAL of `primary` as a prefix of it,
    /// streaming from it right now (what `pg_stat_replication` lists).
    fn streams_to(&self, primary: usize, index: usize) -> bool {
        let (source, server) = (&self.servers[primary], &self.servers[index]);
        server.streams_from() == Some(&source.name)
            && index != primary
            && source.running
            && self.reachable(primary, index)
            && match (&server.data, &source.data) {
                (Some(own), Some(theirs)) => own.is_prefix_of(theirs),
                _ => false,
            }
    }

    /// What PostgreSQL reports about server `index` (see [`crate::Postgres::observe`]).
    pub fn observe(&self, index: usize) -> LocalState {
        let server = &self.servers[index];
        let Some(data) = &server.data else {
            return LocalState::empty();
        };
        let position = Some(data.position());
        let mut state = LocalState {
            timeline: self.reported_timeline(index),
            system_id: Some(data.system_id),
            ..LocalState::empty()
        };
        if !server.running {
            state.server = ServerState::NotRunning(if server.crashed {
                DataDirectoryState::Crashed
            } else {
                DataDirectoryState::CleanShutdown
            });
            state.wal.flush = position;
            // `primary_conninfo` as configured, for a standby.
            state.upstream = server
                .in_recovery
                .then(|| server.upstream.clone())
                .flatten();
            return state;
        }
        if server.in_recovery {
            state.server = ServerState::Running(PgRole::Replica);
            state.wal.received = position;
            state.wal.replayed = position;
            state.upstream = server.upstream.clone();
            state.receiving = server
                .upstream
                .as_ref()
                .and_then(|upstream| self.resolve(upstream))
                .is_some_and(|from| self.streams_to(from, index));
        } else {
            state.server = ServerState::Running(PgRole::Primary);
            state.wal = WalPositions {
                write: position,
                flush: position,
                received: None,
                replayed: None,
            };
            state.replication = self.replication(index);
        }
        if server.sync_names != SyncStandbyNames::Off {
            state.synchronous_standby_names = Some(server.sync_names.clone());
        }
        state
    }

    /// `pg_stat_replication` of primary `index`.
    fn replication(&self, index: usize) -> Vec<ReplicationConnection> {
        let names = &self.servers[index].sync_names;
        let first_sync = match names {
            SyncStandbyNames::First { .. } => {
                let mut by_priority = self.eligible_standbys(index);
                by_priority.truncate(names.count() as usize);
                by_priority
            }
            _ => Vec::new(),
        };
        (0..self.servers.len())
            .filter(|&j| self.streams_to(index, j))
            .map(|j| {
                let other = &self.servers[j];
                let position = other.position();
                let sync_state = match names {
                    SyncStandbyNames::Off => StandbySyncState::Async,
                    _ if priority(names, &other.name).is_none() => StandbySyncState::Async,
                    SyncStandbyNames::Any { .. } => StandbySyncState::Quorum,
                    SyncStandbyNames::First { .. } if first_sync.contains(&j) => {
                        StandbySyncState::Sync
                    }
                    SyncStandbyNames::First { .. } => StandbySyncState::Potential,
                };
                ReplicationConnection {
                    application_name: other.name.to_string(),
                    state: WalSenderState::Streaming,
                    sync_state,
                    sent: position,
                    write: position,
                    flush: position,
                    replay: position,
                }
            })
            .collect()
    }

    /// The standbys of primary `index` that `synchronous_standby_names`
    /// names (or `*` matches), stream from it, hold its WAL and are not held
    /// up: those that can confirm a commit now, by priority.
    fn eligible_standbys(&self, index: usize) -> Vec<usize> {
        let names = &self.servers[index].sync_names;
        let mut eligible: Vec<(usize, usize)> = (0..self.servers.len())
            .filter(|&j| self.streams_to(index, j) && !self.stalled(j))
            .filter_map(|j| Some((priority(names, &self.servers[j].name)?, j)))
            .collect();
        eligible.sort();
        eligible.into_iter().map(|(_, j)| j).collect()
    }

    /// The standbys that would confirm a commit on primary `index` now
    /// (empty: asynchronous), `None` when the commit would wait: PostgreSQL
    /// waits for `count` of the standbys `synchronous_standby_names` names.
    pub fn acknowledgers(&self, index: usize) -> Option<Vec<usize>> {
        let names = &self.servers[index].sync_names;
        if *names == SyncStandbyNames::Off {
            return Some(Vec::new());
        }
        let eligible = self.eligible_standbys(index);
        (eligible.len() >= names.count() as usize).then_some(eligible)
    }

    /// A client commits a write on server `index`: it lands in the WAL of
    /// a running primary as a new record and, when synchronous standbys
    /// confirm it, in theirs, and is then acknowledged.
    pub fn commit(&mut self, index: usize) -> Commit {
        if !self.servers[index].is_running_primary() {
            return Commit::Refused;
        }
        let acknowledgers = self.acknowledgers(index);
        let names = self.servers[index].sync_names.clone();
        let id = self.next_write;
        let Some(data) = self.servers[index].data.as_mut() else {
            return Commit::Refused;
        };
        self.next_write += 1;
        data.wal.push(WalRecord {
            timeline: data.timeline,
            id,
        });
        let Some(eligible) = acknowledgers else {
            return Commit::Waiting { id };
        };
        // FIRST n: the first n by priority; ANY n: any n of them, here the
        // choice rotating with the write.
        let count = (names.count() as usize).min(eligible.len());
        let rotate = match names {
            SyncStandbyNames::Any { .. } if !eligible.is_empty() => id as usize % eligible.len(),
            _ => 0,
        };
        let confirming: Vec<usize> = eligible
            .iter()
            .cycle()
            .skip(rotate)
            .take(count)
            .copied()
            .collect();
        for &j in &confirming {
            // Eligible standbys hold a prefix of the primary's WAL.
            self.ship_records(index, j, usize::MAX);
        }
        Commit::Acknowledged {
            id,
            standbys: confirming
                .into_iter()
                .map(|j| self.servers[j].name.clone())
                .collect(),
        }
    }

    /// Copies up to `records` of the records `to` lacks from `from`, whose
    /// WAL starts with `to`'s; `to` follows `from`'s timeline.
    fn ship_records(&mut self, from: usize, to: usize, records: usize) {
        let (Some(source), Some(own)) = (&self.servers[from].data, &self.servers[to].data) else {
            return;
        };
        let start = own.wal.len();
        let end = start.saturating_add(records).min(source.wal.len());
        let missing = source.wal.get(start..end).unwrap_or_default().to_vec();
        let timeline = source.timeline;
        if let Some(data) = self.servers[to].data.as_mut() {
            data.wal.extend(missing);
            // Streaming from a newer timeline follows its switch.
            data.timeline = data.timeline.max(timeline);
        }
    }

    /// Ships WAL once to every replica that streams, as much as the
    /// cluster's [`Conditions`] let through.
    pub fn replicate(&mut self) {
        for j in 0..self.servers.len() {
            let Some(upstream) = self.servers[j].streams_from().cloned() else {
                continue;
            };
            let Some(u) = self.index_of(&upstream) else {
                continue;
            };
            if u == j || !self.servers[u].running || !self.reachable(j, u) || self.stalled(j) {
                continue;
            }
            let (Some(source), Some(own)) = (&self.servers[u].data, &self.servers[j].data) else {
                continue;
            };
            if !own.is_prefix_of(source) {
                continue; // Diverged: only pg_rewind helps.
            }
            let behind = source.wal.len() - own.wal.len();
            let link = ShippingLink {
                replica: &self.servers[j].name,
                upstream: &upstream,
                behind,
            };
            let shipment = self.conditions.ship(&link);
            if shipment.restartpoint {
                if let Some(data) = self.servers[j].data.as_mut() {
                    data.control_timeline = data.timeline;
                }
            }
            if let Some(stall) = shipment.stall_for {
                self.stall(j, stall);
                continue;
            }
            self.ship_records(u, j, shipment.records);
        }
    }

    /// [`PostgresError::NotInitialized`] unless server `index` has a data
    /// directory.
    fn require_data(&self, index: usize, operation: Operation) -> Result<(), PostgresError> {
        let server = &self.servers[index];
        match server.data {
            Some(_) => Ok(()),
            None => Err(PostgresError::NotInitialized {
                operation,
                data_dir: data_dir(&server.name),
            }),
        }
    }

    /// [`PostgresError::NotEmpty`] when server `index` has a data directory.
    fn require_no_data(&self, index: usize, operation: Operation) -> Result<(), PostgresError> {
        let server = &self.servers[index];
        match server.data {
            Some(_) => Err(PostgresError::NotEmpty {
                operation,
                data_dir: data_dir(&server.name),
            }),
            None => Ok(()),
        }
    }

    /// `initdb` and a start as primary on timeline 1.
    pub fn bootstrap(&mut self, index: usize) -> Result<SystemId, PostgresError> {
        self.require_no_data(index, Operation::Bootstrap)?;
        let system_id = self.system_id;
        let server = &mut self.servers[index];
        server.data = Some(DataDirectory {
            system_id,
            timeline: Timeline(1),
            wal: Vec::new(),
            control_timeline: Timeline(1),
        });
        server.running = true;
        server.in_recovery = false;
        server.crashed = false;
        server.upstream = None;
        Ok(system_id)
    }

    /// `pg_basebackup` from `source`: left stopped, configured to follow it.
    pub fn clone_replica(&mut self, index: usize, source: &Upstream) -> Result<(), PostgresError> {
        let operation = Operation::CloneReplica;
        self.require_no_data(index, operation)?;
        let from = self
            .resolve(source)
            .filter(|&from| self.servers[from].running && self.reachable(index, from))
            .ok_or_else(|| unreachable_source(operation, source))?;
        let mut data = self.servers[from]
            .data
            .clone()
            .ok_or_else(|| unreachable_source(operation, source))?;
        data.control_timeline = data.timeline;
        let server = &mut self.servers[index];
        server.data = Some(data);
        server.running = false;
        server.in_recovery = true;
        server.crashed = false;
        server.upstream = Some(source.clone());
        server.sync_names = SyncStandbyNames::Off;
        Ok(())
    }

    /// Empties the data directory of a stopped server (an operator, or
    /// matriarch before cloning anew).
    pub fn remove_data(&mut self, index: usize) -> Result<(), PostgresError> {
        let server = &mut self.servers[index];
        if server.running {
            return Err(PostgresError::StillRunning {
                operation: Operation::CloneReplica,
            });
        }
        server.data = None;
        server.slots.clear();
        server.crashed = false;
        server.in_recovery = false;
        server.upstream = None;
        server.sync_names = SyncStandbyNames::Off;
        Ok(())
    }

    fn running_role(&self, index: usize) -> Option<PgRole> {
        let server = &self.servers[index];
        server.running.then_some(if server.in_recovery {
            PgRole::Replica
        } else {
            PgRole::Primary
        })
    }

    /// See [`crate::Postgres::start`].
    pub fn start(&mut self, index: usize, as_role: &StartAs) -> Result<(), PostgresError> {
        let operation = Operation::Start;
        self.require_data(index, operation)?;
        if let Some(running_as) = self.running_role(index) {
            return match (running_as, as_role) {
                (PgRole::Primary, StartAs::Primary) | (PgRole::Replica, StartAs::Standby) => Ok(()),
                (PgRole::Replica, StartAs::ReplicaOf(upstream)) => self.follow(index, upstream),
                (running_as, _) => Err(PostgresError::RoleConflict {
                    operation,
                    running_as,
                }),
            };
        }
        if self.servers[index].disk_full {
            return Err(PostgresError::NoSpace {
                operation,
                path: data_dir(&self.servers[index].name).join("pg_wal"),
                free_bytes: Some(0),
                detail:
                    "FATAL:  could not write to file \"pg_wal/xlogtemp\": No space left on device"
                        .to_owned(),
            });
        }
        let server = &mut self.servers[index];
        match as_role {
            // Without standby.signal, crash recovery replays to the end of
            // the WAL and the server opens on the timeline it replayed.
            StartAs::Primary => {
                server.in_recovery = false;
                server.upstream = None;
            }
            StartAs::ReplicaOf(upstream) => {
                server.in_recovery = true;
                server.upstream = Some(upstream.clone());
            }
            StartAs::Standby => {
                server.in_recovery = true;
                server.upstream = None;
            }
        }
        server.running = true;
        server.crashed = false;
        Ok(())
    }

    /// See [`crate::Postgres::stop`].
    pub fn stop(&mut self, index: usize, mode: StopMode) {
        let server = &mut self.servers[index];
        if server.running {
            server.running = false;
            server.crashed = mode == StopMode::Immediate;
        }
    }

    /// Fills the server's disk (`full`) or frees it. A running server that
    /// can no longer write WAL stops as PostgreSQL does (a PANIC, then crash
    /// recovery that cannot finish); it cannot start again until freed.
    pub fn fill_disk(&mut self, index: usize, full: bool) {
        self.servers[index].disk_full = full;
        if full {
            self.crash(index);
        }
    }

    /// The server dies without a shutdown checkpoint (a power loss, a kill).
    pub fn crash(&mut self, index: usize) {
        self.stop(index, StopMode::Immediate);
    }

    /// See [`crate::Postgres::promote`].
    pub fn promote(&mut self, index: usize) -> Result<Timeline, PostgresError> {
        let server = &mut self.servers[index];
        let data = match server.data.as_mut() {
            Some(data) if server.running => data,
            _ => {
                return Err(PostgresError::NotRunning {
                    operation: Operation::Promote,
                })
            }
        };
        if !server.in_recovery {
            return Ok(data.timeline);
        }
        // Ending recovery starts a new timeline; the end-of-recovery
        // checkpoint puts it in pg_control.
        data.timeline = Timeline(data.timeline.0 + 1);
        data.control_timeline = data.timeline;
        server.in_recovery = false;
        server.upstream = None;
        Ok(data.timeline)
    }

    /// See [`crate::Postgres::demote`].
    pub fn demote(
        &mut self,
        index: usize,
        mode: StopMode,
        follow: Option<&Upstream>,
    ) -> Result<(), PostgresError> {
        match (self.running_role(index), follow) {
            (Some(PgRole::Replica), Some(upstream)) => return self.follow(index, upstream),
            (Some(_), _) => self.stop(index, mode),
            (None, _) => {}
        }
        let server = &mut self.servers[index];
        if server.data.is_none() {
            return match follow {
                None => Ok(()),
                Some(_) => Err(PostgresError::NotInitialized {
                    operation: Operation::Demote,
                    data_dir: data_dir(&server.name),
                }),
            };
        }
        // Written only once stopped: it can never come back read-write.
        server.in_recovery = true;
        match follow {
            Some(upstream) => self.start(index, &StartAs::ReplicaOf(upstream.clone())),
            None => Ok(()),
        }
    }

    /// See [`crate::Postgres::follow`].
    pub fn follow(&mut self, index: usize, upstream: &Upstream) -> Result<(), PostgresError> {
        self.require_data(index, Operation::Follow)?;
        let server = &mut self.servers[index];
        if server.running && !server.in_recovery {
            return Err(PostgresError::RoleConflict {
                operation: Operation::Follow,
                running_as: PgRole::Primary,
            });
        }
        server.in_recovery = true;
        server.upstream = Some(upstream.clone());
        Ok(())
    }

    /// See [`crate::Postgres::rewind`].
    pub fn rewind(
        &mut self,
        index: usize,
        source: &Upstream,
    ) -> Result<RewindOutcome, PostgresError> {
        let operation = Operation::Rewind;
        if self.servers[index].running {
            return Err(PostgresError::StillRunning { operation });
        }
        self.require_data(index, operation)?;
        let from = self
            .resolve(source)
            .filter(|&from| from != index)
            .filter(|&from| self.servers[from].running && self.reachable(index, from))
            .ok_or_else(|| unreachable_source(operation, source))?;
        let Some(source_data) = self.servers[from].data.clone() else {
            return Err(unreachable_source(operation, source));
        };
        let name = self.servers[index].name.clone();
        let blocked = self.conditions.rewind_blocked(&name);
        let server = &mut self.servers[index];
        let Some(data) = server.data.as_mut() else {
            return Err(unreachable_source(operation, source));
        };
        let outcome = if data.is_prefix_of(&source_data) {
            RewindOutcome::NotNeeded
        } else if let Some(reason) = blocked {
            return Ok(RewindOutcome::Impossible { reason });
        } else {
            let common = data.common_records(&source_data);
            data.wal.truncate(common);
            data.timeline = source_data.timeline;
            data.control_timeline = source_data.timeline;
            RewindOutcome::Rewound
        };
        // Crash recovery first (pg_rewind needs a clean shutdown), then
        // configured to follow the source.
        server.crashed = false;
        server.in_recovery = true;
        server.upstream = Some(source.clone());
        Ok(outcome)
    }

    /// See [`crate::Postgres::set_synchronous_standby_names`].
    pub fn set_synchronous_standby_names(
        &mut self,
        index: usize,
        names: &SyncStandbyNames,
    ) -> Result<(), PostgresError> {
        names.validate()?;
        self.servers[index].sync_names = names.clone();
        Ok(())
    }
}

/// `name`'s priority under `names` (lower first), `None` if not named.
fn priority(names: &SyncStandbyNames, name: &MemberName) -> Option<usize> {
    names
        .names()
        .iter()
        .position(|n| n == "*" || n == name.as_str())
}
