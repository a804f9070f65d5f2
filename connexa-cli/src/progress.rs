//! Following a job: a live progress bar on a terminal, progress lines
//! otherwise, Ctrl-C cancels; then the summary and the exit code.
//!
//! Everything shown comes from the engine's [`ProgressEvent`]s, which are read
//! from committed rows: the bar always ends at 100 % (cancelled items count as
//! done) and shows the same numbers as `connexa jobs show` or the HTTP API.

use std::io::IsTerminal as _;
use std::time::Duration;

use connexa_core::engine::{Engine, ProgressEvent};
use connexa_core::ports::JobId;
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::Ctx;
use crate::exit::{Exit, fail};
use crate::output::OutputFormat;

/// How a followed job ended.
#[derive(Debug, Clone)]
pub struct Followed {
    /// The last event (the job ended and every item has a result, unless the
    /// stream stopped early).
    pub last: ProgressEvent,
    /// Ctrl-C was pressed (and the job cancelled).
    pub interrupted: bool,
}

impl Followed {
    /// The job as JSON: `{"job", "kind", "state", "total", "ok", "failed",
    /// "timed_out", "cancelled"}` (documented in docs/cli.md).
    pub fn json(&self) -> serde_json::Value {
        let p = &self.last.progress;
        serde_json::json!({
            "job": self.last.job.0, "kind": self.last.kind.as_str(), "state": self.last.state.as_str(),
            "total": p.total, "ok": p.ok, "failed": p.failed, "timed_out": p.timed_out, "cancelled": p.cancelled,
        })
    }

    /// The one-line human summary.
    pub fn line(&self) -> String {
        let p = &self.last.progress;
        format!(
            "job #{} {}: {} — {}/{} done: ok {}, failed {}, timed out {}, cancelled {}",
            self.last.job,
            self.last.kind,
            self.last.state,
            p.done(),
            p.total,
            p.ok,
            p.failed,
            p.timed_out,
            p.cancelled
        )
    }

    /// 5 when interrupted, 4 when some items failed, timed out or were cancelled, else 0.
    pub fn exit(&self) -> Exit {
        let p = &self.last.progress;
        if self.interrupted {
            Exit::Interrupted
        } else if p.failed + p.timed_out + p.cancelled > 0 {
            Exit::Partial
        } else {
            Exit::Ok
        }
    }
}

/// What progress looks like on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Show {
    /// An indicatif bar (human output, stderr is a terminal that can draw one).
    Bar,
    /// One line per change (human output, stderr is not a terminal, or a
    /// terminal without cursor control: `TERM` unset or `dumb`).
    Lines,
    /// Nothing (`--output json|csv`, `-q`).
    Silent,
}

fn show(ctx: &Ctx) -> Show {
    if ctx.out.format != OutputFormat::Human || ctx.out.quiet {
        Show::Silent
    } else if std::io::stderr().is_terminal() && !ProgressDrawTarget::stderr().is_hidden() {
        // indicatif draws nothing where `TERM` is unset or `dumb`: lines there,
        // never silence.
        Show::Bar
    } else {
        Show::Lines
    }
}

/// Shows progress until the job ends; Ctrl-C cancels it (finished results are
/// kept, the rest end as cancelled) and the bar says how many were cancelled.
pub async fn follow(ctx: &Ctx, engine: &Engine, job: JobId) -> anyhow::Result<Followed> {
    let display = show(ctx);
    // Created at the first event, so that it never shows a length of 0.
    let mut bar: Option<ProgressBar> = None;
    let mut stream = Box::pin(engine.progress(job));
    let mut interrupted = false;
    let mut last: Option<ProgressEvent> = None;
    // Registered now, not on first poll (`tokio::signal::ctrl_c()` is lazy and
    // `select!` may never poll it while progress events keep arriving, leaving
    // SIGINT's default action — killing the process — in place).
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    loop {
        tokio::select! {
            ev = stream.next() => {
                let Some(ev) = ev else { break };
                match display {
                    Show::Bar => update_bar(bar.get_or_insert_with(|| new_bar(&ev)), &ev, interrupted),
                    Show::Lines => eprintln!("{}", progress_line(&ev)),
                    Show::Silent => {}
                }
                let done = ev.finished;
                last = Some(ev);
                if done { break; }
            }
            _ = sigint.recv(), if !interrupted => {
                interrupted = true;
                if let Some(bar) = &bar {
                    bar.set_message("Ctrl-C: cancelling…");
                } else if display != Show::Silent {
                    eprintln!("Ctrl-C: cancelling job #{job}");
                }
                engine.cancel(job).await?;
            }
        }
    }
    let Some(last) = last else {
        if let Some(bar) = bar {
            bar.abandon();
        }
        return Err(fail(
            Exit::Failure,
            format!("job {job} produced no progress"),
        ));
    };
    if let Some(bar) = bar {
        let p = &last.progress;
        bar.set_length(p.total);
        bar.set_position(p.done());
        if interrupted || p.cancelled > 0 {
            bar.disable_steady_tick();
            bar.abandon_with_message(format!(
                "{}: {} cancelled, {} results kept (ok {}, failed {})",
                last.state,
                p.cancelled,
                p.ok + p.failed + p.timed_out,
                p.ok,
                p.failed + p.timed_out
            ));
        } else {
            bar.disable_steady_tick();
            bar.finish_with_message(format!(
                "{}: ok {}, failed {}",
                last.state,
                p.ok,
                p.failed + p.timed_out,
            ));
        }
        // The bar stays on screen; what follows starts on a line of its own.
        eprintln!();
    }
    Ok(Followed { last, interrupted })
}

/// Follows the job, prints the summary (a line, or the JSON object) and returns the exit code.
pub async fn follow_and_report(ctx: &Ctx, engine: &Engine, job: JobId) -> anyhow::Result<Exit> {
    let f = follow(ctx, engine, job).await?;
    if ctx.out.format == OutputFormat::Json {
        ctx.out.json(&f.json())?;
    } else {
        ctx.out.line(f.line())?;
    }
    Ok(f.exit())
}

fn new_bar(ev: &ProgressEvent) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(ev.progress.total),
        ProgressDrawTarget::stderr_with_hz(10),
    );
    let style = ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] [{bar:30.green/white}] {pos}/{len} {percent:>3}% {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(format!("job #{} {}", ev.job, ev.kind));
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

fn update_bar(bar: &ProgressBar, ev: &ProgressEvent, interrupted: bool) {
    let p = &ev.progress;
    bar.set_length(p.total);
    bar.set_position(p.done());
    if interrupted {
        bar.set_message(format!(
            "cancelling… ok {} failed {} cancelled {}",
            p.ok,
            p.failed + p.timed_out,
            p.cancelled
        ));
        return;
    }
    let eta = match ev.eta {
        Some(d) if p.done() < p.total => format!(" ETA {}", eta_text(d)),
        _ => String::new(),
    };
    bar.set_message(format!(
        "ok {} failed {}{}{eta}",
        p.ok,
        p.failed + p.timed_out,
        rate_text(ev.rate)
    ));
}

fn rate_text(rate: f64) -> String {
    if rate > 0.0 {
        format!(" {rate:.0}/s")
    } else {
        String::new()
    }
}

fn eta_text(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// One progress line (when stderr is not a terminal).
fn progress_line(ev: &ProgressEvent) -> String {
    let p = &ev.progress;
    let eta = ev
        .eta
        .map(|d| format!(", ETA {}s", d.as_secs()))
        .unwrap_or_default();
    format!(
        "[{:>5.1}%] {}/{} ok {} failed {} timed out {} cancelled {} — {:.0}/s{eta}",
        p.percent(),
        p.done(),
        p.total,
        p.ok,
        p.failed,
        p.timed_out,
        p.cancelled,
        ev.rate
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_is_short() {
        assert_eq!(eta_text(Duration::from_secs(5)), "5s");
        assert_eq!(eta_text(Duration::from_secs(125)), "2m05s");
        assert_eq!(eta_text(Duration::from_secs(7260)), "2h01m");
    }
}
