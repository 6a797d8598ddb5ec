//! Reference f32 kernels: the exact path every other kernel is held to.
//!
//! Matrices are row-major. A weight `w` of shape `(out, in)` holds the
//! weights of output `o` in `w[o * in..(o + 1) * in]` (PyTorch `nn.Linear`).

/// Dot product with eight independent partial sums: fewer rounding steps in
/// a row than a single running sum, and a shape the compiler vectorises.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: length mismatch");
    let mut acc = [0.0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `out (n, rows) = x (n, cols) · wᵀ` where `w` is `(rows, cols)`, on the
/// active tier and the global pool.
pub fn matmul(out: &mut [f32], x: &[f32], w: &[f32], n: usize, cols: usize, rows: usize) {
    let w = crate::quant::WeightsRef::new(rows, cols, crate::quant::Planes::F32(w))
        .expect("matmul: w is not (rows, cols)");
    w.matmul(out, x, n);
}

/// RMSNorm of one vector: `out = x / sqrt(mean(x²) + eps) * weight`.
/// The mean of squares is summed in f64 so that the norm is exact to f32
/// (each square is exact in f64); in 8 partial sums, since one running
/// sum waits on the latency of every add (2% of a prompt's time).
pub fn rmsnorm(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    assert!(
        out.len() == x.len() && x.len() == weight.len(),
        "rmsnorm: length mismatch"
    );
    let mut acc = [0.0f64; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            acc[i] += (c[i] as f64) * (c[i] as f64);
        }
    }
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *a += (v as f64) * (v as f64);
    }
    let ss = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    let inv = 1.0 / ((ss / x.len() as f64) + eps as f64).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(weight) {
        *o = ((v as f64 * inv) as f32) * g;
    }
}

/// `e^x` in f32 arithmetic only (no libm call), so that loops over it
/// vectorise on every tier and give the same bits on each: Cephes' `expf`
/// (range reduction by `ln 2`, a degree-6 polynomial, within 2 ulp of the
/// exact value; tested below), with the power of two applied in two
/// halves so that results down to the subnormals come out right.
/// `-inf` and anything below about -104 give 0, above 88.73 `inf`, NaN NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 = LN2_HI + LN2_LO, LN2_HI with 9 significant bits so that
    // k · LN2_HI is exact for every k this function reaches.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 · 2^23 rounds to an integer, which the low bits then hold.
    const MAGIC: f32 = 12_582_912.0;
    // `clamp` passes NaN through.
    let xc = x.clamp(-104.0, 88.73);
    let t = xc * LOG2E + MAGIC;
    let k = t - MAGIC;
    let ki = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let r = (xc - k * LN2_HI) - k * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2^k as 2^h · 2^(k - h): both halves normal for k in -150..=128.
    let h = ki >> 1;
    let s1 = f32::from_bits((h.wrapping_add(127) as u32).wrapping_shl(23));
    let s2 = f32::from_bits((ki.wrapping_sub(h).wrapping_add(127) as u32).wrapping_shl(23));
    y * s1 * s2
}

/// The largest value, `-inf` for an empty slice (NaN is skipped).
#[inline(always)]
fn max16(x: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for i in 0..16 {
            m[i] = if c[i] > m[i] { c[i] } else { m[i] };
        }
    }
    for &v in chunks.remainder() {
        m[0] = if v > m[0] { v } else { m[0] };
    }
    m.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// The sum in 16 partial sums, added pairwise at the end.
#[inline(always)]
fn sum16(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for i in 0..16 {
            acc[i] += c[i];
        }
    }
    for (i, &v) in chunks.remainder().iter().enumerate() {
        acc[i] += v;
    }
    let mut w = 8;
    while w > 0 {
        for i in 0..w {
            acc[i] += acc[i + w];
        }
        w /= 2;
    }
    acc[0]
}

/// One head's rows of a key/value cache: key `p` is `k[p·stride..][..hd]`
/// and value `p` is `v[p·stride..][..hd]` (the model's cache holds every
/// key head of a position side by side, so `stride` is the key/value row
/// width and `k`, `v` start at the head's offset).
#[derive(Clone, Copy, Debug)]
pub struct HeadCache<'a> {
    /// Keys from this head's first one.
    pub k: &'a [f32],
    /// Values from this head's first one.
    pub v: &'a [f32],
    /// Values from one position's row to the next.
    pub stride: usize,
}

impl HeadCache<'_> {
    /// Checks the shapes of one attention call: `out` as wide as `q`
    /// (`hd`), and `n` rows of `hd` values inside `k` and `v`.
    ///
    /// # Panics
    /// When they are not.
    pub(crate) fn check(&self, out: &[f32], q: &[f32], n: usize) {
        let hd = q.len();
        assert_eq!(out.len(), hd, "attend: out and q differ in length");
        let need = n.checked_sub(1).map_or(Some(0), |last| {
            last.checked_mul(self.stride)?.checked_add(hd)
        });
        assert!(
            need.is_some_and(|need| need <= self.k.len() && need <= self.v.len()),
            "attend: the cache holds fewer than {n} rows"
        );
    }
}

/// One query's attention over a key/value cache, the whole of a decode
/// step's attention for one head: `scores[p] = scale · q·k_p` for
/// `p < scores.len()`, softmaxed in place, then `out = Σ_p scores[p] · v_p`.
///
/// The tiers compile this body around their own `dot` and `axpy`
/// ([`crate::dispatch::Kernels::attend`]), so it gives the same bits as
/// calling those once per position, without a call through the table for
/// each (two per position and head: 70,000 per token at 128 positions on
/// SmolLM2-135M).
///
/// # Panics
/// When `out` and `q` differ in length or the cache holds fewer than
/// `scores.len()` rows.
#[inline(always)]
pub(crate) fn attend_body(
    out: &mut [f32],
    q: &[f32],
    cache: HeadCache<'_>,
    scale: f32,
    scores: &mut [f32],
    dot: impl Fn(&[f32], &[f32]) -> f32,
    axpy: impl Fn(&mut [f32], f32, &[f32]),
) {
    let hd = q.len();
    cache.check(out, q, scores.len());
    let HeadCache { k, v, stride } = cache;
    for (p, s) in scores.iter_mut().enumerate() {
        *s = dot(q, &k[p * stride..][..hd]) * scale;
    }
    softmax_body(scores);
    out.fill(0.0);
    for (p, &a) in scores.iter().enumerate() {
        axpy(out, a, &v[p * stride..][..hd]);
    }
}

/// In-place softmax; the maximum is subtracted first so that exp never
/// overflows. An empty slice, or one of only `-inf`, is left as it is.
/// The SIMD tiers compile this same body ([`crate::dispatch::Kernels::softmax`]).
pub fn softmax(x: &mut [f32]) {
    softmax_body(x)
}

#[inline(always)]
pub(crate) fn softmax_body(x: &mut [f32]) {
    let max = max16(x);
    if max == f32::NEG_INFINITY {
        return;
    }
    for v in x.iter_mut() {
        *v = exp(*v - max);
    }
    let inv = 1.0 / sum16(x);
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// SwiGLU's gate: `gate[i] = silu(gate[i]) * up[i]`, `silu(x) = x·σ(x)`.
/// The SIMD tiers compile this same body ([`crate::dispatch::Kernels::silu_mul`]).
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    silu_mul_body(gate, up)
}

#[inline(always)]
pub(crate) fn silu_mul_body(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "silu_mul: length mismatch");
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp(-*g)) * u;
    }
}

/// Rotary position embedding, Hugging Face `rotate_half` convention: within
/// each head of `head_dim` values, element `i` is paired with `i + head_dim/2`.
/// `cos`/`sin` hold `head_dim / 2` values for this position.
pub fn rope(x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
    let half = head_dim / 2;
    assert!(cos.len() == half && sin.len() == half, "rope: table length");
    assert_eq!(x.len() % head_dim, 0, "rope: not a whole number of heads");
    for head in x.chunks_exact_mut(head_dim) {
        let (a, b) = head.split_at_mut(half);
        for i in 0..half {
            let (x0, x1) = (a[i], b[i]);
            a[i] = x0 * cos[i] - x1 * sin[i];
            b[i] = x1 * cos[i] + x0 * sin[i];
        }
    }
}

/// `y += x`, element-wise (the residual connection).
pub fn add_inplace(y: &mut [f32], x: &[f32]) {
    assert_eq!(y.len(), x.len(), "add: length mismatch");
    for (a, &b) in y.iter_mut().zip(x) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
    }

    fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn dot_matches_f64_on_odd_lengths() {
        for n in [0, 1, 7, 8, 9, 63, 576, 1537] {
            let a = pseudo_random(n, 1);
            let b = pseudo_random(n, 2);
            let got = dot(&a, &b) as f64;
            assert!((got - naive_dot(&a, &b)).abs() < 1e-4, "n={n}");
        }
    }

    #[test]
    fn matmul_equals_rowwise_dots_for_one_and_many_tokens() {
        let (rows, cols) = (70, 33);
        let w = pseudo_random(rows * cols, 3);
        for n in [1, 2, 5] {
            let x = pseudo_random(n * cols, 4);
            let mut out = vec![0.0; n * rows];
            matmul(&mut out, &x, &w, n, cols, rows);
            for t in 0..n {
                for r in 0..rows {
                    let want =
                        naive_dot(&w[r * cols..(r + 1) * cols], &x[t * cols..(t + 1) * cols]);
                    assert!(
                        (out[t * rows + r] as f64 - want).abs() < 1e-5,
                        "t={t} r={r}"
                    );
                }
            }
        }
    }

    #[test]
    fn rmsnorm_hand_computed() {
        // mean of squares of [3, 4] = 12.5; 1/sqrt(12.5) = 0.28284271
        let mut out = [0.0; 2];
        rmsnorm(&mut out, &[3.0, 4.0], &[1.0, 2.0], 0.0);
        assert!((out[0] - 0.848_528_1).abs() < 1e-6);
        assert!((out[1] - 2.262_741_7).abs() < 1e-6);
    }

    /// Every length (whole chunks of 8 and remainders), against a
    /// sequential f64 sum: within one f32 rounding of each output.
    #[test]
    fn rmsnorm_matches_sequential_f64_on_long_rows() {
        for n in [1, 7, 8, 9, 63, 576, 1537] {
            let x: Vec<f32> = pseudo_random(n, 5).iter().map(|v| v * 40.0).collect();
            let g: Vec<f32> = pseudo_random(n, 6);
            let mut out = vec![0.0; n];
            rmsnorm(&mut out, &x, &g, 1e-5);
            let ss: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
            let inv = 1.0 / (ss / n as f64 + 1e-5f32 as f64).sqrt();
            for i in 0..n {
                let want = (x[i] as f64 * inv) as f32 * g[i];
                assert!(ulps(out[i], want) <= 1, "n={n} i={i}: {} vs {want}", out[i]);
            }
        }
    }

    #[test]
    fn softmax_hand_computed_and_stable() {
        let mut x = [1.0, 2.0, 3.0];
        softmax(&mut x);
        let e: Vec<f64> = [1.0f64, 2.0, 3.0].iter().map(|v| v.exp()).collect();
        let s: f64 = e.iter().sum();
        for i in 0..3 {
            assert!((x[i] as f64 - e[i] / s).abs() < 1e-7);
        }
        let mut big = [1000.0, 1000.0, f32::NEG_INFINITY];
        softmax(&mut big);
        assert_eq!(big, [0.5, 0.5, 0.0]);
    }

    /// ulps between two finite f32 of one sign.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_within_two_ulp_over_its_whole_range() {
        let mut x = -110.0f32;
        let mut worst = 0;
        while x < 90.0 {
            let want = (x as f64).exp();
            let got = exp(x);
            if want < f32::MIN_POSITIVE as f64 {
                // Subnormal results: within one step of the smallest normal.
                assert!(
                    (got as f64 - want).abs() <= 2.0 * f32::from_bits(1) as f64,
                    "x={x}"
                );
            } else if want > f32::MAX as f64 {
                assert_eq!(got, f32::INFINITY, "x={x}");
            } else {
                worst = worst.max(ulps(got, want as f32));
            }
            x += 0.000_731;
        }
        assert!(worst <= 2, "worst error {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(-200.0), 0.0);
    }

    #[test]
    fn softmax_sums_to_one_on_long_rows() {
        for n in [1, 15, 16, 17, 100, 1000] {
            let mut x: Vec<f32> = pseudo_random(n, 9).iter().map(|v| v * 30.0).collect();
            let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let e: Vec<f64> = x.iter().map(|&v| (v as f64 - m).exp()).collect();
            let s: f64 = e.iter().sum();
            softmax(&mut x);
            for (got, want) in x.iter().zip(&e) {
                assert!(
                    (*got as f64 - want / s).abs() <= 1e-6 * (want / s) + 1e-12,
                    "n={n}"
                );
            }
        }
    }

    #[test]
    fn silu_mul_hand_computed() {
        let mut g = [0.0, 1.0, -2.0];
        silu_mul(&mut g, &[5.0, 2.0, 1.0]);
        assert_eq!(g[0], 0.0);
        assert!((g[1] - 2.0 * 0.731_058_6).abs() < 1e-6);
        assert!((g[2] - (-2.0 * 0.119_202_92)).abs() < 1e-6);
    }

    #[test]
    fn rope_rotates_pairs_half_apart() {
        // head_dim 4: pairs (0,2) and (1,3); rotate by 90° and 0°.
        let mut x = [1.0, 2.0, 3.0, 4.0];
        rope(&mut x, 4, &[0.0, 1.0], &[1.0, 0.0]);
        assert_eq!(x, [-3.0, 2.0, 1.0, 4.0]);
    }
}
