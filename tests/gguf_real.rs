//! The real SmolLM2-135M-Instruct Q4_1 GGUF against the f32 Hugging Face
//! checkpoint made from it by an independent tool (gguf_to_hf.py --dtype f32,
//! bit-exact with gguf.quants.dequantize). Both live under models/; when they
//! are missing these tests fail and say how to fetch them.

mod gguf_common;

use gguf_common::{bits, repo_path, SafeTensors};
use microllm::gguf::{self, GgmlType, GgufFile, GgufTensors};
use microllm::source::TensorSource;
use std::path::PathBuf;

const GGUF: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
const HF_WEIGHTS: &str = "models/smollm2-135m-hf-f32/model.safetensors";

fn model_file(rel: &str) -> PathBuf {
    let path = repo_path(rel);
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-models.sh to download the test models",
        path.display()
    );
    path
}

fn open() -> GgufFile {
    GgufFile::open(&model_file(GGUF)).expect("open the real GGUF")
}

#[test]
fn header_and_config() {
    let f = open();
    let h = f.header();
    assert_eq!(h.version(), 3);
    assert_eq!(h.alignment(), 32);
    assert_eq!(h.tensors().len(), 272);
    assert_eq!(h.metadata().len(), 33);
    assert_eq!(h.data_offset(), 1_785_664);
    let counts = |t| h.tensors().iter().filter(|i| i.ggml_type == t).count();
    assert_eq!(
        (
            counts(GgmlType::Q4_1),
            counts(GgmlType::F32),
            counts(GgmlType::Q8_0)
        ),
        (210, 61, 1)
    );

    let c = gguf::llama_config(h).unwrap();
    assert_eq!(c.n_layers, 30);
    assert_eq!(c.hidden_size, 576);
    assert_eq!((c.n_heads, c.n_kv_heads), (9, 3));
    assert_eq!(c.head_dim, 64);
    assert_eq!(c.intermediate_size, 1536);
    assert_eq!(c.vocab_size, 49152);
    assert_eq!(c.max_seq_len, 8192);
    assert_eq!(c.rope_theta, 100000.0);
    assert_eq!(c.rms_norm_eps, 1e-5);
    assert_eq!(c.rope_scaling, None);
    assert!(c.tie_word_embeddings);
    assert_eq!(c.bos_token_id, Some(1));
    assert_eq!(c.eos_token_ids, vec![2]);
}

#[test]
fn tokenizer_parts_and_chat_template() {
    let f = open();
    let p = gguf::tokenizer_parts(f.header()).unwrap();
    assert_eq!(p.tokens.len(), 49152);
    assert_eq!(
        &p.tokens[..3],
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    );
    assert_eq!(p.merges.len(), 48900);
    assert_eq!(&p.merges[..3], ["Ġ t", "Ġ a", "i n"]);
    assert_eq!(p.token_types.len(), 49152);
    assert_eq!(&p.token_types[..3], [3, 3, 3]);
    assert_eq!(p.pre, "smollm");
    let t = f
        .header()
        .get_str("tokenizer.chat_template")
        .unwrap()
        .unwrap();
    assert!(t.starts_with("{% for message in messages %}"), "{t}");
}

#[test]
fn every_tensor_equals_the_f32_checkpoint_bit_for_bit() {
    let f = open();
    let config = gguf::llama_config(f.header()).unwrap();
    let src = GgufTensors::new(f, &config).unwrap();
    let hf = SafeTensors::open(&model_file(HF_WEIGHTS));

    let mut names = src.names();
    names.sort();
    let mut want: Vec<String> = hf.entries.keys().cloned().collect();
    want.sort();
    assert_eq!(names, want);
    assert_eq!(names.len(), 272);

    for name in &names {
        let shape = src.shape(name).unwrap();
        assert_eq!(shape, hf.entries[name].shape, "{name}");
        let t = src.load_f32(name).unwrap();
        assert_eq!(t.shape(), shape.as_slice());
        let got = bits(t.data());
        let expected = hf.f32_bits(name);
        if let Some(i) = (0..got.len()).find(|&i| got[i] != expected[i]) {
            panic!(
                "{name}: value {i} is {}, expected {}",
                t.data()[i],
                f32::from_bits(expected[i])
            );
        }
    }
    assert!(src.load_f32("model.norm.weight").unwrap().is_mapped());
    assert_eq!(
        src.shape("model.layers.0.self_attn.k_proj.weight"),
        Some(vec![192, 576])
    );
}

#[test]
fn load_the_real_model() {
    let path = model_file(GGUF);
    let parts = microllm::source::open(&path).unwrap();
    assert_eq!(parts.format, microllm::source::SourceFormat::Gguf);
    assert_eq!(parts.config.n_layers, 30);
    assert_eq!(parts.tokenizer.vocab_size(), 49152);
    assert_eq!(parts.tokenizer.token_to_id("<|im_start|>"), Some(1));
    assert!(parts.chat_template.is_some());
    assert_eq!(parts.tensors.names().len(), 272);
}
