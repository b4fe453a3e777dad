//! The failover benchmark's `node-crash-under-load` scenario: pgbench at full
//! speed against the primary with about 1 GB of shared_buffers dirty when the
//! node crashes, and the WAL the promoted replica may not have.
//!
//! How the dirty gigabyte is made: every node runs with `shared_buffers = 1GB`,
//! `checkpoint_timeout = 1h` and `max_wal_size = 16GB` (no checkpoint during a
//! run) and `bgwriter_lru_maxpages = 0` (the background writer cleans nothing).
//! `pgbench -i -I dtGvp` fills `pgbench_accounts` with server-side `INSERT ...
//! SELECT` (plain inserts go through shared_buffers, unlike `COPY`'s ring buffer)
//! at scale [`SCALE`] (about 0.9 GB of heap), so the table's pages stay dirty in
//! shared_buffers; then `pgbench -c 8 -j 2` (TPC-B) runs at full speed and the
//! run waits until `pg_buffercache` counts [`DIRTY_GOAL`] bytes dirty (or
//! [`DIRTY_WAIT`] passed), reported as measured just before the crash.
//!
//! What "possibly lost" measures: the old primary's `pg_current_wal_lsn()`,
//! sampled every 10 ms over a connection of its own until the crash (the last
//! sample before the fault), minus the switch point of the promoted replica's
//! new timeline (its timeline history file: where its replay ended at the
//! promotion), in bytes; 0 when the replica had it all. The sample can lag the
//! crash by up to 10 ms of WAL, so the figure is a lower bound.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::runtime::Handle;

use crate::cluster::PG_PASSWORD;
use crate::error::{DemoError, Result};
use crate::writer::{describe, Target};

/// pgbench's scale: 70 x 100,000 accounts, about 0.9 GB of heap.
pub const SCALE: u32 = 70;
/// pgbench's clients (threads: 2, the machine's cores).
pub const CLIENTS: u32 = 8;
/// Dirty shared_buffers the run waits for before the crash.
pub const DIRTY_GOAL: u64 = 900 * 1024 * 1024;
/// How long the run waits for [`DIRTY_GOAL`] under pgbench.
pub const DIRTY_WAIT: Duration = Duration::from_secs(90);

/// The PostgreSQL settings of every node of the loaded cluster.
pub fn parameters() -> Vec<(String, String)> {
    [
        ("shared_buffers", "1GB"),
        ("checkpoint_timeout", "1h"),
        ("max_wal_size", "16GB"),
        ("bgwriter_lru_maxpages", "0"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

/// pgbench running against the primary, and the sampler of its WAL position.
pub struct Load {
    pgbench: Child,
    samples: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
    sampler: Option<tokio::task::JoinHandle<()>>,
    /// Dirty shared_buffers (bytes) last counted before the crash.
    pub dirty_bytes: u64,
    /// How long the run waited for them under pgbench.
    pub loaded_for: Duration,
    started: Instant,
}

/// `pgbench ARGS` against `ip:port` as the superuser (password by environment).
fn pgbench(target: &Target, ip: Ipv4Addr) -> Command {
    let mut cmd = Command::new(matriarch_testkit::bin_dir().join("pgbench"));
    cmd.args(["-h", &ip.to_string(), "-p", &target.port.to_string()])
        .args(["-U", &target.user, "postgres"])
        .env("PGPASSWORD", PG_PASSWORD)
        .stdin(Stdio::null());
    cmd
}

/// One value of `sql` on `ip`, as text.
async fn query_text(
    target: &Target,
    ip: Ipv4Addr,
    sql: &str,
) -> std::result::Result<String, String> {
    let client = target.connect(ip).await?;
    let row = client.query_one(sql, &[]).await.map_err(|e| describe(&e))?;
    row.try_get::<_, String>(0).map_err(|e| describe(&e))
}

/// Bytes of dirty shared_buffers on `ip` (pg_buffercache).
async fn dirty_bytes(target: &Target, ip: Ipv4Addr) -> std::result::Result<u64, String> {
    let text = query_text(
        target,
        ip,
        "SELECT (count(*) FILTER (WHERE isdirty) * current_setting('block_size')::bigint)::text \
         FROM pg_buffercache",
    )
    .await?;
    text.parse()
        .map_err(|e| format!("dirty buffers `{text}`: {e}"))
}

impl Load {
    /// Fills the primary at `ip` (`pgbench -i`), starts pgbench at full speed
    /// (its output to `log`), waits for the dirty buffers, and starts sampling
    /// the primary's WAL position.
    pub fn start(
        target: &Target,
        ip: Ipv4Addr,
        log: &std::path::Path,
        runtime: &Handle,
    ) -> Result<Load> {
        let sql_error = |detail: String| DemoError::Sql {
            target: ip.to_string(),
            detail,
        };
        let init = pgbench(target, ip)
            .args(["-i", "-I", "dtGvp", "-s", &SCALE.to_string(), "-q"])
            .output()
            .map_err(|e| DemoError::io("running pgbench -i", e))?;
        if !init.status.success() {
            return Err(sql_error(format!(
                "pgbench -i failed: {}",
                String::from_utf8_lossy(&init.stderr)
            )));
        }
        runtime
            .block_on(async {
                let client = target.connect(ip).await?;
                client
                    .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_buffercache")
                    .await
                    .map_err(|e| describe(&e))
            })
            .map_err(sql_error)?;
        let out = std::fs::File::create(log)
            .map_err(|e| DemoError::io(format!("creating {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| DemoError::io(format!("opening {}", log.display()), e))?;
        let started = Instant::now();
        let pgbench = pgbench(target, ip)
            .args([
                "-n",
                "-c",
                &CLIENTS.to_string(),
                "-j",
                "2",
                "-T",
                "3600",
                "-P",
                "5",
            ])
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| DemoError::io("running pgbench", e))?;
        let mut load = Load {
            pgbench,
            samples: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
            sampler: None,
            dirty_bytes: 0,
            loaded_for: Duration::ZERO,
            started,
        };
        loop {
            crate::interrupt::check()?;
            load.dirty_bytes = runtime
                .block_on(dirty_bytes(target, ip))
                .map_err(sql_error)?;
            if load.dirty_bytes >= DIRTY_GOAL || started.elapsed() > DIRTY_WAIT {
                break;
            }
            if let Ok(Some(status)) = load.pgbench.try_wait() {
                return Err(sql_error(format!("pgbench ended early ({status})")));
            }
            crate::interrupt::sleep(Duration::from_secs(1))?;
        }
        load.loaded_for = started.elapsed();
        load.sampler = Some(runtime.spawn(sample_lsn(
            target.clone(),
            ip,
            load.samples.clone(),
            load.stop.clone(),
        )));
        // A few samples before the fault.
        std::thread::sleep(Duration::from_millis(100));
        Ok(load)
    }

    /// Stops pgbench and the sampler; the figures of the run against the
    /// promoted primary at `new_ip` (crash at `fault`).
    pub fn finish(
        mut self,
        target: &Target,
        fault: Instant,
        new_ip: Ipv4Addr,
        runtime: &Handle,
    ) -> Value {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(sampler) = self.sampler.take() {
            let _ = runtime.block_on(sampler);
        }
        let _ = self.pgbench.kill();
        let _ = self.pgbench.wait();
        let last = self
            .samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .rev()
            .find(|(at, _)| *at <= fault)
            .cloned();
        let switchpoint = runtime.block_on(switchpoint(target, new_ip));
        let lost = match (&last, &switchpoint) {
            (Some((_, old)), Ok(new)) => runtime
                .block_on(query_text(
                    target,
                    new_ip,
                    &format!("SELECT greatest(0, pg_wal_lsn_diff('{old}', '{new}'))::bigint::text"),
                ))
                .ok()
                .and_then(|t| t.parse::<u64>().ok()),
            _ => None,
        };
        json!({
            "pgbench": format!("pgbench -i -I dtGvp -s {SCALE}; pgbench -n -c {CLIENTS} -j 2 (TPC-B, full speed) against the primary"),
            "parameters": parameters().iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            "dirty_shared_buffers_bytes_before_crash": self.dirty_bytes,
            "loaded_for_ms": self.loaded_for.as_millis() as u64,
            "pgbench_ran_ms": fault.saturating_duration_since(self.started).as_millis() as u64,
            "old_primary_last_sampled_lsn": last.as_ref().map(|(_, lsn)| lsn.clone()),
            "old_primary_sampled_before_crash_ms": last.as_ref().map(|(at, _)| fault.saturating_duration_since(*at).as_millis() as u64),
            "promoted_switchpoint_lsn": switchpoint.as_ref().ok(),
            "promoted_switchpoint_error": switchpoint.as_ref().err(),
            "possibly_lost_bytes": lost,
        })
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.pgbench.kill();
        let _ = self.pgbench.wait();
    }
}

/// Records the primary's `pg_current_wal_lsn()` every 10 ms until `stop` or
/// the connection fails (the crash).
async fn sample_lsn(
    target: Target,
    ip: Ipv4Addr,
    samples: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
) {
    let Ok(client) = target.connect(ip).await else {
        return;
    };
    while !stop.load(Ordering::SeqCst) {
        let query = client.query_one("SELECT pg_current_wal_lsn()::text", &[]);
        match tokio::time::timeout(Duration::from_millis(500), query).await {
            Ok(Ok(row)) => match row.try_get::<_, String>(0) {
                Ok(lsn) => samples
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((Instant::now(), lsn)),
                Err(_) => return,
            },
            _ => return,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Where the promoted primary at `ip` left its old timeline: the last switch
/// point in its newest timeline history file.
async fn switchpoint(target: &Target, ip: Ipv4Addr) -> std::result::Result<String, String> {
    // The newest history file is the promotion's (the names are the timelines
    // in fixed-width hex).
    let history = query_text(
        target,
        ip,
        "SELECT pg_read_file('pg_wal/' || max(name)) FROM pg_ls_waldir() \
         WHERE name LIKE '%.history'",
    )
    .await?;
    history
        .lines()
        .rfind(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(str::to_owned)
        .ok_or_else(|| format!("no switch point in the history file: {history:?}"))
}
