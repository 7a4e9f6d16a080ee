//! The compression pipeline (see mod.rs for the steps and the early-stop rule).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::candidate::{default_ladder, drop_useless_imatrix, Candidate};
use super::choose::{self, Measured, Quality};
use super::table::{self, BaselineRow};
use super::{CompressError, Optimize, QualityTarget};
use crate::convert::imatrix::{self, Imatrix};
use crate::convert::pipeline::Summary;
use crate::convert::{self, ConvertOptions, Target};
use crate::eval::perplexity::{self, baseline_rows, plan_chunks, BaselineRows};
use crate::eval::progress::Progress;
use crate::eval::{bench, kld, report, Baseline, Estimate, EvalOptions};
use crate::gguf::{GgmlType, GgufFile};
use crate::model::Model;
use crate::tokenizer::Tokenizer;

/// Keep the baseline's logits in memory up to this size; above it, the baseline is run
/// again beside every candidate (same numbers, twice the time).
const ROWS_BUDGET_BYTES: usize = 4 << 30;

#[derive(Clone, Debug)]
pub struct CompressOptions {
    /// An HF model folder or a GGUF file.
    pub source: PathBuf,
    pub out: PathBuf,
    pub target: QualityTarget,
    pub calib: PathBuf,
    pub eval: PathBuf,
    pub optimize: Optimize,
    pub allow_same_text: bool,
    /// Where the baseline, the imatrix and the candidates are written (default: a folder
    /// beside the output, removed at the end).
    pub work_dir: Option<PathBuf>,
    /// Keep every file made in the work folder.
    pub keep: bool,
    pub ctx: usize,
    /// Evaluation chunks (None: all the text holds).
    pub chunks: Option<usize>,
    /// Calibration chunks (None: all the text holds).
    pub calib_chunks: Option<usize>,
    /// The ladder to climb (None: `default_ladder`).
    pub candidates: Option<Vec<Candidate>>,
    pub early_stop: bool,
}

/// What the search found.
#[derive(Debug)]
pub struct Outcome {
    /// Every candidate made, in the order tried.
    pub rows: Vec<Measured>,
    /// Candidates the early stop left out.
    pub not_tried: Vec<Candidate>,
    /// Index into `rows` of the file written to the output; None: none met the target and
    /// nothing was written.
    pub chosen: Option<usize>,
    /// The markdown table with the "why" column.
    pub table: String,
    pub baseline_ppl: Estimate,
    /// Evaluation chunks × ctx.
    pub n_chunks: usize,
    /// The baseline was quantized: candidates were re-quantized from it.
    pub requantized: bool,
}

/// The work folder: removes what it made when dropped (also on errors), unless `keep`.
struct WorkDir {
    path: PathBuf,
    created: bool,
    keep: bool,
    files: Vec<PathBuf>,
}

impl WorkDir {
    fn new(path: PathBuf, keep: bool) -> Result<WorkDir, CompressError> {
        let created = !path.exists();
        std::fs::create_dir_all(&path)
            .map_err(|e| CompressError::Io(format!("work folder {}: {e}", path.display())))?;
        Ok(WorkDir {
            path,
            created,
            keep,
            files: Vec::new(),
        })
    }

    fn file(&mut self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        self.files.push(p.clone());
        p
    }

    fn remove(&self, p: &Path) {
        if !self.keep {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("compress: kept the work files in {}", self.path.display());
            return;
        }
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
        if self.created {
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}

fn read_text(path: &Path) -> Result<Vec<u8>, CompressError> {
    let bad = |why: String| CompressError::BadText {
        path: path.to_path_buf(),
        why,
    };
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let s = std::str::from_utf8(&bytes).map_err(|e| {
        bad(format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.valid_up_to()
        ))
    })?;
    if s.trim().is_empty() {
        return Err(bad("the text is empty".into()));
    }
    Ok(bytes)
}

fn io(p: &Path) -> impl FnOnce(std::io::Error) -> CompressError + '_ {
    move |e| CompressError::Io(format!("{}: {e}", p.display()))
}

fn model_err(p: &Path) -> impl Fn(&dyn std::fmt::Display) -> CompressError + '_ {
    move |e| CompressError::Io(format!("{}: {e}", p.display()))
}

/// Checks that could fail after minutes of work, done first.
fn check_paths(o: &CompressOptions) -> Result<(), CompressError> {
    if o.target.max_kld.is_none() && o.target.max_ppl_increase.is_none() {
        return Err(CompressError::Usage(
            "give a quality target: --max-kld X or --max-ppl-increase P%".into(),
        ));
    }
    if o.out.is_dir() {
        return Err(CompressError::Usage(format!(
            "-o {}: is a folder; give the GGUF file to write",
            o.out.display()
        )));
    }
    let parent = match o.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(CompressError::Usage(format!(
            "-o {}: the folder {} does not exist",
            o.out.display(),
            parent.display()
        )));
    }
    if let (Ok(a), Ok(b)) = (o.source.canonicalize(), o.out.canonicalize()) {
        if a == b {
            return Err(CompressError::Usage(
                "the output must be a different file from the source".into(),
            ));
        }
    }
    Ok(())
}

/// Whether any matrix of the baseline is already quantized.
fn quantized_types(f: &GgufFile) -> Vec<GgmlType> {
    let mut v: Vec<GgmlType> = f
        .tensor_infos()
        .iter()
        .map(|i| i.ty)
        .filter(|t| t.is_quantized())
        .collect();
    v.sort_by_key(|t| t.id());
    v.dedup();
    v
}

/// Makes one candidate's file: the one place a candidate becomes a GGUF. Pruning runs its
/// own calibration pass over `calib` (the FFN input Gram matrices and block similarities the
/// imatrix does not hold), as `ledge quantize --prune-ffn` does.
fn make_candidate(
    base: &Path,
    c: &Candidate,
    im: Option<&Arc<Imatrix>>,
    allow_requantize: bool,
    calib: &Path,
    out: &Path,
) -> Result<Summary, CompressError> {
    let prune = c.prune.as_ref().map(|p| convert::prune::PruneSpec {
        ffn_fraction: p.ffn_fraction,
        prune_layers: p.layers,
        calib_text: Some(calib.to_path_buf()),
        ..convert::prune::PruneSpec::default()
    });
    let opts = ConvertOptions {
        target: c.quant,
        overrides: Vec::new(),
        allow_requantize,
        progress: false,
        imatrix: if c.imatrix { im.cloned() } else { None },
        gptq: None,
        prune,
    };
    Ok(convert::quantize_gguf(base, out, &opts)?)
}

/// Mean tokens/s of prompt processing (128 tokens) and generation (32 tokens, 3 runs).
fn speed(model: &Model) -> Result<(f64, f64), CompressError> {
    let mean = |v: Vec<f64>| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let e = |e: crate::model::ModelError| CompressError::Io(e.to_string());
    let pp = mean(bench::bench_pp(model, 128, 1).map_err(e)?);
    let tg = mean(bench::bench_tg(model, 32, 3).map_err(e)?);
    Ok((pp, tg))
}

/// PPL of the baseline from its saved rows (the same formula as `evaluate`).
fn rows_ppl(rows: &BaselineRows, tokens: &[u32]) -> Estimate {
    let (ctx, nv) = (rows.ctx, rows.n_vocab);
    let first = ctx / 2;
    let (mut s, mut s2, mut n) = (0.0f64, 0.0f64, 0usize);
    for (c, chunk) in rows.chunks.iter().enumerate() {
        for (i, row) in chunk.chunks_exact(nv).enumerate() {
            // Scored targets start past the chunk's first token (the one BOS replaces).
            let target = tokens[c * ctx + first + i + 1];
            let ls = kld::LogSoftmax::of(row);
            let nll = -ls.logp(row[target as usize]);
            s += nll;
            s2 += nll * nll;
            n += 1;
        }
    }
    let nll = s / n.max(1) as f64;
    let var = s2 / n.max(1) as f64 - nll * nll;
    let ppl = nll.exp();
    Estimate {
        value: ppl,
        stderr: if var > 0.0 && n > 1 {
            (var / (n - 1) as f64).sqrt() * ppl
        } else {
            0.0
        },
    }
}

fn name_of(p: &Path) -> String {
    p.file_name()
        .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into())
}

/// Runs the whole search; writes the chosen file to `o.out` (temp + rename). With no
/// candidate meeting the target, returns the outcome with `chosen: None` and writes nothing.
pub fn compress(o: &CompressOptions) -> Result<Outcome, CompressError> {
    check_paths(o)?;
    if o.ctx < 4 {
        return Err(crate::eval::EvalError::CtxTooSmall(o.ctx).into());
    }
    // 1. Texts: both readable, non-empty, and different.
    let calib = read_text(&o.calib)?;
    let eval = read_text(&o.eval)?;
    if !o.allow_same_text {
        let same_path =
            matches!((o.calib.canonicalize(), o.eval.canonicalize()), (Ok(a), Ok(b)) if a == b);
        if same_path || calib == eval {
            return Err(CompressError::SameText(if same_path {
                "same file".into()
            } else {
                format!(
                    "{} and {} have the same content",
                    o.calib.display(),
                    o.eval.display()
                )
            }));
        }
    }
    let calib = String::from_utf8(calib).unwrap_or_default();
    let eval = String::from_utf8(eval).unwrap_or_default();

    // 2. The source and the work folder.
    let src = &o.source;
    if !src.exists() {
        return Err(CompressError::BadSource {
            path: src.clone(),
            why: "no such file or folder".into(),
        });
    }
    let work_path = o.work_dir.clone().unwrap_or_else(|| {
        let mut p = o.out.clone().into_os_string();
        p.push(".work");
        PathBuf::from(p)
    });
    let mut work = WorkDir::new(work_path, o.keep)?;
    let base_path = if src.is_dir() {
        let p = work.file("baseline-F16.gguf");
        eprintln!(
            "compress [1/5] baseline: converting {} to F16 ({})",
            src.display(),
            p.display()
        );
        let opts = ConvertOptions {
            target: Target::Plain(GgmlType::F16),
            overrides: Vec::new(),
            allow_requantize: false,
            progress: false,
            imatrix: None,
            gptq: None,
            prune: None,
        };
        convert::convert_hf(src, &p, &opts).map_err(|e| CompressError::BadSource {
            path: src.clone(),
            why: e.to_string(),
        })?;
        p
    } else {
        eprintln!("compress [1/5] baseline: {}", src.display());
        src.clone()
    };
    let base_file = GgufFile::open(&base_path).map_err(|e| CompressError::BadSource {
        path: base_path.clone(),
        why: e.to_string(),
    })?;
    let base = Model::load(&base_file).map_err(|e| model_err(&base_path)(&e))?;
    let tok = Tokenizer::from_gguf(&base_file).map_err(|e| model_err(&base_path)(&e))?;
    let requant = quantized_types(&base_file);
    let requantized = !requant.is_empty();
    if requantized {
        let names: Vec<String> = requant.iter().map(|t| t.to_string()).collect();
        eprintln!(
            "compress: the baseline is already quantized ({}): candidates are re-quantized \
             from it, and their quality is measured against it, not against the original",
            names.join(", ")
        );
    }

    // Both texts long enough, before any long step.
    let tokens = perplexity::tokenize_text(&tok, &eval);
    if tokens.len() <= 1 {
        return Err(CompressError::BadText {
            path: o.eval.clone(),
            why: "the text is empty".into(),
        });
    }
    let n_chunks =
        plan_chunks(tokens.len(), o.ctx, o.chunks).map_err(|e| CompressError::BadText {
            path: o.eval.clone(),
            why: e.to_string(),
        })?;
    let ladder = drop_useless_imatrix(
        &base_file,
        o.candidates.clone().unwrap_or_else(default_ladder),
    );
    let needs_imatrix = ladder.iter().any(|c| c.imatrix);
    if needs_imatrix {
        let n = tok.encode(&calib, false, false).len();
        if n < o.ctx {
            return Err(CompressError::BadText {
                path: o.calib.clone(),
                why: format!(
                    "the calibration text is too short: {n} tokens, fewer than one chunk of {}",
                    o.ctx
                ),
            });
        }
    }

    // 2. Baseline logits, once.
    let opts = EvalOptions {
        ctx: o.ctx,
        chunks: Some(n_chunks),
        bos: tok.add_bos().then(|| tok.bos()).flatten(),
        save_top_k: None,
        vocab_fingerprint: perplexity::vocab_fingerprint(&tok),
    };
    let rows_bytes =
        n_chunks * crate::eval::logits_file::scored_per_chunk(o.ctx) * base.config.n_vocab * 4;
    eprintln!(
        "compress [2/5] baseline logits on {} ({n_chunks} chunks of {} tokens)",
        o.eval.display(),
        o.ctx
    );
    let (rows, baseline_ppl) = if rows_bytes <= ROWS_BUDGET_BYTES {
        let mut bar = Progress::new("baseline", "chunks");
        let rows = baseline_rows(&base, &tokens, &opts, &mut |d, t| bar.update(d, t))?;
        let ppl = rows_ppl(&rows, &tokens);
        (Some(rows), ppl)
    } else {
        eprintln!(
            "compress: the baseline's logits would take {:.1} GiB: running the baseline beside \
             each candidate instead",
            rows_bytes as f64 / (1u64 << 30) as f64
        );
        let mut bar = Progress::new("baseline", "chunks");
        let r = crate::eval::evaluate(&base, &tokens, &opts, None, &mut |d, t| bar.update(d, t))?;
        (None, r.ppl)
    };
    eprintln!(
        "compress: baseline PPL {:.4} ± {:.4}",
        baseline_ppl.value, baseline_ppl.stderr
    );
    let (base_pp, base_tg) = if o.optimize == Optimize::Speed {
        let (pp, tg) = speed(&base)?;
        (Some(pp), Some(tg))
    } else {
        (None, None)
    };

    // 3. Calibration, once.
    let im = if needs_imatrix {
        eprintln!(
            "compress [3/5] calibrating on {} ({} chunks at most)",
            o.calib.display(),
            o.calib_chunks
                .map_or_else(|| "all".to_string(), |c| c.to_string())
        );
        let mut im = imatrix::calibrate(&base_file, &calib, o.ctx, o.calib_chunks, true)?;
        im.datasets = vec![o.calib.display().to_string()];
        if o.keep {
            let p = work.file("calibration.imatrix");
            im.save(&p)?;
        }
        Some(Arc::new(im))
    } else {
        eprintln!("compress [3/5] calibration: no candidate uses it");
        None
    };

    // 4. The candidates.
    let mut measured: Vec<Measured> = Vec::new();
    let mut files: Vec<Option<PathBuf>> = Vec::new();
    let mut not_tried = Vec::new();
    let (mut failing_rungs, mut rung_evaluated, mut rung_meets) = (0, false, false);
    let total = ladder.len();
    for (k, c) in ladder.iter().enumerate() {
        if k > 0 && !c.same_rung(&ladder[k - 1]) {
            if rung_meets {
                failing_rungs = 0;
            } else if rung_evaluated {
                failing_rungs += 1;
            }
            (rung_evaluated, rung_meets) = (false, false);
            if o.early_stop && failing_rungs >= 2 {
                eprintln!(
                    "compress: two rungs in a row miss the target: stopping before {c} (--no-early-stop tries all)"
                );
                not_tried = ladder[k..].to_vec();
                break;
            }
        }
        let path = work.file(&format!("{:02}-{}.gguf", k + 1, c.slug()));
        eprintln!("compress [4/5] candidate {}/{total}: {c}", k + 1);
        let s = make_candidate(&base_path, c, im.as_ref(), requantized, &o.calib, &path)?;
        let f = GgufFile::open(&path).map_err(|e| model_err(&path)(&e))?;
        let mut m = Measured {
            candidate: c.clone(),
            size_bytes: f.file_size(),
            bits_per_weight: report::bits_per_weight(&f),
            recipe: report::recipe(&f),
            quality: None,
            pp_tokens_per_second: None,
            tg_tokens_per_second: None,
        };
        let over_size = o.target.max_size.is_some_and(|max| m.size_bytes > max);
        if !over_size {
            let model = Model::load(&f).map_err(|e| model_err(&path)(&e))?;
            let baseline = match &rows {
                Some(r) => Baseline::Rows(r),
                None => Baseline::Model(&base),
            };
            let mut bar = Progress::new(format!("{c}"), "chunks");
            let r = crate::eval::evaluate(&model, &tokens, &opts, Some(baseline), &mut |d, t| {
                bar.update(d, t)
            })?;
            if let Some(kld) = r.kld {
                m.quality = Some(Quality {
                    ppl: r.ppl,
                    ppl_increase_pct: (r.ppl.value / baseline_ppl.value - 1.0) * 100.0,
                    kld,
                });
            }
            if o.optimize == Optimize::Speed {
                let (pp, tg) = speed(&model)?;
                (m.pp_tokens_per_second, m.tg_tokens_per_second) = (Some(pp), Some(tg));
            }
        }
        drop(f);
        if let Some(q) = &m.quality {
            rung_evaluated = true;
            rung_meets |= choose::quality_failures(q, &o.target).is_empty();
        }
        let fails = choose::failures(&m, &o.target);
        eprintln!(
            "compress: {}{} → {}",
            choose::describe(&m),
            if c.imatrix {
                format!(" ({} tensors weighted by the imatrix)", s.weighted)
            } else {
                String::new()
            },
            if m.quality.is_none() && !fails.is_empty() {
                format!("{} (not evaluated)", fails[0])
            } else if fails.is_empty() {
                "meets".into()
            } else {
                fails
                    .iter()
                    .map(|f| f.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            }
        );
        measured.push(m);
        files.push(Some(path));
        // Keep only the file of the best choice so far (all with --keep).
        let best = choose::choose(&measured, &o.target, o.optimize);
        for (i, f) in files.iter_mut().enumerate() {
            if Some(i) != best {
                if let Some(p) = f.take() {
                    work.remove(&p);
                }
            }
        }
    }

    // 5. The choice.
    let chosen = choose::choose(&measured, &o.target, o.optimize);
    let base_row = BaselineRow {
        name: name_of(src),
        size_bytes: base_file.file_size(),
        bits_per_weight: report::bits_per_weight(&base_file),
        ppl: baseline_ppl,
        pp_tokens_per_second: base_pp,
        tg_tokens_per_second: base_tg,
    };
    let table = table::markdown(
        &base_row, &measured, &not_tried, chosen, &o.target, o.optimize,
    );
    if let Some(i) = chosen {
        let from = files[i].clone().ok_or_else(|| {
            CompressError::Io(format!("candidate {} lost its file", measured[i].candidate))
        })?;
        eprintln!(
            "compress [5/5] writing {} ({})",
            o.out.display(),
            measured[i].candidate
        );
        place(&from, &o.out, o.keep)?;
    }
    Ok(Outcome {
        rows: measured,
        not_tried,
        chosen,
        table,
        baseline_ppl,
        n_chunks,
        requantized,
    })
}

/// Moves (or with `keep`, copies) `from` to `to`: a rename when both are on one file system,
/// else a copy to `to.tmp` renamed over `to`, so `to` is never half written.
fn place(from: &Path, to: &Path, keep: bool) -> Result<(), CompressError> {
    if !keep && std::fs::rename(from, to).is_ok() {
        return Ok(());
    }
    let mut tmp = to.to_path_buf().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::copy(from, &tmp).map_err(io(&tmp))?;
    std::fs::rename(&tmp, to).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(to)(e)
    })?;
    if !keep {
        let _ = std::fs::remove_file(from);
    }
    Ok(())
}
