//! The etcd backend of matriarch's DCS: [`EtcdDcs`] implements
//! [`matriarch_dcs::Dcs`] on etcd's v3 API (etcd 3.4 and later), storing
//! Patroni's key layout (`docs/dcs-layout.md`).
//!
//! * One lease per client, granted with the TTL (whole seconds, rounded up;
//!   etcd may raise it to its own minimum). The leader key and the member key
//!   are attached to it. The lock is renewed by keeping the lease alive and
//!   checking that the leader key still holds this member; publishing the
//!   member record never extends a lock that is not renewed.
//! * Acquire, release, initialize and record writes are transactions that
//!   compare `create_revision`, the value, or `mod_revision` (the
//!   [`matriarch_model::Version`] reported); nobody's lock is ever taken over.
//! * One watch stream on the scope's prefix stays open across calls and
//!   feeds a cache of the scope (Patroni's etcd3 `KVCache`): views come from
//!   it after a light linearizable check, watches wait on it; a stream that
//!   breaks or goes silent resumes on another endpoint from the cache's
//!   revision (a range read again after a compaction), and meanwhile views
//!   are range reads ([`EtcdDcs`] has the rules).
//! * Every call is bounded by [`EtcdConfig::retry_timeout`]; an unreachable
//!   etcd is [`matriarch_dcs::DcsError::Unreachable`] or
//!   [`matriarch_dcs::DcsError::Timeout`], never a lost lock. A lost lock
//!   (the lease expired, another member holds the key) is
//!   [`matriarch_dcs::DcsError::LockNotHeld`].
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use matriarch_dcs::Dcs;
//! use matriarch_etcd::{EtcdConfig, EtcdDcs, EtcdTls};
//!
//! let config = EtcdConfig::new(["https://10.0.0.1:2379", "https://10.0.0.2:2379"], "pg-main")
//!     .with_credentials("matriarch", "secret")
//!     .with_tls(EtcdTls::new("/etc/matriarch/ca.pem")
//!         .with_client_identity("/etc/matriarch/client.pem", "/etc/matriarch/client-key.pem"))
//!     .with_retry_timeout(Duration::from_secs(2));
//! let dcs = EtcdDcs::new(&config)?;
//! let view = dcs.read_view().await?;
//! println!("leader: {:?}", view.leader_name());
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod config;
mod dcs;
mod transport;

pub use config::{
    ClientIdentity, EtcdConfig, EtcdConfigError, EtcdCredentials, EtcdTls, DEFAULT_RETRY_TIMEOUT,
};
pub use dcs::{EtcdDcs, ReadCounters};
