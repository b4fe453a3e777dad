//! The DCS backend chosen by the configuration, behind one type the engine
//! and the REST API share.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use matriarch_dcs::{Dcs, DcsError, Expected, WatchOutcome};
use matriarch_model::{
    ClusterView, DcsKey, KeyLayout, Member, MemberName, Record, SystemId, Version,
};

use crate::config::NodeConfig;
use crate::error::DaemonError;

/// Any [`Dcs`] backend, shared: the engine and the REST API use the same
/// client (one etcd lease or ZooKeeper session for this member).
#[derive(Clone)]
pub struct AnyDcs(pub Arc<dyn Dcs>);

#[async_trait]
impl Dcs for AnyDcs {
    fn layout(&self) -> &KeyLayout {
        self.0.layout()
    }
    async fn read_view(&self) -> Result<ClusterView, DcsError> {
        self.0.read_view().await
    }
    async fn try_initialize(&self) -> Result<bool, DcsError> {
        self.0.try_initialize().await
    }
    async fn complete_initialize(&self, system_id: SystemId) -> Result<(), DcsError> {
        self.0.complete_initialize(system_id).await
    }
    async fn cancel_initialize(&self) -> Result<(), DcsError> {
        self.0.cancel_initialize().await
    }
    async fn acquire_leader(&self, me: &MemberName, ttl: Duration) -> Result<bool, DcsError> {
        self.0.acquire_leader(me, ttl).await
    }
    async fn renew_leader(&self, me: &MemberName, ttl: Duration) -> Result<(), DcsError> {
        self.0.renew_leader(me, ttl).await
    }
    fn lock_lifetime(&self) -> Option<Duration> {
        self.0.lock_lifetime()
    }
    async fn release_leader(&self, me: &MemberName) -> Result<(), DcsError> {
        self.0.release_leader(me).await
    }
    async fn publish_member(&self, member: &Member, ttl: Duration) -> Result<(), DcsError> {
        self.0.publish_member(member, ttl).await
    }
    async fn remove_member(&self, name: &MemberName) -> Result<(), DcsError> {
        self.0.remove_member(name).await
    }
    async fn write(&self, record: &Record, expected: Expected) -> Result<Version, DcsError> {
        self.0.write(record, expected).await
    }
    async fn delete(&self, key: &DcsKey, expected: Expected) -> Result<(), DcsError> {
        self.0.delete(key, expected).await
    }
    async fn watch(
        &self,
        after_revision: u64,
        timeout: Duration,
    ) -> Result<WatchOutcome, DcsError> {
        self.0.watch(after_revision, timeout).await
    }
}

/// Builds the client of the configured backend (etcd or ZooKeeper). Makes no
/// network call for etcd; ZooKeeper connects lazily.
pub fn build(
    config: &NodeConfig,
    retry_timeout: Duration,
    ttl: Duration,
) -> Result<AnyDcs, DaemonError> {
    if let Some(etcd) = &config.etcd3 {
        let mut cfg = matriarch_etcd::EtcdConfig::new(etcd.hosts.hosts(), config.scope.clone())
            .with_namespace(config.namespace.trim_matches('/').to_owned())
            .with_retry_timeout(retry_timeout);
        if let (Some(user), Some(password)) = (&etcd.username, &etcd.password) {
            cfg = cfg.with_credentials(user.clone(), password.expose().to_owned());
        }
        if let Some(ca) = &etcd.cacert {
            let mut tls = matriarch_etcd::EtcdTls::new(ca.clone());
            if let (Some(cert), Some(key)) = (&etcd.cert, &etcd.key) {
                tls = tls.with_client_identity(cert.clone(), key.clone());
            }
            cfg = cfg.with_tls(tls);
        }
        let dcs = matriarch_etcd::EtcdDcs::new(&cfg)
            .map_err(|e| DaemonError::Dcs(format!("etcd3: {e}")))?;
        return Ok(AnyDcs(Arc::new(dcs)));
    }
    if let Some(zk) = &config.zookeeper {
        let mut cfg =
            matriarch_zookeeper::ZooKeeperConfig::new(zk.hosts.hosts(), config.scope.clone())
                .with_namespace(config.namespace.trim_matches('/').to_owned())
                .with_session_timeout(ttl)
                .with_retry_timeout(retry_timeout);
        if let Some(chroot) = &zk.chroot {
            cfg = cfg.with_chroot(chroot.clone());
        }
        if let Some(auth) = &zk.auth {
            cfg = cfg.with_auth(matriarch_zookeeper::DigestAuth::new(
                auth.username.clone(),
                auth.password.expose().to_owned(),
            ));
        }
        let dcs = matriarch_zookeeper::ZooKeeperDcs::new(cfg)
            .map_err(|e| DaemonError::Dcs(format!("zookeeper: {e}")))?;
        return Ok(AnyDcs(Arc::new(dcs)));
    }
    Err(DaemonError::Dcs(
        "no DCS configured (etcd3 or zookeeper)".to_owned(),
    ))
}
