//! `matriarch ctl`: the operator's command line, like patronictl, talking to the cluster
//! through any member's REST API.
//!
//! Every command reads the cluster through `GET /cluster` (and `/config`, `/history`,
//! `/patroni`) of the first API that answers, and changes it through the Patroni-compatible
//! mutating endpoints with basic auth; `remove` alone works on the DCS itself (`remove.rs`).
//! Exit codes: 0 done, 1 refused or failed (the server's
//! message is printed), 2 usage error.

mod args;
mod backup;
mod client;
mod commands;
mod error;
mod from_dcs;
mod nodeconf;
mod patch;
mod patroni_cmds;
mod query;
mod remove;
mod render;
mod view;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

// The password of `--password` (a `Secret`: `Debug` and `Display` print `***`).
use matriarch_model::Secret;
use serde_json::json;

use args::{
    ClusterName, EditConfigArgs, FailoverArgs, FlushArgs, ListArgs, MemberArgs, MemberChoice,
    ReadArgs, RestartArgs, SwitchoverArgs, VersionArgs, WaitArgs,
};
use client::{Client, Endpoint, TlsFiles};
use commands::{edit_config, failover, history, on_members, pause, show_config, switchover};
pub(crate) use error::CtlError;

/// The REST API tried when neither `--api` nor `--config` is given (Patroni's default port).
const DEFAULT_API: &str = "http://127.0.0.1:8008";

/// `matriarch ctl`: operate a cluster through a member's REST API.
#[derive(clap::Args, Debug)]
pub(crate) struct CtlArgs {
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

    /// Password for mutating calls (basic auth). On the command line it is visible to
    /// other users of the host (`ps`, /proc): prefer the MATRIARCH_CTL_PASSWORD variable, or
    /// restapi.authentication in --config.
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

/// The `ctl` commands.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum CtlCommand {
    /// Members with role, state, timeline and lag.
    List(ListArgs),
    /// Members as a tree by upstream.
    Topology(ListArgs),
    /// Hand the leader role to a replica, now or at a scheduled time.
    Switchover(SwitchoverArgs),
    /// Promote a member, whether or not the cluster has a healthy leader.
    Failover(FailoverArgs),
    /// Maintenance mode: stop automatic failover.
    ///
    /// While paused, no agent starts, stops, promotes or demotes PostgreSQL,
    /// and the write fence is suspended: stopping an agent (to upgrade it)
    /// leaves its PostgreSQL running and the leader key in place (it expires
    /// by its ttl, or the restarted agent adopts the running PostgreSQL and
    /// renews it), as under Patroni. A primary whose agent is stopped or
    /// hung then keeps taking writes, guarded by nothing: resume to get the
    /// fence and automatic failover back.
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
    /// Take a pgBackRest backup on the leader (`--type full|incr|diff`).
    Backup(backup::BackupArgs),
    /// This tool's version; with a cluster name, every member's (as patronictl).
    Version(VersionArgs),
    /// Discard scheduled events: `flush CLUSTER [MEMBER]... restart|switchover`.
    Flush(FlushArgs),
    /// `host=… port=…` of the leader, of a member with a role, or of a member.
    Dsn(MemberChoice),
    /// Run SQL on a member's PostgreSQL (the leader by default); rows as tsv.
    Query(query::QueryArgs),
    /// Delete every key of a cluster from the DCS (needs --config; asks for confirmation,
    /// answers may be piped on stdin).
    Remove(remove::RemoveArgs),
}

impl CtlCommand {
    /// The cluster name given to a command that checks it against the API's
    /// before anything else (the others check it themselves, or take none).
    fn checked_cluster(&self) -> Option<&ClusterName> {
        match self {
            CtlCommand::History(read) | CtlCommand::ShowConfig(read) => Some(&read.cluster),
            CtlCommand::Switchover(s) => Some(&s.cluster),
            CtlCommand::Failover(f) => Some(&f.cluster),
            CtlCommand::Pause(w) | CtlCommand::Resume(w) => Some(&w.cluster),
            CtlCommand::EditConfig(edit) => Some(&edit.cluster),
            _ => None,
        }
    }
}

/// Runs a `ctl` command and returns its exit code; messages go to stdout (results) and
/// stderr (errors).
pub(crate) async fn run(args: CtlArgs) -> ExitCode {
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
    let tls = TlsFiles {
        cacert: args.cacert.clone(),
        certfile: args.certfile.clone(),
        keyfile: args.keyfile.clone(),
    }
    .or(node.map(|n| n.tls).unwrap_or_default());
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
    // The one command that talks to the DCS, not to a REST API.
    if let CtlCommand::Remove(remove) = &*args.command {
        return remove::remove(args.config.as_deref(), remove).await;
    }
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
    if let Some(name) = args.command.checked_cluster() {
        patroni_cmds::require_cluster(&mut client, name.get()).await?;
    }
    match *args.command {
        CtlCommand::List(l) => list(&mut client, &l, args.config.as_deref(), false).await,
        CtlCommand::Topology(l) => list(&mut client, &l, args.config.as_deref(), true).await,
        CtlCommand::History(read) => history(&mut client, read.format).await,
        CtlCommand::ShowConfig(read) => show_config(&mut client, read.format).await,
        CtlCommand::Switchover(s) => switchover(&mut client, &s, scheduled).await,
        CtlCommand::Failover(f) => failover(&mut client, &f).await,
        CtlCommand::Pause(w) => pause(&mut client, true, w.wait, args.timeout).await,
        CtlCommand::Resume(w) => pause(&mut client, false, w.wait, args.timeout).await,
        CtlCommand::Version(v) => {
            let cluster = v.names.first().map(String::as_str);
            let members = v.names.get(1..).unwrap_or_default();
            patroni_cmds::version(&mut client, cluster, members).await
        }
        CtlCommand::Flush(f) => patroni_cmds::flush(&mut client, &f.args, f.force).await,
        CtlCommand::Remove(r) => remove::remove(args.config.as_deref(), &r).await,
        CtlCommand::Query(q) => {
            query::query(&mut client, &q, Duration::from_secs(args.timeout)).await
        }
        CtlCommand::Dsn(d) => patroni_cmds::dsn(&mut client, &d).await,
        CtlCommand::EditConfig(edit) => {
            edit_config(&mut client, patch.unwrap_or_default(), edit.force).await
        }
        CtlCommand::Restart(r) => {
            // As patronictl: the member itself checks the flag when asked.
            let body = if r.pending {
                json!({"restart_pending": true})
            } else {
                json!({})
            };
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
        CtlCommand::Backup(b) => backup::backup(&mut client, &b).await,
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

/// `list`, or `topology` (`tree`); from the DCS `node_config` names when no API answers.
async fn list(
    client: &mut Client,
    args: &ListArgs,
    node_config: Option<&std::path::Path>,
    tree: bool,
) -> Result<(), CtlError> {
    let (cluster, format, interval) = (args.read.cluster.get(), args.read.format, args.interval()?);
    patroni_cmds::list(client, cluster, node_config, format, tree, interval).await
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

#[cfg(test)]
mod tests;
