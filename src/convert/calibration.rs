//! The one calibration loop: tokenize a text, cut it into chunks of `ctx` tokens (BOS first
//! where the model adds one), run each chunk through `Model::forward_observed` and hand every
//! matmul input to an observer. The imatrix, the GPTQ Gram file and pruning's statistics are
//! all observers of this loop; they differ only in what they keep.

use super::{ConvertError, Result};
use crate::gguf::GgufFile;
use crate::model::{Logits, MatmulInput, Model};
use crate::progress::Progress;
use crate::tokenizer::Tokenizer;

/// What a calibration pass collects.
pub trait ChunkObserver: Send {
    /// A chunk of `n_pos` positions starts (every matrix observed until the next call holds
    /// one row per position).
    fn start_chunk(&mut self, n_pos: usize);
    /// The input `x` of a matmul of block `layer` (None: the output matrix).
    fn observe(&mut self, layer: Option<usize>, which: MatmulInput, x: &[f32]);
}

/// The model and tokenizer of a GGUF, loaded for calibration.
pub struct Calibrator<'a> {
    pub model: Model<'a>,
    tok: Tokenizer,
}

/// What one pass saw.
#[derive(Clone, Copy, Debug)]
pub struct Pass {
    pub chunks: usize,
    pub tokens: usize,
}

impl<'a> Calibrator<'a> {
    pub fn new(f: &'a GgufFile) -> Result<Calibrator<'a>> {
        let model = Model::load(f).map_err(|e| ConvertError::Usage(e.to_string()))?;
        let tok = Tokenizer::from_gguf(f).map_err(|e| ConvertError::Tokenizer(e.to_string()))?;
        Ok(Calibrator { model, tok })
    }

    /// Runs at most `max_chunks` chunks of `ctx` tokens of `text` past `obs`. With
    /// `progress`: a progress bar with that label, over the chunks.
    pub fn run(
        &self,
        text: &str,
        ctx: usize,
        max_chunks: usize,
        progress: Option<&str>,
        obs: &mut impl ChunkObserver,
    ) -> Result<Pass> {
        let ids = self.tok.encode(text, false, false);
        let bos = self.tok.bos().filter(|_| self.tok.add_bos());
        let body = ctx - usize::from(bos.is_some());
        let n_chunks = (ids.len() / body).min(max_chunks);
        if n_chunks == 0 {
            return Err(ConvertError::Usage(format!(
                "the calibration text has {} tokens, fewer than one chunk of {ctx}",
                ids.len()
            )));
        }
        let mut tokens = 0usize;
        let mut bar = progress.map(|label| Progress::new(label, "chunks"));
        if let Some(b) = &mut bar {
            b.update(0, n_chunks);
        }
        for c in 0..n_chunks {
            let mut chunk: Vec<u32> = bos.into_iter().collect();
            chunk.extend_from_slice(&ids[c * body..(c + 1) * body]);
            let mut cache = self.model.new_cache(ctx);
            obs.start_chunk(chunk.len());
            let mut observe =
                |layer: Option<usize>, which: MatmulInput, x: &[f32]| obs.observe(layer, which, x);
            self.model
                .forward_observed(&mut cache, &chunk, Logits::All, &mut observe)
                .map_err(|e| ConvertError::Usage(e.to_string()))?;
            tokens += chunk.len();
            if let Some(b) = &mut bar {
                b.set_message(format!(
                    "{:.0} tokens/s",
                    tokens as f64 / b.elapsed().max(1e-9)
                ));
                b.update(c + 1, n_chunks);
            }
        }
        Ok(Pass {
            chunks: n_chunks,
            tokens,
        })
    }
}
