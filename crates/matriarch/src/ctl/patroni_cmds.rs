//! patronictl's commands that scripts use besides the core ones: `version`,
//! `flush <cluster> [members] restart|switchover`, `dsn`, `list --watch`,
//! and the check of the cluster name patronictl takes as first argument.

use std::path::Path;
use std::time::Duration;

use hyper::Method;
use serde_json::Value;

use super::args::{Format, MemberChoice};
use super::client::{Client, Endpoint, ReadOutcome};
use super::commands::{self, confirm};
use super::error::CtlError;
use super::from_dcs;
use super::view::Cluster;

/// Fails unless `expected` (the cluster name given on the command line,
/// as patronictl's first argument) is the cluster the API serves.
pub(super) fn check_cluster_name(
    expected: Option<&str>,
    cluster: &Cluster,
) -> Result<(), CtlError> {
    match (expected, cluster.scope.as_deref()) {
        (Some(wanted), Some(actual)) if wanted != actual => Err(CtlError::Failed(format!(
            "the API serves cluster {actual}, not {wanted}"
        ))),
        _ => Ok(()),
    }
}

/// Reads the cluster and checks its name.
async fn read_named_cluster(
    client: &mut Client,
    expected: Option<&str>,
) -> Result<Cluster, CtlError> {
    let (value, endpoint) = client.get_json("/cluster").await?;
    let cluster = Cluster::parse(&value).map_err(|e| {
        CtlError::Failed(format!(
            "{}: unexpected answer: {e}",
            endpoint.url("/cluster")
        ))
    })?;
    check_cluster_name(expected, &cluster)?;
    Ok(cluster)
}

/// Checks the cluster name alone (for the commands that read no members).
pub(super) async fn require_cluster(
    client: &mut Client,
    expected: Option<&str>,
) -> Result<(), CtlError> {
    if expected.is_some() {
        read_named_cluster(client, expected).await?;
    }
    Ok(())
}

/// The cluster from the APIs (and the one that answered), else, when none can serve it and
/// a node configuration names the DCS, from the DCS (`None`).
async fn read_cluster_or_dcs(
    client: &mut Client,
    node_config: Option<&Path>,
) -> Result<(Cluster, Option<Endpoint>), CtlError> {
    let unanswered = match client.try_get_json("/cluster").await? {
        ReadOutcome::Answered(value, endpoint) => {
            let cluster = Cluster::parse(&value).map_err(|e| {
                CtlError::Failed(format!(
                    "{}: unexpected answer: {e}",
                    endpoint.url("/cluster")
                ))
            })?;
            return Ok((cluster, Some(endpoint)));
        }
        ReadOutcome::Unanswered(error) => error,
    };
    let Some(file) = node_config else {
        return Err(unanswered);
    };
    match from_dcs::read_cluster(file).await {
        Ok(cluster) => Ok((cluster, None)),
        Err(dcs) => Err(match unanswered {
            CtlError::Failed(apis) => CtlError::Failed(format!(
                "{apis}
and the DCS could not be read: {dcs}"
            )),
            usage => usage,
        }),
    }
}

/// `list`/`topology`, once or every `watch` seconds until interrupted; from the DCS of
/// `node_config` when no API answers.
pub(super) async fn list(
    client: &mut Client,
    expected: Option<&str>,
    node_config: Option<&Path>,
    format: Format,
    tree: bool,
    watch: Option<Duration>,
) -> Result<(), CtlError> {
    loop {
        let (cluster, answered) = read_cluster_or_dcs(client, node_config).await?;
        check_cluster_name(expected, &cluster)?;
        commands::print_members(client, cluster, answered.as_ref(), format, tree).await?;
        let Some(interval) = watch else {
            return Ok(());
        };
        println!();
        tokio::time::sleep(interval).await;
    }
}

/// PostgreSQL's `server_version` number as text: 150002 is 15.2, 90603 9.6.3.
fn format_pg_version(version: u64) -> String {
    if version < 100_000 {
        format!(
            "{}.{}.{}",
            version / 10000,
            version / 100 % 100,
            version % 100
        )
    } else {
        format!("{}.{}", version / 10000, version % 10000)
    }
}

/// `version [cluster] [member...]`: this tool's version, then each member's
/// as patronictl prints them (`name: Patroni X PostgreSQL Y`).
pub(super) async fn version(
    client: &mut Client,
    cluster_name: Option<&str>,
    members: &[String],
) -> Result<(), CtlError> {
    println!("matriarch ctl version {}", env!("CARGO_PKG_VERSION"));
    if cluster_name.is_none() {
        return Ok(());
    }
    println!();
    let cluster = read_named_cluster(client, cluster_name).await?;
    for member in &cluster.members {
        if !members.is_empty() && !members.contains(&member.name) {
            continue;
        }
        let Ok(api) = commands::member_api(member) else {
            continue;
        };
        match client.get_json_from(&api, "/patroni").await {
            Ok(status) => {
                let version = status
                    .pointer("/patroni/version")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown");
                let pg = status
                    .get("server_version")
                    .and_then(Value::as_u64)
                    .map(|v| format!(" PostgreSQL {}", format_pg_version(v)))
                    .unwrap_or_default();
                println!("{}: Patroni {version}{pg}", member.name);
            }
            Err(CtlError::Failed(e) | CtlError::Usage(e)) => {
                println!("{}: failed to get version: {e}", member.name)
            }
        }
    }
    Ok(())
}

/// What `flush` discards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FlushTarget {
    /// Scheduled restarts (`DELETE /restart` on the members).
    Restart,
    /// A scheduled switchover (`DELETE /switchover`).
    Switchover,
}

/// Splits `flush`'s positional arguments as patronictl takes them:
/// `CLUSTER [MEMBER]... restart|switchover`.
pub(super) fn parse_flush(args: &[String]) -> Result<(String, Vec<String>, FlushTarget), CtlError> {
    let usage =
        || CtlError::Usage("flush needs: CLUSTER [MEMBER]... restart|switchover".to_owned());
    let (target, rest) = args.split_last().ok_or_else(usage)?;
    let (cluster, members) = rest.split_first().ok_or_else(usage)?;
    let target = match target.as_str() {
        "restart" => FlushTarget::Restart,
        "switchover" => FlushTarget::Switchover,
        other => {
            return Err(CtlError::Usage(format!(
                "flush: {other:?} is not restart or switchover"
            )))
        }
    };
    Ok((cluster.clone(), members.to_vec(), target))
}

/// `flush CLUSTER [MEMBER]... restart|switchover`.
pub(super) async fn flush(
    client: &mut Client,
    args: &[String],
    force: bool,
) -> Result<(), CtlError> {
    let (cluster_name, names, target) = parse_flush(args)?;
    let cluster = read_named_cluster(client, Some(&cluster_name)).await?;
    match target {
        FlushTarget::Switchover => {
            // The member reads the DCS now; /cluster may be a loop old.
            let reply = client.mutate(Method::DELETE, "/switchover", None).await?;
            match reply.status {
                200 => {
                    println!("Success: {}", reply.message());
                    Ok(())
                }
                404 => {
                    println!("No pending scheduled switchover");
                    Ok(())
                }
                _ => Err(CtlError::Failed(format!("Failed: {}", reply.answered()))),
            }
        }
        FlushTarget::Restart => {
            let mut targets = Vec::new();
            for member in &cluster.members {
                if names.is_empty() || names.contains(&member.name) {
                    targets.push(member);
                }
            }
            for name in &names {
                if cluster.member(name).is_none() {
                    return Err(CtlError::Failed(format!(
                        "member {name} does not exist in {cluster_name} (members: {})",
                        cluster.names()
                    )));
                }
            }
            if names.is_empty() {
                let all: Vec<&str> = targets.iter().map(|m| m.name.as_str()).collect();
                confirm(
                    &format!(
                        "Are you sure you want to flush scheduled restarts of members {}?",
                        all.join(", ")
                    ),
                    force,
                )?;
            }
            let mut failed = Vec::new();
            for member in targets {
                let api = commands::member_api(member)?;
                let reply = client
                    .mutate_at(&api, Method::DELETE, "/restart", None)
                    .await?;
                match reply.status {
                    200 => println!(
                        "Success: flush scheduled restart for member {}",
                        member.name
                    ),
                    404 => println!("No scheduled restart for member {}", member.name),
                    status => {
                        eprintln!(
                            "Failed: flush scheduled restart for member {}, status code={status}, ({})",
                            member.name,
                            reply.message()
                        );
                        failed.push(member.name.clone());
                    }
                }
            }
            commands::failed_on("flush", &failed)
        }
    }
}

/// `dsn [CLUSTER] [--role R] [--member M]`: `host=H port=P` of the leader
/// (by default), of a member with that role, or of that member.
pub(super) async fn dsn(client: &mut Client, choice: &MemberChoice) -> Result<(), CtlError> {
    let (host, port) = member_address(client, choice).await?;
    println!("host={host} port={port}");
    Ok(())
}

/// PostgreSQL's address of the leader (by default), of a member with
/// `--role`, or of `--member`, as patronictl's `get_any_member` picks it.
pub(super) async fn member_address(
    client: &mut Client,
    choice: &MemberChoice,
) -> Result<(String, u16), CtlError> {
    let (role, member) = (choice.role.as_deref(), choice.member.as_deref());
    if role.is_some() && member.is_some() {
        return Err(CtlError::Usage(
            "--role and --member are mutually exclusive".to_owned(),
        ));
    }
    let cluster = read_named_cluster(client, choice.cluster.get()).await?;
    let found = match (member, role.unwrap_or("leader")) {
        (Some(name), _) => cluster.member(name),
        (None, "leader" | "primary" | "master") => cluster.leader(),
        (None, "replica") => cluster.members.iter().find(|m| !m.is_leader()),
        (None, "any") => cluster.members.first(),
        (None, other) => {
            return Err(CtlError::Usage(format!(
                "--role {other:?}: leader, primary, replica or any"
            )))
        }
    };
    let Some(found) = found else {
        return Err(CtlError::Failed(
            "Can not find a suitable member".to_owned(),
        ));
    };
    let port = found
        .port
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(5432);
    Ok((found.host.clone(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_arguments_split_as_patronictls() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_flush(&args(&["demo", "restart"])).unwrap(),
            ("demo".to_owned(), vec![], FlushTarget::Restart)
        );
        assert_eq!(
            parse_flush(&args(&["demo", "pg1", "pg2", "switchover"])).unwrap(),
            (
                "demo".to_owned(),
                vec!["pg1".to_owned(), "pg2".to_owned()],
                FlushTarget::Switchover
            )
        );
        assert!(parse_flush(&args(&["restart"])).is_err());
        assert!(parse_flush(&args(&["demo", "reload"])).is_err());
    }

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        ctl: super::super::CtlArgs,
    }

    fn parse(args: &[&str]) -> Result<super::super::CtlCommand, clap::Error> {
        use clap::Parser as _;
        Cli::try_parse_from(std::iter::once("ctl").chain(args.iter().copied()))
            .map(|c| *c.ctl.command)
    }

    #[test]
    fn patronictls_argument_forms_parse() {
        use super::super::CtlCommand;
        let Ok(CtlCommand::List(list)) = parse(&["list", "demo", "-W"]) else {
            panic!("list demo -W")
        };
        assert_eq!(list.read.cluster.get(), Some("demo"));
        assert_eq!(list.interval().unwrap(), Some(Duration::from_secs(2)));
        let Ok(CtlCommand::List(list)) = parse(&["list", "-w", "0.5"]) else {
            panic!("list -w 0.5")
        };
        assert_eq!(list.interval().unwrap(), Some(Duration::from_millis(500)));
        let Ok(CtlCommand::List(list)) = parse(&["list", "-w", "0"]) else {
            panic!("list -w 0")
        };
        assert!(list.interval().is_err());
        assert!(matches!(
            parse(&["flush", "demo", "switchover", "--force"]),
            Ok(CtlCommand::Flush(_))
        ));
        assert!(parse(&["flush", "demo"]).is_err(), "flush needs a target");
        assert!(matches!(parse(&["version"]), Ok(CtlCommand::Version(_))));
        assert!(matches!(
            parse(&["dsn", "demo", "-r", "replica"]),
            Ok(CtlCommand::Dsn(_))
        ));
        assert!(matches!(
            parse(&["query", "demo", "-c", "SELECT 1", "-m", "pg1"]),
            Ok(CtlCommand::Query(_))
        ));
        assert!(matches!(
            parse(&["pause", "demo", "--wait"]),
            Ok(CtlCommand::Pause(_))
        ));
        assert!(matches!(
            parse(&["switchover", "demo", "--candidate", "pg2", "--force"]),
            Ok(CtlCommand::Switchover(_))
        ));
        assert!(matches!(
            parse(&["restart", "demo", "pg1", "--pending", "--force"]),
            Ok(CtlCommand::Restart(_))
        ));
    }

    #[test]
    fn a_leading_cluster_name_is_told_from_a_member() {
        let cluster = Cluster::parse(&serde_json::json!({
            "scope": "demo",
            "members": [{"name": "pg1"}, {"name": "demo2"}],
        }))
        .unwrap();
        assert!(cluster.is_cluster_name("demo"));
        assert!(!cluster.is_cluster_name("pg1"));
        assert!(check_cluster_name(Some("other"), &cluster).is_err());
        assert!(check_cluster_name(Some("demo"), &cluster).is_ok());
        assert!(check_cluster_name(None, &cluster).is_ok());
    }

    #[test]
    fn postgres_versions_print_as_patronictls() {
        assert_eq!(format_pg_version(150_002), "15.2");
        assert_eq!(format_pg_version(90_603), "9.6.3");
    }
}
