//! Hugging Face folders and safetensors files built by hand in temporary
//! folders: values of every supported dtype, sharding, zero-copy, and every
//! way a folder or file can be broken.

use microllm::hf::{self, open_weights, read_config};
use microllm::safetensors::SafetensorsFile;
use microllm::source::TensorSource;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A folder under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("microllm-hf-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a safetensors file by hand: 8-byte little-endian header length,
/// the JSON header (padded with spaces to a multiple of 8, as the reference
/// writer does, so that data stays aligned), then the tensors' bytes in order.
fn safetensors(tensors: &[(&str, &str, &[usize], Vec<u8>)]) -> Vec<u8> {
    let mut json = String::from("{\"__metadata__\":{\"format\":\"pt\"}");
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let begin = data.len();
        data.extend_from_slice(bytes);
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        json += &format!(
            ",\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{begin},{}]}}",
            dims.join(","),
            data.len()
        );
    }
    json.push('}');
    raw_file(&json, &data)
}

/// A file with exactly this header text and data section.
fn raw_file(json: &str, data: &[u8]) -> Vec<u8> {
    let mut json = json.to_string();
    while !json.len().is_multiple_of(8) {
        json.push(' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out.extend_from_slice(data);
    out
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn u16_bytes(v: &[u16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A small but valid Llama config.json.
const CONFIG: &str = r#"{
  "architectures": ["LlamaForCausalLM"], "model_type": "llama",
  "hidden_size": 4, "intermediate_size": 8, "num_hidden_layers": 1,
  "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 2,
  "max_position_embeddings": 16, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
  "vocab_size": 8, "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": true
}"#;

/// A folder with config.json, a placeholder tokenizer.json and one weight.
fn folder(tag: &str) -> TempDir {
    let dir = TempDir::new(tag);
    dir.write("config.json", CONFIG);
    dir.write("tokenizer.json", "{}");
    dir.write(
        "model.safetensors",
        safetensors(&[(
            "model.norm.weight",
            "F32",
            &[4],
            f32_bytes(&[1.0, 2.0, 3.0, 4.0]),
        )]),
    );
    dir
}

fn err_of<T>(r: microllm::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

/// Asserts `msg` names `file` (by full path) and contains `problem`.
#[track_caller]
fn assert_names(msg: &str, file: &Path, problem: &str) {
    assert!(
        msg.starts_with(&format!("{}:", file.display())),
        "error does not name {}: {msg}",
        file.display()
    );
    assert!(msg.contains(problem), "error lacks '{problem}': {msg}");
}

/// Exact f32 bits, treating any NaN as equal to any NaN.
#[track_caller]
fn assert_bits(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
            "value {i}: got {g:e} ({:#010x}), want {w:e} ({:#010x})",
            g.to_bits(),
            w.to_bits()
        );
    }
}

#[test]
fn f32_f16_bf16_values_are_exact() {
    let dir = folder("dtypes");
    let f32s = [
        1.0f32,
        -0.0,
        f32::MIN_POSITIVE / 4.0,
        f32::INFINITY,
        -3.0e38,
        0.1,
    ];
    // f16 patterns and their values worked out by hand from the IEEE layout
    // (1 sign, 5 exponent bits biased by 15, 10 mantissa bits).
    let f16_bits = [
        0x3C00u16, 0xC000, 0x0001, 0x03FF, 0x8001, 0x7C00, 0xFC00, 0x8000, 0x7BFF, 0x3555, 0x7E00,
    ];
    let f16_want = [
        1.0f32,
        -2.0,
        2f64.powi(-24) as f32,            // smallest subnormal
        (1023.0 * 2f64.powi(-24)) as f32, // largest subnormal
        -(2f64.powi(-24) as f32),         // negative subnormal
        f32::INFINITY,
        f32::NEG_INFINITY,
        -0.0,
        65504.0,                             // largest finite
        (1.0 + 341.0 / 1024.0) as f32 / 4.0, // 0x3555 = 0.333251953125
        f32::NAN,
    ];
    // bf16 is the top 16 bits of an f32 (1 sign, 8 exponent bits biased by
    // 127, 7 mantissa bits).
    let bf16_bits = [
        0x3F80u16, 0xC049, 0x0001, 0x807F, 0x7F80, 0xFF80, 0x8000, 0x7F7F, 0x7FC0,
    ];
    let bf16_want = [
        1.0f32,
        -3.140625,                         // -(1 + 73/128) * 2
        2f64.powi(-133) as f32,            // smallest subnormal: 2^-126 * 2^-7
        -(127.0 * 2f64.powi(-133)) as f32, // largest negative subnormal
        f32::INFINITY,
        f32::NEG_INFINITY,
        -0.0,
        (255.0 / 128.0 * 2f64.powi(127)) as f32, // largest finite
        f32::NAN,
    ];
    dir.write(
        "model.safetensors",
        safetensors(&[
            ("a", "F32", &[2, 3], f32_bytes(&f32s)),
            ("h", "F16", &[11], u16_bytes(&f16_bits)),
            ("b", "BF16", &[1, 9], u16_bytes(&bf16_bits)),
        ]),
    );
    let w = open_weights(dir.path()).unwrap();
    assert_eq!(w.names(), ["a", "b", "h"]);
    assert_eq!(w.shape("a"), Some(vec![2, 3]));
    assert_eq!(w.shape("h"), Some(vec![11]));
    assert_eq!(w.shape("b"), Some(vec![1, 9]));
    assert_eq!(w.shape("zzz"), None);

    let a = w.load_f32("a").unwrap();
    assert!(a.is_mapped(), "F32 must be a zero-copy view into the file");
    assert_eq!(a.shape(), &[2, 3]);
    assert_bits(a.data(), &f32s);

    let h = w.load_f32("h").unwrap();
    assert!(!h.is_mapped());
    assert_eq!(h.shape(), &[11]);
    assert_bits(h.data(), &f16_want);

    let b = w.load_f32("b").unwrap();
    assert_eq!(b.shape(), &[1, 9]);
    assert_bits(b.data(), &bf16_want);
    // The f32 bit patterns are the bf16 bits shifted up: spot-check that the
    // hand-computed values above mean what they say.
    assert_eq!(b.data()[2].to_bits(), 0x0001_0000);
    assert_eq!(b.data()[3].to_bits(), 0x807F_0000);
}

#[test]
fn big_f16_tensor_widens_in_parallel_correctly() {
    let dir = folder("bigf16");
    // 200 000 values: past the parallel threshold, with a ragged last chunk.
    let bits: Vec<u16> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 16) as u16 & 0x7BFF)
        .collect();
    dir.write(
        "model.safetensors",
        safetensors(&[("x", "F16", &[400, 500], u16_bytes(&bits))]),
    );
    let t = open_weights(dir.path()).unwrap().load_f32("x").unwrap();
    let want: Vec<f32> = bits
        .iter()
        .map(|&b| half::f16::from_bits(b).to_f32())
        .collect();
    assert_eq!(t.shape(), &[400, 500]);
    assert_bits(t.data(), &want);
}

#[test]
fn unsupported_dtypes_are_named() {
    let dir = folder("dtype");
    let file = dir.write(
        "model.safetensors",
        safetensors(&[
            ("q", "I8", &[4], vec![1, 2, 3, 4]),
            ("d", "F64", &[1], 1.0f64.to_le_bytes().to_vec()),
            ("i", "I32", &[1], vec![0; 4]),
        ]),
    );
    let w = open_weights(dir.path()).unwrap();
    // Listed with their true shapes, but not loadable as f32.
    assert_eq!(w.shape("q"), Some(vec![4]));
    for (name, dtype) in [("q", "I8"), ("d", "F64"), ("i", "I32")] {
        let msg = err_of(w.load_f32(name));
        assert_names(
            &msg,
            &file,
            &format!("unsupported dtype {dtype} for tensor '{name}'"),
        );
    }
    assert_names(&err_of(w.load_f32("nope")), &file, "no tensor named 'nope'");
}

#[test]
fn sharded_checkpoint_with_two_shards() {
    let dir = TempDir::new("sharded");
    dir.write("config.json", CONFIG);
    let s1 = dir.write(
        "model-00001-of-00002.safetensors",
        safetensors(&[
            (
                "model.embed_tokens.weight",
                "F32",
                &[8, 4],
                f32_bytes(&(0..32).map(|i| i as f32).collect::<Vec<_>>()),
            ),
            (
                "model.layers.0.input_layernorm.weight",
                "BF16",
                &[4],
                u16_bytes(&[0x3F80, 0x4000, 0x4040, 0x4080]),
            ),
        ]),
    );
    let s2 = dir.write(
        "model-00002-of-00002.safetensors",
        safetensors(&[(
            "model.norm.weight",
            "F16",
            &[4],
            u16_bytes(&[0x3C00, 0x4000, 0x4200, 0x4400]),
        )]),
    );
    dir.write(
        "model.safetensors.index.json",
        r#"{"metadata": {"total_size": 152}, "weight_map": {
            "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
            "model.layers.0.input_layernorm.weight": "model-00001-of-00002.safetensors",
            "model.norm.weight": "model-00002-of-00002.safetensors"}}"#,
    );
    let w = open_weights(dir.path()).unwrap();
    assert_eq!(w.files().len(), 2);
    assert_eq!(
        w.names(),
        [
            "model.embed_tokens.weight",
            "model.layers.0.input_layernorm.weight",
            "model.norm.weight"
        ]
    );
    assert_eq!(w.file_of("model.embed_tokens.weight").unwrap().path(), s1);
    assert_eq!(w.file_of("model.norm.weight").unwrap().path(), s2);
    assert_eq!(w.shape("model.embed_tokens.weight"), Some(vec![8, 4]));
    let e = w.load_f32("model.embed_tokens.weight").unwrap();
    assert!(e.is_mapped());
    assert_eq!(e.data()[31], 31.0);
    assert_eq!(
        w.load_f32("model.layers.0.input_layernorm.weight")
            .unwrap()
            .data(),
        &[1.0, 2.0, 3.0, 4.0]
    );
    assert_eq!(
        w.load_f32("model.norm.weight").unwrap().data(),
        &[1.0, 2.0, 3.0, 4.0]
    );
    let index = dir.path().join("model.safetensors.index.json");
    assert_names(
        &err_of(w.load_f32("lm_head.weight")),
        &index,
        "no tensor named 'lm_head.weight'",
    );
}

#[test]
fn sharding_errors() {
    let dir = TempDir::new("shard-err");
    let index = dir.path().join("model.safetensors.index.json");
    let s1 = dir.write(
        "a.safetensors",
        safetensors(&[("x", "F32", &[1], f32_bytes(&[1.0]))]),
    );
    dir.write(
        "b.safetensors",
        safetensors(&[("y", "F32", &[1], f32_bytes(&[2.0]))]),
    );

    // A shard named by the index is missing.
    dir.write(
        "model.safetensors.index.json",
        r#"{"weight_map": {"x": "a.safetensors", "z": "c.safetensors"}}"#,
    );
    assert_names(
        &err_of(open_weights(dir.path())),
        &index,
        "names shard 'c.safetensors', which is missing",
    );

    // The same tensor listed twice in the index.
    dir.write(
        "model.safetensors.index.json",
        r#"{"weight_map": {"x": "a.safetensors", "x": "b.safetensors"}}"#,
    );
    assert_names(
        &err_of(open_weights(dir.path())),
        &index,
        "key 'x' appears twice",
    );

    // The same tensor stored in two shards.
    let s2 = dir.write(
        "b.safetensors",
        safetensors(&[("x", "F32", &[1], f32_bytes(&[2.0]))]),
    );
    dir.write(
        "model.safetensors.index.json",
        r#"{"weight_map": {"x": "a.safetensors", "y": "b.safetensors"}}"#,
    );
    let msg = err_of(open_weights(dir.path()));
    assert_names(
        &msg,
        &s2,
        &format!("tensor 'x' is also in {}", s1.display()),
    );

    // The index puts a tensor in a shard that lacks it.
    dir.write(
        "b.safetensors",
        safetensors(&[("y", "F32", &[1], f32_bytes(&[2.0]))]),
    );
    dir.write(
        "model.safetensors.index.json",
        r#"{"weight_map": {"x": "b.safetensors", "y": "b.safetensors"}}"#,
    );
    assert_names(
        &err_of(open_weights(dir.path())),
        &index,
        "lists tensor 'x' in 'b.safetensors', but that shard does not contain it",
    );

    // Shards must be files in the folder.
    dir.write(
        "model.safetensors.index.json",
        r#"{"weight_map": {"x": "../a.safetensors"}}"#,
    );
    assert_names(
        &err_of(open_weights(dir.path())),
        &index,
        "is not a plain file name in the folder",
    );
    dir.write(
        "model.safetensors.index.json",
        r#"{"weight_map": {"x": "/etc/passwd"}}"#,
    );
    assert_names(
        &err_of(open_weights(dir.path())),
        &index,
        "is not a plain file name in the folder",
    );

    // Malformed indexes.
    dir.write("model.safetensors.index.json", r#"{"metadata": {}}"#);
    assert_names(
        &err_of(open_weights(dir.path())),
        &index,
        "missing key 'weight_map'",
    );
    dir.write(
        "model.safetensors.index.json",
        r#"{"weight_map": {"x": 3}}"#,
    );
    assert_names(
        &err_of(open_weights(dir.path())),
        &index,
        "weight_map['x'] must be a file name",
    );
    dir.write("model.safetensors.index.json", r#"{"weight_map": {}"#);
    assert_names(&err_of(open_weights(dir.path())), &index, "not valid JSON");

    // A broken shard is reported by its own name.
    dir.write("b.safetensors", b"\x08\0\0\0\0\0\0\0{");
    dir.write(
        "model.safetensors.index.json",
        r#"{"weight_map": {"x": "a.safetensors", "y": "b.safetensors"}}"#,
    );
    assert_names(
        &err_of(open_weights(dir.path())),
        &dir.path().join("b.safetensors"),
        "runs past the end of the file",
    );
}

#[test]
fn missing_weights_are_named() {
    let dir = TempDir::new("noweights");
    let msg = err_of(open_weights(dir.path()));
    assert_names(
        &msg,
        &dir.path().join("model.safetensors"),
        "no such file, and no model.safetensors.index.json either",
    );
    dir.write("pytorch_model.bin", b"");
    assert!(err_of(open_weights(dir.path())).contains("only PyTorch .bin weights found"));
}

#[test]
fn truncated_file_is_an_error_at_every_cut() {
    let full = safetensors(&[
        ("a", "F32", &[3], f32_bytes(&[1.0, 2.0, 3.0])),
        ("b", "BF16", &[2], u16_bytes(&[0x3F80, 0x4000])),
    ]);
    let dir = TempDir::new("trunc");
    let file = dir.path().join("model.safetensors");
    for cut in 0..full.len() {
        std::fs::write(&file, &full[..cut]).unwrap();
        let msg = err_of(SafetensorsFile::open(&file));
        let problem = if cut < 8 {
            "too short"
        } else if cut < 8 + u64::from_le_bytes(full[..8].try_into().unwrap()) as usize {
            "runs past the end of the file"
        } else {
            "run past the end of the data section"
        };
        assert_names(&msg, &file, problem);
        // Through the folder reader too.
        assert_names(&err_of(open_weights(dir.path())), &file, problem);
    }
    std::fs::write(&file, &full).unwrap();
    assert_eq!(open_weights(dir.path()).unwrap().names(), ["a", "b"]);
}

#[test]
fn corrupt_headers_are_named() {
    let dir = TempDir::new("corrupt");
    let file = dir.path().join("model.safetensors");
    let check = |bytes: Vec<u8>, problem: &str| {
        std::fs::write(&file, bytes).unwrap();
        assert_names(&err_of(open_weights(dir.path())), &file, problem);
    };
    let t = |dtype: &str, shape: &str, begin: usize, end: usize| {
        format!(r#"{{"t":{{"dtype":"{dtype}","shape":{shape},"data_offsets":[{begin},{end}]}}}}"#)
    };

    // Header length past the end of the file.
    let mut past = 64u64.to_le_bytes().to_vec();
    past.extend_from_slice(b"{}      ");
    check(
        past,
        "header length 64 runs past the end of the file (16 bytes)",
    );
    // Absurd header length (would be a 2^63-byte allocation if trusted).
    let mut huge = (1u64 << 63).to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}      ");
    check(
        huge,
        "header length 9223372036854775808 is larger than the 104857600-byte limit",
    );
    check(u64::MAX.to_le_bytes().to_vec(), "is larger than the");
    // Bad JSON and non-UTF-8.
    check(
        raw_file(r#"{"t": {"dtype": "F32""#, &[]),
        "header is not valid JSON",
    );
    check(raw_file("not json", &[]), "header is not valid JSON");
    let mut latin1 = 8u64.to_le_bytes().to_vec();
    latin1.extend_from_slice(b"{\"\xe9\":1}  ");
    check(latin1, "header is not valid UTF-8");
    // Offsets out of range, reversed, overlapping, wrong length.
    check(
        raw_file(&t("F32", "[2]", 0, 8), &[0; 4]),
        "tensor 't': data_offsets [0, 8) run past the end of the data section (4 bytes)",
    );
    check(
        raw_file(&t("F32", "[2]", 8, 0), &[0; 8]),
        "tensor 't': data_offsets [8, 0) begin after they end",
    );
    check(
        raw_file(&t("F32", "[2]", 0, 12), &[0; 12]),
        "tensor 't': data_offsets [0, 12) hold 12 bytes but shape [2] of F32 needs 8",
    );
    check(
        raw_file(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
            &[0; 8],
        ),
        "tensors 'a' [0, 8) and 'b' [4, 8) overlap",
    );
    check(
        raw_file(&t("F32", "[2]", 0, 18446744073709551615usize), &[0; 8]),
        "run past the end of the data section",
    );
    check(
        raw_file(&t("F32", "[4294967296,4294967296,16]", 0, 8), &[0; 8]),
        "overflows",
    );
    // Unknown dtype, bad shape.
    check(
        raw_file(&t("Q4_K", "[2]", 0, 8), &[0; 8]),
        "tensor 't': unknown dtype 'Q4_K'",
    );
    check(
        raw_file(&t("F32", "[2.5]", 0, 8), &[0; 8]),
        "'shape' must be an array of non-negative integers",
    );
    check(
        raw_file(r#"{"t":{"dtype":"F32","shape":[2]}}"#, &[0; 8]),
        "tensor 't': missing 'data_offsets'",
    );
    // Not a file at all.
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    assert_names(
        &err_of(SafetensorsFile::open(&file)),
        &file,
        "not a regular file",
    );
}

#[test]
fn config_errors_name_config_json() {
    let dir = folder("config");
    let path = dir.path().join("config.json");
    let check = |text: &str, problem: &str| {
        std::fs::write(&path, text).unwrap();
        assert_names(&err_of(read_config(dir.path())), &path, problem);
        assert_names(&err_of(hf::load(dir.path())), &path, problem);
    };
    check("{\"hidden_size\": 4,", "not valid JSON");
    check("", "not valid JSON");
    check(
        &CONFIG.replace("\"hidden_size\": 4,", ""),
        "missing key 'hidden_size'",
    );
    check(
        &CONFIG.replace("\"vocab_size\": 8,", ""),
        "missing key 'vocab_size'",
    );
    check(
        &CONFIG.replace("\"hidden_size\": 4", "\"hidden_size\": \"4\""),
        "'hidden_size' must be a non-negative integer",
    );
    check(
        &CONFIG.replace("\"model_type\": \"llama\"", "\"model_type\": \"gpt2\""),
        "unsupported architecture 'gpt2'",
    );
    check(
        &CONFIG.replace("LlamaForCausalLM", "MistralForCausalLM"),
        "unsupported architecture 'MistralForCausalLM'",
    );
    check(
        &CONFIG.replace("\"eos_token_id\": 2", "\"eos_token_id\": 99"),
        "special token id 99 is outside the vocabulary (8)",
    );
    check(
        &CONFIG.replace(
            "\"rope_theta\": 10000.0",
            "\"rope_scaling\": {\"type\": \"dynamic\", \"factor\": 2.0}",
        ),
        "unsupported rope scaling type 'dynamic'",
    );
    std::fs::remove_file(&path).unwrap();
    let msg = err_of(read_config(dir.path()));
    assert_names(&msg, &path, "No such file");
    assert_names(&err_of(hf::load(dir.path())), &path, "No such file");
}

#[test]
fn folder_level_errors() {
    // Missing folder.
    let gone = std::env::temp_dir().join("microllm-hf-no-such-folder");
    assert_names(&err_of(hf::load(&gone)), &gone, "no such folder");
    let dir = folder("file");
    let file = dir.path().join("config.json");
    assert_names(&err_of(hf::load(&file)), &file, "not a folder");

    // Missing tokenizer.json, everything else present.
    let dir = folder("notok");
    let tok = dir.path().join("tokenizer.json");
    std::fs::remove_file(&tok).unwrap();
    assert_names(&err_of(hf::load(dir.path())), &tok, "no such file");

    // Missing weights.
    let dir = folder("now");
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    assert_names(
        &err_of(hf::load(dir.path())),
        &dir.path().join("model.safetensors"),
        "no such file",
    );

    // generation_config.json: malformed, and an EOS id outside the vocabulary.
    let dir = folder("gen");
    let gen = dir.write("generation_config.json", "{\"eos_token_id\": [2, 8]}");
    assert_names(
        &err_of(hf::load(dir.path())),
        &gen,
        "eos_token_id 8 is outside the vocabulary (8)",
    );
    dir.write("generation_config.json", "{\"top_k\": -1}");
    assert_names(
        &err_of(hf::load(dir.path())),
        &gen,
        "'top_k' must be a non-negative integer",
    );
}

#[test]
fn optional_files() {
    let dir = folder("optional");
    assert_eq!(hf::read_generation_config(dir.path()).unwrap(), None);
    assert_eq!(
        hf::read_tokenizer_config(dir.path()).unwrap(),
        hf::TokenizerConfig::default()
    );

    dir.write(
        "generation_config.json",
        r#"{"eos_token_id": [2, 5], "temperature": 0.2, "top_p": 0.9}"#,
    );
    let g = hf::read_generation_config(dir.path()).unwrap().unwrap();
    assert_eq!(g.eos_token_ids, vec![2, 5]);
    assert_eq!(g.defaults.temperature, Some(0.2));
    assert_eq!(g.defaults.top_p, Some(0.9));
    assert_eq!(g.defaults.top_k, None);

    dir.write(
        "tokenizer_config.json",
        r#"{"chat_template": "A", "eos_token": "<|im_end|>"}"#,
    );
    let t = hf::read_tokenizer_config(dir.path()).unwrap();
    assert_eq!(
        (t.chat_template.as_deref(), t.eos_token.as_deref()),
        (Some("A"), Some("<|im_end|>"))
    );
    // A chat_template.jinja file wins, as in recent transformers.
    dir.write("chat_template.jinja", "B");
    assert_eq!(
        hf::read_tokenizer_config(dir.path())
            .unwrap()
            .chat_template
            .as_deref(),
        Some("B")
    );

    let path = dir.write("tokenizer_config.json", "{\"chat_template\": 1}");
    assert_names(
        &err_of(hf::read_tokenizer_config(dir.path())),
        &path,
        "'chat_template' must be a string",
    );
}
