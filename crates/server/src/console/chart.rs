//! The V-SOC timeline: security events per rule over time, as an inline SVG (stacked bars,
//! one colour per rule, a legend). Rendered on the server: no chart library, no script.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use maud::{html, Markup};

use crate::db::SecurityEvent;

const COLOURS: [&str; 10] = [
    "#d0453b", "#1f5fbf", "#e7a435", "#2e9d5b", "#7a0f9e", "#0f8a9e", "#b35c1e", "#5b6475",
    "#c2185b", "#6d8f00",
];

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 180.0;
const LEFT: f64 = 40.0;
const BOTTOM: f64 = 20.0;

/// Occurrences per bucket and rule, `buckets` equal slices of `from..to` (an event counted
/// with its `count` in the slice of its last occurrence).
pub(super) fn buckets(
    events: &[SecurityEvent],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    buckets: usize,
) -> BTreeMap<String, Vec<u64>> {
    let span = (to - from).num_seconds().max(1) as f64;
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in events {
        let at = DateTime::parse_from_rfc3339(if e.last_at.is_empty() {
            &e.at
        } else {
            &e.last_at
        })
        .map(|t| t.with_timezone(&Utc));
        let Ok(at) = at else { continue };
        if at < from || at > to {
            continue;
        }
        let i = (((at - from).num_seconds() as f64 / span) * buckets as f64) as usize;
        let row = out
            .entry(e.rule.clone())
            .or_insert_with(|| vec![0; buckets]);
        if let Some(slot) = row.get_mut(i.min(buckets - 1)) {
            *slot += e.count.max(1);
        }
    }
    out
}

/// The chart.
pub(super) fn timeline(
    events: &[SecurityEvent],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    n: usize,
) -> Markup {
    let n = n.max(1);
    let rows = buckets(events, from, to, n);
    let at = |row: &[u64], i: usize| row.get(i).copied().unwrap_or(0);
    let totals: Vec<u64> = (0..n)
        .map(|i| rows.values().map(|r| at(r, i)).sum())
        .collect();
    let max = totals.iter().copied().max().unwrap_or(0).max(1);
    let bw = (WIDTH - LEFT) / n as f64;
    let plot = HEIGHT - BOTTOM;
    // Stacked bars: (x, y, height, colour, title).
    let mut bars = Vec::new();
    for i in 0..n {
        let mut y = plot;
        for (k, (rule, row)) in rows.iter().enumerate() {
            let v = at(row, i);
            if v > 0 {
                let h = v as f64 / max as f64 * (plot - 14.0);
                y -= h;
                bars.push((
                    LEFT + i as f64 * bw + 1.0,
                    y,
                    h,
                    colour(k),
                    format!("{rule}: {v}"),
                ));
            }
        }
    }
    let legend: Vec<(f64, f64, &str, String, u64)> = rows
        .iter()
        .enumerate()
        .map(|(k, (rule, row))| {
            (
                LEFT + (k % 4) as f64 * 230.0,
                HEIGHT + 12.0 + (k / 4) as f64 * 16.0,
                colour(k),
                rule.clone(),
                row.iter().sum(),
            )
        })
        .collect();
    let label = |t: DateTime<Utc>| t.format("%m-%d %H:%M").to_string();
    html! {
        svg #timeline xmlns="http://www.w3.org/2000/svg" viewBox={ "0 0 " (WIDTH) " " (HEIGHT + 16.0 * ((rows.len() as f64 / 4.0).ceil())) }
            width="100%" role="img" aria-label="security events per rule over time" {
            line x1=(LEFT) y1=(plot) x2=(WIDTH) y2=(plot) stroke="#9aa4b5" {}
            text x="2" y="12" { (max) }
            text x="2" y=(plot) { "0" }
            text x=(LEFT) y=(HEIGHT - 4.0) { (label(from)) }
            text x=(WIDTH - 80.0) y=(HEIGHT - 4.0) { (label(to)) }
            @for (x, y, h, fill, title) in &bars {
                rect x=(x) y=(y) width=((bw - 2.0).max(1.0)) height=(h) fill=(fill) { title { (title) } }
            }
            @for (x, y, fill, rule, total) in &legend {
                rect x=(x) y=(y - 9.0) width="10" height="10" fill=(fill) {}
                text x=(x + 14.0) y=(y) { (rule) " (" (total) ")" }
            }
        }
    }
}

fn colour(k: usize) -> &'static str {
    COLOURS.get(k % COLOURS.len()).copied().unwrap_or("#5b6475")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(rule: &str, at: &str, count: u64) -> SecurityEvent {
        SecurityEvent {
            id: 1,
            at: at.into(),
            source: "server".into(),
            rule: rule.into(),
            vin: None,
            ecu_id: None,
            remote: None,
            detail: String::new(),
            count,
            last_at: at.into(),
        }
    }

    #[test]
    fn events_fall_in_the_bucket_of_their_last_occurrence_with_their_count() {
        let from = DateTime::parse_from_rfc3339("2026-12-02T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let to = from + chrono::Duration::hours(4);
        let b = buckets(
            &[
                event("rollback", "2026-12-02T00:10:00Z", 1),
                event("rollback", "2026-12-02T03:59:00Z", 5),
                event("replay", "2026-12-02T01:30:00Z", 2),
                event("replay", "2026-12-03T01:30:00Z", 2),
            ],
            from,
            to,
            4,
        );
        assert_eq!(b["rollback"], vec![1, 0, 0, 5]);
        assert_eq!(b["replay"], vec![0, 2, 0, 0]);
        let svg =
            timeline(&[event("rollback", "2026-12-02T00:10:00Z", 1)], from, to, 4).into_string();
        assert!(
            svg.starts_with("<svg") && svg.contains("rollback (1)"),
            "{svg}"
        );
    }
}
