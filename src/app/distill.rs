//! `ledge distill`: recovers a pruned or low-bit student from a teacher's soft labels, on CPU.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use clap::Args;

use super::eval::{check_same_vocab, load, open_gguf, read_text};
use super::{AppError, Threads};
use crate::eval::kld::LogSoftmax;
use crate::eval::perplexity::{tokenize_text, vocab_fingerprint};
use crate::eval::SavedLogits;
use crate::gguf::GgmlType;
use crate::model::{Logits, Model};
use crate::progress::Progress;
use crate::train::checkpoint::Checkpoint;
use crate::train::curve::{svg as write_curve_svg, write_csv as write_curve_csv, Point};
use crate::train::grad::{distill_loss, Target};
use crate::train::labels::{labels_match, teacher_labels};
use crate::train::merge::{write_lora, write_merged};
use crate::train::optim::{AdamW, AdamWConfig};
use crate::train::student::{Loss, Rng, Student, TrainSpec, TARGETS};

/// Train a pruned or quantized model to match its original (knowledge distillation).
///
/// The teacher runs once over the training text and its top-k log-probabilities per position
/// are cached (--labels). The student's base weights stay frozen in their stored type; LoRA
/// pairs on --lora-targets and (by default when writing a merged model) the RMSNorm weights
/// train with AdamW on loss = α·T²·KL(teacher_T ‖ student_T) + (1 − α)·CE. The output is the
/// merged model (-o, pairs folded in and re-quantized to the student's types) and/or a LoRA
/// adapter (--adapter-out) that `ledge run --lora` and llama.cpp's `--lora` load.
#[derive(Args, Debug)]
pub struct DistillArgs {
    /// The teacher GGUF (the original model, or a better quant of it).
    #[arg(long)]
    pub teacher: PathBuf,
    /// The student GGUF (same tokenizer as the teacher).
    #[arg(long)]
    pub student: PathBuf,
    /// Training text (UTF-8).
    #[arg(
        long = "train",
        value_name = "TEXT",
        required_unless_present = "self_generate"
    )]
    pub train: Option<PathBuf>,
    /// Train on N tokens the teacher samples itself (for users without a corpus), after
    /// --train's text if both are given.
    ///
    /// The samples are kept in the labels file: a rerun or --resume with the same file
    /// reuses them instead of sampling again.
    #[arg(long, value_name = "N")]
    pub self_generate: Option<usize>,
    /// The model that samples --self-generate's text, instead of the teacher: a Q8_0 copy
    /// of an F16 teacher samples nearly the same text about twice as fast.
    #[arg(long, value_name = "GGUF", requires = "self_generate")]
    pub generator: Option<PathBuf>,
    /// Write the merged student here.
    #[arg(short = 'o', long = "output", required_unless_present = "adapter_out")]
    pub output: Option<PathBuf>,
    /// Write the trained LoRA pairs as an adapter GGUF (llama.cpp's format).
    #[arg(long)]
    pub adapter_out: Option<PathBuf>,
    /// Train for about this many minutes (the step count is fixed after timing the first).
    #[arg(long, conflicts_with = "tokens")]
    pub minutes: Option<f64>,
    /// Train on this many tokens (default: one pass over the training sequences).
    #[arg(long)]
    pub tokens: Option<usize>,
    /// Softmax temperature of the distillation term (1 measured best for the held-out KL
    /// divergence on SmolLM2, against 2: docs/distill.md).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Weight of the distillation term; 1 − alpha goes to cross-entropy on the text (1
    /// measured best, against 0.7: docs/distill.md).
    #[arg(long, default_value_t = 1.0)]
    pub alpha: f32,
    /// LoRA rank (0: train the norms only).
    #[arg(long, default_value_t = 16)]
    pub lora_rank: usize,
    /// LoRA alpha: the pairs are scaled by alpha / rank (default: the rank).
    #[arg(long)]
    pub lora_alpha: Option<f32>,
    /// Matrices that get LoRA pairs, comma-separated (attn_q, attn_k, attn_v, attn_output,
    /// ffn_gate, ffn_up, ffn_down; default: all).
    #[arg(long, value_delimiter = ',')]
    pub lora_targets: Vec<String>,
    /// Train the RMSNorm weights too (default: yes with -o, no with only --adapter-out, whose
    /// format cannot carry them).
    #[arg(long)]
    pub train_norms: Option<bool>,
    /// Tokens per training sequence.
    #[arg(long, default_value_t = 256)]
    pub seq: usize,
    /// Sequences per optimizer step (gradients accumulated over them).
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Peak learning rate (3e-3 measured best of 1e-3 and 3e-3 on SmolLM2 with rank 16;
    /// larger models usually want less).
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f32,
    /// Warm-up, as a fraction of the steps.
    #[arg(long, default_value_t = 0.05)]
    pub warmup: f32,
    /// Clip gradients to this global norm (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub clip: f32,
    /// AdamW weight decay on the LoRA matrices.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// Teacher tokens kept per position in the labels.
    #[arg(long, default_value_t = 64)]
    pub top_k: usize,
    /// The teacher-label cache (default: OUTPUT.labels); reused when it matches.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Fraction of the sequences held out to measure the KL divergence before and after.
    #[arg(long, default_value_t = 0.1)]
    pub val_frac: f64,
    /// A held-out text to evaluate on during training: KL divergence to the teacher,
    /// perplexity and top-1 agreement against training tokens, written as OUTPUT.curve.csv
    /// and OUTPUT.curve.svg.
    #[arg(long)]
    pub eval_text: Option<PathBuf>,
    /// Evaluate every N steps (default: ten times over the run).
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Sequences of --eval-text to evaluate on (at most).
    #[arg(long, default_value_t = 8)]
    pub eval_seqs: usize,
    /// Seed of the LoRA initialisation, the data order and --self-generate.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Continue an interrupted run from its checkpoint.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Where checkpoints go (default: OUTPUT.ckpt).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Save a checkpoint every N steps (0: only on Ctrl-C).
    #[arg(long, default_value_t = 50)]
    pub save_every: usize,
    #[command(flatten)]
    pub threads: Threads,
}

fn other(s: impl Into<String>) -> AppError {
    AppError::Other(s.into())
}

/// `path` with `ext` appended (`out.gguf` → `out.gguf.labels`).
fn beside(path: &Path, ext: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(ext);
    PathBuf::from(p)
}

/// The settings that make two runs the same run (a checkpoint must match them).
fn settings_json(a: &DistillArgs, spec: &TrainSpec, total: usize) -> String {
    serde_json::json!({
        "student": a.student.display().to_string(),
        "rank": spec.rank, "alpha": spec.alpha, "targets": spec.targets, "norms": spec.norms,
        "seq": a.seq, "batch": a.batch, "lr": a.lr, "warmup": a.warmup, "clip": a.clip,
        "weight_decay": a.weight_decay, "temperature": a.temperature, "distill_alpha": a.alpha,
        "top_k": a.top_k, "seed": a.seed, "steps": total,
    })
    .to_string()
}

pub fn distill(a: DistillArgs) -> Result<String, Box<dyn std::error::Error>> {
    a.threads.init();
    crate::quant::simd::init()?;
    if a.seq < 4 {
        return Err(other("--seq must be at least 4").into());
    }
    if a.batch == 0 {
        return Err(other("--batch must be at least 1").into());
    }
    if !(a.temperature > 0.0 && a.temperature.is_finite()) {
        return Err(other("--temperature must be a positive number").into());
    }
    if !(0.0..=1.0).contains(&a.alpha) {
        return Err(other("--alpha must be between 0 and 1").into());
    }
    if !(0.0..0.9).contains(&a.val_frac) {
        return Err(other("--val-frac must be in [0, 0.9)").into());
    }
    let out_base = a
        .output
        .clone()
        .or_else(|| a.adapter_out.clone())
        .expect("clap requires -o or --adapter-out");
    let targets: Vec<String> = if a.lora_targets.is_empty() {
        TARGETS.iter().map(|s| s.to_string()).collect()
    } else {
        a.lora_targets
            .iter()
            .map(|s| s.trim().to_string())
            .collect()
    };
    let spec = TrainSpec {
        rank: a.lora_rank,
        alpha: a.lora_alpha.unwrap_or(a.lora_rank as f32),
        targets,
        norms: a.train_norms.unwrap_or(a.output.is_some()),
    };
    if spec.norms && a.output.is_none() {
        eprintln!(
            "note: the trained norms are not part of a LoRA adapter (llama.cpp skips them): give -o to keep them"
        );
    }

    let sfile = open_gguf(&a.student)?;
    let (student_model, stok) = load(&a.student, &sfile)?;
    let fp = vocab_fingerprint(&stok);
    // Refuse an untrainable student before the teacher runs.
    let st = Student::new(&student_model, &sfile, spec.clone())?;
    let tfile = open_gguf(&a.teacher)?;

    // --- the text and the teacher's labels ---
    let tokens = {
        let (teacher, ttok) = load(&a.teacher, &tfile)?;
        check_same_vocab(&stok, &ttok, &a.teacher)?;
        let labels_path = a
            .labels
            .clone()
            .unwrap_or_else(|| beside(&out_base, ".labels"));
        let mut tokens = match &a.train {
            Some(p) => tokenize_text(&stok, &read_text(p)?),
            None => Vec::new(),
        };
        if let Some(n) = a.self_generate {
            // Whole sequences of text, then whole sequences of samples, so that a labels
            // file made by the same command holds exactly these tokens.
            tokens.truncate(tokens.len() / a.seq * a.seq);
            let want = tokens.len() + n.div_ceil(a.seq) * a.seq;
            let saved = SavedLogits::read(&labels_path)
                .ok()
                .filter(|s| s.tokens.len() == want && s.tokens.starts_with(&tokens));
            match saved {
                Some(s) => {
                    eprintln!(
                        "self-generate: reusing the {} sampled tokens in {} (delete it to sample anew)",
                        want - tokens.len(),
                        labels_path.display()
                    );
                    tokens = s.tokens;
                }
                None => {
                    let generated = match &a.generator {
                        Some(g) => {
                            let gfile = open_gguf(g)?;
                            let (gm, gtok) = load(g, &gfile)?;
                            check_same_vocab(&stok, &gtok, g)?;
                            self_generate(&gm, &stok, n, a.seq, a.seed)?
                        }
                        None => self_generate(&teacher, &stok, n, a.seq, a.seed)?,
                    };
                    tokens.extend(generated);
                }
            }
        }
        let n_seq = tokens.len() / a.seq;
        if n_seq < 2 {
            return Err(other(format!(
                "the training text is {} tokens: at least two sequences of --seq {} are needed",
                tokens.len(),
                a.seq
            ))
            .into());
        }
        let cached = SavedLogits::read(&labels_path)
            .ok()
            .filter(|s| labels_match(s, &tokens, a.seq, a.top_k.min(s.n_vocab), a.temperature, fp));
        let labels = match cached {
            Some(s) => {
                eprintln!("teacher labels: reusing {}", labels_path.display());
                s
            }
            None => {
                let mut bar = Progress::new("teacher labels", "sequences");
                let s = teacher_labels(
                    &teacher,
                    &tokens,
                    a.seq,
                    a.top_k,
                    a.temperature,
                    fp,
                    &mut |d, t| bar.update(d, t),
                )?;
                s.write(&labels_path)?;
                eprintln!(
                    "teacher labels: {} positions, top {}, in {}",
                    s.positions.len(),
                    s.top_k,
                    labels_path.display()
                );
                s
            }
        };
        let eval_set = match &a.eval_text {
            Some(p) => {
                let t = tokenize_text(&stok, &read_text(p)?);
                let n = (t.len() / a.seq).min(a.eval_seqs);
                if n == 0 {
                    return Err(other(format!(
                        "{}: shorter than one sequence of --seq {}",
                        p.display(),
                        a.seq
                    ))
                    .into());
                }
                let t = t[..n * a.seq].to_vec();
                let l = teacher_labels(&teacher, &t, a.seq, a.top_k, 1.0, fp, &mut |_, _| {})?;
                Some((t, l))
            }
            None => None,
        };
        (tokens, labels, eval_set)
    };
    let (tokens, labels, eval_set) = tokens;
    let n_seq = labels.n_chunks;
    let n_val = ((n_seq as f64 * a.val_frac).round() as usize).min(n_seq - 1);
    let n_train = n_seq - n_val;

    // --- the student ---
    let per_step = a.seq * a.batch;
    let mut total = match (a.tokens, a.minutes) {
        (Some(t), _) => t.div_ceil(per_step).max(1),
        (None, Some(_)) => 0, // fixed after timing the first step
        (None, None) => n_train.div_ceil(a.batch),
    };
    let (mut params, mut opt) = match &a.resume {
        Some(p) => {
            let c = Checkpoint::read(p).map_err(|e| other(format!("{}: {e}", p.display())))?;
            let saved: serde_json::Value = serde_json::from_str(&c.settings)?;
            total = saved["steps"].as_u64().unwrap_or(0) as usize;
            if settings_json(&a, &spec, total) != c.settings {
                return Err(other(format!(
                    "{}: the checkpoint was made with other settings ({}); resume with the same ones",
                    p.display(),
                    c.settings
                ))
                .into());
            }
            if c.params.len() != st.layout.len {
                return Err(other(format!(
                    "{}: parameters do not fit this student",
                    p.display()
                ))
                .into());
            }
            eprintln!("resuming {} at step {} of {total}", p.display(), c.opt.step);
            (c.params, c.opt)
        }
        None => (st.init_params(a.seed), AdamW::new(st.layout.len)),
    };
    let ckpt_path = a
        .checkpoint
        .clone()
        .unwrap_or_else(|| beside(&out_base, ".ckpt"));

    // Targets of sequence c, with the tail mass at the training temperature (`soft`) or at 1.
    let target_of = |c: usize, soft: bool| -> Vec<Option<Target>> {
        let chunk = labels.chunk(c);
        let s = labels.scored();
        let tails = &labels.tail_t[c * s..(c + 1) * s];
        let toks = &tokens[c * a.seq..(c + 1) * a.seq];
        let mut v: Vec<Option<Target>> = chunk
            .iter()
            .zip(tails)
            .enumerate()
            .map(|(t, (p, &tail_t))| {
                Some(Target {
                    ids: &p.ids,
                    logp: &p.logp,
                    tail: if soft { tail_t } else { p.tail },
                    next: toks[t + 1],
                })
            })
            .collect();
        v.push(None); // the last position has no next token
        v
    };
    let val_kld = |params: &[f32]| -> Result<f64, Box<dyn std::error::Error>> {
        let (mut sum, mut n) = (0f64, 0usize);
        for c in n_train..n_seq {
            let z = st.logits(params, &tokens[c * a.seq..(c + 1) * a.seq])?;
            for (row, t) in z
                .chunks_exact(st.model.config.n_vocab)
                .zip(target_of(c, false))
                .filter_map(|(r, t)| t.map(|t| (r, t)))
            {
                sum += distill_loss(row, &t, 1.0, 1.0).0 as f64;
                n += 1;
            }
        }
        Ok(sum / n.max(1) as f64)
    };
    let kld_before = (n_val > 0).then(|| val_kld(&params)).transpose()?;
    // The learning curve on --eval-text: mean KL (T = 1, top-k + tail), PPL, top-1 agreement.
    let curve_point = |params: &[f32], done: usize| -> Result<Point, Box<dyn std::error::Error>> {
        let (et, el) = eval_set.as_ref().expect("only called with --eval-text");
        let (mut kl, mut nll, mut same, mut n) = (0f64, 0f64, 0usize, 0usize);
        for c in 0..el.n_chunks {
            let toks = &et[c * a.seq..(c + 1) * a.seq];
            let z = st.logits(params, toks)?;
            for (t, (row, p)) in z
                .chunks_exact(st.model.config.n_vocab)
                .zip(el.chunk(c))
                .enumerate()
            {
                let tg = Target {
                    ids: &p.ids,
                    logp: &p.logp,
                    tail: p.tail,
                    next: toks[t + 1],
                };
                kl += distill_loss(row, &tg, 1.0, 1.0).0 as f64;
                let ls = LogSoftmax::of(row);
                nll -= ls.logp(row[toks[t + 1] as usize]);
                same += (ls.argmax == p.ids[0] as usize) as usize;
                n += 1;
            }
        }
        let n = n.max(1) as f64;
        Ok(Point {
            tokens: done,
            kld: kl / n,
            ppl: (nll / n).exp(),
            top1: same as f64 / n,
        })
    };
    let mut curve: Vec<Point> = Vec::new();

    // --- training ---
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let _ = ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed));
    }
    let order_for = |epoch: usize| -> Vec<usize> {
        let mut o: Vec<usize> = (0..n_train).collect();
        let mut r = Rng(a.seed ^ (0x5EED_0000 + epoch as u64));
        for i in (1..o.len()).rev() {
            o.swap(i, (r.next_u64() % (i as u64 + 1)) as usize);
        }
        o
    };
    let mut cfg = AdamWConfig {
        lr: a.lr,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: a.weight_decay,
        clip: a.clip,
        warmup: 1,
        total: total.max(1),
        min_lr_frac: 0.1,
    };
    let set_total = |cfg: &mut AdamWConfig, total: usize| {
        cfg.total = total.max(1);
        cfg.warmup = ((total as f32 * a.warmup).round() as usize).max(1);
    };
    set_total(&mut cfg, total);
    let mut bar = Progress::new("distill", "steps");
    let started = Instant::now();
    let first_step = opt.step;
    let mut last_loss = f64::NAN;
    let mut interrupted = false;
    let mut grads = vec![0f32; st.layout.len];
    let evaluate = |params: &[f32],
                    step: usize,
                    curve: &mut Vec<Point>|
     -> Result<(), Box<dyn std::error::Error>> {
        if eval_set.is_some() && curve.last().map(|p| p.tokens) != Some(step * per_step) {
            let p = curve_point(params, step * per_step)?;
            eprintln!(
                "eval at {} tokens: KLD {:.4}  PPL {:.3}  top-1 {:.1} %",
                p.tokens,
                p.kld,
                p.ppl,
                100.0 * p.top1
            );
            curve.push(p);
        }
        Ok(())
    };
    let eval_started = Instant::now();
    evaluate(&params, opt.step, &mut curve)?;
    let eval_secs = eval_started.elapsed().as_secs_f64();
    while total == 0 || opt.step < total {
        let step = opt.step;
        let step_started = Instant::now();
        grads.iter_mut().for_each(|g| *g = 0.0);
        let loss_w = 1.0 / (a.batch * (a.seq - 1)) as f32;
        let mut loss = 0f64;
        for b in 0..a.batch {
            let idx = step * a.batch + b;
            let c = order_for(idx / n_train)[idx % n_train];
            let tg = target_of(c, true);
            loss += st.step(
                &params,
                &tokens[c * a.seq..(c + 1) * a.seq],
                &tg,
                Loss {
                    temperature: a.temperature,
                    alpha: a.alpha,
                    weight: loss_w,
                },
                &mut grads,
            )?;
        }
        let gnorm = opt.update(&cfg, &mut params, &mut grads, &st.layout.decay);
        last_loss = loss * loss_w as f64;
        if !last_loss.is_finite() {
            return Err(other(format!(
                "the loss became {last_loss} at step {step}: lower --lr"
            ))
            .into());
        }
        if total == 0 {
            // --minutes: fix the step count from the first step's time, after setting aside
            // the time of the curve's evaluations (about ten more like the first, unless
            // --eval-every asks for more).
            let secs = step_started.elapsed().as_secs_f64().max(1e-3);
            let budget = a.minutes.unwrap_or(1.0) * 60.0;
            let guess = (budget / secs).max(1.0);
            let evals = match a.eval_every {
                Some(e) => guess / e.max(1) as f64,
                None => 10.0,
            };
            let left = (budget - evals * eval_secs).max(secs);
            total = ((left / secs) as usize).max(1);
            set_total(&mut cfg, total);
            eprintln!("distill: {secs:.1} s a step: {total} steps in the time given");
        }
        let done = opt.step - first_step;
        let rate = (done * per_step) as f64 / started.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!(
            "loss {last_loss:.4}  |g| {gnorm:.3}  lr {:.2e}  {rate:.0} tok/s",
            cfg.lr_at(step)
        ));
        bar.update(opt.step, total);
        let every = a.eval_every.unwrap_or((total / 10).max(1)).max(1);
        if opt.step % every == 0 || opt.step == total {
            evaluate(&params, opt.step, &mut curve)?;
        }
        let save = a.save_every > 0 && opt.step % a.save_every == 0 && opt.step < total;
        interrupted = stop.load(Ordering::Relaxed);
        if save || interrupted {
            Checkpoint {
                settings: settings_json(&a, &spec, total),
                params: params.clone(),
                opt: opt.clone(),
            }
            .write(&ckpt_path)?;
        }
        if interrupted {
            break;
        }
    }
    if interrupted {
        return Ok(format!(
            "interrupted at step {} of {total}: checkpoint saved to {}\nresume with the same arguments and --resume {}\n",
            opt.step,
            ckpt_path.display(),
            ckpt_path.display()
        ));
    }
    let kld_after = (n_val > 0).then(|| val_kld(&params)).transpose()?;

    // --- outputs ---
    let mut report = format!(
        "distilled {} steps ({} tokens) in {:.0} s; final loss {last_loss:.4}\n",
        opt.step - first_step,
        (opt.step - first_step) * per_step,
        started.elapsed().as_secs_f64()
    );
    if let (Some(b), Some(f)) = (kld_before, kld_after) {
        report += &format!(
            "held-out KL divergence to the teacher (top-{} + tail, {n_val} sequences): {b:.4} -> {f:.4}\n",
            labels.top_k
        );
    }
    if let (Some(first), Some(last)) = (curve.first(), curve.last()) {
        let (csv, svg) = (
            beside(&out_base, ".curve.csv"),
            beside(&out_base, ".curve.svg"),
        );
        write_curve_csv(&curve, &csv).map_err(|e| other(format!("{}: {e}", csv.display())))?;
        write_curve_svg(&curve, &svg).map_err(other)?;
        report += &format!(
            "--eval-text: KLD {:.4} -> {:.4}, PPL {:.3} -> {:.3}, top-1 {:.1} % -> {:.1} % ({} points in {} and {})\n",
            first.kld,
            last.kld,
            first.ppl,
            last.ppl,
            100.0 * first.top1,
            100.0 * last.top1,
            curve.len(),
            csv.display(),
            svg.display()
        );
    }
    if let Some(p) = &a.adapter_out {
        let p = write_lora(&st, &params, p)?;
        report += &format!("adapter: {}\n", p.display());
    }
    if let Some(p) = &a.output {
        let quantized = st.spec.rank > 0
            && sfile.tensors().any(|v| {
                v.name.starts_with("blk.")
                    && st
                        .spec
                        .targets
                        .iter()
                        .any(|t| v.name.contains(&format!(".{t}.")))
                    && !matches!(v.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
            });
        if quantized {
            eprintln!(
                "note: the merged model re-quantizes W + s·B·A to the student's types, which \
                 rounds away most of a correction smaller than the quantization step; the \
                 adapter (--adapter-out) keeps it. To prune and distill, use an F16 student and \
                 quantize the merged model afterwards."
            );
        }
        let mut bar = Progress::new("merge", "tensors");
        let p = write_merged(&st, &sfile, &params, p, &mut |d, t| bar.update(d, t))?;
        report += &format!("merged model: {}\n", p.display());
    }
    let _ = std::fs::remove_file(&ckpt_path);
    Ok(report)
}

/// `n` tokens the teacher samples at temperature 1, in sequences of `seq` starting from BOS.
fn self_generate(
    teacher: &Model,
    tok: &crate::tokenizer::Tokenizer,
    n: usize,
    seq: usize,
    seed: u64,
) -> Result<Vec<u32>, Box<dyn std::error::Error>> {
    let n_seq = n.div_ceil(seq);
    let mut rng = Rng(seed ^ 0x5E1F_6E4E);
    let mut out = Vec::with_capacity(n_seq * seq);
    let mut bar = Progress::new("self-generate", "tokens");
    let start = tok.bos().unwrap_or(0);
    for _ in 0..n_seq {
        let mut cache = teacher.new_cache(seq);
        let mut cur = start;
        out.push(cur);
        for _ in 1..seq {
            let z = teacher.forward(&mut cache, &[cur], Logits::Last)?;
            let mx = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let w: Vec<f64> = z.iter().map(|&v| ((v - mx) as f64).exp()).collect();
            let mut u = rng.uniform() * w.iter().sum::<f64>();
            cur = (w.len() - 1) as u32;
            for (i, &wi) in w.iter().enumerate() {
                u -= wi;
                if u <= 0.0 {
                    cur = i as u32;
                    break;
                }
            }
            out.push(cur);
            bar.update(out.len(), n_seq * seq);
        }
    }
    Ok(out)
}
