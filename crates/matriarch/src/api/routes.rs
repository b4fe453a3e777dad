//! The API's routes ([`router`]): which handler answers which method and
//! path, and the answers Patroni gives around them (404/405, bodyless HEAD
//! and OPTIONS, trailing slashes).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode, Uri};
use axum::routing::{get, patch, post, MethodRouter};
use axum::Router;

use super::response::{error, Resp};
use super::state::ApiState;
use super::{auth, backup, cancel_switchover, health, mutations, status, switchover};

/// GET (and HEAD, which axum answers with GET's handler) and OPTIONS.
fn read<H, T>(handler: H) -> MethodRouter<Arc<ApiState>>
where
    H: axum::handler::Handler<T, Arc<ApiState>>,
    T: 'static,
{
    get(handler.clone()).options(handler)
}

/// The API's routes. Changes pass [`auth::authorize`] before their body is
/// read; HEAD and OPTIONS answer with the status alone, as Patroni's.
pub(crate) fn router(state: Arc<ApiState>) -> Router {
    let authorized = || axum::middleware::from_fn_with_state(Arc::clone(&state), auth::authorize);
    let mut routes = Router::new();
    for path in health::PATHS {
        routes = routes.route(path, read(health::check));
    }
    routes
        .route("/patroni", read(status::patroni))
        .route("/cluster", read(status::cluster))
        .route("/history", read(status::history))
        .route("/metrics", read(status::metrics))
        .route(
            "/config",
            patch(mutations::patch_config)
                .put(mutations::put_config)
                .route_layer(authorized())
                .merge(read(status::config)),
        )
        .route(
            "/failsafe",
            post(mutations::failsafe_heartbeat)
                .route_layer(authorized())
                .merge(read(status::failsafe_members)),
        )
        .route(
            "/switchover",
            post(switchover::switchover)
                .delete(cancel_switchover::delete_switchover)
                .route_layer(authorized()),
        )
        .route(
            "/failover",
            post(switchover::failover).route_layer(authorized()),
        )
        .route(
            "/restart",
            post(mutations::restart)
                .delete(mutations::cancel_restart)
                .route_layer(authorized()),
        )
        .route("/reload", post(mutations::reload).route_layer(authorized()))
        .route("/backup", post(backup::backup).route_layer(authorized()))
        .route(
            "/reinitialize",
            post(mutations::reinitialize).route_layer(authorized()),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .layer(axum::middleware::from_fn(bodyless_head_and_options))
        .with_state(state)
}

/// No route for this method and path: 404 for the methods the API serves
/// (as Patroni), 405 for any other.
async fn not_found(method: Method, uri: Uri) -> Resp {
    let path = uri.path();
    match method {
        Method::GET | Method::HEAD | Method::OPTIONS => {
            error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}"))
        }
        Method::POST | Method::PATCH | Method::PUT | Method::DELETE => error(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {method} {path}"),
        ),
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {method} not allowed"),
        ),
    }
}

/// Patroni answers HEAD and OPTIONS with the status alone.
async fn bodyless_head_and_options(req: Request<Body>, next: axum::middleware::Next) -> Resp {
    let bodyless = req.method() == Method::HEAD || req.method() == Method::OPTIONS;
    let mut response = next.run(req).await;
    if bodyless {
        *response.body_mut() = Body::empty();
        response.headers_mut().remove(header::CONTENT_LENGTH);
    }
    response
}

/// Routes `/patroni/` as `/patroni` and an empty path as `/`, as the API
/// always has: rewritten before routing.
pub(crate) fn normalize_path<B>(req: &mut Request<B>) {
    let path = req.uri().path();
    let trimmed = path.trim_end_matches('/');
    if trimmed.len() == path.len() && !trimmed.is_empty() {
        return;
    }
    let trimmed = if trimmed.is_empty() { "/" } else { trimmed };
    let path_and_query = match req.uri().query() {
        Some(query) => format!("{trimmed}?{query}"),
        None => trimmed.to_owned(),
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(rewritten) = path_and_query.parse() {
        parts.path_and_query = Some(rewritten);
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}
