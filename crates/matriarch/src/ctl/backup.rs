//! `ctl backup`: a pgBackRest backup taken by the leader (`POST /backup` on
//! its REST API, which runs pgBackRest on the primary's host).

use std::time::Duration;

use hyper::Method;
use serde_json::json;

use super::args::ClusterName;
use super::client::Client;
use super::commands::{member_api, read_parsed};
use super::error::CtlError;
use super::view::Cluster;

/// How long `ctl backup` waits for the leader's answer: a backup of a large
/// database takes its time (pgBackRest's own timeouts catch a hung one).
const BACKUP_WAIT: Duration = Duration::from_secs(24 * 3600);

/// `--type` of `ctl backup`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BackupKind {
    /// Every file.
    Full,
    /// Changes since the last backup (a full one when there is none).
    Incr,
    /// Changes since the last full backup.
    Diff,
}

/// Options of `backup`.
#[derive(clap::Args, Debug)]
pub(crate) struct BackupArgs {
    /// The cluster's name, as patronictl's first argument.
    #[command(flatten)]
    pub cluster: ClusterName,
    /// The backup type.
    #[arg(long = "type", value_enum, default_value_t = BackupKind::Incr)]
    pub kind: BackupKind,
}

/// Asks the leader for a backup and prints pgBackRest's answer.
pub(super) async fn backup(client: &mut Client, args: &BackupArgs) -> Result<(), CtlError> {
    super::patroni_cmds::require_cluster(client, args.cluster.get()).await?;
    let (cluster, _) = read_parsed(client, "/cluster", Cluster::parse).await?;
    let leader = cluster
        .leader()
        .ok_or_else(|| CtlError::Failed("the cluster has no leader to take a backup".into()))?;
    let api = member_api(leader)?;
    let kind = match args.kind {
        BackupKind::Full => "full",
        BackupKind::Incr => "incr",
        BackupKind::Diff => "diff",
    };
    client.write_timeout = BACKUP_WAIT;
    let reply = client
        .mutate_at(
            &api,
            Method::POST,
            "/backup",
            Some(&json!({ "type": kind })),
        )
        .await?;
    if reply.ok() {
        println!(
            "Success: {kind} backup on leader {}: {}",
            leader.name,
            reply.message()
        );
        Ok(())
    } else {
        Err(CtlError::Failed(format!(
            "{kind} backup on leader {}: {}",
            leader.name,
            reply.answered()
        )))
    }
}
