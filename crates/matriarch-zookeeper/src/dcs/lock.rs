//! The leader lock: an ephemeral znode of this client's session, with a
//! client-side lease of the TTL.

use std::time::Duration;

use matriarch_dcs::DcsError;
use matriarch_model::{encode_leader, DcsKey, LeaderLock, MemberName};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use zookeeper_client as zk;

use super::{holder_of, lost, session_ended, Inner, ATTEMPTS};
use crate::error::{map_zk, BACKEND};
use crate::lease::LeaseKey;

impl Inner {
    pub(super) async fn acquire_leader(
        &self,
        me: &MemberName,
        ttl: Duration,
    ) -> Result<bool, DcsError> {
        self.follow_ttl(ttl).await;
        let session = self.session().await?;
        let _ops = self.ephemeral_ops.lock().await;
        let path = self.path(&DcsKey::Leader);
        let key = LeaseKey::Leader;
        let value = encode_leader(&LeaderLock { holder: me.clone() });
        let start = Instant::now();
        if self.leases().has_run_out(&key, session.id, start) {
            // Our lock ran out: it is lost; clear its znode before racing again.
            self.delete_own(&session, &key).await?;
            self.leases().forget(&key);
        }
        self.lease_tentatively(&key, session.id, start + ttl, start);
        for _ in 0..ATTEMPTS {
            let created = self
                .create_ephemeral(&session, &self.scope_dir, (&path, &value))
                .await;
            match created {
                Ok(_) => {
                    self.lease_confirmed(key, session.id, start + ttl);
                    self.note_lock_lifetime(&session, ttl);
                    self.warn_ttl(&session, ttl);
                    info!(cluster = %self.scope(), member = %me, "took the leader lock");
                    return Ok(true);
                }
                Err(zk::Error::NodeExists) => {
                    let Some((data, stat)) = self.get(&session, &path).await? else {
                        continue; // released meanwhile: race again
                    };
                    let holder = holder_of(&data);
                    if stat.ephemeral_owner == session.id {
                        if holder.as_ref() == Some(me) {
                            self.lease_confirmed(key, session.id, start + ttl);
                            self.note_lock_lifetime(&session, ttl);
                            return Ok(true);
                        }
                        return Ok(false);
                    }
                    self.leases().forget(&key);
                    if self.is_retired(stat.ephemeral_owner) {
                        // Left by an ended session of ours: the lock is lost
                        // either way; free it rather than wait for its expiry.
                        info!(cluster = %self.scope(), member = %me,
                            "deleting a leader znode left by an ended session of this client");
                        match session.client.delete(&path, Some(stat.version)).await {
                            Ok(()) | Err(zk::Error::NoNode) | Err(zk::Error::BadVersion) => {}
                            Err(e) => return Err(map_zk(&format!("deleting {path}"), e)),
                        }
                        self.leases()
                            .tentative(key.clone(), session.id, start + ttl, start);
                        continue;
                    }
                    debug!(cluster = %self.scope(), member = %me, holder = ?holder, "the leader lock is held");
                    return Ok(false);
                }
                // The create may still land: the tentative lease ends it in time.
                Err(e) => return Err(map_zk(&format!("creating {path}"), e)),
            }
        }
        self.leases().forget(&key);
        Err(DcsError::Backend {
            backend: BACKEND,
            message: format!("creating {path}: the znode kept changing"),
        })
    }

    /// Who holds the lock, as far as can be read before `deadline`. A leader
    /// znode left by an ended session of this client is deleted on the way
    /// (the lock it stood for is lost), so that another member can take the
    /// lock without waiting for the server to expire that session.
    pub(super) async fn holder_before(&self, deadline: Instant) -> Option<MemberName> {
        let read = async {
            let session = self.session().await.ok()?;
            let path = self.path(&DcsKey::Leader);
            let (data, stat) = self.get(&session, &path).await.ok()??;
            if self.is_retired(stat.ephemeral_owner) {
                info!(cluster = %self.scope(), "deleting a leader znode left by an ended session of this client");
                return match session.client.delete(&path, Some(stat.version)).await {
                    Ok(()) | Err(zk::Error::NoNode) => None,
                    Err(_) => holder_of(&data),
                };
            }
            holder_of(&data)
        };
        tokio::time::timeout_at(deadline, read).await.ok().flatten()
    }

    pub(super) async fn renew_leader(
        &self,
        me: &MemberName,
        ttl: Duration,
        deadline: Instant,
    ) -> Result<(), DcsError> {
        self.follow_ttl(ttl).await;
        let session = self.session().await?;
        let _ops = self.ephemeral_ops.lock().await;
        let path = self.path(&DcsKey::Leader);
        let key = LeaseKey::Leader;
        let start = Instant::now();
        if !self.leases().is_live(&key, session.id, start) {
            if self.leases().has_run_out(&key, session.id, start) {
                warn!(cluster = %self.scope(), member = %me,
                    "the leader lock was not renewed within its ttl: it is lost");
                if let Ok(Ok(())) =
                    tokio::time::timeout_at(deadline, self.delete_own(&session, &key)).await
                {
                    self.leases().forget(&key);
                }
            }
            return Err(lost(me, self.holder_before(deadline).await));
        }
        let (data, stat) = match self.get(&session, &path).await {
            Ok(Some(found)) => found,
            Ok(None) => {
                self.leases().forget(&key);
                warn!(cluster = %self.scope(), member = %me, "the leader znode is gone: the lock is lost");
                return Err(lost(me, None));
            }
            Err(e) if session.is_terminated() => {
                warn!(cluster = %self.scope(), member = %me, error = %e,
                    "the ZooKeeper session ended: the lock is lost");
                drop(_ops);
                return Err(lost(me, self.holder_before(deadline).await));
            }
            Err(e) => return Err(e),
        };
        let holder = holder_of(&data);
        if stat.ephemeral_owner != session.id {
            self.leases().forget(&key);
            warn!(cluster = %self.scope(), member = %me, holder = ?holder,
                "the leader znode belongs to another session: the lock is lost");
            return Err(lost(me, holder));
        }
        if holder.as_ref() != Some(me) {
            return Err(lost(me, holder));
        }
        // A read may be answered by a server that lags; a check through the
        // quorum proves that the session is alive and the znode unchanged.
        let mut check = session.client.new_multi_writer();
        check
            .add_check_version(&path, stat.version)
            .map_err(|e| map_zk(&format!("checking {path}"), e))?;
        match check.commit().await {
            Ok(_) => {}
            Err(zk::MultiWriteError::OperationFailed { source, .. }) => {
                self.leases().forget(&key);
                warn!(cluster = %self.scope(), member = %me, error = %source,
                    "the leader znode changed: the lock is lost");
                drop(_ops);
                return Err(lost(me, self.holder_before(deadline).await));
            }
            Err(zk::MultiWriteError::RequestFailed { source }) => {
                if session_ended(&source) || session.is_terminated() {
                    warn!(cluster = %self.scope(), member = %me, error = %source,
                        "the ZooKeeper session ended: the lock is lost");
                    drop(_ops);
                    return Err(lost(me, self.holder_before(deadline).await));
                }
                return Err(map_zk(&format!("checking {path}"), source));
            }
        }
        if !self
            .leases()
            .renew(&key, session.id, start + ttl, Instant::now())
        {
            warn!(cluster = %self.scope(), member = %me,
                "the leader lock ran out during its renewal: it is lost");
            return Err(lost(me, None));
        }
        self.reaper_wake.notify_one();
        self.note_lock_lifetime(&session, ttl);
        debug!(cluster = %self.scope(), member = %me, "renewed the leader lock");
        Ok(())
    }

    pub(super) async fn release_leader(&self, me: &MemberName) -> Result<(), DcsError> {
        let session = self.session().await?;
        let _ops = self.ephemeral_ops.lock().await;
        let path = self.path(&DcsKey::Leader);
        let key = LeaseKey::Leader;
        let Some((data, stat)) = self.get(&session, &path).await? else {
            self.leases().forget(&key);
            return Err(lost(me, None));
        };
        let holder = holder_of(&data);
        if stat.ephemeral_owner != session.id {
            self.leases().forget(&key);
            return Err(lost(me, holder));
        }
        if holder.as_ref() != Some(me) {
            return Err(lost(me, holder));
        }
        let live = self.leases().is_live(&key, session.id, Instant::now());
        match session.client.delete(&path, Some(stat.version)).await {
            Ok(()) => {
                self.leases().forget(&key);
                if live {
                    info!(cluster = %self.scope(), member = %me, "released the leader lock");
                    Ok(())
                } else {
                    // It had run out already: deleted, but it was not held.
                    Err(lost(me, None))
                }
            }
            Err(zk::Error::NoNode) | Err(zk::Error::BadVersion) => {
                self.leases().forget(&key);
                Err(lost(me, None))
            }
            Err(e) => Err(map_zk(&format!("deleting {path}"), e)),
        }
    }
}
