//! Corrupt, truncated and unsupported files: every one is an `Err` whose
//! message names the file and the problem, never a panic or an attempt to
//! allocate what a corrupt count claims.

mod gguf_common;

use gguf_common::{mini_llama, repo_path, GgufBuilder, TensorSpec, Val};
use microllm::config::RopeScaling;
use microllm::gguf::{self, GgufFile, GgufTensors};
use microllm::source::TensorSource;
use microllm::Error;
use proptest::prelude::*;
use std::path::Path;

const NAME: &str = "bad.gguf";

fn parse(bytes: &[u8]) -> microllm::Result<gguf::GgufHeader> {
    gguf::parse(bytes, Path::new(NAME))
}

/// The error of parsing `bytes`; checks it names the file and mentions
/// every one of `words`.
#[track_caller]
fn parse_err(bytes: &[u8], words: &[&str]) -> String {
    match parse(bytes) {
        Ok(_) => panic!("parsed, expected an error mentioning {words:?}"),
        Err(e) => check_err(e, words),
    }
}

#[track_caller]
fn check_err(e: Error, words: &[&str]) -> String {
    assert!(matches!(e, Error::Format { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("{NAME}: ")),
        "no file name in: {msg}"
    );
    for w in words {
        assert!(msg.contains(w), "'{w}' not in: {msg}");
    }
    msg
}

/// The llama config of a builder's file, or its error.
fn config(b: &GgufBuilder) -> microllm::Result<microllm::ModelConfig> {
    gguf::llama_config(&parse(&b.build()).unwrap())
}

#[test]
fn mini_llama_is_valid() {
    // The baseline every other case corrupts.
    let h = parse(&mini_llama().build()).unwrap();
    let c = gguf::llama_config(&h).unwrap();
    assert!(!c.tie_word_embeddings); // output.weight present
    assert_eq!((c.n_heads, c.n_kv_heads, c.head_dim), (2, 1, 16));
    assert_eq!(c.vocab_size, 4); // no llama.vocab_size: the token count
    assert_eq!(c.rope_theta, 10000.0); // default
    assert_eq!(c.eos_token_ids, vec![3]);
    let p = gguf::tokenizer_parts(&h).unwrap();
    assert_eq!(p.pre, "default");
    assert_eq!(p.token_types, vec![1, 1, 1, 3]);

    let file = GgufFile::from_bytes(&mini_llama().build(), Path::new(NAME)).unwrap();
    let src = GgufTensors::new(file, &c).unwrap();
    assert!(src.names().contains(&"lm_head.weight".to_string()));
    // Values 0, 1, 2, ... per row of 32: k_proj rows 0..16 of one head of 16.
    let k = src
        .load_f32("model.layers.0.self_attn.k_proj.weight")
        .unwrap();
    assert_eq!(k.shape(), [16, 32]);
    let first_col: Vec<f32> = k.data().iter().step_by(32).copied().collect();
    let rows: Vec<f32> = [0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15]
        .iter()
        .map(|&r| (r * 32) as f32)
        .collect();
    assert_eq!(first_col, rows);
}

#[test]
fn truncated_at_every_byte() {
    let bytes = std::fs::read(repo_path("fixtures/gguf/tiny-llama.gguf")).unwrap();
    for cut in 0..bytes.len() {
        let msg = match parse(&bytes[..cut]) {
            Ok(_) => panic!("truncated at {cut} of {} parsed", bytes.len()),
            Err(e) => check_err(e, &[]),
        };
        assert!(
            msg.contains("truncated") || msg.contains("past the end") || msg.contains("not a GGUF"),
            "cut {cut}: {msg}"
        );
    }
    assert!(parse(&bytes).is_ok());
}

#[test]
fn bad_magic_and_versions() {
    let mut b = mini_llama();
    b.magic = *b"GGML";
    parse_err(&b.build(), &["not a GGUF file"]);
    parse_err(b"", &["not a GGUF file"]);
    parse_err(b"GGU", &["not a GGUF file"]);
    for (v, words) in [
        (1, &["unsupported GGUF version 1"][..]),
        (4, &["unsupported GGUF version 4"]),
        (0x0300_0000, &["unsupported GGUF version", "big-endian"]),
    ] {
        let mut b = mini_llama();
        b.version = v;
        parse_err(&b.build(), words);
    }
    let mut b = mini_llama();
    b.version = 2;
    assert_eq!(parse(&b.build()).unwrap().version(), 2);
}

#[test]
fn huge_counts_and_lengths_fail_without_allocating() {
    let huge = 1u64 << 60;
    let mut b = mini_llama();
    b.tensor_count = Some(huge);
    parse_err(&b.build(), &["tensor infos", "1152921504606846976"]);
    let mut b = mini_llama();
    b.kv_count = Some(u64::MAX);
    parse_err(&b.build(), &["metadata entries"]);

    // Array length: patch the token array's count in place.
    let bytes = mini_llama().build();
    let key = b"tokenizer.ggml.tokens";
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    // value type (4) + element type (4), then the u64 count.
    let mut patched = bytes.clone();
    patched[at + 8..at + 16].copy_from_slice(&huge.to_le_bytes());
    parse_err(&patched, &["tokenizer.ggml.tokens", "array elements"]);

    // String length: the value of general.architecture.
    let key = b"general.architecture";
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 4;
    let mut patched = bytes.clone();
    patched[at..at + 8].copy_from_slice(&huge.to_le_bytes());
    parse_err(&patched, &["general.architecture", "length"]);
    patched[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    parse_err(&patched, &["general.architecture", "length"]);

    // Key length.
    let mut patched = bytes.clone();
    patched[24..32].copy_from_slice(&huge.to_le_bytes());
    parse_err(&patched, &["metadata entry 0"]);

    // Nested arrays deeper than any real file.
    let mut v = Val::Arr(5, vec![Val::I32(1)]);
    for _ in 0..20 {
        v = Val::Arr(9, vec![v]);
    }
    parse_err(
        &mini_llama().kv("test.deep", v).build(),
        &["test.deep", "nested"],
    );
}

#[test]
fn bad_metadata_values() {
    parse_err(
        &mini_llama().kv("x", Val::Raw(13, vec![0; 8])).build(),
        &["metadata key 'x'", "unknown metadata value type 13"],
    );
    parse_err(
        &mini_llama().kv("x", Val::Raw(7, vec![2])).build(),
        &["metadata key 'x'", "bool", "not 0 or 1"],
    );
    let mut bad_utf8 = 3u64.to_le_bytes().to_vec();
    bad_utf8.extend([0xff, 0xfe, b'a']);
    parse_err(
        &mini_llama().kv("x", Val::Raw(8, bad_utf8)).build(),
        &["metadata key 'x'", "UTF-8"],
    );
    let mut b = mini_llama();
    b.kvs.push(("llama.block_count".into(), Val::U32(2)));
    parse_err(&b.build(), &["duplicate metadata key 'llama.block_count'"]);
    // Alignment: must be a u32 power of two.
    for v in [Val::U32(3), Val::U32(0), Val::U64(32), Val::str("32")] {
        parse_err(
            &mini_llama().kv("general.alignment", v).build(),
            &["general.alignment"],
        );
    }
    let mut b = mini_llama().kv("general.alignment", Val::U32(64));
    b.alignment = 64;
    let h = parse(&b.build()).unwrap();
    assert_eq!(h.alignment(), 64);
    assert_eq!(h.data_offset() % 64, 0);
    // Empty arrays are fine.
    let h = parse(&mini_llama().kv("x", Val::Arr(5, vec![])).build()).unwrap();
    assert!(h.get_array("x").unwrap().unwrap().is_empty());
}

fn spec(name: &str, dims: &[u64], type_id: u32, data: Vec<u8>, offset: Option<u64>) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        dims: dims.to_vec(),
        type_id,
        data,
        offset,
    }
}

#[test]
fn bad_tensor_infos() {
    // Unknown ggml type: names the tensor and the id.
    let b = mini_llama().tensor(spec("weird", &[4], 99, vec![0; 16], None));
    parse_err(&b.build(), &["tensor 'weird'", "unknown ggml type id 99"]);
    // Offset past the end of the file.
    let b = mini_llama().tensor(spec("far", &[4], 0, vec![], Some(1 << 40)));
    parse_err(&b.build(), &["tensor 'far'", "past the end"]);
    let b = mini_llama().tensor(spec("far", &[4], 0, vec![], Some(u64::MAX - 31)));
    parse_err(&b.build(), &["tensor 'far'"]);
    // Misaligned offset.
    let b = mini_llama().tensor(spec("odd", &[4], 0, vec![0; 16], Some(4)));
    parse_err(
        &b.build(),
        &["tensor 'odd'", "not a multiple of the alignment 32"],
    );
    // Overlapping data: same offset as the first tensor.
    let b = mini_llama().tensor(spec("dup", &[4], 0, vec![], Some(0)));
    parse_err(&b.build(), &["overlapping", "'dup'", "'token_embd.weight'"]);
    // Duplicate names.
    let b = mini_llama().f32_tensor("output.weight", &[4]);
    parse_err(&b.build(), &["duplicate tensor name 'output.weight'"]);
    // Too many or zero dimensions.
    let b = mini_llama().tensor(spec("t5", &[1, 1, 1, 1, 1], 0, vec![0; 4], None));
    parse_err(&b.build(), &["tensor 't5'", "5 dimensions"]);
    let b = mini_llama().tensor(spec("t0", &[], 0, vec![0; 4], None));
    parse_err(&b.build(), &["tensor 't0'", "0 dimensions"]);
    // Dimension products that overflow.
    let b = mini_llama().tensor(spec("big", &[1 << 32, 1 << 32], 0, vec![], None));
    parse_err(&b.build(), &["tensor 'big'", "overflow"]);
    let b = mini_llama().tensor(spec("big", &[1 << 62, 2], 0, vec![], None));
    parse_err(&b.build(), &["tensor 'big'", "overflow"]);
    // Byte size overflow (fits in elements, not in bytes) is caught too.
    let b = mini_llama().tensor(spec("big", &[1 << 61, 2], 0, vec![], None));
    parse_err(&b.build(), &["tensor 'big'"]);
    // Row length not a whole number of blocks.
    let b = mini_llama().tensor(spec("q", &[31], 8, vec![0; 34], None));
    parse_err(
        &b.build(),
        &["tensor 'q'", "not a multiple of the Q8_0 block size 32"],
    );
    // A tensor with zero elements is valid.
    let h = parse(
        &mini_llama()
            .tensor(spec("empty", &[0, 3], 0, vec![], None))
            .build(),
    )
    .unwrap();
    assert_eq!(h.tensor("empty").unwrap().size, 0);
}

#[test]
fn llama_mapping_errors() {
    let mut b = mini_llama();
    b.set("general.architecture", Val::str("gpt2"));
    check_err(
        config(&b).unwrap_err(),
        &["unsupported architecture 'gpt2'"],
    );
    b.remove("general.architecture");
    check_err(
        config(&b).unwrap_err(),
        &["missing required metadata key 'general.architecture'"],
    );

    for key in [
        "llama.block_count",
        "llama.embedding_length",
        "llama.feed_forward_length",
        "llama.attention.head_count",
        "llama.context_length",
        "llama.attention.layer_norm_rms_epsilon",
    ] {
        let mut b = mini_llama();
        b.remove(key);
        check_err(
            config(&b).unwrap_err(),
            &["missing required metadata key", key],
        );
    }
    let mut b = mini_llama();
    b.set("llama.block_count", Val::str("1"));
    check_err(
        config(&b).unwrap_err(),
        &["llama.block_count", "type string"],
    );
    b.set("llama.block_count", Val::I32(-1));
    check_err(config(&b).unwrap_err(), &["llama.block_count"]);

    let b = mini_llama().kv("llama.rope.dimension_count", Val::U32(8));
    check_err(
        config(&b).unwrap_err(),
        &["rope.dimension_count 8", "head_dim 16"],
    );
    let b = mini_llama().kv("llama.attention.head_count", Val::U32(5));
    check_err(config(&b).unwrap_err(), &["not a multiple of head_count 5"]);
    let b = mini_llama().kv("llama.attention.head_count", Val::U32(0));
    check_err(config(&b).unwrap_err(), &["head_count 0"]);
    let b = mini_llama().kv("llama.vocab_size", Val::U32(3));
    check_err(config(&b).unwrap_err(), &["4 tokens", "vocab_size 3"]);
    let b = mini_llama().kv("tokenizer.ggml.eos_token_id", Val::U32(4));
    check_err(config(&b).unwrap_err(), &["special token id 4"]);

    // RoPE scaling.
    let b = mini_llama()
        .kv("llama.rope.scaling.type", Val::str("linear"))
        .kv("llama.rope.scaling.factor", Val::F32(4.0));
    assert_eq!(
        config(&b).unwrap().rope_scaling,
        Some(RopeScaling::Linear { factor: 4.0 })
    );
    let b = mini_llama().kv("llama.rope.scaling.type", Val::str("none"));
    assert_eq!(config(&b).unwrap().rope_scaling, None);
    let b = mini_llama().kv("llama.rope.scaling.type", Val::str("yarn"));
    check_err(
        config(&b).unwrap_err(),
        &["unsupported RoPE scaling type 'yarn'"],
    );
    let b = mini_llama().kv("llama.rope.scaling.type", Val::str("linear"));
    check_err(
        config(&b).unwrap_err(),
        &["missing required metadata key 'llama.rope.scaling.factor'"],
    );
    let b = mini_llama()
        .kv("llama.rope.scaling.type", Val::str("linear"))
        .kv("llama.rope.scaling.factor", Val::F32(-1.0));
    check_err(config(&b).unwrap_err(), &["llama.rope.scaling.factor = -1"]);
    let b = mini_llama().f32_tensor("rope_freqs.weight", &[8]);
    check_err(config(&b).unwrap_err(), &["rope_freqs.weight"]);

    // Optional keys.
    let b = mini_llama()
        .kv("llama.attention.key_length", Val::U32(8))
        .kv("llama.rope.freq_base", Val::F64(500000.0))
        .kv("tokenizer.ggml.eot_token_id", Val::U32(3));
    let c = config(&b).unwrap();
    assert_eq!((c.head_dim, c.rope_theta), (8, 500000.0));
    assert_eq!(c.eos_token_ids, vec![3]); // eot equal to eos is not repeated
    let mut b = mini_llama();
    b.remove("llama.attention.head_count_kv");
    assert_eq!(config(&b).unwrap().n_kv_heads, 2);
}

#[test]
fn tokenizer_errors() {
    let tok = |b: &GgufBuilder| gguf::tokenizer_parts(&parse(&b.build()).unwrap());
    let b = mini_llama().kv("tokenizer.ggml.model", Val::str("llama"));
    check_err(
        tok(&b).unwrap_err(),
        &["unsupported tokenizer model 'llama'"],
    );
    for key in [
        "tokenizer.ggml.model",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
    ] {
        let mut b = mini_llama();
        b.remove(key);
        check_err(
            tok(&b).unwrap_err(),
            &["missing required metadata key", key],
        );
    }
    let b = mini_llama().kv("tokenizer.ggml.token_type", Val::Arr(5, vec![Val::I32(1)]));
    check_err(
        tok(&b).unwrap_err(),
        &["token_type has 1 entries but there are 4 tokens"],
    );
    let b = mini_llama().kv(
        "tokenizer.ggml.token_type",
        Val::strs(&["a", "b", "c", "d"]),
    );
    check_err(tok(&b).unwrap_err(), &["token_type", "array of string"]);
    let b = mini_llama().kv("tokenizer.ggml.tokens", Val::Arr(5, vec![Val::I32(1)]));
    check_err(
        tok(&b).unwrap_err(),
        &["tokenizer.ggml.tokens", "expected an array of strings"],
    );
    let b = mini_llama().kv("tokenizer.ggml.token_type", Val::Arr(9, vec![]));
    check_err(tok(&b).unwrap_err(), &["token_type"]);
}

#[test]
fn load_reports_problems_before_the_tokenizer() {
    let dir = std::env::temp_dir().join(format!("microllm-gguf-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("wrong-arch.gguf");
    let mut b = mini_llama();
    b.set("general.architecture", Val::str("qwen2"));
    std::fs::write(&path, b.build()).unwrap();
    let msg = gguf::load(&path).err().expect("load must fail").to_string();
    assert!(
        msg.contains("wrong-arch.gguf") && msg.contains("unsupported architecture 'qwen2'"),
        "{msg}"
    );

    let path = dir.join("missing.gguf");
    let err = gguf::load(&path).err().expect("load must fail");
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.gguf"));

    let path = dir.join("empty.gguf");
    std::fs::write(&path, b"").unwrap();
    let msg = gguf::load(&path).err().expect("load must fail").to_string();
    assert!(
        msg.contains("empty.gguf") && msg.contains("not a GGUF file"),
        "{msg}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tensor_source_rejects_bad_q_shapes_and_name_collisions() {
    // q_proj whose rows do not match n_heads * head_dim.
    let mut b = mini_llama();
    b.tensors.retain(|t| t.name != "blk.0.attn_q.weight");
    let b = b.f32_tensor("blk.0.attn_q.weight", &[32, 30]);
    let h = parse(&b.build()).unwrap();
    let c = gguf::llama_config(&h).unwrap();
    let src = GgufTensors::new(
        GgufFile::from_bytes(&b.build(), Path::new(NAME)).unwrap(),
        &c,
    )
    .unwrap();
    check_err(
        src.load_f32("model.layers.0.self_attn.q_proj.weight")
            .unwrap_err(),
        &["blk.0.attn_q.weight", "30 rows"],
    );
    // A tensor literally named like a mapped one.
    let b = mini_llama().f32_tensor("lm_head.weight", &[4]);
    let file = GgufFile::from_bytes(&b.build(), Path::new(NAME)).unwrap();
    let err = GgufTensors::new(file, &c).unwrap_err();
    check_err(err, &["'lm_head.weight'"]);
}

/// Runs everything a loader does on `bytes`; any panic fails the property.
fn exercise(bytes: &[u8]) {
    let path = Path::new(NAME);
    let file = match GgufFile::from_bytes(bytes, path) {
        Ok(f) => f,
        Err(e) => {
            assert!(e.to_string().starts_with("bad.gguf: "), "{e}");
            return;
        }
    };
    let _ = gguf::tokenizer_parts(file.header());
    for t in file.tensors() {
        let _ = file.tensor_f32(&t.name);
    }
    if let Ok(config) = gguf::llama_config(file.header()) {
        if let Ok(src) = GgufTensors::new(file, &config) {
            for name in src.names() {
                let _ = src.shape(&name);
                let _ = src.load_f32(&name);
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    /// XOR the byte at (position mod length).
    Flip(usize, u8),
    /// Overwrite 8 bytes with a u64 (a count, length, offset or dim).
    PutU64(usize, u64),
    /// Keep only the first (n mod length) bytes.
    Truncate(usize),
    /// Replace bytes [a, a + len) with `with`.
    Splice(usize, usize, Vec<u8>),
}

fn mutation(header_len: usize) -> impl Strategy<Value = Mutation> {
    // Half the positions fall in the metadata and tensor infos, where
    // corruption matters most.
    let pos = prop_oneof![0..header_len, any::<usize>()];
    let value = prop_oneof![
        any::<u64>(),
        0u64..64,
        Just(u64::MAX),
        Just(1 << 60),
        Just(1 << 32)
    ];
    prop_oneof![
        (pos.clone(), 1u8..=255).prop_map(|(p, x)| Mutation::Flip(p, x)),
        (pos.clone(), value).prop_map(|(p, v)| Mutation::PutU64(p, v)),
        any::<usize>().prop_map(Mutation::Truncate),
        (
            pos,
            0usize..64,
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(a, n, w)| Mutation::Splice(a, n, w)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    let len = bytes.len();
    match m {
        Mutation::Flip(p, x) => bytes[p % len] ^= x,
        Mutation::PutU64(p, v) => {
            let at = p % len;
            let end = (at + 8).min(len);
            bytes[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
        }
        Mutation::Truncate(n) => bytes.truncate(n % len),
        Mutation::Splice(a, n, with) => {
            let at = a % len;
            let end = (at + n).min(len);
            bytes.splice(at..end, with.iter().copied());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn mutated_tiny_gguf_never_panics(mutations in proptest::collection::vec(mutation(7552), 1..4)) {
        let mut bytes = std::fs::read(repo_path("fixtures/gguf/tiny-llama.gguf")).unwrap();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        exercise(&bytes);
    }

    #[test]
    fn mutated_mini_llama_never_panics(mutations in proptest::collection::vec(mutation(1200), 1..4)) {
        let mut bytes = mini_llama().build();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        exercise(&bytes);
    }

    #[test]
    fn random_bytes_after_a_valid_prefix_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..256)) {
        // Magic and version are right, the rest is noise.
        let mut bytes = b"GGUF\x03\x00\x00\x00".to_vec();
        bytes.extend(tail);
        exercise(&bytes);
    }
}

#[test]
fn known_but_unsupported_types_parse_and_fail_on_use() {
    // IQ2_XXS (id 16): 256 values in 66 bytes. Listed for tools, not dequantized.
    let b = mini_llama().tensor(spec("blk.0.attn_v.bias", &[256], 16, vec![0; 66], None));
    let bytes = b.build();
    let file = GgufFile::from_bytes(&bytes, Path::new(NAME)).unwrap();
    let info = file.header().tensor("blk.0.attn_v.bias").unwrap();
    assert_eq!((info.ggml_type, info.size), (gguf::GgmlType::IQ2_XXS, 66));
    check_err(
        file.tensor_f32("blk.0.attn_v.bias").unwrap_err(),
        &["blk.0.attn_v.bias", "IQ2_XXS is not supported"],
    );
    let c = gguf::llama_config(file.header()).unwrap();
    let src = GgufTensors::new(file, &c).unwrap();
    check_err(
        src.load_f32("model.layers.0.self_attn.v_proj.bias")
            .unwrap_err(),
        &[
            "model.layers.0.self_attn.v_proj.bias",
            "IQ2_XXS is not supported",
        ],
    );
}
