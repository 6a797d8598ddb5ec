//! Malformed or unsupported `tokenizer.json` files give one clear error
//! naming the file (never a panic).

use microllm::tokenizer::Tokenizer;
use microllm::Error;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// A small valid byte-level BPE tokenizer.json.
fn valid() -> Value {
    json!({
        "version": "1.0",
        "added_tokens": [
            {"id": 0, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
             "rstrip": false, "normalized": false, "special": true}
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": {"<|endoftext|>": 0, "a": 1, "b": 2, "ab": 3, "Ġ": 4, "Ġab": 5},
            "merges": ["a b", "Ġ ab"]
        }
    })
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("microllm-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
    fn write(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Loads `contents` from a file called `name` and expects a format error
/// naming the file and containing `expected`.
fn expect_error(dir: &TempDir, name: &str, contents: &[u8], expected: &str) {
    let path = dir.write(name, contents);
    let err = match Tokenizer::from_json_file(&path) {
        Ok(_) => panic!("{name}: loaded, expected an error containing {expected:?}"),
        Err(e) => e,
    };
    assert!(matches!(err, Error::Format { .. }), "{name}: {err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "{name}: error does not name the file: {msg}"
    );
    assert!(
        msg.contains(expected),
        "{name}: expected {expected:?} in: {msg}"
    );
}

fn with(edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut tj = valid();
    edit(&mut tj);
    serde_json::to_vec(&tj).expect("json")
}

#[test]
fn the_valid_base_loads_and_encodes() {
    let dir = TempDir::new("tok-valid");
    let path = dir.write("ok.json", &with(|_| {}));
    let tok = Tokenizer::from_json_file(&path).expect("valid");
    assert_eq!(tok.encode("ab ab<|endoftext|>b"), [3, 5, 0, 2]);
    assert_eq!(tok.vocab_size(), 6);
    // Characters missing from this tiny vocabulary are dropped, as HF does.
    assert_eq!(tok.encode("xa"), [1]);
}

#[test]
fn malformed_files_are_errors_naming_the_file() {
    let dir = TempDir::new("tok-errors");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not_json.json", b"{\"model\": ".to_vec(), "not valid JSON"),
        ("empty.json", Vec::new(), "not valid JSON"),
        ("array.json", b"[1, 2]".to_vec(), "expected a JSON object"),
        (
            "no_model.json",
            with(|t| {
                t.as_object_mut().unwrap().remove("model");
            }),
            "missing \"model\"",
        ),
        (
            "wordpiece.json",
            with(|t| t["model"]["type"] = json!("WordPiece")),
            "model type \"WordPiece\"",
        ),
        (
            "no_vocab.json",
            with(|t| {
                t["model"].as_object_mut().unwrap().remove("vocab");
            }),
            "model.vocab",
        ),
        (
            "vocab_list.json",
            with(|t| t["model"]["vocab"] = json!(["a"])),
            "model.vocab",
        ),
        (
            "no_merges.json",
            with(|t| {
                t["model"].as_object_mut().unwrap().remove("merges");
            }),
            "model.merges",
        ),
        (
            "negative_id.json",
            with(|t| t["model"]["vocab"]["a"] = json!(-1)),
            "id of \"a\"",
        ),
        (
            "string_id.json",
            with(|t| t["model"]["vocab"]["a"] = json!("1")),
            "id of \"a\"",
        ),
        (
            "duplicate_id.json",
            with(|t| t["model"]["vocab"]["b"] = json!(1)),
            "vocabulary id 1 is given to both",
        ),
        (
            "id_out_of_range.json",
            with(|t| t["model"]["vocab"]["ab"] = json!(60)),
            "out of range",
        ),
        (
            "merge_unknown.json",
            with(|t| t["model"]["merges"] = json!(["a c"])),
            "\"c\" is not in the vocabulary",
        ),
        (
            "merge_result_unknown.json",
            with(|t| t["model"]["merges"] = json!(["b a"])),
            "\"ba\" is not in the vocabulary",
        ),
        (
            "merge_three_parts.json",
            with(|t| t["model"]["merges"] = json!(["a b c"])),
            "model.merges[0]",
        ),
        (
            "merge_bad_pair.json",
            with(|t| t["model"]["merges"] = json!([["a"]])),
            "model.merges[0]",
        ),
        (
            "merge_number.json",
            with(|t| t["model"]["merges"] = json!([7])),
            "model.merges[0]",
        ),
        (
            "added_wrong_id.json",
            with(|t| t["added_tokens"][0]["id"] = json!(3)),
            "should have id 0",
        ),
        (
            "added_new_wrong_id.json",
            with(|t| t["added_tokens"] = json!([{"id": 9, "content": "<x>", "special": true}])),
            "should have id 6",
        ),
        (
            "added_empty.json",
            with(|t| t["added_tokens"][0]["content"] = json!("")),
            "empty content",
        ),
        (
            "added_twice.json",
            with(|t| {
                let first = t["added_tokens"][0].clone();
                t["added_tokens"].as_array_mut().unwrap().push(first);
            }),
            "declared twice",
        ),
        (
            "added_no_id.json",
            with(|t| {
                t["added_tokens"][0].as_object_mut().unwrap().remove("id");
            }),
            "added_tokens[0]",
        ),
        (
            "added_flag_type.json",
            with(|t| t["added_tokens"][0]["lstrip"] = json!("yes")),
            "added_tokens[0].lstrip",
        ),
        (
            "normalizer.json",
            with(|t| t["normalizer"] = json!({"type": "NFC"})),
            "normalizer type \"NFC\"",
        ),
        (
            "no_pre.json",
            with(|t| t["pre_tokenizer"] = Value::Null),
            "no pre_tokenizer",
        ),
        (
            "metaspace.json",
            with(|t| t["pre_tokenizer"] = json!({"type": "Metaspace"})),
            "pre_tokenizer type \"Metaspace\"",
        ),
        (
            "digits_only.json",
            with(|t| t["pre_tokenizer"] = json!({"type": "Digits", "individual_digits": true})),
            "no ByteLevel step",
        ),
        (
            "after_bytelevel.json",
            with(|t| {
                t["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [
            {"type": "ByteLevel"}, {"type": "Digits", "individual_digits": true}]})
            }),
            "after ByteLevel",
        ),
        (
            "split_regex.json",
            with(|t| {
                t["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "use_regex": false}]})
            }),
            "Split with regex",
        ),
        (
            "split_removed.json",
            with(|t| {
                t["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"},
             "behavior": "Removed", "invert": false},
            {"type": "ByteLevel", "use_regex": false}]})
            }),
            "behavior \"Removed\"",
        ),
        (
            "split_string.json",
            with(|t| {
                t["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"String": " "}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel"}]})
            }),
            "Split on the string",
        ),
        (
            "decoder.json",
            with(|t| t["decoder"] = json!({"type": "WordPiece"})),
            "decoder type \"WordPiece\"",
        ),
        (
            "dropout.json",
            with(|t| t["model"]["dropout"] = json!(0.1)),
            "dropout",
        ),
        (
            "prefix.json",
            with(|t| t["model"]["continuing_subword_prefix"] = json!("##")),
            "continuing_subword_prefix",
        ),
        (
            "unk.json",
            with(|t| t["model"]["unk_token"] = json!("<unk>")),
            "unk_token \"<unk>\" is not in the vocabulary",
        ),
        (
            "fuse_type.json",
            with(|t| t["model"]["fuse_unk"] = json!(1)),
            "model.fuse_unk",
        ),
        (
            "empty_vocab.json",
            with(|t| {
                t["model"]["vocab"] = json!({});
                t["model"]["merges"] = json!([]);
                t["added_tokens"] = json!([]);
            }),
            "vocabulary is empty",
        ),
    ];
    for (name, contents, expected) in &cases {
        expect_error(&dir, name, contents, expected);
    }
}

#[test]
fn a_truncated_real_tokenizer_json_is_an_error() {
    let real =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/smollm2-135m-hf-f32/tokenizer.json");
    assert!(
        real.exists(),
        "{} is missing: run scripts/fetch-models.sh to download the models",
        real.display()
    );
    let bytes = std::fs::read(&real).expect("read tokenizer.json");
    let dir = TempDir::new("tok-truncated");
    for cut in [1, bytes.len() / 3, bytes.len() - 2] {
        expect_error(
            &dir,
            &format!("cut{cut}.json"),
            &bytes[..cut],
            "not valid JSON",
        );
    }
}

#[test]
fn a_missing_file_is_an_io_error_naming_it() {
    let path = Path::new("/nonexistent/dir/tokenizer.json");
    let err = Tokenizer::from_json_file(path).expect_err("missing file");
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/dir/tokenizer.json"));
}
