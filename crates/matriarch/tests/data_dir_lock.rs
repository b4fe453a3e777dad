//! A second agent started by mistake on another member's data directory
//! (a copied configuration whose `name` was changed but not its
//! `data_dir`) refuses to start, naming the lock, and leaves the first
//! member's PostgreSQL running.

mod common;

use std::fs;
use std::time::Duration;

use common::{wait_for, Cluster, Options};

#[test]
fn a_second_agent_on_the_same_data_directory_refuses_to_start() {
    let mut cluster = Cluster::configure_on_etcd(2, Options::default());
    cluster.start_node1_as_primary(Duration::from_secs(60));
    let postmaster = cluster.nodes[0].postmaster_pid();
    assert!(postmaster.is_some(), "node1's PostgreSQL is not running");

    // node2's configuration: node1's, copied, with its own name and REST
    // API port, but node1's data directory and PostgreSQL port.
    let copied = fs::read_to_string(&cluster.nodes[0].config).expect("read node1's config");
    let copied = copied.replace("name: node1", "name: node2").replace(
        &format!("127.0.0.1:{}", cluster.nodes[0].api_port),
        &format!("127.0.0.1:{}", cluster.nodes[1].api_port),
    );
    fs::write(&cluster.nodes[1].config, copied).expect("write node2's config");
    let second = &mut cluster.nodes[1];
    second.start(&[]);
    let status = wait_for(Duration::from_secs(15), || second.exit_status());
    if status.is_none() {
        // Today's behaviour: it runs; stopping it shows what it does.
        second.signal(libc::SIGTERM);
        if !second.wait_exit(Duration::from_secs(30)) {
            second.kill_agent();
        }
    }
    let second_log = fs::read_to_string(&cluster.nodes[1].log).unwrap_or_default();
    let still_running = cluster.nodes[0].postmaster_pid();
    assert_eq!(
        still_running, postmaster,
        "node1's PostgreSQL was stopped by the second agent (exit on its own: {status:?})\nsecond agent:\n{second_log}"
    );
    assert!(
        status.is_some_and(|s| !s.success()),
        "the second agent did not refuse to start (exit: {status:?})\nsecond agent:\n{second_log}"
    );
    assert!(
        second_log.contains(".matriarch.lock"),
        "the refusal does not name the lock:\n{second_log}"
    );
    assert_eq!(
        cluster.nodes[0].status("/primary"),
        200,
        "node1 is no longer the primary"
    );
}
