//! `qwen3`: Qwen3 dense (0.6B–32B). No biases; per-head RMS norms on Q and K before RoPE;
//! the head size is a key of its own (`attention.key_length`, 128) rather than
//! n_embd / n_head.

use super::{ArchSpec, Presence, RopeStyle, BASE};

pub const SPEC: ArchSpec = ArchSpec {
    name: "qwen3",
    covers: "Qwen3 0.6B-32B",
    rope_style: RopeStyle::Neox,
    qk_norm: Presence::Required,
    ..BASE
};
