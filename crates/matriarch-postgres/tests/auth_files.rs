//! `pg_hba.conf` and `pg_ident.conf` follow the configuration's lines, not
//! only at bootstrap: a change applies with a reload, and the running server
//! (`pg_hba_file_rules`, `pg_ident_file_mappings`) has it without a restart.

mod support;

use matriarch_model::MemberName;
use matriarch_postgres::{PgController, PgControllerConfig, Postgres, StartAs};
use matriarch_testkit::{free_port, PgOsUser};

use support::{kill_postmaster, Passwords};

const PASSWORDS: Passwords = Passwords {
    superuser: "auth-files-super",
    replication: "auth-files-repl",
    rewind: "auth-files-rewind",
};

/// The first column of each row `sql` returns, as text.
async fn first_column(client: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    client
        .query(sql, &[])
        .await
        .unwrap_or_else(|err| panic!("{sql}: {err}"))
        .iter()
        .map(|row| row.get::<_, String>(0))
        .collect()
}

/// The server's `pg_hba_file_rules`, one `type database user address method` line each.
async fn hba_rules(client: &tokio_postgres::Client) -> Vec<String> {
    first_column(
        client,
        "SELECT concat_ws(' ', type, array_to_string(database, ','), \
         array_to_string(user_name, ','), address, netmask, auth_method) \
         FROM pg_hba_file_rules ORDER BY line_number",
    )
    .await
}

/// The server's `pg_ident_file_mappings`, `map sys pg` each.
async fn ident_maps(client: &tokio_postgres::Client) -> Vec<String> {
    first_column(
        client,
        "SELECT concat_ws(' ', map_name, sys_name, pg_username) \
         FROM pg_ident_file_mappings ORDER BY line_number",
    )
    .await
}

/// The postmaster's pid (unchanged: no restart).
fn postmaster_pid(data_dir: &std::path::Path) -> String {
    std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .expect("postmaster.pid")
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// A bootstrapped server of the test's own, killed and removed when
/// dropped (fields drop in order: the server before its directory).
struct Server {
    ctl: PgController,
    client: tokio_postgres::Client,
    name: MemberName,
    port: u16,
    data_dir: std::path::PathBuf,
    _kill: KillOnDrop,
    _dir: tempfile::TempDir,
}

/// Bootstraps member `name` with the configuration `adjust` leaves.
async fn bootstrapped(name: &str, adjust: impl FnOnce(&mut PgControllerConfig)) -> Server {
    let user = PgOsUser::detect().expect("PostgreSQL OS user");
    let dir = user.tempdir("matriarch-auth-files-").expect("tempdir");
    let name = MemberName::new(name).expect("member name");
    let port = free_port().expect("free port");
    let mut config = PASSWORDS.config(&name, dir.path(), port, &[]);
    adjust(&mut config);
    let data_dir = config.data_dir.clone();
    let ctl = PgController::new(config).expect("controller");
    let kill = KillOnDrop(data_dir.clone());
    ctl.bootstrap(&PASSWORDS.spec()).await.expect("bootstrap");
    let client = PASSWORDS.client(&name, port).await;
    Server {
        ctl,
        client,
        name,
        port,
        data_dir,
        _kill: kill,
        _dir: dir,
    }
}

#[tokio::test]
async fn changed_pg_hba_and_pg_ident_apply_with_a_reload() {
    let server = bootstrapped("auth1", |config| {
        config.pg_hba = vec!["host all rolea 10.1.0.0/16 scram-sha-256".to_owned()];
        config.pg_ident = vec!["office alice rolea".to_owned()];
    })
    .await;
    let (ctl, client, data_dir) = (&server.ctl, &server.client, &server.data_dir);

    // At bootstrap: the configured lines first, then matriarch's own.
    let rules = hba_rules(client).await;
    assert_eq!(
        rules.first().map(String::as_str),
        Some("host all rolea 10.1.0.0 255.255.0.0 scram-sha-256"),
        "{rules:?}"
    );
    assert!(
        rules.iter().any(|r| r.starts_with("local all all")),
        "{rules:?}"
    );
    assert_eq!(ident_maps(client).await, ["office alice rolea"]);
    let pid = postmaster_pid(data_dir);

    // A change: written and in force after a reload, without a restart.
    let changed = ctl
        .set_auth_lines(
            vec![
                "host all roleb 10.2.0.0/16 scram-sha-256".to_owned(),
                "hostssl all rolec 10.3.0.0/16 scram-sha-256".to_owned(),
            ],
            vec!["lab bob roleb".to_owned()],
        )
        .expect("valid lines");
    assert!(changed);
    ctl.reload().await.expect("reload");
    let rules = hba_rules(client).await;
    assert_eq!(
        &rules[..2],
        [
            "host all roleb 10.2.0.0 255.255.0.0 scram-sha-256",
            "hostssl all rolec 10.3.0.0 255.255.0.0 scram-sha-256"
        ],
        "{rules:?}"
    );
    assert!(!rules.iter().any(|r| r.contains("rolea")), "{rules:?}");
    assert_eq!(ident_maps(client).await, ["lab bob roleb"]);
    assert_eq!(postmaster_pid(data_dir), pid, "the server restarted");

    // The same lines again: nothing to do. A line break: refused, nothing changes.
    assert!(!ctl
        .set_auth_lines(
            vec![
                "host all roleb 10.2.0.0/16 scram-sha-256".to_owned(),
                "hostssl all rolec 10.3.0.0/16 scram-sha-256".to_owned(),
            ],
            vec!["lab bob roleb".to_owned()],
        )
        .expect("same lines"));
    assert!(ctl
        .set_auth_lines(
            vec!["host all x 0.0.0.0/0 trust\nlocal all all trust".to_owned()],
            vec![]
        )
        .is_err());

    // A stop and a start keep them (rewritten on every start).
    ctl.stop(matriarch_postgres::StopMode::Fast)
        .await
        .expect("stop");
    ctl.start(StartAs::Primary).await.expect("start");
    let client = PASSWORDS.client(&server.name, server.port).await;
    assert!(hba_rules(&client).await[0].contains("roleb"));
}

/// Kills the test's server when the test ends, however it ends.
struct KillOnDrop(std::path::PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        kill_postmaster(&self.0, libc::SIGKILL);
    }
}

#[tokio::test]
async fn the_nodes_lines_win_over_the_clusters_file_by_file() {
    let server = bootstrapped("auth2", |config| {
        config.pg_hba = vec!["host all nodeuser 10.5.0.0/16 scram-sha-256".to_owned()];
    })
    .await;
    let (ctl, client) = (&server.ctl, &server.client);

    assert!(ctl
        .set_cluster_auth_lines(
            vec!["host all clusteruser 10.6.0.0/16 scram-sha-256".to_owned()],
            vec!["cluster carol clusteruser".to_owned()],
        )
        .expect("valid lines"));
    ctl.reload().await.expect("reload");
    let rules = hba_rules(client).await;
    // pg_hba: the node's; pg_ident: the cluster's (the node has none).
    assert!(rules[0].contains("nodeuser"), "{rules:?}");
    assert!(
        !rules.iter().any(|r| r.contains("clusteruser")),
        "{rules:?}"
    );
    assert_eq!(ident_maps(client).await, ["cluster carol clusteruser"]);

    // Without node lines, the cluster's apply.
    assert!(ctl.set_auth_lines(Vec::new(), Vec::new()).expect("valid"));
    ctl.reload().await.expect("reload");
    let rules = hba_rules(client).await;
    assert!(rules[0].contains("clusteruser"), "{rules:?}");
}
