//! The checker: pure functions over what the run recorded (the client's
//! acknowledgements, the nodes' promotions, the final primary's rows, the fault
//! times). No I/O, no clock: every time is microseconds since the Unix epoch, read
//! from the same machine's wall clock by the client, the poller and PostgreSQL.

use std::collections::BTreeSet;

use serde::Serialize;

/// One acknowledged write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Ack {
    /// The row's id (unique, increasing in send order).
    pub id: i64,
    /// The node that acknowledged it (from `inet_server_addr()`).
    pub node: usize,
    /// When the `INSERT` was sent.
    pub sent_us: u64,
    /// When its acknowledgement arrived.
    pub acked_us: u64,
}

/// Where a promotion time comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Evidence {
    /// The node the cluster was bootstrapped on: primary since before the run.
    Initial,
    /// PostgreSQL's own log line `selected new timeline ID` (millisecond epoch
    /// timestamp from `log_line_prefix = '%n ...'`): the instant recovery ended.
    ServerLog,
    /// The poller saw `pg_is_in_recovery()` go from true to false and no log line
    /// explains it: the promotion is dated at the last poll that still saw the node
    /// in recovery (the earliest it can have happened).
    Poll,
}

/// A node becoming primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Promotion {
    /// The node.
    pub node: usize,
    /// When (see [`Evidence`]); 0 for [`Evidence::Initial`].
    pub at_us: u64,
    /// How the time was found.
    pub evidence: Evidence,
}

/// What the poller saw: a node in recovery at `earliest_us`, out of it at `observed_us`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PollPromotion {
    /// The node.
    pub node: usize,
    /// The last poll that saw it in recovery.
    pub earliest_us: u64,
    /// The first poll that saw it out of recovery.
    pub observed_us: u64,
}

/// How far around a poll window a log line still explains it.
const MATCH_SLACK_US: u64 = 1_000_000;

/// Every promotion, in time order: the initial primary (at 0), each `selected new
/// timeline ID` of a server log, and each poll-observed promotion that no log line
/// of the same node explains (dated at its earliest possible instant).
pub fn promotions(
    initial: Option<usize>,
    log: &[(usize, u64)],
    polls: &[PollPromotion],
) -> Vec<Promotion> {
    let mut all: Vec<Promotion> = Vec::new();
    if let Some(node) = initial {
        all.push(Promotion {
            node,
            at_us: 0,
            evidence: Evidence::Initial,
        });
    }
    for &(node, at_us) in log {
        all.push(Promotion {
            node,
            at_us,
            evidence: Evidence::ServerLog,
        });
    }
    for p in polls {
        let explained = log.iter().any(|&(node, at)| {
            node == p.node
                && at + MATCH_SLACK_US >= p.earliest_us
                && at <= p.observed_us + MATCH_SLACK_US
        });
        if !explained {
            all.push(Promotion {
                node: p.node,
                at_us: p.earliest_us,
                evidence: Evidence::Poll,
            });
        }
    }
    all.sort_by_key(|p| (p.at_us, p.node));
    all
}

/// An acknowledgement from a node that was no longer the newest primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct DeposedAck {
    /// The acknowledged write.
    pub ack: Ack,
    /// The node that had been promoted after the acknowledging node's own last
    /// promotion, before the acknowledgement arrived.
    pub by: usize,
    /// When that node was promoted.
    pub promoted_at_us: u64,
}

/// Rule (b): an acknowledgement from node A is flagged when the latest promotion
/// at or before its arrival is another node's: B (≠ A) became primary and A was
/// not promoted again since. The arrival time (not the send time) is used and a
/// promotion at the very same microsecond counts, so that the rule errs on the
/// side of flagging.
pub fn deposed_acks(acks: &[Ack], promotions: &[Promotion]) -> Vec<DeposedAck> {
    let mut sorted = promotions.to_vec();
    sorted.sort_by_key(|p| p.at_us);
    acks.iter()
        .filter_map(|ack| {
            let before = sorted.partition_point(|p| p.at_us <= ack.acked_us);
            let latest = sorted[..before].last()?;
            (latest.node != ack.node).then_some(DeposedAck {
                ack: *ack,
                by: latest.node,
                promoted_at_us: latest.at_us,
            })
        })
        .collect()
}

/// How close a promotion came to an acknowledgement from another node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Margin {
    /// The promotion.
    pub promotion: Promotion,
    /// The last acknowledgement from another node that arrived before it.
    pub last_other_ack_us: u64,
    /// `promotion.at_us - last_other_ack_us`, in microseconds.
    pub margin_us: u64,
}

/// For every promotion after the initial one: the last acknowledgement from any
/// other node before it and the time between the two. The smallest margin says
/// how close the run came to a write on a deposed primary.
pub fn margins(acks: &[Ack], promotions: &[Promotion]) -> Vec<Margin> {
    promotions
        .iter()
        .filter(|p| p.evidence != Evidence::Initial)
        .filter_map(|p| {
            let last = acks
                .iter()
                .filter(|a| a.node != p.node && a.acked_us <= p.at_us)
                .map(|a| a.acked_us)
                .max()?;
            Some(Margin {
                promotion: *p,
                last_other_ack_us: last,
                margin_us: p.at_us - last,
            })
        })
        .collect()
}

/// Rule (a): acknowledged ids that the final primary does not have.
pub fn lost_acks(acks: &[Ack], final_ids: &BTreeSet<i64>) -> Vec<i64> {
    acks.iter()
        .filter(|a| !final_ids.contains(&a.id))
        .map(|a| a.id)
        .collect()
}

/// The fault window `t` falls in: the last fault that started at or before `t`
/// (`None`: before the first fault).
pub fn window(fault_starts: &[u64], t: u64) -> Option<usize> {
    fault_starts.partition_point(|s| *s <= t).checked_sub(1)
}

/// Rule (c): from `from_us` (a fault) to the first acknowledgement of a write sent
/// at or after it. `None` when no later write was acknowledged.
pub fn unavailability(acks: &[Ack], from_us: u64) -> Option<u64> {
    acks.iter()
        .filter(|a| a.sent_us >= from_us)
        .map(|a| a.acked_us)
        .min()
        .map(|t| t.saturating_sub(from_us))
}

/// The longest stretch without an acknowledgement in `[from_us, until_us]`: the
/// gaps between `from_us`, every acknowledgement arriving in between, and
/// `until_us`. Catches outages that begin some time after a fault (a primary that
/// keeps writing until its demotion deadline), which [`unavailability`] does not.
pub fn worst_gap(acks: &[Ack], from_us: u64, until_us: u64) -> u64 {
    let mut times: Vec<u64> = acks
        .iter()
        .map(|a| a.acked_us)
        .filter(|t| *t > from_us && *t < until_us)
        .collect();
    times.sort_unstable();
    let mut worst = 0;
    let mut previous = from_us;
    for t in times
        .into_iter()
        .chain(std::iter::once(until_us.max(from_us)))
    {
        worst = worst.max(t - previous);
        previous = t;
    }
    worst
}

/// Median and worst of a list of durations.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Stats {
    /// How many values.
    pub count: usize,
    /// The median in milliseconds (the mean of the middle two for an even count).
    pub median_ms: f64,
    /// The largest in milliseconds.
    pub worst_ms: f64,
}

/// [`Stats`] of microsecond durations; `None` for an empty list.
pub fn stats(values_us: &[u64]) -> Option<Stats> {
    if values_us.is_empty() {
        return None;
    }
    let mut v = values_us.to_vec();
    v.sort_unstable();
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2] as f64
    } else {
        (v[n / 2 - 1] + v[n / 2]) as f64 / 2.0
    };
    Some(Stats {
        count: n,
        median_ms: median / 1000.0,
        worst_ms: v[n - 1] as f64 / 1000.0,
    })
}

/// Reads the promotions from a PostgreSQL server log written with
/// `log_line_prefix = '%n [%p] '`: the epoch time (in microseconds) of every
/// `selected new timeline ID` line. Lines without a parsable timestamp are skipped.
pub fn log_promotions(text: &str) -> Vec<u64> {
    text.lines()
        .filter(|l| l.contains("selected new timeline ID"))
        .filter_map(|l| {
            let stamp = l.split_whitespace().next()?;
            let (secs, millis) = stamp.split_once('.')?;
            if millis.len() != 3 {
                return None;
            }
            let secs: u64 = secs.parse().ok()?;
            let millis: u64 = millis.parse().ok()?;
            Some(secs * 1_000_000 + millis * 1000)
        })
        .collect()
}

/// An acknowledgement with its times in milliseconds (for the tests here and
/// in the report).
#[cfg(test)]
pub(crate) fn ack(id: i64, node: usize, sent_ms: u64, acked_ms: u64) -> Ack {
    Ack {
        id,
        node,
        sent_us: sent_ms * 1000,
        acked_us: acked_ms * 1000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// node0 the bootstrap primary, node1 promoted at 1 s.
    fn node0_then_node1_at_1s() -> Vec<Promotion> {
        vec![
            Promotion {
                node: 0,
                at_us: 0,
                evidence: Evidence::Initial,
            },
            promo(1, 1000),
        ]
    }

    fn promo(node: usize, at_ms: u64) -> Promotion {
        Promotion {
            node,
            at_us: at_ms * 1000,
            evidence: Evidence::ServerLog,
        }
    }

    /// Acknowledgements from (id, node, sent ms, acked ms).
    fn acks(list: &[(i64, usize, u64, u64)]) -> Vec<Ack> {
        list.iter()
            .map(|&(id, node, sent_ms, acked_ms)| ack(id, node, sent_ms, acked_ms))
            .collect()
    }

    #[test]
    fn deposed_acks_are_those_arriving_after_another_node_s_promotion() {
        // (what, promotions, acks, flagged as (id, by, promoted at ms))
        let cases = [
            (
                "acks of the newest primary pass",
                node0_then_node1_at_1s(),
                acks(&[(1, 0, 100, 110), (2, 0, 990, 999), (3, 1, 1500, 1510)]),
                vec![],
            ),
            (
                "an ack from the old primary after a promotion is flagged, even one sent before it",
                node0_then_node1_at_1s(),
                acks(&[(1, 0, 900, 1001), (2, 0, 1200, 1210), (3, 1, 1300, 1310)]),
                vec![(1, 1, 1000), (2, 1, 1000)],
            ),
            (
                "node 0 between its deposition and re-promotion, node 1 after",
                vec![promo(0, 10), promo(1, 1000), promo(0, 2000)],
                acks(&[(1, 0, 1500, 1600), (2, 0, 2100, 2200), (3, 1, 2300, 2400)]),
                vec![(1, 1, 1000), (3, 0, 2000)],
            ),
            (
                "a promotion at the same instant counts",
                vec![promo(0, 0), promo(2, 1000)],
                acks(&[(1, 0, 999, 1000)]),
                vec![(1, 2, 1000)],
            ),
            (
                "without any promotion nothing is flagged",
                vec![],
                acks(&[(1, 2, 1, 2)]),
                vec![],
            ),
        ];
        for (what, promotions, acks, expected) in cases {
            let flagged: Vec<(i64, usize, u64)> = deposed_acks(&acks, &promotions)
                .iter()
                .map(|d| (d.ack.id, d.by, d.promoted_at_us / 1000))
                .collect();
            assert_eq!(flagged, expected, "{what}");
        }
    }

    #[test]
    fn poll_promotions_fill_in_what_the_logs_miss() {
        let polls = [
            // Explained by the log line at 5.0 s.
            PollPromotion {
                node: 1,
                earliest_us: 4_900_000,
                observed_us: 5_050_000,
            },
            // Not in any log: dated at its earliest instant.
            PollPromotion {
                node: 2,
                earliest_us: 9_000_000,
                observed_us: 9_400_000,
            },
        ];
        let all = promotions(Some(0), &[(1, 5_000_000)], &polls);
        assert_eq!(
            all,
            vec![
                Promotion {
                    node: 0,
                    at_us: 0,
                    evidence: Evidence::Initial
                },
                Promotion {
                    node: 1,
                    at_us: 5_000_000,
                    evidence: Evidence::ServerLog
                },
                Promotion {
                    node: 2,
                    at_us: 9_000_000,
                    evidence: Evidence::Poll
                },
            ]
        );
        // A poll-only promotion flags the previous primary's later acks.
        let flagged = deposed_acks(&[ack(7, 1, 9_100, 9_200)], &all);
        assert_eq!(flagged.len(), 1);
        assert_eq!(flagged[0].by, 2);
    }

    #[test]
    fn margins_measure_the_closest_call() {
        let promotions = node0_then_node1_at_1s();
        let acks = [
            ack(1, 0, 900, 950),
            ack(2, 0, 960, 990),
            ack(3, 1, 1100, 1110),
        ];
        let m = margins(&acks, &promotions);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].last_other_ack_us, 990_000);
        assert_eq!(m[0].margin_us, 10_000);
    }

    #[test]
    fn lost_acks_are_the_acknowledged_ids_missing_at_the_end() {
        let acks = [ack(1, 0, 1, 2), ack(2, 0, 3, 4), ack(5, 1, 5, 6)];
        let final_ids: BTreeSet<i64> = [1, 3, 4, 5].into_iter().collect();
        assert_eq!(lost_acks(&acks, &final_ids), vec![2]);
        let all: BTreeSet<i64> = [1, 2, 5].into_iter().collect();
        assert!(lost_acks(&acks, &all).is_empty());
    }

    #[test]
    fn windows_and_unavailability() {
        let starts = [1000, 5000];
        assert_eq!(window(&starts, 999), None);
        assert_eq!(window(&starts, 1000), Some(0));
        assert_eq!(window(&starts, 4999), Some(0));
        assert_eq!(window(&starts, 7000), Some(1));
        let acks = [ack(1, 0, 0, 1), ack(2, 0, 1, 4), ack(3, 1, 4, 6)];
        // The write in flight at the fault (sent at 1 ms) does not count.
        assert_eq!(unavailability(&acks, 2000), Some(4000));
        assert_eq!(unavailability(&acks, 7000), None);
    }

    #[test]
    fn the_worst_gap_sees_late_outages() {
        // Acks right after the fault, then nothing for 5 s, then acks again.
        let acks = [
            ack(1, 0, 0, 1010),
            ack(2, 0, 1011, 1020),
            ack(3, 1, 1021, 6020),
            ack(4, 1, 6021, 6030),
        ];
        assert_eq!(unavailability(&acks, 1_000_000), Some(20_000));
        assert_eq!(worst_gap(&acks, 1_000_000, 7_000_000), 5_000_000);
        assert_eq!(worst_gap(&[], 1_000_000, 3_000_000), 2_000_000);
        assert_eq!(worst_gap(&acks, 5_000_000, 5_000_000), 0);
    }

    #[test]
    fn stats_are_median_and_worst() {
        assert_eq!(stats(&[]), None);
        let s = stats(&[3000, 1000, 2000]).unwrap();
        assert_eq!((s.count, s.median_ms, s.worst_ms), (3, 2.0, 3.0));
        let s = stats(&[1000, 4000]).unwrap();
        assert_eq!(s.median_ms, 2.5);
    }

    #[test]
    fn promotions_are_read_from_the_server_log() {
        let log = "1764295092.123 [42] LOG:  received promote request\n\
                   1764295092.130 [42] LOG:  selected new timeline ID: 3\n\
                   garbage selected new timeline ID: 4\n\
                   1764295099.007 [50] LOG:  selected new timeline ID: 4\n";
        assert_eq!(
            log_promotions(log),
            vec![1_764_295_092_130_000, 1_764_295_099_007_000]
        );
    }
}
