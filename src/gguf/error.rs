use std::io;
use std::path::PathBuf;

use super::value::ValueType;

/// Everything that can be wrong with a GGUF file, or with a request made of one. Each variant
/// names the key or tensor and, where the file is at fault, the byte offset.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("not a GGUF file: it starts with \"{found}\", expected \"GGUF\"")]
    BadMagic { found: String },
    #[error("big-endian GGUF (version field reads {raw:#010x}) is not supported")]
    BigEndian { raw: u32 },
    #[error("GGUF version {0} is not supported (ledge reads versions 2 and 3)")]
    UnsupportedVersion(u32),
    #[error("file truncated: {what} at byte offset {offset} needs {needed} bytes, but the file ends at {file_len}")]
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        file_len: u64,
    },
    #[error("{what} at byte offset {offset}: unknown metadata value type {id}")]
    UnknownValueType { what: String, offset: u64, id: u32 },
    #[error("{what} at byte offset {offset}: {count} elements of {elem} cannot fit in the {remaining} bytes left in the file")]
    ArrayTooLong {
        what: String,
        offset: u64,
        count: u64,
        elem: ValueType,
        remaining: u64,
    },
    #[error("{what} at byte offset {offset}: arrays nested more than {max} deep")]
    TooDeep {
        what: String,
        offset: u64,
        max: usize,
    },
    #[error("{what} at byte offset {offset}: string of {len} bytes is not valid UTF-8")]
    InvalidUtf8 { what: String, offset: u64, len: u64 },
    #[error("{what} at byte offset {offset}: {count} entries cannot fit in the {remaining} bytes left in the file")]
    CountTooLarge {
        what: String,
        offset: u64,
        count: u64,
        remaining: u64,
    },
    #[error("duplicate metadata key {key:?} at byte offset {offset}")]
    DuplicateKey { key: String, offset: u64 },
    #[error("metadata key {key:?}: {reason}")]
    BadMetadata { key: String, reason: String },
    #[error("tensor {name:?} (info at byte offset {offset}): unknown GGML type id {id}")]
    UnknownTensorType { name: String, offset: u64, id: u32 },
    #[error("tensor {name:?} (info at byte offset {offset}): type {type_name} (id {id}) was removed from ggml and is not supported")]
    RemovedTensorType {
        name: String,
        offset: u64,
        id: u32,
        type_name: &'static str,
    },
    #[error("duplicate tensor name {name:?} (second info at byte offset {offset})")]
    DuplicateTensor { name: String, offset: u64 },
    #[error("tensor {name:?} (info at byte offset {offset}): {reason}")]
    BadTensorInfo {
        name: String,
        offset: u64,
        reason: String,
    },
    #[error("tensor {name:?}: its data [{start}, {end}) lies past the end of the file ({file_len} bytes)")]
    TensorOutOfBounds {
        name: String,
        start: u64,
        end: u64,
        file_len: u64,
    },
    #[error("metadata key {0:?} is missing")]
    MissingKey(String),
    #[error("metadata key {key:?} is {found}, expected {expected}")]
    WrongType {
        key: String,
        found: String,
        expected: &'static str,
    },
    #[error("tensor {0:?} not found")]
    TensorNotFound(String),
    #[error("writing GGUF: {0}")]
    Write(String),
}

pub type Result<T, E = GgufError> = std::result::Result<T, E>;
