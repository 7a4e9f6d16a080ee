//! `qwen2`: Qwen2, Qwen2.5 (and Coder/Math), DeepSeek-R1-Distill-Qwen. The llama block with
//! biases on Q, K and V and NEOX RoPE; large checkpoints have an untied output matrix, small
//! ones tie it to the embeddings.

use super::{ArchSpec, Presence, RopeStyle, BASE};

pub const SPEC: ArchSpec = ArchSpec {
    name: "qwen2",
    covers: "Qwen2, Qwen2.5, Qwen2.5-Coder, DeepSeek-R1-Distill-Qwen",
    rope_style: RopeStyle::Neox,
    qkv_bias: Presence::Required,
    ..BASE
};
