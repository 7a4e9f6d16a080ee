//! `ledge convert`, `ledge quantize` and `ledge export-hf`.

use std::path::PathBuf;

use crate::convert::export::{export_hf, ExportOptions};
use crate::convert::imatrix::{calibrate as run_calibration, Imatrix};
use crate::convert::pipeline::Summary;
use crate::convert::recipe::Override;
use crate::convert::safetensors::StDtype;
use crate::convert::{self, ConvertError, ConvertOptions, Target};
use crate::gguf::GgufFile;

pub struct ConvertArgs {
    pub input: PathBuf,
    pub output: PathBuf,
    pub target: String,
    pub tensor_types: Vec<String>,
    pub allow_requantize: bool,
    pub threads: Option<usize>,
    pub imatrix: Option<PathBuf>,
    pub prune: crate::convert::prune::PruneFlags,
}

fn options(a: &ConvertArgs) -> Result<ConvertOptions, ConvertError> {
    let target: Target = a.target.parse()?;
    let overrides = a
        .tensor_types
        .iter()
        .map(|s| s.parse::<Override>())
        .collect::<Result<Vec<_>, _>>()?;
    super::init_threads(a.threads);
    Ok(ConvertOptions {
        target,
        overrides,
        allow_requantize: a.allow_requantize,
        progress: true,
        imatrix: match &a.imatrix {
            Some(p) => Some(std::sync::Arc::new(Imatrix::load(p)?)),
            None => None,
        },
        prune: a.prune.spec()?,
    })
}

fn report(s: &Summary) -> String {
    let types: Vec<String> = s.types.iter().map(|(t, n)| format!("{n} {t}")).collect();
    format!(
        "wrote {} ({} tensors: {}; {:.2} MiB) in {:.1} s{}\n",
        s.path.display(),
        s.n_tensors,
        types.join(", "),
        s.file_bytes as f64 / (1 << 20) as f64,
        s.seconds,
        if s.fallbacks.is_empty() {
            String::new()
        } else {
            format!("; {} tensors fell back to another type", s.fallbacks.len())
        }
    ) + &if s.weighted + s.unweighted.len() > 0 {
        let mut m = format!("imatrix: {} tensors importance-weighted", s.weighted);
        if !s.unweighted.is_empty() {
            m += &format!(
                "; not weighted ({} tensors: no statistics, or a type without a weighted quantizer yet — only Q4_0, Q5_0 have one): {}",
                s.unweighted.len(),
                s.unweighted.join(", ")
            );
        }
        m + "\n"
    } else {
        String::new()
    }
}

/// `ledge calibrate -m MODEL --text FILE -o OUT.imatrix`.
pub fn calibrate(
    model: PathBuf,
    text: PathBuf,
    out: PathBuf,
    ctx: usize,
    chunks: Option<usize>,
    threads: Option<usize>,
) -> Result<String, ConvertError> {
    super::init_threads(threads);
    let f = GgufFile::open(&model)?;
    let t = std::fs::read_to_string(&text).map_err(|source| ConvertError::Io {
        path: text.clone(),
        source,
    })?;
    let mut im = run_calibration(&f, &t, ctx, chunks, true)?;
    im.datasets = vec![text.display().to_string()];
    im.save(&out)?;
    Ok(format!(
        "wrote {} ({} weights, {} chunks of {ctx} tokens)\n",
        out.display(),
        im.entries.len(),
        im.chunks
    ))
}

/// `ledge convert HF_DIR|MODEL.gguf -o OUT.gguf --type T`.
pub fn convert(a: ConvertArgs) -> Result<String, ConvertError> {
    let opts = options(&a)?;
    let s = if a.input.is_dir() {
        convert::convert_hf(&a.input, &a.output, &opts)?
    } else {
        convert::quantize_gguf(&a.input, &a.output, &opts)?
    };
    Ok(report(&s))
}

/// `ledge quantize IN.gguf OUT.gguf T`.
pub fn quantize(a: ConvertArgs) -> Result<String, ConvertError> {
    let opts = options(&a)?;
    Ok(report(&convert::quantize_gguf(&a.input, &a.output, &opts)?))
}

/// `ledge export-hf MODEL.gguf -o DIR --dtype f16`.
pub fn export(
    model: PathBuf,
    out: PathBuf,
    dtype: &str,
    shard_mb: Option<u64>,
) -> Result<String, ConvertError> {
    let dtype = match dtype.to_ascii_lowercase().as_str() {
        "f32" => StDtype::F32,
        "f16" => StDtype::F16,
        "bf16" => StDtype::BF16,
        other => {
            return Err(ConvertError::Usage(format!(
                "--dtype {other:?}: expected f32, f16 or bf16"
            )))
        }
    };
    let f = GgufFile::open(&model)?;
    let files = export_hf(
        &f,
        &out,
        &ExportOptions {
            dtype,
            shard_bytes: shard_mb.map(|m| m << 20),
            progress: true,
        },
    )?;
    let mut s = format!("wrote {}:\n", out.display());
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
