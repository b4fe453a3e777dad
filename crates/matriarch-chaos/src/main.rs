//! `matriarch-chaos`: the program `cargo xtask chaos` runs (see the library's docs).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use matriarch_chaos::{run, sys, ChaosError, Dcs, FaultKind, Mode, Options};

const USAGE: &str = "\
usage: matriarch-chaos [--faults N] [--seed N] [--mode synchronous|strict|quorum|asynchronous]
                       [--dcs etcd|zookeeper] [--kinds KIND,KIND...]
                       [--keep] [--matriarch PATH] [--out DIR]
                       [--ttl S] [--loop-wait S] [--retry-timeout S] [--recovery-timeout S]

A three-node matriarch cluster (etcd x3 or ZooKeeper x3, BIND, PostgreSQL) in network
namespaces under seeded faults; checks lost and deposed-primary writes. Needs root.
--kinds draws the faults from these kinds only (each once first, in a seeded order).
Defaults: 12 faults, a seed from the clock, synchronous mode, ttl 5 / loop_wait 1 /
retry_timeout 2, target/debug/matriarch, reports in target/chaos.
Exit: 0 passed, 1 a check failed or a fault was not recovered from, 2 usage, 3 error.
";

fn parse(args: &[String]) -> Result<Options, ChaosError> {
    let seed = sys::now_us() % 1_000_000;
    let mut opts = Options::new(seed);
    let mut it = args.iter();
    let number = |flag: &str, v: Option<&String>| -> Result<u64, ChaosError> {
        v.and_then(|v| v.parse().ok())
            .ok_or_else(|| ChaosError::Usage(format!("{flag} needs a whole number")))
    };
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--faults" => opts.settings.faults = number(flag, it.next())? as usize,
            "--seed" => opts.settings.seed = number(flag, it.next())?,
            "--mode" => {
                opts.settings.mode = it
                    .next()
                    .ok_or_else(|| ChaosError::Usage("--mode needs a value".into()))?
                    .parse::<Mode>()?
            }
            "--dcs" => {
                opts.settings.dcs = it
                    .next()
                    .ok_or_else(|| ChaosError::Usage("--dcs needs a value".into()))?
                    .parse::<Dcs>()?
            }
            "--kinds" => {
                opts.settings.kinds = it
                    .next()
                    .ok_or_else(|| ChaosError::Usage("--kinds needs a list of kinds".into()))?
                    .split(',')
                    .filter(|k| !k.trim().is_empty())
                    .map(|k| FaultKind::parse(k.trim()))
                    .collect::<Result<Vec<_>, _>>()?;
                if opts.settings.kinds.is_empty() {
                    return Err(ChaosError::Usage("--kinds needs at least one kind".into()));
                }
            }
            "--keep" => opts.keep = true,
            "--matriarch" => {
                opts.matriarch = PathBuf::from(
                    it.next()
                        .ok_or_else(|| ChaosError::Usage("--matriarch needs a path".into()))?,
                )
            }
            "--out" => {
                opts.out_dir = PathBuf::from(
                    it.next()
                        .ok_or_else(|| ChaosError::Usage("--out needs a directory".into()))?,
                )
            }
            "--ttl" => opts.settings.timing.0 = number(flag, it.next())?,
            "--loop-wait" => opts.settings.timing.1 = number(flag, it.next())?,
            "--retry-timeout" => opts.settings.timing.2 = number(flag, it.next())?,
            "--recovery-timeout" => {
                opts.recovery_timeout = Duration::from_secs(number(flag, it.next())?)
            }
            "-h" | "--help" => return Err(ChaosError::Usage(String::new())),
            other => return Err(ChaosError::Usage(format!("unknown argument `{other}`"))),
        }
    }
    let (ttl, loop_wait, retry) = opts.settings.timing;
    if loop_wait == 0 || retry == 0 || loop_wait + 2 * retry > ttl {
        return Err(ChaosError::Usage(format!(
            "the timing must satisfy loop_wait + 2 x retry_timeout <= ttl, all > 0 (got {ttl}/{loop_wait}/{retry})"
        )));
    }
    if opts.settings.faults == 0 {
        return Err(ChaosError::Usage("--faults must be at least 1".into()));
    }
    Ok(opts)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse(&args) {
        Ok(o) => o,
        Err(ChaosError::Usage(msg)) => {
            if !msg.is_empty() {
                eprintln!("matriarch-chaos: {msg}\n");
            }
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("matriarch-chaos: {e}");
            return ExitCode::from(2);
        }
    };
    sys::install_interrupt_handler();
    println!(
        "matriarch-chaos: {} faults, seed {}, mode {}, dcs {} (replay: {})",
        opts.settings.faults,
        opts.settings.seed,
        opts.settings.mode.name(),
        opts.settings.dcs.name(),
        opts.settings.replay_command()
    );
    match run(&opts) {
        Ok(report) => {
            if let Some(tails) = &report.log_tails {
                println!("\n===== log tails =====\n{tails}");
            }
            println!("\n{}", report.summary());
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(ChaosError::Interrupted) => {
            eprintln!(
                "matriarch-chaos: interrupted; everything was stopped and the namespaces deleted"
            );
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!(
                "matriarch-chaos: {e}\n(seed {}: replay with {})",
                opts.settings.seed,
                opts.settings.replay_command()
            );
            ExitCode::from(3)
        }
    }
}
