//! A checkpoint's `*.safetensors` files over mmaps: one file, or the shards named by
//! `model.safetensors.index.json`. Headers are parsed and every tensor's byte range is checked
//! by the `safetensors` crate once at open; data is read straight from the map, tensor by
//! tensor.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensors};

use super::{io_err, ConvertError, Result};

/// The element types the converter reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StDtype {
    F32,
    F16,
    BF16,
}

impl StDtype {
    pub fn size(self) -> usize {
        match self {
            StDtype::F32 => 4,
            StDtype::F16 | StDtype::BF16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            StDtype::F32 => "F32",
            StDtype::F16 => "F16",
            StDtype::BF16 => "BF16",
        }
    }

    /// Converts little-endian elements to f32 (`out.len()` of them).
    pub fn to_f32(self, bytes: &[u8], out: &mut [f32]) {
        debug_assert_eq!(bytes.len(), out.len() * self.size());
        match self {
            StDtype::F32 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            StDtype::F16 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
            StDtype::BF16 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
        }
    }
}

/// One tensor's place in the checkpoint.
#[derive(Clone, Debug)]
pub struct StTensor {
    pub name: String,
    pub file: usize,
    pub dtype: StDtype,
    /// Row-major, outermost first (PyTorch order).
    pub shape: Vec<usize>,
    /// Byte range inside the file's map.
    pub range: std::ops::Range<usize>,
}

pub struct Checkpoint {
    paths: Vec<PathBuf>,
    maps: Vec<Mmap>,
    tensors: BTreeMap<String, StTensor>,
}

impl Checkpoint {
    /// Opens `dir/model.safetensors.index.json`'s shards, or else every `*.safetensors` file
    /// in `dir` (normally the single `model.safetensors`).
    pub fn open_dir(dir: &Path) -> Result<Checkpoint> {
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(io_err(&index))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| ConvertError::Json {
                    path: index.clone(),
                    msg: e.to_string(),
                })?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| ConvertError::Json {
                    path: index.clone(),
                    msg: "no \"weight_map\" object".into(),
                })?;
            let mut names: Vec<String> = Vec::new();
            for (tensor, file) in map {
                let file = file.as_str().ok_or_else(|| ConvertError::Json {
                    path: index.clone(),
                    msg: format!("weight_map[{tensor:?}] is not a file name"),
                })?;
                if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                    return Err(ConvertError::Json {
                        path: index.clone(),
                        msg: format!("weight_map names {file:?}, which is not a file beside it"),
                    });
                }
                if !names.iter().any(|n| n == file) {
                    names.push(file.to_string());
                }
            }
            names.sort();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else {
            let rd = std::fs::read_dir(dir).map_err(io_err(dir))?;
            let mut v: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
                .collect();
            v.sort();
            v
        };
        if files.is_empty() {
            return Err(ConvertError::Usage(format!(
                "{}: no *.safetensors files",
                dir.display()
            )));
        }
        Self::open_files(&files)
    }

    pub fn open_files(files: &[PathBuf]) -> Result<Checkpoint> {
        let mut ck = Checkpoint {
            paths: Vec::new(),
            maps: Vec::new(),
            tensors: BTreeMap::new(),
        };
        for (fi, path) in files.iter().enumerate() {
            let file = File::open(path).map_err(io_err(path))?;
            // SAFETY: the map is read-only and lives as long as the Checkpoint; a checkpoint
            // modified by another process while it is converted gives wrong numbers, not UB
            // in this process's own memory (the same contract as every mmap-based reader).
            let map = unsafe { Mmap::map(&file) }.map_err(io_err(path))?;
            let bad = |msg: String| ConvertError::Safetensors {
                path: path.clone(),
                msg,
            };
            let st = SafeTensors::deserialize(&map[..]).map_err(|e| bad(e.to_string()))?;
            let base = map.as_ptr() as usize;
            for (name, view) in st.tensors() {
                let dtype = match view.dtype() {
                    Dtype::F32 => StDtype::F32,
                    Dtype::F16 => StDtype::F16,
                    Dtype::BF16 => StDtype::BF16,
                    other => {
                        return Err(ConvertError::BadDtype {
                            name,
                            dtype: format!("{other:?}"),
                        })
                    }
                };
                let start = view.data().as_ptr() as usize - base;
                let range = start..start + view.data().len();
                if ck.tensors.contains_key(&name) {
                    return Err(bad(format!("tensor {name:?} appears in two files")));
                }
                ck.tensors.insert(
                    name.clone(),
                    StTensor {
                        name,
                        file: fi,
                        dtype,
                        shape: view.shape().to_vec(),
                        range,
                    },
                );
            }
            ck.paths.push(path.clone());
            ck.maps.push(map);
        }
        Ok(ck)
    }

    pub fn get(&self, name: &str) -> Option<&StTensor> {
        self.tensors.get(name)
    }

    pub fn tensors(&self) -> impl Iterator<Item = &StTensor> {
        self.tensors.values()
    }

    pub fn data(&self, t: &StTensor) -> &[u8] {
        &self.maps[t.file][t.range.clone()]
    }

    /// The map holding `t`, for `release_pages`.
    pub fn map(&self, t: &StTensor) -> &Mmap {
        &self.maps[t.file]
    }

    pub fn path(&self, t: &StTensor) -> &Path {
        &self.paths[t.file]
    }
}

/// Drops the resident pages of `range` of a read-only file map: a converter reads each tensor
/// once, and without this every page read stays counted in the process's memory until the end.
#[cfg(unix)]
pub fn release_pages(map: &Mmap, range: std::ops::Range<usize>) {
    const PAGE: usize = 4096;
    let start = range.start / PAGE * PAGE;
    let end = range.end.min(map.len());
    if end <= start {
        return;
    }
    // SAFETY: the map is read-only and file-backed, so MADV_DONTNEED only discards clean pages;
    // any later access (a neighbouring tensor sharing the first page, say) reads the same bytes
    // back from the file. No memory is freed that Rust references could observe as changed.
    let r = unsafe {
        map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
    };
    // Only a memory-use optimisation: a platform without it just keeps the pages.
    let _ = r;
}

#[cfg(not(unix))]
pub fn release_pages(_map: &Mmap, _range: std::ops::Range<usize>) {}
