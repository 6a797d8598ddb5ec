//! The real SmolLM2-135M checkpoint folder (`models/smollm2-135m-hf-f32/`),
//! checked against what Python's `safetensors` library reads from it
//! (`fixtures/hf/smollm2-135m-hf-f32.json`, from
//! `scripts/make-hf-fixtures.py`) and against the raw file bytes.

use microllm::hf;
use microllm::source::{SourceFormat, TensorSource};
use serde_json::Value;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

fn model_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/smollm2-135m-hf-f32");
    assert!(
        dir.join("model.safetensors").is_file(),
        "{} is missing: run scripts/fetch-models.sh",
        dir.display()
    );
    dir
}

fn fixture() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hf/smollm2-135m-hf-f32.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/make-hf-fixtures.py)", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The expected shape of every tensor, from the architecture alone:
/// 30 layers of 9 tensors, the embedding and the final norm (the output head
/// is tied to the embedding, so there is no lm_head.weight).
fn expected_shapes() -> Vec<(String, Vec<usize>)> {
    let (d, ffn, kv, vocab) = (576, 1536, 3 * 64, 49152);
    let mut v = vec![
        ("model.embed_tokens.weight".to_string(), vec![vocab, d]),
        ("model.norm.weight".to_string(), vec![d]),
    ];
    for l in 0..30 {
        for (suffix, shape) in [
            ("input_layernorm.weight", vec![d]),
            ("post_attention_layernorm.weight", vec![d]),
            ("self_attn.q_proj.weight", vec![d, d]),
            ("self_attn.k_proj.weight", vec![kv, d]),
            ("self_attn.v_proj.weight", vec![kv, d]),
            ("self_attn.o_proj.weight", vec![d, d]),
            ("mlp.gate_proj.weight", vec![ffn, d]),
            ("mlp.up_proj.weight", vec![ffn, d]),
            ("mlp.down_proj.weight", vec![d, ffn]),
        ] {
            v.push((format!("model.layers.{l}.{suffix}"), shape));
        }
    }
    v.sort();
    v
}

#[test]
fn config_parses() {
    let c = hf::read_config(&model_dir()).unwrap();
    assert_eq!(c.architecture, "llama");
    assert_eq!(c.n_layers, 30);
    assert_eq!(c.hidden_size, 576);
    assert_eq!((c.n_heads, c.n_kv_heads, c.head_dim), (9, 3, 64));
    assert_eq!(c.intermediate_size, 1536);
    assert_eq!(c.vocab_size, 49152);
    assert_eq!(c.max_seq_len, 8192);
    assert_eq!(c.rope_theta, 100000.0);
    assert_eq!(c.rms_norm_eps, 1e-5);
    assert_eq!(c.rope_scaling, None);
    assert!(c.tie_word_embeddings);
    assert_eq!(c.bos_token_id, Some(1));
    assert_eq!(c.eos_token_ids, vec![2]);

    let g = hf::read_generation_config(&model_dir()).unwrap().unwrap();
    assert_eq!(g.eos_token_ids, vec![2]);
    assert_eq!(g.defaults, Default::default());

    let t = hf::read_tokenizer_config(&model_dir()).unwrap();
    assert_eq!(t.eos_token.as_deref(), Some("<|im_end|>"));
    let template = t.chat_template.unwrap();
    assert!(template.contains("<|im_start|>") && template.contains("add_generation_prompt"));
}

#[test]
fn all_272_tensors_with_true_shapes() {
    let w = hf::open_weights(&model_dir()).unwrap();
    let expected = expected_shapes();
    assert_eq!(expected.len(), 272);
    let names = w.names();
    assert_eq!(
        names,
        expected.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()
    );
    for (name, shape) in &expected {
        assert_eq!(w.shape(name).as_ref(), Some(shape), "{name}");
    }
    // And as Python's safetensors reads them.
    let fx = fixture();
    let listed = fx["tensors"].as_object().unwrap();
    assert_eq!(listed.len(), 272);
    for (name, info) in listed {
        let shape: Vec<usize> = serde_json::from_value(info["shape"].clone()).unwrap();
        assert_eq!(w.shape(name), Some(shape), "{name}");
        assert_eq!(info["dtype"], "F32");
        assert_eq!(
            w.file_of(name).unwrap().get(name).unwrap().dtype.name(),
            "F32"
        );
    }
}

#[test]
fn every_tensor_loads_zero_copy_with_python_values() {
    let dir = model_dir();
    let w = hf::open_weights(&dir).unwrap();
    let fx = fixture();
    assert_eq!(
        std::fs::metadata(dir.join("model.safetensors"))
            .unwrap()
            .len(),
        fx["file_size"].as_u64().unwrap(),
        "model.safetensors differs from the one the fixture was made from"
    );
    for name in w.names() {
        let t = w.load_f32(&name).unwrap();
        assert!(t.is_mapped(), "{name} was copied");
        assert_eq!(t.shape(), &w.shape(&name).unwrap()[..]);
    }
    for (name, samples) in fx["samples"].as_object().unwrap() {
        let t = w.load_f32(name).unwrap();
        for s in samples.as_array().unwrap() {
            let i = s[0].as_u64().unwrap() as usize;
            // The fixture holds the f32 exactly as a double.
            let want = s[1].as_f64().unwrap() as f32;
            assert_eq!(t.data()[i].to_bits(), want.to_bits(), "{name}[{i}]");
        }
    }
}

#[test]
fn embedding_matches_raw_file_bytes() {
    // Read the first values of model.embed_tokens.weight straight from the
    // file with std I/O, sharing no code with the reader.
    let path = model_dir().join("model.safetensors");
    let mut f = std::fs::File::open(&path).unwrap();
    let mut len = [0u8; 8];
    f.read_exact(&mut len).unwrap();
    let n = u64::from_le_bytes(len);
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).unwrap();
    let header: Value = serde_json::from_slice(&header).unwrap();
    let begin = header["model.embed_tokens.weight"]["data_offsets"][0]
        .as_u64()
        .unwrap();
    f.seek(SeekFrom::Start(8 + n + begin)).unwrap();
    let mut raw = vec![0u8; 4 * 64];
    f.read_exact(&mut raw).unwrap();
    let want: Vec<f32> = raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();

    let w = hf::open_weights(&model_dir()).unwrap();
    let t = w.load_f32("model.embed_tokens.weight").unwrap();
    assert!(t.is_mapped());
    assert_eq!(t.shape(), &[49152, 576]);
    assert_eq!(t.numel(), 49152 * 576);
    assert_eq!(&t.data()[..64], &want[..]);
    assert!(want.iter().any(|&v| v != 0.0));
}

#[test]
fn load_real_folder() {
    let dir = model_dir();
    let parts = hf::load(&dir).unwrap();
    assert_eq!(parts.format, SourceFormat::HfFolder);
    assert_eq!(parts.path, dir);
    assert_eq!(parts.config.n_layers, 30);
    // config.json and generation_config.json say 2; tokenizer_config.json's
    // eos_token "<|im_end|>" is also id 2.
    assert_eq!(parts.config.eos_token_ids, vec![2]);
    assert_eq!(parts.tokenizer.token_to_id("<|im_end|>"), Some(2));
    assert!(parts.chat_template.unwrap().contains("<|im_start|>"));
    assert_eq!(parts.generation, Default::default());
    assert_eq!(parts.tensors.names().len(), 272);
    assert!(parts
        .tensors
        .load_f32("model.embed_tokens.weight")
        .unwrap()
        .is_mapped());
}
