//! `cargo xtask help`.

/// The list of commands.
pub(crate) const USAGE: &str = "\
usage: cargo xtask <command> [args]

commands:
  deps          install missing test dependencies (Debian packages, the `postgres`
                OS user, the moto venv in target/moto-venv); skips what is present
  test [args]   deps, then cargo fmt --check, cargo clippy -D warnings, and every
                test binary of the workspace, 3 at a time (MATRIARCH_TEST_JOBS=N to
                change; logs in target/xtask-test/), with three suites again on
                PostgreSQL 18; with [args], cargo test --workspace [args] instead
  demo [--keep] deps, build matriarch and the demo, then run it: three nodes on
                loopback behind a DNS name, a node crash, the failover timeline
                (logs in target/demo); --keep leaves the cluster up until Ctrl-C
  sim [--seeds N] [--first-seed F] [--seed S] [--pre-fix]
                the deterministic cluster simulation (release build): N seeds of
                mixed faults from F (default 20000 from 1), or replay seed S with its trace;
                --pre-fix: every issue-14 regression planted back at once (default 400
                seeds), which of them an invariant finds and on which seed
  bench failover [--runs N] [--scenario NAME]... [--idle-seconds S] [--ttl S --loop-wait S --retry-timeout S]
                 [--against patroni [--patroni-timing minimum|defaults]]
                deps, release build, then the failover benchmark: N runs (default 5)
                of node-crash, postgres-crash, agent-kill, switchover, sigterm (and,
                when named, node-crash-under-load: pgbench with 1 GB of dirty
                shared_buffers); with --against patroni each scenario also runs on
                Patroni 4.1 (target/patroni-venv) in the same run, side by side;
                target/bench/failover.json, failover-<scenario>[-patroni].svg, a table
  bench stability [--minutes M] [--kill-etcd-leader-every S] [--ttl S --loop-wait S --retry-timeout S]
                pgbench -c 4 -j 2 for M minutes (default 10) against the primary of a cluster
                on a three-member etcd, optionally SIGKILLing the etcd leader every S seconds,
                counting failovers nothing caused; target/bench/stability.json
  bench fleet [--clusters N[,N...]] [--runs R] [--idle-seconds S]
                N clusters of three in-process agents (the engine with the in-memory
                PostgreSQL) on a three-member etcd, for each N (default 1,10,50,100,200):
                etcd writes/s, watch events, CPU and memory, R failovers of one cluster
                (default 5); target/bench/fleet.json, fleet.svg, a table
  chaos [--faults N] [--seed N] [--mode synchronous|strict|quorum|asynchronous] [--keep]
                as root: deps, build, then a three-node cluster (etcd x3, BIND,
                PostgreSQL) in network namespaces under N seeded faults (default 12):
                kills, stops, partitions, etcd outages, garbage keys; checks lost and
                deposed-primary writes; target/chaos/<run>.json, a table, exit 1 on a
                violation or a cluster that did not recover (also --ttl, --loop-wait,
                --retry-timeout S: the timing, 5/1/2 by default; --recovery-timeout S;
                --dcs etcd|zookeeper: a three-server etcd or ZooKeeper ensemble;
                --kinds a,b: draw the faults from these kinds only)
  image [--test]
                as root: a container image in Spilo's form (PostgreSQL 15 and
                matriarch, configured from the environment) built from Debian's
                packages with debootstrap and imported into podman (no registry);
                --test then runs etcd and three containers with host networking,
                kills the primary's container and checks the failover and that no
                acknowledged write was lost (target/image/failover.json)
  package [--check]
                release build, then the Debian package target/debian/matriarch_<version>_<arch>.deb
                (dpkg-deb; files from packaging/); --check, as root: dpkg -i it, run
                `matriarch check` on the packaged /etc/matriarch/node.yaml, dpkg --purge
  imports       the import-cycle check (also a test of `test`): lists files of a crate that
                use each other, directly or through others; fails if any
  help          show this message
";
