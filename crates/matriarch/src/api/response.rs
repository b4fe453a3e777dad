//! The API's answers: JSON, text, and `{"error": …}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// A response of the API.
pub(crate) type Resp = Response;

/// A JSON response.
pub(crate) fn respond(status: StatusCode, body: Value) -> Resp {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A text response of `content_type`.
pub(crate) fn text(status: StatusCode, body: String, content_type: &'static str) -> Resp {
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// `{"error": message}` with `status`.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Resp {
    respond(status, json!({ "error": message.into() }))
}
