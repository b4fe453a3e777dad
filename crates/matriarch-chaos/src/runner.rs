//! A chaos run from start to end: the namespaces, the cluster, the faults one
//! after another with the recovery after each, the checks and the report.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::cluster::{self, Cluster, ClusterSpec, NODES};
use crate::error::{ChaosError, Result};
use crate::report::{self, FaultRecord, Findings, Report, WindowFigures, WriteTotals};
use crate::settings::{Dcs, Options};
use crate::{checker, client, faults, netns, sys};

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
