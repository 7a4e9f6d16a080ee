use std::sync::OnceLock;

use half::f16;

/// SiLU: x·σ(x).
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

const GELU_COEF_A: f32 = 0.044715;
const SQRT_2_OVER_PI: f32 = 0.797_884_6;

fn gelu_tanh(x: f32) -> f32 {
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + GELU_COEF_A * x * x)).tanh())
}

/// GELU (tanh approximation) the way ggml's CPU backend computes it: through a table indexed
/// by the input rounded to f16, holding f16 results, and exact outside [-10, 10]. Matching it
/// keeps Gemma's logits close to llama.cpp's.
pub fn gelu(x: f32) -> f32 {
    static TABLE: OnceLock<Vec<f16>> = OnceLock::new();
    if x <= -10.0 {
        return 0.0;
    }
    if x >= 10.0 {
        return x;
    }
    let t = TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|bits| f16::from_f32(gelu_tanh(f16::from_bits(bits).to_f32())))
            .collect()
    });
    t[f16::from_f32(x).to_bits() as usize].to_f32()
}

/// out = act(gate) ⊙ up, elementwise; threaded (a prompt's FFN holds millions of
/// elements) and, for SiLU with the AVX-512 kernel set, vectorized.
pub fn gated(gate: &mut [f32], up: &[f32], use_gelu: bool) {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 14;
    // The kernel set's SiLU (`LEDGE_SIMD=avx2|scalar` have none: the scalar `silu`, the
    // reference).
    let simd_silu = crate::quant::simd::kernels().silu_mul.filter(|_| !use_gelu);
    gate.par_chunks_mut(CHUNK)
        .zip(up.par_chunks(CHUNK))
        .for_each(|(gc, uc)| {
            if let Some(f) = simd_silu {
                f(gc, uc);
                return;
            }
            for (g, &u) in gc.iter_mut().zip(uc) {
                *g = if use_gelu { gelu(*g) } else { silu(*g) } * u;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_table_matches_formula() {
        for i in -200..200 {
            let x = i as f32 * 0.0537;
            assert!(
                (gelu(x) - gelu_tanh(x)).abs() <= 2e-3 * (1.0 + x.abs()),
                "{x}"
            );
        }
        assert_eq!(gelu(12.0), 12.0);
        assert_eq!(gelu(-12.0), 0.0);
    }
}
