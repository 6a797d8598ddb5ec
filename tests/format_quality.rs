//! Quantization quality on the real SmolLM2-135M weights, and the load
//! time of the resulting `.mllm` file.
//!
//! Every matrix of `models/smollm2-135m-hf-f32/model.safetensors` is
//! quantized with q8, q4 and q4m, and with ggml's reference Q4_0 / Q4_1 and
//! naive max/7 rounding for comparison; the figure is the RMSE relative to
//! the tensor's RMS, averaged over tensors. Run with `--nocapture` to see
//! the table.
//!
//! Note on the data: this checkpoint was dequantized from a GGUF whose
//! matrices are Q4_1 (blocks of 32) and whose embedding is Q8_0, so q4m
//! reproduces the matrices exactly and q8 the embedding; the symmetric q4
//! is where the quantizer's search shows.

mod common;

use half::f16;
use microllm::config::ModelConfig;
use microllm::format::{
    expected_tensors, Metadata, MllmFile, MllmWriter, Provenance, Recipe, Residency, Role,
    SourceFile, TensorType, TokenizerInfo, TokenizerKind,
};
use microllm_kernels::quant::{baseline, BlockQ4, Planes, QuantizedWeights, WeightsRef, QK};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The f32 tensors of a safetensors file, read by hand: 8-byte header
/// length, JSON header, data.
struct SafeTensors {
    bytes: Vec<u8>,
    header: serde_json::Map<String, Value>,
    data_start: usize,
}

impl SafeTensors {
    fn read(path: &std::path::Path) -> SafeTensors {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        SafeTensors {
            header: header.as_object().unwrap().clone(),
            bytes,
            data_start: 8 + n,
        }
    }

    fn get(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let t = &self.header[name];
        assert_eq!(t["dtype"], "F32", "{name}");
        let shape = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let off = t["data_offsets"].as_array().unwrap();
        let (a, b) = (
            off[0].as_u64().unwrap() as usize,
            off[1].as_u64().unwrap() as usize,
        );
        let data = self.bytes[self.data_start + a..self.data_start + b]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        (shape, data)
    }
}

fn rel_rmse(x: &[f32], y: &[f32]) -> f64 {
    let err: f64 = x
        .iter()
        .zip(y)
        .map(|(&a, &b)| ((a - b) as f64).powi(2))
        .sum();
    let sig: f64 = x.iter().map(|&a| (a as f64).powi(2)).sum();
    (err / sig).sqrt()
}

const COLUMNS: [&str; 6] = ["q8", "q4", "q4m", "Q4_0 ref", "max/7", "Q4_1 ref"];

/// Relative RMSE of each quantizer, plus the quantized q4 and q8 weights.
fn measure(
    x: &[f32],
    rows: usize,
    cols: usize,
) -> ([f64; 6], usize, QuantizedWeights, QuantizedWeights) {
    let q8 = QuantizedWeights::quantize(TensorType::Q8, x, rows, cols).unwrap();
    let q4 = QuantizedWeights::quantize(TensorType::Q4, x, rows, cols).unwrap();
    let q4m = QuantizedWeights::quantize(TensorType::Q4m, x, rows, cols).unwrap();
    let q4m_y = q4m.as_ref().dequantize();
    let exact_blocks = x
        .chunks_exact(QK)
        .zip(q4m_y.chunks_exact(QK))
        .filter(|(a, b)| {
            a.iter()
                .zip(b.iter())
                .all(|(u, v)| u.to_bits() == v.to_bits())
        })
        .count();
    let nb = rows * cols / QK;
    let mut bq = vec![BlockQ4 { qs: [0; 16] }; nb];
    let (mut bs, mut bm) = (vec![f16::ZERO; nb], vec![f16::ZERO; nb]);
    let q4_view = |bq: &[BlockQ4], bs: &[f16]| {
        WeightsRef::new(
            rows,
            cols,
            Planes::Q4 {
                quants: bq,
                scales: bs,
            },
        )
        .unwrap()
        .dequantize()
    };
    baseline::q4_0_ref(x, &mut bq, &mut bs);
    let r40 = rel_rmse(x, &q4_view(&bq, &bs));
    baseline::q4_naive_max7(x, &mut bq, &mut bs);
    let r7 = rel_rmse(x, &q4_view(&bq, &bs));
    baseline::q4_1_ref(x, &mut bq, &mut bs, &mut bm);
    let planes = Planes::Q4m {
        quants: &bq,
        scales: &bs,
        mins: &bm,
    };
    let r41 = rel_rmse(
        x,
        &WeightsRef::new(rows, cols, planes).unwrap().dequantize(),
    );
    let e = [
        rel_rmse(x, &q8.as_ref().dequantize()),
        rel_rmse(x, &q4.as_ref().dequantize()),
        rel_rmse(x, &q4m_y),
        r40,
        r7,
        r41,
    ];
    (e, exact_blocks, q4, q8)
}

fn model_config(dir: &std::path::Path) -> ModelConfig {
    let c: Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let u = |k: &str| c[k].as_u64().unwrap() as usize;
    ModelConfig {
        architecture: c["model_type"].as_str().unwrap().to_string(),
        vocab_size: u("vocab_size"),
        hidden_size: u("hidden_size"),
        intermediate_size: u("intermediate_size"),
        n_layers: u("num_hidden_layers"),
        n_heads: u("num_attention_heads"),
        n_kv_heads: u("num_key_value_heads"),
        head_dim: u("head_dim"),
        max_seq_len: u("max_position_embeddings"),
        rms_norm_eps: c["rms_norm_eps"].as_f64().unwrap() as f32,
        rope_theta: c["rope_theta"].as_f64().unwrap() as f32,
        rope_scaling: None,
        tie_word_embeddings: c["tie_word_embeddings"].as_bool().unwrap(),
        bos_token_id: Some(c["bos_token_id"].as_u64().unwrap() as u32),
        eos_token_ids: vec![c["eos_token_id"].as_u64().unwrap() as u32],
    }
}

#[test]
fn smollm2_quantization_error_and_load_time() {
    let dir = common::smollm2_hf();
    let st = SafeTensors::read(&dir.join("model.safetensors"));
    let cfg = model_config(&dir);
    let expected = expected_tensors(&cfg);

    let mut meta = Metadata {
        config: cfg.clone(),
        tokenizer: TokenizerInfo {
            kind: TokenizerKind::HfJson,
        },
        chat_template: None,
        generation: Default::default(),
        quantization: Recipe {
            method: "microllm-mse-v1".into(),
            default_type: TensorType::Q4,
            overrides: BTreeMap::from([("model.embed_tokens.weight".to_string(), TensorType::Q8)]),
        },
        provenance: Provenance {
            tool: format!(
                "microllm {} (format_quality test)",
                env!("CARGO_PKG_VERSION")
            ),
            sources: vec![SourceFile {
                name: "model.safetensors".into(),
                bytes: st.bytes.len() as u64,
                sha256: "0".repeat(64), // not computed here: the test measures quality
            }],
            pruning: None,
            lora: vec![],
        },
    };
    let tc: Value =
        serde_json::from_slice(&std::fs::read(dir.join("tokenizer_config.json")).unwrap()).unwrap();
    meta.chat_template = tc["chat_template"].as_str().map(String::from);
    let tokenizer = std::fs::read(dir.join("tokenizer.json")).unwrap();
    let mut writer = MllmWriter::new(meta, tokenizer);

    let start = Instant::now();
    let (mut sum, mut n_mat) = ([0.0f64; 6], 0usize);
    let (mut exact, mut blocks) = (0usize, 0usize);
    println!(
        "{:<44} {}",
        "tensor",
        COLUMNS.map(|c| format!("{c:>9}")).join("")
    );
    for e in &expected {
        let (shape, x) = st.get(&e.name);
        assert_eq!(shape, e.shape, "{}", e.name);
        if e.role == Role::Norm {
            writer
                .add_f32(&e.name, TensorType::F32, &shape, &x)
                .unwrap();
            continue;
        }
        let (rows, cols) = (shape[0], shape[1]);
        let (err, ex, q4, q8) = measure(&x, rows, cols);
        println!(
            "{:<44} {}",
            e.name,
            err.map(|v| format!("{v:>9.5}")).join("")
        );
        // On every tensor: the searches beat ggml's choices.
        assert!(
            err[1] < err[3],
            "{}: q4 {} not below Q4_0 {}",
            e.name,
            err[1],
            err[3]
        );
        assert!(
            err[2] <= err[5] + 1e-9,
            "{}: q4m {} above Q4_1 {}",
            e.name,
            err[2],
            err[5]
        );
        assert!(err[0] < 0.01, "{}: q8 {}", e.name, err[0]);
        if e.name == "model.embed_tokens.weight" {
            // Q8_0 data: q8 gives it back exactly.
            assert_eq!(err[0], 0.0);
            writer
                .add_tensor(&e.name, TensorType::Q8, &shape, q8.to_le_bytes())
                .unwrap();
        } else {
            for (s, v) in sum.iter_mut().zip(err) {
                *s += v;
            }
            n_mat += 1;
            exact += ex;
            blocks += rows * cols / QK;
            writer
                .add_tensor(&e.name, TensorType::Q4, &shape, q4.to_le_bytes())
                .unwrap();
        }
    }
    let mean = sum.map(|s| s / n_mat as f64);
    println!(
        "{:<44} {}",
        format!("MEAN over {n_mat} matrices"),
        mean.map(|v| format!("{v:>9.5}")).join("")
    );
    println!(
        "q4m reproduces {exact} of {blocks} blocks of the (Q4_1-derived) matrices bit-exactly"
    );
    println!("quantizing took {:.1} s", start.elapsed().as_secs_f64());
    // The checkpoint's matrices are Q4_1: q4m must give them back exactly.
    assert_eq!(exact, blocks);
    assert_eq!(mean[2], 0.0);
    // q4: measured 0.0770 vs Q4_0 0.0872 (12% lower), vs max/7 0.1017.
    assert!(
        mean[1] < 0.93 * mean[3],
        "q4 {} vs Q4_0 {}",
        mean[1],
        mean[3]
    );
    assert!(
        mean[1] < 0.80 * mean[4],
        "q4 {} vs max/7 {}",
        mean[1],
        mean[4]
    );
    assert!(mean[0] < 0.008, "q8 {}", mean[0]);

    // The file, and how long opening it takes once it is in the page cache.
    let out = std::env::temp_dir().join(format!("microllm-quality-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let path = out.join("smollm2-135m.q4.mllm");
    writer.write(&path).unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let f = MllmFile::open_with(&path, Residency::Mapped).unwrap();
        best = best.min(t.elapsed());
        assert_eq!(f.tensors().len(), expected.len());
        assert!(f.is_mapped());
    }
    // Read into huge pages instead: a copy, the same bytes.
    let t = Instant::now();
    let copy = MllmFile::open_with(&path, Residency::HugePages).unwrap();
    println!(
        "read into huge pages in {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(copy.bytes(), &std::fs::read(&path).unwrap()[..]);
    println!(
        "{}: {:.1} MB, opened in {:.3} ms (best of 5, page cache)",
        path.display(),
        size as f64 / 1e6,
        best.as_secs_f64() * 1e3
    );
    assert!(best < Duration::from_millis(10), "open took {best:?}");
    // Spot check: the mapped q4 weights are the ones measured above.
    let f = MllmFile::open(&path).unwrap();
    let name = "model.layers.3.mlp.down_proj.weight";
    let (shape, x) = st.get(name);
    let w = f.tensor(name).unwrap().weights().unwrap();
    let want = QuantizedWeights::quantize(TensorType::Q4, &x, shape[0], shape[1]).unwrap();
    assert_eq!(w.dequantize(), want.as_ref().dequantize());
    std::fs::remove_dir_all(&out).unwrap();
}
