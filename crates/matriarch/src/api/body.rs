//! Request bodies: JSON of at most [`MAX_BODY`] bytes (413 beyond, before
//! reading when `Content-Length` says so), read within
//! [`BODY_READ_TIMEOUT`] (408), as an axum extractor.

use std::time::Duration;

use axum::body::Body;
use axum::extract::FromRequest;
use axum::http::{header, HeaderValue, Request, StatusCode};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{json, Value};

use super::response::{error, Resp};

/// The largest request body accepted (413 beyond): a `/config` body is a
/// few kilobytes.
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// How long a client may take to send a request body (408 beyond).
pub(crate) const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A request's JSON body (`{}` when empty).
pub(crate) struct JsonBody(pub(crate) Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = Resp;

    async fn from_request(req: Request<Body>, _state: &S) -> Result<Self, Resp> {
        read_json(req).await.map(JsonBody)
    }
}

/// A refusal after which the rest of the request is not read: the
/// connection is closed rather than kept alive.
fn closing(mut response: Resp) -> Resp {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn too_large() -> Resp {
    closing(error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is larger than {MAX_BODY} bytes"),
    ))
}

async fn read_json(req: Request<Body>) -> Result<Value, Resp> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY as u64) {
        return Err(too_large());
    }
    let collected = tokio::time::timeout(
        BODY_READ_TIMEOUT,
        http_body_util::Limited::new(req.into_body(), MAX_BODY).collect(),
    )
    .await
    .map_err(|_| {
        closing(error(
            StatusCode::REQUEST_TIMEOUT,
            format!("the body did not arrive within {BODY_READ_TIMEOUT:?}"),
        ))
    })?;
    let body = collected
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                closing(error(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the body: {e}"),
                ))
            }
        })?
        .to_bytes();
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(&body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("the body is not valid JSON: {e}"),
        )
    })
}

/// `value` as a `T`, which must be a JSON object (400 otherwise).
pub(crate) fn parse_body<T: for<'de> Deserialize<'de>>(value: Value) -> Result<T, Resp> {
    if !value.is_object() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object",
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("invalid body: {e}")))
}
