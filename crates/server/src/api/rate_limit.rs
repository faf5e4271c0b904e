//! Rate limiting: a token bucket per client (the VIN of its certificate, else its address;
//! admin requests their own bucket), 429 with Retry-After past it, and one security event per
//! client per minute. Per instance: protection, not vehicle state.

use rampart_core::rule::Rule;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::tls::ClientIdentity;

use super::extract::presented_token;
use super::*;

struct Bucket {
    tokens: f64,
    last: Instant,
    /// When this client's flooding was last recorded (one event per minute per client).
    reported: Option<Instant>,
}

/// A keyed token-bucket rate limiter. Its memory is bounded: idle buckets are dropped when
/// the table grows. (Rate limiting is per instance; it is protection, not vehicle state.)
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

const MAX_BUCKETS: usize = 100_000;

impl RateLimiter {
    /// `rate` tokens per second, at most `burst` saved.
    pub fn new(rate: f64, burst: f64) -> Self {
        RateLimiter {
            rate: rate.max(0.001),
            burst: burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key`: `Ok(())`, or `Err((retry_after, report))` where `report` is
    /// true at most once a minute per client (a flood is one event, not thousands).
    pub fn check(&self, key: &str) -> std::result::Result<(), (Duration, bool)> {
        let now = Instant::now();
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if buckets.len() >= MAX_BUCKETS {
            let horizon = Duration::from_secs_f64(self.burst / self.rate);
            buckets.retain(|_, b| now.duration_since(b.last) < horizon);
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            last: now,
            reported: None,
        });
        let elapsed = now.duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let first = bucket
                .reported
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60));
            if first {
                bucket.reported = Some(now);
            }
            Err((
                Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate),
                first,
            ))
        }
    }
}

pub(super) fn client_key(identity: Option<&ClientIdentity>) -> (String, Option<String>) {
    match identity {
        Some(ClientIdentity {
            vin: Some(vin),
            peer,
            ..
        }) => (format!("vin:{vin}"), Some(format!("{vin}@{peer}"))),
        Some(ClientIdentity {
            vin: None, peer, ..
        }) => (format!("ip:{}", peer.ip()), Some(peer.to_string())),
        None => ("unknown".into(), None),
    }
}

pub(super) async fn rate_limit(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let m = &state.inner.metrics;
    m.requests.fetch_add(1, Ordering::Relaxed);
    let identity = request.extensions().get::<ClientIdentity>().cloned();
    let (mut key, remote) = client_key(identity.as_ref());
    // Operators with valid admin credentials get their own bucket: a flood from the same
    // address (or NAT) must not lock the fleet's operators out of the server they defend.
    if presented_token(request.headers())
        .is_some_and(|t| crate::pki::check_admin_token(&state.inner.admin_token, t))
    {
        key = "admin".into();
    }
    if let Err((retry, first)) = state.inner.limiter.check(&key) {
        m.rate_limited.fetch_add(1, Ordering::Relaxed);
        if first {
            let vin = identity.as_ref().and_then(|i| i.vin.clone());
            state
                .inner
                .director
                .event(
                    "server",
                    Rule::RateLimited.as_str(),
                    vin.as_deref(),
                    None,
                    remote.as_deref(),
                    &format!("{key} exceeded its request rate"),
                )
                .await;
        }
        let secs = (retry.as_secs() + u64::from(retry.subsec_nanos() > 0))
            .max(1)
            .to_string();
        let mut response = (
            StatusCode::TOO_MANY_REQUESTS,
            Json(serde_json::json!({"error": "too many requests", "rule": Rule::RateLimited})),
        )
            .into_response();
        if let Ok(v) = HeaderValue::from_str(&secs) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return response;
    }
    let response = next.run(request).await;
    if response.status().is_client_error() {
        m.client_errors.fetch_add(1, Ordering::Relaxed);
    }
    response
}
