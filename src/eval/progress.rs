//! A progress bar with an ETA on stderr, for evaluations that take minutes. On a terminal it
//! redraws one line; otherwise (logs, CI) it prints a line at every tenth of the work.

use std::io::{IsTerminal, Write};
use std::time::Instant;

pub struct Progress {
    label: String,
    unit: &'static str,
    start: Instant,
    tty: bool,
    last_tenth: usize,
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

/// The bar's text for `done` of `total` after `elapsed` seconds.
pub fn line(label: &str, unit: &str, done: usize, total: usize, elapsed: f64) -> String {
    const WIDTH: usize = 30;
    let frac = if total == 0 {
        1.0
    } else {
        done as f64 / total as f64
    };
    let filled = (frac * WIDTH as f64).round() as usize;
    let bar: String = (0..WIDTH)
        .map(|i| if i < filled { '#' } else { '-' })
        .collect();
    let eta = if done == 0 {
        "?".to_string()
    } else {
        clock(elapsed / done as f64 * (total - done) as f64)
    };
    format!(
        "{label} [{bar}] {done}/{total} {unit} {:3.0}%  elapsed {}  ETA {eta}",
        frac * 100.0,
        clock(elapsed)
    )
}

impl Progress {
    pub fn new(label: impl Into<String>, unit: &'static str) -> Progress {
        Progress {
            label: label.into(),
            unit,
            start: Instant::now(),
            tty: std::io::stderr().is_terminal(),
            last_tenth: usize::MAX,
        }
    }

    pub fn update(&mut self, done: usize, total: usize) {
        if done == 0 {
            self.start = Instant::now();
        }
        let text = line(
            &self.label,
            self.unit,
            done,
            total,
            self.start.elapsed().as_secs_f64(),
        );
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{text}");
            if done == total {
                let _ = writeln!(err);
            }
        } else {
            let tenth = done * 10 / total.max(1);
            if tenth != self.last_tenth {
                self.last_tenth = tenth;
                let _ = writeln!(err, "{text}");
            }
        }
        let _ = err.flush();
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
}
