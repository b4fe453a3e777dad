//! Replication slots as the dynamic configuration describes them (Patroni's
//! `slots`, `ignore_slots` and `member_slots_ttl`), and the set of slots a
//! server should have, which the HA engine computes and the PostgreSQL
//! controller reconciles.
//!
//! Parsing never fails as a whole: an invalid entry is left out and
//! reported, so one typo in `slots` never stops the leader from keeping its
//! members' slots.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

use crate::config::ClusterConfig;
use crate::lsn::Lsn;
use crate::slot_name::valid_slot_name;

/// Patroni's default `member_slots_ttl`: a member's slot outlives the member
/// by 30 minutes, so a member that restarts or is replaced by one with the
/// same name finds its WAL still there.
pub const DEFAULT_MEMBER_SLOTS_TTL: Duration = Duration::from_secs(30 * 60);

/// What kind of slot a permanent slot is.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SlotKind {
    /// A physical slot (a standby or `pg_receivewal` streams from it).
    Physical,
    /// A logical slot: changes of `database` decoded by `plugin`.
    Logical {
        /// The database the slot decodes.
        database: String,
        /// The output plugin (`pgoutput`, `test_decoding`, `wal2json`, ...).
        plugin: String,
    },
}

impl SlotKind {
    /// `physical` or `logical`, as `pg_replication_slots.slot_type` says.
    pub fn type_name(&self) -> &'static str {
        match self {
            SlotKind::Physical => "physical",
            SlotKind::Logical { .. } => "logical",
        }
    }

    /// A logical slot's database (a physical slot has none).
    pub fn database(&self) -> Option<&str> {
        match self {
            SlotKind::Physical => None,
            SlotKind::Logical { database, .. } => Some(database),
        }
    }

    /// A logical slot's output plugin (a physical slot has none).
    pub fn plugin(&self) -> Option<&str> {
        match self {
            SlotKind::Physical => None,
            SlotKind::Logical { plugin, .. } => Some(plugin),
        }
    }
}

/// One `ignore_slots` entry: a slot matching every field given is never
/// created, dropped or advanced by matriarch (it belongs to someone else).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IgnoreSlotRule {
    /// The slot name, if the rule names one.
    pub name: Option<String>,
    /// `physical` or `logical`, if the rule names one.
    pub slot_type: Option<String>,
    /// The database, if the rule names one.
    pub database: Option<String>,
    /// The output plugin, if the rule names one.
    pub plugin: Option<String>,
}

impl IgnoreSlotRule {
    /// Whether the slot `name` of `kind` matches the rule: every field the
    /// rule gives is equal (a physical slot has no database or plugin, so a
    /// rule naming one never matches it).
    pub fn matches(&self, name: &str, kind: &SlotKind) -> bool {
        self.name.as_deref().is_none_or(|n| n == name)
            && self
                .slot_type
                .as_deref()
                .is_none_or(|t| t == kind.type_name())
            && self
                .database
                .as_deref()
                .is_none_or(|d| Some(d) == kind.database())
            && self
                .plugin
                .as_deref()
                .is_none_or(|p| Some(p) == kind.plugin())
    }
}

/// An entry of `slots`, `ignore_slots` or `member_slots_ttl` that was left
/// out, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SlotConfigError {
    /// `slots` is not an object of name → definition.
    #[error("`slots` must be an object of slot name to definition, not {found}")]
    SlotsNotAnObject {
        /// What was found instead.
        found: String,
    },
    /// A slot name PostgreSQL would refuse.
    #[error("slot name {name:?} is invalid: use 1 to 63 of a-z, 0-9 and _")]
    InvalidName {
        /// The rejected name.
        name: String,
    },
    /// A permanent slot definition that cannot be used.
    #[error("permanent slot {name:?} is invalid: {reason}")]
    InvalidSlot {
        /// The slot's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// `ignore_slots` is not a list of objects.
    #[error("`ignore_slots` entry {index} is invalid: {reason}")]
    InvalidIgnoreRule {
        /// Its position in the list.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// `member_slots_ttl` is not a duration.
    #[error("`member_slots_ttl` {found} is not a duration (seconds, or text like \"30min\"): using the default (30min)")]
    InvalidMemberSlotsTtl {
        /// What was found.
        found: String,
    },
}

/// The slot settings of the dynamic configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotsConfig {
    /// Permanent slots (`slots`): kept on the primary whatever the members.
    pub permanent: BTreeMap<String, SlotKind>,
    /// Slots matriarch never touches (`ignore_slots`).
    pub ignore: Vec<IgnoreSlotRule>,
    /// How long a member's slot outlives the member (`member_slots_ttl`).
    pub member_slots_ttl: Duration,
}

impl Default for SlotsConfig {
    fn default() -> Self {
        SlotsConfig {
            permanent: BTreeMap::new(),
            ignore: Vec::new(),
            member_slots_ttl: DEFAULT_MEMBER_SLOTS_TTL,
        }
    }
}

impl SlotsConfig {
    /// Reads `slots`, `ignore_slots` and `member_slots_ttl` from `config`'s
    /// kept keys. Invalid entries are left out and returned as errors (the
    /// caller logs them); the rest is used.
    pub fn from_config(config: &ClusterConfig) -> (SlotsConfig, Vec<SlotConfigError>) {
        let mut errors = Vec::new();
        let mut out = SlotsConfig::default();
        match config.other.get("slots") {
            None | Some(Value::Null) => {}
            Some(Value::Object(slots)) => {
                for (name, definition) in slots {
                    match parse_permanent(name, definition) {
                        Ok(kind) => {
                            out.permanent.insert(name.clone(), kind);
                        }
                        Err(err) => errors.push(err),
                    }
                }
            }
            Some(other) => errors.push(SlotConfigError::SlotsNotAnObject {
                found: other.to_string(),
            }),
        }
        match config.other.get("ignore_slots") {
            None | Some(Value::Null) => {}
            Some(Value::Array(rules)) => {
                for (index, rule) in rules.iter().enumerate() {
                    match parse_ignore(rule) {
                        Ok(rule) => out.ignore.push(rule),
                        Err(reason) => {
                            errors.push(SlotConfigError::InvalidIgnoreRule { index, reason })
                        }
                    }
                }
            }
            Some(other) => errors.push(SlotConfigError::InvalidIgnoreRule {
                index: 0,
                reason: format!("`ignore_slots` must be a list, not {other}"),
            }),
        }
        if let Some(value) = config.other.get("member_slots_ttl") {
            match parse_duration(value) {
                Some(ttl) => out.member_slots_ttl = ttl,
                None => errors.push(SlotConfigError::InvalidMemberSlotsTtl {
                    found: value.to_string(),
                }),
            }
        }
        (out, errors)
    }
}

fn parse_permanent(name: &str, definition: &Value) -> Result<SlotKind, SlotConfigError> {
    if !valid_slot_name(name) {
        return Err(SlotConfigError::InvalidName {
            name: name.to_owned(),
        });
    }
    let invalid = |reason: String| SlotConfigError::InvalidSlot {
        name: name.to_owned(),
        reason,
    };
    let object = match definition {
        // Patroni accepts `name: null` (or an empty object) as physical.
        Value::Null => return Ok(SlotKind::Physical),
        Value::Object(object) => object,
        other => return Err(invalid(format!("expected an object, found {other}"))),
    };
    let text = |key: &str| -> Result<Option<String>, SlotConfigError> {
        match object.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(other) => Err(invalid(format!(
                "`{key}` must be a non-empty string, not {other}"
            ))),
        }
    };
    let database = text("database")?;
    let plugin = text("plugin")?;
    let slot_type = match text("type")? {
        Some(t) => t,
        // Patroni's inference: database and plugin make a logical slot.
        None if database.is_some() && plugin.is_some() => "logical".to_owned(),
        None => "physical".to_owned(),
    };
    match slot_type.as_str() {
        "physical" => Ok(SlotKind::Physical),
        "logical" => match (database, plugin) {
            (Some(database), Some(plugin)) => Ok(SlotKind::Logical { database, plugin }),
            _ => Err(invalid(
                "a logical slot needs both `database` and `plugin`".to_owned(),
            )),
        },
        other => Err(invalid(format!(
            "`type` must be physical or logical, not {other:?}"
        ))),
    }
}

fn parse_ignore(rule: &Value) -> Result<IgnoreSlotRule, String> {
    let Value::Object(object) = rule else {
        return Err(format!("expected an object, found {rule}"));
    };
    let text = |key: &str| -> Result<Option<String>, String> {
        match object.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!("`{key}` must be a string, not {other}")),
        }
    };
    let rule = IgnoreSlotRule {
        name: text("name")?,
        slot_type: text("type")?,
        database: text("database")?,
        plugin: text("plugin")?,
    };
    if rule == IgnoreSlotRule::default() {
        // An empty rule would match every slot: surely not meant.
        return Err("an empty rule would match every slot".to_owned());
    }
    Ok(rule)
}

/// Seconds as a number, or PostgreSQL-style text: `"30min"`, `"2s"`,
/// `"1h"`, `"500ms"`, `"1d"`, `"0"`.
fn parse_duration(value: &Value) -> Option<Duration> {
    match value {
        Value::Number(n) => n
            .as_u64()
            .map(Duration::from_secs)
            .or_else(|| n.as_f64().and_then(|f| Duration::try_from_secs_f64(f).ok())),
        Value::String(text) => {
            let (number, unit) = crate::number_with_unit(text)?;
            let unit_secs = |secs: u64| number.checked_mul(secs).map(Duration::from_secs);
            match unit {
                "" | "s" => unit_secs(1),
                "ms" => Some(Duration::from_millis(number)),
                "min" => unit_secs(60),
                "h" => unit_secs(60 * 60),
                "d" => unit_secs(24 * 60 * 60),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The slots a server should have, computed by the HA engine and handed to
/// the controller, which creates what is missing, drops what is not wanted
/// (when `drop_others`), and advances copies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredSlots {
    /// Slots that must exist, by name.
    pub slots: BTreeMap<String, SlotKind>,
    /// Where copies should be advanced to (a replica's copies of the
    /// leader's slots: the positions in the `status` key). A slot is never
    /// moved backwards.
    pub advance_to: BTreeMap<String, Lsn>,
    /// Drop slots that are neither wanted nor ignored (the leader does;
    /// never a temporary slot, an active one, or one PostgreSQL 17's slot
    /// synchronization made).
    pub drop_others: bool,
    /// Slots never touched.
    pub ignore: Vec<IgnoreSlotRule>,
}

impl DesiredSlots {
    /// Whether `ignore` covers the slot `name` of `kind`.
    pub fn ignored(&self, name: &str, kind: &SlotKind) -> bool {
        self.ignore.iter().any(|rule| rule.matches(name, kind))
    }
}

/// A slot as the server reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotState {
    /// `physical` or `logical` (and its database and plugin).
    pub kind: SlotKind,
    /// A consumer is connected.
    pub active: bool,
    /// The position the slot reports for the `status` key: the confirmed
    /// flush position of a logical slot, the restart position of a
    /// physical one. `None` until the slot has one.
    pub position: Option<Lsn>,
}

/// What reconciling slots found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotReport {
    /// Every slot on the server afterwards (ignored and temporary ones
    /// left out), by name.
    pub slots: BTreeMap<String, SlotState>,
    /// Slots created.
    pub created: BTreeSet<String>,
    /// Slots dropped.
    pub dropped: BTreeSet<String>,
    /// Slots advanced.
    pub advanced: BTreeSet<String>,
    /// Wanted slots that could not be made right this time, with why
    /// (an active slot not dropped, a logical copy PostgreSQL cannot make
    /// on this version, ...). Retried on the next loop.
    pub skipped: BTreeMap<String, String>,
}

impl SlotReport {
    /// The positions for the `status` key's `slots`.
    pub fn positions(&self) -> BTreeMap<String, Lsn> {
        self.slots
            .iter()
            .filter_map(|(name, state)| state.position.map(|lsn| (name.clone(), lsn)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(other: Value) -> ClusterConfig {
        ClusterConfig {
            other: other.as_object().cloned().unwrap_or_default(),
            ..ClusterConfig::default()
        }
    }

    #[test]
    fn parses_patroni_slots_ignore_slots_and_ttl() {
        let (slots, errors) = SlotsConfig::from_config(&config(json!({
            "slots": {
                "cdc": {"type": "logical", "database": "app", "plugin": "pgoutput"},
                "archiver": {"type": "physical"},
                "inferred": {"database": "app", "plugin": "test_decoding"},
                "bare": null
            },
            "ignore_slots": [{"name": "debezium", "type": "logical"}, {"plugin": "wal2json"}],
            "member_slots_ttl": "2s"
        })));
        assert_eq!(errors, vec![]);
        assert_eq!(
            slots.permanent.get("cdc"),
            Some(&SlotKind::Logical {
                database: "app".into(),
                plugin: "pgoutput".into()
            })
        );
        assert_eq!(slots.permanent.get("archiver"), Some(&SlotKind::Physical));
        assert_eq!(slots.permanent.get("bare"), Some(&SlotKind::Physical));
        assert_eq!(
            slots.permanent.get("inferred").map(SlotKind::type_name),
            Some("logical")
        );
        assert_eq!(slots.member_slots_ttl, Duration::from_secs(2));
        let ignored =
            |name, kind: SlotKind| slots.ignore.iter().any(|rule| rule.matches(name, &kind));
        let logical = |plugin: &str| SlotKind::Logical {
            database: "db".into(),
            plugin: plugin.into(),
        };
        assert!(ignored("debezium", logical("pgoutput")));
        assert!(!ignored("debezium", SlotKind::Physical));
        assert!(ignored("x", logical("wal2json")));
        assert!(!ignored("x", SlotKind::Physical));
    }

    #[test]
    fn defaults_without_keys() {
        let (slots, errors) = SlotsConfig::from_config(&ClusterConfig::default());
        assert!(errors.is_empty());
        assert_eq!(slots, SlotsConfig::default());
        assert_eq!(slots.member_slots_ttl, Duration::from_secs(1800));
    }

    #[test]
    fn ttl_units_and_numbers() {
        for (value, secs) in [
            (json!(0), 0),
            (json!("0"), 0),
            (json!(90), 90),
            (json!("30min"), 1800),
            (json!("1h"), 3600),
            (json!("1d"), 86400),
        ] {
            let (slots, errors) =
                SlotsConfig::from_config(&config(json!({ "member_slots_ttl": value })));
            assert!(errors.is_empty(), "{value}: {errors:?}");
            assert_eq!(slots.member_slots_ttl, Duration::from_secs(secs), "{value}");
        }
    }

    #[test]
    fn invalid_entries_are_left_out_and_reported_the_rest_is_used() {
        let (slots, errors) = SlotsConfig::from_config(&config(json!({
            "slots": {
                "ok": {"type": "physical"},
                "Bad-Name": {"type": "physical"},
                "nodb": {"type": "logical", "plugin": "pgoutput"},
                "weird": {"type": "sideways"},
                "number": 5
            },
            "ignore_slots": [{}, "text", {"name": "kept"}],
            "member_slots_ttl": "soon"
        })));
        assert_eq!(slots.permanent.keys().collect::<Vec<_>>(), vec!["ok"]);
        assert_eq!(slots.ignore.len(), 1);
        assert_eq!(slots.member_slots_ttl, DEFAULT_MEMBER_SLOTS_TTL);
        assert_eq!(errors.len(), 7, "{errors:?}");
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(text.iter().any(|e| e.contains("\"Bad-Name\"")), "{text:?}");
        assert!(
            text.iter()
                .any(|e| e.contains("needs both `database` and `plugin`")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|e| e.contains("member_slots_ttl")),
            "{text:?}"
        );
    }

    #[test]
    fn slots_that_are_not_an_object_are_reported() {
        let (slots, errors) = SlotsConfig::from_config(&config(json!({ "slots": ["a"] })));
        assert!(slots.permanent.is_empty());
        assert!(matches!(
            errors.as_slice(),
            [SlotConfigError::SlotsNotAnObject { .. }]
        ));
    }
}
