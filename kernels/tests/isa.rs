//! Every instruction-set tier this CPU can run, held to the scalar tier.
//!
//! Under `cargo test --target aarch64-unknown-linux-gnu` (qemu) this runs
//! the NEON tier; natively on x86-64 the AVX2 and AVX-512 tiers.
//!
//! Bounds:
//! - `quantize_q8`: bit-identical (same rounding, same operations).
//! - matrix kernels: the per-block integer sums of the int8 kernels are
//!   exact on every tier; what differs is the order of f32 sums, so
//!   `|y − y_scalar| ≤ 1e-5 · S` plus a tiny absolute term, where `S` is
//!   `Σ|ŵ·x|` summed over the terms a kernel may legitimately form before
//!   they cancel (see `abs_dot`: for q4m, `d·n·x` and `m·x` separately).

use half::f16;
use microllm_kernels::dispatch::{Isa, Kernels, SCALAR};
use microllm_kernels::f32::HeadCache;
use microllm_kernels::pool::{Columns, Pool};
use microllm_kernels::quant::{
    BlockQ8, F32Activations, Planes, Q8Activations, QuantizedWeights, TensorType, WeightsRef, QK,
};
use proptest::prelude::*;

/// The tiers to test: every available one but scalar itself.
fn tiers() -> Vec<&'static Kernels> {
    Isa::available()
        .into_iter()
        .filter(|&i| i != Isa::Scalar)
        .map(|i| Kernels::for_isa(i).unwrap())
        .collect()
}

#[test]
fn the_expected_tiers_are_available_here() {
    let avail = Isa::available();
    eprintln!("available tiers: {avail:?}");
    assert_eq!(avail[0], Isa::Scalar);
    #[cfg(target_arch = "aarch64")]
    assert!(avail.contains(&Isa::Neon), "qemu-aarch64 emulates dotprod");
    #[cfg(target_arch = "x86_64")]
    if std::env::var_os("CI_EXPECT_AVX512").is_some() {
        assert!(avail.contains(&Isa::Avx512));
    }
    for isa in Isa::ALL {
        assert_eq!(Isa::from_name(isa.name()), Some(isa));
        assert_eq!(Kernels::for_isa(isa).is_some(), isa.is_available());
        if let Some(k) = Kernels::for_isa(isa) {
            assert_eq!(k.isa, isa);
        }
    }
    assert_eq!(Isa::from_name("sse"), None);
}

/// Pseudo-random values with a spread of magnitudes, zero blocks and
/// (when `extreme`) values near the f32 and f16 limits.
fn values(seed: u64, len: usize, extreme: bool) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    (0..len)
        .map(|i| {
            let r = next();
            let u = (r >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
            match (r & 31, extreme) {
                (0, true) => 3.0e38 * u,
                (1, true) => 1.0e-38 * u,
                (2, true) => 60000.0 * u.signum(),
                (3, _) => 0.0,
                (4, _) => u * 100.0,
                _ if (i / QK) % 7 == 5 => 0.0,
                _ => u,
            }
        })
        .collect()
}

fn quantized(ty: TensorType, rows: usize, cols: usize, seed: u64) -> QuantizedWeights {
    let w: Vec<f32> = values(seed, rows * cols, false)
        .iter()
        .map(|v| v * 0.1)
        .collect();
    QuantizedWeights::quantize(ty, &w, rows, cols).unwrap()
}

#[test]
fn quantize_q8_is_bit_identical_on_every_tier() {
    for k in tiers() {
        for (seed, blocks) in [(1u64, 1usize), (2, 3), (3, 18), (4, 48), (5, 257)] {
            for extreme in [false, true] {
                let x = values(seed, blocks * QK, extreme);
                let run = |k: &Kernels| {
                    let mut q = vec![BlockQ8 { qs: [0; QK] }; blocks];
                    let mut d = vec![0.0f32; blocks];
                    let mut s = vec![0i32; blocks];
                    (k.quantize_q8)(&x, &mut q, &mut d, &mut s);
                    (q, d.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), s)
                };
                assert_eq!(run(k), run(&SCALAR), "{} seed {seed}", k.isa);
            }
        }
        // Ties round to even, NaN and infinities poison the block's scale.
        let mut x = vec![0.0f32; 64];
        x[0] = 127.0;
        x[1] = 0.5;
        x[2] = 1.5;
        x[3] = -2.5;
        x[32] = f32::NAN;
        x[40] = f32::INFINITY;
        let mut q = vec![BlockQ8 { qs: [0; QK] }; 2];
        let (mut d, mut s) = (vec![0.0; 2], vec![0; 2]);
        (k.quantize_q8)(&x, &mut q, &mut d, &mut s);
        assert_eq!(&q[0].qs[..4], &[127, 0, 2, -2], "{}", k.isa);
        assert_eq!(d[0], 1.0);
        assert!(d[1].is_nan(), "{}", k.isa);
    }
}

/// The scale of the rounding bound for row `r`, token `t`: `Σ|ŵ·x|` for
/// f32, f16 and q8; for the nibble types the sum over the terms a kernel
/// may form before cancelling, `|d|·(n + 8)·|x|` (q4, where `ŵ = d·(n − 8)`
/// may be computed as `d·n − 8d`) and `(|d|·n + |m|)·|x|` (q4m, where
/// `ŵ = d·n + m` is two terms that can cancel).
fn abs_dot(w: &WeightsRef<'_>, wd: &[f32], xd: &[f32], r: usize, t: usize) -> f64 {
    let cols = w.cols();
    let x = &xd[t * cols..(t + 1) * cols];
    let nb = cols / QK;
    match w.planes() {
        Planes::Q4 { quants, scales } => (0..cols)
            .map(|c| {
                let b = r * nb + c / QK;
                let nib = quants[b].get(c % QK) as f64;
                scales[b].to_f64().abs() * (nib + 8.0) * (x[c] as f64).abs()
            })
            .sum(),
        Planes::Q4m {
            quants,
            scales,
            mins,
        } => (0..cols)
            .map(|c| {
                let b = r * nb + c / QK;
                let nib = quants[b].get(c % QK) as f64;
                (scales[b].to_f64().abs() * nib + mins[b].to_f64().abs()) * (x[c] as f64).abs()
            })
            .sum(),
        _ => (0..cols)
            .map(|c| (wd[r * cols + c] as f64 * x[c] as f64).abs())
            .sum(),
    }
}

/// The scale of the AVX-512 tier's second bound (its prompts split each
/// block of activations in two int8 parts): `Σ|ŵ|·max|x|` over the row,
/// each weight times the largest input of its block of 32.
fn abs_block(wd: &[f32], xd: &[f32], cols: usize, r: usize, t: usize) -> f64 {
    let x = &xd[t * cols..(t + 1) * cols];
    let w = &wd[r * cols..(r + 1) * cols];
    x.chunks(QK)
        .zip(w.chunks(QK))
        .map(|(xb, wb)| {
            let amax = xb.iter().fold(0.0f64, |m, &v| m.max((v as f64).abs()));
            wb.iter().map(|&v| (v as f64).abs()).sum::<f64>() * amax
        })
        .sum()
}

/// The bound on tier `isa`'s f32-activation product for row `r`, token
/// `t` against the scalar tier's.
fn f32_bound(isa: Isa, w: &WeightsRef<'_>, wd: &[f32], x: &[f32], r: usize, t: usize) -> f64 {
    isa.f32_tolerance() * abs_dot(w, wd, x, r, t)
        + isa.f32_block_tolerance() * abs_block(wd, x, w.cols(), r, t)
        + 1e-30
}

fn check_matmuls(
    w: &WeightsRef<'_>,
    x: &[f32],
    n: usize,
    r0: usize,
    r1: usize,
) -> Result<(), TestCaseError> {
    let cols = w.cols();
    let wd = w.dequantize();
    let m = r1 - r0;
    for k in tiers() {
        // f32 activations.
        let mut want = vec![f32::NAN; m * n];
        let mut got = vec![f32::NAN; m * n];
        let xa = F32Activations::new(x, n, cols);
        (SCALAR.matmul_f32)(w, r0..r1, &xa, &mut want);
        (k.matmul_f32)(w, r0..r1, &xa, &mut got);
        for i in 0..m * n {
            let (r, t) = (r0 + i / n, i % n);
            let bound = f32_bound(k.isa, w, &wd, x, r, t);
            prop_assert!(
                ((got[i] - want[i]) as f64).abs() <= bound,
                "{} {} f32: r {r} t {t}: {} vs {}",
                k.isa,
                w.ty(),
                got[i],
                want[i]
            );
        }
        // int8 activations.
        if let Some(f) = k.matmul_q8_for(w) {
            let a = Q8Activations::quantize(x, n, cols);
            let xd = a.dequantize();
            (SCALAR.matmul_q8_for(w).unwrap())(w, r0..r1, &a, &mut want);
            f(w, r0..r1, &a, &mut got);
            for i in 0..m * n {
                let (r, t) = (r0 + i / n, i % n);
                let bound = 1e-5 * abs_dot(w, &wd, &xd, r, t) + 1e-30;
                prop_assert!(
                    ((got[i] - want[i]) as f64).abs() <= bound,
                    "{} {} int8: r {r} t {t}: {} vs {}",
                    k.isa,
                    w.ty(),
                    got[i],
                    want[i]
                );
            }
        }
    }
    Ok(())
}

/// An in-place kernel's output `got (n, rows)` against the scalar tier's
/// `want (r1 − r0, n)`: the view's columns `cols` within `bound(r, t)`,
/// every other element untouched (NaN).
fn check_view(
    got: &[f32],
    want: &[f32],
    n: usize,
    rows: usize,
    cols: std::ops::Range<usize>,
    bound: impl Fn(usize, usize) -> f64,
    label: &str,
) -> Result<(), TestCaseError> {
    for t in 0..n {
        for r in 0..rows {
            let v = got[t * rows + r];
            if !cols.contains(&r) {
                prop_assert!(v.is_nan(), "{label}: wrote outside the view");
                continue;
            }
            let e = want[(r - cols.start) * n + t];
            prop_assert!(
                ((v - e) as f64).abs() <= bound(r, t),
                "{label}: r {r} t {t}: {v} vs {e}"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn quantized_matmuls_match_scalar(
        ty in prop::sample::select(vec![TensorType::Q8, TensorType::Q4, TensorType::Q4m]),
        rows in 1usize..70,
        blocks in 1usize..12,
        // Past 16 and 32 tokens: the AMX tier's tiles, pairs and tails.
        n in prop_oneof![1usize..10, 10usize..40],
        cut in (0.0f64..1.0, 0.0f64..1.0),
        seed in any::<u64>(),
        extreme in any::<bool>(),
    ) {
        let cols = blocks * QK;
        let q = quantized(ty, rows, cols, seed);
        let w = q.as_ref();
        let mut x = values(seed ^ 0xABCD, n * cols, extreme);
        // Keep products finite: extreme activations only against small rows.
        if extreme {
            for v in &mut x {
                *v = v.clamp(-1e30, 1e30);
            }
        }
        let (a, b) = ((cut.0 * rows as f64) as usize, (cut.1 * rows as f64) as usize);
        let (r0, r1) = (a.min(b), a.max(b).max(a.min(b) + 1).min(rows));
        check_matmuls(&w, &x, n, r0.min(r1 - 1), r1)?;
    }

    #[test]
    fn float_matmuls_match_scalar(
        half in any::<bool>(),
        rows in 1usize..40,
        cols in 1usize..200,
        n in 1usize..6,
        seed in any::<u64>(),
    ) {
        let w = values(seed, rows * cols, false);
        let x = values(seed ^ 7, n * cols, false);
        let h: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        let wr = if half {
            WeightsRef::new(rows, cols, Planes::F16(&h)).unwrap()
        } else {
            WeightsRef::new(rows, cols, Planes::F32(&w)).unwrap()
        };
        check_matmuls(&wr, &x, n, 0, rows)?;
    }

    /// The in-place prompt kernels (AMX tiles; the AVX-512 tier's split
    /// int8 kernel for q4/q8 and f32 panel for the rest; its int8-input
    /// kernel for q4/q8) on every weight
    /// type, on a window of columns of a wider output, with enough
    /// columns for several passes over a panel and tokens for whole and
    /// partial tiles.
    #[test]
    fn in_place_prompt_kernels_match_scalar(
        ty in prop::sample::select(vec![
            TensorType::F32, TensorType::F16, TensorType::Q8, TensorType::Q4, TensorType::Q4m,
        ]),
        rows in 1usize..80,
        blocks in 1usize..20,
        n in 1usize..40,
        cut in (0.0f64..1.0, 0.0f64..1.0),
        seed in any::<u64>(),
    ) {
        let cols = blocks * QK;
        let w0: Vec<f32> = values(seed, rows * cols, false).iter().map(|v| v * 0.1).collect();
        let h: Vec<f16> = w0.iter().map(|&v| f16::from_f32(v)).collect();
        let q = QuantizedWeights::quantize(ty, &w0, rows, cols).ok();
        let w = match ty {
            TensorType::F32 => WeightsRef::new(rows, cols, Planes::F32(&w0)).unwrap(),
            TensorType::F16 => WeightsRef::new(rows, cols, Planes::F16(&h)).unwrap(),
            _ => q.as_ref().unwrap().as_ref(),
        };
        let wd = w.dequantize();
        let x = values(seed ^ 0x55, n * cols, false);
        let (a, b) = ((cut.0 * rows as f64) as usize, (cut.1 * rows as f64) as usize);
        let (r0, r1) = (a.min(b).min(rows - 1), a.max(b).max(a.min(b) + 1).min(rows));
        let pool = Pool::new(1);
        let mut want = vec![f32::NAN; (r1 - r0) * n];
        (SCALAR.matmul_f32)(&w, r0..r1, &F32Activations::new(&x, n, cols), &mut want);
        let a = Q8Activations::quantize(&x, n, cols);
        let xd = a.dequantize();
        let mut want_q = vec![f32::NAN; (r1 - r0) * n];
        if let Some(f) = SCALAR.matmul_q8_for(&w) {
            f(&w, r0..r1, &a, &mut want_q);
        }
        for k in tiers() {
            // int8 activations, where the tier has an in-place kernel.
            if let Some(c) = k.matmul_q8_cols.filter(|c| (c.takes)(ty)) {
                (c.prepare)(&a, &pool);
                let mut got = vec![f32::NAN; n * rows];
                (c.f)(&w, &a, Columns::new(&mut got, n, rows, r0..r1));
                let bound = |r, t| 1e-5 * abs_dot(&w, &wd, &xd, r, t) + 1e-30;
                check_view(&got, &want_q, n, rows, r0..r1, bound, &format!("{} {ty} int8", k.isa))?;
            }
            // Any token count, below the tables' `min_tokens` too.
            let Some(c) = k.matmul_f32_cols.filter(|c| (c.takes)(ty)) else { continue };
            let xa = F32Activations::new(&x, n, cols);
            (c.prepare)(&w, &xa, &pool);
            let mut got = vec![f32::NAN; n * rows];
            (c.f)(&w, &xa, Columns::new(&mut got, n, rows, r0..r1));
            let bound = |r, t| f32_bound(k.isa, &w, &wd, &x, r, t);
            check_view(&got, &want, n, rows, r0..r1, bound, &format!("{} {ty}", k.isa))?;
        }
    }

    #[test]
    fn dot_and_axpy_match_scalar(len in 0usize..300, seed in any::<u64>(), a in -4.0f32..4.0) {
        let x = values(seed, len, false);
        let y = values(seed ^ 3, len, false);
        let abs: f64 = x.iter().zip(&y).map(|(&p, &q)| (p as f64 * q as f64).abs()).sum();
        for k in tiers() {
            let got = (k.dot)(&x, &y) as f64;
            let want = (SCALAR.dot)(&x, &y) as f64;
            prop_assert!((got - want).abs() <= 1e-5 * abs + 1e-30, "{} dot", k.isa);
            let mut y1 = y.clone();
            let mut y2 = y.clone();
            (k.axpy)(&mut y1, a, &x);
            (SCALAR.axpy)(&mut y2, a, &x);
            for i in 0..len {
                // One multiply-add per element: fused or not, within an ulp or two.
                let tol = 1e-6 * (y[i].abs() + (a * x[i]).abs()) as f64 + 1e-30;
                prop_assert!(((y1[i] - y2[i]) as f64).abs() <= tol, "{} axpy {i}", k.isa);
            }
        }
    }

    #[test]
    fn attend_matches_an_f64_reference_on_every_tier(
        hd in prop::sample::select(vec![8usize, 16, 24, 40, 64, 72, 128, 136, 256, 264]),
        n in 1usize..300,
        gap in 0usize..40,
        seed in any::<u64>(),
        scale in 0.01f32..3.0,
    ) {
        // A cache of n rows, `stride` apart, with this head at `off`.
        let (stride, off) = (hd + gap, gap / 2);
        let len = (n - 1) * stride + off + hd;
        let (k, v) = (values(seed, len, false), values(seed ^ 7, len, false));
        let q = values(seed ^ 9, hd, false);
        let row = |c: &[f32], p: usize| c[off + p * stride..][..hd].to_vec();
        // f64 reference; the bound carries the f32 error of the scores
        // (order of the sums) through softmax, plus that of the output sums.
        let s: Vec<f64> = (0..n)
            .map(|p| row(&k, p).iter().zip(&q).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() * scale as f64)
            .collect();
        let max = s.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
        let z: f64 = e.iter().sum();
        let err_s = 1e-5 * scale as f64 * (0..n)
            .map(|p| row(&k, p).iter().zip(&q).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum::<f64>())
            .fold(0.0, f64::max);
        for kern in std::iter::once(&SCALAR).chain(tiers()) {
            let mut out = vec![f32::NAN; hd];
            let mut scores = vec![f32::NAN; n];
            let cache = HeadCache { k: &k[off..], v: &v[off..], stride };
            (kern.attend)(&mut out, &q, cache, scale, &mut scores);
            for d in 0..hd {
                let (mut want, mut mag) = (0.0f64, 0.0f64);
                for p in 0..n {
                    let vd = v[off + p * stride + d] as f64;
                    want += e[p] / z * vd;
                    mag += e[p] / z * vd.abs();
                }
                let tol = (2.0 * err_s + 1e-5) * mag + 1e-30;
                prop_assert!(
                    (out[d] as f64 - want).abs() <= tol,
                    "{} hd {hd} n {n} d {d}: {} vs {want} (tol {tol})", kern.isa, out[d]
                );
            }
            for p in 0..n {
                prop_assert!((scores[p] as f64 - e[p] / z).abs() <= 2.0 * err_s * e[p] / z + 1e-6);
            }
        }
    }

    #[test]
    fn softmax_and_silu_mul_are_bit_identical_on_every_tier(
        len in 0usize..300,
        seed in any::<u64>(),
        scale in 0.1f32..60.0,
        extreme in any::<bool>(),
    ) {
        let x: Vec<f32> = values(seed, len, extreme).iter().map(|v| v * scale).collect();
        let up = values(seed ^ 5, len, extreme);
        for k in tiers() {
            let (mut a, mut b) = (x.clone(), x.clone());
            (k.softmax)(&mut a);
            (SCALAR.softmax)(&mut b);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(&a), bits(&b), "{} softmax", k.isa);
            let (mut a, mut b) = (x.clone(), x.clone());
            (k.silu_mul)(&mut a, &up);
            (SCALAR.silu_mul)(&mut b, &up);
            prop_assert_eq!(bits(&a), bits(&b), "{} silu_mul", k.isa);
        }
    }
}

/// The whole matrix product through the pool on each tier, with several
/// thread counts, equals the scalar tier on one thread (within the bound
/// of the proptests above).
#[test]
fn pooled_matmul_matches_scalar_for_model_shapes() {
    let pools = [Pool::new(1), Pool::new(2), Pool::new(3)];
    for (ty, rows, cols) in [
        (TensorType::Q4, 576, 576),
        (TensorType::Q8, 192, 576),
        (TensorType::Q4m, 1536, 576),
        (TensorType::Q4, 576, 1536),
    ] {
        let q = quantized(ty, rows, cols, rows as u64 ^ cols as u64);
        let w = q.as_ref();
        for n in [1usize, 5, 37] {
            let x = values(n as u64, n * cols, false);
            let a = Q8Activations::quantize(&x, n, cols);
            let (wd, xd) = (w.dequantize(), a.dequantize());
            let mut want = vec![0.0f32; n * rows];
            w.matmul_q8_with(&SCALAR, &pools[0], &mut want, &a);
            let mut want_f = vec![0.0f32; n * rows];
            w.matmul_with(&SCALAR, &pools[0], &mut want_f, &x, n);
            for k in Isa::available().into_iter().filter_map(Kernels::for_isa) {
                let mut first_f: Option<Vec<f32>> = None;
                let mut first_q: Option<Vec<f32>> = None;
                for pool in &pools {
                    let mut got = vec![0.0f32; n * rows];
                    w.matmul_q8_with(k, pool, &mut got, &a);
                    let mut got_f = vec![0.0f32; n * rows];
                    w.matmul_with(k, pool, &mut got_f, &x, n);
                    // However the pool splits the rows, the same bits.
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    match &first_f {
                        Some(f) => assert_eq!(bits(f), bits(&got_f), "{} {ty} f32 n={n}", k.isa),
                        None => first_f = Some(got_f.clone()),
                    }
                    match &first_q {
                        Some(f) => assert_eq!(bits(f), bits(&got), "{} {ty} int8 n={n}", k.isa),
                        None => first_q = Some(got.clone()),
                    }
                    for i in 0..n * rows {
                        let (t, r) = (i / rows, i % rows);
                        let tol = 1e-5 * abs_dot(&w, &wd, &xd, r, t) + 1e-30;
                        let diff = (got[i] - want[i]).abs() as f64;
                        assert!(diff <= tol, "{} {ty} int8 {i}: {diff} > {tol}", k.isa);
                        let tol = f32_bound(k.isa, &w, &wd, &x, r, t) as f32;
                        assert!(
                            (got_f[i] - want_f[i]).abs() <= tol,
                            "{} {ty} f32 {i}",
                            k.isa
                        );
                    }
                }
            }
        }
    }
}

/// Several matrices with one input in one pool job give, on every tier
/// and thread count, the bits of one product per matrix; for one token
/// (the fused path) and for several (one after another).
#[test]
fn fused_matmuls_equal_one_product_per_matrix() {
    let pools = [Pool::new(1), Pool::new(2), Pool::new(3)];
    let cols = 576;
    let qs = [
        quantized(TensorType::Q4, 576, cols, 1),
        quantized(TensorType::Q8, 192, cols, 2),
        quantized(TensorType::Q4m, 200, cols, 3),
    ];
    let ws: Vec<WeightsRef<'_>> = qs.iter().map(|q| q.as_ref()).collect();
    let wr: Vec<&WeightsRef<'_>> = ws.iter().collect();
    for n in [1usize, 3] {
        let x = values(n as u64 + 7, n * cols, false);
        let a = Q8Activations::quantize(&x, n, cols);
        for k in Isa::available().into_iter().filter_map(Kernels::for_isa) {
            for pool in &pools {
                let mut bufs: Vec<Vec<f32>> =
                    ws.iter().map(|w| vec![f32::NAN; n * w.rows()]).collect();
                let mut outs: Vec<&mut [f32]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
                WeightsRef::matmul_q8_many_with(k, pool, &wr, &mut outs, &a);
                for (w, got) in ws.iter().zip(&bufs) {
                    let mut want = vec![0.0f32; n * w.rows()];
                    w.matmul_q8_with(k, pool, &mut want, &a);
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(got), bits(&want), "{} {} n={n}", k.isa, w.ty());
                }
            }
        }
    }
}
