//! The GGUF file format: a zero-copy reader and a streaming writer. Knows nothing of models.

pub mod error;
pub mod reader;
pub mod types;
pub mod value;
pub mod writer;

pub use error::{GgufError, Result};
pub use reader::{GgufFile, TensorInfo};
pub use types::{GgmlType, TypeId};
pub use value::{ArrayRef, MetaArray, MetaValue, Value, ValueType};
pub use writer::{GgufBuilder, GgufStream};
