//! `qwen3moe`: Qwen3-30B-A3B, Qwen3-235B-A22B. Qwen3's attention; the FFN is a mixture of
//! experts: `ffn_gate_inp` routes each token (softmax over `expert_count`, the top
//! `expert_used_count`, weights renormalised), and the experts' gate/up/down matrices are
//! stacked in 3-D tensors `ffn_{gate,up,down}_exps` of `expert_feed_forward_length` rows.

use super::{ArchSpec, FfnKind, Presence, RopeStyle, BASE};

pub const SPEC: ArchSpec = ArchSpec {
    name: "qwen3moe",
    covers: "Qwen3-30B-A3B, Qwen3-235B-A22B",
    rope_style: RopeStyle::Neox,
    qk_norm: Presence::Required,
    ffn: FfnKind::Experts,
    ..BASE
};
