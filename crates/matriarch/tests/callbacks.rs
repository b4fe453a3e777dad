//! Patroni's `on_restart` and `on_reload` callbacks, on a real cluster:
//! called as `<cmd> <action> <role> <scope>`, `on_restart` once a restart
//! the agent performed (`ctl restart`, `POST /restart`) has started
//! PostgreSQL again (instead of `on_stop` and `on_start`), `on_reload` after
//! each reload (`ctl reload`, a parameter change applied by reload).

mod common;

use std::time::Duration;

use common::{wait_for, Cluster, Options, RecordedCallbacks};

#[test]
fn restart_and_reload_fire_on_restart_and_on_reload_with_patronis_arguments() {
    let recorded = RecordedCallbacks::new();
    let options = Options {
        extra: recorded.yaml(&["on_start", "on_stop", "on_restart", "on_reload"]),
        ..Options::default()
    };
    let mut cluster = Cluster::configure_on_etcd(2, options);
    cluster.start_each_named();
    let primary = cluster.wait_healthy(1, Duration::from_secs(60));
    let replica = 1 - primary;
    let calls = |i: usize| recorded.calls(&cluster.nodes[i].name);
    // Waits until node i's calls after the first `seen` include `line`;
    // returns the calls after `seen`.
    let wait_call = |i: usize, seen: usize, line: &str| -> Vec<String> {
        let got = wait_for(Duration::from_secs(20), || {
            let mut all = calls(i);
            let new = all.split_off(seen.min(all.len()));
            new.iter().any(|l| l == line).then_some(new)
        });
        got.unwrap_or_else(|| {
            panic!(
                "{}: no `{line}` after call {seen}: {:?}\n{}",
                cluster.nodes[i].name,
                calls(i),
                cluster.logs()
            )
        })
    };
    wait_call(primary, 0, "on_start primary e2e");
    wait_call(replica, 0, "on_start replica e2e");

    // A restart the agent performs calls on_restart, not on_stop/on_start.
    for (i, role) in [(primary, "primary"), (replica, "replica")] {
        let seen = calls(i).len();
        let before = cluster.nodes[i].postmaster_pid();
        let out = cluster.nodes[i].ctl(&["restart", &cluster.nodes[i].name, "--force"]);
        assert!(
            out.status.success(),
            "ctl restart: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_ne!(cluster.nodes[i].postmaster_pid(), before, "not restarted");
        let new = wait_call(i, seen, &format!("on_restart {role} e2e"));
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            calls(i).split_off(seen),
            [format!("on_restart {role} e2e")],
            "a restart calls on_restart alone (saw {new:?})"
        );
    }

    // `ctl reload` reloads PostgreSQL: on_reload.
    let seen = calls(primary).len();
    let out = cluster.nodes[primary].ctl(&["reload", &cluster.nodes[primary].name, "--force"]);
    assert!(
        out.status.success(),
        "ctl reload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_call(primary, seen, "on_reload primary e2e");

    // A dynamic parameter change applies by reload on every member.
    let seen = [calls(0).len(), calls(1).len()];
    let change = r#"{"postgresql": {"parameters": {"work_mem": "7MB"}}}"#;
    let response = cluster.nodes[primary].call("PATCH", "/config", change, true);
    cluster.assert_status(&response, 200);
    wait_call(primary, seen[primary], "on_reload primary e2e");
    wait_call(replica, seen[replica], "on_reload replica e2e");
}
