//! The short chaos run: a real three-node cluster (etcd x3, BIND, PostgreSQL) in
//! network namespaces, synchronous mode, every fault kind once (fixed seed).
//!
//! Needs root and `ip netns` (it runs inside `cargo xtask test`, as root); anything
//! else fails with a message saying so instead of skipping.

use std::path::PathBuf;
use std::time::Duration;

use matriarch_chaos::{run, FaultKind, Mode, Options};

/// The workspace's `debug/matriarch` (honouring `CARGO_TARGET_DIR`), built when missing.
fn matriarch_binary() -> PathBuf {
    matriarch_testkit::cluster::matriarch_binary().expect("the matriarch binary")
}

#[test]
fn short_chaos_run_loses_no_acknowledged_write_and_recovers_from_every_fault_kind() {
    let mut opts = Options::new(20_261_128);
    opts.settings.faults = FaultKind::ALL.len();
    opts.settings.mode = Mode::Synchronous;
    opts.matriarch = matriarch_binary();
    opts.recovery_timeout = Duration::from_secs(60);
    let report = match run(&opts) {
        Ok(report) => report,
        Err(e) => panic!(
            "the chaos run could not be carried out: {e}\n(it needs root and `ip netns`: \
             run it through `cargo xtask test` as root)"
        ),
    };
    println!("{}", report.summary());
    if let Some(tails) = &report.log_tails {
        println!("{tails}");
    }
    let kinds = report.kinds_run();
    for kind in FaultKind::ALL {
        assert!(
            kinds.contains(&kind),
            "fault kind {} did not run",
            kind.name()
        );
    }
    for fault in &report.faults {
        assert!(
            fault.recovered_us.is_some(),
            "the cluster did not recover from fault #{} ({}): {:?}",
            fault.index,
            fault.planned.kind.name(),
            fault.error
        );
    }
    assert_eq!(
        report.findings.lost_count,
        Some(0),
        "lost acknowledged writes: {:?}",
        report.findings.lost_ids
    );
    assert_eq!(
        report.findings.deposed_count, 0,
        "writes acknowledged by a deposed primary: {:?}",
        report.findings.deposed_acks
    );
    assert!(report.writes.acknowledged > 100, "the client barely wrote");
    assert!(report.passed(), "{:?}", report.problems);
}
