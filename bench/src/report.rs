//! The report: medians of the runs with their min–max, added latency over
//! no mesh (same node against same node, cross against cross), proxy CPU
//! per 1,000 requests and memory; as a markdown table, JSON and an SVG
//! latency-percentile plot.

use std::fmt::Write;

use serde::Serialize;

use crate::run::{CrossCheck, Measured, Mesh};

/// Istio's published figures (istio.io performance docs), printed beside
/// ours: added latency at 1,000 requests a second with 1 KiB, and proxy
/// cost per 1,000 requests a second.
pub const ANCHORS: &str = "Published anchors (Istio performance docs; HTTP/1.1, 1 KiB, 1,000 req/s): \
two ztunnel hops add 0.17 ms p90 / 0.20 ms p99; two Envoy sidecars add 0.228 ms p90 / 0.298 ms p99; \
ztunnel costs 0.06 vCPU and 12 MB per 1,000 req/s, a sidecar 0.20 vCPU and 60 MB.";

/// One row of one profile.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Scenario name.
    pub name: String,
    /// Profile name.
    pub profile: String,
    /// How it is reached.
    pub mesh: Mesh,
    /// Same or other node.
    pub cross_node: bool,
    /// Medians over runs, microseconds.
    pub p50_us: f64,
    /// 90th.
    pub p90_us: f64,
    /// 99th.
    pub p99_us: f64,
    /// 99.9th.
    pub p999_us: f64,
    /// Slowest.
    pub max_us: f64,
    /// Min and max over runs of the p50.
    pub p50_range_us: (f64, f64),
    /// Min and max over runs of the p99.
    pub p99_range_us: (f64, f64),
    /// Over the no-mesh row of the same placement (same node or cross).
    pub added_p50_us: f64,
    /// Added p90.
    pub added_p90_us: f64,
    /// Added p99.
    pub added_p99_us: f64,
    /// Requests answered per second (median).
    pub rate: f64,
    /// Requests that failed, all runs.
    pub errors: u64,
    /// Proxy CPU seconds per 1,000 requests (all proxies on the path).
    pub cpu_s_per_1k: f64,
    /// Proxies' resident memory after the runs, MB (sum).
    pub rss_mb: f64,
    /// Runs.
    pub runs: usize,
    /// Latency curve of the median run (percentile, µs).
    pub curve: Vec<(f64, f64)>,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn range(v: &[f64]) -> (f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

/// Rows from the measurements, with added latency against the no-mesh row
/// of the same profile and placement.
pub fn rows(measured: &[Measured]) -> Vec<Row> {
    let mut rows: Vec<Row> = measured
        .iter()
        .map(|m| {
            let pick = |f: fn(&crate::load::Outcome) -> f64| -> Vec<f64> {
                m.runs.iter().map(|r| f(&r.load)).collect()
            };
            let p50s = pick(|o| o.p50_us);
            let p99s = pick(|o| o.p99_us);
            // The CPU was counted over the whole run, warmup included, so it
            // is divided by every request answered in that time.
            let requests: f64 = m.runs.iter().map(|r| r.load.answered as f64).sum();
            let cpu: f64 = m.runs.iter().map(|r| r.proxy_cpu_s).sum();
            // The run whose p50 is the median one, for the curve.
            let mid = median(p50s.clone());
            let curve = m
                .runs
                .iter()
                .min_by(|a, b| {
                    (a.load.p50_us - mid)
                        .abs()
                        .total_cmp(&(b.load.p50_us - mid).abs())
                })
                .map(|r| r.load.curve.clone())
                .unwrap_or_default();
            Row {
                name: m.scenario.to_owned(),
                profile: m.profile.clone(),
                mesh: m.mesh,
                cross_node: m.cross_node,
                p50_us: mid,
                p90_us: median(pick(|o| o.p90_us)),
                p99_us: median(p99s.clone()),
                p999_us: median(pick(|o| o.p999_us)),
                max_us: median(pick(|o| o.max_us)),
                p50_range_us: range(&p50s),
                p99_range_us: range(&p99s),
                added_p50_us: 0.0,
                added_p90_us: 0.0,
                added_p99_us: 0.0,
                rate: median(pick(|o| o.achieved_rate)),
                errors: m.runs.iter().map(|r| r.load.errors).sum(),
                cpu_s_per_1k: if requests > 0.0 {
                    cpu / (requests / 1000.0)
                } else {
                    0.0
                },
                rss_mb: m.proxy_rss_kb.iter().sum::<u64>() as f64 / 1024.0,
                runs: m.runs.len(),
                curve,
            }
        })
        .collect();
    let baselines: Vec<(String, bool, f64, f64, f64)> = rows
        .iter()
        .filter(|r| r.mesh == Mesh::Direct)
        .map(|r| {
            (
                r.profile.clone(),
                r.cross_node,
                r.p50_us,
                r.p90_us,
                r.p99_us,
            )
        })
        .collect();
    for row in &mut rows {
        if let Some((_, _, p50, p90, p99)) = baselines
            .iter()
            .find(|(p, c, ..)| *p == row.profile && *c == row.cross_node)
        {
            row.added_p50_us = row.p50_us - p50;
            row.added_p90_us = row.p90_us - p90;
            row.added_p99_us = row.p99_us - p99;
        }
    }
    rows
}

fn ms(us: f64) -> String {
    format!("{:.3}", us / 1000.0)
}

/// The markdown table of one profile.
pub fn markdown(rows: &[Row], profile: &str) -> String {
    let mut out = String::new();
    let open_loop = rows
        .iter()
        .any(|r| r.profile == profile && !profile.contains("max"));
    if open_loop {
        let _ = writeln!(
            out,
            "| path | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | added p50 / p90 / p99 ms | p50 min–max | proxy CPU s per 1k req | proxy RSS MB | errors |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|");
    } else {
        let _ = writeln!(
            out,
            "| path | requests/s | p50 ms | p99 ms | proxy CPU s per 1k req | proxy RSS MB | errors |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    }
    for r in rows.iter().filter(|r| r.profile == profile) {
        if open_loop {
            let added = if r.mesh == Mesh::Direct {
                "—".to_owned()
            } else {
                format!(
                    "{:+.3} / {:+.3} / {:+.3}",
                    r.added_p50_us / 1000.0,
                    r.added_p90_us / 1000.0,
                    r.added_p99_us / 1000.0
                )
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {added} | {}–{} | {:.3} | {:.1} | {} |",
                r.name,
                ms(r.p50_us),
                ms(r.p90_us),
                ms(r.p99_us),
                ms(r.p999_us),
                ms(r.max_us),
                ms(r.p50_range_us.0),
                ms(r.p50_range_us.1),
                r.cpu_s_per_1k,
                r.rss_mb,
                r.errors
            );
        } else {
            let _ = writeln!(
                out,
                "| {} | {:.0} | {} | {} | {:.3} | {:.1} | {} |",
                r.name,
                r.rate,
                ms(r.p50_us),
                ms(r.p99_us),
                r.cpu_s_per_1k,
                r.rss_mb,
                r.errors
            );
        }
    }
    out
}

/// The comparisons the bench exists for, like with like: weft's row
/// against the Envoy-sidecar row that does the same job.
pub const COMPARISONS: [(&str, &str); 7] = [
    ("weft, same node", "Envoy sidecars (TCP proxy), same node"),
    ("weft, same node", "Envoy sidecars (mTLS), same node"),
    (
        "weft, cross node (plain TCP between proxies)",
        "Envoy sidecars (TCP proxy), cross node",
    ),
    (
        "weft, cross node (HBONE mTLS)",
        "Envoy sidecars (mTLS), cross node",
    ),
    (
        "weft L7 (HTTPRoute), same node",
        "Envoy sidecars (HTTP routing), same node",
    ),
    (
        "weft L7 (HTTPRoute), same node",
        "Envoy sidecars (HTTP routing, mTLS), same node",
    ),
    (
        "weft L7 (HTTPRoute), cross node (HBONE mTLS)",
        "Envoy sidecars (HTTP routing, mTLS), cross node",
    ),
];

/// The proxy CPU weft must stay at or below on its same-node L7 row, in
/// seconds per 1,000 requests (ztunnel's published L4 figure: 0.06 vCPU
/// per 1,000 requests a second).
pub const L7_CPU_TARGET_S_PER_1K: f64 = 0.06;

/// A target the report states a verdict on.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// The profile.
    pub profile: String,
    /// The row.
    pub row: String,
    /// What is measured.
    pub what: &'static str,
    /// The figure.
    pub value: f64,
    /// The most it may be.
    pub limit: f64,
    /// Whether it is at or below the limit.
    pub met: bool,
}

/// What tracing every request may add to the same-node L7 row: p50, in µs.
pub const TRACING_ADDED_P50_US: f64 = 10.0;
/// ... and proxy CPU per request, as a fraction of the row's without it.
pub const TRACING_ADDED_CPU: f64 = 0.10;

/// The same-node L7 row without tracing.
const L7_SAME_NODE: &str = "weft L7 (HTTPRoute), same node";

/// For `profile`: weft's proxy CPU per 1,000 requests on the same-node L7
/// row against [`L7_CPU_TARGET_S_PER_1K`]; and for each row that traces,
/// what tracing adds to that row's p50 and CPU against
/// [`TRACING_ADDED_P50_US`] and [`TRACING_ADDED_CPU`] (none when the rows
/// did not run).
pub fn targets(rows: &[Row], profile: &str) -> Vec<Target> {
    let of = |name: &str| rows.iter().find(|r| r.profile == profile && r.name == name);
    let mut out: Vec<Target> = of(L7_SAME_NODE)
        .map(|r| Target {
            profile: profile.to_owned(),
            row: r.name.clone(),
            what: "proxy CPU s per 1,000 requests",
            value: r.cpu_s_per_1k,
            limit: L7_CPU_TARGET_S_PER_1K,
            met: r.cpu_s_per_1k <= L7_CPU_TARGET_S_PER_1K,
        })
        .into_iter()
        .collect();
    let Some(base) = of(L7_SAME_NODE) else {
        return out;
    };
    for traced in rows
        .iter()
        .filter(|r| r.profile == profile && r.mesh.traced())
    {
        let added = traced.added_p50_us - base.added_p50_us;
        out.push(Target {
            profile: profile.to_owned(),
            row: traced.name.clone(),
            what: "added p50 over the row without tracing, µs",
            value: added,
            limit: TRACING_ADDED_P50_US,
            met: added <= TRACING_ADDED_P50_US,
        });
        let cpu = if base.cpu_s_per_1k > 0.0 {
            traced.cpu_s_per_1k / base.cpu_s_per_1k - 1.0
        } else {
            f64::INFINITY
        };
        out.push(Target {
            profile: profile.to_owned(),
            row: traced.name.clone(),
            what: "proxy CPU over the row without tracing (fraction)",
            value: cpu,
            limit: TRACING_ADDED_CPU,
            met: cpu <= TRACING_ADDED_CPU,
        });
    }
    out
}

/// The markdown lines of [`targets`].
pub fn targets_text(targets: &[Target]) -> String {
    let mut out = String::new();
    for t in targets {
        let _ = writeln!(
            out,
            "Target, {}: {} {:.3} (at most {:.3}): {}\n",
            t.row,
            t.what,
            t.value,
            t.limit,
            if t.met { "met" } else { "**not met**" }
        );
    }
    out
}

/// weft's row against the Envoy row doing the same job, in one profile.
#[derive(Debug, Clone, Serialize)]
pub struct Versus {
    /// The profile.
    pub profile: String,
    /// weft's row.
    pub weft: &'static str,
    /// Envoy's row.
    pub envoy: &'static str,
    /// weft's added p50, µs.
    pub weft_added_p50_us: f64,
    /// Envoy's added p50, µs.
    pub envoy_added_p50_us: f64,
    /// weft's added p99, µs.
    pub weft_added_p99_us: f64,
    /// Envoy's added p99, µs.
    pub envoy_added_p99_us: f64,
    /// weft's added p50 and p99 are both lower.
    pub weft_below: bool,
}

/// For `profile`: weft's added p50 and p99 against Envoy's, pair by pair
/// (pairs with a row missing from the run are left out).
pub fn versus(rows: &[Row], profile: &str) -> Vec<Versus> {
    let find = |name: &str| rows.iter().find(|r| r.profile == profile && r.name == name);
    COMPARISONS
        .iter()
        .filter_map(|&(weft, envoy)| {
            let (w, e) = (find(weft)?, find(envoy)?);
            Some(Versus {
                profile: profile.to_owned(),
                weft,
                envoy,
                weft_added_p50_us: w.added_p50_us,
                envoy_added_p50_us: e.added_p50_us,
                weft_added_p99_us: w.added_p99_us,
                envoy_added_p99_us: e.added_p99_us,
                weft_below: w.added_p50_us < e.added_p50_us && w.added_p99_us < e.added_p99_us,
            })
        })
        .collect()
}

/// The markdown table of [`versus`] (empty when there is no pair).
pub fn versus_table(pairs: &[Versus]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| weft row | Envoy row | added p50 ms, weft / Envoy | added p99 ms, weft / Envoy | weft below on both |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    for v in pairs {
        let _ = writeln!(
            out,
            "| {} | {} | {:+.3} / {:+.3} | {:+.3} / {:+.3} | {} |",
            v.weft,
            v.envoy,
            v.weft_added_p50_us / 1000.0,
            v.envoy_added_p50_us / 1000.0,
            v.weft_added_p99_us / 1000.0,
            v.envoy_added_p99_us / 1000.0,
            if v.weft_below { "yes" } else { "**no**" }
        );
    }
    out
}

/// How far apart the two generators may be on p50 for the cross-check to
/// pass.
pub const CROSS_CHECK_TOLERANCE: f64 = 0.10;

/// The cross-check's section of the report: the verdict (idle CPUs
/// polling), then the same runs with idle CPUs halting.
pub fn cross_check(check: &CrossCheck) -> String {
    let p = &check.polling;
    let h = &check.halting;
    let verdict = if p.difference() <= CROSS_CHECK_TOLERANCE {
        "agree"
    } else {
        "do NOT agree"
    };
    format!(
        "## Generator cross-check\n\n\
         No mesh, same node, HTTP/1.1 1 KiB at {rate:.0} req/s on one connection, 3 runs each, taking turns.\n\n\
         | idle CPUs | weft-bench p50 µs | h2load p50 µs | apart | runs (ours, h2load) | h2load's median gap µs (uniform: {uniform:.0}) |\n\
         |---|---|---|---|---|---|\n\
         | polling (the check) | {:.0} | {:.0} | {:.1}% | {:?} | {:.0} |\n\
         | halting (as the rows above) | {:.0} | {:.0} | {:.1}% | {:?} | {:.0} |\n\n\
         With idle CPUs polling the generators {verdict} within {tol:.0}%. \
         With them halting, h2load's bursts (libev's timer has millisecond resolution) find the CPUs awake more often than our evenly spaced requests do, so the gap there is the cost of waking a CPU, not a difference in measuring (bench/README.md).\n",
        p.ours_p50_us,
        p.h2load_p50_us,
        p.difference() * 100.0,
        p.runs,
        p.h2load_median_gap_us,
        h.ours_p50_us,
        h.h2load_p50_us,
        h.difference() * 100.0,
        h.runs,
        h.h2load_median_gap_us,
        rate = check.rate,
        uniform = 1e6 / check.rate,
        tol = CROSS_CHECK_TOLERANCE * 100.0,
    )
}

/// An SVG plot of latency by percentile (x: 0 to 99.99 on a "nines"
/// scale), one line per row of `profile`.
pub fn svg(rows: &[Row], profile: &str) -> String {
    const W: f64 = 900.0;
    const H: f64 = 520.0;
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 330.0;
    const TOP: f64 = 30.0;
    const BOTTOM: f64 = 50.0;
    let rows: Vec<&Row> = rows.iter().filter(|r| r.profile == profile).collect();
    let nines = |p: f64| -(1.0 - (p / 100.0).min(0.9999)).log10();
    let x_max = nines(99.99);
    let y_max = rows
        .iter()
        .flat_map(|r| r.curve.iter().map(|c| c.1))
        .fold(1.0, f64::max)
        * 1.1;
    let x = |p: f64| LEFT + nines(p) / x_max * (W - LEFT - RIGHT);
    let y = |us: f64| H - BOTTOM - us / y_max * (H - TOP - BOTTOM);
    let colors = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
        "#bcbd22", "#17becf",
    ];
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="18" font-size="14">Latency by percentile, {profile} (µs)</text>"#
    );
    for p in [0.0, 50.0, 90.0, 99.0, 99.9, 99.99] {
        let px = x(p);
        let _ = writeln!(
            s,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#ddd"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">p{p}</text>"##,
            H - BOTTOM,
            H - BOTTOM + 18.0
        );
    }
    for i in 0..=5 {
        let us = y_max * f64::from(i) / 5.0;
        let py = y(us);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{us:.0}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            py + 4.0
        );
    }
    for (i, r) in rows.iter().enumerate() {
        let color = colors[i % colors.len()];
        let points: Vec<String> = r
            .curve
            .iter()
            .map(|(p, us)| format!("{:.1},{:.1}", x(*p), y(*us)))
            .collect();
        let dash = if r.cross_node {
            r#" stroke-dasharray="6 3""#
        } else {
            ""
        };
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{}"/>"#,
            points.join(" ")
        );
        let ly = TOP + 16.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"#,
            W - RIGHT + 10.0,
            W - RIGHT + 34.0,
            W - RIGHT + 40.0,
            ly + 4.0,
            r.name
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::Outcome;
    use crate::run::Run;

    fn outcome(p50: f64, p99: f64) -> Outcome {
        Outcome {
            requests: 1000,
            errors: 0,
            answered: 1000,
            seconds: 1.0,
            achieved_rate: 1000.0,
            p50_us: p50,
            p90_us: p50 + 10.0,
            p99_us: p99,
            p999_us: p99 + 10.0,
            max_us: p99 + 100.0,
            curve: vec![
                (0.0, p50 / 2.0),
                (50.0, p50),
                (99.0, p99),
                (99.99, p99 + 10.0),
            ],
        }
    }

    fn measured(name: &'static str, mesh: Mesh, cross: bool, p50s: &[f64]) -> Measured {
        Measured {
            scenario: name,
            mesh,
            cross_node: cross,
            profile: "http".into(),
            runs: p50s
                .iter()
                .map(|&p| Run {
                    load: outcome(p, p * 2.0),
                    proxy_cpu_s: 0.05,
                })
                .collect(),
            proxy_rss_kb: vec![10_240, 20_480],
            proxy_peak_rss_kb: vec![10_240, 20_480],
        }
    }

    #[test]
    fn added_latency_is_against_no_mesh_at_the_same_placement_and_medians_take_the_middle_run() {
        let m = [
            measured("direct same", Mesh::Direct, false, &[100.0, 90.0, 110.0]),
            measured("direct cross", Mesh::Direct, true, &[200.0]),
            measured("weft same", Mesh::Weft, false, &[130.0, 150.0, 140.0]),
            measured("weft cross", Mesh::Weft, true, &[260.0]),
        ];
        let rows = rows(&m);
        assert_eq!(rows[2].p50_us, 140.0);
        assert_eq!(rows[2].p50_range_us, (130.0, 150.0));
        assert_eq!(rows[2].added_p50_us, 40.0);
        assert_eq!(rows[3].added_p50_us, 60.0);
        assert_eq!(rows[3].added_p99_us, 120.0);
        // 3 runs × 1,000 requests, 0.15 CPU seconds: 0.05 s per 1,000.
        assert!((rows[2].cpu_s_per_1k - 0.05).abs() < 1e-9);
        // With a warmup's requests answered too, the CPU is spread over all.
        let mut warm = measured("weft warm", Mesh::Weft, false, &[100.0]);
        warm.runs[0].load.answered = 1250;
        assert!((super::rows(&[warm])[0].cpu_s_per_1k - 0.04).abs() < 1e-9);
        assert_eq!(rows[2].rss_mb, 30.0);
        let table = markdown(&rows, "http");
        assert!(table.contains("| weft same | 0.140 |"), "{table}");
        assert!(table.contains("+0.040"), "{table}");
        let plot = svg(&rows, "http");
        assert_eq!(plot.matches("<polyline").count(), 4);
        assert!(plot.contains("weft cross"));
    }

    fn agreement(ours: f64, h2load: f64) -> crate::run::Agreement {
        crate::run::Agreement {
            ours_p50_us: ours,
            h2load_p50_us: h2load,
            runs: vec![(ours, h2load)],
            h2load_median_gap_us: 30.0,
        }
    }

    #[test]
    fn the_cross_check_passes_or_fails_on_the_polling_runs_alone() {
        let within = CrossCheck {
            rate: 5000.0,
            polling: agreement(27.0, 28.0),
            halting: agreement(42.0, 33.0),
        };
        let text = cross_check(&within);
        assert!(text.contains("generators agree within 10%"), "{text}");
        assert!(
            text.contains("| polling (the check) | 27 | 28 | 3.6% |"),
            "{text}"
        );
        assert!(
            text.contains("| halting (as the rows above) | 42 | 33 | 27.3% |"),
            "{text}"
        );
        let apart = CrossCheck {
            rate: 5000.0,
            polling: agreement(33.0, 28.0),
            halting: agreement(28.0, 28.0),
        };
        assert!(cross_check(&apart).contains("generators do NOT agree within 10%"));
    }

    #[test]
    fn weft_is_compared_with_the_envoy_row_doing_the_same_job_and_a_loss_is_marked() {
        let m = [
            measured("no mesh, same node", Mesh::Direct, false, &[50.0]),
            measured("weft, same node", Mesh::Weft, false, &[110.0]),
            measured(
                "Envoy sidecars (TCP proxy), same node",
                Mesh::Sidecar,
                false,
                &[250.0],
            ),
            measured("no mesh, cross node", Mesh::Direct, true, &[60.0]),
            measured("weft, cross node (HBONE mTLS)", Mesh::Weft, true, &[300.0]),
            measured(
                "Envoy sidecars (mTLS), cross node",
                Mesh::SidecarMtls,
                true,
                &[280.0],
            ),
        ];
        let pairs = versus(&rows(&m), "http");
        assert_eq!(pairs.len(), 2);
        assert!(pairs[0].weft_below && !pairs[1].weft_below);
        let table = versus_table(&pairs);
        assert!(
            table.contains("| weft, same node | Envoy sidecars (TCP proxy), same node | +0.060 / +0.200 | +0.120 / +0.400 | yes |"),
            "{table}"
        );
        assert!(
            table.contains("| weft, cross node (HBONE mTLS) | Envoy sidecars (mTLS), cross node | +0.240 / +0.220 | +0.480 / +0.440 | **no** |"),
            "{table}"
        );
        // Pairs missing a row are left out.
        assert_eq!(table.lines().count(), 4, "{table}");
        assert!(versus(&rows(&m[..2]), "http").is_empty());
        assert_eq!(versus_table(&[]), "");
    }
}
