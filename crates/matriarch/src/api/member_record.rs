//! What the daemon adds to the member record the engine publishes, as
//! Patroni's `touch_member` writes it: `pending_restart` (parameters waiting
//! for a restart) and `scheduled_restart` (from `POST /restart`).
//! `patronictl list` shows them and `patronictl flush … restart` needs
//! `scheduled_restart` to act.

use std::sync::Arc;

use serde_json::Value;

use super::restart_request::RestartSchedule;
use crate::params::ParameterStatus;

/// The engine's [`matriarch_ha::MemberExtras`]: what the REST API and the
/// parameter task know.
#[derive(Default)]
pub(crate) struct DaemonExtras {
    /// The restart `POST /restart` scheduled (shared with the API).
    pub(crate) schedule: Arc<RestartSchedule>,
    /// Parameters waiting for a restart (shared with the parameter task).
    pub(crate) parameters: Arc<ParameterStatus>,
}

impl DaemonExtras {
    /// Extras with the parameter task's status and no restart scheduled.
    pub(crate) fn new(parameters: Arc<ParameterStatus>) -> DaemonExtras {
        DaemonExtras {
            parameters,
            ..DaemonExtras::default()
        }
    }
}

impl matriarch_ha::MemberExtras for DaemonExtras {
    fn pending_restart(&self) -> bool {
        !self.parameters.pending().is_empty()
    }

    fn scheduled_restart(&self) -> Option<Value> {
        self.schedule.get().map(|r| r.as_json())
    }
}

#[cfg(test)]
mod tests {
    use matriarch_ha::MemberExtras as _;
    use serde_json::json;

    use super::*;
    use crate::api::restart_request::RestartRequest;

    #[test]
    fn pending_and_scheduled_restarts_come_from_the_api_and_the_parameters() {
        let extras = DaemonExtras::new(Arc::default());
        assert!(!extras.pending_restart() && extras.scheduled_restart().is_none());

        *extras.parameters.pending_restart.write().unwrap() = vec!["max_connections".into()];
        let at = chrono::DateTime::parse_from_rfc3339("2030-01-01T12:00:00+00:00").unwrap();
        extras.schedule.put(RestartRequest {
            schedule: Some(at),
            postgres_version: Some("15.3".into()),
            ..RestartRequest::default()
        });
        assert!(extras.pending_restart());
        assert_eq!(
            extras.scheduled_restart(),
            Some(json!({"schedule": "2030-01-01T12:00:00+00:00", "postgres_version": "15.3"}))
        );
    }
}
