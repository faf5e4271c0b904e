//! `rampart campaign`: staged rollouts over the admin API — create, list, status, and the
//! operator's start, pause, resume and cancel. The server decides (waves, halts); this
//! builds the request and shows the answer.

use std::collections::BTreeMap;

use anyhow::bail;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::admin::tables::table;
use crate::admin::{Api, Connection};
use rampart_cli::out::shorten;

/// `rampart campaign`.
#[derive(Debug, Args)]
pub(crate) struct CampaignArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: CampaignCommand,
}

#[derive(Debug, Subcommand)]
enum CampaignCommand {
    /// Create a campaign: a release, a target set, waves and criteria.
    Create(Box<CreateArgs>),
    /// List campaigns (newest first).
    List,
    /// A campaign's waves, vehicles and log.
    Status {
        /// Campaign name.
        name: String,
        /// Every vehicle, not only those that failed or are under way.
        #[arg(long)]
        all: bool,
    },
    /// Start a draft campaign.
    Start {
        /// Campaign name.
        name: String,
    },
    /// Pause a running campaign: no next wave; given instructions stand.
    Pause {
        /// Campaign name.
        name: String,
        /// Why (kept in the campaign's log).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Resume a paused or halted campaign (instructions a halt took back are given again).
    Resume {
        /// Campaign name.
        name: String,
    },
    /// Cancel a campaign for good: instructions not yet being installed are taken back.
    Cancel {
        /// Campaign name.
        name: String,
        /// Why (kept in the campaign's log).
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Args)]
struct CreateArgs {
    /// Unique name (letters, digits, '.', '_', '-').
    #[arg(long)]
    name: String,
    /// An image of the release (target path; one per hardware ID; repeat or comma-separate).
    #[arg(long = "image", required = true, value_delimiter = ',')]
    images: Vec<String>,
    /// Only these vehicles, in this order (the first are the canaries; repeat or
    /// comma-separate). Without it, every vehicle matching the filters below.
    #[arg(long = "vin", value_delimiter = ',')]
    vins: Vec<String>,
    /// Vehicles with this attribute value, as NAME=VALUE (`model=id4`; repeatable).
    #[arg(long = "where", value_parser = parse_pair)]
    attributes: Vec<(String, String)>,
    /// Vehicles with this tag (repeatable: all must be present).
    #[arg(long = "tag", value_delimiter = ',')]
    tags: Vec<String>,
    /// Vehicles with an ECU of this hardware ID (repeatable: any).
    #[arg(long = "hardware-id", value_delimiter = ',')]
    hardware_ids: Vec<String>,
    /// Cumulative wave sizes, canary first: shares or counts, the last 100% or `all`.
    #[arg(long, default_value = "1%,10%,50%,100%")]
    waves: String,
    /// The next wave starts once this share (%) of a wave installed.
    #[arg(long, default_value_t = 95.0)]
    min_success: f64,
    /// The campaign halts once more than this share (%) of a wave failed or rolled back.
    #[arg(long, default_value_t = 5.0)]
    max_failure: f64,
    /// Wait this long after a wave met its criterion before the next (`90s`, `10m`, `2h`).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    soak: u64,
    /// Maintenance window of vehicles without their own `maintenance_window` attribute
    /// (`"Mon-Fri 01:00-05:00 Europe/Berlin"`): instructed, and installing, only inside it.
    #[arg(long)]
    window: Option<String>,
    /// Ignore maintenance windows (needs --critical).
    #[arg(long)]
    override_windows: bool,
    /// No new instruction after this time (RFC 3339).
    #[arg(long)]
    deadline: Option<String>,
    /// A critical security fix.
    #[arg(long)]
    critical: bool,
    /// The RXSWIN vehicles have once it is installed (UNECE R156).
    #[arg(long)]
    rxswin: Option<String>,
    /// Start it at once (else it stays a draft until `rampart campaign start`).
    #[arg(long)]
    start: bool,
}

fn parse_pair(spec: &str) -> Result<(String, String), String> {
    spec.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{spec:?}: expected NAME=VALUE"))
}

/// Seconds of `90`, `90s`, `10m`, `2h`, `1d`.
fn parse_duration(spec: &str) -> Result<u64, String> {
    let spec = spec.trim();
    let (digits, unit) = spec.split_at(
        spec.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(spec.len()),
    );
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{spec:?}: expected a duration such as 90s, 10m or 2h"))?;
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{spec:?}: the unit must be s, m, h or d")),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("{spec:?} is too long"))
}

/// Runs the campaign command.
pub(crate) fn main(args: CampaignArgs) -> anyhow::Result<()> {
    let api = Api::connect(&args.connection)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let c = api.client();
        let action = |name: &str, what: &str, reason: Option<String>| {
            c.post(api.url(&format!("campaigns/{name}/{what}")))
                .json(&json!({ "reason": reason }))
        };
        let (request, show) = match args.command {
            CampaignCommand::Create(a) => {
                if !(a.vins.is_empty() || (a.attributes.is_empty() && a.tags.is_empty())) {
                    bail!("give either --vin or the filters (--where, --tag), not both");
                }
                let body = json!({
                    "name": a.name,
                    "images": a.images,
                    "target": {
                        "vins": a.vins,
                        "attributes": a.attributes.into_iter().collect::<BTreeMap<_, _>>(),
                        "tags": a.tags,
                        "hardware_ids": a.hardware_ids,
                    },
                    "waves": a.waves,
                    "criteria": {
                        "min_success_pct": a.min_success,
                        "max_failure_pct": a.max_failure,
                        "soak_seconds": a.soak,
                    },
                    "window": a.window,
                    "override_windows": a.override_windows,
                    "deadline": a.deadline,
                    "critical": a.critical,
                    "rxswin": a.rxswin,
                    "start": a.start,
                });
                (c.post(api.url("campaigns")).json(&body), Show::Summary)
            }
            CampaignCommand::List => (c.get(api.url("campaigns")), Show::List),
            CampaignCommand::Status { name, all } => (
                c.get(api.url(&format!("campaigns/{name}"))),
                Show::Status { all },
            ),
            CampaignCommand::Start { name } => (action(&name, "start", None), Show::Summary),
            CampaignCommand::Resume { name } => (action(&name, "resume", None), Show::Summary),
            CampaignCommand::Pause { name, reason } => {
                (action(&name, "pause", reason), Show::Summary)
            }
            CampaignCommand::Cancel { name, reason } => {
                (action(&name, "cancel", reason), Show::Summary)
            }
        };
        let body = api.send(request).await?;
        if args.connection.json {
            rampart_cli::say!("{}", serde_json::to_string_pretty(&body)?);
        } else {
            let text = match show {
                Show::Summary => summary(&body),
                Show::List => list(&body),
                Show::Status { all } => status(&body, all),
            };
            rampart_cli::say!("{text}");
        }
        Ok(())
    })
}

/// How an answer is shown.
enum Show {
    Summary,
    List,
    Status { all: bool },
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// `wave 2 of 4` (or `not started`).
fn wave_of(c: &Value) -> String {
    let wave = c.get("wave").and_then(Value::as_i64).unwrap_or(-1);
    let waves = c
        .get("wave_sizes")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    if wave < 0 {
        format!("not started ({waves} waves)")
    } else {
        format!("wave {} of {waves}", wave + 1)
    }
}

/// One campaign in a line or two.
fn summary(c: &Value) -> String {
    let mut out = format!(
        "campaign {}: {}, {}",
        text(c, "name"),
        text(c, "state"),
        wave_of(c)
    );
    if let Some(reason) = c.get("reason").and_then(Value::as_str) {
        out.push_str(&format!("\n  why: {reason}"));
    }
    if let (Some(met), "running") = (
        c.get("wave_met_at").and_then(Value::as_str),
        text(c, "state"),
    ) {
        let soak = c
            .pointer("/spec/criteria/soak_seconds")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        out.push_str(&format!(
            "\n  the wave met its success criterion at {met}; it soaks {soak} s before the next step"
        ));
    }
    out
}

fn list(body: &Value) -> String {
    let Some(items) = body.as_array().filter(|a| !a.is_empty()) else {
        return "no campaigns".into();
    };
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|c| {
            let images = c
                .get("spec")
                .and_then(|s| s.get("images"))
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            vec![
                text(c, "name").to_owned(),
                text(c, "state").to_owned(),
                wave_of(c),
                images,
                shorten(c.get("reason").and_then(Value::as_str).unwrap_or("-"), 80),
            ]
        })
        .collect();
    table(&["name", "state", "wave", "images", "why"], &rows)
}

fn status(body: &Value, all: bool) -> String {
    let empty = Value::Null;
    let c = body.get("campaign").unwrap_or(&empty);
    let mut out = vec![summary(c)];
    let waves: Vec<Vec<String>> = body
        .get("waves")
        .and_then(Value::as_array)
        .map(|w| {
            w.iter()
                .map(|w| {
                    let counts = w.get("counts").unwrap_or(&empty);
                    let by = counts.get("by_progress").and_then(Value::as_object);
                    let n = |k: &str| {
                        by.and_then(|b| b.get(k))
                            .and_then(Value::as_u64)
                            .unwrap_or(0)
                    };
                    let total = counts.get("vehicles").and_then(Value::as_u64).unwrap_or(0);
                    let bar = progress_bar(n("installed"), total);
                    vec![
                        w.get("wave")
                            .and_then(Value::as_u64)
                            .unwrap_or(0)
                            .to_string(),
                        if w.get("started").and_then(Value::as_bool) == Some(true) {
                            "started".into()
                        } else {
                            "waiting".into()
                        },
                        total.to_string(),
                        format!("{bar} {}", n("installed")),
                        (n("instructed") + n("downloading") + n("installing")).to_string(),
                        n("failed").to_string(),
                        n("rolled-back").to_string(),
                        n("withdrawn").to_string(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    out.push(String::new());
    out.push(table(
        &[
            "wave",
            "state",
            "vehicles",
            "installed",
            "under way",
            "failed",
            "rolled back",
            "withdrawn",
        ],
        &waves,
    ));
    let vehicles: Vec<Vec<String>> = body
        .get("vehicles")
        .and_then(Value::as_array)
        .map(|v| {
            v.iter()
                .filter(|v| all || !matches!(text(v, "progress"), "pending" | "installed"))
                .map(|v| {
                    let errors: Vec<String> = v
                        .get("ecus")
                        .and_then(Value::as_array)
                        .map(|e| {
                            e.iter()
                                .map(|e| {
                                    let mut s =
                                        format!("{} {}", text(e, "ecu_id"), text(e, "progress"));
                                    if let Some(err) = e.get("error").and_then(Value::as_str) {
                                        s.push_str(&format!(" ({err})"));
                                    }
                                    s
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    vec![
                        text(v, "vin").to_owned(),
                        v.get("wave")
                            .and_then(Value::as_u64)
                            .unwrap_or(0)
                            .to_string(),
                        text(v, "progress").to_owned(),
                        shorten(&errors.join("; "), 100),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    if !vehicles.is_empty() {
        out.push(String::new());
        out.push(table(&["vin", "wave", "progress", "ECUs"], &vehicles));
    }
    if let Some(log) = body.get("log").and_then(Value::as_array) {
        out.push(String::new());
        for l in log {
            out.push(format!(
                "{}  {:<8}  {:<9}  {}",
                text(l, "at"),
                text(l, "actor"),
                text(l, "action"),
                text(l, "detail")
            ));
        }
    }
    out.join("\n")
}

/// `[#####-----]`: a share of ten.
fn progress_bar(done: u64, total: u64) -> String {
    let filled = (done.saturating_mul(10).checked_div(total).unwrap_or(0) as usize).min(10);
    format!("[{}{}]", "#".repeat(filled), "-".repeat(10 - filled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_and_refuse_the_rest() {
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("10m"), Ok(600));
        assert_eq!(parse_duration("2h"), Ok(7200));
        assert!(parse_duration("10 minutes").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn a_progress_bar_shows_tenths() {
        assert_eq!(progress_bar(0, 0), "[----------]");
        assert_eq!(progress_bar(5, 10), "[#####-----]");
        assert_eq!(progress_bar(10, 10), "[##########]");
    }
}
