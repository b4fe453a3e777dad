//! A fault injected into the primary, and the failover that follows it, timed event
//! by event: the leader lock lost and taken (an `etcdctl watch`), the promotion
//! (SQL on the survivors), the REST API and the DNS name moving, and the client's
//! first failed and first accepted write. The demo runs it for a node crash; the
//! benchmark for each [`Fault`].

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;

use matriarch_testkit::cluster::AgentKind;

use crate::cluster::Cluster;
use crate::error::{DemoError, Result};
use crate::plot::shorten;
use crate::timeline::{offset, Event};
use crate::watch::{LeaderWatch, LockEvent};
use crate::writer::{Ack, Target, Writer};

/// How often the monitor polls the REST APIs, PostgreSQL and DNS.
pub const POLL: Duration = Duration::from_millis(25);
/// After an agent kill, how long the old primary may go on taking the writes
/// after another member promoted before the run ends (a split brain).
pub const SPLIT_BRAIN_WATCH: Duration = Duration::from_secs(5);

/// What is done to the primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL for the agent and PostgreSQL: the machine is gone.
    NodeCrash,
    /// SIGKILL for the postmaster alone; the agent keeps running.
    PostgresCrash,
    /// SIGKILL for the agent alone; PostgreSQL is left running (the write fence
    /// must stop it).
    AgentKill,
    /// A planned switchover: `matriarch ctl switchover --force` (Patroni:
    /// `patronictl switchover --force`).
    Switchover,
    /// SIGTERM for the agent: it steps down and exits.
    Sigterm,
}

impl Fault {
    /// Every fault, in the benchmark's order.
    pub const ALL: [Fault; 5] = [
        Fault::NodeCrash,
        Fault::PostgresCrash,
        Fault::AgentKill,
        Fault::Switchover,
        Fault::Sigterm,
    ];

    /// Its name on the command line and in the results.
    pub fn name(self) -> &'static str {
        match self {
            Fault::NodeCrash => "node-crash",
            Fault::PostgresCrash => "postgres-crash",
            Fault::AgentKill => "agent-kill",
            Fault::Switchover => "switchover",
            Fault::Sigterm => "sigterm",
        }
    }

    /// The fault named `name`.
    pub fn parse(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == name)
    }

    /// What is done, in a sentence.
    pub fn description(self) -> &'static str {
        match self {
            Fault::NodeCrash => "SIGKILL of the primary's agent and PostgreSQL (a node crash)",
            Fault::PostgresCrash => {
                "SIGKILL of the primary's postmaster only; its agent keeps running"
            }
            Fault::AgentKill => {
                "SIGKILL of the primary's agent only; PostgreSQL is left running \
                 (the write fence must stop it)"
            }
            Fault::Switchover => "planned switchover: `matriarch ctl switchover --force`",
            Fault::Sigterm => "SIGTERM to the primary's agent (it steps down and exits)",
        }
    }

    /// The fault event, for node `old`.
    fn event(self, old: &str) -> String {
        match self {
            Fault::NodeCrash => format!("{old} crashed (agent and PostgreSQL SIGKILLed)"),
            Fault::PostgresCrash => format!("{old}'s postmaster SIGKILLed (agent left running)"),
            Fault::AgentKill => format!("{old}'s agent SIGKILLed (PostgreSQL left running)"),
            Fault::Switchover => format!("switchover requested (leader {old})"),
            Fault::Sigterm => format!("{old}'s agent sent SIGTERM"),
        }
    }
}

/// When each step of the failover was seen (`None`: not seen).
#[derive(Clone, Copy, Debug, Default)]
pub struct Marks {
    /// The old primary's leader key disappeared (expired or released).
    pub lock_lost: Option<Instant>,
    /// Another member wrote the leader key.
    pub lock_taken: Option<Instant>,
    /// A survivor's PostgreSQL left recovery.
    pub promoted: Option<Instant>,
    /// A survivor answered 200 on REST `/primary`.
    pub rest_primary: Option<Instant>,
    /// The DNS name pointed at another node.
    pub routed: Option<Instant>,
    /// The old primary's PostgreSQL accepted writes again (restarted in place).
    pub restarted: Option<Instant>,
    /// The client's first failed attempt after the fault.
    pub first_failure: Option<Instant>,
    /// The client's first write accepted after the outage.
    pub first_write: Option<Instant>,
    /// The switchover request returned.
    pub answered: Option<Instant>,
}

/// What [`inject_and_measure`] saw.
pub struct Measured {
    /// When the fault was injected.
    pub fault: Instant,
    /// The events, in the order they were seen.
    pub events: Vec<Event>,
    /// The steps' times.
    pub marks: Marks,
    /// The primary afterwards (the old one when its PostgreSQL restarted in place).
    pub new: usize,
    /// When the last step was seen.
    pub done: Instant,
}

/// Events, printed as they are seen when `verbose`.
struct Recorder {
    fault: Instant,
    events: Vec<Event>,
    verbose: bool,
}

impl Recorder {
    /// Records `what` now, and when it happened in `slot` (a step of [`Marks`]).
    fn mark(&mut self, slot: &mut Option<Instant>, what: String, seen_by: &str) {
        let at = Instant::now();
        *slot = Some(at);
        self.record(at, what, seen_by);
    }

    /// Records the switchover request's answer (when `handle` has one), in
    /// [`Marks::answered`].
    fn switchover_answered(&mut self, handle: JoinHandle<(Instant, String)>, marks: &mut Marks) {
        if let Ok((at, answer)) = handle.join() {
            marks.answered = Some(at);
            self.record(
                at,
                format!("switchover answered: {}", shorten(&answer, 60)),
                "matriarch ctl",
            );
        }
    }

    fn record(&mut self, at: Instant, what: String, seen_by: &str) {
        if self.verbose {
            println!("    {}  {what}", offset(self.fault, at));
        }
        self.events.push(Event {
            at,
            what,
            seen_by: seen_by.to_owned(),
        });
    }
}

/// Whether `client` (opened earlier) reports PostgreSQL out of recovery; `None`
/// when it does not answer within 500 ms (the caller reconnects).
async fn in_recovery(client: &tokio_postgres::Client) -> Option<bool> {
    let sql = client.query_one("SELECT pg_is_in_recovery()", &[]);
    match tokio::time::timeout(Duration::from_millis(500), sql).await {
        Ok(Ok(row)) => row.try_get::<_, bool>(0).ok(),
        _ => None,
    }
}

/// The switchover request of the cluster's agent for node `old` (the leader):
/// `matriarch ctl switchover --force` with the node's REST credentials, or
/// `patronictl switchover --force` on the member's file.
fn switchover_command(cluster: &Cluster, old: usize) -> Command {
    let node = &cluster.nodes[old];
    match &cluster.agent {
        AgentKind::Matriarch => {
            let mut command = Command::new(&cluster.matriarch);
            command.arg("ctl").arg("--config").arg(&node.config).args([
                "--timeout",
                "60",
                "switchover",
                "--force",
            ]);
            command
        }
        AgentKind::Patroni { venv } => {
            let mut command = Command::new(venv.join("bin").join("patronictl"));
            command.arg("-c").arg(&node.config).args([
                "switchover",
                "--leader",
                &node.name,
                "--force",
            ]);
            command
        }
    }
}

/// Runs the switchover request `command` in a thread: when it returned, and
/// its first line of output.
fn request_switchover(mut command: Command) -> JoinHandle<(Instant, String)> {
    std::thread::spawn(move || {
        let output = command.stdin(Stdio::null()).output();
        let text = match output {
            Ok(out) => {
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
                if out.status.success() {
                    line.trim().to_owned()
                } else {
                    format!("failed ({}): {}", out.status, line.trim())
                }
            }
            Err(e) => format!("cannot run the switchover request: {e}"),
        };
        (Instant::now(), text)
    })
}

/// Injects `kind` into node `old` (the primary) and watches the failover: the leader
/// key in etcd, the survivors' PostgreSQL and REST API, the DNS name and the writer,
/// each event printed as it is seen when `verbose`. Complete when another node is
/// the primary (promoted, `/primary`, DNS) and took a write, or, after a PostgreSQL
/// crash, when the old primary's PostgreSQL is back and took a write.
/// `Err(NoFailover)` when that does not happen within `bound`.
#[allow(clippy::too_many_arguments)]
pub fn inject_and_measure(
    cluster: &mut Cluster,
    old: usize,
    kind: Fault,
    runtime: &Handle,
    target: &Target,
    watch: &LeaderWatch,
    writer: &Writer,
    bound: Duration,
    verbose: bool,
) -> Result<Measured> {
    let old_name = cluster.nodes[old].name.clone();
    let primary_ip = cluster.nodes[old].ip;
    let routes_dns = cluster.routes_dns();
    let dns_name = cluster.writer_name();
    let survivors: Vec<usize> = (0..cluster.nodes.len()).filter(|i| *i != old).collect();
    // Open before the fault: these connections to the replicas see the promotion.
    let mut probes: Vec<(usize, Option<tokio_postgres::Client>)> = survivors
        .iter()
        .map(|i| {
            let ip = cluster.nodes[*i].ip;
            (*i, runtime.block_on(target.connect(ip)).ok())
        })
        .collect();
    let in_place = kind == Fault::PostgresCrash;
    let mut old_probe: Option<tokio_postgres::Client> = None;
    let mut old_down = false;
    let mut switchover = None;
    let fault = Instant::now();
    match kind {
        Fault::NodeCrash => cluster.nodes[old].crash(),
        Fault::PostgresCrash => {
            if !cluster.nodes[old].kill_postmaster() {
                return Err(DemoError::Setup(format!(
                    "{old_name} has no running postmaster to kill"
                )));
            }
        }
        Fault::AgentKill => cluster.nodes[old].kill_agent(),
        Fault::Sigterm => cluster.nodes[old].terminate(),
        Fault::Switchover => {
            switchover = Some(request_switchover(switchover_command(cluster, old)));
        }
    }
    let mut rec = Recorder {
        fault,
        events: Vec::new(),
        verbose,
    };
    rec.record(fault, kind.event(&old_name), "bench");
    let mut marks = Marks::default();
    let mut promoted: Option<usize> = None;
    let mut new_write = false;
    let poll = format!("polled every {} ms", POLL.as_millis());
    loop {
        crate::interrupt::check()?;
        for (at, event) in watch.events_since(fault) {
            match event {
                LockEvent::Released if marks.lock_lost.is_none() && marks.lock_taken.is_none() => {
                    marks.lock_lost = Some(at);
                    let what = match kind {
                        Fault::NodeCrash | Fault::AgentKill => {
                            format!("primary lost: {old_name}'s leader lock expired")
                        }
                        _ => format!("{old_name}'s leader lock deleted"),
                    };
                    rec.record(at, what, "etcd watch");
                }
                LockEvent::Held(holder) if marks.lock_taken.is_none() && holder != old_name => {
                    marks.lock_taken = Some(at);
                    rec.record(at, format!("lock taken by {holder}"), "etcd watch");
                }
                _ => {}
            }
        }
        if promoted.is_none() {
            for (i, client) in &mut probes {
                let ip = cluster.nodes[*i].ip;
                let state = runtime.block_on(async {
                    if client.is_none() {
                        *client = target.connect(ip).await.ok();
                    }
                    in_recovery(client.as_ref()?).await
                });
                match state {
                    None => *client = None,
                    Some(false) => {
                        rec.mark(
                            &mut marks.promoted,
                            format!("{} promoted: out of recovery", cluster.nodes[*i].name),
                            &format!("SQL, {poll}"),
                        );
                        promoted = Some(*i);
                        break;
                    }
                    Some(true) => {}
                }
            }
        }
        if in_place && marks.restarted.is_none() {
            let state = runtime.block_on(async {
                if old_probe.is_none() {
                    old_probe = target.connect(primary_ip).await.ok();
                }
                in_recovery(old_probe.as_ref()?).await
            });
            match state {
                None => {
                    old_probe = None;
                    old_down = true;
                }
                Some(false) if old_down => {
                    rec.mark(
                        &mut marks.restarted,
                        format!("{old_name}'s PostgreSQL restarted as the primary"),
                        &format!("SQL, {poll}"),
                    );
                }
                Some(_) => {}
            }
        }
        if marks.rest_primary.is_none() {
            if let Some(i) = survivors.iter().find(|i| cluster.nodes[**i].is_primary()) {
                rec.mark(
                    &mut marks.rest_primary,
                    format!("{} answers 200 on REST /primary", cluster.nodes[*i].name),
                    &format!("REST, {poll}"),
                );
            }
        }
        if routes_dns && marks.routed.is_none() {
            let dns = matriarch_testkit::dns::resolve_a(
                cluster.dns_server(),
                &dns_name,
                Duration::from_millis(500),
            );
            if let Ok([ip]) = dns.as_deref() {
                if *ip != primary_ip && cluster.node_at(*ip).is_some() {
                    rec.mark(
                        &mut marks.routed,
                        format!("DNS moved: {dns_name} -> {ip}"),
                        &format!("DNS, {poll}"),
                    );
                }
            }
        }
        if let Some(handle) = switchover.take_if(|h| h.is_finished()) {
            rec.switchover_answered(handle, &mut marks);
        }
        {
            let log = writer.log();
            if marks.first_failure.is_none() {
                if let Some(failure) = log.failures.iter().find(|f| f.at >= fault) {
                    marks.first_failure = Some(failure.at);
                    rec.record(
                        failure.at,
                        format!("first failed write ({})", shorten(&failure.message, 48)),
                        "client",
                    );
                }
            }
            if marks.first_write.is_none() {
                let first = log
                    .acks
                    .iter()
                    .find(|a| a.at >= fault && a.server != primary_ip)
                    .map(|a| (*a, true))
                    .or_else(|| {
                        let failed = marks.first_failure.filter(|_| in_place)?;
                        log.acks
                            .iter()
                            .find(|a| a.at > failed && a.server == primary_ip)
                            .map(|a| (*a, false))
                    });
                if let Some((ack, elsewhere)) = first {
                    new_write = elsewhere;
                    marks.first_write = Some(ack.at);
                    let by = cluster
                        .node_at(ack.server)
                        .map_or_else(|| ack.server.to_string(), |i| cluster.nodes[i].name.clone());
                    rec.record(
                        ack.at,
                        format!("first write accepted by {by} (id {})", ack.id),
                        "client",
                    );
                }
            }
        }
        let failed_over = promoted.is_some()
            && marks.rest_primary.is_some()
            && (marks.routed.is_some() || !routes_dns)
            && marks.first_write.is_some()
            && new_write;
        let restarted = in_place && marks.restarted.is_some() && marks.first_write.is_some();
        // An agent without a write fence (Patroni without a watchdog) leaves the
        // old primary taking writes after another member promoted: the run ends
        // once that has gone on for SPLIT_BRAIN_WATCH, the writes counted.
        let split_brain = kind == Fault::AgentKill
            && marks.first_write.is_none()
            && marks.rest_primary.is_some()
            && marks
                .promoted
                .is_some_and(|at| at.elapsed() > SPLIT_BRAIN_WATCH);
        if split_brain {
            rec.record(
                Instant::now(),
                format!(
                    "{old_name} still acknowledges writes {:.0} s after the promotion",
                    SPLIT_BRAIN_WATCH.as_secs_f64()
                ),
                "client",
            );
            new_write = true;
        }
        if failed_over || restarted || split_brain {
            break;
        }
        if fault.elapsed() > bound {
            let mut missing = Vec::new();
            if marks.lock_taken.is_none() {
                missing.push("no survivor took the leader lock");
            }
            if promoted.is_none() {
                missing.push("no survivor left recovery");
            }
            if marks.rest_primary.is_none() {
                missing.push("no survivor answered 200 on /primary");
            }
            if routes_dns && marks.routed.is_none() {
                missing.push("the DNS name did not move");
            }
            if in_place && marks.restarted.is_none() {
                missing.push("the old primary's PostgreSQL did not come back");
            }
            if marks.first_write.is_none() {
                missing.push("the client wrote nothing after the fault");
            }
            return Err(DemoError::NoFailover {
                bound,
                missing: missing.join("; "),
            });
        }
        std::thread::sleep(POLL);
    }
    let done = Instant::now();
    if let Some(handle) = switchover {
        // The request returns once the new leader is seen; give it a little longer.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !handle.is_finished() && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        if handle.is_finished() {
            rec.switchover_answered(handle, &mut marks);
        }
    }
    let new = if new_write {
        promoted.ok_or_else(|| DemoError::Setup("no promotion recorded".into()))?
    } else {
        old
    };
    Ok(Measured {
        fault,
        events: rec.events,
        marks,
        new,
        done,
    })
}

/// The longest time without an acknowledged write that ends after `from` and starts
/// before `until`: the two acknowledgements around it.
pub fn longest_gap(acks: &[Ack], from: Instant, until: Instant) -> Option<(Ack, Ack)> {
    acks.windows(2)
        .filter(|w| w[1].at >= from && w[0].at <= until)
        .max_by_key(|w| w[1].at.saturating_duration_since(w[0].at))
        .map(|w| (w[0], w[1]))
}

/// Acknowledgements by `server` at or after `since`.
pub fn acks_by_after(acks: &[Ack], server: Ipv4Addr, since: Instant) -> usize {
    acks.iter()
        .filter(|a| a.server == server && a.at >= since)
        .count()
}

/// The plot of one failover: the acknowledgements from `x_range.0` to `x_range.1`
/// seconds around the fault, coloured by server (`servers`: address and name), and
/// the events marked.
pub fn plot(
    title: String,
    subtitle: String,
    servers: &[(Ipv4Addr, String)],
    acks: &[Ack],
    fault: Instant,
    marks: &Marks,
    x_range: (f64, f64),
) -> crate::plot::Plot {
    let rel = |at: Instant| crate::timeline::offset_ms(fault, at) as f64 / 1000.0;
    let mut markers = vec![(0.0, "fault".to_owned())];
    let named = [
        (marks.lock_lost, "lock deleted"),
        (marks.lock_taken, "lock taken"),
        (marks.promoted, "promoted"),
        (marks.restarted, "restarted in place"),
        (marks.routed, "DNS routed"),
        (marks.first_write, "first write"),
    ];
    for (at, name) in named {
        if let Some(at) = at {
            markers.push((rel(at), name.to_owned()));
        }
    }
    crate::plot::Plot {
        title,
        subtitle,
        series: servers
            .iter()
            .map(|(ip, name)| format!("{name} ({ip})"))
            .collect(),
        acks: acks
            .iter()
            .filter_map(|a| {
                let series = servers.iter().position(|(ip, _)| *ip == a.server)?;
                Some((rel(a.at), series))
            })
            .collect(),
        markers,
        x_range,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_have_names() {
        for fault in Fault::ALL {
            assert_eq!(Fault::parse(fault.name()), Some(fault));
        }
        assert_eq!(Fault::parse("nope"), None);
    }

    #[test]
    fn long_messages_are_shortened() {
        assert_eq!(shorten("short", 10), "short");
        assert_eq!(shorten("0123456789abc", 10), "0123456...");
    }

    #[test]
    fn the_longest_gap_around_the_fault_is_found() {
        let t0 = Instant::now();
        let ip = Ipv4Addr::new(127, 0, 0, 1);
        let ack = |id: i64, ms: u64| Ack {
            id,
            at: t0 + Duration::from_millis(ms),
            server: ip,
        };
        // A long gap before the window is ignored.
        let acks = [
            ack(1, 0),
            ack(2, 5000),
            ack(3, 5010),
            ack(4, 7000),
            ack(5, 7010),
        ];
        let fault = t0 + Duration::from_millis(5020);
        let (a, b) = longest_gap(&acks, fault, t0 + Duration::from_millis(7010)).unwrap();
        assert_eq!((a.id, b.id), (3, 4));
        assert_eq!(acks_by_after(&acks, ip, fault), 2);
    }
}
