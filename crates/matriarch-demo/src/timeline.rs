//! The failover timeline: events with their time relative to the fault, as a table.

use std::time::{Duration, Instant};

/// One event of the failover.
#[derive(Clone, Debug)]
pub struct Event {
    /// When it happened (or was first seen).
    pub at: Instant,
    /// What happened.
    pub what: String,
    /// Who saw it, and how.
    pub seen_by: String,
}

/// Seconds from `fault` to `at`, signed, in milliseconds' precision: `+5.123`
/// (`-0.000` is less than half a millisecond before).
pub fn offset(fault: Instant, at: Instant) -> String {
    if at >= fault {
        format!("+{:.3}", (at - fault).as_secs_f64())
    } else {
        format!("-{:.3}", (fault - at).as_secs_f64())
    }
}

/// Milliseconds from `fault` to `at`, signed.
pub fn offset_ms(fault: Instant, at: Instant) -> i64 {
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    if at >= fault {
        ms(at - fault)
    } else {
        -ms(fault - at)
    }
}

/// Renders events sorted by time as a table with a `t (s)` column relative to `fault`.
pub fn table(fault: Instant, events: &[Event]) -> String {
    let mut sorted: Vec<&Event> = events.iter().collect();
    sorted.sort_by_key(|e| e.at);
    let rows: Vec<[String; 3]> = sorted
        .iter()
        .map(|e| [offset(fault, e.at), e.what.clone(), e.seen_by.clone()])
        .collect();
    let headers = ["t (s)", "event", "seen by"];
    let mut widths = headers.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let rule = format!(
        "+{}+",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("+")
    );
    let line = |cells: [&str; 3]| {
        format!(
            "| {:>w0$} | {:<w1$} | {:<w2$} |",
            cells[0],
            cells[1],
            cells[2],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        )
    };
    let mut out = vec![rule.clone(), line(headers), rule.clone()];
    for row in &rows {
        out.push(line([&row[0], &row[1], &row[2]]));
    }
    out.push(rule);
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_signed_seconds() {
        let fault = Instant::now() + Duration::from_secs(10);
        assert_eq!(offset(fault, fault + Duration::from_millis(5123)), "+5.123");
        assert_eq!(offset(fault, fault - Duration::from_millis(9)), "-0.009");
        assert_eq!(offset_ms(fault, fault - Duration::from_millis(9)), -9);
    }

    #[test]
    fn table_is_sorted_and_aligned() {
        let fault = Instant::now() + Duration::from_secs(10);
        let event = |ms: u64, what: &str| Event {
            at: fault + Duration::from_millis(ms),
            what: what.to_owned(),
            seen_by: "demo".to_owned(),
        };
        let text = table(fault, &[event(5000, "later"), event(0, "fault")]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "|  t (s) | event | seen by |");
        assert_eq!(lines[3], "| +0.000 | fault | demo    |");
        assert_eq!(lines[4], "| +5.000 | later | demo    |");
        assert!(lines.iter().all(|l| l.len() == lines[0].len()));
    }
}
