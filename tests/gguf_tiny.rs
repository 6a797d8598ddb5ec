//! The tiny llama fixture (scripts/make-gguf-fixtures.py): metadata of every
//! value type, the tensor directory, the llama config, the tokenizer pieces,
//! and every tensor dequantized and un-permuted exactly as the reference.

mod gguf_common;

use gguf_common::{bits, repo_path, SafeTensors};
use microllm::gguf::{
    self, GgmlType, GgufFile, GgufTensors, MetadataArray, MetadataValue, ValueType,
};
use microllm::source::TensorSource;

fn tiny() -> GgufFile {
    GgufFile::open(&repo_path("fixtures/gguf/tiny-llama.gguf")).expect("open tiny-llama.gguf")
}

#[test]
fn header_and_metadata_of_every_type() {
    let f = tiny();
    let h = f.header();
    assert_eq!(h.version(), 3);
    assert_eq!(h.alignment(), 32);
    assert_eq!(h.data_offset(), 7552); // as gguf.GGUFReader reports
    assert_eq!(h.metadata().len(), 34);
    assert_eq!(h.metadata()[0].0, "general.architecture");
    assert_eq!(h.architecture(), Some("llama"));

    use MetadataValue as M;
    let cases = [
        ("test.u8", M::U8(200)),
        ("test.i8", M::I8(-100)),
        ("test.u16", M::U16(60000)),
        ("test.i16", M::I16(-30000)),
        ("test.u32", M::U32(4_000_000_000)),
        ("test.i32", M::I32(-2_000_000_000)),
        ("test.f32", M::F32(0.1)),
        ("test.bool", M::Bool(true)),
        ("test.string", M::String("héllo wörld".into())),
        ("test.u64", M::U64((1 << 63) + 5)),
        ("test.i64", M::I64(-(1 << 62))),
        ("test.f64", M::F64(0.1)),
        (
            "test.nested",
            M::Array(MetadataArray::Array(vec![
                MetadataArray::I32(vec![1, 2, 3]),
                MetadataArray::I32(vec![4, 5]),
            ])),
        ),
    ];
    for (key, want) in cases {
        assert_eq!(h.get(key), Some(&want), "{key}");
    }
    assert_eq!(h.get("test.nested").unwrap().value_type(), ValueType::Array);
    assert_eq!(h.get("no.such.key"), None);
    assert_eq!(h.get_usize("llama.block_count").unwrap(), Some(2));
    let err = h.get_usize("test.i8").unwrap_err().to_string(); // -100 is no size
    assert!(err.contains("test.i8"), "{err}");
    assert!(h.get_str("test.u8").is_err());
    assert_eq!(h.get_f32("test.f64").unwrap(), Some(0.1f32));
    assert_eq!(h.get_str("general.name").unwrap(), Some("tiny-llama"));
}

#[test]
fn tensor_directory() {
    let f = tiny();
    let t = f.tensors();
    assert_eq!(t.len(), 23);
    let embd = &t[0];
    assert_eq!(embd.name, "token_embd.weight");
    assert_eq!(embd.dims, vec![32, 299]);
    assert_eq!(embd.shape(), vec![299, 32]);
    assert_eq!(embd.ggml_type, GgmlType::Q8_0);
    assert_eq!(embd.offset, 7552);
    assert_eq!(embd.size, 299 * 34);
    assert_eq!(embd.n_elements(), 299 * 32);
    // Offsets and sizes as gguf.GGUFReader reports them.
    let q0 = f.header().tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(
        (q0.ggml_type, q0.offset, q0.size),
        (GgmlType::Q4_1, 17856, 640)
    );
    let up0 = f.header().tensor("blk.0.ffn_up.weight").unwrap();
    assert_eq!(
        (up0.ggml_type, up0.offset, up0.size),
        (GgmlType::BF16, 21920, 4096)
    );
    let last = t.last().unwrap();
    assert_eq!(
        (last.name.as_str(), last.offset + last.size),
        ("extra.weight", f.bytes().len())
    );
    let types: std::collections::HashSet<GgmlType> = t.iter().map(|t| t.ggml_type).collect();
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::F32,
    ] {
        assert!(types.contains(&ty), "{ty}");
    }
}

#[test]
fn llama_config_from_metadata() {
    let f = tiny();
    let c = gguf::llama_config(f.header()).unwrap();
    assert_eq!(c.architecture, "llama");
    assert_eq!(c.n_layers, 2);
    assert_eq!(c.hidden_size, 32);
    assert_eq!(c.intermediate_size, 64);
    assert_eq!((c.n_heads, c.n_kv_heads, c.head_dim), (4, 2, 8));
    assert_eq!(c.vocab_size, 299);
    assert_eq!(c.max_seq_len, 256);
    assert_eq!(c.rope_theta, 100000.0);
    assert_eq!(c.rms_norm_eps, 1e-5);
    assert_eq!(c.rope_scaling, None);
    assert!(c.tie_word_embeddings); // no output.weight
    assert_eq!(c.bos_token_id, Some(1));
    assert_eq!(c.eos_token_ids, vec![2, 0]); // eos, then eot
}

#[test]
fn tokenizer_parts_from_metadata() {
    let f = tiny();
    let p = gguf::tokenizer_parts(f.header()).unwrap();
    assert_eq!(p.tokens.len(), 299);
    assert_eq!(
        &p.tokens[..3],
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    );
    assert_eq!(p.tokens[3 + b'a' as usize], "a");
    assert_eq!(p.tokens[3 + b' ' as usize], "Ġ");
    assert_eq!(p.merges.len(), 40);
    for m in &p.merges {
        let (a, b) = m.split_once(' ').unwrap();
        assert!(p.tokens.contains(&format!("{a}{b}")), "merge {m}");
    }
    assert_eq!(p.token_types.len(), 299);
    assert_eq!(&p.token_types[..4], [3, 3, 3, 1]);
    assert!(p.token_types[3..].iter().all(|&t| t == 1));
    assert_eq!(p.pre, "smollm");
    let template = f
        .header()
        .get_str("tokenizer.chat_template")
        .unwrap()
        .unwrap();
    assert!(template.starts_with("{% for message in messages %}<|im_start|>"));
}

#[test]
fn tensors_equal_the_reference_dequantized_and_unpermuted() {
    let f = tiny();
    let config = gguf::llama_config(f.header()).unwrap();
    let src = GgufTensors::new(f, &config).unwrap();
    let expected = SafeTensors::open(&repo_path("fixtures/gguf/tiny-llama.expected.safetensors"));

    let mut names = src.names();
    names.sort();
    let mut want: Vec<String> = expected.entries.keys().cloned().collect();
    want.sort();
    assert_eq!(names, want);
    assert!(names.contains(&"extra.weight".to_string())); // unknown name kept as is
    assert!(!names.iter().any(|n| n.starts_with("blk.")));

    for name in &names {
        let shape = src.shape(name).unwrap();
        assert_eq!(shape, expected.entries[name].shape, "{name}");
        let t = src.load_f32(name).unwrap();
        assert_eq!(t.shape(), shape.as_slice(), "{name}");
        assert_eq!(bits(t.data()), expected.f32_bits(name), "{name}");
    }
    // Unpermuted F32 tensors are used in place; permuted ones are copies.
    assert!(src
        .load_f32("model.layers.1.self_attn.o_proj.weight")
        .unwrap()
        .is_mapped());
    assert!(src.load_f32("model.norm.weight").unwrap().is_mapped());
    assert!(!src
        .load_f32("model.layers.1.self_attn.q_proj.weight")
        .unwrap()
        .is_mapped());
    assert!(!src
        .load_f32("model.layers.0.self_attn.k_proj.bias")
        .unwrap()
        .is_mapped());
    // Permutation is really exercised: the stored order differs from HF order.
    let stored = src.file().tensor_f32("blk.1.attn_q.weight").unwrap();
    let hf = src
        .load_f32("model.layers.1.self_attn.q_proj.weight")
        .unwrap();
    assert_ne!(bits(&stored), bits(hf.data()));

    let err = src
        .load_f32("model.layers.9.self_attn.q_proj.weight")
        .unwrap_err();
    assert!(err.to_string().contains("tiny-llama.gguf"), "{err}");
    assert!(src.shape("nope").is_none());
}

#[test]
fn from_bytes_matches_open() {
    let path = repo_path("fixtures/gguf/tiny-llama.gguf");
    let bytes = std::fs::read(&path).unwrap();
    let a = GgufFile::from_bytes(&bytes, &path).unwrap();
    let b = tiny();
    assert_eq!(a.tensors(), b.tensors());
    assert_eq!(a.header().metadata(), b.header().metadata());
    assert_eq!(
        bits(&a.tensor_f32("blk.0.ffn_gate.weight").unwrap()),
        bits(&b.tensor_f32("blk.0.ffn_gate.weight").unwrap())
    );
}

#[test]
fn load_builds_model_parts() {
    let path = repo_path("fixtures/gguf/tiny-llama.gguf");
    let parts = gguf::load(&path).unwrap();
    assert_eq!(parts.format, microllm::source::SourceFormat::Gguf);
    assert_eq!(parts.path, path);
    assert_eq!(parts.config.n_layers, 2);
    assert_eq!(parts.tokenizer.vocab_size(), 299);
    assert_eq!(parts.tokenizer.token_to_id("<|im_end|>"), Some(2));
    assert!(parts.chat_template.unwrap().contains("<|im_start|>"));
    assert_eq!(parts.generation, Default::default());
    assert_eq!(parts.tensors.names().len(), 23);
}
