//! `matriarch-demo` (run by `cargo xtask demo`): a three-node matriarch cluster on
//! loopback, a client writing through a DNS name, a node crash, and the failover
//! timeline.
//!
//! ```text
//! matriarch-demo [--matriarch PATH] [--logs DIR] [--keep] [--failover-bound SECS]
//! ```
//!
//! It starts etcd and BIND (with the test kit), three `matriarch run` agents with
//! their own PostgreSQL on 127.0.0.1, .2 and .3, waits for a primary and two
//! replicas, and shows them with `matriarch ctl list`. A writer inserts a row every
//! 10 ms through `primary.matriarch.test`, which the leader's DNS router keeps
//! pointed at the primary. Then the primary's agent and PostgreSQL are SIGKILLed
//! (a node crash), and the demo times what follows: the leader lock expiring and
//! being taken in etcd, the promotion, the DNS update, the first write accepted.
//! It prints the write unavailability and the acknowledged writes missing from the
//! new primary, restarts the crashed node, shows it rejoin as a replica, and stops
//! everything. With `--keep` the cluster stays up until Ctrl-C.
//!
//! Exit status: 0 when all of that happened; 1 when it did not (the failover took
//! longer than `--failover-bound`, 30 s by default, or a step failed: the logs'
//! tails are printed); 2 for a usage error; 130 when interrupted.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;

use matriarch_demo::cli::{beside_target, matriarch_or_default, run_main};
use matriarch_demo::cluster::{Cluster, API_PASSWORD, API_USER, PG_PASSWORD, PG_USER};
use matriarch_demo::error::{DemoError, Result};
use matriarch_demo::failover::{inject_and_measure, Fault, Measured};
use matriarch_demo::timeline::{self, Event};
use matriarch_demo::watch::LeaderWatch;
use matriarch_demo::writer::{self, Target, Writer, WriterLog, TABLE};
use matriarch_demo::{dns, interrupt};

/// The failover must complete (promotion, DNS, first write) within this by default.
const FAILOVER_BOUND: Duration = Duration::from_secs(30);
/// How often the writer writes.
const WRITE_INTERVAL: Duration = Duration::from_millis(10);
/// Steps, for the headings.
const STEPS: usize = 7;

const USAGE: &str = "\
usage: matriarch-demo [--matriarch PATH] [--logs DIR] [--keep] [--failover-bound SECS]

  --matriarch PATH       the matriarch binary (default: `matriarch` next to this program)
  --logs DIR             where node configurations and logs go (default: target/demo)
  --keep                 leave the cluster running at the end, until Ctrl-C
  --failover-bound SECS  fail (exit 1) unless the failover completes within this (default 30)
";

/// The command line.
#[derive(Debug)]
struct Args {
    matriarch: PathBuf,
    logs: PathBuf,
    keep: bool,
    failover_bound: Duration,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Option<Args>> {
    let mut matriarch = None;
    let mut logs = None;
    let mut keep = false;
    let mut failover_bound = FAILOVER_BOUND;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| {
            args.next()
                .map(PathBuf::from)
                .ok_or_else(|| DemoError::Usage(format!("{flag} needs a value\n\n{USAGE}")))
        };
        match arg.as_str() {
            "--matriarch" => matriarch = Some(value("--matriarch")?),
            "--logs" => logs = Some(value("--logs")?),
            "--keep" => keep = true,
            "--failover-bound" => {
                let secs = value("--failover-bound")?;
                failover_bound = secs
                    .to_str()
                    .and_then(|s| s.parse::<u64>().ok())
                    .filter(|s| *s > 0)
                    .map(Duration::from_secs)
                    .ok_or_else(|| {
                        DemoError::Usage(format!(
                            "--failover-bound needs a positive number of seconds, got {}",
                            secs.display()
                        ))
                    })?;
            }
            "-h" | "--help" => return Ok(None),
            other => {
                return Err(DemoError::Usage(format!(
                    "unknown argument `{other}`\n\n{USAGE}"
                )))
            }
        }
    }
    let matriarch = matriarch_or_default(matriarch);
    // target/debug/matriarch -> target/demo
    let logs = logs.unwrap_or_else(|| beside_target(&matriarch, "demo", "demo-logs"));
    Ok(Some(Args {
        matriarch,
        logs,
        keep,
        failover_bound,
    }))
}

fn main() -> ExitCode {
    let parsed = parse_args(std::env::args().skip(1));
    run_main("matriarch-demo", USAGE, parsed, |args: &Args, runtime| {
        run(args, runtime).map(|()| true)
    })
}

fn heading(step: usize, title: &str) {
    let text = format!("[{step}/{STEPS}] {title}");
    println!("\n{text}\n{}", "-".repeat(text.chars().count()));
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Starts the cluster, runs the scenario, and stops everything whatever happened.
fn run(args: &Args, runtime: &Handle) -> Result<()> {
    let started = Instant::now();
    let title = "matriarch demo: three PostgreSQL nodes, one crash, and the failover timeline";
    println!("{title}\n{}", "=".repeat(title.len()));
    heading(
        1,
        "Starting etcd, a DNS server (BIND) and three matriarch nodes",
    );
    let mut cluster = Cluster::start(&args.matriarch, &args.logs)?;
    let outcome = scenario(&mut cluster, args, runtime);
    if let Err(e) = &outcome {
        if e.wants_logs() {
            eprintln!(
                "\nmatriarch-demo: {e}\n\nThe end of the logs:\n{}",
                cluster.log_tails(40)
            );
        }
    }
    println!("\nStopping everything (agents, PostgreSQL, etcd, BIND) ...");
    cluster.shutdown();
    drop(cluster);
    println!(
        "Stopped; data directories removed. Logs and configurations are in {}",
        args.logs.display()
    );
    if outcome.is_ok() && !args.keep {
        println!(
            "The demo took {:.0} s.",
            started.elapsed().as_secs_f64().ceil()
        );
    }
    outcome
}

/// The writer's view of the failover.
struct WriterSummary {
    last_before: Option<writer::Ack>,
    first_after: Option<writer::Ack>,
}

fn writer_summary(log: &WriterLog, fault: Instant, old_ip: Ipv4Addr) -> WriterSummary {
    WriterSummary {
        last_before: log.acks.iter().rev().find(|a| a.server == old_ip).copied(),
        first_after: log
            .acks
            .iter()
            .find(|a| a.at >= fault && a.server != old_ip)
            .copied(),
    }
}

/// The ids in the demo table, read on `ip`.
fn table_ids(runtime: &Handle, target: &Target, ip: Ipv4Addr) -> Result<BTreeSet<i64>> {
    runtime.block_on(async {
        let sql_error = |detail: String| DemoError::Sql {
            target: format!("{ip}:{}", target.port),
            detail,
        };
        let client = target.connect(ip).await.map_err(sql_error)?;
        let rows = client
            .query(&format!("SELECT id FROM {TABLE}"), &[])
            .await
            .map_err(|e| sql_error(writer::describe(&e)))?;
        rows.iter()
            .map(|row| row.try_get::<_, i64>(0))
            .collect::<std::result::Result<BTreeSet<i64>, _>>()
            .map_err(|e| sql_error(writer::describe(&e)))
    })
}

fn scenario(cluster: &mut Cluster, args: &Args, runtime: &Handle) -> Result<()> {
    let name = cluster.writer_name();
    println!(
        "    etcd      {}   (the leader lock: key {})",
        cluster.etcd_endpoints(),
        cluster.leader_key()
    );
    println!(
        "    DNS       {}   zone {}, the leader keeps {name} pointed at itself",
        cluster.dns_server(),
        cluster.bind.zone()
    );
    for node in &cluster.nodes {
        println!(
            "    {}     PostgreSQL {}:{}   REST API {}   log {}",
            node.name,
            node.ip,
            node.pg_port,
            node.api(),
            node.log().display()
        );
    }
    println!("    Settings: ttl 4 s, loop_wait 1 s, retry_timeout 1.5 s (the defaults), asynchronous replication.");
    let boot = Instant::now();
    println!(
        "    Waiting for one node to initdb and take the lock, and the others to clone it ..."
    );
    let primary = cluster.wait_healthy(Duration::from_secs(120))?;
    println!(
        "    Ready after {:.1} s: {} is the primary, the others stream from it.",
        boot.elapsed().as_secs_f64(),
        cluster.nodes[primary].name
    );
    let primary_ip = cluster.nodes[primary].ip;
    interrupt::wait_for(
        "the DNS name to point at the primary",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            (dns::resolve_a(cluster.dns_server(), &name, Duration::from_millis(500)).ok()?
                == vec![primary_ip])
            .then_some(())
        },
    )?;
    println!(
        "    DNS: {name} -> {primary_ip} ({})",
        cluster.nodes[primary].name
    );

    heading(2, "The cluster, as `matriarch ctl list` shows it");
    cluster.settle()?;
    println!("{}", indent(&cluster.ctl(&["list"])));
    let timeline_before = cluster.nodes[primary].timeline();

    heading(3, "A client writes a row every 10 ms through the DNS name");
    let target = cluster.writer_target();
    runtime.block_on(async {
        let (client, ip) = target
            .connect_primary()
            .await
            .map_err(|detail| DemoError::Sql {
                target: name.clone(),
                detail,
            })?;
        client
            .batch_execute(&format!(
                "CREATE TABLE {TABLE} (id bigint PRIMARY KEY, \
                 written_at timestamptz NOT NULL DEFAULT clock_timestamp())"
            ))
            .await
            .map_err(|e| DemoError::Sql {
                target: ip.to_string(),
                detail: writer::describe(&e),
            })
    })?;
    println!(
        "    INSERT INTO {TABLE} (id) VALUES ($1), id 1, 2, 3, ... Before each connection attempt\n    \
         the client asks the DNS server for {name}; on any error it reconnects."
    );
    let watch = LeaderWatch::start(&cluster.etcd_endpoints(), &cluster.leader_key())?;
    let writer = Writer::start(runtime, target.clone(), WRITE_INTERVAL);
    interrupt::sleep(Duration::from_secs(3))?;
    let (acked, last_failure) = {
        let log = writer.log();
        (
            log.acks.len(),
            log.failures.last().map(|f| f.message.clone()),
        )
    };
    if acked == 0 {
        return Err(DemoError::Sql {
            target: name,
            detail: format!(
                "the writer could not write in 3 s: {}",
                last_failure.unwrap_or_else(|| "no error recorded".into())
            ),
        });
    }
    println!(
        "    {acked} writes acknowledged in 3 s, all by {} ({primary_ip}).",
        cluster.nodes[primary].name
    );

    // ------------------------------------------------------------------ the crash
    let old = primary;
    let old_name = cluster.nodes[old].name.clone();
    heading(
        4,
        &format!("Crash the primary: SIGKILL {old_name}'s agent and its PostgreSQL"),
    );
    println!(
        "    Nothing tells the others: they notice when {old_name}'s leader lock expires (ttl 4 s)."
    );
    let measured = inject_and_measure(
        cluster,
        old,
        Fault::NodeCrash,
        runtime,
        &target,
        &watch,
        &writer,
        args.failover_bound,
        true,
    )?;
    let Measured {
        fault,
        mut events,
        new,
        marks,
        ..
    } = measured;
    let summary = writer_summary(&writer.log(), fault, primary_ip);
    let new_name = cluster.nodes[new].name.clone();
    let new_ip = cluster.nodes[new].ip;

    // ------------------------------------------------------------------ the timeline
    heading(5, "The failover timeline (t = 0 at the crash)");
    if let Some(ack) = summary.last_before {
        events.push(Event {
            at: ack.at,
            what: format!("last write acknowledged by {old_name} (id {})", ack.id),
            seen_by: "client".into(),
        });
    }
    println!("{}", indent(&timeline::table(fault, &events)));
    let unavailable = match (summary.last_before, summary.first_after) {
        (Some(before), Some(after)) => Some(after.at.saturating_duration_since(before.at)),
        _ => None,
    };
    if let Some(gap) = unavailable {
        println!(
            "\n    Write unavailability: {:.3} s (last write acknowledged before the crash -> first after it)",
            gap.as_secs_f64()
        );
        println!(
            "    Most of it is the lock's ttl: a crashed node cannot release its lock, so the others\n    \
             wait for it to expire (ttl 4 s) before one of them takes it."
        );
    }
    // Every write acknowledged so far must be on the new primary.
    let acked_so_far: BTreeSet<i64> = writer.log().acks.iter().map(|a| a.id).collect();
    let on_new = table_ids(runtime, &target, new_ip)?;
    let lost: Vec<i64> = acked_so_far.difference(&on_new).copied().collect();
    println!(
        "    Acknowledged writes missing from the new primary: {} of {}{}",
        lost.len(),
        acked_so_far.len(),
        if lost.is_empty() {
            String::new()
        } else {
            format!(
                " (ids {:?}{}; asynchronous replication had not shipped them when {old_name} died)",
                &lost[..lost.len().min(10)],
                if lost.len() > 10 { ", ..." } else { "" }
            )
        }
    );

    // ------------------------------------------------------------------ the rejoin
    heading(
        6,
        &format!("Restart {old_name}: it rejoins as a replica of {new_name}"),
    );
    cluster.nodes[old].start()?;
    let restart = Instant::now();
    let mut exited = None;
    interrupt::wait_for(
        &format!("{old_name} rejoining as a streaming replica"),
        Duration::from_secs(90),
        Duration::from_millis(250),
        || {
            exited = cluster.nodes[old].exited();
            (exited.is_some() || cluster.nodes[old].is_replica()).then_some(())
        },
    )?;
    if let Some(status) = exited {
        return Err(DemoError::AgentExited {
            name: old_name,
            status,
        });
    }
    println!(
        "    {old_name} streams from {new_name} again after {:.1} s.",
        restart.elapsed().as_secs_f64()
    );
    let timeline_after = cluster.nodes[old].timeline();
    if let (Some(before), Some(after)) = (timeline_before, timeline_after) {
        println!(
            "    Its timeline: {after} (it was the primary on timeline {before}; the promotion of {new_name} started timeline {after})."
        );
    }
    cluster.settle()?;
    println!("{}", indent(&cluster.ctl(&["list"])));

    // ------------------------------------------------------------------ the writes
    heading(7, "Every acknowledged write, checked");
    let log = writer.stop();
    let acked: BTreeSet<i64> = log.acks.iter().map(|a| a.id).collect();
    let on_primary = table_ids(runtime, &target, new_ip)?;
    let missing = acked.difference(&on_primary).count();
    let unacknowledged = on_primary.difference(&acked).count();
    let unanswered = log.last_id.saturating_sub(acked.len() as i64);
    println!(
        "    The client sent {} INSERTs: {} acknowledged, {unanswered} without an answer (connection lost);\n    \
         {} connection attempts failed while there was no primary.",
        log.last_id,
        acked.len(),
        log.failures.len().saturating_sub(usize::try_from(unanswered).unwrap_or(0)),
    );
    println!("    Acknowledged writes missing from {new_name}: {missing}");
    if unacknowledged > 0 {
        println!(
            "    Written but never acknowledged (the connection died before the answer): {unacknowledged}"
        );
    }
    let rows = on_primary.len();
    let replayed = interrupt::wait_for(
        &format!("{old_name} replaying every row"),
        Duration::from_secs(20),
        Duration::from_millis(250),
        || {
            let ids = table_ids(runtime, &target, cluster.nodes[old].ip).ok()?;
            (ids == on_primary).then_some(())
        },
    );
    match replayed {
        Ok(()) => {
            println!("    {old_name} (now a replica) has the same {rows} rows as {new_name}.")
        }
        Err(DemoError::Interrupted) => return Err(DemoError::Interrupted),
        Err(e) => println!("    {old_name} does not have the same rows as {new_name}: {e}"),
    }
    let svg = args.logs.join("failover.svg");
    let servers: Vec<(Ipv4Addr, String)> = cluster
        .nodes
        .iter()
        .map(|n| (n.ip, n.name.clone()))
        .collect();
    let end = summary.first_after.map_or(10.0, |a| {
        timeline::offset_ms(fault, a.at) as f64 / 1000.0 + 3.0
    });
    let plot = matriarch_demo::failover::plot(
        format!("matriarch demo: {old_name} crashed (agent and PostgreSQL SIGKILLed)"),
        format!(
            "a write every 10 ms through {name}; ttl 4 s, loop_wait 1 s; write unavailability {}; {missing} acknowledged writes missing",
            unavailable.map_or_else(|| "?".to_owned(), |d| format!("{:.3} s", d.as_secs_f64()))
        ),
        &servers,
        &log.acks,
        fault,
        &marks,
        (-2.0, end),
    );
    match std::fs::write(&svg, plot.svg()) {
        Ok(()) => println!(
            "    The failover as a plot (writes per 100 ms, events marked): {}",
            svg.display()
        ),
        Err(e) => eprintln!("warning: cannot write {}: {e}", svg.display()),
    }
    write_timeline_json(
        &args.logs,
        fault,
        &events,
        unavailable,
        acked.len(),
        missing,
    );
    drop(watch);

    if args.keep {
        keep(cluster, &target, new, &args.logs);
    }
    Ok(())
}

/// Saves the timeline as JSON (for plots and comparisons) in `logs/timeline.json`.
fn write_timeline_json(
    logs: &Path,
    fault: Instant,
    events: &[Event],
    unavailable: Option<Duration>,
    acknowledged: usize,
    missing: usize,
) {
    let mut sorted: Vec<&Event> = events.iter().collect();
    sorted.sort_by_key(|e| e.at);
    let json = serde_json::json!({
        "events": sorted.iter().map(|e| serde_json::json!({
            "t_ms": timeline::offset_ms(fault, e.at),
            "event": e.what,
            "seen_by": e.seen_by,
        })).collect::<Vec<_>>(),
        "write_unavailability_ms": unavailable.map(|d| d.as_millis() as u64),
        "acknowledged_writes": acknowledged,
        "acknowledged_writes_missing": missing,
    });
    let path = logs.join("timeline.json");
    match serde_json::to_string_pretty(&json) {
        Ok(text) => {
            if let Err(e) = std::fs::write(&path, text) {
                eprintln!("warning: cannot write {}: {e}", path.display());
            }
        }
        Err(e) => eprintln!("warning: cannot encode the timeline: {e}"),
    }
}

/// `--keep`: prints how to reach the cluster and waits for Ctrl-C.
fn keep(cluster: &Cluster, target: &Target, primary: usize, logs: &Path) {
    let p = &cluster.nodes[primary];
    let psql = matriarch_testkit::bin_dir().join("psql");
    println!("\nThe cluster keeps running (--keep). Try:");
    println!(
        "    PGPASSWORD={PG_PASSWORD} {} -h {} -p {} -U {PG_USER} postgres      # {} (the primary now); the others: {}",
        psql.display(),
        p.ip,
        target.port,
        p.name,
        cluster
            .nodes
            .iter()
            .filter(|n| n.ip != p.ip)
            .map(|n| format!("-h {} ({})", n.ip, n.name))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "    dig @127.0.0.1 -p {} +short {}      # where the DNS name points",
        cluster.bind.port(),
        target.name
    );
    println!(
        "    {} ctl --api {} list",
        cluster.matriarch.display(),
        cluster.apis()
    );
    println!(
        "    {} ctl --config {} switchover --force      # REST user {API_USER}, password {API_PASSWORD}",
        cluster.matriarch.display(),
        cluster.nodes[primary].config.display()
    );
    println!("    tail -f {}/node*.log", logs.display());
    println!("Press Ctrl-C to stop the cluster and clean up.");
    while !interrupt::interrupted() {
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_parsed() {
        let args = |list: &[&str]| parse_args(list.iter().map(|s| (*s).to_owned()));
        let parsed = args(&["--matriarch", "/x/target/debug/matriarch", "--keep"])
            .unwrap()
            .unwrap();
        assert_eq!(parsed.logs, PathBuf::from("/x/target/demo"));
        assert!(parsed.keep);
        assert_eq!(parsed.failover_bound, FAILOVER_BOUND);
        let parsed = args(&["--failover-bound", "7", "--logs", "/l"])
            .unwrap()
            .unwrap();
        assert_eq!(parsed.failover_bound, Duration::from_secs(7));
        assert_eq!(parsed.logs, PathBuf::from("/l"));
        assert!(args(&["--help"]).unwrap().is_none());
        for bad in [&["--failover-bound", "0"][..], &["--logs"], &["--nope"]] {
            assert!(matches!(args(bad), Err(DemoError::Usage(_))), "{bad:?}");
        }
    }
}
