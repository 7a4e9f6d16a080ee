//! ledge: LLMs at the edge. Runs and compresses GGUF language models on CPU.

pub mod gguf;
pub mod inspect;
pub mod quant;
pub mod tensor;
pub mod tokenizer;
