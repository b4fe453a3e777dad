//! Tests of the `ctl` argument parsing and the checks made before any request.

use std::io::IsTerminal;

use clap::Parser;

use super::args::Format;
use super::commands::confirm;
use super::*;

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
        CtlCommand::List(ListArgs {
            read: ReadArgs {
                format: Format::Json,
                ..
            },
            ..
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
    assert!(matches!(execute(args).await, Err(CtlError::Usage(m)) if m.contains("-s KEY=VALUE")));
    let args = parse(&["edit-config", "-s", "ttl"]).expect("parses");
    assert!(matches!(execute(args).await, Err(CtlError::Usage(m)) if m.contains("key=value")));
    let args = parse(&["switchover", "--scheduled", "soon"]).expect("parses");
    assert!(matches!(execute(args).await, Err(CtlError::Usage(m)) if m.contains("--scheduled")));
    let args = parse(&["list", "--api", "ftp://x"]).expect("parses");
    assert!(matches!(execute(args).await, Err(CtlError::Usage(m)) if m.contains("--api")));
    let args = parse(&["list", "--api", "http://127.0.0.1:1", "--password", "x"]).expect("parses");
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
