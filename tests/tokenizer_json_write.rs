//! `Tokenizer::to_hf_json`: a tokenizer written as a Hugging Face
//! `tokenizer.json` reads back as the same tokenizer, down to every table
//! (its binary section is byte-identical), whether it came from
//! `tokenizer.json`, from a GGUF file or from one of the fixture variants
//! (other pre-tokenizers, merges as pairs, `ignore_merges`, added tokens
//! with options); and for SmolLM2 the file says what the original says.
//!
//! Needs `models/` (`scripts/fetch-models.sh`).

mod common;

use common::*;
use microllm::tokenizer::Tokenizer;
use serde_json::Value;
use std::path::Path;

/// Writes `tok` as `tokenizer.json` and reads it back.
fn json_round_trip(what: &str, tok: &Tokenizer) -> Tokenizer {
    let text = tok.to_hf_json();
    let back = Tokenizer::from_json_bytes(text.as_bytes(), Path::new(what))
        .unwrap_or_else(|e| panic!("{what}: the written tokenizer.json does not load: {e}"));
    assert_eq!(
        back.to_binary(),
        tok.to_binary(),
        "{what}: not the same tokenizer after tokenizer.json"
    );
    back
}

#[test]
fn smollm2_from_json_and_from_gguf_round_trip() {
    let json = Tokenizer::from_json_file(&smollm2_hf().join("tokenizer.json")).unwrap();
    let path = smollm2_gguf();
    let file = microllm::gguf::GgufFile::open(&path).unwrap();
    let parts = microllm::gguf::tokenizer_parts(file.header()).unwrap();
    let gguf = Tokenizer::from_gguf_parts(parts, &path).unwrap();
    let corpus = std::fs::read_to_string(root().join("fixtures/tokenizer/corpus.txt")).unwrap();
    let want = ids_of(&fixture("tokenizer/corpus_ids.json")["ids"]);
    for (what, tok) in [("tokenizer.json", &json), ("gguf", &gguf)] {
        let back = json_round_trip(what, tok);
        assert_eq!(back.encode(&corpus), want, "{what}: corpus ids");
    }
}

/// Merges as `[left, right]`, whichever way a file writes them.
fn merge_pairs(model: &Value) -> Vec<(String, String)> {
    model["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            Value::String(s) => {
                let (l, r) = s.split_once(' ').unwrap();
                (l.to_string(), r.to_string())
            }
            Value::Array(p) => (
                p[0].as_str().unwrap().to_string(),
                p[1].as_str().unwrap().to_string(),
            ),
            other => panic!("merge {other}"),
        })
        .collect()
}

#[test]
fn smollm2_file_says_what_the_original_says() {
    let original = read_json(&smollm2_hf().join("tokenizer.json"));
    let tok = Tokenizer::from_json_file(&smollm2_hf().join("tokenizer.json")).unwrap();
    let written: Value = serde_json::from_str(&tok.to_hf_json()).unwrap();
    for key in [
        "added_tokens",
        "normalizer",
        "pre_tokenizer",
        "post_processor",
        "decoder",
    ] {
        assert_eq!(written[key], original[key], "{key}");
    }
    let (w, o) = (&written["model"], &original["model"]);
    for key in [
        "type",
        "dropout",
        "unk_token",
        "fuse_unk",
        "byte_fallback",
        "ignore_merges",
        "vocab",
    ] {
        assert_eq!(w[key], o[key], "model.{key}");
    }
    assert_eq!(merge_pairs(w), merge_pairs(o), "model.merges");
}

#[test]
fn fixture_variants_round_trip() {
    let base = read_json(&smollm2_hf().join("tokenizer.json"));
    let file = fixture("tokenizer/variants.json");
    let variants = file["variants"].as_array().unwrap();
    assert!(variants.len() >= 10);
    for variant in variants {
        let name = variant["name"].as_str().unwrap();
        let tj = common::apply_tokenizer_variant(&base, variant);
        let original =
            Tokenizer::from_json_bytes(&serde_json::to_vec(&tj).unwrap(), Path::new(name)).unwrap();
        let back = json_round_trip(name, &original);
        for case in variant["cases"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            assert_eq!(back.encode(text), ids_of(&case["ids"]), "{name}: {text:?}");
        }
    }
}
