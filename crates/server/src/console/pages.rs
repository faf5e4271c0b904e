//! What each console page shows. Reads only: every change goes through [`super::actions`].

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Response};
use chrono::Utc;
use maud::{html, Markup};
use serde::Deserialize;

use super::auth::Role;
use super::layout::{action_button, badge, bar, page, when};
use super::{chart, Console};
use crate::api::AppState;
use crate::campaign::{self, State as CampaignState};
use crate::error::Result;
use crate::vsoc::store as incidents;

fn render(m: Markup) -> Response {
    Html(m.into_string()).into_response()
}

fn or_error(r: Result<Response>) -> Response {
    r.unwrap_or_else(|e| {
        let status = e.status();
        (
            status,
            super::layout::message("Could not show this page", &e.chain()),
        )
            .into_response()
    })
}

/// `?next=…&why=…` of the login page.
#[derive(Debug, Deserialize, Default)]
pub(super) struct LoginQuery {
    #[serde(default)]
    next: String,
    #[serde(default)]
    why: String,
}

/// `GET /ui/login`.
pub(super) async fn login_page(Query(q): Query<LoginQuery>) -> Response {
    render(login_form(&q.next, &q.why))
}

pub(super) fn login_form(next: &str, why: &str) -> Markup {
    html! {
        (maud::DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Sign in · Rampart" }
                link rel="stylesheet" href="/ui/style.css";
            }
            body {
                main.login {
                    h1 { "Rampart console" }
                    @if !why.is_empty() { p.flash #why { (why) } }
                    form.card method="post" action="/ui/login" {
                        input type="hidden" name="next" value=(next);
                        label { "User name" input #name type="text" name="name" autocomplete="username" autofocus; }
                        label { "Password" input #password type="password" name="password" autocomplete="current-password"; }
                        button #signin type="submit" { "Sign in" }
                    }
                    p.muted { "Accounts are created with " code { "rampart admin user add" } "." }
                }
            }
        }
    }
}

/// Filters of the fleet page.
#[derive(Debug, Deserialize, Default)]
pub(super) struct FleetQuery {
    /// Part of a VIN.
    #[serde(default)]
    q: String,
    /// An attribute value (`model`).
    #[serde(default)]
    model: String,
    /// Only vehicles with open incidents, or quarantined.
    #[serde(default)]
    only: String,
    /// The page after this VIN.
    #[serde(default)]
    after: String,
}

/// Most vehicles one fleet page lists.
const FLEET_PAGE: usize = 100;

/// `GET /ui/fleet`.
pub(super) async fn fleet(
    State(state): State<AppState>,
    Console(s): Console,
    Query(f): Query<FleetQuery>,
) -> Response {
    or_error(
        async {
            let db = state.director().db();
            let open = incidents::open_by_vehicle(db).await?;
            let total = db.count("vehicles").await?;
            // Counted in the database, not by reading every open incident.
            let open_incidents: u64 = incidents::counts(db)
                .await?
                .iter()
                .filter(|(state, _, _)| state == "open")
                .map(|(_, _, n)| n)
                .sum();
            let running = db
                .campaigns()
                .await?
                .iter()
                .filter(|c| c.state == CampaignState::Running)
                .count();
            // Scan pages until one page of matches (bounded, so a filter matching nothing
            // does not read a million vehicles for one page).
            let mut shown = Vec::new();
            let mut after = f.after.clone();
            let mut quarantined = 0;
            for _ in 0..50 {
                let page = db.vehicles(&after, 1000).await?;
                let done = page.len() < 1000;
                for v in page {
                    after = v.vin.clone();
                    quarantined += usize::from(v.quarantined_at.is_some());
                    let matches = (f.q.is_empty() || v.vin.contains(&f.q.to_uppercase()))
                        && (f.model.is_empty() || v.attributes.get("model") == Some(&f.model))
                        && match f.only.as_str() {
                            "incidents" => open.contains_key(&v.vin),
                            "quarantined" => v.quarantined_at.is_some(),
                            _ => true,
                        };
                    if matches && shown.len() < FLEET_PAGE {
                        shown.push(v);
                    }
                }
                if done || shown.len() >= FLEET_PAGE {
                    break;
                }
            }
            let next = shown
                .last()
                .filter(|_| shown.len() == FLEET_PAGE)
                .map(|v| v.vin.clone());
            Ok(render(page(&s, "fleet", "Fleet", html! {
                div.grid {
                    div.stat { "Vehicles" b #stat-vehicles { (total) } }
                    div.stat { "Open incidents" b #stat-incidents { (open_incidents) } }
                    div.stat { "Running campaigns" b { (running) } }
                    div.stat { "Quarantined (seen)" b { (quarantined) } }
                }
                form.filters method="get" action="/ui/fleet" {
                    label { "VIN contains" input type="text" name="q" value=(f.q); }
                    label { "Model" input type="text" name="model" value=(f.model); }
                    label { "Show" select name="only" {
                        option value="" selected[f.only.is_empty()] { "all vehicles" }
                        option value="incidents" selected[f.only == "incidents"] { "with open incidents" }
                        option value="quarantined" selected[f.only == "quarantined"] { "quarantined" }
                    } }
                    button type="submit" { "Filter" }
                }
                table #fleet {
                    thead { tr { th { "VIN" } th { "Model" } th { "ECUs: what each runs" } th { "RXSWIN" } th { "Last check-in" } th { "Incidents" } } }
                    tbody {
                        @for v in &shown {
                            tr data-vin=(v.vin) {
                                td { a.mono href={ "/ui/vehicles/" (v.vin) } { (v.vin) }
                                    @if v.quarantined_at.is_some() { " " (badge("quarantined")) }
                                    @if v.removed_at.is_some() { " " (badge("removed")) } }
                                td { (v.attributes.get("model").map(String::as_str).unwrap_or("–")) }
                                td.mono {
                                    @for e in &v.ecus {
                                        div { (e.ecu_id) ": " (e.installed.as_ref().map(|i| i.target.as_str()).unwrap_or("–")) }
                                    }
                                }
                                td.mono { (v.attributes.get(crate::records::RXSWIN_ATTRIBUTE).map(String::as_str).unwrap_or("–")) }
                                td { (v.last_seen.as_deref().map(when).unwrap_or_else(|| "never".into())) }
                                td.num { @match open.get(&v.vin) { Some(n) => { (badge("open")) " " (n) }, None => "–" } }
                            }
                        }
                    }
                }
                @if let Some(next) = next {
                    p { a href={ "/ui/fleet?after=" (next) "&q=" (f.q) "&model=" (f.model) "&only=" (f.only) } { "Next page →" } }
                }
            })))
        }
        .await,
    )
}

/// `GET /ui/vehicles/{vin}`.
pub(super) async fn vehicle(
    State(state): State<AppState>,
    Console(s): Console,
    Path(vin): Path<String>,
) -> Response {
    or_error(
        async {
            let db = state.director().db();
            let v = db.vehicle(&vin).await?.ok_or_else(|| {
                crate::error::Error::NotFound(format!("vehicle {vin} is not registered"))
            })?;
            let history = db.update_records(Some(&vin), None, 0, 200).await?;
            let rxswin = db.rxswin_history(&vin).await?;
            let assignments = db.assignments(Some(&vin), None).await?;
            let events = db.events(Some(&vin), None, 100).await?;
            let its_incidents = incidents::incidents(db, None, Some(&vin), 100).await?;
            let security = s.role == Role::Security;
            Ok(render(page(&s, "fleet", &format!("Vehicle {vin}"), html! {
                div.card {
                    p { "Primary ECU " code { (v.primary_ecu) } " · registered " (when(&v.created_at))
                        " · last check-in " (v.last_seen.as_deref().map(when).unwrap_or_else(|| "never".into())) }
                    p { @for (k, val) in &v.attributes { span.badge { (k) "=" (val) } " " } @for t in &v.tags { span.badge { "#" (t) } " " } }
                    @if let Some(at) = &v.quarantined_at {
                        p.flash #quarantine { "Quarantined since " (when(at)) ": " (v.quarantine_reason.as_deref().unwrap_or("")) " — the director gives it no instructions." }
                        (action_button(&s, &format!("/ui/vehicles/{vin}/release"), "Release", security, false, true))
                    } @else {
                        (action_button(&s, &format!("/ui/vehicles/{vin}/quarantine"), "Quarantine", security, true, true))
                    }
                }
                h2 { "ECUs" }
                table #ecus {
                    thead { tr { th { "ECU" } th { "Hardware" } th { "Verification" } th { "Runs" } th { "Release counter" } } }
                    tbody { @for e in &v.ecus { tr {
                        td.mono { (e.ecu_id) } td.mono { (e.hardware_id) }
                        td { (e.verification) @if e.reports == "gateway" { " " span.muted { "(UDS, gateway-vouched)" } } }
                        td.mono { (e.installed.as_ref().map(|i| i.target.as_str()).unwrap_or("–")) }
                        td.num { (e.installed.as_ref().map(|i| i.release_counter.to_string()).unwrap_or_else(|| "–".into())) }
                    } } }
                }
                h2 { "RXSWIN" }
                table { thead { tr { th { "When" } th { "RXSWIN" } th { "Before" } th { "Campaign" } } }
                    tbody { @for r in rxswin.iter().rev() { tr {
                        td { (when(&r.at)) } td.mono { (r.rxswin) } td.mono { (r.previous.as_deref().unwrap_or("–")) } td { (r.campaign.as_deref().unwrap_or("–")) }
                    } } } }
                h2 { "Install history" }
                table #history { thead { tr { th { "When" } th { "ECU" } th { "From" } th { "To" } th { "Result" } th { "Campaign" } } }
                    tbody { @for r in history.iter().rev() { tr {
                        td { (when(&r.at)) } td.mono { (r.ecu_id) } td.mono { (r.from_target.as_deref().unwrap_or("–")) }
                        td.mono { (r.to_target) } td { (badge(&r.result)) } td { (r.campaign.as_deref().unwrap_or("–")) }
                    } } } }
                h2 { "Assignments" }
                table { thead { tr { th { "#" } th { "ECU" } th { "Target" } th { "Status" } th { "Last error" } } }
                    tbody { @for a in assignments.iter().rev().take(50) { tr {
                        td.num { (a.id) } td.mono { (a.ecu_id) } td.mono { (a.target) } td { (badge(&a.status)) } td { (a.last_error.as_deref().unwrap_or("")) }
                    } } } }
                h2 { "Incidents" }
                (incident_table(&its_incidents))
                h2 { "Security events" }
                (event_table(&events))
            })))
        }
        .await,
    )
}

/// `GET /ui/images`.
pub(super) async fn images(State(state): State<AppState>, Console(s): Console) -> Response {
    or_error(
        async {
            let db = state.director().db();
            let mut rows = Vec::new();
            for i in state.images()? {
                let encrypted = db.image_key(&i.name).await?.is_some();
                rows.push((i, encrypted));
            }
            Ok(render(page(&s, "images", "Images and releases", html! {
                p.muted { "What the image repository signs: each target with the role that signed it. Encrypted images are sent encrypted to each ECU." }
                table #images {
                    thead { tr { th { "Target" } th { "Signed by" } th { "Hardware" } th { "Release counter" } th { "Length" } th { "SHA-256" } th { "Encrypted" } } }
                    tbody { @for (i, encrypted) in &rows { tr {
                        td.mono { (i.name) }
                        td { (i.role) }
                        td.mono { (i.custom.get("hardware_id").and_then(|h| h.as_str()).unwrap_or("–")) }
                        td.num { (i.custom.get("release_counter").and_then(|r| r.as_u64()).map(|r| r.to_string()).unwrap_or_else(|| "–".into())) }
                        td.num { (i.length) }
                        td.mono { (i.hashes.get("sha256").and_then(|h| h.as_str()).map(|h| &h[..h.len().min(16)]).unwrap_or("–")) "…" }
                        td { @if *encrypted { (badge("encrypted")) } @else { "no" } }
                    } } }
                }
            })))
        }
        .await,
    )
}

fn wave_bar(counts: &crate::campaign::WaveCounts) -> Markup {
    let order = [
        "installed",
        "installing",
        "downloading",
        "instructed",
        "failed",
        "rolled-back",
        "withdrawn",
        "superseded",
    ];
    let parts: Vec<(&str, u64)> = order
        .iter()
        .map(|k| (*k, counts.by_progress.get(*k).copied().unwrap_or(0)))
        .collect();
    bar(&parts, counts.vehicles)
}

/// `GET /ui/campaigns`.
pub(super) async fn campaigns(State(state): State<AppState>, Console(s): Console) -> Response {
    or_error(
        async {
            let db = state.director().db();
            let mut rows = Vec::new();
            for c in db.campaigns().await?.into_iter().take(50) {
                rows.push(campaign::status(db, &c.name).await?);
            }
            Ok(render(page(&s, "campaigns", "Campaigns", html! {
                p.muted { "Staged rollouts: each wave starts when the one before met its success criterion; a campaign halts by itself on failures, or when the V-SOC opens an incident about an image it ships." }
                table #campaigns {
                    thead { tr { th { "Campaign" } th { "State" } th { "Release" } th { "Waves" } th { "Why" } } }
                    tbody { @for st in &rows { @let c = &st.campaign; tr data-campaign=(c.name) {
                        td { a href={ "/ui/campaigns/" (c.name) } { (c.name) } }
                        td { (badge(c.state.as_str())) }
                        td.mono { @for i in &c.spec.images { div { (i) } } }
                        td { @for w in &st.waves { div { "wave " (w.wave) " " (wave_bar(&w.counts)) } } }
                        td { (c.reason.as_deref().unwrap_or("")) }
                    } } }
                }
            })))
        }
        .await,
    )
}

/// `GET /ui/campaigns/{name}`.
pub(super) async fn campaign(
    State(state): State<AppState>,
    Console(s): Console,
    Path(name): Path<String>,
) -> Response {
    or_error(
        async {
            let st = campaign::status(state.director().db(), &name).await?;
            let c = &st.campaign;
            let operator = s.role == Role::Operator;
            let base = format!("/ui/campaigns/{name}");
            Ok(render(page(&s, "campaigns", &format!("Campaign {name}"), html! {
                div.card #campaign data-state=(c.state.as_str()) {
                    p { "State " span #state { (badge(c.state.as_str())) }
                        @if let Some(r) = &c.reason { " — " span #reason { (r) } } }
                    p { "Release: " @for i in &c.images { code { (i.target) } " (" (i.hardware_id) (if i.encrypted { ", encrypted" } else { "" }) ") " } }
                    p { "Waves: " (c.spec.waves) " · next wave at " (c.spec.criteria.min_success_pct) "% installed, soak " (c.spec.criteria.soak_seconds) " s · halts above " (c.spec.criteria.max_failure_pct) "% failed"
                        @if let Some(r) = &c.spec.rxswin { " · RXSWIN " code { (r) } } }
                    div {
                        @match c.state {
                            CampaignState::Draft => { (action_button(&s, &format!("{base}/start"), "Start", operator, false, false)) (action_button(&s, &format!("{base}/cancel"), "Cancel", operator, true, true)) }
                            CampaignState::Running => { (action_button(&s, &format!("{base}/pause"), "Pause", operator, false, true)) (action_button(&s, &format!("{base}/cancel"), "Cancel", operator, true, true)) }
                            CampaignState::Paused | CampaignState::Halted => { (action_button(&s, &format!("{base}/resume"), "Resume", operator, false, false)) (action_button(&s, &format!("{base}/cancel"), "Cancel", operator, true, true)) }
                            _ => { span.muted { "No action: the campaign ended." } }
                        }
                    }
                }
                h2 { "Waves" }
                table #waves { thead { tr { th { "Wave" } th { "Vehicles" } th { "Progress" } th { "By progress" } } }
                    tbody { @for w in &st.waves { tr {
                        td { (w.wave) @if !w.started { " " span.muted { "(not started)" } } }
                        td.num { (w.counts.vehicles) }
                        td { (wave_bar(&w.counts)) }
                        td { @for (k, n) in &w.counts.by_progress { (badge(k)) " " (n) " " } }
                    } } } }
                h2 { "Vehicles" }
                table #members { thead { tr { th { "VIN" } th { "Wave" } th { "Progress" } th { "ECUs" } } }
                    tbody { @for v in st.vehicles.iter().take(500) { tr {
                        td { a.mono href={ "/ui/vehicles/" (v.vin) } { (v.vin) } } td.num { (v.wave) } td { (badge(v.progress.as_str())) }
                        td { @for e in &v.ecus { div { code { (e.ecu_id) } " " (badge(e.progress.as_str())) @if let Some(err) = &e.error { " " span.muted { (err) } } } } }
                    } } } }
                h2 { "Operations log" }
                table #log { thead { tr { th { "When" } th { "Who" } th { "What" } th { "Detail" } } }
                    tbody { @for l in st.log.iter().rev() { tr { td { (when(&l.at)) } td { (l.actor) } td { (l.action) } td { (l.detail) } } } } }
            })))
        }
        .await,
    )
}

fn incident_table(list: &[incidents::Incident]) -> Markup {
    html! {
        table.incidents {
            thead { tr { th { "#" } th { "Severity" } th { "State" } th { "Kind" } th { "What" } th { "Vehicles" } th { "Opened" } } }
            tbody { @for i in list { tr data-incident=(i.id) data-kind=(i.kind) {
                td.num { a href={ "/ui/incidents/" (i.id) } { "#" (i.id) } }
                td { (badge(&i.severity)) } td { (badge(&i.state)) } td { (i.kind) }
                td { a href={ "/ui/incidents/" (i.id) } { (i.title) } @if let Some(img) = &i.image { br; span.muted { "image " code { (img) } } } }
                td.num { (i.vehicles.len()) } td { (when(&i.opened_at)) }
            } } }
        }
    }
}

fn event_table(events: &[crate::db::SecurityEvent]) -> Markup {
    html! {
        table.events {
            thead { tr { th { "Last seen" } th { "Rule" } th { "Source" } th { "Vehicle" } th { "Address" } th { "Count" } th { "Detail" } } }
            tbody { @for e in events { tr {
                td { (when(if e.last_at.is_empty() { &e.at } else { &e.last_at })) }
                td { a href={ "/ui/vsoc?rule=" (e.rule) } { code { (e.rule) } } }
                td { (e.source) }
                td { @if let Some(v) = &e.vin { a.mono href={ "/ui/vehicles/" (v) } { (v) } } @else { "–" } }
                td.mono { (e.remote.as_deref().unwrap_or("–")) }
                td.num { (e.count) }
                td { (e.detail.chars().take(240).collect::<String>()) }
            } } }
        }
    }
}

/// Filters of the V-SOC page.
#[derive(Debug, Deserialize, Default)]
pub(super) struct VsocQuery {
    #[serde(default)]
    rule: String,
    #[serde(default)]
    vin: String,
    /// Hours back (default 24).
    hours: Option<u32>,
    /// Incident state (default: open and acknowledged).
    #[serde(default)]
    state: String,
}

/// `GET /ui/vsoc`.
pub(super) async fn vsoc(
    State(state): State<AppState>,
    Console(s): Console,
    Query(q): Query<VsocQuery>,
) -> Response {
    or_error(
        async {
            let db = state.director().db();
            let hours = q.hours.unwrap_or(24).clamp(1, 24 * 90);
            let now = Utc::now();
            let from = now - chrono::Duration::hours(i64::from(hours));
            let text = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let events = db
                .events_between(
                    (!q.vin.is_empty()).then_some(q.vin.as_str()),
                    (!q.rule.is_empty()).then_some(q.rule.as_str()),
                    &text(from),
                    "",
                    5000,
                )
                .await?;
            let list: Vec<_> = if q.state.is_empty() {
                incidents::incidents(db, None, None, 200)
                    .await?
                    .into_iter()
                    .filter(|i| i.state != "resolved")
                    .collect()
            } else {
                incidents::incidents(db, Some(&q.state), None, 200).await?
            };
            let mut by_severity: BTreeMap<&str, usize> = BTreeMap::new();
            for i in &list {
                *by_severity.entry(i.severity.as_str()).or_default() += 1;
            }
            Ok(render(page(&s, "vsoc", "V-SOC", html! {
                div.grid {
                    @for sev in ["critical", "high", "medium", "low"] {
                        div.stat { (badge(sev)) b { (by_severity.get(sev).copied().unwrap_or(0)) } }
                    }
                    div.stat { "Events in view" b { (events.iter().map(|e| e.count).sum::<u64>()) } }
                }
                h2 { "Incidents" }
                form.filters method="get" action="/ui/vsoc" {
                    label { "State" select name="state" {
                        option value="" selected[q.state.is_empty()] { "open and acknowledged" }
                        @for st in incidents::STATES { option value=(st) selected[q.state == st] { (st) } }
                    } }
                    input type="hidden" name="rule" value=(q.rule);
                    input type="hidden" name="vin" value=(q.vin);
                    button type="submit" { "Show" }
                }
                div #incidents { (incident_table(&list)) }
                h2 { "Security events per rule, last " (hours) " h" }
                div.card { (chart::timeline(&events, from, now, 48)) }
                form.filters method="get" action="/ui/vsoc" {
                    label { "Rule" input type="text" name="rule" value=(q.rule) placeholder="e.g. hash-mismatch"; }
                    label { "VIN" input type="text" name="vin" value=(q.vin); }
                    label { "Hours back" input type="number" name="hours" value=(hours) min="1"; }
                    button type="submit" { "Filter events" }
                }
                (event_table(events.get(..500).unwrap_or(&events)))
            })))
        }
        .await,
    )
}

/// `GET /ui/incidents/{id}`.
pub(super) async fn incident(
    State(state): State<AppState>,
    Console(s): Console,
    Path(id): Path<i64>,
) -> Response {
    or_error(
        async {
            let db = state.director().db();
            let i = incidents::incident(db, id).await?;
            let security = s.role == Role::Security;
            let base = format!("/ui/incidents/{id}");
            Ok(render(page(&s, "vsoc", &format!("Incident #{id}"), html! {
                div.card #incident data-state=(i.state) {
                    p { (badge(&i.severity)) " " span #incident-state { (badge(&i.state)) } " " code { (i.kind) } " · " (i.subject) }
                    p { b { (i.title) } }
                    p { (i.detail) }
                    @if let Some(img) = &i.image { p { "About image " code { (img) } ": campaigns shipping it were halted and its pending assignments withdrawn." } }
                    @if let Some(r) = &i.runbook { p { "Runbook: " code #runbook { (r) } } }
                    p.muted { "Opened " (when(&i.opened_at)) " · newest evidence " (when(&i.last_event_at))
                        @if let (Some(by), Some(at)) = (&i.state_by, &i.state_at) { " · " (i.state) " by " (by) " at " (when(at)) } }
                    @if i.state == "open" { (action_button(&s, &format!("{base}/acknowledge"), "Acknowledge", security, false, false)) }
                    @if i.state != "resolved" { (action_button(&s, &format!("{base}/resolve"), "Resolve", security, false, false)) }
                }
                h2 { "Vehicles affected" }
                table { tbody { @for v in &i.vehicles { tr {
                    td { a.mono href={ "/ui/vehicles/" (v) } { (v) } }
                    td { (action_button(&s, &format!("/ui/vehicles/{v}/quarantine"), "Quarantine", security, true, true)) }
                } } } }
                h2 { "Evidence" }
                (event_table(&i.events))
            })))
        }
        .await,
    )
}

/// `GET /ui/audit`.
pub(super) async fn audit(State(state): State<AppState>, Console(s): Console) -> Response {
    or_error(
        async {
            let entries = crate::audit::entries(state.director().db(), None, 500).await?;
            Ok(render(page(&s, "audit", "Audit log", html! {
                p.muted { "Every change made from the console, by the admin API's user commands, and by the V-SOC's own responses." }
                table #audit { thead { tr { th { "When" } th { "Who" } th { "What" } th { "On" } th { "Detail" } } }
                    tbody { @for e in &entries { tr { td { (when(&e.at)) } td { (e.actor) } td { code { (e.action) } } td.mono { (e.subject) } td { (e.detail) } } } } }
            })))
        }
        .await,
    )
}
