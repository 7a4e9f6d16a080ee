//! A progress bar with an ETA on stderr, for work that takes minutes (evaluations, the
//! compress search, synth, conversion, calibration). Below every layer that reports progress,
//! so the converter and the evaluators share it. On a terminal, indicatif redraws one line. Elsewhere (a log, CI)
//! a redrawn line would leave thousands of carriage returns, so it prints plain lines
//! instead: at the start, at every tenth of the work, after a minute without one, and at the
//! end.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A log line at least this often, so a slow tenth does not look like a hang.
const HEARTBEAT: Duration = Duration::from_secs(60);

pub struct Progress {
    label: String,
    unit: &'static str,
    start: Instant,
    /// Whether stderr is a terminal, for the live bar.
    tty: bool,
    /// The live bar, made at the first update (when the total is known: drawn before, it
    /// would flash "0/0").
    bar: Option<ProgressBar>,
    /// For plain lines: the tenth and the time of the last one printed.
    last_tenth: usize,
    last_line: Instant,
    /// What the work is on now (a tensor's name, a rate), shown after the count.
    message: String,
}

/// "1:05" or "1:02:03".
pub fn clock(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// The plain line for `done` of `total` after `elapsed` seconds.
pub fn line(label: &str, unit: &str, done: usize, total: usize, elapsed: f64) -> String {
    let frac = if total == 0 {
        1.0
    } else {
        done as f64 / total as f64
    };
    let eta = if done == 0 {
        "?".to_string()
    } else {
        clock(elapsed / done as f64 * total.saturating_sub(done) as f64)
    };
    format!(
        "{label}: {done}/{total} {unit} {:3.0}%  elapsed {}  ETA {eta}",
        frac * 100.0,
        clock(elapsed)
    )
}

fn live_bar(label: &str, unit: &str, total: usize) -> ProgressBar {
    let style = ProgressStyle::with_template(
        "{prefix} [{bar:30}] {pos}/{len} {msg} {percent:>3}%  elapsed {elapsed_precise}  ETA {eta_precise}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("##-");
    ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::hidden())
        .with_style(style)
        .with_prefix(label.to_string())
        .with_message(unit.to_string())
}

impl Progress {
    pub fn new(label: impl Into<String>, unit: &'static str) -> Progress {
        Progress::with_tty(label.into(), unit, std::io::stderr().is_terminal())
    }

    fn with_tty(label: String, unit: &'static str, tty: bool) -> Progress {
        Progress {
            label,
            unit,
            start: Instant::now(),
            tty,
            bar: None,
            last_tenth: usize::MAX,
            last_line: Instant::now(),
            message: String::new(),
        }
    }

    /// Sets the text shown after the count from the next update on.
    pub fn set_message(&mut self, message: impl Into<String>) {
        self.message = message.into();
    }

    /// Seconds since the work started (the last update with `done` = 0).
    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// `done` of `total` are finished; 0 restarts the clock (setup before it is not work).
    pub fn update(&mut self, done: usize, total: usize) {
        if done == 0 {
            self.start = Instant::now();
        }
        if self.tty {
            let bar = self.bar.get_or_insert_with(|| {
                let bar = live_bar(&self.label, self.unit, total);
                bar.set_draw_target(ProgressDrawTarget::stderr());
                bar
            });
            bar.set_length(total as u64);
            if !self.message.is_empty() {
                bar.set_message(format!("{} {}", self.unit, self.message));
            }
            if done == 0 {
                bar.reset();
            }
            bar.set_position(done as u64);
            if done >= total {
                bar.finish();
            }
            return;
        }
        if self.plain_line_due(done, total) {
            let mut text = line(
                &self.label,
                self.unit,
                done,
                total,
                self.start.elapsed().as_secs_f64(),
            );
            if !self.message.is_empty() {
                text = format!("{text}  {}", self.message);
            }
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{text}");
            let _ = err.flush();
        }
    }
}

impl Progress {
    fn plain_line_due(&mut self, done: usize, total: usize) -> bool {
        let tenth = done * 10 / total.max(1);
        let due =
            tenth != self.last_tenth || done >= total || self.last_line.elapsed() >= HEARTBEAT;
        if due {
            self.last_tenth = tenth;
            self.last_line = Instant::now();
        }
        due
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // Stopped early (an error): keep the bar where it got to instead of erasing it.
        if let Some(bar) = &self.bar {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_extrapolates_the_time_per_step() {
        let l = line("eval", "chunks", 5, 20, 10.0);
        assert!(l.contains("5/20 chunks"), "{l}");
        assert!(l.contains("ETA 0:30"), "{l}");
        assert!(l.contains(" 25%"), "{l}");
        assert!(line("eval", "chunks", 0, 20, 0.0).contains("ETA ?"));
        assert_eq!(clock(3725.0), "1:02:05");
        assert_eq!(clock(65.4), "1:05");
    }

    #[test]
    fn off_a_terminal_a_line_per_tenth() {
        let mut p = Progress::with_tty("t".into(), "steps", false);
        let due: Vec<usize> = (0..=1000)
            .filter(|&done| p.plain_line_due(done, 1000))
            .collect();
        assert_eq!(due, (0..=10).map(|t| t * 100).collect::<Vec<_>>());
    }
}
