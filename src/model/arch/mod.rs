//! The architecture families ledge runs, one description each.
//!
//! A family is a small file (`llama.rs`, `qwen3.rs`, …) holding one `ArchSpec`: what its
//! forward pass does differently from the plain pre-norm decoder (`BASE`), and what its files
//! must contain. `Model::forward` reads the spec; there is no per-family code path, and a
//! new family that only recombines these traits is one new file plus a line in `Arch`.
//! Hyperparameters that vary between checkpoints of a family (heads, RoPE base, window
//! sizes, soft-cap values) come from the GGUF metadata (`config.rs`), not from here.

mod gemma2;
mod gemma3;
mod llama;
mod phi3;
mod qwen2;
mod qwen3;
mod qwen3moe;

pub use crate::ops::rope::RopeStyle;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
    Qwen3Moe,
    Phi3,
    Gemma2,
    Gemma3,
}

impl Arch {
    pub const ALL: [Arch; 7] = [
        Arch::Llama,
        Arch::Qwen2,
        Arch::Qwen3,
        Arch::Qwen3Moe,
        Arch::Phi3,
        Arch::Gemma2,
        Arch::Gemma3,
    ];

    pub fn spec(self) -> &'static ArchSpec {
        match self {
            Arch::Llama => &llama::SPEC,
            Arch::Qwen2 => &qwen2::SPEC,
            Arch::Qwen3 => &qwen3::SPEC,
            Arch::Qwen3Moe => &qwen3moe::SPEC,
            Arch::Phi3 => &phi3::SPEC,
            Arch::Gemma2 => &gemma2::SPEC,
            Arch::Gemma3 => &gemma3::SPEC,
        }
    }

    /// The `general.architecture` value.
    pub fn name(self) -> &'static str {
        self.spec().name
    }

    pub fn from_name(name: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// "llama, qwen2, …": for error messages.
pub fn supported_list() -> String {
    Arch::ALL.map(|a| a.name()).join(", ")
}

/// Whether a family's files carry an optional part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presence {
    Required,
    /// Used when the file has it (Llama files rarely carry Q/K norms, but some do).
    Optional,
    /// Never part of the family: a file that has it is refused.
    Absent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// SiLU(gate) ⊙ up.
    Silu,
    /// GELU(tanh approximation)(gate) ⊙ up.
    GeluTanh,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FfnKind {
    Dense,
    /// A router picks `expert_used_count` of `expert_count` expert FFNs per token (softmax,
    /// top-k, weights renormalised to sum to one); their stacked weights are the 3-D tensors
    /// `ffn_{gate,up,down}_exps`.
    Experts,
}

/// Per-dimension RoPE frequency factors that come as tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeFactors {
    None,
    /// `rope_freqs.weight` (Llama 3.1+ "llama3" scaling): used at every context length.
    Freqs,
    /// `rope_factors_short.weight` / `rope_factors_long.weight` (LongRoPE, Phi-3): the long
    /// set when the context exceeds `rope.scaling.original_context_length`.
    LongShort,
}

/// Where the attention scale is applied, which decides the roundings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnScale {
    /// Scores are q·k scaled by 1/sqrt(key length) in the softmax (llama.cpp's `kq_scale`).
    InSoftmax,
    /// The queries are scaled by 1/sqrt(key length) before the product (Phi-3, Gemma 2).
    OnQuery,
    /// Gemma 2: queries scaled before the product by 1/sqrt(n_embd / n_head) for the 27B
    /// shape (46 layers) and 1/sqrt(key length) otherwise, as llama.cpp does.
    Gemma2,
}

/// Sliding-window attention on some layers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Swa {
    /// Every `period`-th layer is global, the others slide, unless the file gives
    /// `attention.sliding_window_pattern`.
    pub period: usize,
    /// Window when the file has no `attention.sliding_window` (None: no window then).
    pub default_window: Option<usize>,
    /// Sliding layers use their own RoPE base (`rope.freq_base_swa`, else this) and no
    /// frequency scaling (Gemma 3); None: the global layers' RoPE (Gemma 2).
    pub local_rope_base: Option<f32>,
}

/// tanh soft-capping of logits: cap · tanh(x / cap). The values are defaults for files
/// without the `attn_logit_softcapping` / `final_logit_softcapping` keys.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SoftCap {
    pub attn: f32,
    pub final_logits: f32,
}

/// What one family's forward pass and files look like, beyond the plain pre-norm decoder.
#[derive(Clone, Copy, Debug)]
pub struct ArchSpec {
    /// `general.architecture`.
    pub name: &'static str,
    /// The checkpoints this covers, for `ledge inspect --families` and the README.
    pub covers: &'static str,
    pub rope_style: RopeStyle,
    pub rope_factors: RopeFactors,
    /// Embeddings multiplied by sqrt(n_embd) (Gemma).
    pub scale_embeddings: bool,
    /// Per-head RMS norms of Q and K before RoPE (`attn_q_norm`, `attn_k_norm`).
    pub qk_norm: Presence,
    /// Biases on Q, K and V (`attn_q.bias`, …).
    pub qkv_bias: Presence,
    /// Extra RMS norms on the attention and FFN outputs (`post_attention_norm`,
    /// `post_ffw_norm`) before each residual add (Gemma 2/3).
    pub post_norms: bool,
    pub activation: Activation,
    pub ffn: FfnKind,
    /// Q, K, V may come as one `attn_qkv` matrix, gate and up as one `ffn_up` of twice the
    /// FFN length with the gate first (Phi-3).
    pub fused: bool,
    pub swa: Option<Swa>,
    pub softcap: Option<SoftCap>,
    pub attn_scale: AttnScale,
}

/// The plain pre-norm decoder: RMSNorm, RoPE on adjacent pairs, SiLU-gated dense FFN,
/// nothing optional. Families state how they differ with `..BASE`.
pub const BASE: ArchSpec = ArchSpec {
    name: "",
    covers: "",
    rope_style: RopeStyle::Norm,
    rope_factors: RopeFactors::None,
    scale_embeddings: false,
    qk_norm: Presence::Absent,
    qkv_bias: Presence::Absent,
    post_norms: false,
    activation: Activation::Silu,
    ffn: FfnKind::Dense,
    fused: false,
    swa: None,
    softcap: None,
    attn_scale: AttnScale::InSoftmax,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_distinct() {
        for a in Arch::ALL {
            assert_eq!(Arch::from_name(a.name()), Some(a));
            assert!(!a.spec().covers.is_empty(), "{a:?}");
        }
        assert_eq!(Arch::from_name("mamba"), None);
        assert_eq!(
            supported_list(),
            "llama, qwen2, qwen3, qwen3moe, phi3, gemma2, gemma3"
        );
    }
}
