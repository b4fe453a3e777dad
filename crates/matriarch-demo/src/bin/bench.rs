//! `matriarch-bench` (run by `cargo xtask bench`): failover and stability benchmarks
//! of the `matriarch` daemon on the demo's three-node loopback cluster.
//!
//! ```text
//! matriarch-bench failover [--runs N] [--scenario NAME]... [--idle-seconds S]
//!                          [--bound SECS] [--ttl S] [--loop-wait S] [--retry-timeout S]
//!                          [--against patroni] [--patroni-timing minimum|defaults]
//!                          [--matriarch PATH] [--out DIR]
//! matriarch-bench stability [--minutes M] [--ttl S] [--loop-wait S] [--retry-timeout S]
//!                           [--kill-etcd-leader-every S] [--etcd-members N]
//!                           [--clients N] [--threads N] [--matriarch PATH] [--out DIR]
//! matriarch-bench fleet [--clusters N[,N...]] [--runs N] [--idle-seconds S] [--bound SECS] [--out DIR]
//! ```
//!
//! `failover`: for each scenario (node-crash, postgres-crash, agent-kill, switchover,
//! sigterm; all by default) a fresh cluster, then N runs: a client writes a row every
//! 10 ms to the node answering 200 on REST `GET /primary`, the fault is injected into the primary and the
//! failover timed (see `matriarch_demo::failover`); after each run the faulted node
//! is restarted and the cluster healed (a primary, two streaming replicas, the DNS
//! name on the primary) for the next run; a failed run gets a fresh cluster. Before
//! the first scenario, each agent's idle memory (VmRSS) and CPU time (utime + stime)
//! are read over `--idle-seconds`. Results: `<out>/failover.json`, a plot per
//! scenario `<out>/failover-<scenario>.svg` (its median run), and a table on stdout.
//! With `--against patroni`, each scenario runs on a Patroni 4.1 cluster too
//! (`target/patroni-venv`, same etcd, addresses and PostgreSQL settings; timing
//! `--patroni-timing`: its minimum ttl 20 / loop_wait 1 / retry_timeout 3 by
//! default, or its defaults 30 / 10 / 10), right after matriarch's runs, and
//! the results carry both and the ratio of the medians.
//!
//! `stability`: a fresh cluster on a three-member etcd, `pgbench -i -s 4` and
//! `pgbench -c 4 -j 2 -T <minutes>` against the primary, while the leader key, the
//! etcd leader and the client paths (REST `/primary`, DNS) are watched; with
//! `--kill-etcd-leader-every`, the etcd leader is SIGKILLed that often and restarted
//! on its data 3 s later. Every change of leadership is a failover that nothing
//! caused. Results: `<out>/stability.json`.
//!
//! `fleet`: for each N, N clusters of three agents (the engine, in this process, with
//! the in-memory PostgreSQL) on a fresh three-member etcd; see
//! `matriarch_demo::bench::fleet`. Results: `<out>/fleet.json`, `<out>/fleet.svg`, a table.
//!
//! Exit status: 0 when every run completed (and, for stability, no leadership
//! changed); 1 otherwise; 2 for a usage error; 130 when interrupted.

use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use matriarch_demo::bench::failover::{failover_bench, FailoverPlan, Scenario};
use matriarch_demo::bench::fleet::{fleet_bench, FleetOptions, DEFAULT_CLUSTERS};
use matriarch_demo::bench::stability::{stability_bench, StabilityOptions};
use matriarch_demo::bench::system::{PatroniTiming, System};
use matriarch_demo::bench::{check_timing, Paths};
use matriarch_demo::cli::{beside_target, matriarch_or_default, run_main};
use matriarch_demo::error::{DemoError, Result};
use matriarch_demo::failover::Fault;
use matriarch_testkit::cluster::{patroni_venv, Timing};

const USAGE: &str = "\
usage: matriarch-bench failover [--runs N] [--scenario NAME]... [--idle-seconds S] [--bound SECS]
                               [--ttl S] [--loop-wait S] [--retry-timeout S]
                               [--against patroni] [--patroni-timing minimum|defaults]
                               [--matriarch PATH] [--out DIR]
       matriarch-bench stability [--minutes M] [--ttl S] [--loop-wait S] [--retry-timeout S]
                                [--kill-etcd-leader-every S] [--etcd-members N]
                                [--clients N] [--threads N] [--matriarch PATH] [--out DIR]
       matriarch-bench fleet [--clusters N[,N...]] [--runs N] [--idle-seconds S] [--bound SECS]
                             [--out DIR]

  --runs N           runs per scenario (default 5); fleet: failovers per size (default 5)
  --scenario NAME    node-crash, postgres-crash, agent-kill, switchover or sigterm;
                     repeat for several (default: these five); node-crash-under-load
                     (pgbench, 1 GB of dirty shared_buffers; run only when named)
  --idle-seconds S   how long the agents' idle CPU and memory are measured (default 60;
                     fleet: 30)
  --clusters N,...   fleet: the fleet sizes, in clusters of three agents (default 1,10,50,100,200)
  --bound SECS       a run fails when the failover is not complete within this (default 60)
  --against patroni  failover: run every scenario on Patroni 4.1 too (target/patroni-venv
                     from `cargo xtask deps`), side by side
  --patroni-timing T minimum (ttl 20, loop_wait 1, retry_timeout 3; default) or defaults
                     (ttl 30, loop_wait 10, retry_timeout 10)
  --minutes M        stability: how long pgbench runs (default 10; fractions allowed)
  --ttl S, --loop-wait S, --retry-timeout S
                     failover, stability: the leader lock's timing in seconds (default: the
                     daemon's, 4, 1, 1.5); refused unless loop_wait + 2 × retry_timeout ≤ ttl
  --kill-etcd-leader-every S
                     stability: SIGKILL the etcd leader this often, restart it 3 s later
                     (default: never)
  --etcd-members N   stability: etcd members (default 3)
  --clients N        stability: pgbench clients, also the scale (default 4)
  --threads N        stability: pgbench threads (default 2)
  --matriarch PATH   the matriarch binary (default: `matriarch` next to this program)
  --out DIR          results (default: target/bench, next to the binary's target/<profile>)
";

#[derive(Debug)]
enum Mode {
    Failover {
        timing: Timing,
        runs: usize,
        scenarios: Vec<Scenario>,
        idle: Duration,
        bound: Duration,
        against: Option<PatroniTiming>,
    },
    Stability(StabilityOptions),
    Fleet(FleetOptions),
}

#[derive(Debug)]
struct Args {
    mode: Mode,
    paths: Paths,
}

fn usage(message: impl std::fmt::Display) -> DemoError {
    DemoError::Usage(format!("{message}\n\n{USAGE}"))
}

/// `10,50` or `200`: fleet sizes, each a positive whole number.
fn parse_clusters(value: &str) -> Result<Vec<usize>> {
    value
        .split(',')
        .map(|n| {
            n.trim().parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                usage(format!(
                    "--clusters needs positive whole numbers separated by commas, got `{value}`"
                ))
            })
        })
        .collect()
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Option<Args>> {
    let mut args = args.into_iter();
    let command = match args.next() {
        None => return Err(usage("a command is needed: failover, stability or fleet")),
        Some(c) if c == "-h" || c == "--help" => return Ok(None),
        Some(c) => c,
    };
    let mut runs = 5usize;
    let mut scenarios = Vec::new();
    let mut idle = None;
    let mut clusters = Vec::new();
    let mut bound = 60.0f64;
    let mut minutes = 10.0f64;
    let mut stability = StabilityOptions::default();
    let mut timing = [None; 3];
    let mut matriarch = None;
    let mut out = None;
    let mut against = false;
    let mut patroni_timing = PatroniTiming::Minimum;
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        let value = args
            .next()
            .ok_or_else(|| usage(format!("{flag} needs a value")))?;
        let number = |v: &str| {
            v.parse::<f64>()
                .ok()
                .filter(|n| n.is_finite() && *n > 0.0)
                .ok_or_else(|| usage(format!("{flag} needs a positive number, got `{v}`")))
        };
        let whole = |v: &str| {
            v.parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| usage(format!("{flag} needs a positive whole number, got `{v}`")))
        };
        match (command.as_str(), flag.as_str()) {
            (_, "--matriarch") => matriarch = Some(PathBuf::from(value)),
            (_, "--out") => out = Some(PathBuf::from(value)),
            ("failover" | "fleet", "--runs") => {
                runs = value.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    usage(format!(
                        "--runs needs a positive whole number, got `{value}`"
                    ))
                })?;
            }
            ("failover", "--scenario") => {
                let scenario = Scenario::parse(&value)
                    .ok_or_else(|| usage(format!("unknown scenario `{value}`")))?;
                if !scenarios.contains(&scenario) {
                    scenarios.push(scenario);
                }
            }
            ("failover" | "fleet", "--idle-seconds") => idle = Some(number(&value)?),
            ("failover" | "fleet", "--bound") => bound = number(&value)?,
            ("fleet", "--clusters") => clusters.extend(parse_clusters(&value)?),
            ("failover", "--against") if value == "patroni" => against = true,
            ("failover", "--against") => {
                return Err(usage(format!(
                    "--against knows `patroni` only, got `{value}`"
                )))
            }
            ("failover", "--patroni-timing") => {
                patroni_timing = match value.as_str() {
                    "minimum" => PatroniTiming::Minimum,
                    "defaults" => PatroniTiming::Defaults,
                    _ => {
                        return Err(usage(format!(
                            "--patroni-timing is `minimum` or `defaults`, got `{value}`"
                        )))
                    }
                }
            }
            ("stability", "--minutes") => minutes = number(&value)?,
            ("failover" | "stability", "--ttl") => timing[0] = Some(number(&value)?),
            ("failover" | "stability", "--loop-wait") => timing[1] = Some(number(&value)?),
            ("failover" | "stability", "--retry-timeout") => timing[2] = Some(number(&value)?),
            ("stability", "--kill-etcd-leader-every") => {
                stability.kill_etcd_leader_every = Some(Duration::from_secs_f64(number(&value)?));
            }
            ("stability", "--etcd-members") => stability.etcd_members = whole(&value)? as usize,
            ("stability", "--clients") => stability.clients = whole(&value)?,
            ("stability", "--threads") => stability.threads = whole(&value)?,
            _ => return Err(usage(format!("unknown argument `{flag}` for `{command}`"))),
        }
    }
    let mut chosen = Timing::default();
    for (field, value) in [
        &mut chosen.ttl,
        &mut chosen.loop_wait,
        &mut chosen.retry_timeout,
    ]
    .into_iter()
    .zip(timing)
    {
        if let Some(secs) = value {
            *field = Duration::from_secs_f64(secs);
        }
    }
    check_timing(&chosen)?;
    let mode = match command.as_str() {
        "failover" => Mode::Failover {
            timing: chosen,
            runs,
            scenarios: if scenarios.is_empty() {
                Fault::ALL
                    .iter()
                    .map(|&fault| Scenario {
                        fault,
                        under_load: false,
                    })
                    .collect()
            } else {
                scenarios
            },
            idle: Duration::from_secs_f64(idle.unwrap_or(60.0)),
            bound: Duration::from_secs_f64(bound),
            against: against.then_some(patroni_timing),
        },
        "fleet" => Mode::Fleet(FleetOptions {
            clusters: if clusters.is_empty() {
                DEFAULT_CLUSTERS.to_vec()
            } else {
                clusters
            },
            idle: Duration::from_secs_f64(idle.unwrap_or(30.0)),
            runs,
            bound: Duration::from_secs_f64(bound),
        }),
        "stability" => Mode::Stability(StabilityOptions {
            duration: Duration::from_secs_f64(minutes * 60.0),
            timing: chosen,
            ..stability
        }),
        other => return Err(usage(format!("unknown command `{other}`"))),
    };
    let matriarch = matriarch_or_default(matriarch);
    // target/release/matriarch -> target/bench
    let out = out.unwrap_or_else(|| beside_target(&matriarch, "bench", "bench"));
    Ok(Some(Args {
        mode,
        paths: Paths { matriarch, out },
    }))
}

fn main() -> ExitCode {
    let parsed = parse_args(std::env::args().skip(1));
    run_main("matriarch-bench", USAGE, parsed, |args: &Args, runtime| {
        fs::create_dir_all(&args.paths.out)
            .map_err(|e| DemoError::io(format!("creating {}", args.paths.out.display()), e))?;
        match &args.mode {
            Mode::Failover {
                timing,
                runs,
                scenarios,
                idle,
                bound,
                against,
            } => {
                let against = match against {
                    Some(timing) => Some(System::Patroni {
                        venv: patroni_venv().map_err(|source| DemoError::Service {
                            what: "Patroni",
                            source,
                        })?,
                        timing: timing.timing(),
                    }),
                    None => None,
                };
                let plan = FailoverPlan {
                    timing: *timing,
                    runs: *runs,
                    scenarios: scenarios.clone(),
                    idle: *idle,
                    bound: *bound,
                    against,
                };
                failover_bench(&args.paths, &plan, runtime)
            }
            Mode::Stability(options) => stability_bench(&args.paths, options, runtime),
            Mode::Fleet(options) => fleet_bench(&args.paths.out, options, runtime),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Args {
        fn mode_fleet(&self) -> Option<&FleetOptions> {
            match &self.mode {
                Mode::Fleet(options) => Some(options),
                _ => None,
            }
        }
    }

    fn parse(list: &[&str]) -> Result<Option<Args>> {
        parse_args(list.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn arguments_are_parsed() {
        let args = parse(&[
            "failover",
            "--runs",
            "2",
            "--scenario",
            "switchover",
            "--idle-seconds",
            "2",
            "--matriarch",
            "/x/target/release/matriarch",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(args.paths.out, PathBuf::from("/x/target/bench"));
        match args.mode {
            Mode::Failover {
                timing,
                runs,
                scenarios,
                idle,
                ..
            } => {
                assert_eq!(timing, Timing::default());
                assert_eq!(runs, 2);
                assert_eq!(
                    scenarios,
                    vec![Scenario {
                        fault: Fault::Switchover,
                        under_load: false
                    }]
                );
                assert_eq!(idle, Duration::from_secs(2));
            }
            other => panic!("{other:?}"),
        }
        let args = parse(&["stability", "--minutes", "0.5"]).unwrap().unwrap();
        assert!(
            matches!(args.mode, Mode::Stability(o) if o == StabilityOptions {
                duration: Duration::from_secs(30),
                ..StabilityOptions::default()
            })
        );
        let args = parse(&[
            "stability",
            "--ttl",
            "4",
            "--retry-timeout",
            "1.5",
            "--kill-etcd-leader-every",
            "300",
            "--clients",
            "8",
        ])
        .unwrap()
        .unwrap();
        match args.mode {
            Mode::Stability(o) => {
                assert_eq!(o.timing, Timing::from_secs_f64(4.0, 1.0, 1.5));
                assert_eq!(o.kill_etcd_leader_every, Some(Duration::from_secs(300)));
                assert_eq!((o.clients, o.threads, o.etcd_members), (8, 2, 3));
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["--help"]).unwrap().is_none());
        let args = parse(&[
            "fleet",
            "--clusters",
            "10,50",
            "--clusters",
            "200",
            "--runs",
            "3",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            args.mode_fleet(),
            Some(&FleetOptions {
                clusters: vec![10, 50, 200],
                idle: Duration::from_secs(30),
                runs: 3,
                bound: Duration::from_secs(60),
            })
        );
        let args = parse(&["fleet"]).unwrap().unwrap();
        assert_eq!(
            args.mode_fleet().map(|o| o.clusters.clone()),
            Some(DEFAULT_CLUSTERS.to_vec())
        );
        for bad in [
            &["failover", "--runs", "0"][..],
            &["failover", "--scenario", "meteor"],
            &["stability", "--runs", "3"],
            &["stability", "--ttl", "3"],
            &["stability", "--clients", "1.5"],
            &["failover", "--idle-seconds"],
            &["fleet", "--clusters", "0"],
            &["fleet", "--clusters", "10,x"],
            &["fleet", "--scenario", "switchover"],
            &["dance"],
            &[],
        ] {
            assert!(matches!(parse(bad), Err(DemoError::Usage(_))), "{bad:?}");
        }
    }
}
