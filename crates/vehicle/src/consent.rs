//! Asking the owner before installing.
//!
//! UNECE R156 §7.2 asks that, before an update, the user be told what it is for, what it
//! changes, how long it takes and what is unavailable meanwhile — and afterwards whether it
//! worked. [`UpdateNotice`] carries exactly that; the answer comes from a terminal prompt,
//! a policy (`auto`/`deny`), or an answer file a head unit writes (`file:PATH`).

use std::sync::Arc;

use crate::report::Reporter;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How consent is obtained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsentMode {
    /// Ask on the terminal (declines when there is none).
    Ask,
    /// Policy: always yes (fleet vehicles, CI, the demo's `--yes`).
    Auto,
    /// Policy: always no.
    Deny,
    /// A head unit answers: the request is written to `PATH.request.json`, the answer
    /// (`{"approve": true|false}`) read from `PATH`.
    File(PathBuf),
}

impl std::str::FromStr for ConsentMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ask" => Ok(ConsentMode::Ask),
            "auto" => Ok(ConsentMode::Auto),
            "deny" => Ok(ConsentMode::Deny),
            other => match other.strip_prefix("file:") {
                Some("") => Err(Error::Config(
                    "consent file: needs a path (file:PATH, see docs/consent.md)".into(),
                )),
                // Relative to where the command runs, fixed now: the request and the answer
                // are found at the same place whatever changes later.
                Some(p) => std::path::absolute(p)
                    .map(ConsentMode::File)
                    .map_err(|e| Error::io(p, e)),
                None => Err(Error::Config(format!(
                    "consent {other:?}: use ask, auto, deny or file:PATH"
                ))),
            },
        }
    }
}

/// What the owner is told about one update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateNotice {
    /// ECU that will be updated.
    pub ecu_id: String,
    /// What the ECU does, in words ("infotainment (IVI)").
    pub ecu_description: String,
    /// Image name.
    pub target: String,
    /// Version being installed, if the repository says.
    pub version: Option<String>,
    /// What the update is for (release notes), if known.
    pub purpose: String,
    /// Download size.
    pub size_bytes: u64,
    /// The whole image's size when a delta is downloaded instead (what the delta saves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_bytes: Option<u64>,
    /// Estimated duration of download and installation.
    pub estimated_seconds: u64,
    /// Functions unavailable during the installation.
    pub unavailable: String,
}

impl UpdateNotice {
    /// The text shown to the owner.
    pub fn render(&self) -> String {
        let changes = match &self.version {
            Some(v) => format!("{} → version {v}", self.target),
            None => format!("installs {}", self.target),
        };
        format!(
            "  {} on {} ({})\n    for:          {}\n    changes:      {changes}\n    size:         {}\n    takes about:  {}\n    unavailable:  {}\n",
            self.target,
            self.ecu_id,
            self.ecu_description,
            self.purpose,
            match self.full_bytes {
                Some(full) if full > self.size_bytes => format!(
                    "{} (a delta; the whole image is {}, {} saved)",
                    human_bytes(self.size_bytes),
                    human_bytes(full),
                    human_bytes(full - self.size_bytes)
                ),
                _ => human_bytes(self.size_bytes),
            },
            human_duration(self.estimated_seconds),
            self.unavailable
        )
    }
}

/// How long installing `size` bytes takes when the publisher did not say: writing and
/// verifying a slot at a conservative 1 MiB/s, and about 10 s to reboot into it.
pub fn estimated_install_seconds(size: u64) -> u64 {
    10 + size.div_ceil(1024 * 1024)
}

/// Bytes for people.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS.get(u).copied().unwrap_or("B"))
    }
}

fn human_duration(secs: u64) -> String {
    if secs < 90 {
        format!("{secs} s")
    } else {
        format!("{} min", secs.div_ceil(60))
    }
}

/// The owner's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Approved,
    /// Do not install; why.
    Declined(String),
}

#[derive(Deserialize)]
struct Answer {
    approve: bool,
}

/// How long a head unit has to answer (`file:PATH`).
pub const HEAD_UNIT_WAIT: Duration = Duration::from_secs(300);

/// What an answer file holds (docs/consent.md).
const ANSWER_FORMAT: &str = r#"{"approve": true} or {"approve": false}"#;

/// Asks for consent to the listed updates: by policy, through `reporter` (the owner at a
/// terminal), or through a head unit's answer file (waiting up to [`HEAD_UNIT_WAIT`]).
pub async fn ask(
    mode: &ConsentMode,
    notices: &[UpdateNotice],
    reporter: Arc<dyn Reporter>,
) -> Result<Decision> {
    ask_within(mode, notices, reporter, HEAD_UNIT_WAIT).await
}

/// [`ask`], a head unit having `wait` to answer.
pub async fn ask_within(
    mode: &ConsentMode,
    notices: &[UpdateNotice],
    reporter: Arc<dyn Reporter>,
    wait: Duration,
) -> Result<Decision> {
    let text: String = notices.iter().map(UpdateNotice::render).collect();
    match mode {
        ConsentMode::Auto => {
            reporter.say(&format!("Update available (approved by policy):\n{text}"));
            Ok(Decision::Approved)
        }
        ConsentMode::Deny => Ok(Decision::Declined("declined by policy".into())),
        ConsentMode::Ask => {
            let question = format!("Update available:\n{text}Install now?");
            let answer = tokio::task::spawn_blocking(move || reporter.ask(&question))
                .await
                .map_err(|e| Error::Config(e.to_string()))?;
            Ok(match answer {
                Some(true) => Decision::Approved,
                Some(false) => Decision::Declined("the owner said no".into()),
                None => Decision::Declined(
                    "no terminal to ask the owner (use --consent auto or file:PATH)".into(),
                ),
            })
        }
        ConsentMode::File(path) => head_unit(path, notices, reporter.as_ref(), wait).await,
    }
}

/// The head unit's turn: the request goes to `PATH.request.json`, the answer is awaited in
/// `PATH` (docs/consent.md). The request is withdrawn when the wait ends either way.
async fn head_unit(
    path: &std::path::Path,
    notices: &[UpdateNotice],
    reporter: &dyn Reporter,
    wait: Duration,
) -> Result<Decision> {
    let request = PathBuf::from(format!("{}.request.json", path.display()));
    let body = serde_json::to_vec_pretty(notices).map_err(|e| Error::Config(e.to_string()))?;
    rampart_client::store::write_atomic(&request, &body)?;
    reporter.say(&format!(
        "waiting for the head unit's answer in {} ({ANSWER_FORMAT}; the request is in {}), up to {} s",
        path.display(),
        request.display(),
        wait.as_secs()
    ));
    let started = std::time::Instant::now();
    let result = loop {
        if let Ok(bytes) = std::fs::read(path) {
            let _ = std::fs::remove_file(path);
            break match serde_json::from_slice::<Answer>(&bytes) {
                Ok(a) if a.approve => Ok(Decision::Approved),
                Ok(_) => Ok(Decision::Declined(
                    "the owner declined on the head unit".into(),
                )),
                Err(e) => Err(Error::Config(format!(
                    "{}: not a consent answer (expected {ANSWER_FORMAT}): {e}",
                    path.display()
                ))),
            };
        }
        if started.elapsed() >= wait {
            break Ok(Decision::Declined(format!(
                "no answer from the head unit in {} within {} s",
                path.display(),
                wait.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = std::fs::remove_file(&request);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice() -> UpdateNotice {
        UpdateNotice {
            ecu_id: "IVI-1".into(),
            ecu_description: "infotainment".into(),
            target: "ivi/app-3.bin".into(),
            version: Some("3.0".into()),
            purpose: "navigation fixes".into(),
            size_bytes: 5 * 1024 * 1024,
            full_bytes: None,
            estimated_seconds: 40,
            unavailable: "navigation and media".into(),
        }
    }

    #[test]
    fn a_notice_without_a_version_names_the_image_and_the_estimate_grows_with_size() {
        let mut n = notice();
        n.version = None;
        let t = n.render();
        assert!(t.contains("changes:      installs ivi/app-3.bin"), "{t}");
        assert!(!t.contains("unnamed"), "{t}");
        assert_eq!(estimated_install_seconds(0), 10);
        assert_eq!(estimated_install_seconds(300 * 1024), 11);
        assert_eq!(estimated_install_seconds(64 * 1024 * 1024), 74);
    }

    #[test]
    fn notice_says_what_r156_asks() {
        let t = notice().render();
        for part in [
            "navigation fixes",
            "version 3.0",
            "5.0 MiB",
            "40 s",
            "navigation and media",
        ] {
            assert!(t.contains(part), "{part} missing in {t}");
        }
    }

    /// Records what it is told and answers the owner's question as set.
    #[derive(Default)]
    struct Owner {
        answer: Option<bool>,
        heard: std::sync::Mutex<Vec<String>>,
    }

    impl Reporter for Owner {
        fn say(&self, line: &str) {
            self.heard.lock().unwrap().push(line.to_owned());
        }
        fn transfer(&self, label: &str, len: u64) -> Box<dyn crate::report::Progress> {
            crate::report::LogReporter.transfer(label, len)
        }
        fn ask(&self, question: &str) -> Option<bool> {
            self.heard.lock().unwrap().push(question.to_owned());
            self.answer
        }
    }

    #[tokio::test]
    async fn policies_decide_without_asking() {
        let owner = Arc::new(Owner::default());
        assert_eq!(
            ask(&ConsentMode::Auto, &[notice()], owner.clone())
                .await
                .unwrap(),
            Decision::Approved
        );
        // The owner is told what the policy approved (R156: informed), not asked.
        let heard = owner.heard.lock().unwrap().clone();
        assert_eq!(heard.len(), 1);
        assert!(heard[0].contains("approved by policy") && heard[0].contains("navigation fixes"));
        assert!(matches!(
            ask(&ConsentMode::Deny, &[notice()], owner.clone())
                .await
                .unwrap(),
            Decision::Declined(_)
        ));
    }

    #[tokio::test]
    async fn the_owner_is_asked_through_the_reporter() {
        for (answer, approved) in [
            (Some(true), Some(true)),
            (Some(false), Some(false)),
            (None, None),
        ] {
            let owner = Arc::new(Owner {
                answer,
                ..Owner::default()
            });
            let d = ask(&ConsentMode::Ask, &[notice()], owner.clone())
                .await
                .unwrap();
            match (approved, &d) {
                (Some(true), Decision::Approved) => {}
                (Some(false), Decision::Declined(why)) => assert!(why.contains("said no")),
                (None, Decision::Declined(why)) => assert!(why.contains("no terminal")),
                other => panic!("{answer:?}: {other:?}"),
            }
            let heard = owner.heard.lock().unwrap().clone();
            assert!(heard
                .iter()
                .any(|q| q.contains("Install now?") && q.contains("5.0 MiB")));
        }
    }

    #[tokio::test]
    async fn head_unit_answers_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let answer = dir.path().join("answer.json");
        let a = answer.clone();
        let writer = tokio::spawn(async move {
            let req = PathBuf::from(format!("{}.request.json", a.display()));
            while !req.exists() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            std::fs::write(&a, br#"{"approve": true}"#).unwrap();
        });
        let d = ask(
            &ConsentMode::File(answer),
            &[notice()],
            Arc::new(crate::report::LogReporter),
        )
        .await
        .unwrap();
        writer.await.unwrap();
        assert_eq!(d, Decision::Approved);
    }

    #[test]
    fn modes_parse() {
        assert_eq!(
            "file:/x".parse::<ConsentMode>().unwrap(),
            ConsentMode::File("/x".into())
        );
        assert!("maybe".parse::<ConsentMode>().is_err());
        assert!("file:".parse::<ConsentMode>().is_err());
    }

    #[test]
    fn a_relative_answer_file_is_taken_from_the_current_folder() {
        let mode = "file:answer.json".parse::<ConsentMode>().unwrap();
        let here = std::env::current_dir().unwrap();
        assert_eq!(mode, ConsentMode::File(here.join("answer.json")));
    }

    #[tokio::test]
    async fn a_malformed_answer_says_what_an_answer_looks_like() {
        let dir = tempfile::tempdir().unwrap();
        let answer = dir.path().join("answer.json");
        std::fs::write(&answer, b"yes please").unwrap();
        let err = ask_within(
            &ConsentMode::File(answer.clone()),
            &[notice()],
            Arc::new(crate::report::LogReporter),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&answer.display().to_string()), "{text}");
        assert!(text.contains(r#"{"approve": true}"#), "{text}");
    }

    #[tokio::test]
    async fn waiting_for_the_head_unit_is_said_and_ends_with_a_decline() {
        let dir = tempfile::tempdir().unwrap();
        let answer = dir.path().join("answer.json");
        let owner = Arc::new(Owner::default());
        let d = ask_within(
            &ConsentMode::File(answer.clone()),
            &[notice()],
            owner.clone(),
            Duration::from_millis(600),
        )
        .await
        .unwrap();
        match d {
            Decision::Declined(why) => assert!(why.contains("no answer"), "{why}"),
            other => panic!("{other:?}"),
        }
        let heard = owner.heard.lock().unwrap().clone();
        assert!(
            heard
                .iter()
                .any(|l| l.contains("waiting for the head unit") && l.contains("answer.json")),
            "{heard:?}"
        );
        // The request is withdrawn: a late head unit does not answer a stale question.
        assert!(!dir.path().join("answer.json.request.json").exists());
    }
}
