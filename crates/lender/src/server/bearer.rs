//! Bearer tokens on requests: reading one, checking it is of the kind the
//! route wants, and telling a long-lived connection when it is revoked.

use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::{HeaderMap, Request, StatusCode};

use super::driver::ApiError;
use super::respond::unavailable;
use super::{Shared, Ticket};
use crate::tokens::{self, Principal, TokenKind, MAX_TOKEN};

/// The bearer token of a request.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let unauthorized = |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, message);
    let value = headers
        .get(AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing `Authorization: Bearer <token>`"))?;
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= MAX_TOKEN)
        .ok_or_else(|| unauthorized("malformed Authorization header; expected `Bearer <token>`"))
}

/// The principal of the request's bearer token, which must be of `kind`.
/// Once it passes, the request's connection counts as authenticated (no
/// longer capped nor timed out as such).
pub(crate) async fn authenticate<B>(
    shared: &Shared,
    request: &Request<B>,
    kind: TokenKind,
) -> Result<Principal, ApiError> {
    let headers = request.headers();
    let unauthorized = |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, message);
    let token = bearer(headers)?;
    let hash = tokens::hash(token);
    let principal = shared
        .tokens
        .principal(&hash, &shared.tracker)
        .await
        .map_err(|err| {
            tracing::error!(%err, "token lookup failed");
            unavailable()
        })?
        .ok_or_else(|| unauthorized("unknown token"))?;
    if principal.kind != kind {
        let what = match kind {
            TokenKind::Agent => "open the agent link; use an agent token",
            TokenKind::Client => "use the API; use a client token",
        };
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("this {} token cannot {what}", principal.kind.as_str()),
        ));
    }
    if let Some(ticket) = request.extensions().get::<Arc<Ticket>>() {
        ticket.authenticated();
    }
    Ok(principal)
}

/// Tells a long-lived connection that its token was revoked.
pub(crate) struct Revoked {
    pub shared: Arc<Shared>,
    pub hash: String,
}

impl Revoked {
    /// Returns once the token is revoked.
    pub async fn wait(&self) {
        let mut revocations = self.shared.tokens.revocations();
        loop {
            if self.shared.tokens.is_revoked(&self.hash) {
                return;
            }
            if revocations.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}
