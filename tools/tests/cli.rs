//! The `microllm` binary end to end on the real model.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn gguf() -> PathBuf {
    let p = repo().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-models.sh first",
        p.display()
    );
    p
}

fn microllm(args: &[&str]) -> (bool, String, String) {
    microllm_env(&[], args)
}

fn golden(name: &str) -> serde_json::Value {
    let p = repo().join(format!("fixtures/golden/smollm2-135m-instruct/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn a_closed_stdout_stops_it_quietly() {
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_microllm"))
        .args(["inspect", gguf().to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Go away before it prints, as `| head -0` does.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {err}", out.status);
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn tokenize_prints_hf_ids_as_json() {
    let case = golden("chatml_chat");
    let m = gguf();
    let (ok, out, err) = microllm(&[
        "tokenize",
        m.to_str().unwrap(),
        case["text"].as_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let ids: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(ids, case["token_ids"]);
    assert_eq!(out.trim().lines().count(), 1);
}

#[test]
fn run_greedy_streams_the_golden_continuation() {
    let case = golden("plain_english");
    let m = gguf();
    let (ok, out, err) = microllm(&[
        "run",
        m.to_str().unwrap(),
        "-p",
        case["text"].as_str().unwrap(),
        "-n",
        "8",
        "--ignore-eos",
    ]);
    assert!(ok, "{err}");
    // The first greedy tokens of the reference continuation, as text.
    let want: String = case["greedy"]["text"]
        .as_str()
        .unwrap()
        .chars()
        .take(18)
        .collect();
    assert!(out.starts_with(&want), "got {out:?}, want prefix {want:?}");
}

#[test]
fn logits_writes_npy_with_the_reference_argmax() {
    let case = golden("digits");
    let m = gguf();
    let dir = std::env::temp_dir().join(format!("microllm-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out_path = dir.join("logits.npy");
    let ids: Vec<String> = case["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    let (ok, _, err) = microllm(&[
        "logits",
        m.to_str().unwrap(),
        "--tokens",
        &ids.join(","),
        "--out",
        out_path.to_str().unwrap(),
        "--all-positions",
    ]);
    assert!(ok, "{err}");
    let bytes = std::fs::read(&out_path).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + hlen) % 64, 0, "header must be padded to 64 bytes");
    let header = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
    let n = ids.len();
    assert!(
        header.contains(&format!("'shape': ({n}, 49152)")),
        "{header}"
    );
    let vals: Vec<f32> = bytes[10 + hlen..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(vals.len(), n * 49152);
    let last = &vals[(n - 1) * 49152..];
    let argmax = (0..last.len())
        .max_by(|&a, &b| last[a].total_cmp(&last[b]))
        .unwrap();
    assert_eq!(
        argmax as u64,
        case["last_position"]["argmax"].as_u64().unwrap()
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn inspect_lists_config_and_tensors() {
    let m = gguf();
    let (ok, out, err) = microllm(&["inspect", m.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("layers 30"), "{out}");
    assert!(out.contains("heads 9 (kv 3)"), "{out}");
    assert!(
        out.contains("model.layers.29.mlp.down_proj.weight"),
        "{out}"
    );
    assert!(out.contains("[576, 1536]"), "{out}");
}

#[test]
fn bad_model_path_is_one_clear_error() {
    let (ok, out, err) = microllm(&["run", "/nonexistent/model.gguf", "-p", "hi"]);
    assert!(!ok);
    assert!(out.is_empty());
    assert!(err.starts_with("error: /nonexistent/model.gguf"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_options_are_rejected() {
    let m = gguf();
    let (ok, _, err) = microllm(&["run", m.to_str().unwrap(), "-p", "hi", "--top-p", "0"]);
    assert!(!ok);
    assert!(err.contains("top_p"), "{err}");
}

#[test]
fn convert_inspect_and_run_a_q8_mllm() {
    let m = gguf();
    let dir = std::env::temp_dir().join(format!("microllm-cli-convert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("q8.mllm");
    let (ok, stdout, err) = microllm(&[
        "convert",
        m.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--quant",
        "q8",
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("8.506 bits per weight"), "{stdout}");
    assert!(stdout.contains("rel RMSE"), "{stdout}");

    let (ok, stdout, err) = microllm(&["inspect", out.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        stdout.contains("quantization: q8 by microllm-mse-v1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
        "{stdout}"
    );
    assert!(
        stdout.contains("model.layers.29.mlp.down_proj.weight"),
        "{stdout}"
    );

    let case = golden("plain_english");
    let (ok, stdout, err) = microllm(&[
        "run",
        out.to_str().unwrap(),
        "-p",
        case["text"].as_str().unwrap(),
        "-n",
        "4",
        "--ignore-eos",
    ]);
    assert!(ok, "{err}");
    assert!(stdout.starts_with(" a fox named"), "{stdout:?}");

    // The file used in place (--mmap) or read into memory of its own (the
    // default where Linux offers huge pages): the same text; bench says
    // which.
    let text = case["text"].as_str().unwrap();
    let run = [
        "run",
        out.to_str().unwrap(),
        "-p",
        text,
        "-n",
        "4",
        "--ignore-eos",
    ];
    let (ok, mapped, err) = microllm(&[&["--mmap"][..], &run[..]].concat());
    assert!(ok, "{err}");
    assert_eq!(mapped, stdout);
    let bench = [
        "bench",
        out.to_str().unwrap(),
        "-p",
        "0",
        "-n",
        "2",
        "--reps",
        "1",
        "--json",
    ];
    for (flags, want) in [(&["--mmap"][..], Some("file map")), (&[][..], None)] {
        let (ok, json, err) = microllm(&[flags, &bench[..]].concat());
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
        // Two decoded tokens attend over 1 and 2 positions: 1.5 on
        // average, of 2 (K, V) x 30 layers x 3 heads x 64 x 4 bytes.
        assert_eq!(v["kv_bytes_per_token"], 2 * 30 * 3 * 64 * 4 * 3 / 2);
        let (all, weights) = (v["read_gb_s"].as_f64(), v["weight_gb_s"].as_f64());
        assert!(all.unwrap() > weights.unwrap(), "{v}");
        let got = v["weights_in"].as_str().unwrap();
        match want {
            Some(w) => assert_eq!(got, w),
            None => assert!(["file map", "huge pages"].contains(&got), "{got}"),
        }
    }

    let (ok, _, err) = microllm(&[
        "convert",
        m.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--quant",
        "q3",
    ]);
    assert!(!ok && err.contains("unknown tensor type 'q3'"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn perplexity_json_against_itself() {
    let m = gguf();
    let dir = std::env::temp_dir().join(format!("microllm-cli-ppl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("t.txt");
    std::fs::write(&text, golden("long_paragraph")["text"].as_str().unwrap()).unwrap();
    let (ok, stdout, err) = microllm(&[
        "perplexity",
        m.to_str().unwrap(),
        "-f",
        text.to_str().unwrap(),
        "--ctx",
        "64",
        "--kl-base",
        m.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    // 310 tokens: four windows of 64, 31 scored positions each.
    assert_eq!(v["tokens"], 4 * 31);
    let ppl = v["ppl"].as_f64().unwrap();
    assert!(ppl > 1.0 && ppl < 100.0, "{ppl}");
    assert_eq!(v["base_ppl"].as_f64().unwrap(), ppl);
    assert!(v["mean_kl"].as_f64().unwrap().abs() < 1e-9);
    assert_eq!(v["same_top"], 1.0);
    std::fs::remove_dir_all(dir).ok();
}

// ---- LoRA adapters ----------------------------------------------------------

/// Deterministic values in [-scale, scale].
fn pseudo_random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// A small PEFT adapter for SmolLM2-135M in a fresh folder: r 2, alpha 16,
/// on layer 0's q_proj and layer 3's down_proj.
fn smollm2_adapter(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("microllm-cli-lora-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = serde_json::json!({
        "peft_type": "LORA", "r": 2, "lora_alpha": 16, "target_modules": ["q_proj", "down_proj"],
        "bias": "none", "use_rslora": false, "rank_pattern": {}, "alpha_pattern": {},
        "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"
    });
    std::fs::write(dir.join("adapter_config.json"), cfg.to_string()).unwrap();
    let p = "base_model.model.model.layers";
    let tensors = [
        (
            format!("{p}.0.self_attn.q_proj.lora_A.weight"),
            [2usize, 576],
        ),
        (format!("{p}.0.self_attn.q_proj.lora_B.weight"), [576, 2]),
        (format!("{p}.3.mlp.down_proj.lora_A.weight"), [2, 1536]),
        (format!("{p}.3.mlp.down_proj.lora_B.weight"), [576, 2]),
    ];
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (i, (name, shape)) in tensors.iter().enumerate() {
        let vals = pseudo_random(shape[0] * shape[1], i as u64 + 1, 0.05);
        let start = data.len();
        data.extend(vals.iter().flat_map(|v| v.to_le_bytes()));
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut h = serde_json::to_vec(&header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&h);
    bytes.extend_from_slice(&data);
    std::fs::write(dir.join("adapter_model.safetensors"), bytes).unwrap();
    dir
}

/// The float32 values of a .npy file.
fn npy_values(path: &std::path::Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    bytes[10 + hlen..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn logits_with_lora_merged_unmerged_and_at_zero_scale() {
    let m = gguf();
    let ad = smollm2_adapter("logits");
    let out = ad.join("out.npy");
    let logits = |extra: &[&str]| {
        let mut args = vec![
            "logits",
            m.to_str().unwrap(),
            "--tokens",
            "504,2365,6354,16438,27003",
            "--all-positions",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let (ok, _, err) = microllm(&args);
        assert!(ok, "{extra:?}: {err}");
        (npy_values(&out), err)
    };
    let dir = ad.to_str().unwrap();
    let (base, _) = logits(&[]);
    let (merged, err) = logits(&["--lora", dir]);
    assert!(
        err.contains("r 2, alpha 16") && err.contains("merged in"),
        "{err}"
    );
    let (unmerged, _) = logits(&["--lora", dir, "--lora-mode", "unmerged"]);
    let moved = max_diff(&merged, &base);
    assert!(moved > 0.05, "the adapter moves logits by only {moved}");
    let d = max_diff(&merged, &unmerged);
    assert!(d < 1e-3, "merged and unmerged differ by {d}");
    let zero = format!("{dir}:0");
    assert_eq!(logits(&["--lora", &zero]).0, base);
    assert_eq!(
        logits(&["--lora", &zero, "--lora-mode", "unmerged"]).0,
        base
    );
    // Scales add up: x:0.5 twice is x:1.
    let half = format!("{dir}:0.5");
    let (twice, _) = logits(&["--lora", &half, "--lora", &half, "--lora-mode", "unmerged"]);
    assert!(max_diff(&twice, &merged) < 1e-3);
    std::fs::remove_dir_all(ad).ok();
}

#[test]
fn bench_perplexity_and_run_take_lora() {
    let m = gguf();
    let ad = smollm2_adapter("bench");
    let dir = ad.to_str().unwrap();
    let (ok, stdout, err) = microllm(&[
        "bench",
        m.to_str().unwrap(),
        "-p",
        "8",
        "-n",
        "4",
        "--reps",
        "1",
        "--json",
        "--lora",
        dir,
        "--lora-mode",
        "unmerged",
    ]);
    assert!(ok, "{err}");
    let first: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(first["lora_mode"], "unmerged");
    // r 2 · (576 + 576) + r 2 · (1536 + 576) floats.
    assert_eq!(
        first["lora_unmerged_bytes"],
        (2 * (576 + 576) + 2 * (1536 + 576)) * 4
    );

    let text = ad.join("t.txt");
    std::fs::write(&text, golden("long_paragraph")["text"].as_str().unwrap()).unwrap();
    let (ok, stdout, err) = microllm(&[
        "perplexity",
        m.to_str().unwrap(),
        "-f",
        text.to_str().unwrap(),
        "--ctx",
        "64",
        "--kl-base",
        m.to_str().unwrap(),
        "--json",
        "--lora",
        &format!("{dir}:0.5"),
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(v["mean_kl"].as_f64().unwrap() > 1e-6, "{v}");

    let (ok, stdout, err) = microllm(&[
        "run",
        m.to_str().unwrap(),
        "-p",
        "Hello",
        "-n",
        "3",
        "--ignore-eos",
        "--lora",
        dir,
        "--lora-mode",
        "unmerged",
    ]);
    assert!(ok && !stdout.trim().is_empty(), "{err}");
    std::fs::remove_dir_all(ad).ok();
}

#[test]
fn convert_bakes_lora_and_inspect_shows_it() {
    let m = gguf();
    let ad = smollm2_adapter("convert");
    let out = ad.join("baked.mllm");
    let (ok, _, err) = microllm(&[
        "convert",
        m.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--quant",
        "q8",
        "--lora",
        &format!("{}:0.5", ad.display()),
    ]);
    assert!(ok, "{err}");
    let (ok, stdout, err) = microllm(&["inspect", out.to_str().unwrap()]);
    assert!(ok, "{err}");
    let name = ad.file_name().unwrap().to_str().unwrap();
    let line = stdout
        .lines()
        .find(|l| l.contains("LoRA"))
        .unwrap_or_else(|| panic!("no LoRA line: {stdout}"));
    assert!(
        line.contains(&format!(
            "from {name}/ r 2, alpha 16, adapter_model.safetensors"
        )) && line.contains("at scale 0.5"),
        "{line}"
    );
    std::fs::remove_dir_all(ad).ok();
}

#[test]
fn lora_errors_are_one_clear_line() {
    let m = gguf();
    let (ok, _, err) = microllm(&[
        "logits",
        m.to_str().unwrap(),
        "--tokens",
        "1",
        "--out",
        "/dev/null",
        "--lora",
        "/nonexistent/adapter",
    ]);
    assert!(
        !ok && err.contains("/nonexistent/adapter/adapter_config.json"),
        "{err}"
    );
    // The tiny test model's adapter does not fit SmolLM2.
    let tiny = repo().join("fixtures/lora/plain");
    let (ok, _, err) = microllm(&[
        "logits",
        m.to_str().unwrap(),
        "--tokens",
        "1",
        "--out",
        "/dev/null",
        "--lora",
        tiny.to_str().unwrap(),
        "--lora-mode",
        "unmerged",
    ]);
    assert!(
        !ok && err.contains("another base model") && err.contains("lora_A.weight"),
        "{err}"
    );
    let (ok, _, err) = microllm(&[
        "run",
        m.to_str().unwrap(),
        "-p",
        "x",
        "--lora",
        tiny.to_str().unwrap(),
        "--lora-mode",
        "sideways",
    ]);
    assert!(!ok && err.contains("sideways"), "{err}");
}

/// `microllm` with extra environment variables.
fn microllm_env(env: &[(&str, &str)], args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_microllm"))
        .envs(env.iter().copied())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// The last-position logits of a short prompt under one forced tier.
fn last_logits_with_isa(isa: &str, act: &str, dir: &Path) -> Option<Vec<f32>> {
    let out_path = dir.join(format!("{isa}-{act}.npy"));
    let (ok, _, err) = microllm_env(
        &[("MICROLLM_ISA", isa)],
        &[
            "--act",
            act,
            "logits",
            gguf().to_str().unwrap(),
            "--prompt",
            "The quick brown fox",
            "--out",
            out_path.to_str().unwrap(),
        ],
    );
    if !ok {
        // A tier this CPU lacks is refused with a clear message.
        assert!(err.contains("cannot run"), "{isa}: {err}");
        return None;
    }
    let bytes = std::fs::read(&out_path).unwrap();
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    Some(
        bytes[10 + hlen..]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
    )
}

#[test]
fn every_isa_tier_can_be_forced_and_agrees_with_scalar() {
    let (ok, _, err) = microllm_env(
        &[("MICROLLM_ISA", "sse9")],
        &["tokenize", gguf().to_str().unwrap(), "hi"],
    );
    assert!(!ok && err.contains("MICROLLM_ISA=sse9"), "{err}");
    let dir = std::env::temp_dir().join(format!("microllm-cli-isa-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for act in ["f32", "int8"] {
        let want = last_logits_with_isa("scalar", act, &dir).expect("scalar always runs");
        let mut ran = 0;
        for isa in ["avx2", "avx512", "neon"] {
            let Some(got) = last_logits_with_isa(isa, act, &dir) else {
                continue;
            };
            ran += 1;
            let max = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            // Sums in another order through 30 layers: far below the
            // effect of quantization (q8 moves logits by ~0.1).
            assert!(max < 2e-3, "{isa} {act}: max |Δlogit| {max}");
        }
        eprintln!("{act}: {ran} SIMD tiers agree with scalar");
    }
    std::fs::remove_dir_all(dir).ok();
}
fn hf_folder() -> PathBuf {
    let p = repo().join("models/smollm2-135m-hf-f32");
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-models.sh first",
        p.display()
    );
    p
}

#[test]
fn prune_rejects_bad_options_before_any_work() {
    let dir = std::env::temp_dir().join(format!("microllm-cli-prune-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("out.mllm");
    let short = dir.join("short.txt");
    std::fs::write(&short, "Only a few words of calibration text.").unwrap();
    let hf = hf_folder();
    let (hf, o, s) = (
        hf.to_str().unwrap(),
        out.to_str().unwrap(),
        short.to_str().unwrap(),
    );
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![hf, "-o", o, "--sparsity", "1.0"], "outside [0, 1)"),
        (vec![hf, "-o", o, "--sparsity", "-0.2"], "outside [0, 1)"),
        (vec![hf, "-o", o, "--pattern", "5:4"], "cannot exceed"),
        (
            vec![
                hf,
                "-o",
                o,
                "--sparsity",
                "0.5",
                "--layers",
                "q_proj,attention",
            ],
            "unknown layer name 'attention'",
        ),
        (
            vec![hf, "-o", o, "--sparsity", "0.5", "--layers", "0-40"],
            "layer 40 does not exist",
        ),
        (
            vec![hf, "-o", o, "--sparsity", "0.5", "--method", "wanda"],
            "needs calibration text",
        ),
        (
            vec![
                hf,
                "-o",
                o,
                "--sparsity",
                "0.5",
                "--method",
                "wanda",
                "--calib",
                s,
            ],
            "the calibration text has",
        ),
        (
            vec![hf, "-o", o, "--sparsity", "0.5", "--method", "obd"],
            "unknown pruning method",
        ),
        (
            vec![hf, "-o", o, "--pattern", "2:4", "--sparsity", "0.3"],
            "contradicts",
        ),
        (vec![hf, "-o", o], "needs --sparsity"),
        (
            vec![hf, "-o", o, "--sparsity", "0.5", "--dtype", "f64"],
            "unknown folder dtype 'f64'",
        ),
    ];
    for (args, want) in cases {
        let mut full = vec!["prune"];
        full.extend(args.iter().copied());
        let start = std::time::Instant::now();
        let (ok, _, err) = microllm(&full);
        assert!(!ok, "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        // Refused up front: no model was loaded, nothing written.
        assert!(
            start.elapsed().as_secs() < 10,
            "{args:?} took {:?}",
            start.elapsed()
        );
        assert!(!out.exists());
    }
    std::fs::remove_dir_all(dir).ok();
}

/// A GGUF source pruned to a Hugging Face folder: the folder gets config
/// and tokenizer files of its own and loads and runs.
#[test]
fn prune_gguf_to_hf_folder_then_inspect_and_run() {
    let dir = std::env::temp_dir().join(format!("microllm-cli-prune-hf-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let src = repo().join("fixtures/gguf/tiny-llama.gguf");
    let (ok, stdout, err) = microllm(&[
        "prune",
        src.to_str().unwrap(),
        "-o",
        dir.to_str().unwrap(),
        "--sparsity",
        "0.5",
        "--dtype",
        "bf16",
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("achieved sparsity: 50.00%"), "{stdout}");
    assert!(stdout.contains("(Hugging Face folder, BF16)"), "{stdout}");
    for f in [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
    ] {
        assert!(dir.join(f).is_file(), "{f} is missing");
    }
    let (ok, stdout, err) = microllm(&["inspect", dir.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        stdout.contains("(HfFolder)") && stdout.contains("chat template: yes"),
        "{stdout}"
    );
    let (ok, stdout, err) = microllm(&[
        "run",
        dir.to_str().unwrap(),
        "-p",
        "hi",
        "-n",
        "3",
        "--ignore-eos",
    ]);
    assert!(ok, "{err}");
    assert!(!stdout.trim().is_empty());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn prune_two_four_to_mllm_then_run_and_quick_prune() {
    let dir = std::env::temp_dir().join(format!("microllm-cli-prune-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("p24.mllm");
    let hf = hf_folder();
    let (ok, stdout, err) = microllm(&[
        "prune",
        hf.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--pattern",
        "2:4",
        "--layers",
        "mlp,0-3",
    ]);
    assert!(ok, "{err}");
    assert!(
        stdout.contains("achieved sparsity: 50.00% of the pruned matrices"),
        "{stdout}"
    );
    assert!(stdout.contains("q4s24: 12 tensors"), "{stdout}");
    let (ok, stdout, err) = microllm(&["inspect", out.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(stdout.contains("\"pattern\":\"2:4\""), "{stdout}");
    assert!(stdout.contains("q4s24"), "{stdout}");
    for model in [out.clone(), gguf()] {
        let (ok, stdout, err) = microllm(&[
            "run",
            model.to_str().unwrap(),
            "-p",
            "Once upon a time",
            "-n",
            "4",
            "--ignore-eos",
            "--prune",
            "magnitude:0.1",
        ]);
        assert!(ok, "{err}");
        assert!(!stdout.trim().is_empty());
    }
    let (ok, _, err) = microllm(&[
        "run",
        out.to_str().unwrap(),
        "-p",
        "hi",
        "--prune",
        "wanda:0.3",
    ]);
    assert!(!ok && err.contains("calibration"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}
