//! Connection exhaustion of the REST API without credentials: thousands of
//! connections that send partial headers, or the headers of a huge
//! `POST /failsafe` and one byte of its body, must neither starve the health
//! checks nor cut the primary off from PostgreSQL. Real etcd, real
//! PostgreSQL, one `matriarch run` process.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{serial, Cluster, Options};

/// Hostile connections held open during the measurement.
const HOSTILE: usize = 2_000;
/// Distinct loopback source addresses they come from (127.0.1.1 up), so
/// that they are many clients, each under a per-client cap.
const SOURCES: usize = 40;
/// Health-check samples taken during the flood.
const SAMPLES: usize = 20;

/// The soft and hard `RLIMIT_NOFILE` of this process.
fn nofile() -> (u64, u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes into the struct we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert_eq!(rc, 0, "getrlimit: {}", std::io::Error::last_os_error());
    (limit.rlim_cur, limit.rlim_max)
}

/// Sets this process's soft `RLIMIT_NOFILE` (children inherit it).
fn set_soft_nofile(soft: u64) {
    let (_, hard) = nofile();
    let limit = libc::rlimit {
        rlim_cur: soft.min(hard),
        rlim_max: hard,
    };
    // SAFETY: setrlimit(2) reads the struct we own.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());
}

/// What one hostile connection sends before it goes silent.
fn hostile_payload(i: usize) -> &'static [u8] {
    if i.is_multiple_of(2) {
        // Headers that never end.
        b"GET /patroni HTTP/1.1\r\nHost: db\r\nX-Slow: aaaa"
    } else {
        // A 1 GiB body announced, one byte sent.
        b"POST /failsafe HTTP/1.1\r\nHost: db\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n{"
    }
}

/// Opens `HOSTILE` connections to `port` (from `SOURCES` loopback
/// addresses), each sending its payload; returns those that connected.
fn flood(port: u16) -> Vec<TcpStream> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let tasks: Vec<_> = (0..HOSTILE)
            .map(|i| {
                tokio::spawn(async move {
                    let source = IpAddr::V4(Ipv4Addr::new(127, 0, 1, (1 + i % SOURCES) as u8));
                    let socket = tokio::net::TcpSocket::new_v4().ok()?;
                    socket.bind(SocketAddr::new(source, 0)).ok()?;
                    let target = SocketAddr::from(([127, 0, 0, 1], port));
                    let mut stream =
                        tokio::time::timeout(Duration::from_secs(5), socket.connect(target))
                            .await
                            .ok()?
                            .ok()?;
                    use tokio::io::AsyncWriteExt as _;
                    tokio::time::timeout(
                        Duration::from_secs(3),
                        stream.write_all(hostile_payload(i)),
                    )
                    .await
                    .ok()?
                    .ok()?;
                    let stream = stream.into_std().ok()?;
                    stream.set_nonblocking(false).ok()?;
                    Some(stream)
                })
            })
            .collect();
        let mut open = Vec::new();
        for task in tasks {
            if let Ok(Some(stream)) = task.await {
                open.push(stream);
            }
        }
        open
    })
}

/// `GET /primary` over a fresh connection from 127.0.0.1: the status and
/// how long the answer took, `None` without an answer within 5 s.
fn health_check(port: u16) -> (Option<u16>, Duration) {
    exchange(
        port,
        b"GET /primary HTTP/1.1\r\nHost: db\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
}

/// Sends `request` over a fresh connection from 127.0.0.1 and waits up to
/// `wait` for the status line: the status and how long it took.
fn exchange(port: u16, request: &[u8], wait: Duration) -> (Option<u16>, Duration) {
    let started = Instant::now();
    let attempt = || -> Option<u16> {
        let target = SocketAddr::from(([127, 0, 0, 1], port));
        let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(5)).ok()?;
        stream.set_read_timeout(Some(wait)).ok()?;
        stream.write_all(request).ok()?;
        let mut head = [0u8; 64];
        let mut read = 0;
        while read < 12 {
            let n = stream.read(&mut head[read..]).ok()?;
            if n == 0 {
                return None;
            }
            read += n;
        }
        std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
    };
    let status = attempt();
    (status, started.elapsed())
}

/// The number of open files of `pid`.
fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

#[derive(Default)]
struct Writes {
    ok: usize,
    failed: Vec<String>,
    last_ok: Option<Instant>,
    longest_gap: Duration,
}

#[test]
fn health_checks_and_writes_survive_two_thousand_hostile_connections() {
    let _serial = serial();
    let (_, hard) = nofile();
    assert!(
        hard >= 4 * HOSTILE as u64,
        "the hard RLIMIT_NOFILE ({hard}) is too low for this test"
    );
    // The agent starts as under a usual service manager: a soft limit of
    // 1,024 files and a higher hard limit (children inherit both).
    set_soft_nofile(1024);
    let cluster = Cluster::start_on_etcd(1, Options::default());
    // This process needs a file for each hostile connection.
    set_soft_nofile(hard);
    let primary = cluster.wait_healthy(0, Duration::from_secs(90));
    let node = &cluster.nodes[primary];
    node.psql("CREATE TABLE flood (id serial primary key, at timestamptz default now())")
        .unwrap_or_else(|e| panic!("create table: {e}\n{}", cluster.logs()));
    let agent = node.pid().expect("agent pid");
    let before: Vec<Duration> = (0..5).map(|_| health_check(node.api_port).1).collect();
    println!("GET /primary before the flood: {before:?}");

    // A write every 100 ms from now until the measurement ends.
    let writes = Arc::new(Mutex::new(Writes::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let writes = Arc::clone(&writes);
        let stop = Arc::clone(&stop);
        let (host, port) = (node.pg_host.clone(), node.pg_port);
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let tick = Instant::now();
                let result = common::psql_at(&host, port, "INSERT INTO flood DEFAULT VALUES");
                let now = Instant::now();
                if let Ok(mut w) = writes.lock() {
                    match result {
                        Ok(_) => {
                            if let Some(last) = w.last_ok {
                                w.longest_gap = w.longest_gap.max(now - last);
                            }
                            w.last_ok = Some(now);
                            w.ok += 1;
                        }
                        Err(e) => w.failed.push(e),
                    }
                }
                std::thread::sleep(Duration::from_millis(100).saturating_sub(tick.elapsed()));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(1));

    let flood_started = Instant::now();
    let hostile = flood(node.api_port);
    println!(
        "hostile connections established: {} of {HOSTILE} in {:?}; agent open files: {}",
        hostile.len(),
        flood_started.elapsed(),
        open_files(agent)
    );
    let mut samples = Vec::new();
    for _ in 0..SAMPLES {
        let sample = health_check(node.api_port);
        samples.push(sample);
        // Inside the server's header timeout, so that every hostile
        // connection is still held while the checks run.
        std::thread::sleep(Duration::from_millis(100));
    }
    let agent_files = open_files(agent);
    // Writes go on a while with the flood still held.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    let _ = writer.join();
    drop(hostile);

    let mut latencies: Vec<Duration> = samples.iter().map(|(_, l)| *l).collect();
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    let max = latencies[latencies.len() - 1];
    let answered = samples.iter().filter(|(s, _)| *s == Some(200)).count();
    let ended = Instant::now();
    let writes = writes.lock().map(|w| {
        // A stall that lasted to the end counts too.
        let tail = w.last_ok.map_or(Duration::MAX, |last| ended - last);
        (w.ok, w.failed.clone(), w.longest_gap.max(tail))
    });
    let (ok_writes, failed_writes, gap) = writes.expect("writer state");
    println!(
        "during the flood: GET /primary answered 200 {answered}/{SAMPLES}, median {median:?}, max {max:?}; agent open files {agent_files}; writes ok {ok_writes}, failed {}, longest gap between writes {gap:?}",
        failed_writes.len()
    );
    println!("samples: {samples:?}");
    assert_eq!(
        answered,
        SAMPLES,
        "health checks unanswered during the flood: {samples:?}\n{}",
        cluster.logs()
    );
    assert!(max < Duration::from_secs(1), "slowest health check {max:?}");
    assert!(
        median < Duration::from_millis(100),
        "median health check {median:?}"
    );
    assert!(
        failed_writes.is_empty(),
        "{} writes failed during the flood, first: {:?}\n{}",
        failed_writes.len(),
        failed_writes.first(),
        cluster.logs()
    );
    assert!(ok_writes > 0, "no write went through");
    assert!(
        gap < Duration::from_secs(2),
        "writes stopped for {gap:?} during the flood"
    );
    // The HA loop kept its files: it observed PostgreSQL throughout.
    let log = std::fs::read_to_string(&node.log).unwrap_or_default();
    assert!(
        !log.contains("Too many open files"),
        "the agent ran out of files during the flood\n{}",
        cluster.logs()
    );
    // The primary still leads once the flood is gone.
    assert_eq!(node.status("/primary"), 200, "{}", cluster.logs());
}

#[test]
fn failsafe_needs_credentials_and_bodies_are_bounded_in_size_and_time() {
    let cluster = Cluster::lone_primary_on_etcd(Duration::from_secs(90));
    let node = &cluster.nodes[0];

    // Nobody without credentials may hold a member back with a failsafe
    // heartbeat, nor hold a connection open with one.
    let heartbeat = format!(
        r#"{{"name": "{}", "conn_url": "", "api_url": ""}}"#,
        node.name
    );
    assert_eq!(
        node.call("POST", "/failsafe", &heartbeat, false).status,
        401,
        "an unauthenticated POST /failsafe was not refused"
    );
    let auth = common::basic_auth();

    // A body announced far over the limit is refused before it is read.
    let huge = format!(
        "PATCH /config HTTP/1.1\r\nHost: db\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n{{"
    );
    let (status, took) = exchange(node.api_port, huge.as_bytes(), Duration::from_secs(5));
    println!("1 GiB PATCH /config: {status:?} after {took:?}");
    assert_eq!(status, Some(413), "after {took:?}");

    // A body that never arrives is given up on.
    let stalled = format!(
        "PATCH /config HTTP/1.1\r\nHost: db\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    );
    let (status, took) = exchange(node.api_port, stalled.as_bytes(), Duration::from_secs(30));
    println!("stalled PATCH /config: {status:?} after {took:?}");
    assert_eq!(status, Some(408), "after {took:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");

    // Headers that never end are given up on too: the server closes.
    let (status, took) = exchange(
        node.api_port,
        b"GET /patroni HTTP/1.1\r\nHost: db\r\nX-Slow: a",
        Duration::from_secs(30),
    );
    println!("endless headers: {status:?} after {took:?}");
    assert!(took < Duration::from_secs(20), "{status:?} after {took:?}");
    assert_eq!(node.status("/primary"), 200, "{}", cluster.logs());
}
