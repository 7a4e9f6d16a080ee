//! Kernel sets: the fast paths of the hot loops, one file per ISA, chosen once at start-up.
//!
//! A `KernelSet` is a table of plain function pointers, one per (weight type, activation
//! type) dot product and per activation quantizer. `detect()` picks the best set the CPU
//! supports at run time (never at compile time: the release binary targets the baseline ISA
//! and must not die with "illegal instruction" on an older CPU); `LEDGE_SIMD=scalar|avx2|
//! avx512|neon` forces one. Entries an ISA file does not provide stay the scalar reference,
//! so every set is complete. Each SIMD entry is tested against the scalar reference.

use std::sync::OnceLock;

use super::repack16::Gemm16Fn;
use super::repack_k::{GemmKFn, KindK};
use super::*;

// Only x86 sets have tile kernels so far; the types are part of `AttnKernel` everywhere.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub mod attn_tile;
#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx2_attn;
#[cfg(target_arch = "x86_64")]
pub mod avx2_kquants;
#[cfg(target_arch = "x86_64")]
pub mod avx2_math;
#[cfg(target_arch = "x86_64")]
pub mod avx2_repack16;
#[cfg(target_arch = "x86_64")]
pub mod avx2_repack_k;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
#[cfg(target_arch = "x86_64")]
pub mod avx512_amx_k;
#[cfg(target_arch = "x86_64")]
pub mod avx512_attn;
#[cfg(target_arch = "x86_64")]
pub mod avx512_math;
#[cfg(target_arch = "x86_64")]
pub mod avx512_repack16;
#[cfg(target_arch = "x86_64")]
pub mod avx512_repack_k;
#[cfg(target_arch = "aarch64")]
pub mod neon;
#[cfg(target_arch = "aarch64")]
mod neon_f16;
#[cfg(target_arch = "aarch64")]
pub mod neon_i8mm;
#[cfg(target_arch = "aarch64")]
pub mod neon_i8mm_k;
#[cfg(target_arch = "aarch64")]
pub mod neon_repack16;
#[cfg(target_arch = "aarch64")]
pub mod neon_repack_k;

/// How far ahead (64-byte lines) the sixteen-row kernels prefetch their weights when
/// generating (one token: the matmul streams memory and does little else). The hardware
/// prefetchers alone left the 7B-shaped Q4_0 decode at ~60 % of the read bandwidth; 4 KB
/// ahead took it to ~85 % (1 and 2 threads; 2 KB and 8 KB measured no better).
#[cfg(target_arch = "x86_64")]
pub(crate) const PREFETCH_LINES: usize = 64;

/// How the one-token K-quant kernels (super-blocks of 9 or 13 lines per four rows)
/// prefetch: lines ahead, and whether into L2 only. Measured per vendor, as the two differ:
/// on the Intel Xeon (AMX) they were tuned on, 8 KB ahead into L1 (`prefetcht0`) took decode
/// from ~60 % to ~85 % of the read bandwidth; on an AMD EPYC (Zen 4, AVX-512) that same
/// prefetch made the Q6_K one-token kernel 20–30 % slower than none at all, and 16 KB ahead
/// into L2 (`prefetcht1`) the fastest (Qwen3-MoE shape, 1 and 2 threads, 7 Dec 2026; see
/// docs/performance.md).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefetchK {
    pub lines: usize,
    pub l2: bool,
}

#[cfg(target_arch = "x86_64")]
pub(crate) fn prefetch_k() -> PrefetchK {
    static P: OnceLock<PrefetchK> = OnceLock::new();
    *P.get_or_init(|| {
        if cpu_is_amd() {
            PrefetchK {
                lines: 256,
                l2: true,
            }
        } else {
            PrefetchK {
                lines: 128,
                l2: false,
            }
        }
    })
}

/// CPUID's vendor string is "AuthenticAMD".
#[cfg(target_arch = "x86_64")]
fn cpu_is_amd() -> bool {
    let r = core::arch::x86_64::__cpuid(0);
    let mut v = [0u8; 12];
    v[..4].copy_from_slice(&r.ebx.to_le_bytes());
    v[4..8].copy_from_slice(&r.edx.to_le_bytes());
    v[8..].copy_from_slice(&r.ecx.to_le_bytes());
    &v == b"AuthenticAMD"
}

/// How the AVX2 one-token sixteen-row kernel prefetches. On the AMD EPYC (Zen 4) it was
/// measured on (SmolLM2 Q4_0 and Q8_0, 1 and 2 threads, 7 Dec 2026, docs/performance.md),
/// 32 KB ahead into L2 was the fastest: Q8_0 decode 103 → 149 tokens/s at one thread against
/// 4 KB into L1, Q4_0 181 → 195; 16 KB and 64 KB were slower. Elsewhere the distance tuned
/// on the Intel Xeon for the AVX-512 kernel, `PREFETCH_LINES` into L1.
#[cfg(target_arch = "x86_64")]
pub(crate) fn prefetch16_avx2() -> PrefetchK {
    static P: OnceLock<PrefetchK> = OnceLock::new();
    *P.get_or_init(|| {
        if cpu_is_amd() {
            PrefetchK {
                lines: 512,
                l2: true,
            }
        } else {
            PrefetchK {
                lines: PREFETCH_LINES,
                l2: false,
            }
        }
    })
}

/// `prefetch` into L2 only (`prefetcht1`).
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn prefetch_l2(at: *const super::line64::Line64, n: usize) {
    for j in 0..n {
        // SAFETY: a prefetch is only a hint; it reads nothing the program sees.
        unsafe {
            core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T1 }>(
                at.wrapping_add(j) as *const i8,
            )
        };
    }
}

/// Prefetches `n` lines from `at`, which may be any address: a prefetch never faults, and
/// callers form `at` with `wrapping_add`, so running past the matrix is harmless.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn prefetch(at: *const super::line64::Line64, n: usize) {
    for j in 0..n {
        // SAFETY: a prefetch is only a hint; it reads nothing the program sees.
        unsafe {
            core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                at.wrapping_add(j) as *const i8,
            )
        };
    }
}

pub type DotFn<W, A> = fn(&[W], &[A]) -> f32;
pub type QuantFn<A> = fn(&[f32], &mut [A]);
/// One weight row against eight tokens' activations (`a`: 8 rows of the row's block count,
/// one after another), with the activations' block scales laid out per block as
/// `dy[block][token]` (and Q8_1's `s` likewise in `sy`; empty for Q8_0). Decodes each
/// weight block once for the eight tokens. Returns the eight dots, each equal to what the
/// set's `DotFn` gives for that token.
pub type Gemm8Fn<W, A> = fn(&[W], &[A], &[[f32; 8]], &[[f32; 8]]) -> [f32; 8];

/// out += w · v, v in f16: the attention's weighted sum of cached values.
pub type AxpyF16Fn = fn(&mut [f32], f32, &[f16]);

/// One query head's attention over the f16 cache (see `avx512_attn::attend`).
pub type HeadAttnFn =
    fn(&[f32], &[f16], &[f16], HeadLayout, f32, usize, usize, &mut Vec<f32>, &mut [f32]);

/// Where one head's keys and values are in the cache: row `p` of the keys starts at
/// `p·k_stride + k_off`, of the values at `p·v_stride + v_off`.
#[derive(Clone, Copy, Debug)]
pub struct HeadLayout {
    pub k_stride: usize,
    pub k_off: usize,
    pub v_stride: usize,
    pub v_off: usize,
}

/// A tile of queries of one KV group against its transposed keys (see
/// `avx512_attn::attend_tile`).
#[allow(clippy::type_complexity)]
pub type TileAttnFn = fn(
    &[f32],
    &[(usize, usize)],
    &attn_tile::KeysT,
    &[f16],
    HeadLayout,
    f32,
    &mut attn_tile::TileScratch,
    &mut [f32],
);

/// A vectorized attention kernel: `head` for one (position, head), and the tiled kernel of
/// the same ISA prompts use where it has one (keys transposed once per layer).
#[derive(Clone, Copy)]
pub struct AttnKernel {
    pub name: &'static str,
    /// Whether `head` handles these (hd_k, hd_v); the portable path runs otherwise.
    pub supports: fn(usize, usize) -> bool,
    pub head: HeadAttnFn,
    pub tile: Option<TileAttnFn>,
}

/// gate = SiLU(gate) ⊙ up, vectorized.
pub type SiluMulFn = fn(&mut [f32], &[f32]);

/// The functions the hot loops call, for one ISA: chosen once at start-up, so that no
/// caller asks which CPU it runs on.
#[derive(Clone, Copy)]
pub struct KernelSet {
    pub name: &'static str,
    /// The sixteen-row GEMM (`quant::repack16`): where `Some`, Q4_0, Q4_1, Q5_0 and Q8_0
    /// weights are repacked to that layout at load time.
    pub gemm16: Option<Gemm16Fn>,
    /// The four-row K GEMM (`quant::repack_k`): where `Some`, weights of the kinds in
    /// `k_kinds` are repacked at load time.
    pub gemm_k: Option<GemmKFn>,
    /// The weight kinds `gemm_k` has kernels for (others fall back to the reference).
    pub k_kinds: &'static [KindK],
    /// Whether prompts over the K layouts use AMX (`simd::avx512_amx_k`).
    pub amx_k: bool,
    /// Whether `gemm16` is an AMX kernel (for `describe`).
    pub amx16: bool,
    /// Vectorized attention; `None`: the portable per-head path.
    pub attn: Option<AttnKernel>,
    /// Vectorized SiLU·up; `None`: the scalar `silu`, the reference.
    pub silu_mul: Option<SiluMulFn>,
    /// How far ahead (64-byte lines) the one-token sixteen-row and K kernels prefetch; 0
    /// where they do not (reported by `describe`; the kernels read `PREFETCH_LINES` and
    /// `prefetch_k()`).
    pub prefetch_lines: usize,
    pub prefetch_lines_k: usize,
    pub quantize_q8_0: QuantFn<BlockQ8_0>,
    pub quantize_q8_1: QuantFn<BlockQ8_1>,
    pub quantize_q8_k: QuantFn<BlockQ8K>,
    pub q4_0: DotFn<BlockQ4_0, BlockQ8_0>,
    pub q4_1: DotFn<BlockQ4_1, BlockQ8_1>,
    pub q5_0: DotFn<BlockQ5_0, BlockQ8_0>,
    pub q5_1: DotFn<BlockQ5_1, BlockQ8_1>,
    pub q8_0: DotFn<BlockQ8_0, BlockQ8_0>,
    pub q2_k: DotFn<BlockQ2K, BlockQ8K>,
    pub q3_k: DotFn<BlockQ3K, BlockQ8K>,
    pub q4_k: DotFn<BlockQ4K, BlockQ8K>,
    pub q5_k: DotFn<BlockQ5K, BlockQ8K>,
    pub q6_k: DotFn<BlockQ6K, BlockQ8K>,
    pub iq4_nl: DotFn<BlockIQ4NL, BlockQ8_0>,
    pub iq4_xs: DotFn<BlockIQ4XS, BlockQ8K>,
    pub f32: DotFn<f32, f32>,
    pub f16: DotFn<f16, f16>,
    pub bf16: DotFn<bf16, bf16>,
    pub axpy_f16: AxpyF16Fn,
    /// Prompt-processing tiles; `None` where the set has none (the matmul then calls the
    /// dot once per token).
    pub gemm8_q4_0: Option<Gemm8Fn<BlockQ4_0, BlockQ8_0>>,
    pub gemm8_q4_1: Option<Gemm8Fn<BlockQ4_1, BlockQ8_1>>,
    pub gemm8_q5_0: Option<Gemm8Fn<BlockQ5_0, BlockQ8_0>>,
    pub gemm8_q5_1: Option<Gemm8Fn<BlockQ5_1, BlockQ8_1>>,
    pub gemm8_q8_0: Option<Gemm8Fn<BlockQ8_0, BlockQ8_0>>,
    pub gemm8_iq4_nl: Option<Gemm8Fn<BlockIQ4NL, BlockQ8_0>>,
    pub gemm8_q4_k: Option<Gemm8Fn<BlockQ4K, BlockQ8K>>,
    pub gemm8_q6_k: Option<Gemm8Fn<BlockQ6K, BlockQ8K>>,
}

/// The scalar reference: correct everywhere, the baseline every other set is tested against.
pub const SCALAR: KernelSet = KernelSet {
    name: "scalar",
    gemm16: None,
    gemm_k: None,
    k_kinds: &[],
    amx_k: false,
    amx16: false,
    attn: None,
    silu_mul: None,
    prefetch_lines: 0,
    prefetch_lines_k: 0,
    quantize_q8_0: <BlockQ8_0 as QuantBlock>::quantize,
    quantize_q8_1: <BlockQ8_1 as QuantBlock>::quantize,
    quantize_q8_k: <BlockQ8K as QuantBlock>::quantize,
    q4_0: <BlockQ4_0 as VecDot>::vec_dot,
    q4_1: <BlockQ4_1 as VecDot>::vec_dot,
    q5_0: <BlockQ5_0 as VecDot>::vec_dot,
    q5_1: <BlockQ5_1 as VecDot>::vec_dot,
    q8_0: <BlockQ8_0 as VecDot>::vec_dot,
    q2_k: <BlockQ2K as VecDot>::vec_dot,
    q3_k: <BlockQ3K as VecDot>::vec_dot,
    q4_k: <BlockQ4K as VecDot>::vec_dot,
    q5_k: <BlockQ5K as VecDot>::vec_dot,
    q6_k: <BlockQ6K as VecDot>::vec_dot,
    iq4_nl: <BlockIQ4NL as VecDot>::vec_dot,
    iq4_xs: <BlockIQ4XS as VecDot>::vec_dot,
    f32: <f32 as VecDot>::vec_dot,
    f16: <f16 as VecDot>::vec_dot,
    bf16: <bf16 as VecDot>::vec_dot,
    axpy_f16: axpy_f16_scalar,
    gemm8_q4_0: None,
    gemm8_q4_1: None,
    gemm8_q5_0: None,
    gemm8_q5_1: None,
    gemm8_q8_0: None,
    gemm8_iq4_nl: None,
    gemm8_q4_k: None,
    gemm8_q6_k: None,
};

/// The scalar reference of `axpy_f16`: out[i] += w · v[i], one f32 rounding per element.
pub fn axpy_f16_scalar(out: &mut [f32], w: f32, v: &[f16]) {
    assert_eq!(out.len(), v.len(), "axpy of rows of different lengths");
    for (o, &x) in out.iter_mut().zip(v) {
        *o += w * x.to_f32();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimdError {
    #[error("kernel set {0:?} needs instructions this CPU lacks (available: {1})")]
    Unsupported(String, String),
    #[error("unknown kernel set {0:?} (scalar, avx2, avx2-vnni, avx512, avx512-vnni, avx512-amx, neon, neon-dotprod, neon-i8mm)")]
    Unknown(String),
}

/// A bad kernel-set choice at start-up, naming where it came from (`--simd` or `LEDGE_SIMD`).
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {error}")]
pub struct ConfigureError {
    pub origin: &'static str,
    pub error: SimdError,
}

/// Every kernel set this CPU can run, best last.
pub fn available() -> Vec<KernelSet> {
    #[allow(unused_mut)]
    let mut v = vec![SCALAR];
    #[cfg(target_arch = "x86_64")]
    if let Some(k) = avx2::kernels() {
        v.push(k);
    }
    #[cfg(target_arch = "x86_64")]
    v.extend(avx2::vnni_kernels());
    #[cfg(target_arch = "x86_64")]
    v.extend(avx512::kernels());
    #[cfg(target_arch = "aarch64")]
    {
        v.push(neon::plain_kernels());
        v.extend(neon::dotprod_kernels());
        v.extend(neon::i8mm_kernels());
    }
    v
}

/// The names `LEDGE_SIMD` accepts. A family name picks the best set of that family the CPU
/// has: `neon` is `neon-i8mm` where `smmla` exists, else `neon-dotprod` where `sdot` does,
/// else the plain `neon` set; `neon-dotprod` and `neon-i8mm` ask for that one only;
/// likewise `avx2` is `avx2-vnni` where AVX-VNNI exists, and `avx512` is `avx512-amx` where
/// AMX is usable, else `avx512-vnni` (which turns AMX off).
const NAMES: [&str; 9] = [
    "scalar",
    "avx2",
    "avx2-vnni",
    "avx512",
    "avx512-vnni",
    "avx512-amx",
    "neon",
    "neon-dotprod",
    "neon-i8mm",
];

/// Whether set `set` answers `LEDGE_SIMD=forced`: its own name, or a variant `forced-…`.
fn family_matches(set: &str, forced: &str) -> bool {
    set.strip_prefix(forced)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
}

/// The set named by `LEDGE_SIMD`, or the best available.
pub fn select(forced: Option<&str>) -> Result<KernelSet, SimdError> {
    let avail = available();
    match forced {
        None | Some("") => Ok(*avail.last().unwrap_or(&SCALAR)),
        Some(name) => {
            if !NAMES.contains(&name) {
                return Err(SimdError::Unknown(name.to_string()));
            }
            avail
                .iter()
                .rev()
                .find(|k| family_matches(k.name, name))
                .copied()
                .ok_or_else(|| {
                    SimdError::Unsupported(
                        name.to_string(),
                        avail.iter().map(|k| k.name).collect::<Vec<_>>().join(", "),
                    )
                })
        }
    }
}

static KERNELS: OnceLock<KernelSet> = OnceLock::new();

/// Chooses the kernel set once: `forced` (the `--simd` flag) or else `LEDGE_SIMD`, else the
/// best available. The start-up configuration, the only place that reads the environment
/// (`kernels()` comes here too when nothing configured it); once chosen the set stays (a
/// later call returns it).
pub fn configure(forced: Option<&str>) -> Result<&'static KernelSet, ConfigureError> {
    if let Some(k) = KERNELS.get() {
        return Ok(k);
    }
    let env = std::env::var("LEDGE_SIMD").ok();
    let origin = if forced.is_some() {
        "--simd"
    } else {
        "LEDGE_SIMD"
    };
    let k = select(forced.or(env.as_deref())).map_err(|error| ConfigureError { origin, error })?;
    Ok(KERNELS.get_or_init(|| k))
}

/// `configure(None)`. Call early to report a bad `LEDGE_SIMD` as an error; `kernels()`
/// falls back to the best set if never called.
pub fn init() -> Result<&'static KernelSet, ConfigureError> {
    configure(None)
}

impl KernelSet {
    /// What this set runs, one line per part: its name, the matmul layout and kernel per
    /// weight type, AMX, attention, activation, prefetch distances.
    pub fn describe(&self) -> String {
        let yes = |b: bool| if b { "yes" } else { "no" };
        let mut s = format!("kernel set: {}\n", self.name);
        let l16 = if self.gemm16.is_some() {
            if self.amx16 {
                "sixteen-row repacked, AMX GEMM"
            } else {
                "sixteen-row repacked GEMM"
            }
        } else if self.gemm8_q4_0.is_some() {
            "GGUF blocks, eight-token tiles + dots"
        } else {
            "GGUF blocks, dots"
        };
        s += &format!("matmul Q4_0 Q4_1 Q5_0 Q8_0: {l16}\n");
        let lk = match (self.gemm_k.is_some(), self.amx_k) {
            (true, true) => "four-row K repacked GEMM, AMX for Q4_K and Q6_K prompts",
            (true, false) => "four-row K repacked GEMM",
            (false, _) if self.gemm8_q4_k.is_some() => "GGUF blocks, eight-token tiles + dots",
            (false, _) => "GGUF blocks, dots",
        };
        if self.gemm_k.is_some() {
            let names: Vec<String> = self.k_kinds.iter().map(|k| format!("{k:?}")).collect();
            s += &format!("matmul {}: {lk}\n", names.join(" "));
        } else {
            s += &format!("matmul Q4_K Q6_K: {lk}\n");
        }
        let lo = if self.gemm8_q5_1.is_some() {
            "GGUF blocks, eight-token tiles + dots"
        } else {
            "GGUF blocks, dots"
        };
        s += &format!("matmul other types: {lo}\n");
        s += &format!("AMX: {}\n", yes(self.amx16 || self.amx_k));
        s += &format!(
            "attention: {}\n",
            match self.attn {
                Some(a) if a.tile.is_some() => format!("{} (tiled prompts)", a.name),
                Some(a) => a.name.to_string(),
                None => "portable".to_string(),
            }
        );
        s += &format!(
            "activation: SiLU {}, GELU table\n",
            if self.silu_mul.is_some() {
                "vectorized"
            } else {
                "scalar"
            }
        );
        s += &format!(
            "prefetch: {} lines (sixteen-row), {} lines (K)",
            self.prefetch_lines, self.prefetch_lines_k
        );
        s
    }
}

/// The kernel set in use: the one `configure` chose, configuring it now if no start-up code
/// did (a library user, a test: `LEDGE_SIMD` still applies); the best available where
/// `LEDGE_SIMD` is invalid (`init` reports that, where the binary calls it).
pub fn kernels() -> &'static KernelSet {
    match configure(None) {
        Ok(k) => k,
        Err(_) => KERNELS.get_or_init(|| select(None).unwrap_or(SCALAR)),
    }
}

/// Links a weight type to its entries in a kernel set.
pub trait Fast: VecDot {
    fn dot(k: &KernelSet) -> DotFn<Self, Self::Act>;
    fn quantize_act(k: &KernelSet) -> QuantFn<Self::Act>;
    fn gemm8(_: &KernelSet) -> Option<Gemm8Fn<Self, Self::Act>> {
        None
    }
}

/// `d` and `s` of an activation block for the tiles (zeros for formats without tiles).
pub fn act_scales<A: QuantBlock>(a: &A) -> (f32, f32) {
    match A::TYPE {
        GgmlType::Q8_0 => bytemuck::cast_ref::<A, BlockQ8_0>(a).scales(),
        GgmlType::Q8_1 => bytemuck::cast_ref::<A, BlockQ8_1>(a).scales(),
        _ => (0.0, 0.0),
    }
}

/// The block scales a `Gemm8Fn` takes from each activation block.
pub trait TileScales {
    /// `d`, and `s` where the format has it.
    fn scales(&self) -> (f32, f32);
}

impl TileScales for BlockQ8_0 {
    fn scales(&self) -> (f32, f32) {
        (self.d.to_f32(), 0.0)
    }
}

impl TileScales for BlockQ8_1 {
    fn scales(&self) -> (f32, f32) {
        (self.d.to_f32(), self.s.to_f32())
    }
}

macro_rules! fast {
    ($($t:ty => $dot:ident, $q:ident $(, $g:ident)?;)*) => {$(
        impl Fast for $t {
            fn dot(k: &KernelSet) -> DotFn<Self, Self::Act> {
                k.$dot
            }
            fn quantize_act(k: &KernelSet) -> QuantFn<Self::Act> {
                k.$q
            }
            $(fn gemm8(k: &KernelSet) -> Option<Gemm8Fn<Self, Self::Act>> {
                k.$g
            })?
        }
    )*};
}

fast! {
    BlockQ4_0 => q4_0, quantize_q8_0, gemm8_q4_0;
    BlockQ4_1 => q4_1, quantize_q8_1, gemm8_q4_1;
    BlockQ5_0 => q5_0, quantize_q8_0, gemm8_q5_0;
    BlockQ5_1 => q5_1, quantize_q8_1, gemm8_q5_1;
    BlockQ8_0 => q8_0, quantize_q8_0, gemm8_q8_0;
    BlockQ2K => q2_k, quantize_q8_k;
    BlockQ3K => q3_k, quantize_q8_k;
    BlockQ4K => q4_k, quantize_q8_k, gemm8_q4_k;
    BlockQ5K => q5_k, quantize_q8_k;
    BlockQ6K => q6_k, quantize_q8_k, gemm8_q6_k;
    BlockIQ4NL => iq4_nl, quantize_q8_0, gemm8_iq4_nl;
    BlockIQ4XS => iq4_xs, quantize_q8_k;
}

impl Fast for f32 {
    fn dot(k: &KernelSet) -> DotFn<f32, f32> {
        k.f32
    }
    fn quantize_act(_: &KernelSet) -> QuantFn<f32> {
        <f32 as QuantBlock>::quantize
    }
}

impl Fast for f16 {
    fn dot(k: &KernelSet) -> DotFn<f16, f16> {
        k.f16
    }
    fn quantize_act(_: &KernelSet) -> QuantFn<f16> {
        <f16 as QuantBlock>::quantize
    }
}

impl Fast for bf16 {
    fn dot(k: &KernelSet) -> DotFn<bf16, bf16> {
        k.bf16
    }
    fn quantize_act(_: &KernelSet) -> QuantFn<bf16> {
        <bf16 as QuantBlock>::quantize
    }
}
