//! Progress of long work (`eval`, `generate`, SFT steps, RL steps): an `indicatif` bar on stderr when
//! stderr is a terminal, otherwise a plain `tracing` line at most every `ALP_PROGRESS_EVERY_S` seconds
//! (10 by default; 0 logs every update) with done/total, the rate, tokens/s when counted, and the time
//! left. `TERM=dumb` gets the plain lines too. Counts are the work done, reported by the caller.
//!
//! Log lines printed while a bar is drawn go through [`LogWriter`] (the tracing subscriber's writer),
//! which clears the bar, writes the line and redraws the bar, so bars and logs never overwrite each
//! other.
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Environment variable: seconds between plain progress lines when stderr is not a terminal.
pub const EVERY_ENV: &str = "ALP_PROGRESS_EVERY_S";
const DEFAULT_EVERY_S: f64 = 10.0;

/// The bar being drawn, if any, for [`LogWriter`]; tagged with its progress's id.
static ACTIVE: Mutex<Option<(u64, ProgressBar)>> = Mutex::new(None);
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A handle on one piece of work's progress; cheap to clone and shareable across threads (the
/// generation engine reports finished requests from its callback).
#[derive(Clone)]
pub struct Progress {
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    bar: Option<ProgressBar>,
    lines: Mutex<LineReporter>,
}

impl Progress {
    /// Progress of `total` units (`None`: unknown) of `unit` ("requests", "steps"), labelled `label`.
    pub fn new(label: &str, total: Option<u64>, unit: &str) -> Self {
        let term =
            std::io::stderr().is_terminal() && std::env::var("TERM").map_or(true, |t| t != "dumb");
        let every = std::env::var(EVERY_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .unwrap_or(DEFAULT_EVERY_S);
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let bar = term.then(|| {
            let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
            let template = if total.is_some() {
                "{prefix} [{bar:20}] {pos}/{len} {msg} | {elapsed} elapsed, {eta} left"
            } else {
                "{prefix} {spinner} {pos} {msg} | {elapsed} elapsed"
            };
            let style = ProgressStyle::with_template(template)
                .expect("a valid template")
                .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(label.to_string());
            bar.set_message(unit.to_string());
            bar.enable_steady_tick(Duration::from_millis(500));
            *ACTIVE.lock().unwrap_or_else(|e| e.into_inner()) = Some((id, bar.clone()));
            bar
        });
        Progress {
            inner: Arc::new(Inner {
                id,
                bar,
                lines: Mutex::new(LineReporter::new(label, total, unit, every, Instant::now())),
            }),
        }
    }

    /// `n` more units done, and `tokens` more tokens processed (0 when not counted).
    pub fn inc(&self, n: u64, tokens: u64) {
        let mut lines = self.inner.lines.lock().unwrap_or_else(|e| e.into_inner());
        let line = lines.add(n, tokens, Instant::now());
        match &self.inner.bar {
            Some(bar) => {
                if lines.total.is_some_and(|t| lines.done > t) {
                    bar.set_length(lines.done);
                }
                bar.inc(n);
                bar.set_message(lines.bar_message(lines.started.elapsed().as_secs_f64()));
            }
            None => {
                if let Some(line) = line {
                    tracing::info!("{line}");
                }
            }
        }
    }

    /// The engine's per-request callback: one request finished with `tokens` completion tokens.
    pub fn hook(&self) -> alp_rollout::OnFinished {
        let me = self.clone();
        Arc::new(move |tokens| me.inc(1, tokens as u64))
    }

    /// The work is over: the bar is cleared and a plain line gives the totals (unless the last
    /// plain line already did).
    pub fn finish(&self) {
        self.inner.clear_bar();
        let lines = self.inner.lines.lock().unwrap_or_else(|e| e.into_inner());
        if self.inner.bar.is_some() || lines.printed_done != Some(lines.done) {
            let elapsed = lines.started.elapsed().as_secs_f64();
            tracing::info!("{}", lines.line(elapsed));
        }
    }
}

impl Inner {
    /// Clears the bar and stops drawing it (also when the work ends in an error).
    fn clear_bar(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
            let mut active = ACTIVE.lock().unwrap_or_else(|e| e.into_inner());
            if active.as_ref().is_some_and(|(id, _)| *id == self.id) {
                *active = None;
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.clear_bar();
    }
}

/// The plain-line fallback: counts, and when a line is due.
#[derive(Debug, Clone)]
pub struct LineReporter {
    label: String,
    unit: String,
    total: Option<u64>,
    done: u64,
    tokens: u64,
    every_s: f64,
    started: Instant,
    last_line: Option<Instant>,
    /// `done` when the last line was made.
    printed_done: Option<u64>,
}

impl LineReporter {
    pub fn new(label: &str, total: Option<u64>, unit: &str, every_s: f64, now: Instant) -> Self {
        LineReporter {
            label: label.to_string(),
            unit: unit.to_string(),
            total,
            done: 0,
            tokens: 0,
            every_s,
            started: now,
            last_line: None,
            printed_done: None,
        }
    }

    /// Counts `n` units and `tokens` tokens at `now`; the line to print if one is due (the first
    /// update after `every_s` seconds since the start or the last line, and the last unit of the
    /// total whenever it comes).
    pub fn add(&mut self, n: u64, tokens: u64, now: Instant) -> Option<String> {
        self.done += n;
        self.tokens += tokens;
        let since = now.duration_since(self.last_line.unwrap_or(self.started));
        let complete = self.total.is_some_and(|t| self.done >= t);
        if since.as_secs_f64() >= self.every_s || complete {
            self.last_line = Some(now);
            self.printed_done = Some(self.done);
            Some(self.line(now.duration_since(self.started).as_secs_f64()))
        } else {
            None
        }
    }

    /// "label: done/total unit (pct%) | rate unit/s | tokens/s | elapsed | left".
    pub fn line(&self, elapsed_s: f64) -> String {
        // More than the total (a multi-turn environment's extra turns): the total was a guess.
        let total = self.total.filter(|&t| self.done <= t);
        let counts = match total {
            Some(t) => format!(
                "{}/{t} {} ({:.0}%)",
                self.done,
                self.unit,
                100.0 * self.done as f64 / t.max(1) as f64
            ),
            None => format!("{} {}", self.done, self.unit),
        };
        let left = match eta_s(self.done, total, elapsed_s) {
            Some(s) => format!(" | {} left", clock(s)),
            None => String::new(),
        };
        format!(
            "{}: {counts} | {} | {} elapsed{left}",
            self.label,
            self.rates(elapsed_s),
            clock(elapsed_s)
        )
    }

    /// The bar's short message: "unit, rate/s, tokens/s".
    fn bar_message(&self, elapsed_s: f64) -> String {
        let per_s = |x: u64| x as f64 / elapsed_s.max(1e-9);
        let mut s = format!("{}, {:.2}/s", self.unit, per_s(self.done));
        if self.tokens > 0 {
            s += &format!(", {:.0} tok/s", per_s(self.tokens));
        }
        s
    }

    /// "rate unit/s" and, when tokens are counted, "| tokens/s".
    fn rates(&self, elapsed_s: f64) -> String {
        let per_s = |x: u64| x as f64 / elapsed_s.max(1e-9);
        let mut s = format!("{:.2} {}/s", per_s(self.done), self.unit);
        if self.tokens > 0 {
            s += &format!(" | {:.1} tokens/s", per_s(self.tokens));
        }
        s
    }
}

/// Seconds left at the rate so far: `elapsed * (total - done) / done`; none before the first unit
/// or without a total.
pub fn eta_s(done: u64, total: Option<u64>, elapsed_s: f64) -> Option<f64> {
    let total = total?;
    (done > 0).then(|| elapsed_s * total.saturating_sub(done) as f64 / done as f64)
}

/// `1h02m03s`, `2m03s`, `3.0s`.
fn clock(s: f64) -> String {
    let whole = s.round() as u64;
    match whole {
        0..60 => format!("{s:.1}s"),
        60..3600 => format!("{}m{:02}s", whole / 60, whole % 60),
        _ => format!("{}h{:02}m{:02}s", whole / 3600, whole / 60 % 60, whole % 60),
    }
}

/// The tracing subscriber's writer: one event's text, written to stderr with the active bar (if
/// any) cleared around it.
pub struct LogWriter(Vec<u8>);

/// For `tracing_subscriber::fmt().with_writer(progress::log_writer)`.
pub fn log_writer() -> LogWriter {
    LogWriter(Vec::new())
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let bar = ACTIVE
            .lock()
            .ok()
            .and_then(|a| a.as_ref().map(|(_, b)| b.clone()));
        let write = || {
            let _ = std::io::stderr().lock().write_all(&self.0);
        };
        match bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_rate_limited_and_the_eta_is_the_rate_so_far() {
        let t0 = Instant::now();
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        let mut r = LineReporter::new("eval", Some(10), "requests", 10.0, t0);
        // 2 done at 4 s: under 10 s since the start, no line.
        assert_eq!(r.add(2, 0, at(4.0)), None);
        // 4 done at 12 s: due. Rate 4/12 = 0.33/s; left 12 * 6 / 4 = 18 s; 40 %.
        let line = r.add(2, 100, at(12.0)).expect("a line after 10 s");
        assert_eq!(
            line,
            "eval: 4/10 requests (40%) | 0.33 requests/s | 8.3 tokens/s | 12.0s elapsed | 18.0s left"
        );
        // 9.9 s after that line: none; 10 s after it: one.
        assert_eq!(r.add(1, 0, at(21.9)), None);
        let line = r.add(1, 0, at(22.0)).expect("10 s after the last line");
        // 6 done at 22 s: left 22 * 4 / 6 = 14.67 s.
        assert!(line.contains("6/10 requests (60%)"), "{line}");
        assert!(line.contains("| 14.7s left"), "{line}");
        // The last unit always gets its line, whatever the time since the last one.
        assert_eq!(r.add(3, 0, at(23.0)), None);
        let line = r.add(1, 0, at(23.5)).expect("the total is done");
        assert!(line.contains("10/10 requests (100%)"), "{line}");
        assert!(line.contains("| 0.0s left"), "{line}");
        // Past the total (extra turns): counts without a total or a time left.
        let line = r.add(2, 0, at(40.0)).expect("10 s after the last line");
        assert!(
            line.starts_with("eval: 12 requests | 0.30 requests/s"),
            "{line}"
        );
        assert!(!line.contains("left"), "{line}");
    }

    #[test]
    fn every_zero_logs_every_update_and_unknown_totals_have_no_eta() {
        let t0 = Instant::now();
        let mut r = LineReporter::new("gen", None, "requests", 0.0, t0);
        let line = r.add(3, 0, t0 + Duration::from_secs(150)).unwrap();
        assert_eq!(line, "gen: 3 requests | 0.02 requests/s | 2m30s elapsed");
    }

    #[test]
    fn eta_and_clock_by_hand() {
        assert_eq!(eta_s(0, Some(5), 3.0), None);
        assert_eq!(eta_s(1, None, 3.0), None);
        assert_eq!(eta_s(3, Some(12), 45.0), Some(135.0));
        assert_eq!(clock(135.0), "2m15s");
        assert_eq!(clock(3723.0), "1h02m03s");
        assert_eq!(clock(7.3), "7.3s");
    }
}
