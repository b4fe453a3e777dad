//! Real services for matriarch's tests.
//!
//! Each handle starts a real program as a child process on a free 127.0.0.1 port with a
//! throwaway directory, waits until it is ready, and on drop (also when a test panics)
//! kills the process group, waits for it, and removes the directory:
//!
//! * [`EtcdServer`] / [`EtcdCluster`]: etcd 3.4 (`/usr/bin/etcd`); [`TlsEtcdServer`] over TLS
//!   with client certificates.
//! * [`ZooKeeperServer`]: standalone ZooKeeper 3.8 run with java.
//! * [`PostgresServer`]: PostgreSQL 15 (as the `postgres` OS user when run as root).
//! * [`BindServer`]: BIND 9 with a TSIG-protected dynamic zone.
//! * [`MotoServer`]: moto's AWS emulator from the venv made by `cargo xtask deps`;
//!   [`MotoS3`]: a bucket on it over HTTPS, for [`PgBackRest`] (Debian's pgBackRest).
//! * [`TestCa`]: a CA and the certificates it signs, for TLS tests.
//! * [`HaProxy`]: Debian's HAProxy routing to whichever node's REST API says primary.
//!
//! On top of them, [`cluster`] runs real `matriarch run` agents (the harness of
//! the demo, the benchmarks, the chaos run and the daemon's end-to-end tests), [`dns`] asks BIND for `A` records, and
//! [`wait`] sleeps and polls until Ctrl-C.
//!
//! Missing programs make `start()` fail with a message that names the program and says
//! to run `cargo xtask deps`. The library is blocking (std::process) and works from
//! sync and async tests alike.

#![warn(missing_docs)]

mod bind;
mod certs;
pub mod cluster;
pub mod dns;
mod error;
mod etcd;
mod etcd_tls;
mod haproxy;
mod http;
mod moto;
mod moto_s3;
mod pgbackrest;
mod ports;
mod postgres;
mod process;
pub mod wait;
mod zookeeper;

pub use bind::{
    named_args, random_tsig_secret, BindConfig, BindServer, BIND_TSIG_ALGORITHM,
    BIND_TSIG_KEY_NAME, BIND_ZONE,
};
pub use certs::{TestCa, CLIENT_EXTENSIONS, SERVER_EXTENSIONS};
pub use error::{Result, TestkitError};
pub use etcd::{EtcdCluster, EtcdMember, EtcdMemberArgs, EtcdServer};
pub use etcd_tls::TlsEtcdServer;
pub use haproxy::{HaProxy, HaProxyBackend};
pub use http::{http_request, http_request_timeout, HttpResponse};
pub use moto::{moto_venv, MotoServer};
pub use moto_s3::{MotoS3, MOTO_S3_REGION};
pub use pgbackrest::{backup_summary, run_pgbackrest, PgBackRest, PgBackRestRepo, PGBACKREST};
pub use ports::{free_port, free_tcp_udp_port};
pub use postgres::{
    bin_dir, pg_command, pg_program, run_as_pg_user, run_pg_program, PgOsUser, PostgresServer,
    DEFAULT_PG_BIN, PG_OS_USER,
};
pub use process::describe as command_line;
pub use zookeeper::{
    zk_four_letter_word, zookeeper_args, ZooKeeperOptions, ZooKeeperServer, ZOOKEEPER_JAR,
    ZOOKEEPER_LOG4J,
};
