//! Quantizers: error bounds, exact round trips of on-grid data, edge
//! values, and the q4 / q4m searches measured against ggml's choices.

use half::f16;
use microllm_kernels::quant::{
    baseline, q4, q4m, q8, BlockQ4, BlockQ8, Planes, QuantError, QuantizedWeights, TensorType,
    WeightsRef, QK,
};

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn gauss(&mut self) -> f32 {
        let (u1, u2) = (self.uniform().max(1e-300), self.uniform());
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
    fn gauss_vec(&mut self, n: usize, sigma: f32) -> Vec<f32> {
        (0..n).map(|_| self.gauss() * sigma).collect()
    }
    /// A random normal (non-subnormal) f16 of magnitude in [lo, hi), either sign.
    fn f16_in(&mut self, lo: f32, hi: f32, signed: bool) -> f16 {
        let mag = lo * (hi / lo).powf(self.uniform() as f32);
        let v = if signed && self.next() & 1 == 1 {
            -mag
        } else {
            mag
        };
        f16::from_f32(v)
    }
}

fn quantize(ty: TensorType, x: &[f32], rows: usize, cols: usize) -> QuantizedWeights {
    QuantizedWeights::quantize(ty, x, rows, cols).unwrap()
}

fn sse(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| ((x - y) as f64).powi(2))
        .sum()
}

#[test]
fn q8_error_is_at_most_half_a_step() {
    let mut rng = Rng(1);
    for sigma in [1e-4f32, 0.02, 1.0, 300.0] {
        let (rows, cols) = (16, 256);
        let x = rng.gauss_vec(rows * cols, sigma);
        let q = quantize(TensorType::Q8, &x, rows, cols);
        let Planes::Q8 { scales, .. } = q.as_ref().planes() else {
            panic!("not q8")
        };
        let y = q.as_ref().dequantize();
        let mut worst = 0.0f32;
        for (i, (&a, &b)) in x.iter().zip(&y).enumerate() {
            let d = scales[i / QK].to_f32();
            assert!(d > 0.0);
            let err = (a - b).abs();
            // x/d carries one rounding of 2^-24 relative, on at most 127.5.
            assert!(
                err <= d * 0.5 * (1.0 + 2e-5),
                "sigma {sigma} element {i}: {a} -> {b}, d {d}"
            );
            worst = worst.max(err / d);
        }
        // The bound is reached, not just respected by a coarse grid.
        assert!(worst > 0.45, "sigma {sigma}: worst error {worst} steps");
    }
}

#[test]
fn q8_reproduces_q8_0_data_bit_exactly() {
    let mut rng = Rng(2);
    let (rows, cols) = (8, 128);
    let nb = rows * cols / QK;
    let mut x = vec![0.0f32; rows * cols];
    let mut want_d = Vec::new();
    for b in 0..nb {
        let d = rng.f16_in(1e-4, 10.0, false);
        want_d.push(d);
        for i in 0..QK {
            let q = rng.below(255) as i32 - 127;
            x[b * QK + i] = d.to_f32() * q as f32;
        }
        // A Q8_0 block always has its largest magnitude at ±127.
        let i = rng.below(QK as u64) as usize;
        x[b * QK + i] = d.to_f32() * if rng.next() & 1 == 1 { 127.0 } else { -127.0 };
    }
    let q = quantize(TensorType::Q8, &x, rows, cols);
    assert_eq!(q.as_ref().dequantize(), x);
    let Planes::Q8 { scales, .. } = q.as_ref().planes() else {
        panic!("not q8")
    };
    assert_eq!(scales, &want_d[..]);
}

#[test]
fn q4_reproduces_q4_grid_data_bit_exactly() {
    let mut rng = Rng(3);
    let (rows, cols) = (8, 128);
    for end in [-8i32, 7] {
        let mut x = vec![0.0f32; rows * cols];
        for b in 0..rows * cols / QK {
            let d = rng.f16_in(1e-3, 10.0, true);
            for i in 0..QK {
                let q = rng.below(16) as i32 - 8;
                x[b * QK + i] = d.to_f32() * q as f32;
            }
            // The largest magnitude sits at one end of the range; for the
            // +7 end, keep -8 out so that 7 is the largest.
            for i in 0..QK {
                if end == 7 && x[b * QK + i] == d.to_f32() * -8.0 {
                    x[b * QK + i] = 0.0;
                }
            }
            x[b * QK + rng.below(QK as u64) as usize] = d.to_f32() * end as f32;
        }
        let q = quantize(TensorType::Q4, &x, rows, cols);
        assert_eq!(q.as_ref().dequantize(), x, "end {end}");
    }
}

/// Data as a Q4_1 file holds it: `n·d + m` with f16 `d`, `m`, and (as every
/// block ggml's quantizer writes) `n = 0` at the minimum and 15 at the maximum.
#[test]
fn q4m_reproduces_q4_1_data_bit_exactly() {
    let mut rng = Rng(4);
    let (rows, cols) = (16, 256);
    let nb = rows * cols / QK;
    let mut x = vec![0.0f32; rows * cols];
    let (mut want_d, mut want_m) = (Vec::new(), Vec::new());
    for b in 0..nb {
        let d = rng.f16_in(1e-4, 1.0, false);
        // Minimums as Q4_1 has them: negative, near −8·d, or anything.
        let m = if b % 2 == 0 {
            f16::from_f32(-d.to_f32() * (6.0 + 4.0 * rng.uniform() as f32))
        } else {
            rng.f16_in(1e-4, 4.0, true)
        };
        want_d.push(d);
        want_m.push(m);
        let mut n: [u8; QK] = std::array::from_fn(|_| rng.below(16) as u8);
        let i0 = rng.below(QK as u64) as usize;
        n[i0] = 0;
        n[(i0 + 1 + rng.below(QK as u64 - 1) as usize) % QK] = 15;
        for i in 0..QK {
            x[b * QK + i] = n[i] as f32 * d.to_f32() + m.to_f32();
        }
    }
    let q = quantize(TensorType::Q4m, &x, rows, cols);
    let y = q.as_ref().dequantize();
    let same_bits = x.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(same_bits, "q4m did not reproduce Q4_1 data exactly");
    let Planes::Q4m { scales, mins, .. } = q.as_ref().planes() else {
        panic!("not q4m")
    };
    assert_eq!(scales, &want_d[..]);
    assert_eq!(mins, &want_m[..]);
}

#[test]
fn all_zero_blocks_stay_zero() {
    let x = vec![0.0f32; 2 * 64];
    for ty in [TensorType::Q8, TensorType::Q4, TensorType::Q4m] {
        let q = quantize(ty, &x, 2, 64);
        let y = q.as_ref().dequantize();
        assert!(y.iter().all(|&v| v == 0.0), "{ty}: {y:?}");
        let bytes = q.to_le_bytes();
        // Scales (and minimums) are +0.0.
        let scale_bytes = match ty {
            TensorType::Q8 => &bytes[128..],
            _ => &bytes[64..],
        };
        assert!(scale_bytes.iter().all(|&b| b == 0), "{ty}");
    }
    // A zero block next to a non-zero one in the same row.
    let mut x = vec![0.0f32; 64];
    x[40] = 1.0;
    for ty in [TensorType::Q8, TensorType::Q4, TensorType::Q4m] {
        let y = quantize(ty, &x, 1, 64).as_ref().dequantize();
        assert!(y[..32].iter().all(|&v| v == 0.0), "{ty}");
        assert!((y[40] - 1.0).abs() < 1e-3, "{ty}: {}", y[40]);
        // Zeros share a block with the 1.0 and stay exactly zero.
        assert!(
            y[32..64]
                .iter()
                .enumerate()
                .all(|(i, &v)| i == 8 || v == 0.0),
            "{ty}"
        );
    }
}

#[test]
fn constant_blocks_are_exact_in_q4m() {
    for c in [0.5f32, -3.25, 1e-3] {
        let c = f16::from_f32(c).to_f32();
        let y = quantize(TensorType::Q4m, &[c; 32], 1, 32)
            .as_ref()
            .dequantize();
        assert!(y.iter().all(|&v| v == c), "{c}: {y:?}");
    }
}

/// Per-element rounding bounds inside the grid, and the q4 search never
/// worse than ggml's Q4_0 choice (nor q4m than Q4_1) on any block.
#[test]
fn q4_and_q4m_round_to_nearest_and_beat_ggml_on_every_block() {
    let mut rng = Rng(5);
    let (rows, cols) = (64, 256);
    let nb = rows * cols / QK;
    // Gaussian with a few outliers, like real weights.
    let mut x = rng.gauss_vec(rows * cols, 0.02);
    for _ in 0..50 {
        x[rng.below((rows * cols) as u64) as usize] *= 8.0;
    }

    let q = quantize(TensorType::Q4, &x, rows, cols);
    let y = q.as_ref().dequantize();
    let Planes::Q4 { quants, scales } = q.as_ref().planes() else {
        panic!("not q4")
    };
    let mut rq = vec![BlockQ4 { qs: [0; 16] }; nb];
    let mut rs = vec![f16::ZERO; nb];
    baseline::q4_0_ref(&x, &mut rq, &mut rs);
    let r = WeightsRef::new(
        rows,
        cols,
        Planes::Q4 {
            quants: &rq,
            scales: &rs,
        },
    )
    .unwrap()
    .dequantize();
    for b in 0..nb {
        let s = b * QK..(b + 1) * QK;
        let d = scales[b].to_f32();
        for i in s.clone() {
            let n = quants[b].get(i - b * QK) as f32 - 8.0;
            assert_eq!(y[i], d * n);
            let t = x[i] / d;
            if (-8.5..=7.5).contains(&t) {
                // Inside the range: rounded to the nearest grid point.
                assert!(
                    (x[i] - y[i]).abs() <= d.abs() * 0.5 * (1.0 + 1e-5),
                    "element {i}"
                );
            }
        }
        let (ours, ggml) = (sse(&x[s.clone()], &y[s.clone()]), sse(&x[s.clone()], &r[s]));
        assert!(
            ours <= ggml * (1.0 + 1e-6),
            "block {b}: {ours} > Q4_0 {ggml}"
        );
    }

    let q = quantize(TensorType::Q4m, &x, rows, cols);
    let y = q.as_ref().dequantize();
    let Planes::Q4m { scales, mins, .. } = q.as_ref().planes() else {
        panic!("not q4m")
    };
    let mut rm = vec![f16::ZERO; nb];
    baseline::q4_1_ref(&x, &mut rq, &mut rs, &mut rm);
    let r = WeightsRef::new(
        rows,
        cols,
        Planes::Q4m {
            quants: &rq,
            scales: &rs,
            mins: &rm,
        },
    )
    .unwrap()
    .dequantize();
    for b in 0..nb {
        let s = b * QK..(b + 1) * QK;
        let (d, m) = (scales[b].to_f32(), mins[b].to_f32());
        assert!(d > 0.0);
        for i in s.clone() {
            let t = (x[i] - m) / d;
            if (-0.5..=15.5).contains(&t) {
                // Half a step, plus the two roundings of n·d + m.
                let slack = 2.0 * f32::EPSILON * (x[i].abs() + m.abs() + 16.0 * d);
                assert!((x[i] - y[i]).abs() <= d * 0.5 + slack, "element {i}");
            }
        }
        let (ours, ggml) = (sse(&x[s.clone()], &y[s.clone()]), sse(&x[s.clone()], &r[s]));
        assert!(
            ours <= ggml * (1.0 + 1e-6),
            "block {b}: {ours} > Q4_1 {ggml}"
        );
    }
}

/// The point of the q4 search: clearly less squared error than plain
/// round-to-nearest with `d = max|x|/7`, and than ggml's Q4_0, on Gaussian
/// data. Measured: MSE 0.695× naive and 0.885× Q4_0 (seed 6).
#[test]
fn q4_search_beats_naive_round_to_nearest_on_gaussian_data() {
    let mut rng = Rng(6);
    let (rows, cols) = (256, 512);
    let nb = rows * cols / QK;
    let x = rng.gauss_vec(rows * cols, 1.0);
    let ours = sse(
        &x,
        &quantize(TensorType::Q4, &x, rows, cols)
            .as_ref()
            .dequantize(),
    );
    let mut rq = vec![BlockQ4 { qs: [0; 16] }; nb];
    let mut rs = vec![f16::ZERO; nb];
    let view = |rq: &[BlockQ4], rs: &[f16]| {
        WeightsRef::new(
            rows,
            cols,
            Planes::Q4 {
                quants: rq,
                scales: rs,
            },
        )
        .unwrap()
        .dequantize()
    };
    baseline::q4_naive_max7(&x, &mut rq, &mut rs);
    let naive = sse(&x, &view(&rq, &rs));
    baseline::q4_0_ref(&x, &mut rq, &mut rs);
    let q4_0 = sse(&x, &view(&rq, &rs));
    println!(
        "q4 MSE on N(0,1): search {:.5}, naive max/7 {:.5} ({:.3}x), Q4_0 {:.5} ({:.3}x)",
        ours / x.len() as f64,
        naive / x.len() as f64,
        ours / naive,
        q4_0 / x.len() as f64,
        ours / q4_0
    );
    assert!(ours < 0.75 * naive, "search {ours} vs naive {naive}");
    assert!(ours < 0.95 * q4_0, "search {ours} vs Q4_0 {q4_0}");
}

/// Measured: MSE 0.793× Q4_1 (seed 7).
#[test]
fn q4m_search_beats_q4_1_on_gaussian_data() {
    let mut rng = Rng(7);
    let (rows, cols) = (256, 512);
    let nb = rows * cols / QK;
    let x = rng.gauss_vec(rows * cols, 1.0);
    let ours = sse(
        &x,
        &quantize(TensorType::Q4m, &x, rows, cols)
            .as_ref()
            .dequantize(),
    );
    let mut rq = vec![BlockQ4 { qs: [0; 16] }; nb];
    let (mut rs, mut rm) = (vec![f16::ZERO; nb], vec![f16::ZERO; nb]);
    baseline::q4_1_ref(&x, &mut rq, &mut rs, &mut rm);
    let planes = Planes::Q4m {
        quants: &rq,
        scales: &rs,
        mins: &rm,
    };
    let q4_1 = sse(
        &x,
        &WeightsRef::new(rows, cols, planes).unwrap().dequantize(),
    );
    println!(
        "q4m MSE on N(0,1): search {:.5}, Q4_1 {:.5} ({:.3}x)",
        ours / x.len() as f64,
        q4_1 / x.len() as f64,
        ours / q4_1
    );
    assert!(ours < 0.85 * q4_1, "search {ours} vs Q4_1 {q4_1}");
}

#[test]
fn non_finite_input_is_an_error_naming_the_element() {
    for ty in [
        TensorType::Q8,
        TensorType::Q4,
        TensorType::Q4m,
        TensorType::F16,
        TensorType::F32,
    ] {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut x = vec![0.5f32; 3 * 64];
            x[100] = bad;
            let err = microllm_kernels::quant::encode(ty, &x, 3, 64).unwrap_err();
            assert!(
                matches!(err, QuantError::NonFinite { index: 100, .. }),
                "{ty} {bad}: {err:?}"
            );
            assert!(err.to_string().contains("element 100"), "{err}");
        }
    }
}

#[test]
fn values_beyond_f16_scales_are_an_error_and_large_ones_are_fine() {
    let mut x = vec![1.0f32; 2 * 64];
    x[70] = 1e7; // q8 needs d = 1e7/127 > 65504
    let err = QuantizedWeights::quantize(TensorType::Q8, &x, 2, 64).unwrap_err();
    assert_eq!(
        err,
        QuantError::OutOfRange {
            index: 64,
            max_abs: 1e7
        }
    );
    x[70] = 1e6; // q4 needs d ≥ 1e6/9.5 > 65504
    assert!(matches!(
        QuantizedWeights::quantize(TensorType::Q4, &x, 2, 64),
        Err(QuantError::OutOfRange { index: 64, .. })
    ));
    x[70] = -7e4; // q4m's minimum beyond f16
    assert!(matches!(
        QuantizedWeights::quantize(TensorType::Q4m, &x, 2, 64),
        Err(QuantError::OutOfRange { index: 64, .. })
    ));
    x[70] = 1e5;
    assert!(matches!(
        microllm_kernels::quant::encode(TensorType::F16, &x, 2, 64),
        Err(QuantError::OutOfRange { index: 70, .. })
    ));
    // Large but representable: quantized within the usual bounds.
    let mut rng = Rng(8);
    let x: Vec<f32> = rng.gauss_vec(64, 1e4);
    for ty in [TensorType::Q8, TensorType::Q4, TensorType::Q4m] {
        let y = quantize(ty, &x, 1, 64).as_ref().dequantize();
        let rel = (sse(&x, &y) / x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>()).sqrt();
        assert!(rel < 0.15, "{ty}: relative error {rel}");
    }
}

#[test]
fn tiny_and_subnormal_values_give_finite_bounded_results() {
    for scale in [1e-6f32, 1e-9, 1e-30, f32::MIN_POSITIVE / 4.0] {
        let mut rng = Rng(9);
        let x: Vec<f32> = rng.gauss_vec(64, scale);
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for ty in [TensorType::Q8, TensorType::Q4, TensorType::Q4m] {
            let q = quantize(ty, &x, 1, 64);
            let y = q.as_ref().dequantize();
            for (&a, &b) in x.iter().zip(&y) {
                assert!(b.is_finite(), "{ty} {scale}");
                // f16 cannot resolve steps below 2^-24: the error is at most
                // the value itself (flushed to 0) or one such step.
                assert!(
                    (a - b).abs() <= amax.max(2f32.powi(-24)),
                    "{ty} {scale}: {a} -> {b}"
                );
            }
        }
        // q8 keeps its half-step guarantee even where its scale is subnormal.
        let q = quantize(TensorType::Q8, &x, 1, 64);
        let Planes::Q8 { scales, .. } = q.as_ref().planes() else {
            panic!()
        };
        let y = q.as_ref().dequantize();
        for (i, (&a, &b)) in x.iter().zip(&y).enumerate() {
            assert!(
                (a - b).abs() <= scales[i / QK].to_f32() * 0.5 * (1.0 + 2e-5),
                "{scale}"
            );
        }
    }
}

#[test]
fn shapes_that_do_not_fit_are_errors() {
    let x = vec![0.0f32; 48];
    for ty in [TensorType::Q8, TensorType::Q4, TensorType::Q4m] {
        assert!(matches!(
            QuantizedWeights::quantize(ty, &x, 1, 48),
            Err(QuantError::Layout(_))
        ));
        assert!(matches!(
            QuantizedWeights::quantize(ty, &x, 2, 32),
            Err(QuantError::Layout(_))
        ));
    }
    assert!(matches!(
        QuantizedWeights::quantize(TensorType::F32, &x, 1, 48),
        Err(QuantError::Layout(_))
    ));
}

#[test]
fn file_bytes_round_trip_through_the_plane_view() {
    let mut rng = Rng(10);
    let (rows, cols) = (5, 96);
    let x = rng.gauss_vec(rows * cols, 0.1);
    // The 2:4 sparse types need sparse input (tests/sparse_kernels.rs).
    for ty in TensorType::ALL.into_iter().filter(|t| !t.is_sparse()) {
        let bytes = microllm_kernels::quant::encode(ty, &x, rows, cols).unwrap();
        assert_eq!(
            bytes.len() as u64,
            ty.byte_len(rows as u64, cols as u64).unwrap(),
            "{ty}"
        );
        // A u64 buffer gives the view the alignment a mapped file has.
        let mut aligned = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut aligned)[..bytes.len()].copy_from_slice(&bytes);
        let view_bytes = &bytemuck::cast_slice::<u64, u8>(&aligned)[..bytes.len()];
        let w = WeightsRef::from_le_bytes(ty, view_bytes, rows, cols).unwrap();
        assert_eq!(w.ty(), ty);
        let y = w.dequantize();
        if ty.is_quantized() {
            let q = quantize(ty, &x, rows, cols);
            assert_eq!(y, q.as_ref().dequantize(), "{ty}");
            assert_eq!(q.to_le_bytes(), bytes, "{ty}");
        } else if ty == TensorType::F32 {
            assert_eq!(y, x);
        } else {
            let want: Vec<f32> = x.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
            assert_eq!(y, want);
        }
        // The plane split: q8's quants come first, one byte per element.
        if ty == TensorType::Q8 {
            let q = quantize(ty, &x, rows, cols);
            let Planes::Q8 { quants, scales } = q.as_ref().planes() else {
                panic!()
            };
            assert_eq!(
                bytemuck::cast_slice::<BlockQ8, u8>(quants),
                &bytes[..rows * cols]
            );
            assert_eq!(
                scales[0].to_le_bytes(),
                [bytes[rows * cols], bytes[rows * cols + 1]]
            );
        }
        // Wrong length or shape is refused.
        assert!(
            WeightsRef::from_le_bytes(ty, &view_bytes[..view_bytes.len() - 2], rows, cols).is_err()
        );
        assert!(WeightsRef::from_le_bytes(ty, view_bytes, rows + 1, cols).is_err());
    }
    // Misaligned f16 scales are refused, not read unaligned.
    let bytes = microllm_kernels::quant::encode(TensorType::Q4, &x[..32], 1, 32).unwrap();
    let mut shifted = vec![0u8; bytes.len() + 2];
    let odd = if (shifted.as_ptr() as usize).is_multiple_of(2) {
        1
    } else {
        0
    };
    shifted[odd..odd + bytes.len()].copy_from_slice(&bytes);
    assert!(
        WeightsRef::from_le_bytes(TensorType::Q4, &shifted[odd..odd + bytes.len()], 1, 32).is_err()
    );
}

#[test]
fn row_functions_agree_with_the_matrix_quantizer() {
    let mut rng = Rng(11);
    let x = rng.gauss_vec(64, 1.0);
    let mut q8q = [BlockQ8 { qs: [0; 32] }; 2];
    let mut s = [f16::ZERO; 2];
    q8::quantize_row(&x, &mut q8q, &mut s).unwrap();
    let mut y = [0.0f32; 64];
    q8::dequantize_row(&q8q, &s, &mut y);
    assert_eq!(
        y.to_vec(),
        quantize(TensorType::Q8, &x, 1, 64).as_ref().dequantize()
    );
    let mut q4q = [BlockQ4 { qs: [0; 16] }; 2];
    q4::quantize_row(&x, &mut q4q, &mut s).unwrap();
    q4::dequantize_row(&q4q, &s, &mut y);
    assert_eq!(
        y.to_vec(),
        quantize(TensorType::Q4, &x, 1, 64).as_ref().dequantize()
    );
    let mut m = [f16::ZERO; 2];
    q4m::quantize_row(&x, &mut q4q, &mut s, &mut m).unwrap();
    q4m::dequantize_row(&q4q, &s, &m, &mut y);
    assert_eq!(
        y.to_vec(),
        quantize(TensorType::Q4m, &x, 1, 64).as_ref().dequantize()
    );
    // Errors from a later row carry the matrix index.
    let mut x2 = x.clone();
    x2.extend_from_slice(&x);
    x2[64 + 33] = f32::NAN;
    assert!(matches!(
        QuantizedWeights::quantize(TensorType::Q4, &x2, 2, 64),
        Err(QuantError::NonFinite { index: 97, .. })
    ));
}
