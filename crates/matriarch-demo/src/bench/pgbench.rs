//! pgbench for the stability benchmark: `pgbench -i` and runs against one
//! node, and what each run's log says ([`Segment`]: a run that ended early is
//! followed by another, so one incident does not end the benchmark).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

use crate::cluster::{Node, PG_PASSWORD, PG_USER};
use crate::error::{DemoError, Result};

/// pgbench's progress interval (`-P`), in seconds.
const PROGRESS_S: u32 = 5;

/// pgbench with `clients` clients on `threads` threads against one node.
pub struct Pgbench {
    program: PathBuf,
    host: String,
    port: String,
    clients: u32,
    threads: u32,
}

impl Pgbench {
    /// pgbench against `node`'s PostgreSQL.
    pub fn new(node: &Node, clients: u32, threads: u32) -> Pgbench {
        Pgbench {
            program: matriarch_testkit::bin_dir().join("pgbench"),
            host: node.ip.to_string(),
            port: node.pg_port.to_string(),
            clients,
            threads,
        }
    }

    /// `host:port`.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The arguments of a run of `secs` seconds.
    pub fn run_args(&self, secs: u64) -> Vec<String> {
        vec![
            format!("-c{}", self.clients),
            format!("-j{}", self.threads),
            format!("-T{secs}"),
            format!("-P{PROGRESS_S}"),
        ]
    }

    fn command(&self, extra: &[String]) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(["-h", &self.host, "-p", &self.port, "-U", PG_USER])
            .args(extra)
            .arg("postgres")
            .env("PGPASSWORD", PG_PASSWORD)
            .stdin(Stdio::null());
        cmd
    }

    /// `pgbench -i` at a scale of one per client (each client its own branch row).
    pub fn initialize(&self) -> Result<()> {
        let init = self
            .command(&["-i".into(), "-q".into(), format!("-s{}", self.clients)])
            .output()
            .map_err(|e| DemoError::io(format!("running {}", self.program.display()), e))?;
        if init.status.success() {
            Ok(())
        } else {
            Err(DemoError::Setup(format!(
                "pgbench -i failed: {}",
                String::from_utf8_lossy(&init.stderr)
            )))
        }
    }

    /// Starts a run of `secs` seconds, its output into `log_path`.
    pub fn spawn(&self, secs: u64, log_path: &Path) -> Result<Child> {
        let log = fs::File::create(log_path)
            .map_err(|e| DemoError::io(format!("creating {}", log_path.display()), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| DemoError::io(format!("opening {}", log_path.display()), e))?;
        self.command(&self.run_args(secs))
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| DemoError::io(format!("running {}", self.program.display()), e))
    }
}

/// One pgbench run of the benchmark.
#[derive(Debug)]
pub struct Segment {
    /// When it started and ended, in seconds from the benchmark's start.
    pub span_s: [f64; 2],
    /// Its arguments and where it connected.
    pub command: String,
    /// How it ended.
    pub exit: String,
    /// Whether it ended well (its full time, no client aborted).
    pub ok: bool,
    /// Its log.
    pub log: PathBuf,
    /// What the log says.
    pub report: PgbenchReport,
}

impl Segment {
    fn to_json(&self) -> Value {
        json!({
            "span_s": self.span_s,
            "command": self.command,
            "exit": self.exit,
            "ok": self.ok,
            "tps": self.report.tps,
            "transactions": self.report.transactions,
            "failed_transactions": self.report.failed,
            "errors": self.report.aborted,
            "log": self.log.display().to_string(),
        })
    }
}

/// The runs together: totals, every error, tps every 5 s over the whole time.
pub fn summary(segments: &[Segment]) -> Value {
    let transactions: u64 = segments.iter().filter_map(|s| s.report.transactions).sum();
    let seconds: f64 = segments.iter().map(|s| s.span_s[1] - s.span_s[0]).sum();
    let progress: Vec<[f64; 2]> = segments
        .iter()
        .flat_map(|s| s.report.progress.iter().map(|p| [p[0] + s.span_s[0], p[1]]))
        .collect();
    let errors: Vec<&String> = segments.iter().flat_map(|s| &s.report.aborted).collect();
    json!({
        "ok": segments.len() == 1 && segments.iter().all(|s| s.ok),
        "restarts": segments.len().saturating_sub(1),
        "transactions": transactions,
        "tps": if seconds > 0.0 { transactions as f64 / seconds } else { 0.0 },
        "errors": errors,
        "lowest_progress_tps": progress.iter().map(|p| p[1]).reduce(f64::min),
        "progress_tps": progress,
        "runs": segments.iter().map(Segment::to_json).collect::<Vec<_>>(),
    })
}

/// What pgbench's log says.
#[derive(Debug, Default, PartialEq)]
pub struct PgbenchReport {
    /// The final tps.
    pub tps: Option<f64>,
    /// Transactions processed.
    pub transactions: Option<u64>,
    /// Its line on failed transactions.
    pub failed: Option<String>,
    /// Its error lines (a client that hit an error is aborted), the first 20.
    pub aborted: Vec<String>,
    /// `[seconds, tps]` per progress line.
    pub progress: Vec<[f64; 2]>,
}

impl PgbenchReport {
    /// Reads the log at `path` (an unreadable log says nothing).
    pub fn read(path: &Path) -> PgbenchReport {
        PgbenchReport::parse(&fs::read_to_string(path).unwrap_or_default())
    }

    fn parse(output: &str) -> PgbenchReport {
        let find = |prefix: &str| {
            output
                .lines()
                .find_map(|l| l.trim().strip_prefix(prefix))
                .map(|v| v.trim().to_owned())
        };
        // progress: 5.0 s, 1234.5 tps, lat 3.2 ms stddev 1.1, 0 failed
        let progress = output
            .lines()
            .filter_map(|l| {
                let mut fields = l.strip_prefix("progress: ")?.split(", ");
                let t = fields.next()?.strip_suffix(" s")?.parse().ok()?;
                let tps = fields.next()?.strip_suffix(" tps")?.parse().ok()?;
                Some([t, tps])
            })
            .collect();
        PgbenchReport {
            tps: find("tps = ").and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok()),
            transactions: find("number of transactions actually processed:")
                .and_then(|v| v.split('/').next()?.trim().parse::<u64>().ok()),
            failed: find("number of failed transactions:"),
            aborted: output
                .lines()
                .filter(|l| l.contains("error") || l.contains("aborted"))
                .take(20)
                .map(str::to_owned)
                .collect(),
            progress,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABORTED: &str = "progress: 5.0 s, 1200.5 tps, lat 3.3 ms stddev 1.0, 0 failed\n\
        progress: 10.0 s, 310.0 tps, lat 12.9 ms stddev 9.0, 0 failed\n\
        pgbench: error: client 2 aborted in command 4 (SQL) of script 0; perhaps the backend died while processing\n\
        number of transactions actually processed: 7552\n\
        number of failed transactions: 0 (0.000%)\n\
        tps = 755.2 (without initial connection time)\n";

    #[test]
    fn pgbench_output_is_read() {
        let report = PgbenchReport::parse(ABORTED);
        assert_eq!(report.tps, Some(755.2));
        assert_eq!(report.transactions, Some(7552));
        assert_eq!(report.failed.as_deref(), Some("0 (0.000%)"));
        assert_eq!(report.progress, vec![[5.0, 1200.5], [10.0, 310.0]]);
        assert_eq!(report.aborted.len(), 1);
        assert!(report.aborted[0].contains("client 2"));
    }

    #[test]
    fn runs_add_up_and_a_restart_is_not_ok() {
        let run = |span_s: [f64; 2], ok: bool| Segment {
            span_s,
            command: String::new(),
            exit: String::new(),
            ok,
            log: PathBuf::new(),
            report: PgbenchReport::parse(ABORTED),
        };
        let one = summary(&[run([0.0, 10.0], true)]);
        assert_eq!(one["ok"], true);
        let two = summary(&[run([0.0, 10.0], false), run([12.0, 22.0], true)]);
        assert_eq!(two["ok"], false);
        assert_eq!(two["restarts"], 1);
        assert_eq!(two["transactions"], 2 * 7552);
        assert_eq!(two["tps"], 755.2);
        assert_eq!(two["lowest_progress_tps"], 310.0);
        assert_eq!(two["progress_tps"][3], json!([22.0, 310.0]));
        assert_eq!(two["errors"].as_array().map(Vec::len), Some(2));
    }
}
