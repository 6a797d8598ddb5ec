//! Statistical and property tests of `microllm::sampler` through its public
//! API: empirical frequencies against softmax, reproducibility, and
//! invariants on arbitrary inputs.

use microllm::sampler::{Sampler, SamplerConfig};
use proptest::prelude::*;

const DRAWS: usize = 20_000;

fn softmax(logits: &[f32], temperature: f64) -> Vec<f64> {
    let max = logits
        .iter()
        .map(|&l| f64::from(l))
        .fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = logits
        .iter()
        .map(|&l| ((f64::from(l) - max) / temperature).exp())
        .collect();
    let total: f64 = w.iter().sum();
    w.iter().map(|x| x / total).collect()
}

fn counts(config: SamplerConfig, logits: &[f32], draws: usize) -> Vec<usize> {
    let mut s = Sampler::new(config).unwrap();
    let mut counts = vec![0; logits.len()];
    for _ in 0..draws {
        counts[s.sample(logits, &[]) as usize] += 1;
    }
    counts
}

/// Pearson's chi-square statistic and a per-bucket check that every count
/// is within 4.5 binomial standard deviations of its expectation.
fn check_frequencies(counts: &[usize], probs: &[f64], what: &str) -> f64 {
    let n = counts.iter().sum::<usize>() as f64;
    let mut chi2 = 0.0;
    for (i, (&c, &p)) in counts.iter().zip(probs).enumerate() {
        let expected = n * p;
        let sd = (n * p * (1.0 - p)).sqrt();
        let dev = (c as f64 - expected).abs();
        assert!(
            dev <= 4.5 * sd + 1e-9,
            "{what}: token {i}: {c} draws, expected {expected:.1} ± {sd:.1}"
        );
        if p > 0.0 {
            chi2 += (c as f64 - expected).powi(2) / expected;
        }
    }
    chi2
}

/// Logits of an 8-token vocabulary with probabilities from ~0.4 down to
/// ~0.01 at temperature 1.
const LOGITS: [f32; 8] = [1.0, 2.0, 0.5, -1.0, 3.0, 0.0, 1.5, -0.5];

/// Chi-square critical value for 7 degrees of freedom at p = 0.001.
const CHI2_7DOF_P001: f64 = 24.32;

#[test]
fn sampler_frequencies_match_softmax_at_temperature_1() {
    for seed in [1, 2, 3] {
        let c = SamplerConfig {
            temperature: 1.0,
            seed,
            ..Default::default()
        };
        let counts = counts(c, &LOGITS, DRAWS);
        let chi2 = check_frequencies(&counts, &softmax(&LOGITS, 1.0), "T=1");
        assert!(
            chi2 < CHI2_7DOF_P001,
            "seed {seed}: chi2 = {chi2:.2}, counts {counts:?}"
        );
    }
}

#[test]
fn sampler_temperature_scales_distribution() {
    for temperature in [0.5f32, 2.0] {
        let c = SamplerConfig {
            temperature,
            seed: 11,
            ..Default::default()
        };
        let counts = counts(c, &LOGITS, DRAWS);
        let probs = softmax(&LOGITS, f64::from(temperature));
        let chi2 = check_frequencies(&counts, &probs, &format!("T={temperature}"));
        assert!(
            chi2 < CHI2_7DOF_P001,
            "T={temperature}: chi2 = {chi2:.2}, counts {counts:?}"
        );
        // And it is really a different distribution from T = 1.
        let at_1 = softmax(&LOGITS, 1.0);
        let chi2_vs_1: f64 = counts
            .iter()
            .zip(&at_1)
            .map(|(&c, &p)| (c as f64 - DRAWS as f64 * p).powi(2) / (DRAWS as f64 * p))
            .sum();
        assert!(
            chi2_vs_1 > 500.0,
            "T={temperature} looks like T=1: {chi2_vs_1:.1}"
        );
    }
}

#[test]
fn sampler_top_p_renormalises_over_the_nucleus() {
    // Probabilities 0.5, 0.1, 0.25, 0.15; top_p 0.7 keeps {0, 2} → 2/3, 1/3.
    let logits: Vec<f32> = [0.5f64, 0.1, 0.25, 0.15]
        .iter()
        .map(|p| p.ln() as f32)
        .collect();
    let c = SamplerConfig {
        temperature: 1.0,
        top_p: 0.7,
        seed: 5,
        ..Default::default()
    };
    let counts = counts(c, &logits, DRAWS);
    assert_eq!((counts[1], counts[3]), (0, 0), "{counts:?}");
    check_frequencies(&counts, &[2.0 / 3.0, 0.0, 1.0 / 3.0, 0.0], "top_p");
}

#[test]
fn sampler_same_seed_same_tokens_different_seed_different() {
    let logits: Vec<f32> = (0..1000)
        .map(|i| ((i * 7919) % 101) as f32 / 25.0)
        .collect();
    let run = |seed| {
        let c = SamplerConfig {
            temperature: 0.9,
            top_k: 50,
            top_p: 0.95,
            min_p: 0.01,
            repetition_penalty: 1.1,
            seed,
            ..Default::default()
        };
        let mut s = Sampler::new(c).unwrap();
        let mut history = Vec::new();
        for _ in 0..64 {
            let id = s.sample(&logits, &history);
            history.push(id);
        }
        history
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any valid configuration, any logits (NaN and infinities included),
    /// any history: the id is inside the vocabulary.
    #[test]
    fn sampler_prop_id_in_range(
        logits in prop::collection::vec(
            prop_oneof![
                8 => -50.0f32..50.0,
                1 => Just(f32::NAN),
                1 => Just(f32::INFINITY),
                1 => Just(f32::NEG_INFINITY),
                1 => Just(-0.0f32),
            ],
            1..300,
        ),
        history in prop::collection::vec(0u32..400, 0..100),
        temperature in prop_oneof![Just(0.0f32), 1e-6f32..20.0],
        top_k in 0usize..400,
        top_p in prop_oneof![Just(1.0f32), 1e-6f32..1.0],
        min_p in prop_oneof![Just(0.0f32), 0.0f32..=1.0],
        repetition_penalty in prop_oneof![Just(1.0f32), 0.05f32..5.0],
        repeat_last_n in 0usize..128,
        seed in any::<u64>(),
    ) {
        let c = SamplerConfig { temperature, top_k, top_p, min_p, repetition_penalty, repeat_last_n, seed };
        let mut s = Sampler::new(c).unwrap();
        for _ in 0..3 {
            let id = s.sample(&logits, &history) as usize;
            prop_assert!(id < logits.len());
        }
    }

    /// With top_k = k the id is always among the k largest logits (ties at
    /// the k-th value included).
    #[test]
    fn sampler_prop_top_k_among_k_largest(
        logits in prop::collection::vec(-20.0f32..20.0, 1..500),
        k in 1usize..40,
        temperature in 0.05f32..10.0,
        top_p in prop_oneof![Just(1.0f32), 0.01f32..1.0],
        seed in any::<u64>(),
    ) {
        let c = SamplerConfig { temperature, top_k: k, top_p, seed, ..Default::default() };
        let mut s = Sampler::new(c).unwrap();
        let mut sorted = logits.clone();
        sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
        let kth = sorted[k.min(logits.len()) - 1];
        for _ in 0..5 {
            let id = s.sample(&logits, &[]) as usize;
            prop_assert!(id < logits.len());
            prop_assert!(logits[id] >= kth, "id {} logit {} < k-th largest {}", id, logits[id], kth);
        }
    }

    /// top_k = 1 is greedy whatever the temperature and seed.
    #[test]
    fn sampler_prop_top_k_1_is_greedy(
        logits in prop::collection::vec(prop_oneof![-5.0f32..5.0, Just(0.0f32), Just(-0.0f32)], 1..200),
        temperature in 1e-3f32..100.0,
        seed in any::<u64>(),
    ) {
        let greedy = Sampler::new(SamplerConfig::default()).unwrap().sample(&logits, &[]);
        let c = SamplerConfig { temperature, top_k: 1, seed, ..Default::default() };
        prop_assert_eq!(Sampler::new(c).unwrap().sample(&logits, &[]), greedy);
    }
}
