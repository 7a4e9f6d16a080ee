//! `gemma3`: Gemma 3 text models (270M–27B). Gemma 2's block without soft-capping, with Q/K
//! norms; five sliding-window layers per global one, the sliding ones with their own RoPE
//! base (10000) and no RoPE scaling.

use super::{Activation, ArchSpec, Presence, RopeStyle, Swa, BASE};

pub const SPEC: ArchSpec = ArchSpec {
    name: "gemma3",
    covers: "Gemma 3 270M, 1B, 4B, 12B, 27B (text)",
    rope_style: RopeStyle::Neox,
    scale_embeddings: true,
    qk_norm: Presence::Required,
    post_norms: true,
    activation: Activation::GeluTanh,
    swa: Some(Swa {
        period: 6,
        default_window: None,
        local_rope_base: Some(10_000.0),
    }),
    ..BASE
};
