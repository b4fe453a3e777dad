//! The upstream file of a standby leader: the standby cluster's source
//! (another cluster) instead of a member.

use matriarch_model::StandbyCluster;

use crate::quoting::conf_quote;

/// The comment that records the section the file was written for, read
/// back by [`parse_standby_source`].
const STANDBY_SOURCE: &str = "# matriarch-standby-source: ";

/// The lines a standby source adds after `primary_conninfo`: the slot on
/// the source (none is created there), and the archive settings. A key the
/// section leaves out is not written, so the `postgresql` parameters (or
/// PostgreSQL's default) apply.
pub(crate) fn render_standby_source(section: &StandbyCluster) -> String {
    let mut out = String::new();
    // JSON on one line: the section's values hold no line breaks (refused).
    let json = serde_json::to_string(section).unwrap_or_default();
    out.push_str(&format!("{STANDBY_SOURCE}{json}\n"));
    let slot = section.primary_slot_name.as_deref().unwrap_or_default();
    out.push_str(&format!("primary_slot_name = {}\n", conf_quote(slot)));
    for (key, value) in [
        ("restore_command", &section.restore_command),
        ("archive_cleanup_command", &section.archive_cleanup_command),
        (
            "recovery_min_apply_delay",
            &section.recovery_min_apply_delay,
        ),
    ] {
        if let Some(value) = value {
            out.push_str(&format!("{key} = {}\n", conf_quote(value)));
        }
    }
    out
}

/// The section recorded by [`render_standby_source`], if the file was
/// written for a standby source.
pub(crate) fn parse_standby_source(text: &str) -> Option<StandbyCluster> {
    let json = text
        .lines()
        .find_map(|line| line.strip_prefix(STANDBY_SOURCE))?;
    let value = serde_json::from_str(json).ok()?;
    StandbyCluster::from_value(&value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_survives_the_file() {
        let section = StandbyCluster {
            host: Some("10.0.0.1".into()),
            port: Some(5433),
            primary_slot_name: Some("standby_a".into()),
            restore_command: Some("cp '/arch/%f' %p".into()),
            recovery_min_apply_delay: Some("5min".into()),
            ..StandbyCluster::default()
        };
        let text = render_standby_source(&section);
        assert_eq!(parse_standby_source(&text), Some(section));
        assert!(text.contains("primary_slot_name = 'standby_a'"), "{text}");
        assert!(
            text.contains(r"restore_command = 'cp ''/arch/%f'' %p'"),
            "{text}"
        );
        assert!(!text.contains("archive_cleanup_command"), "{text}");
    }
}
