//! End to end against the independent reference in `fixtures/golden`: the
//! same top-1 token at every position with a clear margin, the last-position
//! distribution within KL 1e-4, and the greedy continuation, from the GGUF
//! file and from the Hugging Face f32 folder made from it.

mod common;

use common::*;
use microllm::{Activations, GenerateOptions, Logits, Model, Session};
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;

const CASES: [&str; 8] = [
    "plain_english",
    "code",
    "digits",
    "unicode_emoji",
    "whitespace_runs",
    "chatml_chat",
    "long_paragraph",
    "single_token",
];

/// Top-1 agreement is only required where the reference's top-2 are apart
/// by more than this (below it, f32 rounding may legitimately swap them).
const MARGIN: f64 = 1e-3;
const MAX_KL: f64 = 1e-4;
/// Logit tolerance the greedy check uses to pick `robust_prefix_len`.
const GREEDY_TOL: &str = "0.01";

fn golden_dir() -> std::path::PathBuf {
    root().join("fixtures/golden/smollm2-135m-instruct")
}

fn case(name: &str) -> Value {
    let p = golden_dir().join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn check_model(model: Arc<Model>, label: &str) {
    let mut worst_kl = 0.0f64;
    let mut worst_diff = 0.0f64;
    for name in CASES {
        let c = case(name);
        let tokens = ids(&c["token_ids"]);
        assert_eq!(
            model.tokenizer().encode(c["text"].as_str().unwrap()),
            tokens,
            "{label} {name}: tokenizer"
        );

        // Every position at once.
        let mut cache = model.new_cache(tokens.len());
        let logits = model.forward(&tokens, &mut cache, Logits::All).unwrap();
        let vocab = model.config().vocab_size;
        let all = &c["all_positions"];
        let want_argmax = ids(&all["argmax"]);
        for (pos, &want) in want_argmax.iter().enumerate() {
            let top5 = all["top5_logits"][pos].as_array().unwrap();
            let margin = top5[0].as_f64().unwrap() - top5[1].as_f64().unwrap();
            let got = argmax(&logits[pos * vocab..(pos + 1) * vocab]) as u32;
            if margin > MARGIN {
                assert_eq!(
                    got, want,
                    "{label} {name}: top-1 at position {pos} (margin {margin:.4})"
                );
            }
        }

        // The last position against the full reference logits.
        let (shape, reference) =
            read_npy_f32(&golden_dir().join(format!("{name}.last_logits.npy")));
        assert_eq!(shape, vec![vocab]);
        let last = &logits[(tokens.len() - 1) * vocab..];
        let kl = kl_divergence(&reference, last);
        let diff = reference
            .iter()
            .zip(last)
            .map(|(a, b)| (a - b).abs() as f64)
            .fold(0.0, f64::max);
        assert!(kl < MAX_KL, "{label} {name}: KL {kl:e} >= {MAX_KL:e}");
        worst_kl = worst_kl.max(kl);
        worst_diff = worst_diff.max(diff);

        // Greedy continuation through the session API (KV cache, one token at a time).
        let g = &c["greedy"];
        let n_new = g["n_new"].as_u64().unwrap() as usize;
        let robust = g["robust_prefix_len"][GREEDY_TOL].as_u64().unwrap() as usize;
        let want_new = ids(&g["new_ids"]);
        let mut session = Session::new(model.clone());
        let opts = GenerateOptions {
            max_tokens: n_new,
            stop_at_eos: false,
            ..Default::default()
        };
        let out = session
            .generate_tokens(&tokens, &opts, |_| microllm::Control::Continue)
            .unwrap();
        assert_eq!(
            &out.tokens[..robust],
            &want_new[..robust],
            "{label} {name}: greedy continuation (robust prefix {robust})"
        );
        println!(
            "{label:>4} {name:<16} tokens {:>3}  KL {kl:.2e}  max|Δlogit| {diff:.2e}  greedy {}/{} (robust {robust})",
            tokens.len(),
            out.tokens.iter().zip(&want_new).take_while(|(a, b)| a == b).count(),
            n_new
        );
    }
    println!("{label}: worst KL {worst_kl:.2e}, worst max|Δlogit| {worst_diff:.2e}");
}

fn load(path: &Path) -> Arc<Model> {
    Arc::new(Model::load(path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display())))
}

#[test]
fn golden_from_gguf() {
    check_model(load(&smollm2_gguf()), "gguf");
}

#[test]
fn golden_from_hf_folder() {
    check_model(load(&smollm2_hf()), "hf");
}

/// Through q8 the top-1 token may only change where the reference's top two
/// are within this many logits of each other (measured: 8 of 531 positions
/// change, all with margins under 0.27).
const Q8_MARGIN: f64 = 0.5;
// A guard on 8 positions (llama.cpp Q8_0 averages 3.6e-3 over the corpus);
// the corpus-wide figure is measured with `microllm perplexity`.
const Q8_MAX_KL: f64 = 5e-3;

/// The bounds for int8 inputs, as llama.cpp computes. Requantizing every
/// layer's input makes single positions swing with the last bits of any
/// sum: kernels with the same products (within 1e-5) gave a mean
/// last-position KL of 3.8e-3 to 9.3e-3 over these 8 prompts, and top-1
/// changes at margins up to 0.64, while their KL against f32 inputs over
/// all 531 positions stayed within 3.65e-3 to 3.76e-3 (and over the
/// corpus 3.52e-3 to 3.54e-3). So the mean over every position carries
/// the check, at llama.cpp Q8_0's level; the last positions only guard
/// against gross errors.
const Q8_INT8_MARGIN: f64 = 1.0;
const Q8_INT8_MAX_KL: f64 = 5e-3;
const Q8_INT8_LAST_KL: f64 = 2e-2;

#[test]
fn golden_top1_through_q8() {
    use microllm::convert::{convert, recipe};
    use microllm::format::TensorType;
    let dir = std::env::temp_dir().join(format!("microllm-golden-q8-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("smollm2-q8.mllm");
    convert(
        &smollm2_gguf(),
        &out,
        &recipe(TensorType::Q8, None, true, &[]),
        |_, _, _| {},
    )
    .unwrap();
    let mut model = Model::load(&out).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    // f32 inputs hold the q8 bounds above; int8 inputs, as
    // llama.cpp computes, change more top-1 tokens (20 of 531 measured),
    // still only where the reference's margin is under Q8_MARGIN.
    model.set_activations(Activations::F32);
    let f32_logits = check_q8(&model, "f32", 50, Q8_MARGIN, Q8_MAX_KL);
    model.set_activations(Activations::Int8);
    let int8_logits = check_q8(&model, "int8", 20, Q8_INT8_MARGIN, Q8_INT8_LAST_KL);
    // What int8 inputs cost, at every position of every prompt against
    // the same model's f32 inputs.
    let vocab = model.config().vocab_size;
    let kls: Vec<f64> = f32_logits
        .iter()
        .zip(&int8_logits)
        .flat_map(|(a, b)| a.chunks_exact(vocab).zip(b.chunks_exact(vocab)))
        .map(|(a, b)| kl_divergence(a, b))
        .collect();
    let mean = kls.iter().sum::<f64>() / kls.len() as f64;
    println!(
        "q8 int8 against f32 inputs: mean KL {mean:.3e} over {} positions",
        kls.len()
    );
    assert!(
        mean < Q8_INT8_MAX_KL,
        "q8 int8 against f32 inputs: mean KL {mean:e}"
    );
    // The default, auto, is f32 for several tokens at once: bit for bit.
    let tokens = ids(&case("digits")["token_ids"]);
    let run = |m: &Model| {
        m.forward(&tokens, &mut m.new_cache(tokens.len()), Logits::All)
            .unwrap()
    };
    model.set_activations(Activations::Auto);
    let auto = run(&model);
    model.set_activations(Activations::F32);
    assert!(auto == run(&model), "auto must equal f32 on a prompt");
}

/// Golden prompts through `model`: mean last-position KL under `max_kl`
/// (each prompt's under ten times that), at most one position in
/// `one_in` changes top-1, and only where the margin is under
/// `max_margin`; returns each prompt's logits at every position.
fn check_q8(
    model: &Model,
    act: &str,
    one_in: usize,
    max_margin: f64,
    max_kl: f64,
) -> Vec<Vec<f32>> {
    let vocab = model.config().vocab_size;
    let (mut checked, mut flips, mut kls) = (0, Vec::new(), Vec::new());
    let mut all_logits = Vec::new();
    for name in CASES {
        let c = case(name);
        let tokens = ids(&c["token_ids"]);
        let logits = model
            .forward(&tokens, &mut model.new_cache(tokens.len()), Logits::All)
            .unwrap();
        let all = &c["all_positions"];
        for (pos, &want) in ids(&all["argmax"]).iter().enumerate() {
            let top5 = all["top5_logits"][pos].as_array().unwrap();
            let margin = top5[0].as_f64().unwrap() - top5[1].as_f64().unwrap();
            let got = argmax(&logits[pos * vocab..(pos + 1) * vocab]) as u32;
            checked += 1;
            if got != want {
                flips.push((name, pos, margin));
            }
        }
        let (_, reference) = read_npy_f32(&golden_dir().join(format!("{name}.last_logits.npy")));
        let kl = kl_divergence(&reference, &logits[(tokens.len() - 1) * vocab..]);
        println!("q8 {act} {name:<16} last-position KL {kl:.2e}");
        assert!(kl < 10.0 * max_kl, "q8 {act} {name}: KL {kl:e}");
        kls.push(kl);
        all_logits.push(logits);
    }
    let mean_kl = kls.iter().sum::<f64>() / kls.len() as f64;
    println!("q8 {act}: mean last-position KL {mean_kl:.2e}");
    println!(
        "q8 {act}: {} of {checked} positions changed top-1: {flips:?}",
        flips.len()
    );
    assert!(mean_kl < max_kl, "q8 {act}: mean KL {mean_kl:e}");
    assert!(
        flips.len() * one_in <= checked,
        "q8 {act}: more than 1 in {one_in} positions changed top-1"
    );
    for (name, pos, margin) in flips {
        assert!(
            margin < max_margin,
            "q8 {act} {name}: top-1 changed at position {pos} with margin {margin:.3}"
        );
    }
    all_logits
}
