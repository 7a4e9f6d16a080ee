//! `ledge run`: load a model, encode a prompt, stream the generated text to stdout.

use std::io::Write;
use std::time::Instant;

use clap::Args;

use super::Generation;
use crate::generate::{GenerateOptions, Generator};
use crate::gguf::GgufFile;
use crate::model::Model;
use crate::tokenizer::Tokenizer;

/// Generate text from a prompt, streaming tokens as they are produced.
///
/// The prompt is echoed, then the continuation; timings (prompt and generation speed, time
/// to first token) go to stderr. Ctrl-C stops after the current token.
#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub generation: Generation,
    /// The prompt.
    #[arg(short, long)]
    pub prompt: String,
    /// Most tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 128)]
    pub n_predict: usize,
    /// Stop before this string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Drop the start of a prompt longer than the context instead of failing.
    #[arg(long)]
    pub truncate: bool,
    /// Print model details, the kernels chosen, and why generation stopped.
    #[arg(short, long)]
    pub verbose: bool,
}

pub fn run(args: RunArgs, out: &mut dyn Write) -> Result<(), Box<dyn std::error::Error>> {
    let path = args.generation.model.resolve()?;
    let threads = args.generation.threads.init();
    let kernels = crate::quant::simd::init()?;
    let t0 = Instant::now();
    let file = GgufFile::open(&path)?;
    let mut model = Model::load(&file)?;
    args.generation.lora.apply(&mut model, args.verbose)?;
    let model = model;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let c = &model.config;
    let ctx = args.generation.ctx_for(c);
    if args.verbose {
        eprintln!(
            "model: {} ({}, {} layers, d={}, vocab {}), loaded in {:.0} ms",
            path.display(),
            c.arch.name(),
            c.n_layer,
            c.n_embd,
            c.n_vocab,
            t0.elapsed().as_secs_f64() * 1e3
        );
        let why = match args.generation.threads.n {
            Some(n) if n > 0 => "-t".to_string(),
            _ => super::threads::default_threads().why,
        };
        eprintln!(
            "threads: {threads} ({why}), context: {ctx}, kernels: {}",
            kernels.name
        );
        eprintln!("{}", kernels.describe());
    }
    let ids = tokenizer.encode(&args.prompt, true, true);
    let mut gen = Generator::new(&model, &tokenizer, args.generation.sampling.into(), ctx);
    let cancel = gen.cancel_flag();
    // Ctrl-C stops generation after the current token; the summary still prints. A second
    // handler cannot be installed (tests), which only loses that nicety.
    let _ = ctrlc::set_handler(move || cancel.store(true, std::sync::atomic::Ordering::Relaxed));
    let mut stream = gen.generate(
        &ids,
        GenerateOptions {
            max_tokens: args.n_predict,
            stop: args.stop,
            truncate_prompt: args.truncate,
        },
    )?;
    write!(out, "{}", args.prompt)?;
    out.flush()?;
    for piece in &mut stream {
        write!(out, "{}", piece?)?;
        out.flush()?;
    }
    writeln!(out)?;
    eprintln!("{}", stream.stats().summary());
    if args.verbose {
        eprintln!("stopped: {:?}", stream.stop_reason());
    }
    Ok(())
}
