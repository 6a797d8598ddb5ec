//! AMX (Advanced Matrix Extensions, Sapphire Rapids and later) prompt
//! kernel: quantized weights × f32 activations on the tile unit.
//!
//! The tile unit multiplies bf16 matrices (16 × 32 by 32 × 16, into 16 × 16
//! f32) about thirty times faster than AVX-512 FMAs do, but bf16 keeps
//! 8 significant bits. So each f32 operand is split in two bf16,
//! `v ≈ hi + lo` (`hi` the nearest bf16, `lo` the nearest bf16 to the
//! rest: 16 significant bits, error ≤ 2⁻¹⁶·|v|), and each tile product is
//! `w_hi·x_hi + w_hi·x_lo + w_lo·x_hi` (the dropped `w_lo·x_lo` is at most
//! 2⁻¹⁶ of the term), summed in f32. Each product is then within about
//! 3·2⁻¹⁶ of exact ([`crate::dispatch::Isa::f32_tolerance`]): far below
//! what q8 weights or int8 activations change (2⁻⁸ and more), so prompt
//! logits stay with the f32 path's, not with a bf16 approximation.
//!
//! Layout (all tiles 16 rows × 64 bytes, kept as runs of 64-byte lines):
//! - activations (A): per 16-token tile and 32-column step, a hi tile then
//!   a lo tile, row t = token t's 32 values. Built once per input
//!   ([`F32Activations::layout`]).
//! - weights (B): per 16-row tile and step, a hi tile then a lo tile in
//!   the tile unit's pair layout, row p = columns 2p and 2p + 1 of the 16
//!   rows. Built per pool task from the dequantized rows (as the f32
//!   kernels dequantize), so the file keeps its layout and the cost is
//!   spread over every token of the prompt.
//! - products (C): 16 tokens × 16 weight rows, stored straight into the
//!   task's columns of `out (n, rows)`: nothing is transposed afterwards.
//!
//! Linux hands out the tile state only on request (`arch_prctl`), asked
//! for once in [`available`].

// Index loops over small register arrays read closest to the math here.
#![allow(clippy::needless_range_loop)]

use super::avx2;
use crate::pool::{Columns, Pool};
use crate::quant::{F32Activations, WeightsRef};
use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::ops::Range;
use std::sync::OnceLock;

/// From this many tokens the tile kernel pays for arranging the weights;
/// below it the AVX-512 kernels run.
pub(crate) const MIN_TOKENS: usize = 8;

/// The [`F32Activations::layout`] slot of the activation tiles.
const SLOT: usize = 0;

/// Columns per step: one bf16 tile row.
const STEP: usize = 32;

/// Token tiles per block: the block's activation tiles stay in L2 while
/// every weight tile of the task passes over them.
const TOKEN_TILES_PER_BLOCK: usize = 8;

/// Whether the CPU has AMX-TILE and AMX-BF16 (on top of the AVX-512 tier)
/// and the kernel lets this process use the tile registers.
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| super::avx512_available() && cpu_has_amx_bf16() && os_grants_tiles())
}

fn cpu_has_amx_bf16() -> bool {
    // CPUID leaf 7, EDX bit 22: AMX-BF16; bit 24: AMX-TILE.
    #[allow(unused_unsafe)]
    // SAFETY: CPUID exists on every x86-64 CPU; leaf 7 is asked for only
    // when the highest leaf reaches it.
    let edx = unsafe {
        if __get_cpuid_max(0).0 < 7 {
            return false;
        }
        __cpuid_count(7, 0).edx
    };
    edx & (1 << 22) != 0 && edx & (1 << 24) != 0
}

#[cfg(target_os = "linux")]
fn os_grants_tiles() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: this arch_prctl only asks the kernel for the tile-data state
    // component for the whole process; it passes no memory.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn os_grants_tiles() -> bool {
    false
}

/// One 64-byte tile row, aligned to a cache line.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Line([u32; 16]);

const _: () = assert!(std::mem::size_of::<Line>() == 64);

/// Rows of a tile, and lines per tile.
const TILE: usize = 16;

/// Tiles in `Line`s: per 16-row (or 16-token) tile, every step's hi tile
/// then lo tile.
struct Tiles {
    lines: Vec<Line>,
    steps: usize,
}

/// Activation tile buffers given back by dropped [`Tiles`].
static FREE_LINES: super::Recycler<Line> = super::Recycler::new();

impl Drop for Tiles {
    fn drop(&mut self) {
        FREE_LINES.give(std::mem::take(&mut self.lines));
    }
}

impl Tiles {
    /// Tile `i`'s first step.
    fn tile(&self, i: usize) -> *const Line {
        self.lines[i * self.steps * 2 * TILE..].as_ptr()
    }
}

thread_local! {
    /// A task's weight tiles and 16 dequantized rows, kept between tasks
    /// so that a prompt does not allocate (and fault in) them per task.
    static SCRATCH: RefCell<(Tiles, Vec<f32>)> =
        const { RefCell::new((Tiles { lines: Vec::new(), steps: 0 }, Vec::new())) };
}

/// The table's in-place entry (see [`crate::dispatch::ColsKernel`]): any
/// weights × f32 activations, `out` the task's columns of `(n, rows)`.
pub(crate) fn matmul_f32_cols(w: &WeightsRef<'_>, x: &F32Activations<'_>, out: Columns<'_>) {
    assert!(out.cols().end <= w.rows(), "matmul: rows out of range");
    assert_eq!(out.n(), x.n(), "matmul: out has other tokens than x");
    assert_eq!(x.cols(), w.cols(), "matmul: x is not (n, cols)");
    assert!(
        w.cols().is_multiple_of(STEP),
        "matmul: columns not whole blocks"
    );
    // SAFETY: only reachable through `crate::x86::AMX`, handed out after
    // `available()`: AVX-512 and AMX-BF16 present, the tile state granted.
    // Shapes are checked above; tile stores go through `Columns`' bounds.
    unsafe { matmul(w, out.cols(), x, out) }
}

/// The table's `(rows, n)` entry: the tile kernel into a token-major
/// buffer, transposed, from [`MIN_TOKENS`] tokens on (whole blocks of
/// columns); the AVX-512 kernels otherwise.
pub(crate) fn matmul_f32_entry(
    w: &WeightsRef<'_>,
    rows: Range<usize>,
    x: &F32Activations<'_>,
    out: &mut [f32],
) {
    let n = x.n();
    if n < MIN_TOKENS || !w.cols().is_multiple_of(STEP) || rows.is_empty() {
        return super::avx512::matmul_f32_entry(w, rows, x, out);
    }
    assert!(rows.end <= w.rows(), "matmul: rows out of range");
    // SAFETY: as in matmul_f32_cols; the view covers the whole buffer.
    super::into_row_major(n, rows.len(), out, |o| unsafe { matmul(w, rows, x, o) });
}

/// The nearest bf16 of each lane (round to nearest even), as f32 bits with
/// the low half zero, and what is left over.
#[inline(always)]
unsafe fn round_bf16(v: __m512) -> (__m512i, __m512) {
    let b = _mm512_castps_si512(v);
    let lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
    let r = _mm512_add_epi32(b, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
    let hi = _mm512_and_si512(r, _mm512_set1_epi32(0xFFFF_0000u32 as i32));
    (hi, _mm512_sub_ps(v, _mm512_castsi512_ps(hi)))
}

/// 32 f32 (`a` then `b`) as 32 bf16 `hi` and 32 bf16 `lo`, in order.
#[inline(always)]
unsafe fn split32(a: __m512, b: __m512) -> (__m512i, __m512i) {
    let (ha, ra) = round_bf16(a);
    let (hb, rb) = round_bf16(b);
    let (la, _) = round_bf16(ra);
    let (lb, _) = round_bf16(rb);
    // The high halves of the 32 lanes of a then b: u16 lanes 1, 3, ..., 63.
    const ODD: [u16; 32] = {
        let mut v = [0u16; 32];
        let mut j = 0;
        while j < 32 {
            v[j] = 2 * j as u16 + 1;
            j += 1;
        }
        v
    };
    let odd = _mm512_loadu_si512(ODD.as_ptr() as *const __m512i);
    (
        _mm512_permutex2var_epi16(ha, odd, hb),
        _mm512_permutex2var_epi16(la, odd, lb),
    )
}

/// Transposes a 16 × 16 matrix of 32-bit lanes held in 16 registers.
#[inline(always)]
unsafe fn transpose16(r: &mut [__m512i; 16]) {
    // (Loops, not array::from_fn: a closure would not inherit the target
    // features, and these must inline.)
    let mut f = [_mm512_setzero_ps(); 16];
    for i in 0..16 {
        f[i] = _mm512_castsi512_ps(r[i]);
    }
    // 2 × 2 blocks of lanes, then 4 × 4, then 128-bit quarters twice.
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(f[2 * i], f[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(f[2 * i], f[2 * i + 1]);
    }
    let mut u = [_mm512_setzero_ps(); 16];
    for i in 0..4 {
        let b = 4 * i;
        u[b] = _mm512_shuffle_ps::<0x44>(t[b], t[b + 2]);
        u[b + 1] = _mm512_shuffle_ps::<0xEE>(t[b], t[b + 2]);
        u[b + 2] = _mm512_shuffle_ps::<0x44>(t[b + 1], t[b + 3]);
        u[b + 3] = _mm512_shuffle_ps::<0xEE>(t[b + 1], t[b + 3]);
    }
    for h in 0..2 {
        let b = 8 * h;
        for j in 0..4 {
            t[b + j] = _mm512_shuffle_f32x4::<0x88>(u[b + j], u[b + 4 + j]);
            t[b + 4 + j] = _mm512_shuffle_f32x4::<0xDD>(u[b + j], u[b + 4 + j]);
        }
    }
    for j in 0..8 {
        r[j] = _mm512_castps_si512(_mm512_shuffle_f32x4::<0x88>(t[j], t[8 + j]));
        r[8 + j] = _mm512_castps_si512(_mm512_shuffle_f32x4::<0xDD>(t[j], t[8 + j]));
    }
}

/// The activation tiles of `x`: per token tile and step, the 16 tokens'
/// 32 values split into hi and lo (rows of zeros past the last token).
/// Token tiles are split over `pool`: one matrix's input is packed once,
/// before its tasks start, so one thread packing while the others wait
/// would cost a whole pass over the input.
fn pack_activations(x: &F32Activations<'_>, pool: &Pool) -> Tiles {
    let (n, cols) = (x.n(), x.cols());
    let steps = cols / STEP;
    let per_tile = steps * 2 * TILE;
    let ttiles = n.div_ceil(TILE);
    let mut lines = FREE_LINES.take(ttiles * per_tile);
    let tiles_per_task = ttiles.div_ceil(pool.threads().max(1));
    pool.for_chunks(&mut lines, tiles_per_task * per_tile, &|i, part| {
        // SAFETY: only reached from the AMX table's entries, handed out
        // after `available()` (AVX-512 present); `part` holds whole tiles
        // from tile `i · tiles_per_task` on.
        unsafe { pack_token_tiles(x, i * tiles_per_task, part) }
    });
    Tiles { lines, steps }
}

/// Token tiles `first..` of `x` into `part` (whole tiles; every line is
/// written, zeros past the last token).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn pack_token_tiles(x: &F32Activations<'_>, first: usize, part: &mut [Line]) {
    let cols = x.cols();
    let steps = cols / STEP;
    let per_tile = steps * 2 * TILE;
    let t0 = first * TILE;
    for slot in 0..part.len() / per_tile * TILE {
        let t = t0 + slot;
        let (tt, ti) = (slot / TILE, slot % TILE);
        for s in 0..steps {
            let (hi, lo) = if t < x.n() {
                let p = x.data()[t * cols + s * STEP..][..STEP].as_ptr();
                split32(_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)))
            } else {
                (_mm512_setzero_si512(), _mm512_setzero_si512())
            };
            let base = (tt * steps + s) * 2 * TILE;
            _mm512_storeu_si512(part[base + ti].0.as_mut_ptr() as *mut __m512i, hi);
            _mm512_storeu_si512(part[base + TILE + ti].0.as_mut_ptr() as *mut __m512i, lo);
        }
    }
}

/// The table's `prepare` entry: packs `x`'s tiles over `pool` before the
/// matrix's tasks start (they find them in the layout cache).
pub(crate) fn prepare_f32(_: &WeightsRef<'_>, x: &F32Activations<'_>, pool: &Pool) {
    x.layout(SLOT, || pack_activations(x, pool));
}

/// Weight rows `rows` as pair-layout tiles into `tiles` (16-row tiles,
/// padded with zero rows), through 16 dequantized rows in `row`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn pack_weights(
    w: &WeightsRef<'_>,
    rows: Range<usize>,
    tiles: &mut Tiles,
    row: &mut Vec<f32>,
) {
    let cols = w.cols();
    let steps = cols / STEP;
    let wtiles = rows.len().div_ceil(TILE);
    tiles.steps = steps;
    tiles.lines.clear();
    tiles.lines.resize(wtiles * steps * 2 * TILE, Line([0; 16]));
    // The tile's 16 rows dequantized (zero rows past the end), then one
    // step at a time: split, transpose into pair rows, store.
    row.resize(TILE * cols, 0.0);
    for wt in 0..wtiles {
        let r0 = rows.start + wt * TILE;
        let valid = (rows.end - r0).min(TILE);
        for (ri, dst) in row.chunks_exact_mut(cols).enumerate() {
            if ri < valid {
                avx2::dequant_row(w, r0 + ri, dst);
            } else {
                dst.fill(0.0);
            }
        }
        for s in 0..steps {
            let mut hi = [_mm512_setzero_si512(); TILE];
            let mut lo = [_mm512_setzero_si512(); TILE];
            for ri in 0..TILE {
                let p = row[ri * cols + s * STEP..][..STEP].as_ptr();
                (hi[ri], lo[ri]) = split32(_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)));
            }
            transpose16(&mut hi);
            transpose16(&mut lo);
            let base = (wt * steps + s) * 2 * TILE;
            for p in 0..TILE {
                _mm512_store_si512(tiles.lines[base + p].0.as_mut_ptr() as *mut __m512i, hi[p]);
                _mm512_store_si512(
                    tiles.lines[base + TILE + p].0.as_mut_ptr() as *mut __m512i,
                    lo[p],
                );
            }
        }
    }
}

/// The tile configuration: palette 1, all eight tiles 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

const CONFIG: TileConfig = {
    let mut c = [0u8; 64];
    c[0] = 1;
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = 64; // bytes per row (u16, little-endian)
        c[48 + t] = 16; // rows
        t += 1;
    }
    TileConfig(c)
};

/// tmm0 = the product of the activation tile at `a` with the weight tile
/// at `b`, over `steps` steps of 32 columns: three bf16 products per step
/// (hi·hi, hi·lo, lo·hi: the order of [`tile_products_2x2`], so that a
/// product has the same bits whichever way the pool splits the rows). For
/// the edges [`tile_products_2x2`] leaves.
///
/// Tiles: tmm2/tmm3 weight hi/lo, tmm4/tmm5 activation hi/lo.
#[inline(always)]
unsafe fn tile_products(a: *const Line, b: *const Line, steps: usize) {
    asm!(
        "tilezero tmm0",
        "2:",
        "tileloadd tmm2, [{b} + {s} * 1]",
        "tileloadd tmm3, [{b} + {s} * 1 + 1024]",
        "tileloadd tmm4, [{a} + {s} * 1]",
        "tileloadd tmm5, [{a} + {s} * 1 + 1024]",
        "tdpbf16ps tmm0, tmm4, tmm2",
        "tdpbf16ps tmm0, tmm4, tmm3",
        "tdpbf16ps tmm0, tmm5, tmm2",
        "add {b}, 2048",
        "add {a}, 2048",
        "dec {n}",
        "jnz 2b",
        b = inout(reg) b => _,
        a = inout(reg) a => _,
        s = in(reg) 64usize,
        n = inout(reg) steps => _,
        options(nostack, readonly),
    )
}

/// tmm0..tmm3 = activation tiles `a0`, `a1` × weight tiles `b0`, `b1`
/// (tmm0 = a0·b0, tmm1 = a1·b0, tmm2 = a0·b1, tmm3 = a1·b1): four
/// independent sums, so that each tile product waits for its own
/// accumulator less often than with two (the products' latency is about
/// three times their issue interval).
///
/// Tiles: tmm4/tmm5 activations, tmm6/tmm7 weights, reloaded hi then lo.
#[inline(always)]
unsafe fn tile_products_2x2(
    a0: *const Line,
    a1: *const Line,
    b0: *const Line,
    b1: *const Line,
    steps: usize,
) {
    asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        "2:",
        // hi · hi
        "tileloadd tmm4, [{a0} + {s} * 1]",
        "tileloadd tmm5, [{a1} + {s} * 1]",
        "tileloadd tmm6, [{b0} + {s} * 1]",
        "tileloadd tmm7, [{b1} + {s} * 1]",
        "tdpbf16ps tmm0, tmm4, tmm6",
        "tdpbf16ps tmm1, tmm5, tmm6",
        "tdpbf16ps tmm2, tmm4, tmm7",
        "tdpbf16ps tmm3, tmm5, tmm7",
        // hi · lo
        "tileloadd tmm6, [{b0} + {s} * 1 + 1024]",
        "tileloadd tmm7, [{b1} + {s} * 1 + 1024]",
        "tdpbf16ps tmm0, tmm4, tmm6",
        "tdpbf16ps tmm1, tmm5, tmm6",
        "tdpbf16ps tmm2, tmm4, tmm7",
        "tdpbf16ps tmm3, tmm5, tmm7",
        // lo · hi
        "tileloadd tmm4, [{a0} + {s} * 1 + 1024]",
        "tileloadd tmm5, [{a1} + {s} * 1 + 1024]",
        "tileloadd tmm6, [{b0} + {s} * 1]",
        "tileloadd tmm7, [{b1} + {s} * 1]",
        "tdpbf16ps tmm0, tmm4, tmm6",
        "tdpbf16ps tmm1, tmm5, tmm6",
        "tdpbf16ps tmm2, tmm4, tmm7",
        "tdpbf16ps tmm3, tmm5, tmm7",
        "add {a0}, 2048",
        "add {a1}, 2048",
        "add {b0}, 2048",
        "add {b1}, 2048",
        "dec {n}",
        "jnz 2b",
        a0 = inout(reg) a0 => _,
        a1 = inout(reg) a1 => _,
        b0 = inout(reg) b0 => _,
        b1 = inout(reg) b1 => _,
        s = in(reg) 64usize,
        n = inout(reg) steps => _,
        options(nostack, readonly),
    )
}

/// `tilestored` of tile register `C` (0 to 3) to `p`, rows `stride`
/// bytes apart.
#[inline(always)]
unsafe fn tile_store<const C: usize>(p: *mut u8, stride: usize) {
    match C {
        0 => {
            asm!("tilestored [{p} + {s} * 1], tmm0", p = in(reg) p, s = in(reg) stride, options(nostack))
        }
        1 => {
            asm!("tilestored [{p} + {s} * 1], tmm1", p = in(reg) p, s = in(reg) stride, options(nostack))
        }
        2 => {
            asm!("tilestored [{p} + {s} * 1], tmm2", p = in(reg) p, s = in(reg) stride, options(nostack))
        }
        _ => {
            asm!("tilestored [{p} + {s} * 1], tmm3", p = in(reg) p, s = in(reg) stride, options(nostack))
        }
    }
}

/// Stores tile `C` (tmm0 to tmm3: 16 tokens × 16 weight rows) at tokens
/// `t0..` and view columns `c0..` of `out`, as much of it as exists.
#[inline(always)]
unsafe fn store_tile<const C: usize>(out: &mut Columns<'_>, t0: usize, c0: usize) {
    let (vt, vc) = ((out.n() - t0).min(TILE), (out.cols().len() - c0).min(TILE));
    if vt == TILE && vc == TILE {
        let stride = out.stride() * 4;
        let p = out.block_ptr(t0, c0, TILE, TILE);
        tile_store::<C>(p as *mut u8, stride);
        return;
    }
    let mut c = [Line([0; 16]); TILE];
    tile_store::<C>(c.as_mut_ptr() as *mut u8, 64);
    for i in 0..vt {
        let row = &mut out.row_mut(t0 + i)[c0..c0 + vc];
        for (j, v) in row.iter_mut().enumerate() {
            *v = f32::from_bits(c[i].0[j]);
        }
    }
}

/// Weight rows `rows` × all tokens of `x` into `out`, whose columns stand
/// for those rows.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn matmul(
    w: &WeightsRef<'_>,
    rows: Range<usize>,
    x: &F32Activations<'_>,
    mut out: Columns<'_>,
) {
    let n = x.n();
    assert_eq!(rows.len(), out.cols().len(), "matmul: view and rows differ");
    // Packed by `prepare_f32` unless called outside the table's entry.
    let acts = x.layout(SLOT, || pack_activations(x, &Pool::new(1)));
    SCRATCH.with(|s| {
        let (wtiles_buf, row) = &mut *s.borrow_mut();
        pack_weights(w, rows.clone(), wtiles_buf, row);
        let steps = wtiles_buf.steps;
        debug_assert_eq!(acts.steps, steps);
        let (wtiles, ttiles) = (rows.len().div_ceil(TILE), n.div_ceil(TILE));
        asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly));
        for tb in (0..ttiles).step_by(TOKEN_TILES_PER_BLOCK) {
            let tend = (tb + TOKEN_TILES_PER_BLOCK).min(ttiles);
            // 2 × 2 blocks of (token tile, weight tile), single tiles at
            // the edges (an odd last token tile or weight tile).
            for wt in (0..wtiles).step_by(2) {
                let mut tt = tb;
                if wt + 1 < wtiles {
                    let (b0, b1) = (wtiles_buf.tile(wt), wtiles_buf.tile(wt + 1));
                    while tt + 1 < tend {
                        tile_products_2x2(acts.tile(tt), acts.tile(tt + 1), b0, b1, steps);
                        store_tile::<0>(&mut out, tt * TILE, wt * TILE);
                        store_tile::<1>(&mut out, (tt + 1) * TILE, wt * TILE);
                        store_tile::<2>(&mut out, tt * TILE, (wt + 1) * TILE);
                        store_tile::<3>(&mut out, (tt + 1) * TILE, (wt + 1) * TILE);
                        tt += 2;
                    }
                }
                for t1 in tt..tend {
                    for w1 in wt..(wt + 2).min(wtiles) {
                        tile_products(acts.tile(t1), wtiles_buf.tile(w1), steps);
                        store_tile::<0>(&mut out, t1 * TILE, w1 * TILE);
                    }
                }
            }
        }
        // Back to the initial state, so that context switches stop saving
        // the 8 KB of tile data.
        asm!("tilerelease", options(nostack, nomem));
    });
}
