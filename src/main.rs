//! The `ledge` command line: parses arguments and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ledge",
    version,
    about = "LLMs at the edge: run and compress GGUF models on CPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt, streaming tokens as they are produced.
    Run {
        /// The GGUF model (default: models/SmolLM2-135M-Instruct.Q4_1.gguf).
        #[arg(short, long)]
        model: Option<PathBuf>,
        /// The prompt.
        #[arg(short, long)]
        prompt: String,
        /// Most tokens to generate.
        #[arg(short = 'n', long = "n-predict", default_value_t = 128)]
        n_predict: usize,
        #[command(flatten)]
        sampling: Sampling,
        /// Worker threads (default: one per core).
        #[arg(short, long)]
        threads: Option<usize>,
        /// Context size in tokens (default: the model's, at most 4096).
        #[arg(short, long)]
        ctx: Option<usize>,
        /// Stop before this string (repeatable).
        #[arg(long)]
        stop: Vec<String>,
        /// Drop the start of a prompt longer than the context instead of failing.
        #[arg(long)]
        truncate: bool,
        /// Print model details, the kernels chosen, and why generation stopped.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Talk with a model: the conversation is formatted with the model's chat template.
    Chat {
        /// The GGUF model (default: models/SmolLM2-135M-Instruct.Q4_1.gguf).
        #[arg(short, long)]
        model: Option<PathBuf>,
        /// A system message to start the conversation with.
        #[arg(long)]
        system: Option<String>,
        /// Most tokens per reply.
        #[arg(short = 'n', long = "n-predict", default_value_t = 512)]
        n_predict: usize,
        #[command(flatten)]
        sampling: Sampling,
        /// Worker threads (default: one per core).
        #[arg(short, long)]
        threads: Option<usize>,
        /// Context size in tokens (default: the model's, at most 4096).
        #[arg(short, long)]
        ctx: Option<usize>,
        /// Print speed after each reply.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Measure prompt processing (pp) and generation (tg) speed, like llama-bench.
    Bench {
        /// The GGUF model (default: models/SmolLM2-135M-Instruct.Q4_1.gguf).
        #[arg(short, long)]
        model: Option<PathBuf>,
        /// Prompt lengths to time (comma-separated; 0 skips).
        #[arg(
            short = 'p',
            long = "n-prompt",
            value_delimiter = ',',
            default_value = "512"
        )]
        pp: Vec<usize>,
        /// Generation lengths to time (comma-separated; 0 skips).
        #[arg(
            short = 'n',
            long = "n-gen",
            value_delimiter = ',',
            default_value = "128"
        )]
        tg: Vec<usize>,
        /// Repetitions per test.
        #[arg(short = 'r', long, default_value_t = 5)]
        repetitions: usize,
        /// Worker threads (default: one per core).
        #[arg(short, long)]
        threads: Option<usize>,
        /// Print JSON instead of the markdown tables.
        #[arg(long)]
        json: bool,
        /// Prompt tokens for the time-to-first-token and load timings (0 skips them).
        #[arg(long, default_value_t = 64)]
        ttft_prompt: usize,
        /// Also measure the memory read bandwidth (buffer of MIB MiB, default 2048) and print
        /// tg's weight bytes/token, GB/s and % of it; without -m, only the bandwidth.
        #[arg(long, value_name = "MIB", num_args = 0..=1, default_missing_value = "2048")]
        bandwidth: Option<usize>,
    },
    /// Perplexity over a text (llama-perplexity's protocol), and KL divergence, top-token
    /// agreement and RMS Δp against a baseline model or its saved logits.
    Eval {
        /// The GGUF model (default: models/SmolLM2-135M-Instruct.Q4_1.gguf).
        #[arg(short, long)]
        model: Option<PathBuf>,
        /// The evaluation text (UTF-8); optional with --baseline-logits, which holds its tokens.
        #[arg(short = 'f', long)]
        text: Option<PathBuf>,
        /// Tokens per chunk; the second half of each chunk is scored.
        #[arg(short, long, default_value_t = 512)]
        ctx: usize,
        /// Evaluate at most this many chunks (default: all the text holds).
        #[arg(long)]
        chunks: Option<usize>,
        /// A baseline model to compare with (same tokenizer): exact KL divergence.
        #[arg(long)]
        baseline: Option<PathBuf>,
        /// Baseline logits saved by --save-logits (KL divergence over their top-k).
        #[arg(long)]
        baseline_logits: Option<PathBuf>,
        /// Save this model's top-k logits per scored position, to serve as a baseline.
        #[arg(long)]
        save_logits: Option<PathBuf>,
        /// Tokens kept per position by --save-logits (8·k+16 bytes a position). KLD from
        /// saved logits is a lower bound; measured gap on SmolLM2 Q4_0 vs Q4_1: 22% at k=64,
        /// 11% at 256, 4.4% at 1024.
        #[arg(long, default_value_t = 1024)]
        top_k: usize,
        /// Worker threads (default: one per core).
        #[arg(short, long)]
        threads: Option<usize>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Compare variants of a model with its baseline on one text: writes report.md (table),
    /// report.svg (size against KL divergence and speed) and report.json into a folder.
    Report {
        /// The variant GGUF files.
        #[arg(required = true)]
        variants: Vec<PathBuf>,
        /// The reference model the variants are compared with.
        #[arg(long)]
        baseline: PathBuf,
        /// The evaluation text (UTF-8).
        #[arg(short = 'f', long)]
        text: PathBuf,
        /// Output folder.
        #[arg(short, long)]
        out: PathBuf,
        /// Tokens per chunk; the second half of each chunk is scored.
        #[arg(short, long, default_value_t = 512)]
        ctx: usize,
        /// Evaluate at most this many chunks.
        #[arg(long)]
        chunks: Option<usize>,
        /// Prompt length for the pp speed column (0 skips).
        #[arg(short = 'p', long = "n-prompt", default_value_t = 128)]
        pp: usize,
        /// Generation length for the tg speed column (0 skips).
        #[arg(short = 'n', long = "n-gen", default_value_t = 32)]
        tg: usize,
        /// Worker threads (default: one per core).
        #[arg(short, long)]
        threads: Option<usize>,
    },
    /// Find the smallest (or fastest) quantized file that meets a quality target: the
    /// baseline's logits on --eval once, calibration on --calib once, then candidates from
    /// the least to the most aggressive (Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q4_K_S, Q4_0, Q3_K_M,
    /// Q2_K; each without and with the imatrix where it weights any tensor), each measured
    /// (size, PPL, KLD, top-1); prints the table of every candidate and why it was chosen or
    /// not. Early stop: after a rung (one recipe, with and without the imatrix) that misses
    /// the quality target, one more rung is tried; two failing rungs in a row end the search.
    /// Exits non-zero and writes nothing when no candidate meets the target.
    Compress {
        /// A Hugging Face model folder (converted once to an F16 baseline) or a GGUF (the
        /// baseline itself; a quantized one is re-quantized).
        source: PathBuf,
        /// The GGUF to write.
        #[arg(short, long)]
        output: PathBuf,
        /// Largest mean KL divergence from the baseline (nats/token).
        #[arg(long, required_unless_present = "max_ppl_increase")]
        max_kld: Option<f64>,
        /// Largest perplexity increase over the baseline, e.g. 5%.
        #[arg(long)]
        max_ppl_increase: Option<String>,
        /// Largest file size, e.g. 80MB (MB = 10^6 bytes, MiB = 2^20).
        #[arg(long)]
        max_size: Option<String>,
        /// Calibration text (for the imatrix); must differ from --eval.
        #[arg(long)]
        calib: PathBuf,
        /// Held-out evaluation text.
        #[arg(long)]
        eval: PathBuf,
        /// What to minimize among the files meeting the target: size or speed (tg tokens/s,
        /// measured per candidate; noisy, so close calls may differ between runs).
        #[arg(long, default_value = "size")]
        optimize: String,
        /// Allow --calib and --eval to be the same text.
        #[arg(long)]
        allow_same_text: bool,
        /// Where the baseline and candidates are written (default: OUT.work, removed after).
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Keep the work files (baseline, imatrix, every candidate).
        #[arg(long)]
        keep: bool,
        /// Tokens per chunk.
        #[arg(short, long, default_value_t = 512)]
        ctx: usize,
        /// Evaluation chunks (0 = all the text holds). The default is a sample (4 × 255
        /// scored tokens) because every candidate costs chunks × ctx tokens of inference.
        #[arg(long, default_value_t = 4)]
        chunks: usize,
        /// Calibration chunks (0 = all the text holds).
        #[arg(long, default_value_t = 4)]
        calib_chunks: usize,
        /// Try every candidate instead of stopping after two failing rungs.
        #[arg(long)]
        no_early_stop: bool,
        /// Candidates to try instead of the default ladder, in order: TYPE[+imatrix][+ffnPCT]
        /// [+layersN], e.g. Q8_0,Q4_0+imatrix,Q4_K_M+imatrix+ffn10,Q4_K_M+imatrix+layers1.
        #[arg(long)]
        candidates: Option<String>,
        /// Worker threads (default: one per core).
        #[arg(short, long)]
        threads: Option<usize>,
    },
    /// Serve the OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions,
    /// /v1/models, /health, /metrics).
    Serve {
        /// The GGUF model (default: models/SmolLM2-135M-Instruct.Q4_1.gguf).
        #[arg(short, long)]
        model: Option<PathBuf>,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Port to listen on (0 picks a free one; the address is printed).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Requests generating at once, each with its own KV cache.
        #[arg(long, default_value_t = 1)]
        parallel: usize,
        /// Requests that may wait for a free slot; more are refused with 503.
        #[arg(long, default_value_t = 16)]
        queue: usize,
        /// Context size per slot in tokens (default: the model's, at most 4096).
        #[arg(short, long)]
        ctx: Option<usize>,
        /// Require `Authorization: Bearer KEY` (or set LEDGE_API_KEY).
        #[arg(long)]
        api_key: Option<String>,
        /// Worker threads for the matrix products (default: one per core).
        #[arg(short, long)]
        threads: Option<usize>,
        /// Largest request body in bytes.
        #[arg(long, default_value_t = 1 << 20)]
        max_body: usize,
        /// Largest max_tokens a request may ask for (default: the context size).
        #[arg(long)]
        max_tokens: Option<usize>,
        /// Seconds running requests may go on after SIGTERM before they are cancelled.
        #[arg(long, default_value_t = 10.0)]
        shutdown_grace: f64,
    },
    /// Write a model with random weights in a real model's shape (for benchmarks).
    Synth {
        /// Architecture (llama).
        #[arg(long, default_value = "llama")]
        arch: String,
        /// Shape: 135m, 1b, 7b (Llama 2), 8b (Llama 3), 13b.
        #[arg(long)]
        shape: String,
        /// Weight type (Q4_0, Q8_0, Q4_K, F16, …) or mix (Q4_K_M, Q5_K_M).
        #[arg(long = "type")]
        ty: String,
        /// Output GGUF file.
        #[arg(short, long)]
        output: PathBuf,
        /// Fewer layers than the shape has (same width, smaller file).
        #[arg(long)]
        layers: Option<usize>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Convert a Hugging Face model folder (or a GGUF) to a GGUF of the given type.
    Convert {
        /// The HF folder (config.json, *.safetensors, tokenizer.json) or a GGUF file.
        input: PathBuf,
        /// The GGUF to write.
        #[arg(short, long)]
        output: PathBuf,
        /// F32, F16, BF16, Q8_0, Q6_K, Q5_K, Q5_1, Q5_0, Q4_K, Q4_1, Q4_0, Q3_K, IQ4_NL, or
        /// a recipe: Q5_K_M, Q4_K_M, Q4_K_S, Q3_K_M, Q2_K.
        #[arg(short = 't', long = "type", default_value = "F16")]
        ty: String,
        #[command(flatten)]
        q: QuantFlags,
    },
    /// Re-quantize a GGUF (from F32/F16/BF16; a quantized one with --allow-requantize).
    Quantize {
        input: PathBuf,
        output: PathBuf,
        /// The type or recipe (see `ledge convert --help`).
        #[arg(value_name = "TYPE")]
        ty: String,
        #[command(flatten)]
        q: QuantFlags,
    },
    /// Collect per-weight input statistics (an imatrix) by running a model over a text.
    Calibrate {
        #[arg(short, long)]
        model: PathBuf,
        /// The calibration text (plain UTF-8).
        #[arg(long)]
        text: PathBuf,
        /// The imatrix file to write (llama.cpp's GGUF imatrix format).
        #[arg(short, long)]
        output: PathBuf,
        /// Tokens per chunk.
        #[arg(short, long, default_value_t = 512)]
        ctx: usize,
        /// Most chunks to run (default: the whole text).
        #[arg(long)]
        chunks: Option<usize>,
        #[arg(short, long)]
        threads: Option<usize>,
        /// Also write each input group's Gram matrix XᵀX here (for `--method gptq`).
        #[arg(long)]
        gram: Option<PathBuf>,
    },
    /// Write a GGUF (llama, BPE vocabulary) as a Hugging Face model folder.
    ExportHf {
        model: PathBuf,
        /// The folder to create.
        #[arg(short, long)]
        output: PathBuf,
        /// f32, f16 or bf16.
        #[arg(long, default_value = "f16")]
        dtype: String,
        /// Split the weights into shards of about this many MiB.
        #[arg(long)]
        shard_mb: Option<u64>,
    },
    /// Show what a GGUF file holds: architecture, hyperparameters, tokenizer, tensors.
    Inspect {
        /// The GGUF file.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct QuantFlags {
    /// Give tensors whose name matches REGEX this type (repeatable; first match wins).
    #[arg(long = "tensor-type", value_name = "REGEX=TYPE")]
    tensor_type: Vec<String>,
    /// Allow re-quantizing tensors that are already quantized.
    #[arg(long)]
    allow_requantize: bool,
    /// Calibration statistics (from `ledge calibrate` or llama-imatrix) for
    /// importance-weighted quantization.
    #[arg(long)]
    imatrix: Option<PathBuf>,
    /// rtn (round to nearest, importance-weighted with --imatrix) or gptq (needs --gram).
    #[arg(long, default_value = "rtn")]
    method: String,
    /// Input Gram matrices from `ledge calibrate --gram` (for --method gptq).
    #[arg(long)]
    gram: Option<PathBuf>,
    /// GPTQ damping, relative to the mean of diag(H).
    #[arg(long, default_value_t = 0.01)]
    damp: f64,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Remove this fraction (0 < F < 1) of FFN channels, ranked by calibration importance
    /// ‖W_down[:,c]‖·rms(h_c) (needs --calib); kept counts round to 32 (256 for K-quants).
    #[arg(long, value_name = "F")]
    prune_ffn: Option<f32>,
    /// layer: the same fraction in every block (default); global: ranked across blocks,
    /// per-layer n_ff (ledge runs it; llama.cpp's llama loader does not accept it).
    #[arg(long, value_name = "layer|global")]
    prune_scope: Option<String>,
    /// Skip the least-squares re-fit of ffn_down after --prune-ffn.
    #[arg(long)]
    no_refit: bool,
    /// Drop the N blocks whose output is most similar to their input (needs --calib).
    #[arg(long, value_name = "N")]
    prune_layers: Option<usize>,
    /// Drop these blocks (original indices, comma-separated); the rest are renumbered.
    #[arg(long, value_name = "I,J", value_delimiter = ',')]
    drop_layers: Vec<usize>,
    /// Calibration text for --prune-ffn / --prune-layers (plain UTF-8).
    #[arg(long, value_name = "FILE")]
    calib: Option<PathBuf>,
    /// Most calibration chunks of 256 tokens for pruning (default 16).
    #[arg(long, value_name = "N")]
    calib_chunks: Option<usize>,
    /// Ridge of the ffn_down re-fit, toward the unpruned weights, relative to the mean
    /// diagonal of the kept channels' Gram matrix (default 0.1; large = no re-fit).
    #[arg(long, value_name = "R")]
    refit_ridge: Option<f64>,
    /// Remove N whole KV groups (a KV head and the query heads sharing it) from every block,
    /// the N with the least calibration contribution through attn_output (needs --calib);
    /// attn_output is re-fit unless --no-refit.
    #[arg(long, value_name = "N")]
    prune_heads: Option<usize>,
}

#[derive(clap::Args)]
struct Sampling {
    /// Temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    temp: f32,
    /// Keep the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Drop tokens less likely than min-p × the most likely one.
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    /// Penalize recently seen tokens (1 = off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    frequency_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    presence_penalty: f32,
    /// How many recent tokens the penalties consider.
    #[arg(long, default_value_t = 64)]
    penalty_last_n: usize,
    /// Random seed: the same seed and settings give the same text.
    #[arg(long, default_value_t = 0x5EED)]
    seed: u64,
}

impl From<Sampling> for ledge::generate::SamplerConfig {
    fn from(s: Sampling) -> Self {
        ledge::generate::SamplerConfig {
            temperature: s.temp,
            top_k: s.top_k,
            top_p: s.top_p,
            min_p: s.min_p,
            repeat_penalty: s.repeat_penalty,
            frequency_penalty: s.frequency_penalty,
            presence_penalty: s.presence_penalty,
            penalty_window: s.penalty_last_n,
            seed: s.seed,
        }
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Run {
            model,
            prompt,
            n_predict,
            sampling,
            threads,
            ctx,
            stop,
            truncate,
            verbose,
        } => ledge::app::run::run(
            ledge::app::run::RunArgs {
                model,
                prompt,
                n_predict,
                sampler: sampling.into(),
                threads,
                ctx,
                stop,
                truncate,
                verbose,
            },
            &mut std::io::stdout().lock(),
        )?,
        Command::Chat {
            model,
            system,
            n_predict,
            sampling,
            threads,
            ctx,
            verbose,
        } => ledge::app::chat::chat(
            ledge::app::chat::ChatArgs {
                model,
                system,
                n_predict,
                sampler: sampling.into(),
                threads,
                ctx,
                verbose,
            },
            &mut std::io::stdin().lock(),
            &mut std::io::stdout().lock(),
        )?,
        Command::Bench {
            model,
            pp,
            tg,
            repetitions,
            threads,
            json,
            ttft_prompt,
            bandwidth,
        } => print!(
            "{}",
            ledge::app::bench::bench(ledge::app::bench::BenchArgs {
                model,
                pp,
                tg,
                reps: repetitions,
                threads,
                json,
                ttft_prompt,
                bandwidth_mib: bandwidth,
            })?
        ),
        Command::Eval {
            model,
            text,
            ctx,
            chunks,
            baseline,
            baseline_logits,
            save_logits,
            top_k,
            threads,
            json,
        } => print!(
            "{}",
            ledge::app::eval::eval(ledge::app::eval::EvalArgs {
                model,
                text,
                ctx,
                chunks,
                baseline,
                baseline_logits,
                save_logits,
                top_k,
                threads,
                json,
            })?
        ),
        Command::Report {
            variants,
            baseline,
            text,
            out,
            ctx,
            chunks,
            pp,
            tg,
            threads,
        } => print!(
            "{}",
            ledge::app::report::report(ledge::app::report::ReportArgs {
                variants,
                baseline,
                text,
                out,
                ctx,
                chunks,
                pp,
                tg,
                threads,
            })?
        ),
        Command::Compress {
            source,
            output,
            max_kld,
            max_ppl_increase,
            max_size,
            calib,
            eval,
            optimize,
            allow_same_text,
            work_dir,
            keep,
            ctx,
            chunks,
            calib_chunks,
            no_early_stop,
            candidates,
            threads,
        } => print!(
            "{}",
            ledge::app::compress::compress(ledge::app::compress::CompressArgs {
                source,
                out: output,
                max_kld,
                max_ppl_increase,
                max_size,
                calib,
                eval,
                optimize,
                allow_same_text,
                work_dir,
                keep,
                ctx,
                chunks,
                calib_chunks,
                candidates,
                no_early_stop,
                threads,
            })?
        ),
        Command::Serve {
            model,
            host,
            port,
            parallel,
            queue,
            ctx,
            api_key,
            threads,
            max_body,
            max_tokens,
            shutdown_grace,
        } => ledge::app::serve::serve(ledge::app::serve::ServeArgs {
            model,
            host,
            port,
            parallel,
            queue,
            ctx,
            api_key,
            threads,
            max_body,
            max_tokens,
            shutdown_grace,
        })?,
        Command::Synth {
            arch,
            shape,
            ty,
            output,
            layers,
            seed,
        } => ledge::app::synth(&arch, &shape, &ty, &output, layers, seed)?,
        Command::Convert {
            input,
            output,
            ty,
            q,
        } => print!(
            "{}",
            ledge::app::convert::convert(convert_args(input, output, ty, q))?
        ),
        Command::Quantize {
            input,
            output,
            ty,
            q,
        } => print!(
            "{}",
            ledge::app::convert::quantize(convert_args(input, output, ty, q))?
        ),
        Command::Calibrate {
            model,
            text,
            output,
            ctx,
            chunks,
            threads,
            gram,
        } => print!(
            "{}",
            ledge::app::convert::calibrate_gram(model, text, output, ctx, chunks, threads, gram)?
        ),
        Command::ExportHf {
            model,
            output,
            dtype,
            shard_mb,
        } => print!(
            "{}",
            ledge::app::convert::export(model, output, &dtype, shard_mb)?
        ),
        Command::Inspect { file, json } => {
            let f = ledge::gguf::GgufFile::open(&file)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&ledge::inspect::report_json(&f))?
                );
            } else {
                print!("{}", ledge::inspect::report_text(&f));
            }
        }
    }
    Ok(())
}

fn convert_args(
    input: PathBuf,
    output: PathBuf,
    target: String,
    q: QuantFlags,
) -> ledge::app::convert::ConvertArgs {
    ledge::app::convert::ConvertArgs {
        input,
        output,
        target,
        tensor_types: q.tensor_type,
        allow_requantize: q.allow_requantize,
        threads: q.threads,
        imatrix: q.imatrix,
        method: q.method,
        gram: q.gram,
        damp: q.damp,
        prune: ledge::convert::prune::PruneFlags {
            ffn: q.prune_ffn,
            scope: q.prune_scope,
            no_refit: q.no_refit,
            prune_layers: q.prune_layers,
            drop_layers: q.drop_layers,
            calib: q.calib,
            calib_chunks: q.calib_chunks,
            refit_ridge: q.refit_ridge,
            heads: q.prune_heads,
        },
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
