//! Importance-weighted quantization for every GGML type the converter writes, and the block
//! "codec" GPTQ shares with it.
//!
//! Every block format decodes, per sub-block `j`, as `value = s_j·level + o_j` (IQ4_NL: `s·T[level]`
//! with its non-uniform table T). So a block is quantized in two steps:
//! 1. `choose` picks the stored parameters (f16 scales, integer sub-block scales and mins),
//!    minimising the importance-weighted squared error Σ w·(x − x̂)²;
//! 2. each value takes the level nearest to it on the grid those parameters define, and
//!    `pack` writes a standard GGML block.
//!
//! GPTQ (`gptq.rs`) uses the same two steps but interleaves them with its error feedback: the
//! parameters are chosen when a block starts, then the columns are quantized one by one.
//!
//! The parameter search follows llama.cpp's idea (`make_qkx3_quants`, `make_qp_quants`,
//! `make_qx_quants` with `quant_weights`): try a range of scales around the one that maps the
//! block's extreme to the extreme level, refit (scale, min) by weighted least squares on the
//! levels each try gives, keep the best by weighted error; for K-quants quantize the sub-block
//! scales with a searched super-scale and then nudge each integer sub-scale/min by ±1.
//! The weighted quantizer also evaluates the reference quantizer's block and keeps whichever
//! has the lower weighted error, so it is never worse on its own metric.

use half::f16;

use crate::ggml_type::GgmlType;
use crate::quant::iq4::KVALUES_IQ4NL;
use crate::quant::kquant_util::{best_index_int8, pack_scale_min_k4};
use crate::quant::q4::signed_absmax;
use crate::quant::{
    BlockIQ4NL, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1,
    BlockQ6K, BlockQ8_0,
};

/// How levels decode within a sub-block.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Levels {
    /// `s·level + o`, level in 0..=n.
    Uniform(u8),
    /// `s·KVALUES_IQ4NL[level] + o`, level in 0..16.
    Iq4,
}

/// The block geometry of a type the codec handles.
#[derive(Clone, Copy, Debug)]
pub struct Format {
    pub ty: GgmlType,
    /// Values per stored block (32 or 256): parameters are chosen per block.
    pub block: usize,
    /// Values per sub-block sharing one (s, o).
    pub sub: usize,
    pub levels: Levels,
}

/// Types this module quantizes with importance weights (and GPTQ can target).
pub fn format(ty: GgmlType) -> Option<Format> {
    use GgmlType as T;
    let (block, sub, levels) = match ty {
        T::Q4_0 | T::Q4_1 => (32, 32, Levels::Uniform(15)),
        T::Q5_0 | T::Q5_1 => (32, 32, Levels::Uniform(31)),
        T::Q8_0 => (32, 32, Levels::Uniform(255)),
        T::IQ4_NL => (32, 32, Levels::Iq4),
        T::Q2_K => (256, 16, Levels::Uniform(3)),
        T::Q3_K => (256, 16, Levels::Uniform(7)),
        T::Q4_K => (256, 32, Levels::Uniform(15)),
        T::Q5_K => (256, 32, Levels::Uniform(31)),
        T::Q6_K => (256, 16, Levels::Uniform(63)),
        _ => return None,
    };
    Some(Format {
        ty,
        block,
        sub,
        levels,
    })
}

/// True if `quantize_weighted` (and GPTQ) handle `ty`.
pub fn supports(ty: GgmlType) -> bool {
    format(ty).is_some()
}

/// The stored parameters of one block, as they decode.
#[derive(Clone, Copy, Debug, Default)]
pub struct Params {
    /// The scale (`d`).
    pub d: f16,
    /// Q4_1/Q5_1: the minimum `m`; K-quants with mins: `dmin`.
    pub m: f16,
    /// Integer sub-block scales as stored (Q3_K: 0..64 meaning −32..32; Q6_K: i8 as u8).
    pub sc: [u8; 16],
    /// Integer sub-block mins as stored (Q2_K, Q4_K, Q5_K).
    pub mn: [u8; 16],
}

impl Format {
    /// (s, o) of sub-block `j`: value = s·level + o (IQ4_NL: s·T[level] + o).
    #[inline]
    pub fn grid(&self, p: &Params, j: usize) -> (f32, f32) {
        use GgmlType as T;
        let d = p.d.to_f32();
        let m = p.m.to_f32();
        match self.ty {
            T::Q4_0 => (d, -8.0 * d),
            T::Q5_0 => (d, -16.0 * d),
            T::Q8_0 => (d, -128.0 * d),
            T::Q4_1 | T::Q5_1 => (d, m),
            T::IQ4_NL => (d, 0.0),
            T::Q3_K => {
                let s = d * (p.sc[j] as i32 - 32) as f32;
                (s, -4.0 * s)
            }
            T::Q6_K => {
                let s = d * (p.sc[j] as i8) as f32;
                (s, -32.0 * s)
            }
            // Q2_K, Q4_K, Q5_K
            _ => (d * p.sc[j] as f32, -m * p.mn[j] as f32),
        }
    }

    /// The level nearest `x` on grid (s, o).
    #[inline]
    pub fn level(&self, s: f32, o: f32, x: f32) -> u8 {
        if s == 0.0 {
            return match self.levels {
                Levels::Uniform(_) if self.ty == GgmlType::Q8_0 => 128,
                _ => 0,
            };
        }
        match self.levels {
            Levels::Uniform(n) => ((x - o) / s).round().clamp(0.0, n as f32) as u8,
            Levels::Iq4 => best_index_int8(&KVALUES_IQ4NL, (x - o) / s) as u8,
        }
    }

    /// The value level `l` decodes to on grid (s, o).
    #[inline]
    pub fn value(&self, s: f32, o: f32, l: u8) -> f32 {
        match self.levels {
            Levels::Uniform(_) => s * l as f32 + o,
            Levels::Iq4 => s * KVALUES_IQ4NL[l as usize] as f32 + o,
        }
    }

    /// Weighted squared error of sub-block `j` of `x` (the sub-block's values) under `p`.
    fn sub_err(&self, p: &Params, j: usize, x: &[f32], w: &[f32]) -> f32 {
        let (s, o) = self.grid(p, j);
        x.iter()
            .zip(w)
            .map(|(&v, &wt)| {
                let e = v - self.value(s, o, self.level(s, o, v));
                wt * e * e
            })
            .sum()
    }

    /// Weighted squared error of a whole block under `p`.
    pub fn block_err(&self, p: &Params, x: &[f32], w: &[f32]) -> f32 {
        x.chunks_exact(self.sub)
            .zip(w.chunks_exact(self.sub))
            .enumerate()
            .map(|(j, (xs, ws))| self.sub_err(p, j, xs, ws))
            .sum()
    }

    /// Levels of a whole block under `p` (nearest on the grid).
    pub fn levels_of(&self, p: &Params, x: &[f32], l: &mut [u8]) {
        for (j, (xs, ls)) in x
            .chunks_exact(self.sub)
            .zip(l.chunks_exact_mut(self.sub))
            .enumerate()
        {
            let (s, o) = self.grid(p, j);
            for (lv, &v) in ls.iter_mut().zip(xs) {
                *lv = self.level(s, o, v);
            }
        }
    }

    /// Appends the standard GGML block for parameters `p` and levels `l` (`self.block` of them).
    pub fn pack(&self, p: &Params, l: &[u8], out: &mut Vec<u8>) {
        use GgmlType as T;
        fn put<B: bytemuck::Pod>(out: &mut Vec<u8>, b: B) {
            out.extend_from_slice(bytemuck::bytes_of(&b));
        }
        let short = |l: &[u8]| -> [u8; 32] { l.try_into().expect("a 32-value block") };
        let long = |l: &[u8]| -> [u8; 256] { l.try_into().expect("a 256-value block") };
        let first8 = |v: &[u8; 16]| -> [u8; 8] { std::array::from_fn(|j| v[j]) };
        match self.ty {
            T::Q4_0 => put(out, BlockQ4_0::from_levels(p.d, &short(l))),
            T::Q4_1 => put(out, BlockQ4_1::from_levels(p.d, p.m, &short(l))),
            T::Q5_0 => put(out, BlockQ5_0::from_levels(p.d, &short(l))),
            T::Q5_1 => put(out, BlockQ5_1::from_levels(p.d, p.m, &short(l))),
            T::Q8_0 => put(out, BlockQ8_0::from_levels(p.d, &short(l))),
            T::IQ4_NL => put(out, BlockIQ4NL::from_levels(p.d, &short(l))),
            T::Q2_K => {
                let scales = BlockQ2K::pack_scales(&p.sc, &p.mn);
                put(out, BlockQ2K::from_levels(p.d, p.m, scales, &long(l)));
            }
            T::Q3_K => {
                let scales = BlockQ3K::pack_scales(&p.sc);
                put(out, BlockQ3K::from_levels(p.d, scales, &long(l)));
            }
            T::Q4_K | T::Q5_K => {
                let scales = pack_scale_min_k4(&first8(&p.sc), &first8(&p.mn));
                if self.ty == T::Q4_K {
                    put(out, BlockQ4K::from_levels(p.d, p.m, scales, &long(l)));
                } else {
                    put(out, BlockQ5K::from_levels(p.d, p.m, scales, &long(l)));
                }
            }
            T::Q6_K => {
                let sc = p.sc.map(|v| v as i8);
                put(out, BlockQ6K::from_levels(p.d, sc, &long(l)));
            }
            _ => unreachable!("format() admits only the types above"),
        }
    }

    /// Chooses the parameters of one block of values `x` with importance `w`.
    pub fn choose(&self, x: &[f32], w: &[f32]) -> Params {
        use GgmlType as T;
        let mut p = Params::default();
        match self.ty {
            T::Q4_0 => p.d = f16::from_f32(fit_sym(x, w, -8, 7, -8.0, true)),
            T::Q5_0 => p.d = f16::from_f32(fit_sym(x, w, -16, 15, -16.0, true)),
            T::Q8_0 => p.d = f16::from_f32(fit_sym(x, w, -128, 127, -127.0, true)),
            T::IQ4_NL => p.d = f16::from_f32(fit_iq4(x, w)),
            T::Q4_1 | T::Q5_1 => {
                let n = if self.ty == T::Q4_1 { 15 } else { 31 };
                let (s, o) = fit_affine(x, w, n, false, true);
                p.d = f16::from_f32(s);
                p.m = f16::from_f32(o);
                // The f16 rounding of the min shifts every level: refit the scale for it.
                let best = self.block_err(&p, x, w);
                let mut q = p;
                q.d = f16::from_f32(refit_scale(self, &p, x, w));
                if self.block_err(&q, x, w) < best {
                    p = q;
                }
            }
            T::Q3_K | T::Q6_K => self.choose_k_sym(x, w, &mut p),
            _ => self.choose_k_affine(x, w, &mut p),
        }
        // Q2_K / Q3_K: 16 small sub-blocks with 4-/6-bit sub-scales make the joint choice of
        // super-scale and integer sub-scales matter most; search it directly and keep
        // whichever of the two searches has the lower block error.
        if matches!(self.ty, T::Q2_K | T::Q3_K) {
            let e = self.block_err(&p, x, w);
            let (e2, p2) = self.choose_k_joint(x, w);
            if e2 < e {
                p = p2;
            }
        }
        p
    }

    /// Weighted squared error of one sub-block's values on the grid (s, o).
    fn grid_err(&self, s: f32, o: f32, xs: &[f32], ws: &[f32]) -> f32 {
        xs.iter()
            .zip(ws)
            .map(|(&v, &wt)| {
                let e = v - self.value(s, o, self.level(s, o, v));
                wt * e * e
            })
            .sum()
    }

    /// Q2_K / Q3_K: given the f16 super-scales, the block error is a sum of independent
    /// sub-block errors, so each sub-block's integer scale (and min) is picked by trying every
    /// integer in a window around its continuous optimum on the true weighted error (not the
    /// rounded one). The super-scales are searched over a grid, then re-fit by weighted least
    /// squares on the chosen levels and the sub-blocks re-picked, alternating while the error
    /// drops. Returns (block error, parameters).
    fn choose_k_joint(&self, x: &[f32], w: &[f32]) -> (f32, Params) {
        let q3 = self.ty == GgmlType::Q3_K;
        let nsub = self.block / self.sub;
        // Continuous per-sub-block (scale, min ≥ 0); Q3_K's scale is signed and has no min.
        let fits: Vec<(f32, f32)> = x
            .chunks_exact(self.sub)
            .zip(w.chunks_exact(self.sub))
            .map(|(xs, ws)| {
                if q3 {
                    (fit_sym(xs, ws, -4, 3, -4.0, false), 0.0)
                } else {
                    let (s, o) = fit_affine(xs, ws, 3, true, false);
                    (s, -o)
                }
            })
            .collect();
        // Integer ranges: Q3_K scale −32..=31 (stored +32); Q2_K scale and min 0..=15.
        let (qlo, qhi) = if q3 { (-32, 31) } else { (0, 15) };
        // Picks each sub-block's integers for super-scales (d, m); returns the block error.
        let pick = |p: &mut Params| -> f32 {
            let (dd, mm) = (p.d.to_f32(), p.m.to_f32());
            let mut total = 0.0f32;
            for j in 0..nsub {
                let xs = &x[j * self.sub..(j + 1) * self.sub];
                let ws = &w[j * self.sub..(j + 1) * self.sub];
                let centre = |v: f32, u: f32| -> i32 {
                    if u != 0.0 {
                        ((v / u).round() as i32).clamp(qlo, qhi)
                    } else {
                        0
                    }
                };
                let (s0, m0) = (centre(fits[j].0, dd), centre(fits[j].1, mm));
                let (mlo, mhi) = if q3 || mm == 0.0 {
                    (0, 0)
                } else {
                    ((m0 - 2).max(0), (m0 + 2).min(15))
                };
                let mut bj = (f32::INFINITY, s0, m0);
                // A wide window: with outliers of low importance the best scale can sit well
                // below the continuous fit's.
                let win = 3.max(s0.abs() / 3);
                for qs in (s0 - win).max(qlo)..=(s0 + win).min(qhi) {
                    let s = dd * qs as f32;
                    for qm in mlo..=mhi {
                        let o = if q3 { -4.0 * s } else { -mm * qm as f32 };
                        let e = self.grid_err(s, o, xs, ws);
                        if e < bj.0 {
                            bj = (e, qs, qm);
                        }
                    }
                }
                if q3 {
                    p.sc[j] = (bj.1 + 32) as u8;
                } else {
                    p.sc[j] = bj.1 as u8;
                    p.mn[j] = bj.2 as u8;
                }
                total += bj.0;
            }
            total
        };
        let mut best = (f32::INFINITY, Params::default());
        let try_ds = |d: f32, m: f32, best: &mut (f32, Params)| {
            let mut c = Params {
                d: f16::from_f32(d),
                m: f16::from_f32(m),
                ..Params::default()
            };
            let e = pick(&mut c);
            if e < best.0 {
                *best = (e, c);
            }
        };
        if q3 {
            let max = signed_absmax(&fits.iter().map(|f| f.0).collect::<Vec<_>>());
            if max == 0.0 {
                let p = Params {
                    sc: [32; 16],
                    ..Params::default()
                };
                return (self.block_err(&p, x, w), p);
            }
            // The extreme sub-scale maps to −t: t = 32 uses the whole negative range, larger
            // t clips it for finer steps elsewhere.
            for k in 0..=48 {
                try_ds(-max / (24.0 + 0.5 * k as f32), 0.0, &mut best);
            }
        } else {
            let max_s = fits.iter().fold(0.0f32, |a, f| a.max(f.0));
            let max_m = fits.iter().fold(0.0f32, |a, f| a.max(f.1));
            if max_s == 0.0 {
                try_ds(0.0, max_m / 15.0, &mut best);
            } else {
                for k in -6..=6 {
                    try_ds(max_s / (15.0 + 0.5 * k as f32), max_m / 15.0, &mut best);
                }
                let d = best.1.d.to_f32();
                for k in -6..=6 {
                    if max_m > 0.0 {
                        try_ds(d, max_m / (15.0 + 0.5 * k as f32), &mut best);
                    }
                }
            }
        }
        // Alternate: least-squares super-scales for the chosen integers and levels, then
        // re-pick the integers.
        for _ in 0..4 {
            let p = best.1;
            // x ≈ d·a − dmin·b with a = sc·level (Q3_K: sc·(level − 4)), b = mn.
            let (mut saa, mut sab, mut sbb, mut sxa, mut sxb) = (0f64, 0f64, 0f64, 0f64, 0f64);
            for j in 0..nsub {
                let (s, o) = self.grid(&p, j);
                for i in j * self.sub..(j + 1) * self.sub {
                    let l = self.level(s, o, x[i]) as f32;
                    let (a, b) = if q3 {
                        ((p.sc[j] as f32 - 32.0) * (l - 4.0), 0.0)
                    } else {
                        (p.sc[j] as f32 * l, p.mn[j] as f32)
                    };
                    let (wi, xi) = (w[i] as f64, x[i] as f64);
                    let (a, b) = (a as f64, b as f64);
                    saa += wi * a * a;
                    sab += wi * a * b;
                    sbb += wi * b * b;
                    sxa += wi * xi * a;
                    sxb += wi * xi * b;
                }
            }
            let (d, m) = if q3 || sbb == 0.0 {
                (if saa > 0.0 { sxa / saa } else { 0.0 }, 0.0)
            } else {
                // Minimise Σw(x − d·a + m·b)²: [saa −sab; −sab sbb]·[d; m] = [sxa; −sxb].
                let det = saa * sbb - sab * sab;
                if det <= 0.0 {
                    break;
                }
                ((sxa * sbb - sab * sxb) / det, (sab * sxa - saa * sxb) / det)
            };
            if !(d.is_finite() && m.is_finite()) || (!q3 && (d < 0.0 || m < 0.0)) {
                break;
            }
            let before = best.0;
            try_ds(d as f32, m as f32, &mut best);
            if best.0 >= before {
                break;
            }
        }
        (best.0, best.1)
    }

    /// Q3_K / Q6_K: a signed scale per sub-block, quantized against one f16 super-scale.
    fn choose_k_sym(&self, x: &[f32], w: &[f32], p: &mut Params) {
        let (lo, hi, smax) = if self.ty == GgmlType::Q3_K {
            (-4, 3, 32.0)
        } else {
            (-32, 31, 128.0)
        };
        let s: Vec<f32> = x
            .chunks_exact(self.sub)
            .zip(w.chunks_exact(self.sub))
            .map(|(xs, ws)| fit_sym(xs, ws, lo, hi, lo as f32, false))
            .collect();
        let max = signed_absmax(&s);
        if max == 0.0 {
            *p = Params {
                sc: [if self.ty == GgmlType::Q3_K { 32 } else { 0 }; 16],
                ..Params::default()
            };
            return;
        }
        let set = |p: &mut Params, d: f32| {
            p.d = f16::from_f32(d);
            let dd = p.d.to_f32();
            for (psc, &sj) in p.sc.iter_mut().zip(&s) {
                let q = if dd == 0.0 {
                    0
                } else {
                    (sj / dd).round() as i32
                };
                *psc = if self.ty == GgmlType::Q3_K {
                    (q.clamp(-32, 31) + 32) as u8
                } else {
                    q.clamp(-128, 127) as i8 as u8
                };
            }
        };
        let mut best = (f32::INFINITY, *p);
        for k in -4..=4 {
            let mut c = *p;
            set(&mut c, -max / (smax + 0.5 * k as f32));
            let e = self.block_err(&c, x, w);
            if e < best.0 {
                best = (e, c);
            }
        }
        *p = best.1;
        self.nudge(x, w, p, false);
    }

    /// Q2_K / Q4_K / Q5_K: a scale and a min per sub-block, each an integer of `bits` bits
    /// times an f16 super-scale (`d`, `dmin`).
    fn choose_k_affine(&self, x: &[f32], w: &[f32], p: &mut Params) {
        let (n, qmax) = match self.ty {
            GgmlType::Q2_K => (3, 15),
            GgmlType::Q4_K => (15, 63),
            _ => (31, 63),
        };
        let fits: Vec<(f32, f32)> = x
            .chunks_exact(self.sub)
            .zip(w.chunks_exact(self.sub))
            .map(|(xs, ws)| {
                let (s, o) = fit_affine(xs, ws, n, true, false);
                (s, -o)
            })
            .collect();
        let max_s = fits.iter().fold(0.0f32, |a, f| a.max(f.0));
        let max_m = fits.iter().fold(0.0f32, |a, f| a.max(f.1));
        let qf = qmax as f32;
        let set_d = |p: &mut Params, d: f32| {
            p.d = f16::from_f32(d);
            let dd = p.d.to_f32();
            for (psc, fj) in p.sc.iter_mut().zip(&fits) {
                *psc = if dd > 0.0 {
                    (fj.0 / dd).round().clamp(0.0, qf) as u8
                } else {
                    0
                };
            }
        };
        let set_m = |p: &mut Params, m: f32| {
            p.m = f16::from_f32(m);
            let mm = p.m.to_f32();
            for (pmn, fj) in p.mn.iter_mut().zip(&fits) {
                *pmn = if mm > 0.0 {
                    (fj.1 / mm).round().clamp(0.0, qf) as u8
                } else {
                    0
                };
            }
        };
        set_d(p, max_s / qf);
        set_m(p, max_m / qf);
        let mut best = (self.block_err(p, x, w), *p);
        for k in -3..=3 {
            if max_s == 0.0 {
                break;
            }
            let mut c = best.1;
            set_d(&mut c, max_s / (qf + 0.3 * k as f32));
            let e = self.block_err(&c, x, w);
            if e < best.0 {
                best = (e, c);
            }
        }
        for k in -3..=3 {
            if max_m == 0.0 {
                break;
            }
            let mut c = best.1;
            set_m(&mut c, max_m / (qf + 0.3 * k as f32));
            let e = self.block_err(&c, x, w);
            if e < best.0 {
                best = (e, c);
            }
        }
        *p = best.1;
        self.nudge(x, w, p, true);
    }

    /// Tries each sub-block's integer scale (and min) one step up and down; keeps what lowers
    /// that sub-block's weighted error.
    fn nudge(&self, x: &[f32], w: &[f32], p: &mut Params, mins: bool) {
        let (lo, hi): (i32, i32) = match self.ty {
            GgmlType::Q2_K => (0, 15),
            GgmlType::Q3_K => (0, 63),
            GgmlType::Q6_K => (-128, 127),
            _ => (0, 63),
        };
        let get = |v: u8| {
            if self.ty == GgmlType::Q6_K {
                v as i8 as i32
            } else {
                v as i32
            }
        };
        let put = |v: i32| {
            if self.ty == GgmlType::Q6_K {
                v as i8 as u8
            } else {
                v as u8
            }
        };
        for j in 0..self.block / self.sub {
            let xs = &x[j * self.sub..(j + 1) * self.sub];
            let ws = &w[j * self.sub..(j + 1) * self.sub];
            let mut best = (self.sub_err(p, j, xs, ws), p.sc[j], p.mn[j]);
            let (s0, m0) = (get(p.sc[j]), p.mn[j] as i32);
            let mrange = if mins { -1..=1 } else { 0..=0 };
            for ds in -1..=1 {
                for dm in mrange.clone() {
                    let (s, m) = (s0 + ds, m0 + dm);
                    if (ds, dm) == (0, 0) || s < lo || s > hi || m < 0 || m > hi {
                        continue;
                    }
                    let mut c = *p;
                    c.sc[j] = put(s);
                    c.mn[j] = m as u8;
                    let e = self.sub_err(&c, j, xs, ws);
                    if e < best.0 {
                        best = (e, c.sc[j], c.mn[j]);
                    }
                }
            }
            p.sc[j] = best.1;
            p.mn[j] = best.2;
        }
    }
}

fn round16(v: f32, yes: bool) -> f32 {
    if yes {
        f16::from_f32(v).to_f32()
    } else {
        v
    }
}

/// A symmetric scale d (levels `lo..=hi`, value d·q) minimising Σ w(x − d·q)². Candidates map
/// the signed extreme to `anchor` ± small steps, each followed by a weighted least-squares
/// refit of d on its levels. `f16`: evaluate with d rounded as stored.
fn fit_sym(x: &[f32], w: &[f32], lo: i32, hi: i32, anchor: f32, f16r: bool) -> f32 {
    let m = signed_absmax(x);
    if m == 0.0 {
        return 0.0;
    }
    let levels = |d: f32, q: &mut Vec<i32>| {
        q.clear();
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        q.extend(x.iter().map(|&v| ((v * id).round() as i32).clamp(lo, hi)));
    };
    let err = |d: f32, q: &[i32]| -> f32 {
        x.iter()
            .zip(q)
            .zip(w)
            .map(|((&v, &qj), &wj)| {
                let e = v - d * qj as f32;
                wj * e * e
            })
            .sum()
    };
    let mut q = Vec::with_capacity(x.len());
    let mut best = (f32::INFINITY, 0.0f32);
    let span = (hi - lo) as f32 / 16.0;
    for k in -10..=10 {
        let d0 = round16(m / (anchor + span * 0.1 * k as f32), f16r);
        levels(d0, &mut q);
        let e = err(d0, &q);
        if e < best.0 {
            best = (e, d0);
        }
        let (num, den) = x
            .iter()
            .zip(&q)
            .zip(w)
            .fold((0.0f32, 0.0f32), |(n, dd), ((&v, &qj), &wj)| {
                (n + wj * v * qj as f32, dd + wj * (qj * qj) as f32)
            });
        if den > 0.0 {
            let d1 = round16(num / den, f16r);
            levels(d1, &mut q);
            let e = err(d1, &q);
            if e < best.0 {
                best = (e, d1);
            }
        }
    }
    best.1
}

/// An affine grid (s, o) with levels 0..=n minimising Σ w(x − s·l − o)².
/// `nonpos_offset`: the offset must be ≤ 0 (K-quants store it as −dmin·m).
fn fit_affine(x: &[f32], w: &[f32], n: u8, nonpos_offset: bool, f16r: bool) -> (f32, f32) {
    let nf = n as f32;
    let (mut lo, hi) = x
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    if nonpos_offset {
        lo = lo.min(0.0);
    }
    if hi <= lo {
        return (0.0, round16(lo, f16r));
    }
    let err = |s: f32, o: f32| -> f32 {
        let is = if s != 0.0 { 1.0 / s } else { 0.0 };
        x.iter()
            .zip(w)
            .map(|(&v, &wj)| {
                let l = ((v - o) * is).round().clamp(0.0, nf);
                let e = v - s * l - o;
                wj * e * e
            })
            .sum()
    };
    let (s0, o0) = (round16((hi - lo) / nf, f16r), round16(lo, f16r));
    let mut best = (err(s0, o0), s0, o0);
    for k in -10..=10 {
        let iscale = (nf + 0.1 * k as f32 * nf.sqrt()) / (hi - lo);
        if iscale <= 0.0 {
            continue;
        }
        let (mut sw, mut sl, mut sll, mut sx, mut slx) = (0f32, 0f32, 0f32, 0f32, 0f32);
        for (&v, &wj) in x.iter().zip(w) {
            let l = ((v - lo) * iscale).round().clamp(0.0, nf);
            sw += wj;
            sl += wj * l;
            sll += wj * l * l;
            sx += wj * v;
            slx += wj * l * v;
        }
        let det = sw * sll - sl * sl;
        if det <= 0.0 {
            continue;
        }
        let mut s = (sw * slx - sl * sx) / det;
        let mut o = (sll * sx - sl * slx) / det;
        if nonpos_offset && o > 0.0 {
            o = 0.0;
            s = slx / sll;
        }
        if s <= 0.0 {
            continue;
        }
        let (s, o) = (round16(s, f16r), round16(o, f16r));
        let e = err(s, o);
        if e < best.0 {
            best = (e, s, o);
        }
    }
    (best.1, best.2)
}

/// IQ4_NL's scale: candidates map the signed extreme near the table's end, each refit by
/// weighted least squares on its table entries.
fn fit_iq4(x: &[f32], w: &[f32]) -> f32 {
    let m = signed_absmax(x);
    if m == 0.0 {
        return 0.0;
    }
    let t0 = KVALUES_IQ4NL[0] as f32;
    let pick = |d: f32| -> (f32, f32, f32) {
        // (error, Σw·x·t, Σw·t²)
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        x.iter()
            .zip(w)
            .fold((0.0, 0.0, 0.0), |(e, n, dd), (&v, &wj)| {
                let t = KVALUES_IQ4NL[best_index_int8(&KVALUES_IQ4NL, v * id)] as f32;
                let r = v - d * t;
                (e + wj * r * r, n + wj * v * t, dd + wj * t * t)
            })
    };
    let mut best = (f32::INFINITY, 0.0f32);
    for k in -8..=8 {
        let d0 = round16(m / (t0 + k as f32), true);
        let (e, num, den) = pick(d0);
        if e < best.0 {
            best = (e, d0);
        }
        if den > 0.0 {
            let d1 = round16(num / den, true);
            let (e, _, _) = pick(d1);
            if e < best.0 {
                best = (e, d1);
            }
        }
    }
    best.1
}

/// The scale minimising the weighted error with the levels and offset of `p` fixed
/// (32-block affine types).
fn refit_scale(f: &Format, p: &Params, x: &[f32], w: &[f32]) -> f32 {
    let (s, o) = f.grid(p, 0);
    let (mut num, mut den) = (0f32, 0f32);
    for (&v, &wj) in x.iter().zip(w) {
        let l = f.level(s, o, v) as f32;
        num += wj * l * (v - o);
        den += wj * l * l;
    }
    if den > 0.0 {
        num / den
    } else {
        s
    }
}

/// Per-column weights from the importance: a floor keeps columns never seen active from being
/// ignored entirely.
pub fn column_weights(imp: &[f32]) -> Vec<f32> {
    let mean = imp.iter().map(|&v| v.max(0.0) as f64).sum::<f64>() / imp.len().max(1) as f64;
    let floor = ((mean * 1e-3) as f32).max(1e-12);
    imp.iter().map(|&v| v.max(0.0) + floor).collect()
}

/// Quantizes `src` (whole rows of `imp.len()` values) to `ty`, each block's parameters chosen
/// to minimise the importance-weighted squared error; None for a type it does not handle or a
/// row length that is not a whole number of blocks.
pub fn quantize_weighted(ty: GgmlType, src: &[f32], imp: &[f32]) -> Option<Vec<u8>> {
    let f = format(ty)?;
    let row = imp.len();
    if row == 0 || !src.len().is_multiple_of(row) || !row.is_multiple_of(f.block) {
        return None;
    }
    let w = column_weights(imp);
    let mut out = Vec::with_capacity(src.len() / f.block * ty.type_size());
    let mut l = vec![0u8; f.block];
    let mut refd = vec![0f32; f.block];
    for (bi, x) in src.chunks_exact(f.block).enumerate() {
        let col = (bi * f.block) % row;
        let wb = &w[col..col + f.block];
        let p = f.choose(x, wb);
        f.levels_of(&p, x, &mut l);
        let start = out.len();
        f.pack(&p, &l, &mut out);
        // Keep the reference quantizer's block where it happens to do better.
        let reference = crate::quant::quantize_to_vec(ty, x).ok()?;
        crate::quant::dequantize_unaligned(ty, &reference, &mut refd).ok()?;
        let e_ref: f32 = x
            .iter()
            .zip(&refd)
            .zip(wb)
            .map(|((&a, &b), &wj)| wj * (a - b) * (a - b))
            .sum();
        if e_ref < f.block_err(&p, x, wb) {
            out.truncate(start);
            out.extend_from_slice(&reference);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    const TYPES: [GgmlType; 11] = [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::IQ4_NL,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ];

    fn werr(ty: GgmlType, bytes: &[u8], x: &[f32], imp: &[f32]) -> f64 {
        let mut y = vec![0f32; x.len()];
        crate::quant::dequantize_unaligned(ty, bytes, &mut y).unwrap();
        x.iter()
            .zip(&y)
            .enumerate()
            .map(|(i, (&a, &b))| imp[i % imp.len()] as f64 * ((a - b) as f64).powi(2))
            .sum()
    }

    fn data(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed;
        // Heavy-ish tails, as trained weights have.
        (0..n)
            .map(|_| lcg(&mut s) * (1.0 + 3.0 * lcg(&mut s).powi(2)))
            .collect()
    }

    #[test]
    fn codec_values_match_the_reference_dequantizer() {
        let row = 512;
        let x = data(3, row * 4);
        let imp = vec![1.0f32; row];
        for ty in TYPES {
            let f = format(ty).unwrap();
            let w = column_weights(&imp);
            let mut bytes = Vec::new();
            let mut mine = Vec::new();
            let mut l = vec![0u8; f.block];
            for xb in x.chunks_exact(f.block) {
                let p = f.choose(xb, &w[..f.block]);
                f.levels_of(&p, xb, &mut l);
                f.pack(&p, &l, &mut bytes);
                for (j, ls) in l.chunks_exact(f.sub).enumerate() {
                    let (s, o) = f.grid(&p, j);
                    mine.extend(ls.iter().map(|&v| f.value(s, o, v)));
                }
            }
            let mut y = vec![0f32; x.len()];
            crate::quant::dequantize_unaligned(ty, &bytes, &mut y).unwrap();
            for (i, (a, b)) in mine.iter().zip(&y).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "{ty} [{i}]: {a} vs {b}"
                );
            }
        }
    }

    /// The codec alone (no fallback to the reference block) on Q2_K and Q3_K: its weighted
    /// error must be below the reference quantizer's, with flat and with skewed importance.
    #[test]
    fn small_k_quants_codec_beats_the_reference_without_fallback() {
        let row = 1024;
        let x = data(23, row * 8);
        let mut s = 9u64;
        let flat = vec![1.0f32; row];
        let skewed: Vec<f32> = (0..row)
            .map(|_| 10f32.powf(2.0 * (lcg(&mut s) + 0.5)))
            .collect();
        for ty in [GgmlType::Q2_K, GgmlType::Q3_K] {
            let f = format(ty).unwrap();
            let reference = crate::quant::quantize_to_vec(ty, &x).unwrap();
            for (name, imp, bound) in [("flat", &flat, 1.0), ("skewed", &skewed, 0.9)] {
                let w = column_weights(imp);
                let mut bytes = Vec::new();
                let mut l = vec![0u8; f.block];
                for (bi, xb) in x.chunks_exact(f.block).enumerate() {
                    let col = (bi * f.block) % row;
                    let p = f.choose(xb, &w[col..col + f.block]);
                    f.levels_of(&p, xb, &mut l);
                    f.pack(&p, &l, &mut bytes);
                }
                let (er, ew) = (werr(ty, &reference, &x, imp), werr(ty, &bytes, &x, imp));
                eprintln!("{ty} {name}: codec/reference = {:.3}", ew / er);
                assert!(ew < bound * er, "{ty} {name}: codec {ew} vs reference {er}");
            }
        }
    }

    #[test]
    fn uniform_importance_is_no_worse_and_skewed_importance_is_better() {
        let row = 512;
        let x = data(11, row * 16);
        let mut s = 5u64;
        let flat = vec![1.0f32; row];
        let skewed: Vec<f32> = (0..row)
            .map(|_| 10f32.powf(3.0 * (lcg(&mut s) + 0.5)))
            .collect();
        for ty in TYPES {
            let reference = crate::quant::quantize_to_vec(ty, &x).unwrap();
            let flat_q = quantize_weighted(ty, &x, &flat).unwrap();
            assert_eq!(flat_q.len(), reference.len());
            let (er, ew) = (
                werr(ty, &reference, &x, &flat),
                werr(ty, &flat_q, &x, &flat),
            );
            assert!(
                ew <= er * 1.000001,
                "{ty} uniform: weighted {ew} vs reference {er}"
            );
            let sk = quantize_weighted(ty, &x, &skewed).unwrap();
            let (er, ew) = (
                werr(ty, &reference, &x, &skewed),
                werr(ty, &sk, &x, &skewed),
            );
            eprintln!("{ty}: skewed weighted/reference = {:.3}", ew / er);
            assert!(
                ew < 0.95 * er,
                "{ty} skewed: weighted {ew} vs reference {er}"
            );
        }
    }

    /// A short row with importance over two orders of magnitude, as real activations have.
    #[test]
    fn weighted_search_beats_the_reference_on_its_metric() {
        let mut s = 7u64;
        let row = 256;
        let imp: Vec<f32> = (0..row)
            .map(|_| 10f32.powf(2.0 * (lcg(&mut s) + 0.5)))
            .collect();
        let x: Vec<f32> = (0..row * 16)
            .map(|_| lcg(&mut s) * (1.0 + lcg(&mut s)))
            .collect();
        for ty in [GgmlType::Q4_0, GgmlType::Q5_0] {
            let reference = crate::quant::quantize_to_vec(ty, &x).unwrap();
            let weighted = quantize_weighted(ty, &x, &imp).unwrap();
            assert_eq!(weighted.len(), reference.len());
            let (er, ew) = (
                werr(ty, &reference, &x, &imp),
                werr(ty, &weighted, &x, &imp),
            );
            assert!(ew < 0.9 * er, "{ty}: weighted {ew} vs reference {er}");
        }
    }
}
