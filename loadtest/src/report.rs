//! Results of runs and how they are shown: one `result:` line per run (stable, for scripts and
//! the smoke test), a table of medians and ratios, JSON, and an optional SVG bar chart.

use std::fmt::Write as _;

/// Which way a metric is better, for the reader of the ratio column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    /// More is better (jobs/s).
    Higher,
    /// Less is better (latency, CPU, memory).
    Lower,
    /// Informational.
    Neither,
}

/// One measured figure.
#[derive(Clone, Debug)]
pub struct Metric {
    /// Short name, also the JSON key: `jobs_per_s`, `p99_us`, ...
    pub key: &'static str,
    /// Unit shown in tables.
    pub unit: &'static str,
    /// Value (NaN when it could not be measured, e.g. no server pid).
    pub value: f64,
    /// Which way is better.
    pub better: Better,
}

/// One run of one scenario against one target.
#[derive(Clone, Debug, Default)]
pub struct RunResult {
    /// Scenario name.
    pub scenario: String,
    /// Target name (`gearshiftd-t1`, `gearmand-t1`, `addr`, `echo`).
    pub target: String,
    /// Round, from 1.
    pub round: usize,
    /// Jobs (or round trips) the run was asked for.
    pub jobs: u64,
    /// Jobs submitted and never finished (or results never received).
    pub lost: u64,
    /// Jobs run or answered more than once.
    pub dup: u64,
    /// What went wrong (timeouts, protocol errors, wrong results, a server that died).
    pub errors: Vec<String>,
    /// Odd but not failing (a server that needed SIGKILL, say).
    pub notes: Vec<String>,
    /// The figures.
    pub metrics: Vec<Metric>,
    /// Other processes used much CPU during a measured phase (see the notes).
    pub disturbed: bool,
}

impl RunResult {
    /// No lost or duplicated job and no error.
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.dup == 0 && self.errors.is_empty()
    }

    /// Adds a figure.
    pub fn add(&mut self, key: &'static str, unit: &'static str, value: f64, better: Better) {
        self.metrics.push(Metric {
            key,
            unit,
            value,
            better,
        });
    }

    /// A figure by key.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.metrics.iter().find(|m| m.key == key).map(|m| m.value)
    }

    /// The one-line summary printed after each run.
    pub fn line(&self) -> String {
        let mut s = format!(
            "result: scenario={} target={} round={} ok={} lost={} dup={}",
            self.scenario,
            self.target,
            self.round,
            self.ok(),
            self.lost,
            self.dup
        );
        for m in &self.metrics {
            let _ = write!(s, " {}={}", m.key, fmt_num(m.value));
        }
        for e in &self.errors {
            let _ = write!(s, "\n  error: {e}");
        }
        for n in &self.notes {
            let _ = write!(s, "\n  note: {n}");
        }
        s
    }
}

/// A number with precision that suits its size.
pub fn fmt_num(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Median of the finite values (the mean of the middle two for an even count).
pub fn median(vals: &[f64]) -> f64 {
    let mut v: Vec<f64> = vals.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Medians per target and metric: `(target, [(key, unit, better, median)])`, targets and
/// metrics in the order they were first seen.
pub type Medians = Vec<(String, Vec<(&'static str, &'static str, Better, f64)>)>;

/// Computes [`Medians`] over all rounds.
pub fn medians(targets: &[String], runs: &[RunResult]) -> Medians {
    targets
        .iter()
        .map(|t| {
            let mine: Vec<&RunResult> = runs.iter().filter(|r| &r.target == t).collect();
            let mut keys: Vec<(&'static str, &'static str, Better)> = Vec::new();
            for r in &mine {
                for m in &r.metrics {
                    if !keys.iter().any(|k| k.0 == m.key) {
                        keys.push((m.key, m.unit, m.better));
                    }
                }
            }
            let cols = keys
                .into_iter()
                .map(|(k, u, b)| {
                    let vals: Vec<f64> = mine.iter().filter_map(|r| r.get(k)).collect();
                    (k, u, b, median(&vals))
                })
                .collect();
            (t.clone(), cols)
        })
        .collect()
}

/// The table: one row per metric, one column per target (medians), then the ratio of each
/// other target to the baseline.
pub fn table(title: &str, med: &Medians, runs: &[RunResult], baseline: Option<&str>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{title}");
    let names: Vec<&str> = med.iter().map(|(t, _)| t.as_str()).collect();
    let base = baseline.and_then(|b| med.iter().position(|(t, _)| t == b));
    let mut header = vec!["metric".to_string()];
    header.extend(names.iter().map(|n| n.to_string()));
    if let Some(b) = base {
        for (i, n) in names.iter().enumerate() {
            if i != b {
                header.push(format!("{n}/{}", names[b]));
            }
        }
    }
    let mut rows = vec![header];
    let mut keys: Vec<(&'static str, &'static str, Better)> = Vec::new();
    for (_, cols) in med {
        for (k, u, b, _) in cols {
            if !keys.iter().any(|x| x.0 == *k) {
                keys.push((k, u, *b));
            }
        }
    }
    let value = |ti: usize, key: &str| -> f64 {
        med[ti]
            .1
            .iter()
            .find(|c| c.0 == key)
            .map(|c| c.3)
            .unwrap_or(f64::NAN)
    };
    for (k, u, better) in &keys {
        let label = match better {
            Better::Higher => format!("{k} ({u}, higher better)"),
            Better::Lower => format!("{k} ({u}, lower better)"),
            Better::Neither => format!("{k} ({u})"),
        };
        let mut row = vec![label];
        for ti in 0..names.len() {
            row.push(fmt_num(value(ti, k)));
        }
        if let Some(b) = base {
            for ti in 0..names.len() {
                if ti != b {
                    let r = value(ti, k) / value(b, k);
                    row.push(if r.is_finite() {
                        format!("{r:.2}x")
                    } else {
                        "n/a".into()
                    });
                }
            }
        }
        rows.push(row);
    }
    // Lost, duplicated and failed runs, summed over rounds.
    let mut row = vec!["lost/dup/failed runs (sum)".to_string()];
    for n in &names {
        let mine = runs.iter().filter(|r| r.target == *n);
        let (l, d, f) = mine.fold((0, 0, 0), |a, r| {
            (a.0 + r.lost, a.1 + r.dup, a.2 + (!r.ok()) as u64)
        });
        row.push(format!("{l}/{d}/{f}"));
    }
    rows.push(row);
    let ncol = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..ncol)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for (ri, r) in rows.iter().enumerate() {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            if c == 0 {
                let _ = write!(line, "{cell}{}", " ".repeat(pad));
            } else {
                let _ = write!(line, "  {}{cell}", " ".repeat(pad));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
        if ri == 0 {
            let _ = writeln!(
                out,
                "{}",
                "-".repeat(widths.iter().sum::<usize>() + 2 * (ncol - 1))
            );
        }
    }
    out
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn json_num(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "null".into()
    }
}

/// The whole result set as JSON: context (`meta`, already-encoded values), every run, and
/// the medians.
pub fn json(meta: &[(&str, String)], runs: &[RunResult], med: &Medians) -> String {
    let mut o = String::from("{\n");
    for (k, v) in meta {
        let _ = writeln!(o, "  {}: {v},", json_str(k));
    }
    o.push_str("  \"runs\": [\n");
    for (i, r) in runs.iter().enumerate() {
        let _ = write!(
            o,
            "    {{\"scenario\": {}, \"target\": {}, \"round\": {}, \"jobs\": {}, \"ok\": {}, \"lost\": {}, \"dup\": {}, \"disturbed\": {}, \"errors\": [{}], \"notes\": [{}], \"metrics\": {{",
            json_str(&r.scenario),
            json_str(&r.target),
            r.round,
            r.jobs,
            r.ok(),
            r.lost,
            r.dup,
            r.disturbed,
            r.errors
                .iter()
                .map(|e| json_str(e))
                .collect::<Vec<_>>()
                .join(", "),
            r.notes
                .iter()
                .map(|e| json_str(e))
                .collect::<Vec<_>>()
                .join(", "),
        );
        let ms: Vec<String> = r
            .metrics
            .iter()
            .map(|m| format!("{}: {}", json_str(m.key), json_num(m.value)))
            .collect();
        let _ = write!(o, "{}}}}}", ms.join(", "));
        o.push_str(if i + 1 < runs.len() { ",\n" } else { "\n" });
    }
    o.push_str("  ],\n  \"medians\": {\n");
    for (i, (t, cols)) in med.iter().enumerate() {
        let ms: Vec<String> = cols
            .iter()
            .map(|c| format!("{}: {}", json_str(c.0), json_num(c.3)))
            .collect();
        let _ = write!(o, "    {}: {{{}}}", json_str(t), ms.join(", "));
        o.push_str(if i + 1 < med.len() { ",\n" } else { "\n" });
    }
    o.push_str("  }\n}\n");
    o
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A horizontal bar chart of the medians: one panel per metric that has a better direction,
/// one bar per target, each panel scaled to its largest value.
pub fn svg(title: &str, med: &Medians) -> String {
    const W: f64 = 820.0;
    const LABEL: f64 = 150.0;
    const BAR: f64 = 18.0;
    const COLORS: [&str; 6] = [
        "#2a7ab0", "#d0703c", "#4a9a4a", "#8a5ab0", "#b04a6a", "#707070",
    ];
    let mut keys: Vec<(&'static str, &'static str, Better)> = Vec::new();
    for (_, cols) in med {
        for (k, u, b, _) in cols {
            if *b != Better::Neither && !keys.iter().any(|x| x.0 == *k) {
                keys.push((k, u, *b));
            }
        }
    }
    let panel = 26.0 + BAR * med.len() as f64 + 10.0;
    let h = 50.0 + panel * keys.len() as f64;
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
    // The title is long ("bg: shape; median of N rounds"): one line per part.
    for (i, part) in title.splitn(2, "; ").enumerate() {
        let _ = writeln!(
            o,
            r#"<text x="10" y="{}" font-size="{}" font-weight="bold">{}</text>"#,
            18 + 16 * i,
            if i == 0 { 14 } else { 12 },
            xml(part)
        );
    }
    for (pi, (k, u, b)) in keys.iter().enumerate() {
        let y0 = 50.0 + pi as f64 * panel;
        let dir = if *b == Better::Higher {
            "higher"
        } else {
            "lower"
        };
        let _ = writeln!(
            o,
            r#"<text x="10" y="{}" font-weight="bold">{} ({}, {dir} is better)</text>"#,
            y0 + 14.0,
            xml(k),
            xml(u)
        );
        let vals: Vec<f64> = med
            .iter()
            .map(|(_, cols)| {
                cols.iter()
                    .find(|c| c.0 == *k)
                    .map(|c| c.3)
                    .unwrap_or(f64::NAN)
            })
            .collect();
        let max = vals
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        for (ti, (t, _)) in med.iter().enumerate() {
            let y = y0 + 22.0 + ti as f64 * BAR;
            let v = vals[ti];
            let len = if max > 0.0 && v.is_finite() {
                (W - LABEL - 90.0) * v / max
            } else {
                0.0
            };
            let _ = writeln!(
                o,
                r#"<text x="20" y="{}">{}</text><rect x="{LABEL}" y="{}" width="{len:.1}" height="{}" fill="{}"/><text x="{:.1}" y="{}">{}</text>"#,
                y + 13.0,
                xml(t),
                y + 2.0,
                BAR - 4.0,
                COLORS[ti % COLORS.len()],
                LABEL + len + 6.0,
                y + 13.0,
                fmt_num(v)
            );
        }
    }
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(target: &str, round: usize, jps: f64) -> RunResult {
        let mut r = RunResult {
            scenario: "bg".into(),
            target: target.into(),
            round,
            ..Default::default()
        };
        r.add("jobs_per_s", "jobs/s", jps, Better::Higher);
        r
    }

    #[test]
    fn medians_and_ratios() {
        let runs = vec![
            run("a", 1, 10.0),
            run("b", 1, 5.0),
            run("a", 2, 30.0),
            run("b", 2, 5.0),
            run("a", 3, 20.0),
            run("b", 3, 4.0),
        ];
        let targets = vec!["a".to_string(), "b".to_string()];
        let med = medians(&targets, &runs);
        assert_eq!(med[0].1[0].3, 20.0);
        assert_eq!(med[1].1[0].3, 5.0);
        let t = table("t", &med, &runs, Some("b"));
        assert!(t.contains("4.00x"), "{t}");
        assert!(json(&[], &runs, &med).contains("\"a\": {\"jobs_per_s\": 20}"));
        assert!(svg("t", &med).contains("<rect"));
        assert_eq!(median(&[1.0, f64::NAN, 3.0]), 2.0);
    }
}
