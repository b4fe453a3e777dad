//! `postgresql.pg_hba` and `postgresql.pg_ident` of the node file are
//! written to the data directory at start and again whenever they change:
//! a SIGHUP applies a change with a reload, without a restart.

mod common;

use std::time::Duration;

use common::{wait_for, Cluster, Options};

/// The node file's parameters end here; the lines go after them.
const PARAMETERS_END: &str = "    wal_keep_size: 128MB\n";

#[test]
fn a_changed_pg_hba_applies_on_sighup_without_a_restart() {
    let mut cluster = Cluster::configure_on_etcd(1, Options::default());
    cluster.edit_config(
        0,
        PARAMETERS_END,
        &format!(
            "{PARAMETERS_END}  pg_hba:\n  - host all rolea 10.1.0.0/16 scram-sha-256\n  pg_ident:\n  - office alice rolea\n"
        ),
    );
    cluster.nodes[0].start(&[]);
    let primary = cluster.wait_healthy(0, Duration::from_secs(60));
    let node = &cluster.nodes[primary];
    let count = |sql: &str| node.psql(sql).ok().map(|out| out.trim().to_owned());
    let rolea = "SELECT count(*) FROM pg_hba_file_rules WHERE 'rolea' = ANY(user_name)";
    let roleb = "SELECT count(*) FROM pg_hba_file_rules WHERE 'roleb' = ANY(user_name)";
    let ident_bob = "SELECT count(*) FROM pg_ident_file_mappings WHERE sys_name = 'bob'";
    assert_eq!(count(rolea).as_deref(), Some("1"), "{}", cluster.logs());
    let pid = node.postmaster_pid();

    node.edit_config(
        "  - host all rolea 10.1.0.0/16 scram-sha-256\n",
        "  - host all roleb 10.2.0.0/16 scram-sha-256\n",
    );
    node.edit_config("  - office alice rolea\n", "  - lab bob roleb\n");
    node.signal(libc::SIGHUP);

    let applied = wait_for(Duration::from_secs(15), || {
        (count(roleb).as_deref() == Some("1")
            && count(rolea).as_deref() == Some("0")
            && count(ident_bob).as_deref() == Some("1"))
        .then_some(())
    });
    assert!(applied.is_some(), "{}", node.log_tail(30));
    assert_eq!(node.postmaster_pid(), pid, "PostgreSQL restarted");
    let log = std::fs::read_to_string(&node.log).unwrap();
    assert!(
        log.contains("pg_hba/pg_ident changed"),
        "{}",
        node.log_tail(30)
    );
    // Not reported as waiting for a restart of the agent.
    assert!(
        !log.contains("take effect after a restart"),
        "{}",
        node.log_tail(30)
    );
}

/// Patroni's dynamic `postgresql.pg_hba`/`pg_ident`: every member writes
/// them when its node file has none, and a change applies with a reload.
#[test]
fn the_clusters_pg_hba_applies_when_the_node_has_none() {
    let options = Options::with_dcs(
        "    postgresql:\n      pg_hba:\n      - host all rolec 10.3.0.0/16 scram-sha-256\n",
    );
    let (cluster, primary) = Cluster::healthy_on_etcd(1, options, Duration::from_secs(60));
    let node = &cluster.nodes[primary];
    let count = |role: &str| {
        node.psql(&format!(
            "SELECT count(*) FROM pg_hba_file_rules WHERE '{role}' = ANY(user_name)"
        ))
        .ok()
        .map(|out| out.trim().to_owned())
    };
    let bootstrapped = wait_for(Duration::from_secs(15), || {
        (count("rolec").as_deref() == Some("1")).then_some(())
    });
    assert!(bootstrapped.is_some(), "{}", node.log_tail(30));
    let pid = node.postmaster_pid();

    let response = node.call(
        "PATCH",
        "/config",
        r#"{"postgresql": {"pg_hba": ["host all roled 10.4.0.0/16 scram-sha-256"], "pg_ident": ["lab dave roled"]}}"#,
        true,
    );
    assert_eq!(response.status, 200, "{}", response.body_text());
    let applied = wait_for(Duration::from_secs(15), || {
        let ident = node
            .psql("SELECT count(*) FROM pg_ident_file_mappings WHERE sys_name = 'dave'")
            .ok()?;
        (count("roled").as_deref() == Some("1")
            && count("rolec").as_deref() == Some("0")
            && ident.trim() == "1")
            .then_some(())
    });
    assert!(applied.is_some(), "{}", node.log_tail(30));
    assert_eq!(node.postmaster_pid(), pid, "PostgreSQL restarted");

    // A value that is not a list of lines is refused.
    let response = node.call(
        "PATCH",
        "/config",
        r#"{"postgresql": {"pg_hba": "host all all 0.0.0.0/0 trust"}}"#,
        true,
    );
    assert_eq!(response.status, 400, "{}", response.body_text());
    assert_eq!(count("roled").as_deref(), Some("1"));
}
