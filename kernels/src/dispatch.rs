//! The run-time choice of instruction set: one table of kernel functions
//! per tier, picked once per process.
//!
//! Every entry of a SIMD table has a scalar twin in [`SCALAR`], and the
//! tests in `kernels/tests/isa.rs` hold each tier available on the machine
//! to it. `MICROLLM_ISA=scalar|avx2|avx512|amx|neon` forces a tier (an error if
//! the CPU lacks it), so that every tier can be tested and benchmarked on
//! one machine.

use crate::quant::{BlockQ8, F32Activations, Q8Activations, WeightsRef};
use std::fmt;
use std::ops::Range;
use std::sync::OnceLock;

/// An instruction-set tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isa {
    /// Portable Rust, the reference.
    Scalar,
    /// x86-64 with AVX2 and FMA.
    Avx2,
    /// x86-64 with AVX-512 (F, BW, VL) and VNNI.
    Avx512,
    /// The AVX-512 tier with AMX-BF16 tiles for prompts.
    Amx,
    /// aarch64 with NEON and the dot-product extension.
    Neon,
}

impl Isa {
    /// Every tier, in order of preference (last is best).
    pub const ALL: [Isa; 5] = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Amx, Isa::Neon];

    /// The name `MICROLLM_ISA` takes.
    pub const fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Amx => "amx",
            Isa::Neon => "neon",
        }
    }

    /// The tier with this name.
    pub fn from_name(name: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.name() == name)
    }

    /// Whether this CPU can run the tier (and this build has it).
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => crate::x86::avx2_available(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => crate::x86::avx512_available(),
            #[cfg(target_arch = "x86_64")]
            Isa::Amx => crate::x86::amx::available(),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => crate::aarch64::neon_available(),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The tiers this CPU can run, scalar first.
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.is_available()).collect()
    }

    /// How far this tier's f32-activation products may be from the exact
    /// sum, relative to `Σ |w·x|` over the row: f32 sums for every tier
    /// but AMX, whose tiles multiply two-bf16 splits of each operand
    /// (16 significant bits per product, see [`crate::x86::amx`]).
    pub const fn f32_tolerance(self) -> f64 {
        match self {
            Isa::Amx => 6e-5,
            _ => 1e-5,
        }
    }

    /// A second part of the bound on f32-activation products, relative to
    /// `Σ |w|·max|x|` over the row (each weight times the largest input of
    /// its block of 32): the AVX-512 tier runs prompts on int8 dot
    /// products, each block of activations split in two int8 parts, whose
    /// error is at most `max|x| / (2·127·256)` per value (see
    /// [`crate::x86::vnni`]); 0 on the other tiers.
    pub const fn f32_block_tolerance(self) -> f64 {
        match self {
            Isa::Avx512 => 2e-5,
            _ => 0.0,
        }
    }

    /// The best tier this CPU can run.
    pub fn best() -> Isa {
        Isa::available().pop().unwrap_or(Isa::Scalar)
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The shape checks every [`MatmulQ8Fn`] makes before it reads anything:
/// `rows` lies within `w`, `x` is `(n, cols)`, `out` is `(rows, n)`.
pub(crate) fn check_matmul_q8(
    w: &WeightsRef<'_>,
    rows: &Range<usize>,
    x: &Q8Activations,
    out: &[f32],
) {
    assert!(
        rows.start <= rows.end && rows.end <= w.rows(),
        "matmul_q8: rows out of range"
    );
    assert_eq!(x.cols(), w.cols(), "matmul_q8: x is not (n, cols)");
    assert_eq!(
        out.len(),
        rows.len() * x.n(),
        "matmul_q8: out is not (rows, n)"
    );
}

/// `out[(r - rows.start) · n + t] = Σ_c W[r, c] · x[t, c]` for the weight
/// rows `rows` and all `n` tokens of `x`: quantized weights times int8
/// activations. `out` is `(rows.len(), n)`, row-major by weight row, so
/// that threads own disjoint slices of it.
pub type MatmulQ8Fn =
    fn(w: &WeightsRef<'_>, rows: Range<usize>, x: &Q8Activations, out: &mut [f32]);

/// As [`MatmulQ8Fn`] with f32 activations `x (n, cols)`: quantized (or
/// f32/f16) weights dequantized inside the product.
pub type MatmulF32Fn =
    fn(w: &WeightsRef<'_>, rows: Range<usize>, x: &F32Activations<'_>, out: &mut [f32]);

/// As [`MatmulF32Fn`], writing `out (n, rows)` in place: the task's
/// columns `rows` of every token's row (kernels whose tiles come out
/// token-major). Only for weights whose columns are whole blocks of 32.
pub type MatmulF32ColsFn =
    fn(w: &WeightsRef<'_>, x: &F32Activations<'_>, out: crate::pool::Columns<'_>);

/// A [`MatmulF32ColsFn`] and the token count from which it is used.
#[derive(Clone, Copy)]
pub struct ColsKernel {
    /// Fewest tokens it pays for itself at.
    pub min_tokens: usize,
    /// The weight types it takes (whose columns are whole blocks of 32).
    pub takes: fn(crate::quant::TensorType) -> bool,
    /// The kernel.
    pub f: MatmulF32ColsFn,
    /// Arranges the activations for the kernel over the whole pool, once
    /// per input, before the matrix's tasks start; given the weights, so
    /// that a kernel that hands some types on to another arranges nothing
    /// for those.
    pub prepare: fn(w: &WeightsRef<'_>, x: &F32Activations<'_>, pool: &crate::pool::Pool),
}

/// As [`MatmulF32ColsFn`] with int8 activations, for q4 and q8 weights.
pub type MatmulQ8ColsFn = fn(w: &WeightsRef<'_>, x: &Q8Activations, out: crate::pool::Columns<'_>);

/// A [`MatmulQ8ColsFn`], the token count from which it is used, and what
/// arranges its input (as [`ColsKernel`]).
#[derive(Clone, Copy)]
pub struct Q8ColsKernel {
    /// Fewest tokens it pays for itself at.
    pub min_tokens: usize,
    /// The weight types it takes (whose columns are whole blocks of 32).
    pub takes: fn(crate::quant::TensorType) -> bool,
    /// The kernel.
    pub f: MatmulQ8ColsFn,
    /// Arranges the activations for the kernel over the whole pool.
    pub prepare: fn(x: &Q8Activations, pool: &crate::pool::Pool),
}

/// Quantizes whole blocks of activations to int8 (see [`Kernels::quantize_q8`]).
pub type QuantizeQ8Fn = fn(x: &[f32], quants: &mut [BlockQ8], scales: &mut [f32], sums: &mut [i32]);

/// The kernels of one tier.
#[derive(Clone, Copy)]
pub struct Kernels {
    /// The tier.
    pub isa: Isa,
    /// Quantizes whole blocks of 32 activations to int8: per block
    /// `d = max|x| / 127`, `q = round_ties_even(x / d)`, and the sum of q.
    /// The scalar twin is [`crate::quant::quantize_q8_blocks`]; every tier
    /// gives bit-identical results.
    pub quantize_q8: QuantizeQ8Fn,
    /// q8 weights × int8 activations.
    pub matmul_q8_q8: MatmulQ8Fn,
    /// q4 weights × int8 activations.
    pub matmul_q4_q8: MatmulQ8Fn,
    /// q4m weights × int8 activations.
    pub matmul_q4m_q8: MatmulQ8Fn,
    /// 2:4 sparse `q4s24` weights × int8 activations, where the tier has a
    /// SIMD kernel for it (AVX2, AVX-512, NEON); elsewhere the scalar
    /// reference serves `matmul_q8`, and models give `q4s24` f32 inputs
    /// (see [`Kernels::int8_for`]).
    pub matmul_q4s24_q8: Option<MatmulQ8Fn>,
    /// 2:4 sparse `q8s24` weights × int8 activations, as `matmul_q4s24_q8`.
    pub matmul_q8s24_q8: Option<MatmulQ8Fn>,
    /// Arranges `x` for the int8 kernel of `w`'s type (in `x`'s layout
    /// cache) before a matrix's tasks start, so that they do not race to
    /// build it (the losers would sleep on a lock); nothing on tiers whose
    /// kernels take the activations as they are.
    pub prepare_q8: fn(w: &WeightsRef<'_>, x: &Q8Activations),
    /// Any weights × f32 activations.
    pub matmul_f32: MatmulF32Fn,
    /// Prompts (f32 activations) written in place, where the tier has
    /// such a kernel; see [`Kernels::f32_cols_for`]. [`Kernels::matmul_f32`]
    /// otherwise.
    pub matmul_f32_cols: Option<ColsKernel>,
    /// Prompts on int8 activations written in place, where the tier has
    /// such a kernel (AVX2, AVX-512 VNNI); see [`Kernels::q8_cols_for`].
    pub matmul_q8_cols: Option<Q8ColsKernel>,
    /// `Σ a[i] · b[i]` (attention scores, f32 weights).
    pub dot: fn(a: &[f32], b: &[f32]) -> f32,
    /// `y[i] += a · x[i]` (attention's weighted sum of values).
    pub axpy: fn(y: &mut [f32], a: f32, x: &[f32]),
    /// [`crate::f32::softmax`], the same bits on every tier.
    pub softmax: fn(x: &mut [f32]),
    /// One query's attention over one head's key/value cache:
    /// `(out, q, cache, scale, scores)`, the tier's `dot`, `softmax` and
    /// `axpy` in one call (see `crate::f32::attend_body`).
    pub attend: AttendFn,
    /// [`crate::f32::silu_mul`], the same bits on every tier.
    pub silu_mul: fn(gate: &mut [f32], up: &[f32]),
}

impl fmt::Debug for Kernels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kernels").field("isa", &self.isa).finish()
    }
}

/// The scalar reference tier.
pub static SCALAR: Kernels = Kernels {
    isa: Isa::Scalar,
    quantize_q8: crate::quant::quantize_q8_blocks,
    matmul_q8_q8: scalar_matmul_q8,
    matmul_q4_q8: scalar_matmul_q8,
    matmul_q4m_q8: scalar_matmul_q8,
    matmul_q4s24_q8: None,
    matmul_q8s24_q8: None,
    prepare_q8: no_prepare_q8,
    matmul_f32: scalar_matmul_f32,
    matmul_f32_cols: None,
    matmul_q8_cols: None,
    dot: crate::f32::dot,
    axpy: scalar_axpy,
    softmax: crate::f32::softmax,
    attend: scalar_attend,
    silu_mul: crate::f32::silu_mul,
};

/// [`Kernels::attend`]: `(out, q, cache, scale, scores)`.
pub type AttendFn = fn(&mut [f32], &[f32], crate::f32::HeadCache<'_>, f32, &mut [f32]);

fn scalar_attend(
    out: &mut [f32],
    q: &[f32],
    cache: crate::f32::HeadCache<'_>,
    scale: f32,
    scores: &mut [f32],
) {
    let dot = crate::f32::dot;
    crate::f32::attend_body(out, q, cache, scale, scores, dot, scalar_axpy)
}

/// Whether an in-place kernel that takes `takes` from `min_tokens` tokens
/// on fits `w` (its type, whole blocks of columns, some rows) and `n`.
fn in_place_fits(
    takes: fn(crate::quant::TensorType) -> bool,
    min_tokens: usize,
    w: &WeightsRef<'_>,
    n: usize,
) -> bool {
    takes(w.ty()) && w.cols().is_multiple_of(crate::quant::QK) && w.rows() > 0 && n >= min_tokens
}

/// A [`ColsKernel::takes`] for kernels that take every weight type.
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "x86")),
    allow(dead_code)
)]
pub(crate) fn takes_all(_: crate::quant::TensorType) -> bool {
    true
}

/// [`Kernels::prepare_q8`] for kernels that need no arrangement.
pub(crate) fn no_prepare_q8(_: &WeightsRef<'_>, _: &Q8Activations) {}

/// Row-by-row reference: one scalar `dot_q8` per (row, token).
fn scalar_matmul_q8(w: &WeightsRef<'_>, rows: Range<usize>, x: &Q8Activations, out: &mut [f32]) {
    let n = x.n();
    for (r, o) in rows.zip(out.chunks_exact_mut(n.max(1))) {
        for (t, v) in o.iter_mut().enumerate() {
            *v = w.dot_row_q8(r, x.row(t));
        }
    }
}

/// Row-by-row reference: one scalar `dot` per (row, token).
fn scalar_matmul_f32(
    w: &WeightsRef<'_>,
    rows: Range<usize>,
    x: &F32Activations<'_>,
    out: &mut [f32],
) {
    let (cols, n, x) = (w.cols(), x.n(), x.data());
    for (r, o) in rows.zip(out.chunks_exact_mut(n.max(1))) {
        for (t, v) in o.iter_mut().enumerate() {
            *v = w.dot_row(r, &x[t * cols..(t + 1) * cols]);
        }
    }
}

fn scalar_axpy(y: &mut [f32], a: f32, x: &[f32]) {
    assert_eq!(y.len(), x.len(), "axpy: length mismatch");
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

impl Kernels {
    /// The table of `isa`, or `None` when this CPU cannot run it.
    pub fn for_isa(isa: Isa) -> Option<&'static Kernels> {
        if !isa.is_available() {
            return None;
        }
        match isa {
            Isa::Scalar => Some(&SCALAR),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Some(&crate::x86::AVX2),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 if crate::x86::avx512_vbmi_available() => Some(&crate::x86::AVX512),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Some(&crate::x86::AVX512_NO_VBMI),
            #[cfg(target_arch = "x86_64")]
            Isa::Amx if crate::x86::avx512_vbmi_available() => Some(&crate::x86::AMX),
            #[cfg(target_arch = "x86_64")]
            Isa::Amx => Some(&crate::x86::AMX_NO_VBMI),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => Some(&crate::aarch64::NEON),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// The matrix kernel for weights of `w`'s type with int8 activations,
    /// `None` for types without one (f32, f16).
    pub fn matmul_q8_for(&self, w: &WeightsRef<'_>) -> Option<MatmulQ8Fn> {
        use crate::quant::TensorType as T;
        match w.ty() {
            T::Q8 => Some(self.matmul_q8_q8),
            T::Q4 => Some(self.matmul_q4_q8),
            T::Q4m => Some(self.matmul_q4m_q8),
            T::Q4S24 => Some(self.matmul_q4s24_q8.unwrap_or(scalar_matmul_q8)),
            T::Q8S24 => Some(self.matmul_q8s24_q8.unwrap_or(scalar_matmul_q8)),
            _ => None,
        }
    }

    /// The in-place f32-input kernel for `w` and `n` tokens, where the tier
    /// has one that takes `w`'s type and shape at that many tokens.
    pub fn f32_cols_for(&self, w: &WeightsRef<'_>, n: usize) -> Option<ColsKernel> {
        let c = self.matmul_f32_cols?;
        in_place_fits(c.takes, c.min_tokens, w, n).then_some(c)
    }

    /// The in-place int8 kernel for `w` and `n` tokens, as
    /// [`Kernels::f32_cols_for`].
    pub fn q8_cols_for(&self, w: &WeightsRef<'_>, n: usize) -> Option<Q8ColsKernel> {
        let c = self.matmul_q8_cols?;
        in_place_fits(c.takes, c.min_tokens, w, n).then_some(c)
    }

    /// Whether weights of type `ty` should take int8 activations on this
    /// tier: every dense quantized type, and a 2:4 sparse type only where
    /// it has a SIMD int8 kernel (its scalar one is slower than its SIMD
    /// f32-input kernels).
    pub fn int8_for(&self, ty: crate::quant::TensorType) -> bool {
        use crate::quant::TensorType as T;
        match ty {
            T::Q4S24 => self.matmul_q4s24_q8.is_some(),
            T::Q8S24 => self.matmul_q8s24_q8.is_some(),
            t => t.is_quantized(),
        }
    }
}

static ACTIVE: OnceLock<&'static Kernels> = OnceLock::new();

/// Why `MICROLLM_ISA` could not be honoured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsaError(pub String);

impl fmt::Display for IsaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for IsaError {}

/// The tier `MICROLLM_ISA` asks for, or the best available when it is
/// unset or empty.
pub fn requested() -> Result<Isa, IsaError> {
    match std::env::var("MICROLLM_ISA") {
        Ok(v) if !v.is_empty() => {
            let isa = Isa::from_name(&v).ok_or_else(|| {
                IsaError(format!(
                    "MICROLLM_ISA={v} is not a tier; use one of scalar, avx2, avx512, amx, neon"
                ))
            })?;
            if !isa.is_available() {
                return Err(IsaError(format!(
                    "MICROLLM_ISA={v}: this CPU (or build) cannot run {v}; available: {}",
                    Isa::available()
                        .iter()
                        .map(|i| i.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            Ok(isa)
        }
        _ => Ok(Isa::best()),
    }
}

/// Chooses the tier once (see [`requested`]). Call it early to turn a bad
/// `MICROLLM_ISA` into an error; [`kernels`] falls back to the best tier.
pub fn init() -> Result<&'static Kernels, IsaError> {
    let isa = requested()?;
    let k = Kernels::for_isa(isa).unwrap_or(&SCALAR);
    Ok(*ACTIVE.get_or_init(|| k))
}

/// The process-wide kernel table.
#[inline]
pub fn kernels() -> &'static Kernels {
    ACTIVE.get_or_init(|| {
        let isa = requested().unwrap_or_else(|_| Isa::best());
        Kernels::for_isa(isa).unwrap_or(&SCALAR)
    })
}
