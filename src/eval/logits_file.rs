//! Saved baseline logits (`ledge eval --save-logits`, read back by `--baseline-logits`): the
//! token stream that was evaluated, and for every scored position the baseline's top-k
//! tokens with log-probabilities, the remaining probability mass, and the exact NLL of the
//! next token. That is enough for exact PPL(base), top-1 agreement and Δp, and for a KL
//! divergence that is a lower bound on the exact one (see `kld::kld_topk`); the same records
//! serve as soft labels for distillation.
//!
//! Layout (little-endian): magic `LEDGELGT`, u32 version, u32 n_vocab, u32 ctx, u32 n_chunks,
//! u32 top_k, u64 vocabulary fingerprint, (version 2) u32 first, f32 temperature,
//! u32 tokens[ctx·n_chunks], then per scored position (positions first..ctx−1 of each chunk,
//! chunk by chunk): f64 nll_target, f64 tail, (version 2) f64 tail_t, u32 ids[top_k],
//! f32 logp[top_k]. Version 1 has no `first`: it is ctx/2, the second half llama-perplexity
//! scores; `ledge distill`'s teacher labels (version 2) start at position 0, since every
//! position trains. `tail_t` is the mass outside the top k of the distribution softened to
//! `temperature` (= `tail` at 1): distillation's KL at T needs it, and it cannot be derived
//! from the top k and `tail`. With the default k = 1024 that is 8 KB a position,
//! against ~98 KB (SmolLM2, 49k vocabulary) or ~524 KB (Gemma 3, 262k) for
//! llama-perplexity's full uint16 rows.
//!
//! How much KLD the top-k form misses depends on how much probability lies outside the top k.
//! Measured (tests/eval.rs, SmolLM2 Q4_0 variant vs Q4_1, 378 positions, exact KLD 0.284):
//! k = 8: 45% low, 64: 22%, 256: 11%, 1024: 4.4%. A small, uncertain model spreads its mass
//! thin, so k must be large; `--baseline MODEL` gives the exact value.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::kld::TopK;
use super::EvalError;

const MAGIC: &[u8; 8] = b"LEDGELGT";
const VERSION: u32 = 2;
const HEADER_V1: usize = 8 + 4 * 5 + 8;

#[derive(Clone, Debug, PartialEq)]
pub struct SavedLogits {
    pub n_vocab: usize,
    pub ctx: usize,
    pub n_chunks: usize,
    pub top_k: usize,
    pub vocab_fingerprint: u64,
    /// The first scored position of each chunk (ctx/2 for `eval`, 0 for distillation).
    pub first: usize,
    /// The temperature of `tail_t`.
    pub temperature: f32,
    pub tokens: Vec<u32>,
    pub positions: Vec<TopK>,
    /// Per position, the mass outside the top k at `temperature`.
    pub tail_t: Vec<f64>,
}

/// Positions scored in one chunk of `ctx` tokens (llama-perplexity's n_ctx − 1 − n_ctx/2).
pub fn scored_per_chunk(ctx: usize) -> usize {
    ctx - 1 - ctx / 2
}

fn record_size(k: usize, version: u32) -> usize {
    if version == 1 {
        16 + 8 * k
    } else {
        24 + 8 * k
    }
}

impl SavedLogits {
    /// Writes to a temporary file beside `path`, renamed into place once complete.
    pub fn write(&self, path: &Path) -> Result<(), EvalError> {
        let mut buf = Vec::with_capacity(
            HEADER_V1
                + 8
                + 4 * self.tokens.len()
                + self.positions.len() * record_size(self.top_k, VERSION),
        );
        buf.extend_from_slice(MAGIC);
        for v in [
            VERSION,
            self.n_vocab as u32,
            self.ctx as u32,
            self.n_chunks as u32,
            self.top_k as u32,
        ] {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        buf.extend_from_slice(&self.vocab_fingerprint.to_le_bytes());
        buf.extend_from_slice(&(self.first as u32).to_le_bytes());
        buf.extend_from_slice(&self.temperature.to_le_bytes());
        assert_eq!(self.tail_t.len(), self.positions.len());
        self.tokens
            .iter()
            .for_each(|t| buf.extend_from_slice(&t.to_le_bytes()));
        for (p, tt) in self.positions.iter().zip(&self.tail_t) {
            debug_assert_eq!(p.ids.len(), self.top_k);
            buf.extend_from_slice(&p.nll_target.to_le_bytes());
            buf.extend_from_slice(&p.tail.to_le_bytes());
            buf.extend_from_slice(&tt.to_le_bytes());
            p.ids
                .iter()
                .for_each(|t| buf.extend_from_slice(&t.to_le_bytes()));
            p.logp
                .iter()
                .for_each(|t| buf.extend_from_slice(&t.to_le_bytes()));
        }
        let io = |e: std::io::Error| EvalError::Io(path.display().to_string(), e);
        let mut tmp = PathBuf::from(path);
        tmp.as_mut_os_string().push(".tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&buf).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io)
    }

    pub fn read(path: &Path) -> Result<SavedLogits, EvalError> {
        let bytes =
            std::fs::read(path).map_err(|e| EvalError::Io(path.display().to_string(), e))?;
        Self::from_bytes(&bytes).map_err(|why| EvalError::BadLogitsFile {
            path: path.display().to_string(),
            why,
        })
    }

    pub fn from_bytes(b: &[u8]) -> Result<SavedLogits, String> {
        if b.len() < HEADER_V1 || &b[..8] != MAGIC {
            return Err("not a ledge logits file (no LEDGELGT header)".into());
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let version = u32_at(8);
        if version != 1 && version != VERSION {
            return Err(format!(
                "version {version}, this ledge reads versions 1 and {VERSION}"
            ));
        }
        let (n_vocab, ctx, n_chunks, top_k) = (
            u32_at(12) as usize,
            u32_at(16) as usize,
            u32_at(20) as usize,
            u32_at(24) as usize,
        );
        let vocab_fingerprint = u64::from_le_bytes(b[28..36].try_into().unwrap());
        if ctx < 4 || top_k == 0 || top_k > n_vocab {
            return Err(format!(
                "implausible header: ctx {ctx}, top_k {top_k}, n_vocab {n_vocab}"
            ));
        }
        let (first, temperature, header) = if version == 1 {
            (ctx / 2, 1.0, HEADER_V1)
        } else {
            if b.len() < HEADER_V1 + 8 {
                return Err("truncated header".into());
            }
            let t = f32::from_le_bytes(b[HEADER_V1 + 4..HEADER_V1 + 8].try_into().unwrap());
            (u32_at(HEADER_V1) as usize, t, HEADER_V1 + 8)
        };
        if !(temperature > 0.0 && temperature.is_finite()) {
            return Err(format!("implausible header: temperature {temperature}"));
        }
        let rec = record_size(top_k, version);
        let body = if version == 1 { 16 } else { 24 };
        if first >= ctx - 1 {
            return Err(format!(
                "implausible header: first scored position {first} of a {ctx}-token chunk"
            ));
        }
        let n_tok = ctx
            .checked_mul(n_chunks)
            .ok_or("implausible header: ctx × chunks overflows")?;
        let n_pos = n_chunks * (ctx - 1 - first);
        let expected = n_tok
            .checked_mul(4)
            .zip(n_pos.checked_mul(rec))
            .and_then(|(t, p)| (header + t).checked_add(p))
            .ok_or("implausible header: sizes overflow")?;
        if b.len() != expected {
            return Err(format!(
                "{} bytes, but its header describes {expected} (truncated or corrupt)",
                b.len()
            ));
        }
        let tokens: Vec<u32> = b[header..header + 4 * n_tok]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(format!("token id {t} outside its vocabulary of {n_vocab}"));
        }
        let mut positions = Vec::with_capacity(n_pos);
        let mut tail_t = Vec::with_capacity(n_pos);
        for r in b[header + 4 * n_tok..].chunks_exact(rec) {
            let f64_at = |o: usize| f64::from_le_bytes(r[o..o + 8].try_into().unwrap());
            let ids: Vec<u32> = r[body..body + 4 * top_k]
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            if let Some(t) = ids.iter().find(|&&t| t as usize >= n_vocab) {
                return Err(format!("top-k id {t} outside its vocabulary of {n_vocab}"));
            }
            positions.push(TopK {
                ids,
                logp: r[body + 4 * top_k..]
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                tail: f64_at(8),
                nll_target: f64_at(0),
            });
            tail_t.push(if version == 1 { f64_at(8) } else { f64_at(16) });
        }
        Ok(SavedLogits {
            n_vocab,
            ctx,
            n_chunks,
            top_k,
            vocab_fingerprint,
            first,
            temperature,
            tokens,
            positions,
            tail_t,
        })
    }

    /// Scored positions per chunk.
    pub fn scored(&self) -> usize {
        self.ctx - 1 - self.first
    }

    /// The scored positions of chunk `c`.
    pub fn chunk(&self, c: usize) -> &[TopK] {
        let s = self.scored();
        &self.positions[c * s..(c + 1) * s]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SavedLogits {
        let ctx = 8;
        let n_chunks = 2;
        let positions: Vec<TopK> = (0..n_chunks * scored_per_chunk(ctx))
            .map(|i| TopK {
                ids: vec![i as u32 % 10, 11, 12],
                logp: vec![-0.5, -1.5, -2.5 - i as f32],
                tail: 0.01 * i as f64,
                nll_target: 0.25 + i as f64,
            })
            .collect();
        SavedLogits {
            n_vocab: 20,
            ctx,
            n_chunks,
            top_k: 3,
            vocab_fingerprint: 0xDEAD_BEEF_0123_4567,
            first: ctx / 2,
            temperature: 1.0,
            tokens: (0..16).map(|i| i % 20).collect(),
            tail_t: positions.iter().map(|p: &TopK| p.tail).collect(),
            positions,
        }
    }

    #[test]
    fn round_trips_through_a_file() {
        let dir = std::env::temp_dir().join(format!("ledge-logits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("base.logits");
        let s = sample();
        s.write(&p).unwrap();
        assert_eq!(SavedLogits::read(&p).unwrap(), s);
        assert!(!dir.join("base.logits.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_truncated_foreign_and_out_of_range_files() {
        let dir = std::env::temp_dir().join(format!("ledge-logits-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("base.logits");
        sample().write(&p).unwrap();
        let good = std::fs::read(&p).unwrap();
        let err = SavedLogits::from_bytes(&good[..good.len() - 1]).unwrap_err();
        assert!(err.contains("truncated"), "{err}");
        let err = SavedLogits::from_bytes(b"GGUF\x03\0\0\0 not logits at all....").unwrap_err();
        assert!(err.contains("not a ledge logits file"), "{err}");
        let mut bad = good.clone();
        bad[HEADER_V1 + 8..HEADER_V1 + 12].copy_from_slice(&99u32.to_le_bytes());
        let err = SavedLogits::from_bytes(&bad).unwrap_err();
        assert!(err.contains("token id 99"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A version 1 file (no `first`: the second half of each chunk) still reads, and a
    /// version 2 file scoring every position round-trips.
    #[test]
    fn reads_version_1_and_all_position_files() {
        let s = sample();
        let dir = std::env::temp_dir().join(format!("ledge-logits-v1-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("base.logits");
        s.write(&p).unwrap();
        let v2 = std::fs::read(&p).unwrap();
        // Version 1: no first or temperature, records without tail_t.
        let mut v1 = v2[..HEADER_V1].to_vec();
        v1[8..12].copy_from_slice(&1u32.to_le_bytes());
        let body = HEADER_V1 + 8 + 4 * s.tokens.len();
        v1.extend_from_slice(&v2[HEADER_V1 + 8..body]);
        for r in v2[body..].chunks_exact(record_size(s.top_k, 2)) {
            v1.extend_from_slice(&r[..16]);
            v1.extend_from_slice(&r[24..]);
        }
        assert_eq!(SavedLogits::from_bytes(&v1).unwrap(), s);
        let mut all = sample();
        all.first = 0;
        all.temperature = 2.5;
        all.positions = (0..all.n_chunks * (all.ctx - 1))
            .map(|i| all.positions[i % s.positions.len()].clone())
            .collect();
        all.tail_t = (0..all.positions.len())
            .map(|i| 0.5 + 0.01 * i as f64)
            .collect();
        all.write(&p).unwrap();
        let back = SavedLogits::read(&p).unwrap();
        assert_eq!(back.scored(), all.ctx - 1);
        assert_eq!(back, all);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
