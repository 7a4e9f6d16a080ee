//! `ledge synth`: a model with random weights in a real model's shape.

use std::path::PathBuf;

use clap::Args;

use crate::model::synth;
use crate::progress::Progress;

/// Write a model with random weights in a real model's shape (for benchmarks).
///
/// The tensors have the shape's names, dimensions and types; the values are seeded noise, so
/// speed and memory are those of the real model while its output is meaningless.
#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Architecture; optional, as each shape belongs to one (checked when given).
    #[arg(long)]
    pub arch: Option<String>,
    /// Shape: 135m, 1b, 7b (Llama 2), 8b (Llama 3), 13b, qwen2.5-7b, qwen3-8b, qwen3-14b,
    /// qwen3-30b-a3b, phi3.5-mini, gemma2-9b.
    #[arg(long)]
    pub shape: String,
    /// Weight type (Q4_0, Q8_0, Q4_K, F16, …) or mix (Q4_K_M, Q5_K_M).
    #[arg(long = "type", value_name = "TYPE")]
    pub ty: String,
    /// Output GGUF file.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Fewer layers than the shape has (same width, smaller file).
    #[arg(long)]
    pub layers: Option<usize>,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub fn synth(a: SynthArgs) -> Result<String, Box<dyn std::error::Error>> {
    let shape = synth::shape(&a.shape)
        .ok_or_else(|| synth::SynthError::UnknownShape(a.shape.clone()))?
        .clone();
    if let Some(arch) = a.arch.filter(|n| n != shape.arch.name()) {
        return Err(synth::SynthError::ArchMismatch {
            shape: shape.name,
            shape_arch: shape.arch.name(),
            arch,
        }
        .into());
    }
    let opts = synth::SynthOptions {
        shape,
        plan: synth::TypePlan::parse(&a.ty)?,
        layers: a.layers,
        seed: a.seed,
    };
    let t0 = std::time::Instant::now();
    let mut bar = Progress::new("synth", "tensors");
    let mut bytes = 0;
    let path = synth::write(&opts, &a.output, &mut |i, n, b| {
        bytes = b;
        bar.update(i, n);
    })?;
    let mb = bytes as f64 / 1e6;
    Ok(format!(
        "wrote {} ({mb:.0} MB, {:.0} MB/s)\n",
        path.display(),
        mb / t0.elapsed().as_secs_f64().max(1e-3)
    ))
}
