//! The REST role answers follow the engine without lag (issue 20): every
//! node's `/primary` is polled every 10 ms through a switchover and a
//! failover, the new primary's PostgreSQL is asked `pg_is_in_recovery()`
//! every 10 ms, and the times from the end of recovery, and from the
//! engine's `promoted` log line, to the first 200 are printed (figures, not
//! asserted). What is asserted: the old primary answered 503 before the new
//! one answered 200 (never two 200s at once).

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{serial, Cluster, Options, PG_PASSWORD};
use matriarch_testkit::http_request_timeout;

const POLL: Duration = Duration::from_millis(10);

/// One answer of `GET /primary`: when it was asked, when it came, and its
/// status (0: no answer).
#[derive(Clone, Copy, Debug)]
struct Sample {
    sent: Instant,
    received: Instant,
    /// `received` on the wall clock, to compare with log lines.
    received_at: DateTime<Utc>,
    status: u16,
}

/// Polls `GET {api}/primary` every [`POLL`] until `stop`.
fn poll_primary(api: String, stop: Arc<AtomicBool>) -> JoinHandle<Vec<Sample>> {
    std::thread::spawn(move || {
        let url = format!("{api}/primary");
        let mut samples = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let sent = Instant::now();
            let status = http_request_timeout("GET", &url, &[], b"", Duration::from_secs(1))
                .map_or(0, |r| r.status);
            let received = Instant::now();
            samples.push(Sample {
                sent,
                received,
                received_at: Utc::now(),
                status,
            });
            std::thread::sleep(POLL.saturating_sub(sent.elapsed()));
        }
        samples
    })
}

/// When PostgreSQL at `host:port` was first seen out of recovery, polled
/// every [`POLL`] until then or `stop`: (the last ask that saw it in
/// recovery, the answer that saw it out).
fn poll_recovery_end(host: String, port: u16, stop: Arc<AtomicBool>) -> JoinHandle<RecoveryEnd> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async move {
            let conninfo = format!(
                "host={host} port={port} user=postgres password={PG_PASSWORD} dbname=postgres connect_timeout=2"
            );
            let mut client = None;
            let mut last_in_recovery = None;
            while !stop.load(Ordering::SeqCst) {
                let sent = Instant::now();
                if client.is_none() {
                    if let Ok((c, connection)) =
                        tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await
                    {
                        tokio::spawn(connection);
                        client = Some(c);
                    }
                }
                if let Some(c) = &client {
                    match c.query_one("SELECT pg_is_in_recovery()", &[]).await {
                        Ok(row) => {
                            let in_recovery: bool = row.get(0);
                            if !in_recovery {
                                if let Some(before) = last_in_recovery {
                                    return Some((before, Instant::now()));
                                }
                            } else {
                                last_in_recovery = Some(sent);
                            }
                        }
                        Err(_) => client = None,
                    }
                }
                tokio::time::sleep(POLL.saturating_sub(sent.elapsed())).await;
            }
            None
        })
    })
}

/// The last ask that saw PostgreSQL in recovery and the answer that saw it
/// out, if it was seen.
type RecoveryEnd = Option<(Instant, Instant)>;

/// Polls every node's `/primary`, and the recovery of the candidates.
struct Watch {
    stop: Arc<AtomicBool>,
    pollers: Vec<JoinHandle<Vec<Sample>>>,
    recovery: Vec<(usize, JoinHandle<RecoveryEnd>)>,
}

impl Watch {
    fn start(cluster: &Cluster, candidates: &[usize]) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let pollers = cluster
            .nodes
            .iter()
            .map(|node| poll_primary(node.api(), Arc::clone(&stop)))
            .collect();
        let recovery = candidates
            .iter()
            .map(|i| {
                let node = &cluster.nodes[*i];
                let poller =
                    poll_recovery_end(node.pg_host.clone(), node.pg_port, Arc::clone(&stop));
                (*i, poller)
            })
            .collect();
        Watch {
            stop,
            pollers,
            recovery,
        }
    }

    /// Every node's samples, and when `new` was seen leaving recovery.
    fn finish(self, new: usize) -> (Vec<Vec<Sample>>, RecoveryEnd) {
        self.stop.store(true, Ordering::SeqCst);
        let samples = self
            .pollers
            .into_iter()
            .map(|p| p.join().expect("a poller"))
            .collect();
        let mut seen = None;
        for (i, poller) in self.recovery {
            let ended = poller.join().expect("a recovery poller");
            if i == new {
                seen = ended;
            }
        }
        (samples, seen)
    }
}

/// The first sample of `samples` answered 200 after `after`.
fn first_200_after(samples: &[Sample], after: Instant) -> Option<Sample> {
    samples
        .iter()
        .find(|s| s.sent >= after && s.status == 200)
        .copied()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// When the engine logged (and published) its last promotion, from the
/// agent's log: `<RFC 3339 time> INFO ... matriarch_ha::engine::act: promoted`.
fn engine_promoted_at(log: &Path) -> Option<DateTime<Utc>> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text
        .lines()
        .rfind(|l| l.contains("engine::act: promoted"))?;
    let stamp = line.split_whitespace().next()?;
    DateTime::parse_from_rfc3339(stamp)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Prints when the candidate answered 200 relative to the end of its
/// recovery; returns its first 200.
fn report(
    what: &str,
    samples: &[Vec<Sample>],
    candidate: usize,
    started: Instant,
    recovery: RecoveryEnd,
    candidate_log: &Path,
    logs: &str,
) -> Sample {
    let first = first_200_after(&samples[candidate], started)
        .unwrap_or_else(|| panic!("{what}: the candidate never answered 200\n{logs}"));
    match engine_promoted_at(candidate_log) {
        Some(promoted) => {
            let after = (first.received_at - promoted)
                .num_microseconds()
                .unwrap_or(0);
            println!(
                "{what}: first 200 on /primary {:.1} ms after the engine's `promoted` log line (REST polled every {})",
                after as f64 / 1000.0,
                ms(POLL),
            );
        }
        None => println!("{what}: no `promoted` line in {}", candidate_log.display()),
    }
    match recovery {
        Some((in_recovery, out)) => {
            let from_out = first.received.saturating_duration_since(out);
            let before = out.saturating_duration_since(first.received);
            println!(
                "{what}: recovery ended between +{} and +{} (SQL, polled every {}); first 200 on /primary at +{} (REST, polled every {}): {} after SQL saw it out of recovery{}",
                ms(in_recovery - started),
                ms(out - started),
                ms(POLL),
                ms(first.received - started),
                ms(POLL),
                ms(from_out),
                if before.is_zero() {
                    String::new()
                } else {
                    format!(" (REST answered {} before SQL saw it)", ms(before))
                },
            );
        }
        None => println!(
            "{what}: SQL never saw the end of recovery; first 200 at +{}",
            ms(first.received - started)
        ),
    }
    first
}

fn assert_one_primary_at_a_time(
    what: &str,
    samples: &[Vec<Sample>],
    old: usize,
    new: usize,
    started: Instant,
    logs: &str,
) {
    let first_new = first_200_after(&samples[new], started).expect("checked by report");
    let last_old = samples[old]
        .iter()
        .rfind(|s| s.status == 200 && s.received <= first_new.received)
        .copied();
    if let Some(last_old) = last_old {
        // The old primary's last 200 came before the new one's first was
        // even asked for, and a 503 came between.
        assert!(
            last_old.received < first_new.sent,
            "{what}: {} answered 200 at +{} while {} answered 200 at +{}\n{logs}",
            old,
            ms(last_old.received - started),
            new,
            ms(first_new.sent - started),
        );
        let refused = samples[old]
            .iter()
            .find(|s| s.sent > last_old.received && s.status != 200)
            .copied()
            .unwrap_or_else(|| {
                panic!("{what}: the old primary never stopped answering 200\n{logs}")
            });
        println!(
            "{what}: old primary's last 200 at +{}, its first {} at +{}, the new primary's first 200 at +{}",
            ms(last_old.received - started),
            refused.status,
            ms(refused.received - started),
            ms(first_new.received - started),
        );
        assert!(
            refused.received < first_new.received,
            "{what}: the old primary did not refuse before the new one answered 200\n{logs}"
        );
    }
    // No two nodes answered 200 at once, over the whole run.
    for (i, a) in samples.iter().enumerate() {
        for (j, b) in samples.iter().enumerate().filter(|(j, _)| *j > i) {
            for x in a.iter().filter(|s| s.status == 200) {
                for y in b.iter().filter(|s| s.status == 200) {
                    let overlap = x.sent < y.received && y.sent < x.received;
                    assert!(
                        !overlap,
                        "{what}: nodes {i} and {j} both answered 200 around +{}\n{logs}",
                        ms(x.sent - started)
                    );
                }
            }
        }
    }
}

#[test]
fn a_switchover_moves_the_primary_answer_without_lag_and_without_overlap() {
    let _serial = serial();
    let cluster = Cluster::start_on_etcd(3, Options::default());
    let leader = cluster.wait_healthy(2, Duration::from_secs(60));
    let candidate = (leader + 1) % 3;
    let via = (leader + 2) % 3;
    std::thread::sleep(Duration::from_secs(2));

    let watch = Watch::start(&cluster, &[candidate]);
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    cluster.switchover_ok(via, leader, candidate);
    assert!(
        cluster.wait_primary_is(candidate, Duration::from_secs(30)),
        "the candidate is not the only primary\n{}",
        cluster.logs()
    );
    std::thread::sleep(Duration::from_secs(1));
    let (samples, recovery) = watch.finish(candidate);
    let logs = cluster.logs();
    let log = cluster.nodes[candidate].log.clone();
    report(
        "switchover",
        &samples,
        candidate,
        started,
        recovery,
        &log,
        &logs,
    );
    assert_one_primary_at_a_time("switchover", &samples, leader, candidate, started, &logs);
}

#[test]
fn a_failover_answers_200_on_the_new_primary_without_lag() {
    let _serial = serial();
    let mut cluster = Cluster::start_on_etcd(3, Options::default());
    let leader = cluster.wait_healthy(2, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));
    // Either replica may win the race: watch both.
    let replicas = [(leader + 1) % 3, (leader + 2) % 3];
    let watch = Watch::start(&cluster, &replicas);
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    cluster.nodes[leader].crash();
    let new = cluster.new_primary(leader, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(1));
    let (samples, recovery) = watch.finish(new);
    let logs = cluster.logs();
    let log = cluster.nodes[new].log.clone();
    report("failover", &samples, new, started, recovery, &log, &logs);
    assert_one_primary_at_a_time("failover", &samples, leader, new, started, &logs);
}
