//! The options of the `ctl` commands (the subcommands of [`super::CtlCommand`]
//! that take more than a cluster name).

use std::time::Duration;

use super::error::CtlError;

/// Output format of the reading commands.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Format {
    /// Tables (YAML for show-config).
    #[default]
    Text,
    /// JSON.
    Json,
}

/// patronictl's first argument, which most commands take: the cluster's
/// name, checked against the one the API serves.
#[derive(clap::Args, Debug, Default)]
pub(crate) struct ClusterName {
    /// The cluster's name, as patronictl's first argument (checked against the API's).
    #[arg(value_name = "CLUSTER")]
    cluster: Option<String>,
}

impl ClusterName {
    /// The name given, if any.
    pub(crate) fn get(&self) -> Option<&str> {
        self.cluster.as_deref()
    }
}

/// Options of the reading commands.
#[derive(clap::Args, Debug)]
pub(crate) struct ReadArgs {
    /// The cluster's name, as patronictl's first argument.
    #[command(flatten)]
    pub cluster: ClusterName,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// Options of `switchover`.
#[derive(clap::Args, Debug)]
pub(crate) struct SwitchoverArgs {
    /// The cluster's name, as patronictl's first argument.
    #[command(flatten)]
    pub cluster: ClusterName,
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
pub(crate) struct FailoverArgs {
    /// The cluster's name, as patronictl's first argument.
    #[command(flatten)]
    pub cluster: ClusterName,
    /// The member to promote.
    #[arg(long, required = true)]
    pub candidate: String,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub force: bool,
}

/// Options of `pause` and `resume`.
#[derive(clap::Args, Debug)]
pub(crate) struct WaitArgs {
    /// The cluster's name, as patronictl's first argument.
    #[command(flatten)]
    pub cluster: ClusterName,
    /// Wait until every member reports the change (at most --timeout seconds).
    #[arg(long)]
    pub wait: bool,
}

/// Options of `edit-config`.
#[derive(clap::Args, Debug)]
pub(crate) struct EditConfigArgs {
    /// The cluster's name, as patronictl's first argument.
    #[command(flatten)]
    pub cluster: ClusterName,
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
pub(crate) struct MemberArgs {
    /// Members to act on.
    #[arg(value_name = "MEMBER", required = true)]
    pub members: Vec<String>,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub force: bool,
}

/// Options of `restart`.
#[derive(clap::Args, Debug)]
pub(crate) struct RestartArgs {
    /// Members to restart.
    #[command(flatten)]
    pub target: MemberArgs,
    /// Restart only those of the members whose PostgreSQL reports a pending restart
    /// (`pending_restart` in GET /cluster); the others are skipped.
    #[arg(long)]
    pub pending: bool,
}

/// Options of `list` and `topology`.
#[derive(clap::Args, Debug)]
pub(crate) struct ListArgs {
    /// The cluster and the output format.
    #[command(flatten)]
    pub read: ReadArgs,
    /// Print again every SECONDS until interrupted.
    #[arg(short = 'w', long = "watch", value_name = "SECONDS")]
    pub watch: Option<f64>,
    /// Print again every 2 seconds until interrupted.
    #[arg(short = 'W')]
    pub watch_default: bool,
}

impl ListArgs {
    /// The interval of `--watch`/`-W`, if watching.
    pub(super) fn interval(&self) -> Result<Option<Duration>, CtlError> {
        match (self.watch, self.watch_default) {
            (Some(seconds), _) if seconds.is_finite() && seconds > 0.0 => {
                Ok(Some(Duration::from_secs_f64(seconds)))
            }
            (Some(seconds), _) => Err(CtlError::Usage(format!(
                "--watch {seconds}: a positive number of seconds"
            ))),
            (None, true) => Ok(Some(Duration::from_secs(2))),
            (None, false) => Ok(None),
        }
    }
}

/// Options of `version`.
#[derive(clap::Args, Debug)]
pub(crate) struct VersionArgs {
    /// `CLUSTER [MEMBER]...`: the cluster whose members' versions to print.
    #[arg(value_name = "CLUSTER [MEMBER]")]
    pub names: Vec<String>,
}

/// Options of `flush`.
#[derive(clap::Args, Debug)]
pub(crate) struct FlushArgs {
    /// `CLUSTER [MEMBER]... restart|switchover`.
    #[arg(value_name = "ARGS", required = true, num_args = 2..)]
    pub args: Vec<String>,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub force: bool,
}

/// Options of `dsn`, and which member `query` connects to: the leader by
/// default, or one of `--role`/`--member`.
#[derive(clap::Args, Debug)]
pub(crate) struct MemberChoice {
    /// The cluster's name, as patronictl's first argument.
    #[command(flatten)]
    pub cluster: ClusterName,
    /// leader (default), primary, replica or any.
    #[arg(short = 'r', long)]
    pub role: Option<String>,
    /// The member.
    #[arg(short = 'm', long)]
    pub member: Option<String>,
}
