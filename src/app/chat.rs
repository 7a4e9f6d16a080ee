//! `ledge chat`: an interactive conversation. Each turn renders the whole history with the
//! model's chat template; the KV cache keeps the shared prefix, so only the new turn is
//! processed.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use crate::generate::chat::{ChatTemplate, Message};
use crate::generate::{GenerateOptions, Generator, SamplerConfig};
use crate::gguf::GgufFile;
use crate::model::Model;
use crate::tokenizer::Tokenizer;

pub struct ChatArgs {
    pub model: Option<PathBuf>,
    pub system: Option<String>,
    pub n_predict: usize,
    pub sampler: SamplerConfig,
    pub threads: Option<usize>,
    pub ctx: Option<usize>,
    pub verbose: bool,
}

pub fn chat(
    args: ChatArgs,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> Result<(), Box<dyn std::error::Error>> {
    let path = match args.model {
        Some(p) => p,
        None => super::default_model()?,
    };
    super::init_threads(args.threads);
    crate::quant::simd::init()?;
    let file = GgufFile::open(&path)?;
    let model = Model::load(&file)?;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let template = ChatTemplate::from_gguf(&file, &tokenizer)?;
    if template.is_fallback() {
        eprintln!(
            "note: {} has no chat template; using a plain User:/Assistant: format",
            path.display()
        );
    }
    let ctx = args.ctx.unwrap_or(model.config.ctx_train.min(4096)).max(1);
    let mut gen = Generator::new(&model, &tokenizer, args.sampler, ctx);
    let cancel = gen.cancel_flag();
    let _ = ctrlc::set_handler(move || cancel.store(true, std::sync::atomic::Ordering::Relaxed));
    eprintln!(
        "chatting with {} — an empty line or end of input quits",
        path.display()
    );

    let mut history: Vec<Message> = args
        .system
        .iter()
        .map(|s| Message::new("system", s))
        .collect();
    let mut line = String::new();
    loop {
        write!(out, "> ")?;
        out.flush()?;
        line.clear();
        if input.read_line(&mut line)? == 0 || line.trim().is_empty() {
            writeln!(out)?;
            return Ok(());
        }
        history.push(Message::new("user", line.trim_end_matches(['\r', '\n'])));
        let text = template.render(&history, true)?;
        let mut ids = Vec::new();
        if tokenizer.add_bos() {
            if let Some(bos) = tokenizer.bos() {
                // Templates that write the BOS text themselves get it parsed below.
                let bos_text = tokenizer.token_text(bos).unwrap_or_default();
                if bos_text.is_empty() || !text.starts_with(bos_text) {
                    ids.push(bos);
                }
            }
        }
        ids.extend(tokenizer.encode(&text, false, true));
        let mut stream = gen.generate(
            &ids,
            GenerateOptions {
                max_tokens: args.n_predict,
                stop: Vec::new(),
                truncate_prompt: false,
            },
        )?;
        let mut reply = String::new();
        for piece in &mut stream {
            let piece = piece?;
            write!(out, "{piece}")?;
            out.flush()?;
            reply.push_str(&piece);
        }
        writeln!(out)?;
        if args.verbose {
            eprintln!("{}", stream.stats().summary());
        }
        history.push(Message::new("assistant", reply.trim()));
    }
}
