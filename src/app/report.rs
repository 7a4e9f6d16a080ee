//! `ledge report`: evaluate a baseline and its variants on one text and write report.md (the
//! table), report.svg (the chart) and report.json into a folder.

use std::path::{Path, PathBuf};

use super::eval::{check_same_vocab, load, open_gguf, read_text};
use clap::Args;

use super::{AppError, Threads};
use crate::eval::perplexity::{tokenize_text, vocab_fingerprint};
use crate::eval::report::{self, Row};
use crate::eval::{bench, sys, Baseline, EvalOptions};
use crate::progress::Progress;

/// Compare variants of a model with its baseline: a table, a chart and JSON.
///
/// Evaluates the baseline and each variant on one text (perplexity, KL divergence against
/// the baseline, top-token agreement) and times their speed, then writes report.md (the
/// table), report.svg (size against KL divergence and speed) and report.json into a folder.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The variant GGUF files.
    #[arg(required = true)]
    pub variants: Vec<PathBuf>,
    /// The reference model the variants are compared with.
    #[arg(long)]
    pub baseline: PathBuf,
    /// The evaluation text (UTF-8).
    #[arg(short = 'f', long)]
    pub text: PathBuf,
    /// Output folder.
    #[arg(short, long)]
    pub out: PathBuf,
    /// Tokens per chunk; the second half of each chunk is scored.
    #[arg(short, long, default_value_t = 512)]
    pub ctx: usize,
    /// Evaluate at most this many chunks.
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Prompt length for the pp speed column (0 skips).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 128)]
    pub pp: usize,
    /// Generation length for the tg speed column (0 skips).
    #[arg(short = 'n', long = "n-gen", default_value_t = 32)]
    pub tg: usize,
    #[command(flatten)]
    pub threads: Threads,
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), AppError> {
    let mut tmp = path.to_path_buf();
    tmp.as_mut_os_string().push(".tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| AppError::Other(format!("{}: {e}", path.display())))
}

fn speed(
    model: &crate::model::Model,
    pp: usize,
    tg: usize,
) -> Result<(Option<f64>, Option<f64>), AppError> {
    let mean = |v: Vec<f64>| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let e = |e: crate::model::ModelError| AppError::Other(e.to_string());
    let pp = if pp > 0 {
        Some(mean(bench::bench_pp(model, pp, 1).map_err(e)?))
    } else {
        None
    };
    let tg = if tg > 0 {
        Some(mean(bench::bench_tg(model, tg, 1).map_err(e)?))
    } else {
        None
    };
    Ok((pp, tg))
}

pub fn report(args: ReportArgs) -> Result<String, Box<dyn std::error::Error>> {
    if args.variants.is_empty() {
        return Err(AppError::Other(
            "give at least one variant file to compare with the baseline".into(),
        )
        .into());
    }
    args.threads.init();
    crate::quant::simd::init()?;
    let text = read_text(&args.text)?;
    let n = args.variants.len() + 1;
    let name = |p: &Path| {
        p.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    };

    // Open every file first, so a bad one fails before minutes of evaluation.
    for v in &args.variants {
        open_gguf(v)?;
    }

    let base_tok = {
        let f = open_gguf(&args.baseline)?;
        load(&args.baseline, &f)?.1
    };
    let tokens = tokenize_text(&base_tok, &text);
    let opts = EvalOptions {
        ctx: args.ctx,
        chunks: args.chunks,
        bos: base_tok.add_bos().then(|| base_tok.bos()).flatten(),
        save_top_k: None,
        vocab_fingerprint: vocab_fingerprint(&base_tok),
    };
    let files: Vec<&PathBuf> = std::iter::once(&args.baseline)
        .chain(&args.variants)
        .collect();
    let mut rows = Vec::new();
    let mut n_chunks = 0;
    for (i, path) in files.iter().enumerate() {
        let is_baseline = i == 0;
        // Speed and memory first, with only this file mapped: the peak is what running this
        // file alone costs (load, prompt processing, generation).
        let (pp, tg, peak, recipe, size_bytes, bpw) = {
            let f = open_gguf(path)?;
            let (model, tok) = load(path, &f)?;
            if !is_baseline {
                check_same_vocab(&base_tok, &tok, path)?;
            }
            sys::reset_peak_rss();
            let (pp, tg) = speed(&model, args.pp, args.tg)?;
            let peak = sys::peak_rss_bytes();
            (
                pp,
                tg,
                peak,
                report::recipe(&f),
                f.file_size(),
                report::bits_per_weight(&f),
            )
        };
        // Quality: the exact KL divergence, both models run on every chunk (the baseline's
        // pages are still in the page cache, so reopening it costs little).
        let f = open_gguf(path)?;
        let (model, _) = load(path, &f)?;
        let bf = open_gguf(&args.baseline)?;
        let (base, _) = load(&args.baseline, &bf)?;
        let baseline = (!is_baseline).then_some(Baseline::Model(&base));
        let mut bar = Progress::new(format!("[{}/{n}] {}", i + 1, name(path)), "chunks");
        let r = crate::eval::evaluate(&model, &tokens, &opts, baseline, &mut |d, t| {
            bar.update(d, t)
        })?;
        n_chunks = r.n_chunks;
        rows.push(Row {
            file: name(path),
            recipe,
            size_bytes,
            bits_per_weight: bpw,
            ppl: r.ppl,
            kld: r.kld,
            pp_tokens_per_second: pp,
            tg_tokens_per_second: tg,
            peak_rss_bytes: peak,
            is_baseline,
        });
    }

    std::fs::create_dir_all(&args.out)
        .map_err(|e| AppError::Other(format!("{}: {e}", args.out.display())))?;
    let md = report::markdown(&rows, &name(&args.text), args.ctx, n_chunks);
    write_atomic(&args.out.join("report.md"), md.as_bytes())?;
    write_atomic(
        &args.out.join("report.json"),
        serde_json::to_string_pretty(&rows)?.as_bytes(),
    )?;
    let svg = args.out.join("report.svg");
    let mut tmp = svg.clone();
    tmp.as_mut_os_string().push(".tmp");
    report::svg(&rows, &tmp).map_err(AppError::Other)?;
    std::fs::rename(&tmp, &svg).map_err(|e| AppError::Other(format!("{}: {e}", svg.display())))?;
    eprintln!(
        "wrote {}/report.md, report.svg, report.json",
        args.out.display()
    );
    Ok(md)
}
