//! Pruning: masks against brute force, exact sparsity, N:M groups, Wanda
//! statistics, bad options, and the two writers (Hugging Face folder read
//! back tensor for tensor; `.mllm` with 2:4 layers stored as `q4s24`).

mod common;

use microllm::format::TensorType;
use microllm::prune::{
    self, calibration_tokens, collect_norms, mask, prune_matrix, scores, FolderDtype, LayerSpec,
    Method, Pattern, PruneOptions, Scope,
};
use microllm::source;
use microllm::{Logits, Model, Proj};
use proptest::prelude::*;
use std::sync::Arc;

/// Brute force: indices of `items` sorted by (score, index), the first `k` removed.
fn brute_removed(scores: &[f32], items: &[usize], k: usize) -> Vec<usize> {
    let mut v = items.to_vec();
    v.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    let mut r = v[..k].to_vec();
    r.sort();
    r
}

fn removed_of(m: &[bool], items: &[usize]) -> Vec<usize> {
    items.iter().copied().filter(|&i| m[i]).collect()
}

/// Small matrices with many ties (values from a coarse grid) to exercise
/// the tie-breaking, or fine random values.
fn matrix(max_rows: usize, max_cols: usize) -> impl Strategy<Value = (usize, usize, Vec<f32>)> {
    (1..=max_rows, 1..=max_cols, any::<bool>()).prop_flat_map(|(r, c, coarse)| {
        let v = if coarse {
            prop::collection::vec((-4i32..=4).prop_map(|i| i as f32 * 0.25), r * c).boxed()
        } else {
            prop::collection::vec(-1.0f32..1.0, r * c).boxed()
        };
        (Just(r), Just(c), v)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn per_row_sparsity_is_exact_and_removes_the_smallest(
        (rows, cols, w) in matrix(6, 40),
        sparsity in 0.0f32..1.0,
        norms in prop::collection::vec(0.0f32..3.0, 40),
        wanda in any::<bool>(),
    ) {
        let n = wanda.then(|| &norms[..cols]);
        let s = scores(&w, cols, n);
        let m = mask(&s, rows, cols, Pattern::Unstructured, Scope::Row, sparsity);
        let k = (sparsity as f64 * cols as f64).round() as usize;
        for r in 0..rows {
            let items: Vec<usize> = (r * cols..(r + 1) * cols).collect();
            let got = removed_of(&m, &items);
            prop_assert_eq!(got.len(), k, "row {}", r);
            prop_assert_eq!(got, brute_removed(&s, &items, k));
        }
        // The scores are |w| (times the channel norm for Wanda).
        for (i, (&sc, &v)) in s.iter().zip(&w).enumerate() {
            let want = v.abs() * n.map_or(1.0, |n| n[i % cols]);
            prop_assert_eq!(sc, want);
        }
    }

    #[test]
    fn per_matrix_sparsity_is_exact_and_removes_the_smallest(
        (rows, cols, w) in matrix(6, 30),
        sparsity in 0.0f32..1.0,
    ) {
        let s = scores(&w, cols, None);
        let m = mask(&s, rows, cols, Pattern::Unstructured, Scope::Matrix, sparsity);
        let items: Vec<usize> = (0..rows * cols).collect();
        let k = (sparsity as f64 * (rows * cols) as f64).round() as usize;
        prop_assert_eq!(removed_of(&m, &items), brute_removed(&s, &items, k));
    }

    #[test]
    fn every_n_m_group_keeps_exactly_n_of_the_largest(
        rows in 1usize..5,
        groups in 1usize..6,
        (n, mm) in (1usize..=8).prop_flat_map(|m| (1..=m, Just(m))),
        seed in any::<u64>(),
        coarse in any::<bool>(),
    ) {
        let cols = groups * mm;
        let mut w = common::pseudo_random(rows * cols, seed, 1.0);
        if coarse {
            for v in &mut w { *v = (*v * 3.0).round() / 3.0; }
        }
        let s = scores(&w, cols, None);
        let m = mask(&s, rows, cols, Pattern::NofM { n, m: mm }, Scope::Row, 0.0);
        for g in (0..rows * cols).step_by(mm) {
            let items: Vec<usize> = (g..g + mm).collect();
            let got = removed_of(&m, &items);
            prop_assert_eq!(got.len(), mm - n);
            prop_assert_eq!(got, brute_removed(&s, &items, mm - n));
        }
        // prune_matrix zeroes exactly the mask.
        let mut pw = w.clone();
        let opts = PruneOptions { pattern: Pattern::NofM { n, m: mm }, sparsity: None, ..PruneOptions::default() };
        let count = prune_matrix(&mut pw, rows, cols, &opts, None);
        prop_assert_eq!(count, rows * groups * (mm - n));
        for i in 0..w.len() {
            prop_assert_eq!(pw[i], if m[i] { 0.0 } else { w[i] });
        }
    }
}

#[test]
fn bad_options_are_clear_errors() {
    let err = |o: PruneOptions| o.validate().unwrap_err().to_string();
    for s in [-0.1f32, 1.0, 1.5, f32::NAN] {
        let e = err(PruneOptions {
            sparsity: Some(s),
            ..PruneOptions::default()
        });
        assert!(e.contains("outside [0, 1)"), "{e}");
    }
    let e = Pattern::parse("3:2").unwrap_err().to_string();
    assert!(e.contains("cannot exceed"), "{e}");
    assert!(Pattern::parse("0:4").is_err());
    assert!(Pattern::parse("2-4").is_err());
    let e = LayerSpec::parse("q_proj,attention")
        .unwrap_err()
        .to_string();
    assert!(e.contains("'attention'") && e.contains("gate_proj"), "{e}");
    assert!(Method::parse("random").is_err());
    assert!(Scope::parse("column").is_err());
    let e = err(PruneOptions {
        pattern: Pattern::NofM { n: 2, m: 4 },
        sparsity: Some(0.3),
        ..PruneOptions::default()
    });
    assert!(e.contains("contradicts"), "{e}");
    let e = err(PruneOptions {
        method: Method::Wanda,
        calib_tokens: 3,
        ..PruneOptions::default()
    });
    assert!(e.contains("too few"), "{e}");
    assert!(PruneOptions::parse_quick("wanda:0.3").is_err());
    assert!(PruneOptions::parse_quick("magnitude").is_err());
    assert!(PruneOptions::parse_quick("magnitude:0.3").is_ok());
    assert!(PruneOptions::parse_quick("magnitude:0.5:2:4").is_ok());
}

#[test]
fn options_are_checked_against_the_model_before_any_work() {
    let dir = common::tiny_llama_folder("prune-check", |_| {});
    let parts = source::open(&dir).unwrap();
    // Layer 5 does not exist in a 2-layer model.
    let o = PruneOptions {
        layers: LayerSpec::parse("5").unwrap(),
        ..PruneOptions::default()
    };
    let e = o.check_model(&parts.config).unwrap_err().to_string();
    assert!(e.contains("layer 5") && e.contains("0-1"), "{e}");
    // 3:5 does not divide 32 inputs.
    let o = PruneOptions {
        pattern: Pattern::NofM { n: 3, m: 5 },
        sparsity: None,
        ..PruneOptions::default()
    };
    assert!(o.check_model(&parts.config).is_err());
    // Calibration text too short.
    let e = calibration_tokens(&parts.tokenizer, "just a few words", 100)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("calibration text has") && e.contains("100"),
        "{e}"
    );
    // Wanda without statistics.
    let o = PruneOptions {
        method: Method::Wanda,
        ..PruneOptions::default()
    };
    assert!(parts.pruned(o, None).is_err());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn wanda_norms_are_the_input_channel_l2_norms() {
    let dir = common::tiny_llama_folder("prune-wanda", |_| {});
    let model = Model::load(&dir).unwrap();
    let text =
        std::fs::read_to_string(common::root().join("fixtures/tokenizer/corpus.txt")).unwrap();
    let tokens = calibration_tokens(model.tokenizer(), &text, 40).unwrap();
    let norms = collect_norms(&model, &tokens, 16, |_, _| {}).unwrap();
    assert_eq!(norms.tokens(), 40);
    // q, k and v see the same input: same norms; all finite and positive.
    for l in 0..2 {
        let q = norms.get(l, Proj::Q).unwrap();
        assert_eq!(q.len(), 32);
        assert_eq!(q, norms.get(l, Proj::K).unwrap());
        assert_eq!(q, norms.get(l, Proj::V).unwrap());
        assert_eq!(norms.get(l, Proj::Down).unwrap().len(), 64);
        assert!(q.iter().all(|v| v.is_finite() && *v > 0.0));
    }
    // Wanda pruning differs from magnitude pruning, and keeps exact row sparsity.
    let opts = |method| PruneOptions {
        method,
        sparsity: Some(0.5),
        ..PruneOptions::default()
    };
    let norms = Arc::new(norms);
    let w = source::open(&dir)
        .unwrap()
        .pruned(opts(Method::Wanda), Some(norms.clone()))
        .unwrap();
    let m = source::open(&dir)
        .unwrap()
        .pruned(opts(Method::Magnitude), None)
        .unwrap();
    let name = Proj::Up.tensor_name(1);
    let (tw, tm) = (
        w.tensors.load_f32(&name).unwrap(),
        m.tensors.load_f32(&name).unwrap(),
    );
    assert_ne!(tw.data(), tm.data());
    for row in tw.data().chunks(32) {
        assert_eq!(row.iter().filter(|v| **v == 0.0).count(), 16);
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn pruned_hf_folder_loads_back_with_the_same_tensors() {
    let dir = common::tiny_llama_folder("prune-hf-src", |_| {});
    let out = std::env::temp_dir().join(format!("microllm-prune-hf-out-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let opts = PruneOptions {
        sparsity: Some(0.3),
        layers: LayerSpec::parse("mlp,1").unwrap(),
        ..PruneOptions::default()
    };
    let pruned = source::open(&dir)
        .unwrap()
        .pruned(opts.clone(), None)
        .unwrap();
    let report =
        prune::write_hf_folder(&pruned, &out, &opts, FolderDtype::F32, |_, _, _| {}).unwrap();
    let original = source::open(&dir).unwrap();
    let back = source::open(&out).unwrap();
    assert_eq!(back.config, original.config);
    let mut names = back.tensors.names();
    names.sort();
    let mut want_names = original.tensors.names();
    want_names.sort();
    assert_eq!(names, want_names);
    for n in &names {
        let got = back.tensors.load_f32(n).unwrap();
        let orig = original.tensors.load_f32(n).unwrap();
        assert_eq!(got.shape(), orig.shape(), "{n}");
        let mut want = orig.data().to_vec();
        if let Some((l, p)) = prune::parse_proj_name(n) {
            if opts.layers.selects(l, p) {
                let [rows, cols] = [orig.shape()[0], orig.shape()[1]];
                prune_matrix(&mut want, rows, cols, &opts, None);
                let k = (0.3 * cols as f64).round() as usize;
                for row in got.data().chunks(cols) {
                    assert_eq!(row.iter().filter(|v| **v == 0.0).count(), k, "{n}");
                }
            }
        }
        assert_eq!(got.data(), &want[..], "{n}");
    }
    // Only the MLP of layer 1 was pruned, and the report says so.
    for r in &report {
        let selected =
            prune::parse_proj_name(&r.name).is_some_and(|(l, p)| opts.layers.selects(l, p));
        assert_eq!(r.zeros > 0, selected, "{}", r.name);
        assert_eq!(r.pruned, selected, "{}", r.name);
    }
    let (of_pruned, _) = prune::overall(&report);
    assert!((of_pruned - 0.3).abs() < 0.01, "{of_pruned}");
    // And the folder runs.
    let m = Model::load(&out).unwrap();
    m.forward(&[1, 2, 3], &mut m.new_cache(8), Logits::Last)
        .unwrap();
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn two_four_mllm_stores_sparse_q4_and_matches_its_dense_twin() {
    let dir = common::tiny_llama_folder("prune-mllm", |_| {});
    let tmp = std::env::temp_dir();
    let pid = std::process::id();
    let (sparse_path, dense_path) = (
        tmp.join(format!("microllm-prune-24-{pid}.mllm")),
        tmp.join(format!("microllm-prune-24d-{pid}.mllm")),
    );
    let opts = PruneOptions {
        pattern: Pattern::NofM { n: 2, m: 4 },
        sparsity: None,
        ..PruneOptions::default()
    };
    let recipe = microllm::convert::recipe(TensorType::Q4, Some(TensorType::Q8), true, &[]);
    for (path, sparse) in [(&sparse_path, true), (&dense_path, false)] {
        let parts = source::open(&dir)
            .unwrap()
            .pruned(opts.clone(), None)
            .unwrap();
        let r = prune::write_mllm(&parts, path, &recipe, &opts, sparse, |_, _, _| {}).unwrap();
        for t in &r.tensors {
            // The tiny model: only down_proj has a multiple of 64 inputs.
            let want = if t.name.ends_with("down_proj.weight") && sparse {
                TensorType::Q4S24
            } else if t.name.contains("embed") {
                TensorType::Q8
            } else if t.shape.len() == 1 {
                TensorType::F32
            } else {
                TensorType::Q4
            };
            assert_eq!(t.ty, want, "{}", t.name);
        }
        let (p, _) = prune::overall(&r.sparsity);
        assert!((p - 0.5).abs() < 1e-9, "{p}");
    }
    let file = microllm::format::MllmFile::open(&sparse_path).unwrap();
    let pruning = file.metadata().provenance.pruning.clone().unwrap();
    assert_eq!(pruning["pattern"], "2:4");
    let (s, d) = (
        Model::load(&sparse_path).unwrap(),
        Model::load(&dense_path).unwrap(),
    );
    let name = Proj::Down.tensor_name(0);
    let sw = s.weights().layers[0].proj(Proj::Down).weights();
    assert_eq!(sw.ty(), TensorType::Q4S24);
    // The sparse matrix keeps exactly the pruned zeros.
    let pruned = source::open(&dir).unwrap().pruned(opts, None).unwrap();
    let want = pruned.tensors.load_f32(&name).unwrap();
    for (a, b) in want.data().iter().zip(sw.dequantize()) {
        if *a == 0.0 {
            assert_eq!(b, 0.0);
        }
    }
    // Both files run and agree closely (same pruned weights, q4 either way).
    let toks = [1u32, 500, 42, 7, 1000];
    let ls = s.forward(&toks, &mut s.new_cache(8), Logits::Last).unwrap();
    let ld = d.forward(&toks, &mut d.new_cache(8), Logits::Last).unwrap();
    let kl = common::kl_divergence(&ld, &ls);
    assert!(kl < 0.05, "KL {kl}");
    for p in [&sparse_path, &dense_path] {
        let _ = std::fs::remove_file(p);
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn load_time_pruning_of_a_quantized_file_keeps_its_type() {
    let dir = common::tiny_llama_folder("prune-quick", |_| {});
    let path =
        std::env::temp_dir().join(format!("microllm-prune-quick-{}.mllm", std::process::id()));
    let recipe = microllm::convert::recipe(TensorType::Q8, None, true, &[]);
    microllm::convert::convert(&dir, &path, &recipe, |_, _, _| {}).unwrap();
    let opts = PruneOptions::parse_quick("magnitude:0.5:2:4").unwrap();
    let m = Model::from_parts(source::open(&path).unwrap().pruned(opts, None).unwrap()).unwrap();
    let l = &m.weights().layers[1];
    assert_eq!(l.proj(Proj::Down).ty(), TensorType::Q8S24);
    assert_eq!(l.proj(Proj::Q).ty(), TensorType::Q8);
    let w = l.proj(Proj::Q).weights().dequantize();
    for g in w.chunks(4) {
        assert!(g.iter().filter(|v| **v == 0.0).count() >= 2);
    }
    m.forward(&[1, 2, 3], &mut m.new_cache(8), Logits::Last)
        .unwrap();
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_dir_all(dir);
}

/// From a `.mllm` file (q8, tiny model with SmolLM2's tokenizer and chat
/// template) and from a GGUF file (the tiny fixture, with a tokenizer and
/// chat template of its own), a pruned Hugging Face folder
/// is written with config and tokenizer files of its own, and reads back
/// as the same model: config, tokenizer (every table), chat template,
/// sampling defaults, and every tensor equal to the pruned source's f32
/// values; and it runs.
#[test]
fn pruned_hf_folder_from_mllm_and_gguf_reads_back_the_same() {
    let dir = common::tiny_llama_folder("prune-hf-any", |_| {});
    let pid = std::process::id();
    let mllm = std::env::temp_dir().join(format!("microllm-prune-hf-any-{pid}.mllm"));
    let recipe = microllm::convert::recipe(TensorType::Q8, None, true, &[]);
    microllm::convert::convert(&dir, &mllm, &recipe, |_, _, _| {}).unwrap();
    let opts = PruneOptions {
        sparsity: Some(0.5),
        layers: LayerSpec::parse("mlp").unwrap(),
        ..PruneOptions::default()
    };
    let gguf = common::root().join("fixtures/gguf/tiny-llama.gguf");
    for (what, src) in [("mllm", mllm.clone()), ("gguf", gguf)] {
        let out = std::env::temp_dir().join(format!("microllm-prune-hf-any-{what}-{pid}"));
        let _ = std::fs::remove_dir_all(&out);
        let pruned = source::open(&src)
            .unwrap()
            .pruned(opts.clone(), None)
            .unwrap();
        let report =
            prune::write_hf_folder(&pruned, &out, &opts, FolderDtype::F32, |_, _, _| {}).unwrap();
        assert!(report.iter().any(|r| r.zeros > 0), "{what}: nothing pruned");
        let back = source::open(&out).unwrap();
        assert_eq!(back.format, source::SourceFormat::HfFolder);
        assert_eq!(back.config, pruned.config, "{what}: config");
        assert_eq!(
            back.tokenizer.to_binary(),
            pruned.tokenizer.to_binary(),
            "{what}: tokenizer"
        );
        assert_eq!(back.chat_template, pruned.chat_template, "{what}");
        assert!(back.chat_template.is_some(), "{what}: chat template");
        assert_eq!(back.generation, pruned.generation, "{what}");
        let mut names = back.tensors.names();
        names.sort();
        let mut want_names = pruned.tensors.names();
        want_names.sort();
        assert_eq!(names, want_names, "{what}");
        for n in &names {
            let got = back.tensors.load_f32(n).unwrap();
            let want = pruned.tensors.load_f32(n).unwrap();
            assert_eq!(got.shape(), want.shape(), "{what}: {n}");
            assert!(got.data() == want.data(), "{what}: {n}");
        }
        let m = Model::load(&out).unwrap();
        m.forward(&[1, 2, 3], &mut m.new_cache(8), Logits::Last)
            .unwrap();
        let _ = std::fs::remove_dir_all(out);
    }
    let _ = std::fs::remove_file(mllm);
    let _ = std::fs::remove_dir_all(dir);
}

/// The element type of every tensor in a folder's `model.safetensors`.
fn folder_dtypes(dir: &std::path::Path) -> Vec<&'static str> {
    let f = microllm::safetensors::SafetensorsFile::open(&dir.join("model.safetensors")).unwrap();
    let mut d: Vec<_> = f.tensors().iter().map(|t| t.dtype.name()).collect();
    d.dedup();
    d
}

#[test]
fn pruned_hf_folder_in_f16_or_bf16_rounds_each_value_and_auto_keeps_the_sources_type() {
    let dir = common::tiny_llama_folder("prune-dtype-src", |_| {});
    let opts = PruneOptions {
        sparsity: Some(0.5),
        ..PruneOptions::default()
    };
    let pruned = source::open(&dir)
        .unwrap()
        .pruned(opts.clone(), None)
        .unwrap();
    assert_eq!(FolderDtype::of_source(&pruned).unwrap(), FolderDtype::F32);
    let tmp = |tag: &str| {
        let p = std::env::temp_dir().join(format!("microllm-prune-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        p
    };
    type Round = fn(f32) -> f32;
    let round: [(FolderDtype, Round); 2] = [
        (FolderDtype::F16, |v| half::f16::from_f32(v).to_f32()),
        (FolderDtype::BF16, |v| half::bf16::from_f32(v).to_f32()),
    ];
    for (dtype, round) in round {
        let out = tmp(dtype.name());
        prune::write_hf_folder(&pruned, &out, &opts, dtype, |_, _, _| {}).unwrap();
        assert_eq!(folder_dtypes(&out), [dtype.name()]);
        let back = source::open(&out).unwrap();
        let mut changed = 0;
        for n in pruned.tensors.names() {
            let want = pruned.tensors.load_f32(&n).unwrap();
            let got = back.tensors.load_f32(&n).unwrap();
            assert_eq!(got.shape(), want.shape(), "{n}");
            for (g, w) in got.data().iter().zip(want.data()) {
                assert_eq!(g.to_bits(), round(*w).to_bits(), "{n}: {w}");
                changed += (g != w) as usize;
            }
        }
        // Rounding happened (the check above can tell the types apart) and
        // the zeros stayed zeros (exact sparsity in the half-size folder).
        assert!(changed > 0, "{}", dtype.name());
        let w = back.tensors.load_f32(&Proj::Up.tensor_name(0)).unwrap();
        for row in w.data().chunks(32) {
            assert_eq!(row.iter().filter(|v| **v == 0.0).count(), 16);
        }
        // auto, from this folder, keeps its type.
        assert_eq!(FolderDtype::of_source(&back).unwrap(), dtype);
        let _ = std::fs::remove_dir_all(out);
    }
    // From a GGUF file (quantized): auto is f32; the written config says
    // which type the tensors are.
    let gguf = source::open(&common::root().join("fixtures/gguf/tiny-llama.gguf")).unwrap();
    assert_eq!(FolderDtype::of_source(&gguf).unwrap(), FolderDtype::F32);
    let out = tmp("gguf-bf16");
    prune::write_hf_folder(&gguf, &out, &opts, FolderDtype::BF16, |_, _, _| {}).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["torch_dtype"], "bfloat16");
    assert_eq!(folder_dtypes(&out), ["BF16"]);
    assert!(FolderDtype::parse("f64").is_err());
    assert_eq!(FolderDtype::parse("auto").unwrap(), None);
    let _ = std::fs::remove_dir_all(out);
    let _ = std::fs::remove_dir_all(dir);
}
