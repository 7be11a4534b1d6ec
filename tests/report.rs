//! `alp-rl report` on real run directories made by short `alp-rl train` runs on the tiny preset: the
//! HTML renders in headless Chromium with axes, ticks and drawn series in every plot (checked through
//! the page's DOM), several runs overlay with a legend, the summary table equals pandas' reading of
//! the same parquet files, runs in progress and EGGROLL runs report, bad input names its file, and
//! the pandas / polars / duckdb recipes of docs/analysis.md run against a real run.
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use alp_test_support::cli::{ok, AlpRl};
use alp_test_support::oracle;
use serde_json::Value;

const ALP_RL: AlpRl = AlpRl::new(env!("CARGO_BIN_EXE_alp-rl"));
const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/math-tiny.toml");
const EGGROLL_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/math-eggroll.toml");

/// A few steps with the per-token log-probs logged and held-out evaluation at steps 0, 2, 4, 5.
const SHORT: [&str; 8] = [
    "--set",
    "run.steps=5",
    "--set",
    "run.log_logprobs=true",
    "--set",
    "eval.every=2",
    "--set",
    "eval.problems=8",
];

/// configs/math-eggroll.toml shrunk to a tiny warm start, 3 steps of 2 prompts x 4 members.
const EGGROLL: [&str; 16] = [
    "--set",
    "sft.steps=4",
    "--set",
    "sft.batch_size=4",
    "--set",
    "eval.every=2",
    "--set",
    "eval.problems=4",
    "--set",
    "rollout.prompts_per_step=2",
    "--set",
    "rollout.group_size=4",
    "--set",
    "rollout.max_new_tokens=12",
    "--set",
    "run.steps=3",
];

fn train(out: &Path, extra: &[&str]) {
    ok(ALP_RL.train(CONFIG, out, extra));
}

fn correction_run(tmp: &Path, kind: &str) -> PathBuf {
    let run = tmp.join(kind);
    let set = format!("learner.correction.kind=\"{kind}\"");
    let mut args = SHORT.to_vec();
    args.extend(["--set", &set]);
    train(&run, &args);
    run
}

fn report(args: &[&Path], extra: &[&str]) -> Output {
    let mut c = ALP_RL.command();
    c.arg("report").args(args).args(extra);
    c.output().expect("run alp-rl report")
}

fn report_json(runs: &[&Path]) -> Value {
    serde_json::from_str(&ok(report(runs, &["--format", "json"]))).expect("report JSON")
}

fn write_html(runs: &[&Path], out: &Path) -> String {
    ok(report(runs, &["--out", out.to_str().unwrap()]));
    std::fs::read_to_string(out).unwrap()
}

/// Chromium from the Debian package (scripts/setup.sh installs it); missing, the test fails with the fix.
fn chromium(profile: &Path) -> Command {
    let bin = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("chromium is missing: run scripts/setup.sh (apt-get install -y chromium)");
    let mut c = Command::new(bin);
    c.args([
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

/// Measures every plot in the browser after layout: axis lines, tick marks, numeric tick labels with
/// a rendered width, drawn series (coloured polylines of 2 px with at least 2 points and a non-empty
/// box), heat-map cells, and the legend's text. Injected into a copy of the report by the test only.
const CHECK_SCRIPT: &str = r#"<pre id="report-check"></pre><script>
const out = [];
for (const fig of document.querySelectorAll('figure.plot')) {
  const svg = fig.querySelector('svg');
  const r = {id: fig.id, kind: fig.dataset.kind, svg: !!svg};
  if (svg) {
    const lines = [...svg.querySelectorAll('polyline')];
    const black = lines.filter(p => p.getAttribute('stroke') === '#000000');
    const box = e => e.getBBox();
    r.x_axis = black.some(p => box(p).width > 100 && box(p).height === 0);
    r.y_axis = black.some(p => box(p).height > 100 && box(p).width === 0);
    r.ticks = black.filter(p => Math.max(box(p).width, box(p).height) <= 6).length;
    const texts = [...svg.querySelectorAll('text')];
    const numeric = /^-?[0-9.]+(e[-+]?[0-9]+)?$/;
    r.tick_labels = texts.filter(t => numeric.test(t.textContent.trim()) && t.getComputedTextLength() > 0).length;
    r.texts = texts.map(t => t.textContent.trim());
    const series = lines.filter(p => p.getAttribute('stroke') !== '#000000' && p.getAttribute('stroke-width') === '2'
      && p.points.numberOfItems >= 2 && (box(p).width > 0 || box(p).height > 0));
    r.series = series.length;
    r.colours = [...new Set(series.map(p => p.getAttribute('stroke')))];
    r.cells = [...svg.querySelectorAll('rect')].filter(e => e.getAttribute('fill') !== '#FFFFFF'
      && box(e).width > 0 && box(e).height > 0 && box(e).x + box(e).width < svg.width.baseVal.value - 100).length;
  }
  out.push(r);
}
document.getElementById('report-check').textContent = JSON.stringify(out);
</script>"#;

/// Loads the report in headless Chromium and returns what [`CHECK_SCRIPT`] measured, per plot; also
/// takes a screenshot of the report itself and checks that an image of it came out.
fn browser_check(html: &Path) -> Vec<Value> {
    let dir = html.parent().unwrap();
    let shot = dir.join("report.png");
    let out = chromium(&dir.join("profile-shot"))
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1500,4000")
        .arg(format!("file://{}", html.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).expect("chromium wrote no screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );

    let page = std::fs::read_to_string(html).unwrap();
    let probe = dir.join("probe.html");
    std::fs::write(
        &probe,
        page.replace("</body>", &format!("{CHECK_SCRIPT}</body>")),
    )
    .unwrap();
    let out = chromium(&dir.join("profile-dom"))
        .arg("--dump-dom")
        .arg(format!("file://{}", probe.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dom = String::from_utf8(out.stdout).unwrap();
    let json = dom
        .split("<pre id=\"report-check\">")
        .nth(1)
        .and_then(|s| s.split("</pre>").next())
        .expect("the check script did not run");
    let json = json
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    serde_json::from_str::<Vec<Value>>(&json).unwrap()
}

/// Every plot has both axes, at least 2 tick marks and 2 rendered numeric tick labels, and a drawn
/// series (a line plot) or its cells (a heat map: one per layer and step at least).
fn assert_plots_drawn(plots: &[Value], min_cells: u64) {
    assert!(!plots.is_empty());
    for p in plots {
        let id = &p["id"];
        assert_eq!(p["svg"], true, "{id}: no svg");
        assert_eq!(p["x_axis"], true, "{id}: no x axis: {p}");
        assert_eq!(p["y_axis"], true, "{id}: no y axis: {p}");
        assert!(p["ticks"].as_u64().unwrap() >= 2, "{id}: ticks {p}");
        assert!(
            p["tick_labels"].as_u64().unwrap() >= 2,
            "{id}: tick labels {p}"
        );
        match p["kind"].as_str().unwrap() {
            "line" => assert!(p["series"].as_u64().unwrap() >= 1, "{id}: no series {p}"),
            "heatmap" => assert!(p["cells"].as_u64().unwrap() >= min_cells, "{id}: cells {p}"),
            k => panic!("{id}: kind {k}"),
        }
    }
}

fn ids(plots: &[Value]) -> Vec<&str> {
    plots.iter().map(|p| p["id"].as_str().unwrap()).collect()
}

#[test]
fn html_report_of_a_run_renders_in_chromium_with_axes_ticks_and_series() {
    let tmp = tempfile::tempdir().unwrap();
    let run = correction_run(tmp.path(), "alp");
    let html = tmp.path().join("report.html");
    let page = write_html(&[&run], &html);
    // Self-contained: no script, nothing fetched.
    assert!(!page.contains("<script"), "the report has a script");
    // The SVG namespace is a name, not a fetch.
    let page_text = page.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    for reference in ["src=", "href=", "http://", "https://", "@import", "url("] {
        assert!(
            !page_text.contains(reference),
            "the report references {reference}"
        );
    }
    let plots = browser_check(&html);
    // 2 layers x 5 steps of sigma.
    assert_plots_drawn(&plots, 10);
    let found = ids(&plots);
    for id in [
        "ratio-envelope",
        "ratio-seq",
        "mismatch-k3",
        "mismatch-k1",
        "logp-gap",
        "reward",
        "eval",
        "clip-mask",
        "ess",
        "staleness",
        "throughput",
        "time",
        "mismatch-position",
        "sigma-alp",
    ] {
        assert!(found.contains(&id), "no plot {id} in {found:?}");
    }
    // The envelope draws its five statistics, each named in the legend.
    let envelope = &plots[found.iter().position(|&i| i == "ratio-envelope").unwrap()];
    assert_eq!(envelope["series"], 5, "{envelope}");
    let texts: Vec<&str> = envelope["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    for stat in ["q01", "q50", "q99", "q999", "max"] {
        assert!(
            texts.contains(&format!("ratio/{stat}").as_str()),
            "{texts:?}"
        );
    }
    // The mismatch table shows text around the top tokens.
    assert!(
        page.contains("<mark>"),
        "no token context in the mismatch table"
    );
}

#[test]
fn three_corrections_overlay_with_a_legend() {
    let tmp = tempfile::tempdir().unwrap();
    let runs: Vec<PathBuf> = ["bypass", "tis", "alp"]
        .iter()
        .map(|k| correction_run(tmp.path(), k))
        .collect();
    let refs: Vec<&Path> = runs.iter().map(PathBuf::as_path).collect();
    let html = tmp.path().join("report.html");
    write_html(&refs, &html);
    let plots = browser_check(&html);
    assert_plots_drawn(&plots, 10);
    for id in [
        "ratio-envelope",
        "mismatch-k3",
        "reward",
        "mismatch-position",
    ] {
        let p = &plots[ids(&plots).iter().position(|&i| i == id).unwrap()];
        // One colour per run, and each run in the legend.
        assert_eq!(p["colours"].as_array().unwrap().len(), 3, "{id}: {p}");
        let legend = p["texts"].to_string();
        for label in ["bypass (bypass)", "tis (tis)", "alp (alp)"] {
            assert!(
                legend.contains(label),
                "{id}: {label} not in the legend {legend}"
            );
        }
    }
    // `--figures`: every plot of the page as a file of its own, named by its id.
    let figures = tmp.path().join("figures");
    ok(report(
        &refs,
        &["--format", "json", "--figures", figures.to_str().unwrap()],
    ));
    let mut files: Vec<String> = std::fs::read_dir(&figures)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut want: Vec<String> = ids(&plots).iter().map(|i| format!("{i}.svg")).collect();
    want.sort();
    assert_eq!(files, want);
    for f in &files {
        let svg = std::fs::read_to_string(figures.join(f)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{f}"
        );
        assert!(
            svg.contains("<path") || svg.contains("<polyline") || svg.contains("<rect"),
            "{f}"
        );
    }
    let json = report_json(&refs);
    let corrections: Vec<&str> = json["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["summary"]["correction"].as_str().unwrap())
        .collect();
    assert_eq!(corrections, ["bypass", "tis", "alp"]);
}

/// The report's summary against scripts/oracles/report_summary.py (pandas), field by field.
fn assert_summary_equals_pandas(runs: &[&Path]) -> Value {
    let json = report_json(runs);
    let mut command = oracle::python_command();
    command.arg(oracle::script("report_summary.py")).args(runs);
    let pandas: Value =
        serde_json::from_str(&oracle::run(&mut command, "report_summary.py")).unwrap();
    for (run, r) in runs.iter().zip(json["runs"].as_array().unwrap()) {
        let want = &pandas[run.to_str().unwrap()];
        let got = &r["summary"];
        for (field, expected) in want.as_object().unwrap() {
            let value = &got[field];
            match (expected.as_f64(), value.as_f64()) {
                // Wall time is a sum: pandas may add in another order.
                (Some(e), Some(v)) if field == "wall_time_s" => {
                    assert!(
                        (e - v).abs() <= 1e-12 * e.abs(),
                        "{field}: {v} vs pandas {e}"
                    )
                }
                _ => assert_eq!(value, expected, "{}: {field}", run.display()),
            }
        }
    }
    json
}

#[test]
fn summary_table_equals_pandas_on_the_same_parquet_files() {
    let tmp = tempfile::tempdir().unwrap();
    let alp = tmp.path().join("alp");
    train(
        &alp,
        &[
            "--set",
            "run.steps=8",
            "--set",
            "eval.every=3",
            "--set",
            "eval.problems=8",
        ],
    );
    let stale = tmp.path().join("bypass-stale");
    train(
        &stale,
        &[
            "--set",
            "run.steps=6",
            "--set",
            "learner.correction.kind=\"bypass\"",
            "--set",
            "rollout.max_staleness=2",
        ],
    );
    // A copy with KL spikes planted in metrics.parquet (pandas rewrites it): steps 5 and 7 at 50x
    // and 1000x the run's median k3, step 6 at 2x (not a spike).
    let spiked = tmp.path().join("alp-spiked");
    copy_dir(&alp, &spiked);
    let script = r#"
import sys, pandas as pd
path = sys.argv[1] + "/metrics.parquet"
df = pd.read_parquet(path)
median = df["mismatch/k3"].median()
for step, factor in ((5, 50.0), (6, 2.0), (7, 1000.0)):
    df.loc[df.step == step, "mismatch/k3"] = factor * median
df.to_parquet(path, index=False)
"#;
    oracle::run(
        oracle::python_command().args(["-c", script, spiked.to_str().unwrap()]),
        "planting spikes",
    );
    let json = assert_summary_equals_pandas(&[&alp, &stale, &spiked]);
    let summaries: Vec<&Value> = json["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["summary"])
        .collect();
    // The comparison covered real values, not nulls on both sides.
    assert_eq!(summaries[0]["steps"], 8);
    assert!(summaries[0]["best_heldout_accuracy"].is_number());
    assert!(summaries[0]["max_ratio_q99"].as_f64().unwrap() > 0.0);
    assert_eq!(summaries[1]["max_staleness"], 2.0);
    assert_eq!(summaries[2]["kl_spikes"], 2, "{}", summaries[2]);
    // The Markdown table carries the same numbers (4 significant digits).
    let md = ok(report(&[&alp, &stale, &spiked], &["--format", "md"]));
    let row = md
        .lines()
        .find(|l| l.starts_with("| alp-spiked |"))
        .unwrap();
    assert!(row.contains("| 2 |"), "{row}");
    assert!(md.contains("| bypass-stale | pg / bypass | 6 |"), "{md}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn problems(json: &Value) -> Vec<String> {
    json["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_run_in_progress_and_an_eggroll_run_report() {
    let tmp = tempfile::tempdir().unwrap();
    // A live run, paused between writing step 3's rollouts and its metrics row.
    let live = tmp.path().join("live");
    let mut child = ALP_RL
        .train_command(CONFIG, &live)
        .args(SHORT)
        .env("ALP_RL_PAUSE_AT", "metrics:3")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let reached = BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("ALP_RL_PAUSE_AT reached"));
    assert!(reached, "the run ended before pausing");
    // A rollout file being copied in: half of it there.
    let partial = live.join("rollouts/step-000004.parquet");
    let bytes = std::fs::read(live.join("rollouts/step-000003.parquet")).unwrap();
    std::fs::write(&partial, &bytes[..bytes.len() / 2]).unwrap();
    let json = report_json(&[&live]);
    let md = ok(report(&[&live], &["--format", "md"]));
    let html = tmp.path().join("live.html");
    write_html(&[&live], &html);
    child.kill().unwrap();
    child.wait().unwrap();
    let run = &json["runs"][0];
    assert_eq!(run["summary"]["steps"], 2);
    assert_eq!(run["summary"]["planned_steps"], 5);
    assert_eq!(run["mismatch"]["files"], 3, "{}", run["mismatch"]);
    let found = problems(&json);
    assert!(
        found.len() == 1 && found[0].contains(&partial.display().to_string()),
        "{found:?}"
    );
    assert!(
        md.contains("at step 2 of 5 (in progress or stopped)"),
        "{md}"
    );
    assert_plots_drawn(&browser_check(&html), 4);

    let es = tmp.path().join("eggroll");
    ok(ALP_RL.train(EGGROLL_CONFIG, &es, &EGGROLL));
    let json = report_json(&[&es]);
    let summary = &json["runs"][0]["summary"];
    assert_eq!(summary["learner"], "eggroll");
    assert_eq!(summary["steps"], 3);
    assert!(summary["kl_spikes"].is_null() && summary["max_ratio_q99"].is_null());
    assert!(summary["final_heldout_accuracy"].is_number());
    // No lp_old under EGGROLL: the mismatch table says so instead of failing.
    assert_eq!(json["runs"][0]["mismatch"]["tokens_with_lp"], 0);
    assert!(problems(&json).is_empty(), "{json}");
    let html = tmp.path().join("eggroll.html");
    write_html(&[&es], &html);
    let plots = browser_check(&html);
    assert_plots_drawn(&plots, 0);
    for id in ["es-fitness", "es-update", "reward", "eval", "time"] {
        assert!(ids(&plots).contains(&id), "no plot {id}");
    }
    assert!(!ids(&plots).contains(&"ratio-envelope"));
    assert_summary_equals_pandas(&[&es]);
}

#[test]
fn bad_input_names_the_file_and_the_rest_is_still_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    train(&good, &SHORT);
    // Not a run: alone it fails naming the directory; with a good run, the report is made.
    let not_run = tmp.path().join("not-a-run");
    std::fs::create_dir_all(&not_run).unwrap();
    let out = report(&[&not_run], &["--format", "json"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&not_run.display().to_string()) && stderr.contains("not a run directory"),
        "{stderr}"
    );
    // An empty run: its config and run.json, no step yet.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    for f in ["config.toml", "run.json"] {
        std::fs::copy(good.join(f), empty.join(f)).unwrap();
    }
    // A truncated metrics.parquet.
    let truncated = tmp.path().join("truncated");
    copy_dir(&good, &truncated);
    let metrics = truncated.join("metrics.parquet");
    let bytes = std::fs::read(&metrics).unwrap();
    std::fs::write(&metrics, &bytes[..bytes.len() / 2]).unwrap();
    // Missing and mistyped columns: no `ratio/q99`, `acc` as text; a rollout file without `mu`.
    let columns = tmp.path().join("columns");
    copy_dir(&good, &columns);
    let script = r#"
import sys, pandas as pd
run = sys.argv[1]
df = pd.read_parquet(run + "/metrics.parquet").drop(columns=["ratio/q99"])
df["acc"] = df["acc"].astype(str)
df.to_parquet(run + "/metrics.parquet", index=False)
r = pd.read_parquet(run + "/rollouts/step-000002.parquet").drop(columns=["mu"])
r.to_parquet(run + "/rollouts/step-000002.parquet", index=False)
"#;
    oracle::run(
        oracle::python_command().args(["-c", script, columns.to_str().unwrap()]),
        "dropping columns",
    );
    let all: [&Path; 5] = [&not_run, &empty, &truncated, &columns, &good];
    let json = report_json(&all);
    let found = problems(&json);
    let has = |path: &Path, words: &str| {
        found
            .iter()
            .any(|p| p.starts_with(&path.display().to_string()) && p.contains(words))
    };
    assert!(has(&not_run, "not a run directory"), "{found:?}");
    assert!(
        has(&empty.join("metrics.parquet"), "not written yet"),
        "{found:?}"
    );
    assert!(has(&metrics, "cannot read it as parquet"), "{found:?}");
    assert!(
        has(&columns.join("metrics.parquet"), "column `acc` is"),
        "{found:?}"
    );
    assert!(
        has(
            &columns.join("rollouts/step-000002.parquet"),
            "no column `mu`"
        ),
        "{found:?}"
    );
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4, "every run directory is reported");
    let [empty_r, truncated_r, columns_r, good_r] = [&runs[0], &runs[1], &runs[2], &runs[3]];
    assert!(empty_r["summary"]["steps"].is_null());
    // The truncated metrics lose the curves, not the rollouts' mismatch table.
    assert!(truncated_r["summary"]["steps"].is_null());
    assert_eq!(truncated_r["mismatch"], good_r["mismatch"]);
    // The missing column is null, the rest as in the intact run.
    assert!(columns_r["summary"]["max_ratio_q99"].is_null());
    assert_eq!(
        columns_r["summary"]["max_ratio_seq_max"],
        good_r["summary"]["max_ratio_seq_max"]
    );
    assert_eq!(columns_r["mismatch"]["files"], 4);
    // HTML and Markdown of the same input come out too, listing the problems.
    let html = write_html(&all, &tmp.path().join("bad.html"));
    assert!(html.contains(&escape(&metrics.display().to_string())));
    let md = ok(report(&all, &["--format", "md"]));
    assert!(md.contains("### Problems") && md.contains(&not_run.display().to_string()));
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[test]
fn analysis_recipes_run_against_a_real_run_and_agree_with_the_report() {
    let tmp = tempfile::tempdir().unwrap();
    let run = correction_run(tmp.path(), "alp");
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/analysis.md");
    let mut command = oracle::python_command();
    command
        .arg(oracle::script("doc_recipes.py"))
        .arg(&doc)
        .arg(&run);
    // The script runs every recipe (pandas, polars, duckdb) and checks that the three agree.
    let out: Value = serde_json::from_str(&oracle::run(&mut command, "doc_recipes.py")).unwrap();
    assert_eq!(out["recipes"].as_u64().unwrap(), 12, "{out}");
    let report = report_json(&[&run]);
    let ours = report["runs"][0]["mismatch"]["by_position"]
        .as_array()
        .unwrap();
    let theirs = out["by_position"].as_array().unwrap();
    assert_eq!(ours.len(), theirs.len());
    for (a, b) in ours.iter().zip(theirs) {
        assert_eq!(a["position"], b["position"]);
        assert_eq!(a["tokens"], b["tokens"]);
        let (x, y) = (
            a["mean_abs_gap"].as_f64().unwrap(),
            b["mean_abs_gap"].as_f64().unwrap(),
        );
        assert!((x - y).abs() <= 1e-9 * y.abs().max(1e-12), "{a} vs {b}");
    }
    // Accuracy per example: the recipe's counts add up to the rollout rows the report read.
    let mismatch = &report["runs"][0]["mismatch"];
    assert_eq!(out["samples"], mismatch["samples"]);
    // The report's largest gap is the largest |lp_old - mu| pandas finds (both in f64 from f32).
    let top = mismatch["top"][0]["gap"].as_f64().unwrap().abs();
    assert_eq!(top, out["max_abs_gap"].as_f64().unwrap());
    let gaps: Vec<f64> = mismatch["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["gap"].as_f64().unwrap().abs())
        .collect();
    assert_eq!(gaps.len(), 20);
    assert!(gaps.windows(2).all(|w| w[0] >= w[1]), "{gaps:?}");
}
