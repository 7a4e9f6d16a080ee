//! Teacher soft labels, computed once: the teacher runs over each training sequence and
//! keeps, for every position, its top-k log-probabilities, the mass of the other tokens and
//! the NLL of the next token (`eval::SavedLogits`, version 2 with `first` = 0). The file is
//! reused while its tokens, vocabulary, sequence length and k match.

use rayon::prelude::*;

use crate::eval::kld::{LogSoftmax, TopK};
use crate::eval::SavedLogits;
use crate::model::{Logits, Model, ModelError};

/// Labels for `tokens` cut into `n_seq` sequences of `seq` tokens (the tail that does not
/// fill a sequence is dropped). `progress(done, total)` after each sequence.
pub fn teacher_labels(
    teacher: &Model,
    tokens: &[u32],
    seq: usize,
    top_k: usize,
    vocab_fingerprint: u64,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<SavedLogits, ModelError> {
    let nv = teacher.config.n_vocab;
    let n_seq = tokens.len() / seq;
    let k = top_k.clamp(1, nv);
    let mut positions = Vec::with_capacity(n_seq * (seq - 1));
    for c in 0..n_seq {
        let chunk = &tokens[c * seq..(c + 1) * seq];
        let mut cache = teacher.new_cache(seq);
        let z = teacher.forward(&mut cache, chunk, Logits::All)?;
        let rows: Vec<TopK> = z
            .par_chunks(nv)
            .take(seq - 1)
            .enumerate()
            .map(|(t, row)| TopK::of(row, &LogSoftmax::of(row), k, chunk[t + 1]))
            .collect();
        positions.extend(rows);
        progress(c + 1, n_seq);
    }
    Ok(SavedLogits {
        n_vocab: nv,
        ctx: seq,
        n_chunks: n_seq,
        top_k: k,
        vocab_fingerprint,
        first: 0,
        tokens: tokens[..n_seq * seq].to_vec(),
        positions,
    })
}

/// Whether saved labels were made for this text, sequence length, k and vocabulary.
pub fn labels_match(s: &SavedLogits, tokens: &[u32], seq: usize, top_k: usize, fp: u64) -> bool {
    let n_seq = tokens.len() / seq;
    s.first == 0
        && s.ctx == seq
        && s.top_k == top_k
        && s.vocab_fingerprint == fp
        && s.n_chunks == n_seq
        && s.tokens[..] == tokens[..n_seq * seq]
}
