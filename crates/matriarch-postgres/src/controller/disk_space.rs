//! A start that failed for lack of disk space: found in the server log,
//! measured on the data directory and its pg_wal (which may be a symlink to
//! another file system), and reported as [`PostgresError::NoSpace`].

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::PgController;
use crate::error::{Operation, PostgresError};

/// What PostgreSQL writes when a write fails with ENOSPC.
const NO_SPACE: &str = "no space left on device";

/// The line of `log` that says the disk is full, if one does.
pub(super) fn no_space_line(log: &str) -> Option<&str> {
    log.lines()
        .rev()
        .find(|line| line.to_ascii_lowercase().contains(NO_SPACE))
}

/// Bytes available to an unprivileged user on the file system holding `path`
/// (`statvfs`, following symlinks), if they can be read.
pub(super) fn free_bytes(path: &Path) -> Option<u64> {
    let c_path = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we own; the path is a
    // valid NUL-terminated string for the duration of the call.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ by platform
    let free = (stat.f_bavail as u64).checked_mul(stat.f_frsize as u64)?;
    Some(free)
}

/// Of `paths`, the one with the least free space, and that space.
pub(super) fn fullest(paths: &[PathBuf]) -> Option<(PathBuf, Option<u64>)> {
    let measured: Vec<(PathBuf, Option<u64>)> =
        paths.iter().map(|p| (p.clone(), free_bytes(p))).collect();
    measured
        .iter()
        .filter(|(_, free)| free.is_some())
        .min_by_key(|(_, free)| *free)
        .or_else(|| measured.first())
        .cloned()
}

impl PgController {
    /// [`PostgresError::NoSpace`] if `server_log` says a write failed for
    /// lack of space; `None` otherwise (the caller reports what it has).
    pub(super) fn no_space_error(&self, op: Operation, server_log: &str) -> Option<PostgresError> {
        let line = no_space_line(server_log)?;
        let data_dir = self.data_dir().to_path_buf();
        let (path, free_bytes) =
            fullest(&[data_dir.join("pg_wal"), data_dir.clone()]).unwrap_or((data_dir, None));
        // Debug only: the engine reports the cause once when it begins.
        tracing::debug!(
            member = self.member(),
            path = %path.display(),
            free_bytes,
            "PostgreSQL ran out of disk space"
        );
        Some(PostgresError::NoSpace {
            operation: op,
            path,
            free_bytes,
            detail: line.trim().to_owned(),
        })
    }
}

/// Less free than this and PostgreSQL cannot add a WAL segment (the
/// default `wal_segment_size`).
pub(super) const WAL_SEGMENT_BYTES: u64 = 16 << 20;

impl PgController {
    /// See [`crate::Postgres::disk_full`].
    pub(super) fn disk_full_now(&self) -> Option<PostgresError> {
        let data_dir = self.data_dir().to_path_buf();
        let (path, free) = fullest(&[data_dir.join("pg_wal"), data_dir])?;
        let free = free?;
        (free < WAL_SEGMENT_BYTES).then(|| PostgresError::NoSpace {
            operation: Operation::Observe,
            path,
            free_bytes: Some(free),
            detail: "less than one WAL segment free".to_owned(),
        })
    }

    /// `error` as [`PostgresError::NoSpace`] when the program it reports
    /// failed for lack of space (its output says so); unchanged otherwise.
    pub(super) fn no_space_cause(&self, error: PostgresError) -> PostgresError {
        match &error {
            PostgresError::CommandFailed {
                operation,
                stderr_tail,
                ..
            } => self
                .no_space_error(*operation, stderr_tail)
                .unwrap_or(error),
            _ => error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_line_naming_enospc_is_found() {
        let log = "LOG:  redo done at 0/1FFF980\n\
                   2026-12-06 FATAL:  could not write to file \"pg_wal/xlogtemp.1\": No space left on device\n\
                   LOG:  database system is shut down\n";
        assert_eq!(
            no_space_line(log).map(str::trim),
            Some("2026-12-06 FATAL:  could not write to file \"pg_wal/xlogtemp.1\": No space left on device")
        );
        assert_eq!(no_space_line("FATAL: lock file exists"), None);
    }

    #[test]
    fn free_space_is_measured_and_a_missing_path_is_unknown() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).is_some());
        assert_eq!(free_bytes(&dir.path().join("absent")), None);
        let (path, free) = fullest(&[dir.path().join("absent"), dir.path().to_path_buf()]).unwrap();
        assert_eq!(path, dir.path());
        assert!(free.is_some());
    }

    #[test]
    fn the_error_names_the_path_and_the_free_space() {
        let error = PostgresError::NoSpace {
            operation: Operation::Start,
            path: PathBuf::from("/x/pg_wal"),
            free_bytes: Some(0),
            detail: "FATAL: could not write".to_owned(),
        };
        assert_eq!(
            error.to_string(),
            "cannot start: no space left on device (/x/pg_wal: 0 bytes free): FATAL: could not write"
        );
    }
}
