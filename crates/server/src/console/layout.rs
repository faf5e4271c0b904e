//! The page shell (navigation, who is signed in, sign-out), the stylesheet, and small
//! helpers the pages share (badges, progress bars, times).

use axum::http::header;
use axum::response::IntoResponse;
use maud::{html, Markup, DOCTYPE};

use super::auth::Session;

/// The console's stylesheet, served from the binary (`/ui/style.css`).
const STYLE: &str = r#"
:root { --fg:#1d2330; --muted:#5b6475; --line:#d9dee7; --bg:#f5f7fa; --card:#fff; --accent:#1f5fbf;
  --ok:#1e7d45; --warn:#b26b00; --bad:#b3261e; --crit:#7a0f9e; }
* { box-sizing: border-box; }
body { margin:0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color:var(--fg); background:var(--bg); }
header { display:flex; align-items:center; gap:24px; padding:10px 24px; background:#16202e; color:#fff; }
header .brand { font-weight:700; letter-spacing:.04em; }
header nav a { color:#c8d3e6; text-decoration:none; margin-right:16px; padding:4px 0; }
header nav a.active { color:#fff; border-bottom:2px solid #6ea8ff; }
header .who { margin-left:auto; display:flex; gap:12px; align-items:center; color:#c8d3e6; }
header .who form { margin:0; }
main { padding:20px 24px; max-width:1400px; }
h1 { font-size:20px; margin:0 0 12px; }
h2 { font-size:16px; margin:20px 0 8px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:6px; padding:14px 16px; margin-bottom:16px; }
table { border-collapse:collapse; width:100%; background:var(--card); }
th, td { text-align:left; padding:6px 10px; border-bottom:1px solid var(--line); vertical-align:top; }
th { font-weight:600; color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.03em; }
td.num { text-align:right; font-variant-numeric: tabular-nums; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size:12.5px; }
a { color:var(--accent); }
.muted { color:var(--muted); }
.badge { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; font-weight:600; background:#e8ecf3; color:var(--fg); }
.badge.ok, .badge.installed, .badge.completed, .badge.resolved { background:#dcf3e5; color:var(--ok); }
.badge.running, .badge.instructed, .badge.downloading, .badge.installing, .badge.acknowledged, .badge.medium { background:#fff1d6; color:var(--warn); }
.badge.halted, .badge.failed, .badge.rolled-back, .badge.open, .badge.high, .badge.quarantined { background:#fbe1df; color:var(--bad); }
.badge.critical { background:#f1dcfa; color:var(--crit); }
.badge.paused, .badge.cancelled, .badge.withdrawn, .badge.low { background:#e8ecf3; color:var(--muted); }
.bar { display:flex; height:14px; border-radius:4px; overflow:hidden; background:#e8ecf3; min-width:220px; }
.bar span { display:block; height:100%; }
.bar .installed { background:#2e9d5b; } .bar .failed, .bar .rolled-back { background:#d0453b; }
.bar .instructed, .bar .downloading, .bar .installing { background:#e7a435; }
.bar .withdrawn, .bar .superseded { background:#9aa4b5; }
form.inline { display:inline; margin:0 4px 0 0; }
button { font: inherit; padding:4px 12px; border-radius:4px; border:1px solid #9fb2d3; background:#fff; color:var(--accent); cursor:pointer; }
button.danger { border-color:#e0a29d; color:var(--bad); }
button:disabled { color:#a0a7b4; border-color:var(--line); cursor:not-allowed; }
input, select { font: inherit; padding:4px 8px; border:1px solid var(--line); border-radius:4px; }
.filters { display:flex; gap:8px; align-items:end; margin-bottom:12px; flex-wrap:wrap; }
.filters label { display:flex; flex-direction:column; font-size:12px; color:var(--muted); }
.flash { padding:10px 14px; border-radius:6px; background:#fbe1df; color:var(--bad); margin-bottom:12px; }
.login { max-width:360px; margin:80px auto; }
.login label { display:block; margin-bottom:10px; }
.login input { width:100%; }
.grid { display:grid; grid-template-columns: repeat(auto-fit, minmax(180px, 1fr)); gap:12px; margin-bottom:16px; }
.stat { background:var(--card); border:1px solid var(--line); border-radius:6px; padding:10px 14px; }
.stat b { display:block; font-size:22px; }
svg text { font: 11px system-ui, sans-serif; fill: var(--muted); }
"#;

/// `GET /ui/style.css`.
pub(super) async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        STYLE,
    )
}

const NAV: [(&str, &str); 5] = [
    ("fleet", "Fleet"),
    ("campaigns", "Campaigns"),
    ("images", "Images"),
    ("vsoc", "V-SOC"),
    ("audit", "Audit log"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Rampart" }
            link rel="stylesheet" href="/ui/style.css";
        }
    }
}

/// A page of the console for a signed-in user.
pub(super) fn page(session: &Session, active: &str, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header {
                    span.brand { "RAMPART" }
                    nav {
                        @for (path, name) in NAV {
                            a href={ "/ui/" (path) } class=[(path == active).then_some("active")] { (name) }
                        }
                    }
                    div.who {
                        span #who { (session.user) " · " (session.role.as_str()) }
                        form method="post" action="/ui/logout" {
                            (csrf(session))
                            button #logout type="submit" { "Sign out" }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// A page for a message (refusals, not found), signed in or not.
pub(super) fn message(title: &str, text: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                main.login {
                    h1 { (title) }
                    p #message { (text) }
                    p { a href="/ui/fleet" { "Back to the console" } }
                }
            }
        }
    }
}

/// The hidden CSRF field every form carries.
pub(super) fn csrf(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// A button posting `action` (a path) — disabled, with the reason as its title, when the
/// user's role may not press it (the server checks again).
pub(super) fn action_button(
    session: &Session,
    action: &str,
    label: &str,
    allowed: bool,
    danger: bool,
    reason_field: bool,
) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            (csrf(session))
            @if reason_field && allowed {
                input type="text" name="reason" placeholder="reason" size="18";
            }
            button type="submit" class=[danger.then_some("danger")] data-action=(label.to_lowercase())
                disabled[!allowed] title=[(!allowed).then(|| format!("your role ({}) may not {}", session.role.as_str(), label.to_lowercase()))] {
                (label)
            }
        }
    }
}

/// A state or severity badge.
pub(super) fn badge(text: &str) -> Markup {
    html! { span class={ "badge " (text) } { (text) } }
}

/// A stacked progress bar of counts by progress, over `total`.
pub(super) fn bar(counts: &[(&str, u64)], total: u64) -> Markup {
    let total = total.max(1);
    html! {
        div.bar title=(counts.iter().map(|(k, n)| format!("{k}: {n}")).collect::<Vec<_>>().join(", ")) {
            @for (k, n) in counts {
                @if *n > 0 {
                    span class=(k) style=(format!("width:{:.2}%", (*n as f64) * 100.0 / (total as f64))) {}
                }
            }
        }
    }
}

/// An RFC 3339 time as `2026-12-02 14:05:09Z`.
pub(super) fn when(t: &str) -> String {
    t.replacen('T', " ", 1)
}
