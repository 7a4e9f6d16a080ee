//! `phi3`: Phi-3/3.5-mini and -medium, Phi-4-mini. Q, K and V come as one `attn_qkv`
//! matrix and gate/up as one `ffn_up` (gate first); RoPE is NEOX with LongRoPE's
//! `rope_factors_short`/`rope_factors_long` and the `rope.scaling.attn_factor` magnitude
//! scale; queries are scaled before the product. Phi-3's sliding window is ignored, as
//! llama.cpp ignores it (its converters do not write the pattern).

use super::{ArchSpec, AttnScale, RopeFactors, RopeStyle, BASE};

pub const SPEC: ArchSpec = ArchSpec {
    name: "phi3",
    covers: "Phi-3-mini/medium, Phi-3.5-mini, Phi-4-mini",
    rope_style: RopeStyle::Neox,
    rope_factors: RopeFactors::LongShort,
    fused: true,
    attn_scale: AttnScale::OnQuery,
    ..BASE
};
