//! `ledge convert`, `ledge quantize` and `ledge export-hf`.

use std::path::PathBuf;

use crate::convert::export::{export_hf, ExportOptions};
use crate::convert::gptq::Gptq;
use crate::convert::gram::GramFile;
use crate::convert::imatrix::{calibrate_with_gram, Imatrix};
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
    /// "rtn" or "gptq".
    pub method: String,
    pub gram: Option<PathBuf>,
    pub damp: f64,
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
        gptq: gptq_options(a)?,
        prune: a.prune.spec()?,
    })
}

fn gptq_options(a: &ConvertArgs) -> Result<Option<std::sync::Arc<Gptq>>, ConvertError> {
    match (a.method.to_ascii_lowercase().as_str(), &a.gram) {
        ("rtn", None) => Ok(None),
        ("rtn", Some(_)) => Err(ConvertError::Usage(
            "--gram is only used by --method gptq".into(),
        )),
        ("gptq", None) => Err(ConvertError::Usage(
            "--method gptq needs --gram FILE (input Gram matrices: `ledge calibrate -m MODEL --text FILE -o X.imatrix --gram X.gram.gguf`)".into(),
        )),
        ("gptq", Some(p)) => {
            if !(a.damp.is_finite() && a.damp > 0.0) {
                return Err(ConvertError::Usage(format!(
                    "--damp {}: expected a positive number (e.g. 0.01)",
                    a.damp
                )));
            }
            Ok(Some(std::sync::Arc::new(Gptq::new(
                GramFile::open(p)?,
                a.damp,
            ))))
        }
        (m, _) => Err(ConvertError::Usage(format!(
            "--method {m:?}: expected rtn or gptq"
        ))),
    }
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
                "; not weighted ({} tensors: no statistics, or a type without a weighted quantizer yet): {}",
                s.unweighted.len(),
                s.unweighted.join(", ")
            );
        }
        m + "\n"
    } else {
        String::new()
    } + &if s.gptq + s.not_gptq.len() > 0 {
        let mut m = format!("gptq: {} tensors", s.gptq);
        if !s.not_gptq.is_empty() {
            m += &format!(
                "; not gptq ({} tensors: no Gram statistics or no codec): {}",
                s.not_gptq.len(),
                s.not_gptq.join(", ")
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
    calibrate_gram(model, text, out, ctx, chunks, threads, None)
}

/// `ledge calibrate ... [--gram OUT.gram.gguf]`.
pub fn calibrate_gram(
    model: PathBuf,
    text: PathBuf,
    out: PathBuf,
    ctx: usize,
    chunks: Option<usize>,
    threads: Option<usize>,
    gram_out: Option<PathBuf>,
) -> Result<String, ConvertError> {
    super::init_threads(threads);
    let f = GgufFile::open(&model)?;
    let t = std::fs::read_to_string(&text).map_err(|source| ConvertError::Io {
        path: text.clone(),
        source,
    })?;
    let (mut im, gram) = calibrate_with_gram(&f, &t, ctx, chunks, true, gram_out.is_some())?;
    im.datasets = vec![text.display().to_string()];
    im.save(&out)?;
    let mut msg = format!(
        "wrote {} ({} weights, {} chunks of {ctx} tokens)\n",
        out.display(),
        im.entries.len(),
        im.chunks
    );
    if let (Some(mut g), Some(p)) = (gram, gram_out) {
        g.save(&p)?;
        msg += &format!("wrote {} ({} input groups)\n", p.display(), g.groups.len());
    }
    Ok(msg)
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
