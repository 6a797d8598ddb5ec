//! AVX2 prompt kernel: q4 and q8 weights × int8 activations (`--act
//! int8`) on `vpmaddubsw`, for x86 CPUs without AVX-512 (Intel before Ice
//! Lake, AMD before Zen 4).
//!
//! `vpmaddubsw` multiplies 32 unsigned bytes by 32 signed bytes and adds
//! neighbouring pairs into 16-bit lanes. With q4 nibbles (0..15) against
//! int8 activations (±127) a pair is at most 3,810, so the eight steps of a
//! block of 32 columns add up in 16 bits without saturating (30,480), and
//! one `vpmaddwd` per block widens them: about two instructions per 32
//! multiply-adds, where f32 FMAs take four. q8 weights are signed: they
//! go in as `|w|` against `x·sign(w)` (`vpsignb`), a pair up to
//! 2·128·127, widened at every step: four instructions per 32. The
//! activations are the AVX-512 kernel's int8 blocks ([`super::vnni`]).
//!
//! Not used for f32 inputs: the AVX-512 kernel's two-part split (for f32
//! accuracy) doubles the integer work, and on this tier that came out no
//! faster than the f32 FMA kernels (pp512 q4 at 2 threads: 552 against
//! 540 tok/s), so prompts keep those.
//!
//! Layout: per group of 8 weight rows, block and step of 4 columns, the 8
//! rows' 4 bytes (q4: nibbles as bytes; one register); the nibble offset 8
//! is taken off through each block's accumulator start, as in
//! [`super::vnni`]. Products: the 8 lanes are 8 weight rows of one token,
//! stored straight into `out (n, rows)`.

// Index loops over small register arrays read closest to the math here.
#![allow(clippy::needless_range_loop)]

use super::vnni::{self, Wt, XBlock};
use crate::pool::{Columns, Pool};
use crate::quant::{Q8Activations, WeightsRef, QK};
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::ops::Range;

/// From this many tokens packing the weights pays for itself.
pub(crate) const MIN_TOKENS: usize = 8;

/// Weight rows per group: one register of 8 lanes.
const ROWS: usize = 8;

/// Tokens per tile: 6 × (16-bit sums, f32 sums), the weights, one
/// activation broadcast, the ones for `vpmaddwd` and the scales fill 16
/// registers.
const TOKENS: usize = 6;

/// Steps of 4 columns per block.
const STEPS: usize = QK / 4;

/// 32 bytes, aligned: 8 rows' 4 nibbles.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(32))]
struct Line([u32; 8]);

const _: () = assert!(std::mem::size_of::<Line>() == 32);

/// A task's packed weights: per group, block and step one [`Line`], and
/// per group and block 8 f32 scales.
type Packed = super::Packed<Line>;

thread_local! {
    static PACKED: RefCell<Packed> = const { RefCell::new(Packed::new()) };
}

/// One tile: the group's 8 rows × tokens `t0..t0 + T`, over all blocks,
/// stored into view columns `c0..c0 + valid` of `out`. q4 (`Q8` false):
/// unsigned nibbles, a block's 8 steps summed in 16 bits; q8: signed
/// bytes, multiplied as `|w| · (x·sign w)` (a pair at most 2·128·127, so
/// each step is widened to 32 bits at once).
///
/// # Safety
/// AVX2 and FMA present; `lines`/`scales` hold the group's `nb` blocks;
/// `x` holds tokens `t0..t0 + T`, `nb` blocks each.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const T: usize, const Q8: bool>(
    lines: &[Line],
    scales: &[f32],
    x: &[XBlock],
    nb: usize,
    t0: usize,
    out: &mut Columns<'_>,
    c0: usize,
    valid: usize,
) {
    debug_assert!(lines.len() >= nb * STEPS && scales.len() >= nb * ROWS);
    debug_assert!(x.len() >= (t0 + T) * nb);
    let xp = x.as_ptr().add(t0 * nb);
    let wl = lines.as_ptr();
    let ones = _mm256_set1_epi16(1);
    let mut f = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        let dw = _mm256_loadu_ps(scales.as_ptr().add(b * ROWS));
        let mut acc = [_mm256_setzero_si256(); T];
        for s in 0..STEPS {
            let w = _mm256_load_si256(wl.add(b * STEPS + s) as *const __m256i);
            if Q8 {
                let wa = _mm256_abs_epi8(w);
                for t in 0..T {
                    let xv = _mm256_set1_epi32((*xp.add(t * nb + b)).q[s]);
                    let p = _mm256_maddubs_epi16(wa, _mm256_sign_epi8(xv, w));
                    acc[t] = _mm256_add_epi32(acc[t], _mm256_madd_epi16(p, ones));
                }
            } else {
                for t in 0..T {
                    let xv = _mm256_set1_epi32((*xp.add(t * nb + b)).q[s]);
                    acc[t] = _mm256_add_epi16(acc[t], _mm256_maddubs_epi16(w, xv));
                }
            }
        }
        for t in 0..T {
            let m = &*xp.add(t * nb + b);
            let sum = if Q8 {
                acc[t]
            } else {
                let start = _mm256_set1_epi32(m.start[Wt::Q4 as usize]);
                _mm256_add_epi32(_mm256_madd_epi16(acc[t], ones), start)
            };
            let v = _mm256_mul_ps(_mm256_cvtepi32_ps(sum), _mm256_set1_ps(m.d[0]));
            f[t] = _mm256_fmadd_ps(v, dw, f[t]);
        }
    }
    let mut lanes = [0.0f32; ROWS];
    for t in 0..T {
        _mm256_storeu_ps(lanes.as_mut_ptr(), f[t]);
        out.row_mut(t0 + t)[c0..c0 + valid].copy_from_slice(&lanes[..valid]);
    }
}

/// Weight rows `rows` (q8 when `Q8`, else q4) × the `n` int8 tokens of
/// `x` into `out`, whose columns stand for those rows.
///
/// # Safety
/// AVX2 and FMA present.
unsafe fn matmul<const Q8: bool>(
    w: &WeightsRef<'_>,
    rows: Range<usize>,
    x: &[XBlock],
    n: usize,
    mut out: Columns<'_>,
) {
    let nb = w.cols() / QK;
    assert_eq!(rows.len(), out.cols().len(), "matmul: view and rows differ");
    assert_eq!(x.len(), n * nb, "matmul: arranged activations");
    PACKED.with(|p| {
        let p = &mut *p.borrow_mut();
        // q8 bytes as they are (signed, against x·sign w).
        p.pack(w, rows.clone(), ROWS, 0);
        // q8 needs one more register (|w|): a token fewer.
        let per = if Q8 { TOKENS - 1 } else { TOKENS };
        p.for_each_tile(
            rows.len(),
            nb,
            ROWS,
            n,
            per,
            |lines, scales, t0, take, c0, valid| {
                let o = &mut out;
                match take {
                    6 => tile::<6, Q8>(lines, scales, x, nb, t0, o, c0, valid),
                    5 => tile::<5, Q8>(lines, scales, x, nb, t0, o, c0, valid),
                    4 => tile::<4, Q8>(lines, scales, x, nb, t0, o, c0, valid),
                    3 => tile::<3, Q8>(lines, scales, x, nb, t0, o, c0, valid),
                    2 => tile::<2, Q8>(lines, scales, x, nb, t0, o, c0, valid),
                    _ => tile::<1, Q8>(lines, scales, x, nb, t0, o, c0, valid),
                }
            },
        );
    });
}

/// The table's `prepare` entry for int8 inputs.
pub(crate) fn prepare_q8(x: &Q8Activations, pool: &Pool) {
    x.layout(vnni::Q8_SLOT, || vnni::int8_blocks(x, pool));
}

/// The table's [`crate::dispatch::Q8ColsKernel::takes`]: q4 and q8 (other
/// types run the AVX2 row kernels).
pub(crate) fn takes(ty: crate::quant::TensorType) -> bool {
    use crate::quant::TensorType as T;
    matches!(ty, T::Q4 | T::Q8)
}

/// q4 or q8 weights whose columns are whole blocks, or a panic naming
/// `what`.
fn check(w: &WeightsRef<'_>, what: &str) {
    assert!(
        takes(w.ty()) && w.cols().is_multiple_of(QK),
        "{what}: the AVX2 tile takes q4 and q8 weights of whole blocks, got {} × {}",
        w.ty(),
        w.cols()
    );
}

/// The table's in-place int8 entry (see [`crate::dispatch::Q8ColsKernel`]):
/// q4 and q8 weights.
pub(crate) fn matmul_q8_cols(w: &WeightsRef<'_>, x: &Q8Activations, out: Columns<'_>) {
    assert!(out.cols().end <= w.rows(), "matmul_q8: rows out of range");
    assert_eq!(out.n(), x.n(), "matmul_q8: out has other tokens than x");
    assert_eq!(x.cols(), w.cols(), "matmul_q8: x is not (n, cols)");
    check(w, "matmul_q8");
    let xs = &x
        .layout(vnni::Q8_SLOT, || vnni::int8_blocks(x, &Pool::new(1)))
        .0;
    // SAFETY: only reachable through `crate::x86::AVX2` (and the tables
    // built on it), handed out after `avx2_available()`: AVX2 and FMA
    // present. Shapes are checked above; stores go through
    // `Columns::row_mut`'s bounds.
    unsafe {
        match w.ty() {
            crate::quant::TensorType::Q8 => matmul::<true>(w, out.cols(), xs, x.n(), out),
            _ => matmul::<false>(w, out.cols(), xs, x.n(), out),
        }
    }
}
