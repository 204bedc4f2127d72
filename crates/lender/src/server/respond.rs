//! Responses the HTTP API and the agent link both give: bodies, JSON, and
//! errors as `{"error": ...}` with the headers their status calls for.

use std::convert::Infallible;

use bytes::Bytes;
use http::header::{
    HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER as RETRY_AFTER_HEADER, WWW_AUTHENTICATE,
};
use http::{Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full};
use serde::Serialize;

use super::driver::ApiError;
use crate::api::ErrorBody;

/// Seconds a client is asked to wait after a 503.
const RETRY_AFTER: &str = "5";

/// A response body: a whole JSON document or an event stream.
pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A read of the database failed: the client may try again.
pub(crate) fn unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the lender cannot read its database (see the lender's log); try again later",
    )
}

pub(crate) fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed_unsync()
}

pub(crate) fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let text = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(full(text));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub(crate) fn error_response(err: ApiError) -> Response<Body> {
    let mut response = json(
        err.status,
        &ErrorBody {
            error: err.message,
            lease: err.lease.map(|lease| *lease),
        },
    );
    let headers = response.headers_mut();
    if err.status == StatusCode::UNAUTHORIZED {
        headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if err.status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(RETRY_AFTER_HEADER, HeaderValue::from_static(RETRY_AFTER));
    }
    if let Some(methods) = err.allow {
        headers.insert(ALLOW, HeaderValue::from_static(methods));
    }
    response
}
