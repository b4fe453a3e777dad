//! SQL connections (tokio-postgres) and the queries the controller runs.

use std::path::Path;
use std::time::Duration;

use matriarch_model::Timeline;
use postgres_protocol::authentication::{md5_hash, sasl};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_postgres::{Client, Config, NoTls, SimpleQueryMessage, SimpleQueryRow};

use crate::error::{Operation, PostgresError};
use crate::secret::Credentials;

/// A libpq-like connection target.
pub(crate) enum Target<'a> {
    /// The local server's Unix socket directory.
    Socket(&'a Path),
    /// A host name, address, or (starting with `/`) a socket directory.
    Host(&'a str),
}

/// Opens a connection; the error is a message for humans.
pub(crate) async fn connect(
    target: Target<'_>,
    port: u16,
    credentials: &Credentials,
    application_name: &str,
    timeout: Duration,
) -> Result<Client, String> {
    let mut config = Config::new();
    match target {
        Target::Socket(dir) => {
            config.host_path(dir);
        }
        Target::Host(host) if host.starts_with('/') => {
            config.host_path(host);
        }
        Target::Host(host) => {
            config.host(host);
        }
    }
    config
        .port(port)
        .user(&credentials.username)
        .dbname("postgres")
        .application_name(application_name)
        .connect_timeout(timeout);
    if let Some(password) = &credentials.password {
        config.password(password.expose());
    }
    let (client, connection) = tokio::time::timeout(timeout, config.connect(NoTls))
        .await
        .map_err(|_| format!("no connection within {timeout:?}"))?
        .map_err(|err| describe(&err))?;
    tokio::spawn(async move {
        // Ends when the client is dropped or the server goes away.
        let _ = connection.await;
    });
    Ok(client)
}

/// The server's message (with detail) or the driver's.
pub(crate) fn describe(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        let mut text = format!("{}: {}", db.severity(), db.message());
        if let Some(detail) = db.detail() {
            text.push_str(&format!(" ({detail})"));
        }
        return text;
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Runs `sql` (one or more statements) in one round trip; returns the rows
/// of each statement.
pub(crate) async fn simple(
    client: &Client,
    op: Operation,
    context: &str,
    sql: &str,
    timeout: Duration,
) -> Result<Vec<Vec<SimpleQueryRow>>, PostgresError> {
    let messages = tokio::time::timeout(timeout, client.simple_query(sql))
        .await
        .map_err(|_| PostgresError::Timeout {
            operation: op,
            after: timeout,
        })?
        .map_err(|err| PostgresError::Query {
            operation: op,
            context: context.to_owned(),
            message: describe(&err),
        })?;
    let mut statements = vec![Vec::new()];
    for message in messages {
        match message {
            SimpleQueryMessage::Row(row) => {
                if let Some(rows) = statements.last_mut() {
                    rows.push(row);
                }
            }
            SimpleQueryMessage::CommandComplete(_) => statements.push(Vec::new()),
            _ => {}
        }
    }
    statements.pop();
    Ok(statements)
}

/// The first row of the first statement.
pub(crate) async fn one_row(
    client: &Client,
    op: Operation,
    context: &str,
    sql: &str,
    timeout: Duration,
) -> Result<SimpleQueryRow, PostgresError> {
    simple(client, op, context, sql, timeout)
        .await?
        .into_iter()
        .next()
        .and_then(|rows| rows.into_iter().next())
        .ok_or_else(|| PostgresError::Unexpected {
            operation: op,
            context: context.to_owned(),
            message: "the query returned no row".to_owned(),
        })
}

/// Column `index` of `row` as text (`None` for NULL or a missing column).
pub(crate) fn text(row: &SimpleQueryRow, index: usize) -> Option<&str> {
    row.try_get(index).ok().flatten()
}

/// Column `index` parsed with `FromStr`; NULL is `None`, junk an error.
pub(crate) fn parsed<T: std::str::FromStr>(
    row: &SimpleQueryRow,
    index: usize,
    op: Operation,
    context: &str,
) -> Result<Option<T>, PostgresError> {
    match text(row, index) {
        None => Ok(None),
        Some(value) => value
            .parse::<T>()
            .map(Some)
            .map_err(|_| PostgresError::Unexpected {
                operation: op,
                context: context.to_owned(),
                message: format!("cannot parse {value:?} (column {index})"),
            }),
    }
}

/// One round trip for `observe`: the state, then `pg_stat_replication`
/// (without the controller's own timeline probes).
///
/// The primary's timeline comes from the name of its current WAL file (as
/// Patroni does): right after a promotion `pg_control_checkpoint()` still
/// shows the old timeline until the next checkpoint. A replica's is only an
/// estimate here (the WAL receiver's, else the last restartpoint's, which
/// lags behind a timeline switch): [`identify_system_timeline`] has the
/// timeline it replays.
pub(crate) const OBSERVE_SQL: &str = "\
SELECT pg_is_in_recovery(), \
 (SELECT system_identifier FROM pg_control_system()), \
 CASE WHEN pg_is_in_recovery() \
   THEN GREATEST((SELECT received_tli FROM pg_stat_wal_receiver), \
                 (SELECT timeline_id FROM pg_control_checkpoint()), \
                 (SELECT min_recovery_end_timeline FROM pg_control_recovery())) \
   ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END, \
 CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn() END, \
 CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_flush_lsn() END, \
 pg_last_wal_receive_lsn(), \
 pg_last_wal_replay_lsn(), \
 current_setting('synchronous_standby_names'), \
 COALESCE((SELECT status = 'streaming' FROM pg_stat_wal_receiver), false), \
 CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END, \
 (extract(epoch FROM pg_last_xact_replay_timestamp()) * 1000000)::bigint, \
 (extract(epoch FROM pg_postmaster_start_time()) * 1000000)::bigint, \
 current_setting('server_version_num'); \
SELECT application_name, state, sync_state, sent_lsn, write_lsn, flush_lsn, replay_lsn \
 FROM pg_stat_replication \
 WHERE application_name IS DISTINCT FROM 'matriarch timeline probe' \
 ORDER BY application_name, pid";

/// The timeline of a server that runs read-write.
pub(crate) const PRIMARY_TIMELINE_SQL: &str =
    "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int";

/// The `application_name` of the timeline probe's replication connection;
/// the spaces keep it from being taken for a member's replica, and
/// [`OBSERVE_SQL`] leaves it out of `pg_stat_replication`.
pub(crate) const TIMELINE_PROBE_NAME: &str = "matriarch timeline probe";

/// The longest backend message the probe reads (its replies are tiny): a
/// bigger length is junk, not a reason to allocate.
const MAX_MESSAGE: usize = 1 << 16;

/// The timeline the local server is on, from `IDENTIFY_SYSTEM` over a
/// physical replication connection on its Unix socket (as Patroni does).
///
/// On a standby the walsender answers with the timeline recovery replays
/// (`GetStandbyFlushRecPtr`), which SQL cannot read: `pg_stat_wal_receiver`
/// has a row only while a WAL receiver streams, and `pg_control_*()` show
/// the last restartpoint's timeline. tokio-postgres 0.7 cannot open a
/// replication connection, so this speaks the few messages it needs itself;
/// it authenticates with trust, password, MD5 or SCRAM-SHA-256. The error is
/// a message for humans and never holds the password.
pub(crate) async fn identify_system_timeline(
    socket_dir: &Path,
    port: u16,
    credentials: &Credentials,
    timeout: Duration,
) -> Result<Timeline, String> {
    let path = socket_dir.join(format!(".s.PGSQL.{port}"));
    tokio::time::timeout(timeout, async {
        let stream = tokio::net::UnixStream::connect(&path)
            .await
            .map_err(|err| format!("connecting to {}: {err}", path.display()))?;
        identify_system_over(stream, credentials).await
    })
    .await
    .map_err(|_| format!("no answer to IDENTIFY_SYSTEM within {timeout:?}"))?
}

/// [`identify_system_timeline`] over an open connection.
async fn identify_system_over<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    credentials: &Credentials,
) -> Result<Timeline, String> {
    let startup = startup_message(&[
        ("user", &credentials.username),
        ("replication", "true"),
        ("application_name", TIMELINE_PROBE_NAME),
    ]);
    send(&mut stream, &startup).await?;
    authenticate(&mut stream, credentials).await?;
    send(&mut stream, &message(b'Q', b"IDENTIFY_SYSTEM\0")).await?;
    let mut column = None;
    let mut timeline = None;
    loop {
        let (tag, body) = receive(&mut stream).await?;
        match tag {
            b'T' => column = Some(column_index(&body, "timeline")?),
            b'D' if timeline.is_none() => {
                let index = column.ok_or("IDENTIFY_SYSTEM sent a row before its description")?;
                let value = data_row_value(&body, index)?
                    .ok_or("IDENTIFY_SYSTEM reported a NULL timeline")?;
                timeline = Some(
                    value
                        .parse::<u32>()
                        .ok()
                        .filter(|tli| *tli > 0)
                        .map(Timeline)
                        .ok_or_else(|| format!("IDENTIFY_SYSTEM reported timeline {value:?}"))?,
                );
            }
            b'E' => return Err(error_text(&body)),
            b'Z' => break,
            // CommandComplete, notices, parameter changes.
            _ => {}
        }
    }
    // Polite: the walsender logs an unexpected EOF otherwise.
    let _ = send(&mut stream, &message(b'X', b"")).await;
    timeline.ok_or_else(|| "IDENTIFY_SYSTEM returned no row".to_owned())
}

/// Answers the server's authentication requests until it is ready for a query.
async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    credentials: &Credentials,
) -> Result<(), String> {
    let password = || {
        credentials
            .password
            .as_ref()
            .map(|secret| secret.expose().as_bytes())
            .ok_or_else(|| "the server asks for a password and none is configured".to_owned())
    };
    let mut scram: Option<sasl::ScramSha256> = None;
    loop {
        let (tag, body) = receive(stream).await?;
        match tag {
            b'R' => {
                let code = be_i32(&body, 0)?;
                let rest = body.get(4..).unwrap_or_default();
                match code {
                    0 => {}
                    3 => {
                        let mut reply = password()?.to_vec();
                        reply.push(0);
                        send(stream, &message(b'p', &reply)).await?;
                    }
                    5 => {
                        let salt: [u8; 4] = rest
                            .get(..4)
                            .and_then(|salt| salt.try_into().ok())
                            .ok_or("a truncated MD5 authentication request")?;
                        let mut reply =
                            md5_hash(credentials.username.as_bytes(), password()?, salt)
                                .into_bytes();
                        reply.push(0);
                        send(stream, &message(b'p', &reply)).await?;
                    }
                    10 => {
                        let mechanism = "SCRAM-SHA-256";
                        if !rest
                            .split(|byte| *byte == 0)
                            .any(|offered| offered == mechanism.as_bytes())
                        {
                            return Err("the server offers no SASL mechanism but SCRAM-SHA-256-PLUS, which needs TLS".to_owned());
                        }
                        let client = sasl::ScramSha256::new(
                            password()?,
                            sasl::ChannelBinding::unsupported(),
                        );
                        let first = client.message();
                        let mut reply = mechanism.as_bytes().to_vec();
                        reply.push(0);
                        reply.extend_from_slice(&length(first.len())?.to_be_bytes());
                        reply.extend_from_slice(first);
                        send(stream, &message(b'p', &reply)).await?;
                        scram = Some(client);
                    }
                    11 => {
                        let client = scram.as_mut().ok_or("a SASL challenge out of turn")?;
                        client
                            .update(rest)
                            .map_err(|err| format!("SCRAM authentication: {err}"))?;
                        let reply = client.message().to_vec();
                        send(stream, &message(b'p', &reply)).await?;
                    }
                    12 => {
                        scram
                            .as_mut()
                            .ok_or("a SASL outcome out of turn")?
                            .finish(rest)
                            .map_err(|err| format!("SCRAM authentication: {err}"))?;
                    }
                    other => {
                        return Err(format!("unsupported authentication request (code {other})"))
                    }
                }
            }
            b'E' => return Err(error_text(&body)),
            b'Z' => return Ok(()),
            // ParameterStatus, BackendKeyData, notices.
            _ => {}
        }
    }
}

/// A frontend message: tag, length, body.
fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(tag);
    // Bodies are at most a password or a SCRAM message long.
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The startup message (protocol 3.0) with `parameters`.
fn startup_message(parameters: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196_608_u32.to_be_bytes().to_vec();
    for (key, value) in parameters {
        body.extend_from_slice(key.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

fn length(len: usize) -> Result<i32, String> {
    i32::try_from(len).map_err(|_| format!("a message of {len} bytes is too long"))
}

async fn send<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> Result<(), String> {
    stream
        .write_all(bytes)
        .await
        .map_err(|err| format!("sending to the server: {err}"))?;
    stream
        .flush()
        .await
        .map_err(|err| format!("sending to the server: {err}"))
}

/// Reads one backend message: its tag and body.
async fn receive<S: AsyncRead + Unpin>(stream: &mut S) -> Result<(u8, Vec<u8>), String> {
    let mut header = [0_u8; 5];
    stream
        .read_exact(&mut header)
        .await
        .map_err(|err| format!("reading from the server: {err}"))?;
    let [tag, length @ ..] = header;
    let length = u32::from_be_bytes(length) as usize;
    if !(4..=MAX_MESSAGE).contains(&length) {
        return Err(format!(
            "a server message {:?} of {length} bytes: not the PostgreSQL protocol",
            char::from(tag)
        ));
    }
    let mut body = vec![0_u8; length - 4];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|err| format!("reading from the server: {err}"))?;
    Ok((tag, body))
}

fn be_i32(bytes: &[u8], at: usize) -> Result<i32, String> {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(i32::from_be_bytes)
        .ok_or_else(|| "a truncated server message".to_owned())
}

fn be_i16(bytes: &[u8], at: usize) -> Result<i16, String> {
    bytes
        .get(at..at + 2)
        .and_then(|b| b.try_into().ok())
        .map(i16::from_be_bytes)
        .ok_or_else(|| "a truncated server message".to_owned())
}

/// The position of column `name` in a RowDescription body.
fn column_index(body: &[u8], name: &str) -> Result<usize, String> {
    let count = be_i16(body, 0)?;
    let mut at = 2;
    for index in 0..usize::try_from(count).unwrap_or(0) {
        let rest = body.get(at..).ok_or("a truncated row description")?;
        let end = rest
            .iter()
            .position(|byte| *byte == 0)
            .ok_or("a truncated row description")?;
        if &rest[..end] == name.as_bytes() {
            return Ok(index);
        }
        // The name's terminator, then table OID, column, type OID, size,
        // modifier and format: 18 bytes.
        at += end + 1 + 18;
    }
    Err(format!("IDENTIFY_SYSTEM has no column {name:?}"))
}

/// Column `index` of a DataRow body as text (`None` for NULL).
fn data_row_value(body: &[u8], index: usize) -> Result<Option<String>, String> {
    let count = usize::try_from(be_i16(body, 0)?).unwrap_or(0);
    if index >= count {
        return Err(format!("a row of {count} columns has no column {index}"));
    }
    let mut at = 2;
    for current in 0..=index {
        let len = be_i32(body, at)?;
        at += 4;
        let Ok(len) = usize::try_from(len) else {
            // -1: NULL.
            if current == index {
                return Ok(None);
            }
            continue;
        };
        let value = body.get(at..at + len).ok_or("a truncated data row")?;
        if current == index {
            return Ok(Some(String::from_utf8_lossy(value).into_owned()));
        }
        at += len;
    }
    Err("a truncated data row".to_owned())
}

/// An ErrorResponse as "SEVERITY: message (detail)", like [`describe`].
fn error_text(body: &[u8]) -> String {
    let mut severity = "ERROR".to_owned();
    let mut text = String::new();
    let mut detail = None;
    for field in body.split(|byte| *byte == 0) {
        let Some((kind, value)) = field.split_first() else {
            continue;
        };
        let value = String::from_utf8_lossy(value).into_owned();
        match kind {
            b'S' => severity = value,
            b'M' => text = value,
            b'D' => detail = Some(value),
            _ => {}
        }
    }
    match detail {
        Some(detail) => format!("{severity}: {text} ({detail})"),
        None => format!("{severity}: {text}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::DuplexStream;

    /// The server side of a scripted conversation.
    struct Server(DuplexStream);

    impl Server {
        async fn startup(&mut self) -> Vec<(String, String)> {
            let mut len = [0_u8; 4];
            self.0.read_exact(&mut len).await.unwrap();
            let mut body = vec![0_u8; u32::from_be_bytes(len) as usize - 4];
            self.0.read_exact(&mut body).await.unwrap();
            assert_eq!(body[..4], 196_608_u32.to_be_bytes());
            let fields: Vec<String> = body[4..]
                .split(|b| *b == 0)
                .filter(|f| !f.is_empty())
                .map(|f| String::from_utf8(f.to_vec()).unwrap())
                .collect();
            fields
                .chunks(2)
                .map(|kv| (kv[0].clone(), kv[1].clone()))
                .collect()
        }

        async fn expect(&mut self, tag: u8) -> Vec<u8> {
            let (got, body) = receive(&mut self.0).await.unwrap();
            assert_eq!(char::from(got), char::from(tag));
            body
        }

        async fn send(&mut self, tag: u8, body: &[u8]) {
            self.0.write_all(&message(tag, body)).await.unwrap();
        }

        async fn ready(&mut self) {
            self.send(b'R', &0_i32.to_be_bytes()).await;
            self.send(b'S', b"server_version\x0015.0\x00").await;
            self.send(b'K', &[0, 0, 0, 1, 0, 0, 0, 2]).await;
            self.send(b'Z', b"I").await;
        }

        /// Answers IDENTIFY_SYSTEM as a standby replaying `timeline` does.
        async fn identify(&mut self, timeline: &str) {
            assert_eq!(self.expect(b'Q').await, b"IDENTIFY_SYSTEM\0");
            let mut description = 4_i16.to_be_bytes().to_vec();
            for name in ["systemid", "timeline", "xlogpos", "dbname"] {
                description.extend_from_slice(name.as_bytes());
                description.extend_from_slice(&[0; 19]);
            }
            self.send(b'T', &description).await;
            let mut row = 4_i16.to_be_bytes().to_vec();
            for value in ["7312345678901234567", timeline, "0/3000148"] {
                row.extend_from_slice(&(value.len() as i32).to_be_bytes());
                row.extend_from_slice(value.as_bytes());
            }
            row.extend_from_slice(&(-1_i32).to_be_bytes());
            self.send(b'D', &row).await;
            self.send(b'C', b"IDENTIFY_SYSTEM\0").await;
            self.send(b'Z', b"I").await;
        }
    }

    async fn converse<F>(
        credentials: Credentials,
        server: impl FnOnce(Server) -> F,
    ) -> Result<Timeline, String>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let (client, server_end) = tokio::io::duplex(4096);
        let server = tokio::spawn(server(Server(server_end)));
        let result = identify_system_over(client, &credentials).await;
        server.await.unwrap();
        result
    }

    /// The error of a [`converse_trusted`] that `server` makes fail.
    async fn refused<F>(server: impl FnOnce(Server) -> F) -> String
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        converse_trusted(server)
            .await
            .expect_err("the conversation should fail")
    }

    /// [`converse`] as `postgres` without a password (a trusted local
    /// connection).
    async fn converse_trusted<F>(server: impl FnOnce(Server) -> F) -> Result<Timeline, String>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        converse(Credentials::without_password("postgres"), server).await
    }

    #[tokio::test]
    async fn a_standby_reports_the_timeline_identify_system_names() {
        let timeline = converse_trusted(|mut s| async move {
            let startup = s.startup().await;
            assert!(startup.contains(&("replication".into(), "true".into())));
            assert!(startup.contains(&("user".into(), "postgres".into())));
            assert!(startup.contains(&("application_name".into(), TIMELINE_PROBE_NAME.into())));
            s.ready().await;
            s.identify("2").await;
            // The client says goodbye rather than dropping the connection.
            s.expect(b'X').await;
        })
        .await;
        assert_eq!(timeline, Ok(Timeline(2)));
    }

    #[tokio::test]
    async fn a_refused_replication_connection_is_an_error_with_the_servers_words() {
        let err = refused(|mut s| async move {
            s.startup().await;
            s.send(
                b'E',
                b"SFATAL\0C28000\0Mno pg_hba.conf entry for replication connection\0\0",
            )
            .await;
        })
        .await;
        assert_eq!(
            err,
            "FATAL: no pg_hba.conf entry for replication connection"
        );
    }

    #[tokio::test]
    async fn an_md5_challenge_gets_the_hash_and_never_the_password() {
        let credentials = Credentials::new("postgres", "pa55word");
        let timeline = converse(credentials, |mut s| async move {
            s.startup().await;
            let mut request = 5_i32.to_be_bytes().to_vec();
            request.extend_from_slice(&[1, 2, 3, 4]);
            s.send(b'R', &request).await;
            let reply = s.expect(b'p').await;
            let mut expected = md5_hash(b"postgres", b"pa55word", [1, 2, 3, 4]).into_bytes();
            expected.push(0);
            assert_eq!(reply, expected);
            s.ready().await;
            s.identify("7").await;
        })
        .await;
        assert_eq!(timeline, Ok(Timeline(7)));
    }

    #[tokio::test]
    async fn a_password_request_without_a_password_fails_without_answering() {
        let err = refused(|mut s| async move {
            s.startup().await;
            s.send(b'R', &3_i32.to_be_bytes()).await;
        })
        .await;
        assert!(err.contains("none is configured"), "{err}");
    }

    #[tokio::test]
    async fn junk_or_a_bad_timeline_is_an_error_not_a_panic() {
        let err = refused(|mut s| async move {
            s.startup().await;
            s.0.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                .await
                .unwrap();
        })
        .await;
        assert!(err.contains("not the PostgreSQL protocol"), "{err}");

        let err = refused(|mut s| async move {
            s.startup().await;
            s.ready().await;
            s.identify("0").await;
        })
        .await;
        assert_eq!(err, "IDENTIFY_SYSTEM reported timeline \"0\"");
        assert!(data_row_value(&[0, 1, 0, 0, 0, 9, b'x'], 0).is_err());
        assert!(column_index(&[0, 3, b'a'], "timeline").is_err());
    }

    #[test]
    fn observe_leaves_the_probe_out_of_pg_stat_replication() {
        assert!(OBSERVE_SQL.contains(&format!(
            "application_name IS DISTINCT FROM '{TIMELINE_PROBE_NAME}'"
        )));
    }
}
