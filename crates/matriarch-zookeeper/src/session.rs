//! One ZooKeeper session: the client, and a persistent recursive watch on the
//! cluster's scope whose events (and reconnections) bump a counter that
//! [`crate::ZooKeeperDcs`]'s `watch` waits on.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use zookeeper_client as zk;

use crate::config::ZooKeeperConfig;
use crate::error::map_zk;
use matriarch_dcs::DcsError;

/// A live (or terminated) ZooKeeper session.
pub(crate) struct Session {
    pub(crate) client: zk::Client,
    pub(crate) id: i64,
    /// The session timeout asked for (the server may have granted another).
    pub(crate) requested: Duration,
    /// Bumped on every event under the scope and on every reconnection.
    changes: watch::Receiver<u64>,
    pump: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

/// The ACLs of every znode this backend creates.
pub(crate) fn acls(config: &ZooKeeperConfig) -> zk::Acls<'static> {
    if config.auth.is_some() {
        zk::Acls::creator_all()
    } else {
        zk::Acls::anyone_all()
    }
}

impl Session {
    /// Opens a new session asking for `timeout` (unbounded: the caller
    /// bounds it), creates the chroot if needed, and starts watching
    /// `scope_dir` (a path under the chroot).
    pub(crate) async fn open(
        config: &ZooKeeperConfig,
        timeout: Duration,
        scope_dir: &str,
    ) -> Result<Session, DcsError> {
        let mut connector = zk::Client::connector().with_session_timeout(timeout);
        if let Some(auth) = &config.auth {
            connector = connector.with_auth("digest", &auth.credentials());
        }
        let connect_string = config.connect_string();
        let mut client = connector
            .connect(&connect_string)
            .await
            .map_err(|e| map_zk(&format!("connecting to {connect_string}"), e))?;
        if let Some(chroot) = config.effective_chroot() {
            let options = zk::CreateMode::Persistent.with_acls(acls(config));
            client
                .mkdir(chroot, &options)
                .await
                .map_err(|e| map_zk(&format!("creating the chroot {chroot}"), e))?;
            client = client.chroot(chroot).map_err(|_| {
                DcsError::InvalidRequest(format!("ZooKeeper rejected the chroot `{chroot}`"))
            })?;
        }
        let id = client.session_id().0;
        let negotiated = client.session_timeout();
        if negotiated != timeout {
            warn!(
                cluster = %config.scope,
                session = %format_args!("{id:#x}"),
                requested = ?timeout,
                negotiated = ?negotiated,
                "ZooKeeper negotiated another session timeout than the ttl: the leader lock \
                 lives at most the negotiated timeout when this member is cut off \
                 (see the server's minSessionTimeout/maxSessionTimeout)"
            );
        }
        let watcher = client
            .watch(scope_dir, zk::AddWatchMode::PersistentRecursive)
            .await
            .map_err(|e| map_zk(&format!("watching {scope_dir}"), e))?;
        let (sender, changes) = watch::channel(0u64);
        let pump = tokio::spawn(pump(watcher, sender, config.scope.clone(), id));
        info!(
            cluster = %config.scope,
            session = %format_args!("{id:#x}"),
            timeout = ?negotiated,
            "opened a ZooKeeper session"
        );
        Ok(Session {
            client,
            id,
            requested: timeout,
            changes,
            pump,
        })
    }

    /// Whether the session ended for good (expired, closed, failed auth).
    pub(crate) fn is_terminated(&self) -> bool {
        self.client.state().is_terminated()
    }

    /// A receiver of the change counter, with the current value seen.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        let mut receiver = self.changes.clone();
        receiver.borrow_and_update();
        receiver
    }

    /// The negotiated session timeout: what the server granted, after
    /// clamping the request to its `minSessionTimeout`/`maxSessionTimeout`.
    pub(crate) fn timeout(&self) -> Duration {
        self.client.session_timeout()
    }
}

/// Turns watch events into counter bumps until the session ends.
async fn pump(
    mut watcher: zk::PersistentWatcher,
    sender: watch::Sender<u64>,
    scope: String,
    id: i64,
) {
    loop {
        let event = watcher.changed().await;
        if event.event_type == zk::EventType::Session {
            match event.session_state {
                // Events may be lost across a reconnection (ZOOKEEPER-4698):
                // wake the watchers so that they re-read.
                zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                    info!(cluster = %scope, session = %format_args!("{id:#x}"), "reconnected to ZooKeeper");
                    sender.send_modify(|n| *n += 1);
                }
                zk::SessionState::Disconnected => {
                    warn!(cluster = %scope, session = %format_args!("{id:#x}"), "disconnected from ZooKeeper");
                }
                state => {
                    // Terminal: the watcher must not be polled again.
                    warn!(cluster = %scope, session = %format_args!("{id:#x}"), %state, "ZooKeeper session ended");
                    sender.send_modify(|n| *n += 1);
                    return;
                }
            }
        } else {
            debug!(cluster = %scope, path = %event.path, kind = %event.event_type, "ZooKeeper watch event");
            sender.send_modify(|n| *n += 1);
        }
    }
}
