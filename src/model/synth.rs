//! Synthetic models: random weights in the shapes of models we cannot download (Llama 2 7B,
//! Llama 3 8B, Qwen3-30B-A3B, …), of every family, written as standard GGUF files that ledge and llama.cpp both load. For
//! benchmarks: the speed of a matmul depends on shapes and types, not on what the weights say.
//!
//! Weights are uniform with standard deviation 0.02 (the usual initialisation scale, so
//! activations stay in a realistic range) and quantized with ledge's reference quantizers.
//! Quantizing 7 billion weights would take minutes, so each tensor is made of a block of
//! `CHUNK_ROWS` random rows repeated down the matrix (a fresh block per tensor): the bytes a
//! matmul streams, and their layout, are those of a real file of the same shape and type.
//! The vocabulary is a SentencePiece one (`<unk>`, `<s>`, `</s>`, the 256 byte tokens, then
//! filler pieces) so that both tokenizers load it.

use rayon::prelude::*;

use crate::convert::recipe::{fallback_type, Plan};
use crate::convert::Target;
use crate::gguf::{GgmlType, GgufBuilder, GgufError, MetaArray, MetaValue, ValueType};
use crate::model::arch::{Arch, FfnKind, Presence};
use crate::quant;

/// Rows of random data per tensor; the rest of the tensor repeats them.
const CHUNK_ROWS: usize = 256;

/// Hyperparameters of a model of one family.
#[derive(Clone, Debug, PartialEq)]
pub struct Shape {
    pub name: &'static str,
    pub arch: Arch,
    pub n_vocab: usize,
    pub n_embd: usize,
    /// FFN length (of each expert, for mixtures of experts).
    pub n_ff: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Head size when it is not n_embd / n_head (Qwen3, Gemma 2).
    pub head_dim: Option<usize>,
    /// (experts, experts used per token) for mixtures of experts.
    pub experts: Option<(usize, usize)>,
    /// No `output.weight`: the embeddings are the output matrix.
    pub tied: bool,
    pub ctx: usize,
    pub rope_base: f32,
}

const LLAMA: Shape = Shape {
    name: "",
    arch: Arch::Llama,
    n_vocab: 32000,
    n_embd: 4096,
    n_ff: 11008,
    n_layer: 32,
    n_head: 32,
    n_head_kv: 32,
    head_dim: None,
    experts: None,
    tied: false,
    ctx: 4096,
    rope_base: 10_000.0,
};

/// The shapes `ledge synth --shape` knows, from the models' published configs.
pub const SHAPES: &[Shape] = &[
    Shape {
        name: "135m", // SmolLM2-135M
        n_vocab: 49152,
        n_embd: 576,
        n_ff: 1536,
        n_layer: 30,
        n_head: 9,
        n_head_kv: 3,
        ctx: 8192,
        rope_base: 100_000.0,
        ..LLAMA
    },
    Shape {
        name: "1b", // Llama 3.2 1B
        n_vocab: 128_256,
        n_embd: 2048,
        n_ff: 8192,
        n_layer: 16,
        n_head: 32,
        n_head_kv: 8,
        ctx: 131_072,
        rope_base: 500_000.0,
        ..LLAMA
    },
    Shape {
        name: "7b", // Llama 2 7B
        ..LLAMA
    },
    Shape {
        name: "8b", // Llama 3 8B
        n_vocab: 128_256,
        n_ff: 14336,
        n_head_kv: 8,
        ctx: 8192,
        rope_base: 500_000.0,
        ..LLAMA
    },
    Shape {
        name: "13b", // Llama 2 13B
        n_embd: 5120,
        n_ff: 13824,
        n_layer: 40,
        n_head: 40,
        n_head_kv: 40,
        ..LLAMA
    },
    Shape {
        name: "qwen2.5-7b",
        arch: Arch::Qwen2,
        n_vocab: 152_064,
        n_embd: 3584,
        n_ff: 18944,
        n_layer: 28,
        n_head: 28,
        n_head_kv: 4,
        ctx: 32768,
        rope_base: 1e6,
        ..LLAMA
    },
    Shape {
        name: "qwen3-8b",
        arch: Arch::Qwen3,
        n_vocab: 151_936,
        n_embd: 4096,
        n_ff: 12288,
        n_layer: 36,
        n_head: 32,
        n_head_kv: 8,
        head_dim: Some(128),
        ctx: 40960,
        rope_base: 1e6,
        ..LLAMA
    },
    Shape {
        name: "qwen3-14b",
        arch: Arch::Qwen3,
        n_vocab: 151_936,
        n_embd: 5120,
        n_ff: 17408,
        n_layer: 40,
        n_head: 40,
        n_head_kv: 8,
        head_dim: Some(128),
        ctx: 40960,
        rope_base: 1e6,
        ..LLAMA
    },
    Shape {
        name: "qwen3-30b-a3b",
        arch: Arch::Qwen3Moe,
        n_vocab: 151_936,
        n_embd: 2048,
        n_ff: 768,
        n_layer: 48,
        n_head: 32,
        n_head_kv: 4,
        head_dim: Some(128),
        experts: Some((128, 8)),
        ctx: 40960,
        rope_base: 1e6,
        ..LLAMA
    },
    Shape {
        name: "phi3.5-mini",
        arch: Arch::Phi3,
        n_vocab: 32064,
        n_embd: 3072,
        n_ff: 8192,
        n_layer: 32,
        n_head: 32,
        n_head_kv: 32,
        ctx: 131_072,
        ..LLAMA
    },
    Shape {
        name: "gemma2-9b",
        arch: Arch::Gemma2,
        n_vocab: 256_000,
        n_embd: 3584,
        n_ff: 14336,
        n_layer: 42,
        n_head: 16,
        n_head_kv: 8,
        head_dim: Some(256),
        tied: true,
        ctx: 8192,
        ..LLAMA
    },
];

pub fn shape(name: &str) -> Option<&'static Shape> {
    SHAPES.iter().find(|s| s.name.eq_ignore_ascii_case(name))
}

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error(
        "unknown shape {0:?} (known: {list})",
        list = SHAPES.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
    )]
    UnknownShape(String),
    #[error("shape {shape} is a {shape_arch} model, not {arch}")]
    ArchMismatch {
        shape: &'static str,
        shape_arch: &'static str,
        arch: String,
    },
    #[error("unknown type {0:?}: use a GGML type name (Q4_0, Q8_0, Q4_K, …) or a recipe (Q4_K_M, Q4_K_S, …)")]
    UnknownType(String),
    #[error("type {ty} cannot hold rows of {n} weights (its blocks are {block} wide)")]
    RowLength {
        ty: GgmlType,
        n: usize,
        block: usize,
    },
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Quant(#[from] quant::QuantError),
}

/// Which type each tensor gets: a converter target (`convert::recipe`), so a synthetic
/// model gets exactly the types `ledge convert` would give a real one of its shape.
#[derive(Clone, Copy, Debug)]
pub struct TypePlan {
    target: Target,
}

impl TypePlan {
    /// A converter target name, `Q5_K_S` (plain Q5_K, as llama.cpp's name for it), or any
    /// other GGML type ledge quantizes to.
    pub fn parse(name: &str) -> Result<TypePlan, SynthError> {
        let up = name.to_ascii_uppercase();
        let target = match up.as_str() {
            "Q5_K_S" => Target::Plain(GgmlType::Q5_K),
            _ => match up.parse::<Target>() {
                Ok(t) => t,
                Err(_) => Target::Plain(
                    GgmlType::from_name(&up)
                        .filter(|&t| quant::is_supported(t))
                        .ok_or_else(|| SynthError::UnknownType(name.to_string()))?,
                ),
            },
        };
        Ok(TypePlan { target })
    }

    /// The converter's choice for every tensor of a model with `n_layer` blocks and `n_gqa`
    /// query heads per KV head (the output matrix is not tied).
    fn plan(&self, n_layer: usize, n_gqa: usize, tied: bool) -> Plan {
        Plan {
            target: self.target,
            n_layer,
            tied,
            n_gqa,
            overrides: Vec::new(),
        }
    }
}

/// The type llama.cpp uses when a K-quant's 256-blocks do not divide the rows (e.g. the
/// 576-wide rows of SmolLM2): a 32-block type of similar size.
pub fn fallback(ty: GgmlType, row: usize) -> GgmlType {
    if row.is_multiple_of(ty.block_size()) {
        ty
    } else {
        fallback_type(ty)
    }
}

/// Options of one synthetic model.
#[derive(Clone, Debug)]
pub struct SynthOptions {
    pub shape: Shape,
    pub plan: TypePlan,
    /// Override the number of layers (a quick, smaller file of the same width).
    pub layers: Option<usize>,
    pub seed: u64,
}

/// A splitmix64 stream: fast, seedable, and good enough for benchmark weights.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [-a, a).
    fn uniform(&mut self, a: f32) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
    }
}

struct Planned {
    name: String,
    ty: GgmlType,
    dims: Vec<u64>,
}

fn vocab(n: usize) -> (Vec<String>, Vec<MetaValue>, Vec<MetaValue>) {
    let mut tokens = vec!["<unk>".to_string(), "<s>".to_string(), "</s>".to_string()];
    let mut types = vec![MetaValue::I32(2), MetaValue::I32(3), MetaValue::I32(3)];
    for b in 0..256 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(MetaValue::I32(6));
    }
    let mut i = 0;
    while tokens.len() < n {
        tokens.push(format!("\u{2581}t{i}"));
        types.push(MetaValue::I32(1));
        i += 1;
    }
    tokens.truncate(n);
    types.truncate(n);
    let scores = (0..n).map(|i| MetaValue::F32(-(i as f32))).collect();
    (tokens, scores, types)
}

/// Writes a synthetic model to `path` (temp file + rename). `progress` gets
/// (tensors written, total, bytes written).
pub fn write(
    opts: &SynthOptions,
    path: &std::path::Path,
    progress: &mut dyn FnMut(usize, usize, u64),
) -> Result<std::path::PathBuf, SynthError> {
    let s = &opts.shape;
    let n_layer = opts.layers.unwrap_or(s.n_layer);
    let head_dim = s.head_dim.unwrap_or(s.n_embd / s.n_head);
    let spec = s.arch.spec();
    let arch = s.arch.name();
    let mut b = GgufBuilder::new();
    let u32m = |v: usize| MetaValue::U32(v as u32);
    b.set("general.architecture", arch)?;
    b.set(
        "general.name",
        format!(
            "synthetic {arch} {} ({})",
            s.name,
            opts.plan.target.base().name()
        ),
    )?;
    b.set(
        "general.file_type",
        MetaValue::U32(opts.plan.target.file_type()),
    )?;
    let mut key = |k: &str, v: MetaValue| b.set(&format!("{arch}.{k}"), v).map(|_| ());
    key("block_count", u32m(n_layer))?;
    key("context_length", u32m(s.ctx))?;
    key("embedding_length", u32m(s.n_embd))?;
    key("feed_forward_length", u32m(s.n_ff))?;
    key("attention.head_count", u32m(s.n_head))?;
    key("attention.head_count_kv", u32m(s.n_head_kv))?;
    if s.head_dim.is_some() {
        key("attention.key_length", u32m(head_dim))?;
        key("attention.value_length", u32m(head_dim))?;
    }
    key("rope.dimension_count", u32m(head_dim))?;
    key("rope.freq_base", MetaValue::F32(s.rope_base))?;
    key("attention.layer_norm_rms_epsilon", MetaValue::F32(1e-5))?;
    key("vocab_size", u32m(s.n_vocab))?;
    if let Some((ne, nu)) = s.experts {
        key("expert_count", u32m(ne))?;
        key("expert_used_count", u32m(nu))?;
        key("expert_feed_forward_length", u32m(s.n_ff))?;
    }
    if let Some(swa) = spec.swa {
        key(
            "attention.sliding_window",
            u32m(swa.default_window.unwrap_or(512)),
        )?;
    }
    if let Some(cap) = spec.softcap {
        key("attn_logit_softcapping", MetaValue::F32(cap.attn))?;
        key("final_logit_softcapping", MetaValue::F32(cap.final_logits))?;
    }
    let long_rope = spec.rope_factors == crate::model::arch::RopeFactors::LongShort;
    if long_rope {
        key("rope.scaling.original_context_length", u32m(4096))?;
        key("rope.scaling.attn_factor", MetaValue::F32(1.19))?;
    }
    let (tokens, scores, types) = vocab(s.n_vocab);
    b.set("tokenizer.ggml.model", "llama")?;
    b.set(
        "tokenizer.ggml.tokens",
        MetaValue::Array(MetaArray::strings(tokens)),
    )?;
    b.set(
        "tokenizer.ggml.scores",
        MetaValue::Array(MetaArray::new(ValueType::F32, scores)),
    )?;
    b.set(
        "tokenizer.ggml.token_type",
        MetaValue::Array(MetaArray::new(ValueType::I32, types)),
    )?;
    b.set("tokenizer.ggml.unknown_token_id", MetaValue::U32(0))?;
    b.set("tokenizer.ggml.bos_token_id", MetaValue::U32(1))?;
    b.set("tokenizer.ggml.eos_token_id", MetaValue::U32(2))?;
    b.set("tokenizer.ggml.add_bos_token", MetaValue::Bool(true))?;
    b.set("tokenizer.ggml.add_eos_token", MetaValue::Bool(false))?;
    b.set("ledge.synthetic", MetaValue::Bool(true))?;

    let (d, ff, q, kv) = (
        s.n_embd as u64,
        s.n_ff as u64,
        (s.n_head * head_dim) as u64,
        (s.n_head_kv * head_dim) as u64,
    );
    let types = opts
        .plan
        .plan(n_layer, s.n_head / s.n_head_kv.max(1), s.tied);
    let planned = |name: String, dims: Vec<u64>| Planned {
        ty: types.choose(&name, &dims).ty,
        name,
        dims,
    };
    let mut plan = vec![
        planned("token_embd.weight".into(), vec![d, s.n_vocab as u64]),
        planned("output_norm.weight".into(), vec![d]),
    ];
    if !s.tied {
        plan.push(planned("output.weight".into(), vec![d, s.n_vocab as u64]));
    }
    if long_rope {
        for which in ["long", "short"] {
            plan.push(planned(
                format!("rope_factors_{which}.weight"),
                vec![head_dim as u64 / 2],
            ));
        }
    }
    for l in 0..n_layer {
        let m = |what: &str, dims: Vec<u64>| planned(format!("blk.{l}.{what}.weight"), dims);
        plan.push(m("attn_norm", vec![d]));
        if spec.fused {
            plan.push(m("attn_qkv", vec![d, q + 2 * kv]));
        } else {
            plan.extend([
                m("attn_q", vec![d, q]),
                m("attn_k", vec![d, kv]),
                m("attn_v", vec![d, kv]),
            ]);
        }
        if spec.qkv_bias == Presence::Required {
            for (what, n) in [("attn_q", q), ("attn_k", kv), ("attn_v", kv)] {
                plan.push(planned(format!("blk.{l}.{what}.bias"), vec![n]));
            }
        }
        if spec.qk_norm == Presence::Required {
            let hd = head_dim as u64;
            plan.extend([m("attn_q_norm", vec![hd]), m("attn_k_norm", vec![hd])]);
        }
        plan.push(m("attn_output", vec![q, d]));
        if spec.post_norms {
            plan.push(m("post_attention_norm", vec![d]));
        }
        plan.push(m("ffn_norm", vec![d]));
        match (spec.ffn, s.experts) {
            (FfnKind::Experts, Some((ne, _))) => {
                let ne = ne as u64;
                plan.extend([
                    m("ffn_gate_inp", vec![d, ne]),
                    m("ffn_gate_exps", vec![d, ff, ne]),
                    m("ffn_up_exps", vec![d, ff, ne]),
                    m("ffn_down_exps", vec![ff, d, ne]),
                ]);
            }
            _ if spec.fused => {
                plan.extend([m("ffn_up", vec![d, 2 * ff]), m("ffn_down", vec![ff, d])]);
            }
            _ => plan.extend([
                m("ffn_gate", vec![d, ff]),
                m("ffn_up", vec![d, ff]),
                m("ffn_down", vec![ff, d]),
            ]),
        }
        if spec.post_norms {
            plan.push(m("post_ffw_norm", vec![d]));
        }
    }
    for t in &plan {
        let block = t.ty.block_size();
        if !(t.dims[0] as usize).is_multiple_of(block) {
            return Err(SynthError::RowLength {
                ty: t.ty,
                n: t.dims[0] as usize,
                block,
            });
        }
        b.add_tensor(&t.name, t.ty, &t.dims)?;
    }
    let mut w = b.create(path)?;
    let total = plan.len();
    let mut written = 0u64;
    let std_dev = 0.02f32;
    let a = std_dev * 3f32.sqrt();
    for (i, t) in plan.iter().enumerate() {
        let row = t.dims[0] as usize;
        let rows: usize = t.dims[1..].iter().product::<u64>() as usize;
        if t.dims.len() == 1 {
            let ones = vec![1f32; row];
            w.write_tensor(bytemuck::cast_slice(&ones))?;
        } else {
            let chunk_rows = rows.min(CHUNK_ROWS);
            let seed = opts.seed ^ (i as u64).wrapping_mul(0x2545_f491_4f6c_dd1d);
            // Rows are generated and quantized in parallel, each from its own stream.
            let chunk: Vec<Vec<u8>> = (0..chunk_rows)
                .into_par_iter()
                .map(|r| {
                    let mut rng = Rng(seed ^ (r as u64 + 1).wrapping_mul(0x9e37_79b9));
                    let x: Vec<f32> = (0..row).map(|_| rng.uniform(a)).collect();
                    quant::quantize_to_vec(t.ty, &x)
                })
                .collect::<Result<_, _>>()?;
            let chunk: Vec<u8> = chunk.concat();
            let row_bytes = chunk.len() / chunk_rows;
            let mut parts: Vec<&[u8]> = vec![&chunk; rows / chunk_rows];
            let rest = rows % chunk_rows;
            if rest > 0 {
                parts.push(&chunk[..rest * row_bytes]);
            }
            w.write_tensor_parts(&parts)?;
        }
        written += t.ty.bytes_for(t.dims.iter().product()).unwrap_or(0);
        progress(i + 1, total, written);
    }
    Ok(w.finish()?)
}
