//! The stability benchmark: pgbench against the primary while the leader key is
//! watched; every change of leadership is a failover nothing caused.

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::runtime::Handle;

use super::{machine, settings, unix_time, write_json, Bench, Paths};
use crate::cluster::{PG_PASSWORD, PG_USER};
use crate::error::{DemoError, Result};
use crate::interrupt;
use crate::watch::LockEvent;

/// Runs pgbench for `duration` against the primary of a fresh cluster while the
/// leader key is watched; writes `stability.json` into `args.out`. Whether
/// pgbench succeeded and leadership never changed.
pub fn stability_bench(args: &Paths, duration: Duration, runtime: &Handle) -> Result<bool> {
    println!(
        "matriarch-bench stability: pgbench for {:.1} min against the primary, watching the leader lock",
        duration.as_secs_f64() / 60.0
    );
    let logs = args.out.join("logs").join("stability");
    let mut bench = Bench::start(&args.matriarch, &logs, runtime)?;
    let primary = bench.cluster.wait_healthy(Duration::from_secs(60))?;
    let first = bench.cluster.nodes[primary].name.clone();
    let ip = bench.cluster.nodes[primary].ip;
    let port = bench.target.port;
    let pgbench = matriarch_testkit::bin_dir().join("pgbench");
    let pg = |extra: &[String]| {
        let mut cmd = Command::new(&pgbench);
        cmd.args([
            "-h",
            &ip.to_string(),
            "-p",
            &port.to_string(),
            "-U",
            PG_USER,
        ])
        .args(extra)
        .arg("postgres")
        .env("PGPASSWORD", PG_PASSWORD)
        .stdin(Stdio::null());
        cmd
    };
    println!("  primary: {first} ({ip}); pgbench -i ...");
    let init = pg(&["-i".to_owned(), "-q".to_owned()])
        .output()
        .map_err(|e| DemoError::io(format!("running {}", pgbench.display()), e))?;
    if !init.status.success() {
        return Err(DemoError::Setup(format!(
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&init.stderr)
        )));
    }
    let secs = duration.as_secs().max(1);
    let log_path = logs.join("pgbench.log");
    let log = fs::File::create(&log_path)
        .map_err(|e| DemoError::io(format!("creating {}", log_path.display()), e))?;
    let log2 = log
        .try_clone()
        .map_err(|e| DemoError::io(format!("opening {}", log_path.display()), e))?;
    let start = Instant::now();
    println!("  pgbench -T {secs} (default settings: scale 1, 1 client) ...");
    let mut child = pg(&["-T".to_owned(), secs.to_string()])
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(|e| DemoError::io(format!("running {}", pgbench.display()), e))?;
    let mut reported = 0;
    let status = loop {
        if let Err(e) = interrupt::check() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(DemoError::io("waiting for pgbench", e)),
        }
        let minutes = start.elapsed().as_secs() / 60;
        if minutes > reported {
            // A sign of life once a minute.
            reported = minutes;
            println!("  {minutes} min ...");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let took = start.elapsed();
    // Leadership changes seen by the watch: the lock deleted, or held by another.
    let mut holder = first.clone();
    let mut changes = Vec::new();
    for (at, event) in bench.watch.events_since(start) {
        let t = at.duration_since(start).as_secs_f64();
        match event {
            LockEvent::Released => {
                changes.push(json!({"t_s": t, "event": format!("lock of {holder} deleted")}))
            }
            LockEvent::Held(h) if h != holder => {
                changes.push(json!({"t_s": t, "event": format!("lock taken by {h}")}));
                holder = h;
            }
            LockEvent::Held(_) => {}
        }
    }
    let after = bench
        .cluster
        .primary()
        .map(|i| bench.cluster.nodes[i].name.clone());
    let failovers = changes
        .iter()
        .filter(|c| {
            c["event"]
                .as_str()
                .is_some_and(|e| e.starts_with("lock taken"))
        })
        .count();
    let lock_losses = changes.len() - failovers;
    let output = fs::read_to_string(&log_path).unwrap_or_default();
    let find = |prefix: &str| {
        output
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .map(|v| v.trim().to_owned())
    };
    let tps = find("tps = ").and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok());
    let transactions =
        find("number of transactions actually processed:").and_then(|v| v.parse::<u64>().ok());
    let failed = find("number of failed transactions:");
    let results = json!({
        "benchmark": "stability",
        "finished_at_unix": unix_time(),
        "machine": machine(),
        "matriarch": args.matriarch.display().to_string(),
        "settings": settings(),
        "minutes": took.as_secs_f64() / 60.0,
        "pgbench": {
            "command": format!("pgbench -i; pgbench -T {secs} (scale 1, 1 client, 1 thread) against the primary {ip}:{port}"),
            "exit": status.to_string(),
            "ok": status.success(),
            "tps": tps,
            "transactions": transactions,
            "failed_transactions": failed,
            "log": log_path.display().to_string(),
        },
        "primary_before": first,
        "primary_after": after,
        "leadership_changes": changes,
        "lock_losses": lock_losses,
        "failovers_without_cause": failovers,
    });
    let path = args.out.join("stability.json");
    write_json(&path, &results)?;
    bench.cluster.shutdown();
    println!(
        "\n  pgbench: {} ({} transactions, {} tps)\n  leadership changes: {}; failovers nothing caused: {failovers} (must be 0)\n  primary before: {first}, after: {}\nResults: {}",
        status,
        transactions.map_or_else(|| "?".into(), |t| t.to_string()),
        tps.map_or_else(|| "?".into(), |t| format!("{t:.0}")),
        changes.len(),
        after.as_deref().unwrap_or("none"),
        path.display()
    );
    Ok(status.success() && changes.is_empty() && after.as_deref() == Some(first.as_str()))
}
