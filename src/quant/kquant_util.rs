//! Shared helpers of the K-quant reference quantizers: ports of ggml's `nearest_int`,
//! `make_qx_quants`, `make_q3_quants`, `make_qkx2_quants`, the 6-bit scale packing of
//! Q4_K/Q5_K, and `best_index_int8` (ggml-quants.c).
//!
//! Bit-exactness with ggml depends on doing the same f32 operations in the same order, so
//! the expressions below keep C's evaluation order (`w*x*l` is `(w*x)*l`, an `int` meets a
//! `float` by conversion) and never fuse a multiply and an add. The weight arguments
//! (`qw`, `weights`) are where importance-matrix quantization plugs in later: ggml's
//! imatrix paths call these same searches with per-element weights.

/// ggml's threshold below which a group counts as all zero.
pub const GROUP_MAX_EPS: f32 = 1e-15;

/// Round to nearest, ties to even, the way ggml does it: adding 1.5·2²³ leaves the rounded
/// integer in the low mantissa bits. Only meaningful for |fval| < 2²², as in ggml (whose
/// `assert` is compiled out); outside that range this returns the same garbage ggml does.
#[inline]
pub fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12_582_912.0;
    (val.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// The element of largest magnitude (the first one on ties) and that magnitude, as ggml's
/// `if (ax > amax) { amax = ax; max = x[i]; }` loops find them: `(max, amax)`.
#[inline]
pub fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    (max, amax)
}

/// Symmetric quantization of `x` to levels `-nmax..nmax-1`, stored in `l` offset by `nmax`
/// (ggml's `make_qx_quants`). Returns the scale.
///
/// `rmse_type` picks the weighting of the least-squares refinement as in ggml: 0 = none
/// (plain `max/-nmax` scale), 1 = x², 2 = 1, 3 = |x|, 4 = √|x|; negative = that weighting,
/// but return after one refinement step. `qw`, when given, replaces the weighting (imatrix).
pub fn make_qx_quants(
    nmax: i32,
    x: &[f32],
    l: &mut [i8],
    rmse_type: i32,
    qw: Option<&[f32]>,
) -> f32 {
    let n = x.len();
    debug_assert!(l.len() >= n);
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l[..n].fill(0);
        return 0.0;
    }
    let mut iscale = -(nmax as f32) / max;
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    if rmse_type == 0 {
        for (li, &xi) in l.iter_mut().zip(x) {
            *li = (nmax + level(iscale, xi)) as i8;
        }
        return 1.0 / iscale;
    }
    let return_early = rmse_type < 0;
    let rmse_type = rmse_type.abs();
    let weight = |i: usize| -> f32 {
        match qw {
            Some(qw) => qw[i],
            None => match rmse_type {
                1 => x[i] * x[i],
                2 => 1.0,
                3 => x[i].abs(),
                _ => x[i].abs().sqrt(),
            },
        }
    };

    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let li = level(iscale, x[i]);
        l[i] = (li + nmax) as i8;
        let w = weight(i);
        sumlx += w * x[i] * li as f32;
        suml2 += w * li as f32 * li as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    if return_early {
        return if suml2 > 0.0 {
            0.5 * (scale + 1.0 / iscale)
        } else {
            1.0 / iscale
        };
    }
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for (i, &xi) in x.iter().enumerate() {
            let li = level(iscale, xi) as f32;
            let w = weight(i);
            sumlx += w * xi * li;
            suml2 += w * li * li;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (li, &xi) in l.iter_mut().zip(x) {
                *li = (nmax + level(iscale, xi)) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Symmetric 3-bit-style quantization with a coordinate-descent refinement weighted by x²
/// (ggml's `make_q3_quants`): levels `-nmax..nmax-1` stored offset by `nmax` in `l`.
/// Returns the scale.
pub fn make_q3_quants(nmax: i32, x: &[f32], l: &mut [i8], do_rmse: bool) -> f32 {
    let n = x.len();
    debug_assert!(l.len() >= n);
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l[..n].fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let level = |v: f32| nearest_int(v).clamp(-nmax, nmax - 1);
    if !do_rmse {
        for (li, &xi) in l.iter_mut().zip(x) {
            *li = (level(iscale * xi) + nmax) as i8;
        }
        return 1.0 / iscale;
    }

    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for (li, &xi) in l.iter_mut().zip(x) {
        let q = level(iscale * xi);
        *li = q as i8;
        let w = xi * xi;
        sumlx += w * xi * q as f32;
        suml2 += w * q as f32 * q as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for (li, &xi) in l.iter_mut().zip(x) {
            let w = xi * xi;
            let cur = *li as f32;
            let mut slx = sumlx - w * xi * cur;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * cur * cur;
                let new_l = level(xi * sl2 / slx);
                if new_l != *li as i32 {
                    slx += w * xi * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *li = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for li in &mut l[..n] {
        *li += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// The grid of candidate inverse scales that `make_qkx2_quants` tries:
/// `(nmax + rmin + rdelta·k) / (max - min)` for k in 0..=nstep.
#[derive(Clone, Copy, Debug)]
pub struct ScaleSearch {
    pub rmin: f32,
    pub rdelta: f32,
    pub nstep: i32,
}

/// Asymmetric quantization `x ≈ scale·l - the_min` with `l` in `0..=nmax` (ggml's
/// `make_qkx2_quants`): starts from the min/max fit, then tries each inverse scale of
/// `search`, refitting scale and min by weighted least squares, and keeps the one with the
/// smallest weighted error (absolute if `use_mad`, else squared). Returns `(scale, the_min)`,
/// where `the_min` ≥ 0 is the amount subtracted.
pub fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    search: ScaleSearch,
    use_mad: bool,
) -> (f32, f32) {
    let n = x.len();
    debug_assert!(n <= 256 && weights.len() >= n && l.len() >= n);
    let mut laux = [0u8; 256];
    let laux = &mut laux[..n];

    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l[..n].fill(0);
        return (0.0, -min);
    }
    let err = |d: f32| if use_mad { d.abs() } else { d * d };
    let level = |iscale: f32, v: f32, min: f32| nearest_int(iscale * (v - min)).clamp(0, nmax);

    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        l[i] = level(iscale, x[i], min) as u8;
        let diff = scale * l[i] as f32 + min - x[i];
        best_error += weights[i] * err(diff);
    }
    if search.nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=search.nstep {
        iscale = (search.rmin + search.rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let li = level(iscale, x[i], min);
            laux[i] = li as u8;
            let (w, lf) = (weights[i], li as f32);
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * err(diff);
            }
            if cur_error < best_error {
                l[..n].copy_from_slice(laux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Unpacks the 6-bit (scale, min) pair of sub-block `j` (0..8) from the 12 packed bytes of
/// Q4_K/Q5_K: bytes 0..4 hold scales 0..4 and the top bits of scales 4..8, bytes 4..8 the
/// mins likewise, bytes 8..12 the low nibbles of scales and mins 4..8.
#[inline]
pub fn get_scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Packs eight 6-bit (scale, min) pairs into the Q4_K/Q5_K layout `get_scale_min_k4` reads.
pub fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            q[j] = ls[j];
            q[j + 4] = lm[j];
        } else {
            q[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
            q[j - 4] |= (ls[j] >> 4) << 6;
            q[j] |= (lm[j] >> 4) << 6;
        }
    }
    q
}

/// Index of the entry of the sorted table `val` nearest to `x` (ggml's `best_index_int8`;
/// on an exact midpoint the upper entry wins).
#[inline]
pub fn best_index_int8(val: &[i8], x: f32) -> usize {
    let n = val.len();
    if x <= val[0] as f32 {
        return 0;
    }
    if x >= val[n - 1] as f32 {
        return n - 1;
    }
    let (mut ml, mut mu) = (0, n - 1);
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < val[mav] as f32 {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - (val[mu - 1] as f32) < val[mu] as f32 - x {
        mu - 1
    } else {
        mu
    }
}

/// `nmax / max`, or 0 when `max` is not positive: the factor that maps sub-block scales
/// (or mins) of a super-block onto `0..=nmax` (ggml's `inv_scale` / `inv_min`).
#[inline]
pub fn inv_scale(max: f32, nmax: f32) -> f32 {
    if max > 0.0 {
        nmax / max
    } else {
        0.0
    }
}

/// ggml's generic K-quant dot-product core: Σ scale·(a·q8) over a super-block, kept in
/// eight integer lanes (lane `i % 8` holds element `i`), with one scale per 16 elements.
/// The lanes matter only because the caller then scales each lane into its own f32
/// accumulator, as ggml's `*_q8_K_generic` functions do.
#[inline]
pub fn lane_dot16(a: &[i8; 256], q8: &[i8; 256], scales: &[i32; 16]) -> [i32; 8] {
    let mut lanes = [0i32; 8];
    for ((a16, q16), &sc) in a.chunks_exact(16).zip(q8.chunks_exact(16)).zip(scales) {
        for (i, (&ai, &qi)) in a16.iter().zip(q16).enumerate() {
            lanes[i % 8] += sc * (ai as i32 * qi as i32);
        }
    }
    lanes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_is_round_half_even() {
        // The magic-number trick must agree with IEEE round-half-even (std's
        // `round_ties_even`) everywhere ggml uses it: exact ties, near-ties, and the range ends.
        let mut xs = vec![4194303.0f32, -4194303.0, 0.49999997, -0.49999997, 0.0, -0.0];
        for k in -2000..=2000 {
            let t = k as f32 * 0.25;
            xs.extend([t, t.next_up(), t.next_down()]);
        }
        for x in xs {
            assert_eq!(
                nearest_int(x),
                x.round_ties_even() as i32,
                "nearest_int({x})"
            );
        }
    }

    #[test]
    fn scale_min_k4_round_trips() {
        let ls = [0, 1, 63, 17, 32, 63, 5, 48];
        let lm = [63, 2, 0, 40, 15, 16, 62, 1];
        let q = pack_scale_min_k4(&ls, &lm);
        for j in 0..8 {
            assert_eq!(get_scale_min_k4(j, &q), (ls[j], lm[j]));
        }
    }

    #[test]
    fn best_index_is_brute_force_nearest() {
        // The bisection must agree with a linear scan for the nearest level, the upper one
        // winning exact midpoints, including outside the table's range.
        let table = [
            -127i8, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
        ];
        let nearest = |x: f32| {
            let mut best = 0;
            for (i, &v) in table.iter().enumerate() {
                if (x - v as f32).abs() <= (x - table[best] as f32).abs() {
                    best = i;
                }
            }
            best
        };
        for k in -600..=600 {
            let x = k as f32 * 0.25;
            for x in [x, x.next_up(), x.next_down()] {
                assert_eq!(best_index_int8(&table, x), nearest(x), "x = {x}");
            }
        }
    }
}
