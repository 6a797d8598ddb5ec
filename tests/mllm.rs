//! `.mllm` end to end: convert → load → the same logits as the same recipe
//! applied in memory; tensors used in place; provenance recorded.

mod common;

use common::*;
use microllm::convert::{convert, recipe};
use microllm::format::{MllmFile, TensorType};
use microllm::source::{self, SourceFormat};
use microllm::{Logits, Model};

fn logits_of(m: &Model, ids: &[u32]) -> Vec<f32> {
    m.forward(ids, &mut m.new_cache(ids.len()), Logits::All)
        .unwrap()
}

#[test]
fn convert_then_load_equals_in_memory_quantization_bit_for_bit() {
    let dir = tiny_llama_folder("mllm-rt", |_| {});
    let ids = [504u32, 2365, 6354, 16438, 27003, 690];
    let f32_model = Model::load(&dir).unwrap();
    let reference = logits_of(&f32_model, &ids);
    for (ty, max_rel) in [
        (TensorType::Q8, Some(0.1)),
        (TensorType::Q4, None),
        (TensorType::Q4m, None),
        (TensorType::F16, Some(0.01)),
    ] {
        // q4 types keep the embedding (= output head) at q8, as convert does.
        let head = if matches!(ty, TensorType::Q4 | TensorType::Q4m) {
            TensorType::Q8
        } else {
            ty
        };
        let r = recipe(ty, Some(head), true, &[]);
        let out = dir.join(format!("tiny-{ty}.mllm"));
        let mut progress = 0;
        let report = convert(&dir, &out, &r, |done, total, _| {
            assert!(done <= total);
            progress = done;
        })
        .unwrap();
        assert_eq!(progress, report.tensors.len());
        assert_eq!(
            report.tensors.len(),
            2 + 2 * 9,
            "embedding, final norm, 9 per layer"
        );

        let loaded = Model::load(&out).unwrap();
        assert_eq!(loaded.format(), SourceFormat::Mllm);
        let in_memory =
            Model::from_parts(source::open(&dir).unwrap().quantized(r.clone())).unwrap();
        let a = logits_of(&loaded, &ids);
        let b = logits_of(&in_memory, &ids);
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{ty}: file and memory differ"
        );

        // Quantized, and not grossly off (a random untrained model amplifies
        // weight noise; quality is measured on the real model).
        let spread = reference.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
        let diff = a
            .iter()
            .zip(&reference)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(
            diff > 0.0 || ty == TensorType::F16,
            "{ty}: suspiciously exact"
        );
        assert!(a.iter().all(|v| v.is_finite()));
        if let Some(max_rel) = max_rel {
            assert!(
                diff / spread < max_rel,
                "{ty}: max |Δ| {diff} vs spread {spread}"
            );
        }

        // Weights are used in place, with the types of the recipe.
        let w = loaded.weights();
        assert!(w.layers[0].wq.is_mapped());
        assert_eq!(w.layers[0].wq.ty(), ty);
        assert_eq!(w.token_embedding.ty(), head);
        assert_eq!(w.layers[1].attn_norm.ty(), TensorType::F32);
        // Report: types as stored, errors plausible.
        let wq = report
            .tensors
            .iter()
            .find(|t| t.name.ends_with("0.self_attn.q_proj.weight"))
            .unwrap();
        assert_eq!(wq.ty, ty);
        assert!(wq.rel_rmse > 0.0 && wq.rel_rmse < 0.2, "{}", wq.rel_rmse);
        assert_eq!(report.file_bytes, std::fs::metadata(&out).unwrap().len());
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn provenance_and_tokenizer_are_recorded() {
    let dir = tiny_llama_folder("mllm-prov", |_| {});
    let out = dir.join("tiny.mllm");
    convert(
        &dir,
        &out,
        &recipe(TensorType::Q8, None, true, &[]),
        |_, _, _| {},
    )
    .unwrap();
    let file = MllmFile::open(&out).unwrap();
    let meta = file.metadata();
    assert!(meta.provenance.tool.starts_with("microllm "));
    let st = meta
        .provenance
        .sources
        .iter()
        .find(|s| s.name == "model.safetensors")
        .expect("the weights are a source");
    assert_eq!(
        st.bytes,
        std::fs::metadata(dir.join("model.safetensors"))
            .unwrap()
            .len()
    );
    assert_eq!(st.sha256.len(), 64);
    assert_eq!(meta.quantization.default_type, TensorType::Q8);
    assert!(meta.chat_template.is_some());
    // The tokenizer inside the file is the source's.
    let m = Model::load(&out).unwrap();
    let src = Model::load(&dir).unwrap();
    let text = "<|im_start|>user\nHello, wörld! 12345<|im_end|>";
    assert_eq!(m.tokenizer().encode(text), src.tokenizer().encode(text));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_file_that_is_not_a_model_is_one_clear_error() {
    let dir = std::env::temp_dir().join(format!("microllm-notmodel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("notes.mllm");
    std::fs::write(&p, b"hello world").unwrap();
    let err = Model::load(&p).unwrap_err().to_string();
    assert!(
        err.contains("notes.mllm") && err.contains("not a model"),
        "{err}"
    );
    std::fs::write(&p, b"MLLM").unwrap();
    let err = Model::load(&p).unwrap_err().to_string();
    assert!(err.contains("notes.mllm"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_quantized_type_needs_whole_blocks() {
    let t = microllm::Tensor::from_vec(vec![2, 16], vec![0.5; 32]).unwrap();
    let err = microllm::convert::quantize_tensor(&t, TensorType::Q4)
        .unwrap_err()
        .to_string();
    assert!(err.contains("multiple of 32"), "{err}");
    let (f16, bytes) = microllm::convert::quantize_tensor(&t, TensorType::F16).unwrap();
    assert_eq!(bytes.len(), 64);
    assert_eq!(f16.weights().dequantize(), vec![0.5; 32]);
    let nan = microllm::Tensor::from_vec(vec![1, 32], vec![f32::NAN; 32]).unwrap();
    assert!(microllm::convert::quantize_tensor(&nan, TensorType::Q8).is_err());
}
