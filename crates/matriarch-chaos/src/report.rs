//! The run's report: what happened per fault, per fault kind and in total, as JSON
//! (`target/chaos/<run>.json`) and as a table for the terminal.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use crate::checker::{self, Ack, DeposedAck, Promotion, Stats};
use crate::faults::{FaultKind, PlannedFault};
use crate::{Dcs, Mode};

/// One fault as it happened.
#[derive(Clone, Debug, Serialize)]
pub struct FaultRecord {
    /// 0-based position in the run.
    pub index: usize,
    /// What was planned.
    pub planned: PlannedFault,
    /// The node it hit (member name), if any.
    pub node: Option<String>,
    /// The primary when it was injected.
    pub primary_before: String,
    /// The primary once the cluster was healthy again.
    pub primary_after: Option<String>,
    /// What was done.
    pub detail: String,
    /// Injection time (µs since the epoch).
    pub started_us: u64,
    /// When it was healed.
    pub healed_us: u64,
    /// When the cluster was healthy again (`None`: it did not recover in time).
    pub recovered_us: Option<u64>,
    /// For a switchover fault: how long each switchover took, from the request
    /// to the candidate answering `/primary` (ms).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub switchover_ms: Vec<f64>,
    /// From the injection to the first acknowledgement of a write sent after it.
    pub unavailability_ms: Option<f64>,
    /// The longest stretch without any acknowledgement from the injection to the
    /// next fault (or the end of the writes).
    pub worst_gap_ms: Option<f64>,
    /// Acknowledged writes in this fault's window (until the next fault).
    pub acks: usize,
    /// Acknowledged writes of this window missing from the final primary.
    pub lost: usize,
    /// Acknowledgements in this window from a deposed primary.
    pub deposed: usize,
    /// Why the fault could not be injected or healed, if it could not.
    pub error: Option<String>,
}

/// The figures of one fault kind.
#[derive(Clone, Debug, Serialize)]
pub struct KindSummary {
    /// The kind.
    pub kind: FaultKind,
    /// How often it was injected.
    pub count: usize,
    /// How often the cluster recovered from it in time.
    pub recovered: usize,
    /// Write unavailability after it.
    pub unavailability: Option<Stats>,
    /// The longest stretches without acknowledgements after it.
    pub worst_gap: Option<Stats>,
    /// Acknowledged writes lost in its windows.
    pub lost: usize,
    /// Acknowledgements from a deposed primary in its windows.
    pub deposed: usize,
}

/// Totals of the client's writes.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WriteTotals {
    /// Writes sent (the highest id).
    pub sent: i64,
    /// Writes acknowledged.
    pub acknowledged: usize,
    /// Probe writes (straight to a node out of recovery) acknowledged; they count
    /// for (a) and (b), not for (c).
    pub probe_acks: usize,
    /// Failed or timed-out attempts (writes and connections).
    pub failed_attempts: u64,
    /// Acknowledgements from an address that is no node's.
    pub foreign_acks: u64,
    /// Rows the final primary holds.
    pub final_rows: Option<usize>,
    /// The client's latest failure messages (µs since the epoch, message).
    pub last_errors: Vec<(u64, String)>,
}

/// Everything a run found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The run's name (also the JSON file's and the log directory's).
    pub run: String,
    /// The seed (`--seed` replays the fault sequence).
    pub seed: u64,
    /// The replication mode.
    pub mode: Mode,
    /// The DCS.
    pub dcs: Dcs,
    /// The kinds the faults were drawn from (`--kinds`; empty: all).
    pub kinds_requested: Vec<FaultKind>,
    /// ttl, loop_wait, retry_timeout (seconds).
    pub timing: (u64, u64, u64),
    /// How many faults were asked for.
    pub faults_requested: usize,
    /// Wall time of the whole run, in seconds.
    pub wall_time_s: f64,
    /// The JSON report.
    pub json: PathBuf,
    /// The agents', PostgreSQL's, etcd's and BIND's logs.
    pub logs: PathBuf,
    /// Every fault that ran.
    pub faults: Vec<FaultRecord>,
    /// Per fault kind.
    pub kinds: Vec<KindSummary>,
    /// The client's writes.
    pub writes: WriteTotals,
    /// The primary the final rows were read from.
    pub final_primary: Option<String>,
    /// (a) Acknowledged writes missing from the final primary (`None`: it could not be read).
    pub lost_count: Option<usize>,
    /// The first 1000 lost ids.
    pub lost_ids: Vec<i64>,
    /// (b) Acknowledgements from a deposed primary.
    pub deposed_count: usize,
    /// The first 200 of them.
    pub deposed_acks: Vec<DeposedAck>,
    /// Every promotion the checker used.
    pub promotions: Vec<Promotion>,
    /// Per promotion, the time since the last acknowledgement from another node.
    pub margins: Vec<checker::Margin>,
    /// The smallest of [`Report::margins`], in milliseconds.
    pub closest_margin_ms: Option<f64>,
    /// (c) Write unavailability over all faults.
    pub unavailability: Option<Stats>,
    /// The longest stretches without acknowledgements, over all faults.
    pub worst_gap: Option<Stats>,
    /// Why the run failed (empty: it passed).
    pub problems: Vec<String>,
    /// Log tails, when a fault was not recovered from.
    pub log_tails: Option<String>,
}

/// What [`evaluate`] needs.
pub struct Evidence<'a> {
    /// The writer's acknowledgements (through the DNS name).
    pub acks: &'a [Ack],
    /// The poller's acknowledged probe writes (straight to each node).
    pub probe_acks: &'a [Ack],
    /// The ids the final primary holds, if it could be read.
    pub final_ids: Option<&'a BTreeSet<i64>>,
    /// Every promotion.
    pub promotions: Vec<Promotion>,
    /// When the writer stopped (the end of the last fault's window).
    pub end_us: u64,
}

/// Fills in the checker's findings: per fault, per kind and in total.
pub fn evaluate(report: &mut Report, evidence: Evidence<'_>) {
    let member = |i: usize| format!("node{}", i + 1);
    let acks = evidence.acks;
    let every_ack: Vec<Ack> = acks.iter().chain(evidence.probe_acks).copied().collect();
    let starts: Vec<u64> = report.faults.iter().map(|f| f.started_us).collect();
    let lost = evidence
        .final_ids
        .map(|ids| checker::lost_acks(&every_ack, ids));
    let deposed = checker::deposed_acks(&every_ack, &evidence.promotions);
    let ack_of: std::collections::HashMap<i64, &Ack> =
        every_ack.iter().map(|a| (a.id, a)).collect();
    for (i, fault) in report.faults.iter_mut().enumerate() {
        let in_window = |t: u64| checker::window(&starts, t) == Some(i);
        fault.unavailability_ms =
            checker::unavailability(acks, fault.started_us).map(|us| us as f64 / 1000.0);
        let until = starts.get(i + 1).copied().unwrap_or(evidence.end_us);
        fault.worst_gap_ms =
            Some(checker::worst_gap(acks, fault.started_us, until) as f64 / 1000.0);
        fault.acks = acks.iter().filter(|a| in_window(a.acked_us)).count();
        fault.lost = lost
            .iter()
            .flatten()
            .filter(|id| ack_of.get(id).is_some_and(|a| in_window(a.acked_us)))
            .count();
        fault.deposed = deposed.iter().filter(|d| in_window(d.ack.acked_us)).count();
    }
    let all: Vec<&FaultRecord> = report.faults.iter().collect();
    report.unavailability = stats_of(&all, |f| f.unavailability_ms);
    report.worst_gap = stats_of(&all, |f| f.worst_gap_ms);
    report.kinds = FaultKind::ALL
        .iter()
        .filter_map(|kind| {
            let of_kind: Vec<&FaultRecord> = report
                .faults
                .iter()
                .filter(|f| f.planned.kind == *kind)
                .collect();
            if of_kind.is_empty() {
                return None;
            }
            Some(KindSummary {
                kind: *kind,
                count: of_kind.len(),
                recovered: of_kind.iter().filter(|f| f.recovered_us.is_some()).count(),
                unavailability: stats_of(&of_kind, |f| f.unavailability_ms),
                worst_gap: stats_of(&of_kind, |f| f.worst_gap_ms),
                lost: of_kind.iter().map(|f| f.lost).sum(),
                deposed: of_kind.iter().map(|f| f.deposed).sum(),
            })
        })
        .collect();
    report.lost_count = lost.as_ref().map(Vec::len);
    report.lost_ids = lost.iter().flatten().take(1000).copied().collect();
    report.deposed_count = deposed.len();
    report.deposed_acks = deposed.iter().take(200).copied().collect();
    report.margins = checker::margins(acks, &evidence.promotions);
    report.closest_margin_ms = report
        .margins
        .iter()
        .map(|m| m.margin_us as f64 / 1000.0)
        .reduce(f64::min);
    report.promotions = evidence.promotions;
    report.writes.acknowledged = acks.len();
    report.writes.probe_acks = evidence.probe_acks.len();
    match report.lost_count {
        None => report
            .problems
            .push("the final primary's rows could not be read: lost writes unknown".into()),
        Some(n) if n > 0 && report.mode.is_synchronous() => report.problems.push(format!(
            "{n} acknowledged writes are missing from the final primary in {} mode",
            report.mode.name()
        )),
        _ => {}
    }
    if !deposed.is_empty() {
        let first = &deposed[0];
        report.problems.push(format!(
            "{} writes were acknowledged by a deposed primary (first: id {} by {} after {} was promoted)",
            deposed.len(),
            first.ack.id,
            member(first.ack.node),
            member(first.by)
        ));
    }
    for fault in &report.faults {
        if let (Some(error), Some(_)) = (&fault.error, fault.recovered_us) {
            report.problems.push(format!(
                "fault #{} ({}) could not be injected or healed as planned: {error}",
                fault.index,
                fault.planned.kind.name()
            ));
        }
        if fault.recovered_us.is_none() {
            report.problems.push(format!(
                "fault #{} ({}) : the cluster did not recover{}",
                fault.index,
                fault.planned.kind.name(),
                fault
                    .error
                    .as_ref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ));
        }
    }
}

/// The statistics of one per-fault figure (milliseconds) over `faults`.
fn stats_of(
    faults: &[&FaultRecord],
    figure: impl Fn(&FaultRecord) -> Option<f64>,
) -> Option<Stats> {
    let values: Vec<u64> = faults
        .iter()
        .filter_map(|f| figure(f).map(|ms| (ms * 1000.0) as u64))
        .collect();
    checker::stats(&values)
}

/// The `cargo xtask chaos` command that replays a run's fault sequence
/// (`kinds` empty: all kinds).
pub fn replay_command(
    seed: u64,
    faults: usize,
    mode: Mode,
    dcs: Dcs,
    kinds: &[FaultKind],
) -> String {
    let mut cmd = format!(
        "cargo xtask chaos --seed {seed} --faults {faults} --mode {}",
        mode.name()
    );
    if dcs != Dcs::Etcd {
        cmd.push_str(&format!(" --dcs {}", dcs.name()));
    }
    if !kinds.is_empty() {
        let kinds: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
        cmd.push_str(&format!(" --kinds {}", kinds.join(",")));
    }
    cmd
}

fn ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into())
}

impl Report {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }

    /// The command that replays this run's fault sequence.
    pub fn replay(&self) -> String {
        replay_command(
            self.seed,
            self.faults_requested,
            self.mode,
            self.dcs,
            &self.kinds_requested,
        )
    }

    /// Which kinds ran at least once.
    pub fn kinds_run(&self) -> BTreeSet<FaultKind> {
        self.faults.iter().map(|f| f.planned.kind).collect()
    }

    /// A readable summary: per fault, per kind, totals, verdict.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "chaos run {} — mode {}, dcs {}, seed {}, {} faults, ttl/loop_wait/retry_timeout {}/{}/{} s, {:.0} s",
            self.run,
            self.mode.name(),
            self.dcs.name(),
            self.seed,
            self.faults.len(),
            self.timing.0,
            self.timing.1,
            self.timing.2,
            self.wall_time_s
        );
        let _ = writeln!(
            s,
            "\n  #  {:<26} {:<6} {:>7} {:>9} {:>8} {:>8} {:>6} {:>5} {:>7}  detail",
            "fault", "node", "hold ms", "recov ms", "unavl ms", "gap ms", "acks", "lost", "deposed"
        );
        for f in &self.faults {
            let recovery = f
                .recovered_us
                .map(|r| (r.saturating_sub(f.healed_us)) as f64 / 1000.0);
            let _ = writeln!(
                s,
                "{:>3}  {:<26} {:<6} {:>7} {:>9} {:>8} {:>8} {:>6} {:>5} {:>7}  {}{}",
                f.index,
                f.planned.kind.name(),
                f.node.as_deref().unwrap_or("-"),
                f.planned.hold_ms,
                recovery
                    .map(|r| format!("{r:.0}"))
                    .unwrap_or_else(|| "NO".into()),
                ms(f.unavailability_ms),
                ms(f.worst_gap_ms),
                f.acks,
                f.lost,
                f.deposed,
                f.detail,
                if f.primary_after.as_deref() != Some(f.primary_before.as_str()) {
                    format!(
                        " [primary {} -> {}]",
                        f.primary_before,
                        f.primary_after.as_deref().unwrap_or("?")
                    )
                } else {
                    String::new()
                }
            );
        }
        let _ = writeln!(
            s,
            "\n  {:<26} {:>5} {:>9} {:>12} {:>11} {:>10} {:>9} {:>5} {:>7}",
            "kind",
            "runs",
            "recovered",
            "unavl median",
            "unavl worst",
            "gap median",
            "gap worst",
            "lost",
            "deposed"
        );
        for k in &self.kinds {
            let _ = writeln!(
                s,
                "  {:<26} {:>5} {:>9} {:>12} {:>11} {:>10} {:>9} {:>5} {:>7}",
                k.kind.name(),
                k.count,
                k.recovered,
                ms(k.unavailability.map(|u| u.median_ms)),
                ms(k.unavailability.map(|u| u.worst_ms)),
                ms(k.worst_gap.map(|u| u.median_ms)),
                ms(k.worst_gap.map(|u| u.worst_ms)),
                k.lost,
                k.deposed
            );
        }
        let _ = writeln!(
            s,
            "\n  writes: {} sent, {} acknowledged (+{} probe writes), {} failed attempts; final primary {} with {} rows",
            self.writes.sent,
            self.writes.acknowledged,
            self.writes.probe_acks,
            self.writes.failed_attempts,
            self.final_primary.as_deref().unwrap_or("?"),
            self.writes
                .final_rows
                .map(|r| r.to_string())
                .unwrap_or_else(|| "?".into())
        );
        let _ = writeln!(
            s,
            "  (a) lost acknowledged writes: {}   (b) acknowledged by a deposed primary: {} (closest call: {})\n  (c) unavailability median {} ms, worst {} ms; longest gap without acks median {} ms, worst {} ms",
            self.lost_count
                .map(|n| n.to_string())
                .unwrap_or_else(|| "unknown".into()),
            self.deposed_count,
            self.closest_margin_ms
                .map(|m| format!("a promotion {m:.0} ms after another node's last ack"))
                .unwrap_or_else(|| "no promotion".into()),
            ms(self.unavailability.map(|u| u.median_ms)),
            ms(self.unavailability.map(|u| u.worst_ms)),
            ms(self.worst_gap.map(|u| u.median_ms)),
            ms(self.worst_gap.map(|u| u.worst_ms)),
        );
        let _ = writeln!(
            s,
            "  report: {}\n  logs:   {}",
            self.json.display(),
            self.logs.display()
        );
        if self.passed() {
            let _ = writeln!(s, "  PASSED");
        } else {
            let _ = writeln!(s, "  FAILED:");
            for p in &self.problems {
                let _ = writeln!(s, "    - {p}");
            }
            let _ = writeln!(s, "  replay: {}", self.replay());
        }
        s
    }
}
