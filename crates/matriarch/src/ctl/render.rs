//! Text tables and JSON rows for `list`, `topology` and `history`, in patronictl's layout.

use std::collections::{BTreeSet, HashMap};

use serde_json::{Map, Value};

use super::view::{Cluster, HistoryEntry, Lag, Member};

const MIB: u64 = 1024 * 1024;

/// Replaces control characters (terminal escape sequences from a hostile or broken server)
/// and line breaks, so every cell stays on one line.
pub(crate) fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                if c == '\n' || c == '\t' {
                    ' '
                } else {
                    '?'
                }
            } else {
                c
            }
        })
        .collect()
}

/// Like [`sanitize`] but keeps line breaks, for multi-line output such as YAML.
pub(crate) fn sanitize_multiline(text: &str) -> String {
    text.split('\n')
        .map(sanitize)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Lag in whole MiB, rounded half up, as patronictl's "Lag in MB"; a text lag such as
/// `unknown` is shown as is and an absent one as empty.
pub(crate) fn format_lag_mb(lag: &Lag) -> String {
    match lag {
        Lag::Absent => String::new(),
        Lag::Bytes(bytes) => (bytes / MIB + u64::from(bytes % MIB >= MIB / 2)).to_string(),
        Lag::Text(text) => text.clone(),
    }
}

fn lag_json(lag: &Lag) -> Option<Value> {
    match lag {
        Lag::Absent => None,
        Lag::Bytes(bytes) => Some(Value::from(bytes / MIB + u64::from(bytes % MIB >= MIB / 2))),
        Lag::Text(text) => Some(Value::String(text.clone())),
    }
}

/// A role as patronictl shows it: `leader` → `Leader`, `sync_standby` → `Sync Standby`.
pub(crate) fn role_label(role: &str) -> String {
    match role.to_ascii_lowercase().as_str() {
        "master" | "primary" | "leader" => "Leader".to_string(),
        other => other
            .split(['_', ' ', '-'])
            .filter(|w| !w.is_empty())
            .map(|word| {
                let mut chars = word.chars();
                chars
                    .next()
                    .map(|first| first.to_uppercase().chain(chars).collect::<String>())
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join(" "),
    }
}

fn host_label(member: &Member) -> String {
    match member.port {
        Some(port) if !member.host.is_empty() => format!("{}:{port}", member.host),
        _ => member.host.clone(),
    }
}

fn tags_label(tags: &Map<String, Value>) -> String {
    tags.iter()
        .map(|(key, value)| match value {
            Value::String(s) => format!("{key}: {s}"),
            other => format!("{key}: {other}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Renders a table with `+---+` borders; `title` replaces the start of the top border
/// (patronictl's `+ Cluster: demo (7300…) ---+`). Columns flagged in `right` are
/// right-aligned.
pub(crate) fn table(
    title: Option<&str>,
    headers: &[&str],
    right: &[bool],
    rows: &[Vec<String>],
) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|c| sanitize(c)).collect())
        .collect();
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            cells
                .iter()
                .filter_map(|row| row.get(i))
                .map(|c| c.chars().count())
                .chain([h.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let border: String = widths
        .iter()
        .map(|w| format!("+{}", "-".repeat(w + 2)))
        .collect::<String>()
        + "+";
    let line = |row: &[String]| -> String {
        let mut out = String::new();
        for (i, width) in widths.iter().enumerate() {
            let cell = row.get(i).map(String::as_str).unwrap_or("");
            let pad = width.saturating_sub(cell.chars().count());
            if right.get(i).copied().unwrap_or(false) {
                out.push_str(&format!("| {}{cell} ", " ".repeat(pad)));
            } else {
                out.push_str(&format!("| {cell}{} ", " ".repeat(pad)));
            }
        }
        out + "|"
    };
    let top = match title {
        Some(title) => {
            let title = format!("+ {} ", sanitize(title));
            let used = title.chars().count();
            if used + 1 < border.chars().count() {
                title + &border.chars().skip(used).collect::<String>()
            } else {
                title + "-+"
            }
        }
        None => border.clone(),
    };
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    let mut out = vec![top, line(&header), border.clone()];
    out.extend(cells.iter().map(|row| line(row)));
    out.push(border);
    out.join("\n") + "\n"
}

/// The title of the member table: `Cluster: demo (7300000000000000000)`.
pub(crate) fn cluster_title(scope: Option<&str>, system_id: Option<&str>) -> String {
    let mut title = format!("Cluster: {}", scope.unwrap_or("?"));
    if let Some(id) = system_id {
        title.push_str(&format!(" ({id})"));
    }
    title
}

/// The member table of `list` (members in the order given) or `topology` (names indented
/// by depth), with patronictl's columns, and the maintenance and scheduled-switchover notes.
pub(crate) fn members_table(
    cluster: &Cluster,
    rows: &[(usize, &Member)],
    system_id: Option<&str>,
) -> String {
    let pending = cluster.members.iter().any(|m| m.pending_restart);
    let mut headers = vec!["Member", "Host", "Role", "State", "TL", "Lag in MB"];
    let mut right = vec![false, false, false, false, true, true];
    if pending {
        headers.push("Pending restart");
        right.push(false);
    }
    headers.push("Tags");
    right.push(false);
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|(depth, m)| {
            let name = if *depth == 0 {
                m.name.clone()
            } else {
                format!("{}+ {}", "  ".repeat(depth - 1), m.name)
            };
            let mut row = vec![
                name,
                host_label(m),
                role_label(&m.role),
                m.state.clone(),
                m.timeline.clone().unwrap_or_default(),
                format_lag_mb(&m.lag),
            ];
            if pending {
                row.push(if m.pending_restart {
                    "*".into()
                } else {
                    String::new()
                });
            }
            row.push(tags_label(&m.tags));
            row
        })
        .collect();
    let title = cluster_title(cluster.scope.as_deref(), system_id);
    let mut out = table(Some(&title), &headers, &right, &body);
    if cluster.paused {
        out.push_str(" Maintenance mode: on\n");
    }
    // patronictl's note, a line each (every value sanitized on its own, so that
    // the line breaks between them stay).
    if let Some(s) = &cluster.scheduled_switchover {
        out.push_str(&format!(" Switchover scheduled at: {}\n", sanitize(&s.at)));
        out.push_str(&format!(
            "                    from: {}\n",
            sanitize(&s.from)
        ));
        if !s.to.is_empty() {
            out.push_str(&format!("                      to: {}\n", sanitize(&s.to)));
        }
    }
    out
}

/// The longest reason the note under the `list` table shows, in characters.
const PENDING_NOTE_CHARS: usize = 300;

/// The note under the `list` table saying what the answering member holds
/// back for (`pending` in its `GET /patroni`: not racing, not following,
/// waiting), on one line and bounded; `None` when it holds nothing back.
pub(crate) fn pending_note(status: &Value) -> Option<String> {
    let reason = status.get("pending")?.as_str()?;
    let name = status
        .get("patroni")
        .and_then(|p| p.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("?");
    let mut reason: String = sanitize(reason).chars().take(PENDING_NOTE_CHARS).collect();
    if reason.chars().count() == PENDING_NOTE_CHARS {
        reason.push_str("...");
    }
    Some(format!(" Holding back ({}): {reason}\n", sanitize(name)))
}

/// The rows of `list --format json`: one object per member with the table's column names
/// as keys (as `patronictl list -f json`).
pub(crate) fn members_json(cluster: &Cluster, rows: &[(usize, &Member)]) -> Value {
    Value::Array(
        rows.iter()
            .map(|(_, m)| {
                let mut row = Map::new();
                if let Some(scope) = &cluster.scope {
                    row.insert("Cluster".into(), Value::String(scope.clone()));
                }
                row.insert("Member".into(), Value::String(m.name.clone()));
                row.insert("Host".into(), Value::String(host_label(m)));
                row.insert("Role".into(), Value::String(role_label(&m.role)));
                row.insert("State".into(), Value::String(m.state.clone()));
                if let Some(tl) = &m.timeline {
                    let tl = tl
                        .parse::<u64>()
                        .map(Value::from)
                        .unwrap_or_else(|_| Value::String(tl.clone()));
                    row.insert("TL".into(), tl);
                }
                if let Some(lag) = lag_json(&m.lag) {
                    row.insert("Lag in MB".into(), lag);
                }
                if m.pending_restart {
                    row.insert("Pending restart".into(), Value::String("*".into()));
                }
                if !m.tags.is_empty() {
                    row.insert("Tags".into(), Value::Object(m.tags.clone()));
                }
                Value::Object(row)
            })
            .collect(),
    )
}

/// Members sorted by name, all at depth 0 (`list`).
pub(crate) fn list_order(cluster: &Cluster) -> Vec<(usize, &Member)> {
    let mut members: Vec<&Member> = cluster.members.iter().collect();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    members.into_iter().map(|m| (0, m)).collect()
}

/// Members as a tree by upstream (`topology`): the leader first, under each member the
/// replicas that stream from it, siblings by name. A replica's upstream is the one its
/// agent reports following (`upstream`, so the tree shows a fallback to the leader while
/// the `replicatefrom` member is down); for a member without it (Patroni's) the
/// `replicatefrom` tag when it names a member, as patronictl draws it; the leader
/// otherwise. Members outside the tree (no leader, a cycle) follow at depth 0.
pub(crate) fn topology_order(cluster: &Cluster) -> Vec<(usize, &Member)> {
    let names: BTreeSet<&str> = cluster.members.iter().map(|m| m.name.as_str()).collect();
    let leader = cluster.leader().map(|m| m.name.as_str());
    let mut children: HashMap<&str, Vec<&Member>> = HashMap::new();
    for m in &cluster.members {
        if Some(m.name.as_str()) == leader {
            continue;
        }
        let upstream = m
            .upstream
            .as_deref()
            .or_else(|| m.tags.get("replicatefrom").and_then(Value::as_str))
            .filter(|u| names.contains(u) && *u != m.name)
            .or(leader);
        if let Some(upstream) = upstream {
            children.entry(upstream).or_default().push(m);
        }
    }
    for list in children.values_mut() {
        list.sort_by(|a, b| a.name.cmp(&b.name));
    }
    let mut out: Vec<(usize, &Member)> = Vec::new();
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    fn walk<'a>(
        member: &'a Member,
        depth: usize,
        children: &HashMap<&str, Vec<&'a Member>>,
        seen: &mut BTreeSet<&'a str>,
        out: &mut Vec<(usize, &'a Member)>,
    ) {
        if !seen.insert(member.name.as_str()) {
            return;
        }
        out.push((depth, member));
        for child in children.get(member.name.as_str()).into_iter().flatten() {
            walk(child, depth + 1, children, seen, out);
        }
    }
    if let Some(root) = cluster.leader() {
        walk(root, 0, &children, &mut seen, &mut out);
    }
    let mut rest: Vec<&Member> = cluster
        .members
        .iter()
        .filter(|m| !seen.contains(m.name.as_str()))
        .collect();
    rest.sort_by(|a, b| a.name.cmp(&b.name));
    for m in rest {
        walk(m, 0, &children, &mut seen, &mut out);
    }
    out
}

/// The `history` table.
pub(crate) fn history_table(entries: &[HistoryEntry]) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.timeline.clone(),
                e.lsn.clone(),
                e.reason.clone(),
                e.timestamp.clone(),
                e.new_leader.clone(),
            ]
        })
        .collect();
    table(
        None,
        &["TL", "LSN", "Reason", "Timestamp", "New Leader"],
        &[true, true, false, false, false],
        &rows,
    )
}

/// The rows of `history --format json`, keyed by the table's column names.
pub(crate) fn history_json(entries: &[HistoryEntry]) -> Value {
    let number_or_text = |s: &str| {
        s.parse::<u64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(s.into()))
    };
    Value::Array(
        entries
            .iter()
            .map(|e| {
                let mut row = Map::new();
                row.insert("TL".into(), number_or_text(&e.timeline));
                row.insert("LSN".into(), number_or_text(&e.lsn));
                row.insert("Reason".into(), Value::String(e.reason.clone()));
                row.insert("Timestamp".into(), Value::String(e.timestamp.clone()));
                row.insert("New Leader".into(), Value::String(e.new_leader.clone()));
                Value::Object(row)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn demo() -> Cluster {
        Cluster::parse(&json!({
            "scope": "demo",
            "members": [
                {"name": "pg2", "role": "replica", "state": "streaming", "host": "127.0.0.1", "port": 5433,
                 "timeline": 2, "lag": 0},
                {"name": "pg1", "role": "leader", "state": "running", "host": "127.0.0.1", "port": 5432,
                 "timeline": 2},
                {"name": "pg3", "role": "sync_standby", "state": "streaming", "host": "127.0.0.1", "port": 5434,
                 "timeline": 2, "lag": 3145728, "tags": {"replicatefrom": "pg2", "nofailover": true}},
            ]
        }))
        .expect("parses")
    }

    #[test]
    fn lag_is_rounded_to_whole_mib() {
        assert_eq!(format_lag_mb(&Lag::Absent), "");
        assert_eq!(format_lag_mb(&Lag::Bytes(0)), "0");
        assert_eq!(format_lag_mb(&Lag::Bytes(MIB / 2 - 1)), "0");
        assert_eq!(format_lag_mb(&Lag::Bytes(MIB / 2)), "1");
        assert_eq!(format_lag_mb(&Lag::Bytes(5 * MIB + 10)), "5");
        assert_eq!(
            format_lag_mb(&Lag::Bytes(u64::MAX)),
            (u64::MAX / MIB + 1).to_string()
        );
        assert_eq!(format_lag_mb(&Lag::Text("unknown".into())), "unknown");
    }

    #[test]
    fn roles_are_labelled_like_patronictl() {
        assert_eq!(role_label("leader"), "Leader");
        assert_eq!(role_label("master"), "Leader");
        assert_eq!(role_label("replica"), "Replica");
        assert_eq!(role_label("sync_standby"), "Sync Standby");
        assert_eq!(role_label("standby_leader"), "Standby Leader");
        assert_eq!(role_label(""), "");
    }

    #[test]
    fn list_renders_patronictl_table() {
        let cluster = demo();
        let out = members_table(&cluster, &list_order(&cluster), Some("7300000000000000001"));
        let expected = "\
+ Cluster: demo (7300000000000000001) ---+-----------+----+-----------+--------------------------------------+
| Member | Host           | Role         | State     | TL | Lag in MB | Tags                                 |
+--------+----------------+--------------+-----------+----+-----------+--------------------------------------+
| pg1    | 127.0.0.1:5432 | Leader       | running   |  2 |           |                                      |
| pg2    | 127.0.0.1:5433 | Replica      | streaming |  2 |         0 |                                      |
| pg3    | 127.0.0.1:5434 | Sync Standby | streaming |  2 |         3 | nofailover: true, replicatefrom: pg2 |
+--------+----------------+--------------+-----------+----+-----------+--------------------------------------+
";
        assert_eq!(out, expected, "\n{out}");
    }

    #[test]
    fn footer_notes_pause_scheduled_switchover_and_pending_restart() {
        let cluster = Cluster::parse(&json!({
            "pause": true,
            "scheduled_switchover": {"at": "2030-01-01T00:00:00+00:00", "from": "a", "to": "b"},
            "members": [{"name": "a", "role": "leader", "pending_restart": true}]
        }))
        .expect("parses");
        let out = members_table(&cluster, &list_order(&cluster), None);
        assert!(out.starts_with("+ Cluster: ? --"), "{out}");
        assert!(out.contains("| Pending restart |"), "{out}");
        assert!(out.contains("| *               |"), "{out}");
        assert!(out.contains(" Maintenance mode: on\n"), "{out}");
        assert!(
            out.contains("Switchover scheduled at: 2030-01-01T00:00:00+00:00"),
            "{out}"
        );
        assert!(out.contains("to: b\n"), "{out}");
        // Under the table on lines of their own, as patronictl prints them.
        assert!(
            out.ends_with(
                " Switchover scheduled at: 2030-01-01T00:00:00+00:00\n                    from: a\n                      to: b\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn pending_note_shows_the_reason_on_one_bounded_line() {
        let status = json!({
            "patroni": {"name": "db2"},
            "pending": "leader gone; not racing: db3 is a better candidate"
        });
        assert_eq!(
            pending_note(&status).as_deref(),
            Some(" Holding back (db2): leader gone; not racing: db3 is a better candidate\n")
        );
        let hostile = json!({"patroni": {"name": "x"}, "pending": format!("a\n\u{1b}[2J{}", "y".repeat(5000))});
        let note = pending_note(&hostile).expect("a note");
        assert_eq!(note.matches('\n').count(), 1, "{note}");
        assert!(!note.contains('\u{1b}'), "{note}");
        assert!(note.len() < 400, "{} bytes", note.len());
        assert_eq!(pending_note(&json!({"patroni": {"name": "x"}})), None);
    }

    #[test]
    fn long_titles_and_hostile_cells_stay_on_one_line() {
        let out = table(
            Some("Cluster: a-very-long-cluster-name (123)"),
            &["A"],
            &[false],
            &[vec!["x\u{1b}[2J\ny".into()]],
        );
        assert_eq!(out, "+ Cluster: a-very-long-cluster-name (123) -+\n| A     |\n+-------+\n| x?[2J y |\n+-------+\n".replace("| A     |\n+-------+\n| x?[2J y |\n+-------+", "| A       |\n+---------+\n| x?[2J y |\n+---------+"));
    }

    #[test]
    fn list_json_uses_column_names() {
        let cluster = demo();
        let rows = members_json(&cluster, &list_order(&cluster));
        assert_eq!(
            rows[2],
            json!({"Cluster": "demo", "Member": "pg3", "Host": "127.0.0.1:5434", "Role": "Sync Standby",
                   "State": "streaming", "TL": 2, "Lag in MB": 3,
                   "Tags": {"replicatefrom": "pg2", "nofailover": true}})
        );
        assert_eq!(rows[0].get("Lag in MB"), None);
    }

    #[test]
    fn topology_nests_replicas_under_their_upstream() {
        let cluster = demo();
        let order: Vec<(usize, &str)> = topology_order(&cluster)
            .iter()
            .map(|(d, m)| (*d, m.name.as_str()))
            .collect();
        assert_eq!(order, vec![(0, "pg1"), (1, "pg2"), (2, "pg3")]);
        let out = members_table(&cluster, &topology_order(&cluster), None);
        assert!(out.contains("| pg1     |"), "{out}");
        assert!(out.contains("| + pg2   |"), "{out}");
        assert!(out.contains("|   + pg3 |"), "{out}");
    }

    #[test]
    fn topology_follows_the_reported_upstream_over_the_tag() {
        // pg3 is tagged replicatefrom pg2 but reports streaming from the
        // leader (pg2 was down); pg4 reports pg3; pg5 (Patroni's, no
        // `upstream`) is drawn from its tag.
        let cluster = Cluster::parse(&json!({"members": [
            {"name": "pg1", "role": "leader"},
            {"name": "pg2", "role": "replica", "upstream": "pg1"},
            {"name": "pg3", "role": "replica", "upstream": "pg1", "tags": {"replicatefrom": "pg2"}},
            {"name": "pg4", "role": "replica", "upstream": "pg3"},
            {"name": "pg5", "role": "replica", "tags": {"replicatefrom": "pg2"}}
        ]}))
        .expect("parses");
        let order: Vec<(usize, &str)> = topology_order(&cluster)
            .iter()
            .map(|(d, m)| (*d, m.name.as_str()))
            .collect();
        assert_eq!(
            order,
            vec![(0, "pg1"), (1, "pg2"), (2, "pg5"), (1, "pg3"), (2, "pg4")]
        );
    }

    #[test]
    fn topology_without_leader_or_with_cycles_lists_everyone_once() {
        let cluster = Cluster::parse(&json!({"members": [
            {"name": "b", "tags": {"replicatefrom": "a"}},
            {"name": "a", "tags": {"replicatefrom": "b"}},
            {"name": "c", "tags": {"replicatefrom": "c"}}
        ]}))
        .expect("parses");
        let order: Vec<(usize, &str)> = topology_order(&cluster)
            .iter()
            .map(|(d, m)| (*d, m.name.as_str()))
            .collect();
        assert_eq!(order, vec![(0, "a"), (1, "b"), (0, "c")]);
    }

    #[test]
    fn history_renders_table_and_json() {
        let entries = vec![HistoryEntry {
            timeline: "1".into(),
            lsn: "25623960".into(),
            reason: "no recovery target specified".into(),
            timestamp: "2019-09-23T16:57:57+02:00".into(),
            new_leader: "pg2".into(),
        }];
        let out = history_table(&entries);
        assert!(
            out.contains("| TL |      LSN | Reason                       |"),
            "{out}"
        );
        assert!(out.contains("|  1 | 25623960 | no recovery target specified | 2019-09-23T16:57:57+02:00 | pg2        |"), "{out}");
        assert_eq!(history_json(&entries)[0]["LSN"], json!(25623960));
        assert_eq!(history_json(&entries)[0]["New Leader"], json!("pg2"));
    }
}
