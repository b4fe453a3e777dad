//! The demo's client: one `INSERT` with an increasing id every 10 ms to the
//! primary, found through its DNS name or by asking every node's REST API
//! `GET /primary` (the benchmark's way, which works for Patroni too),
//! reconnecting on any failure, recording every acknowledged id with the time
//! of its acknowledgement.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls, Statement};

use matriarch_testkit::dns::resolve_a_async;

/// The table the writer fills.
pub const TABLE: &str = "demo_writes";

/// How the writer finds the primary before each connection.
#[derive(Clone, Debug)]
pub enum FindPrimary {
    /// The A record of [`Target::name`] on this DNS server.
    Dns(SocketAddr),
    /// The node answering 200 on `GET /primary`, asking every node's REST API at
    /// once: (PostgreSQL's address, the REST API's address) per node.
    Rest(Vec<(Ipv4Addr, SocketAddr)>),
}

/// How long one `GET /primary` may take.
const REST_TIMEOUT: Duration = Duration::from_millis(500);

/// Where and how the writer connects.
#[derive(Clone, Debug)]
pub struct Target {
    /// How it finds the primary.
    pub find: FindPrimary,
    /// What it connects to, for messages: the DNS name that points at the
    /// primary (e.g. `primary.matriarch.test`), or `GET /primary`.
    pub name: String,
    /// PostgreSQL's port (the same on every node).
    pub port: u16,
    /// The user.
    pub user: String,
    /// Its password.
    pub password: String,
}

impl Target {
    /// Finds the primary once; `Err` with a message when there is none.
    pub async fn resolve(&self) -> Result<Ipv4Addr, String> {
        match &self.find {
            FindPrimary::Dns(server) => {
                let addrs = resolve_a_async(*server, &self.name, Duration::from_millis(500))
                    .await
                    .map_err(|e| e.to_string())?;
                addrs
                    .first()
                    .copied()
                    .ok_or_else(|| format!("{} has no A record", self.name))
            }
            FindPrimary::Rest(nodes) => {
                let asks = nodes.iter().map(|&(ip, api)| async move {
                    answers_200(api, "/primary", REST_TIMEOUT)
                        .await
                        .then_some(ip)
                });
                let primaries: Vec<Ipv4Addr> = gather_addresses(asks).await;
                primaries
                    .first()
                    .copied()
                    .ok_or_else(|| "no node answers 200 on GET /primary".to_owned())
            }
        }
    }

    /// Connects to `ip` (a connection attempt gives up after 1 s).
    pub async fn connect(&self, ip: Ipv4Addr) -> Result<Client, String> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(ip.to_string())
            .port(self.port)
            .user(&self.user)
            .password(&self.password)
            .dbname("postgres")
            .application_name("matriarch-demo-writer")
            .connect_timeout(Duration::from_secs(1));
        let (client, connection) =
            tokio::time::timeout(Duration::from_secs(2), config.connect(NoTls))
                .await
                .map_err(|_| format!("connecting to {ip}:{} timed out", self.port))?
                .map_err(|e| describe(&e))?;
        tokio::spawn(async move {
            // Ends when the client is dropped or the server goes away.
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Finds the primary and connects to it.
    pub async fn connect_primary(&self) -> Result<(Client, Ipv4Addr), String> {
        let ip = self.resolve().await?;
        Ok((self.connect(ip).await?, ip))
    }
}

/// The addresses the futures of `asks` give, all run at once (in their order).
async fn gather_addresses<F>(asks: impl Iterator<Item = F>) -> Vec<Ipv4Addr>
where
    F: std::future::Future<Output = Option<Ipv4Addr>> + Send + 'static,
{
    let tasks: Vec<_> = asks.map(tokio::spawn).collect();
    let mut found = Vec::new();
    for task in tasks {
        if let Ok(Some(ip)) = task.await {
            found.push(ip);
        }
    }
    found
}

/// Whether the HTTP server at `api` answers `GET path` with status 200 within
/// `timeout` (only the status line is read).
pub async fn answers_200(api: SocketAddr, path: &str, timeout: Duration) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(api).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        // "HTTP/1.1 200 ..."
        let mut status_line = [0u8; 12];
        stream.read_exact(&mut status_line).await.ok()?;
        Some(status_line.starts_with(b"HTTP/1.") && &status_line[9..12] == b"200")
    };
    matches!(tokio::time::timeout(timeout, ask).await, Ok(Some(true)))
}

/// A PostgreSQL error with the server's message when there is one.
pub fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let text = error.to_string();
            match std::error::Error::source(error) {
                Some(source) => format!("{text}: {source}"),
                None => text,
            }
        }
    }
}

/// One acknowledged write.
#[derive(Clone, Copy, Debug)]
pub struct Ack {
    /// The row's id.
    pub id: i64,
    /// When the commit was acknowledged.
    pub at: Instant,
    /// The server (the primary's address the writer found) that acknowledged it.
    pub server: Ipv4Addr,
}

/// One failed attempt (connect or insert).
#[derive(Clone, Debug)]
pub struct Failure {
    /// When it failed.
    pub at: Instant,
    /// Why.
    pub message: String,
}

/// What the writer recorded.
#[derive(Debug, Default)]
pub struct WriterLog {
    /// Every acknowledged write, in order.
    pub acks: Vec<Ack>,
    /// Every failed attempt, in order.
    pub failures: Vec<Failure>,
    /// The highest id tried (acknowledged or not).
    pub last_id: i64,
}

/// The running writer.
pub struct Writer {
    log: Arc<Mutex<WriterLog>>,
    stop: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
    runtime: Handle,
}

impl Writer {
    /// Starts writing every `interval` on `runtime`. The table must exist.
    pub fn start(runtime: &Handle, target: Target, interval: Duration) -> Writer {
        let log = Arc::new(Mutex::new(WriterLog::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = runtime.spawn(write_loop(target, interval, log.clone(), stop.clone()));
        Writer {
            log,
            stop,
            task: Some(task),
            runtime: runtime.clone(),
        }
    }

    /// The log so far (hold the guard briefly: the writer waits for it).
    pub fn log(&self) -> MutexGuard<'_, WriterLog> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops the writer after its current attempt and returns its log.
    pub fn stop(mut self) -> WriterLog {
        self.halt();
        std::mem::take(&mut *self.log())
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(task) = self.task.take() {
            let _ = self.runtime.block_on(task);
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.halt();
    }
}

async fn write_loop(
    target: Target,
    interval: Duration,
    log: Arc<Mutex<WriterLog>>,
    stop: Arc<AtomicBool>,
) {
    let lock = || log.lock().unwrap_or_else(|p| p.into_inner());
    let fail = |message: String| {
        lock().failures.push(Failure {
            at: Instant::now(),
            message,
        })
    };
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut connection: Option<(Client, Statement, Ipv4Addr)> = None;
    let mut next_id: i64 = 1;
    while !stop.load(Ordering::SeqCst) {
        ticks.tick().await;
        if connection.is_none() {
            // Find the primary for every attempt: it moves at a failover.
            match target.connect_primary().await {
                Ok((client, ip)) => {
                    let sql = format!("INSERT INTO {TABLE} (id) VALUES ($1)");
                    match client.prepare(&sql).await {
                        Ok(statement) => connection = Some((client, statement, ip)),
                        Err(e) => fail(format!("{ip}: {}", describe(&e))),
                    }
                }
                Err(e) => fail(e),
            }
            continue;
        }
        let Some((client, insert, server)) = &connection else {
            continue;
        };
        let id = next_id;
        next_id += 1;
        lock().last_id = id;
        let result =
            tokio::time::timeout(Duration::from_secs(2), client.execute(insert, &[&id])).await;
        match result {
            Ok(Ok(_)) => lock().acks.push(Ack {
                id,
                at: Instant::now(),
                server: *server,
            }),
            Ok(Err(e)) => {
                fail(format!("{server}: {}", describe(&e)));
                connection = None;
            }
            Err(_) => {
                fail(format!("{server}: no answer within 2 s"));
                connection = None;
            }
        }
    }
}

/// The ids in the writer's table, read on `ip`.
pub async fn table_ids(
    target: &Target,
    ip: Ipv4Addr,
) -> Result<std::collections::BTreeSet<i64>, String> {
    let client = target.connect(ip).await?;
    let rows = client
        .query(&format!("SELECT id FROM {TABLE}"), &[])
        .await
        .map_err(|e| describe(&e))?;
    rows.iter()
        .map(|row| row.try_get::<_, i64>(0))
        .collect::<Result<_, _>>()
        .map_err(|e| describe(&e))
}

/// Creates the writer's table on the primary behind the name if it is missing, and
/// empties it (the ids start at 1 again with each [`Writer`]).
pub async fn fresh_table(target: &Target) -> Result<(), String> {
    let (client, ip) = target.connect_primary().await?;
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {TABLE} (id bigint PRIMARY KEY, \
             written_at timestamptz NOT NULL DEFAULT clock_timestamp()); TRUNCATE {TABLE}"
        ))
        .await
        .map_err(|e| format!("{ip}: {}", describe(&e)))
}
