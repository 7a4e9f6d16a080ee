//! `ledge report`: evaluate a baseline and its variants on one text and write report.md (the
//! table), report.svg (the chart) and report.json into a folder.

use std::path::{Path, PathBuf};

use super::eval::{check_same_vocab, load, open_gguf, read_text};
use super::AppError;
use crate::eval::perplexity::{tokenize_text, vocab_fingerprint};
use crate::eval::progress::Progress;
use crate::eval::report::{self, Row};
use crate::eval::{bench, sys, Baseline, EvalOptions};

pub struct ReportArgs {
    pub variants: Vec<PathBuf>,
    pub baseline: PathBuf,
    pub text: PathBuf,
    pub out: PathBuf,
    pub ctx: usize,
    pub chunks: Option<usize>,
    pub top_k: usize,
    pub pp: usize,
    pub tg: usize,
    pub threads: Option<usize>,
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
    super::init_threads(args.threads);
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

    // The baseline: evaluated once, its top-k logits kept for every variant.
    let base_file = open_gguf(&args.baseline)?;
    let (base_model, base_tok) = load(&args.baseline, &base_file)?;
    let tokens = tokenize_text(&base_tok, &text);
    let opts = EvalOptions {
        ctx: args.ctx,
        chunks: args.chunks,
        bos: base_tok.add_bos().then(|| base_tok.bos()).flatten(),
        save_top_k: Some(args.top_k),
        vocab_fingerprint: vocab_fingerprint(&base_tok),
    };
    sys::reset_peak_rss();
    let (pp, tg) = speed(&base_model, args.pp, args.tg)?;
    let mut bar = Progress::new(format!("[1/{n}] {}", name(&args.baseline)), "chunks");
    let base_res = crate::eval::evaluate(&base_model, &tokens, &opts, None, &mut |d, t| {
        bar.update(d, t)
    })?;
    let mut rows = vec![Row {
        file: name(&args.baseline),
        recipe: report::recipe(&base_file),
        size_bytes: base_file.file_size(),
        bits_per_weight: report::bits_per_weight(&base_file),
        ppl: base_res.ppl,
        kld: None,
        pp_tokens_per_second: pp,
        tg_tokens_per_second: tg,
        peak_rss_bytes: sys::peak_rss_bytes(),
        is_baseline: true,
    }];
    let saved = base_res
        .saved
        .expect("evaluate keeps logits when save_top_k is set");
    drop(base_model);
    drop(base_file);

    let opts = EvalOptions {
        save_top_k: None,
        ..opts
    };
    for (i, v) in args.variants.iter().enumerate() {
        let f = open_gguf(v)?;
        let (model, tok) = load(v, &f)?;
        check_same_vocab(&base_tok, &tok, v)?;
        sys::reset_peak_rss();
        let (pp, tg) = speed(&model, args.pp, args.tg)?;
        let mut bar = Progress::new(format!("[{}/{n}] {}", i + 2, name(v)), "chunks");
        let r = crate::eval::evaluate(
            &model,
            &tokens,
            &opts,
            Some(Baseline::Saved(&saved)),
            &mut |d, t| bar.update(d, t),
        )?;
        rows.push(Row {
            file: name(v),
            recipe: report::recipe(&f),
            size_bytes: f.file_size(),
            bits_per_weight: report::bits_per_weight(&f),
            ppl: r.ppl,
            kld: r.kld,
            pp_tokens_per_second: pp,
            tg_tokens_per_second: tg,
            peak_rss_bytes: sys::peak_rss_bytes(),
            is_baseline: false,
        });
    }

    std::fs::create_dir_all(&args.out)
        .map_err(|e| AppError::Other(format!("{}: {e}", args.out.display())))?;
    let note = format!(
        "over the baseline's top {} tokens plus one bucket for the rest, a lower bound on the exact value",
        saved.top_k
    );
    let md = report::markdown(&rows, &name(&args.text), args.ctx, saved.n_chunks, &note);
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
