//! `ledge calibrate`: the imatrix (and optionally Gram matrices) of a model over a text.

use std::path::PathBuf;

use clap::Args;

use super::Threads;
use crate::convert::imatrix::calibrate_with_gram;
use crate::convert::ConvertError;
use crate::gguf::GgufFile;

/// Collect per-weight input statistics (an imatrix) by running a model over a text.
///
/// The imatrix weights quantization error by how strongly each input channel is used
/// (`ledge convert --imatrix`); with --gram, the full input Gram matrices feed GPTQ.
#[derive(Args, Debug)]
pub struct CalibrateArgs {
    /// The GGUF model.
    #[arg(short, long)]
    pub model: PathBuf,
    /// The calibration text (plain UTF-8).
    #[arg(long)]
    pub text: PathBuf,
    /// The imatrix file to write (llama.cpp's GGUF imatrix format).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Tokens per chunk.
    #[arg(short, long, default_value_t = 512)]
    pub ctx: usize,
    /// Most chunks to run (default: the whole text).
    #[arg(long)]
    pub chunks: Option<usize>,
    #[command(flatten)]
    pub threads: Threads,
    /// Also write each input group's Gram matrix XᵀX here (for `--method gptq`).
    #[arg(long)]
    pub gram: Option<PathBuf>,
}

pub fn calibrate(a: CalibrateArgs) -> Result<String, ConvertError> {
    a.threads.init();
    let f = GgufFile::open(&a.model)?;
    let t = std::fs::read_to_string(&a.text).map_err(|source| ConvertError::Io {
        path: a.text.clone(),
        source,
    })?;
    let (mut im, gram) = calibrate_with_gram(&f, &t, a.ctx, a.chunks, true, a.gram.is_some())?;
    im.datasets = vec![a.text.display().to_string()];
    im.save(&a.output)?;
    let mut msg = format!(
        "wrote {} ({} weights, {} chunks of {} tokens)\n",
        a.output.display(),
        im.entries.len(),
        im.chunks,
        a.ctx
    );
    if let (Some(mut g), Some(p)) = (gram, a.gram) {
        g.save(&p)?;
        msg += &format!("wrote {} ({} input groups)\n", p.display(), g.groups.len());
    }
    Ok(msg)
}
