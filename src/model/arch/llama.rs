//! `llama`: Llama 2, Llama 3.0–3.3, Mistral 7B, Mistral-Nemo, SmolLM2, and every file
//! llama.cpp writes as `llama`. Llama 3.1+ files carry `rope_freqs.weight`, the per-dimension
//! frequency factors of the "llama3" RoPE scaling; the converter permuted Q/K for the
//! adjacent-pair RoPE.

use super::{ArchSpec, Presence, RopeFactors, BASE};

pub const SPEC: ArchSpec = ArchSpec {
    name: "llama",
    covers: "Llama 2, Llama 3.0/3.1/3.2/3.3 (rope_freqs), Mistral 7B, Mistral-Nemo, SmolLM2",
    rope_factors: RopeFactors::Freqs,
    qk_norm: Presence::Optional,
    ..BASE
};
