//! A man in the middle between a vehicle and the server (or a hostile mirror in front of the
//! image repository): forwards every request upstream, and where a rule matches, serves what
//! the attacker chooses instead — forged bytes, stale copies, nothing, a trickle, endless
//! data. Everything it serves is logged, so a scenario can prove the attack reached the
//! vehicle.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use futures_util::StreamExt;

/// A transformation of a response body.
pub type BodyFn = Arc<dyn Fn(&[u8]) -> Vec<u8> + Send + Sync>;

/// What the attacker does to a matching request.
#[derive(Clone)]
pub enum Action {
    /// Serve these bytes with 200.
    Replace(Vec<u8>),
    /// Transform the upstream body.
    Mutate(BodyFn),
    /// Answer with this status and no body.
    Status(u16),
    /// Never answer (the request is dropped on the floor).
    Blackhole,
    /// Send the upstream body at this many bytes per second.
    Trickle(u64),
    /// Send the upstream body, then junk forever.
    Endless,
    /// Let it through unchanged (with `times`, ahead of another rule on the same path: the
    /// attacker lets the first requests pass and strikes at a later one).
    Forward,
}

impl Action {
    /// Transforms the upstream body with `f` when it is a metadata document of `role` (its
    /// `signed._type`); other answers on the same path pass unchanged.
    pub fn on_role(
        role: &'static str,
        f: impl Fn(&[u8]) -> Vec<u8> + Send + Sync + 'static,
    ) -> Action {
        Action::Mutate(Arc::new(move |body: &[u8]| {
            if role_of(body).as_deref() == Some(role) {
                f(body)
            } else {
                body.to_vec()
            }
        }))
    }
}

/// The value at `pointer` of a JSON document, if `body` is one and has it.
pub fn json_at(body: &[u8], pointer: &str) -> Option<serde_json::Value> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()?
        .pointer(pointer)
        .cloned()
}

/// The role (`signed._type`) of a metadata document.
pub fn role_of(body: &[u8]) -> Option<String> {
    json_at(body, "/signed/_type").and_then(|t| t.as_str().map(str::to_owned))
}

impl std::fmt::Debug for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Replace(b) => write!(f, "Replace({} bytes)", b.len()),
            Action::Mutate(_) => f.write_str("Mutate"),
            Action::Status(s) => write!(f, "Status({s})"),
            Action::Blackhole => f.write_str("Blackhole"),
            Action::Trickle(b) => write!(f, "Trickle({b} B/s)"),
            Action::Endless => f.write_str("Endless"),
            Action::Forward => f.write_str("Forward"),
        }
    }
}

/// A rule: requests whose path contains `pattern` (and, if `method` is set, use it).
#[derive(Debug, Clone)]
pub struct Intercept {
    /// Substring of the request path.
    pub pattern: String,
    /// Only this method (`GET`, `POST`), if set.
    pub method: Option<String>,
    /// What to do.
    pub action: Action,
    /// Apply at most this many times (`None`: always).
    pub times: Option<usize>,
}

impl Intercept {
    /// A rule for GETs of paths containing `pattern`.
    pub fn get(pattern: &str, action: Action) -> Self {
        Intercept {
            pattern: pattern.to_owned(),
            method: Some("GET".into()),
            action,
            times: None,
        }
    }
}

/// The field of the director's answer to a manifest that names the vehicle's current
/// director timestamp (its entity tag): a primary holding that copy does not ask for it.
pub const TIMESTAMP_TAG_FIELD: &str = "director_timestamp_tag";

impl Intercept {
    /// Rewrites the director's answers to `vin`'s manifests so that they name `tag` as the
    /// current director timestamp, or (`None`) name none. A man in the middle who wants to
    /// answer the vehicle's timestamp request must first make it ask (`None`); one who
    /// freezes it names the copy it holds (`Some`), as a 304 would.
    pub fn timestamp_named(vin: &str, tag: Option<String>) -> Self {
        let rewrite = move |body: &[u8]| {
            let Ok(mut answer) = serde_json::from_slice::<serde_json::Value>(body) else {
                return body.to_vec();
            };
            if let Some(fields) = answer.as_object_mut() {
                match &tag {
                    Some(t) => {
                        fields.insert(TIMESTAMP_TAG_FIELD.into(), t.clone().into());
                    }
                    None => {
                        fields.remove(TIMESTAMP_TAG_FIELD);
                    }
                }
            }
            serde_json::to_vec(&answer).unwrap_or_else(|_| body.to_vec())
        };
        Intercept {
            pattern: format!("/director/{vin}/manifest"),
            method: Some("POST".into()),
            action: Action::Mutate(Arc::new(rewrite)),
            times: None,
        }
    }
}

/// One request the proxy handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// Method.
    pub method: String,
    /// Path (and query).
    pub path: String,
    /// `forwarded`, or the attack applied.
    pub action: String,
    /// HTTP status sent.
    pub status: u16,
    /// Bytes of body sent (as far as known when logged).
    pub bytes: u64,
    /// SHA-256 (hex) of a body sent whole, for evidence.
    pub sha256: Option<String>,
}

impl Served {
    /// Whether the attacker's rule (not plain forwarding) produced this answer.
    pub fn forged(&self) -> bool {
        self.action != "forwarded"
    }
}

#[derive(Default)]
struct Shared {
    rules: Vec<Intercept>,
    log: Vec<Served>,
    /// Bodies captured from upstream, by path, for replays.
    captured: Vec<(String, Vec<u8>)>,
}

/// A running proxy.
#[derive(Clone)]
pub struct Proxy {
    /// Its base URL (`http://127.0.0.1:PORT/`).
    pub url: String,
    upstream: String,
    shared: Arc<Mutex<Shared>>,
    client: reqwest::Client,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("url", &self.url)
            .field("upstream", &self.upstream)
            .finish()
    }
}

impl Proxy {
    /// Starts a proxy in front of `upstream` (a base URL ending in `/`).
    pub async fn start(upstream: &str) -> anyhow::Result<Proxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let proxy = Proxy {
            url: format!("http://{addr}/"),
            upstream: upstream.trim_end_matches('/').to_owned(),
            shared: Arc::new(Mutex::new(Shared::default())),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
        };
        let app = Router::new().fallback(handle).with_state(proxy.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(proxy)
    }

    /// Adds a rule (earlier rules win).
    pub fn add(&self, rule: Intercept) {
        if let Ok(mut s) = self.shared.lock() {
            s.rules.push(rule);
        }
    }

    /// The attacker's next move: forgets the rules and the log, then applies `rule` alone.
    pub fn only(&self, rule: Intercept) {
        self.clear();
        self.clear_log();
        self.add(rule);
    }

    /// Removes every rule: the attacker leaves.
    pub fn clear(&self) {
        if let Ok(mut s) = self.shared.lock() {
            s.rules.clear();
        }
    }

    /// What was served so far.
    pub fn log(&self) -> Vec<Served> {
        self.shared
            .lock()
            .map(|s| s.log.clone())
            .unwrap_or_default()
    }

    /// Forgets the log.
    pub fn clear_log(&self) {
        if let Ok(mut s) = self.shared.lock() {
            s.log.clear();
        }
    }

    /// File names of the root documents served (200) on paths starting with `prefix`, in
    /// order: the root chain a vehicle walked.
    pub fn roots_served(&self, prefix: &str) -> Vec<String> {
        self.log()
            .into_iter()
            .filter(|s| {
                s.path.starts_with(prefix) && s.path.ends_with(".root.json") && s.status == 200
            })
            .map(|s| s.path.rsplit('/').next().unwrap_or_default().to_owned())
            .collect()
    }

    /// Answers the attacker applied (not plain forwarding).
    pub fn forged(&self) -> Vec<Served> {
        self.log().into_iter().filter(Served::forged).collect()
    }

    /// The last body captured from upstream for a path containing `pattern`.
    pub fn captured(&self, pattern: &str) -> Option<Vec<u8>> {
        let s = self.shared.lock().ok()?;
        s.captured
            .iter()
            .rev()
            .find(|(p, _)| p.contains(pattern))
            .map(|(_, b)| b.clone())
    }

    fn record(&self, served: Served) {
        if let Ok(mut s) = self.shared.lock() {
            s.log.push(served);
        }
    }

    fn take_rule(&self, method: &str, path: &str) -> Option<Action> {
        let mut s = self.shared.lock().ok()?;
        let i = s.rules.iter().position(|r| {
            path.contains(&r.pattern) && r.method.as_deref().is_none_or(|m| m == method)
        })?;
        let rule = s.rules.get_mut(i)?;
        let action = rule.action.clone();
        if let Some(t) = rule.times.as_mut() {
            *t = t.saturating_sub(1);
            if *t == 0 {
                s.rules.remove(i);
            }
        }
        Some(action)
    }
}

fn sha(b: &[u8]) -> String {
    hex::encode(rampart_core::hash::sha256(b))
}

async fn handle(State(proxy): State<Proxy>, request: Request) -> Response {
    let method = request.method().as_str().to_owned();
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let action = proxy.take_rule(&method, &path);
    let label = match &action {
        None | Some(Action::Forward) => "forwarded".to_owned(),
        Some(a) => format!("{a:?}"),
    };
    let record = |action: String, status: u16, bytes: u64, sha256: Option<String>| {
        proxy.record(Served {
            method: method.clone(),
            path: path.clone(),
            action,
            status,
            bytes,
            sha256,
        });
    };
    match action {
        Some(Action::Replace(bytes)) => {
            record(label, 200, bytes.len() as u64, Some(sha(&bytes)));
            return (StatusCode::OK, bytes).into_response();
        }
        Some(Action::Status(code)) => {
            record(label, code, 0, None);
            return StatusCode::from_u16(code)
                .unwrap_or(StatusCode::BAD_GATEWAY)
                .into_response();
        }
        Some(Action::Blackhole) => {
            record(label, 0, 0, None);
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return StatusCode::GATEWAY_TIMEOUT.into_response();
        }
        _ => {}
    }
    // Forward upstream.
    let headers = request.headers().clone();
    let body = match axum::body::to_bytes(request.into_body(), 64 * 1024 * 1024).await {
        Ok(b) => b,
        Err(_) => return StatusCode::PAYLOAD_TOO_LARGE.into_response(),
    };
    let url = format!("{}{}", proxy.upstream, path);
    let mut req = proxy
        .client
        .request(method.parse().unwrap_or(reqwest::Method::GET), &url)
        .body(body.to_vec());
    for (k, v) in forwardable(&headers) {
        req = req.header(k, v);
    }
    let upstream = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            record(format!("upstream error: {e}"), 502, 0, None);
            return StatusCode::BAD_GATEWAY.into_response();
        }
    };
    let status = upstream.status().as_u16();
    let content_type = upstream.headers().get("content-type").cloned();
    let bytes = upstream.bytes().await.unwrap_or_default().to_vec();
    if let Ok(mut s) = proxy.shared.lock() {
        s.captured.push((path.clone(), bytes.clone()));
        if s.captured.len() > 256 {
            s.captured.remove(0);
        }
    }
    let mut response = match action {
        Some(Action::Mutate(f)) => {
            let forged = f(&bytes);
            record(label, status, forged.len() as u64, Some(sha(&forged)));
            (
                StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                forged,
            )
                .into_response()
        }
        Some(Action::Trickle(bps)) => {
            record(label, status, bytes.len() as u64, Some(sha(&bytes)));
            let per_tick = (bps / 10).max(1) as usize;
            let chunks: Vec<Bytes> = bytes.chunks(per_tick).map(Bytes::copy_from_slice).collect();
            let stream = futures_util::stream::iter(chunks).then(|c| async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok::<_, std::io::Error>(c)
            });
            Response::builder()
                .status(status)
                .body(Body::from_stream(stream))
                .unwrap_or_default()
        }
        Some(Action::Endless) => {
            record(label, status, bytes.len() as u64, None);
            let head =
                futures_util::stream::once(
                    async move { Ok::<_, std::io::Error>(Bytes::from(bytes)) },
                );
            let junk = futures_util::stream::repeat_with(|| {
                Ok::<_, std::io::Error>(Bytes::from(vec![b' '; 64 * 1024]))
            });
            Response::builder()
                .status(status)
                .body(Body::from_stream(head.chain(junk)))
                .unwrap_or_default()
        }
        _ => {
            record(label, status, bytes.len() as u64, Some(sha(&bytes)));
            (
                StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                bytes,
            )
                .into_response()
        }
    };
    if let Some(ct) = content_type {
        response.headers_mut().insert("content-type", ct);
    }
    response
}

fn forwardable(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(k, _)| {
            matches!(
                k.as_str(),
                "content-type" | "range" | "authorization" | "user-agent"
            )
        })
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect()
}
