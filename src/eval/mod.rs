//! Measuring models: perplexity and KL divergence against a baseline (perplexity.rs, kld.rs,
//! saved baseline logits in logits_file.rs), speed and memory (bench.rs, sys.rs), and the
//! size–quality report (report.rs). These are library functions: `ledge eval`, `ledge report`
//! and the compression search all call them.

pub mod bandwidth;
pub mod bench;
pub mod kld;
pub mod logits_file;
pub mod perplexity;
pub mod report;

pub mod sys;

pub use kld::{Estimate, KldStats};
pub use logits_file::SavedLogits;
pub use perplexity::{evaluate, Baseline, EvalOptions, EvalResult};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("the evaluation text is empty")]
    EmptyText,
    #[error("the evaluation text is too short: it tokenizes to {tokens} tokens, and a context of {ctx} needs at least {needed} (two chunks); use a longer text or a smaller --ctx")]
    TextTooShort {
        tokens: usize,
        needed: usize,
        ctx: usize,
    },
    #[error("--ctx {0} is too small: perplexity scores the second half of each chunk, so it needs at least 4 tokens")]
    CtxTooSmall(usize),
    #[error("the baseline has a different vocabulary: the model has {model} tokens, the baseline {baseline}; KL divergence needs the same tokenizer")]
    VocabMismatch { model: usize, baseline: usize },
    #[error("the baseline has a different vocabulary: same size, but the token texts differ; KL divergence needs the same tokenizer")]
    VocabDiffers,
    #[error("the saved baseline logits were computed with --ctx {saved}, not {asked}")]
    LogitsCtx { saved: usize, asked: usize },
    #[error("the saved baseline logits were computed on a different text (its tokens differ from this text's)")]
    LogitsTextDiffers,
    #[error("{0}")]
    Other(String),
    #[error("{path}: {why}")]
    BadLogitsFile { path: String, why: String },
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
}
