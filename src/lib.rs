//! ledge: LLMs at the edge. Runs and compresses GGUF language models on CPU.

pub mod app;
/// `ledge compress`: a layer above convert/ and eval/.
pub mod compress;
pub mod convert;
pub mod eval;
pub mod generate;
pub mod ggml_type;
pub mod gguf;
pub mod inspect;
pub mod linalg;
pub mod model;
pub mod ops;
pub mod progress;
pub mod quant;
pub mod server;
pub mod tensor;
pub mod tokenizer;
pub mod train;
