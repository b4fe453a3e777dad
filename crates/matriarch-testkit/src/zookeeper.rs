//! A real standalone ZooKeeper 3.8 (Debian's `zookeeper` package, run with java directly).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use tempfile::TempDir;

use crate::error::{IoContext, Result, TestkitError};
use crate::ports::free_port;
use crate::process::{
    find_program, process_controls, require_program, retry_on_port_clash, temp_dir, ServiceProcess,
    Spec,
};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// ZooKeeper's jar (Debian's `zookeeper` package); its manifest pulls in the rest.
pub const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";
const LOG4J_EXAMPLE: &str = "/etc/zookeeper/conf_example/log4j.properties";

/// A `log4j.properties` that sends a server's log, INFO and up, to the console
/// (the server's log file).
pub const ZOOKEEPER_LOG4J: &str = "log4j.rootLogger=INFO, CONSOLE\n\
     log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender\n\
     log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout\n\
     log4j.appender.CONSOLE.layout.ConversionPattern=%d{ISO8601} - %-5p [%t] - %m%n\n";

/// The java arguments (after the program) of a ZooKeeper server configured by
/// `cfg`: a small heap and a quick start, no admin server, its log to the
/// console by the `log4j.properties` first found on `classpath`, `log_dir` for
/// what it writes besides.
pub fn zookeeper_args(log_dir: &Path, classpath: &str, cfg: &Path) -> Vec<OsString> {
    vec![
        "-Xmx256m".into(),
        "-XX:+UseSerialGC".into(),
        "-XX:TieredStopAtLevel=1".into(),
        format!("-Dzookeeper.log.dir={}", log_dir.display()).into(),
        "-Dzookeeper.root.logger=INFO,CONSOLE".into(),
        "-Dzookeeper.admin.enableServer=false".into(),
        "-cp".into(),
        classpath.into(),
        "org.apache.zookeeper.server.quorum.QuorumPeerMain".into(),
        cfg.into(),
    ]
}

/// Sends a four-letter word (e.g. `ruok`, `srvr`, `mntr`) to a ZooKeeper server and
/// returns its answer.
pub fn zk_four_letter_word(port: u16, word: &str) -> Result<String> {
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .ctx(|| format!("connecting to ZooKeeper on 127.0.0.1:{port}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .ctx(|| "setting read timeout".to_string())?;
    s.write_all(word.as_bytes())
        .ctx(|| format!("sending `{word}` to ZooKeeper"))?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .ctx(|| format!("reading the answer to `{word}` from ZooKeeper"))?;
    Ok(out)
}

/// The session timeouts a [`ZooKeeperServer`] grants: it clamps every
/// client's request into `min..=max` (ZooKeeper's `minSessionTimeout` and
/// `maxSessionTimeout`; the server's `tickTime` is 2 s, and a server expires
/// sessions on tick boundaries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZooKeeperOptions {
    /// `minSessionTimeout` (at least 1 ms).
    pub min_session_timeout: Duration,
    /// `maxSessionTimeout` (at least `min_session_timeout`).
    pub max_session_timeout: Duration,
}

impl Default for ZooKeeperOptions {
    /// 1 s to 60 s: wide enough for every test ttl.
    fn default() -> Self {
        ZooKeeperOptions {
            min_session_timeout: Duration::from_secs(1),
            max_session_timeout: Duration::from_secs(60),
        }
    }
}

/// A standalone ZooKeeper server on a free 127.0.0.1 port with a throwaway data
/// directory; killed and removed on drop.
#[derive(Debug)]
pub struct ZooKeeperServer {
    port: u16,
    data_dir: PathBuf,
    process: Mutex<ServiceProcess>,
    _dir: TempDir,
}

impl ZooKeeperServer {
    /// Starts ZooKeeper and waits until it answers `ruok` with `imok`.
    pub fn start() -> Result<Self> {
        ZooKeeperServer::start_with(ZooKeeperOptions::default())
    }

    /// Starts ZooKeeper granting the session timeouts of `options` (for
    /// example a `maxSessionTimeout` below a cluster's ttl).
    pub fn start_with(options: ZooKeeperOptions) -> Result<Self> {
        let (min, max) = (
            options.min_session_timeout.as_millis(),
            options.max_session_timeout.as_millis(),
        );
        if min == 0 || max < min || max > i32::MAX as u128 {
            return Err(TestkitError::InvalidArgument(format!(
                "ZooKeeper session timeouts must satisfy 1 ms <= min ({min} ms) <= max ({max} ms)"
            )));
        }
        let java = find_program("java")?;
        require_program("zookeeper (zookeeper.jar)", Path::new(ZOOKEEPER_JAR))?;
        retry_on_port_clash("ZooKeeper start", Duration::ZERO, || {
            let dir = temp_dir("matriarch-zk-", "ZooKeeper")?;
            let port = free_port()?;
            let conf_dir = dir.path().join("conf");
            let data_dir = dir.path().join("data");
            for d in [&conf_dir, &data_dir] {
                std::fs::create_dir_all(d).ctx(|| format!("creating {}", d.display()))?;
            }
            let cfg = format!(
                "tickTime=2000\n\
                 initLimit=10\n\
                 syncLimit=5\n\
                 minSessionTimeout={min}\n\
                 maxSessionTimeout={max}\n\
                 dataDir={}\n\
                 clientPort={port}\n\
                 clientPortAddress=127.0.0.1\n\
                 admin.enableServer=false\n\
                 4lw.commands.whitelist=*\n\
                 forceSync=no\n",
                data_dir.display()
            );
            let cfg_path = conf_dir.join("zoo.cfg");
            std::fs::write(&cfg_path, cfg).ctx(|| format!("writing {}", cfg_path.display()))?;
            let log4j = conf_dir.join("log4j.properties");
            if Path::new(LOG4J_EXAMPLE).is_file() {
                std::fs::copy(LOG4J_EXAMPLE, &log4j)
                    .ctx(|| format!("copying {LOG4J_EXAMPLE} to {}", log4j.display()))?;
            } else {
                std::fs::write(&log4j, ZOOKEEPER_LOG4J)
                    .ctx(|| format!("writing {}", log4j.display()))?;
            }
            let mut spec = Spec::new(&java);
            spec.args = zookeeper_args(
                dir.path(),
                &format!("{}:{ZOOKEEPER_JAR}", conf_dir.display()),
                &cfg_path,
            );
            let process =
                ServiceProcess::spawn("zookeeper", spec, dir.path().join("zookeeper.log"))?;
            let server = ZooKeeperServer {
                port,
                data_dir,
                process: Mutex::new(process),
                _dir: dir,
            };
            server.wait_ready()?;
            Ok(server)
        })
    }

    process_controls!("the ZooKeeper server");

    fn wait_ready(&self) -> Result<()> {
        let port = self.port;
        self.lock().wait_until(READY_TIMEOUT, || {
            let answer = zk_four_letter_word(port, "ruok").map_err(|e| e.to_string())?;
            if answer.trim() == "imok" {
                Ok(true)
            } else {
                Err(format!("ruok answered `{}`", answer.trim()))
            }
        })
    }

    /// The connect string, e.g. `127.0.0.1:21810`.
    pub fn connect_string(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The client port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (kept across [`ZooKeeperServer::restart`]).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Starts the server again with the same data directory and port (killing it first
    /// if it still runs) and waits for `imok`.
    pub fn restart(&self) -> Result<()> {
        retry_on_port_clash("ZooKeeper restart", Duration::from_millis(500), || {
            {
                let mut p = self.lock();
                p.kill();
                p.start()?;
            }
            self.wait_ready()
        })
    }
}
