//! `ledge export-hf`: a GGUF back to a Hugging Face model folder.

use std::path::PathBuf;

use clap::Args;

use crate::convert::export::{export_hf, ExportOptions};
use crate::convert::safetensors::StDtype;
use crate::convert::ConvertError;
use crate::gguf::GgufFile;

/// Write a GGUF (llama, BPE vocabulary) as a Hugging Face model folder.
///
/// The folder gets config.json, tokenizer.json, tokenizer_config.json and the weights as
/// safetensors, dequantized to --dtype.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The GGUF model.
    pub model: PathBuf,
    /// The folder to create.
    #[arg(short, long)]
    pub output: PathBuf,
    /// f32, f16 or bf16.
    #[arg(long, default_value = "f16")]
    pub dtype: String,
    /// Split the weights into shards of about this many MiB.
    #[arg(long)]
    pub shard_mb: Option<u64>,
}

pub fn export(a: ExportArgs) -> Result<String, ConvertError> {
    let dtype = match a.dtype.to_ascii_lowercase().as_str() {
        "f32" => StDtype::F32,
        "f16" => StDtype::F16,
        "bf16" => StDtype::BF16,
        other => {
            return Err(ConvertError::Usage(format!(
                "--dtype {other:?}: expected f32, f16 or bf16"
            )))
        }
    };
    let f = GgufFile::open(&a.model)?;
    let files = export_hf(
        &f,
        &a.output,
        &ExportOptions {
            dtype,
            shard_bytes: a.shard_mb.map(|m| m << 20),
            progress: true,
        },
    )?;
    let mut s = format!("wrote {}:\n", a.output.display());
    for p in files {
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        s += &format!(
            "  {} ({:.2} MiB)\n",
            p.file_name().unwrap_or_default().to_string_lossy(),
            len as f64 / (1 << 20) as f64
        );
    }
    Ok(s)
}
