//! The failover benchmark's table on stdout: per scenario each system's runs,
//! median and worst write unavailability, lost writes, and (with a compared
//! system) the ratio of the medians; then the agents' idle figures.

use serde_json::Value;

/// A system's row of the printed table.
pub(super) struct Row {
    pub(super) ok: usize,
    pub(super) runs: usize,
    pub(super) median_ms: Option<f64>,
    pub(super) worst_ms: Option<u64>,
    pub(super) missing: usize,
    pub(super) old_acks: usize,
    pub(super) target: String,
}

/// Seconds with milliseconds, or `-`.
fn secs(ms: Option<f64>) -> String {
    ms.map_or_else(|| "-".to_owned(), |m| format!("{:.3} s", m / 1000.0))
}

/// Prints the table: `systems` names the systems, each row of `rows` has one
/// [`Row`] per system in that order; `idle` has each system's idle figures.
pub(super) fn print_table(systems: &[&str], rows: &[(&str, Vec<Row>)], idle: &[Value]) {
    let compared = systems.len() > 1;
    let per_system = |label: &str| -> Vec<String> {
        if compared {
            systems.iter().map(|s| format!("{s} {label}")).collect()
        } else {
            vec![label.to_owned()]
        }
    };
    let joined = |cells: Vec<String>| cells.join(" / ");
    let mut headers = vec!["scenario".to_owned(), joined(per_system("runs ok"))];
    headers.extend(per_system("median"));
    if compared {
        headers.push("ratio".to_owned());
    }
    headers.extend(per_system("worst"));
    headers.push(joined(per_system("missing acked")));
    headers.push(joined(per_system("old-primary acks after promotion")));
    headers.push("target (matriarch)".to_owned());
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|(scenario, by_system)| {
            let each = |cell: &dyn Fn(&Row) -> String| by_system.iter().map(cell).collect();
            let mut row = vec![(*scenario).to_owned()];
            row.push(joined(each(&|r: &Row| format!("{}/{}", r.ok, r.runs))));
            row.extend(each(&|r: &Row| secs(r.median_ms)));
            if compared {
                let ratio = match (
                    by_system[0].median_ms,
                    by_system.get(1).and_then(|r| r.median_ms),
                ) {
                    (Some(m), Some(o)) if m > 0.0 => format!("{:.1}x", o / m),
                    _ => "-".to_owned(),
                };
                row.push(ratio);
            }
            row.extend(each(&|r: &Row| secs(r.worst_ms.map(|w| w as f64))));
            row.push(joined(each(&|r: &Row| r.missing.to_string())));
            row.push(joined(each(&|r: &Row| r.old_acks.to_string())));
            row.push(by_system[0].target.clone());
            row
        })
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(String::len).collect();
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |c: &[String]| {
        c.iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    println!(
        "\nWrite unavailability (last acknowledged write before the fault -> first after it):"
    );
    println!("{}", line(&headers));
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    println!("{}", line(&rule));
    for row in &cells {
        println!("{}", line(row));
    }
    for (system, idle) in systems.iter().zip(idle) {
        print_idle(system, idle);
    }
}

/// Prints one system's agents at idle.
fn print_idle(system: &str, idle: &Value) {
    let Some(agents) = idle["agents"].as_array() else {
        return;
    };
    println!(
        "\nAgents at idle over {:.0} s ({system}; VmRSS; CPU = utime + stime):",
        idle["seconds"].as_f64().unwrap_or(0.0)
    );
    for a in agents {
        println!(
            "  {} ({}): RSS {:.1} MiB (max {:.1} MiB), CPU {:.2} s = {:.2} %; fence watchdog RSS {}",
            a["name"].as_str().unwrap_or("?"),
            a["role"].as_str().unwrap_or("?"),
            a["rss_kb"].as_f64().unwrap_or(0.0) / 1024.0,
            a["rss_max_kb"].as_f64().unwrap_or(0.0) / 1024.0,
            a["cpu_seconds"].as_f64().unwrap_or(0.0),
            a["cpu_percent"].as_f64().unwrap_or(0.0),
            a["fence"]["rss_kb"]
                .as_f64()
                .map_or_else(|| "-".to_owned(), |kb| format!("{:.1} MiB", kb / 1024.0)),
        );
    }
    if system == "matriarch" {
        println!(
            "  target: RSS <= 15 MiB: {}",
            if idle["rss_target_met"].as_bool() == Some(true) {
                "met"
            } else {
                "NOT met"
            }
        );
    }
}
