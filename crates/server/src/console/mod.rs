//! The web console under `/ui/`: fleet, vehicles, images, campaigns, V-SOC and audit log,
//! for operators and analysts in a browser.
//!
//! Server-rendered HTML (the `maud` macro: markup checked at compile time, every value
//! escaped) with one embedded stylesheet and no JavaScript needed: the binary carries
//! everything, nothing comes from a CDN, and every page works in a browser with scripts
//! off. Forms POST actions; each is checked for session, CSRF token and role
//! ([`auth`]), carried out by the same functions as the admin API (campaigns, V-SOC), and
//! written to the audit log ([`crate::audit`]). A refusal — no or expired session, missing
//! CSRF token, a role without the right — answers a page that says why, changes nothing and
//! records a `console-refused` security event; a wrong password records `login-failed`.
//!
//! Modules: `auth` (accounts, sessions, roles), `layout` (page shell, style, helpers),
//! `pages` (what each page shows), `actions` (what the buttons do), `chart` (the V-SOC
//! timeline as SVG).

mod actions;
pub mod auth;
mod chart;
mod layout;
mod pages;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use rampart_core::rule::Rule;
use serde::{Deserialize, Serialize};

pub use auth::{Role, Session, User};

use crate::api::AppState;
use crate::tls::ClientIdentity;

/// `[console]` in `rampart.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConsoleConfig {
    /// A session ends this many minutes after login.
    pub session_minutes: u64,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            session_minutes: 8 * 60,
        }
    }
}

impl ConsoleConfig {
    /// How long a session lasts.
    pub fn session_lifetime(&self) -> chrono::Duration {
        chrono::Duration::minutes(
            i64::try_from(self.session_minutes.clamp(1, 7 * 24 * 60)).unwrap_or(480),
        )
    }
}

/// The session cookie's name.
pub const COOKIE: &str = "rampart_session";

/// The console's routes (nested under `/ui`).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/fleet") }))
        .route("/login", get(pages::login_page).post(actions::login))
        .route("/logout", post(actions::logout))
        .route("/fleet", get(pages::fleet))
        .route("/vehicles/{vin}", get(pages::vehicle))
        .route("/vehicles/{vin}/{action}", post(actions::vehicle))
        .route("/images", get(pages::images))
        .route("/campaigns", get(pages::campaigns))
        .route("/campaigns/{name}", get(pages::campaign))
        .route("/campaigns/{name}/{action}", post(actions::campaign))
        .route("/vsoc", get(pages::vsoc))
        .route("/incidents/{id}", get(pages::incident))
        .route("/incidents/{id}/{action}", post(actions::incident))
        .route("/audit", get(pages::audit))
        .route("/style.css", get(layout::style))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                layout::message("Not found", "There is no such console page."),
            )
        })
}

/// The client address of a request, for security events.
fn remote(parts_or_headers: Option<&ClientIdentity>) -> Option<String> {
    parts_or_headers.map(|i| i.peer.to_string())
}

/// The session token in a request's cookies.
fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

/// A signed-in user, from the session cookie. Without one, a page answers the login page
/// (and an expired or unknown cookie is recorded as a refusal).
pub struct Console(pub Session);

impl FromRequestParts<AppState> for Console {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let remote = remote(parts.extensions.get::<ClientIdentity>());
        let Some(token) = cookie_token(&parts.headers) else {
            return Err(refuse_unsigned(state, parts, remote, None).await);
        };
        let db = state.director().db();
        match auth::session(db, &token, chrono::Utc::now()).await {
            Ok(auth::Lookup::Valid(s)) => Ok(Console(s)),
            Ok(auth::Lookup::Expired) => {
                Err(refuse_unsigned(state, parts, remote, Some("your session expired")).await)
            }
            Ok(auth::Lookup::Unknown) => Err(refuse_unsigned(
                state,
                parts,
                remote,
                Some("your session is not valid (signed out elsewhere?)"),
            )
            .await),
            Err(e) => Err(e.into_response()),
        }
    }
}

/// No valid session: a page is sent to the login form; an action is refused (401). A stale
/// or forged cookie, and any action without a session, is a security event.
async fn refuse_unsigned(
    state: &AppState,
    parts: &Parts,
    remote: Option<String>,
    why: Option<&str>,
) -> Response {
    let is_action = parts.method == axum::http::Method::POST;
    // Nested under /ui, the request's own URI lost its prefix; the original keeps it.
    let path = parts
        .extensions
        .get::<axum::extract::OriginalUri>()
        .map_or_else(|| parts.uri.path().to_owned(), |u| u.0.path().to_owned());
    if why.is_some() || is_action {
        let detail = format!(
            "{} {} without a valid session: {}",
            parts.method,
            path,
            why.unwrap_or("no session cookie")
        );
        record_refusal(state, remote.as_deref(), &detail).await;
    }
    let why = why.unwrap_or("sign in first");
    if is_action {
        return (
            StatusCode::UNAUTHORIZED,
            layout::message(
                "Not signed in",
                &format!("Nothing was changed: {why}. Sign in and try again."),
            ),
        )
            .into_response();
    }
    let next = path.as_str();
    (
        StatusCode::SEE_OTHER,
        [(
            header::LOCATION,
            format!(
                "/ui/login?next={}&why={}",
                percent_encoding::utf8_percent_encode(next, percent_encoding::NON_ALPHANUMERIC),
                percent_encoding::utf8_percent_encode(why, percent_encoding::NON_ALPHANUMERIC)
            ),
        )],
    )
        .into_response()
}

/// Records a refused console request as a `console-refused` security event.
async fn record_refusal(state: &AppState, remote: Option<&str>, detail: &str) {
    state
        .director()
        .event(
            "server",
            Rule::ConsoleRefused.as_str(),
            None,
            None,
            remote,
            detail,
        )
        .await;
}

/// Refuses an action (403 or 400) with a page saying why, and records it.
async fn refuse_action(
    state: &AppState,
    session: &Session,
    remote: Option<&str>,
    status: StatusCode,
    what: &str,
    why: &str,
) -> Response {
    let detail = format!(
        "{} ({}) tried {what}: {why}",
        session.user,
        session.role.as_str()
    );
    record_refusal(state, remote, &detail).await;
    (
        status,
        layout::message("Refused", &format!("Nothing was changed: {why}.")),
    )
        .into_response()
}

/// The client address of a request (for events and the audit log), when known.
pub struct Remote(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for Remote {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Remote(remote(parts.extensions.get::<ClientIdentity>())))
    }
}
