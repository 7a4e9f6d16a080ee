//! The tensors a conversion reads: where each one's values live (a GGUF view, safetensors
//! bytes, or memory) and how its rows come out as f32 in GGUF layout. Kept apart from both
//! the HF mapping (`hf.rs`, which builds these) and the writer (`pipeline.rs`, which reads
//! them) so neither depends on the other.

use crate::gguf::GgmlType;
use crate::quant::QuantError;
use crate::tensor::TensorView;

use super::safetensors::StDtype;

/// Where a tensor's values come from.
pub enum SourceData<'a> {
    /// A tensor of a GGUF file (any type ledge can dequantize).
    Gguf(TensorView<'a>),
    /// Row-major little-endian floats of a safetensors file.
    St {
        dtype: StDtype,
        data: &'a [u8],
        row_len: usize,
        /// Q/K rows are reordered per head into llama.cpp's layout.
        permute_heads: Option<usize>,
    },
    /// Values already in memory (tests, transformed tensors).
    F32(Vec<f32>),
    /// Equal-shaped safetensors matrices stacked along a new outer axis (a mixture of
    /// experts' per-expert matrices as one 3-D tensor).
    Stack {
        parts: Vec<(StDtype, &'a [u8])>,
        rows_per_part: usize,
        row_len: usize,
    },
}

/// One output tensor: GGUF name, ggml dims (row length first), and its values.
pub struct SourceTensor<'a> {
    pub name: String,
    pub dims: Vec<u64>,
    pub data: SourceData<'a>,
    /// The mapped file pages holding the data, dropped from this process's memory once the
    /// tensor is converted (they are read again from the file if needed).
    pub pages: Option<(&'a memmap2::Mmap, std::ops::Range<usize>)>,
}

impl SourceTensor<'_> {
    pub(super) fn row_len(&self) -> usize {
        self.dims[0] as usize
    }

    pub(super) fn n_rows(&self) -> usize {
        self.dims[1..].iter().product::<u64>() as usize
    }

    /// The GGUF type of the source, if it is a GGUF tensor.
    pub fn gguf_type(&self) -> Option<GgmlType> {
        match &self.data {
            SourceData::Gguf(v) => Some(v.ty),
            _ => None,
        }
    }

    pub(super) fn source_bytes(&self) -> usize {
        match &self.data {
            SourceData::Gguf(v) => v.data.len(),
            SourceData::St { data, .. } => data.len(),
            SourceData::F32(v) => v.len() * 4,
            SourceData::Stack { parts, .. } => parts.iter().map(|p| p.1.len()).sum(),
        }
    }

    /// Rows `first..first + out.len() / row_len` as f32, in GGUF layout.
    pub(super) fn rows_f32(
        &self,
        first: usize,
        out: &mut [f32],
    ) -> std::result::Result<(), QuantError> {
        let row_len = self.row_len();
        match &self.data {
            SourceData::Gguf(v) => v.dequantize_into(first, out),
            SourceData::F32(v) => {
                out.copy_from_slice(&v[first * row_len..first * row_len + out.len()]);
                Ok(())
            }
            SourceData::Stack {
                parts,
                rows_per_part,
                row_len,
            } => {
                for (k, o) in out.chunks_exact_mut(*row_len).enumerate() {
                    let r = first + k;
                    let (dtype, data) = parts[r / rows_per_part];
                    let rb = row_len * dtype.size();
                    let i = r % rows_per_part;
                    dtype.to_f32(&data[i * rb..(i + 1) * rb], o);
                }
                Ok(())
            }
            SourceData::St {
                dtype,
                data,
                row_len,
                permute_heads,
            } => {
                let rb = row_len * dtype.size();
                let rows = self.n_rows();
                for (k, o) in out.chunks_exact_mut(*row_len).enumerate() {
                    let r = first + k;
                    let src = match permute_heads {
                        Some(h) => hf_row_of_gguf_row(r, rows, *h),
                        None => r,
                    };
                    dtype.to_f32(&data[src * rb..(src + 1) * rb], o);
                }
                Ok(())
            }
        }
    }
}

/// The HF row that GGUF row `r` of a Q/K matrix with `n_heads` heads of `rows / n_heads`
/// rows comes from.
pub fn hf_row_of_gguf_row(r: usize, rows: usize, n_heads: usize) -> usize {
    let hd = rows / n_heads;
    let (h, within) = (r / hd, r % hd);
    let (i, s) = (within / 2, within % 2);
    h * hd + s * (hd / 2) + i
}
