//! `ledge inspect`: what a GGUF file holds.

use std::path::PathBuf;

use clap::Args;

use crate::gguf::GgufFile;

/// Show what a GGUF file holds: architecture, hyperparameters, tokenizer, tensors.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The GGUF file.
    #[arg(required_unless_present = "families")]
    pub file: Option<PathBuf>,
    /// List the architecture families ledge runs and the checkpoints each covers.
    #[arg(long)]
    pub families: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn inspect(a: InspectArgs) -> Result<String, Box<dyn std::error::Error>> {
    let Some(file) = a.file.filter(|_| !a.families) else {
        return Ok(crate::inspect::families_text());
    };
    let f = GgufFile::open(&file)?;
    Ok(if a.json {
        serde_json::to_string_pretty(&crate::inspect::report_json(&f))? + "\n"
    } else {
        crate::inspect::report_text(&f)
    })
}
