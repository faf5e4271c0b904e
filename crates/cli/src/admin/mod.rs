//! `rampart admin`: the admin API over HTTPS (inventory, assignments, security events).
//! On the server machine it finds the URL, CA and token in the data directory.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use rampart_server::config::Config;
use rampart_server::db::{NewEcu, NewVehicle};
use rampart_server::layout::Layout;
use serde_json::Value;

pub(crate) mod tables;

/// Connection options of the admin client (shared by `rampart admin` and `rampart campaign`).
#[derive(Debug, Args)]
pub(crate) struct Connection {
    /// Data directory (for defaults of --server, --ca and --token-file).
    #[arg(
        long,
        global = true,
        env = "RAMPART_DATA_DIR",
        default_value = "rampart-data"
    )]
    data_dir: PathBuf,
    /// Server base URL (default: from the data directory's configuration).
    #[arg(long, global = true)]
    server: Option<String>,
    /// CA certificate to trust (default: DATA_DIR/pki/ca.pem).
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    /// File holding the admin token (default: DATA_DIR/pki/admin-token).
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// Print the server's JSON answer (for tools) instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

/// `rampart admin`.
#[derive(Debug, Args)]
pub(crate) struct AdminArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: AdminCommand,
}

/// An admin API client: the server's URL, a client trusting its CA, the token.
pub(crate) struct Api {
    server: String,
    client: reqwest::Client,
    auth: String,
}

impl Api {
    /// From the connection options (defaults from the data directory).
    pub(crate) fn connect(c: &Connection) -> anyhow::Result<Api> {
        let layout = Layout::new(&c.data_dir);
        let server = match &c.server {
            Some(s) => s.trim_end_matches('/').to_owned(),
            None => {
                let config = Config::load(&layout)?;
                let scheme = if config.tls { "https" } else { "http" };
                format!("{scheme}://{}", config.listen)
            }
        };
        let token_file = c
            .token_file
            .clone()
            .unwrap_or_else(|| layout.pki().join("admin-token"));
        let token = std::fs::read_to_string(&token_file)
            .with_context(|| format!("reading {}", token_file.display()))?;
        let mut builder = reqwest::Client::builder();
        if server.starts_with("https") {
            let ca = c.ca.clone().unwrap_or_else(|| layout.pki().join("ca.pem"));
            let pem = std::fs::read(&ca).with_context(|| format!("reading {}", ca.display()))?;
            builder = builder.tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem)?);
        }
        Ok(Api {
            server,
            client: builder.build()?,
            auth: format!("Bearer {}", token.trim()),
        })
    }

    /// The URL of an admin route (`vehicles` → `…/api/v1/vehicles`).
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}/api/v1/{path}", self.server)
    }

    /// The client, to build a request with.
    pub(crate) fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends `request` with the token; the answer's JSON, or the server's refusal in its
    /// words and with its rule.
    pub(crate) async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let text = self.send_text(request).await?;
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Like [`Api::send`], for an answer that is not JSON (CSV).
    pub(crate) async fn send_text(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<String> {
        let response = request
            .header("authorization", &self.auth)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!(rampart_client::diagnose::explain(&e)))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let error = body.get("error").and_then(Value::as_str).unwrap_or("");
            let rule = body.get("rule").and_then(Value::as_str).unwrap_or("");
            bail!("the server refused ({status}, {rule}): {error}");
        }
        Ok(text)
    }
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Register a vehicle and its ECUs.
    Register {
        /// VIN.
        #[arg(long)]
        vin: String,
        /// ECU ID of the primary (T-BOX).
        #[arg(long)]
        primary: String,
        /// An ECU as ID,HARDWARE_ID,KEY_FILE[,full|partial[,X25519_PUBLIC_HEX]] (repeatable).
        #[arg(long = "ecu", required = true)]
        ecus: Vec<String>,
        /// What the vehicle is, as NAME=VALUE (`model=id4`, `region=eu`; repeatable).
        #[arg(long = "attribute", value_parser = parse_attribute)]
        attributes: Vec<(String, String)>,
        /// A label (`fleet-a`; repeatable, or comma-separated).
        #[arg(long = "tag", value_delimiter = ',')]
        tags: Vec<String>,
    },
    /// Replace a vehicle's attributes and tags (what campaigns choose vehicles by).
    Label {
        /// VIN.
        #[arg(long)]
        vin: String,
        /// NAME=VALUE (repeatable).
        #[arg(long = "attribute", value_parser = parse_attribute)]
        attributes: Vec<(String, String)>,
        /// A label (repeatable, or comma-separated).
        #[arg(long = "tag", value_delimiter = ',')]
        tags: Vec<String>,
    },
    /// Assign a target to one ECU, or to every ECU of a hardware ID in some vehicles.
    Assign {
        /// Target path in the image repository.
        #[arg(long)]
        target: String,
        /// Vehicle(s): repeat, or separate with commas.
        #[arg(long = "vin", required = true, value_delimiter = ',')]
        vins: Vec<String>,
        /// One ECU (with one VIN).
        #[arg(long)]
        ecu: Option<String>,
        /// Every ECU of this hardware ID.
        #[arg(long)]
        hardware_id: Option<String>,
        /// Send encrypted to each ECU.
        #[arg(long)]
        encrypt: bool,
    },
    /// Take a vehicle out of the fleet (kept for audit; the director refuses it from then on).
    Remove {
        /// VIN.
        #[arg(long)]
        vin: String,
        /// Why ("scrapped", "stolen", …), recorded with it.
        #[arg(long)]
        reason: String,
    },
    /// List the fleet's vehicles: ECUs, what they run, last seen (a page at a time).
    Vehicles {
        /// The page after this VIN.
        #[arg(long, default_value = "")]
        after: String,
        /// At most this many vehicles.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Show one vehicle.
    Vehicle {
        /// VIN.
        vin: String,
    },
    /// List assignments.
    Assignments {
        /// Only this vehicle.
        #[arg(long)]
        vin: Option<String>,
    },
    /// List security events (newest first).
    Events {
        /// Only this vehicle.
        #[arg(long)]
        vin: Option<String>,
        /// Only this rule.
        #[arg(long)]
        rule: Option<String>,
    },
    /// List the image repository's targets.
    Images,
    /// A vehicle's RXSWIN (UNECE R156) and how it changed.
    Rxswin {
        /// VIN.
        #[arg(long)]
        vin: String,
    },
    /// Console accounts: add (password from --password-file or standard input), list,
    /// disable.
    #[command(subcommand)]
    User(UserCommand),
    /// V-SOC incidents (newest first), or one with its evidence; acknowledge or resolve it.
    Incidents {
        /// One incident, whole.
        id: Option<i64>,
        /// Only incidents in this state (open, acknowledged, resolved).
        #[arg(long)]
        state: Option<String>,
        /// Only incidents affecting this vehicle.
        #[arg(long)]
        vin: Option<String>,
        /// Acknowledge incident ID.
        #[arg(long, requires = "id", conflicts_with = "resolve")]
        acknowledge: bool,
        /// Resolve incident ID.
        #[arg(long, requires = "id")]
        resolve: bool,
    },
    /// Quarantine a vehicle: the director gives it no instructions until it is released.
    Quarantine {
        /// VIN.
        #[arg(long)]
        vin: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
    },
    /// Release a quarantined vehicle.
    Release {
        /// VIN.
        #[arg(long)]
        vin: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
    },
    /// Upload the signed reports a vehicle wrote while updating from an offline bundle
    /// (`rampart vehicle --from-bundle`): each is checked as a check-in. Exit status 1 if one
    /// was refused (a replay: imported before, or the vehicle already checked in online).
    ImportReports {
        /// The report file (JSON lines, `BUNDLE.reports.jsonl`).
        file: std::path::PathBuf,
    },
    /// Incidents and security events as JSON lines, for a SIEM.
    Export {
        /// Events with an ID above this.
        #[arg(long, default_value_t = 0)]
        after_event: i64,
    },
    /// The audit log (who changed what, when), newest first.
    Audit {
        /// Only this actor.
        #[arg(long)]
        actor: Option<String>,
    },
    /// Update records for auditors (vehicle, ECU, from → to, RXSWIN, campaign, time,
    /// result), oldest first.
    Records {
        /// Only this vehicle.
        #[arg(long)]
        vin: Option<String>,
        /// Only this campaign.
        #[arg(long)]
        campaign: Option<String>,
        /// Print CSV (RFC 4180) instead of a table.
        #[arg(long)]
        csv: bool,
        /// At most this many.
        #[arg(long, default_value_t = 100_000)]
        limit: u32,
    },
}

/// `rampart admin user …`
#[derive(Debug, clap::Subcommand)]
enum UserCommand {
    /// Create a console account.
    Add {
        /// Login name.
        name: String,
        /// viewer (reads), operator (campaigns) or security (incidents, quarantine).
        #[arg(long)]
        role: String,
        /// File holding the password (at least 12 characters); else it is read from
        /// standard input (one line).
        #[arg(long)]
        password_file: Option<std::path::PathBuf>,
    },
    /// List console accounts.
    List,
    /// Disable an account and end its sessions.
    Disable {
        /// Login name.
        name: String,
    },
}

fn read_password(file: Option<&std::path::Path>) -> anyhow::Result<String> {
    let text = match file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the password from {}", path.display()))?,
        None => {
            use std::io::{BufRead, IsTerminal};
            if std::io::stdin().is_terminal() {
                rampart_cli::say_err!("password (input is shown; prefer --password-file): ");
            }
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            line
        }
    };
    let password = text.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        bail!("no password given (--password-file FILE, or one line on standard input)");
    }
    Ok(password)
}

/// `NAME=VALUE` of `--attribute`.
fn parse_attribute(spec: &str) -> Result<(String, String), String> {
    spec.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{spec:?}: expected NAME=VALUE"))
}

fn parse_ecu(spec: &str) -> anyhow::Result<NewEcu> {
    let parts: Vec<&str> = spec.split(',').collect();
    let (Some(id), Some(hw), Some(key)) = (parts.first(), parts.get(1), parts.get(2)) else {
        bail!("--ecu {spec:?}: expected ID,HARDWARE_ID,KEY_FILE[,full|partial[,X25519_HEX]]");
    };
    let public_key = rampart_server::keys::read_public_key(std::path::Path::new(key))?;
    Ok(NewEcu {
        ecu_id: (*id).to_owned(),
        hardware_id: (*hw).to_owned(),
        public_key: serde_json::to_value(public_key)?,
        encryption_key: parts.get(4).map(|s| (*s).to_owned()),
        verification: parts.get(3).copied().unwrap_or("full").to_owned(),
    })
}

/// Runs the admin command.
pub(crate) fn main(args: AdminArgs) -> anyhow::Result<()> {
    let api = Api::connect(&args.connection)?;
    let client = api.client().clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let url = |path: &str| api.url(path);
        let render: fn(&Value) -> anyhow::Result<String> = match &args.command {
            AdminCommand::Events { .. } => tables::events,
            AdminCommand::Assignments { .. } | AdminCommand::Assign { .. } => |b| {
                // `assign` answers the new assignment IDs.
                if b.as_array().is_some_and(|a| a.iter().all(Value::is_i64)) {
                    Ok(format!("assignment(s) created: {}", b.as_array().map(|a| a.iter().map(Value::to_string).collect::<Vec<_>>().join(", ")).unwrap_or_default()))
                } else {
                    tables::assignments(b)
                }
            },
            AdminCommand::Vehicle { .. } | AdminCommand::Label { .. } => tables::vehicle,
            AdminCommand::Vehicles { .. } => tables::vehicles,
            AdminCommand::Images => tables::images,
            AdminCommand::Rxswin { .. } => tables::rxswin,
            AdminCommand::Incidents { id: Some(_), .. } => tables::incident,
            AdminCommand::Incidents { .. } => tables::incidents,
            AdminCommand::User(UserCommand::List) => tables::users,
            AdminCommand::User(UserCommand::Add { .. }) => |b| {
                Ok(format!("user {} added ({})", b.get("name").and_then(Value::as_str).unwrap_or(""), b.get("role").and_then(Value::as_str).unwrap_or("")))
            },
            AdminCommand::User(UserCommand::Disable { .. }) => |b| {
                Ok(format!("user {} disabled; their sessions ended", b.get("name").and_then(Value::as_str).unwrap_or("")))
            },
            AdminCommand::Quarantine { .. } | AdminCommand::Release { .. } => |b| {
                Ok(format!("{}: {}", b.get("vin").and_then(Value::as_str).unwrap_or(""), b.get("action").and_then(Value::as_str).unwrap_or("")))
            },
            AdminCommand::Audit { .. } => tables::audit,
            AdminCommand::Export { .. } | AdminCommand::ImportReports { .. } => |b| Ok(b.to_string()),
            AdminCommand::Records { .. } => tables::records,
            AdminCommand::Register { .. } => |b| {
                Ok(format!("registered {}", b.get("vin").and_then(Value::as_str).unwrap_or("")))
            },
            AdminCommand::Remove { .. } => |b| {
                Ok(format!(
                    "removed {} from the fleet at {} (kept for audit)",
                    b.get("vin").and_then(Value::as_str).unwrap_or(""),
                    b.get("removed_at").and_then(Value::as_str).unwrap_or("")
                ))
            },
        };
        let request = match args.command {
            AdminCommand::Register { vin, primary, ecus, attributes, tags } => {
                let ecus = ecus.iter().map(|e| parse_ecu(e)).collect::<anyhow::Result<Vec<_>>>()?;
                let body = NewVehicle {
                    vin,
                    primary_ecu: primary,
                    ecus,
                    attributes: attributes.into_iter().collect(),
                    tags: tags.into_iter().collect(),
                };
                client.post(url("vehicles")).json(&body)
            }
            AdminCommand::Label { vin, attributes, tags } => client
                .put(url(&format!("vehicles/{vin}/labels")))
                .json(&serde_json::json!({
                    "attributes": attributes.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
                    "tags": tags,
                })),
            AdminCommand::Assign { target, vins, ecu, hardware_id, encrypt } => client.post(url("assignments")).json(&serde_json::json!({
                "target": target, "vins": vins, "ecu_id": ecu, "hardware_id": hardware_id, "encrypt": encrypt
            })),
            AdminCommand::Remove { vin, reason } => client
                .delete(url(&format!("vehicles/{vin}")))
                .query(&[("reason", reason)]),
            AdminCommand::Vehicles { after, limit } => client.get(url("vehicles")).query(&[
                ("detail", "true".to_owned()),
                ("after", after),
                ("limit", limit.to_string()),
            ]),
            AdminCommand::Vehicle { vin } => client.get(url(&format!("vehicles/{vin}"))),
            AdminCommand::Assignments { vin } => client.get(url("assignments")).query(&[("vin", vin.unwrap_or_default())]),
            AdminCommand::Events { vin, rule } => client
                .get(url("events"))
                .query(&[("vin", vin.unwrap_or_default()), ("rule", rule.unwrap_or_default())]),
            AdminCommand::Images => client.get(url("images")),
            AdminCommand::Rxswin { vin } => client.get(url(&format!("vehicles/{vin}/rxswin"))),
            AdminCommand::User(UserCommand::Add { name, role, password_file }) => {
                let password = read_password(password_file.as_deref())?;
                client.post(url("users")).json(&serde_json::json!({"name": name, "role": role, "password": password}))
            }
            AdminCommand::User(UserCommand::List) => client.get(url("users")),
            AdminCommand::User(UserCommand::Disable { name }) => client.delete(url(&format!("users/{name}"))),
            AdminCommand::Incidents { id: Some(id), acknowledge, resolve, .. } => {
                if acknowledge || resolve {
                    client.post(url(&format!("incidents/{id}/{}", if resolve { "resolve" } else { "acknowledge" })))
                } else {
                    client.get(url(&format!("incidents/{id}")))
                }
            }
            AdminCommand::Incidents { id: None, state, vin, .. } => client
                .get(url("incidents"))
                .query(&[("state", state.unwrap_or_default()), ("vin", vin.unwrap_or_default())]),
            AdminCommand::Quarantine { vin, reason } => client
                .post(url(&format!("vehicles/{vin}/quarantine")))
                .json(&serde_json::json!({"reason": reason})),
            AdminCommand::Release { vin, reason } => client
                .post(url(&format!("vehicles/{vin}/release")))
                .json(&serde_json::json!({"reason": reason})),
            AdminCommand::Audit { actor } => client.get(url("audit")).query(&[("actor", actor.unwrap_or_default())]),
            AdminCommand::ImportReports { file } => {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                let (mut accepted, mut refused) = (0, 0);
                for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                    let report: Value = serde_json::from_str(line)
                        .with_context(|| format!("{} line {}: not JSON", file.display(), n + 1))?;
                    let vin = report.get("vin").and_then(Value::as_str).unwrap_or("?").to_owned();
                    let counter = report
                        .pointer("/manifest/signed/manifest_counter")
                        .and_then(Value::as_u64)
                        .unwrap_or(0);
                    match api.send(client.post(url("offline-reports")).json(&report)).await {
                        Ok(answer) => {
                            accepted += 1;
                            rampart_cli::say!(
                                "{vin}: manifest {counter} accepted (director targets v{})",
                                answer.get("director_targets_version").and_then(Value::as_u64).unwrap_or(0)
                            );
                        }
                        Err(e) => {
                            refused += 1;
                            rampart_cli::say!("{vin}: manifest {counter} refused: {e:#}");
                        }
                    }
                }
                rampart_cli::say!("{accepted} report(s) imported, {refused} refused");
                if refused > 0 {
                    anyhow::bail!("{refused} report(s) refused");
                }
                return Ok(());
            }
            AdminCommand::Export { after_event } => {
                let text = api
                    .send_text(client.get(url("export")).query(&[("after_event", after_event.to_string())]))
                    .await?;
                rampart_cli::say!("{}", text.trim_end());
                return Ok(());
            }
            AdminCommand::Records { vin, campaign, csv, limit } => {
                let request = client.get(url("update-records")).query(&[
                    ("vin", vin.unwrap_or_default()),
                    ("campaign", campaign.unwrap_or_default()),
                    ("limit", limit.to_string()),
                    ("format", if csv { "csv" } else { "json" }.to_owned()),
                ]);
                if csv {
                    let text = api.send_text(request).await?;
                    rampart_cli::say!("{}", text.trim_end());
                    return Ok(());
                }
                request
            }
        };
        let body = api.send(request).await?;
        if args.connection.json {
            rampart_cli::say!("{}", serde_json::to_string_pretty(&body)?);
        } else {
            rampart_cli::say!("{}", render(&body)?);
        }
        Ok(())
    })
}
