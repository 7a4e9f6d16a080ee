//! The GGUF file format: a zero-copy reader and a streaming writer. Knows nothing of models.

pub mod error;
pub mod reader;
pub mod value;
pub mod writer;

pub use crate::ggml_type::{GgmlType, TypeId};
pub use error::{GgufError, Result};
pub use reader::{GgufFile, TensorInfo};
pub use value::{ArrayRef, MetaArray, MetaValue, Value, ValueType};
pub use writer::{GgufBuilder, GgufStream};
