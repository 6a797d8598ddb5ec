//! Weight rows packed for the integer prompt tiles (`vnni.rs`, 16 rows per
//! 512-bit line; `maddubs.rs`, 8 rows per 256-bit line): per group of rows,
//! block of 32 columns and step of 4, the rows' 4 bytes side by side, so
//! that one load gives a `vpdpbusd` / `vpmaddubsw` its weight operand.
//!
//! A prompt packs every matrix once per task, about 1 byte per weight: on
//! a 512-token prompt that was 4.5% of the time with one row and one word
//! at a time. Whole sets of a line's rows are now packed as a transpose
//! (16 or 8 rows' 16-byte pieces → 4 lines, in registers, per block),
//! with the word-at-a-time loop kept for the last rows and as the
//! reference the tests hold the transpose to.

use crate::quant::{Planes, WeightsRef, QK};
use std::arch::x86_64::*;
use std::ops::Range;

/// A prompt task's packed weights: the kernel's lines of weight bytes
/// (per group of rows, block and step) and, per group and block, its
/// rows' f32 scales. Each kernel keeps one per thread between tasks, so
/// that a prompt does not allocate (and fault in) them per task.
pub(crate) struct Packed<L> {
    pub(crate) lines: Vec<L>,
    pub(crate) scales: Vec<f32>,
}

impl<L> Packed<L> {
    /// Empty, allocating nothing.
    pub(crate) const fn new() -> Packed<L> {
        Packed {
            lines: Vec::new(),
            scales: Vec::new(),
        }
    }
}

/// Steps of 4 columns per block.
const STEPS: usize = QK / 4;

impl<L: bytemuck::Pod> Packed<L> {
    /// Weight rows `rows` of q4 or q8 `w`, in groups of `group` rows (zero
    /// rows with zero scales past the end): per group, block of 32 columns
    /// and step of 4, the group's 4 bytes per row as the lanes of
    /// `group / lanes` lines (`lanes` = u32s per `L`), q4 nibbles as
    /// bytes and q8 words XORed with `q8_flip` (`0x8080_8080`: `w + 128`
    /// as unsigned bytes; 0: as they are); per group and block, the rows'
    /// scales.
    pub(crate) fn pack(
        &mut self,
        w: &WeightsRef<'_>,
        rows: Range<usize>,
        group: usize,
        q8_flip: u32,
    ) {
        self.pack_with(w, rows, group, q8_flip, true);
    }

    /// [`Packed::pack`], by the transpose where the CPU has it and `fast`.
    fn pack_with(
        &mut self,
        w: &WeightsRef<'_>,
        rows: Range<usize>,
        group: usize,
        q8_flip: u32,
        fast: bool,
    ) {
        let lanes = std::mem::size_of::<L>() / 4;
        assert!(
            lanes > 0 && group.is_multiple_of(lanes),
            "pack: {group} rows per group in lines of {lanes}"
        );
        let nb = w.cols() / QK;
        let groups = rows.len().div_ceil(group);
        // Every word and scale is written below (padding rows as zeros),
        // so the buffers are resized without being cleared first.
        self.lines
            .resize(groups * nb * STEPS * (group / lanes), L::zeroed());
        self.scales.resize(groups * nb * group, 0.0);
        let (lines, scales) = (&mut self.lines[..], &mut self.scales[..]);
        let words: &mut [u32] = bytemuck::cast_slice_mut(lines);
        let set = Set {
            w,
            first: rows.start,
            nb,
            group,
            lanes,
            q8_flip,
        };
        let mut i = 0;
        if fast {
            // Whole sets of `lanes` rows by the transpose.
            let whole = rows.len() / lanes * lanes;
            if lanes == 16 && super::avx512_available() {
                while i < whole {
                    // SAFETY: AVX-512 F checked just above.
                    unsafe { set.pack16(i, words, scales) };
                    i += lanes;
                }
            } else if lanes == 8 && super::avx2_available() {
                while i < whole {
                    // SAFETY: AVX2 and F16C checked just above.
                    unsafe { set.pack8(i, words, scales) };
                    i += lanes;
                }
            }
        }
        for i in i..groups * group {
            set.pack_row(i, (i < rows.len()).then_some(rows.start + i), words, scales);
        }
    }

    /// Walks the tiles of the packed `rows` × `n` tokens: for each group
    /// of `group` rows, its lines and scales (`nb` blocks), then tokens
    /// `per_tile` at a time (fewer in the last tile), calling
    /// `tile(lines, scales, t0, tokens, c0, valid)` with `c0` the group's
    /// first view column and `valid` its rows that are not padding.
    pub(crate) fn for_each_tile(
        &self,
        rows: usize,
        nb: usize,
        group: usize,
        n: usize,
        per_tile: usize,
        mut tile: impl FnMut(&[L], &[f32], usize, usize, usize, usize),
    ) {
        let per_group = nb * STEPS * group / (std::mem::size_of::<L>() / 4);
        for g in 0..rows.div_ceil(group) {
            let lines = &self.lines[g * per_group..][..per_group];
            let scales = &self.scales[g * nb * group..][..nb * group];
            let c0 = g * group;
            let valid = (rows - c0).min(group);
            let mut t0 = 0;
            while t0 < n {
                let take = (n - t0).min(per_tile);
                tile(lines, scales, t0, take, c0, valid);
                t0 += take;
            }
        }
    }
}

/// What a pack writes where: the rows from `first` of `w`, `group` per
/// group, `lanes` per line.
struct Set<'a, 'w> {
    w: &'a WeightsRef<'w>,
    first: usize,
    nb: usize,
    group: usize,
    lanes: usize,
    q8_flip: u32,
}

impl Set<'_, '_> {
    /// The word of packed row `i` (from `first`) at block `b`, step `s`.
    fn word_at(&self, i: usize, b: usize, s: usize) -> usize {
        let (g, ri) = (i / self.group, i % self.group);
        let per = self.group / self.lanes;
        (((g * self.nb + b) * STEPS + s) * per + ri / self.lanes) * self.lanes + ri % self.lanes
    }

    /// Where packed row `i`'s scale of block `b` goes.
    fn scale_at(&self, i: usize, b: usize) -> usize {
        ((i / self.group) * self.nb + b) * self.group + i % self.group
    }

    /// Packed row `i`, weight row `row` (a zero row for `None`), one word
    /// at a time: the reference for [`Set::pack16`] and [`Set::pack8`].
    fn pack_row(&self, i: usize, row: Option<usize>, words: &mut [u32], scales: &mut [f32]) {
        let word = |q: &[u8]| u32::from_le_bytes([q[0], q[1], q[2], q[3]]);
        for b in 0..self.nb {
            let at = |s: usize| self.word_at(i, b, s);
            let Some(r) = row else {
                for s in 0..STEPS {
                    words[at(s)] = 0;
                }
                scales[self.scale_at(i, b)] = 0.0;
                continue;
            };
            let d = match self.w.planes() {
                Planes::Q4 { quants, scales } => {
                    let qs = &quants[r * self.nb + b].qs;
                    for k in 0..4 {
                        // Byte j holds element j (low nibble) and j + 16.
                        let v = word(&qs[4 * k..]);
                        words[at(k)] = v & 0x0F0F_0F0F;
                        words[at(k + 4)] = (v >> 4) & 0x0F0F_0F0F;
                    }
                    scales[r * self.nb + b]
                }
                Planes::Q8 { quants, scales } => {
                    let qs: &[u8; QK] = bytemuck::cast_ref(&quants[r * self.nb + b].qs);
                    for s in 0..STEPS {
                        words[at(s)] = word(&qs[4 * s..]) ^ self.q8_flip;
                    }
                    scales[r * self.nb + b]
                }
                _ => unreachable!("Packed::pack: q4 and q8 weights only"),
            };
            scales[self.scale_at(i, b)] = d.to_f32();
        }
    }

    /// The quant bytes and scales of weight rows `r..r + count` (the rest
    /// of the 16 entries empty), as slices bounds-checked here, once per
    /// row; and the quant bytes per block.
    fn rows(&self, r: usize, count: usize) -> ([&[u8]; 16], [&[half::f16]; 16], usize) {
        let nb = self.nb;
        let (bytes, sc, per): (&[u8], &[half::f16], usize) = match self.w.planes() {
            Planes::Q4 { quants, scales } => (bytemuck::cast_slice(quants), scales, QK / 2),
            Planes::Q8 { quants, scales } => (bytemuck::cast_slice(quants), scales, QK),
            _ => unreachable!("Packed::pack: q4 and q8 weights only"),
        };
        let q = std::array::from_fn(|j| match j < count {
            true => &bytes[(r + j) * nb * per..][..nb * per],
            false => &[][..],
        });
        let s = std::array::from_fn(|j| match j < count {
            true => &sc[(r + j) * nb..][..nb],
            false => &[][..],
        });
        (q, s, per)
    }

    /// Packed rows `i..i + V::ROWS` (one line's lanes, weight rows from
    /// `first + i`): per block, the rows' 16-byte pieces transposed as
    /// words in four registers, each of which is one step's line (q8: two
    /// pieces, eight steps; q4: one piece, its low and high nibbles the
    /// eight steps).
    ///
    /// # Safety
    /// The CPU has `V`'s instructions (the callers' target features).
    #[inline(always)]
    unsafe fn pack_set<V: LineRegs>(&self, i: usize, words: &mut [u32], scales: &mut [f32]) {
        let (q, sc, per) = self.rows(self.first + i, V::ROWS);
        let low = V::splat(0x0F0F_0F0F);
        let flip = V::splat(self.q8_flip);
        for b in 0..self.nb {
            for piece in 0..per / 16 {
                let t = V::transpose(&q, b * per + 16 * piece);
                for (k, &v) in t.iter().enumerate() {
                    let at = |s| self.word_at(i, b, s)..self.word_at(i, b, s) + V::ROWS;
                    if per == QK {
                        V::store(&mut words[at(4 * piece + k)], V::xor(v, flip));
                    } else {
                        V::store(&mut words[at(k)], V::and(v, low));
                        V::store(&mut words[at(k + 4)], V::and(V::srli4(v), low));
                    }
                }
            }
            let h: [u16; 16] = std::array::from_fn(|j| sc[j].get(b).map_or(0, |d| d.to_bits()));
            V::scales(&h, &mut scales[self.scale_at(i, b)..][..V::ROWS]);
        }
    }

    /// [`Set::pack_set`] for lines of 16 rows (512-bit registers).
    ///
    /// # Safety
    /// AVX-512 F present. `i` is a multiple of 16.
    #[target_feature(enable = "avx2,f16c,avx512f")]
    unsafe fn pack16(&self, i: usize, words: &mut [u32], scales: &mut [f32]) {
        self.pack_set::<__m512i>(i, words, scales)
    }

    /// [`Set::pack_set`] for lines of 8 rows (256-bit registers).
    ///
    /// # Safety
    /// AVX2 and F16C present. `i` is a multiple of 8.
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn pack8(&self, i: usize, words: &mut [u32], scales: &mut [f32]) {
        self.pack_set::<__m256i>(i, words, scales)
    }
}

/// The register operations of [`Set::pack_set`], for 16 rows a line
/// (512-bit) and 8 (256-bit). Every method needs its width's
/// instructions: callers have them in their target features.
trait LineRegs: Copy {
    /// Rows (u32 lanes) per register.
    const ROWS: usize;
    /// Word `k` of the 16 bytes at `off` of each of the first `ROWS`
    /// rows, in register `k` (lane `j`: row `j`).
    unsafe fn transpose(rows: &[&[u8]; 16], off: usize) -> [Self; 4];
    unsafe fn splat(v: u32) -> Self;
    unsafe fn and(a: Self, b: Self) -> Self;
    unsafe fn xor(a: Self, b: Self) -> Self;
    /// Each u32 shifted right by 4 bits.
    unsafe fn srli4(a: Self) -> Self;
    /// `dst` holds `ROWS` words (bounds-checked by the caller's slice).
    unsafe fn store(dst: &mut [u32], v: Self);
    /// The first `ROWS` f16 bits of `h` as f32 into `d` (`ROWS` long).
    unsafe fn scales(h: &[u16; 16], d: &mut [f32]);
}

impl LineRegs for __m512i {
    const ROWS: usize = 16;
    #[inline(always)]
    unsafe fn transpose(rows: &[&[u8]; 16], off: usize) -> [Self; 4] {
        transpose16(rows, off)
    }
    #[inline(always)]
    unsafe fn splat(v: u32) -> Self {
        _mm512_set1_epi32(v as i32)
    }
    #[inline(always)]
    unsafe fn and(a: Self, b: Self) -> Self {
        _mm512_and_si512(a, b)
    }
    #[inline(always)]
    unsafe fn xor(a: Self, b: Self) -> Self {
        _mm512_xor_si512(a, b)
    }
    #[inline(always)]
    unsafe fn srli4(a: Self) -> Self {
        _mm512_srli_epi32::<4>(a)
    }
    #[inline(always)]
    unsafe fn store(dst: &mut [u32], v: Self) {
        assert_eq!(dst.len(), 16);
        _mm512_storeu_si512(dst.as_mut_ptr() as *mut _, v)
    }
    #[inline(always)]
    unsafe fn scales(h: &[u16; 16], d: &mut [f32]) {
        assert_eq!(d.len(), 16);
        let h = _mm256_loadu_si256(h.as_ptr() as *const __m256i);
        _mm512_storeu_ps(d.as_mut_ptr(), _mm512_cvtph_ps(h));
    }
}

impl LineRegs for __m256i {
    const ROWS: usize = 8;
    #[inline(always)]
    unsafe fn transpose(rows: &[&[u8]; 16], off: usize) -> [Self; 4] {
        transpose8(rows, off)
    }
    #[inline(always)]
    unsafe fn splat(v: u32) -> Self {
        _mm256_set1_epi32(v as i32)
    }
    #[inline(always)]
    unsafe fn and(a: Self, b: Self) -> Self {
        _mm256_and_si256(a, b)
    }
    #[inline(always)]
    unsafe fn xor(a: Self, b: Self) -> Self {
        _mm256_xor_si256(a, b)
    }
    #[inline(always)]
    unsafe fn srli4(a: Self) -> Self {
        _mm256_srli_epi32::<4>(a)
    }
    #[inline(always)]
    unsafe fn store(dst: &mut [u32], v: Self) {
        assert_eq!(dst.len(), 8);
        _mm256_storeu_si256(dst.as_mut_ptr() as *mut _, v)
    }
    #[inline(always)]
    unsafe fn scales(h: &[u16; 16], d: &mut [f32]) {
        assert_eq!(d.len(), 8);
        let h = _mm_loadu_si128(h.as_ptr() as *const __m128i);
        _mm256_storeu_ps(d.as_mut_ptr(), _mm256_cvtph_ps(h));
    }
}

/// Word `k` of the 16 bytes at `off` of each of rows 0–15, in register `k`
/// (lane `j`: row `j`). Register `m` is first loaded with rows `m`, `m + 4`,
/// `m + 8`, `m + 12` (one per 128-bit lane), so a 4 × 4 transpose of words
/// inside each lane (`unpack` of words, then of pairs) is the whole
/// transpose: lane `L` ends up holding rows `4L .. 4L + 3`.
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose16(rows: &[&[u8]; 16], off: usize) -> [__m512i; 4] {
    // (Closures here hold no intrinsics: one that did would not be inlined
    // into this function's target features.)
    let at = |j: usize| rows[j][off..off + 16].as_ptr() as *const __m128i;
    let mut r = [_mm512_setzero_si512(); 4];
    for (m, r) in r.iter_mut().enumerate() {
        // SAFETY: 16-byte reads of 16-byte slices, bounds-checked by `at`.
        unsafe {
            let v = _mm512_castsi128_si512(_mm_loadu_si128(at(m)));
            let v = _mm512_inserti32x4::<1>(v, _mm_loadu_si128(at(m + 4)));
            let v = _mm512_inserti32x4::<2>(v, _mm_loadu_si128(at(m + 8)));
            *r = _mm512_inserti32x4::<3>(v, _mm_loadu_si128(at(m + 12)));
        }
    }
    let (a, b) = (
        _mm512_unpacklo_epi32(r[0], r[1]),
        _mm512_unpackhi_epi32(r[0], r[1]),
    );
    let (c, d) = (
        _mm512_unpacklo_epi32(r[2], r[3]),
        _mm512_unpackhi_epi32(r[2], r[3]),
    );
    [
        _mm512_unpacklo_epi64(a, c),
        _mm512_unpackhi_epi64(a, c),
        _mm512_unpacklo_epi64(b, d),
        _mm512_unpackhi_epi64(b, d),
    ]
}

/// [`transpose16`] for rows 0–7 in 256-bit registers (register `m`: rows
/// `m` and `m + 4`).
#[inline]
#[target_feature(enable = "avx2")]
fn transpose8(rows: &[&[u8]; 16], off: usize) -> [__m256i; 4] {
    let at = |j: usize| rows[j][off..off + 16].as_ptr() as *const __m128i;
    let mut r = [_mm256_setzero_si256(); 4];
    for (m, r) in r.iter_mut().enumerate() {
        // SAFETY: 16-byte reads of 16-byte slices, bounds-checked by `at`.
        *r = unsafe { _mm256_set_m128i(_mm_loadu_si128(at(m + 4)), _mm_loadu_si128(at(m))) };
    }
    let (a, b) = (
        _mm256_unpacklo_epi32(r[0], r[1]),
        _mm256_unpackhi_epi32(r[0], r[1]),
    );
    let (c, d) = (
        _mm256_unpacklo_epi32(r[2], r[3]),
        _mm256_unpackhi_epi32(r[2], r[3]),
    );
    [
        _mm256_unpacklo_epi64(a, c),
        _mm256_unpackhi_epi64(a, c),
        _mm256_unpacklo_epi64(b, d),
        _mm256_unpackhi_epi64(b, d),
    ]
}

#[cfg(test)]
mod tests {
    use super::Packed;
    use crate::quant::{BlockQ4, BlockQ8, Planes, WeightsRef, QK};
    use half::f16;

    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, PartialEq, Debug)]
    #[repr(C)]
    struct L16([u32; 16]);
    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, PartialEq, Debug)]
    #[repr(C)]
    struct L8([u32; 8]);

    /// Pseudo-random bytes (xorshift), so every byte and nibble differs.
    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 24) as u8
            })
            .collect()
    }

    /// The transpose and the word-at-a-time loop pack every row range
    /// (whole sets, a partial last set, padding rows, a range that does
    /// not start at row 0) of q4 and q8 matrices alike, over buffers left
    /// dirty by an earlier pack.
    fn check<L: bytemuck::Pod + PartialEq + std::fmt::Debug>(group: usize) {
        let (rows, nb) = (75, 3);
        let q = bytes(rows * nb * QK, 7);
        let scales: Vec<f16> = (0..rows * nb)
            .map(|i| f16::from_f32(i as f32 * 0.25 - 9.0))
            .collect();
        let q4: Vec<BlockQ4> = bytemuck::cast_slice(&q[..rows * nb * QK / 2]).to_vec();
        let q8: Vec<BlockQ8> = bytemuck::cast_slice(&q).to_vec();
        let planes = [
            Planes::Q4 {
                quants: &q4,
                scales: &scales,
            },
            Planes::Q8 {
                quants: &q8,
                scales: &scales,
            },
        ];
        for p in planes {
            let w = WeightsRef::new(rows, nb * QK, p).expect("planes");
            for range in [0..rows, 5..69, 16..48, 3..10, 40..41] {
                let (mut fast, mut slow) = (Packed::<L>::new(), Packed::<L>::new());
                for p in [&mut fast, &mut slow] {
                    p.lines.resize(1000, L::zeroed());
                    bytemuck::cast_slice_mut::<L, u8>(&mut p.lines).fill(0xA5);
                    p.scales.resize(1000, f32::NAN);
                }
                fast.pack_with(&w, range.clone(), group, 0x8080_8080, true);
                slow.pack_with(&w, range.clone(), group, 0x8080_8080, false);
                let what = format!("{group} rows per group, rows {range:?}");
                assert_eq!(fast.lines, slow.lines, "{what}");
                assert_eq!(fast.scales, slow.scales, "{what}");
            }
        }
    }

    #[test]
    fn transposed_pack_equals_the_word_loop() {
        check::<L16>(32);
        check::<L16>(16);
        check::<L8>(8);
        check::<L8>(16);
    }

    /// The word loop itself, against the layout written out by hand for
    /// one q4 row: step `s < 4` holds bytes `4s..4s+3`'s low nibbles,
    /// `s ≥ 4` the high ones of bytes `4(s−4)..`, padding rows are zero.
    #[test]
    fn word_loop_lays_out_nibbles_by_step() {
        let nb = 1;
        let qs: [u8; 16] = std::array::from_fn(|j| (j as u8) << 4 | (15 - j as u8));
        let q4 = [BlockQ4 { qs }];
        let scales = [f16::from_f32(2.0)];
        let p = Planes::Q4 {
            quants: &q4,
            scales: &scales,
        };
        let w = WeightsRef::new(1, nb * QK, p).expect("planes");
        let mut pk = Packed::<L8>::new();
        pk.pack_with(&w, 0..1, 8, 0, false);
        for s in 0..8 {
            let line = pk.lines[s].0;
            let byte = |j: usize| if s < 4 { 15 - j as u32 } else { j as u32 };
            let j0 = 4 * (s % 4);
            let want = byte(j0) | byte(j0 + 1) << 8 | byte(j0 + 2) << 16 | byte(j0 + 3) << 24;
            assert_eq!(line[0], want, "step {s}");
            assert!(line[1..].iter().all(|&v| v == 0), "padding rows");
        }
        assert_eq!(pk.scales[0], 2.0);
        assert!(pk.scales[1..8].iter().all(|&v| v == 0.0));
    }
}
