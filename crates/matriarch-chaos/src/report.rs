//! The run's report: what happened per fault, per fault kind and in total, as JSON
//! (`target/chaos/<run>.json`) and as a table for the terminal.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use crate::checker::{self, Ack, DeposedAck, Promotion, Stats};
use crate::faults::{FaultKind, PlannedFault};
use crate::settings::RunSettings;

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
    /// What the checker found in this fault's window.
    #[serde(flatten)]
    pub window: WindowFigures,
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
    /// (c) over its windows.
    #[serde(flatten)]
    pub outage: OutageStats,
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
    /// What the run was asked to do (the seed, `--kinds`, … replay it).
    #[serde(flatten)]
    pub settings: RunSettings,
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
    /// What the checker found over the whole run.
    #[serde(flatten)]
    pub findings: Findings,
    /// Why the run failed (empty: it passed).
    pub problems: Vec<String>,
    /// Log tails, when a fault was not recovered from.
    pub log_tails: Option<String>,
}

/// The checker's figures of one fault's window, from its injection to the next
/// fault (filled in by [`evaluate`]).
#[derive(Clone, Debug, Default, Serialize)]
pub struct WindowFigures {
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
}

/// The checker's findings over the whole run (filled in by [`evaluate`]).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Findings {
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
    /// The smallest of [`Findings::margins`], in milliseconds.
    pub closest_margin_ms: Option<f64>,
    /// (c) over all faults.
    #[serde(flatten)]
    pub outage: OutageStats,
}

/// (c) over a set of fault windows: the median and worst of their figures.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct OutageStats {
    /// Write unavailability after each fault.
    pub unavailability: Option<Stats>,
    /// The longest stretch without acknowledgements in each window.
    pub worst_gap: Option<Stats>,
}

impl OutageStats {
    /// The statistics of `faults`' windows.
    fn over(faults: &[&FaultRecord]) -> OutageStats {
        let stats_of = |figure: fn(&WindowFigures) -> Option<f64>| {
            let values: Vec<u64> = faults
                .iter()
                .filter_map(|f| figure(&f.window).map(|ms| (ms * 1000.0) as u64))
                .collect();
            checker::stats(&values)
        };
        OutageStats {
            unavailability: stats_of(|w| w.unavailability_ms),
            worst_gap: stats_of(|w| w.worst_gap_ms),
        }
    }

    /// Unavailability median and worst, gap median and worst, in whole
    /// milliseconds (`-` where no fault gave a figure).
    fn columns(&self) -> [String; 4] {
        let median = |s: Option<Stats>| ms(s.map(|s| s.median_ms));
        let worst = |s: Option<Stats>| ms(s.map(|s| s.worst_ms));
        [
            median(self.unavailability),
            worst(self.unavailability),
            median(self.worst_gap),
            worst(self.worst_gap),
        ]
    }
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
        let until = starts.get(i + 1).copied().unwrap_or(evidence.end_us);
        fault.window = WindowFigures {
            unavailability_ms: checker::unavailability(acks, fault.started_us)
                .map(|us| us as f64 / 1000.0),
            worst_gap_ms: Some(checker::worst_gap(acks, fault.started_us, until) as f64 / 1000.0),
            acks: acks.iter().filter(|a| in_window(a.acked_us)).count(),
            lost: lost
                .iter()
                .flatten()
                .filter(|id| ack_of.get(id).is_some_and(|a| in_window(a.acked_us)))
                .count(),
            deposed: deposed.iter().filter(|d| in_window(d.ack.acked_us)).count(),
        };
    }
    let all: Vec<&FaultRecord> = report.faults.iter().collect();
    let margins = checker::margins(acks, &evidence.promotions);
    report.findings = Findings {
        lost_count: lost.as_ref().map(Vec::len),
        lost_ids: lost.iter().flatten().take(1000).copied().collect(),
        deposed_count: deposed.len(),
        deposed_acks: deposed.iter().take(200).copied().collect(),
        closest_margin_ms: margins
            .iter()
            .map(|m| m.margin_us as f64 / 1000.0)
            .reduce(f64::min),
        margins,
        promotions: evidence.promotions,
        outage: OutageStats::over(&all),
    };
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
                outage: OutageStats::over(&of_kind),
                lost: of_kind.iter().map(|f| f.window.lost).sum(),
                deposed: of_kind.iter().map(|f| f.window.deposed).sum(),
            })
        })
        .collect();
    report.writes.acknowledged = acks.len();
    report.writes.probe_acks = evidence.probe_acks.len();
    let mode = report.settings.mode;
    match report.findings.lost_count {
        None => report
            .problems
            .push("the final primary's rows could not be read: lost writes unknown".into()),
        Some(n) if n > 0 && mode.is_synchronous() => report.problems.push(format!(
            "{n} acknowledged writes are missing from the final primary in {} mode",
            mode.name()
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
        self.settings.replay_command()
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
            self.settings.mode.name(),
            self.settings.dcs.name(),
            self.settings.seed,
            self.faults.len(),
            self.settings.timing.0,
            self.settings.timing.1,
            self.settings.timing.2,
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
                ms(f.window.unavailability_ms),
                ms(f.window.worst_gap_ms),
                f.window.acks,
                f.window.lost,
                f.window.deposed,
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
            let [unavailability_median, unavailability_worst, gap_median, gap_worst] =
                k.outage.columns();
            let _ = writeln!(
                s,
                "  {:<26} {:>5} {:>9} {:>12} {:>11} {:>10} {:>9} {:>5} {:>7}",
                k.kind.name(),
                k.count,
                k.recovered,
                unavailability_median,
                unavailability_worst,
                gap_median,
                gap_worst,
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
        let [unavailability_median, unavailability_worst, gap_median, gap_worst] =
            self.findings.outage.columns();
        let _ = writeln!(
            s,
            "  (a) lost acknowledged writes: {}   (b) acknowledged by a deposed primary: {} (closest call: {})\n  (c) unavailability median {} ms, worst {} ms; longest gap without acks median {} ms, worst {} ms",
            self.findings.lost_count
                .map(|n| n.to_string())
                .unwrap_or_else(|| "unknown".into()),
            self.findings.deposed_count,
            self.findings.closest_margin_ms
                .map(|m| format!("a promotion {m:.0} ms after another node's last ack"))
                .unwrap_or_else(|| "no promotion".into()),
            unavailability_median,
            unavailability_worst,
            gap_median,
            gap_worst,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::ack;
    use crate::faults::{BadKey, Target};
    use crate::settings::{Dcs, Mode};

    fn planned(kind: FaultKind) -> PlannedFault {
        PlannedFault {
            kind,
            target: Target::Primary,
            hold_ms: 1000,
            bad_key: BadKey::Leader,
            variant: 0,
        }
    }

    fn fault(index: usize, kind: FaultKind, started_ms: u64) -> FaultRecord {
        FaultRecord {
            index,
            planned: planned(kind),
            node: Some("node1".into()),
            primary_before: "node1".into(),
            primary_after: Some("node2".into()),
            detail: "done".into(),
            started_us: started_ms * 1000,
            healed_us: started_ms * 1000 + 1_000_000,
            recovered_us: Some(started_ms * 1000 + 2_000_000),
            switchover_ms: Vec::new(),
            window: WindowFigures::default(),
            error: None,
        }
    }

    /// A synchronous run of two node kills, as `scenario` hands it to [`evaluate`].
    fn sample_report() -> Report {
        Report {
            run: "synchronous-seed7-1".into(),
            settings: RunSettings {
                seed: 7,
                mode: Mode::Synchronous,
                dcs: Dcs::Etcd,
                kinds: vec![FaultKind::NodeKill],
                timing: (5, 1, 2),
                faults: 2,
            },
            wall_time_s: 0.0,
            json: "target/chaos/run.json".into(),
            logs: "target/chaos/run".into(),
            faults: vec![
                fault(0, FaultKind::NodeKill, 1000),
                fault(1, FaultKind::NodeKill, 5000),
            ],
            kinds: Vec::new(),
            writes: WriteTotals::default(),
            final_primary: Some("node2".into()),
            findings: Findings::default(),
            problems: Vec::new(),
            log_tails: None,
        }
    }

    fn evaluated() -> Report {
        let mut report = sample_report();
        let acks = [
            ack(1, 0, 900, 950),
            ack(2, 0, 1100, 1400),
            ack(3, 1, 5200, 5300),
        ];
        let final_ids: BTreeSet<i64> = [1, 3].into_iter().collect();
        let promotions = checker::promotions(Some(0), &[(1, 4_000_000)], &[]);
        evaluate(
            &mut report,
            Evidence {
                acks: &acks,
                probe_acks: &[],
                final_ids: Some(&final_ids),
                promotions,
                end_us: 9_000_000,
            },
        );
        report
    }

    #[test]
    fn evaluate_fills_in_each_fault_window_each_kind_and_the_verdict() {
        let report = evaluated();
        let first = &report.faults[0];
        assert_eq!(first.window.unavailability_ms, Some(400.0));
        assert_eq!((first.window.acks, first.window.lost), (1, 1));
        assert_eq!(report.faults[1].window.acks, 1);
        assert_eq!(report.kinds.len(), 1);
        assert_eq!(report.kinds[0].count, 2);
        assert_eq!(report.findings.lost_count, Some(1));
        assert_eq!(report.findings.lost_ids, vec![2]);
        assert!(!report.passed(), "a lost write fails a synchronous run");
        assert!(report.problems[0].contains("1 acknowledged writes are missing"));
        assert_eq!(
            report.replay(),
            "cargo xtask chaos --seed 7 --faults 2 --mode synchronous --kinds node-kill"
        );
    }

    #[test]
    fn the_json_report_keeps_its_field_names() {
        let text = serde_json::to_string(&evaluated()).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let keys = |v: &serde_json::Value| -> Vec<String> {
            v.as_object().unwrap().keys().cloned().collect()
        };
        assert_eq!(
            keys(&json),
            [
                "closest_margin_ms",
                "dcs",
                "deposed_acks",
                "deposed_count",
                "faults",
                "faults_requested",
                "final_primary",
                "json",
                "kinds",
                "kinds_requested",
                "log_tails",
                "logs",
                "lost_count",
                "lost_ids",
                "margins",
                "mode",
                "problems",
                "promotions",
                "run",
                "seed",
                "timing",
                "unavailability",
                "wall_time_s",
                "worst_gap",
                "writes",
            ]
        );
        assert_eq!(
            keys(&json["faults"][0]),
            [
                "acks",
                "deposed",
                "detail",
                "error",
                "healed_us",
                "index",
                "lost",
                "node",
                "planned",
                "primary_after",
                "primary_before",
                "recovered_us",
                "started_us",
                "unavailability_ms",
                "worst_gap_ms",
            ]
        );
        assert_eq!(
            keys(&json["kinds"][0]),
            [
                "count",
                "deposed",
                "kind",
                "lost",
                "recovered",
                "unavailability",
                "worst_gap"
            ]
        );
        assert_eq!(json["kinds_requested"], serde_json::json!(["node-kill"]));
        assert_eq!(json["faults_requested"], 2);
        assert_eq!(json["timing"], serde_json::json!([5, 1, 2]));
        assert_eq!(json["lost_count"], 1);
        assert_eq!(json["faults"][0]["unavailability_ms"], 400.0);
    }
}
