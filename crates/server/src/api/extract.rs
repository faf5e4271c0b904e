//! What a request must bring: JSON bodies that fail like every other error, the admin's
//! bearer token, and a vehicle's right to act for a VIN (certificate, VIN, revocation).

use rampart_core::rule::Rule;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::error::{Error, Result};
use crate::tls::ClientIdentity;

use super::*;

/// `Json` whose rejections (bad JSON, wrong types, wrong content type, too large) answer
/// like every other error: `{"error", "rule"}` with a 4xx.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> std::result::Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(Error::TooLarge(rejection.body_text()))
            }
            Err(rejection) => Err(Error::BadRequest(format!(
                "request body: {}",
                rejection.body_text()
            ))),
        }
    }
}

/// The bearer token of a request, if any.
pub(super) fn presented_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

pub(super) async fn require_admin(
    State(state): State<AppState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let presented = presented_token(&headers).unwrap_or("");
    if presented.is_empty() || !crate::pki::check_admin_token(&state.inner.admin_token, presented) {
        let remote = request
            .extensions()
            .get::<ClientIdentity>()
            .map(|i| i.peer.to_string());
        let refused =
            Error::Unauthorized("admin credentials required (Authorization: Bearer TOKEN)".into());
        return state
            .inner
            .director
            .reject(refused, None, None, remote.as_deref())
            .await
            .into_response();
    }
    next.run(request).await
}

/// Checks that the caller may act for `vin`; records a security event if not.
pub(super) async fn authorize_vehicle(
    state: &AppState,
    vin: &str,
    identity: Option<&ClientIdentity>,
) -> Result<Option<String>> {
    let remote = identity.map(|i| i.peer.to_string());
    let director = &state.inner.director;
    if crate::pki::validate_vin(vin).is_err() {
        let refused = Error::Rejected {
            status: StatusCode::BAD_REQUEST,
            rule: Rule::Malformed,
            message: "malformed VIN in the request path".into(),
        };
        return Err(director
            .reject(refused, None, None, remote.as_deref())
            .await);
    }
    if state.inner.require_client_certificate {
        let refused = match identity.and_then(|i| i.vin.as_deref()) {
            None => Some(Error::Rejected {
                status: StatusCode::UNAUTHORIZED,
                rule: Rule::ClientCertificateRequired,
                message: "a vehicle route needs a vehicle client certificate".into(),
            }),
            Some(cert_vin) if cert_vin != vin => Some(Error::Rejected {
                status: StatusCode::FORBIDDEN,
                rule: Rule::VinMismatch,
                message: format!("certificate is for {cert_vin}, not {vin}"),
            }),
            Some(_) => None,
        };
        if let Some(refused) = refused {
            return Err(director
                .reject(refused, Some(vin), None, remote.as_deref())
                .await);
        }
    }
    // Revoked: every certificate of the VIN, or this certificate by serial (an in-memory
    // lookup; `rampart pki revoke` takes effect within the refresh interval, see
    // `crate::revocation`). Also without TLS, where the VIN alone identifies the vehicle.
    let serial = identity.and_then(|i| i.serial.as_deref());
    if let Some(revoked) = state.inner.revocations.of(vin, serial).await? {
        let what = match (&revoked.vin, &revoked.serial) {
            (Some(_), _) => format!("every certificate of {vin}"),
            (None, Some(s)) => format!("certificate {s}"),
            (None, None) => "certificate".to_owned(),
        };
        let refused = Error::Rejected {
            status: StatusCode::FORBIDDEN,
            rule: Rule::CertificateRevoked,
            message: format!(
                "{what} revoked at {}: {}",
                revoked.revoked_at, revoked.reason
            ),
        };
        return Err(director
            .reject(refused, Some(vin), None, remote.as_deref())
            .await);
    }
    Ok(remote)
}
