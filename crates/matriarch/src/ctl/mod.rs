//! `matriarch ctl`: the operator's command line, like patronictl, talking to the cluster
//! through any member's REST API.
//!
//! Every command reads the cluster through `GET /cluster` (and `/config`, `/history`,
//! `/patroni`) of the first API that answers, and changes it through the Patroni-compatible
//! mutating endpoints with basic auth. Exit codes: 0 done, 1 refused or failed (the server's
//! message is printed), 2 usage error.

mod client;
mod nodeconf;
mod patch;
mod render;
mod view;

use std::fmt;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::{json, Map, Value};

use client::{Client, Endpoint, TlsFiles};
use view::Cluster;

/// The REST API tried when neither `--api` nor `--config` is given (Patroni's default port).
const DEFAULT_API: &str = "http://127.0.0.1:8008";

/// A password given on the command line or in the environment: `Debug` and `Display` print
/// `***`, so it never shows in logs or error messages.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the Authorization header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

/// `matriarch ctl`: operate a cluster through a member's REST API.
#[derive(clap::Args, Debug)]
pub struct CtlArgs {
    /// REST API of a member, e.g. http://10.0.0.1:8008; repeat it (or separate with commas)
    /// to try several in turn until one answers. Default: the one in --config, else
    /// http://127.0.0.1:8008.
    #[arg(
        long = "api",
        value_name = "URL",
        global = true,
        env = "MATRIARCH_CTL_API",
        value_delimiter = ','
    )]
    pub api: Vec<String>,

    /// A node's YAML configuration: its restapi.connect_address (or listen) and
    /// restapi.authentication are used.
    #[arg(
        long = "config",
        value_name = "FILE",
        global = true,
        env = "MATRIARCH_CTL_CONFIG"
    )]
    pub config: Option<PathBuf>,

    /// User name for mutating calls (basic auth).
    #[arg(long, global = true, env = "MATRIARCH_CTL_USERNAME")]
    pub username: Option<String>,

    /// Password for mutating calls (basic auth).
    #[arg(
        long,
        global = true,
        env = "MATRIARCH_CTL_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<Secret>,

    /// CA certificates (PEM) to verify https APIs with; default: the system's bundle.
    #[arg(long, value_name = "FILE", global = true)]
    pub cacert: Option<PathBuf>,

    /// Client certificate (PEM) for https APIs that ask for one.
    #[arg(long, value_name = "FILE", global = true, requires = "keyfile")]
    pub certfile: Option<PathBuf>,

    /// Private key (PEM) of --certfile.
    #[arg(long, value_name = "FILE", global = true, requires = "certfile")]
    pub keyfile: Option<PathBuf>,

    /// Seconds a mutating call, or a --wait, may take.
    #[arg(long, value_name = "SECONDS", global = true, default_value_t = 120)]
    pub timeout: u64,

    /// What to do.
    #[command(subcommand)]
    pub command: Box<CtlCommand>,
}

/// Output format of the reading commands.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// Tables (YAML for show-config).
    #[default]
    Text,
    /// JSON.
    Json,
}

/// Options of the reading commands.
#[derive(clap::Args, Debug)]
pub struct ReadArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// Options of `switchover`.
#[derive(clap::Args, Debug)]
pub struct SwitchoverArgs {
    /// The current leader (checked against the cluster's; default: whoever leads).
    #[arg(long, alias = "primary")]
    pub leader: Option<String>,
    /// The member to promote (default: the healthiest replica the leader picks).
    #[arg(long)]
    pub candidate: Option<String>,
    /// When: `now`, or an RFC 3339 time with offset such as 2030-01-01T12:00:00+00:00.
    #[arg(long, value_name = "TIME")]
    pub scheduled: Option<String>,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub force: bool,
}

/// Options of `failover`.
#[derive(clap::Args, Debug)]
pub struct FailoverArgs {
    /// The member to promote.
    #[arg(long, required = true)]
    pub candidate: String,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub force: bool,
}

/// Options of `pause` and `resume`.
#[derive(clap::Args, Debug)]
pub struct WaitArgs {
    /// Wait until every member reports the change (at most --timeout seconds).
    #[arg(long)]
    pub wait: bool,
}

/// Options of `edit-config`.
#[derive(clap::Args, Debug)]
pub struct EditConfigArgs {
    /// Set a key of the dynamic configuration: `ttl=30`, `postgresql.use_pg_rewind=false`;
    /// values are JSON when they parse, text otherwise; `null` removes the key.
    #[arg(short = 's', long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Set a PostgreSQL parameter (under postgresql.parameters): `max_connections=200`.
    #[arg(short = 'p', long = "pg", value_name = "NAME=VALUE")]
    pub pg: Vec<String>,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub force: bool,
}

/// Options of the commands aimed at members.
#[derive(clap::Args, Debug)]
pub struct MemberArgs {
    /// Members to act on.
    #[arg(value_name = "MEMBER", required = true)]
    pub members: Vec<String>,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub force: bool,
}

/// Options of `restart`.
#[derive(clap::Args, Debug)]
pub struct RestartArgs {
    /// Members to restart.
    #[command(flatten)]
    pub target: MemberArgs,
    /// Restart only those of the members whose PostgreSQL reports a pending restart
    /// (`pending_restart` in GET /cluster); the others are skipped.
    #[arg(long)]
    pub pending: bool,
}

/// The `ctl` commands.
#[derive(clap::Subcommand, Debug)]
pub enum CtlCommand {
    /// Members with role, state, timeline and lag.
    List(ReadArgs),
    /// Members as a tree by upstream.
    Topology(ReadArgs),
    /// Hand the leader role to a replica, now or at a scheduled time.
    Switchover(SwitchoverArgs),
    /// Promote a member, whether or not the cluster has a healthy leader.
    Failover(FailoverArgs),
    /// Maintenance mode: stop automatic failover.
    Pause(WaitArgs),
    /// Leave maintenance mode.
    Resume(WaitArgs),
    /// Timeline history.
    History(ReadArgs),
    /// The dynamic configuration.
    ShowConfig(ReadArgs),
    /// Change the dynamic configuration.
    EditConfig(EditConfigArgs),
    /// Restart PostgreSQL on members.
    Restart(RestartArgs),
    /// Reload PostgreSQL's configuration on members.
    Reload(MemberArgs),
    /// Rebuild members' data directories from the leader.
    Reinit(MemberArgs),
}

/// Why a command did not succeed.
#[derive(Debug, PartialEq)]
pub(crate) enum CtlError {
    /// Bad arguments: exit code 2.
    Usage(String),
    /// Refused or failed: exit code 1.
    Failed(String),
}

/// Runs a `ctl` command and returns its exit code; messages go to stdout (results) and
/// stderr (errors).
pub async fn run(args: CtlArgs) -> ExitCode {
    match execute(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(CtlError::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(CtlError::Failed(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
    }
}

/// Builds the client from the options: APIs from `--api`, else `--config`, else the default;
/// credentials from the options (or environment), else the config file.
fn client_from(args: &CtlArgs) -> Result<Client, CtlError> {
    let node = match &args.config {
        Some(file) => Some(nodeconf::load(file).map_err(CtlError::Usage)?),
        None => None,
    };
    let urls: Vec<String> = if !args.api.is_empty() {
        args.api
            .iter()
            .filter(|u| !u.trim().is_empty())
            .cloned()
            .collect()
    } else if let Some(node) = &node {
        vec![node.url.clone()]
    } else {
        vec![DEFAULT_API.to_string()]
    };
    if urls.is_empty() {
        return Err(CtlError::Usage("--api is empty".into()));
    }
    let endpoints = urls
        .iter()
        .map(|u| Endpoint::parse(u).map_err(|e| CtlError::Usage(format!("--api {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let username = args
        .username
        .clone()
        .or_else(|| node.as_ref().and_then(|n| n.username.clone()));
    let password = args
        .password
        .clone()
        .or_else(|| node.as_ref().and_then(|n| n.password.clone()));
    let auth = match (username, password) {
        (Some(user), Some(password)) => Some((user, password)),
        (Some(user), None) => Some((user, Secret::new(""))),
        (None, Some(_)) => return Err(CtlError::Usage("--password needs --username".into())),
        (None, None) => None,
    };
    let from_node =
        |pick: fn(&nodeconf::NodeRestApi) -> Option<PathBuf>| node.as_ref().and_then(pick);
    let tls = TlsFiles {
        cacert: args
            .cacert
            .clone()
            .or_else(|| from_node(|n| n.cacert.clone())),
        certfile: args
            .certfile
            .clone()
            .or_else(|| from_node(|n| n.certfile.clone())),
        keyfile: args
            .keyfile
            .clone()
            .or_else(|| from_node(|n| n.keyfile.clone())),
    };
    if args.timeout == 0 {
        return Err(CtlError::Usage(
            "--timeout must be at least 1 second".into(),
        ));
    }
    Ok(Client::new(
        endpoints,
        auth,
        tls,
        Duration::from_secs(args.timeout),
    ))
}

async fn execute(args: CtlArgs) -> Result<(), CtlError> {
    // Validate arguments that need no server before contacting one.
    let patch = match &*args.command {
        CtlCommand::EditConfig(edit) => {
            if edit.set.is_empty() && edit.pg.is_empty() {
                return Err(CtlError::Usage(
                    "edit-config needs at least one -s KEY=VALUE or -p NAME=VALUE".into(),
                ));
            }
            Some(patch::build_patch(&edit.set, &edit.pg).map_err(CtlError::Usage)?)
        }
        _ => None,
    };
    let scheduled = match &*args.command {
        CtlCommand::Switchover(s) => parse_scheduled(s.scheduled.as_deref())?,
        _ => None,
    };
    let mut client = client_from(&args)?;
    match *args.command {
        CtlCommand::List(read) => list(&mut client, read.format, false).await,
        CtlCommand::Topology(read) => list(&mut client, read.format, true).await,
        CtlCommand::History(read) => history(&mut client, read.format).await,
        CtlCommand::ShowConfig(read) => show_config(&mut client, read.format).await,
        CtlCommand::Switchover(s) => switchover(&mut client, &s, scheduled).await,
        CtlCommand::Failover(f) => failover(&mut client, &f).await,
        CtlCommand::Pause(w) => pause(&mut client, true, w.wait, args.timeout).await,
        CtlCommand::Resume(w) => pause(&mut client, false, w.wait, args.timeout).await,
        CtlCommand::EditConfig(edit) => {
            edit_config(&mut client, patch.unwrap_or_default(), edit.force).await
        }
        CtlCommand::Restart(r) => {
            let body = json!({});
            on_members(
                &mut client,
                &r.target,
                "restart",
                "/restart",
                Some(body),
                r.pending,
            )
            .await
        }
        CtlCommand::Reload(m) => {
            on_members(&mut client, &m, "reload", "/reload", None, false).await
        }
        CtlCommand::Reinit(m) => {
            let body = json!({"force": m.force});
            on_members(
                &mut client,
                &m,
                "reinitialize",
                "/reinitialize",
                Some(body),
                false,
            )
            .await
        }
    }
}

/// Checks `--scheduled`: `now` (or absent) means at once; otherwise an RFC 3339 time with
/// an offset, returned normalized.
pub(crate) fn parse_scheduled(raw: Option<&str>) -> Result<Option<String>, CtlError> {
    match raw.map(str::trim) {
        None => Ok(None),
        Some(s) if s.eq_ignore_ascii_case("now") => Ok(None),
        Some(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| Some(t.to_rfc3339()))
            .map_err(|e| {
                CtlError::Usage(format!(
                    "--scheduled '{s}' is not 'now' or an RFC 3339 time with offset such as 2030-01-01T12:00:00+00:00: {e}"
                ))
            }),
    }
}

fn print_json(value: &Value) -> Result<(), CtlError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| CtlError::Failed(format!("cannot print JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

async fn read_cluster(client: &mut Client) -> Result<(Cluster, Endpoint), CtlError> {
    let (value, endpoint) = client.get_json("/cluster").await?;
    let cluster = Cluster::parse(&value).map_err(|e| {
        CtlError::Failed(format!(
            "{}: unexpected answer: {e}",
            endpoint.url("/cluster")
        ))
    })?;
    Ok((cluster, endpoint))
}

async fn list(client: &mut Client, format: Format, tree: bool) -> Result<(), CtlError> {
    let (mut cluster, endpoint) = read_cluster(client).await?;
    // The system id (and the name, if /cluster lacks it) come from the answering member.
    let status = client.get_json_from(&endpoint, "/patroni").await.ok();
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
        Format::Json => print_json(&render::members_json(&cluster, &rows)),
        Format::Text => {
            print!(
                "{}",
                render::members_table(&cluster, &rows, system_id.as_deref())
            );
            if let Some(note) = status.as_ref().and_then(render::pending_note) {
                print!("{note}");
            }
            Ok(())
        }
    }
}

async fn history(client: &mut Client, format: Format) -> Result<(), CtlError> {
    let (value, endpoint) = client.get_json("/history").await?;
    let entries = view::parse_history(&value).map_err(|e| {
        CtlError::Failed(format!(
            "{}: unexpected answer: {e}",
            endpoint.url("/history")
        ))
    })?;
    match format {
        Format::Json => print_json(&render::history_json(&entries)),
        Format::Text => {
            print!("{}", render::history_table(&entries));
            Ok(())
        }
    }
}

async fn show_config(client: &mut Client, format: Format) -> Result<(), CtlError> {
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
fn confirm(question: &str, force: bool) -> Result<(), CtlError> {
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
            "{what} failed: {} answered HTTP {}: {}",
            reply.url,
            reply.status,
            reply.message()
        )))
    }
}

fn scope_of(cluster: &Cluster) -> String {
    cluster
        .scope
        .clone()
        .unwrap_or_else(|| "the cluster".into())
}

async fn switchover(
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

async fn failover(client: &mut Client, args: &FailoverArgs) -> Result<(), CtlError> {
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

async fn pause(client: &mut Client, on: bool, wait: bool, timeout: u64) -> Result<(), CtlError> {
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

async fn edit_config(client: &mut Client, patch: Value, force: bool) -> Result<(), CtlError> {
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

async fn on_members(
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
    for name in &args.members {
        let member = cluster.member(name).ok_or_else(|| {
            CtlError::Failed(format!(
                "member {name} does not exist in {scope} (members: {})",
                cluster.names()
            ))
        })?;
        let api = member
            .api_url
            .as_deref()
            .ok_or_else(|| CtlError::Failed(format!("member {name} reports no api_url")))
            .and_then(|u| {
                Endpoint::parse(u)
                    .map_err(|e| CtlError::Failed(format!("member {name} has a bad api_url: {e}")))
            })?;
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
                eprintln!(
                    "Failed: {action} on member {name}: {} answered HTTP {}: {}",
                    reply.url,
                    reply.status,
                    reply.message()
                );
                failed.push(name);
            }
            Err(CtlError::Failed(e) | CtlError::Usage(e)) => {
                eprintln!("Failed: {action} on member {name}: {e}");
                failed.push(name);
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CtlError::Failed(format!(
            "{action} failed on {}",
            failed.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        ctl: CtlArgs,
    }

    fn parse(args: &[&str]) -> Result<CtlArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("ctl").chain(args.iter().copied())).map(|c| c.ctl)
    }

    #[test]
    fn clap_definition_is_valid() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_go_before_or_after_the_command() {
        let args = parse(&[
            "list",
            "--api",
            "http://a:1",
            "--api",
            "b:2,c:3",
            "--format",
            "json",
        ])
        .expect("ok");
        assert_eq!(args.api, vec!["http://a:1", "b:2", "c:3"]);
        assert!(matches!(
            *args.command,
            CtlCommand::List(ReadArgs {
                format: Format::Json
            })
        ));
        let args = parse(&["--username", "u", "--password", "pw", "history"]).expect("ok");
        assert_eq!(args.username.as_deref(), Some("u"));
        assert!(!format!("{args:?}").contains("pw\""), "{args:?}");
    }

    #[test]
    fn usage_errors_are_caught_by_the_parser() {
        assert!(parse(&["failover"]).is_err(), "failover needs --candidate");
        assert!(parse(&["restart"]).is_err(), "restart needs a member");
        assert!(parse(&["list", "--format", "xml"]).is_err());
        assert!(
            parse(&["switchover", "--format", "json"]).is_err(),
            "--format only on reads"
        );
        assert!(
            parse(&["list", "--certfile", "c.pem"]).is_err(),
            "certfile needs keyfile"
        );
        let args = parse(&[
            "edit-config",
            "-s",
            "ttl=30",
            "-p",
            "work_mem=4MB",
            "--force",
        ])
        .expect("ok");
        assert!(
            matches!(*args.command, CtlCommand::EditConfig(ref e) if e.set == ["ttl=30"] && e.pg == ["work_mem=4MB"] && e.force)
        );
    }

    #[test]
    fn scheduled_times_must_be_now_or_rfc3339_with_offset() {
        assert_eq!(parse_scheduled(None), Ok(None));
        assert_eq!(parse_scheduled(Some("now")), Ok(None));
        assert_eq!(
            parse_scheduled(Some("2030-01-01T12:00:00Z")),
            Ok(Some("2030-01-01T12:00:00+00:00".into()))
        );
        assert!(
            matches!(parse_scheduled(Some("2030-01-01 12:00")), Err(CtlError::Usage(m)) if m.contains("RFC 3339"))
        );
        assert!(matches!(
            parse_scheduled(Some("tomorrow")),
            Err(CtlError::Usage(_))
        ));
    }

    #[tokio::test]
    async fn edit_config_without_changes_and_bad_arguments_are_usage_errors() {
        let args = parse(&["edit-config"]).expect("parses");
        assert!(
            matches!(execute(args).await, Err(CtlError::Usage(m)) if m.contains("-s KEY=VALUE"))
        );
        let args = parse(&["edit-config", "-s", "ttl"]).expect("parses");
        assert!(matches!(execute(args).await, Err(CtlError::Usage(m)) if m.contains("key=value")));
        let args = parse(&["switchover", "--scheduled", "soon"]).expect("parses");
        assert!(
            matches!(execute(args).await, Err(CtlError::Usage(m)) if m.contains("--scheduled"))
        );
        let args = parse(&["list", "--api", "ftp://x"]).expect("parses");
        assert!(matches!(execute(args).await, Err(CtlError::Usage(m)) if m.contains("--api")));
        let args =
            parse(&["list", "--api", "http://127.0.0.1:1", "--password", "x"]).expect("parses");
        assert!(matches!(execute(args).await, Err(CtlError::Usage(m)) if m.contains("--username")));
        let args = parse(&["list", "--config", "/nonexistent/node.yaml"]).expect("parses");
        assert!(
            matches!(execute(args).await, Err(CtlError::Usage(m)) if m.contains("/nonexistent/node.yaml"))
        );
    }

    #[tokio::test]
    async fn unreachable_apis_are_named_in_the_error() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = dead.local_addr().expect("addr").port();
        drop(dead);
        let url = format!("http://127.0.0.1:{port}");
        let args = parse(&["list", "--api", &url]).expect("parses");
        match execute(args).await {
            Err(CtlError::Failed(m)) => {
                assert!(m.contains(&format!("{url}/cluster")), "{m}");
                assert!(m.contains("cannot connect"), "{m}");
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn confirmation_without_a_terminal_is_refused_and_force_skips_it() {
        assert_eq!(confirm("Really?", true), Ok(()));
        if !std::io::stdin().is_terminal() {
            assert!(
                matches!(confirm("Really?", false), Err(CtlError::Failed(m)) if m.contains("--force"))
            );
        }
    }
}
