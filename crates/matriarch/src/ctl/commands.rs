//! The `ctl` commands: each reads the cluster through the REST API, checks what it can
//! before asking, confirms, and sends one change.

use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::{json, Map, Value};

use super::args::{FailoverArgs, Format, MemberArgs, SwitchoverArgs};
use super::client::{self, Client, Endpoint};
use super::error::CtlError;
use super::view::{self, Cluster, Member};
use super::{patch, render};

fn print_json(value: &Value) -> Result<(), CtlError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| CtlError::Failed(format!("cannot print JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

/// `GET path` from the first API that answers, read with `parse`; the
/// error names the URL that gave the unexpected answer.
pub(super) async fn read_parsed<T, E: std::fmt::Display>(
    client: &mut Client,
    path: &str,
    parse: impl FnOnce(&Value) -> Result<T, E>,
) -> Result<(T, Endpoint), CtlError> {
    let (value, endpoint) = client.get_json(path).await?;
    let parsed = parse(&value)
        .map_err(|e| CtlError::Failed(format!("{}: unexpected answer: {e}", endpoint.url(path))))?;
    Ok((parsed, endpoint))
}

async fn read_cluster(client: &mut Client) -> Result<(Cluster, Endpoint), CtlError> {
    read_parsed(client, "/cluster", Cluster::parse).await
}

/// `list`/`topology` of `cluster`, read from the API `answered` (which also gives the system
/// id), or, when `None`, from the DCS (said in a note).
pub(super) async fn print_members(
    client: &mut Client,
    mut cluster: Cluster,
    answered: Option<&Endpoint>,
    format: Format,
    tree: bool,
) -> Result<(), CtlError> {
    // The system id (and the name, if /cluster lacks it) come from the answering member.
    let status = match answered {
        Some(endpoint) => client.get_json_from(endpoint, "/patroni").await.ok(),
        None => None,
    };
    if cluster.scope.is_none() {
        cluster.scope = status.as_ref().and_then(view::status_scope);
    }
    let system_id = status.as_ref().and_then(view::system_id);
    let rows = if tree {
        render::topology_order(&cluster)
    } else {
        render::list_order(&cluster)
    };
    match format {
        Format::Json => {
            if answered.is_none() {
                eprintln!("{}", super::from_dcs::NOTE);
            }
            print_json(&render::members_json(&cluster, &rows))
        }
        Format::Text => {
            print!(
                "{}",
                render::members_table(&cluster, &rows, system_id.as_deref())
            );
            if let Some(note) = status.as_ref().and_then(render::pending_note) {
                print!("{note}");
            }
            if answered.is_none() {
                println!("{}", super::from_dcs::NOTE);
            }
            Ok(())
        }
    }
}

pub(super) async fn history(client: &mut Client, format: Format) -> Result<(), CtlError> {
    let (entries, _) = read_parsed(client, "/history", view::parse_history).await?;
    match format {
        Format::Json => print_json(&render::history_json(&entries)),
        Format::Text => {
            print!("{}", render::history_table(&entries));
            Ok(())
        }
    }
}

pub(super) async fn show_config(client: &mut Client, format: Format) -> Result<(), CtlError> {
    let (config, _) = client.get_json("/config").await?;
    match format {
        Format::Json => print_json(&config),
        Format::Text => {
            let yaml = serde_norway::to_string(&config)
                .map_err(|e| CtlError::Failed(format!("cannot print YAML: {e}")))?;
            print!("{}", render::sanitize_multiline(&yaml));
            Ok(())
        }
    }
}

/// Asks `question [y/N]` on the terminal unless `force`; without a terminal on stdin it
/// refuses and says to pass --force.
pub(super) fn confirm(question: &str, force: bool) -> Result<(), CtlError> {
    if force {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(CtlError::Failed(format!(
            "{question}\nrefusing without confirmation: standard input is not a terminal; pass --force to go ahead"
        )));
    }
    eprint!("{} [y/N]: ", render::sanitize(question));
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .map_err(|e| CtlError::Failed(format!("cannot read the answer: {e}")))?;
    if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        Err(CtlError::Failed("aborted".into()))
    }
}

/// Turns a mutating call's reply into the command's outcome: the server's message on
/// stdout when it succeeded, as the error when it did not.
fn outcome(reply: &client::Reply, what: &str) -> Result<(), CtlError> {
    if reply.ok() {
        println!("{}", reply.message());
        Ok(())
    } else {
        Err(CtlError::Failed(format!(
            "{what} failed: {}",
            reply.answered()
        )))
    }
}

fn scope_of(cluster: &Cluster) -> String {
    cluster
        .scope
        .clone()
        .unwrap_or_else(|| "the cluster".into())
}

pub(super) async fn switchover(
    client: &mut Client,
    args: &SwitchoverArgs,
    scheduled: Option<String>,
) -> Result<(), CtlError> {
    let (cluster, _) = read_cluster(client).await?;
    let scope = scope_of(&cluster);
    let leader = cluster
        .leader()
        .ok_or_else(|| {
            CtlError::Failed(format!(
                "{scope} has no leader; a switchover needs one (use failover)"
            ))
        })?
        .name
        .clone();
    if let Some(given) = &args.leader {
        if *given != leader {
            return Err(CtlError::Failed(format!(
                "member {given} is not the leader of {scope} (the leader is {leader})"
            )));
        }
    }
    if let Some(candidate) = &args.candidate {
        if cluster.member(candidate).is_none() {
            return Err(CtlError::Failed(format!(
                "member {candidate} does not exist in {scope} (members: {})",
                cluster.names()
            )));
        }
        if *candidate == leader {
            return Err(CtlError::Failed(format!(
                "member {candidate} is already the leader of {scope}"
            )));
        }
    }
    let mut question =
        format!("Are you sure you want to switchover {scope}, demoting current leader {leader}");
    if let Some(candidate) = &args.candidate {
        question.push_str(&format!(" in favour of {candidate}"));
    }
    if let Some(at) = &scheduled {
        question.push_str(&format!(" at {at}"));
    }
    question.push('?');
    confirm(&question, args.force)?;
    let mut body = Map::new();
    body.insert("leader".into(), Value::String(leader));
    if let Some(candidate) = &args.candidate {
        body.insert("candidate".into(), Value::String(candidate.clone()));
    }
    if let Some(at) = scheduled {
        body.insert("scheduled_at".into(), Value::String(at));
    }
    let reply = client
        .mutate(Method::POST, "/switchover", Some(&Value::Object(body)))
        .await?;
    outcome(&reply, "switchover")
}

pub(super) async fn failover(client: &mut Client, args: &FailoverArgs) -> Result<(), CtlError> {
    let (cluster, _) = read_cluster(client).await?;
    let scope = scope_of(&cluster);
    let candidate = &args.candidate;
    if cluster.member(candidate).is_none() {
        return Err(CtlError::Failed(format!(
            "member {candidate} does not exist in {scope} (members: {})",
            cluster.names()
        )));
    }
    let mut question = format!("Are you sure you want to failover {scope} to {candidate}");
    match cluster.leader() {
        Some(leader) if leader.name == *candidate => {
            return Err(CtlError::Failed(format!(
                "member {candidate} is already the leader of {scope}"
            )))
        }
        Some(leader) => question.push_str(&format!(", demoting current leader {}", leader.name)),
        None => {}
    }
    question.push('?');
    confirm(&question, args.force)?;
    let reply = client
        .mutate(
            Method::POST,
            "/failover",
            Some(&json!({"candidate": candidate})),
        )
        .await?;
    outcome(&reply, "failover")
}

pub(super) async fn pause(
    client: &mut Client,
    on: bool,
    wait: bool,
    timeout: u64,
) -> Result<(), CtlError> {
    let (config, _) = client.get_json("/config").await?;
    let paused = matches!(config.get("pause"), Some(Value::Bool(true)));
    if paused == on {
        return Err(CtlError::Failed(
            if on {
                "the cluster is already paused"
            } else {
                "the cluster is not paused"
            }
            .into(),
        ));
    }
    let reply = client
        .mutate(Method::PATCH, "/config", Some(&json!({"pause": on})))
        .await?;
    if !reply.ok() {
        return outcome(&reply, if on { "pause" } else { "resume" });
    }
    if wait {
        wait_for_members(client, on, Duration::from_secs(timeout)).await?;
    }
    println!(
        "Success: cluster management is {}",
        if on { "paused" } else { "resumed" }
    );
    Ok(())
}

/// Polls every member's `GET /patroni` until its `pause` flag is `on`.
async fn wait_for_members(
    client: &mut Client,
    on: bool,
    timeout: Duration,
) -> Result<(), CtlError> {
    let deadline = Instant::now() + timeout;
    eprintln!(
        "Waiting for every member to {}...",
        if on { "pause" } else { "resume" }
    );
    loop {
        let (cluster, _) = read_cluster(client).await?;
        let mut pending = Vec::new();
        for member in &cluster.members {
            let Some(api) = member
                .api_url
                .as_deref()
                .and_then(|u| Endpoint::parse(u).ok())
            else {
                eprintln!(
                    "warning: member {} has no usable api_url; not waiting for it",
                    member.name
                );
                continue;
            };
            let reported = match client.get_json_from(&api, "/patroni").await {
                Ok(status) => matches!(status.get("pause"), Some(Value::Bool(true))),
                Err(_) => !on,
            };
            if reported != on {
                pending.push(member.name.clone());
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(CtlError::Failed(format!(
                "the change was made, but after {}s these members do not report it yet: {}",
                timeout.as_secs(),
                pending.join(", ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub(super) async fn edit_config(
    client: &mut Client,
    patch: Value,
    force: bool,
) -> Result<(), CtlError> {
    let (current, _) = client.get_json("/config").await?;
    let mut wanted = current.clone();
    crate::api::merge_patch(&mut wanted, &patch);
    let diff = patch::diff_lines(&current, &wanted);
    if diff.is_empty() {
        println!("Not changed");
        return Ok(());
    }
    for line in &diff {
        println!("{}", render::sanitize(line));
    }
    confirm("Apply these changes?", force)?;
    let reply = client
        .mutate(Method::PATCH, "/config", Some(&patch))
        .await?;
    if reply.ok() {
        println!("Configuration changed");
        Ok(())
    } else {
        outcome(&reply, "edit-config")
    }
}

pub(super) async fn on_members(
    client: &mut Client,
    args: &MemberArgs,
    action: &str,
    path: &str,
    body: Option<Value>,
    only_pending: bool,
) -> Result<(), CtlError> {
    let (cluster, _) = read_cluster(client).await?;
    let scope = scope_of(&cluster);
    let mut targets = Vec::new();
    // patronictl's form: `restart CLUSTER [MEMBER]...`, all members when none named.
    let named: Vec<String> = match args.members.split_first() {
        Some((first, rest)) if cluster.is_cluster_name(first) => {
            if rest.is_empty() {
                cluster.members.iter().map(|m| m.name.clone()).collect()
            } else {
                rest.to_vec()
            }
        }
        _ => args.members.clone(),
    };
    for name in &named {
        let member = cluster.member(name).ok_or_else(|| {
            CtlError::Failed(format!(
                "member {name} does not exist in {scope} (members: {})",
                cluster.names()
            ))
        })?;
        let api = member_api(member)?;
        if only_pending && !member.pending_restart {
            println!("Skipped: member {name} has no pending restart");
            continue;
        }
        targets.push((name.clone(), api));
    }
    if targets.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = targets.iter().map(|(name, _)| name.as_str()).collect();
    confirm(
        &format!(
            "Are you sure you want to {action} members {}?",
            names.join(", ")
        ),
        args.force,
    )?;
    let mut failed = Vec::new();
    for (name, api) in targets {
        match client
            .mutate_at(&api, Method::POST, path, body.as_ref())
            .await
        {
            Ok(reply) if reply.ok() => {
                println!("Success: {action} on member {name}: {}", reply.message())
            }
            Ok(reply) => {
                eprintln!("Failed: {action} on member {name}: {}", reply.answered());
                failed.push(name);
            }
            Err(CtlError::Failed(e) | CtlError::Usage(e)) => {
                eprintln!("Failed: {action} on member {name}: {e}");
                failed.push(name);
            }
        }
    }
    failed_on(action, &failed)
}

/// The end of a command sent to each of several members: an error naming
/// the members it `failed` on, if any (each printed its own reason).
pub(super) fn failed_on(action: &str, failed: &[String]) -> Result<(), CtlError> {
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CtlError::Failed(format!(
            "{action} failed on {}",
            failed.join(", ")
        )))
    }
}

/// The REST API a member reports (its `api_url`), for a request to that
/// member alone.
pub(super) fn member_api(member: &Member) -> Result<Endpoint, CtlError> {
    let name = &member.name;
    let url = member
        .api_url
        .as_deref()
        .ok_or_else(|| CtlError::Failed(format!("member {name} reports no api_url")))?;
    Endpoint::parse(url)
        .map_err(|e| CtlError::Failed(format!("member {name} has a bad api_url: {e}")))
}
