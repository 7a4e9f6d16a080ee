//! Counters for `GET /metrics`, in Prometheus' text exposition format. Plain atomics: the
//! hot path adds to them once per request, never per token.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    pub requests_chat: AtomicU64,
    pub requests_completions: AtomicU64,
    pub requests_models: AtomicU64,
    /// Error responses by status code.
    errors: Mutex<Vec<(u16, u64)>>,
    pub rejected_overloaded: AtomicU64,
    pub cancelled: AtomicU64,
    pub completed: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    /// Time spent generating (prefill + decode), summed over requests, in microseconds.
    pub generation_us: AtomicU64,
    /// Time from submission to the first token, summed over requests, in microseconds.
    pub ttft_us: AtomicU64,
    pub ttft_count: AtomicU64,
    pub queue_wait_us: AtomicU64,
}

/// What the engine reports at scrape time.
pub struct Gauges {
    pub queue_depth: usize,
    pub queue_capacity: usize,
    pub slots_busy: usize,
    pub slots_total: usize,
}

impl Metrics {
    pub fn error(&self, status: u16) {
        let mut e = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        match e.iter_mut().find(|(s, _)| *s == status) {
            Some((_, n)) => *n += 1,
            None => e.push((status, 1)),
        }
    }

    pub fn render(&self, g: &Gauges) -> String {
        let mut s = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, f64)]| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in lines {
                let _ = writeln!(s, "{name}{labels} {v}");
            }
        };
        let get = |a: &AtomicU64| a.load(Relaxed) as f64;
        metric(
            "ledge_requests_total",
            "counter",
            "Requests received, by endpoint.",
            &[
                (
                    "{endpoint=\"chat_completions\"}".into(),
                    get(&self.requests_chat),
                ),
                (
                    "{endpoint=\"completions\"}".into(),
                    get(&self.requests_completions),
                ),
                ("{endpoint=\"models\"}".into(), get(&self.requests_models)),
            ],
        );
        let mut errs = self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        errs.sort();
        let err_lines: Vec<(String, f64)> = errs
            .iter()
            .map(|(code, n)| (format!("{{status=\"{code}\"}}"), *n as f64))
            .collect();
        metric(
            "ledge_request_errors_total",
            "counter",
            "Error responses, by HTTP status.",
            &err_lines,
        );
        metric(
            "ledge_requests_rejected_total",
            "counter",
            "Requests refused with 503 because the queue was full.",
            &[(String::new(), get(&self.rejected_overloaded))],
        );
        metric(
            "ledge_requests_cancelled_total",
            "counter",
            "Generations stopped early because the client went away or the server shut down.",
            &[(String::new(), get(&self.cancelled))],
        );
        metric(
            "ledge_requests_completed_total",
            "counter",
            "Generations that ran to their end.",
            &[(String::new(), get(&self.completed))],
        );
        metric(
            "ledge_prompt_tokens_total",
            "counter",
            "Prompt tokens processed (excluding reused cached prefixes).",
            &[(String::new(), get(&self.prompt_tokens))],
        );
        metric(
            "ledge_tokens_generated_total",
            "counter",
            "Tokens generated.",
            &[(String::new(), get(&self.generated_tokens))],
        );
        let gen_s = get(&self.generation_us) / 1e6;
        metric(
            "ledge_generation_seconds_total",
            "counter",
            "Time slots spent generating, summed over slots.",
            &[(String::new(), gen_s)],
        );
        let tps = if gen_s > 0.0 {
            get(&self.generated_tokens) / gen_s
        } else {
            0.0
        };
        metric(
            "ledge_tokens_per_second",
            "gauge",
            "Generated tokens per second of slot time, since start (per slot, not aggregate).",
            &[(String::new(), tps)],
        );
        metric(
            "ledge_time_to_first_token_seconds",
            "summary",
            "From admission to the first generated token (includes queueing and prefill).",
            // The "labels" slot carries the _sum/_count suffix of a summary's sample names.
            &[
                ("_sum".into(), get(&self.ttft_us) / 1e6),
                ("_count".into(), get(&self.ttft_count)),
            ],
        );
        metric(
            "ledge_queue_wait_seconds_total",
            "counter",
            "Time requests waited for a free slot, summed.",
            &[(String::new(), get(&self.queue_wait_us) / 1e6)],
        );
        metric(
            "ledge_queue_depth",
            "gauge",
            "Requests waiting for a slot.",
            &[(String::new(), g.queue_depth as f64)],
        );
        metric(
            "ledge_queue_capacity",
            "gauge",
            "Most requests that may wait; beyond it the server answers 503.",
            &[(String::new(), g.queue_capacity as f64)],
        );
        metric(
            "ledge_slots_busy",
            "gauge",
            "Slots generating now.",
            &[(String::new(), g.slots_busy as f64)],
        );
        metric(
            "ledge_slots_total",
            "gauge",
            "Slots (--parallel).",
            &[(String::new(), g.slots_total as f64)],
        );
        s
    }
}
