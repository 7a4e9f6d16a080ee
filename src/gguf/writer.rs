//! The streaming GGUF writer.
//!
//! All metadata and tensor infos are declared first, so every tensor's aligned offset is known
//! before a byte is written; then tensor data is streamed in declaration order, one tensor at a
//! time, so a converter never holds more than the tensor it is working on. Output goes to
//! `<out>.tmp` and is renamed over `<out>` only by `finish`: a failed or interrupted write
//! leaves no file under the final name.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::error::{GgufError, Result};
use super::reader::GgufFile;
use super::reader::{GGUF_MAGIC, MAX_ARRAY_DEPTH, MAX_DIMS};
use super::value::{MetaArray, MetaValue};
use crate::ggml_type::GgmlType;

const VERSION: u32 = 3;
const ALIGNMENT_KEY: &str = "general.alignment";

#[derive(Clone, Debug)]
struct TensorSpec {
    name: String,
    ty: GgmlType,
    dims: Vec<u64>,
    offset: u64,
    size: u64,
}

/// Declares the contents of a GGUF file before it is written.
#[derive(Clone, Debug)]
pub struct GgufBuilder {
    kvs: Vec<(String, MetaValue)>,
    tensors: Vec<TensorSpec>,
    data_size: u64,
    alignment: u64,
}

impl Default for GgufBuilder {
    fn default() -> Self {
        Self::new()
    }
}

fn write_err(msg: String) -> GgufError {
    GgufError::Write(msg)
}

impl GgufBuilder {
    pub fn new() -> Self {
        GgufBuilder {
            kvs: Vec::new(),
            tensors: Vec::new(),
            data_size: 0,
            alignment: super::reader::DEFAULT_ALIGNMENT,
        }
    }

    /// Sets a metadata key (replacing its value in place if present, so order is kept).
    /// `general.alignment` must be a u32 power of two and may only be set before any tensor.
    pub fn set(&mut self, key: &str, value: impl Into<MetaValue>) -> Result<&mut Self> {
        let value = value.into();
        check_value(key, &value, 0)?;
        if key == ALIGNMENT_KEY {
            match value {
                MetaValue::U32(a) if a.is_power_of_two() => {
                    if !self.tensors.is_empty() {
                        return Err(write_err(format!(
                            "{ALIGNMENT_KEY} must be set before any tensor is added"
                        )));
                    }
                    self.alignment = a.into();
                }
                _ => {
                    return Err(write_err(format!(
                        "{ALIGNMENT_KEY} must be a u32 power of two, got {value:?}"
                    )))
                }
            }
        }
        match self.kvs.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.kvs.push((key.to_string(), value)),
        }
        Ok(self)
    }

    /// A builder holding a copy of every metadata entry of `file`, in its order (alignment
    /// included), and no tensors: the start of a re-write or a conversion.
    pub fn with_metadata_of(file: &GgufFile) -> Result<Self> {
        let mut b = Self::new();
        for (k, v) in file.metadata() {
            b.set(k, v.to_owned_value())?;
        }
        Ok(b)
    }

    pub fn remove(&mut self, key: &str) -> Option<MetaValue> {
        let i = self.kvs.iter().position(|(k, _)| k == key)?;
        Some(self.kvs.remove(i).1)
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.kvs.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Declares a tensor (`dims` in ggml order, row length first). Its data must later be
    /// written in declaration order.
    pub fn add_tensor(&mut self, name: &str, ty: GgmlType, dims: &[u64]) -> Result<&mut Self> {
        let bad = |reason: String| write_err(format!("tensor {name:?}: {reason}"));
        if dims.is_empty() || dims.len() > MAX_DIMS {
            return Err(bad(format!(
                "{} dimensions (1 to {MAX_DIMS} allowed)",
                dims.len()
            )));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(bad("declared twice".into()));
        }
        if !dims[0].is_multiple_of(ty.block_size() as u64) {
            return Err(bad(format!(
                "row length {} is not a multiple of the {ty} block size {}",
                dims[0],
                ty.block_size()
            )));
        }
        let size = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .and_then(|n| ty.bytes_for(n))
            .ok_or_else(|| bad(format!("shape {dims:?} overflows")))?;
        let offset = self.data_size;
        self.data_size = offset
            .checked_add(size)
            .and_then(|e| e.checked_next_multiple_of(self.alignment))
            .ok_or_else(|| bad("data section overflows".into()))?;
        self.tensors.push(TensorSpec {
            name: name.to_string(),
            ty,
            dims: dims.to_vec(),
            offset,
            size,
        });
        Ok(self)
    }

    /// Bytes the finished file will take.
    pub fn file_size(&self) -> u64 {
        header_len(self).next_multiple_of(self.alignment) + self.data_size
    }

    /// Creates `<path>.tmp`, writes header, metadata and tensor infos, and returns the stream
    /// that takes the tensor data.
    pub fn create(self, path: impl AsRef<Path>) -> Result<GgufStream> {
        let final_path = path.as_ref().to_path_buf();
        let mut tmp = final_path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp_path = PathBuf::from(tmp);
        let io_err = |p: &Path| {
            let p = p.to_path_buf();
            move |source| GgufError::Io { path: p, source }
        };
        let file = File::create(&tmp_path).map_err(io_err(&tmp_path))?;
        let mut stream = GgufStream {
            out: BufWriter::with_capacity(1 << 20, file),
            tmp_path,
            final_path,
            builder: self,
            next: 0,
            pos: 0,
            done: false,
        };
        let mut head = Vec::new();
        encode_header(&stream.builder, &mut head);
        stream.write_all(&head)?;
        stream.pad()?;
        Ok(stream)
    }
}

/// Writes tensor data into a file being built; removes the temp file if dropped unfinished.
pub struct GgufStream {
    out: BufWriter<File>,
    tmp_path: PathBuf,
    final_path: PathBuf,
    builder: GgufBuilder,
    next: usize,
    pos: u64,
    done: bool,
}

impl GgufStream {
    fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let tmp = &self.tmp_path;
        self.out.write_all(bytes).map_err(|source| GgufError::Io {
            path: tmp.clone(),
            source,
        })?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<()> {
        const ZEROS: [u8; 64] = [0; 64];
        let target = self.pos.next_multiple_of(self.builder.alignment);
        while self.pos < target {
            let n = ((target - self.pos) as usize).min(ZEROS.len());
            self.write_all(&ZEROS[..n])?;
        }
        Ok(())
    }

    /// Name of the tensor whose data is expected next.
    pub fn next_tensor(&self) -> Option<&str> {
        self.builder.tensors.get(self.next).map(|t| t.name.as_str())
    }

    /// Writes the data of the next declared tensor (exactly its size in bytes).
    pub fn write_tensor(&mut self, bytes: &[u8]) -> Result<()> {
        self.write_tensor_parts(&[bytes])
    }

    /// Like `write_tensor`, with the data given in pieces (e.g. one per row group).
    pub fn write_tensor_parts(&mut self, parts: &[&[u8]]) -> Result<()> {
        let Some(spec) = self.builder.tensors.get(self.next) else {
            return Err(write_err(format!(
                "all {} declared tensors are already written",
                self.builder.tensors.len()
            )));
        };
        let got: u64 = parts.iter().map(|p| p.len() as u64).sum();
        if got != spec.size {
            return Err(write_err(format!(
                "tensor {:?} ({} {:?}) needs {} bytes, got {got}",
                spec.name, spec.ty, spec.dims, spec.size
            )));
        }
        for p in parts {
            self.write_all(p)?;
        }
        self.next += 1;
        self.pad()
    }

    /// Checks every tensor was written, syncs the file, and renames it into place.
    pub fn finish(mut self) -> Result<PathBuf> {
        if self.next != self.builder.tensors.len() {
            return Err(write_err(format!(
                "only {} of {} tensors written (next: {:?})",
                self.next,
                self.builder.tensors.len(),
                self.next_tensor()
            )));
        }
        let tmp = self.tmp_path.clone();
        let io_err = |source| GgufError::Io {
            path: tmp.clone(),
            source,
        };
        self.out.flush().map_err(io_err)?;
        self.out.get_ref().sync_all().map_err(io_err)?;
        fs::rename(&self.tmp_path, &self.final_path).map_err(io_err)?;
        self.done = true;
        Ok(self.final_path.clone())
    }
}

impl Drop for GgufStream {
    fn drop(&mut self) {
        if !self.done {
            // Unfinished output must not survive under any name; errors here have nowhere to go.
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}

fn check_value(key: &str, v: &MetaValue, depth: usize) -> Result<()> {
    if let MetaValue::Array(a) = v {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(write_err(format!(
                "key {key:?}: arrays nested more than {MAX_ARRAY_DEPTH} deep"
            )));
        }
        for item in &a.items {
            if item.value_type() != a.elem {
                return Err(write_err(format!(
                    "key {key:?}: array of {} holds a {}",
                    a.elem,
                    item.value_type()
                )));
            }
            check_value(key, item, depth + 1)?;
        }
    }
    Ok(())
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.push(*x as u8),
        MetaValue::Bool(x) => out.push(*x as u8),
        MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::String(s) => put_str(out, s),
        MetaValue::Array(MetaArray { elem, items }) => {
            out.extend_from_slice(&(*elem as u32).to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item);
            }
        }
    }
}

fn encode_header(b: &GgufBuilder, out: &mut Vec<u8>) {
    out.extend_from_slice(&GGUF_MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(b.tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(b.kvs.len() as u64).to_le_bytes());
    for (k, v) in &b.kvs {
        put_str(out, k);
        out.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
        put_value(out, v);
    }
    for t in &b.tensors {
        put_str(out, &t.name);
        out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&t.ty.id().to_le_bytes());
        out.extend_from_slice(&t.offset.to_le_bytes());
    }
}

fn header_len(b: &GgufBuilder) -> u64 {
    let mut v = Vec::new();
    encode_header(b, &mut v);
    v.len() as u64
}
