//! decode(encode(text)) == text, and streaming decoding never splits a
//! character, with SmolLM2's real tokenizer (`models/`, fetched by
//! `scripts/fetch-models.sh`).

use microllm::tokenizer::{StreamDecoder, Tokenizer};
use proptest::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

fn tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("models/smollm2-135m-hf-f32/tokenizer.json");
        assert!(
            path.exists(),
            "{} is missing: run scripts/fetch-models.sh to download the models",
            path.display()
        );
        Tokenizer::from_json_file(&path).expect("tokenizer.json loads")
    })
}

#[test]
fn corpus_round_trips() {
    let corpus = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tokenizer/corpus.txt"),
    )
    .expect("corpus.txt");
    let tok = tokenizer();
    assert_eq!(tok.decode(&tok.encode(&corpus)), corpus);
}

/// Streams `ids` and returns the chunks `push` gave (plus `finish`'s).
fn stream_chunks(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
    let mut stream = StreamDecoder::new();
    let mut chunks: Vec<String> = ids.iter().map(|&id| stream.push(tok, id)).collect();
    chunks.push(stream.finish());
    chunks
}

#[test]
fn streaming_emoji_and_cjk_never_splits_a_character() {
    let tok = tokenizer();
    let text = "東京は日本の首都です。🤗🚀👍🏽 👨\u{200d}👩\u{200d}👧 Привет ∑ π ≈ naïve <|im_end|>";
    let ids = tok.encode(text);
    // The test only means something if some token ends mid-character.
    let split_tokens = ids
        .iter()
        .filter(|&&id| std::str::from_utf8(tok.token_bytes(id).expect("in range")).is_err())
        .count();
    assert!(
        split_tokens > 5,
        "only {split_tokens} tokens are partial characters"
    );

    let chunks = stream_chunks(tok, &ids);
    assert_eq!(chunks.concat(), text);
    for chunk in &chunks {
        assert!(
            !chunk.contains('\u{FFFD}'),
            "chunk {chunk:?} has a broken character"
        );
    }
    assert!(
        chunks.iter().any(String::is_empty),
        "some pushes must hold bytes back"
    );
    assert_eq!(
        chunks.last().map(String::as_str),
        Some(""),
        "nothing left at the end"
    );
    // Each chunk is the text of whole characters: the chunks cut the text
    // at character boundaries.
    let mut offset = 0;
    for chunk in &chunks {
        assert!(text.is_char_boundary(offset));
        assert_eq!(&text[offset..offset + chunk.len()], chunk);
        offset += chunk.len();
    }
}

#[test]
fn finish_flushes_an_incomplete_character_lossily() {
    let tok = tokenizer();
    let ids = tok.encode("🤗");
    assert!(ids.len() > 1, "the emoji takes several tokens: {ids:?}");
    let chunks = stream_chunks(tok, &ids[..ids.len() - 1]);
    assert!(chunks[..chunks.len() - 1].iter().all(String::is_empty));
    assert_eq!(chunks.last().map(String::as_str), Some("\u{FFFD}"));
}

/// GPT-2's byte-to-character map (the vocabulary's spelling of byte `b`).
fn byte_char(b: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        char::from(b)
    } else {
        let index = (0..b).filter(|&x| !printable(x)).count() as u32;
        char::from_u32(256 + index).expect("valid char")
    }
}

fn byte_has_token(tok: &Tokenizer, b: u8) -> bool {
    tok.token_to_id(&byte_char(b).to_string()).is_some()
}

#[test]
fn smollm2_lacks_some_byte_tokens_and_drops_those_bytes() {
    let tok = tokenizer();
    let missing: Vec<u8> = (0..=255u8).filter(|&b| !byte_has_token(tok, b)).collect();
    assert_eq!(
        missing,
        [
            0x04, 0x06, 0x13, 0x14, 0x16, 0x1D, 0xC0, 0xC1, 0xF1, 0xF2, 0xF5, 0xF6, 0xF7, 0xF8,
            0xF9, 0xFA, 0xFB, 0xFC, 0xFD, 0xFE, 0xFF
        ]
    );
    // U+40000 is F1 80 80 80: the reference gives [218, 218, 218] ("Ģ" x 3).
    assert_eq!(tok.encode("\u{40000}"), [218, 218, 218]);
    // The byte still ends the word "a" (it is punctuation to the pre-tokenizer).
    assert_eq!(tok.encode("a\u{4}b"), [81, 82]); // the reference's ids
}

/// Characters and pieces that exercise every pre-tokenizer class and the
/// added-token splitter.
const PIECES: &[&str] = &[
    "a",
    "Z",
    "é",
    "ß",
    "ſ",
    "東",
    "は",
    "ж",
    "ǅ",
    "0",
    "7",
    "٣",
    "²",
    "½",
    "Ⅻ",
    " ",
    " ",
    "  ",
    "\t",
    "\n",
    "\r\n",
    "\u{A0}",
    "\u{3000}",
    "\u{2028}",
    "'s",
    "'T",
    "'",
    "!",
    ".",
    "-",
    "(",
    "\u{301}",
    "\u{200D}",
    "\u{FE0F}",
    "🤗",
    "👍🏽",
    "<|im_start|>",
    "<|im_end|>",
    "<|im_",
    "<|endoftext|>",
    "\u{0}",
    "\u{7F}",
    "\u{FFFD}",
    "\u{10FFFF}",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn pieces_round_trip(parts in proptest::collection::vec(proptest::sample::select(PIECES), 0..30)) {
        let text = parts.concat();
        let tok = tokenizer();
        prop_assert_eq!(tok.decode(&tok.encode(&text)), text);
    }

    /// Any string comes back, except bytes the vocabulary has no token for,
    /// which encoding drops (as the reference does).
    #[test]
    fn any_string_round_trips(text in "\\PC{0,40}|[\\s\\S]{0,40}") {
        let tok = tokenizer();
        let kept: Vec<u8> = text.bytes().filter(|&b| byte_has_token(tok, b)).collect();
        prop_assert_eq!(tok.decode(&tok.encode(&text)), String::from_utf8_lossy(&kept));
    }

    #[test]
    fn streaming_equals_decode(parts in proptest::collection::vec(proptest::sample::select(PIECES), 0..20),
                               ids in proptest::collection::vec(0u32..49152, 0..20)) {
        let tok = tokenizer();
        // Ids of real text, then arbitrary ids (which may be invalid UTF-8).
        let text = parts.concat();
        let encoded = tok.encode(&text);
        prop_assert_eq!(stream_chunks(tok, &encoded).concat(), text);
        prop_assert_eq!(stream_chunks(tok, &ids).concat(), tok.decode(&ids));
    }
}
