//! AVX-512 (F, BW, VL, VNNI) kernels: 512-bit int8 matrix kernels of
//! their own (below), and the f32 bodies of [`super::avx2`] compiled with
//! the wider feature set.
//!
//! The AVX-512 intrinsics and `target_feature` names are stable since Rust
//! 1.89, the workspace's minimum.

// Index loops over small register arrays read closest to the math here.
#![allow(clippy::needless_range_loop)]

use super::avx2;
use crate::pool::Columns;
use crate::quant::{BlockQ8, F32Activations, Planes, Q8Activations, WeightsRef};
use std::arch::x86_64::*;
use std::ops::Range;

/// Compiles the generic bodies for AVX-512 (with AVX2, FMA and F16C; see
/// [`super::tier_fn`]).
macro_rules! avx512_fn {
    ($($t:tt)*) => {
        super::tier_fn!("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", "crate::x86::AVX512"; $($t)*);
    };
}

avx512_fn!(fn f32_imp(w: &WeightsRef<'_>, rows: Range<usize>, x: &[f32], n: usize, out: &mut [f32])
    => avx2::matmul_f32::<4, 5>(w, rows, x, n, out));
avx512_fn!(entry
    /// `Σ a·b`.
    fn dot(a: &[f32], b: &[f32]) -> f32 => avx2::dot_f32(a, b));
avx512_fn!(entry
    /// `y += a·x`.
    fn axpy(y: &mut [f32], a: f32, x: &[f32]) => avx2::axpy_f32(y, a, x));
avx512_fn!(entry
    /// One query's attention over a cache, the sums in 512-bit registers.
    fn attend(out: &mut [f32], q: &[f32], cache: crate::f32::HeadCache<'_>, scale: f32, scores: &mut [f32])
        => avx2::attend_regs::<__m512>(out, q, cache, scale, scores));

avx2::f32_lanes!(
    __m512,
    16,
    _mm512_setzero_ps,
    _mm512_set1_ps,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_fmadd_ps,
    _mm512_reduce_add_ps
);
avx512_fn!(entry
    /// Softmax, bit-identical to the scalar tier.
    fn softmax(x: &mut [f32]) => crate::f32::softmax_body(x));
avx512_fn!(entry
    /// SiLU·mul, bit-identical to the scalar tier.
    fn silu_mul(gate: &mut [f32], up: &[f32]) => crate::f32::silu_mul_body(gate, up));
avx512_fn!(entry
    /// Activations to int8 blocks, bit-identical to the scalar tier.
    fn quantize(x: &[f32], q: &mut [BlockQ8], s: &mut [f32], sums: &mut [i32]) => avx2::quantize_q8(x, q, s, sums));

/// The table entries of the 512-bit int8 kernel, one per weight type.
macro_rules! int8_entry {
    ($name:ident, $wt:expr, $doc:literal) => {
        #[doc = $doc]
        pub(crate) fn $name(
            w: &WeightsRef<'_>,
            rows: Range<usize>,
            x: &Q8Activations,
            out: &mut [f32],
        ) {
            // SAFETY: only reachable through `crate::x86::AVX512`, handed
            // out after avx512_available(); the kernel checks lengths and
            // planes.
            unsafe { int8_512($wt, w, rows, x, out) }
        }
    };
}

int8_entry!(matmul_q8_q8, Wt::Q8, "q8 weights × int8 activations.");
int8_entry!(matmul_q4_q8, Wt::Q4, "q4 weights × int8 activations.");
int8_entry!(matmul_q4m_q8, Wt::Q4m, "q4m weights × int8 activations.");

/// Any weights × f32 activations.
pub(crate) fn matmul_f32_entry(
    w: &WeightsRef<'_>,
    rows: Range<usize>,
    x: &F32Activations<'_>,
    out: &mut [f32],
) {
    let (x, n) = (x.data(), x.n());
    match w.planes() {
        // SAFETY: only reachable through `crate::x86::AVX512`, handed out
        // after avx512_available(); the kernel checks lengths.
        Planes::Q4 { .. } | Planes::Q8 { .. } if n == 1 => unsafe { f32_decode(w, rows, x, out) },
        // SAFETY: as above.
        Planes::F32(_) | Planes::F16(_) | Planes::Q4 { .. } | Planes::Q8 { .. }
            if n > 1 && w.cols().is_multiple_of(16) =>
        unsafe { f32_prefill(w, rows, x, n, out) },
        // SAFETY: as above.
        _ => unsafe { f32_imp(w, rows, x, n, out) },
    }
}

// ---------------------------------------------------------------------------
// 512-bit int8 kernels: two blocks per `vpdpbusd`, no horizontal sums.
//
// One 512-bit register holds two blocks (A, B) of weights. For q8 they are
// the 64 bytes as stored (lanes 0–7 block A, 8–15 block B). For q4 the 32
// bytes of nibbles split into low and high halves give [A_lo, B_lo, A_hi,
// B_hi] (16 bytes each), and the activations are stored once per call in
// the same order, so the weights need no shuffle. `vpdpbusd` leaves in each
// 32-bit lane a partial sum of one block; the lanes are converted to f32
// and multiplied by that block's `d_w·d_a`, which one `vpermps` spreads
// from a register holding the products for 16 blocks. The unsigned weights
// (nibbles 0..15, or q8 + 128) carry an offset per block that is removed
// in integers with a per-lane `offset·Σa` computed once per call.
// ---------------------------------------------------------------------------

/// Which weight type a 512-bit kernel body handles.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wt {
    Q8,
    Q4,
    Q4m,
}

/// Activations of `n` tokens laid out for the 512-bit kernels.
struct Prep512 {
    /// Per token, per pair of blocks: 64 bytes in the weights' lane order.
    q: Vec<__m512i>,
    /// Per token, per pair: each lane's `−offset · Σa` over its 4 bytes,
    /// minus the part of the unsigned weights' product that is not the
    /// weights'.
    off: Vec<__m512i>,
    /// Per token, per group of 16 blocks: `d_a` (zero past the last block).
    d: Vec<__m512>,
    /// Per token, per group of 16 blocks: `d_a·Σa` (zero past the end).
    ds: Vec<__m512>,
    /// Pairs per row.
    np: usize,
    /// Groups of 16 blocks per row.
    ng: usize,
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn prep512(x: &Q8Activations, wt: Wt) -> Prep512 {
    let n = x.n();
    let nb = x.cols() / 32;
    let np = nb.div_ceil(2);
    let ng = nb.div_ceil(16);
    let mut q = Vec::with_capacity(n * np);
    let mut off = Vec::with_capacity(n * np);
    let offset = match wt {
        Wt::Q8 => _mm512_set1_epi8(-128), // 0x80 = 128 as unsigned
        Wt::Q4 => _mm512_set1_epi8(8),
        Wt::Q4m => _mm512_setzero_si512(),
    };
    let mut d = Vec::with_capacity(n * ng);
    let mut ds = Vec::with_capacity(n * ng);
    for t in 0..n {
        let row = x.row(t);
        for p in 0..np {
            let mut bytes = [0i8; 64];
            for (k, b) in [2 * p, 2 * p + 1].into_iter().enumerate() {
                if b >= nb {
                    continue;
                }
                let qs = &row.quants[b].qs;
                if wt == Wt::Q8 {
                    bytes[32 * k..32 * k + 32].copy_from_slice(qs);
                } else {
                    // [A_lo, B_lo, A_hi, B_hi]
                    bytes[16 * k..16 * k + 16].copy_from_slice(&qs[..16]);
                    bytes[32 + 16 * k..32 + 16 * k + 16].copy_from_slice(&qs[16..]);
                }
            }
            // SAFETY: reads 64 bytes from a 64-byte array.
            let a = _mm512_loadu_si512(bytes.as_ptr() as *const _);
            q.push(a);
            // Negated, so that `vpdpbusd` starts from it.
            let o = _mm512_dpbusd_epi32(_mm512_setzero_si512(), offset, a);
            off.push(_mm512_sub_epi32(_mm512_setzero_si512(), o));
        }
        for g in 0..ng {
            let mut dv = [0.0f32; 16];
            let mut sv = [0.0f32; 16];
            for i in 0..16 {
                let b = g * 16 + i;
                if b < nb {
                    dv[i] = row.scales[b];
                    sv[i] = row.scales[b] * row.sums[b] as f32;
                }
            }
            // SAFETY: 16 floats from 16-float arrays.
            d.push(_mm512_loadu_ps(dv.as_ptr()));
            ds.push(_mm512_loadu_ps(sv.as_ptr()));
        }
    }
    Prep512 {
        q,
        off,
        d,
        ds,
        np,
        ng,
    }
}

/// The lane → block-of-16 index vectors for pair `p` of a group.
#[inline(always)]
unsafe fn lane_idx(wt: Wt, p: usize) -> __m512i {
    let (a, b) = (2 * p as i32, 2 * p as i32 + 1);
    if wt == Wt::Q8 {
        _mm512_setr_epi32(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b)
    } else {
        _mm512_setr_epi32(a, a, a, a, b, b, b, b, a, a, a, a, b, b, b, b)
    }
}

/// The weights of pair `p` (blocks `2p`, `2p+1`) of row `r` as 64 unsigned
/// bytes in the lane order of [`prep512`]; a missing second block is zero.
#[inline(always)]
unsafe fn load_pair(wt: Wt, quants: *const u8, nb: usize, r: usize, p: usize) -> __m512i {
    let full = 2 * p + 1 < nb;
    let ptr = quants.add(pair_at(wt, nb, r, p));
    match wt {
        Wt::Q8 => {
            let v = if full {
                _mm512_loadu_si512(ptr as *const _)
            } else {
                _mm512_maskz_loadu_epi8(0xFFFF_FFFF, ptr as *const i8)
            };
            // Bias to unsigned: w + 128 (the bias is removed at the end);
            // the zero-masked half becomes 128 against zero activations.
            _mm512_xor_si512(v, _mm512_set1_epi8(-128))
        }
        _ => {
            let v = if full {
                _mm256_loadu_si256(ptr as *const __m256i)
            } else {
                _mm256_maskz_loadu_epi8(0xFFFF, ptr as *const i8)
            };
            let m = _mm256_set1_epi8(0x0F);
            let lo = _mm256_and_si256(v, m);
            let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m);
            _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1)
        }
    }
}

/// Byte offset of row `r`'s block pair `p` in the quants plane.
#[inline(always)]
fn pair_at(wt: Wt, nb: usize, r: usize, p: usize) -> usize {
    let block = if wt == Wt::Q8 { 32 } else { 16 };
    (r * nb + 2 * p) * block
}

/// Up to 16 f16 values of a plane starting at block `b0`, as f32; lanes
/// past `count` are zero.
#[inline(always)]
unsafe fn load_f16x16(plane: *const u16, b0: usize, count: usize) -> __m512 {
    let h = if count >= 16 {
        _mm256_loadu_si256(plane.add(b0) as *const __m256i)
    } else {
        _mm256_maskz_loadu_epi16(((1u32 << count) - 1) as u16, plane.add(b0) as *const i16)
    };
    _mm512_cvtph_ps(h)
}

/// Rows `r..r + R` against tokens `t0..t0 + T`: `R = 4, T = 1` for decode
/// (four rows share each activation load), `R = 1, T = 4` for prompts (one
/// unpacked weight pair serves four tokens). With each pair of a row it
/// reads, it asks for the line `pf` bytes on (0: none).
// Eight scalars of one hot loop; a struct for them would only be unpacked.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn int8_512_block<const R: usize, const T: usize>(
    wt: Wt,
    w: (*const u8, *const u16, *const u16),
    nb: usize,
    p: &Prep512,
    idx: &[__m512i; 8],
    r: usize,
    t0: usize,
    pf: usize,
) -> [[f32; T]; R] {
    let (quants, scales, mins) = w;
    // Two independent sums per (row, token), even and odd pairs: one FMA
    // chain would wait on the FMA latency at every pair.
    let mut acc0 = [[_mm512_setzero_ps(); T]; R];
    let mut acc1 = [[_mm512_setzero_ps(); T]; R];
    let ti = |t: usize, g: usize| (t0 + t) * p.ng + g;
    for g in 0..p.ng {
        let b0 = g * 16;
        let count = (nb - b0).min(16);
        let mut c = [[_mm512_setzero_ps(); T]; R];
        for k in 0..R {
            let dw = load_f16x16(scales, (r + k) * nb + b0, count);
            for t in 0..T {
                c[k][t] = _mm512_mul_ps(dw, *p.d.get_unchecked(ti(t, g)));
            }
            if wt == Wt::Q4m {
                // q4m's minimum: m·(d_a·Σa) per block.
                let dm = load_f16x16(mins, (r + k) * nb + b0, count);
                for t in 0..T {
                    acc1[k][t] = _mm512_fmadd_ps(dm, *p.ds.get_unchecked(ti(t, g)), acc1[k][t]);
                }
            }
        }
        for pp in 0..count.div_ceil(2) {
            let pi = g * 8 + pp;
            let ai = |t: usize| (t0 + t) * p.np + pi;
            let a: [__m512i; T] = std::array::from_fn(|t| *p.q.get_unchecked(ai(t)));
            let off: [__m512i; T] = std::array::from_fn(|t| *p.off.get_unchecked(ai(t)));
            for k in 0..R {
                // One request per pair, also for q4's half-line pairs:
                // its rows are not line-aligned, and asking once per line
                // measured slower (143.6 against 151 tok/s).
                if pf != 0 {
                    super::prefetch_line(quants.wrapping_add(pair_at(wt, nb, r + k, pi) + pf));
                }
                let wv = load_pair(wt, quants, nb, r + k, pi);
                for t in 0..T {
                    // Exact integer block sums: Σ w_u·a − offset·Σa.
                    let isum = _mm512_dpbusd_epi32(off[t], wv, a[t]);
                    let sc = _mm512_permutexvar_ps(idx[pp], c[k][t]);
                    let v = _mm512_cvtepi32_ps(isum);
                    if pp % 2 == 0 {
                        acc0[k][t] = _mm512_fmadd_ps(v, sc, acc0[k][t]);
                    } else {
                        acc1[k][t] = _mm512_fmadd_ps(v, sc, acc1[k][t]);
                    }
                }
            }
        }
    }
    std::array::from_fn(|k| {
        std::array::from_fn(|t| _mm512_reduce_add_ps(_mm512_add_ps(acc0[k][t], acc1[k][t])))
    })
}

/// The table's [`crate::dispatch::Kernels::prepare_q8`]: `x` in the lane
/// order of `w`'s type, built on the calling thread.
pub(crate) fn prepare_q8(w: &WeightsRef<'_>, x: &Q8Activations) {
    use crate::quant::TensorType as T;
    let wt = match w.ty() {
        T::Q8 => Wt::Q8,
        T::Q4 => Wt::Q4,
        T::Q4m => Wt::Q4m,
        T::Q4S24 | T::Q8S24 if x.cols() == w.cols() => {
            return crate::quant::sparse::x86::prepare_s24_q8(x);
        }
        _ => return,
    };
    if x.cols() != w.cols() {
        return; // the product asserts on it
    }
    x.layout(wt as usize, || {
        // SAFETY: only reachable through `crate::x86::AVX512` (and AMX, its
        // superset), handed out after avx512_available().
        unsafe { prep512(x, wt) }
    });
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn int8_512(
    wt: Wt,
    w: &WeightsRef<'_>,
    rows: Range<usize>,
    x: &Q8Activations,
    out: &mut [f32],
) {
    let n = x.n();
    let nb = w.cols() / 32;
    assert!(rows.end <= w.rows(), "matmul: rows out of range");
    assert_eq!(x.cols(), w.cols(), "matmul: x is not (n, cols)");
    assert_eq!(out.len(), rows.len() * n, "matmul: out is not (rows, n)");
    let planes = match (wt, w.planes()) {
        (Wt::Q8, Planes::Q8 { quants, scales }) => (
            quants.as_ptr() as *const u8,
            scales.as_ptr() as *const u16,
            std::ptr::null(),
        ),
        (Wt::Q4, Planes::Q4 { quants, scales }) => (
            quants.as_ptr() as *const u8,
            scales.as_ptr() as *const u16,
            std::ptr::null(),
        ),
        (
            Wt::Q4m,
            Planes::Q4m {
                quants,
                scales,
                mins,
            },
        ) => (
            quants.as_ptr() as *const u8,
            scales.as_ptr() as *const u16,
            mins.as_ptr() as *const u16,
        ),
        _ => panic!(
            "matmul_q8: the {} kernel got {} weights",
            match wt {
                Wt::Q8 => "q8",
                Wt::Q4 => "q4",
                Wt::Q4m => "q4m",
            },
            w.ty()
        ),
    };
    if n == 0 || rows.is_empty() || nb == 0 {
        out.fill(0.0);
        return;
    }
    // Built once per activations and weight kind, shared by all tasks
    // (by `prepare_q8` before they start, when called through the table).
    let p = x.layout(wt as usize, || {
        // SAFETY: this function is compiled with the same features.
        unsafe { prep512(x, wt) }
    });
    let idx: [__m512i; 8] = std::array::from_fn(|pp| lane_idx(wt, pp));
    if n == 1 {
        let m = rows.len();
        let mut i = 0;
        let (_, qrow) = w.value_rows();
        // The next tile's same row, and PREFETCH_SPREAD on (see there).
        let pf = 4 * qrow + crate::x86::PREFETCH_SPREAD;
        while i + 4 <= m {
            let res = int8_512_block::<4, 1>(wt, planes, nb, p, &idx, rows.start + i, 0, pf);
            for k in 0..4 {
                out[i + k] = res[k][0];
            }
            i += 4;
        }
        while i < m {
            out[i] = int8_512_block::<1, 1>(wt, planes, nb, p, &idx, rows.start + i, 0, 0)[0][0];
            i += 1;
        }
        return;
    }
    for (i, r) in rows.enumerate() {
        let o = &mut out[i * n..(i + 1) * n];
        let mut t0 = 0;
        while t0 + 4 <= n {
            o[t0..t0 + 4]
                .copy_from_slice(&int8_512_block::<1, 4>(wt, planes, nb, p, &idx, r, t0, 0)[0]);
            t0 += 4;
        }
        while t0 < n {
            o[t0] = int8_512_block::<1, 1>(wt, planes, nb, p, &idx, r, t0, 0)[0][0];
            t0 += 1;
        }
    }
}

// ---------------------------------------------------------------------------
// Decode with f32 activations: the reference accuracy at memory speed.
//
// Each block of 32 weights becomes two registers of 16 f32: q8 by sign
// extension and conversion, q4 by looking its nibbles up in a 16-entry
// table of `n − 8` (`vpermps`), so the result is `d·Σ(n − 8)·x` as the
// scalar twin forms it. Four rows share the activation loads.
// ---------------------------------------------------------------------------

/// The 32 weights of block `b` as f32 (before the scale).
#[inline(always)]
unsafe fn block_f32(q4: bool, quants: *const u8, b: usize, lut: __m512) -> (__m512, __m512) {
    if q4 {
        let v = _mm_loadu_si128(quants.add(b * 16) as *const __m128i);
        let m = _mm_set1_epi8(0x0F);
        let lo = _mm512_cvtepu8_epi32(_mm_and_si128(v, m));
        let hi = _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(v, 4), m));
        (
            _mm512_permutexvar_ps(lo, lut),
            _mm512_permutexvar_ps(hi, lut),
        )
    } else {
        let p = quants.add(b * 32);
        let lo = _mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i));
        let hi = _mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(16) as *const __m128i));
        (_mm512_cvtepi32_ps(lo), _mm512_cvtepi32_ps(hi))
    }
}

/// Rows `r..r + R` against one token of f32 activations.
#[inline(always)]
unsafe fn f32_decode_rows<const R: usize>(
    q4: bool,
    quants: *const u8,
    scales: *const u16,
    nb: usize,
    x: &[f32],
    r: usize,
) -> [f32; R] {
    let lut = _mm512_setr_ps(
        -8.0, -7.0, -6.0, -5.0, -4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0,
    );
    let mut acc = [_mm512_setzero_ps(); R];
    let xp = x.as_ptr();
    // The rows' scales, 16 blocks at a time, converted with one vcvtph2ps.
    let mut ds = [[0.0f32; 16]; R];
    for g in 0..nb.div_ceil(16) {
        let b0 = g * 16;
        let count = (nb - b0).min(16);
        for k in 0..R {
            _mm512_storeu_ps(
                ds[k].as_mut_ptr(),
                load_f16x16(scales, (r + k) * nb + b0, count),
            );
        }
        for i in 0..count {
            let b = b0 + i;
            let x0 = _mm512_loadu_ps(xp.add(b * 32));
            let x1 = _mm512_loadu_ps(xp.add(b * 32 + 16));
            for k in 0..R {
                let (w0, w1) = block_f32(q4, quants, (r + k) * nb + b, lut);
                let s = _mm512_fmadd_ps(w1, x1, _mm512_mul_ps(w0, x0));
                acc[k] = _mm512_fmadd_ps(s, _mm512_set1_ps(ds[k][i]), acc[k]);
            }
        }
    }
    std::array::from_fn(|k| _mm512_reduce_add_ps(acc[k]))
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn f32_decode(w: &WeightsRef<'_>, rows: Range<usize>, x: &[f32], out: &mut [f32]) {
    let nb = w.cols() / 32;
    assert!(rows.end <= w.rows(), "matmul: rows out of range");
    assert_eq!(x.len(), w.cols(), "matmul: x is not (1, cols)");
    assert_eq!(out.len(), rows.len(), "matmul: out is not (rows, 1)");
    let (q4, quants, scales) = match w.planes() {
        Planes::Q4 { quants, scales } => (
            true,
            quants.as_ptr() as *const u8,
            scales.as_ptr() as *const u16,
        ),
        Planes::Q8 { quants, scales } => (
            false,
            quants.as_ptr() as *const u8,
            scales.as_ptr() as *const u16,
        ),
        _ => unreachable!("f32_decode: only q4 and q8"),
    };
    let m = rows.len();
    let (q, qrow) = w.value_rows();
    let mut i = 0;
    while i + 4 <= m {
        let at = (rows.start + i) * qrow;
        crate::x86::prefetch(q.wrapping_add(at), 4 * qrow, crate::x86::PREFETCH_AHEAD);
        out[i..i + 4].copy_from_slice(&f32_decode_rows::<4>(
            q4,
            quants,
            scales,
            nb,
            x,
            rows.start + i,
        ));
        i += 4;
    }
    while i < m {
        out[i] = f32_decode_rows::<1>(q4, quants, scales, nb, x, rows.start + i)[0];
        i += 1;
    }
}

// ---------------------------------------------------------------------------
// Prefill with f32 activations: weights dequantized four rows at a time
// (once per call), then a 4 × 6 tile of 512-bit dot products: 24
// accumulators, six activation registers and one weight register of the 32.
// ---------------------------------------------------------------------------

/// `R` rows (pointers to `cols` f32 each) against tokens `t0..t0 + T`.
#[inline(always)]
unsafe fn f32_tile512<const R: usize, const T: usize>(
    w: [*const f32; R],
    x: *const f32,
    cols: usize,
    t0: usize,
) -> [[f32; T]; R] {
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    let mut c = 0;
    while c < cols {
        let a: [__m512; T] = std::array::from_fn(|t| _mm512_loadu_ps(x.add((t0 + t) * cols + c)));
        for r in 0..R {
            let wv = _mm512_loadu_ps(w[r].add(c));
            for t in 0..T {
                acc[r][t] = _mm512_fmadd_ps(wv, a[t], acc[r][t]);
            }
        }
        c += 16;
    }
    std::array::from_fn(|r| std::array::from_fn(|t| _mm512_reduce_add_ps(acc[r][t])))
}

/// `R` rows against all `n` tokens, into `out[r·n + t]`.
#[inline(always)]
unsafe fn f32_rows512<const R: usize>(
    w: [*const f32; R],
    x: &[f32],
    n: usize,
    cols: usize,
    out: &mut [f32],
) {
    const T: usize = 6;
    let mut t0 = 0;
    while t0 + T <= n {
        let res = f32_tile512::<R, T>(w, x.as_ptr(), cols, t0);
        for r in 0..R {
            out[r * n + t0..r * n + t0 + T].copy_from_slice(&res[r]);
        }
        t0 += T;
    }
    while t0 < n {
        let res = f32_tile512::<R, 1>(w, x.as_ptr(), cols, t0);
        for r in 0..R {
            out[r * n + t0] = res[r][0];
        }
        t0 += 1;
    }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn f32_prefill(
    w: &WeightsRef<'_>,
    rows: Range<usize>,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) {
    let cols = w.cols();
    let m = rows.len();
    assert!(rows.end <= w.rows(), "matmul: rows out of range");
    assert_eq!(cols % 16, 0, "f32_prefill: cols must be a multiple of 16");
    assert_eq!(x.len(), n * cols, "matmul: x is not (n, cols)");
    assert_eq!(out.len(), m * n, "matmul: out is not (rows, n)");
    const R: usize = 4;
    let f32_rows = match w.planes() {
        Planes::F32(v) => Some(v),
        _ => None,
    };
    let mut buf = vec![0f32; if f32_rows.is_some() { 0 } else { R * cols }];
    let mut i = 0;
    while i < m {
        let rt = (m - i).min(R);
        let ptrs: [*const f32; R] = match f32_rows {
            Some(v) => {
                std::array::from_fn(|k| v.as_ptr().add((rows.start + i + k.min(rt - 1)) * cols))
            }
            None => {
                for k in 0..rt {
                    avx2::dequant_row(w, rows.start + i + k, &mut buf[k * cols..(k + 1) * cols]);
                }
                std::array::from_fn(|k| buf.as_ptr().add(k.min(rt - 1) * cols))
            }
        };
        let o = &mut out[i * n..(i + rt) * n];
        if rt == R {
            f32_rows512::<R>(ptrs, x, n, cols, o);
        } else {
            for k in 0..rt {
                f32_rows512::<1>([ptrs[k]], x, n, cols, &mut o[k * n..(k + 1) * n]);
            }
        }
        i += rt;
    }
}

/// Weight rows per panel: two registers of 16 lanes.
const PANEL_ROWS: usize = 32;

/// Columns per pass over a panel: 256 columns of 32 rows (32 KiB) stay in
/// L1 while every token passes over them.
const PANEL_COLS: usize = 256;

/// Tokens per tile: 12 tokens × 2 registers of sums, with the two weight
/// registers, fill 26 of the 32 registers.
const PANEL_TOKENS: usize = 12;

thread_local! {
    /// A task's panel (32 dequantized rows, transposed) and one
    /// dequantized row, kept between tasks so that a prompt does not
    /// allocate (and fault in) them per task.
    static PANEL: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Prompts written in place, any weights × f32 activations (see
/// [`crate::dispatch::ColsKernel`]): rows dequantized 32 at a time into a
/// transposed panel, then per column one load of the 32 rows and one
/// broadcast FMA per token, each register 16 weight rows of one token's
/// output row. No transpose afterwards, and the FMAs need nothing else.
pub(crate) fn matmul_f32_cols(w: &WeightsRef<'_>, x: &F32Activations<'_>, out: Columns<'_>) {
    assert!(out.cols().end <= w.rows(), "matmul: rows out of range");
    assert_eq!(out.n(), x.n(), "matmul: out has other tokens than x");
    assert_eq!(x.cols(), w.cols(), "matmul: x is not (n, cols)");
    // SAFETY: only reachable through `crate::x86::AVX512` (and the tables
    // built on it), handed out after `avx512_available()`. Shapes are
    // checked above; stores go through `Columns::row_mut`'s bounds.
    unsafe { f32_cols(w, x, out) }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn f32_cols(w: &WeightsRef<'_>, x: &F32Activations<'_>, mut out: Columns<'_>) {
    let (n, cols) = (x.n(), w.cols());
    let rows = out.cols();
    PANEL.with(|p| {
        let (panel, row) = &mut *p.borrow_mut();
        row.resize(cols, 0.0);
        panel.resize(cols * PANEL_ROWS, 0.0);
        for g0 in (0..rows.len()).step_by(PANEL_ROWS) {
            let valid = (rows.len() - g0).min(PANEL_ROWS);
            for ri in 0..PANEL_ROWS {
                if ri < valid {
                    avx2::dequant_row(w, rows.start + g0 + ri, row);
                } else {
                    row.fill(0.0);
                }
                for (c, &v) in row.iter().enumerate() {
                    panel[c * PANEL_ROWS + ri] = v;
                }
            }
            for k0 in (0..cols).step_by(PANEL_COLS) {
                let kc = (cols - k0).min(PANEL_COLS);
                let pk = &panel[k0 * PANEL_ROWS..(k0 + kc) * PANEL_ROWS];
                let mut t0 = 0;
                while t0 < n {
                    let tt = (n - t0).min(PANEL_TOKENS);
                    let xs = &x.data()[t0 * cols + k0..];
                    let (o, first) = (&mut out, k0 == 0);
                    match tt {
                        12 => panel_tile::<12>(pk, xs, cols, o, t0, g0, valid, first),
                        11 => panel_tile::<11>(pk, xs, cols, o, t0, g0, valid, first),
                        10 => panel_tile::<10>(pk, xs, cols, o, t0, g0, valid, first),
                        9 => panel_tile::<9>(pk, xs, cols, o, t0, g0, valid, first),
                        8 => panel_tile::<8>(pk, xs, cols, o, t0, g0, valid, first),
                        7 => panel_tile::<7>(pk, xs, cols, o, t0, g0, valid, first),
                        6 => panel_tile::<6>(pk, xs, cols, o, t0, g0, valid, first),
                        5 => panel_tile::<5>(pk, xs, cols, o, t0, g0, valid, first),
                        4 => panel_tile::<4>(pk, xs, cols, o, t0, g0, valid, first),
                        3 => panel_tile::<3>(pk, xs, cols, o, t0, g0, valid, first),
                        2 => panel_tile::<2>(pk, xs, cols, o, t0, g0, valid, first),
                        _ => panel_tile::<1>(pk, xs, cols, o, t0, g0, valid, first),
                    }
                    t0 += tt;
                }
            }
        }
    });
}

/// Tokens `t0..t0 + T` × the panel's columns `pk` (32 rows each) into
/// view columns `c0..c0 + valid`: started from 0 on the first pass
/// (`first`), else from what earlier passes stored.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn panel_tile<const T: usize>(
    pk: &[f32],
    xs: &[f32],
    cols: usize,
    out: &mut Columns<'_>,
    t0: usize,
    c0: usize,
    valid: usize,
    first: bool,
) {
    let kc = pk.len() / PANEL_ROWS;
    // Token T − 1's columns lie inside `xs`, so every load below does.
    assert!(
        xs.len() >= (T - 1) * cols + kc,
        "panel: tokens out of range"
    );
    let masks: [__mmask16; 2] = std::array::from_fn(|h| {
        let lanes = valid.saturating_sub(16 * h).min(16);
        ((1u32 << lanes) - 1) as __mmask16
    });
    let mut acc = [[_mm512_setzero_ps(); 2]; T];
    if !first {
        for t in 0..T {
            let row = out.row_mut(t0 + t)[c0..c0 + valid].as_ptr();
            for h in 0..2 {
                // A mask of 0 (no second register) reads nothing.
                acc[t][h] = _mm512_maskz_loadu_ps(masks[h], row.wrapping_add(16 * h));
            }
        }
    }
    let (wp, xp) = (pk.as_ptr(), xs.as_ptr());
    for c in 0..kc {
        let w0 = _mm512_loadu_ps(wp.add(c * PANEL_ROWS));
        let w1 = _mm512_loadu_ps(wp.add(c * PANEL_ROWS + 16));
        for t in 0..T {
            let xv = _mm512_set1_ps(*xp.add(t * cols + c));
            acc[t][0] = _mm512_fmadd_ps(w0, xv, acc[t][0]);
            acc[t][1] = _mm512_fmadd_ps(w1, xv, acc[t][1]);
        }
    }
    for t in 0..T {
        let row = out.row_mut(t0 + t)[c0..c0 + valid].as_mut_ptr();
        for h in 0..2 {
            // Lanes past `valid` are padding rows; the mask keeps the
            // store inside the row's slice.
            _mm512_mask_storeu_ps(row.wrapping_add(16 * h), masks[h], acc[t][h]);
        }
    }
}
