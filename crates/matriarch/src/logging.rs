//! Structured logs: text or JSON lines on standard error (which the journal
//! reads), and optionally into a size-rotated file (`log.dir`, Patroni's
//! `log.dir`/`log.file_num`/`log.file_size`), with a level that a reload can
//! change.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing::Subscriber;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::config::{LogConfig, LogFormat};

/// The name of the current log file in `log.dir`; rotated ones get `.1`, `.2`, ...
pub(crate) const LOG_FILE_NAME: &str = "matriarch.log";

/// Mode of new log files (lessened by the umask): the logs name members and
/// addresses, so no one but the owner and its group reads them.
const LOG_FILE_MODE: u32 = 0o640;

/// Changes the log level of the running process.
pub(crate) struct LogHandle(reload::Handle<EnvFilter, Registry>);

impl LogHandle {
    /// Applies a new filter (`info`, `matriarch=debug,info`, ...).
    pub(crate) fn set_level(&self, level: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        self.0.reload(filter).map_err(|e| e.to_string())
    }
}

/// One output layer, boxed so that text and JSON, stderr and file, mix.
type BoxedLayer<S> = Box<dyn Layer<S> + Send + Sync>;

fn output_layer<S, W>(format: LogFormat, ansi: bool, writer: W) -> BoxedLayer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(writer)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(writer)
            .boxed(),
    }
}

/// Installs the global subscriber: stderr always, and `log.dir` when set.
pub(crate) fn init(config: &LogConfig) -> Result<LogHandle, String> {
    let filter = EnvFilter::try_new(&config.level).map_err(|e| format!("log.level: {e}"))?;
    let (filter, handle) = reload::Layer::new(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut layers = vec![output_layer(config.format, ansi, std::io::stderr)];
    if let Some(dir) = &config.dir {
        let file = RotatingFile::open(dir, config.file_size, config.file_num).map_err(|e| {
            format!(
                "log.dir: cannot open {}: {e}",
                dir.join(LOG_FILE_NAME).display()
            )
        })?;
        layers.push(output_layer(config.format, false, Mutex::new(file)));
    }
    tracing_subscriber::registry()
        .with(filter)
        .with(layers)
        .try_init()
        .map_err(|e| format!("cannot install the logger: {e}"))?;
    Ok(LogHandle(handle))
}

/// A log file rotated by size: when a write would take `matriarch.log` past
/// `max_size`, it becomes `matriarch.log.1` (`.1` becomes `.2`, ... up to
/// `.keep`; the oldest is dropped) and a new `matriarch.log` is started, as
/// Python's `RotatingFileHandler` under Patroni does. A line is never split.
pub(crate) struct RotatingFile {
    dir: PathBuf,
    max_size: u64,
    keep: u32,
    file: File,
    size: u64,
}

impl RotatingFile {
    /// Opens (appending) or creates `dir/matriarch.log`, creating `dir` (0750)
    /// when missing.
    pub(crate) fn open(dir: &Path, max_size: u64, keep: u32) -> io::Result<RotatingFile> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)?;
        let file = open_log(&dir.join(LOG_FILE_NAME))?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            dir: dir.to_path_buf(),
            max_size,
            keep,
            file,
            size,
        })
    }

    fn numbered(&self, n: u32) -> PathBuf {
        self.dir.join(format!("{LOG_FILE_NAME}.{n}"))
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        match std::fs::remove_file(self.numbered(self.keep)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        for n in (1..self.keep).rev() {
            match std::fs::rename(self.numbered(n), self.numbered(n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        let current = self.dir.join(LOG_FILE_NAME);
        if self.keep == 0 {
            std::fs::remove_file(&current)?;
        } else {
            std::fs::rename(&current, self.numbered(1))?;
        }
        self.file = open_log(&current)?;
        self.size = 0;
        Ok(())
    }
}

/// Opens a log file for appending; a new one gets [`LOG_FILE_MODE`], an older
/// one readable by others loses that.
fn open_log(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(LOG_FILE_MODE)
        .open(path)?;
    let mode = file.metadata()?.permissions().mode();
    if mode & 0o027 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o750))?;
    }
    Ok(file)
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Rotate before a write that would overflow, unless the file is empty
        // (a line longer than max_size still goes somewhere).
        if self.size > 0 && self.size.saturating_add(buf.len() as u64) > self.max_size {
            self.rotate()?;
        }
        let n = self.file.write(buf)?;
        self.size = self.size.saturating_add(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writing_past_file_size_rotates_and_keeps_file_num_old_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("log");
        let mut log = RotatingFile::open(&dir, 100, 3).unwrap();
        // 40-byte lines: two fit in 100 bytes, the third starts a new file.
        for i in 0..20 {
            // One write per line, as the fmt layer does.
            log.write_all(format!("{i:02} {}\n", "x".repeat(36)).as_bytes())
                .unwrap();
        }
        log.flush().unwrap();
        assert_eq!(
            names(&dir),
            [
                "matriarch.log",
                "matriarch.log.1",
                "matriarch.log.2",
                "matriarch.log.3"
            ]
        );
        // Lines 18-19 are current, 16-17 in .1, 14-15 in .2, 12-13 in .3; older ones are gone.
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
        assert!(
            read("matriarch.log").starts_with("18 "),
            "{}",
            read("matriarch.log")
        );
        assert!(read("matriarch.log.1").starts_with("16 "));
        assert!(read("matriarch.log.3").starts_with("12 "));
        for name in names(&dir) {
            let size = std::fs::metadata(dir.join(&name)).unwrap().len();
            assert_eq!(size, 80, "{name} holds two whole lines");
        }
    }

    #[test]
    fn log_files_are_not_readable_by_others() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("log");
        // A file left world-readable by an older setup is tightened too.
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join(LOG_FILE_NAME), "old\n").unwrap();
        std::fs::set_permissions(
            dir.join(LOG_FILE_NAME),
            std::fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        let mut log = RotatingFile::open(&dir, 10, 2).unwrap();
        log.write_all(b"a line of more than ten bytes\n").unwrap();
        for name in ["matriarch.log", "matriarch.log.1"] {
            let mode = std::fs::metadata(dir.join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode & 0o027, 0, "{name} has mode {mode:o}");
            assert_eq!(mode & 0o600, 0o600, "{name} has mode {mode:o}");
        }
        assert_eq!(
            std::fs::read_to_string(dir.join("matriarch.log.1")).unwrap(),
            "old\n"
        );
    }

    #[test]
    fn a_reopened_log_continues_counting_its_size() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = RotatingFile::open(tmp.path(), 50, 1).unwrap();
        log.write_all(format!("{}\n", "a".repeat(29)).as_bytes())
            .unwrap();
        drop(log);
        let mut log = RotatingFile::open(tmp.path(), 50, 1).unwrap();
        log.write_all(format!("{}\n", "b".repeat(29)).as_bytes())
            .unwrap();
        assert_eq!(names(tmp.path()), ["matriarch.log", "matriarch.log.1"]);
    }
}
