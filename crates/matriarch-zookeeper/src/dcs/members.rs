//! This member's record: an ephemeral znode written only when it changed.

use std::collections::BTreeMap;
use std::sync::{MutexGuard, PoisonError};
use std::time::Duration;

use matriarch_dcs::DcsError;
use matriarch_model::{encode_member, Member, MemberName};
use tokio::time::Instant;
use tracing::info;
use zookeeper_client as zk;

use super::{ephemeral, Inner, WrittenMember, ATTEMPTS};
use crate::error::{map_zk, BACKEND};
use crate::lease::LeaseKey;

impl Inner {
    pub(super) async fn publish_member(
        &self,
        member: &Member,
        ttl: Duration,
    ) -> Result<(), DcsError> {
        self.follow_ttl(ttl).await;
        let session = self.session().await?;
        let _ops = self.ephemeral_ops.lock().await;
        let name = member.name.as_str().to_owned();
        let key = LeaseKey::Member(name.clone());
        let path = self.lease_path(&key);
        let value = encode_member(member);
        let start = Instant::now();
        let deadline = start + ttl;
        let confirm = |version: i32| {
            self.lease_confirmed(key.clone(), session.id, deadline);
            self.note_member_written(&name, session.id, version, &value);
        };
        if self.leases().is_live(&key, session.id, start) {
            if let Some(version) = self.unchanged_member_version(&name, session.id, &value) {
                // Compare instead of write: an unchanged record on this
                // session's znode is kept alive by the lease alone, and a
                // write would wake every watcher for nothing.
                match self.stat(&session, &path).await? {
                    Some(stat) if stat.ephemeral_owner == session.id && stat.version == version => {
                        confirm(version);
                        return Ok(());
                    }
                    _ => {} // changed or gone behind our back: write it
                }
            }
            match session.client.set_data(&path, &value, None).await {
                Ok(stat) if stat.ephemeral_owner == session.id => {
                    confirm(stat.version);
                    return Ok(());
                }
                Ok(_) | Err(zk::Error::NoNode) => {} // not ours any more: re-create
                Err(e) => return Err(map_zk(&format!("writing {path}"), e)),
            }
        }
        self.lease_tentatively(&key, session.id, deadline, start);
        for _ in 0..ATTEMPTS {
            let created = self
                .create_ephemeral(&session, &self.members_dir, (&path, &value))
                .await;
            match created {
                Ok(stat) => {
                    confirm(stat.version);
                    info!(cluster = %self.scope(), member = %name, "published the member record");
                    return Ok(());
                }
                Err(zk::Error::NodeExists) => {
                    let Some(stat) = self.stat(&session, &path).await? else {
                        continue;
                    };
                    if stat.ephemeral_owner == session.id {
                        match session
                            .client
                            .set_data(&path, &value, Some(stat.version))
                            .await
                        {
                            Ok(stat) => {
                                confirm(stat.version);
                                return Ok(());
                            }
                            Err(zk::Error::NoNode) | Err(zk::Error::BadVersion) => continue,
                            Err(e) => return Err(map_zk(&format!("writing {path}"), e)),
                        }
                    }
                    // Left by an ended session (of ours, or of a member that
                    // had this name): replace it with ours in one transaction.
                    let mut txn = session.client.new_multi_writer();
                    txn.add_delete(&path, Some(stat.version))
                        .and_then(|()| txn.add_create(&path, &value, &ephemeral(&self.config)))
                        .map_err(|e| map_zk(&format!("replacing {path}"), e))?;
                    match txn.commit().await {
                        Ok(_) => {
                            // A znode created in the transaction has version 0.
                            confirm(0);
                            info!(cluster = %self.scope(), member = %name,
                                owner = %format_args!("{:#x}", stat.ephemeral_owner),
                                "replaced a member znode of another session with this session's");
                            return Ok(());
                        }
                        Err(zk::MultiWriteError::OperationFailed { .. }) => continue,
                        Err(zk::MultiWriteError::RequestFailed { source }) => {
                            return Err(map_zk(&format!("replacing {path}"), source))
                        }
                    }
                }
                Err(e) => return Err(map_zk(&format!("creating {path}"), e)),
            }
        }
        Err(DcsError::Backend {
            backend: BACKEND,
            message: format!("publishing {path}: the znode kept changing"),
        })
    }

    pub(super) fn written_members(&self) -> MutexGuard<'_, BTreeMap<String, WrittenMember>> {
        // Each update is one insert or remove: a panic cannot leave it half-done.
        self.written_members
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The version of `name`'s znode if this client wrote `value` there last,
    /// on `session`.
    pub(super) fn unchanged_member_version(
        &self,
        name: &str,
        session: i64,
        value: &[u8],
    ) -> Option<i32> {
        self.written_members()
            .get(name)
            .filter(|written| written.session == session && written.value == value)
            .map(|written| written.version)
    }

    pub(super) fn note_member_written(&self, name: &str, session: i64, version: i32, value: &[u8]) {
        self.written_members().insert(
            name.to_owned(),
            WrittenMember {
                session,
                version,
                value: value.to_vec(),
            },
        );
    }

    pub(super) async fn remove_member(&self, name: &MemberName) -> Result<(), DcsError> {
        let session = self.session().await?;
        let _ops = self.ephemeral_ops.lock().await;
        let key = LeaseKey::Member(name.as_str().to_owned());
        let path = self.lease_path(&key);
        self.leases().forget(&key);
        self.written_members().remove(name.as_str());
        match session.client.delete(&path, None).await {
            Ok(()) => {
                info!(cluster = %self.scope(), member = %name, "removed the member record");
                Ok(())
            }
            Err(zk::Error::NoNode) => Ok(()),
            Err(e) => Err(map_zk(&format!("deleting {path}"), e)),
        }
    }
}
