//! The console over HTTPS against a running server (`serve::start`), without a browser:
//! sign-in (argon2, cookie flags), sessions that expire, CSRF tokens, roles, the audit log,
//! and a refusal — page, nothing changed, a security event — for each way in that must fail.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::Duration;

use chrono::Utc;
use rampart_server::ceremony::{self, CeremonyOptions};
use rampart_server::config::Config;
use rampart_server::db::{Aggregate, Db, NewEvent};
use rampart_server::layout::Layout;
use rampart_server::pki::{self, PkiFiles};
use rampart_server::serve::{self, ServeOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};

struct Server {
    _dir: tempfile::TempDir,
    running: serve::Running,
    client: reqwest::Client,
    token: String,
    db: Db,
    db_url: String,
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().join("data"));
        ceremony::init(&layout, &CeremonyOptions::default(), Utc::now()).unwrap();
        let config = Config::load(&layout).unwrap();
        let token = pki::load_admin_token(&layout.pki()).unwrap();
        let ca = std::fs::read(PkiFiles::in_dir(&layout.pki()).ca_cert).unwrap();
        let db_url = config.database_url(&layout);
        let db = Db::connect(&db_url).await.unwrap();
        let mut opts = ServeOptions::new(layout.clone());
        opts.listen = Some("127.0.0.1:0".into());
        let running = serve::start(opts).await.unwrap();
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        Server {
            _dir: dir,
            running,
            client,
            token,
            db,
            db_url,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.running.url(), path.trim_start_matches('/'))
    }

    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self
            .client
            .request(method, self.url(path))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let answer = r.send().await.unwrap();
        let status = answer.status();
        let text = answer.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn add_user(&self, name: &str, role: &str) {
        let (status, body) = self
            .admin(
                reqwest::Method::POST,
                "api/v1/users",
                Some(
                    json!({"name": name, "role": role, "password": format!("{name}-password-123")}),
                ),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    /// Signs in; the session cookie (`name=value`).
    async fn login(&self, name: &str) -> String {
        let answer = self
            .client
            .post(self.url("ui/login"))
            .form(&[
                ("name", name),
                ("password", &format!("{name}-password-123")),
                ("next", "/ui/vsoc"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::SEE_OTHER);
        assert_eq!(answer.headers()["location"], "/ui/vsoc");
        let cookie = answer.headers()["set-cookie"].to_str().unwrap().to_owned();
        for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/ui"] {
            assert!(cookie.contains(flag), "{flag} missing: {cookie}");
        }
        cookie.split(';').next().unwrap().to_owned()
    }

    async fn get(&self, path: &str, cookie: &str) -> (StatusCode, String, Option<String>) {
        let answer = self
            .client
            .get(self.url(path))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        let location = answer
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_owned());
        (answer.status(), answer.text().await.unwrap(), location)
    }

    async fn post(&self, path: &str, cookie: &str, form: &[(&str, &str)]) -> (StatusCode, String) {
        let answer = self
            .client
            .post(self.url(path))
            .header("cookie", cookie)
            .form(form)
            .send()
            .await
            .unwrap();
        (answer.status(), answer.text().await.unwrap())
    }

    async fn events(&self, rule: &str) -> Vec<Value> {
        let (_, body) = self
            .admin(
                reqwest::Method::GET,
                &format!("api/v1/events?rule={rule}"),
                None,
            )
            .await;
        body.as_array().unwrap().clone()
    }

    async fn incident_state(&self, id: i64) -> String {
        let (_, body) = self
            .admin(
                reqwest::Method::GET,
                &format!("api/v1/incidents/{id}"),
                None,
            )
            .await;
        body["state"].as_str().unwrap().to_owned()
    }
}

/// The page's CSRF token (the hidden field every form carries).
fn csrf_of(page: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let at = page
        .find(marker)
        .unwrap_or_else(|| panic!("no CSRF field in {page}"))
        + marker.len();
    page[at..].split('"').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_roles_csrf_and_sessions_guard_every_change() {
    let s = Server::start().await;
    s.add_user("vera", "viewer").await;
    s.add_user("sam", "security").await;
    s.add_user("otto", "operator").await;
    // A short password is refused, and so is a name taken.
    let (status, _) = s
        .admin(
            reqwest::Method::POST,
            "api/v1/users",
            Some(json!({"name": "x", "role": "viewer", "password": "short"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = s
        .admin(
            reqwest::Method::POST,
            "api/v1/users",
            Some(json!({"name": "vera", "role": "viewer", "password": "another-password-1"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    // The database holds an argon2id hash, not the password.
    let (_, users) = s.admin(reqwest::Method::GET, "api/v1/users", None).await;
    assert_eq!(users.as_array().unwrap().len(), 3);

    // An incident to act on: refusals from one address.
    for i in 0..60 {
        let e = NewEvent {
            source: "server",
            rule: "rate-limited",
            vin: None,
            ecu_id: None,
            remote: Some("198.51.100.9:4000"),
            detail: &format!("flood {i}"),
        };
        s.db.record_event_at(&e, Utc::now(), Aggregate::Identical)
            .await
            .unwrap();
    }
    let (status, opened) = s
        .admin(reqwest::Method::POST, "api/v1/vsoc/evaluate", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{opened}");
    let id = opened[0]["id"].as_i64().unwrap();
    assert_eq!(opened[0]["kind"], "address-abuse");

    // The console's address, with or without its slash, leads to the fleet page.
    for path in ["ui", "ui/"] {
        let (status, _, location) = s.get(path, "").await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(location.as_deref(), Some("/ui/fleet"), "{path}");
    }

    // No session: a page sends to the login form, an action is refused and recorded.
    let (status, _, location) = s.get("ui/fleet", "").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(location
        .unwrap()
        .starts_with("/ui/login?next=%2Fui%2Ffleet"));
    let (status, page) = s
        .post(
            &format!("ui/incidents/{id}/acknowledge"),
            "",
            &[("csrf", "x")],
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(page.contains("Nothing was changed"), "{page}");
    assert_eq!(s.events("console-refused").await.len(), 1);

    // A wrong password: refused, recorded with the address, no cookie.
    let answer = s
        .client
        .post(s.url("ui/login"))
        .form(&[("name", "sam"), ("password", "guess-guess-guess")])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    assert!(answer.headers().get("set-cookie").is_none());
    assert!(answer
        .text()
        .await
        .unwrap()
        .contains("Wrong user name or password"));
    let failed = s.events("login-failed").await;
    assert_eq!(failed.len(), 1);
    assert!(failed[0]["detail"].as_str().unwrap().contains("sam"));
    // An unknown name answers the same.
    let answer = s
        .client
        .post(s.url("ui/login"))
        .form(&[("name", "nobody"), ("password", "guess-guess-guess")])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);

    // A viewer sees the pages, and its buttons are disabled; pressing one anyway is refused.
    let viewer = s.login("vera").await;
    let (status, page, _) = s.get(&format!("ui/incidents/{id}"), &viewer).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("disabled") && page.contains("your role (viewer) may not acknowledge"),
        "{page}"
    );
    let csrf = csrf_of(&page);
    let (status, page) = s
        .post(
            &format!("ui/incidents/{id}/acknowledge"),
            &viewer,
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(page.contains("needs the security role"), "{page}");
    assert_eq!(s.incident_state(id).await, "open");
    let (status, _) = s
        .post("ui/campaigns/spring/pause", &viewer, &[("csrf", &csrf)])
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a viewer cannot pause a campaign"
    );

    // Security, without the CSRF token, then with another session's: refused, unchanged.
    let analyst = s.login("sam").await;
    let (status, _) = s
        .post(&format!("ui/incidents/{id}/acknowledge"), &analyst, &[])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = s
        .post(
            &format!("ui/incidents/{id}/acknowledge"),
            &analyst,
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the viewer's token is not the analyst's"
    );
    assert_eq!(s.incident_state(id).await, "open");
    // An operator may not act on incidents either (roles do not nest).
    let operator = s.login("otto").await;
    let (_, page, _) = s.get("ui/fleet", &operator).await;
    let (status, _) = s
        .post(
            &format!("ui/incidents/{id}/resolve"),
            &operator,
            &[("csrf", &csrf_of(&page))],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let refused = s.events("console-refused").await;
    assert!(refused.len() >= 5, "{refused:?}");

    // With its token: done, and in the audit log under the analyst's name.
    let (_, page, _) = s.get(&format!("ui/incidents/{id}"), &analyst).await;
    let (status, _) = s
        .post(
            &format!("ui/incidents/{id}/acknowledge"),
            &analyst,
            &[("csrf", &csrf_of(&page))],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(s.incident_state(id).await, "acknowledged");
    let (_, audit) = s
        .admin(reqwest::Method::GET, "api/v1/audit?actor=sam", None)
        .await;
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "incident.acknowledge" && e["subject"] == format!("#{id}")),
        "{audit}"
    );
    let (_, page, _) = s.get("ui/audit", &analyst).await;
    assert!(page.contains("incident.acknowledge"));

    // Every page renders for a signed-in user.
    for path in [
        "ui/fleet",
        "ui/images",
        "ui/campaigns",
        "ui/vsoc",
        "ui/audit",
        "ui/vsoc?rule=rate-limited&hours=2",
    ] {
        let (status, page, _) = s.get(path, &analyst).await;
        assert_eq!(status, StatusCode::OK, "{path}: {page}");
    }
    let (_, page, _) = s.get("ui/vsoc", &analyst).await;
    assert!(
        page.contains("<svg") && page.contains("rate-limited"),
        "the timeline shows the rule"
    );

    // An expired session: back to the login form, recorded.
    expire_sessions(&s.db_url).await;
    let before = s.events("console-refused").await.len();
    let (status, _, location) = s.get("ui/fleet", &analyst).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(location.unwrap().contains("expired"));
    assert!(s.events("console-refused").await.len() > before);

    // Signing out ends the session: the cookie no longer works.
    let (_, page, _) = s.get("ui/fleet", &operator).await;
    let (status, _) = s
        .post("ui/logout", &operator, &[("csrf", &csrf_of(&page))])
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, _, _) = s.get("ui/fleet", &operator).await;
    assert_eq!(status, StatusCode::SEE_OTHER);

    // /metrics counts incidents.
    let metrics = s
        .client
        .get(s.url("metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("rampart_incidents{state=\"acknowledged\",severity=\"medium\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("rampart_incidents_opened_total 1"));
    s.running.stop().await.unwrap();
}

/// Expires the analyst's sessions (as if their lifetime had passed), in the database directly.
async fn expire_sessions(url: &str) {
    let pool = sqlx::SqlitePool::connect(url).await.unwrap();
    sqlx::query("UPDATE sessions SET expires_at = '2000-01-01T00:00:00Z' WHERE user_name = 'sam'")
        .execute(&pool)
        .await
        .unwrap();
}

/// A legacy ECU registered with the primary's key (its reports are the gateway's word) is
/// marked so in the admin API and on the vehicle's page; an ECU with its own key is not.
#[tokio::test]
async fn the_vehicle_page_marks_the_ecus_a_gateway_vouches_for() {
    use rampart_core::key::KeyScheme;
    use rampart_core::signer::{InMemorySigner, Signer};
    let s = Server::start().await;
    let primary = InMemorySigner::generate(KeyScheme::Ed25519).unwrap();
    let ivi = InMemorySigner::generate(KeyScheme::Ed25519).unwrap();
    let vin = "WRAMP000000000099";
    let ecu = |id: &str, key: &InMemorySigner| json!({"ecu_id": id, "hardware_id": "hw", "public_key": key.public_key(), "verification": "partial"});
    let (status, body) = s
        .admin(
            reqwest::Method::POST,
            "api/v1/vehicles",
            Some(json!({
                "vin": vin,
                "primary_ecu": "TBOX-9",
                "ecus": [ecu("TBOX-9", &primary), ecu("SEAT-9", &primary), ecu("IVI-9", &ivi)],
            })),
        )
        .await;
    assert!(status.is_success(), "{status} {body}");
    let (_, v) = s
        .admin(
            reqwest::Method::GET,
            &format!("api/v1/vehicles/{vin}"),
            None,
        )
        .await;
    let reports = |id: &str| {
        v["ecus"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["ecu_id"] == id)
            .map(|e| e["reports"].clone())
            .unwrap()
    };
    assert_eq!(reports("SEAT-9"), "gateway", "{v}");
    assert_eq!(reports("TBOX-9"), "ecu");
    assert_eq!(reports("IVI-9"), "ecu");
    s.add_user("vera", "viewer").await;
    let cookie = s.login("vera").await;
    let (status, page, _) = s.get(&format!("ui/vehicles/{vin}"), &cookie).await;
    assert_eq!(status, StatusCode::OK);
    let seat_row = page
        .split("<tr>")
        .find(|r| r.contains("SEAT-9"))
        .unwrap_or_default();
    assert!(seat_row.contains("gateway-vouched"), "{seat_row}");
    let ivi_row = page
        .split("<tr>")
        .find(|r| r.contains("IVI-9"))
        .unwrap_or_default();
    assert!(!ivi_row.contains("gateway-vouched"), "{ivi_row}");
}
