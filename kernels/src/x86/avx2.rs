//! AVX2 + FMA (+ F16C) kernels, and the generic kernel bodies the AVX-512
//! tier instantiates with its own integer product ([`IntDot`]).
//!
//! Every generic body here is `#[inline(always)]` and `unsafe`: it is only
//! ever inlined into a `#[target_feature]` function of a tier, which the
//! tier's table reaches after the CPU check.
//!
//! # The int8 layout
//! The integer kernels work on groups of 8 blocks transposed at dword
//! granularity: vector `k` (0..8) of a group holds, in lane `j`, the 4
//! bytes `4k..4k+4` of block `P[j]` (`P = [0, 2, 4, 6, 1, 3, 5, 7]`, the
//! order two rounds of unpacks give). One `vpdpbusd` (or
//! `vpmaddubsw` + `vpmaddwd`) of weight vector `k` with activation vector
//! `k` then adds 4 products of each of the 8 blocks into that block's own
//! lane, and 8 of them give the 8 exact block sums in one register: no
//! horizontal reduction per block. The activations are transposed once per
//! call (shared by every row); a q4 group (128 packed bytes) is transposed
//! with 8 unpacks and its nibbles split with shifts and masks, whose byte
//! `4k..4k+4` of a block is exactly element `4k..4k+4`, and element
//! `16 + 4k..` in the high nibbles, i.e. vector `k + 4`.
//!
//! The block sums are then corrected in integers (q4: `−8·Σa`; biased q8:
//! `−128·Σa`), converted to f32 and multiplied by `d_w·d_a` as the scalar
//! kernels do, so every per-block term is the scalar one; only the order
//! of the final f32 sum differs.

#![allow(clippy::needless_range_loop)]

use crate::dispatch::SCALAR;
use crate::quant::{BlockQ8, F32Activations, Planes, Q8Activations, WeightsRef, QK};
use std::arch::x86_64::*;
use std::ops::Range;

/// Weight kinds of the int8 kernels (const generic parameter).
pub(crate) const Q8: u8 = 0;
/// q4 (`d·(n − 8)`).
pub(crate) const Q4: u8 = 1;
/// q4m (`d·n + m`).
pub(crate) const Q4M: u8 = 2;

/// Lane `j` of a transposed group holds block `P[j]`.
#[inline(always)]
unsafe fn lane_order() -> __m256i {
    _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7)
}

/// The integer dot product of a tier.
pub(crate) trait IntDot {
    /// q8 weights are stored biased (`w + 128`, unsigned) and multiplied
    /// with [`IntDot::dot_u`]; the bias is removed with `−128·Σa`.
    const Q8_BIASED: bool;
    /// `acc + Σ_{4 bytes} w·a` per dword, `w` unsigned (≤ 15 unless
    /// `Q8_BIASED`), `a` signed.
    unsafe fn dot_u(acc: __m256i, w: __m256i, a: __m256i) -> __m256i;
    /// `acc + Σ_{4 bytes} w·a` per dword, both signed (|w| ≤ 127); only
    /// used when not `Q8_BIASED`.
    unsafe fn dot_s(acc: __m256i, w: __m256i, a: __m256i) -> __m256i;
}

/// AVX2: `vpmaddubsw` then `vpmaddwd` with ones. No saturation: pairs are
/// at most `2·15·127` (q4) or `2·127·127 = 32258` (q8, sign trick).
pub(crate) struct Avx2Dot;

impl IntDot for Avx2Dot {
    const Q8_BIASED: bool = false;
    #[inline(always)]
    unsafe fn dot_u(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
        let p = _mm256_maddubs_epi16(w, a);
        _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)))
    }
    #[inline(always)]
    unsafe fn dot_s(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
        let p = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(a, w));
        _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)))
    }
}

#[inline(always)]
unsafe fn dot_w<const K: u8, D: IntDot>(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
    if K == Q8 && !D::Q8_BIASED {
        D::dot_s(acc, w, a)
    } else {
        D::dot_u(acc, w, a)
    }
}

/// Horizontal sum of 8 lanes.
#[inline(always)]
pub(crate) unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// The 4×(4 dwords) → (4 dwords)×8 transpose: `z[j]` holds dwords 0..4 of
/// blocks `2j` (low lane) and `2j + 1` (high lane); output `k` holds dword
/// `k` of the 8 blocks in the order `P`.
#[inline(always)]
unsafe fn net4(z: [__m256i; 4]) -> [__m256i; 4] {
    let t0 = _mm256_unpacklo_epi32(z[0], z[1]);
    let t1 = _mm256_unpackhi_epi32(z[0], z[1]);
    let t2 = _mm256_unpacklo_epi32(z[2], z[3]);
    let t3 = _mm256_unpackhi_epi32(z[2], z[3]);
    [
        _mm256_unpacklo_epi64(t0, t2),
        _mm256_unpackhi_epi64(t0, t2),
        _mm256_unpacklo_epi64(t1, t3),
        _mm256_unpackhi_epi64(t1, t3),
    ]
}

/// 8 q8 blocks (256 bytes at `p`) in the transposed layout.
#[inline(always)]
unsafe fn transpose_q8(p: *const u8) -> [__m256i; 8] {
    let lo = net4([ld2(p, 0), ld2(p, 64), ld2(p, 128), ld2(p, 192)]);
    let hi = net4([ld2(p, 16), ld2(p, 80), ld2(p, 144), ld2(p, 208)]);
    [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]]
}

/// 16 bytes at `p + o` (low lane) and at `p + o + 32` (high lane).
#[inline(always)]
unsafe fn ld2(p: *const u8, o: usize) -> __m256i {
    _mm256_loadu2_m128i(p.add(o + 32) as *const __m128i, p.add(o) as *const __m128i)
}

/// 8 q4 blocks (128 bytes at `p`) in the transposed layout, as unsigned
/// nibbles.
#[inline(always)]
unsafe fn transpose_q4(p: *const u8) -> [__m256i; 8] {
    let v = net4([
        _mm256_loadu_si256(p as *const __m256i),
        _mm256_loadu_si256(p.add(32) as *const __m256i),
        _mm256_loadu_si256(p.add(64) as *const __m256i),
        _mm256_loadu_si256(p.add(96) as *const __m256i),
    ]);
    let m = _mm256_set1_epi8(0x0F);
    let mut out = [m; 8];
    for k in 0..4 {
        out[k] = _mm256_and_si256(v[k], m);
        out[k + 4] = _mm256_and_si256(_mm256_srli_epi16(v[k], 4), m);
    }
    out
}

/// 8 f16 values at `p` as f32 in the order `P`.
#[inline(always)]
unsafe fn scales8(p: *const u16) -> __m256 {
    let v = _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i));
    _mm256_permutevar8x32_ps(v, lane_order())
}

/// Activations of one call in the transposed layout (token-major).
struct PrepQ8 {
    /// Groups per token.
    ng: usize,
    /// `n · ng · 8` vectors.
    q: Vec<__m256i>,
    /// `n · ng` activation scales (order `P`).
    d: Vec<__m256>,
    /// `n · ng` initial block sums: the integer correction (`−8·Σa` for
    /// q4, `−128·Σa` for biased q8, else 0).
    corr: Vec<__m256i>,
    /// `n · ng` values `d_a·Σa` (q4m's minimum term).
    ds: Vec<__m256>,
}

#[inline(always)]
unsafe fn prep<const K: u8, D: IntDot>(x: &Q8Activations) -> PrepQ8 {
    let n = x.n();
    let nb = x.cols() / QK;
    let ng = nb.div_ceil(8);
    let zi = _mm256_setzero_si256();
    let mut p = PrepQ8 {
        ng,
        q: Vec::with_capacity(n * ng * 8),
        d: Vec::with_capacity(n * ng),
        corr: Vec::with_capacity(n * ng),
        ds: Vec::with_capacity(n * ng),
    };
    let idx = lane_order();
    for t in 0..n {
        let row = x.row(t);
        for g in 0..ng {
            let b0 = g * 8;
            let cnt = (nb - b0).min(8);
            let (qv, dv, sv) = if cnt == 8 {
                (
                    transpose_q8(row.quants.as_ptr().add(b0) as *const u8),
                    _mm256_loadu_ps(row.scales.as_ptr().add(b0)),
                    _mm256_loadu_si256(row.sums.as_ptr().add(b0) as *const __m256i),
                )
            } else {
                let mut qb = [BlockQ8 { qs: [0; QK] }; 8];
                let mut db = [0f32; 8];
                let mut sb = [0i32; 8];
                qb[..cnt].copy_from_slice(&row.quants[b0..b0 + cnt]);
                db[..cnt].copy_from_slice(&row.scales[b0..b0 + cnt]);
                sb[..cnt].copy_from_slice(&row.sums[b0..b0 + cnt]);
                (
                    transpose_q8(qb.as_ptr() as *const u8),
                    _mm256_loadu_ps(db.as_ptr()),
                    _mm256_loadu_si256(sb.as_ptr() as *const __m256i),
                )
            };
            let dv = _mm256_permutevar8x32_ps(dv, idx);
            let sv = _mm256_permutevar8x32_epi32(sv, idx);
            p.q.extend_from_slice(&qv);
            p.d.push(dv);
            p.corr.push(if K == Q4 {
                _mm256_sub_epi32(zi, _mm256_slli_epi32(sv, 3))
            } else if K == Q8 && D::Q8_BIASED {
                _mm256_sub_epi32(zi, _mm256_slli_epi32(sv, 7))
            } else {
                zi
            });
            p.ds.push(_mm256_mul_ps(dv, _mm256_cvtepi32_ps(sv)));
        }
    }
    p
}

/// Raw plane pointers of a quantized matrix.
#[derive(Clone, Copy)]
struct QPlanes {
    q: *const u8,
    s: *const u16,
    m: *const u16,
    nb: usize,
}

impl QPlanes {
    fn of(w: &WeightsRef<'_>) -> Option<QPlanes> {
        let nb = w.cols() / QK;
        match w.planes() {
            Planes::Q8 { quants, scales } => Some(QPlanes {
                q: quants.as_ptr() as *const u8,
                s: scales.as_ptr() as *const u16,
                m: std::ptr::null(),
                nb,
            }),
            Planes::Q4 { quants, scales } => Some(QPlanes {
                q: quants.as_ptr() as *const u8,
                s: scales.as_ptr() as *const u16,
                m: std::ptr::null(),
                nb,
            }),
            Planes::Q4m {
                quants,
                scales,
                mins,
            } => Some(QPlanes {
                q: quants.as_ptr() as *const u8,
                s: scales.as_ptr() as *const u16,
                m: mins.as_ptr() as *const u16,
                nb,
            }),
            _ => None,
        }
    }
}

/// Group `g` of row `r`: the 8 weight vectors (q8 biased if the tier
/// wants it), the scales and (q4m) the minimums, in the order `P`; a
/// partial last group is padded with zero blocks and zero scales.
#[inline(always)]
unsafe fn unpack<const K: u8, D: IntDot>(
    w: QPlanes,
    r: usize,
    g: usize,
) -> ([__m256i; 8], __m256, __m256) {
    let bs = if K == Q8 { 32 } else { 16 };
    let b0 = r * w.nb + g * 8;
    let cnt = (w.nb - g * 8).min(8);
    let mut qb = [0u8; 256];
    let mut sb = [0u16; 8];
    let mut mb = [0u16; 8];
    let (qp, sp, mp) = if cnt == 8 {
        (w.q.add(b0 * bs), w.s.add(b0), w.m.wrapping_add(b0))
    } else {
        std::ptr::copy_nonoverlapping(w.q.add(b0 * bs), qb.as_mut_ptr(), cnt * bs);
        std::ptr::copy_nonoverlapping(w.s.add(b0), sb.as_mut_ptr(), cnt);
        if K == Q4M {
            std::ptr::copy_nonoverlapping(w.m.add(b0), mb.as_mut_ptr(), cnt);
        }
        (qb.as_ptr(), sb.as_ptr(), mb.as_ptr())
    };
    let mut v = if K == Q8 {
        transpose_q8(qp)
    } else {
        transpose_q4(qp)
    };
    if K == Q8 && D::Q8_BIASED {
        let b = _mm256_set1_epi8(-128);
        for x in &mut v {
            *x = _mm256_xor_si256(*x, b);
        }
    }
    let dw = scales8(sp);
    let dm = if K == Q4M {
        scales8(mp)
    } else {
        _mm256_setzero_ps()
    };
    (v, dw, dm)
}

/// Adds 8 blocks' terms to `acc`: `s·isum` (one rounding; the sum of a
/// single term per block may be reordered), and for q4m exactly the
/// scalar's `(s·isum) + m·(d_a·Σa)`, whose two products can cancel: any
/// other rounding of them would differ from the scalar tier by more than
/// the terms' size.
#[inline(always)]
unsafe fn block_terms<const K: u8>(
    acc: __m256,
    s: __m256,
    isum: __m256i,
    m: __m256,
    ds: __m256,
) -> __m256 {
    if K == Q4M {
        let t = _mm256_add_ps(
            _mm256_mul_ps(s, _mm256_cvtepi32_ps(isum)),
            _mm256_mul_ps(m, ds),
        );
        _mm256_add_ps(acc, t)
    } else {
        _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(isum), acc)
    }
}

/// The int8 matrix kernel: `R × T` register tiles (rows × tokens) for
/// `n > 1`, a fused unpack-and-multiply loop over rows for `n = 1`.
#[inline(always)]
pub(crate) unsafe fn matmul_int8<const K: u8, D: IntDot, const R: usize, const T: usize>(
    w: &WeightsRef<'_>,
    rows: Range<usize>,
    x: &Q8Activations,
    out: &mut [f32],
) {
    crate::dispatch::check_matmul_q8(w, &rows, x, out);
    let n = x.n();
    let m = rows.len();
    let Some(wp) = QPlanes::of(w) else {
        return (SCALAR.matmul_q8_q8)(w, rows, x, out);
    };
    let want = match w.planes() {
        Planes::Q8 { .. } => Q8,
        Planes::Q4 { .. } => Q4,
        _ => Q4M,
    };
    if want != K || n == 0 || m == 0 {
        if m > 0 && n > 0 {
            (SCALAR.matmul_q8_q8)(w, rows, x, out);
        }
        return;
    }
    let p = prep::<K, D>(x);
    let ng = p.ng;
    if n == 1 {
        let (q, qrow) = w.value_rows();
        for (i, r) in rows.enumerate() {
            crate::x86::prefetch(q.wrapping_add(r * qrow), qrow, crate::x86::PREFETCH_AHEAD);
            let mut acc = _mm256_setzero_ps();
            for g in 0..ng {
                let (wv, dw, dm) = unpack::<K, D>(wp, r, g);
                let a = p.q.as_ptr().add(g * 8);
                let mut s0 = p.corr[g];
                let mut s1 = _mm256_setzero_si256();
                for k in (0..8).step_by(2) {
                    s0 = dot_w::<K, D>(s0, wv[k], *a.add(k));
                    s1 = dot_w::<K, D>(s1, wv[k + 1], *a.add(k + 1));
                }
                let isum = _mm256_add_epi32(s0, s1);
                acc = block_terms::<K>(acc, _mm256_mul_ps(dw, p.d[g]), isum, dm, p.ds[g]);
            }
            out[i] = hsum(acc);
        }
        return;
    }
    // Prefill: unpack R rows into buffers once, reuse for every token.
    let mut wb: Vec<__m256i> = vec![_mm256_setzero_si256(); R * ng * 8];
    let mut wd: Vec<__m256> = vec![_mm256_setzero_ps(); R * ng];
    let mut wm: Vec<__m256> = vec![_mm256_setzero_ps(); R * ng];
    let mut i = 0;
    while i < m {
        let rt = (m - i).min(R);
        for rr in 0..rt {
            for g in 0..ng {
                let (wv, dw, dm) = unpack::<K, D>(wp, rows.start + i + rr, g);
                wb[(rr * ng + g) * 8..(rr * ng + g + 1) * 8].copy_from_slice(&wv);
                wd[rr * ng + g] = dw;
                wm[rr * ng + g] = dm;
            }
        }
        let o = &mut out[i * n..(i + rt) * n];
        if rt == R {
            int8_tiles::<K, D, R, T>(&p, &wb, &wd, &wm, n, o);
        } else {
            for rr in 0..rt {
                let s = rr * ng;
                int8_tiles::<K, D, 1, T>(
                    &p,
                    &wb[s * 8..(s + ng) * 8],
                    &wd[s..s + ng],
                    &wm[s..s + ng],
                    n,
                    &mut o[rr * n..(rr + 1) * n],
                );
            }
        }
        i += rt;
    }
}

/// All tokens for `R` unpacked rows: tiles of `T` tokens, then single ones.
#[inline(always)]
unsafe fn int8_tiles<const K: u8, D: IntDot, const R: usize, const T: usize>(
    p: &PrepQ8,
    wb: &[__m256i],
    wd: &[__m256],
    wm: &[__m256],
    n: usize,
    out: &mut [f32],
) {
    let mut t0 = 0;
    while t0 + T <= n {
        int8_tile::<K, D, R, T>(p, wb, wd, wm, n, t0, out);
        t0 += T;
    }
    while t0 < n {
        int8_tile::<K, D, R, 1>(p, wb, wd, wm, n, t0, out);
        t0 += 1;
    }
}

#[inline(always)]
unsafe fn int8_tile<const K: u8, D: IntDot, const R: usize, const T: usize>(
    p: &PrepQ8,
    wb: &[__m256i],
    wd: &[__m256],
    wm: &[__m256],
    n: usize,
    t0: usize,
    out: &mut [f32],
) {
    let ng = p.ng;
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let qa = p.q.as_ptr();
    let wq = wb.as_ptr();
    for g in 0..ng {
        let mut is = [[_mm256_setzero_si256(); T]; R];
        for t in 0..T {
            let c = p.corr[(t0 + t) * ng + g];
            for r in 0..R {
                is[r][t] = c;
            }
        }
        for k in 0..8 {
            let mut a = [_mm256_setzero_si256(); T];
            for t in 0..T {
                a[t] = *qa.add(((t0 + t) * ng + g) * 8 + k);
            }
            for r in 0..R {
                let wv = *wq.add((r * ng + g) * 8 + k);
                for t in 0..T {
                    is[r][t] = dot_w::<K, D>(is[r][t], wv, a[t]);
                }
            }
        }
        for t in 0..T {
            let da = p.d[(t0 + t) * ng + g];
            for r in 0..R {
                let s = _mm256_mul_ps(wd[r * ng + g], da);
                let ds = p.ds[(t0 + t) * ng + g];
                acc[r][t] = block_terms::<K>(acc[r][t], s, is[r][t], wm[r * ng + g], ds);
            }
        }
    }
    for r in 0..R {
        for t in 0..T {
            out[r * n + t0 + t] = hsum(acc[r][t]);
        }
    }
}

// ---------------------------------------------------------------------
// f32 activations

/// `Σ w[c]·x[t][c]` for an `R × T` tile of f32 rows and tokens over
/// `cols` values (8 at a time, then a scalar tail).
#[inline(always)]
unsafe fn f32_tile<const R: usize, const T: usize>(
    w: [*const f32; R],
    x: [*const f32; T],
    cols: usize,
) -> [[f32; T]; R] {
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let c8 = cols / 8 * 8;
    let mut c = 0;
    while c < c8 {
        let mut a = [_mm256_setzero_ps(); T];
        for t in 0..T {
            a[t] = _mm256_loadu_ps(x[t].add(c));
        }
        for r in 0..R {
            let wv = _mm256_loadu_ps(w[r].add(c));
            for t in 0..T {
                acc[r][t] = _mm256_fmadd_ps(wv, a[t], acc[r][t]);
            }
        }
        c += 8;
    }
    let mut res = [[0f32; T]; R];
    for r in 0..R {
        for t in 0..T {
            let mut s = hsum(acc[r][t]);
            for c in c8..cols {
                s += *w[r].add(c) * *x[t].add(c);
            }
            res[r][t] = s;
        }
    }
    res
}

/// `R` rows of f32 weights (pointers to `cols` values each) times all `n`
/// tokens of `x`, into `out[r·n + t]`.
#[inline(always)]
unsafe fn f32_rows<const R: usize, const T: usize>(
    w: [*const f32; R],
    x: &[f32],
    n: usize,
    cols: usize,
    out: &mut [f32],
) {
    let xp = x.as_ptr();
    let mut t0 = 0;
    while t0 + T <= n {
        let res = f32_tile::<R, T>(w, std::array::from_fn(|t| xp.add((t0 + t) * cols)), cols);
        for r in 0..R {
            for t in 0..T {
                out[r * n + t0 + t] = res[r][t];
            }
        }
        t0 += T;
    }
    while t0 < n {
        let res = f32_tile::<R, 1>(w, [xp.add(t0 * cols)], cols);
        for r in 0..R {
            out[r * n + t0] = res[r][0];
        }
        t0 += 1;
    }
}

/// Dequantizes row `r` (d·q, one rounding per weight as the scalar
/// `dequantize_row`) into `buf` (`cols` values).
#[inline(always)]
pub(crate) unsafe fn dequant_row(w: &WeightsRef<'_>, r: usize, buf: &mut [f32]) {
    let cols = w.cols();
    let nb = cols / QK;
    let bp = buf.as_mut_ptr();
    match w.planes() {
        // The 2:4 sparse types have kernels of their own (`quant::sparse`).
        Planes::Q4S24 { .. } | Planes::Q8S24 { .. } => w.dequantize_row(r, buf),
        Planes::F32(v) => buf.copy_from_slice(&v[r * cols..(r + 1) * cols]),
        Planes::F16(v) => {
            let s = v.as_ptr().add(r * cols) as *const u16;
            let c8 = cols / 8 * 8;
            let mut c = 0;
            while c < c8 {
                let h = _mm256_cvtph_ps(_mm_loadu_si128(s.add(c) as *const __m128i));
                _mm256_storeu_ps(bp.add(c), h);
                c += 8;
            }
            for c in c8..cols {
                buf[c] = v[r * cols + c].to_f32();
            }
        }
        Planes::Q8 { quants, scales } => {
            let q = quants.as_ptr().add(r * nb) as *const u8;
            for b in 0..nb {
                let d = _mm256_set1_ps(scales[r * nb + b].to_f32());
                for j in 0..4 {
                    let i = _mm256_cvtepi8_epi32(_mm_loadl_epi64(
                        q.add(b * 32 + j * 8) as *const __m128i
                    ));
                    _mm256_storeu_ps(
                        bp.add(b * 32 + j * 8),
                        _mm256_mul_ps(_mm256_cvtepi32_ps(i), d),
                    );
                }
            }
        }
        Planes::Q4 { quants, scales } => {
            let q = quants.as_ptr().add(r * nb) as *const u8;
            for b in 0..nb {
                let d = _mm256_set1_ps(scales[r * nb + b].to_f32());
                let nib = nibbles_minus(q.add(b * 16), 8);
                for j in 0..4 {
                    _mm256_storeu_ps(bp.add(b * 32 + j * 8), _mm256_mul_ps(nib[j], d));
                }
            }
        }
        Planes::Q4m {
            quants,
            scales,
            mins,
        } => {
            let q = quants.as_ptr().add(r * nb) as *const u8;
            for b in 0..nb {
                let d = _mm256_set1_ps(scales[r * nb + b].to_f32());
                let mn = _mm256_set1_ps(mins[r * nb + b].to_f32());
                let nib = nibbles_minus(q.add(b * 16), 0);
                for j in 0..4 {
                    // n·d + m, as the scalar dequantize_row (two roundings).
                    let v = _mm256_add_ps(_mm256_mul_ps(nib[j], d), mn);
                    _mm256_storeu_ps(bp.add(b * 32 + j * 8), v);
                }
            }
        }
    }
}

/// The 32 nibbles of a q4 block (16 bytes at `p`) minus `off`, as f32 in
/// element order (4 × 8).
#[inline(always)]
unsafe fn nibbles_minus(p: *const u8, off: i8) -> [__m256; 4] {
    let b = _mm_loadu_si128(p as *const __m128i);
    let m = _mm_set1_epi8(0x0F);
    let o = _mm_set1_epi8(off);
    let lo = _mm_sub_epi8(_mm_and_si128(b, m), o);
    let hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(b, 4), m), o);
    [
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)),
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8))),
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)),
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8))),
    ]
}

/// 8 f32 at `x + c`.
#[inline(always)]
unsafe fn ldx(x: *const f32, c: usize) -> __m256 {
    _mm256_loadu_ps(x.add(c))
}

/// 8 int8 at `p` as f32.
#[inline(always)]
unsafe fn i8x8(p: *const u8) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i)))
}

/// The f16 at `p` as f32 (F16C).
#[inline(always)]
unsafe fn h2f(p: *const u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(*p as i32)))
}

/// One row of quantized or f16 weights dotted with one f32 vector,
/// dequantizing inside the product (the decode path).
#[inline(always)]
unsafe fn row_dot(w: &WeightsRef<'_>, r: usize, x: *const f32) -> f32 {
    let cols = w.cols();
    let nb = cols / QK;
    match w.planes() {
        // The 2:4 sparse types have kernels of their own (`quant::sparse`).
        Planes::Q4S24 { .. } | Planes::Q8S24 { .. } => {
            w.dot_row(r, std::slice::from_raw_parts(x, cols))
        }
        Planes::F32(v) => f32_tile::<1, 1>([v.as_ptr().add(r * cols)], [x], cols)[0][0],
        Planes::F16(v) => {
            let s = v.as_ptr().add(r * cols) as *const u16;
            let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let c16 = cols / 16 * 16;
            let mut c = 0;
            while c < c16 {
                let h0 = _mm256_cvtph_ps(_mm_loadu_si128(s.add(c) as *const __m128i));
                let h1 = _mm256_cvtph_ps(_mm_loadu_si128(s.add(c + 8) as *const __m128i));
                a0 = _mm256_fmadd_ps(h0, ldx(x, c), a0);
                a1 = _mm256_fmadd_ps(h1, ldx(x, c + 8), a1);
                c += 16;
            }
            let mut sum = hsum(_mm256_add_ps(a0, a1));
            for c in c16..cols {
                sum += v[r * cols + c].to_f32() * *x.add(c);
            }
            sum
        }
        Planes::Q8 { quants, scales } => {
            let q = quants.as_ptr().add(r * nb) as *const u8;
            let s = scales.as_ptr().add(r * nb);
            let mut tot = _mm256_setzero_ps();
            for b in 0..nb {
                let qb = q.add(b * 32);
                let xb = x.add(b * 32);
                let a0 = _mm256_fmadd_ps(
                    i8x8(qb.add(8)),
                    ldx(xb, 8),
                    _mm256_mul_ps(i8x8(qb), ldx(xb, 0)),
                );
                let a1 = _mm256_fmadd_ps(
                    i8x8(qb.add(24)),
                    ldx(xb, 24),
                    _mm256_mul_ps(i8x8(qb.add(16)), ldx(xb, 16)),
                );
                let d = _mm256_set1_ps(h2f(s.add(b) as *const u16));
                tot = _mm256_fmadd_ps(d, _mm256_add_ps(a0, a1), tot);
            }
            hsum(tot)
        }
        Planes::Q4 { quants, scales } => {
            let q = quants.as_ptr().add(r * nb) as *const u8;
            let s = scales.as_ptr().add(r * nb);
            let mut tot = _mm256_setzero_ps();
            for b in 0..nb {
                let v = nibbles_minus(q.add(b * 16), 8);
                let xb = x.add(b * 32);
                let a0 = _mm256_fmadd_ps(v[1], ldx(xb, 8), _mm256_mul_ps(v[0], ldx(xb, 0)));
                let a1 = _mm256_fmadd_ps(v[3], ldx(xb, 24), _mm256_mul_ps(v[2], ldx(xb, 16)));
                let d = _mm256_set1_ps(h2f(s.add(b) as *const u16));
                tot = _mm256_fmadd_ps(d, _mm256_add_ps(a0, a1), tot);
            }
            hsum(tot)
        }
        Planes::Q4m { .. } => unreachable!("q4m has its own path"),
    }
}

/// The f32-activation matrix kernel: fused dequantize-and-dot per row for
/// `n = 1`; for `n > 1`, `R` rows dequantized once into f32 buffers and an
/// `R × T` FMA tile over tokens.
#[inline(always)]
pub(crate) unsafe fn matmul_f32<const R: usize, const T: usize>(
    w: &WeightsRef<'_>,
    rows: Range<usize>,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) {
    let cols = w.cols();
    let m = rows.len();
    assert!(rows.end <= w.rows(), "matmul: rows out of range");
    assert_eq!(x.len(), n * cols, "matmul: x is not (n, cols)");
    assert_eq!(out.len(), m * n, "matmul: out is not (rows, n)");
    if m == 0 || n == 0 {
        return;
    }
    if let Planes::Q4m {
        quants,
        scales,
        mins,
    } = w.planes()
    {
        let wp = QPlanes {
            q: quants.as_ptr() as *const u8,
            s: scales.as_ptr() as *const u16,
            m: mins.as_ptr() as *const u16,
            nb: cols / QK,
        };
        return q4m_f32(wp, rows, x, n, out);
    }
    if n == 1 {
        if let Planes::F32(v) = w.planes() {
            let mut i = 0;
            while i + 4 <= m {
                let wp = std::array::from_fn(|k| v.as_ptr().add((rows.start + i + k) * cols));
                let res = f32_tile::<4, 1>(wp, [x.as_ptr()], cols);
                for k in 0..4 {
                    out[i + k] = res[k][0];
                }
                i += 4;
            }
            for i in i..m {
                out[i] = row_dot(w, rows.start + i, x.as_ptr());
            }
        } else {
            for (i, r) in rows.enumerate() {
                out[i] = row_dot(w, r, x.as_ptr());
            }
        }
        return;
    }
    if let Planes::F32(v) = w.planes() {
        let mut i = 0;
        while i < m {
            let rt = (m - i).min(R);
            let o = &mut out[i * n..(i + rt) * n];
            if rt == R {
                let wp = std::array::from_fn(|k| v.as_ptr().add((rows.start + i + k) * cols));
                f32_rows::<R, T>(wp, x, n, cols, o);
            } else {
                for k in 0..rt {
                    let wp = [v.as_ptr().add((rows.start + i + k) * cols)];
                    f32_rows::<1, T>(wp, x, n, cols, &mut o[k * n..(k + 1) * n]);
                }
            }
            i += rt;
        }
        return;
    }
    let mut buf = vec![0f32; R * cols];
    let mut i = 0;
    while i < m {
        let rt = (m - i).min(R);
        for k in 0..rt {
            dequant_row(w, rows.start + i + k, &mut buf[k * cols..(k + 1) * cols]);
        }
        let o = &mut out[i * n..(i + rt) * n];
        if rt == R {
            let wp = std::array::from_fn(|k| buf.as_ptr().add(k * cols));
            f32_rows::<R, T>(wp, x, n, cols, o);
        } else {
            for k in 0..rt {
                let wp = [buf.as_ptr().add(k * cols)];
                f32_rows::<1, T>(wp, x, n, cols, &mut o[k * n..(k + 1) * n]);
            }
        }
        i += rt;
    }
}

/// `Σ x·n` of one q4m block in the scalar's order: lane `l` is
/// `(x[l]·n[l] + x[l+16]·n[l+16]) + (x[l+8]·n[l+8] + x[l+24]·n[l+24])`.
#[inline(always)]
unsafe fn block_xn(v: [__m256; 4], x: *const f32) -> __m256 {
    _mm256_add_ps(
        _mm256_add_ps(
            _mm256_mul_ps(v[0], ldx(x, 0)),
            _mm256_mul_ps(v[2], ldx(x, 16)),
        ),
        _mm256_add_ps(
            _mm256_mul_ps(v[1], ldx(x, 8)),
            _mm256_mul_ps(v[3], ldx(x, 24)),
        ),
    )
}

/// `Σ x` of one block in the scalar q4m order.
#[inline(always)]
unsafe fn block_xs(x: *const f32) -> __m256 {
    _mm256_add_ps(
        _mm256_add_ps(ldx(x, 0), ldx(x, 16)),
        _mm256_add_ps(ldx(x, 8), ldx(x, 24)),
    )
}

/// The scalar `sum8` of each of 8 vectors (its exact order:
/// `((a0+a4)+(a1+a5)) + ((a2+a6)+(a3+a7))`), lane `j` holding vector `P[j]`.
#[inline(always)]
unsafe fn sum8x8(a: [__m256; 8]) -> __m256 {
    let mut c = [_mm256_setzero_ps(); 4];
    for i in 0..4 {
        c[i] = _mm256_add_ps(
            _mm256_permute2f128_ps(a[2 * i], a[2 * i + 1], 0x20),
            _mm256_permute2f128_ps(a[2 * i], a[2 * i + 1], 0x31),
        );
    }
    let h0 = _mm256_hadd_ps(c[0], c[1]);
    let h1 = _mm256_hadd_ps(c[2], c[3]);
    _mm256_hadd_ps(h0, h1)
}

/// q4m weights × f32 activations. Each block's term is the scalar's
/// `d·sum8(Σx·n) + m·sum8(Σx)` bit for bit (its two products can cancel,
/// so their rounding must match); only the sum over blocks is reordered.
/// For `n > 1` each row's nibbles are widened to f32 once for all tokens.
#[inline(always)]
unsafe fn q4m_f32(w: QPlanes, rows: Range<usize>, x: &[f32], n: usize, out: &mut [f32]) {
    let nb = w.nb;
    let cols = nb * QK;
    let ng = nb.div_ceil(8);
    let xp = x.as_ptr();
    let z = _mm256_setzero_ps();
    // Σx per block of every token, in groups of 8 (order P).
    let mut xsum = Vec::with_capacity(n * ng);
    for t in 0..n {
        for g in 0..ng {
            let cnt = (nb - g * 8).min(8);
            let mut a = [z; 8];
            for i in 0..cnt {
                a[i] = block_xs(xp.add(t * cols + (g * 8 + i) * QK));
            }
            xsum.push(sum8x8(a));
        }
    }
    let mut nbuf: Vec<[__m256; 4]> = if n > 1 { vec![[z; 4]; nb] } else { Vec::new() };
    for (i, r) in rows.enumerate() {
        let q = w.q.add(r * nb * 16);
        if n > 1 {
            for (b, v) in nbuf.iter_mut().enumerate() {
                *v = nibbles_minus(q.add(b * 16), 0);
            }
        }
        for t in 0..n {
            let mut tot = z;
            for g in 0..ng {
                let cnt = (nb - g * 8).min(8);
                let mut a = [z; 8];
                for k in 0..cnt {
                    let b = g * 8 + k;
                    let v = if n > 1 {
                        nbuf[b]
                    } else {
                        nibbles_minus(q.add(b * 16), 0)
                    };
                    a[k] = block_xn(v, xp.add(t * cols + b * QK));
                }
                let sxn = sum8x8(a);
                let (d, m) = if cnt == 8 {
                    (
                        scales8(w.s.add(r * nb + g * 8)),
                        scales8(w.m.add(r * nb + g * 8)),
                    )
                } else {
                    let mut sb = [0u16; 8];
                    let mut mb = [0u16; 8];
                    std::ptr::copy_nonoverlapping(w.s.add(r * nb + g * 8), sb.as_mut_ptr(), cnt);
                    std::ptr::copy_nonoverlapping(w.m.add(r * nb + g * 8), mb.as_mut_ptr(), cnt);
                    (scales8(sb.as_ptr()), scales8(mb.as_ptr()))
                };
                let term = _mm256_add_ps(_mm256_mul_ps(d, sxn), _mm256_mul_ps(m, xsum[t * ng + g]));
                tot = _mm256_add_ps(tot, term);
            }
            out[i * n + t] = hsum(tot);
        }
    }
}

// ---------------------------------------------------------------------
// Small vector kernels

/// `Σ a·b` with four 8-lane accumulators and a scalar tail.
#[inline(always)]
pub(crate) unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: length mismatch");
    let len = a.len();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= len {
        for k in 0..4 {
            let o = i + 8 * k;
            acc[k] = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(o)),
                _mm256_loadu_ps(pb.add(o)),
                acc[k],
            );
        }
        i += 32;
    }
    while i + 8 <= len {
        acc[0] = _mm256_fmadd_ps(
            _mm256_loadu_ps(pa.add(i)),
            _mm256_loadu_ps(pb.add(i)),
            acc[0],
        );
        i += 8;
    }
    let mut s = hsum(_mm256_add_ps(
        _mm256_add_ps(acc[0], acc[1]),
        _mm256_add_ps(acc[2], acc[3]),
    ));
    while i < len {
        s += a[i] * b[i];
        i += 1;
    }
    s
}

/// `y += a·x` (fused multiply-add, scalar tail).
#[inline(always)]
pub(crate) unsafe fn axpy_f32(y: &mut [f32], a: f32, x: &[f32]) {
    assert_eq!(y.len(), x.len(), "axpy: length mismatch");
    let len = y.len();
    let (py, px) = (y.as_mut_ptr(), x.as_ptr());
    let av = _mm256_set1_ps(a);
    let mut i = 0;
    while i + 8 <= len {
        let v = _mm256_fmadd_ps(av, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(py.add(i)));
        _mm256_storeu_ps(py.add(i), v);
        i += 8;
    }
    while i < len {
        y[i] = a.mul_add(x[i], y[i]);
        i += 1;
    }
}

/// The f32 vector of a tier, for [`attend_regs`].
pub(crate) trait F32Lanes: Copy {
    const LANES: usize;
    unsafe fn zero() -> Self;
    unsafe fn splat(a: f32) -> Self;
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn store(self, p: *mut f32);
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self;
    unsafe fn sum(self) -> f32;
}

/// Implements [`F32Lanes`] for one vector type from its intrinsics.
macro_rules! f32_lanes {
    ($v:ty, $lanes:expr, $zero:ident, $splat:ident, $load:ident, $store:ident, $fmadd:ident, $sum:path) => {
        impl $crate::x86::avx2::F32Lanes for $v {
            const LANES: usize = $lanes;
            #[inline(always)]
            unsafe fn zero() -> Self {
                $zero()
            }
            #[inline(always)]
            unsafe fn splat(a: f32) -> Self {
                $splat(a)
            }
            #[inline(always)]
            unsafe fn load(p: *const f32) -> Self {
                $load(p)
            }
            #[inline(always)]
            unsafe fn store(self, p: *mut f32) {
                $store(p, self)
            }
            #[inline(always)]
            unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
                $fmadd(a, b, c)
            }
            #[inline(always)]
            unsafe fn sum(self) -> f32 {
                $sum(self)
            }
        }
    };
}
pub(crate) use f32_lanes;

f32_lanes!(
    __m256,
    8,
    _mm256_setzero_ps,
    _mm256_set1_ps,
    _mm256_loadu_ps,
    _mm256_storeu_ps,
    _mm256_fmadd_ps,
    hsum
);

/// [`crate::f32::attend_body`] with the sums in registers: the scores four
/// positions at a time (one accumulator each), and the output in pieces of
/// up to 8 vectors held over all positions. Composed of `dot` and `axpy`
/// calls, every position stored and reloaded the whole output (a chain
/// through memory per position); here nothing is stored until the end.
/// Head widths that are not whole vectors, or wider than 16, take the
/// composed body.
///
/// # Safety
/// The CPU must have the features `V`'s intrinsics need (the caller's
/// tier).
#[inline(always)]
pub(crate) unsafe fn attend_regs<V: F32Lanes>(
    out: &mut [f32],
    q: &[f32],
    cache: crate::f32::HeadCache<'_>,
    scale: f32,
    scores: &mut [f32],
) {
    let hd = q.len();
    let l = V::LANES;
    if !hd.is_multiple_of(l) || hd > 16 * l {
        let dot = |a: &[f32], b: &[f32]| dot_f32(a, b);
        let axpy = |y: &mut [f32], a: f32, x: &[f32]| axpy_f32(y, a, x);
        return crate::f32::attend_body(out, q, cache, scale, scores, dot, axpy);
    }
    cache.check(out, q, scores.len());
    let crate::f32::HeadCache { k, v, stride } = cache;
    // SAFETY (of the raw reads below): `check` showed that rows `p < n` of
    // `hd` values from `p·stride` lie inside `k` and `v`, and `q` and `out`
    // hold `hd`.
    let (n, pieces) = (scores.len(), hd / l);
    let (qp, kp, vp) = (q.as_ptr(), k.as_ptr(), v.as_ptr());
    let mut p = 0;
    while p + 4 <= n {
        let mut acc = [V::zero(); 4];
        for c in 0..pieces {
            let qv = V::load(qp.add(c * l));
            for (j, a) in acc.iter_mut().enumerate() {
                *a = V::fmadd(qv, V::load(kp.add((p + j) * stride + c * l)), *a);
            }
        }
        for (j, a) in acc.into_iter().enumerate() {
            scores[p + j] = a.sum() * scale;
        }
        p += 4;
    }
    while p < n {
        let mut a = V::zero();
        for c in 0..pieces {
            a = V::fmadd(
                V::load(qp.add(c * l)),
                V::load(kp.add(p * stride + c * l)),
                a,
            );
        }
        scores[p] = a.sum() * scale;
        p += 1;
    }
    crate::f32::softmax_body(scores);
    let mut c = 0;
    while c < pieces {
        let m = (pieces - c).min(8);
        let (o, vc) = (out.as_mut_ptr().add(c * l), vp.add(c * l));
        match m {
            8 => weighted_sum::<V, 8>(o, vc, stride, scores),
            7 => weighted_sum::<V, 7>(o, vc, stride, scores),
            6 => weighted_sum::<V, 6>(o, vc, stride, scores),
            5 => weighted_sum::<V, 5>(o, vc, stride, scores),
            4 => weighted_sum::<V, 4>(o, vc, stride, scores),
            3 => weighted_sum::<V, 3>(o, vc, stride, scores),
            2 => weighted_sum::<V, 2>(o, vc, stride, scores),
            _ => weighted_sum::<V, 1>(o, vc, stride, scores),
        }
        c += m;
    }
}

/// `out[..M·LANES] = Σ_p a[p] · v[p·stride..][..M·LANES]`, the sums in
/// `M` registers.
#[inline(always)]
unsafe fn weighted_sum<V: F32Lanes, const M: usize>(
    out: *mut f32,
    v: *const f32,
    stride: usize,
    a: &[f32],
) {
    let mut acc = [V::zero(); M];
    for (p, &ap) in a.iter().enumerate() {
        let s = V::splat(ap);
        for (j, x) in acc.iter_mut().enumerate() {
            *x = V::fmadd(s, V::load(v.add(p * stride + j * V::LANES)), *x);
        }
    }
    for (j, x) in acc.into_iter().enumerate() {
        x.store(out.add(j * V::LANES));
    }
}

/// Bit-identical twin of [`crate::quant::quantize_q8_blocks`].
#[inline(always)]
pub(crate) unsafe fn quantize_q8(
    x: &[f32],
    quants: &mut [BlockQ8],
    scales: &mut [f32],
    sums: &mut [i32],
) {
    assert!(
        x.len() == quants.len() * QK && scales.len() == quants.len() && sums.len() == quants.len(),
        "quantize_q8: lengths"
    );
    let absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    let inf = _mm256_set1_ps(f32::INFINITY);
    let lo = _mm256_set1_ps(-127.0);
    let hi = _mm256_set1_ps(127.0);
    for (b, ((q, s), sum)) in quants
        .iter_mut()
        .zip(scales.iter_mut())
        .zip(sums.iter_mut())
        .enumerate()
    {
        let p = x.as_ptr().add(b * QK);
        let v = [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ];
        let mut a = v;
        for e in &mut a {
            *e = _mm256_and_ps(*e, absm);
        }
        // NaN or ±inf anywhere: (|v| < inf) is false.
        let fin = _mm256_and_ps(
            _mm256_and_ps(
                _mm256_cmp_ps(a[0], inf, _CMP_LT_OQ),
                _mm256_cmp_ps(a[1], inf, _CMP_LT_OQ),
            ),
            _mm256_and_ps(
                _mm256_cmp_ps(a[2], inf, _CMP_LT_OQ),
                _mm256_cmp_ps(a[3], inf, _CMP_LT_OQ),
            ),
        );
        if _mm256_movemask_ps(fin) != 0xFF {
            q.qs = [0; QK];
            *s = f32::NAN;
            *sum = 0;
            continue;
        }
        let m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_shuffle_ps(m2, m2, 1)));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let idv = _mm256_set1_ps(id);
        let mut qi = [_mm256_setzero_si256(); 4];
        for (o, &e) in qi.iter_mut().zip(&v) {
            let f = _mm256_mul_ps(e, idv);
            // 0·inf (a subnormal scale) is NaN, which `as i8` maps to 0.
            let f = _mm256_and_ps(f, _mm256_cmp_ps(f, f, _CMP_ORD_Q));
            *o = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(f, lo), hi));
        }
        let tot = _mm256_add_epi32(
            _mm256_add_epi32(qi[0], qi[1]),
            _mm256_add_epi32(qi[2], qi[3]),
        );
        let t4 = _mm_add_epi32(
            _mm256_castsi256_si128(tot),
            _mm256_extracti128_si256(tot, 1),
        );
        let t2 = _mm_add_epi32(t4, _mm_unpackhi_epi64(t4, t4));
        let t1 = _mm_add_epi32(t2, _mm_shuffle_epi32(t2, 1));
        // Pack to bytes: packs work per 128-bit lane, fix the order after.
        let w01 = _mm256_packs_epi32(qi[0], qi[1]);
        let w23 = _mm256_packs_epi32(qi[2], qi[3]);
        let bytes = _mm256_packs_epi16(w01, w23);
        let bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(q.qs.as_mut_ptr() as *mut __m256i, bytes);
        *s = d;
        *sum = _mm_cvtsi128_si32(t1);
    }
}

// ---------------------------------------------------------------------
// The AVX2 tier's entries

/// Compiles the generic bodies for AVX2 + FMA + F16C (see [`super::tier_fn`]).
macro_rules! avx2_fn {
    ($($t:tt)*) => {
        super::tier_fn!("avx2,fma,f16c", "crate::x86::AVX2"; $($t)*);
    };
}

avx2_fn!(fn q8_q8_imp(w: &WeightsRef<'_>, rows: Range<usize>, x: &Q8Activations, out: &mut [f32])
    => matmul_int8::<Q8, Avx2Dot, 2, 2>(w, rows, x, out));
avx2_fn!(fn q4_q8_imp(w: &WeightsRef<'_>, rows: Range<usize>, x: &Q8Activations, out: &mut [f32])
    => matmul_int8::<Q4, Avx2Dot, 2, 2>(w, rows, x, out));
avx2_fn!(fn q4m_q8_imp(w: &WeightsRef<'_>, rows: Range<usize>, x: &Q8Activations, out: &mut [f32])
    => matmul_int8::<Q4M, Avx2Dot, 2, 2>(w, rows, x, out));
avx2_fn!(fn f32_imp(w: &WeightsRef<'_>, rows: Range<usize>, x: &[f32], n: usize, out: &mut [f32])
    => matmul_f32::<4, 3>(w, rows, x, n, out));
avx2_fn!(entry
    /// `Σ a·b`.
    fn dot(a: &[f32], b: &[f32]) -> f32 => dot_f32(a, b));
avx2_fn!(entry
    /// `y += a·x`.
    fn axpy(y: &mut [f32], a: f32, x: &[f32]) => axpy_f32(y, a, x));
avx2_fn!(entry
    /// One query's attention over a cache, the sums in registers.
    fn attend(out: &mut [f32], q: &[f32], cache: crate::f32::HeadCache<'_>, scale: f32, scores: &mut [f32])
        => attend_regs::<__m256>(out, q, cache, scale, scores));
avx2_fn!(entry
    /// Softmax, bit-identical to the scalar tier.
    fn softmax(x: &mut [f32]) => crate::f32::softmax_body(x));
avx2_fn!(entry
    /// SiLU·mul, bit-identical to the scalar tier.
    fn silu_mul(gate: &mut [f32], up: &[f32]) => crate::f32::silu_mul_body(gate, up));
avx2_fn!(entry
    /// Activations to int8 blocks, bit-identical to the scalar tier.
    fn quantize(x: &[f32], q: &mut [BlockQ8], s: &mut [f32], sums: &mut [i32]) => quantize_q8(x, q, s, sums));

// SAFETY (for every wrapper below): these functions are only reachable
// through `crate::x86::AVX2` / `AVX512`, which `crate::dispatch` hands out
// only after `avx2_available()` (AVX2, FMA, F16C) returned true.

/// q8 weights × int8 activations.
pub(crate) fn matmul_q8_q8(
    w: &WeightsRef<'_>,
    rows: Range<usize>,
    x: &Q8Activations,
    out: &mut [f32],
) {
    // SAFETY: the AVX2 table is only handed out when AVX2/FMA/F16C were detected.
    unsafe { q8_q8_imp(w, rows, x, out) }
}

/// q4 weights × int8 activations.
pub(crate) fn matmul_q4_q8(
    w: &WeightsRef<'_>,
    rows: Range<usize>,
    x: &Q8Activations,
    out: &mut [f32],
) {
    // SAFETY: the AVX2 table is only handed out when AVX2/FMA/F16C were detected.
    unsafe { q4_q8_imp(w, rows, x, out) }
}

/// q4m weights × int8 activations.
pub(crate) fn matmul_q4m_q8(
    w: &WeightsRef<'_>,
    rows: Range<usize>,
    x: &Q8Activations,
    out: &mut [f32],
) {
    // SAFETY: the AVX2 table is only handed out when AVX2/FMA/F16C were detected.
    unsafe { q4m_q8_imp(w, rows, x, out) }
}

/// Any weights × f32 activations.
pub(crate) fn matmul_f32_entry(
    w: &WeightsRef<'_>,
    rows: Range<usize>,
    x: &F32Activations<'_>,
    out: &mut [f32],
) {
    // SAFETY: the AVX2 table is only handed out when AVX2/FMA/F16C were detected.
    unsafe { f32_imp(w, rows, x.data(), x.n(), out) }
}
