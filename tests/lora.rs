//! LoRA adapters on the tiny test Llama against `fixtures/lora`
//! (`scripts/make-lora-fixtures.py`): random PEFT adapters and, for each,
//! the projections with the adapter merged by numpy in float64.
//!
//! Tolerances: f32 (merged or unmerged) within 1e-4 of the numpy merge in
//! every logit (the logits are O(1..10); the measured gap is 7e-6..4e-5, f32
//! rounding in another order). q8: mean KL against the f32 merge at most
//! max(2e-3, 2 × what q8 costs the numpy-merged model itself), since this
//! random tiny model amplifies rounding (q8 of the merged model alone costs
//! 3e-3..9e-3 nats); measured 1.3e-3..4.5e-3, and the same top token at
//! every position.

mod common;

use common::*;
use microllm::convert::{convert_with_lora, recipe};
use microllm::format::{MllmFile, TensorType};
use microllm::lora::{LoraAdapter, LoraSet};
use microllm::safetensors::SafetensorsFile;
use microllm::{source, LinearHook, Logits, Model, Proj, Session};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const IDS: [u32; 8] = [1, 504, 2365, 6354, 16438, 27003, 690, 260];
/// Per-logit tolerance of f32 results against the float64 numpy merge:
/// 1e-4 where products are summed in f32, 1e-3 on the AMX tier, whose
/// prompt products carry 16 significant bits (`Isa::f32_tolerance`).
fn f32_tol() -> f32 {
    match microllm::dispatch::kernels().isa {
        microllm::dispatch::Isa::Amx => 1e-3,
        _ => 1e-4,
    }
}
const ADAPTERS: [&str; 4] = ["plain", "rslora", "patterns", "fan_in_fan_out"];

fn lora_fixture(rel: &str) -> PathBuf {
    root().join("fixtures/lora").join(rel)
}

fn read_st(path: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let f = SafetensorsFile::open(path).unwrap();
    f.tensors()
        .iter()
        .map(|t| {
            let v = f.load_f32(&t.name).unwrap().data().to_vec();
            (t.name.clone(), t.shape.clone(), v)
        })
        .collect()
}

/// The tiny test model with its projections replaced by those in `proj`
/// (a safetensors file under fixtures/lora), as an HF folder.
fn tiny_with(tag: &str, proj: &str) -> PathBuf {
    // Tests run in parallel and several build the same reference: a
    // counter keeps their folders apart.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let replace = read_st(&lora_fixture(proj));
    tiny_llama_folder(&format!("{tag}-{k}"), move |t| {
        for (name, shape, data) in replace {
            let slot = t.iter_mut().find(|e| e.0 == name).expect("projection");
            assert_eq!(slot.1, shape, "{name}");
            slot.2 = data;
        }
    })
}

fn load(dir: &Path, q8: bool) -> Model {
    let parts = source::open(dir).unwrap();
    if q8 {
        Model::from_parts(parts.quantized(recipe(TensorType::Q8, None, true, &[]))).unwrap()
    } else {
        Model::from_parts(parts).unwrap()
    }
}

/// Base model (f32 or q8) and its folder.
fn base(tag: &str, q8: bool) -> (Model, PathBuf) {
    let dir = tiny_with(tag, "base_proj.safetensors");
    (load(&dir, q8), dir)
}

/// The numpy-merged reference model (f32) for adapter `name`.
fn reference(name: &str) -> Model {
    let dir = tiny_with(
        &format!("ref-{name}"),
        &format!("{name}/merged_proj.safetensors"),
    );
    let m = load(&dir, false);
    std::fs::remove_dir_all(dir).ok();
    m
}

fn adapter(name: &str) -> Arc<LoraAdapter> {
    Arc::new(LoraAdapter::load(lora_fixture(name)).unwrap())
}

fn logits(m: &Model, hook: Option<&dyn LinearHook>) -> Vec<f32> {
    m.forward_with(&IDS, &mut m.new_cache(IDS.len()), Logits::All, hook)
        .unwrap()
}

fn unmerged(m: &Model, adapters: &[(&Arc<LoraAdapter>, f32)]) -> Vec<f32> {
    let mut set = LoraSet::new();
    for (a, s) in adapters {
        set.attach((*a).clone(), *s, m.config()).unwrap();
    }
    logits(m, set.hook())
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Mean KL(reference ‖ logits) over the positions.
fn mean_kl(reference: &[f32], logits: &[f32], vocab: usize) -> f64 {
    let rows = reference.len() / vocab;
    (0..rows)
        .map(|r| {
            kl_divergence(
                &reference[r * vocab..(r + 1) * vocab],
                &logits[r * vocab..(r + 1) * vocab],
            )
        })
        .sum::<f64>()
        / rows as f64
}

#[test]
fn f32_merged_and_unmerged_match_the_numpy_merge() {
    let (b, dir) = base("lora-f32", false);
    let base_logits = logits(&b, None);
    drop(b);
    for name in ADAPTERS {
        let a = adapter(name);
        let want = logits(&reference(name), None);
        // The adapter matters: without it the logits are far off.
        let off = max_diff(&base_logits, &want);
        assert!(off > 0.5, "{name}: adapter changes logits by only {off}");
        let merged_model = load(&dir, false).with_lora_merged(&[(&a, 1.0)]).unwrap();
        let merged = logits(&merged_model, None);
        let d = max_diff(&merged, &want);
        assert!(d <= f32_tol(), "{name}: merged f32 off by {d}");
        let un = unmerged(&load(&dir, false), &[(&a, 1.0)]);
        let du = max_diff(&un, &want);
        assert!(du <= f32_tol(), "{name}: unmerged f32 off by {du}");
        eprintln!("{name}: f32 max |Δlogit| merged {d:.1e}, unmerged {du:.1e} (adapter moves logits by {off:.1})");
        let d = max_diff(&un, &merged);
        assert!(d <= f32_tol(), "{name}: merged and unmerged differ by {d}");
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn q8_merged_and_unmerged_stay_close_to_the_numpy_merge() {
    let (b, dir) = base("lora-q8", true);
    let vocab = b.config().vocab_size;
    for name in ["plain", "patterns"] {
        let a = adapter(name);
        let want = logits(&reference(name), None);
        // What q8 costs the merged model itself: the yardstick.
        let ref_dir = tiny_with(
            &format!("ref-q8-{name}"),
            &format!("{name}/merged_proj.safetensors"),
        );
        let q8_of_merged = mean_kl(&want, &logits(&load(&ref_dir, true), None), vocab);
        std::fs::remove_dir_all(ref_dir).ok();
        let merged_model = load(&dir, true).with_lora_merged(&[(&a, 1.0)]).unwrap();
        // Merged copies keep the tensor's own type.
        let lw = &merged_model.weights().layers[0];
        assert_eq!(lw.proj(Proj::Q).ty(), TensorType::Q8);
        let merged = logits(&merged_model, None);
        let un = unmerged(&b, &[(&a, 1.0)]);
        let kl_m = mean_kl(&want, &merged, vocab);
        let kl_u = mean_kl(&want, &un, vocab);
        let kl_mu = mean_kl(&merged, &un, vocab);
        eprintln!("{name}: q8 KL merged {kl_m:.2e}, unmerged {kl_u:.2e}, between {kl_mu:.2e}, q8 of the merged model {q8_of_merged:.2e}");
        let bound = 2e-3f64.max(2.0 * q8_of_merged);
        assert!(kl_m <= bound, "{name}: q8 merged KL {kl_m}");
        assert!(kl_u <= bound, "{name}: q8 unmerged KL {kl_u}");
        assert!(kl_mu <= bound, "{name}: q8 merged vs unmerged KL {kl_mu}");
        for r in 0..IDS.len() {
            let row = r * vocab..(r + 1) * vocab;
            assert_eq!(
                argmax(&merged[row.clone()]),
                argmax(&want[row.clone()]),
                "{name} pos {r}"
            );
            assert_eq!(
                argmax(&un[row.clone()]),
                argmax(&want[row]),
                "{name} pos {r}"
            );
        }
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn zero_scale_gives_the_base_logits_exactly() {
    let a = adapter("plain");
    for q8 in [false, true] {
        let (b, dir) = base(&format!("lora-zero-{q8}"), q8);
        let want = logits(&b, None);
        let merged = load(&dir, q8).with_lora_merged(&[(&a, 0.0)]).unwrap();
        assert_eq!(logits(&merged, None), want, "merged, q8 {q8}");
        assert_eq!(unmerged(&b, &[(&a, 0.0)]), want, "unmerged, q8 {q8}");
        // A session with the adapter attached at 0 (the hook is skipped).
        let b = Arc::new(b);
        let mut s = Session::new(b.clone());
        s.attach_lora(a.clone(), 0.0).unwrap();
        let last = s.append(&IDS).unwrap().to_vec();
        let want_last = b
            .forward(&IDS, &mut b.new_cache(IDS.len()), Logits::Last)
            .unwrap();
        assert_eq!(last, want_last, "session, q8 {q8}");
        std::fs::remove_dir_all(dir).ok();
    }
}

#[test]
fn merged_replaces_only_targeted_tensors_and_keeps_the_rest_mapped() {
    let (b, dir) = base("lora-mapped", false);
    assert!(b.weights().layers[0].wq.is_mapped());
    // Target only q_proj and v_proj: the fixture adapter with a narrower config.
    let only_qv = copy_adapter("plain", "lora-mapped-qv", |cfg, t| {
        cfg["target_modules"] = serde_json::json!(["q_proj", "v_proj"]);
        t.retain(|(n, _, _)| n.contains("q_proj") || n.contains("v_proj"));
    });
    let a = LoraAdapter::load(&only_qv).unwrap();
    let m = b.with_lora_merged(&[(&a, 1.0)]).unwrap();
    let w = m.weights();
    for lw in &w.layers {
        for p in Proj::ALL {
            let targeted = matches!(p, Proj::Q | Proj::V);
            assert_eq!(lw.proj(p).is_mapped(), !targeted, "{p:?}");
        }
    }
    assert!(w.token_embedding.is_mapped());
    std::fs::remove_dir_all(dir).ok();
    std::fs::remove_dir_all(only_qv).ok();
}

#[test]
fn scaling_rules_rslora_rank_pattern_alpha_pattern() {
    let scale = |a: &LoraAdapter, l: usize, p: Proj| {
        let m = a.module(l, p).unwrap();
        (m.rank, m.alpha, m.scale)
    };
    // plain: alpha 8, r 4.
    let plain = adapter("plain");
    assert_eq!(scale(&plain, 0, Proj::Q), (4, 8.0, 2.0));
    // rslora: 8 / sqrt(4) = 4, where alpha / r would be 2.
    let rs = adapter("rslora");
    assert!(rs.config().use_rslora);
    assert_eq!(scale(&rs, 1, Proj::Down), (4, 8.0, 4.0));
    // patterns (file order decides): rank_pattern {"q_proj": 2,
    // "model.layers.1.mlp.down_proj": 6}; alpha_pattern {"v_proj": 3,
    // "layers.0.self_attn.o_proj": 16, "layers\.1\.mlp\.(gate|up)_proj": 2}.
    let pat = adapter("patterns");
    assert_eq!(scale(&pat, 0, Proj::Q), (2, 8.0, 4.0));
    assert_eq!(scale(&pat, 1, Proj::Q), (2, 8.0, 4.0));
    assert_eq!(scale(&pat, 1, Proj::Down), (6, 8.0, 8.0 / 6.0));
    assert_eq!(scale(&pat, 0, Proj::Down), (4, 8.0, 2.0));
    assert_eq!(scale(&pat, 0, Proj::V), (4, 3.0, 0.75));
    assert_eq!(scale(&pat, 0, Proj::O), (4, 16.0, 4.0));
    assert_eq!(scale(&pat, 1, Proj::O), (4, 8.0, 2.0));
    assert_eq!(scale(&pat, 1, Proj::Gate), (4, 2.0, 0.5));
    assert_eq!(scale(&pat, 1, Proj::Up), (4, 2.0, 0.5));
    assert_eq!(scale(&pat, 0, Proj::Gate), (4, 8.0, 2.0));

    // The naive scales give other logits than the numpy merge, which the
    // right ones match (f32_merged_and_unmerged_match_the_numpy_merge).
    let (b, dir) = base("lora-naive", false);
    // rslora read as plain alpha/r: half the delta.
    let want = logits(&reference("rslora"), None);
    let right = unmerged(&b, &[(&rs, 1.0)]);
    let naive = unmerged(&b, &[(&rs, 0.5)]);
    assert!(max_diff(&right, &want) <= f32_tol());
    assert!(max_diff(&naive, &want) > 1000.0 * f32_tol(), "rslora");
    // patterns without alpha_pattern (rank_pattern is needed for the shapes).
    let want = logits(&reference("patterns"), None);
    let no_alpha = copy_adapter("patterns", "lora-no-alpha-pattern", |cfg, _| {
        cfg["alpha_pattern"] = serde_json::json!({});
    });
    let naive = Arc::new(LoraAdapter::load(&no_alpha).unwrap());
    let d = max_diff(&unmerged(&b, &[(&naive, 1.0)]), &want);
    assert!(
        d > 1000.0 * f32_tol(),
        "alpha_pattern ignored: only {d} off"
    );
    // Ignoring rank_pattern cannot even load: the ranks do not fit r.
    let no_rank = copy_adapter("patterns", "lora-no-rank-pattern", |cfg, _| {
        cfg["rank_pattern"] = serde_json::json!({});
    });
    let e = LoraAdapter::load(&no_rank).unwrap_err().to_string();
    assert!(
        e.contains("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")
            && e.contains("rank 2")
            && e.contains("r = 4"),
        "{e}"
    );
    // fan_in_fan_out is a no-op on nn.Linear (as in PEFT): same scale, and
    // the merge test matches numpy's plain W + s·B·A.
    let fifo = adapter("fan_in_fan_out");
    assert!(fifo.config().fan_in_fan_out);
    assert_eq!(scale(&fifo, 0, Proj::K), (4, 8.0, 2.0));
    for d in [dir, no_alpha, no_rank] {
        std::fs::remove_dir_all(d).ok();
    }
}

#[test]
fn user_scales_and_stacked_adapters_agree_between_modes() {
    let (b, dir) = base("lora-stack", false);
    let (p, r) = (adapter("plain"), adapter("rslora"));
    for set in [
        vec![(&p, 2.5f32)],
        vec![(&p, -1.0)],
        vec![(&p, 1.0), (&r, 0.5)],
    ] {
        let un = unmerged(&b, &set);
        let pairs: Vec<(&LoraAdapter, f32)> = set.iter().map(|(a, s)| (a.as_ref(), *s)).collect();
        let merged = logits(&load(&dir, false).with_lora_merged(&pairs).unwrap(), None);
        let d = max_diff(&un, &merged);
        // Deltas up to 2.5× larger: allow proportionally more rounding.
        assert!(d <= 3.0 * f32_tol(), "{set:?}: {d}");
    }
    // Scale 1 of plain through the user-scale path is the reference.
    let half_twice = unmerged(&b, &[(&p, 0.5), (&p, 0.5)]);
    // The same Arc attached twice is one attachment (scale replaced): 0.5.
    let half = unmerged(&b, &[(&p, 0.5)]);
    assert_eq!(half_twice, half);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn session_attach_detach_and_scale_recompute_the_context() {
    let (b, dir) = base("lora-session", false);
    let b = Arc::new(b);
    let vocab = b.config().vocab_size;
    let last = |v: &[f32]| v[(IDS.len() - 1) * vocab..].to_vec();
    let base_last = last(&logits(&b, None));
    let a = adapter("plain");
    let with_last = last(&unmerged(&b, &[(&a, 1.0)]));

    let mut s = Session::new(b.clone());
    // The session feeds the last token on its own (a one-row product) and
    // `logits` all at once: SIMD kernels sum in another order, so equal
    // within rounding rather than bit for bit.
    assert!(max_diff(s.append(&IDS).unwrap(), &base_last) <= f32_tol());
    // Attaching keeps the tokens and recomputes them with the adapter.
    s.attach_lora(a.clone(), 1.0).unwrap();
    assert_eq!(s.tokens(), &IDS);
    let got = s.append(&[]).unwrap().to_vec();
    assert!(max_diff(&got, &with_last) <= f32_tol());
    assert!(max_diff(&got, &base_last) > 0.5);
    // Prefix reuse sees the change: everything is recomputed once...
    s.set_lora_scale(&a, 0.0).unwrap();
    let (l, computed) = s.set_tokens(&IDS).unwrap();
    assert_eq!(computed, IDS.len());
    assert!(max_diff(l, &base_last) <= f32_tol());
    // ...and only the last token when nothing changed.
    let (_, computed) = s.set_tokens(&IDS).unwrap();
    assert_eq!(computed, 1);
    s.set_lora_scale(&a, 1.0).unwrap();
    let (l, computed) = s.set_tokens(&IDS).unwrap();
    assert_eq!(computed, IDS.len());
    assert!(max_diff(l, &with_last) <= f32_tol());
    assert_eq!(s.lora().adapters().len(), 1);
    assert!(s.detach_lora(&a));
    assert!(!s.detach_lora(&a));
    assert!(max_diff(s.append(&[]).unwrap(), &base_last) <= f32_tol());
    // Two sessions on one model, one with the adapter: independent.
    let mut s2 = Session::new(b.clone());
    s2.attach_lora(a.clone(), 1.0).unwrap();
    let l2 = s2.append(&IDS).unwrap().to_vec();
    assert!(max_diff(&l2, &with_last) <= f32_tol());
    assert!(max_diff(s.append(&[]).unwrap(), &base_last) <= f32_tol());
    // Generation runs with the adapter.
    let g = s2
        .generate_tokens(&[], &Default::default(), |_| microllm::Control::Continue)
        .unwrap();
    assert_eq!(g.tokens[0] as usize, argmax(&with_last));
    assert!(s.set_lora_scale(&a, 1.0).is_err(), "not attached");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn adapter_memory_is_its_own_size() {
    let a = adapter("plain");
    let want: usize = a
        .modules()
        .iter()
        .map(|m| (m.rank * m.in_features + m.out_features * m.rank) * 4)
        .sum();
    assert_eq!(a.bytes(), want);
    assert_eq!(a.modules().len(), 14);
    // r=4 on all 7 projections of 2 layers of the tiny model.
    // per layer: r · (in + out) for q, k, v, o, gate, up, down.
    assert_eq!(a.bytes(), 4 * 2 * 4 * (64 + 48 + 48 + 64 + 96 + 96 + 96));
}

#[test]
fn convert_bakes_adapters_and_records_them() {
    let (_, dir) = base("lora-convert", false);
    let a = adapter("plain");
    let want = logits(&reference("plain"), None);
    for (ty, check_f32) in [(TensorType::F32, true), (TensorType::Q8, false)] {
        let out = dir.join(format!("baked-{ty}.mllm"));
        convert_with_lora(
            &dir,
            &out,
            &recipe(ty, None, true, &[]),
            &[(&a, 1.0)],
            |_, _, _| {},
        )
        .unwrap();
        let m = Model::load(&out).unwrap();
        let got = logits(&m, None);
        if check_f32 {
            let d = max_diff(&got, &want);
            assert!(d <= f32_tol(), "baked f32 off by {d}");
        } else {
            // Baking quantizes W + s·B·A once, from f32: as good as q8 of
            // the numpy-merged model.
            let vocab = m.config().vocab_size;
            let ref_dir = tiny_with("ref-q8-baked", "plain/merged_proj.safetensors");
            let yardstick = mean_kl(&want, &logits(&load(&ref_dir, true), None), vocab);
            std::fs::remove_dir_all(ref_dir).ok();
            let kl = mean_kl(&want, &got, vocab);
            assert!(
                kl <= 1.5 * yardstick + 1e-5,
                "baked q8 KL {kl}, q8 of the merge {yardstick}"
            );
        }
        let file = MllmFile::open(&out).unwrap();
        let lora = &file.metadata().provenance.lora;
        assert_eq!(lora.len(), 1);
        let l = &lora[0];
        assert_eq!(l.scale, 1.0);
        assert_eq!(l.adapter.as_deref(), Some("plain"));
        assert_eq!(l.r, Some(4));
        assert_eq!(l.lora_alpha, Some(8.0));
        let sf = microllm::convert::describe_file(&a.weights_path()).unwrap();
        assert_eq!(l.source, sf);
        assert_eq!(l.source.name, "adapter_model.safetensors");
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn provenance_lora_entries_without_the_new_fields_still_parse() {
    let old = serde_json::json!({
        "source": {"name": "adapter.safetensors", "bytes": 1234, "sha256": "0".repeat(64)},
        "scale": 1.0
    });
    let info: microllm::format::LoraInfo = serde_json::from_value(old.clone()).unwrap();
    assert_eq!(info.adapter, None);
    assert_eq!(info.r, None);
    // And an entry without them is written as before.
    assert_eq!(serde_json::to_value(&info).unwrap(), old);
}

// ---- validation errors ----------------------------------------------------

/// A copy of fixture adapter `from` in a temp dir, with its config and
/// tensors edited.
fn copy_adapter(
    from: &str,
    tag: &str,
    edit: impl FnOnce(&mut serde_json::Value, &mut Vec<(String, Vec<usize>, Vec<f32>)>),
) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("microllm-lora-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut cfg = read_json(&lora_fixture(from).join("adapter_config.json"));
    let mut tensors = read_st(&lora_fixture(from).join("adapter_model.safetensors"));
    edit(&mut cfg, &mut tensors);
    std::fs::write(dir.join("adapter_config.json"), cfg.to_string()).unwrap();
    write_safetensors(&dir.join("adapter_model.safetensors"), &tensors);
    dir
}

/// The error of loading (then validating against the tiny model) an edited
/// copy of the plain adapter; checks it names `file` and every `needle`.
fn load_error(
    tag: &str,
    edit: impl FnOnce(&mut serde_json::Value, &mut Vec<(String, Vec<usize>, Vec<f32>)>),
    file: &str,
    needles: &[&str],
) {
    let dir = copy_adapter("plain", tag, edit);
    let err = match LoraAdapter::load(&dir) {
        Err(e) => e,
        Ok(a) => a.validate(tiny_config()).expect_err(tag),
    };
    let msg = err.to_string();
    assert!(
        msg.contains(file),
        "{tag}: error does not name {file}: {msg}"
    );
    for n in needles {
        assert!(msg.contains(n), "{tag}: error does not name '{n}': {msg}");
    }
    std::fs::remove_dir_all(dir).ok();
}

/// The tiny model's configuration, read once.
fn tiny_config() -> &'static microllm::ModelConfig {
    static CFG: std::sync::OnceLock<microllm::ModelConfig> = std::sync::OnceLock::new();
    CFG.get_or_init(|| {
        let dir = tiny_llama_folder("lora-config", |_| {});
        let cfg = source::open(&dir).unwrap().config;
        std::fs::remove_dir_all(dir).ok();
        cfg
    })
}

const Q_A: &str = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
const Q_B: &str = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";

#[test]
fn config_errors_name_the_key() {
    let cfg = "adapter_config.json";
    let set = |k: &'static str, v: serde_json::Value| {
        move |c: &mut serde_json::Value, _: &mut Vec<(String, Vec<usize>, Vec<f32>)>| c[k] = v
    };
    use serde_json::json;
    load_error("r0", set("r", json!(0)), cfg, &["r: 0"]);
    load_error(
        "dora",
        set("use_dora", json!(true)),
        cfg,
        &["use_dora", "DoRA"],
    );
    load_error("bias", set("bias", json!("all")), cfg, &["bias", "'all'"]);
    load_error(
        "lora-bias",
        set("lora_bias", json!(true)),
        cfg,
        &["lora_bias"],
    );
    load_error(
        "save",
        set("modules_to_save", json!(["lm_head"])),
        cfg,
        &["modules_to_save", "lm_head"],
    );
    load_error(
        "ia3",
        set("peft_type", json!("IA3")),
        cfg,
        &["peft_type", "IA3"],
    );
    load_error(
        "rank-pattern-0",
        set("rank_pattern", json!({"q_proj": 0})),
        cfg,
        &["rank_pattern['q_proj']"],
    );
    load_error(
        "bad-regex",
        set("target_modules", json!(".*(q_proj")),
        cfg,
        &["target_modules", ".*(q_proj"],
    );
    load_error(
        "not-json",
        set("r", json!("four")),
        cfg,
        &["not a PEFT LoRA config"],
    );
    // A target module this model does not have (another architecture).
    load_error(
        "unknown-target",
        set(
            "target_modules",
            json!([
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
                "c_attn"
            ]),
        ),
        cfg,
        &["target_modules", "'c_attn'"],
    );
    // r in the config does not match the file's rank.
    load_error(
        "r-mismatch",
        set("r", json!(8)),
        "adapter_model.safetensors",
        &[Q_A, "rank 4", "r = 8"],
    );
}

#[test]
fn weight_errors_name_the_key() {
    let st = "adapter_model.safetensors";
    type T = Vec<(String, Vec<usize>, Vec<f32>)>;
    // A module not in target_modules.
    load_error(
        "untargeted",
        |c, _: &mut T| {
            c["target_modules"] = serde_json::json!([
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj"
            ])
        },
        st,
        &[Q_A, "not in target_modules"],
    );
    // Half of a pair missing.
    load_error(
        "no-b",
        |_, t: &mut T| t.retain(|e| e.0 != Q_B),
        st,
        &[Q_A, "lora_B"],
    );
    // Unsupported variants and modules.
    let key = |name: &'static str, shape: Vec<usize>| {
        let n = shape.iter().product();
        move |_: &mut serde_json::Value, t: &mut T| t.push((name.to_string(), shape, vec![0.1; n]))
    };
    let mag = "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector";
    load_error("dora-key", key(mag, vec![32]), st, &[mag, "DoRA"]);
    let emb = "base_model.model.model.embed_tokens.lora_embedding_A";
    load_error(
        "embedding",
        key(emb, vec![4, 49152]),
        st,
        &[emb, "embedding"],
    );
    let head = "base_model.model.lm_head.lora_A.weight";
    load_error("lm-head", key(head, vec![4, 32]), st, &[head, "lm_head"]);
    let full = "base_model.model.model.layers.0.self_attn.q_proj.weight";
    load_error(
        "full-weight",
        key(full, vec![32, 32]),
        st,
        &[full, "not a LoRA weight"],
    );
    // Another base model: wrong input width, wrong output width, extra layer.
    load_error(
        "shape-in",
        |_, t: &mut T| {
            let e = t.iter_mut().find(|e| e.0 == Q_A).unwrap();
            *e = (Q_A.to_string(), vec![4, 48], vec![0.1; 4 * 48]);
        },
        st,
        &[Q_A, "[4, 48]", "[32, 32]", "another base model"],
    );
    load_error(
        "shape-out",
        |_, t: &mut T| {
            let e = t.iter_mut().find(|e| e.0 == Q_B).unwrap();
            *e = (Q_B.to_string(), vec![48, 4], vec![0.1; 4 * 48]);
        },
        st,
        &[Q_B, "[48, 4]", "another base model"],
    );
    load_error(
        "rank-mismatch-b",
        |_, t: &mut T| {
            let e = t.iter_mut().find(|e| e.0 == Q_B).unwrap();
            *e = (Q_B.to_string(), vec![32, 3], vec![0.1; 32 * 3]);
        },
        st,
        &[Q_B, "(out, r)"],
    );
    let l5a = "base_model.model.model.layers.5.self_attn.q_proj.lora_A.weight";
    let l5b = "base_model.model.model.layers.5.self_attn.q_proj.lora_B.weight";
    load_error(
        "layer-5",
        |_, t: &mut T| {
            t.push((l5a.into(), vec![4, 32], vec![0.1; 128]));
            t.push((l5b.into(), vec![32, 4], vec![0.1; 128]));
        },
        st,
        &[l5a, "layer 5", "2 layers"],
    );
    // Rank 0 in the file.
    load_error(
        "rank-0",
        |c, t: &mut T| {
            c["rank_pattern"] = serde_json::json!({"layers.0.self_attn.q_proj": 0});
            t.retain(|e| !e.0.contains("layers.0.self_attn.q_proj"));
        },
        "adapter_config.json",
        &["rank_pattern['layers.0.self_attn.q_proj']"],
    );
    load_error(
        "rank-0-file",
        |_, t: &mut T| {
            for e in t.iter_mut().filter(|e| e.0 == Q_A || e.0 == Q_B) {
                let out = e.1[0];
                *e = if e.0 == Q_A {
                    (e.0.clone(), vec![0, 32], vec![])
                } else {
                    (e.0.clone(), vec![out, 0], vec![])
                };
            }
        },
        st,
        &[Q_A, "rank 0"],
    );
}

#[test]
fn missing_files_are_clear_errors() {
    let dir = std::env::temp_dir().join(format!("microllm-lora-missing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let e = LoraAdapter::load(&dir).unwrap_err().to_string();
    assert!(e.contains("adapter_config.json"), "{e}");
    std::fs::copy(
        lora_fixture("plain/adapter_config.json"),
        dir.join("adapter_config.json"),
    )
    .unwrap();
    std::fs::write(dir.join("adapter_model.bin"), b"pickle").unwrap();
    let e = LoraAdapter::load(&dir).unwrap_err().to_string();
    assert!(
        e.contains("adapter_model.safetensors") && e.contains("adapter_model.bin"),
        "{e}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn non_finite_scales_are_refused() {
    let (b, dir) = base("lora-nan", false);
    let a = adapter("plain");
    let mut set = LoraSet::new();
    assert!(set.attach(a.clone(), f32::NAN, b.config()).is_err());
    assert!(b.with_lora_merged(&[(&a, f32::INFINITY)]).is_err());
    std::fs::remove_dir_all(dir).ok();
}
