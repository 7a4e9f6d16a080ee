//! The GGUF file format: a zero-copy reader and a streaming writer. Knows nothing of models.

pub mod types;

pub use types::{GgmlType, TypeId};
