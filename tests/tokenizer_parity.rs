//! Parity with Hugging Face `tokenizers` on SmolLM2's tokenizer, loaded both
//! from `tokenizer.json` and from the GGUF metadata it was made from.
//!
//! Expected ids come from the reference (`fixtures/golden/`, and
//! `fixtures/tokenizer/` written by `scripts/make-tokenizer-fixtures.py`).
//! The model files come from `models/` (`scripts/fetch-models.sh`).

mod common;

use common::{fixture, ids_of, read_json};

use microllm::tokenizer::{Tokenizer, TokenizerParts};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A file under `models/`; fails the test if it is missing.
fn model_file(relative: &str) -> PathBuf {
    let path = repo().join("models").join(relative);
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-models.sh to download the models",
        path.display()
    );
    path
}

fn json_tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let path = model_file("smollm2-135m-hf-f32/tokenizer.json");
        Tokenizer::from_json_file(&path).expect("tokenizer.json loads")
    })
}

fn gguf_tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let path = model_file("SmolLM2-135M-Instruct.Q4_1.gguf");
        let parts =
            gguf::read_tokenizer_parts(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Tokenizer::from_gguf_parts(parts, &path).expect("GGUF tokenizer builds")
    })
}

/// Both tokenizers, named for messages.
fn tokenizers() -> [(&'static str, &'static Tokenizer); 2] {
    [
        ("tokenizer.json", json_tokenizer()),
        ("gguf", gguf_tokenizer()),
    ]
}

/// Checks every (text, ids) case with both tokenizers; reports all
/// mismatches at once.
fn check_cases(what: &str, cases: &[(String, Vec<u32>)]) {
    for (source, tok) in tokenizers() {
        let failures: Vec<String> = cases
            .iter()
            .filter_map(|(text, expected)| {
                let got = tok.encode(text);
                (got != *expected)
                    .then(|| format!("  {text:?}\n    expected {expected:?}\n    got      {got:?}"))
            })
            .collect();
        assert!(
            failures.is_empty(),
            "{what} ({source}): {} of {} cases differ:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n")
        );
    }
}

#[test]
fn golden_cases_match() {
    let dir = repo().join("fixtures/golden/smollm2-135m-instruct");
    let mut cases = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("golden dir") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let case = read_json(&path);
            if let (Some(text), Some(ids)) = (case["text"].as_str(), case.get("token_ids")) {
                cases.push((text.to_string(), ids_of(ids)));
            }
        }
    }
    assert_eq!(cases.len(), 8, "golden cases with token_ids");
    check_cases("golden", &cases);
}

#[test]
fn tokenizer_cases_match() {
    let file = fixture("golden/smollm2-135m-instruct/tokenizer_cases.json");
    let cases: Vec<(String, Vec<u32>)> = file["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            (
                c["text"].as_str().expect("text").to_string(),
                ids_of(&c["ids"]),
            )
        })
        .collect();
    assert_eq!(cases.len(), 30);
    check_cases("tokenizer_cases.json", &cases);
    // The reference decodes them back to the same text.
    for (text, ids) in &cases {
        assert_eq!(json_tokenizer().decode(ids), *text);
    }
}

#[test]
fn hard_cases_match() {
    let file = fixture("tokenizer/hard_cases.json");
    let cases: Vec<(String, Vec<u32>)> = file["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            (
                c["text"].as_str().expect("text").to_string(),
                ids_of(&c["ids"]),
            )
        })
        .collect();
    assert!(cases.len() > 400);
    check_cases("hard_cases.json", &cases);
}

#[test]
fn corpus_matches() {
    let corpus =
        std::fs::read_to_string(repo().join("fixtures/tokenizer/corpus.txt")).expect("corpus.txt");
    let expected = fixture("tokenizer/corpus_ids.json");
    let whole = ids_of(&expected["ids"]);

    // Paragraph by paragraph first, so a mismatch is easy to find.
    let paragraphs: Vec<(String, Vec<u32>)> = expected["paragraphs"]
        .as_array()
        .expect("paragraphs")
        .iter()
        .map(|p| {
            let start = p["start"].as_u64().expect("start") as usize;
            let end = p["end"].as_u64().expect("end") as usize;
            (corpus[start..end].to_string(), ids_of(&p["ids"]))
        })
        .collect();
    check_cases("corpus paragraphs", &paragraphs);

    for (source, tok) in tokenizers() {
        // Warm up once (page in the tables), then time.
        let _ = tok.encode(&corpus[..1000]);
        let started = Instant::now();
        let got = tok.encode(&corpus);
        let elapsed = started.elapsed();
        let matched = got.iter().zip(&whole).take_while(|(a, b)| a == b).count();
        println!(
            "corpus ({source}): {} bytes → {} tokens in {:.1} ms; {matched} of {} reference tokens match",
            corpus.len(),
            got.len(),
            elapsed.as_secs_f64() * 1e3,
            whole.len()
        );
        assert_eq!(got.len(), whole.len(), "{source}: token count");
        assert_eq!(
            matched,
            whole.len(),
            "{source}: first mismatch at token {matched}"
        );
        assert_eq!(tok.decode(&got), corpus, "{source}: round trip");
    }
}

/// The variants patch the real tokenizer.json the way the fixture script
/// did, then must give the reference's ids.
#[test]
fn tokenizer_json_variants_match() {
    let base = read_json(&model_file("smollm2-135m-hf-f32/tokenizer.json"));
    let file = fixture("tokenizer/variants.json");
    let dir = std::env::temp_dir().join(format!("microllm-tok-variants-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let variants = file["variants"].as_array().expect("variants");
    assert!(variants.len() >= 10);
    for variant in variants {
        let name = variant["name"].as_str().expect("name");
        let tj = common::apply_tokenizer_variant(&base, variant);
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_vec(&tj).expect("json")).expect("write variant");
        let tok = Tokenizer::from_json_file(&path)
            .unwrap_or_else(|e| panic!("variant {name} does not load: {e}"));
        let failures: Vec<String> = variant["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .filter_map(|case| {
                let text = case["text"].as_str().expect("text");
                let expected = ids_of(&case["ids"]);
                let got = tok.encode(text);
                (got != expected)
                    .then(|| format!("  {text:?}\n    expected {expected:?}\n    got      {got:?}"))
            })
            .collect();
        assert!(
            failures.is_empty(),
            "variant {name}: {} cases differ:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gguf_and_json_tokenizers_agree_on_every_id() {
    let (json, gguf) = (json_tokenizer(), gguf_tokenizer());
    assert_eq!(json.vocab_size(), 49152);
    assert_eq!(gguf.vocab_size(), 49152);
    for id in 0..49152u32 {
        assert_eq!(json.id_to_token(id), gguf.id_to_token(id), "id {id}");
        assert_eq!(json.token_bytes(id), gguf.token_bytes(id), "id {id}");
        assert_eq!(json.is_special(id), gguf.is_special(id), "id {id}");
    }
    assert_eq!(json.id_to_token(49152), None);
    let specials: Vec<_> = json.special_tokens().collect();
    assert_eq!(specials, gguf.special_tokens().collect::<Vec<_>>());
    assert_eq!(specials.len(), 17);
    assert!(specials.contains(&("<|im_end|>", 2)));
    assert!(specials.contains(&("<|endoftext|>", 0)));
    assert_eq!(json.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(json.token_to_id("Ġthe"), Some(260));
    assert_eq!(json.token_bytes(260), Some(&b" the"[..]));
}

/// A minimal GGUF metadata reader: just the `tokenizer.ggml.*` keys this
/// test needs (the product's GGUF reader is developed separately).
mod gguf {
    use super::*;

    type Res<T> = Result<T, String>;

    struct Reader<R: Read> {
        inner: R,
    }

    impl<R: Read> Reader<R> {
        fn bytes<const N: usize>(&mut self) -> Res<[u8; N]> {
            let mut buf = [0u8; N];
            self.inner.read_exact(&mut buf).map_err(|e| e.to_string())?;
            Ok(buf)
        }
        fn u32(&mut self) -> Res<u32> {
            Ok(u32::from_le_bytes(self.bytes()?))
        }
        fn u64(&mut self) -> Res<u64> {
            Ok(u64::from_le_bytes(self.bytes()?))
        }
        fn string(&mut self) -> Res<String> {
            let len = self.u64()? as usize;
            if len > 1 << 24 {
                return Err(format!("string of {len} bytes"));
            }
            let mut buf = vec![0u8; len];
            self.inner.read_exact(&mut buf).map_err(|e| e.to_string())?;
            String::from_utf8(buf).map_err(|e| e.to_string())
        }
        /// Reads one value of GGUF type `kind`.
        fn value(&mut self, kind: u32) -> Res<Gv> {
            Ok(match kind {
                0 | 1 | 7 => Gv::Int(i64::from(self.bytes::<1>()?[0])),
                2 | 3 => Gv::Int(i64::from(u16::from_le_bytes(self.bytes()?))),
                4 => Gv::Int(i64::from(self.u32()?)),
                5 => Gv::Int(i64::from(i32::from_le_bytes(self.bytes()?))),
                6 => Gv::Other(self.bytes::<4>().map(|_| ())?),
                8 => Gv::Str(self.string()?),
                9 => {
                    let elem = self.u32()?;
                    let count = self.u64()?;
                    let mut items = Vec::new();
                    for _ in 0..count {
                        items.push(self.value(elem)?);
                    }
                    Gv::Array(items)
                }
                10 | 11 => Gv::Int(self.u64()? as i64),
                12 => Gv::Other(self.bytes::<8>().map(|_| ())?),
                other => return Err(format!("unknown GGUF value type {other}")),
            })
        }
    }

    enum Gv {
        Int(i64),
        Str(String),
        Array(Vec<Gv>),
        Other(()),
    }

    fn strings(v: Gv) -> Res<Vec<String>> {
        match v {
            Gv::Array(items) => items
                .into_iter()
                .map(|i| match i {
                    Gv::Str(s) => Ok(s),
                    _ => Err("expected strings".to_string()),
                })
                .collect(),
            _ => Err("expected an array".into()),
        }
    }

    pub fn read_tokenizer_parts(path: &Path) -> Res<TokenizerParts> {
        let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let mut r = Reader {
            inner: BufReader::with_capacity(1 << 20, file),
        };
        if &r.bytes::<4>()? != b"GGUF" {
            return Err("not a GGUF file".into());
        }
        let version = r.u32()?;
        if version < 2 {
            return Err(format!("GGUF version {version} not handled"));
        }
        let _tensors = r.u64()?;
        let kv_count = r.u64()?;
        let mut parts = TokenizerParts::default();
        for _ in 0..kv_count {
            let key = r.string()?;
            let kind = r.u32()?;
            let value = r.value(kind)?;
            match key.as_str() {
                "tokenizer.ggml.tokens" => parts.tokens = strings(value)?,
                "tokenizer.ggml.merges" => parts.merges = strings(value)?,
                "tokenizer.ggml.pre" => {
                    if let Gv::Str(s) = value {
                        parts.pre = s;
                    }
                }
                "tokenizer.ggml.token_type" => {
                    if let Gv::Array(items) = value {
                        parts.token_types = items
                            .into_iter()
                            .map(|i| match i {
                                Gv::Int(n) => Ok(n as i32),
                                _ => Err("token_type: expected integers".to_string()),
                            })
                            .collect::<Res<_>>()?;
                    }
                }
                _ => {}
            }
        }
        Ok(parts)
    }
}
