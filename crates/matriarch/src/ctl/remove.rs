//! `ctl remove CLUSTER`: wipes a cluster's state from the DCS, as `patronictl remove` does.
//!
//! Unlike the other commands it talks to the DCS itself, not to a member's REST API (the
//! cluster may have no member left): the DCS settings (`etcd3` or `zookeeper`, `namespace`)
//! come from the node file of `--config`, with `CLUSTER` as the scope. The operator confirms
//! as under Patroni: types the cluster name, then `Yes I am aware`, and, while a member
//! holds the leader lock, that member's name. Answers are read line by line from standard
//! input, so scripts pipe them in (`printf 'pg\nYes I am aware\n' | matriarch ctl remove pg`).

use std::io::{BufRead, Write};
use std::path::Path;

use matriarch_dcs::Dcs;
use matriarch_model::ClusterView;

use super::error::CtlError;

/// The phrase the operator types to confirm, as patronictl's.
const AWARE: &str = "Yes I am aware";

/// Options of `remove`.
#[derive(clap::Args, Debug)]
pub(crate) struct RemoveArgs {
    /// The cluster (DCS scope) whose keys to delete.
    #[arg(value_name = "CLUSTER")]
    pub cluster: String,
}

/// Shows the cluster, asks for the confirmations and deletes every key of the cluster's
/// scope; a wrong or missing answer deletes nothing.
pub(crate) async fn remove(config: Option<&Path>, args: &RemoveArgs) -> Result<(), CtlError> {
    let dcs = connect(config, &args.cluster)?;
    let failed = |what: &str, e: matriarch_dcs::DcsError| {
        CtlError::Failed(format!("{what} cluster {}: {e}", args.cluster))
    };
    let view = dcs.read_view().await.map_err(|e| failed("reading", e))?;
    println!("{}", describe(&args.cluster, &view));
    let leader = view
        .leader
        .as_ref()
        .and_then(|entry| entry.as_ref().ok())
        .map(|lock| lock.value.holder.to_string());
    confirm(
        &mut std::io::stdin().lock(),
        &args.cluster,
        leader.as_deref(),
    )?;
    dcs.remove_cluster()
        .await
        .map_err(|e| failed("removing", e))?;
    println!("Removed cluster {} from the DCS", args.cluster);
    Ok(())
}

/// A client of `cluster`'s scope on the DCS configured in the node file `config`.
fn connect(config: Option<&Path>, cluster: &str) -> Result<crate::dcs::AnyDcs, CtlError> {
    let file = config.ok_or_else(|| {
        CtlError::Usage(
            "remove talks to the DCS: pass --config with a node file that configures etcd3 or zookeeper"
                .into(),
        )
    })?;
    let (dcs, _) = super::from_dcs::connect(file, Some(cluster)).map_err(CtlError::Usage)?;
    Ok(dcs)
}

/// What the DCS holds of the cluster, for the operator to check before confirming.
fn describe(cluster: &str, view: &ClusterView) -> String {
    let leader = match &view.leader {
        None => "none".to_owned(),
        Some(Ok(lock)) => lock.value.holder.to_string(),
        Some(Err(_)) => "unreadable".to_owned(),
    };
    let members: Vec<String> = view
        .members
        .iter()
        .map(|(name, entry)| match entry {
            Ok(member) => format!("{name} ({}, {})", member.value.role, member.value.state),
            Err(_) => format!("{name} (unreadable)"),
        })
        .collect();
    let members = if members.is_empty() {
        "none".to_owned()
    } else {
        members.join(", ")
    };
    format!("Cluster: {cluster}\nLeader: {leader}\nMembers: {members}")
}

/// Patroni's confirmations, answered on `input`: the cluster name, the phrase, and the
/// leader's name while one holds the lock.
fn confirm(input: &mut impl BufRead, cluster: &str, leader: Option<&str>) -> Result<(), CtlError> {
    let refuse = |message: String| Err(CtlError::Failed(message));
    if ask(input, "Please confirm the cluster name to remove")? != cluster {
        return refuse("Cluster names specified do not match".into());
    }
    let question = format!(
        "You are about to remove all information in DCS for {cluster}, please type: \"{AWARE}\""
    );
    if ask(input, &question)? != AWARE {
        return refuse(format!("You did not exactly type \"{AWARE}\""));
    }
    if let Some(leader) = leader {
        let question =
            "This cluster currently is healthy. Please specify the leader name to continue";
        if ask(input, question)? != leader {
            return refuse("You did not specify the current leader of the cluster".into());
        }
    }
    Ok(())
}

/// Prints `question` on stderr and reads one answer line, trimmed; no line at all
/// (end of input) aborts.
fn ask(input: &mut impl BufRead, question: &str) -> Result<String, CtlError> {
    eprint!("{question}: ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let read = input
        .read_line(&mut answer)
        .map_err(|e| CtlError::Failed(format!("cannot read the answer: {e}")))?;
    if read == 0 {
        eprintln!();
        return Err(CtlError::Failed(
            "aborted: no answer on standard input".into(),
        ));
    }
    Ok(answer.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(answers: &str, leader: Option<&str>) -> Result<(), CtlError> {
        confirm(&mut answers.as_bytes(), "pg", leader)
    }

    #[test]
    fn every_confirmation_must_be_exact() {
        assert_eq!(answered("pg\nYes I am aware\n", None), Ok(()));
        assert_eq!(
            answered("pg\nYes I am aware\nnode1\n", Some("node1")),
            Ok(())
        );
        let refused = |answers: &str, leader: Option<&str>, message: &str| {
            assert_eq!(
                answered(answers, leader),
                Err(CtlError::Failed(message.to_owned())),
                "{answers:?}"
            );
        };
        refused("pgx\n", None, "Cluster names specified do not match");
        refused(
            "pg\nyes i am aware\n",
            None,
            "You did not exactly type \"Yes I am aware\"",
        );
        refused(
            "pg\nYes I am aware\nnode2\n",
            Some("node1"),
            "You did not specify the current leader of the cluster",
        );
        refused(
            "pg\nYes I am aware\n",
            Some("node1"),
            "aborted: no answer on standard input",
        );
        refused("", None, "aborted: no answer on standard input");
    }
}
