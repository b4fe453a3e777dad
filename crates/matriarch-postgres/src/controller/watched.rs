//! Running a replica creation program with no time limit but a stall limit:
//! while it runs, the data directory it fills is measured; its growth is
//! logged, and a program whose directory has not grown for the stall limit is
//! killed (with its whole process group).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::process::Command;

use super::process::{Finished, Runner};
use crate::error::{Operation, PostgresError};

/// How often the data directory is measured.
const MEASURE_EVERY: Duration = Duration::from_secs(1);
/// How often progress is logged.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// What a watched run reports.
pub(crate) struct Watched<'a> {
    /// The operation, for errors.
    pub(crate) op: Operation,
    /// The program's name, for logs and errors.
    pub(crate) name: &'a str,
    /// The directory whose growth counts as progress.
    pub(crate) dir: &'a Path,
    /// How long it may go without growing.
    pub(crate) stall: Duration,
}

impl Runner {
    /// Runs `cmd` (made by [`Runner::command`] or [`Runner::command_at`]) to
    /// completion: a non-zero exit is [`PostgresError::CommandFailed`], no
    /// growth of `watch.dir` for `watch.stall` is [`PostgresError::Stalled`].
    pub(crate) async fn run_watched(
        &self,
        mut cmd: Command,
        watch: Watched<'_>,
    ) -> Result<Finished, PostgresError> {
        let Watched {
            op,
            name,
            dir,
            stall,
        } = watch;
        // Its own process group: a stalled custom script's children die with it.
        cmd.process_group(0);
        let child = cmd.spawn().map_err(|source| PostgresError::Io {
            operation: op,
            context: format!("starting {name} as OS user {}", self.user.name),
            source,
        })?;
        let pid = child.id();
        let output = child.wait_with_output();
        tokio::pin!(output);
        let started = Instant::now();
        let (mut size, mut grew_at, mut logged_at) = (measure(dir).await, started, started);
        let mut ticks = tokio::time::interval(MEASURE_EVERY);
        let output = loop {
            tokio::select! {
                done = &mut output => break done,
                _ = ticks.tick() => {
                    let now = measure(dir).await;
                    if now != size {
                        (size, grew_at) = (now, Instant::now());
                    }
                    if grew_at.elapsed() >= stall {
                        if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                            // SAFETY: kill(2) has no memory effects; -pid is the
                            // group this child leads.
                            unsafe { libc::kill(-pid, libc::SIGKILL) };
                        }
                        tracing::warn!(member = %self.member, program = name, bytes = size, stalled_secs = stall.as_secs(), "no progress: stopping it");
                        return Err(PostgresError::Stalled {
                            operation: op,
                            program: name.to_owned(),
                            after: stall,
                        });
                    }
                    if logged_at.elapsed() >= LOG_EVERY {
                        logged_at = Instant::now();
                        tracing::info!(member = %self.member, program = name, megabytes = size / 1_000_000, elapsed_secs = started.elapsed().as_secs(), "creating replica: data directory size");
                    }
                }
            }
        };
        let output = output.map_err(|source| PostgresError::Io {
            operation: op,
            context: format!("waiting for {name}"),
            source,
        })?;
        super::process::finish(op, name, &output)
    }
}

/// The bytes of the files below `dir` (symlinks not followed); 0 when it
/// cannot be read (not made yet).
async fn measure(dir: &Path) -> u64 {
    let dir: PathBuf = dir.to_owned();
    tokio::task::spawn_blocking(move || tree_size(&dir))
        .await
        .unwrap_or(0)
}

fn tree_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => tree_size(&entry.path()),
            Ok(kind) if kind.is_file() => entry.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_size_counts_nested_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        std::fs::write(dir.path().join("a"), [0u8; 10]).expect("write");
        std::fs::write(dir.path().join("sub/b"), [0u8; 5]).expect("write");
        assert_eq!(tree_size(dir.path()), 15);
        assert_eq!(tree_size(&dir.path().join("missing")), 0);
    }

    #[tokio::test]
    async fn a_program_that_fills_nothing_is_stopped_after_the_stall_limit() {
        let user =
            super::super::process::OsUser::resolve(super::super::DEFAULT_OS_USER).expect("OS user");
        let runner = Runner {
            bin_dir: PathBuf::from("/bin"),
            user,
            member: "m1".into(),
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = runner.command_at(Path::new("/bin/sleep"));
        cmd.arg("60");
        let started = Instant::now();
        let watch = Watched {
            op: Operation::CloneReplica,
            name: "sleep",
            dir: dir.path(),
            stall: Duration::from_secs(2),
        };
        let result = runner.run_watched(cmd, watch).await;
        assert!(
            matches!(result, Err(PostgresError::Stalled { .. })),
            "{:?}",
            result.err()
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
