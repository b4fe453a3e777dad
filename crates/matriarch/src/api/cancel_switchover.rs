//! `DELETE /switchover`: cancels a scheduled switchover, as Patroni's
//! (`patronictl flush <cluster> switchover`). A switchover due now is not
//! cancelled: it is under way.

use axum::extract::State;
use axum::http::StatusCode;
use matriarch_dcs::Expected;
use matriarch_model::DcsKey;
use tracing::info;

use super::response::{text, Resp};
use super::state::SharedState;
use super::switchover::dcs_error;

/// `DELETE /switchover`: 200 "scheduled switchover deleted", 404 "no
/// switchover is scheduled", 409 when the key changed meanwhile.
pub(crate) async fn delete_switchover(State(state): SharedState) -> Resp {
    let view = match state.fresh_view().await {
        Ok(view) => view,
        Err(response) => return response,
    };
    let scheduled = match &view.failover {
        Some(Ok(entry)) if entry.value.scheduled_at.is_some() => Some(entry.version),
        _ => None,
    };
    let Some(version) = scheduled else {
        return plain(StatusCode::NOT_FOUND, "no switchover is scheduled");
    };
    // Only the request read: one made meanwhile is not cancelled unseen.
    match state
        .dcs
        .delete(&DcsKey::Failover, Expected::Version(version))
        .await
    {
        Ok(()) => {
            info!(cluster = %state.scope, member = %state.name, "scheduled switchover deleted through the REST API");
            plain(StatusCode::OK, "scheduled switchover deleted")
        }
        Err(e) => dcs_error(e),
    }
}

fn plain(status: StatusCode, message: &str) -> Resp {
    text(status, message.to_owned(), "text/plain; charset=utf-8")
}
