//! `gemma2`: Gemma 2 2B/9B/27B. Embeddings scaled by sqrt(n_embd); post-norms on the
//! attention and FFN outputs; GELU-gated FFN; every other layer attends within a sliding
//! window (4096 unless the file says); attention scores and final logits are tanh
//! soft-capped (50 and 30 unless the file says); the output matrix is the embeddings.

use super::{Activation, ArchSpec, AttnScale, RopeStyle, SoftCap, Swa, BASE};

pub const SPEC: ArchSpec = ArchSpec {
    name: "gemma2",
    covers: "Gemma 2 2B, 9B, 27B",
    rope_style: RopeStyle::Neox,
    scale_embeddings: true,
    post_norms: true,
    activation: Activation::GeluTanh,
    swa: Some(Swa {
        period: 2,
        default_window: Some(4096),
        local_rope_base: None,
    }),
    softcap: Some(SoftCap {
        attn: 50.0,
        final_logits: 30.0,
    }),
    attn_scale: AttnScale::Gemma2,
    ..BASE
};
