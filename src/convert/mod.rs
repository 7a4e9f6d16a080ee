//! The converter: Hugging Face checkpoints (safetensors) or GGUF in, a (quantized) GGUF out.
//!
//! - `safetensors.rs` reads one or many `*.safetensors` files over mmaps, tensor by tensor;
//! - `hf.rs` maps a llama-family HF directory (config.json, tensor names, Q/K layout) to GGUF;
//! - `vocab.rs` turns tokenizer.json + tokenizer_config.json into llama.cpp's tokenizer keys;
//! - `recipe.rs` decides each tensor's output type (plain types and the mixed recipes);
//! - `pipeline.rs` quantizes tensor after tensor (rows in parallel) into the streaming writer;
//! - `source.rs`: the tensors a conversion reads (GGUF, safetensors or memory) as f32 rows;
//! - `calibration.rs`: the one calibration loop (text → chunks → observed forward passes);
//! - `imatrix.rs` collects calibration statistics and quantizes with importance weights;
//! - `weighted.rs` is the importance-weighted block quantizer for every type it writes;
//! - `gram.rs` and `gptq.rs`: input Gram matrices and GPTQ (`--method gptq`);
//! - `prune/` removes FFN channels, whole blocks and KV groups, ranked on calibration text;
//! - `export.rs` goes the other way: a GGUF to an HF directory (test checkpoints).
//!
//! Nothing here holds the whole model: a tensor is read from the mmap, converted and written
//! before the next one starts, so peak memory is a small multiple of the largest tensor.

pub mod calibration;
pub mod export;
pub mod gptq;
pub mod gram;
pub mod hf;
pub mod imatrix;
pub mod lowrank;
pub mod pipeline;
pub mod pre_hashes;
pub mod prune;
pub mod recipe;
pub mod safetensors;
pub mod source;
pub mod sp_model;
pub mod vocab;
pub mod weighted;

use std::path::PathBuf;

use crate::gguf::{GgmlType, GgufError};
use crate::quant::QuantError;

pub use prune::heads;
pub use recipe::{Recipe, Target};

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {msg}", path.display())]
    Json { path: PathBuf, msg: String },
    #[error("{}: not a valid safetensors file: {msg}", path.display())]
    Safetensors { path: PathBuf, msg: String },
    #[error("{}: architecture {found:?} is not supported (supported: {supported})", path.display())]
    UnknownArch {
        path: PathBuf,
        found: String,
        supported: &'static str,
    },
    #[error("config: {key}: {reason}")]
    Config { key: String, reason: String },
    #[error("tensor {0:?} is missing from the checkpoint")]
    MissingTensor(String),
    #[error("tensor {name:?} in {} has no GGUF name for this architecture", file.display())]
    UnmappedTensor { name: String, file: PathBuf },
    #[error("tensor {name:?} has shape {found:?}, but config.json implies {expected:?}")]
    BadShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error(
        "tensor {name:?} has dtype {dtype}, which the converter does not read (F32, F16, BF16)"
    )]
    BadDtype { name: String, dtype: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("tensor {name:?} is already quantized ({ty}); pass --allow-requantize to quantize it again (quality suffers)")]
    Requantize { name: String, ty: GgmlType },
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("tensor {name:?}: {source}")]
    Quant { name: String, source: QuantError },
}

pub type Result<T> = std::result::Result<T, ConvertError>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ConvertError {
    let path = path.into();
    move |source| ConvertError::Io { path, source }
}

use std::path::Path;

use crate::gguf::{GgufBuilder, GgufFile, MetaValue};
use hf::LlamaConfig;
use pipeline::{SourceData, SourceTensor, Summary, WriteOptions};
use recipe::{Override, Plan};
use vocab::Vocab;

/// What `convert` and `quantize` were asked to do.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    pub target: Target,
    pub overrides: Vec<Override>,
    pub allow_requantize: bool,
    pub progress: bool,
    /// Calibration statistics for importance-weighted quantization.
    pub imatrix: Option<std::sync::Arc<imatrix::Imatrix>>,
    /// `--method gptq`: the gram statistics and damping.
    pub gptq: Option<std::sync::Arc<gptq::Gptq>>,
    /// Structured pruning (FFN channels, blocks) done while converting.
    pub prune: Option<prune::PruneSpec>,
    /// `--lowrank-repair R --adapter-out A`: the rank-R repairs and where they go.
    pub lowrank: Option<(std::sync::Arc<lowrank::LowRank>, PathBuf)>,
}

impl ConvertOptions {
    fn write_options(&self) -> WriteOptions {
        WriteOptions {
            allow_requantize: self.allow_requantize,
            progress: self.progress,
            imatrix: self.imatrix.clone(),
            gptq: self.gptq.clone(),
            lowrank: self.lowrank.clone(),
        }
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Converts the Hugging Face model directory `dir` into the GGUF `out`.
pub fn convert_hf(dir: &Path, out: &Path, opts: &ConvertOptions) -> Result<Summary> {
    if !dir.is_dir() {
        return Err(ConvertError::Usage(format!(
            "{} is not a directory (expected a Hugging Face model folder)",
            dir.display()
        )));
    }
    if let Some(spec) = &opts.prune {
        return convert_hf_pruned(dir, out, opts, spec);
    }
    let cfg = LlamaConfig::from_dir(dir)?;
    let mut vocab = Vocab::from_dir(dir, cfg.n_vocab, &cfg.ids)?;
    if cfg.arch == crate::model::Arch::Gemma2 {
        // Gemma's SentencePiece model adds no leading space (llama.cpp writes this too).
        vocab.add_space_prefix = Some(false);
    }
    let ck = safetensors::Checkpoint::open_dir(dir)?;
    let tensors = hf::plan_tensors(&cfg, &ck)?;
    if opts.progress {
        eprintln!(
            "convert: {} ({} layers, {} tensors), tokenizer.ggml.pre = {} (by {})",
            cfg.architecture,
            cfg.n_layer,
            tensors.len(),
            vocab.pre,
            vocab.pre_source
        );
    }
    let mut b = GgufBuilder::new();
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    b.set("general.architecture", cfg.arch.name())?;
    b.set("general.type", "model")?;
    b.set("general.name", name.as_str())?;
    b.set("general.file_type", MetaValue::U32(opts.target.file_type()))?;
    b.set("general.quantization_version", MetaValue::U32(2))?;
    for (k, v) in cfg.gguf_metadata().into_iter().chain(vocab.gguf_metadata()) {
        b.set(&k, v)?;
    }
    let plan = Plan {
        target: opts.target,
        n_layer: cfg.n_layer,
        tied: cfg.tied,
        n_gqa: cfg.n_head / cfg.n_head_kv,
        overrides: opts.overrides.clone(),
    };
    pipeline::write_gguf(b, tensors, &plan, &opts.write_options(), out)
}

/// Pruning needs a model that runs (for calibration): the HF checkpoint goes to a temporary
/// F16 GGUF beside `out` first, which is pruned and typed into `out`, then removed.
fn convert_hf_pruned(
    dir: &Path,
    out: &Path,
    opts: &ConvertOptions,
    spec: &prune::PruneSpec,
) -> Result<Summary> {
    spec.validate()?;
    let mut tmp = out.to_path_buf();
    tmp.as_mut_os_string().push(".prune-src.tmp.gguf");
    let first = ConvertOptions {
        target: Target::Plain(GgmlType::F16),
        overrides: Vec::new(),
        imatrix: None,
        prune: None,
        ..opts.clone()
    };
    let result = convert_hf(dir, &tmp, &first).and_then(|_| quantize_gguf(&tmp, out, opts));
    let _ = std::fs::remove_file(&tmp);
    result
}

/// Re-types every tensor of the GGUF `input` into `out`, keeping its metadata.
pub fn quantize_gguf(input: &Path, out: &Path, opts: &ConvertOptions) -> Result<Summary> {
    if same_file(input, out) {
        return Err(ConvertError::Usage(
            "the output must be a different file from the input".into(),
        ));
    }
    let f = GgufFile::open(input)?;
    let mut b = GgufBuilder::with_metadata_of(&f)?;
    b.set("general.file_type", MetaValue::U32(opts.target.file_type()))?;
    b.set("general.quantization_version", MetaValue::U32(2))?;
    let mut tensors: Vec<SourceTensor> = f
        .tensor_infos()
        .iter()
        .map(|info| SourceTensor {
            name: f.tensor_name(info).to_string(),
            dims: info.dims.clone(),
            data: SourceData::Gguf(f.view(info)),
            pages: None,
        })
        .collect();
    let mut write_opts = opts.write_options();
    if let Some(spec) = &opts.prune {
        let plan =
            prune::PrunePlan::new(&f, spec, opts.target, opts.allow_requantize, opts.progress)?;
        tensors = plan.apply(&f, tensors)?;
        plan.set_metadata(&f, &mut b)?;
        write_opts.imatrix = opts
            .imatrix
            .as_ref()
            .map(|im| std::sync::Arc::new(plan.remap_imatrix(im)));
        let plan_opts = Plan {
            target: opts.target,
            n_layer: plan.kept_layers.len(),
            tied: f.tensor_info("output.weight").is_none(),
            n_gqa: crate::model::ModelConfig::from_gguf(&f)
                .ok()
                .and_then(|c| c.layers.first().map(|l| l.n_head / l.n_head_kv.max(1)))
                .unwrap_or(1),
            overrides: opts.overrides.clone(),
        };
        return pipeline::write_gguf(b, tensors, &plan_opts, &write_opts, out);
    }
    let (n_layer, n_gqa) = match crate::model::ModelConfig::from_gguf(&f) {
        Ok(c) => (
            c.n_layer,
            c.layers
                .first()
                .map_or(1, |l| l.n_head / l.n_head_kv.max(1)),
        ),
        // Not a model ledge runs: count the blocks by name.
        Err(_) => (
            tensors
                .iter()
                .filter_map(|t| {
                    t.name
                        .strip_prefix("blk.")
                        .and_then(|r| r.split('.').next())
                        .and_then(|n| n.parse::<usize>().ok())
                })
                .max()
                .map_or(0, |m| m + 1),
            1,
        ),
    };
    let plan = Plan {
        target: opts.target,
        n_layer,
        tied: f.tensor_info("output.weight").is_none(),
        n_gqa,
        overrides: opts.overrides.clone(),
    };
    pipeline::write_gguf(b, tensors, &plan, &write_opts, out)
}
