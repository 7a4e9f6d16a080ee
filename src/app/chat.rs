//! `ledge chat`: an interactive conversation. Each turn renders the whole history with the
//! model's chat template; the KV cache keeps the shared prefix, so only the new turn is
//! processed.

use std::io::{BufRead, Write};

use clap::Args;

use super::Generation;
use crate::generate::chat::{ChatTemplate, Message};
use crate::generate::{GenerateOptions, Generator};
use crate::gguf::GgufFile;
use crate::model::Model;
use crate::tokenizer::Tokenizer;

/// Talk with a model, formatted with its chat template.
///
/// Reads one message per line from stdin and streams each reply; an empty line or the end of
/// input quits. The whole conversation is re-rendered with the model's chat template every
/// turn, and the KV cache keeps the shared prefix, so only the new turn is processed.
#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub generation: Generation,
    /// A system message to start the conversation with.
    #[arg(long)]
    pub system: Option<String>,
    /// Most tokens per reply.
    #[arg(short = 'n', long = "n-predict", default_value_t = 512)]
    pub n_predict: usize,
    /// Print speed after each reply.
    #[arg(short, long)]
    pub verbose: bool,
}

pub fn chat(
    args: ChatArgs,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> Result<(), Box<dyn std::error::Error>> {
    let path = args.generation.model.resolve()?;
    args.generation.threads.init();
    crate::quant::simd::init()?;
    let file = GgufFile::open(&path)?;
    let mut model = Model::load(&file)?;
    args.generation.lora.apply(&mut model, false)?;
    let model = model;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let template = ChatTemplate::from_gguf(&file, &tokenizer)?;
    if template.is_fallback() {
        eprintln!(
            "note: {} has no chat template; using a plain User:/Assistant: format",
            path.display()
        );
    }
    let ctx = args.generation.ctx_for(&model.config);
    let mut gen = Generator::new(&model, &tokenizer, args.generation.sampling.into(), ctx);
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
