//! The DCS backend chosen by the configuration, behind one type the engine
//! and the REST API share.

use std::sync::Arc;
use std::time::Duration;

use matriarch_dcs::Dcs;

use crate::config::NodeConfig;
use crate::error::DaemonError;

/// Any [`Dcs`] backend, shared: the engine and the REST API use the same
/// client (one etcd lease or ZooKeeper session for this member).
/// `matriarch-dcs` implements [`Dcs`] for `Arc<dyn Dcs>` itself.
pub(crate) type AnyDcs = Arc<dyn Dcs>;

/// Builds the client of the configured backend (etcd or ZooKeeper). Makes no
/// network call for etcd; ZooKeeper connects lazily.
pub(crate) fn build(
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
        return Ok(Arc::new(dcs));
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
        return Ok(Arc::new(dcs));
    }
    Err(DaemonError::Dcs(
        "no DCS configured (etcd3 or zookeeper)".to_owned(),
    ))
}
