//! `ledge run`: load a model, encode a prompt, stream the generated text to stdout.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use crate::generate::{GenerateOptions, Generator, SamplerConfig};
use crate::gguf::GgufFile;
use crate::model::Model;
use crate::tokenizer::Tokenizer;

pub struct RunArgs {
    pub model: Option<PathBuf>,
    pub prompt: String,
    pub n_predict: usize,
    pub sampler: SamplerConfig,
    pub threads: Option<usize>,
    pub ctx: Option<usize>,
    pub stop: Vec<String>,
    pub truncate: bool,
    pub verbose: bool,
}

pub fn run(args: RunArgs, out: &mut dyn Write) -> Result<(), Box<dyn std::error::Error>> {
    let path = match args.model {
        Some(p) => p,
        None => super::default_model()?,
    };
    let threads = super::init_threads(args.threads);
    let kernels = crate::quant::simd::init()?;
    let t0 = Instant::now();
    let file = GgufFile::open(&path)?;
    let model = Model::load(&file)?;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let c = &model.config;
    let ctx = args.ctx.unwrap_or(c.ctx_train.min(4096)).max(1);
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
        eprintln!(
            "threads: {threads}, context: {ctx}, kernels: {}",
            kernels.name
        );
        eprintln!("{}", kernels.describe());
    }
    let ids = tokenizer.encode(&args.prompt, true, true);
    let mut gen = Generator::new(&model, &tokenizer, args.sampler, ctx);
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
