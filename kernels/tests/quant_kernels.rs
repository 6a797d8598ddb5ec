//! Quantized matmul kernels against f64 sums over the dequantized weights.
//!
//! Bounds:
//! - f32 activations: the kernel dequantizes block by block inside the dot
//!   product, so it differs from `x · dequant(W)ᵀ` only by f32 rounding:
//!   `|y − ref| ≤ 1e-5 · Σ|ŵ·x|`.
//! - int8 activations: the integer sums are exact, so the kernel equals
//!   `x̂ · dequant(W)ᵀ` (x̂ the dequantized activations) up to the same
//!   rounding; and since `|x − x̂| ≤ d_x/2` per element,
//!   `|ref(x̂) − ref(x)| ≤ Σ_i |ŵ_i|·d_x(i)/2`.

use half::f16;
use microllm_kernels::quant::{Q8Activations, QuantizedWeights, TensorType, WeightsRef, QK};
use proptest::prelude::*;

/// Column-wise f64 reference: `Σ_i w[r, i]·x[t, i]` and `Σ_i |w·x|`.
fn reference(w: &[f32], x: &[f32], cols: usize, r: usize, t: usize) -> (f64, f64) {
    let (wr, xt) = (&w[r * cols..(r + 1) * cols], &x[t * cols..(t + 1) * cols]);
    let sum = wr.iter().zip(xt).map(|(&a, &b)| a as f64 * b as f64).sum();
    let abs = wr
        .iter()
        .zip(xt)
        .map(|(&a, &b)| (a as f64 * b as f64).abs())
        .sum();
    (sum, abs)
}

fn check_both_kernels(w: WeightsRef<'_>, x: &[f32], n: usize) -> Result<(), TestCaseError> {
    let (rows, cols) = (w.rows(), w.cols());
    let wd = w.dequantize();
    let mut y = vec![f32::NAN; n * rows];
    w.matmul(&mut y, x, n);
    for t in 0..n {
        for r in 0..rows {
            let (want, abs) = reference(&wd, x, cols, r, t);
            let got = y[t * rows + r] as f64;
            prop_assert!(
                (got - want).abs() <= 1e-5 * abs + 1e-30,
                "{} f32 act: t {t} r {r}: {got} vs {want}",
                w.ty()
            );
        }
    }
    if !w.ty().is_quantized() {
        return Ok(());
    }
    let a = Q8Activations::quantize(x, n, cols);
    let xq = a.dequantize();
    let mut y8 = vec![f32::NAN; n * rows];
    w.matmul_q8(&mut y8, &a);
    for t in 0..n {
        let row = a.row(t);
        for r in 0..rows {
            let (want_q, abs_q) = reference(&wd, &xq, cols, r, t);
            let got = y8[t * rows + r] as f64;
            prop_assert!(
                (got - want_q).abs() <= 1e-5 * abs_q + 1e-30,
                "{} int8 act vs x̂: t {t} r {r}: {got} vs {want_q}",
                w.ty()
            );
            let (want, _) = reference(&wd, x, cols, r, t);
            let wr = &wd[r * cols..(r + 1) * cols];
            let bound: f64 = wr
                .iter()
                .enumerate()
                .map(|(i, &v)| v.abs() as f64 * row.scales[i / QK] as f64 / 2.0)
                .sum();
            prop_assert!(
                (got - want).abs() <= bound * (1.0 + 1e-4) + 1e-5 * abs_q + 1e-30,
                "{} int8 act vs x: t {t} r {r}: {got} vs {want} (bound {bound})",
                w.ty()
            );
        }
    }
    Ok(())
}

fn values(len: usize) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(-2.0f32..2.0, len)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn quantized_matmul_matches_dequantized_reference(
        (rows, nb, n, w, x) in (1usize..70, 1usize..5, 1usize..5).prop_flat_map(|(rows, nb, n)| {
            (Just(rows), Just(nb), Just(n), values(rows * nb * QK), values(n * nb * QK))
        }),
        scale in prop::sample::select(vec![1e-3f32, 1.0, 50.0]),
    ) {
        let cols = nb * QK;
        let w: Vec<f32> = w.iter().map(|v| v * scale).collect();
        for ty in [TensorType::Q8, TensorType::Q4, TensorType::Q4m] {
            let q = QuantizedWeights::quantize(ty, &w, rows, cols).unwrap();
            check_both_kernels(q.as_ref(), &x, n)?;
        }
        let h: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        let planes = microllm_kernels::quant::Planes::F16(&h);
        check_both_kernels(WeightsRef::new(rows, cols, planes).unwrap(), &x, n)?;
        let planes = microllm_kernels::quant::Planes::F32(&w);
        check_both_kernels(WeightsRef::new(rows, cols, planes).unwrap(), &x, n)?;
    }
}

#[test]
fn hand_computed_blocks() {
    // q8: one block, d = 0.5 (exact in f16), quants 0..31 → w_i = i/2.
    let w: Vec<f32> = (0..32).map(|i| i as f32 * 0.5).collect();
    let mut w2 = w.clone();
    w2[31] = 63.5; // 127 · 0.5 makes the scale exactly 0.5
    let q = QuantizedWeights::quantize(TensorType::Q8, &w2, 1, 32).unwrap();
    let x = vec![1.0f32; 32];
    let mut y = [0.0f32];
    q.as_ref().matmul(&mut y, &x, 1);
    let want: f32 = w2.iter().sum();
    assert_eq!(y[0], want);
    // Activations of all ones quantize exactly (d = 1/127, q = 127).
    let a = Q8Activations::quantize(&x, 1, 32);
    assert_eq!(a.row(0).sums, &[127 * 32]);
    q.as_ref().matmul_q8(&mut y, &a);
    assert!((y[0] - want).abs() <= want * 1e-6, "{} vs {want}", y[0]);

    // q4m: x all ones → Σ w = d·Σn + 32·m.
    let wm: Vec<f32> = (0..32).map(|i| (i % 16) as f32 * 0.25 - 2.0).collect();
    let q = QuantizedWeights::quantize(TensorType::Q4m, &wm, 1, 32).unwrap();
    assert_eq!(q.as_ref().dequantize(), wm);
    q.as_ref().matmul(&mut y, &x, 1);
    assert_eq!(y[0], wm.iter().sum::<f32>());
    q.as_ref().matmul_q8(&mut y, &a);
    assert!((y[0] - wm.iter().sum::<f32>()).abs() < 1e-5);
}

#[test]
fn many_rows_and_tokens_use_every_parallel_chunk() {
    // 200 rows > several rayon chunks of 32; n = 3 takes the transposing path.
    let (rows, cols, n) = (200, 128, 3);
    let w: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let x: Vec<f32> = (0..n * cols)
        .map(|i| ((i * 104_729) % 997) as f32 / 997.0 - 0.5)
        .collect();
    for ty in [TensorType::Q8, TensorType::Q4, TensorType::Q4m] {
        let q = QuantizedWeights::quantize(ty, &w, rows, cols).unwrap();
        let (mut many, mut one) = (vec![0.0; n * rows], vec![0.0; rows]);
        q.as_ref().matmul(&mut many, &x, n);
        for t in 0..n {
            q.as_ref().matmul(&mut one, &x[t * cols..(t + 1) * cols], 1);
            // Several tokens dequantize each row once and take f32 dots, one
            // token scales per block: the same sum, rounded differently.
            for (r, (a, b)) in many[t * rows..(t + 1) * rows].iter().zip(&one).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "{ty} token {t} row {r}: {a} vs {b}"
                );
            }
        }
        let a = Q8Activations::quantize(&x, n, cols);
        q.as_ref().matmul_q8(&mut many, &a);
        for t in 0..n {
            let a1 = Q8Activations::quantize(&x[t * cols..(t + 1) * cols], 1, cols);
            q.as_ref().matmul_q8(&mut one, &a1);
            assert_eq!(
                &many[t * rows..(t + 1) * rows],
                &one[..],
                "{ty} int8 token {t}"
            );
        }
    }
}

#[test]
fn non_finite_activations_give_nan_outputs_in_the_int8_path() {
    let w = vec![0.25f32; 2 * 64];
    let q = QuantizedWeights::quantize(TensorType::Q4, &w, 2, 64).unwrap();
    for bad in [f32::NAN, f32::INFINITY] {
        let mut x = vec![1.0f32; 64];
        x[40] = bad;
        let a = Q8Activations::quantize(&x, 1, 64);
        let mut y = [0.0f32; 2];
        q.as_ref().matmul_q8(&mut y, &a);
        assert!(y.iter().all(|v| v.is_nan()), "{bad}: {y:?}");
    }
}

#[test]
#[should_panic(expected = "no int8 kernel")]
fn int8_kernel_refuses_float_weights() {
    let w = vec![0.0f32; 32];
    let v = WeightsRef::new(1, 32, microllm_kernels::quant::Planes::F32(&w)).unwrap();
    let a = Q8Activations::quantize(&[0.0; 32], 1, 32);
    v.matmul_q8(&mut [0.0], &a);
}
