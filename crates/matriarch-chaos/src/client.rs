//! The client namespace's two jobs, as tokio tasks: the writer (one `INSERT` per
//! transaction through the DNS name, recording every acknowledgement) and the
//! poller (`SELECT pg_is_in_recovery()` on every node every 50 ms, recording the
//! moments a node leaves recovery).

use std::collections::{BTreeSet, VecDeque};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls, ToStatement};

use crate::checker::{Ack, PollPromotion};
use crate::cluster::{self, node_at, NODES, PG_PORT, WRITER};
use crate::error::{ChaosError, Result};
use crate::sys::now_us;

/// The table the writer fills.
pub const TABLE: &str = "chaos_writes";
/// The pause between two writes.
const WRITE_INTERVAL: Duration = Duration::from_millis(10);
/// How long a write may take before its outcome counts as unknown.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// The poller's period.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How many recent failure messages are kept.
const KEEP_ERRORS: usize = 200;

/// What the writer recorded.
#[derive(Debug, Default)]
pub struct WriterLog {
    /// Every acknowledged write, in send order.
    pub acks: Vec<Ack>,
    /// Writes (and connection attempts) that failed or timed out.
    pub failures: u64,
    /// Acknowledgements from an address that is no node's.
    pub foreign_acks: u64,
    /// The highest id sent.
    pub last_id: i64,
    /// The latest failure messages with their times.
    pub errors: VecDeque<(u64, String)>,
}

/// The first id of the probe writes (the writer's ids count up from 1).
pub const PROBE_FIRST_ID: i64 = 1_000_000_000_000;

/// What the poller recorded.
#[derive(Debug, Default)]
pub struct PollLog {
    /// Every observed promotion.
    pub promotions: Vec<PollPromotion>,
    /// Acknowledged probe writes: every node that answers "not in recovery" gets
    /// an `INSERT` straight to its address (not through the DNS name), so a
    /// deposed primary that still takes writes is caught even when the writer has
    /// already moved on.
    pub probe_acks: Vec<Ack>,
    last_in_recovery: [Option<u64>; NODES],
}

impl PollLog {
    /// Records one poll answer of node `node` at `at_us`.
    pub fn observe(&mut self, node: usize, in_recovery: bool, at_us: u64) {
        let Some(slot) = self.last_in_recovery.get_mut(node) else {
            return;
        };
        if in_recovery {
            *slot = Some(at_us);
        } else if let Some(earliest_us) = slot.take() {
            self.promotions.push(PollPromotion {
                node,
                earliest_us,
                observed_us: at_us,
            });
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The node that acknowledged a write: the address its `RETURNING
/// host(inet_server_addr())` names.
fn acked_by(row: &tokio_postgres::Row) -> Option<usize> {
    row.try_get::<_, String>(0)
        .ok()
        .and_then(|s| s.parse::<Ipv4Addr>().ok())
        .and_then(node_at)
}

/// A PostgreSQL error with the server's message when there is one.
fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => match std::error::Error::source(error) {
            Some(source) => format!("{error}: {source}"),
            None => error.to_string(),
        },
    }
}

/// What one timed `INSERT … RETURNING host(inet_server_addr())` came to.
enum Outcome {
    /// A node acknowledged it.
    Acked(Ack),
    /// An address that is no node's acknowledged it.
    Foreign,
    /// It failed; why.
    Failed(String),
    /// No answer within the timeout: its outcome is unknown.
    TimedOut,
}

/// Inserts row `id` with `statement` (the writer's or the poller's `INSERT`),
/// waiting at most `timeout` for the acknowledgement.
async fn insert<T>(client: &Client, statement: &T, id: i64, timeout: Duration) -> Outcome
where
    T: ?Sized + ToStatement,
{
    let sent_us = now_us();
    let result = tokio::time::timeout(timeout, client.query_one(statement, &[&id])).await;
    let acked_us = now_us();
    match result {
        Ok(Ok(row)) => match acked_by(&row) {
            Some(node) => Outcome::Acked(Ack {
                id,
                node,
                sent_us,
                acked_us,
            }),
            None => Outcome::Foreign,
        },
        Ok(Err(e)) => Outcome::Failed(describe(&e)),
        Err(_) => Outcome::TimedOut,
    }
}

/// Connects to `ip`, giving up after `timeout`.
pub async fn connect(ip: Ipv4Addr, timeout: Duration, app: &str) -> Result<Client, String> {
    let credentials = cluster::credentials();
    let mut config = tokio_postgres::Config::new();
    config
        .host(ip.to_string())
        .port(PG_PORT)
        .user(&credentials.pg_user)
        .password(&credentials.pg_password)
        .dbname("postgres")
        .application_name(app)
        .connect_timeout(timeout);
    let (client, connection) = tokio::time::timeout(timeout, config.connect(NoTls))
        .await
        .map_err(|_| format!("connecting to {ip} timed out"))?
        .map_err(|e| format!("{ip}: {}", describe(&e)))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn resolve_writer() -> Result<Ipv4Addr, String> {
    let server = std::net::SocketAddr::from((cluster::DNS_IP, 53));
    let addrs = matriarch_testkit::dns::resolve_a_async(server, WRITER, Duration::from_millis(500))
        .await
        .map_err(|e| e.to_string())?;
    addrs
        .first()
        .copied()
        .ok_or_else(|| format!("{WRITER} has no A record"))
}

/// The writer and the poller, running on their own runtime.
pub struct Load {
    runtime: Runtime,
    writer: Arc<Mutex<WriterLog>>,
    poll: Arc<Mutex<PollLog>>,
    stop_writer: Arc<AtomicBool>,
    stop_poller: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    writer_task: Option<JoinHandle<()>>,
}

impl Load {
    /// Makes the runtime (in the calling thread's namespace), creates the table on
    /// the primary behind the name, and starts the poller and the writer.
    pub fn start() -> Result<Load> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| ChaosError::io("building the client's runtime", e))?;
        runtime
            .block_on(create_table())
            .map_err(ChaosError::Client)?;
        let writer = Arc::new(Mutex::new(WriterLog::default()));
        let poll = Arc::new(Mutex::new(PollLog::default()));
        let stop_writer = Arc::new(AtomicBool::new(false));
        let stop_poller = Arc::new(AtomicBool::new(false));
        let probe_ids = Arc::new(AtomicI64::new(PROBE_FIRST_ID));
        let tasks = (0..NODES)
            .map(|i| {
                runtime.spawn(poll_loop(
                    i,
                    poll.clone(),
                    stop_poller.clone(),
                    probe_ids.clone(),
                ))
            })
            .collect();
        let writer_task = Some(runtime.spawn(write_loop(writer.clone(), stop_writer.clone())));
        Ok(Load {
            runtime,
            writer,
            poll,
            stop_writer,
            stop_poller,
            tasks,
            writer_task,
        })
    }

    /// The writer's log so far.
    pub fn writer(&self) -> MutexGuard<'_, WriterLog> {
        lock(&self.writer)
    }

    /// Stops the writer (after its current attempt).
    pub fn stop_writer(&mut self) {
        self.stop_writer.store(true, Ordering::SeqCst);
        if let Some(task) = self.writer_task.take() {
            let _ = self.runtime.block_on(task);
        }
    }

    /// Stops the poller and returns the promotions it saw and its acknowledged
    /// probe writes.
    pub fn stop_poller(&mut self) -> (Vec<PollPromotion>, Vec<Ack>) {
        self.stop_poller.store(true, Ordering::SeqCst);
        for task in self.tasks.drain(..) {
            let _ = self.runtime.block_on(task);
        }
        let log = lock(&self.poll);
        (log.promotions.clone(), log.probe_acks.clone())
    }

    /// Every id in the table, read on `ip`.
    pub fn read_ids(&self, ip: Ipv4Addr) -> Result<BTreeSet<i64>> {
        self.runtime
            .block_on(async {
                let client = connect(ip, Duration::from_secs(2), "matriarch-chaos-check").await?;
                let rows = client
                    .query(&format!("SELECT id FROM {TABLE}"), &[])
                    .await
                    .map_err(|e| describe(&e))?;
                rows.iter()
                    .map(|r| r.try_get::<_, i64>(0).map_err(|e| describe(&e)))
                    .collect::<Result<BTreeSet<i64>, String>>()
            })
            .map_err(ChaosError::Client)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop_writer();
        let _ = self.stop_poller();
    }
}

async fn create_table() -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..50 {
        let attempt = async {
            let ip = resolve_writer().await?;
            let client = connect(ip, Duration::from_secs(2), "matriarch-chaos-setup").await?;
            client
                .batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS {TABLE} (id bigint PRIMARY KEY, \
                     written_at timestamptz NOT NULL DEFAULT clock_timestamp())"
                ))
                .await
                .map_err(|e| format!("{ip}: {}", describe(&e)))
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("cannot create the table {TABLE}: {last}"))
}

async fn write_loop(log: Arc<Mutex<WriterLog>>, stop: Arc<AtomicBool>) {
    let fail = |message: String| {
        let mut log = lock(&log);
        log.failures += 1;
        if log.errors.len() == KEEP_ERRORS {
            log.errors.pop_front();
        }
        log.errors.push_back((now_us(), message));
    };
    let sql = format!("INSERT INTO {TABLE} (id) VALUES ($1) RETURNING host(inet_server_addr())");
    let mut connection: Option<(Client, tokio_postgres::Statement, Ipv4Addr)> = None;
    let mut next_id: i64 = 1;
    while !stop.load(Ordering::SeqCst) {
        if connection.is_none() {
            // Resolve the name on every (re)connection: it moves at a failover.
            let attempt = async {
                let ip = resolve_writer().await?;
                let client = connect(ip, Duration::from_secs(1), "matriarch-chaos-writer").await?;
                let statement = client
                    .prepare(&sql)
                    .await
                    .map_err(|e| format!("{ip}: {}", describe(&e)))?;
                Ok::<_, String>((client, statement, ip))
            };
            match attempt.await {
                Ok(c) => connection = Some(c),
                Err(e) => {
                    fail(e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            continue;
        }
        let Some((client, statement, ip)) = &connection else {
            continue;
        };
        let id = next_id;
        next_id += 1;
        lock(&log).last_id = id;
        match insert(client, statement, id, WRITE_TIMEOUT).await {
            Outcome::Acked(ack) => lock(&log).acks.push(ack),
            Outcome::Foreign => lock(&log).foreign_acks += 1,
            Outcome::Failed(why) => {
                fail(format!("{ip}: id {id}: {why}"));
                connection = None;
            }
            Outcome::TimedOut => {
                fail(format!("{ip}: id {id}: no answer within {WRITE_TIMEOUT:?}"));
                connection = None;
            }
        }
        tokio::time::sleep(WRITE_INTERVAL).await;
    }
}

async fn poll_loop(
    node: usize,
    log: Arc<Mutex<PollLog>>,
    stop: Arc<AtomicBool>,
    probe_ids: Arc<AtomicI64>,
) {
    let ip = cluster::node_ip(node);
    let sql = format!("INSERT INTO {TABLE} (id) VALUES ($1) RETURNING host(inet_server_addr())");
    let mut client: Option<Client> = None;
    let mut round: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        round += 1;
        if client.is_none() {
            client = connect(ip, Duration::from_millis(300), "matriarch-chaos-poller")
                .await
                .ok();
        }
        if let Some(c) = &client {
            let answer = tokio::time::timeout(
                Duration::from_millis(500),
                c.query_one("SELECT pg_is_in_recovery()", &[]),
            )
            .await;
            let at = now_us();
            match answer {
                Ok(Ok(row)) => match row.try_get::<_, bool>(0) {
                    Ok(in_recovery) => {
                        lock(&log).observe(node, in_recovery, at);
                        // Every other round, a probe write on a node out of recovery.
                        if !in_recovery && round.is_multiple_of(2) {
                            let id = probe_ids.fetch_add(1, Ordering::SeqCst);
                            match insert(c, sql.as_str(), id, Duration::from_secs(1)).await {
                                Outcome::Acked(ack) => lock(&log).probe_acks.push(ack),
                                Outcome::Foreign | Outcome::Failed(_) => {}
                                Outcome::TimedOut => client = None,
                            }
                        }
                    }
                    Err(_) => client = None,
                },
                _ => client = None,
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_poll_log_records_each_exit_from_recovery_once() {
        let mut log = PollLog::default();
        log.observe(0, false, 1); // the initial primary: no promotion seen
        log.observe(1, true, 2);
        log.observe(1, true, 3);
        log.observe(1, false, 9);
        log.observe(1, false, 10);
        log.observe(1, true, 20);
        log.observe(1, false, 25);
        log.observe(7, false, 30); // no such node
        assert_eq!(
            log.promotions,
            vec![
                PollPromotion {
                    node: 1,
                    earliest_us: 3,
                    observed_us: 9
                },
                PollPromotion {
                    node: 1,
                    earliest_us: 20,
                    observed_us: 25
                },
            ]
        );
    }
}
