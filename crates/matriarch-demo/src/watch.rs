//! Watching the leader lock in etcd with `etcdctl watch`, timestamping every change:
//! the lock expiring (its holder's lease ran out) and a member taking it.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{DemoError, Result};

/// A change of the leader key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockEvent {
    /// The key was written: this member holds the lock (also at each renewal).
    Held(String),
    /// The key is gone: the lock expired or was released.
    Released,
}

/// A running `etcdctl watch` of the leader key.
pub struct LeaderWatch {
    child: Child,
    events: Arc<Mutex<Vec<(Instant, LockEvent)>>>,
    reader: Option<JoinHandle<()>>,
}

impl LeaderWatch {
    /// Starts watching `key` on the etcd at `endpoints` (`http://127.0.0.1:2379`, or
    /// several comma-separated: etcdctl's client moves the watch to another member,
    /// from the last revision it saw, when its member dies).
    pub fn start(endpoints: &str, key: &str) -> Result<LeaderWatch> {
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", endpoints, "watch", key])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // Not in the terminal's process group: Ctrl-C is for the demo alone.
            .process_group(0)
            .spawn()
            .map_err(|e| {
                DemoError::Setup(format!(
                    "cannot run etcdctl (Debian package etcd-client; run `cargo xtask deps`): {e}"
                ))
            })?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| DemoError::Setup("etcdctl has no stdout pipe".into()))?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        // `etcdctl watch` prints three lines per event: PUT|DELETE, the key, the value.
        let reader = std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(kind)) = lines.next() {
                let at = Instant::now();
                let (Some(Ok(_key)), Some(Ok(value))) = (lines.next(), lines.next()) else {
                    break;
                };
                let event = match kind.trim() {
                    "PUT" => LockEvent::Held(value.trim().to_owned()),
                    "DELETE" => LockEvent::Released,
                    _ => continue,
                };
                sink.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((at, event));
            }
        });
        let mut watch = LeaderWatch {
            child,
            events,
            reader: Some(reader),
        };
        // A watch that fails at once (bad endpoint) exits: say so now.
        std::thread::sleep(Duration::from_millis(300));
        if let Ok(Some(status)) = watch.child.try_wait() {
            watch.reader.take();
            return Err(DemoError::Setup(format!(
                "`etcdctl watch {key}` exited at once ({status})"
            )));
        }
        Ok(watch)
    }

    /// Whether `etcdctl watch` still runs (a watch that exited sees no more events).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The events seen after `since`, in order.
    pub fn events_since(&self, since: Instant) -> Vec<(Instant, LockEvent)> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(at, _)| *at >= since)
            .cloned()
            .collect()
    }
}

impl Drop for LeaderWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}
