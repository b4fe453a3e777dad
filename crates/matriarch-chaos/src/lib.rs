//! `cargo xtask chaos`: a real matriarch cluster under real faults and network
//! partitions, with a checker.
//!
//! # Namespace layout
//!
//! Every run makes its own network namespaces, named `mch<pid>-<host>` (see
//! [`netns`]): a switch namespace `…-sw` holding the bridge `br0`, and one namespace
//! per host, each wired to the bridge by a veth pair (`eth0` inside, `v<host>` on
//! the bridge):
//!
//! | host | address | runs |
//! |---|---|---|
//! | `n1`..`n3` | 127.1.0.11..13 | `matriarch run` (node1..node3) and its PostgreSQL (port 5432, REST API 8008) |
//! | `e1`..`e3` | 127.1.0.21..23 | one etcd member each (2379 clients, 2380 peers), or with `--dcs zookeeper` one ZooKeeper server each (2181 clients, 2888/3888 quorum) |
//! | `dns` | 127.1.0.30 | BIND, zone `chaos.test`, `primary.chaos.test` updated with TSIG by the leader |
//! | `cl` | 127.1.0.40 | the harness itself: the writer, the poller, the health checks, `etcdctl` |
//!
//! Inside each host `lo` is `127.0.0.1/32` and `route_localnet` is on, so the
//! 127.1.0.x addresses travel over the bridge; the root namespace is not touched.
//! Two runs never meet: each has its own bridge (the addresses may repeat). The
//! harness's own thread enters the client namespace (`setns`), so everything it
//! does goes over the bridge as a client's traffic would. A run first deletes the
//! namespaces (and `/tmp/matriarch-chaos-<pid>-*` data directories) of chaos runs
//! whose process is gone; its own are deleted, with every process in them, when it
//! ends (also on error, panic or Ctrl-C).
//!
//! # Fault kinds
//!
//! See [`faults::FaultKind`]: node kill, PostgreSQL kill, agent kill, agent stop
//! (longer than the ttl), PostgreSQL stop, isolating the primary (link down),
//! cutting the primary from etcd or from the replicas (nftables in its namespace),
//! killing the etcd leader, stopping all of etcd (longer than the ttl), and
//! garbage in the leader, config or a member key; and what operators do: two
//! switchovers in a row (the second as soon as the first candidate answers
//! `/primary`), `PATCH /config` of the timing or of `synchronous_node_count` and
//! strictness, and garbage (random bytes, huge numbers, wrong types) in `config`,
//! `sync`, `failover` and a member key at once. With `--dcs zookeeper` the etcd
//! faults hit the ZooKeeper ensemble (its quorum leader, all servers). The seed
//! decides the order (a shuffle of all kinds first, so `--faults 16` covers each
//! once, then random kinds; `--kinds` restricts the draw), which node, how long
//! each fault lasts and which key is spoiled.
//! After each fault is healed the run waits for a healthy cluster (one `/primary`,
//! two `/replica`, both streaming in the primary's `/patroni`, a synchronous
//! standby in the synchronous modes, the DNS name on the primary, an etcd leader,
//! all for 1.5 s in a row) and for a write sent after the healing to be
//! acknowledged; then the next fault follows.
//!
//! # Checker rules
//!
//! The writer (one `INSERT … RETURNING host(inet_server_addr())` per transaction,
//! through the DNS name resolved at every reconnection) records each
//! acknowledgement with its id, the node that acknowledged it, and its send and
//! arrival times (wall clock). A write that fails or times out counts as not
//! acknowledged. The poller adds probe writes (ids from
//! [`client::PROBE_FIRST_ID`]): every 100 ms, each node that answers "not in
//! recovery" gets an `INSERT` straight to its own address, so a deposed primary
//! that still takes writes is caught even after the writer followed the DNS name
//! to the new one. Probe acknowledgements count for (a) and (b), not for (c).
//! Then ([`checker`]):
//!
//! * **(a) lost writes**: acknowledged ids missing from the final primary (all ids
//!   read from it at the end). Must be 0 in the synchronous modes; reported per
//!   fault kind in asynchronous mode.
//! * **(b) writes on a deposed primary**: an acknowledgement from node A counts when
//!   the latest promotion at or before its *arrival* is another node's. Promotion
//!   times come, most precisely, from PostgreSQL's own log (`log_line_prefix =
//!   '%n '` gives epoch milliseconds; the line `selected new timeline ID` is the end
//!   of recovery, before the first write can commit); a poller asking
//!   `pg_is_in_recovery()` on every node every 50 ms adds any promotion the logs
//!   miss, dated at the last poll that still saw the node in recovery (the earliest
//!   instant possible). The bootstrap primary is promoted at time 0. Using the
//!   arrival time and the earliest promotion instant errs on the side of flagging:
//!   a write sent before a failover but acknowledged by the old primary after it is
//!   counted. Must be 0.
//! * **(c) unavailability**: from a fault's injection to the first acknowledgement of
//!   a write sent after it; median and worst, per kind and overall.
//!
//! The run fails (non-zero exit of the binary) when (a) is non-zero in a
//! synchronous mode, when (b) is non-zero, or when the cluster does not recover
//! from a fault in time (the agents' log tails, the seed and the replay command
//! are printed). The JSON report goes to `target/chaos/<run>.json` (under
//! `CARGO_TARGET_DIR` when set), the logs and every acknowledgement
//! (`acks.csv`) to `target/chaos/<run>/`.

#![warn(missing_docs)]

pub mod checker;
pub mod client;
pub mod cluster;
pub mod error;
pub mod faults;
pub mod netns;
pub mod report;
mod runner;
mod settings;
pub mod sys;
pub mod zk;

pub use error::{ChaosError, Result};
pub use faults::FaultKind;
pub use report::Report;
pub use runner::run;
pub use settings::{target_dir, Dcs, Mode, Options, RunSettings};
