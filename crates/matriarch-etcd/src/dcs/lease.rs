//! The client's lease: granting it, keeping it alive, putting keys on it,
//! and adopting a leader key left by an earlier lease of this member.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use matriarch_dcs::DcsError;
use matriarch_model::{encode_leader, DcsKey, LeaderLock, MemberName};
use tokio::time::Instant;

use super::{ttl_secs, EtcdDcs, Lease, LeaseState};
use crate::transport::BACKEND;

impl EtcdDcs {
    /// Refreshes `id` to its full TTL. `Ok(false)` if etcd no longer knows it.
    pub(super) async fn keep_alive(&self, id: i64, deadline: Instant) -> Result<bool, DcsError> {
        let result = self
            .endpoints
            .run(
                "lease keep-alive",
                deadline,
                move |mut client: Client| async move {
                    // One request, one answer; the stream closes when dropped.
                    client.lease_keep_alive(id).await.map(|_| ())
                },
            )
            .await;
        match result {
            Ok(()) => Ok(true),
            Err(e) if e.is_lease_not_found() => Ok(false),
            Err(e) => Err(e.into_dcs("lease keep-alive")),
        }
    }

    pub(super) async fn grant(&self, ttl_secs: i64, deadline: Instant) -> Result<Lease, DcsError> {
        let granted = self
            .endpoints
            .run(
                "lease grant",
                deadline,
                move |mut client: Client| async move { client.lease_grant(ttl_secs, None).await },
            )
            .await
            .map_err(|e| e.into_dcs("lease grant"))?;
        tracing::debug!(
            cluster = %self.scope(),
            lease = granted.id(),
            ttl = granted.ttl(),
            "granted an etcd lease"
        );
        Ok(Lease {
            id: granted.id(),
            ttl_secs,
            granted_secs: granted.ttl(),
            carries_lock: false,
        })
    }

    /// A live lease granted with `ttl_secs`: the current one (refreshed to its
    /// full TTL when `refresh`), or a new one.
    pub(super) async fn live_lease(
        &self,
        state: &mut LeaseState,
        ttl_secs: i64,
        refresh: bool,
        deadline: Instant,
    ) -> Result<Lease, DcsError> {
        if let Some(lease) = state.lease.filter(|lease| lease.ttl_secs == ttl_secs) {
            if !refresh || self.keep_alive(lease.id, deadline).await? {
                return Ok(lease);
            }
            tracing::info!(
                cluster = %self.scope(),
                lease = lease.id,
                "the etcd lease expired; granting a new one"
            );
        }
        let lease = self.grant(ttl_secs, deadline).await?;
        state.lease = Some(lease);
        Ok(lease)
    }

    /// Makes `path` hold `value` attached to a live lease of `ttl`, granting a
    /// new lease if etcd says the current one is gone. A key that already
    /// holds `value` on that lease is not written again: one transaction
    /// compares value and lease and puts only if either differs, so an
    /// unchanged record makes no etcd revision (a transaction that writes
    /// nothing does not advance the revision); the lease's keep-alive, not a
    /// put, is what keeps the key alive.
    pub(super) async fn put_with_lease(
        &self,
        state: &mut LeaseState,
        ttl: Duration,
        refresh: bool,
        (path, value): (String, Vec<u8>),
        deadline: Instant,
    ) -> Result<Lease, DcsError> {
        let operation = "publish_member";
        let secs = ttl_secs(ttl);
        let mut refresh = refresh;
        for _ in 0..2 {
            let lease = self.live_lease(state, secs, refresh, deadline).await?;
            let txn = Txn::new()
                .when([
                    Compare::value(path.clone(), CompareOp::Equal, value.clone()),
                    Compare::lease(path.clone(), CompareOp::Equal, lease.id),
                ])
                .or_else([TxnOp::put(
                    path.clone(),
                    value.clone(),
                    Some(PutOptions::new().with_lease(lease.id)),
                )]);
            match self.txn(operation, deadline, txn).await {
                Ok(response) => {
                    if !response.succeeded() {
                        tracing::debug!(cluster = %self.scope(), key = %path, lease = lease.id, "wrote a changed record");
                    }
                    return Ok(lease);
                }
                Err(e) if e.is_lease_not_found() => {
                    state.lease = None;
                    refresh = true;
                }
                Err(e) => return Err(e.into_dcs(operation)),
            }
        }
        Err(DcsError::Backend {
            backend: BACKEND,
            message: format!("{operation}: etcd dropped every lease granted for it"),
        })
    }

    /// Moves the leader key, which holds `me` at `mod_revision`, to this
    /// client's lease. `Ok(false)` if it changed in the meantime.
    pub(super) async fn adopt_leader(
        &self,
        state: &mut LeaseState,
        me: &MemberName,
        ttl: Duration,
        mod_revision: i64,
        deadline: Instant,
    ) -> Result<bool, DcsError> {
        let lease = self
            .live_lease(state, ttl_secs(ttl), true, deadline)
            .await?;
        let path = self.path(&DcsKey::Leader);
        let value = encode_leader(&LeaderLock { holder: me.clone() });
        let txn = Txn::new()
            .when([
                Compare::value(path.clone(), CompareOp::Equal, value.clone()),
                Compare::mod_revision(path.clone(), CompareOp::Equal, mod_revision),
            ])
            .and_then([TxnOp::put(
                path,
                value,
                Some(PutOptions::new().with_lease(lease.id)),
            )]);
        let response = match self.txn("adopt leader key", deadline, txn).await {
            Ok(response) => response,
            Err(e) if e.is_lease_not_found() => {
                state.lease = None;
                return Ok(false);
            }
            Err(e) => return Err(e.into_dcs("adopt leader key")),
        };
        if response.succeeded() {
            if let Some(lease) = state.lease.as_mut() {
                lease.carries_lock = true;
            }
            tracing::info!(
                cluster = %self.scope(),
                member = %me,
                lease = lease.id,
                "the leader key holds this member under another lease; moved it to ours"
            );
        }
        Ok(response.succeeded())
    }
}
