//! The console in a real browser: headless Chromium driven over WebDriver (chromedriver,
//! through the `fantoccini` client) against a lab — a real server over HTTPS and three
//! vehicles whose primaries and ECUs run as processes.
//!
//! An operator signs in, starts, pauses and resumes a campaign; the vehicles install it and
//! the fleet page shows what each ECU runs. Then a hostile mirror swaps the image of a second
//! campaign for its own bytes (the arbitrary-software attack of the attack lab, made at the
//! image folder the CDN serves): the vehicles refuse it, the V-SOC opens a fleet incident
//! about the image and halts the campaign shipping it, and an analyst sees and acknowledges
//! it. A viewer finds the operator's buttons disabled and pressing one changes nothing.
//! Everyone signs out. A screenshot of each page is written to `RAMPART_SCREENSHOTS` (default
//! `target/tmp/console-screenshots`; `docs/console/` holds the committed ones).
//!
//! Needs `chromium` and `chromedriver` (Debian packages `chromium`, `chromium-driver`, which
//! `scripts/test` installs and then sets `RAMPART_REQUIRE_BROWSER=1`). Without them the test
//! says so and passes, unless `RAMPART_REQUIRE_BROWSER=1`, where it fails.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use rampart_lab::{image_bytes, Lab, LabOptions};
use serde_json::json;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rampart"))
}

fn find(names: &[&str]) -> Option<PathBuf> {
    names.iter().map(PathBuf::from).find(|p| p.exists())
}

/// chromedriver on a free port; killed when dropped.
struct Driver {
    child: std::process::Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_driver(chromedriver: &Path) -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

async fn browser(driver: &Driver, chromium: &Path, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert("acceptInsecureCerts".into(), json!(true));
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--ignore-certificate-errors",
                "--window-size=1400,1000", format!("--user-data-dir={}", profile.display()),
            ]
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a WebDriver session with headless Chromium")
}

struct Console {
    c: Client,
    base: String,
    shots: PathBuf,
}

impl Console {
    async fn goto(&self, path: &str) {
        self.c
            .goto(&format!("{}{}", self.base, path.trim_start_matches('/')))
            .await
            .unwrap();
    }

    /// The element `css` selects, waiting for it (pages load while the test runs on).
    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.c
            .wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
    }

    async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap()
    }

    async fn source(&self) -> String {
        self.c.source().await.unwrap()
    }

    /// Clicks `css` (a form's button) and waits until the page it led to replaced this one:
    /// a click returns before the form's POST and its redirect are done.
    async fn click(&self, css: &str) {
        let old = self.find("html").await;
        self.find(css).await.click().await.unwrap();
        for _ in 0..600 {
            if old.tag_name().await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.find("body").await;
    }

    async fn login(&self, name: &str) {
        self.goto("ui/login").await;
        self.find("#name").await.send_keys(name).await.unwrap();
        self.find("#password")
            .await
            .send_keys(&format!("{name}-password-123"))
            .await
            .unwrap();
        self.click("#signin").await;
        let who = self.text("#who").await;
        assert!(who.starts_with(name), "signed in as {name}: {who}");
    }

    async fn logout(&self) {
        self.click("#logout").await;
        assert!(self
            .c
            .current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/ui/login"));
        assert!(self.source().await.contains("Signed out."));
    }

    async fn screenshot(&self, name: &str) {
        let png = self.c.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    async fn campaign_state(&self, name: &str) -> String {
        self.goto(&format!("ui/campaigns/{name}")).await;
        self.find("#campaign")
            .await
            .attr("data-state")
            .await
            .unwrap()
            .unwrap_or_default()
    }
}

async fn run_fleet(lab: &Lab) -> Vec<String> {
    let mut outputs = Vec::new();
    for i in 0..lab.vehicles.len() {
        let run = lab.run_vehicle(i, "auto").await.unwrap();
        outputs.push(format!(
            "vehicle {i}: exit {:?}\n{}\n{}",
            run.code, run.stdout, run.stderr
        ));
    }
    outputs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_and_analysts_use_the_console_in_chromium() {
    let required = std::env::var("RAMPART_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    let (Some(chromium), Some(chromedriver)) = (
        find(&[
            "/usr/bin/chromium",
            "/usr/bin/chromium-browser",
            "/usr/bin/google-chrome",
        ]),
        find(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]),
    ) else {
        assert!(
            !required,
            "chromium and chromedriver are required (apt: chromium chromium-driver)"
        );
        eprintln!(
            "chromium or chromedriver missing: browser test skipped (scripts/test installs them)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let shots = std::env::var_os("RAMPART_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots"));
    std::fs::create_dir_all(&shots).unwrap();

    // The lab: a server over HTTPS, three vehicles; a release and a draft campaign for it.
    let mut lab = Lab::create(LabOptions::new(dir.path().join("lab"), bin(), 3))
        .await
        .unwrap();
    lab.start_ecus().await.unwrap();
    lab.publish_bytes(
        "ivi/app-2.0.bin",
        "ivi-x",
        "2.0",
        &image_bytes("ivi/app-2.0.bin", 60_000),
        false,
    )
    .await
    .unwrap();
    let criteria = json!({"min_success_pct": 100.0, "max_failure_pct": 100.0, "soak_seconds": 0});
    lab.admin_post("campaigns", &json!({"name": "ivi-2.0", "images": ["ivi/app-2.0.bin"], "waves": "1,100%", "criteria": criteria}))
        .await
        .unwrap();
    for (name, role) in [
        ("otto", "operator"),
        ("sam", "security"),
        ("vera", "viewer"),
    ] {
        lab.admin_post(
            "users",
            &json!({"name": name, "role": role, "password": format!("{name}-password-123")}),
        )
        .await
        .unwrap();
    }

    let driver = start_driver(&chromedriver).await;
    let c = browser(&driver, &chromium, &dir.path().join("profile")).await;
    let ui = Console {
        c,
        base: lab.url.clone(),
        shots: shots.clone(),
    };

    // The operator starts the campaign, pauses and resumes it.
    ui.login("otto").await;
    assert_eq!(ui.campaign_state("ivi-2.0").await, "draft");
    ui.click("button[data-action=start]").await;
    assert_eq!(ui.campaign_state("ivi-2.0").await, "running");
    ui.click("button[data-action=pause]").await;
    assert_eq!(ui.campaign_state("ivi-2.0").await, "paused");
    assert!(ui.source().await.contains("pause by otto from the console"));
    ui.click("button[data-action=resume]").await;
    assert_eq!(ui.campaign_state("ivi-2.0").await, "running");

    // The vehicles install it, wave by wave.
    let mut runs = Vec::new();
    for _ in 0..3 {
        runs = run_fleet(&lab).await;
        if lab.admin_get("campaigns/ivi-2.0").await.unwrap()["campaign"]["state"] == "completed" {
            break;
        }
    }
    assert_eq!(
        ui.campaign_state("ivi-2.0").await,
        "completed",
        "{}",
        runs.join("\n")
    );
    ui.screenshot("campaign").await;
    ui.goto("ui/fleet").await;
    let fleet = ui.text("#fleet").await;
    for v in &lab.vehicles {
        assert!(fleet.contains(&v.vin), "{fleet}");
    }
    assert_eq!(fleet.matches(": ivi/app-2.0.bin").count(), 3, "{fleet}");
    ui.screenshot("fleet").await;
    ui.goto(&format!("ui/vehicles/{}", lab.vehicles[0].vin))
        .await;
    assert!(ui.text("#history").await.contains("ivi/app-2.0.bin"));
    ui.screenshot("vehicle").await;
    ui.goto("ui/images").await;
    assert!(ui.text("#images").await.contains("ivi/app-2.0.bin"));
    ui.screenshot("images").await;

    // A second release, and a hostile mirror that serves its own bytes for it.
    lab.publish_bytes(
        "bcm/fw-2.0.bin",
        "bcm-1",
        "2.0",
        &image_bytes("bcm/fw-2.0.bin", 40_000),
        false,
    )
    .await
    .unwrap();
    lab.admin_post("campaigns", &json!({"name": "bcm-2.0", "images": ["bcm/fw-2.0.bin"], "waves": "100%", "criteria": criteria, "start": true}))
        .await
        .unwrap();
    let tampered = tamper(
        &lab.layout.root().join("public/image/targets"),
        "fw-2.0.bin",
    );
    assert!(tampered > 0, "the mirror's copy of the image was replaced");
    run_fleet(&lab).await;
    let opened = lab.admin_post("vsoc/evaluate", &json!({})).await.unwrap();
    ui.logout().await;

    // The analyst sees the incident, the halted campaign, and acknowledges it.
    ui.login("sam").await;
    ui.goto("ui/vsoc").await;
    let incidents = ui.text("#incidents").await;
    assert!(
        incidents.contains("hash-mismatch reported by 3 vehicles"),
        "{incidents} / {opened}"
    );
    assert!(incidents.contains("bcm/fw-2.0.bin"), "{incidents}");
    assert!(ui.source().await.contains("<svg"), "the timeline");
    ui.screenshot("vsoc").await;
    ui.click("tr[data-kind=fleet-attack] a").await;
    assert_eq!(ui.text("#incident-state").await, "open");
    ui.click("button[data-action=acknowledge]").await;
    assert_eq!(ui.text("#incident-state").await, "acknowledged");
    ui.screenshot("incident").await;
    assert_eq!(ui.campaign_state("bcm-2.0").await, "halted");
    assert!(
        ui.text("#reason").await.contains("incident #"),
        "halted by the V-SOC"
    );
    ui.screenshot("campaign-halted").await;
    ui.goto("ui/audit").await;
    let audit = ui.text("#audit").await;
    assert!(
        audit.contains("incident.acknowledge")
            && audit.contains("campaign.halt")
            && audit.contains("campaign.pause"),
        "{audit}"
    );
    ui.screenshot("audit").await;
    ui.logout().await;

    // A viewer reads, and cannot press the operator's buttons.
    ui.login("vera").await;
    assert_eq!(ui.campaign_state("bcm-2.0").await, "halted");
    let resume = ui.find("button[data-action=resume]").await;
    assert!(
        resume.attr("disabled").await.unwrap().is_some(),
        "disabled for a viewer"
    );
    let _ = resume.click().await;
    assert_eq!(
        ui.campaign_state("bcm-2.0").await,
        "halted",
        "nothing changed"
    );
    ui.logout().await;
    // Signed out: the console sends to the login page.
    ui.goto("ui/fleet").await;
    assert!(ui
        .c
        .current_url()
        .await
        .unwrap()
        .path()
        .ends_with("/ui/login"));

    ui.c.close().await.unwrap();
    drop(driver);
    lab.stop().await.unwrap();
}

/// Replaces every file under `dir` whose name ends with `suffix` by bytes of the same length
/// (a hostile mirror); how many it replaced.
fn tamper(dir: &Path, suffix: &str) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            n += tamper(&path, suffix);
        } else if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .ends_with(suffix)
        {
            let len = std::fs::metadata(&path).unwrap().len() as usize;
            std::fs::write(&path, image_bytes("the mirror's own firmware", len)).unwrap();
            n += 1;
        }
    }
    n
}
