//! The `microllm-bpe` binary tokenizer section: a tokenizer written with
//! `to_binary` and read back with `from_binary` is the same tokenizer (the
//! reference's ids on every fixture, the same answers for every id), for
//! SmolLM2's tokenizer built from `tokenizer.json` and from the GGUF; `.mllm`
//! files are written with it and the older kinds still load; a damaged
//! section is an error naming the file.
//!
//! Needs `models/` (`scripts/fetch-models.sh`).

mod common;

use common::*;
use microllm::convert::{convert, recipe};
use microllm::format::{MllmFile, MllmWriter, TensorType, TokenizerKind};
use microllm::tokenizer::Tokenizer;
use microllm::Model;
use proptest::prelude::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

fn json_tokenizer() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        Tokenizer::from_json_file(&smollm2_hf().join("tokenizer.json")).expect("tokenizer.json")
    })
}

fn gguf_tokenizer() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let path = smollm2_gguf();
        let file = microllm::gguf::GgufFile::open(&path).expect("GGUF opens");
        let parts = microllm::gguf::tokenizer_parts(file.header()).expect("tokenizer parts");
        Tokenizer::from_gguf_parts(parts, &path).expect("GGUF tokenizer builds")
    })
}

/// Writes `tok` in binary and reads it back, timing the read.
fn round_trip(what: &str, tok: &Tokenizer) -> Tokenizer {
    let bytes = tok.to_binary();
    let started = Instant::now();
    let back = Tokenizer::from_binary(&bytes, Path::new("x.mllm")).expect("reads back");
    println!(
        "{what}: {} bytes in binary, read back in {:.2} ms (first read: cold caches)",
        bytes.len(),
        started.elapsed().as_secs_f64() * 1e3
    );
    back
}

fn json_binary() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| round_trip("tokenizer.json", json_tokenizer()))
}

fn gguf_binary() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| round_trip("gguf", gguf_tokenizer()))
}

/// (name, original, read back from binary).
fn pairs() -> [(&'static str, &'static Tokenizer, &'static Tokenizer); 2] {
    [
        ("tokenizer.json", json_tokenizer(), json_binary()),
        ("gguf", gguf_tokenizer(), gguf_binary()),
    ]
}

/// Every case must give the reference's ids from the binary tokenizer
/// (and so the same as the original, which the parity tests check).
fn check_cases(what: &str, cases: &[(String, Vec<u32>)]) {
    for (source, original, binary) in pairs() {
        let failures: Vec<String> = cases
            .iter()
            .filter_map(|(text, expected)| {
                let got = binary.encode(text);
                let orig = original.encode(text);
                (got != *expected || orig != got).then(|| {
                    format!("  {text:?}\n    expected {expected:?}\n    binary   {got:?}\n    original {orig:?}")
                })
            })
            .collect();
        assert!(
            failures.is_empty(),
            "{what} ({source}, binary): {} of {} cases differ:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n")
        );
    }
}

fn text_cases(file: &Value, ids_key: &str) -> Vec<(String, Vec<u32>)> {
    file["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            (
                c["text"].as_str().expect("text").to_string(),
                ids_of(&c[ids_key]),
            )
        })
        .collect()
}

#[test]
fn golden_cases_match() {
    let dir = root().join("fixtures/golden/smollm2-135m-instruct");
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

    let cases = text_cases(
        &fixture("golden/smollm2-135m-instruct/tokenizer_cases.json"),
        "ids",
    );
    assert_eq!(cases.len(), 30);
    check_cases("tokenizer_cases.json", &cases);
    for (_, _, binary) in pairs() {
        for (text, ids) in &cases {
            assert_eq!(binary.decode(ids), *text);
        }
    }

    let cases = text_cases(&fixture("tokenizer/hard_cases.json"), "ids");
    assert!(cases.len() > 400);
    check_cases("hard_cases.json", &cases);
}

#[test]
fn corpus_matches() {
    let corpus =
        std::fs::read_to_string(root().join("fixtures/tokenizer/corpus.txt")).expect("corpus.txt");
    let expected = fixture("tokenizer/corpus_ids.json");
    let whole = ids_of(&expected["ids"]);
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
    for (source, original, binary) in pairs() {
        let started = Instant::now();
        let got = binary.encode(&corpus);
        let elapsed = started.elapsed();
        println!(
            "corpus ({source}, binary): {} bytes → {} tokens in {:.1} ms",
            corpus.len(),
            got.len(),
            elapsed.as_secs_f64() * 1e3
        );
        assert_eq!(got, whole, "{source}: binary tokenizer on the whole corpus");
        assert_eq!(original.encode(&corpus), got, "{source}");
        assert_eq!(binary.decode(&got), corpus, "{source}: round trip");
    }
}

#[test]
fn every_id_answers_the_same() {
    for (source, original, binary) in pairs() {
        assert_eq!(binary.vocab_size(), 49152, "{source}");
        assert_eq!(original.vocab_size(), binary.vocab_size(), "{source}");
        let n = binary.vocab_size() as u32;
        for id in 0..n + 2 {
            let text = binary.id_to_token(id);
            assert_eq!(original.id_to_token(id), text, "{source}: id {id}");
            assert_eq!(
                original.token_bytes(id),
                binary.token_bytes(id),
                "{source}: id {id}"
            );
            assert_eq!(
                original.is_special(id),
                binary.is_special(id),
                "{source}: id {id}"
            );
            assert_eq!(
                original.is_added(id),
                binary.is_added(id),
                "{source}: id {id}"
            );
            assert_eq!(
                original.decode(&[id]),
                binary.decode(&[id]),
                "{source}: id {id}"
            );
            if let Some(text) = text {
                assert_eq!(binary.token_to_id(text), Some(id), "{source}: {text:?}");
                assert_eq!(original.token_to_id(text), Some(id), "{source}: {text:?}");
            }
        }
        let all: Vec<u32> = (0..n).collect();
        assert_eq!(original.decode(&all), binary.decode(&all), "{source}");
        assert!(
            original.added_tokens().eq(binary.added_tokens()),
            "{source}"
        );
        let specials: Vec<_> = binary.special_tokens().collect();
        assert_eq!(specials, original.special_tokens().collect::<Vec<_>>());
        assert_eq!(specials.len(), 17);
        assert!(specials.contains(&("<|im_end|>", 2)));
        for missing in ["", "Ġthe ", "<|im_end|", "not a token at all"] {
            assert_eq!(binary.token_to_id(missing), None, "{source}: {missing:?}");
        }
    }
    assert_eq!(json_binary().token_to_id("Ġthe"), Some(260));
}

#[test]
fn writing_is_deterministic_and_both_sources_agree() {
    let json = json_tokenizer().to_binary();
    assert_eq!(
        json_binary().to_binary(),
        json,
        "tokenizer.json, written again"
    );
    let gguf = gguf_tokenizer().to_binary();
    assert_eq!(gguf_binary().to_binary(), gguf, "gguf, written again");
    // SmolLM2's tokenizer.json and the GGUF made from it describe the same
    // tokenizer, down to every table.
    assert!(
        json == gguf,
        "the two sources give different binary sections"
    );
}

/// The fixture variants of tokenizer.json (other pre-tokenizers, merges as
/// pairs, ignore_merges, added tokens with options) give the reference's
/// ids after a round trip through binary.
#[test]
fn tokenizer_json_variants_match() {
    let base = read_json(&smollm2_hf().join("tokenizer.json"));
    let file = fixture("tokenizer/variants.json");
    let variants = file["variants"].as_array().expect("variants");
    assert!(variants.len() >= 10);
    for variant in variants {
        let name = variant["name"].as_str().expect("name");
        let tj = common::apply_tokenizer_variant(&base, variant);
        let bytes = serde_json::to_vec(&tj).expect("json");
        let original = Tokenizer::from_json_bytes(&bytes, Path::new(name))
            .unwrap_or_else(|e| panic!("variant {name} does not load: {e}"));
        let section = original.to_binary();
        let tok = Tokenizer::from_binary(&section, Path::new(name)).expect("reads back");
        assert_eq!(tok.to_binary(), section, "variant {name}");
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
            "variant {name} (binary): {} cases differ:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------
// .mllm files

fn tokenizer_kind(path: &Path) -> TokenizerKind {
    MllmFile::open(path)
        .expect("opens")
        .metadata()
        .tokenizer
        .kind
}

/// `file` rewritten with another tokenizer section (same metadata and
/// tensors otherwise), as an older microllm wrote it.
fn with_tokenizer(file: &Path, kind: TokenizerKind, section: &[u8], out: &Path) {
    let f = MllmFile::open(file).expect("opens");
    let mut meta = f.metadata().clone();
    meta.tokenizer.kind = kind;
    let mut w = MllmWriter::new(meta, section);
    for t in f.tensors() {
        let view = f.tensor(&t.name).expect("listed");
        w.add_tensor(t.name.clone(), t.ty, &t.shape, view.bytes)
            .expect("tensor");
    }
    w.write(out).expect("written");
}

#[test]
fn convert_writes_binary_from_every_source_and_old_kinds_still_load() {
    let dir = tiny_llama_folder("tokbin", |_| {});
    let r = recipe(TensorType::Q8, None, true, &[]);
    let text = "<|im_start|>user\nHello, wörld! 12345 東京 🤗<|im_end|>\n";
    let expected = json_tokenizer().encode(text);
    let section = json_tokenizer().to_binary();

    // From a Hugging Face folder.
    let from_hf = dir.join("from-hf.mllm");
    convert(&dir, &from_hf, &r, |_, _, _| {}).expect("converts");
    assert_eq!(tokenizer_kind(&from_hf), TokenizerKind::Binary);
    assert_eq!(
        MllmFile::open(&from_hf).unwrap().tokenizer_bytes(),
        &section[..]
    );
    assert_eq!(
        Model::load(&from_hf).unwrap().tokenizer().encode(text),
        expected
    );

    // Files with the older kinds load, and convert to the same binary section.
    let tokenizer_json = std::fs::read(dir.join("tokenizer.json")).unwrap();
    let gguf_parts = {
        let file = microllm::gguf::GgufFile::open(&smollm2_gguf()).unwrap();
        microllm::format::encode_tokenizer_parts(
            &microllm::gguf::tokenizer_parts(file.header()).unwrap(),
        )
    };
    for (kind, old_section) in [
        (TokenizerKind::HfJson, tokenizer_json),
        (TokenizerKind::GgufParts, gguf_parts),
    ] {
        let old = dir.join(format!("old-{kind:?}.mllm"));
        with_tokenizer(&from_hf, kind, &old_section, &old);
        assert_eq!(tokenizer_kind(&old), kind);
        assert_eq!(
            Model::load(&old).unwrap().tokenizer().encode(text),
            expected,
            "{kind:?}"
        );
        let again = dir.join(format!("again-{kind:?}.mllm"));
        convert(&old, &again, &r, |_, _, _| {}).expect("converts");
        assert_eq!(tokenizer_kind(&again), TokenizerKind::Binary);
        assert_eq!(
            MllmFile::open(&again).unwrap().tokenizer_bytes(),
            &section[..],
            "{kind:?}"
        );
    }

    // From a .mllm that already has a binary section: the same bytes.
    let from_mllm = dir.join("from-mllm.mllm");
    convert(&from_hf, &from_mllm, &r, |_, _, _| {}).expect("converts");
    assert_eq!(
        MllmFile::open(&from_mllm).unwrap().tokenizer_bytes(),
        &section[..]
    );

    // From a GGUF (the small fixture, with its own tokenizer).
    let gguf = root().join("fixtures/gguf/tiny-llama.gguf");
    let from_gguf = dir.join("from-gguf.mllm");
    convert(
        &gguf,
        &from_gguf,
        &recipe(TensorType::F32, None, false, &[]),
        |_, _, _| {},
    )
    .expect("converts");
    assert_eq!(tokenizer_kind(&from_gguf), TokenizerKind::Binary);
    let source = Model::load(&gguf).unwrap();
    let loaded = Model::load(&from_gguf).unwrap();
    assert_eq!(
        MllmFile::open(&from_gguf).unwrap().tokenizer_bytes(),
        &source.tokenizer().to_binary()[..]
    );
    for id in 0..source.tokenizer().vocab_size() as u32 {
        assert_eq!(
            loaded.tokenizer().id_to_token(id),
            source.tokenizer().id_to_token(id)
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

// ---------------------------------------------------------------------------
// Damage

fn smollm2_section() -> &'static [u8] {
    static S: OnceLock<Vec<u8>> = OnceLock::new();
    S.get_or_init(|| json_tokenizer().to_binary())
}

fn assert_named_error(bytes: &[u8], what: &str) {
    let path = PathBuf::from("/models/damaged.mllm");
    match Tokenizer::from_binary(bytes, &path) {
        Ok(_) => panic!("{what}: a damaged section was accepted"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("damaged.mllm") && msg.contains("tokenizer section"),
                "{what}: {msg}"
            );
        }
    }
}

#[test]
fn damage_at_every_region_is_an_error() {
    let good = smollm2_section();
    // Every byte of the header, then a spread over the whole section.
    let step = good.len() / 997;
    let positions = (0..64).chain((64..good.len()).step_by(step));
    for i in positions {
        let mut b = good.to_vec();
        b[i] ^= 0x20;
        assert_named_error(&b, &format!("byte {i} changed"));
    }
    for len in [
        0,
        1,
        4,
        8,
        15,
        16,
        63,
        64,
        1000,
        good.len() / 2,
        good.len() - 1,
    ] {
        assert_named_error(&good[..len], &format!("cut to {len} bytes"));
    }
    let mut longer = good.to_vec();
    longer.push(0);
    assert_named_error(&longer, "one byte more");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Any changed bytes, or a truncation: an error naming the file.
    #[test]
    fn flipped_or_truncated_sections_are_errors(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..5),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let mut b = smollm2_section().to_vec();
        for (at, x) in &edits {
            let i = at.index(b.len());
            b[i] ^= x;
        }
        if let Some(cut) = cut {
            b.truncate(cut.index(b.len()));
        }
        // Edits may cancel out (the same byte twice); then the section is whole.
        if b != smollm2_section() {
            assert_named_error(&b, "damaged section");
        }
    }
}

/// The load-time figures (tests are built optimised; see them with
/// `cargo test --test tokenizer_binary -- --nocapture load_time`).
#[test]
fn load_time_and_first_encode() {
    let section = smollm2_section();
    let path = Path::new("x.mllm");
    let mut times = Vec::new();
    let mut first = Vec::new();
    for _ in 0..7 {
        let started = Instant::now();
        let tok = Tokenizer::from_binary(section, path).expect("reads");
        times.push(started.elapsed().as_secs_f64() * 1e3);
        let started = Instant::now();
        let ids = tok.encode("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n");
        first.push(started.elapsed().as_secs_f64() * 1e3);
        assert_eq!(ids.len(), 12);
    }
    times.sort_by(f64::total_cmp);
    first.sort_by(f64::total_cmp);
    println!(
        "from_binary: median {:.2} ms (min {:.2}); first encode median {:.3} ms",
        times[3], times[0], first[3]
    );
}
