//! The generation side: `parallel` slot threads, each with its own Generator (its own KV
//! cache and sampler) over the one shared, read-only model, and a bounded FIFO queue in
//! front of them. Work runs on these plain threads, never on the async runtime; each job
//! sends its text pieces back through a channel. FIFO is the fairness rule: a request is
//! served in arrival order, and each slot finishes one request before taking the next.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::error::ApiError;
use super::metrics::{Gauges, Metrics};
use crate::generate::chat::ChatTemplate;
use crate::generate::{GenerateOptions, Generator, Sampler, SamplerConfig, StopReason};
use crate::gguf::GgufFile;
use crate::model::Model;
use crate::tokenizer::Tokenizer;

/// Everything loaded from the GGUF, shared read-only by the handlers and the slots.
pub struct Loaded {
    pub model: Model<'static>,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    /// The id `/v1/models` lists and responses carry.
    pub name: String,
}

impl Loaded {
    /// The model borrows the mapped file for its whole life, and the server lives until the
    /// process ends, so the file is leaked rather than tied into a self-referential struct.
    /// (An in-process test that starts servers leaks one mapping per server.)
    pub fn open(
        path: &std::path::Path,
        lora: &[std::path::PathBuf],
        lora_scale: f32,
    ) -> Result<Loaded, Box<dyn std::error::Error>> {
        let file: &'static GgufFile = Box::leak(Box::new(GgufFile::open(path)?));
        let mut model = Model::load(file)?;
        let lora = crate::app::LoraArgs {
            adapters: lora.to_vec(),
            scale: lora_scale,
        };
        lora.apply(&mut model, false)?;
        let tokenizer = Tokenizer::from_gguf(file)?;
        let template = ChatTemplate::from_gguf(file, &tokenizer)?;
        let name = path
            .file_stem()
            .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
        Ok(Loaded {
            model,
            tokenizer,
            template,
            name,
        })
    }

    /// Prompt ids for a rendered chat, as `ledge chat` makes them: BOS when the vocabulary
    /// asks for one and the template did not write it, then the text with special tokens
    /// parsed.
    pub fn chat_ids(&self, text: &str) -> Vec<u32> {
        let tok = &self.tokenizer;
        let mut ids = Vec::new();
        if tok.add_bos() {
            if let Some(bos) = tok.bos() {
                let bos_text = tok.token_text(bos).unwrap_or_default();
                if bos_text.is_empty() || !text.starts_with(bos_text) {
                    ids.push(bos);
                }
            }
        }
        ids.extend(tok.encode(text, false, true));
        ids
    }
}

/// What a slot sends back for one job.
#[derive(Debug)]
pub enum Event {
    Piece(String),
    Done(Finish),
    Error(ApiError),
}

#[derive(Clone, Copy, Debug)]
pub struct Finish {
    pub reason: StopReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

pub struct Job {
    pub prompt: Vec<u32>,
    pub sampler: SamplerConfig,
    pub opts: GenerateOptions,
    /// Set when the client goes away: the slot stops after the current token.
    pub cancel: Arc<AtomicBool>,
    pub tx: mpsc::Sender<Event>,
    pub submitted: Instant,
}

pub struct EngineConfig {
    pub parallel: usize,
    /// Requests that may wait for a slot; more get 503.
    pub queue: usize,
    /// KV cache positions per slot.
    pub ctx: usize,
}

struct Queue {
    jobs: VecDeque<Job>,
    busy: usize,
    /// No new work: set at shutdown.
    closed: bool,
}

pub struct Engine {
    pub loaded: Arc<Loaded>,
    pub config: EngineConfig,
    pub metrics: Metrics,
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Cancels every running generation (shutdown past its grace period).
    abort: AtomicBool,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

/// Text pieces buffered per job before a slot waits for its client.
pub const CHANNEL: usize = 256;

impl Engine {
    pub fn start(loaded: Arc<Loaded>, config: EngineConfig) -> Arc<Engine> {
        let parallel = config.parallel.max(1);
        let engine = Arc::new(Engine {
            loaded,
            config: EngineConfig { parallel, ..config },
            metrics: Metrics::default(),
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                busy: 0,
                closed: false,
            }),
            wake: Condvar::new(),
            abort: AtomicBool::new(false),
            workers: Mutex::new(Vec::new()),
        });
        let mut workers = engine.workers.lock().unwrap_or_else(|p| p.into_inner());
        for i in 0..parallel {
            let e = engine.clone();
            let h = std::thread::Builder::new()
                .name(format!("ledge-slot-{i}"))
                .spawn(move || e.slot_loop())
                .expect("spawning a slot thread");
            workers.push(h);
        }
        drop(workers);
        engine
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // A panicking slot must not take the server down with a poisoned lock.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a job, or refuses with 503 when every slot is busy and the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        let mut q = self.lock();
        if q.closed {
            return Err(ApiError::unavailable("the server is shutting down").with_retry(1));
        }
        // Jobs whose clients left while waiting no longer count against the limit.
        q.jobs.retain(|j| !j.cancel.load(Ordering::Relaxed));
        if q.busy + q.jobs.len() >= self.config.parallel + self.config.queue {
            self.metrics
                .rejected_overloaded
                .fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::overloaded(1));
        }
        q.jobs.push_back(job);
        drop(q);
        self.wake.notify_one();
        Ok(())
    }

    pub fn gauges(&self) -> Gauges {
        let q = self.lock();
        Gauges {
            queue_depth: q.jobs.len(),
            queue_capacity: self.config.queue,
            slots_busy: q.busy,
            slots_total: self.config.parallel,
        }
    }

    /// Stops taking work: queued jobs get 503, running ones may finish within `grace`, after
    /// which they are cancelled; returns when every slot thread has ended.
    pub fn shutdown(&self, grace: Duration) {
        let queued: Vec<Job> = {
            let mut q = self.lock();
            q.closed = true;
            q.jobs.drain(..).collect()
        };
        self.wake.notify_all();
        for j in queued {
            let _ = j.tx.try_send(Event::Error(ApiError::unavailable(
                "the server is shutting down",
            )));
        }
        let deadline = Instant::now() + grace;
        while self.lock().busy > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.abort.store(true, Ordering::Relaxed);
        let workers: Vec<_> = self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for w in workers {
            let _ = w.join();
        }
    }

    fn next_job(&self) -> Option<Job> {
        let mut q = self.lock();
        loop {
            if q.closed {
                return None;
            }
            if let Some(j) = q.jobs.pop_front() {
                q.busy += 1;
                return Some(j);
            }
            q = self.wake.wait(q).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn slot_loop(self: Arc<Self>) {
        let loaded = self.loaded.clone();
        let mut gen = Generator::new(
            &loaded.model,
            &loaded.tokenizer,
            SamplerConfig::greedy(),
            self.config.ctx,
        );
        while let Some(job) = self.next_job() {
            // A panic in one generation answers that request with a 500 and keeps the slot.
            let tx = job.tx.clone();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.run_job(&mut gen, job)
            }));
            if r.is_err() {
                let _ = tx.try_send(Event::Error(ApiError::internal(
                    "generation failed unexpectedly (a bug): see the server log",
                )));
                gen = Generator::new(
                    &loaded.model,
                    &loaded.tokenizer,
                    SamplerConfig::greedy(),
                    self.config.ctx,
                );
            }
            self.lock().busy -= 1;
        }
    }

    fn run_job(&self, gen: &mut Generator<'_, 'static>, job: Job) {
        let m = &self.metrics;
        let cancelled = || job.cancel.load(Ordering::Relaxed) || self.abort.load(Ordering::Relaxed);
        if cancelled() {
            m.cancelled.fetch_add(1, Ordering::Relaxed);
            return;
        }
        m.queue_wait_us.fetch_add(
            job.submitted.elapsed().as_micros() as u64,
            Ordering::Relaxed,
        );
        gen.sampler = Sampler::new(job.sampler.clone());
        let t0 = Instant::now();
        let mut stream = match gen.generate(&job.prompt, job.opts.clone()) {
            Ok(s) => s,
            Err(e) => {
                let _ = job
                    .tx
                    .blocking_send(Event::Error(ApiError::bad_request(e.to_string())));
                return;
            }
        };
        let mut stopped_early = false;
        let mut first = true;
        for piece in stream.by_ref() {
            match piece {
                Ok(text) => {
                    if first {
                        first = false;
                        m.ttft_us.fetch_add(
                            job.submitted.elapsed().as_micros() as u64,
                            Ordering::Relaxed,
                        );
                        m.ttft_count.fetch_add(1, Ordering::Relaxed);
                    }
                    if job.tx.blocking_send(Event::Piece(text)).is_err() {
                        stopped_early = true;
                        break;
                    }
                }
                Err(e) => {
                    let _ = job
                        .tx
                        .blocking_send(Event::Error(ApiError::internal(e.to_string())));
                    return;
                }
            }
            if cancelled() {
                stopped_early = true;
                break;
            }
        }
        let st = stream.stats().clone();
        let reason = if stopped_early {
            StopReason::Cancelled
        } else {
            stream.stop_reason().unwrap_or(StopReason::EndOfText)
        };
        m.prompt_tokens
            .fetch_add(st.prompt_tokens as u64, Ordering::Relaxed);
        m.generated_tokens
            .fetch_add(st.generated_tokens as u64, Ordering::Relaxed);
        m.generation_us
            .fetch_add(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
        if reason == StopReason::Cancelled {
            m.cancelled.fetch_add(1, Ordering::Relaxed);
        } else {
            m.completed.fetch_add(1, Ordering::Relaxed);
        }
        let _ = job.tx.blocking_send(Event::Done(Finish {
            reason,
            prompt_tokens: job.prompt.len(),
            completion_tokens: st.generated_tokens,
        }));
    }
}
