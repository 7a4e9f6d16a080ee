//! The student of a distillation: a loaded model whose base weights stay frozen in their
//! stored type, with trainable LoRA pairs on chosen block matrices and, optionally,
//! trainable RMSNorm weights. `Student::step` runs one sequence forward (keeping what the
//! backward needs), computes the distillation loss per position and runs the backward,
//! adding into a flat gradient vector laid out as the parameters.
//!
//! The forward's frozen products are the model's own kernels (`ops::matmul`, the layouts
//! `ledge run` uses), so the student trains on the logits it will later produce. The backward
//! needs dx = dy·W, which takes W's rows from the file, dequantized a tile at a time.

use rayon::prelude::*;

use super::grad::{self, Target};
use crate::gguf::GgufFile;
use crate::model::arch::{Activation, AttnScale};
use crate::model::{Ffn, Model, ModelError};
use crate::ops::{matmul, rope, Input, Weight};
use crate::quant::QuantError;
use crate::tensor::TensorView;
use crate::train::kernels::{matmul_into, View};

/// The block matrices LoRA pairs can train on, by their GGUF names.
pub const TARGETS: [&str; 7] = [
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Quant(#[from] QuantError),
    #[error("distillation does not train {arch} models yet: {why}")]
    Unsupported { arch: &'static str, why: String },
    #[error("unknown LoRA target {0:?}: choose from {targets}", targets = TARGETS.join(", "))]
    BadTarget(String),
    #[error("{0}")]
    Invalid(String),
}

/// What to train: LoRA pairs of `rank` (scaled by alpha/rank) on `targets`, and the RMSNorm
/// weights if `norms`.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainSpec {
    pub rank: usize,
    pub alpha: f32,
    pub targets: Vec<String>,
    pub norms: bool,
}

/// Where one LoRA pair lives in the flat parameters: A (rank × k) at `a`, B (m × rank) at `b`.
#[derive(Clone, Copy, Debug)]
pub struct LoraAt {
    pub a: usize,
    pub b: usize,
    pub rank: usize,
    pub k: usize,
    pub m: usize,
}

/// The flat layout of the trainable parameters.
#[derive(Clone, Debug)]
pub struct ParamLayout {
    /// Per layer, per `TARGETS` slot.
    pub lora: Vec<[Option<LoraAt>; 7]>,
    /// Per layer: (attn_norm, ffn_norm) offsets, each n_embd long.
    pub norms: Vec<Option<(usize, usize)>>,
    pub output_norm: Option<usize>,
    /// s = alpha / rank.
    pub scale: f32,
    pub len: usize,
    /// Ranges that take weight decay (the LoRA matrices; never the norms).
    pub decay: Vec<std::ops::Range<usize>>,
}

/// A student model being trained.
pub struct Student<'m, 'a> {
    pub model: &'m Model<'a>,
    file: &'a GgufFile,
    pub layout: ParamLayout,
    pub spec: TrainSpec,
}

/// The loss of a step: temperature T and weight α of the distillation term, and the factor
/// on each position's gradient (1 / the positions of an optimizer step).
#[derive(Clone, Copy, Debug)]
pub struct Loss {
    pub temperature: f32,
    pub alpha: f32,
    pub weight: f32,
}

/// What one layer's forward keeps for its backward.
struct LayerActs {
    x_in: Vec<f32>,
    xn1: Vec<f32>,
    q_pre_norm: Vec<f32>,
    k_pre_norm: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    probs: Vec<f32>,
    att: Vec<f32>,
    x_mid: Vec<f32>,
    xn2: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    h: Vec<f32>,
    /// x·Aᵀ per slot, for the LoRA backward.
    t: [Vec<f32>; 7],
}

/// Deterministic random numbers (splitmix64) for initialisation and data order.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl<'m, 'a> Student<'m, 'a> {
    /// Checks that ledge can train `model` (loaded from `file`, with no adapters attached) and
    /// lays out the trainable parameters.
    pub fn new(
        model: &'m Model<'a>,
        file: &'a GgufFile,
        spec: TrainSpec,
    ) -> Result<Student<'m, 'a>, TrainError> {
        let c = &model.config;
        let s = c.spec;
        let arch = s.name;
        let unsupported = |why: &str| TrainError::Unsupported {
            arch,
            why: why.to_string(),
        };
        if s.activation != Activation::Silu {
            return Err(unsupported("only SiLU-gated FFNs have a backward pass"));
        }
        if s.post_norms {
            return Err(unsupported(
                "post-attention/FFN norms have no backward pass yet",
            ));
        }
        if c.attn_softcap.is_some() || c.final_softcap.is_some() {
            return Err(unsupported("soft-capped logits have no backward pass yet"));
        }
        if c.head_dim_k != c.head_dim_v {
            return Err(unsupported("keys and values of different head sizes"));
        }
        if s.attn_scale == AttnScale::Gemma2 {
            return Err(unsupported("Gemma 2's attention scale is not handled"));
        }
        for (il, (lw, lc)) in model.layers.iter().zip(&c.layers).enumerate() {
            if lc.sliding && c.sliding_window.is_some() {
                return Err(unsupported(&format!(
                    "layer {il} uses sliding-window attention"
                )));
            }
            if !matches!(lw.ffn, Ffn::Dense(_)) {
                return Err(unsupported("mixture-of-experts layers are not trained yet"));
            }
            if lw.matmul_weights().iter().any(|w| w.name.contains('[')) {
                return Err(unsupported(
                    "fused attn_qkv / gate+up matrices are not trained yet",
                ));
            }
            if lw.matmul_weights().iter().any(|w| !w.loras.is_empty()) {
                return Err(TrainError::Invalid(
                    "the student must be loaded without --lora".into(),
                ));
            }
        }
        if spec.rank == 0 && !spec.norms {
            return Err(TrainError::Invalid(
                "nothing to train: give a LoRA rank above 0 or train the norms".into(),
            ));
        }
        for t in &spec.targets {
            if !TARGETS.contains(&t.as_str()) {
                return Err(TrainError::BadTarget(t.clone()));
            }
        }
        let mut len = 0usize;
        let mut take = |n: usize| {
            let o = len;
            len += n;
            o
        };
        let mut decay = Vec::new();
        let mut lora = Vec::new();
        let mut norms = Vec::new();
        for lw in &model.layers {
            let ws = slot_weights(lw);
            let mut slots = [None; 7];
            for (i, name) in TARGETS.iter().enumerate() {
                if spec.rank > 0 && spec.targets.iter().any(|t| t == name) {
                    let (k, m) = ws[i].shape;
                    let a = take(spec.rank * k);
                    let b = take(m * spec.rank);
                    decay.push(a..b + m * spec.rank);
                    slots[i] = Some(LoraAt {
                        a,
                        b,
                        rank: spec.rank,
                        k,
                        m,
                    });
                }
            }
            lora.push(slots);
            norms.push(spec.norms.then(|| (take(c.n_embd), take(c.n_embd))));
        }
        let output_norm = spec.norms.then(|| take(c.n_embd));
        let scale = if spec.rank > 0 {
            spec.alpha / spec.rank as f32
        } else {
            0.0
        };
        Ok(Student {
            model,
            file,
            layout: ParamLayout {
                lora,
                norms,
                output_norm,
                scale,
                len,
                decay,
            },
            spec,
        })
    }

    /// Initial parameters: A uniform in ±1/√k (as peft's Kaiming init), B zero (so the
    /// student starts as the model), the norms as the file has them.
    pub fn init_params(&self, seed: u64) -> Vec<f32> {
        let mut p = vec![0f32; self.layout.len];
        let mut rng = Rng(seed ^ 0x4C45_4447_455F_4C52);
        for slots in &self.layout.lora {
            for at in slots.iter().flatten() {
                let bound = 1.0 / (at.k as f64).sqrt();
                for v in &mut p[at.a..at.a + at.rank * at.k] {
                    *v = ((rng.uniform() * 2.0 - 1.0) * bound) as f32;
                }
            }
        }
        for (lw, n) in self.model.layers.iter().zip(&self.layout.norms) {
            if let Some((a, f)) = *n {
                p[a..a + lw.attn_norm.len()].copy_from_slice(&lw.attn_norm);
                p[f..f + lw.ffn_norm.len()].copy_from_slice(&lw.ffn_norm);
            }
        }
        if let Some(o) = self.layout.output_norm {
            p[o..o + self.model.output_norm.len()].copy_from_slice(&self.model.output_norm);
        }
        p
    }

    /// The TensorView of a frozen matrix, for the backward's rows.
    fn view(&self, w: &Weight) -> Result<TensorView<'a>, TrainError> {
        self.file
            .tensor(&w.name)
            .map_err(|_| TrainError::Invalid(format!("tensor {} is not in the file", w.name)))
    }

    /// Logits (n, n_vocab) of `tokens` at positions 0.. under `params`.
    pub fn logits(&self, params: &[f32], tokens: &[u32]) -> Result<Vec<f32>, TrainError> {
        let (z, _, _) = self.forward(params, tokens)?;
        Ok(z)
    }

    /// One sequence: forward, loss over the positions that have a target (`targets[t]` is
    /// position t's, None to skip), backward into `grads` with each position's loss
    /// weighted by `loss.weight`. Returns the summed (unweighted) loss.
    pub fn step(
        &self,
        params: &[f32],
        tokens: &[u32],
        targets: &[Option<Target>],
        loss: Loss,
        grads: &mut [f32],
    ) -> Result<f64, TrainError> {
        let Loss {
            temperature,
            alpha,
            weight,
        } = loss;
        let (mut z, acts, x_final) = self.forward(params, tokens)?;
        let nv = self.model.config.n_vocab;
        let losses: Vec<f64> = z
            .par_chunks_mut(nv)
            .zip(targets.par_iter())
            .map(|(zr, t)| match t {
                Some(t) => {
                    let (l, g) = grad::distill_loss(zr, t, temperature, alpha);
                    zr.iter_mut().zip(&g).for_each(|(d, &v)| *d = v * weight);
                    l as f64
                }
                None => {
                    zr.fill(0.0);
                    0.0
                }
            })
            .collect();
        self.backward(params, tokens.len(), z, acts, x_final, grads)?;
        Ok(losses.iter().sum())
    }

    fn norm_of<'p>(&self, params: &'p [f32], off: Option<usize>, fallback: &'p [f32]) -> &'p [f32] {
        match off {
            Some(o) => &params[o..o + fallback.len()],
            None => fallback,
        }
    }

    #[allow(clippy::type_complexity)]
    fn forward(
        &self,
        params: &[f32],
        tokens: &[u32],
    ) -> Result<(Vec<f32>, Vec<LayerActs>, Vec<f32>), TrainError> {
        let m = self.model;
        let c = &m.config;
        let (n, d) = (tokens.len(), c.n_embd);
        let mut x = vec![0f32; n * d];
        for (t, &id) in tokens.iter().enumerate() {
            if id as usize >= c.n_vocab {
                return Err(ModelError::BadToken {
                    id,
                    n_vocab: c.n_vocab,
                }
                .into());
            }
            m.tok_embd
                .dequantize_into(id as usize, &mut x[t * d..(t + 1) * d])?;
        }
        if c.spec.scale_embeddings {
            let s = (d as f32).sqrt();
            x.iter_mut().for_each(|v| *v *= s);
        }
        let factors = m.rope_factors_for(n);
        let mut acts = Vec::with_capacity(m.layers.len());
        for (il, (lw, lc)) in m.layers.iter().zip(&c.layers).enumerate() {
            let (nh, nkv, hk, hv) = (lc.n_head, lc.n_head_kv, c.head_dim_k, c.head_dim_v);
            let ws = slot_weights(lw);
            let slots = &self.layout.lora[il];
            let norms = self.layout.norms[il];
            let mut t: [Vec<f32>; 7] = Default::default();
            let attn_norm = self.norm_of(params, norms.map(|x| x.0), &lw.attn_norm);
            let xn1 = grad::rms_norm_forward(&x, attn_norm, c.rms_eps);
            let mut q = vec![0f32; n * nh * hk];
            let mut k = vec![0f32; n * nkv * hk];
            let mut v = vec![0f32; n * nkv * hv];
            {
                let mut input = Input::new(&xn1, n);
                matmul(ws[0], &mut input, &mut q)?;
                matmul(ws[1], &mut input, &mut k)?;
                matmul(ws[2], &mut input, &mut v)?;
            }
            for (i, out) in [(0, &mut q), (1, &mut k), (2, &mut v)] {
                t[i] = lora_forward(params, slots[i], self.layout.scale, &xn1, n, out);
            }
            if let Some([bq, bk, bv]) = &lw.attn.bias {
                add_bias(&mut q, bq);
                add_bias(&mut k, bk);
                add_bias(&mut v, bv);
            }
            let (q_pre_norm, k_pre_norm) = (q.clone(), k.clone());
            if let Some(w) = &lw.attn.q_norm {
                q = grad::rms_norm_forward(&q, w, c.rms_eps);
            }
            if let Some(w) = &lw.attn.k_norm {
                k = grad::rms_norm_forward(&k, w, c.rms_eps);
            }
            let table = rope_table(m, lc, factors, n);
            rope_rows(&table, &mut q, nh, hk, c.spec.rope_style, false);
            rope_rows(&table, &mut k, nkv, hk, c.spec.rope_style, false);
            // grad::attention scales scores by 1/√hd; the model's own scale is folded into q.
            let qs = c.attn_scale * (hk as f32).sqrt();
            let q_scaled: Vec<f32> = q.iter().map(|v| v * qs).collect();
            let (att, probs) = grad::attention_forward(&q_scaled, &k, &v, n, nh, nkv, hk);
            let mut o = vec![0f32; n * d];
            matmul(ws[3], &mut Input::new(&att, n), &mut o)?;
            t[3] = lora_forward(params, slots[3], self.layout.scale, &att, n, &mut o);
            let x_in = x.clone();
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let x_mid = x.clone();
            let ffn_norm = self.norm_of(params, norms.map(|x| x.1), &lw.ffn_norm);
            let xn2 = grad::rms_norm_forward(&x, ffn_norm, c.rms_eps);
            let mut gate = vec![0f32; n * lc.n_ff];
            let mut up = vec![0f32; n * lc.n_ff];
            {
                let mut input = Input::new(&xn2, n);
                matmul(ws[4], &mut input, &mut gate)?;
                matmul(ws[5], &mut input, &mut up)?;
            }
            t[4] = lora_forward(params, slots[4], self.layout.scale, &xn2, n, &mut gate);
            t[5] = lora_forward(params, slots[5], self.layout.scale, &xn2, n, &mut up);
            let h = grad::swiglu_forward(&gate, &up);
            matmul(ws[6], &mut Input::new(&h, n), &mut o)?;
            t[6] = lora_forward(params, slots[6], self.layout.scale, &h, n, &mut o);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            acts.push(LayerActs {
                x_in,
                xn1,
                q_pre_norm,
                k_pre_norm,
                q: q_scaled,
                k,
                v,
                probs,
                att,
                x_mid,
                xn2,
                gate,
                up,
                h,
                t,
            });
        }
        let on = self.norm_of(params, self.layout.output_norm, &m.output_norm);
        let xo = grad::rms_norm_forward(&x, on, c.rms_eps);
        let mut z = vec![0f32; n * c.n_vocab];
        matmul(&m.output, &mut Input::new(&xo, n), &mut z)?;
        Ok((z, acts, x))
    }

    fn backward(
        &self,
        params: &[f32],
        n: usize,
        dz: Vec<f32>,
        acts: Vec<LayerActs>,
        x_final: Vec<f32>,
        grads: &mut [f32],
    ) -> Result<(), TrainError> {
        let m = self.model;
        let c = &m.config;
        let eps = c.rms_eps;
        let dxo = frozen_backward(&self.view(&m.output)?, &dz, n)?;
        drop(dz);
        let on = self.norm_of(params, self.layout.output_norm, &m.output_norm);
        let mut dnorm = vec![0f32; on.len()];
        let mut dx = grad::rms_norm_backward(&x_final, on, eps, &dxo, &mut dnorm);
        if let Some(o) = self.layout.output_norm {
            add_into(&mut grads[o..o + on.len()], &dnorm);
        }
        let factors = m.rope_factors_for(n);
        for (il, a) in acts.into_iter().enumerate().rev() {
            let (lw, lc) = (&m.layers[il], &c.layers[il]);
            let (nh, nkv, hk) = (lc.n_head, lc.n_head_kv, c.head_dim_k);
            let ws = slot_weights(lw);
            let slots = self.layout.lora[il];
            let norms = self.layout.norms[il];
            let sc = self.layout.scale;
            // FFN: x_out = x_mid + down(swiglu(gate, up)).
            let mut dh = frozen_backward(&self.view(ws[6])?, &dx, n)?;
            lora_backward(params, slots[6], sc, &a.h, &a.t[6], &dx, n, &mut dh, grads);
            let (dg, du) = grad::swiglu_backward(&a.gate, &a.up, &dh);
            drop(dh);
            let mut dxn2 = frozen_backward(&self.view(ws[4])?, &dg, n)?;
            add_into(&mut dxn2, &frozen_backward(&self.view(ws[5])?, &du, n)?);
            lora_backward(
                params, slots[4], sc, &a.xn2, &a.t[4], &dg, n, &mut dxn2, grads,
            );
            lora_backward(
                params, slots[5], sc, &a.xn2, &a.t[5], &du, n, &mut dxn2, grads,
            );
            let ffn_norm = self.norm_of(params, norms.map(|x| x.1), &lw.ffn_norm);
            let mut dw = vec![0f32; ffn_norm.len()];
            add_into(
                &mut dx,
                &grad::rms_norm_backward(&a.x_mid, ffn_norm, eps, &dxn2, &mut dw),
            );
            if let Some((_, f)) = norms {
                add_into(&mut grads[f..f + dw.len()], &dw);
            }
            // Attention: x_mid = x_in + wo(attention(rope(q), rope(k), v)).
            let mut datt = frozen_backward(&self.view(ws[3])?, &dx, n)?;
            lora_backward(
                params, slots[3], sc, &a.att, &a.t[3], &dx, n, &mut datt, grads,
            );
            let (mut dq, mut dk, dv) =
                grad::attention_backward(&a.q, &a.k, &a.v, &a.probs, &datt, n, nh, nkv, hk);
            let qs = c.attn_scale * (hk as f32).sqrt();
            dq.iter_mut().for_each(|v| *v *= qs);
            let table = rope_table(m, lc, factors, n);
            rope_rows(&table, &mut dq, nh, hk, c.spec.rope_style, true);
            rope_rows(&table, &mut dk, nkv, hk, c.spec.rope_style, true);
            if let Some(w) = &lw.attn.q_norm {
                let mut scratch = vec![0f32; w.len()];
                dq = grad::rms_norm_backward(&a.q_pre_norm, w, eps, &dq, &mut scratch);
            }
            if let Some(w) = &lw.attn.k_norm {
                let mut scratch = vec![0f32; w.len()];
                dk = grad::rms_norm_backward(&a.k_pre_norm, w, eps, &dk, &mut scratch);
            }
            let mut dxn1 = frozen_backward(&self.view(ws[0])?, &dq, n)?;
            add_into(&mut dxn1, &frozen_backward(&self.view(ws[1])?, &dk, n)?);
            add_into(&mut dxn1, &frozen_backward(&self.view(ws[2])?, &dv, n)?);
            for (i, dy) in [(0, &dq), (1, &dk), (2, &dv)] {
                lora_backward(
                    params, slots[i], sc, &a.xn1, &a.t[i], dy, n, &mut dxn1, grads,
                );
            }
            let attn_norm = self.norm_of(params, norms.map(|x| x.0), &lw.attn_norm);
            let mut dw = vec![0f32; attn_norm.len()];
            add_into(
                &mut dx,
                &grad::rms_norm_backward(&a.x_in, attn_norm, eps, &dxn1, &mut dw),
            );
            if let Some((an, _)) = norms {
                add_into(&mut grads[an..an + dw.len()], &dw);
            }
        }
        Ok(())
    }
}

/// The block's matrices in `TARGETS` order.
pub fn slot_weights<'w, 'a>(lw: &'w crate::model::LayerWeights<'a>) -> [&'w Weight<'a>; 7] {
    let a = &lw.attn;
    let Ffn::Dense(f) = &lw.ffn else {
        unreachable!("Student::new refuses expert layers")
    };
    [&a.wq, &a.wk, &a.wv, &a.wo, &f.gate, &f.up, &f.down]
}

fn rope_table<'f>(
    m: &'f Model,
    lc: &crate::model::config::LayerConfig,
    factors: Option<&'f [f32]>,
    n: usize,
) -> rope::RopeTable<'f> {
    let c = &m.config;
    rope::RopeTable::new(
        0,
        n,
        rope::RopeParams {
            n_rot: c.n_rot,
            base: lc.rope_base,
            freq_scale: lc.rope_freq_scale,
            factors: factors.filter(|_| lc.rope_scaled),
            attn_factor: if lc.rope_scaled {
                c.rope_attn_factor
            } else {
                1.0
            },
            yarn: c.yarn.filter(|_| lc.rope_scaled),
        },
    )
}

/// RoPE on every head of x (n, heads·hd) at positions 0..n; `inverse` applies the transposed
/// rotation, the backward.
fn rope_rows(
    table: &rope::RopeTable,
    x: &mut [f32],
    heads: usize,
    hd: usize,
    style: rope::RopeStyle,
    inverse: bool,
) {
    for (pos, row) in x.chunks_exact_mut(heads * hd).enumerate() {
        for h in row.chunks_exact_mut(hd) {
            if inverse {
                table.apply_transposed(h, pos, style);
            } else {
                table.apply(h, pos, style);
            }
        }
    }
}

fn add_bias(rows: &mut [f32], b: &[f32]) {
    for r in rows.chunks_exact_mut(b.len()) {
        r.iter_mut().zip(b).for_each(|(x, &y)| *x += y);
    }
}

fn add_into(a: &mut [f32], b: &[f32]) {
    a.iter_mut().zip(b).for_each(|(x, &y)| *x += y);
}

/// y (n, m) += s·(x·Aᵀ)·Bᵀ for a trained pair; returns t = x·Aᵀ (n, r) for the backward.
fn lora_forward(
    params: &[f32],
    at: Option<LoraAt>,
    s: f32,
    x: &[f32],
    n: usize,
    y: &mut [f32],
) -> Vec<f32> {
    let Some(at) = at else {
        return Vec::new();
    };
    let (r, k, m) = (at.rank, at.k, at.m);
    let a = View::rows(&params[at.a..at.a + r * k], r, k);
    let b = View::rows(&params[at.b..at.b + m * r], m, r);
    let mut t = vec![0f32; n * r];
    matmul_into(&mut t, false, View::rows(x, n, k), a.t(), 1.0);
    matmul_into(y, true, View::rows(&t, n, r), b.t(), s);
    t
}

/// The backward of `lora_forward`: u = s·dy·B; dx += u·A; dA += uᵀ·x; dB += s·dyᵀ·t.
#[allow(clippy::too_many_arguments)]
fn lora_backward(
    params: &[f32],
    at: Option<LoraAt>,
    s: f32,
    x: &[f32],
    t: &[f32],
    dy: &[f32],
    n: usize,
    dx: &mut [f32],
    grads: &mut [f32],
) {
    let Some(at) = at else { return };
    let (r, k, m) = (at.rank, at.k, at.m);
    let a = View::rows(&params[at.a..at.a + r * k], r, k);
    let b = View::rows(&params[at.b..at.b + m * r], m, r);
    let dyv = View::rows(dy, n, m);
    let mut u = vec![0f32; n * r];
    matmul_into(&mut u, false, dyv, b, s);
    let uv = View::rows(&u, n, r);
    matmul_into(dx, true, uv, a, 1.0);
    let (ga, rest) = grads[at.a..].split_at_mut(r * k);
    let gb = &mut rest[at.b - at.a - r * k..][..m * r];
    matmul_into(ga, true, uv.t(), View::rows(x, n, k), 1.0);
    matmul_into(gb, true, dyv.t(), View::rows(t, n, r), s);
}

/// dx (n, k) = dy (n, m)·W for a frozen W (k, m) read from the file a tile of rows at a time.
fn frozen_backward(w: &TensorView, dy: &[f32], n: usize) -> Result<Vec<f32>, QuantError> {
    let (k, m) = (w.row_len(), w.n_rows());
    let mut dx = vec![0f32; n * k];
    // Tiles of ~4 MiB of f32 rows: large enough for the GEMM's inner dimension, small
    // against a 7B model's matrices (45–180 MB in f32).
    let tile = (TILE_VALUES / k.max(1)).clamp(8, m.max(8));
    let mut buf = vec![0f32; tile * k];
    let mut r0 = 0;
    while r0 < m {
        let nr = tile.min(m - r0);
        buf[..nr * k]
            .par_chunks_mut(k)
            .enumerate()
            .try_for_each(|(i, row)| w.dequantize_into(r0 + i, row))?;
        crate::train::kernels::gemm_acc(&mut dx, &dy[r0..], m, &buf[..nr * k], n, nr, k);
        r0 += nr;
    }
    Ok(dx)
}

/// Values per dequantized tile in `frozen_backward`.
const TILE_VALUES: usize = 1 << 20;
