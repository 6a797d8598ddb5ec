//! AVX-512 VNNI prompt kernel: q4 and q8 weights × f32 activations on the
//! int8 dot-product instruction, for CPUs without AMX (AMD Zen 4, Intel Ice
//! Lake); with one part per block (below), × int8 activations too.
//!
//! `vpdpbusd` does 64 int8 multiply-adds per instruction, and recent cores
//! issue two per cycle: four times the f32 FMA rate. To keep prompts at
//! f32 accuracy, each block of 32 activations is split in two int8 parts,
//! `x ≈ d·q_hi + (d/256)·q_lo` with `d = max|x| / 127`: what the first part
//! leaves is at most `d/2`, so the second part is within ±128 (a +128 is
//! carried into `q_hi`), and the error is at most `max|x| / (2·127·256)`,
//! about 1.5e-5 of the block's largest value
//! ([`crate::dispatch::Isa::f32_block_tolerance`]). Both parts run through
//! the same integer loop into one accumulator, shifted left 8 bits between
//! them, so a block ends in one integer `256·Σw·q_hi + Σw·q_lo` and one
//! scale, `d/256`: twice the int8 work, still half the f32 FMA work, and
//! the weights are never turned into floats.
//!
//! Layout:
//! - activations: per token and block, the 32 bytes of `q_hi` then the 32
//!   of `q_lo`, and beside them the parts' scales and the accumulator
//!   correction (below). Built once per input ([`F32Activations::layout`]).
//! - weights: per group of 32 rows, block and step of 4 columns, the 32
//!   rows' 4 bytes as unsigned bytes (`vpdpbusd` multiplies unsigned by
//!   signed bytes): q4 nibbles `n` for the value `n − 8`, q8 `w + 128`. The
//!   offset is taken off by adding `−8·Σq` or `−128·Σq` (the split's
//!   `Σq = 256·Σq_hi + Σq_lo`, computed with the activations) to each
//!   block's sum, exactly, in integers. Packed per pool task, so the file
//!   keeps its layout and the cost is spread over every token of the
//!   prompt.
//! - products: the lanes of a register are 16 weight rows of one token,
//!   stored straight into `out (n, rows)`: nothing is transposed.

// Index loops over small register arrays read closest to the math here.
#![allow(clippy::needless_range_loop)]

use crate::pool::{Columns, Pool};
use crate::quant::{F32Activations, Planes, Q8Activations, WeightsRef, QK};
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::ops::Range;

/// From this many tokens packing the weights pays for itself; below it
/// the AVX-512 f32 kernels run.
pub(crate) const MIN_TOKENS: usize = 8;

/// The [`F32Activations::layout`] slot of the split activations (the AMX
/// tier's tiles use slot 0).
const SLOT: usize = 1;

/// Weight rows per group: two registers of 16 lanes.
const ROWS: usize = 32;

/// Tokens per tile: 6 tokens × 2 registers of integer sums and as many f32
/// sums, the two weight registers and two of scales fill 28 of the 32
/// registers.
const TOKENS: usize = 6;

/// Steps of 4 columns per block.
const STEPS: usize = QK / 4;

/// One token's block, split: both parts' 32 bytes as the dwords that
/// `vpdpbusd` broadcasts (`q_hi` in 0..8, `q_lo` in 8..16), the scales of
/// a whole block's sum (`[d, d/256]`: `d[0]` for int8 blocks, one part;
/// `d[1]` for split ones) and the offset corrections `−8·Σq` (q4 weights)
/// and `−128·Σq` (q8), `Σq` over the parts as they are summed.
#[derive(Clone, Copy, Default, Debug)]
#[repr(C)]
pub(super) struct XBlock {
    pub(super) q: [i32; 16],
    pub(super) d: [f32; 2],
    pub(super) start: [i32; 2],
}

/// Which weights the kernel takes: q4 and q8.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Wt {
    Q4 = 0,
    Q8 = 1,
}

/// The weights' type if the tile takes them: q4 or q8 in whole blocks of
/// columns (every entry asks both, so they are asked in one place).
fn weight_type(w: &WeightsRef<'_>) -> Option<Wt> {
    if !w.cols().is_multiple_of(QK) {
        return None;
    }
    match w.planes() {
        Planes::Q4 { .. } => Some(Wt::Q4),
        Planes::Q8 { .. } => Some(Wt::Q8),
        _ => None,
    }
}

/// One block of 32 activations as two int8 parts, their scales and
/// accumulator starts: the reference of [`split_block_512`], and what it
/// falls back to for a block with a NaN or an infinity (which make both
/// scales NaN, so that it reaches the products as on the other tiers).
fn split_block(xb: &[f32], m: &mut XBlock) {
    let amax = crate::quant::abs_max(xb);
    let d1 = amax / 127.0;
    let d2 = d1 / 256.0;
    let id1 = if d1 > 0.0 { 1.0 / d1 } else { 0.0 };
    let id2 = if d2 > 0.0 { 1.0 / d2 } else { 0.0 };
    let mut hi = [0i8; QK];
    let mut lo = [0i8; QK];
    for i in 0..QK {
        let v = xb[i];
        // `as` saturates and maps NaN to 0; the NaN scale carries it.
        let mut q1 = (v * id1).round_ties_even().clamp(-127.0, 127.0);
        let rest = (-d1).mul_add(q1, v);
        let mut q2 = (rest * id2).round_ties_even().clamp(-128.0, 128.0);
        if q2 == 128.0 {
            // d·q1 + d/256·128 = d·(q1 + 1) − d/256·128; q1 ≤ 126 here,
            // since the rest is +d/2 only below 127·d.
            q1 += 1.0;
            q2 = -128.0;
        }
        hi[i] = q1 as i8;
        lo[i] = q2 as i8;
    }
    for s in 0..STEPS {
        m.q[s] = i32::from_le_bytes(std::array::from_fn(|j| hi[4 * s + j] as u8));
        m.q[STEPS + s] = i32::from_le_bytes(std::array::from_fn(|j| lo[4 * s + j] as u8));
    }
    let s1: i32 = hi.iter().map(|&v| v as i32).sum();
    let s2: i32 = lo.iter().map(|&v| v as i32).sum();
    m.d = if amax.is_finite() {
        [d1, d2]
    } else {
        [f32::NAN; 2]
    };
    let sum = 256 * s1 + s2;
    m.start = [-8 * sum, -128 * sum];
}

/// Below this largest value a block is split by [`split_block`]: from it
/// on both scales and their inverses are normal floats, so the clamps of
/// the reference cannot change a value and [`split_block_512`] leaves them
/// out. (`|v|·(1/d)` is at most `127·(1 + 3ε)`, which rounds to 127, and
/// the rest is at most `d·(1/2 + 3·127ε)`, whose second part rounds into
/// `[−128, 128]`; a subnormal `d` can make `1/d` infinite.)
const SPLIT_MIN: f32 = 1e-30;

/// [`split_block`] on 512-bit registers, the same bits: the same
/// operations in the same order (multiply, round to nearest even; the
/// rest by one fused multiply-add), 16 values at a time, for blocks whose
/// largest value is finite and at least [`SPLIT_MIN`] (the rest go to
/// the reference).
///
/// # Safety
/// AVX-512 F/BW/VL present.
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl")]
unsafe fn split_block_512(xb: &[f32; QK], m: &mut XBlock) {
    let v = [
        _mm512_loadu_ps(xb.as_ptr()),
        _mm512_loadu_ps(xb.as_ptr().add(16)),
    ];
    // Unordered: a NaN on either side.
    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v[0], v[1]);
    let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_abs_ps(v[1])));
    if nan != 0 || !amax.is_finite() || (amax < SPLIT_MIN && amax != 0.0) {
        return split_block(xb, m);
    }
    if amax == 0.0 {
        // The reference's answer for an all-zero block (prompts have some).
        *m = XBlock::default();
        return;
    }
    let d1 = amax / 127.0;
    let d2 = d1 / 256.0;
    let (id1, id2) = (_mm512_set1_ps(1.0 / d1), _mm512_set1_ps(1.0 / d2));
    let round =
        |y: __m512| _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(y);
    let mut sum = _mm512_setzero_si512();
    let mut parts = [[_mm512_setzero_si512(); 2]; 2];
    for h in 0..2 {
        let q1 = round(_mm512_mul_ps(v[h], id1));
        let rest = _mm512_fnmadd_ps(_mm512_set1_ps(d1), q1, v[h]);
        let q2 = round(_mm512_mul_ps(rest, id2));
        // A +128 carried into q1, as in the reference.
        let carry = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(q2, _mm512_set1_ps(128.0));
        let q1 = _mm512_mask_add_ps(q1, carry, q1, _mm512_set1_ps(1.0));
        let q2 = _mm512_mask_mov_ps(q2, carry, _mm512_set1_ps(-128.0));
        let (i1, i2) = (_mm512_cvtps_epi32(q1), _mm512_cvtps_epi32(q2));
        // Σ(256·q1 + q2), in one horizontal sum below.
        sum = _mm512_add_epi32(sum, _mm512_add_epi32(_mm512_slli_epi32::<8>(i1), i2));
        parts[0][h] = i1;
        parts[1][h] = i2;
    }
    // The four registers of dwords as bytes: two saturating packs (no
    // value is outside the int8 range) leave, in 128-bit lane L, dwords
    // [hi 0..16, hi 16..32, lo 0..16, lo 16..32] (4 values each, those
    // from 4L); one dword permute puts each register's four in order.
    let words = _mm512_packs_epi16(
        _mm512_packs_epi32(parts[0][0], parts[0][1]),
        _mm512_packs_epi32(parts[1][0], parts[1][1]),
    );
    let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    _mm512_storeu_si512(
        m.q.as_mut_ptr() as *mut _,
        _mm512_permutexvar_epi32(order, words),
    );
    m.d = [d1, d2];
    let sum = _mm512_reduce_add_epi32(sum);
    m.start = [-8 * sum, -128 * sum];
}

/// Tokens `first..` of `x` split into `part` (whole tokens).
///
/// # Safety
/// AVX-512 F/BW/VL present.
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl")]
unsafe fn split_tokens(x: &F32Activations<'_>, first: usize, part: &mut [XBlock]) {
    let data = &x.data()[first * x.cols()..];
    for (xb, m) in data.chunks_exact(QK).zip(part) {
        let xb: &[f32; QK] = xb.try_into().expect("chunks of QK");
        split_block_512(xb, m);
    }
}

/// The split activations of `x`, `(n, nb)` blocks, tokens spread over
/// `pool` (one matrix's input is split once, before its tasks start, so
/// one thread splitting while the others wait would cost a whole pass).
fn split_activations(x: &F32Activations<'_>, pool: &Pool) -> Split {
    split_with(x, pool, &|first, part| {
        // SAFETY: only reached from the AVX-512 table's entries, handed out
        // after `avx512_available()`; `part` holds whole tokens from token
        // `first` on.
        unsafe { split_tokens(x, first, part) }
    })
}

/// `x` split by `f(first token, blocks from that token on)`, whole tokens
/// per thread of `pool`.
fn split_with(
    x: &F32Activations<'_>,
    pool: &Pool,
    f: &(dyn Fn(usize, &mut [XBlock]) + Sync),
) -> Split {
    let nb = x.cols() / QK;
    let mut blocks = FREE_BLOCKS.take(x.n() * nb);
    let tokens = x.n().div_ceil(pool.threads().max(1)).max(1);
    pool.for_chunks(&mut blocks, tokens * nb.max(1), &|i, part| {
        f(i * tokens, part)
    });
    Split(blocks)
}

/// Split activations, handed back to [`FREE_BLOCKS`] when dropped.
pub(super) struct Split(pub(super) Vec<XBlock>);

/// Buffers of dropped [`Split`]s.
static FREE_BLOCKS: super::Recycler<XBlock> = super::Recycler::new();

impl Drop for Split {
    fn drop(&mut self) {
        FREE_BLOCKS.give(std::mem::take(&mut self.0));
    }
}

/// The table's `prepare` entry: splits `x` over `pool` before the
/// matrix's tasks start (they find it in the layout cache), for the
/// weights the split kernel takes; others (prompt attention's f32
/// matrices) go to the f32 panel kernel, which does not read the split.
pub(crate) fn prepare_f32(w: &WeightsRef<'_>, x: &F32Activations<'_>, pool: &Pool) {
    if weight_type(w).is_some() {
        x.layout(SLOT, || split_activations(x, pool));
    }
}

/// 64 bytes, aligned to a cache line: 16 rows' 4 bytes.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
struct Line([u32; 16]);

const _: () = assert!(std::mem::size_of::<Line>() == 64);

/// A task's packed weights: per group, block and step two [`Line`]s
/// (rows 0–15, 16–31), and per group and block 32 f32 scales.
type Packed = super::Packed<Line>;

thread_local! {
    static PACKED: RefCell<Packed> = const { RefCell::new(Packed::new()) };
}

/// One tile: the group's 32 rows × tokens `t0..t0 + T`, over all blocks
/// and the first `PARTS` parts of each (2: split f32 activations; 1: int8
/// activations, whose one part is the split's first), stored into view
/// columns `c0..c0 + valid` of `out`.
///
/// # Safety
/// AVX-512 F/BW/VNNI present; `lines`/`scales` hold the group's `nb`
/// blocks; `split` holds tokens `t0..t0 + T`, `nb` blocks each.
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const T: usize, const PARTS: usize>(
    lines: &[Line],
    scales: &[f32],
    split: &[XBlock],
    nb: usize,
    wt: Wt,
    t0: usize,
    out: &mut Columns<'_>,
    c0: usize,
    valid: usize,
) {
    debug_assert!(lines.len() >= nb * STEPS * 2 && scales.len() >= nb * ROWS);
    debug_assert!(split.len() >= (t0 + T) * nb);
    let x = split.as_ptr().add(t0 * nb);
    let wl = lines.as_ptr();
    let ws = scales.as_ptr();
    let ty = wt as usize;
    let mut f = [[_mm512_setzero_ps(); 2]; T];
    for b in 0..nb {
        let dw = [
            _mm512_loadu_ps(ws.add(b * ROWS)),
            _mm512_loadu_ps(ws.add(b * ROWS + 16)),
        ];
        // One part: the sums start at the offset correction; two: it is
        // added after the shift.
        let mut acc = [[_mm512_setzero_si512(); 2]; T];
        if PARTS == 1 {
            for t in 0..T {
                let s = _mm512_set1_epi32((*x.add(t * nb + b)).start[ty]);
                acc[t] = [s, s];
            }
        }
        for part in 0..PARTS {
            if part == 1 {
                // 256 · the first part's sums, then the second's added.
                for t in 0..T {
                    acc[t] = [
                        _mm512_slli_epi32::<8>(acc[t][0]),
                        _mm512_slli_epi32::<8>(acc[t][1]),
                    ];
                }
            }
            for s in 0..STEPS {
                let l = wl.add((b * STEPS + s) * 2) as *const __m512i;
                let w0 = _mm512_load_si512(l);
                let w1 = _mm512_load_si512(l.add(1));
                for t in 0..T {
                    let xv = _mm512_set1_epi32((*x.add(t * nb + b)).q[part * STEPS + s]);
                    acc[t][0] = _mm512_dpbusd_epi32(acc[t][0], w0, xv);
                    acc[t][1] = _mm512_dpbusd_epi32(acc[t][1], w1, xv);
                }
            }
        }
        for t in 0..T {
            let m = &*x.add(t * nb + b);
            let start = _mm512_set1_epi32(m.start[ty]);
            let dx = _mm512_set1_ps(m.d[PARTS - 1]);
            for h in 0..2 {
                let sum = if PARTS == 1 {
                    acc[t][h]
                } else {
                    _mm512_add_epi32(acc[t][h], start)
                };
                let v = _mm512_mul_ps(_mm512_cvtepi32_ps(sum), dx);
                f[t][h] = _mm512_fmadd_ps(v, dw[h], f[t][h]);
            }
        }
    }
    for t in 0..T {
        let row = &mut out.row_mut(t0 + t)[c0..c0 + valid];
        for h in 0..2 {
            let lanes = valid.saturating_sub(16 * h).min(16);
            if lanes == 0 {
                break;
            }
            // Lanes past `valid` are padding rows, not stored; the mask
            // keeps the store inside `row`.
            let mask: __mmask16 = ((1u32 << lanes) - 1) as __mmask16;
            _mm512_mask_storeu_ps(row.as_mut_ptr().add(16 * h), mask, f[t][h]);
        }
    }
}

/// Weight rows `rows` × the `n` tokens of `split` (`PARTS` parts each)
/// into `out`, whose columns stand for those rows.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI present.
unsafe fn matmul<const PARTS: usize>(
    w: &WeightsRef<'_>,
    wt: Wt,
    rows: Range<usize>,
    split: &[XBlock],
    n: usize,
    mut out: Columns<'_>,
) {
    let nb = w.cols() / QK;
    assert_eq!(rows.len(), out.cols().len(), "matmul: view and rows differ");
    assert_eq!(split.len(), n * nb, "matmul: split activations");
    PACKED.with(|p| {
        let p = &mut *p.borrow_mut();
        // w + 128 as unsigned bytes for q8: the sign bits flipped.
        p.pack(w, rows.clone(), ROWS, 0x8080_8080);
        p.for_each_tile(
            rows.len(),
            nb,
            ROWS,
            n,
            TOKENS,
            |lines, scales, t0, take, c0, valid| {
                let (o, x) = (&mut out, split);
                match take {
                    6 => tile::<6, PARTS>(lines, scales, x, nb, wt, t0, o, c0, valid),
                    5 => tile::<5, PARTS>(lines, scales, x, nb, wt, t0, o, c0, valid),
                    4 => tile::<4, PARTS>(lines, scales, x, nb, wt, t0, o, c0, valid),
                    3 => tile::<3, PARTS>(lines, scales, x, nb, wt, t0, o, c0, valid),
                    2 => tile::<2, PARTS>(lines, scales, x, nb, wt, t0, o, c0, valid),
                    _ => tile::<1, PARTS>(lines, scales, x, nb, wt, t0, o, c0, valid),
                }
            },
        );
    });
}

/// The split of `x`: built by `prepare_f32` unless called outside the
/// table's entries.
fn split_of<'x>(x: &'x F32Activations<'_>) -> &'x [XBlock] {
    &x.layout(SLOT, || split_activations(x, &Pool::new(1))).0
}

/// The table's in-place entry (see [`crate::dispatch::ColsKernel`]): q4
/// and q8 weights on the split int8 kernel, anything else on the AVX-512
/// f32 panel kernel.
pub(crate) fn matmul_f32_cols(w: &WeightsRef<'_>, x: &F32Activations<'_>, out: Columns<'_>) {
    assert!(out.cols().end <= w.rows(), "matmul: rows out of range");
    assert_eq!(out.n(), x.n(), "matmul: out has other tokens than x");
    assert_eq!(x.cols(), w.cols(), "matmul: x is not (n, cols)");
    match weight_type(w) {
        Some(wt) => {
            // SAFETY: only reachable through `crate::x86::AVX512` (and the
            // tables built on it), handed out after `avx512_available()`:
            // AVX-512 F/BW/VL and VNNI present. Shapes are checked above;
            // stores go through `Columns::row_mut`'s bounds.
            unsafe { matmul::<2>(w, wt, out.cols(), split_of(x), x.n(), out) }
        }
        _ => super::avx512::matmul_f32_cols(w, x, out),
    }
}

/// The table's `(rows, n)` entry: the split int8 kernel into a
/// token-major buffer, transposed, for q4 and q8 weights from
/// [`MIN_TOKENS`] tokens on; the AVX-512 f32 kernels otherwise.
pub(crate) fn matmul_f32_entry(
    w: &WeightsRef<'_>,
    rows: Range<usize>,
    x: &F32Activations<'_>,
    out: &mut [f32],
) {
    let n = x.n();
    let wt = match weight_type(w) {
        Some(wt) if n >= MIN_TOKENS && !rows.is_empty() => wt,
        _ => return super::avx512::matmul_f32_entry(w, rows, x, out),
    };
    assert!(rows.end <= w.rows(), "matmul: rows out of range");
    assert_eq!(x.cols(), w.cols(), "matmul: x is not (n, cols)");
    let split = split_of(x);
    // SAFETY: as in matmul_f32_cols; the view covers the whole buffer.
    super::into_row_major(n, rows.len(), out, |o| unsafe {
        matmul::<2>(w, wt, rows, split, n, o)
    });
}

/// The [`F32Activations::layout`]-like slot of int8 activations in the
/// tile kernel's form (slots 0–3 hold the decode kernels' forms).
pub(super) const Q8_SLOT: usize = 4;

/// Int8 activations in the tile kernel's form: each block as the first
/// part of an [`XBlock`] (the split's first part is this quantization).
pub(super) fn int8_blocks(x: &Q8Activations, pool: &Pool) -> Split {
    let nb = x.cols() / QK;
    let mut blocks = FREE_BLOCKS.take(x.n() * nb);
    let per = x.n().div_ceil(pool.threads().max(1)).max(1) * nb.max(1);
    pool.for_chunks(&mut blocks, per, &|i, part| {
        for (j, m) in part.iter_mut().enumerate() {
            let (t, b) = ((i * per + j) / nb, (i * per + j) % nb);
            let row = x.row(t);
            let qs: &[u8; QK] = bytemuck::cast_ref(&row.quants[b].qs);
            for s in 0..STEPS {
                m.q[s] =
                    i32::from_le_bytes([qs[4 * s], qs[4 * s + 1], qs[4 * s + 2], qs[4 * s + 3]]);
            }
            let sum = row.sums[b];
            m.d[0] = row.scales[b];
            m.start = [-8 * sum, -128 * sum];
        }
    });
    Split(blocks)
}

/// The int8 form of `x`: built by `prepare_q8` unless called outside the
/// table's entries.
fn int8_of(x: &Q8Activations) -> &[XBlock] {
    &x.layout(Q8_SLOT, || int8_blocks(x, &Pool::new(1))).0
}

/// The table's [`crate::dispatch::Q8ColsKernel::prepare`]: `x` in the
/// tile kernel's form, over `pool`, before the matrix's tasks start.
pub(crate) fn prepare_q8(x: &Q8Activations, pool: &Pool) {
    x.layout(Q8_SLOT, || int8_blocks(x, pool));
}

/// The int8 entry's [`crate::dispatch::Q8ColsKernel::takes`]: q4 and q8.
pub(crate) fn takes_q8(ty: crate::quant::TensorType) -> bool {
    use crate::quant::TensorType as T;
    matches!(ty, T::Q4 | T::Q8)
}

/// The table's in-place int8 entry (see [`crate::dispatch::Q8ColsKernel`]):
/// q4 and q8 weights × int8 activations, one part per block.
///
/// # Panics
/// For other weight types, or columns that are not whole blocks.
pub(crate) fn matmul_q8_cols(w: &WeightsRef<'_>, x: &Q8Activations, out: Columns<'_>) {
    assert!(out.cols().end <= w.rows(), "matmul_q8: rows out of range");
    assert_eq!(out.n(), x.n(), "matmul_q8: out has other tokens than x");
    assert_eq!(x.cols(), w.cols(), "matmul_q8: x is not (n, cols)");
    let wt = match weight_type(w) {
        Some(wt) => wt,
        _ => panic!("matmul_q8_cols: takes q4 and q8 weights, got {}", w.ty()),
    };
    // SAFETY: as in matmul_f32_cols.
    unsafe { matmul::<1>(w, wt, out.cols(), int8_of(x), x.n(), out) }
}

/// The table's `(rows, n)` int8 entry for q4 and q8 weights: the tile
/// kernel from [`MIN_TOKENS`] tokens on, transposed; the AVX-512 decode
/// kernel otherwise.
fn matmul_q8_entry(
    w: &WeightsRef<'_>,
    rows: Range<usize>,
    x: &Q8Activations,
    out: &mut [f32],
    decode: crate::dispatch::MatmulQ8Fn,
) {
    let n = x.n();
    let wt = match weight_type(w) {
        Some(wt) if n >= MIN_TOKENS && !rows.is_empty() => wt,
        _ => return decode(w, rows, x, out),
    };
    assert!(rows.end <= w.rows(), "matmul_q8: rows out of range");
    assert_eq!(x.cols(), w.cols(), "matmul_q8: x is not (n, cols)");
    let xs = int8_of(x);
    // SAFETY: as in matmul_f32_cols; the view covers the whole buffer.
    super::into_row_major(n, rows.len(), out, |o| unsafe {
        matmul::<1>(w, wt, rows, xs, n, o)
    });
}

/// [`matmul_q8_entry`] for q4 weights.
pub(crate) fn matmul_q4_q8(
    w: &WeightsRef<'_>,
    rows: Range<usize>,
    x: &Q8Activations,
    out: &mut [f32],
) {
    matmul_q8_entry(w, rows, x, out, super::avx512::matmul_q4_q8)
}

/// [`matmul_q8_entry`] for q8 weights.
pub(crate) fn matmul_q8_q8(
    w: &WeightsRef<'_>,
    rows: Range<usize>,
    x: &Q8Activations,
    out: &mut [f32],
) {
    matmul_q8_entry(w, rows, x, out, super::avx512::matmul_q8_q8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn block(seed: u64, scale: f32, zeros: bool) -> [f32; QK] {
        let mut s = seed | 1;
        std::array::from_fn(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            if zeros && i % 3 == 0 {
                0.0
            } else {
                u * scale
            }
        })
    }

    proptest! {
        /// The 512-bit split gives the reference's bits (blocks from
        /// 2^-141 to 2^29, across `SPLIT_MIN`), and both parts together
        /// are within `max|x| / (2·127·256)` of every value where the
        /// scales are normal floats.
        #[test]
        fn split_matches_reference_and_bound(
            seed in any::<u64>(),
            exp in -140i32..30,
            zeros in any::<bool>(),
        ) {
            if !crate::x86::avx512_available() {
                return Ok(());
            }
            let xb = block(seed, 2f32.powi(exp), zeros);
            let (mut a, mut b) = (XBlock::default(), XBlock::default());
            split_block(&xb, &mut a);
            // SAFETY: AVX-512 checked above.
            unsafe { split_block_512(&xb, &mut b) };
            prop_assert_eq!(a.q, b.q);
            prop_assert_eq!(a.d.map(f32::to_bits), b.d.map(f32::to_bits));
            prop_assert_eq!(a.start, b.start);
            let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
            if amax < 2f64.powi(-100) {
                // Parity only: with subnormal scales the bound is lost.
                return Ok(());
            }
            let bytes: &[i8; 64] = bytemuck::cast_ref(&a.q);
            for (i, &v) in xb.iter().enumerate() {
                let y = a.d[0] as f64 * bytes[i] as f64 + a.d[1] as f64 * bytes[32 + i] as f64;
                let bound = amax / (2.0 * 127.0 * 256.0) * 1.01;
                prop_assert!((y - v as f64).abs() <= bound, "{i}: {y} vs {v}");
            }
        }
    }

    /// A rest that rounds to +128 is carried into the first part, the
    /// same on both splits.
    #[test]
    fn a_rest_of_128_is_carried() {
        let mut xb = [0.0f32; QK];
        xb[0] = 127.0; // d = 1
        xb[1] = 5.499; // 5 + 0.499 · 256 → 128 → 6 and −128
        let mut a = XBlock::default();
        split_block(&xb, &mut a);
        let bytes: &[i8; 64] = bytemuck::cast_ref(&a.q);
        assert_eq!((bytes[1], bytes[33]), (6, -128));
        if crate::x86::avx512_available() {
            let mut b = XBlock::default();
            // SAFETY: AVX-512 checked above.
            unsafe { split_block_512(&xb, &mut b) };
            assert_eq!((a.q, a.start), (b.q, b.start));
        }
    }

    /// NaN and infinity take the reference path: NaN scales.
    /// All-zero blocks (a prompt's inputs have some) take a short way
    /// to the reference's answer.
    #[test]
    fn zero_blocks_split_as_the_reference() {
        if !crate::x86::avx512_available() {
            return;
        }
        for xb in [[0.0f32; QK], [-0.0; QK]] {
            let (mut a, mut b) = (XBlock::default(), XBlock::default());
            b.q = [-1; 16];
            b.start = [3, 4];
            split_block(&xb, &mut a);
            // SAFETY: AVX-512 checked above.
            unsafe { split_block_512(&xb, &mut b) };
            assert_eq!(a.q, b.q);
            assert_eq!(a.d.map(f32::to_bits), b.d.map(f32::to_bits));
            assert_eq!(a.start, b.start);
        }
    }

    /// `prepare_f32` splits an input for q4 and q8 weights only: f32
    /// matrices (prompt attention's) go to the panel kernel, and a split
    /// of their inputs was a third of all the splitting in a prompt.
    #[test]
    fn prepare_splits_for_quantized_weights_only() {
        if !crate::x86::avx512_available() {
            return;
        }
        let (n, cols) = (MIN_TOKENS, 2 * QK);
        let x = vec![0.5f32; n * cols];
        let wf = vec![1.0f32; 3 * cols];
        let q4 = vec![crate::quant::BlockQ4 { qs: [0x88; 16] }; 3 * 2];
        let sc = vec![half::f16::ONE; 3 * 2];
        let f32_w = WeightsRef::new(3, cols, Planes::F32(&wf)).expect("f32");
        let q4_w = WeightsRef::new(
            3,
            cols,
            Planes::Q4 {
                quants: &q4,
                scales: &sc,
            },
        )
        .expect("q4");
        let pool = Pool::new(1);
        for (w, split) in [(&f32_w, false), (&q4_w, true)] {
            let xa = F32Activations::new(&x, n, cols);
            prepare_f32(w, &xa, &pool);
            let built_later = std::cell::Cell::new(false);
            xa.layout(SLOT, || {
                built_later.set(true);
                split_activations(&xa, &pool)
            });
            assert_eq!(!built_later.get(), split, "{}", w.ty());
        }
    }

    #[test]
    fn non_finite_blocks_get_nan_scales() {
        if !crate::x86::avx512_available() {
            return;
        }
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for scale in [1.0, 0.0] {
                let mut xb = block(3, scale, false);
                xb[17] = bad;
                let mut m = XBlock::default();
                // SAFETY: AVX-512 checked above.
                unsafe { split_block_512(&xb, &mut m) };
                assert!(m.d[0].is_nan() && m.d[1].is_nan(), "{bad} among {scale}");
            }
        }
    }
}
