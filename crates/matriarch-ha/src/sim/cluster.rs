//! The simulated nodes: each runs the real [`Engine`] on its own clock,
//! and can be paused (SIGSTOP), killed and restarted.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use matriarch_dcs::MemoryDcs;
use matriarch_model::{ClusterConfig, Lsn, Member, MemberName, MemberState, Role, Tags, Timeline};
use matriarch_postgres::BootstrapSpec;
use matriarch_router::RecordingRouter;

use super::dcs::SimDcs;
use super::plants::ModelBug;
use super::postgres::{SimFailsafe, SimPostgres, SimProbe};
use super::time::NodeClock;
use super::world::{lock, World};
use crate::{Decider, Engine, EngineSettings, NodeSettings};

/// SIGSTOP and SIGCONT for a future: while paused it is not polled, and its
/// timers run on without it.
#[derive(Default)]
pub(super) struct PauseSwitch {
    state: Mutex<(bool, Option<Waker>)>,
}

impl PauseSwitch {
    pub(super) fn set(&self, paused: bool) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.0 = paused;
        if !paused {
            if let Some(waker) = state.1.take() {
                waker.wake();
            }
        }
    }
}

pub(super) struct Pausable<F> {
    inner: Pin<Box<F>>,
    switch: Arc<PauseSwitch>,
}

impl<F: Future> Future for Pausable<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        {
            let mut state = self
                .switch
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if state.0 {
                state.1 = Some(cx.waker().clone());
                return Poll::Pending;
            }
        }
        self.inner.as_mut().poll(cx)
    }
}

pub(super) struct NodeHandle {
    pub(super) task: Option<tokio::task::JoinHandle<()>>,
    pub(super) reporter: Option<tokio::task::JoinHandle<()>>,
    pub(super) pause: Arc<PauseSwitch>,
    pub(super) dcs: SimDcs,
    pub(super) postgres: SimPostgres,
    /// This node's monotonic clock.
    pub(super) clock: Arc<NodeClock>,
    /// How far its wall clock is off, in milliseconds.
    pub(super) wall_skew_ms: i64,
    /// Asks its engine to restart PostgreSQL.
    pub(super) restart: Option<crate::RestartHandle>,
}

pub(super) struct Cluster {
    pub(super) world: Arc<Mutex<World>>,
    pub(super) store: MemoryDcs,
    /// The configuration in force (operators may change it).
    pub(super) config: ClusterConfig,
    /// The longest ttl in force during the run (for the liveness bound).
    pub(super) max_ttl_seen: Duration,
    pub(super) decider: Option<Decider>,
    pub(super) nodes: Vec<NodeHandle>,
    /// [`super::SimConfig::dynamic`].
    pub(super) dynamic: bool,
    /// [`super::SimConfig::model_bugs`].
    pub(super) model_bugs: Vec<ModelBug>,
}

pub(super) fn member_name(index: usize) -> MemberName {
    // "node1".."node9" are valid names.
    MemberName::new(format!("node{}", index + 1)).unwrap_or_else(|_| unreachable!())
}

/// The settings of member `name` in the simulation and the engine's tests:
/// its URLs made from its name, passwordless `postgres` and `replicator`
/// users, no rewind user, and `bootstrap_config`.
pub fn member_settings(name: &MemberName, bootstrap_config: ClusterConfig) -> EngineSettings {
    EngineSettings {
        node: NodeSettings {
            name: name.clone(),
            tags: Tags::default(),
            conn_url: format!("postgres://{name}:5432/postgres"),
            api_url: format!("http://{name}:8008/patroni"),
        },
        bootstrap_config,
        bootstrap: BootstrapSpec::passwordless(),
        postgres_timeout: Duration::from_secs(10),
    }
}

/// The record of member `name` running as `role` at `position` on
/// `timeline`, with the URLs of [`member_settings`].
pub fn running_member(name: &MemberName, role: Role, position: u64, timeline: u32) -> Member {
    let settings = member_settings(name, ClusterConfig::default()).node;
    let mut member = Member::new(name.clone(), settings.conn_url, settings.api_url);
    member.role = role;
    member.state = MemberState::Running;
    member.xlog_location = Some(Lsn(position));
    member.timeline = Some(Timeline(timeline));
    member
}

impl Cluster {
    pub(super) fn spawn_agent(&mut self, index: usize) {
        let handle = &mut self.nodes[index];
        let name = member_name(index);
        let settings = member_settings(&name, self.config.clone());
        let wall = Utc
            .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .single()
            .unwrap_or_default()
            + chrono::Duration::milliseconds(handle.wall_skew_ms);
        let mut engine = Engine::new(
            handle.dcs.clone(),
            handle.postgres.clone(),
            RecordingRouter::new(name.to_string()),
            settings,
            handle.clock.clone(),
        )
        .with_fence(Arc::new(handle.postgres.clone()))
        .with_peer_probe(Arc::new(SimProbe {
            index,
            world: Arc::clone(&self.world),
        }))
        .with_failsafe_sender(Arc::new(SimFailsafe {
            index,
            world: Arc::clone(&self.world),
        }))
        .with_wall_start(wall);
        lock(&self.world).nodes[index].failsafe = Some(engine.failsafe_handle());
        if let Some(decider) = self.decider {
            engine = engine.with_decider(decider);
        }
        handle.restart = Some(engine.restart_handle());
        let mut status = engine.status();
        let world = Arc::clone(&self.world);
        let reporter = tokio::spawn(async move {
            let mut last = String::new();
            while status.changed().await {
                let now = status.get();
                let line = format!("{:?}: {}", now.role, now.reason);
                if line != last {
                    lock(&world).log(format!("{name}: {line}"));
                    last = line;
                }
            }
        });
        handle.pause.set(false);
        lock(&self.world).nodes[index].agent_up = true;
        let run = Pausable {
            inner: Box::pin(engine.run(std::future::pending())),
            switch: Arc::clone(&handle.pause),
        };
        handle.reporter = Some(reporter);
        handle.task = Some(tokio::spawn(run));
    }

    pub(super) fn crash_agent(&mut self, index: usize) {
        lock(&self.world).nodes[index].agent_up = false;
        lock(&self.world).nodes[index].failsafe = None;
        if let Some(task) = self.nodes[index].task.take() {
            task.abort();
        }
        if let Some(reporter) = self.nodes[index].reporter.take() {
            reporter.abort();
        }
    }
}
