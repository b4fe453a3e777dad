//! A process's memory and CPU time, from `/proc/<pid>/status` (VmRSS, VmHWM) and
//! `/proc/<pid>/stat` (utime + stime).

use std::fs;

/// One reading of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Resident set size, KiB (VmRSS).
    pub rss_kb: u64,
    /// Peak resident set size, KiB (VmHWM).
    pub hwm_kb: u64,
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
}

/// Reads process `pid`; `None` when it is gone.
pub fn sample(pid: u32) -> Option<Sample> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(Sample {
        rss_kb: status_kb(&status, "VmRSS:")?,
        hwm_kb: status_kb(&status, "VmHWM:")?,
        cpu_ticks: stat_cpu_ticks(&stat)?,
    })
}

/// A `Name:   1234 kB` line of `/proc/<pid>/status`.
pub fn status_kb(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// utime + stime (fields 14 and 15) of `/proc/<pid>/stat`; the command name (field
/// 2) may hold spaces and parentheses, so fields are counted after the last `)`.
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, index 11.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The parent pid (field 4) of `/proc/<pid>/stat`.
fn stat_ppid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, usually 100).
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// The pids of `parent`'s children.
pub fn children(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| stat_ppid(&s))
                == Some(parent)
        })
        .collect()
}

/// A process's command line, arguments separated by spaces.
pub fn cmdline(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_parsed() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 5 0";
        assert_eq!(stat_cpu_ticks(stat), Some(10));
        assert_eq!(stat_ppid(stat), Some(1));
        let status = "Name:\tx\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\n";
        assert_eq!(status_kb(status, "VmRSS:"), Some(1024));
        assert_eq!(status_kb(status, "VmHWM:"), Some(2048));
    }

    #[test]
    fn this_process_can_be_read() {
        let me = sample(std::process::id()).expect("own /proc entry");
        assert!(me.rss_kb > 0 && me.hwm_kb >= me.rss_kb);
    }
}
