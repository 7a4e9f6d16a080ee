//! The zero-copy GGUF reader.
//!
//! Why not the `gguf-rs` crate from the design card: checked for this project, it copies the
//! whole file in its "mmap" mode, reports wrong sizes for 8 of 32 tensor types (BF16 among
//! them), truncates tokenizer arrays, cannot write BF16, and turns on serde_json's
//! `arbitrary_precision` for the whole build. So ledge reads GGUF itself.
//!
//! `GgufFile::open` maps the file and walks the header, metadata and tensor infos once,
//! checking every length, offset, count and shape with checked arithmetic before anything
//! is trusted. It keeps only byte ranges into the map; strings, arrays and tensor data are
//! borrowed from the map when asked for. Tensor data pages are never touched at open.

use std::fs::File;
use std::ops::{Deref, Range};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::error::{GgufError, Result};
use super::value::{decode, ArrayRef, Value, ValueType};
use crate::ggml_type::{GgmlType, TypeId};
use crate::tensor::TensorView;

pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
pub const MAX_DIMS: usize = 4;
/// Arrays of arrays are legal GGUF; deeper than this is an attack, not a model.
pub const MAX_ARRAY_DEPTH: usize = 8;

/// Where the file's bytes live: normally a read-only map, or an owned buffer (tests, files
/// built in memory). The owned buffer is made of u64s so tensor data keeps 8-byte alignment.
enum Backing {
    Map(Mmap),
    Owned { words: Vec<u64>, len: usize },
}

impl Deref for Backing {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Backing::Map(m) => m,
            Backing::Owned { words, len } => &bytemuck::cast_slice(words)[..*len],
        }
    }
}

#[derive(Clone, Debug)]
struct KvEntry {
    key: Range<usize>,
    ty: ValueType,
    /// Start of the value (after its type id).
    value_at: usize,
}

/// One tensor's index entry.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    name: Range<usize>,
    pub ty: GgmlType,
    /// ggml order: `dims[0]` is the row length (contiguous), then rows, …
    pub dims: Vec<u64>,
    /// Absolute byte range of the data in the file.
    pub data: Range<usize>,
    /// Byte offset of this info record in the file, for messages.
    pub info_offset: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    pub fn n_bytes(&self) -> usize {
        self.data.len()
    }
}

/// A parsed GGUF file.
pub struct GgufFile {
    backing: Backing,
    path: PathBuf,
    version: u32,
    alignment: u64,
    kvs: Vec<KvEntry>,
    tensors: Vec<TensorInfo>,
    /// Tensor indices sorted by name, for lookup without copying names.
    by_name: Vec<usize>,
    data_start: usize,
}

/// Bounds-checked reading over the file bytes. Every read names what it reads, so that a
/// truncation error says which field ran past the end.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                what: what(),
                offset: self.pos as u64,
                needed: n,
                file_len: self.buf.len() as u64,
            });
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A length-prefixed UTF-8 string; returns its byte range.
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<Range<usize>> {
        let at = self.pos as u64;
        let len = self.u64(what)?;
        let start = self.pos;
        let bytes = self.take(len, what)?;
        if std::str::from_utf8(bytes).is_err() {
            return Err(GgufError::InvalidUtf8 {
                what: what(),
                offset: at,
                len,
            });
        }
        Ok(start..self.pos)
    }

    /// Checks a count against the bytes left, given the fewest bytes one entry can take, so
    /// that no loop or allocation is ever sized by an absurd count.
    fn check_count(&self, count: u64, min_each: u64, what: &dyn Fn() -> String) -> Result<()> {
        match count.checked_mul(min_each) {
            Some(n) if n <= self.remaining() => Ok(()),
            _ => Err(GgufError::CountTooLarge {
                what: what(),
                offset: self.pos as u64,
                count,
                remaining: self.remaining(),
            }),
        }
    }

    /// Validates one value of type `ty` and moves past it.
    fn skip_value(&mut self, ty: ValueType, depth: usize, what: &dyn Fn() -> String) -> Result<()> {
        match ty {
            ValueType::String => {
                self.string(what)?;
            }
            ValueType::Array => {
                let at = self.pos as u64;
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::TooDeep {
                        what: what(),
                        offset: at,
                        max: MAX_ARRAY_DEPTH,
                    });
                }
                let id = self.u32(what)?;
                let elem = ValueType::from_id(id).ok_or_else(|| GgufError::UnknownValueType {
                    what: format!("{} (array element type)", what()),
                    offset: at,
                    id,
                })?;
                let count = self.u64(what)?;
                match count.checked_mul(elem.min_size() as u64) {
                    Some(n) if n <= self.remaining() => {}
                    _ => {
                        return Err(GgufError::ArrayTooLong {
                            what: what(),
                            offset: at,
                            count,
                            elem,
                            remaining: self.remaining(),
                        })
                    }
                }
                match elem.fixed_size() {
                    Some(size) => {
                        self.take(count * size as u64, what)?;
                    }
                    None => {
                        for _ in 0..count {
                            self.skip_value(elem, depth + 1, what)?;
                        }
                    }
                }
            }
            fixed => {
                self.take(fixed.fixed_size().unwrap_or(0) as u64, what)?;
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.kvs.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Maps and validates a GGUF file.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let io_err = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        // SAFETY: the map is read-only and ledge never writes the file while it is mapped. Another
        // process truncating or rewriting the file under us is outside what any mmap-based reader
        // (llama.cpp included) can defend against; slices are re-derived from the map on each use.
        let map = unsafe { Mmap::map(&file) }.map_err(io_err)?;
        // The first page fault would otherwise read around it (read_ahead_kb is often 8 MB),
        // pulling tensor data into memory just to parse the index. Advice is best effort.
        #[cfg(unix)]
        let _ = map.advise(memmap2::Advice::Random);
        let parsed = Self::parse(Backing::Map(map), path.to_path_buf())?;
        #[cfg(unix)]
        if let Backing::Map(m) = &parsed.backing {
            let _ = m.advise(memmap2::Advice::Normal);
        }
        Ok(parsed)
    }

    /// Gives back the memory of `data`'s whole pages where `data` lies in this file's map (a
    /// tensor whose load-time packed copy replaced it): they stop counting in the process's
    /// resident memory, and a later read faults them in again from the file. Anything else
    /// (an owned image, a slice from elsewhere) is left alone. Best effort.
    pub fn release_pages(&self, data: &[u8]) {
        #[cfg(unix)]
        if let Backing::Map(map) = &self.backing {
            const PAGE: usize = 4096;
            let base = map.as_ptr() as usize;
            let (start, end) = (data.as_ptr() as usize, data.as_ptr() as usize + data.len());
            if start < base || end > base + map.len() {
                return;
            }
            // Only pages wholly inside `data`: a neighbour's bytes stay resident.
            let (from, to) = (
                (start - base).next_multiple_of(PAGE),
                (end - base) / PAGE * PAGE,
            );
            if to <= from {
                return;
            }
            // SAFETY: the map is read-only and file-backed (a shared mapping ledge never writes),
            // so MADV_DONTNEED only drops clean page-table entries: any later read of these
            // bytes, through a slice that is still alive or a new one, gets the same contents
            // back from the file. No Rust-visible value changes.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, from, to - from)
            };
        }
        #[cfg(not(unix))]
        let _ = data;
    }

    /// Parses a GGUF image held in memory (copied into an 8-aligned buffer).
    pub fn from_bytes(bytes: &[u8]) -> Result<GgufFile> {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        Self::parse(
            Backing::Owned {
                words,
                len: bytes.len(),
            },
            PathBuf::from("<memory>"),
        )
    }

    fn parse(backing: Backing, path: PathBuf) -> Result<GgufFile> {
        let buf: &[u8] = &backing;
        let mut c = Cursor { buf, pos: 0 };
        let magic = c.take(4, &|| "magic".into())?;
        if magic != GGUF_MAGIC {
            return Err(GgufError::BadMagic {
                found: magic.escape_ascii().to_string(),
            });
        }
        let version = c.u32(&|| "version".into())?;
        if version & 0xFFFF == 0 && version != 0 {
            // A small version number read with the wrong byte order lands in the high half.
            return Err(GgufError::BigEndian { raw: version });
        }
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = c.u64(&|| "tensor count".into())?;
        let n_kv = c.u64(&|| "metadata count".into())?;
        // Smallest metadata entry: key length (8) + type (4) + a 1-byte value.
        c.check_count(n_kv, 8 + 4 + 1, &|| "metadata count".into())?;

        let mut kvs = Vec::with_capacity(n_kv as usize);
        for i in 0..n_kv {
            let entry_at = c.pos as u64;
            let key = c.string(&|| format!("metadata key #{i}"))?;
            let key_str = std::str::from_utf8(&buf[key.clone()]).unwrap_or("");
            let what = || format!("metadata key {key_str:?}");
            let ty_at = c.pos as u64;
            let id = c.u32(&what)?;
            let ty = ValueType::from_id(id).ok_or_else(|| GgufError::UnknownValueType {
                what: what(),
                offset: ty_at,
                id,
            })?;
            let value_at = c.pos;
            c.skip_value(ty, 0, &what)?;
            if kvs
                .iter()
                .any(|e: &KvEntry| buf[e.key.clone()] == buf[key.clone()])
            {
                return Err(GgufError::DuplicateKey {
                    key: key_str.to_string(),
                    offset: entry_at,
                });
            }
            kvs.push(KvEntry { key, ty, value_at });
        }

        let mut file = GgufFile {
            backing: Backing::Owned {
                words: Vec::new(),
                len: 0,
            },
            path,
            version,
            alignment: DEFAULT_ALIGNMENT,
            kvs,
            tensors: Vec::new(),
            by_name: Vec::new(),
            data_start: 0,
        };
        file.alignment = file.read_alignment(buf)?;

        // Smallest tensor info: name length (8) + n_dims (4) + one dim (8) + type (4) + offset (8).
        c.check_count(n_tensors, 8 + 4 + 8 + 4 + 8, &|| "tensor count".into())?;
        let mut raw = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let info_at = c.pos as u64;
            let name = c.string(&|| format!("tensor info #{i} name"))?;
            let name_str = std::str::from_utf8(&buf[name.clone()]).unwrap_or("");
            let what = || format!("tensor {name_str:?} info");
            let bad = |reason: String| GgufError::BadTensorInfo {
                name: name_str.to_string(),
                offset: info_at,
                reason,
            };
            let n_dims = c.u32(&what)?;
            if n_dims == 0 || n_dims as usize > MAX_DIMS {
                return Err(bad(format!(
                    "{n_dims} dimensions (1 to {MAX_DIMS} allowed)"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64(&what)?);
            }
            let type_at = c.pos as u64;
            let id = c.u32(&what)?;
            let ty = match GgmlType::lookup(id) {
                Some(TypeId::Live(t)) => t,
                Some(TypeId::Removed(type_name)) => {
                    return Err(GgufError::RemovedTensorType {
                        name: name_str.to_string(),
                        offset: type_at,
                        id,
                        type_name,
                    })
                }
                None => {
                    return Err(GgufError::UnknownTensorType {
                        name: name_str.to_string(),
                        offset: type_at,
                        id,
                    })
                }
            };
            let rel_offset = c.u64(&what)?;
            // ggml keeps element counts in int64: refuse anything past that.
            let n_elems = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .filter(|&n| n <= i64::MAX as u64)
                .ok_or_else(|| bad(format!("shape {dims:?} overflows")))?;
            if dims[0] % ty.block_size() as u64 != 0 {
                return Err(bad(format!(
                    "row length {} is not a multiple of the {} block size {}",
                    dims[0],
                    ty,
                    ty.block_size()
                )));
            }
            let size = ty
                .bytes_for(n_elems)
                .ok_or_else(|| bad(format!("size of shape {dims:?} as {ty} overflows")))?;
            if rel_offset % file.alignment != 0 {
                return Err(bad(format!(
                    "data offset {rel_offset} is not a multiple of the alignment {}",
                    file.alignment
                )));
            }
            raw.push((name, ty, dims, rel_offset, size, info_at));
        }

        let data_start = (c.pos as u64)
            .checked_next_multiple_of(file.alignment)
            .unwrap_or(u64::MAX);
        let file_len = buf.len() as u64;
        let mut tensors = Vec::with_capacity(raw.len());
        for (name, ty, dims, rel_offset, size, info_offset) in raw {
            let name_str = std::str::from_utf8(&buf[name.clone()]).unwrap_or("");
            let start = data_start.checked_add(rel_offset);
            let end = start.and_then(|s| s.checked_add(size));
            match (start, end) {
                (Some(s), Some(e)) if e <= file_len => tensors.push(TensorInfo {
                    name,
                    ty,
                    dims,
                    data: s as usize..e as usize,
                    info_offset,
                }),
                _ => {
                    return Err(GgufError::TensorOutOfBounds {
                        name: name_str.to_string(),
                        start: start.unwrap_or(u64::MAX),
                        end: end.unwrap_or(u64::MAX),
                        file_len,
                    })
                }
            }
        }

        let mut by_name: Vec<usize> = (0..tensors.len()).collect();
        by_name.sort_by(|&a, &b| buf[tensors[a].name.clone()].cmp(&buf[tensors[b].name.clone()]));
        for w in by_name.windows(2) {
            let (a, b) = (&tensors[w[0]], &tensors[w[1]]);
            if buf[a.name.clone()] == buf[b.name.clone()] {
                let second = if a.info_offset > b.info_offset { a } else { b };
                return Err(GgufError::DuplicateTensor {
                    name: std::str::from_utf8(&buf[second.name.clone()])
                        .unwrap_or("")
                        .to_string(),
                    offset: second.info_offset,
                });
            }
        }

        file.tensors = tensors;
        file.by_name = by_name;
        file.data_start = data_start as usize;
        file.backing = backing;
        Ok(file)
    }

    fn read_alignment(&self, buf: &[u8]) -> Result<u64> {
        let key = "general.alignment";
        let Some(e) = self
            .kvs
            .iter()
            .find(|e| &buf[e.key.clone()] == key.as_bytes())
        else {
            return Ok(DEFAULT_ALIGNMENT);
        };
        let (v, _) = decode(e.ty, &buf[e.value_at..]);
        let bad = |reason: String| GgufError::BadMetadata {
            key: key.into(),
            reason,
        };
        match v {
            Value::U32(a) if a.is_power_of_two() => Ok(a.into()),
            Value::U32(a) => Err(bad(format!("{a} is not a non-zero power of two"))),
            other => Err(bad(format!("is {}, expected u32", other.describe()))),
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.backing
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    pub fn file_size(&self) -> u64 {
        self.bytes().len() as u64
    }

    /// Byte offset where the tensor data section starts.
    pub fn data_offset(&self) -> usize {
        self.data_start
    }

    // ---- metadata ----

    pub fn metadata_len(&self) -> usize {
        self.kvs.len()
    }

    /// All metadata entries in file order.
    pub fn metadata(&self) -> impl Iterator<Item = (&str, Value<'_>)> + '_ {
        self.kvs.iter().map(|e| self.entry(e))
    }

    fn entry(&self, e: &KvEntry) -> (&str, Value<'_>) {
        let buf = self.bytes();
        let key = std::str::from_utf8(&buf[e.key.clone()]).unwrap_or("");
        (key, decode(e.ty, &buf[e.value_at..]).0)
    }

    pub fn get(&self, key: &str) -> Option<Value<'_>> {
        let buf = self.bytes();
        self.kvs
            .iter()
            .find(|e| &buf[e.key.clone()] == key.as_bytes())
            .map(|e| self.entry(e).1)
    }

    fn require(&self, key: &str) -> Result<Value<'_>> {
        self.get(key)
            .ok_or_else(|| GgufError::MissingKey(key.to_string()))
    }

    fn wrong(key: &str, v: &Value<'_>, expected: &'static str) -> GgufError {
        GgufError::WrongType {
            key: key.to_string(),
            found: v.describe(),
            expected,
        }
    }

    /// A string value; error if missing or not a string.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| Self::wrong(key, &v, "a string"))
    }

    /// Any non-negative integer value as u64 (writers disagree on u32 vs u64 vs i32).
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        v.to_i64()
            .and_then(|i| u64::try_from(i).ok())
            .or(match v {
                Value::U64(u) => Some(u),
                _ => None,
            })
            .ok_or_else(|| Self::wrong(key, &v, "a non-negative integer"))
    }

    /// Any numeric value as f32.
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        let v = self.require(key)?;
        v.to_f64()
            .map(|x| x as f32)
            .ok_or_else(|| Self::wrong(key, &v, "a number"))
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        let v = self.require(key)?;
        match v {
            Value::Bool(b) => Ok(b),
            _ => Err(Self::wrong(key, &v, "a bool")),
        }
    }

    pub fn get_array(&self, key: &str) -> Result<ArrayRef<'_>> {
        let v = self.require(key)?;
        v.as_array().ok_or_else(|| Self::wrong(key, &v, "an array"))
    }

    /// `general.architecture`, the prefix of the model's hyperparameter keys.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    // ---- tensors ----

    pub fn tensor_count(&self) -> usize {
        self.tensors.len()
    }

    /// Tensor infos in file order.
    pub fn tensor_infos(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor_name(&self, info: &TensorInfo) -> &str {
        std::str::from_utf8(&self.bytes()[info.name.clone()]).unwrap_or("")
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        let buf = self.bytes();
        self.by_name
            .binary_search_by(|&i| buf[self.tensors[i].name.clone()].cmp(name.as_bytes()))
            .ok()
            .map(|i| &self.tensors[self.by_name[i]])
    }

    /// The raw bytes of a tensor, borrowed from the map.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        &self.bytes()[info.data.clone()]
    }

    /// A view of a tensor's data (no copy).
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| GgufError::TensorNotFound(name.to_string()))?;
        Ok(self.view(info))
    }

    pub fn view<'a>(&'a self, info: &TensorInfo) -> TensorView<'a> {
        TensorView::borrowed(
            self.tensor_name(info),
            info.ty,
            info.dims.iter().map(|&d| d as usize).collect(),
            self.tensor_data(info),
        )
    }

    /// All tensors, in file order.
    pub fn tensors(&self) -> impl Iterator<Item = TensorView<'_>> + '_ {
        self.tensors.iter().map(|i| self.view(i))
    }
}
