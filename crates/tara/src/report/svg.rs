//! The pictures: a risk heat map (impact × feasibility, before and after treatment) and one
//! attack tree per threat. Plain SVG strings, self-contained (no fonts or scripts fetched),
//! so the HTML report can inline them and the Markdown report can link them.

use std::fmt::Write as _;

use crate::assess::{Assessment, ThreatResult};
use crate::model::{Model, Threat};
use crate::rating::{self, Feasibility, Impact};

/// The fill of a risk value's cell.
pub(crate) fn risk_colour(risk: u8) -> &'static str {
    match risk {
        1 => "#c8e6c9",
        2 => "#e6ee9c",
        3 => "#ffe082",
        4 => "#ffab91",
        _ => "#ef9a9a",
    }
}

/// Escapes text for XML.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Splits `text` into lines of at most `width` characters, at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

const FONT: &str = "font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\"";

/// The heat map: two grids, threats counted per cell before and after treatment.
pub fn heat_map(assessment: &Assessment) -> String {
    let cell = 84;
    let left = 110;
    let top = 58;
    let grid = 4 * cell;
    let gap = 70;
    let width = left + 2 * grid + gap + 20;
    let height = top + grid + 70;
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" {FONT} font-size=\"13\" role=\"img\" aria-label=\"Risk heat map before and after treatment\">\n<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n"
    );
    let impacts: Vec<Impact> = Impact::ALL.iter().rev().copied().collect();
    for (panel, (title, after)) in [
        ("Before treatment", false),
        ("After treatment (residual)", true),
    ]
    .iter()
    .enumerate()
    {
        let x0 = left + panel * (grid + gap);
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-weight=\"bold\" font-size=\"15\">{}</text>",
            x0 + grid / 2,
            esc(title)
        );
        for (row, impact) in impacts.iter().enumerate() {
            let y = top + row * cell;
            if panel == 0 {
                let _ = writeln!(
                    s,
                    "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
                    left - 8,
                    y + cell / 2 + 4,
                    impact.label()
                );
            }
            for (col, feas) in Feasibility::ALL.iter().enumerate() {
                let x = x0 + col * cell;
                let risk = rating::risk(*impact, *feas);
                let ids: Vec<&str> = assessment
                    .threats
                    .iter()
                    .filter(|t| {
                        t.impact == *impact
                            && if *after {
                                t.feasibility_after == *feas
                            } else {
                                t.feasibility_before == *feas
                            }
                    })
                    .map(|t| t.id.as_str())
                    .collect();
                let _ = writeln!(
                    s,
                    "<g><title>risk {risk}: {}</title><rect x=\"{x}\" y=\"{y}\" width=\"{cell}\" height=\"{cell}\" fill=\"{}\" stroke=\"#555\"/>\
<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"22\" font-weight=\"bold\">{}</text>\
<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"11\" fill=\"#333\">risk {risk}</text></g>",
                    if ids.is_empty() { "no threat".to_owned() } else { ids.join(", ") },
                    risk_colour(risk),
                    x + cell / 2,
                    y + cell / 2 + 4,
                    if ids.is_empty() { String::new() } else { ids.len().to_string() },
                    x + cell / 2,
                    y + cell - 8,
                );
            }
        }
        for (col, feas) in Feasibility::ALL.iter().enumerate() {
            let _ = writeln!(
                s,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                x0 + col * cell + cell / 2,
                top + grid + 18,
                feas.label()
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#444\">attack feasibility →</text>",
            x0 + grid / 2,
            top + grid + 40
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"14\" y=\"{}\" fill=\"#444\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">impact →</text>",
        top + grid / 2,
        top + grid / 2
    );
    s.push_str("</svg>\n");
    s
}

/// A box with wrapped text; returns its height.
fn node(
    s: &mut String,
    x: usize,
    y: usize,
    w: usize,
    lines: &[String],
    fill: &str,
    bold: bool,
) -> usize {
    let h = 12 + lines.len() * 16;
    let _ = writeln!(
        s,
        "<rect x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{h}\" rx=\"6\" fill=\"{fill}\" stroke=\"#555\"/>"
    );
    for (i, l) in lines.iter().enumerate() {
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\"{}>{}</text>",
            x + 8,
            y + 20 + i * 16,
            if bold && i == 0 {
                " font-weight=\"bold\""
            } else {
                ""
            },
            esc(l)
        );
    }
    h
}

/// The attack tree of one threat: the goal, its paths (any one suffices), each path's
/// steps (all needed), and the controls with their evidence result.
pub fn attack_tree(
    model: &Model,
    threat: &Threat,
    result: &ThreatResult,
    assessment: &Assessment,
) -> String {
    let col = 300;
    let pad = 20;
    let n = threat.paths.len().max(1);
    let width = (n * col + (n + 1) * pad).max(2 * col + 3 * pad);
    let mut body = String::new();
    // Root.
    let mut root_lines = wrap(&format!("{} {}", threat.id, threat.title), 70);
    root_lines.push(format!(
        "impact {} · risk {} → {} · R155 {}",
        result.impact.label(),
        result.risk_before,
        result.risk_after,
        threat.r155.join(", ")
    ));
    let root_w = width - 2 * pad;
    let root_h = node(
        &mut body,
        pad,
        pad,
        root_w,
        &root_lines,
        risk_colour(result.risk_before),
        true,
    );
    let mut y0 = pad + root_h + 36;
    let _ = writeln!(
        body,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#444\">{}</text>",
        width / 2,
        pad + root_h + 22,
        if n > 1 {
            "OR: any one path"
        } else {
            "one path"
        }
    );
    let mut bottom = y0;
    for (i, (path, pr)) in threat.paths.iter().zip(&result.paths).enumerate() {
        let x = pad + i * (col + pad);
        let _ = writeln!(
            body,
            "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{y0}\" stroke=\"#555\"/>",
            width / 2,
            pad + root_h,
            x + col / 2
        );
        let mut lines = wrap(&path.title, 38);
        lines.push(format!(
            "potential {} → {} ({} → {})",
            pr.potential_before,
            pr.potential_after,
            pr.feasibility_before.label(),
            pr.feasibility_after.label()
        ));
        let h = node(&mut body, x, y0, col, &lines, "#e3f2fd", true);
        let mut y = y0 + h + 10;
        let _ = writeln!(
            body,
            "<text x=\"{}\" y=\"{}\" fill=\"#444\" font-size=\"11\">AND: every step</text>",
            x + 8,
            y + 4
        );
        y += 10;
        for (k, step) in path.steps.iter().enumerate() {
            let lines = wrap(&format!("{}. {step}", k + 1), 38);
            let _ = writeln!(
                body,
                "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#999\"/>",
                x + 14,
                y - 6,
                x + 14,
                y + 2
            );
            let h = node(&mut body, x + 14, y + 2, col - 14, &lines, "#fafafa", false);
            y += h + 8;
        }
        bottom = bottom.max(y);
    }
    y0 = bottom + 14;
    // Controls.
    let mut lines = vec![format!(
        "Treatment: {}{}",
        threat.treatment.label(),
        if threat.controls.is_empty() {
            " — no control"
        } else {
            ""
        }
    )];
    for c in &threat.controls {
        let effective = assessment.control(c).is_some_and(|r| r.effective);
        let title = model.control(c).map_or("", |m| m.title.as_str());
        for (k, l) in wrap(
            &format!("{} {c} {title}", if effective { "✔" } else { "✘" }),
            78,
        )
        .into_iter()
        .enumerate()
        {
            lines.push(if k == 0 { l } else { format!("    {l}") });
        }
    }
    if let Some(r) = &threat.reason {
        for l in wrap(&format!("Reason: {r}"), 78) {
            lines.push(l);
        }
    }
    let h = node(
        &mut body,
        pad,
        y0,
        root_w,
        &lines,
        risk_colour(result.risk_after),
        true,
    );
    let height = y0 + h + pad;
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" {FONT} font-size=\"12\" role=\"img\" aria-label=\"Attack tree of {}\">\n<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n{body}</svg>\n",
        esc(&threat.id)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_keeps_words_whole() {
        assert_eq!(
            wrap("one two three four", 9),
            vec!["one two", "three", "four"]
        );
        assert!(wrap("", 10).is_empty());
    }

    #[test]
    fn esc_escapes_markup() {
        assert_eq!(esc("<a & 'b'>"), "&lt;a &amp; &#39;b&#39;&gt;");
    }
}
