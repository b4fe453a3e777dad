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
pub mod sys;
pub mod zk;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use error::{ChaosError, Result};
pub use faults::FaultKind;
pub use report::Report;

use crate::cluster::{Cluster, ClusterSpec, NODES};
use crate::report::{FaultRecord, Findings, WindowFigures, WriteTotals};

/// How commits wait for replicas (`bootstrap.dcs.synchronous_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `synchronous_mode: true`.
    Synchronous,
    /// `synchronous_mode: true` with `synchronous_mode_strict: true`.
    Strict,
    /// `synchronous_mode: quorum`.
    Quorum,
    /// `synchronous_mode: false`.
    Asynchronous,
}

impl Mode {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Synchronous => "synchronous",
            Mode::Strict => "strict",
            Mode::Quorum => "quorum",
            Mode::Asynchronous => "asynchronous",
        }
    }

    /// Whether acknowledged writes must survive every failover.
    pub fn is_synchronous(self) -> bool {
        self != Mode::Asynchronous
    }
}

impl FromStr for Mode {
    type Err = ChaosError;

    fn from_str(s: &str) -> Result<Mode> {
        match s {
            "synchronous" | "sync" => Ok(Mode::Synchronous),
            "strict" => Ok(Mode::Strict),
            "quorum" => Ok(Mode::Quorum),
            "asynchronous" | "async" => Ok(Mode::Asynchronous),
            other => Err(ChaosError::Usage(format!(
                "--mode must be synchronous, strict, quorum or asynchronous, not {other:?}"
            ))),
        }
    }
}

/// The DCS the agents use (`--dcs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dcs {
    /// Three etcd members (the default).
    Etcd,
    /// A three-server ZooKeeper ensemble; the etcd faults hit its servers
    /// (the quorum leader, all servers) instead.
    ZooKeeper,
}

impl Dcs {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Dcs::Etcd => "etcd",
            Dcs::ZooKeeper => "zookeeper",
        }
    }
}

impl FromStr for Dcs {
    type Err = ChaosError;

    fn from_str(s: &str) -> Result<Dcs> {
        match s {
            "etcd" | "etcd3" => Ok(Dcs::Etcd),
            "zookeeper" | "zk" => Ok(Dcs::ZooKeeper),
            other => Err(ChaosError::Usage(format!(
                "--dcs must be etcd or zookeeper, not {other:?}"
            ))),
        }
    }
}

/// What decides a run's cluster and fault sequence: the same settings replay
/// the same run ([`RunSettings::replay_command`]). The report carries them under
/// the names of its JSON fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RunSettings {
    /// The seed of the fault sequence.
    pub seed: u64,
    /// The replication mode.
    pub mode: Mode,
    /// The DCS.
    pub dcs: Dcs,
    /// The fault kinds to draw from (`--kinds`); empty: all of them.
    #[serde(rename = "kinds_requested")]
    pub kinds: Vec<FaultKind>,
    /// ttl, loop_wait, retry_timeout in seconds.
    pub timing: (u64, u64, u64),
    /// How many faults.
    #[serde(rename = "faults_requested")]
    pub faults: usize,
}

impl RunSettings {
    /// The `cargo xtask chaos` command that replays this fault sequence.
    pub fn replay_command(&self) -> String {
        let mut cmd = format!(
            "cargo xtask chaos --seed {} --faults {} --mode {}",
            self.seed,
            self.faults,
            self.mode.name()
        );
        if self.dcs != Dcs::Etcd {
            cmd.push_str(&format!(" --dcs {}", self.dcs.name()));
        }
        if !self.kinds.is_empty() {
            let kinds: Vec<&str> = self.kinds.iter().map(|k| k.name()).collect();
            cmd.push_str(&format!(" --kinds {}", kinds.join(",")));
        }
        cmd
    }
}

/// What a run does.
#[derive(Clone, Debug)]
pub struct Options {
    /// The settings that decide the run (and replay it).
    pub settings: RunSettings,
    /// Keep the cluster up after the run until Ctrl-C.
    pub keep: bool,
    /// The `matriarch` binary.
    pub matriarch: PathBuf,
    /// Where the JSON reports and log directories go (`target/chaos`).
    pub out_dir: PathBuf,
    /// How long the cluster may take to become healthy after a fault is healed.
    pub recovery_timeout: Duration,
    /// Print progress lines.
    pub verbose: bool,
}

/// The workspace's target directory: `CARGO_TARGET_DIR` (relative to the
/// workspace root) or `<workspace>/target` (the test kit's
/// [`matriarch_testkit::cluster::target_dir`]).
pub fn target_dir() -> PathBuf {
    matriarch_testkit::cluster::target_dir()
}

impl Options {
    /// Defaults: 12 faults, synchronous mode, ttl 5 / loop_wait 1 / retry_timeout 2,
    /// `target/debug/matriarch`, reports in `target/chaos`.
    pub fn new(seed: u64) -> Options {
        let target = target_dir();
        Options {
            settings: RunSettings {
                seed,
                mode: Mode::Synchronous,
                dcs: Dcs::Etcd,
                kinds: Vec::new(),
                timing: (5, 1, 2),
                faults: 12,
            },
            keep: false,
            matriarch: target.join("debug").join("matriarch"),
            out_dir: target.join("chaos"),
            recovery_timeout: Duration::from_secs(90),
            verbose: true,
        }
    }
}

/// How long a healthy state must hold before the next fault.
const HEALTH_STABLE: Duration = Duration::from_millis(1500);

fn member(i: usize) -> String {
    format!("node{}", i + 1)
}

/// Runs a chaos run: makes the namespaces, starts the cluster, runs the faults,
/// checks, writes the JSON report, tears everything down. A run that finds
/// violations returns `Ok` with a failing [`Report`]; `Err` means the run itself
/// could not be carried out.
pub fn run(opts: &Options) -> Result<Report> {
    let started = Instant::now();
    netns::preflight()?;
    let stale = netns::cleanup_stale();
    let stale_data = cluster::cleanup_stale_data();
    if (stale > 0 || stale_data > 0) && opts.verbose {
        println!(
            "removed {stale} network namespaces and {stale_data} data directories of dead chaos runs"
        );
    }
    let run_name = format!(
        "{}{}-seed{}-{}",
        opts.settings.mode.name(),
        match opts.settings.dcs {
            Dcs::Etcd => "",
            Dcs::ZooKeeper => "-zookeeper",
        },
        opts.settings.seed,
        sys::now_us() / 1_000_000
    );
    let logs = opts.out_dir.join(&run_name);
    let json = opts.out_dir.join(format!("{run_name}.json"));
    std::fs::create_dir_all(&logs)
        .map_err(|e| ChaosError::io(format!("creating {}", logs.display()), e))?;
    let lab = netns::Lab::create(&cluster::hosts())?;
    let client_ns = lab.ns(cluster::CLIENT);
    let mut report = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                netns::enter(&client_ns)?;
                scenario(opts, &lab, &logs, &run_name, &json)
            })
            .join()
            .map_err(|_| ChaosError::Client("the run's thread panicked".into()))?
    })?;
    drop(lab);
    report.wall_time_s = started.elapsed().as_secs_f64();
    let text = serde_json::to_string_pretty(&report).map_err(|e| ChaosError::Parse {
        what: "the report".into(),
        detail: e.to_string(),
    })?;
    std::fs::write(&json, text)
        .map_err(|e| ChaosError::io(format!("writing {}", json.display()), e))?;
    Ok(report)
}

fn say(opts: &Options, text: String) {
    if opts.verbose {
        let secs = sys::now_us() as f64 / 1e6;
        println!("[{:.1}] {text}", secs % 1000.0);
    }
}

/// Every acknowledgement as CSV (`id,node,sent_us,acked_us`), for auditing a run.
fn write_acks(path: &Path, acks: &[checker::Ack], probes: &[checker::Ack]) -> Result<()> {
    let mut text = String::from("id,via,node,sent_us,acked_us\n");
    for (via, list) in [("dns", acks), ("probe", probes)] {
        for a in list {
            text.push_str(&format!(
                "{},{via},{},{},{}\n",
                a.id,
                member(a.node),
                a.sent_us,
                a.acked_us
            ));
        }
    }
    std::fs::write(path, text).map_err(|e| ChaosError::io(format!("writing {}", path.display()), e))
}

/// The run proper, in the client namespace.
fn scenario(
    opts: &Options,
    lab: &netns::Lab,
    logs: &Path,
    run_name: &str,
    json: &Path,
) -> Result<Report> {
    let spec = ClusterSpec {
        matriarch: &opts.matriarch,
        logs,
        mode: opts.settings.mode,
        timing: opts.settings.timing,
        dcs: opts.settings.dcs,
    };
    say(
        opts,
        format!(
            "starting {}, BIND and three agents in namespaces {}*",
            opts.settings.dcs.name(),
            lab.prefix()
        ),
    );
    let mut cluster = Cluster::start(lab, &spec)?;
    let initial = cluster
        .wait_healthy(Duration::from_secs(180), HEALTH_STABLE)
        .inspect_err(|_| eprintln!("{}", cluster.log_tails(40)))?;
    say(
        opts,
        format!(
            "healthy: {} is primary; starting the client",
            member(initial)
        ),
    );
    let mut load = client::Load::start()?;
    sys::sleep(Duration::from_secs(1))?;
    let plan = faults::plan(
        opts.settings.seed,
        opts.settings.faults,
        opts.settings.timing.0 * 1000,
        &opts.settings.kinds,
    );
    let mut records: Vec<FaultRecord> = Vec::new();
    let mut primary = initial;
    let mut log_tails = None;
    for (index, planned) in plan.iter().enumerate() {
        say(
            opts,
            format!(
                "fault #{index}: {} (primary {})",
                planned.kind.name(),
                member(primary)
            ),
        );
        let started_us = sys::now_us();
        let outcome = faults::run_fault(&mut cluster, planned, primary, opts.settings.timing);
        let healed_us = sys::now_us();
        let (injected, error) = match outcome {
            Ok(i) => (i, None),
            Err(ChaosError::Interrupted) => return Err(ChaosError::Interrupted),
            Err(e) => (faults::Injected::default(), Some(e.to_string())),
        };
        let recovered = cluster
            .wait_healthy(opts.recovery_timeout, HEALTH_STABLE)
            .and_then(|p| {
                // Healthy as the REST APIs say, and writes flow again through the
                // name: a standby whose TCP stream is still in retransmission
                // backoff looks "streaming" while commits wait for it.
                sys::wait_for(
                    "a write acknowledged after healing",
                    opts.recovery_timeout,
                    Duration::from_millis(50),
                    || {
                        load.writer()
                            .acks
                            .last()
                            .is_some_and(|a| a.sent_us > healed_us)
                            .then_some(p)
                    },
                )
            });
        let (recovered_us, primary_after, error) = match recovered {
            Ok(p) => (Some(sys::now_us()), Some(p), error),
            Err(ChaosError::Interrupted) => return Err(ChaosError::Interrupted),
            Err(e) => (None, None, Some(error.unwrap_or_else(|| e.to_string()))),
        };
        say(
            opts,
            format!(
                "  {} — {}",
                injected.detail,
                match (recovered_us, primary_after) {
                    (Some(t), Some(p)) => format!(
                        "healthy {:.1} s after healing, primary {}",
                        (t - healed_us) as f64 / 1e6,
                        member(p)
                    ),
                    _ => "NOT RECOVERED".into(),
                }
            ),
        );
        records.push(FaultRecord {
            index,
            planned: *planned,
            node: injected.node.map(member),
            primary_before: member(primary),
            primary_after: primary_after.map(member),
            detail: injected.detail,
            started_us: if injected.at_us > 0 {
                injected.at_us
            } else {
                started_us
            },
            healed_us,
            recovered_us,
            switchover_ms: injected.switchover_ms,
            window: WindowFigures::default(),
            error,
        });
        match primary_after {
            Some(p) => primary = p,
            None => {
                log_tails = Some(cluster.log_tails(40));
                break;
            }
        }
    }
    // Let the last fault's window see some writes, then stop the client.
    sys::sleep(Duration::from_secs(1))?;
    load.stop_writer();
    let end_us = sys::now_us();
    // The probes write too: stop them before the final rows are read.
    let (polls, probe_acks) = load.stop_poller();
    let final_primary = sys::wait_for(
        "a primary to read the final rows from",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || cluster.primary(),
    )
    .ok();
    let final_ids = match final_primary {
        Some(p) => match load.read_ids(cluster::node_ip(p)) {
            Ok(ids) => Some(ids),
            Err(e) => {
                eprintln!("cannot read the final rows from {}: {e}", member(p));
                None
            }
        },
        None => None,
    };
    let (acks, totals) = {
        let w = load.writer();
        (
            w.acks.clone(),
            WriteTotals {
                sent: w.last_id,
                acknowledged: w.acks.len(),
                probe_acks: probe_acks.len(),
                failed_attempts: w.failures,
                foreign_acks: w.foreign_acks,
                final_rows: final_ids.as_ref().map(|ids| ids.len()),
                last_errors: w.errors.iter().rev().take(30).rev().cloned().collect(),
            },
        )
    };
    drop(load);
    write_acks(&logs.join("acks.csv"), &acks, &probe_acks)?;
    let mut log_promotions = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        if let Ok(text) = std::fs::read(node.server_log()) {
            for at in checker::log_promotions(&String::from_utf8_lossy(&text)) {
                log_promotions.push((i, at));
            }
        }
    }
    let promotions = checker::promotions(Some(initial), &log_promotions, &polls);
    let mut report = Report {
        run: run_name.to_owned(),
        settings: opts.settings.clone(),
        wall_time_s: 0.0,
        json: json.to_path_buf(),
        logs: logs.to_path_buf(),
        faults: records,
        kinds: Vec::new(),
        writes: totals,
        final_primary: final_primary.map(member),
        findings: Findings::default(),
        problems: Vec::new(),
        log_tails,
    };
    report::evaluate(
        &mut report,
        report::Evidence {
            acks: &acks,
            probe_acks: &probe_acks,
            final_ids: final_ids.as_ref(),
            promotions,
            end_us,
        },
    );
    if report.faults.len() < opts.settings.faults {
        report.problems.push(format!(
            "only {} of {} faults ran",
            report.faults.len(),
            opts.settings.faults
        ));
    }
    if opts.keep {
        println!(
            "--keep: the cluster stays up until Ctrl-C (namespaces {}*, nodes on {}..{}, logs in {})",
            lab.prefix(),
            cluster::node_ip(0),
            cluster::node_ip(NODES - 1),
            logs.display()
        );
        while sys::sleep(Duration::from_secs(1)).is_ok() {}
    }
    cluster.shutdown();
    Ok(report)
}
