//! `ledge eval`: perplexity of a model over a text, optionally against a baseline model or
//! its saved logits, and saving this model's logits for later comparisons.

use std::path::{Path, PathBuf};

use super::AppError;
use crate::eval::perplexity::{self, vocab_fingerprint};
use crate::eval::progress::Progress;
use crate::eval::{Baseline, EvalOptions, EvalResult, SavedLogits};
use crate::gguf::GgufFile;
use crate::model::Model;
use crate::tokenizer::Tokenizer;

pub struct EvalArgs {
    pub model: Option<PathBuf>,
    pub text: Option<PathBuf>,
    pub ctx: usize,
    pub chunks: Option<usize>,
    pub baseline: Option<PathBuf>,
    pub baseline_logits: Option<PathBuf>,
    pub save_logits: Option<PathBuf>,
    pub top_k: usize,
    pub threads: Option<usize>,
    pub json: bool,
}

/// Opens a GGUF file, naming the file in any error (a non-GGUF file says so).
pub fn open_gguf(path: &Path) -> Result<GgufFile, AppError> {
    GgufFile::open(path).map_err(|e| AppError::Other(format!("{}: {e}", path.display())))
}

/// Reads the evaluation text, refusing an empty or non-UTF-8 file by name.
pub fn read_text(path: &Path) -> Result<String, AppError> {
    let bytes =
        std::fs::read(path).map_err(|e| AppError::Other(format!("{}: {e}", path.display())))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        AppError::Other(format!(
            "{}: not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })?;
    if text.trim().is_empty() {
        return Err(AppError::Other(format!(
            "{}: the evaluation text is empty",
            path.display()
        )));
    }
    Ok(text)
}

/// A model and tokenizer over an open file, errors naming the file.
pub fn load<'f>(path: &Path, f: &'f GgufFile) -> Result<(Model<'f>, Tokenizer), AppError> {
    let named = |e: &dyn std::fmt::Display| AppError::Other(format!("{}: {e}", path.display()));
    let model = Model::load(f).map_err(|e| named(&e))?;
    let tok = Tokenizer::from_gguf(f).map_err(|e| named(&e))?;
    Ok((model, tok))
}

/// Refuses a baseline whose tokenizer differs from the model's.
pub fn check_same_vocab(
    model: &Tokenizer,
    base: &Tokenizer,
    base_path: &Path,
) -> Result<(), AppError> {
    if model.n_vocab() != base.n_vocab() {
        return Err(AppError::Other(format!(
            "baseline {}: different vocabulary ({} tokens, the model has {}); KL divergence needs the same tokenizer",
            base_path.display(),
            base.n_vocab(),
            model.n_vocab()
        )));
    }
    if vocab_fingerprint(model) != vocab_fingerprint(base) {
        return Err(AppError::Other(format!(
            "baseline {}: different vocabulary (same size, different token texts); KL divergence needs the same tokenizer",
            base_path.display()
        )));
    }
    Ok(())
}

pub fn eval(args: EvalArgs) -> Result<String, Box<dyn std::error::Error>> {
    if args.baseline.is_some() && args.baseline_logits.is_some() {
        return Err(
            AppError::Other("give --baseline or --baseline-logits, not both".into()).into(),
        );
    }
    let path = match args.model {
        Some(p) => p,
        None => super::default_model()?,
    };
    super::init_threads(args.threads);
    crate::quant::simd::init()?;
    let file = open_gguf(&path)?;
    let (model, tok) = load(&path, &file)?;

    let saved = match &args.baseline_logits {
        Some(p) => Some(SavedLogits::read(p)?),
        None => None,
    };
    let tokens = match (&args.text, &saved) {
        (Some(t), _) => perplexity::tokenize_text(&tok, &read_text(t)?),
        // Saved logits carry the token stream they were computed on.
        (None, Some(s)) => s.tokens.clone(),
        (None, None) => {
            return Err(
                AppError::Other("--text FILE is required (or --baseline-logits)".into()).into(),
            )
        }
    };

    let base_file = match &args.baseline {
        Some(p) => Some(open_gguf(p)?),
        None => None,
    };
    let base = match (&args.baseline, &base_file) {
        (Some(p), Some(f)) => {
            let (m, t) = load(p, f)?;
            check_same_vocab(&tok, &t, p)?;
            Some(m)
        }
        _ => None,
    };
    let baseline = match (&base, &saved) {
        (Some(m), _) => Some(Baseline::Model(m)),
        (None, Some(s)) => Some(Baseline::Saved(s)),
        _ => None,
    };

    let opts = EvalOptions {
        ctx: args.ctx,
        chunks: args.chunks,
        bos: tok.add_bos().then(|| tok.bos()).flatten(),
        save_top_k: args.save_logits.as_ref().map(|_| args.top_k),
        vocab_fingerprint: vocab_fingerprint(&tok),
    };
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let mut bar = Progress::new(format!("eval {name}"), "chunks");
    let result = crate::eval::evaluate(&model, &tokens, &opts, baseline, &mut |d, t| {
        bar.update(d, t)
    })?;
    if let (Some(p), Some(s)) = (&args.save_logits, &result.saved) {
        s.write(p)?;
        eprintln!(
            "saved top-{} logits of {} positions to {}",
            s.top_k,
            s.positions.len(),
            p.display()
        );
    }
    Ok(render(&path, &result, args.json)?)
}

fn render(path: &Path, r: &EvalResult, json: bool) -> Result<String, serde_json::Error> {
    if json {
        let mut v = serde_json::to_value(r)?;
        v["model"] = path.display().to_string().into();
        return Ok(serde_json::to_string_pretty(&v)? + "\n");
    }
    Ok(format!(
        "model: {}\n{}",
        path.display(),
        perplexity::summary(r)
    ))
}
