//! One front door for a matmul weight: `Weight::load` decides its layout and GEMM kernel
//! once, when the model loads (the one chooser, as ggml's repack.cpp), from the kernel set;
//! `matmul` runs whichever layout it got with the kernel chosen with it.

use crate::quant::repack16::{Act16, Gemm16Fn, Kind16, Packed16};
use crate::quant::repack_k::{ActK, GemmKFn, KindK, PackedK};
use crate::quant::simd::{self, KernelSet};
use crate::quant::QuantError;
use crate::tensor::TensorView;

/// A matmul weight W (k, rows): its layout, the tensor it came from, and the LoRA deltas
/// attached to it (`model::lora`), which every product adds.
pub struct Weight<'a> {
    pub layout: Layout<'a>,
    /// The GGUF tensor's name; a part of a fused matrix or of an expert stack is `name[i]`.
    pub name: String,
    /// (k, rows).
    pub shape: (usize, usize),
    pub loras: Vec<crate::model::lora::LoraDelta>,
}

/// A weight's bytes in the layout its kernel reads.
pub enum Layout<'a> {
    /// The GGUF blocks, borrowed from the file: the blocked kernels.
    Mapped(TensorView<'a>),
    /// Q4_0 / Q4_1 / Q5_0 / Q8_0 repacked sixteen rows at a time (`quant::repack16`).
    Rows16 { p: Packed16, gemm: Gemm16Fn },
    /// Q4_K / Q5_K / Q6_K / IQ4_XS repacked four rows per super-block (`quant::repack_k`); `amx`: prompts
    /// take the AMX path.
    K4 {
        p: PackedK,
        gemm: GemmKFn,
        amx: bool,
    },
}

impl<'a> Weight<'a> {
    /// The layout `ks` has the best kernel for: a packed copy where the set has its GEMM
    /// and the type and shape fit, else the mapped blocks (no copy). The mapped blocks and
    /// the activations are handled by the set in use (`simd::kernels()`), so `ks` should be
    /// that set.
    pub fn load(view: TensorView<'a>, ks: &KernelSet) -> Weight<'a> {
        let (name, shape) = (view.name.to_string(), (view.row_len(), view.n_rows()));
        Weight {
            layout: Layout::choose(view, ks),
            name,
            shape,
            loras: Vec::new(),
        }
    }

    /// Bytes of the load-time packed copy (0 for mapped blocks).
    pub fn packed_bytes(&self) -> usize {
        match &self.layout {
            Layout::Mapped(_) => 0,
            Layout::Rows16 { p, .. } => p.size_bytes(),
            Layout::K4 { p, .. } => p.size_bytes(),
        }
    }

    /// Bytes one matmul reads: the packed copy's, or the blocks', and the LoRA pairs'.
    pub fn read_bytes(&self) -> usize {
        let base = match &self.layout {
            Layout::Mapped(v) => v.data.len(),
            _ => self.packed_bytes(),
        };
        base + self.loras.iter().map(|l| l.bytes()).sum::<usize>()
    }
}

impl<'a> Layout<'a> {
    fn choose(view: TensorView<'a>, ks: &KernelSet) -> Layout<'a> {
        if let Some(gemm) = ks.gemm16 {
            if let Some(p) = Packed16::from_view(&view) {
                return Layout::Rows16 { p, gemm };
            }
        }
        if let Some(gemm) = ks.gemm_k {
            let kind = KindK::of(view.ty).filter(|k| ks.k_kinds.contains(k));
            if let Some(p) = kind.and_then(|_| PackedK::from_view(&view)) {
                return Layout::K4 {
                    p,
                    gemm,
                    amx: ks.amx_k,
                };
            }
        }
        Layout::Mapped(view)
    }
}

/// A matmul input x (n, k), quantized at most once per packed format that asks for it:
/// q, k and v read one quantization of the normed input, gate and up another (separate
/// quantizations were 5-8 % of a prompt).
pub struct Input<'x> {
    x: &'x [f32],
    n: usize,
    a16: Vec<(Kind16, Vec<Act16>)>,
    ak: Option<Vec<ActK>>,
}

impl<'x> Input<'x> {
    /// x (n, k), row-major.
    pub fn new(x: &'x [f32], n: usize) -> Input<'x> {
        Input {
            x,
            n,
            a16: Vec::new(),
            ak: None,
        }
    }

    fn acts16(&mut self, kind: Kind16, k: usize) -> &[Act16] {
        let i = match self.a16.iter().position(|(kd, _)| *kd == kind) {
            Some(i) => i,
            None => {
                let a = super::act::acts16(self.x, self.n, k, kind, simd::kernels());
                self.a16.push((kind, a));
                self.a16.len() - 1
            }
        };
        &self.a16[i].1
    }

    fn acts_k(&mut self, k: usize) -> &[ActK] {
        let (x, n) = (self.x, self.n);
        self.ak
            .get_or_insert_with(|| super::act::acts_k(x, n, k, simd::kernels()))
    }
}

/// Several products as one parallel loop when every weight is in the K layout (a mixture's
/// chosen experts: one fork-join for all of them, their rows shared evenly by the threads);
/// otherwise one `matmul` after another. `jobs[i]` = (weight, index of its input in
/// `inputs`, output). For a few tokens: prompts should call `matmul` per weight, which
/// picks AMX where it pays.
pub fn matmul_many(
    inputs: &mut [Input],
    jobs: &mut [(&Weight, usize, &mut [f32])],
) -> Result<(), QuantError> {
    if !jobs
        .iter()
        .all(|(w, _, _)| matches!(w.layout, Layout::K4 { .. }) && w.loras.is_empty())
    {
        for (w, i, out) in jobs.iter_mut() {
            matmul(w, &mut inputs[*i], out)?;
        }
        return Ok(());
    }
    for (w, i, _) in jobs.iter() {
        if let Layout::K4 { p, .. } = &w.layout {
            inputs[*i].acts_k(p.k);
        }
    }
    let inputs = &*inputs;
    let mut kjobs: Vec<super::matmul_k::KJob> = jobs
        .iter_mut()
        .filter_map(|(w, i, out)| match &w.layout {
            Layout::K4 { p, gemm, .. } => Some(super::matmul_k::KJob {
                p,
                kernel: *gemm,
                acts: inputs[*i].ak.as_deref().unwrap_or(&[]),
                n: inputs[*i].n,
                out: &mut out[..],
            }),
            _ => None,
        })
        .collect();
    super::matmul_k::matmul_packed_k_many(&mut kjobs);
    Ok(())
}

/// W (k, m) @ x (n, k) -> out (n, m), for prompts and generation alike, plus each attached
/// LoRA delta.
pub fn matmul(w: &Weight, input: &mut Input, out: &mut [f32]) -> Result<(), QuantError> {
    let n = input.n;
    match &w.layout {
        Layout::Mapped(v) => super::matmul::matmul_view(v, input.x, n, out)?,
        Layout::Rows16 { p, gemm } => {
            let acts = input.acts16(p.kind, p.k);
            super::matmul::matmul_packed16(p, *gemm, acts, n, out);
        }
        Layout::K4 { p, gemm, amx } => {
            let acts = input.acts_k(p.k);
            super::matmul_k::matmul_packed_k(p, *gemm, *amx, acts, n, out);
        }
    }
    for l in &w.loras {
        l.apply(input.x, n, out);
    }
    Ok(())
}
