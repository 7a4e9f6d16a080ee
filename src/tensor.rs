//! TensorView: a tensor's type, shape and bytes, borrowed from the mmap or owned.

use std::borrow::Cow;

use crate::ggml_type::GgmlType;
use crate::quant::{self, QuantError};

/// A tensor as GGML stores it: `shape[0]` is the contiguous row length, `shape[1]` the
/// number of rows, and so on.
#[derive(Clone, Debug)]
pub struct TensorView<'a> {
    pub name: Cow<'a, str>,
    pub ty: GgmlType,
    pub shape: Vec<usize>,
    pub data: Cow<'a, [u8]>,
}

impl<'a> TensorView<'a> {
    pub fn borrowed(name: &'a str, ty: GgmlType, shape: Vec<usize>, data: &'a [u8]) -> Self {
        TensorView {
            name: Cow::Borrowed(name),
            ty,
            shape,
            data: Cow::Borrowed(data),
        }
    }

    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// Elements per row (`shape[0]`).
    pub fn row_len(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Number of rows: the product of every dimension after the first.
    pub fn n_rows(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    /// Bytes per row in the tensor's block format.
    pub fn row_bytes(&self) -> usize {
        self.row_len() / self.ty.block_size() * self.ty.type_size()
    }

    /// The bytes of row `i`.
    pub fn row(&self, i: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.data[i * rb..(i + 1) * rb]
    }

    /// Consecutive row ranges of `rows[i]` rows each, as 2-D views borrowing this one's
    /// bytes: the parts of a fused matrix (`attn_qkv`, Phi-3's gate+up) or the experts of a
    /// 3-D stack. None unless the counts add up to `n_rows`.
    pub fn split_rows(&self, rows: &[usize]) -> Option<Vec<TensorView<'a>>> {
        if rows.iter().sum::<usize>() != self.n_rows() {
            return None;
        }
        let rb = self.row_bytes();
        let mut start = 0;
        let parts = rows
            .iter()
            .enumerate()
            .map(|(i, &r)| {
                let range = start * rb..(start + r) * rb;
                start += r;
                TensorView {
                    name: Cow::Owned(format!("{}[{i}]", self.name)),
                    ty: self.ty,
                    shape: vec![self.row_len(), r],
                    data: match &self.data {
                        Cow::Borrowed(b) => Cow::Borrowed(&b[range]),
                        Cow::Owned(v) => Cow::Owned(v[range].to_vec()),
                    },
                }
            })
            .collect();
        Some(parts)
    }

    /// Dequantizes the whole tensor to f32.
    pub fn to_f32(&self) -> Result<Vec<f32>, QuantError> {
        let mut out = vec![0f32; self.n_elements()];
        self.dequantize_into(0, &mut out)?;
        Ok(out)
    }

    /// Dequantizes rows starting at `first_row` into `out` (a whole number of rows long).
    pub fn dequantize_into(&self, first_row: usize, out: &mut [f32]) -> Result<(), QuantError> {
        let rb = self.row_bytes();
        let rows = out.len() / self.row_len().max(1);
        let start = first_row * rb;
        let data = self
            .data
            .get(start..start + rows * rb)
            .ok_or(QuantError::WrongByteLength {
                ty: self.ty,
                n: out.len(),
                expected: rows * rb,
                got: self.data.len().saturating_sub(start),
            })?;
        match quant::dequantize(self.ty, data, out) {
            Err(QuantError::Misaligned { .. }) => quant::dequantize_unaligned(self.ty, data, out),
            r => r,
        }
    }
}
