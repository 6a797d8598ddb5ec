//! The 2:4 sparse types against the dense kernels on the same zero-filled
//! weights, on every instruction set this CPU (or qemu) runs.
//!
//! A `q4s24` block of 64 inputs is exactly two dense `q4` blocks with the
//! sparse block's scale and nibble 8 (zero) at the pruned inputs
//! (`sparse::q4s24_to_dense`); likewise `q8s24` and `q8`. So:
//! - dequantization must agree bit for bit;
//! - f32-activation dot products agree up to f32 rounding, bounded by
//!   `1e-5 · Σ|w·x|`;
//! - int8-activation dot products sum the same exact integers, so they
//!   agree up to the rounding of a few float products.

use half::f16;
use microllm_kernels::dispatch::Isa;
use microllm_kernels::quant::sparse::{self, BlockQ4S24, BlockQ8S24, SK};
use microllm_kernels::quant::{
    q4, q8, Planes, Q8Activations, QuantError, QuantizedWeights, TensorType, WeightsRef,
};
use proptest::prelude::*;

use sparse::PAIRS;

/// Random valid sparse blocks: distinct positions per group, any nibbles
/// or quants, scales of either sign.
/// Per block: 32 quant bytes and 16 group choices (indices into [`PAIRS`]).
type RawBlock = ([u8; 32], [u8; 16]);

fn blocks_strategy(n: usize) -> impl Strategy<Value = (Vec<RawBlock>, Vec<f32>)> {
    (
        prop::collection::vec((any::<[u8; 32]>(), prop::array::uniform16(0usize..6)), n),
        prop::collection::vec(-2.0f32..2.0, n),
    )
        .prop_map(|(raw, scales)| {
            let out = raw
                .into_iter()
                .map(|(q, pairs)| {
                    let mut idx = [0u8; 16];
                    for (g, &c) in pairs.iter().enumerate() {
                        idx[g] = c as u8;
                    }
                    (q, idx)
                })
                .collect();
            (out, scales)
        })
}

fn pack_idx(groups: &[u8; 16]) -> [u8; 8] {
    let mut idx = [0u8; 8];
    for (g, &c) in groups.iter().enumerate() {
        let (a, b) = PAIRS[c as usize];
        for (j, p) in [a, b].into_iter().enumerate() {
            let k = 2 * g + j;
            idx[k / 4] |= p << (2 * (k % 4));
        }
    }
    idx
}

/// The 3-bit codes of `q4s24` (group `g` at bits `3g`).
fn pack_codes(groups: &[u8; 16]) -> [u8; 6] {
    let bits = groups
        .iter()
        .enumerate()
        .fold(0u64, |a, (g, &c)| a | (c as u64) << (3 * g));
    bits.to_le_bytes()[..6].try_into().unwrap()
}

fn q4_blocks(raw: &[RawBlock]) -> Vec<BlockQ4S24> {
    raw.iter()
        .map(|(q, g)| BlockQ4S24 {
            codes: pack_codes(g),
            qs: q[..16].try_into().unwrap(),
        })
        .collect()
}

fn q8_blocks(raw: &[RawBlock]) -> Vec<BlockQ8S24> {
    raw.iter()
        .map(|(q, g)| BlockQ8S24 {
            qs: q.map(|b| (b as i8).max(-127)),
            idx: pack_idx(g),
        })
        .collect()
}

fn abs_dot(w: &[f32], x: &[f32]) -> f64 {
    w.iter()
        .zip(x)
        .map(|(&a, &b)| (a as f64 * b as f64).abs())
        .sum()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn q4s24_equals_dense_q4_on_zero_filled_weights(
        (raw, sc) in (1usize..5).prop_flat_map(blocks_strategy),
        seed in any::<u64>(),
    ) {
        let blocks = q4_blocks(&raw);
        let scales: Vec<f16> = sc.iter().map(|&s| f16::from_f32(s)).collect();
        let cols = blocks.len() * SK;
        let x = gauss(cols, seed);
        let (dq, ds) = sparse::q4s24_to_dense(&blocks, &scales).unwrap();
        let mut dense = vec![0.0f32; cols];
        q4::dequantize_row(&dq, &ds, &mut dense);
        let mut sp = vec![f32::NAN; cols];
        sparse::dequantize_row_q4s24(&blocks, &scales, &mut sp);
        prop_assert_eq!(&sp, &dense);
        let want = q4::dot(&dq, &ds, &x) as f64;
        let tol = 1e-5 * abs_dot(&dense, &x) + 1e-30;
        for isa in Isa::available() {
            let got = sparse::dot_q4s24(isa, &blocks, &scales, &x) as f64;
            prop_assert!((got - want).abs() <= tol, "{:?}: {} vs {}", isa, got, want);
        }
        let a = Q8Activations::quantize(&x, 1, cols);
        let want8 = q4::dot_q8(&dq, &ds, a.row(0)) as f64;
        let got8 = sparse::dot_q8_q4s24(&blocks, &scales, a.row(0)) as f64;
        prop_assert!((got8 - want8).abs() <= 1e-5 * abs_dot(&dense, &a.dequantize()) + 1e-30);
    }

    #[test]
    fn q8s24_equals_dense_q8_on_zero_filled_weights(
        (raw, sc) in (1usize..5).prop_flat_map(blocks_strategy),
        seed in any::<u64>(),
    ) {
        let blocks = q8_blocks(&raw);
        let scales: Vec<f16> = sc.iter().map(|&s| f16::from_f32(s)).collect();
        let cols = blocks.len() * SK;
        let x = gauss(cols, seed);
        let (dq, ds) = sparse::q8s24_to_dense(&blocks, &scales).unwrap();
        let mut dense = vec![0.0f32; cols];
        q8::dequantize_row(&dq, &ds, &mut dense);
        let mut sp = vec![f32::NAN; cols];
        sparse::dequantize_row_q8s24(&blocks, &scales, &mut sp);
        prop_assert_eq!(&sp, &dense);
        let want = q8::dot(&dq, &ds, &x) as f64;
        let tol = 1e-5 * abs_dot(&dense, &x) + 1e-30;
        for isa in Isa::available() {
            let got = sparse::dot_q8s24(isa, &blocks, &scales, &x) as f64;
            prop_assert!((got - want).abs() <= tol, "{:?}: {} vs {}", isa, got, want);
        }
        let a = Q8Activations::quantize(&x, 1, cols);
        let want8 = q8::dot_q8(&dq, &ds, a.row(0)) as f64;
        let got8 = sparse::dot_q8_q8s24(&blocks, &scales, a.row(0)) as f64;
        prop_assert!((got8 - want8).abs() <= 1e-5 * abs_dot(&dense, &a.dequantize()) + 1e-30);
    }

    /// Any bytes at all (positions repeated too): every ISA computes what
    /// the scalar kernel does.
    #[test]
    fn simd_equals_scalar_on_any_bytes(
        raw in prop::collection::vec(any::<([u8; 16], [u8; 8], [u8; 16])>(), 1..4),
        seed in any::<u64>(),
    ) {
        // Codes 6 and 7 included: they read as (0, 1) everywhere.
        let b4: Vec<BlockQ4S24> = raw.iter().map(|(q, i, _)| BlockQ4S24 { codes: i[..6].try_into().unwrap(), qs: *q }).collect();
        let b8: Vec<BlockQ8S24> = raw.iter().map(|(q, i, q2)| {
            let mut qs = [0i8; 32];
            for j in 0..16 { qs[j] = q[j] as i8; qs[16 + j] = q2[j] as i8; }
            BlockQ8S24 { qs, idx: *i }
        }).collect();
        let scales = vec![f16::from_f32(0.37); raw.len()];
        let x = gauss(raw.len() * SK, seed);
        let mut w4 = vec![0.0f32; x.len()];
        sparse::dequantize_row_q4s24(&b4, &scales, &mut w4);
        let mut w8 = vec![0.0f32; x.len()];
        sparse::dequantize_row_q8s24(&b8, &scales, &mut w8);
        let s4 = sparse::dot_q4s24_scalar(&b4, &scales, &x) as f64;
        let s8 = sparse::dot_q8s24_scalar(&b8, &scales, &x) as f64;
        for isa in Isa::available() {
            let g4 = sparse::dot_q4s24(isa, &b4, &scales, &x) as f64;
            let g8 = sparse::dot_q8s24(isa, &b8, &scales, &x) as f64;
            prop_assert!((g4 - s4).abs() <= 1e-5 * abs_dot(&w4, &x) * 4.0 + 1e-30, "{:?}", isa);
            prop_assert!((g8 - s8).abs() <= 1e-5 * abs_dot(&w8, &x) * 4.0 + 1e-30, "{:?}", isa);
        }
        // The AMX tier runs the AVX-512 vector kernels (not the scalar
        // fallback): the same bits.
        if Isa::Amx.is_available() {
            let (a, b) = (Isa::Amx, Isa::Avx512);
            prop_assert_eq!(sparse::dot_q4s24(a, &b4, &scales, &x).to_bits(), sparse::dot_q4s24(b, &b4, &scales, &x).to_bits());
            prop_assert_eq!(sparse::dot_q8s24(a, &b8, &scales, &x).to_bits(), sparse::dot_q8s24(b, &b8, &scales, &x).to_bits());
        }
    }

    /// The int8 matrix kernels of every tier (AVX2, AVX-512 and NEON have
    /// SIMD ones for both types; NEON's must be bit-identical) against the scalar `dot_q8_q4s24` and
    /// `dot_q8_q8s24`, row by row, on any codes and positions (`q4s24`
    /// codes 6 and 7, repeated `q8s24` positions), odd block counts (a half
    /// step at the row's end), row counts that are not a multiple of the
    /// 4-row tile, several tokens, and several pool sizes.
    #[test]
    fn sparse_int8_matmuls_equal_scalar_on_every_tier(
        rows in 1usize..11,
        nb in 1usize..20,
        n in 1usize..4,
        seed in any::<u64>(),
        extreme in any::<bool>(),
    ) {
        let cols = nb * SK;
        let scales: Vec<f16> = gauss(rows * nb, seed ^ 3).iter().map(|v| f16::from_f32(v * 0.1)).collect();
        let mut x = gauss(n * cols, seed ^ 5);
        if extreme {
            // Saturated int8 values (±127) in every block.
            for (i, v) in x.iter_mut().enumerate() {
                if i % 5 == 0 { *v = if i % 2 == 0 { 1e3 } else { -1e3 }; }
            }
        }
        let bytes = |len: usize| -> Vec<u8> {
            gauss(len, seed).iter().map(|v| (v * 1e4) as i64 as u8).collect()
        };
        let (raw4, raw8) = (bytes(rows * nb * 22), bytes(rows * nb * 40));
        let b4: Vec<BlockQ4S24> = bytemuck::cast_slice(&raw4).to_vec();
        let b8: Vec<BlockQ8S24> = bytemuck::cast_slice(&raw8).to_vec();
        let a = Q8Activations::quantize(&x, n, cols);
        for planes in [
            Planes::Q4S24 { blocks: &b4, scales: &scales },
            Planes::Q8S24 { blocks: &b8, scales: &scales },
        ] {
            let w = WeightsRef::new(rows, cols, planes).unwrap();
            let deq = w.dequantize();
            for pool_threads in [1usize, 2] {
                let pool = microllm_kernels::pool::Pool::new(pool_threads);
                for k in int8_tables() {
                    let isa = k.isa;
                    let mut got = vec![0.0f32; n * rows];
                    w.matmul_q8_with(k, &pool, &mut got, &a);
                    for t in 0..n {
                        for r in 0..rows {
                            let want32 = w.dot_row_q8(r, a.row(t));
                            let (g32, want) = (got[t * rows + r], want32 as f64);
                            let bound = 1e-5 * abs_dot(&deq[r * cols..(r + 1) * cols], &a.dequantize()[t * cols..(t + 1) * cols]) + 1e-30;
                            let g = g32 as f64;
                            prop_assert!((g - want).abs() <= bound, "{} {isa:?} row {r} token {t}: {g} vs {want}", w.ty());
                            // NEON sums in the scalar twin's order.
                            if isa == Isa::Neon {
                                prop_assert_eq!(g32.to_bits(), want32.to_bits(), "{} row {} token {}", w.ty(), r, t);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Quantizing a 2:4-sparse matrix keeps exactly its zeros, and the
    /// whole-matrix paths (`WeightsRef` from file bytes, matmul) work.
    #[test]
    fn quantize_keeps_the_pattern_and_matmul_matches(
        rows in 1usize..5, nb in 1usize..4, seed in any::<u64>(),
    ) {
        let cols = nb * SK;
        let mut w = gauss(rows * cols, seed);
        // 2:4: zero the 2 smallest of every 4 (some groups lose 3).
        for (gi, g) in w.chunks_exact_mut(4).enumerate() {
            let mut order = [0usize, 1, 2, 3];
            order.sort_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()));
            g[order[0]] = 0.0;
            g[order[1]] = 0.0;
            if gi % 7 == 3 { g[order[2]] = 0.0; }
        }
        for ty in [TensorType::Q4S24, TensorType::Q8S24] {
            let q = QuantizedWeights::quantize(ty, &w, rows, cols).unwrap();
            let bytes = q.to_le_bytes();
            prop_assert_eq!(bytes.len() as u64, ty.byte_len(rows as u64, cols as u64).unwrap());
            let mut aligned = vec![0u64; bytes.len().div_ceil(8)];
            bytemuck::cast_slice_mut::<u64, u8>(&mut aligned)[..bytes.len()].copy_from_slice(&bytes);
            let view = WeightsRef::from_le_bytes(ty, &bytemuck::cast_slice::<u64, u8>(&aligned)[..bytes.len()], rows, cols).unwrap();
            let deq = view.dequantize();
            prop_assert_eq!(&deq, &q.as_ref().dequantize());
            for (a, b) in w.iter().zip(&deq) {
                if *a == 0.0 { prop_assert_eq!(*b, 0.0); }
            }
            let err: f64 = w.iter().zip(&deq).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
            let sig: f64 = w.iter().map(|a| (*a as f64).powi(2)).sum();
            prop_assert!(err <= 0.05 * sig, "{ty}: rel err² {}", err / sig);
            for n in [1usize, 3] {
                let x = gauss(n * cols, seed ^ 7);
                let mut y = vec![0.0f32; n * rows];
                view.matmul(&mut y, &x, n);
                let mut y8 = vec![0.0f32; n * rows];
                view.matmul_q8(&mut y8, &Q8Activations::quantize(&x, n, cols));
                for t in 0..n {
                    for r in 0..rows {
                        let wr = &deq[r * cols..(r + 1) * cols];
                        let xt = &x[t * cols..(t + 1) * cols];
                        let want: f64 = wr.iter().zip(xt).map(|(&a, &b)| a as f64 * b as f64).sum();
                        let abs = abs_dot(wr, xt);
                        prop_assert!((y[t * rows + r] as f64 - want).abs() <= 1e-5 * abs + 1e-30);
                        prop_assert!((y8[t * rows + r] as f64 - want).abs() <= 0.05 * abs + 1e-30);
                    }
                }
            }
        }
    }
}

/// Every tier's table, and on an AVX-512 CPU also the table of AVX-512
/// CPUs without VBMI (whose 2:4 kernels are AVX2's).
fn int8_tables() -> Vec<&'static microllm_kernels::dispatch::Kernels> {
    #[allow(unused_mut)]
    let mut t: Vec<_> = Isa::available()
        .into_iter()
        .filter_map(microllm_kernels::dispatch::Kernels::for_isa)
        .collect();
    #[cfg(target_arch = "x86_64")]
    if Isa::Avx512.is_available() {
        t.push(&microllm_kernels::x86::AVX512_NO_VBMI);
    }
    t
}

#[test]
fn dense_rows_are_refused_with_a_clear_error() {
    // Every row is dense: the error names the first, whichever thread
    // reached its row first.
    let w = gauss(64 * SK, 3);
    for ty in [TensorType::Q4S24, TensorType::Q8S24] {
        match QuantizedWeights::quantize(ty, &w, 64, SK) {
            Err(QuantError::Layout(m)) => {
                assert!(m.starts_with("row 0:") && m.contains("2:4"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            QuantizedWeights::quantize(ty, &[0.0; 96], 1, 96),
            Err(QuantError::Layout(_))
        ));
        assert_eq!(ty.byte_len(1, 96), None);
    }
    let planes = Planes::Q4S24 {
        blocks: &[],
        scales: &[],
    };
    assert!(WeightsRef::new(1, 64, planes).is_err());
}

#[test]
fn every_tier_is_exercised() {
    let all = Isa::available();
    assert!(all.contains(&Isa::Scalar));
    // Say which tiers the property tests above ran, so a log shows it.
    eprintln!("sparse kernels tested on: {all:?}");
}

/// Deterministic Gaussian-ish values (sum of uniforms).
fn gauss(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut u = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    (0..n).map(|_| u() + u() + u() + u()).collect()
}
