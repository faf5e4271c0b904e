//! A replayed vehicle manifest: the attacker on the network records the vehicle's signed
//! version manifests as they go to the director, and later sends them again — the one from
//! before an update (to make the director believe the vehicle still runs the old software,
//! so a fixed vulnerability looks open, or a finished campaign looks stuck), and an exact copy
//! of the last one. It also tries to "refresh" an old manifest by raising its counter.
//!
//! The manifests are genuine: captured on the wire, signed by the vehicle's own primary key.
//! The director accepts a manifest only if its counter is above the last accepted one, and
//! the counter is covered by the signature.

use rampart_core::rule::Rule;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use rampart_lab::image_bytes;
use serde_json::Value;

use crate::harness::sha12;
use crate::proxy::json_at;
use crate::{Findings, Harness, Info};

/// Description.
pub(super) const INFO: Info = Info {
    name: "replayed-manifest",
    attack: "replayed vehicle version manifest",
    attacker: "man in the middle between vehicle and server: records the vehicle's signed manifests and sends them again later, verbatim or with a raised counter; no vehicle or ECU keys",
    control: "the manifest counter is signed by the primary and must be strictly above the last accepted one (checked after the signature, and again atomically when the check-in is stored); ECU report counters likewise",
    expected: "defeated: a replay of an older manifest and an exact copy of the last one are refused with 409 (replay), a manifest with a raised counter fails its signature (400, bad-signature); each is recorded as a server security event; the stored state of the vehicle (last counter, last seen, what each ECU runs, report counters) is unchanged, and the vehicle's next genuine cycle is accepted",
};

const TARGET: &str = "tbox/fw-2.0.bin";

/// A forwarder between the vehicle and the network that keeps a copy of every manifest the
/// vehicle POSTs (the proxy only records responses).
#[derive(Clone)]
struct Recorder {
    upstream: String,
    client: reqwest::Client,
    manifests: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Keep manifests from the director (record them, answer 503): fresh ones to replay.
    hold: Arc<std::sync::atomic::AtomicBool>,
}

impl Recorder {
    async fn start(
        upstream: &str,
    ) -> anyhow::Result<(Recorder, String, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/", listener.local_addr()?);
        let recorder = Recorder {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            manifests: Arc::new(Mutex::new(Vec::new())),
            hold: Arc::default(),
        };
        let app = Router::new().fallback(forward).with_state(recorder.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((recorder, url, task))
    }

    fn manifests(&self) -> Vec<Vec<u8>> {
        self.manifests.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

async fn forward(State(r): State<Recorder>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let headers = request.headers().clone();
    let Ok(body) = axum::body::to_bytes(request.into_body(), 16 * 1024 * 1024).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    if method == axum::http::Method::POST && path.ends_with("/manifest") {
        if let Ok(mut m) = r.manifests.lock() {
            m.push(body.to_vec());
        }
        if r.hold.load(std::sync::atomic::Ordering::SeqCst) {
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    }
    let mut req = r
        .client
        .request(
            method.as_str().parse().unwrap_or(reqwest::Method::GET),
            format!("{}{path}", r.upstream),
        )
        .body(body.to_vec());
    for name in ["content-type", "range", "authorization", "user-agent"] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            req = req.header(name, v);
        }
    }
    let Ok(answer) = req.send().await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = answer.headers().get("content-type").cloned();
    let bytes = answer.bytes().await.unwrap_or_default();
    let mut response = Response::builder()
        .status(status)
        .body(Body::from(bytes))
        .unwrap_or_default();
    if let Some(ct) = content_type {
        if let Ok(v) = axum::http::HeaderValue::from_bytes(ct.as_bytes()) {
            response.headers_mut().insert("content-type", v);
        }
    }
    response
}

fn counter_of(manifest: &[u8]) -> Option<u64> {
    json_at(manifest, "/signed/manifest_counter")?.as_u64()
}

fn installed_of(manifest: &[u8], ecu: &str) -> String {
    serde_json::from_slice::<Value>(manifest)
        .ok()
        .and_then(|v| {
            v.pointer(&format!(
                "/signed/ecu_version_reports/{ecu}/signed/installed_image/filename"
            ))
            .and_then(Value::as_str)
            .map(str::to_owned)
        })
        .unwrap_or_default()
}

/// POSTs `body` as the vehicle's manifest through the network (the proxy); returns the
/// status and the rule the server named.
async fn post(h: &Harness, body: &[u8]) -> anyhow::Result<(u16, String)> {
    let r = reqwest::Client::new()
        .post(format!("{}director/{}/manifest", h.proxy.url, h.vin()))
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await?;
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    Ok((
        status,
        v.get("rule")
            .and_then(Value::as_str)
            .unwrap_or("(none)")
            .to_owned(),
    ))
}

/// The director's stored record of the vehicle (counters, last seen, ECUs).
async fn stored(h: &Harness) -> anyhow::Result<Value> {
    h.lab.admin_get(&format!("vehicles/{}", h.vin())).await
}

/// Runs it.
pub(super) async fn run(h: Harness) -> anyhow::Result<Findings> {
    let mut f = Findings::default();
    let tbox = h.ecu_id(0);

    // The attacker's recorder goes between the vehicle and the network.
    let (recorder, url, task) = Recorder::start(&h.proxy.url).await?;
    h.lab.write_primary_config(0, Some((&url, None)))?;

    // A genuine cycle with an update: the vehicle signs one manifest before installing
    // (T-BOX on fw-1.0) and one after (T-BOX on fw-2.0).
    h.lab
        .release(
            TARGET,
            "tbox-a",
            "2.0",
            &image_bytes(TARGET, 130_000),
            false,
        )
        .await?;
    let run = h.cycle().await?;
    let recorded = recorder.manifests();
    task.abort();
    h.lab.write_primary_config(0, Some((&h.proxy.url, None)))?;
    if !run.success || recorded.len() < 2 {
        anyhow::bail!(
            "the genuine cycle did not produce two manifests ({} recorded): {}",
            recorded.len(),
            run.stderr.lines().last().unwrap_or("")
        );
    }
    let older = recorded.first().cloned().context("no manifest")?;
    let last = recorded.last().cloned().context("no manifest")?;
    let before = stored(&h).await?;
    let view_before = h.lab.installed(&h.vin()).await?;
    let last_counter = before.get("last_manifest_counter").and_then(Value::as_u64);

    // The replays.
    h.mark_events().await?;
    h.proxy.clear_log();
    let mut outcomes = Vec::new();
    for (label, body) in [
        (
            format!(
                "older manifest #{} (T-BOX on {})",
                counter_of(&older).unwrap_or(0),
                installed_of(&older, &tbox)
            ),
            older.clone(),
        ),
        (
            format!(
                "exact copy of the last manifest #{}",
                counter_of(&last).unwrap_or(0)
            ),
            last.clone(),
        ),
    ] {
        let (status, rule) = post(&h, &body).await?;
        f.evidence(format!(
            "replayed the vehicle's {label}, captured on the wire ({} bytes, sha256 {}…, signed by its primary key), through the network → HTTP {status} ({rule})",
            body.len(),
            sha12(&body)
        ));
        outcomes.push((label, status, rule));
    }
    // A "refreshed" replay: the old manifest with its counter raised (the signature no longer
    // matches; if it were accepted, the vehicle's genuine counter would look like a replay).
    let mut raised: Value = serde_json::from_slice(&older)?;
    let forged_counter = last_counter.unwrap_or(0) + 1000;
    if let Some(c) = raised.pointer_mut("/signed/manifest_counter") {
        *c = Value::from(forged_counter);
    }
    let raised = serde_json::to_vec(&raised)?;
    let (status, rule) = post(&h, &raised).await?;
    f.evidence(format!(
        "sent the older manifest with its counter raised to {forged_counter} ({} bytes, sha256 {}…) → HTTP {status} ({rule})",
        raised.len(),
        sha12(&raised)
    ));
    let forwarded: Vec<u16> = h
        .proxy
        .log()
        .iter()
        .filter(|s| s.method == "POST" && s.path.ends_with("/manifest"))
        .map(|s| s.status)
        .collect();
    f.check(
        "the replays travelled the vehicle's own path (through the network) to the director",
        forwarded.len() == 3,
        format!("manifest POSTs forwarded on the vehicle's path, answered {forwarded:?}"),
    );

    for (label, status, rule) in &outcomes {
        f.check(
            format!("the director refused the {label} as a replay"),
            *status == 409 && rule == "replay",
            format!("HTTP {status}, rule {rule}"),
        );
    }
    f.check(
        "the director refused the manifest with a raised counter (signature)",
        status == 400 && rule == "bad-signature",
        format!("HTTP {status}, rule {rule}"),
    );
    h.check_event(&mut f, &[Rule::Replay], "server").await?;
    h.check_event(&mut f, &[Rule::BadSignature], "server")
        .await?;

    // Stored state is unchanged.
    let after = stored(&h).await?;
    f.check(
        "the director's stored record of the vehicle is unchanged",
        after == before,
        format!(
            "last manifest counter {:?} → {:?}; last seen {} → {}",
            last_counter,
            after.get("last_manifest_counter").and_then(Value::as_u64),
            before
                .get("last_seen")
                .and_then(Value::as_str)
                .unwrap_or(""),
            after.get("last_seen").and_then(Value::as_str).unwrap_or("")
        ),
    );
    let view_after = h.lab.installed(&h.vin()).await?;
    f.check(
        "the director still sees what the vehicle runs now",
        view_after == view_before && view_after.get(&tbox).map(String::as_str) == Some(TARGET),
        format!("{view_after:?}"),
    );
    let trust = h.trust_state().await?;
    h.check_state(&mut f, &trust, &[]);

    // The vehicle's next genuine cycle is accepted.
    let run = h.check_recovers(&mut f).await?;
    let now = stored(&h).await?;
    let counter_now = now.get("last_manifest_counter").and_then(Value::as_u64);
    f.check(
        "the vehicle's next genuine manifest is accepted (counter moves on)",
        run.success && counter_now > last_counter && counter_now < Some(forged_counter),
        format!("last manifest counter {last_counter:?} → {counter_now:?}"),
    );

    race_fresh_copies(&h, &mut f).await?;
    Ok(f)
}

/// Copies of one *fresh* manifest (held back from the director by the attacker, so its
/// counter is new) sent at once: exactly one is accepted, and what it carries — the
/// vehicle's attack indicator — is recorded once, not once per copy.
async fn race_fresh_copies(h: &Harness, f: &mut Findings) -> anyhow::Result<()> {
    const COPIES: usize = 8;
    let (recorder, url, task) = Recorder::start(&h.proxy.url).await?;
    recorder
        .hold
        .store(true, std::sync::atomic::Ordering::SeqCst);
    h.lab.write_primary_config(0, Some((&url, None)))?;
    // The first held manifest makes the vehicle note that the director did not take it; the
    // next one carries that note (an attack indicator) — and is held back too.
    let _ = h.cycle().await?;
    let _ = h.cycle().await?;
    task.abort();
    h.lab.write_primary_config(0, Some((&h.proxy.url, None)))?;
    let held = recorder
        .manifests()
        .into_iter()
        .find(|m| {
            serde_json::from_slice::<Value>(m)
                .ok()
                .and_then(|v| {
                    v.pointer("/signed/attacks_detected")
                        .and_then(Value::as_str)
                        .map(|a| !a.is_empty())
                })
                .unwrap_or(false)
        })
        .context("the vehicle sent no manifest carrying an indicator")?;
    let indicator = serde_json::from_slice::<Value>(&held)?
        .pointer("/signed/attacks_detected")
        .and_then(Value::as_str)
        .and_then(|a| a.lines().next())
        .unwrap_or_default()
        .to_owned();
    let mark = h.newest_event_id().await?;
    let answers = futures_util::future::join_all((0..COPIES).map(|_| post(h, &held))).await;
    let statuses: Vec<u16> = answers
        .iter()
        .map(|a| a.as_ref().map_or(0, |(s, _)| *s))
        .collect();
    f.evidence(format!(
        "sent {COPIES} copies of a fresh manifest (#{}, held back from the director, carrying \"{}\") at once → HTTP {statuses:?}",
        counter_of(&held).unwrap_or(0),
        indicator.chars().take(80).collect::<String>()
    ));
    let accepted = statuses.iter().filter(|s| **s == 200).count();
    f.check(
        "exactly one copy of the fresh manifest was accepted, the others refused as replays",
        accepted == 1 && statuses.iter().filter(|s| **s == 409).count() == COPIES - 1,
        format!("HTTP {statuses:?}"),
    );
    // Repeats of one event are stored as one row with a count: count occurrences, not rows.
    let recorded: u64 = h
        .events()
        .await?
        .iter()
        .filter(|e| {
            e.get("id").and_then(Value::as_i64).unwrap_or(0) > mark
                && e.get("source").and_then(Value::as_str) == Some("vehicle")
                && e.get("detail").and_then(Value::as_str) == Some(indicator.as_str())
        })
        .map(|e| e.get("count").and_then(Value::as_u64).unwrap_or(1))
        .sum();
    f.check(
        "its attack indicator was recorded once, not once per copy",
        recorded == 1,
        format!(
            "{recorded} event(s) for \"{}\"",
            indicator.chars().take(80).collect::<String>()
        ),
    );
    Ok(())
}
