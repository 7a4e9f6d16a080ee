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
use crate::eval::{bench, kld, report, Baseline, Estimate, EvalOptions};
use crate::gguf::{GgmlType, GgufFile};
use crate::model::Model;
use crate::progress::Progress;
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
        lowrank: None,
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
    let texts = read_texts(o)?;
    let mut work = WorkDir::new(work_path(o)?, o.keep)?;
    let base_path = baseline_file(o, &mut work)?;
    let base_file = GgufFile::open(&base_path).map_err(|e| CompressError::BadSource {
        path: base_path.clone(),
        why: e.to_string(),
    })?;
    let base = Model::load(&base_file).map_err(|e| model_err(&base_path)(&e))?;
    let tok = Tokenizer::from_gguf(&base_file).map_err(|e| model_err(&base_path)(&e))?;
    let requantized = announce_requantize(&base_file);
    let plan = plan(o, &base_file, &tok, &texts)?;
    let reference = baseline_logits(o, &base, &plan)?;
    let im = calibrate(o, &base_file, &texts.calib, plan.needs_imatrix, &mut work)?;
    let search = Search {
        o,
        base_path: &base_path,
        base: &base,
        plan: &plan,
        reference: &reference,
        im: im.as_ref(),
        requantized,
    };
    let tried = climb(&search, &mut work)?;
    let base_row = BaselineRow {
        name: name_of(&o.source),
        size_bytes: base_file.file_size(),
        bits_per_weight: report::bits_per_weight(&base_file),
        ppl: reference.ppl,
        pp_tokens_per_second: reference.pp,
        tg_tokens_per_second: reference.tg,
    };
    finish(o, &base_row, tried, plan.n_chunks, requantized)
}

/// The calibration and evaluation texts, read and checked.
struct Texts {
    calib: String,
    eval: String,
}

/// The options first, then both texts: readable, non-empty and different.
fn read_texts(o: &CompressOptions) -> Result<Texts, CompressError> {
    check_paths(o)?;
    if o.ctx < 4 {
        return Err(crate::eval::EvalError::CtxTooSmall(o.ctx).into());
    }
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
    Ok(Texts {
        calib: String::from_utf8(calib).unwrap_or_default(),
        eval: String::from_utf8(eval).unwrap_or_default(),
    })
}

/// The work folder's path; fails first if the source is missing, so that no folder is made
/// for a search that cannot start.
fn work_path(o: &CompressOptions) -> Result<PathBuf, CompressError> {
    if !o.source.exists() {
        return Err(CompressError::BadSource {
            path: o.source.clone(),
            why: "no such file or folder".into(),
        });
    }
    Ok(o.work_dir.clone().unwrap_or_else(|| {
        let mut p = o.out.clone().into_os_string();
        p.push(".work");
        PathBuf::from(p)
    }))
}

/// Step 1: the baseline GGUF: the source itself, or an HF folder converted to F16 in the
/// work folder.
fn baseline_file(o: &CompressOptions, work: &mut WorkDir) -> Result<PathBuf, CompressError> {
    let src = &o.source;
    if !src.is_dir() {
        eprintln!("compress [1/5] baseline: {}", src.display());
        return Ok(src.clone());
    }
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
        lowrank: None,
    };
    convert::convert_hf(src, &p, &opts).map_err(|e| CompressError::BadSource {
        path: src.clone(),
        why: e.to_string(),
    })?;
    Ok(p)
}

/// Whether the baseline is already quantized (then said once, since every number is
/// relative to it).
fn announce_requantize(base_file: &GgufFile) -> bool {
    let requant = quantized_types(base_file);
    if !requant.is_empty() {
        let names: Vec<String> = requant.iter().map(|t| t.to_string()).collect();
        eprintln!(
            "compress: the baseline is already quantized ({}): candidates are re-quantized \
             from it, and their quality is measured against it, not against the original",
            names.join(", ")
        );
    }
    !requant.is_empty()
}

/// What the evaluation runs on and what will be tried.
struct Plan {
    tokens: Vec<u32>,
    n_chunks: usize,
    eval: EvalOptions,
    ladder: Vec<Candidate>,
    needs_imatrix: bool,
}

/// Both texts long enough and the ladder fixed, before any long step.
fn plan(
    o: &CompressOptions,
    base_file: &GgufFile,
    tok: &Tokenizer,
    texts: &Texts,
) -> Result<Plan, CompressError> {
    let tokens = perplexity::tokenize_text(tok, &texts.eval);
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
        base_file,
        o.candidates.clone().unwrap_or_else(default_ladder),
    );
    let needs_imatrix = ladder.iter().any(|c| c.imatrix);
    if needs_imatrix {
        let n = tok.encode(&texts.calib, false, false).len();
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
    let eval = EvalOptions {
        ctx: o.ctx,
        chunks: Some(n_chunks),
        bos: tok.add_bos().then(|| tok.bos()).flatten(),
        save_top_k: None,
        vocab_fingerprint: perplexity::vocab_fingerprint(tok),
    };
    Ok(Plan {
        tokens,
        n_chunks,
        eval,
        ladder,
        needs_imatrix,
    })
}

/// The baseline's numbers every candidate is compared with.
struct Reference {
    /// Its logit rows, when they fit in `ROWS_BUDGET_BYTES` (else it runs beside each
    /// candidate).
    rows: Option<BaselineRows>,
    ppl: Estimate,
    pp: Option<f64>,
    tg: Option<f64>,
}

/// Step 2: the baseline's logits (or only its PPL), once; its speed with `--optimize speed`.
fn baseline_logits(
    o: &CompressOptions,
    base: &Model,
    plan: &Plan,
) -> Result<Reference, CompressError> {
    let n_chunks = plan.n_chunks;
    let rows_bytes =
        n_chunks * crate::eval::logits_file::scored_per_chunk(o.ctx) * base.config.n_vocab * 4;
    eprintln!(
        "compress [2/5] baseline logits on {} ({n_chunks} chunks of {} tokens)",
        o.eval.display(),
        o.ctx
    );
    let mut bar = Progress::new("baseline", "chunks");
    let (rows, ppl) = if rows_bytes <= ROWS_BUDGET_BYTES {
        let rows = baseline_rows(base, &plan.tokens, &plan.eval, &mut |d, t| bar.update(d, t))?;
        let ppl = rows_ppl(&rows, &plan.tokens);
        (Some(rows), ppl)
    } else {
        eprintln!(
            "compress: the baseline's logits would take {:.1} GiB: running the baseline beside \
             each candidate instead",
            rows_bytes as f64 / (1u64 << 30) as f64
        );
        let r = crate::eval::evaluate(base, &plan.tokens, &plan.eval, None, &mut |d, t| {
            bar.update(d, t)
        })?;
        (None, r.ppl)
    };
    eprintln!(
        "compress: baseline PPL {:.4} ± {:.4}",
        ppl.value, ppl.stderr
    );
    let (pp, tg) = if o.optimize == Optimize::Speed {
        let (pp, tg) = speed(base)?;
        (Some(pp), Some(tg))
    } else {
        (None, None)
    };
    Ok(Reference { rows, ppl, pp, tg })
}

/// Step 3: the imatrix, once, when a candidate uses it.
fn calibrate(
    o: &CompressOptions,
    base_file: &GgufFile,
    calib: &str,
    needs_imatrix: bool,
    work: &mut WorkDir,
) -> Result<Option<Arc<Imatrix>>, CompressError> {
    if !needs_imatrix {
        eprintln!("compress [3/5] calibration: no candidate uses it");
        return Ok(None);
    }
    eprintln!(
        "compress [3/5] calibrating on {} ({} chunks at most)",
        o.calib.display(),
        o.calib_chunks
            .map_or_else(|| "all".to_string(), |c| c.to_string())
    );
    let mut im = imatrix::calibrate(base_file, calib, o.ctx, o.calib_chunks, true)?;
    im.datasets = vec![o.calib.display().to_string()];
    if o.keep {
        let p = work.file("calibration.imatrix");
        im.save(&p)?;
    }
    Ok(Some(Arc::new(im)))
}

/// What every candidate is made from and measured against.
struct Search<'a, 'm> {
    o: &'a CompressOptions,
    base_path: &'a Path,
    base: &'a Model<'m>,
    plan: &'a Plan,
    reference: &'a Reference,
    im: Option<&'a Arc<Imatrix>>,
    requantized: bool,
}

/// The candidates made, with the file of each still on disk (only the best so far's, or all
/// with `--keep`).
struct Tried {
    measured: Vec<Measured>,
    files: Vec<Option<PathBuf>>,
    not_tried: Vec<Candidate>,
}

/// The early-stop count over rungs (see mod.rs).
#[derive(Default)]
struct Rungs {
    failing: usize,
    evaluated: bool,
    meets: bool,
}

impl Rungs {
    /// Closes the rung just finished; true when it makes two failing rungs in a row.
    fn close(&mut self) -> bool {
        if self.meets {
            self.failing = 0;
        } else if self.evaluated {
            self.failing += 1;
        }
        (self.evaluated, self.meets) = (false, false);
        self.failing >= 2
    }

    fn record(&mut self, m: &Measured, target: &QualityTarget) {
        if let Some(q) = &m.quality {
            self.evaluated = true;
            self.meets |= choose::quality_failures(q, target).is_empty();
        }
    }
}

/// Step 4: climbs the ladder, making and measuring each candidate, until the early stop.
fn climb(s: &Search<'_, '_>, work: &mut WorkDir) -> Result<Tried, CompressError> {
    let (o, ladder) = (s.o, &s.plan.ladder);
    let mut tried = Tried {
        measured: Vec::new(),
        files: Vec::new(),
        not_tried: Vec::new(),
    };
    let mut rungs = Rungs::default();
    for (k, c) in ladder.iter().enumerate() {
        if k > 0 && !c.same_rung(&ladder[k - 1]) && rungs.close() && o.early_stop {
            eprintln!(
                "compress: two rungs in a row miss the target: stopping before {c} (--no-early-stop tries all)"
            );
            tried.not_tried = ladder[k..].to_vec();
            break;
        }
        let path = work.file(&format!("{:02}-{}.gguf", k + 1, c.slug()));
        eprintln!("compress [4/5] candidate {}/{}: {c}", k + 1, ladder.len());
        let (m, weighted) = measure(s, c, &path)?;
        rungs.record(&m, &o.target);
        log_measured(&m, c.imatrix.then_some(weighted), &o.target);
        tried.measured.push(m);
        tried.files.push(Some(path));
        // Keep only the file of the best choice so far (all with --keep).
        let best = choose::choose(&tried.measured, &o.target, o.optimize);
        for (i, f) in tried.files.iter_mut().enumerate() {
            if Some(i) != best {
                if let Some(p) = f.take() {
                    work.remove(&p);
                }
            }
        }
    }
    Ok(tried)
}

/// Makes candidate `c` at `path` and measures it: always its size, and unless it is over
/// `--max-size` its quality against the baseline (and speed with `--optimize speed`).
/// Also returns how many tensors the imatrix weighted.
fn measure(
    s: &Search<'_, '_>,
    c: &Candidate,
    path: &Path,
) -> Result<(Measured, usize), CompressError> {
    let o = s.o;
    let summary = make_candidate(s.base_path, c, s.im, s.requantized, &o.calib, path)?;
    let f = GgufFile::open(path).map_err(|e| model_err(path)(&e))?;
    let mut m = Measured {
        candidate: c.clone(),
        size_bytes: f.file_size(),
        bits_per_weight: report::bits_per_weight(&f),
        recipe: report::recipe(&f),
        quality: None,
        pp_tokens_per_second: None,
        tg_tokens_per_second: None,
    };
    if o.target.max_size.is_some_and(|max| m.size_bytes > max) {
        return Ok((m, summary.weighted));
    }
    let model = Model::load(&f).map_err(|e| model_err(path)(&e))?;
    let baseline = match &s.reference.rows {
        Some(r) => Baseline::Rows(r),
        None => Baseline::Model(s.base),
    };
    let mut bar = Progress::new(format!("{c}"), "chunks");
    let plan = s.plan;
    let r = crate::eval::evaluate(
        &model,
        &plan.tokens,
        &plan.eval,
        Some(baseline),
        &mut |d, t| bar.update(d, t),
    )?;
    if let Some(kld) = r.kld {
        m.quality = Some(Quality {
            ppl: r.ppl,
            ppl_increase_pct: (r.ppl.value / s.reference.ppl.value - 1.0) * 100.0,
            kld,
        });
    }
    if o.optimize == Optimize::Speed {
        let (pp, tg) = speed(&model)?;
        (m.pp_tokens_per_second, m.tg_tokens_per_second) = (Some(pp), Some(tg));
    }
    Ok((m, summary.weighted))
}

/// One line per candidate: its numbers and whether it meets the target, or why not.
/// `weighted`: how many tensors the imatrix weighted, for an imatrix candidate.
fn log_measured(m: &Measured, weighted: Option<usize>, target: &QualityTarget) {
    let fails = choose::failures(m, target);
    eprintln!(
        "compress: {}{} → {}",
        choose::describe(m),
        weighted.map_or_else(String::new, |n| format!(
            " ({n} tensors weighted by the imatrix)"
        )),
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
}

/// Step 5: the choice, the table, and the chosen file placed at the output.
fn finish(
    o: &CompressOptions,
    base_row: &BaselineRow,
    tried: Tried,
    n_chunks: usize,
    requantized: bool,
) -> Result<Outcome, CompressError> {
    let Tried {
        measured,
        files,
        not_tried,
    } = tried;
    let chosen = choose::choose(&measured, &o.target, o.optimize);
    let table = table::markdown(
        base_row, &measured, &not_tried, chosen, &o.target, o.optimize,
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
        baseline_ppl: base_row.ppl,
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
