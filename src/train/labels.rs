//! Teacher soft labels, computed once: the teacher runs over each training sequence and
//! keeps, for every position, its top-k log-probabilities, the mass of the other tokens and
//! the NLL of the next token (`eval::SavedLogits`, version 2 with `first` = 0). The file is
//! reused while its tokens, vocabulary, sequence length and k match.

use rayon::prelude::*;

use crate::eval::kld::{LogSoftmax, TopK};
use crate::eval::SavedLogits;
use crate::model::{Logits, Model, ModelError};

/// Labels for `tokens` cut into `n_seq` sequences of `seq` tokens (the tail that does not
/// fill a sequence is dropped), with the tail mass at `temperature`. `progress(done, total)`
/// after each sequence.
pub fn teacher_labels(
    teacher: &Model,
    tokens: &[u32],
    seq: usize,
    top_k: usize,
    temperature: f32,
    vocab_fingerprint: u64,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<SavedLogits, ModelError> {
    let nv = teacher.config.n_vocab;
    let n_seq = tokens.len() / seq;
    let k = top_k.clamp(1, nv);
    let mut positions = Vec::with_capacity(n_seq * (seq - 1));
    let mut tail_t = Vec::with_capacity(n_seq * (seq - 1));
    for c in 0..n_seq {
        let chunk = &tokens[c * seq..(c + 1) * seq];
        let mut cache = teacher.new_cache(seq);
        let z = teacher.forward(&mut cache, chunk, Logits::All)?;
        let rows: Vec<(TopK, f64)> = z
            .par_chunks(nv)
            .take(seq - 1)
            .enumerate()
            .map(|(t, row)| {
                let top = TopK::of(row, &LogSoftmax::of(row), k, chunk[t + 1]);
                let tail = tail_at(row, &top.ids, temperature);
                (top, tail)
            })
            .collect();
        for (p, t) in rows {
            positions.push(p);
            tail_t.push(t);
        }
        progress(c + 1, n_seq);
    }
    Ok(SavedLogits {
        n_vocab: nv,
        ctx: seq,
        n_chunks: n_seq,
        top_k: k,
        vocab_fingerprint,
        first: 0,
        temperature,
        tokens: tokens[..n_seq * seq].to_vec(),
        positions,
        tail_t,
    })
}

/// Σ softmax(z/T) over the tokens not in `top`, summed directly (no 1 − Σ cancellation).
fn tail_at(z: &[f32], top: &[u32], temperature: f32) -> f64 {
    let t = temperature as f64;
    let mx = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut kept = vec![false; z.len()];
    top.iter().for_each(|&i| kept[i as usize] = true);
    let (mut all, mut rest) = (0f64, 0f64);
    for (&v, &k) in z.iter().zip(&kept) {
        let e = ((v as f64 - mx) / t).exp();
        all += e;
        if !k {
            rest += e;
        }
    }
    rest / all
}

/// Whether saved labels were made for this text, sequence length, k, temperature and
/// vocabulary.
pub fn labels_match(
    s: &SavedLogits,
    tokens: &[u32],
    seq: usize,
    top_k: usize,
    temperature: f32,
    fp: u64,
) -> bool {
    let n_seq = tokens.len() / seq;
    s.first == 0
        && s.temperature == temperature
        && s.ctx == seq
        && s.top_k == top_k
        && s.vocab_fingerprint == fp
        && s.n_chunks == n_seq
        && s.tokens[..] == tokens[..n_seq * seq]
}
