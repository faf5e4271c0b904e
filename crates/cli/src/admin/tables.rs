//! `rampart admin`'s answers for people: tables and one-line confirmations, each long value
//! shortened between words. `--json` prints the server's JSON instead, for tools.

use serde_json::Value;

use rampart_cli::out::shorten;
use rampart_server::db::{Assignment, SecurityEvent, Vehicle};

/// A table: a header row and rows, columns padded to their widest cell (the last column
/// is not padded, so a long detail does not push blank space).
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let columns = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == columns {
                out.push_str(cell);
            } else {
                let pad = widths.get(i).copied().unwrap_or(0);
                out.push_str(&format!("{cell:<pad$}  "));
            }
        }
        out.trim_end().to_owned()
    };
    let mut out = vec![line(header.to_vec())];
    out.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    out.join("\n")
}

fn or_dash(v: Option<&str>) -> String {
    v.unwrap_or("-").to_owned()
}

/// Items as a table: one row per item, or `none` for an empty list.
fn listing<T>(
    items: Vec<T>,
    none: &str,
    header: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<String> {
    if items.is_empty() {
        return Ok(none.to_owned());
    }
    let rows: Vec<Vec<String>> = items.iter().map(row).collect();
    Ok(table(header, &rows))
}

/// Security events, newest first.
pub(super) fn events(body: &Value) -> anyhow::Result<String> {
    let header = ["time", "source", "rule", "vin", "ecu", "count", "detail"];
    let events = serde_json::from_value(body.clone())?;
    listing(
        events,
        "no security events",
        &header,
        |e: &SecurityEvent| {
            vec![
                e.at.clone(),
                e.source.clone(),
                e.rule.clone(),
                or_dash(e.vin.as_deref()),
                or_dash(e.ecu_id.as_deref()),
                e.count.to_string(),
                shorten(&e.detail, 80),
            ]
        },
    )
}

/// Assignments.
pub(super) fn assignments(body: &Value) -> anyhow::Result<String> {
    let header = [
        "id",
        "vin",
        "ecu",
        "target",
        "counter",
        "delivery",
        "status",
        "last error",
    ];
    let assignments = serde_json::from_value(body.clone())?;
    listing(assignments, "no assignments", &header, |a: &Assignment| {
        vec![
            a.id.to_string(),
            a.vin.clone(),
            a.ecu_id.clone(),
            a.target.clone(),
            a.release_counter.to_string(),
            if a.encrypt { "encrypted" } else { "clear" }.to_owned(),
            a.status.clone(),
            a.last_error
                .as_deref()
                .map_or("-".to_owned(), |e| shorten(e, 80)),
        ]
    })
}

/// One vehicle: its state and each ECU with what it runs.
pub(super) fn vehicle(body: &Value) -> anyhow::Result<String> {
    let v: Vehicle = serde_json::from_value(body.clone())?;
    let mut out = format!(
        "{}  registered {}, last seen {}, primary {}",
        v.vin,
        v.created_at,
        v.last_seen.as_deref().unwrap_or("never"),
        v.primary_ecu
    );
    if !v.attributes.is_empty() || !v.tags.is_empty() {
        let attributes: Vec<String> = v
            .attributes
            .iter()
            .map(|(k, a)| format!("{k}={a}"))
            .collect();
        let tags: Vec<&str> = v.tags.iter().map(String::as_str).collect();
        out.push_str(&format!(
            "\nattributes: {}; tags: {}",
            if attributes.is_empty() {
                "-".into()
            } else {
                attributes.join(", ")
            },
            if tags.is_empty() {
                "-".into()
            } else {
                tags.join(", ")
            }
        ));
    }
    if let Some(at) = &v.removed_at {
        out.push_str(&format!(
            "\nREMOVED from the fleet at {at} ({})",
            v.removed_reason.as_deref().unwrap_or("no reason given")
        ));
    }
    let rows: Vec<Vec<String>> = v
        .ecus
        .iter()
        .map(|e| {
            vec![
                e.ecu_id.clone(),
                e.hardware_id.clone(),
                if e.reports == "gateway" {
                    format!("{} (UDS, gateway-vouched)", e.verification)
                } else {
                    e.verification.clone()
                },
                e.installed
                    .as_ref()
                    .map_or("-".to_owned(), |i| i.target.clone()),
                e.installed
                    .as_ref()
                    .map_or("-".to_owned(), |i| i.release_counter.to_string()),
                if e.encryption_key.is_some() {
                    "yes"
                } else {
                    "no"
                }
                .to_owned(),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(
        &[
            "ecu",
            "hardware",
            "verification",
            "runs",
            "counter",
            "x25519",
        ],
        &rows,
    ));
    Ok(out)
}

/// Images of the image repository.
pub(super) fn images(body: &Value) -> anyhow::Result<String> {
    let Some(list) = body.as_array() else {
        return Ok(body.to_string());
    };
    if list.is_empty() {
        return Ok("no images".into());
    }
    let field = |i: &Value, k: &str| -> String {
        i.pointer(k)
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .unwrap_or_else(|| "-".into())
    };
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|i| {
            vec![
                field(i, "/name"),
                field(i, "/custom/hardware_id"),
                field(i, "/custom/version"),
                field(i, "/custom/release_counter"),
                field(i, "/length"),
                field(i, "/role"),
            ]
        })
        .collect();
    Ok(table(
        &[
            "name",
            "hardware",
            "version",
            "counter",
            "bytes",
            "signed by",
        ],
        &rows,
    ))
}

/// A page of vehicles: one row each, its ECUs and what they run.
pub(super) fn vehicles(body: &Value) -> anyhow::Result<String> {
    let list: Vec<Vehicle> = serde_json::from_value(body.clone())?;
    if list.is_empty() {
        return Ok("no vehicles".into());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|v| {
            let ecus: Vec<String> = v
                .ecus
                .iter()
                .map(|e| {
                    let runs = e.installed.as_ref().map_or("-", |i| i.target.as_str());
                    format!("{} {runs}", e.ecu_id)
                })
                .collect();
            vec![
                v.vin.clone(),
                v.last_seen.clone().unwrap_or_else(|| "never".into()),
                shorten(&ecus.join(", "), 100),
            ]
        })
        .collect();
    let mut out = table(&["vin", "last seen", "ECUs and what they run"], &rows);
    if let Some(last) = list.last() {
        out.push_str(&format!(
            "\n({} vehicle(s); the next page: --after {})",
            list.len(),
            last.vin
        ));
    }
    Ok(out)
}

/// A vehicle's RXSWIN and its changes.
pub(super) fn rxswin(body: &Value) -> anyhow::Result<String> {
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
    let mut out = format!("{}: RXSWIN {}", text(body, "vin"), text(body, "rxswin"));
    let rows: Vec<Vec<String>> = body
        .get("history")
        .and_then(Value::as_array)
        .map(|h| {
            h.iter()
                .map(|c| {
                    vec![
                        text(c, "at"),
                        text(c, "previous"),
                        text(c, "rxswin"),
                        text(c, "campaign"),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    if !rows.is_empty() {
        out.push_str("\n\n");
        out.push_str(&table(&["time", "from", "to", "campaign"], &rows));
    }
    Ok(out)
}

/// Update records.
pub(super) fn records(body: &Value) -> anyhow::Result<String> {
    let records: Vec<rampart_server::records::UpdateRecord> = serde_json::from_value(body.clone())?;
    listing(
        records,
        "no update records",
        &[
            "time", "vin", "ecu", "from", "to", "rxswin", "campaign", "result", "detail",
        ],
        |r| {
            vec![
                r.at.clone(),
                r.vin.clone(),
                r.ecu_id.clone(),
                or_dash(r.from_target.as_deref()),
                r.to_target.clone(),
                or_dash(r.rxswin.as_deref()),
                or_dash(r.campaign.as_deref()),
                r.result.clone(),
                shorten(r.detail.as_deref().unwrap_or("-"), 60),
            ]
        },
    )
}

/// `admin incidents`.
pub(crate) fn incidents(body: &Value) -> anyhow::Result<String> {
    let list: Vec<rampart_server::vsoc::Incident> = serde_json::from_value(body.clone())?;
    if list.is_empty() {
        return Ok("no incidents".into());
    }
    let rows = list
        .iter()
        .map(|i| {
            vec![
                format!("#{}", i.id),
                i.severity.clone(),
                i.state.clone(),
                i.kind.clone(),
                i.vehicles.len().to_string(),
                i.opened_at.clone(),
                shorten(&i.title, 90),
            ]
        })
        .collect::<Vec<_>>();
    Ok(table(
        &[
            "ID", "SEVERITY", "STATE", "KIND", "VEHICLES", "OPENED", "WHAT",
        ],
        &rows,
    ))
}

/// `admin incidents ID`.
pub(crate) fn incident(body: &Value) -> anyhow::Result<String> {
    let i: rampart_server::vsoc::Incident = serde_json::from_value(body.clone())?;
    let mut out = vec![
        format!(
            "incident #{} · {} · {} · {} {}",
            i.id, i.severity, i.state, i.kind, i.subject
        ),
        i.title.clone(),
        i.detail.clone(),
    ];
    if let Some(img) = &i.image {
        out.push(format!("image: {img} (campaigns shipping it halted)"));
    }
    if let Some(r) = &i.runbook {
        out.push(format!("runbook: {r}"));
    }
    out.push(format!("vehicles: {}", i.vehicles.join(", ")));
    if !i.events.is_empty() {
        out.push(String::new());
        out.push(events(&serde_json::to_value(&i.events)?)?);
    }
    Ok(out.join("\n"))
}

/// `admin user list`.
pub(crate) fn users(body: &Value) -> anyhow::Result<String> {
    let list: Vec<rampart_server::console::User> = serde_json::from_value(body.clone())?;
    let rows = list
        .iter()
        .map(|u| {
            vec![
                u.name.clone(),
                u.role.as_str().to_owned(),
                u.created_at.clone(),
                or_dash(u.disabled_at.as_deref()),
            ]
        })
        .collect::<Vec<_>>();
    Ok(table(&["NAME", "ROLE", "CREATED", "DISABLED"], &rows))
}

/// `admin audit`.
pub(crate) fn audit(body: &Value) -> anyhow::Result<String> {
    let list: Vec<rampart_server::audit::Entry> = serde_json::from_value(body.clone())?;
    let rows = list
        .iter()
        .map(|e| {
            vec![
                e.at.clone(),
                e.actor.clone(),
                e.action.clone(),
                e.subject.clone(),
                shorten(&e.detail, 80),
            ]
        })
        .collect::<Vec<_>>();
    Ok(table(&["WHEN", "WHO", "WHAT", "ON", "DETAIL"], &rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_pads_every_column_but_the_last() {
        let t = table(
            &["id", "rule", "detail"],
            &[
                vec!["1".into(), "hash-mismatch".into(), "short".into()],
                vec!["22".into(), "replay".into(), "a longer detail".into()],
            ],
        );
        assert_eq!(
            t,
            "id  rule           detail\n1   hash-mismatch  short\n22  replay         a longer detail"
        );
    }

    #[test]
    fn events_become_a_table_with_their_detail_shortened() {
        let body = serde_json::json!([{
            "id": 1, "at": "2026-12-02T08:00:00Z", "source": "vehicle", "rule": "hash-mismatch",
            "vin": "WVW00000000000001", "ecu_id": "TBOX-1", "remote": null,
            "detail": "tbox/fw-2.1.bin for TBOX-1: the sha256 of the download is not the one the targets metadata signs, so it was refused",
            "count": 3, "last_at": "2026-12-02T08:01:00Z"
        }]);
        let t = events(&body).unwrap();
        assert!(t.starts_with("time"), "{t}");
        assert!(
            t.contains("hash-mismatch") && t.contains("WVW00000000000001"),
            "{t}"
        );
        assert!(t.contains('…') && !t.contains("refused"), "{t}");
        assert_eq!(
            events(&serde_json::json!([])).unwrap(),
            "no security events"
        );
    }
}
