//! Perplexity with llama-perplexity's protocol, so the numbers are comparable:
//! - the text loses one trailing newline (as `-f FILE` does) and is tokenized with the
//!   model's special tokens added (BOS where the vocabulary asks for it), specials not parsed;
//! - it is cut into `n_chunks = tokens / ctx` chunks of `ctx` tokens, each run in a fresh
//!   cache; when the model adds BOS, a chunk's first token is replaced by BOS;
//! - only the second half is scored: the logits at positions ctx/2 … ctx−2 predict tokens
//!   ctx/2+1 … ctx−1, so every prediction has at least ctx/2 tokens of context;
//! - PPL = exp(mean NLL) ± PPL·sqrt((E[NLL²] − E[NLL]²)/(N−1)).
//!
//! With a baseline (another model or its saved top-k logits) each scored position is also
//! compared with the baseline's distribution (see kld.rs).

use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use super::kld::{self, Estimate, KldAccumulator, KldStats, LogSoftmax, PositionCmp, TopK};
use super::logits_file::{scored_per_chunk, SavedLogits};
use super::EvalError;
use crate::model::{Logits, Model};
use crate::tokenizer::Tokenizer;

/// What to compare against.
pub enum Baseline<'a, 'm> {
    /// Run this model on the same chunks and compare full distributions (exact KLD).
    Model(&'a Model<'m>),
    /// Compare with saved top-k records (KLD is the coarsened lower bound).
    Saved(&'a SavedLogits),
    /// Compare with the baseline's full logit rows, computed once by `baseline_rows` (exact
    /// KLD, as with `Model`, without running the baseline again for every variant).
    Rows(&'a BaselineRows),
}

/// A baseline's logits at every scored position: per chunk, (ctx−1−ctx/2) rows of n_vocab.
/// 49k vocabulary × 255 positions × 4 bytes = 50 MB a chunk: for a handful of chunks.
pub struct BaselineRows {
    pub ctx: usize,
    pub n_vocab: usize,
    pub chunks: Vec<Vec<f32>>,
}

/// Runs `model` over the first `n_chunks` chunks of `tokens` (the same chunks `evaluate`
/// makes with `opts`) and keeps the logits of every scored position.
pub fn baseline_rows(
    model: &Model,
    tokens: &[u32],
    opts: &EvalOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<BaselineRows, EvalError> {
    let ctx = opts.ctx;
    if tokens.is_empty() {
        return Err(EvalError::EmptyText);
    }
    let n_chunks = plan_chunks(tokens.len(), ctx, opts.chunks)?;
    let mut cache = model.new_cache(ctx);
    let mut chunks = Vec::with_capacity(n_chunks);
    progress(0, n_chunks);
    for c in 0..n_chunks {
        let mut chunk = tokens[c * ctx..(c + 1) * ctx].to_vec();
        if let Some(bos) = opts.bos {
            chunk[0] = bos;
        }
        let mut rows = Vec::with_capacity(scored_per_chunk(ctx) * model.config.n_vocab);
        chunk_logits(model, &mut cache, &chunk, |_, l| {
            rows.extend_from_slice(l);
            Ok(())
        })?;
        chunks.push(rows);
        progress(c + 1, n_chunks);
    }
    Ok(BaselineRows {
        ctx,
        n_vocab: model.config.n_vocab,
        chunks,
    })
}

#[derive(Clone, Debug)]
pub struct EvalOptions {
    pub ctx: usize,
    /// At most this many chunks (None: all the text holds).
    pub chunks: Option<usize>,
    /// Put BOS at each chunk's start (the tokenizer's BOS when it adds one).
    pub bos: Option<u32>,
    /// Also keep this model's top-k logits per scored position (for `--save-logits`).
    pub save_top_k: Option<usize>,
    /// Fingerprint of the model's vocabulary, written into saved logits.
    pub vocab_fingerprint: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct EvalResult {
    pub ctx: usize,
    pub n_chunks: usize,
    /// Tokens the text produced.
    pub n_tokens: usize,
    /// Positions scored (n_chunks · (ctx − 1 − ctx/2)).
    pub n_scored: usize,
    pub ppl: Estimate,
    /// Mean negative log-likelihood (nats per token).
    pub nll: f64,
    pub kld: Option<KldStats>,
    /// Set when the KLD came from saved top-k logits: it is then a lower bound (kld.rs).
    pub kld_top_k: Option<usize>,
    pub seconds: f64,
    /// Evaluated tokens per second (all ctx tokens of each chunk, baseline included).
    pub tokens_per_second: f64,
    #[serde(skip)]
    pub saved: Option<SavedLogits>,
}

/// The text as llama-perplexity tokenizes a `-f` file.
pub fn tokenize_text(tok: &Tokenizer, text: &str) -> Vec<u32> {
    let text = text.strip_suffix('\n').unwrap_or(text);
    tok.encode(text, true, false)
}

/// A 64-bit FNV-1a over every token's text and the BOS id: two tokenizers with the same
/// fingerprint map text to the same ids.
pub fn vocab_fingerprint(tok: &Tokenizer) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for id in 0..tok.n_vocab() as u32 {
        eat(tok.token_text(id).unwrap_or("").as_bytes());
        eat(&[0xff]);
    }
    eat(&tok.bos().unwrap_or(u32::MAX).to_le_bytes());
    h
}

/// How many chunks `n_tokens` tokens give at `ctx`, or why there are too few.
pub fn plan_chunks(n_tokens: usize, ctx: usize, chunks: Option<usize>) -> Result<usize, EvalError> {
    if ctx < 4 {
        return Err(EvalError::CtxTooSmall(ctx));
    }
    if n_tokens < 2 * ctx {
        return Err(EvalError::TextTooShort {
            tokens: n_tokens,
            needed: 2 * ctx,
            ctx,
        });
    }
    let max = n_tokens / ctx;
    Ok(chunks.filter(|&c| c > 0).map_or(max, |c| c.min(max)))
}

/// Runs one chunk and returns the logits of its scored positions: (ctx−1−ctx/2, n_vocab).
/// The first half is run for its cache only; the scored half is run in slices so a 262k
/// vocabulary needs at most `SLICE` rows of logits at a time.
fn chunk_logits(
    model: &Model,
    cache: &mut crate::model::KvCache,
    chunk: &[u32],
    mut each: impl FnMut(usize, &[f32]) -> Result<(), EvalError>,
) -> Result<(), EvalError> {
    const SLICE: usize = 128;
    let ctx = chunk.len();
    let first = ctx / 2;
    let nv = model.config.n_vocab;
    cache.clear();
    model.forward(cache, &chunk[..first], Logits::Last)?;
    let mut pos = first;
    while pos < ctx - 1 {
        let end = (pos + SLICE).min(ctx - 1);
        let logits = model.forward(cache, &chunk[pos..end], Logits::All)?;
        debug_assert_eq!(logits.len(), (end - pos) * nv);
        each(pos - first, &logits)?;
        pos = end;
    }
    Ok(())
}

/// Perplexity of `model` over `tokens` (see the module comment), optionally against a
/// baseline. `progress(done, total)` is called after each chunk.
pub fn evaluate(
    model: &Model,
    tokens: &[u32],
    opts: &EvalOptions,
    baseline: Option<Baseline>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EvalResult, EvalError> {
    let ctx = opts.ctx;
    let nv = model.config.n_vocab;
    if tokens.is_empty() {
        return Err(EvalError::EmptyText);
    }
    let mut n_chunks = plan_chunks(tokens.len(), ctx, opts.chunks)?;
    match &baseline {
        Some(Baseline::Model(b)) if b.config.n_vocab != nv => {
            return Err(EvalError::VocabMismatch {
                model: nv,
                baseline: b.config.n_vocab,
            })
        }
        Some(Baseline::Saved(s)) => {
            if s.n_vocab != nv {
                return Err(EvalError::VocabMismatch {
                    model: nv,
                    baseline: s.n_vocab,
                });
            }
            if s.vocab_fingerprint != opts.vocab_fingerprint {
                return Err(EvalError::VocabDiffers);
            }
            if s.ctx != ctx {
                return Err(EvalError::LogitsCtx {
                    saved: s.ctx,
                    asked: ctx,
                });
            }
            if s.first > ctx / 2 {
                return Err(EvalError::Other(format!(
                    "the saved logits start at position {} of each chunk; eval needs them from {}",
                    s.first,
                    ctx / 2
                )));
            }
            n_chunks = n_chunks.min(s.n_chunks);
            if tokens[..n_chunks * ctx] != s.tokens[..n_chunks * ctx] {
                return Err(EvalError::LogitsTextDiffers);
            }
        }
        Some(Baseline::Rows(r)) => {
            if r.n_vocab != nv {
                return Err(EvalError::VocabMismatch {
                    model: nv,
                    baseline: r.n_vocab,
                });
            }
            if r.ctx != ctx {
                return Err(EvalError::LogitsCtx {
                    saved: r.ctx,
                    asked: ctx,
                });
            }
            n_chunks = n_chunks.min(r.chunks.len());
        }
        _ => {}
    }

    let first = ctx / 2;
    let scored = scored_per_chunk(ctx);
    let mut cache = model.new_cache(ctx);
    let mut base_cache = match &baseline {
        Some(Baseline::Model(b)) => Some(b.new_cache(ctx)),
        _ => None,
    };
    let (mut nll_sum, mut nll2_sum, mut count) = (0.0f64, 0.0f64, 0usize);
    let mut acc = baseline.as_ref().map(|_| KldAccumulator::default());
    let mut saved_positions = Vec::new();
    let t0 = Instant::now();
    progress(0, n_chunks);
    for c in 0..n_chunks {
        let mut chunk = tokens[c * ctx..(c + 1) * ctx].to_vec();
        if let Some(bos) = opts.bos {
            chunk[0] = bos;
        }
        // Baseline logits of the scored half, kept as full rows (exact KLD); one chunk's
        // worth at a time.
        let mut base_rows: Vec<f32> = Vec::new();
        if let (Some(Baseline::Model(b)), Some(bc)) = (&baseline, base_cache.as_mut()) {
            base_rows.reserve(scored * nv);
            chunk_logits(b, bc, &chunk, |_, l| {
                base_rows.extend_from_slice(l);
                Ok(())
            })?;
        }
        chunk_logits(model, &mut cache, &chunk, |off, logits| {
            let rows = logits.len() / nv;
            // Per position: (nll, comparison, saved record), computed in parallel.
            let per: Vec<(f64, Option<PositionCmp>, Option<TopK>)> = (0..rows)
                .into_par_iter()
                .map_init(
                    || vec![false; nv],
                    |mask, r| {
                        let i = off + r; // index among the chunk's scored positions
                        let target = chunk[first + i + 1];
                        let row = &logits[r * nv..(r + 1) * nv];
                        let n = LogSoftmax::of(row);
                        let nll = -n.logp(row[target as usize]);
                        let cmp = match &baseline {
                            None => None,
                            Some(Baseline::Model(_)) | Some(Baseline::Rows(_)) => {
                                let b = match &baseline {
                                    Some(Baseline::Rows(r)) => &r.chunks[c][i * nv..(i + 1) * nv],
                                    _ => &base_rows[i * nv..(i + 1) * nv],
                                };
                                let bn = LogSoftmax::of(b);
                                Some(PositionCmp {
                                    nll,
                                    nll_base: -bn.logp(b[target as usize]),
                                    kld: kld::kld_full(b, &bn, row, &n),
                                    same_top: bn.argmax == n.argmax,
                                })
                            }
                            Some(Baseline::Saved(s)) => {
                                // Distillation labels score every position; eval the second half.
                                let t = &s.chunk(c)[i + ctx / 2 - s.first];
                                Some(PositionCmp {
                                    nll,
                                    nll_base: t.nll_target,
                                    kld: kld::kld_topk(t, row, &n, mask),
                                    same_top: t.argmax() as usize == n.argmax,
                                })
                            }
                        };
                        let save = opts.save_top_k.map(|k| TopK::of(row, &n, k, target));
                        (nll, cmp, save)
                    },
                )
                .collect();
            for (nll, cmp, save) in per {
                nll_sum += nll;
                nll2_sum += nll * nll;
                count += 1;
                if let (Some(a), Some(cmp)) = (acc.as_mut(), cmp) {
                    a.add(cmp);
                }
                if let Some(s) = save {
                    saved_positions.push(s);
                }
            }
            Ok(())
        })?;
        progress(c + 1, n_chunks);
    }
    let seconds = t0.elapsed().as_secs_f64();
    debug_assert_eq!(count, n_chunks * scored);
    let nll = nll_sum / count as f64;
    let var = nll2_sum / count as f64 - nll * nll;
    let ppl = nll.exp();
    let stderr = if var > 0.0 && count > 1 {
        (var / (count - 1) as f64).sqrt() * ppl
    } else {
        0.0
    };
    let passes = if matches!(baseline, Some(Baseline::Model(_))) {
        2
    } else {
        1
    };
    Ok(EvalResult {
        ctx,
        n_chunks,
        n_tokens: tokens.len(),
        n_scored: count,
        ppl: Estimate { value: ppl, stderr },
        nll,
        kld: acc.map(|a| a.stats()),
        kld_top_k: match &baseline {
            Some(Baseline::Saved(s)) => Some(s.top_k),
            _ => None,
        },
        seconds,
        tokens_per_second: (n_chunks * ctx * passes) as f64 / seconds.max(1e-9),
        saved: opts.save_top_k.map(|k| SavedLogits {
            n_vocab: nv,
            ctx,
            n_chunks,
            top_k: k.clamp(1, nv),
            vocab_fingerprint: opts.vocab_fingerprint,
            first: ctx / 2,
            temperature: 1.0,
            tokens: tokens[..n_chunks * ctx].to_vec(),
            tail_t: saved_positions.iter().map(|p: &kld::TopK| p.tail).collect(),
            positions: saved_positions,
        }),
    })
}

/// The human-readable summary `ledge eval` prints.
pub fn summary(r: &EvalResult) -> String {
    let mut s = format!(
        "chunks {} × ctx {} ({} tokens scored of {})\nPPL = {:.4} +/- {:.5}\n",
        r.n_chunks, r.ctx, r.n_scored, r.n_tokens, r.ppl.value, r.ppl.stderr
    );
    if let Some(k) = &r.kld {
        if let Some(top) = r.kld_top_k {
            s += &format!(
                "KLD from saved logits: over the baseline's top {top} tokens plus one bucket for \
                 the rest, a lower bound on the exact value (rerun with --baseline MODEL for it)\n"
            );
        }
        s += &format!(
            "PPL(base)              : {:.4} +/- {:.5}\n\
             ln(PPL(Q)/PPL(base))   : {:.6} +/- {:.6}\n\
             Mean KLD               : {:.6} +/- {:.6}\n\
             Median KLD             : {:.6}\n\
             99.0% KLD              : {:.6}\n\
             Maximum KLD            : {:.6}\n\
             Same top token         : {:.3} +/- {:.3} %\n\
             RMS Δp                 : {:.3} +/- {:.3} %\n",
            k.ppl_base.value,
            k.ppl_base.stderr,
            k.ln_ppl_ratio.value,
            k.ln_ppl_ratio.stderr,
            k.kld_mean.value,
            k.kld_mean.stderr,
            k.kld_median,
            k.kld_p99,
            k.kld_max,
            100.0 * k.same_top.value,
            100.0 * k.same_top.stderr,
            100.0 * k.rms_dp.value,
            100.0 * k.rms_dp.stderr,
        );
    }
    s += &format!("{:.1} s, {:.1} tokens/s\n", r.seconds, r.tokens_per_second);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_plan_follows_llama_perplexity() {
        assert_eq!(plan_chunks(2048, 512, None).unwrap(), 4);
        assert_eq!(plan_chunks(2047, 512, None).unwrap(), 3);
        assert_eq!(plan_chunks(5000, 512, Some(3)).unwrap(), 3);
        assert_eq!(plan_chunks(5000, 512, Some(100)).unwrap(), 9);
        assert!(matches!(
            plan_chunks(1023, 512, None),
            Err(EvalError::TextTooShort { needed: 1024, .. })
        ));
        assert!(matches!(
            plan_chunks(100, 2, None),
            Err(EvalError::CtxTooSmall(2))
        ));
        assert_eq!(scored_per_chunk(512), 255);
    }
}
