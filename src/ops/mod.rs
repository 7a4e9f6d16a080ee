//! The operations of a transformer forward pass, on f32 activations. Weights stay in their
//! GGML block format; matmul quantizes the activations to the weight type's dot partner.
//! Numerics follow ggml's CPU backend where it matters for matching llama.cpp's tokens
//! (f64 sums in norms and softmax, RoPE angles by repeated multiplication, GELU through f16).

pub mod act;
pub mod activation;
pub mod attention;
pub mod matmul;
pub mod matmul_k;
pub mod norm;
pub mod rope;
pub mod weight;

pub use matmul::matmul_view;
pub use weight::{matmul, matmul_many, Input, Layout, Weight};
