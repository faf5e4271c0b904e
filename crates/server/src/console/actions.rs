//! What the console's buttons do. Each action checks the CSRF token and the role before
//! anything else, calls the same functions as the admin API, and writes the audit log.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use rampart_core::rule::Rule;
use serde::Deserialize;

use super::auth::{self, Role, Session};
use super::{layout, pages, refuse_action, Console, Remote, COOKIE};
use crate::api::AppState;
use crate::audit;
use crate::error::Error;

/// The sign-in form.
#[derive(Debug, Deserialize)]
pub(super) struct LoginForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: String,
}

/// Where to go after signing in: a console page, never another site.
fn safe_next(next: &str) -> &str {
    if next.starts_with("/ui/")
        && !next.starts_with("//")
        && !next.contains("..")
        && !next.contains('\\')
    {
        next
    } else {
        "/ui/fleet"
    }
}

fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_owned())]).into_response()
}

/// `POST /ui/login`.
pub(super) async fn login(
    State(state): State<AppState>,
    Remote(remote): Remote,
    Form(f): Form<LoginForm>,
) -> Response {
    let db = state.director().db();
    let lifetime = state.console().session_lifetime();
    match auth::login(db, &f.name, &f.password, lifetime, chrono::Utc::now()).await {
        Ok(Some((token, session))) => {
            let _ = audit::record(
                db,
                &session.user,
                "session.login",
                &session.user,
                remote.as_deref().unwrap_or(""),
            )
            .await;
            let cookie = format!(
                "{COOKIE}={token}; Path=/ui; HttpOnly; Secure; SameSite=Strict; Max-Age={}",
                lifetime.num_seconds()
            );
            (
                StatusCode::SEE_OTHER,
                [
                    (header::LOCATION, safe_next(&f.next).to_owned()),
                    (header::SET_COOKIE, cookie),
                ],
            )
                .into_response()
        }
        Ok(None) => {
            let name: String = f.name.chars().take(64).collect();
            state
                .director()
                .event(
                    "server",
                    Rule::LoginFailed.as_str(),
                    None,
                    None,
                    remote.as_deref(),
                    &format!("console sign-in refused for user {name:?}: wrong name or password, or a disabled account"),
                )
                .await;
            (
                StatusCode::UNAUTHORIZED,
                axum::response::Html(
                    pages::login_form(&f.next, "Wrong user name or password.").into_string(),
                ),
            )
                .into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// The fields every action form carries.
#[derive(Debug, Deserialize, Default)]
pub(super) struct ActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
}

impl ActionForm {
    /// The reason given (at most 500 characters), or who did it from where.
    fn reason_or(&self, action: &str, user: &str) -> String {
        if self.reason.trim().is_empty() {
            format!("{action} by {user} from the console")
        } else {
            self.reason.trim().chars().take(500).collect()
        }
    }
}

/// Checks the CSRF token and the role: `Err` is the refusal page (recorded).
async fn check(
    state: &AppState,
    s: &Session,
    remote: Option<&str>,
    f: &ActionForm,
    what: &str,
    needs: Option<Role>,
) -> Result<(), Response> {
    if !s.csrf_ok(&f.csrf) {
        return Err(refuse_action(
            state,
            s,
            remote,
            StatusCode::FORBIDDEN,
            what,
            "the form's CSRF token is missing or wrong (reload the page)",
        )
        .await);
    }
    if let Some(role) = needs {
        if s.role != role {
            return Err(refuse_action(
                state,
                s,
                remote,
                StatusCode::FORBIDDEN,
                what,
                &format!(
                    "it needs the {} role, and yours is {}",
                    role.as_str(),
                    s.role.as_str()
                ),
            )
            .await);
        }
    }
    Ok(())
}

fn failed(e: Error) -> Response {
    (e.status(), layout::message("Not done", &e.chain())).into_response()
}

/// `POST /ui/logout`.
pub(super) async fn logout(
    State(state): State<AppState>,
    Console(s): Console,
    Remote(remote): Remote,
    headers: axum::http::HeaderMap,
    Form(f): Form<ActionForm>,
) -> Response {
    if let Err(r) = check(&state, &s, remote.as_deref(), &f, "sign out", None).await {
        return r;
    }
    let db = state.director().db();
    if let Some(token) = super::cookie_token(&headers) {
        if let Err(e) = auth::logout(db, &token).await {
            return failed(e);
        }
    }
    let _ = audit::record(db, &s.user, "session.logout", &s.user, "").await;
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/ui/login?why=Signed%20out.".to_owned()),
            (
                header::SET_COOKIE,
                format!("{COOKIE}=; Path=/ui; HttpOnly; Secure; SameSite=Strict; Max-Age=0"),
            ),
        ],
    )
        .into_response()
}

/// `POST /ui/campaigns/{name}/{start|resume|pause|cancel}` (operator).
pub(super) async fn campaign(
    State(state): State<AppState>,
    Console(s): Console,
    Remote(remote): Remote,
    Path((name, action)): Path<(String, String)>,
    Form(f): Form<ActionForm>,
) -> Response {
    let what = format!("to {action} campaign {name}");
    if let Err(r) = check(
        &state,
        &s,
        remote.as_deref(),
        &f,
        &what,
        Some(Role::Operator),
    )
    .await
    {
        return r;
    }
    let director = state.director();
    let reason = f.reason_or(&action, &s.user);
    let now = chrono::Utc::now();
    let done = match action.as_str() {
        "start" | "resume" => crate::campaign::start_by(director, &name, &s.user, now).await,
        "pause" => crate::campaign::pause_by(director, &name, &s.user, &reason).await,
        "cancel" => crate::campaign::cancel_by(director, &name, &s.user, &reason).await,
        other => Err(Error::NotFound(format!("no campaign action {other:?}"))),
    };
    match done {
        Ok(c) => {
            if let Err(e) = audit::record(
                director.db(),
                &s.user,
                &format!("campaign.{action}"),
                &name,
                &format!("{reason} → {}", c.state.as_str()),
            )
            .await
            {
                return failed(e);
            }
            see_other(&format!("/ui/campaigns/{name}"))
        }
        Err(e) => failed(e),
    }
}

/// `POST /ui/incidents/{id}/{acknowledge|resolve}` (security).
pub(super) async fn incident(
    State(state): State<AppState>,
    Console(s): Console,
    Remote(remote): Remote,
    Path((id, action)): Path<(i64, String)>,
    Form(f): Form<ActionForm>,
) -> Response {
    let what = format!("to {action} incident #{id}");
    if let Err(r) = check(
        &state,
        &s,
        remote.as_deref(),
        &f,
        &what,
        Some(Role::Security),
    )
    .await
    {
        return r;
    }
    let to = match action.as_str() {
        "acknowledge" => "acknowledged",
        "resolve" => "resolved",
        other => return failed(Error::NotFound(format!("no incident action {other:?}"))),
    };
    match crate::vsoc::set_incident_state(state.director().db(), id, to, &s.user).await {
        Ok(_) => see_other(&format!("/ui/incidents/{id}")),
        Err(e) => failed(e),
    }
}

/// `POST /ui/vehicles/{vin}/{quarantine|release}` (security).
pub(super) async fn vehicle(
    State(state): State<AppState>,
    Console(s): Console,
    Remote(remote): Remote,
    Path((vin, action)): Path<(String, String)>,
    Form(f): Form<ActionForm>,
) -> Response {
    let what = format!("to {action} vehicle {vin}");
    if let Err(r) = check(
        &state,
        &s,
        remote.as_deref(),
        &f,
        &what,
        Some(Role::Security),
    )
    .await
    {
        return r;
    }
    let reason = f.reason_or(&action, &s.user);
    let director = state.director();
    let done = match action.as_str() {
        "quarantine" => crate::vsoc::quarantine(director, &vin, &s.user, &reason).await,
        "release" => crate::vsoc::release(director, &vin, &s.user, &reason).await,
        other => Err(Error::NotFound(format!("no vehicle action {other:?}"))),
    };
    match done {
        Ok(()) => see_other(&format!("/ui/vehicles/{vin}")),
        Err(e) => failed(e),
    }
}
