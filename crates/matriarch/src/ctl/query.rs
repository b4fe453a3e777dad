//! `query [CLUSTER] -c SQL`: runs SQL on a member's PostgreSQL (the leader
//! by default, or `--role`/`--member`, as `dsn` picks it) and prints the
//! rows as patronictl's default `tsv` format: a header line per result, then
//! one line per row, NULL as `None`.

use std::path::PathBuf;
use std::time::Duration;

use tokio_postgres::SimpleQueryMessage;

use super::args::MemberChoice;
use super::client::Client;
use super::error::CtlError;
use super::patroni_cmds;

/// Options of `query`.
#[derive(clap::Args, Debug)]
pub(crate) struct QueryArgs {
    /// The cluster, and the member to query.
    #[command(flatten)]
    pub target: MemberChoice,
    /// The SQL to run.
    #[arg(short = 'c', long = "command", conflicts_with = "file")]
    pub command: Option<String>,
    /// A file with the SQL to run.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// The database user (default: postgres); the password comes from PGPASSWORD.
    #[arg(short = 'U', long = "pg-username", value_name = "USER")]
    pub user: Option<String>,
    /// The database (default: postgres).
    #[arg(short = 'd', long)]
    pub dbname: Option<String>,
    /// The column delimiter.
    #[arg(long, default_value = "\t")]
    pub delimiter: String,
}

/// Runs `query`.
pub(super) async fn query(
    client: &mut Client,
    args: &QueryArgs,
    timeout: Duration,
) -> Result<(), CtlError> {
    let sql = match (&args.command, &args.file) {
        (Some(sql), _) => sql.clone(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .map_err(|e| CtlError::Usage(format!("cannot read {}: {e}", file.display())))?,
        (None, None) => return Err(CtlError::Usage("query needs -c SQL or -f FILE".to_owned())),
    };
    let (host, port) = patroni_cmds::member_address(client, &args.target).await?;
    let mut config = tokio_postgres::Config::new();
    config
        .host(&host)
        .port(port)
        .user(args.user.as_deref().unwrap_or("postgres"))
        .dbname(args.dbname.as_deref().unwrap_or("postgres"))
        .application_name("matriarch ctl")
        .connect_timeout(timeout);
    if let Ok(password) = std::env::var("PGPASSWORD") {
        config.password(password);
    }
    let (pg, connection) = tokio::time::timeout(timeout, config.connect(tokio_postgres::NoTls))
        .await
        .map_err(|_| CtlError::Failed(format!("{host}:{port}: no answer in {timeout:?}")))?
        .map_err(|e| CtlError::Failed(format!("{host}:{port}: {e}")))?;
    let task = tokio::spawn(connection);
    let result = tokio::time::timeout(timeout, pg.simple_query(&sql)).await;
    drop(pg);
    let _ = task.await;
    let messages = result
        .map_err(|_| CtlError::Failed(format!("the query took longer than {timeout:?}")))?
        .map_err(|e| CtlError::Failed(format!("{host}:{port}: {e}")))?;
    print!("{}", tsv(&messages, &args.delimiter));
    Ok(())
}

/// The rows of `messages` as patronictl's tsv: a header before the first
/// row of each result.
fn tsv(messages: &[SimpleQueryMessage], delimiter: &str) -> String {
    let mut out = String::new();
    let mut header_due = true;
    for message in messages {
        match message {
            SimpleQueryMessage::RowDescription(columns) if header_due => {
                let names: Vec<&str> = columns.iter().map(|c| c.name()).collect();
                out.push_str(&names.join(delimiter));
                out.push('\n');
                header_due = false;
            }
            SimpleQueryMessage::Row(row) => {
                if header_due {
                    let names: Vec<&str> = row.columns().iter().map(|c| c.name()).collect();
                    out.push_str(&names.join(delimiter));
                    out.push('\n');
                    header_due = false;
                }
                let values: Vec<&str> = (0..row.len())
                    .map(|i| row.get(i).unwrap_or("None"))
                    .collect();
                out.push_str(&values.join(delimiter));
                out.push('\n');
            }
            SimpleQueryMessage::CommandComplete(_) => header_due = true,
            _ => {}
        }
    }
    out
}
