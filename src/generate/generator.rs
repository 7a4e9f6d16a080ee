//! The streaming generator: prefill the prompt as one batch, then decode token by token,
//! yielding text pieces as soon as they are whole UTF-8. Stops at end-of-generation tokens,
//! at user stop strings, at the token limit, when the context is full, or when cancelled.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::sampler::{Sampler, SamplerConfig};
use crate::model::{KvCache, Logits, Model, ModelError};
use crate::tokenizer::{StreamDecoder, Tokenizer};

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("the prompt is {prompt} tokens but the context holds {ctx}: shorten it, raise --ctx (the model allows {ctx_train}), or allow truncation")]
    PromptTooLong {
        prompt: usize,
        ctx: usize,
        ctx_train: usize,
    },
    #[error("the prompt is empty: it encodes to no tokens")]
    EmptyPrompt,
    #[error(transparent)]
    Model(#[from] ModelError),
}

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Generation stops before any of these strings; the string itself is not emitted.
    pub stop: Vec<String>,
    /// Drop the start of a too-long prompt instead of failing.
    pub truncate_prompt: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 256,
            stop: Vec::new(),
            truncate_prompt: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// An end-of-generation token (EOS, end of turn).
    EndOfText,
    MaxTokens,
    StopString,
    ContextFull,
    Cancelled,
}

impl StopReason {
    /// OpenAI's finish_reason vocabulary.
    pub fn as_openai(self) -> &'static str {
        match self {
            StopReason::EndOfText | StopReason::StopString | StopReason::Cancelled => "stop",
            StopReason::MaxTokens | StopReason::ContextFull => "length",
        }
    }
}

/// Timing and counts of one generation.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub prompt_tokens: usize,
    pub prompt_time: Duration,
    pub generated_tokens: usize,
    /// Decode time after the first token.
    pub decode_time: Duration,
    pub time_to_first_token: Duration,
}

impl Stats {
    pub fn prompt_tps(&self) -> f64 {
        self.prompt_tokens as f64 / self.prompt_time.as_secs_f64().max(1e-9)
    }
    pub fn decode_tps(&self) -> f64 {
        self.generated_tokens.saturating_sub(1) as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }
    /// One line for stderr after a run.
    pub fn summary(&self) -> String {
        format!(
            "prompt: {} tokens, {:.1} tok/s | generation: {} tokens, {:.1} tok/s | time to first token: {:.0} ms",
            self.prompt_tokens,
            self.prompt_tps(),
            self.generated_tokens,
            self.decode_tps(),
            self.time_to_first_token.as_secs_f64() * 1e3
        )
    }
}

/// Holds a model's session state: KV cache and sampler.
pub struct Generator<'m, 'a> {
    pub model: &'m Model<'a>,
    pub tokenizer: &'m Tokenizer,
    cache: KvCache,
    /// The tokens whose keys and values are in `cache`, in order: a new prompt that starts
    /// with them (the next turn of a chat) only processes what follows.
    cached: Vec<u32>,
    pub sampler: Sampler,
    cancel: Arc<AtomicBool>,
}

impl<'m, 'a> Generator<'m, 'a> {
    pub fn new(
        model: &'m Model<'a>,
        tokenizer: &'m Tokenizer,
        sampler: SamplerConfig,
        ctx: usize,
    ) -> Self {
        Generator {
            model,
            tokenizer,
            cache: model.new_cache(ctx),
            cached: Vec::new(),
            sampler: Sampler::new(sampler),
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A flag that stops generation at the next token when set (e.g. from a Ctrl-C handler).
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    pub fn context_size(&self) -> usize {
        self.cache.ctx
    }

    /// Starts generating after `prompt` (token ids, specials already added). The sampler
    /// history starts afresh; the KV cache keeps the longest prefix it shares with `prompt`.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        opts: GenerateOptions,
    ) -> Result<Stream<'_, 'm, 'a>, GenerateError> {
        if prompt.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        let ctx = self.cache.ctx;
        let mut prompt = prompt.to_vec();
        if prompt.len() >= ctx {
            if !opts.truncate_prompt {
                return Err(GenerateError::PromptTooLong {
                    prompt: prompt.len(),
                    ctx,
                    ctx_train: self.model.config.ctx_train,
                });
            }
            // Keep the end of the prompt (and a leading BOS), leaving room to generate.
            let reserve = opts.max_tokens.clamp(1, (ctx / 2).max(1));
            let keep = ctx - reserve;
            let bos = self.tokenizer.bos().filter(|&b| prompt[0] == b);
            let tail = prompt.split_off(prompt.len() - keep + bos.is_some() as usize);
            prompt = bos.into_iter().chain(tail).collect();
        }
        // Reuse the cached prefix, but always recompute the last prompt token: its logits
        // start the generation.
        let common = self
            .cached
            .iter()
            .zip(&prompt)
            .take_while(|(a, b)| a == b)
            .count()
            .min(prompt.len() - 1);
        self.cache.truncate(common);
        self.cached.truncate(common);
        self.sampler.reset();
        self.cancel.store(false, Ordering::Relaxed);
        for &t in &prompt {
            self.sampler.accept(t);
        }
        let decoder = self.tokenizer.stream_decoder().continuation();
        Ok(Stream {
            reused: common,
            prompt,
            opts,
            decoder,
            gen: self,
            pending: String::new(),
            next_logits: None,
            stats: Stats::default(),
            started: Instant::now(),
            done: None,
            generated: Vec::new(),
        })
    }
}

/// The text pieces of one generation, as an iterator.
pub struct Stream<'g, 'm, 'a> {
    gen: &'g mut Generator<'m, 'a>,
    prompt: Vec<u32>,
    /// Leading prompt tokens already in the KV cache.
    reused: usize,
    opts: GenerateOptions,
    decoder: StreamDecoder<'m>,
    /// Text held back because it might be the start of a stop string.
    pending: String,
    next_logits: Option<Vec<f32>>,
    stats: Stats,
    started: Instant,
    done: Option<StopReason>,
    generated: Vec<u32>,
}

impl Stream<'_, '_, '_> {
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn stop_reason(&self) -> Option<StopReason> {
        self.done
    }

    /// Token ids generated so far.
    pub fn tokens(&self) -> &[u32] {
        &self.generated
    }

    /// Splits `pending` into what can be emitted now and what must wait; sets `done` when a
    /// stop string is complete.
    fn release(&mut self, finished: bool) -> String {
        for s in &self.opts.stop {
            if let Some(i) = self.pending.find(s.as_str()) {
                self.pending.truncate(i);
                self.done = Some(StopReason::StopString);
                return std::mem::take(&mut self.pending);
            }
        }
        if finished {
            return std::mem::take(&mut self.pending);
        }
        // Hold back the longest suffix that is a prefix of some stop string.
        let mut hold = 0;
        for s in &self.opts.stop {
            for (i, _) in self.pending.char_indices() {
                if s.starts_with(&self.pending[i..]) {
                    hold = hold.max(self.pending.len() - i);
                    break;
                }
            }
        }
        let emit_len = self.pending.len() - hold;
        let rest = self.pending.split_off(emit_len);
        std::mem::replace(&mut self.pending, rest)
    }

    fn step(&mut self) -> Result<Option<String>, GenerateError> {
        if self.done.is_some() {
            return Ok(None);
        }
        let model = self.gen.model;
        let logits = match self.next_logits.take() {
            Some(l) => l,
            None => {
                let t0 = Instant::now();
                let todo = &self.prompt[self.reused..];
                let l = model.forward(&mut self.gen.cache, todo, Logits::Last)?;
                self.gen.cached.extend_from_slice(todo);
                self.stats.prompt_tokens = todo.len();
                self.stats.prompt_time = t0.elapsed();
                l
            }
        };
        let mut logits = logits;
        if self.gen.cancel.load(Ordering::Relaxed) {
            self.done = Some(StopReason::Cancelled);
        } else if self.generated.len() >= self.opts.max_tokens {
            self.done = Some(StopReason::MaxTokens);
        }
        if self.done.is_some() {
            self.pending.push_str(&self.decoder.finish());
            return Ok(Some(self.release(true)));
        }
        let tok = self.gen.sampler.sample(&mut logits);
        self.gen.sampler.accept(tok);
        self.generated.push(tok);
        self.stats.generated_tokens = self.generated.len();
        if self.generated.len() == 1 {
            self.stats.time_to_first_token = self.started.elapsed();
        } else {
            self.stats.decode_time = self.started.elapsed() - self.stats.time_to_first_token;
        }
        if self.gen.tokenizer.is_eog(tok) {
            self.done = Some(StopReason::EndOfText);
            self.pending.push_str(&self.decoder.finish());
            return Ok(Some(self.release(true)));
        }
        self.pending.push_str(&self.decoder.push(tok));
        let mut out = self.release(false);
        if self.done.is_some() {
            return Ok(Some(out));
        }
        if self.gen.cache.len >= self.gen.cache.ctx {
            self.done = Some(StopReason::ContextFull);
            self.pending.push_str(&self.decoder.finish());
            out.push_str(&self.release(true));
            return Ok(Some(out));
        }
        // The next position's logits are computed now, so the caller receives this piece
        // once the work behind it is done.
        if self.generated.len() < self.opts.max_tokens {
            self.next_logits = Some(model.forward(&mut self.gen.cache, &[tok], Logits::Last)?);
            self.gen.cached.push(tok);
        } else {
            self.next_logits = Some(Vec::new());
        }
        Ok(Some(out))
    }
}

impl Iterator for Stream<'_, '_, '_> {
    type Item = Result<String, GenerateError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.step() {
                Ok(Some(s)) if s.is_empty() && self.done.is_none() => continue,
                Ok(Some(s)) if s.is_empty() => return None,
                Ok(Some(s)) => return Some(Ok(s)),
                Ok(None) => return None,
                Err(e) => {
                    self.done = Some(StopReason::Cancelled);
                    return Some(Err(e));
                }
            }
        }
    }
}
