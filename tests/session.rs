//! Sessions and generation on a tiny random model: KV cache consistency,
//! prefix reuse, stop conditions, cancellation, seeds, and load errors.

mod common;

use common::*;
use microllm::{Control, FinishReason, GenerateOptions, Logits, Model, SamplerConfig, Session};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn tiny(tag: &str) -> Arc<Model> {
    let dir = tiny_llama_folder(tag, |_| {});
    let m = Model::load(&dir).unwrap();
    std::fs::remove_dir_all(dir).ok();
    Arc::new(m)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn prefill_at_once_equals_token_by_token() {
    let m = tiny("prefill");
    let ids = [504u32, 2365, 6354, 16438, 27003, 690, 260];
    let vocab = m.config().vocab_size;
    let mut cache = m.new_cache(64);
    let all = m.forward(&ids, &mut cache, Logits::All).unwrap();
    let mut cache2 = m.new_cache(64);
    for (i, &t) in ids.iter().enumerate() {
        let step = m.forward(&[t], &mut cache2, Logits::Last).unwrap();
        let d = max_diff(&step, &all[i * vocab..(i + 1) * vocab]);
        assert!(d < 1e-5, "position {i}: {d}");
    }
    // Prefill in two chunks as well.
    let mut cache3 = m.new_cache(64);
    m.forward(&ids[..3], &mut cache3, Logits::Last).unwrap();
    let rest = m.forward(&ids[3..], &mut cache3, Logits::Last).unwrap();
    assert!(max_diff(&rest, &all[(ids.len() - 1) * vocab..]) < 1e-5);
}

/// Prompts long enough for the prompt attention (8 tokens and more, in
/// chunks of 64 queries, one pool task per key head and chunk): the same
/// logits as one token at a time, and as the prompt in two parts (the
/// second starting mid-chunk, after cached positions).
#[test]
fn long_prefill_equals_token_by_token_and_two_parts() {
    let dir = tiny_llama_folder_ctx("prefill-long", 256, |_| {});
    let m = Model::load(&dir).unwrap();
    std::fs::remove_dir_all(dir).ok();
    let ids: Vec<u32> = (0..150u32).map(|i| 10 + (i * 7919) % 1000).collect();
    let vocab = m.config().vocab_size;
    let all = m
        .forward(&ids, &mut m.new_cache(ids.len()), Logits::All)
        .unwrap();
    let scale = all.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let tol = 1e-4 * scale.max(1.0);
    let mut cache = m.new_cache(ids.len());
    for (i, &t) in ids.iter().enumerate() {
        let step = m.forward(&[t], &mut cache, Logits::Last).unwrap();
        let d = max_diff(&step, &all[i * vocab..(i + 1) * vocab]);
        assert!(d < tol, "position {i}: {d} (tolerance {tol})");
    }
    let mut cache = m.new_cache(ids.len());
    let first = m.forward(&ids[..70], &mut cache, Logits::All).unwrap();
    let rest = m.forward(&ids[70..], &mut cache, Logits::All).unwrap();
    let parts: Vec<f32> = first.into_iter().chain(rest).collect();
    let d = max_diff(&parts, &all);
    assert!(d < tol, "two parts: {d} (tolerance {tol})");
}

#[test]
fn set_tokens_reuses_prefix_and_matches_fresh_run() {
    let m = tiny("prefix");
    let mut s = Session::new(m.clone());
    let a = [10u32, 20, 30, 40, 50];
    let b = [10u32, 20, 30, 99, 98, 97];
    s.set_tokens(&a).unwrap();
    let (logits, computed) = s.set_tokens(&b).unwrap();
    assert_eq!(
        computed, 3,
        "only the tokens after the shared prefix are computed"
    );
    let reused = logits.to_vec();
    let mut fresh = Session::new(m);
    let (want, computed) = fresh.set_tokens(&b).unwrap();
    assert_eq!(computed, b.len());
    assert!(max_diff(&reused, want) < 1e-5);
    assert_eq!(s.tokens(), &b);
    // The same tokens again: only the last is recomputed.
    let (_, computed) = s.set_tokens(&b).unwrap();
    assert_eq!(computed, 1);
}

fn collect(
    s: &mut Session,
    prompt: &str,
    opts: &GenerateOptions,
) -> (microllm::Generation, String) {
    let mut streamed = String::new();
    let g = s
        .generate(prompt, opts, |ev| {
            streamed.push_str(ev.text);
            Control::Continue
        })
        .unwrap();
    (g, streamed)
}

#[test]
fn max_tokens_and_streamed_text_equal_final_text() {
    let m = tiny("max");
    let mut s = Session::new(m.clone());
    let opts = GenerateOptions {
        max_tokens: 12,
        stop_at_eos: false,
        ..Default::default()
    };
    let (g, streamed) = collect(&mut s, "Hello there", &opts);
    assert_eq!(g.finish, FinishReason::MaxTokens);
    assert_eq!(g.tokens.len(), 12);
    assert_eq!(streamed, g.text);
    assert_eq!(g.text, m.tokenizer().decode(&g.tokens));
    // Context: prompt + generated (the last one fed lazily but counted).
    assert_eq!(s.tokens().len(), g.prompt_tokens + 12);
    // Continuing from the context equals generating it all in one go.
    let (g2, _) = collect(
        &mut s,
        "",
        &GenerateOptions {
            max_tokens: 4,
            ..opts.clone()
        },
    );
    let mut one = Session::new(m);
    let (whole, _) = collect(
        &mut one,
        "Hello there",
        &GenerateOptions {
            max_tokens: 16,
            ..opts
        },
    );
    assert_eq!([g.tokens, g2.tokens].concat(), whole.tokens);
}

#[test]
fn stop_string_cuts_the_text_before_it() {
    let m = tiny("stop");
    let base = GenerateOptions {
        max_tokens: 24,
        stop_at_eos: false,
        ..Default::default()
    };
    let (full, _) = collect(&mut Session::new(m.clone()), "Once", &base);
    // Choose a stop string from the middle of the unconstrained output.
    let chars: Vec<char> = full.text.chars().collect();
    assert!(
        chars.len() > 6,
        "tiny model produced too little text: {:?}",
        full.text
    );
    let start = chars.len() / 2;
    let stop: String = chars[start..start + 2].iter().collect();
    let want_end = full.text.find(&stop).unwrap();
    let opts = GenerateOptions {
        stop_strings: vec![stop.clone()],
        ..base
    };
    let (g, streamed) = collect(&mut Session::new(m), "Once", &opts);
    assert_eq!(
        g.finish,
        FinishReason::StopString,
        "stop {stop:?} in {:?}",
        full.text
    );
    assert_eq!(g.text, &full.text[..want_end]);
    assert_eq!(streamed, g.text);
}

#[test]
fn callback_and_flag_cancel_generation() {
    let m = tiny("cancel");
    let opts = GenerateOptions {
        max_tokens: 50,
        stop_at_eos: false,
        ..Default::default()
    };
    let mut n = 0;
    let g = Session::new(m.clone())
        .generate("Hi", &opts, |_| {
            n += 1;
            if n == 3 {
                Control::Stop
            } else {
                Control::Continue
            }
        })
        .unwrap();
    assert_eq!(g.finish, FinishReason::Cancelled);
    assert_eq!(g.tokens.len(), 3);

    let flag = Arc::new(AtomicBool::new(false));
    let opts2 = GenerateOptions {
        cancel: Some(flag.clone()),
        ..opts
    };
    let mut seen = 0;
    let g = Session::new(m)
        .generate("Hi", &opts2, |_| {
            seen += 1;
            if seen == 5 {
                flag.store(true, Ordering::Relaxed);
            }
            Control::Continue
        })
        .unwrap();
    assert_eq!(g.finish, FinishReason::Cancelled);
    assert_eq!(g.tokens.len(), 5);
}

#[test]
fn full_context_ends_generation_and_rejects_long_prompts() {
    let m = tiny("ctx");
    let mut s = Session::with_context_length(m.clone(), 10);
    assert_eq!(s.context_length(), 10);
    let prompt = [5u32, 6, 7, 8];
    let opts = GenerateOptions {
        max_tokens: 100,
        stop_at_eos: false,
        ..Default::default()
    };
    let g = s
        .generate_tokens(&prompt, &opts, |_| Control::Continue)
        .unwrap();
    assert_eq!(g.finish, FinishReason::ContextFull);
    assert_eq!(s.tokens().len(), 10);
    assert_eq!(g.tokens.len(), 7, "6 fill the context, the 7th has no room");
    let err = Session::with_context_length(m, 3)
        .generate_tokens(&prompt, &opts, |_| Control::Continue)
        .unwrap_err();
    assert!(err.to_string().contains("context full"), "{err}");
}

#[test]
fn seeded_sampling_is_reproducible() {
    let m = tiny("seed");
    let opts = |seed| GenerateOptions {
        max_tokens: 16,
        stop_at_eos: false,
        sampler: SamplerConfig {
            temperature: 1.0,
            seed,
            ..Default::default()
        },
        ..Default::default()
    };
    let run = |seed| {
        collect(&mut Session::new(m.clone()), "Seed", &opts(seed))
            .0
            .tokens
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

#[test]
fn reset_forgets_the_context() {
    let m = tiny("reset");
    let mut s = Session::new(m);
    let opts = GenerateOptions {
        max_tokens: 3,
        ..Default::default()
    };
    s.generate("abc", &opts, |_| Control::Continue).unwrap();
    assert!(!s.tokens().is_empty());
    s.reset();
    assert!(s.tokens().is_empty());
    assert_eq!(s.kv_cache_bytes(), 0);
    let err = s.generate("", &opts, |_| Control::Continue).unwrap_err();
    assert!(err.to_string().contains("empty context"), "{err}");
}

#[test]
fn out_of_range_token_is_an_error() {
    let m = tiny("oob");
    let err = Session::new(m)
        .generate_tokens(&[49152], &GenerateOptions::default(), |_| Control::Continue)
        .unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
}

#[test]
fn wrong_shape_and_missing_tensor_name_the_file_and_tensor() {
    let dir = tiny_llama_folder("shape", |t| {
        let q = t
            .iter_mut()
            .find(|x| x.0 == "model.layers.1.self_attn.q_proj.weight")
            .unwrap();
        q.1 = vec![8, 32];
        q.2.truncate(8 * 32);
    });
    let err = Model::load(&dir).unwrap_err().to_string();
    assert!(
        err.contains("model.layers.1.self_attn.q_proj.weight"),
        "{err}"
    );
    assert!(err.contains("[8, 32]") && err.contains("[32, 32]"), "{err}");
    assert!(err.contains(dir.to_str().unwrap()), "{err}");
    std::fs::remove_dir_all(&dir).ok();

    let dir = tiny_llama_folder("missing", |t| {
        t.retain(|x| x.0 != "model.layers.0.mlp.up_proj.weight")
    });
    let err = Model::load(&dir).unwrap_err().to_string();
    assert!(
        err.contains("missing tensor 'model.layers.0.mlp.up_proj.weight'"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
