//! What `POST /restart` asks, checked as Patroni checks it (`role`,
//! `postgres_version`, `restart_pending`, `timeout`, `schedule`), and the
//! restart this node holds for later ([`RestartSchedule`]).

use std::sync::Mutex;
use std::time::Duration;

use axum::http::StatusCode;
use chrono::{DateTime, FixedOffset, Utc};
use serde_json::{json, Map, Value};

/// What a restart request asks, checked.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct RestartRequest {
    /// When to restart (`None`: now).
    pub(crate) schedule: Option<DateTime<FixedOffset>>,
    /// Restart only if PostgreSQL runs in this role.
    pub(crate) role: Option<String>,
    /// Restart only if PostgreSQL is older than this (`X.Y` or `X.Y.Z`).
    pub(crate) postgres_version: Option<String>,
    /// Restart only if parameters wait for a restart.
    pub(crate) restart_pending: bool,
    /// How long the restart may take.
    pub(crate) timeout: Option<Duration>,
}

impl RestartRequest {
    /// The request as Patroni shows it in `/patroni` and in the member
    /// record (`scheduled_restart`).
    pub(crate) fn as_json(&self) -> Value {
        let mut map = Map::new();
        if let Some(at) = self.schedule {
            map.insert("schedule".into(), json!(at.to_rfc3339()));
        }
        if let Some(role) = &self.role {
            map.insert("role".into(), json!(role));
        }
        if let Some(version) = &self.postgres_version {
            map.insert("postgres_version".into(), json!(version));
        }
        if self.restart_pending {
            map.insert("restart_pending".into(), json!(true));
        }
        if let Some(timeout) = self.timeout {
            map.insert("timeout".into(), json!(timeout.as_secs()));
        }
        Value::Object(map)
    }
}

/// A refusal of a request: Patroni's status code and text.
type Refusal = (StatusCode, String);

/// Patroni's `postgres_version_to_int`: `15.2` is 150002, `9.6.3` 90603;
/// `X.Y` only from 10 on.
pub(crate) fn postgres_version_to_int(version: &str) -> Result<u32, String> {
    let parts: Result<Vec<u32>, _> = version.split('.').map(str::parse::<u32>).collect();
    let parts = parts.map_err(|_| format!("Invalid PostgreSQL version: {version}"))?;
    let format =
        || format!("Invalid PostgreSQL version format: X.Y or X.Y.Z is accepted: {version}");
    match parts.as_slice() {
        [major, minor] if *major >= 10 && *minor < 100 => Ok(major * 10000 + minor),
        [major, minor, patch] if *minor < 100 && *patch < 100 => {
            Ok(major * 10000 + minor * 100 + patch)
        }
        _ => Err(format()),
    }
}

/// Patroni's `parse_int(value, 's')`: a number of seconds, or a number with
/// a unit (`30s`, `5min`, `1h`, `500ms`, `1d`).
fn parse_seconds(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => {
            let s = s.trim();
            let split = s
                .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
                .unwrap_or(s.len());
            let (number, unit) = s.split_at(split);
            let number: f64 = number.parse().ok()?;
            let factor = match unit.trim() {
                "" | "s" => 1.0,
                "ms" => 0.001,
                "min" => 60.0,
                "h" => 3600.0,
                "d" => 86400.0,
                _ => return None,
            };
            Some(number * factor)
        }
        _ => None,
    }
}

/// Patroni's `parse_schedule`: an ISO 8601 time with a time zone, not in
/// the past.
pub(crate) fn parse_schedule(
    value: &Value,
    action: &str,
    now: DateTime<Utc>,
) -> Result<DateTime<FixedOffset>, Refusal> {
    let unparsable = || {
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "Unable to parse scheduled timestamp. It should be in an unambiguous format, e.g. ISO 8601"
                .to_owned(),
        )
    };
    let raw = value.as_str().ok_or_else(unparsable)?.trim();
    let at = match DateTime::parse_from_rfc3339(raw) {
        Ok(at) => at,
        Err(_) => {
            // A time without a zone parses as naive: Patroni asks for the zone.
            let naive = chrono::NaiveDateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M:%S%.f")
                .or_else(|_| chrono::NaiveDateTime::parse_from_str(raw, "%Y-%m-%d %H:%M:%S%.f"));
            return Err(match naive {
                Ok(_) => (
                    StatusCode::BAD_REQUEST,
                    format!("Timezone information is mandatory for the scheduled {action}"),
                ),
                Err(_) => unparsable(),
            });
        }
    };
    if at < now {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("Cannot schedule {action} in the past"),
        ));
    }
    Ok(at)
}

/// Checks a `POST /restart` body as Patroni does, key by key.
pub(crate) fn parse_request(body: &Value, now: DateTime<Utc>) -> Result<RestartRequest, Refusal> {
    let Some(map) = body.as_object() else {
        return Err((
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object".to_owned(),
        ));
    };
    let mut request = RestartRequest::default();
    for (key, value) in map {
        match key.as_str() {
            "schedule" => request.schedule = Some(parse_schedule(value, "restart", now)?),
            "role" => match value.as_str() {
                Some(role @ ("primary" | "standby_leader" | "replica")) => {
                    request.role = Some(role.to_owned())
                }
                _ => {
                    return Err((
                        StatusCode::BAD_REQUEST,
                        "PostgreSQL role should be either primary, standby_leader, or replica"
                            .to_owned(),
                    ))
                }
            },
            "postgres_version" => {
                let version = match value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                postgres_version_to_int(&version).map_err(|e| (StatusCode::BAD_REQUEST, e))?;
                request.postgres_version = Some(version);
            }
            "timeout" => match parse_seconds(value) {
                Some(seconds) if seconds > 0.0 && seconds.is_finite() => {
                    request.timeout = Some(Duration::from_secs_f64(seconds))
                }
                _ => {
                    return Err((
                        StatusCode::BAD_REQUEST,
                        "Timeout should be a positive number of seconds".to_owned(),
                    ))
                }
            },
            // Patroni restarts only when pending if the key is present at all.
            "restart_pending" => request.restart_pending = true,
            // matriarch ctl's confirmation flag, kept for older clients.
            "force" => {}
            other => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    format!("Unknown filter for the scheduled restart: {other}"),
                ))
            }
        }
    }
    Ok(request)
}

/// The restart this node holds for later, with a generation so that a task
/// woken for a cancelled one does nothing.
#[derive(Debug, Default)]
pub(crate) struct RestartSchedule {
    slot: Mutex<(u64, Option<RestartRequest>)>,
}

impl RestartSchedule {
    /// The scheduled restart, if any.
    pub(crate) fn get(&self) -> Option<RestartRequest> {
        self.lock().1.clone()
    }

    /// Keeps `request`; its generation, or `None` if one is already held.
    pub(crate) fn put(&self, request: RestartRequest) -> Option<u64> {
        let mut slot = self.lock();
        if slot.1.is_some() {
            return None;
        }
        slot.0 += 1;
        slot.1 = Some(request);
        Some(slot.0)
    }

    /// Drops the scheduled restart; whether there was one.
    pub(crate) fn cancel(&self) -> bool {
        self.lock().1.take().is_some()
    }

    /// Takes the restart of `generation` if it is still held.
    pub(crate) fn take(&self, generation: u64) -> Option<RestartRequest> {
        let mut slot = self.lock();
        if slot.0 == generation {
            slot.1.take()
        } else {
            None
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, Option<RestartRequest>)> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_versions_convert_as_patronis() {
        assert_eq!(postgres_version_to_int("9.5.3"), Ok(90503));
        assert_eq!(postgres_version_to_int("10.1"), Ok(100001));
        assert_eq!(postgres_version_to_int("15.2"), Ok(150002));
        assert!(postgres_version_to_int("10").is_err());
        assert!(postgres_version_to_int("9.6").is_err());
        assert_eq!(
            postgres_version_to_int("a.b.c"),
            Err("Invalid PostgreSQL version: a.b.c".to_owned())
        );
    }

    #[test]
    fn timeouts_take_units() {
        assert_eq!(parse_seconds(&json!(30)), Some(30.0));
        assert_eq!(parse_seconds(&json!("30s")), Some(30.0));
        assert_eq!(parse_seconds(&json!("2min")), Some(120.0));
        assert_eq!(parse_seconds(&json!("soon")), None);
    }
}
