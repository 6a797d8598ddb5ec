//! Incremental decoding that never splits a UTF-8 character.

use super::Tokenizer;

/// Decodes token ids one at a time for streaming output.
///
/// A token can end in the middle of a multi-byte character (byte-level BPE
/// splits emoji and CJK characters across tokens). [`StreamDecoder::push`]
/// returns only complete characters and holds back an incomplete sequence
/// at the end until a later token completes it; [`StreamDecoder::finish`]
/// flushes whatever is left. Concatenating every `push` and the `finish`
/// gives exactly [`Tokenizer::decode`] of all the ids (invalid bytes become
/// U+FFFD the same way).
///
/// ```
/// # use microllm::tokenizer::StreamDecoder;
/// let mut stream = StreamDecoder::new();
/// // With a real tokenizer: for id in ids { print!("{}", stream.push(&tok, id)); }
/// assert_eq!(stream.finish(), "");
/// ```
#[derive(Debug, Clone, Default)]
pub struct StreamDecoder {
    /// Bytes received but not yet returned: at most the start of one
    /// incomplete character.
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// A decoder with nothing pending.
    pub fn new() -> StreamDecoder {
        StreamDecoder::default()
    }

    /// Adds the bytes of token `id` and returns the text now complete (may
    /// be empty). Ids out of range add nothing, as in `decode`.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> String {
        if let Some(bytes) = tokenizer.token_bytes(id) {
            self.pending.extend_from_slice(bytes);
        }
        self.take_complete()
    }

    /// Adds raw bytes (for callers that already have them) and returns the
    /// text now complete.
    pub fn push_bytes(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        self.take_complete()
    }

    /// True if bytes of an incomplete character are held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Returns everything held back, an incomplete character as U+FFFD, and
    /// resets the decoder.
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }

    /// Moves every complete character (and every invalid sequence, as
    /// U+FFFD) out of `pending`, keeping an incomplete tail.
    fn take_complete(&mut self) -> String {
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    out.push_str(text);
                    rest = &[];
                    break;
                }
                Err(error) => {
                    let (valid, after) = rest.split_at(error.valid_up_to());
                    // `valid` was just checked to be UTF-8.
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match error.error_len() {
                        // An invalid sequence: replaced, as `from_utf8_lossy` does.
                        Some(len) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[len..];
                        }
                        // The start of a character whose end has not come yet.
                        None => {
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        let kept = rest.len();
        let start = self.pending.len() - kept;
        self.pending.drain(..start);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_incomplete_characters() {
        let mut stream = StreamDecoder::new();
        let emoji = "🤗".as_bytes();
        assert_eq!(stream.push_bytes(b"hi "), "hi ");
        assert_eq!(stream.push_bytes(&emoji[..1]), "");
        assert_eq!(stream.push_bytes(&emoji[1..3]), "");
        assert!(stream.has_pending());
        assert_eq!(stream.push_bytes(&emoji[3..]), "🤗");
        assert!(!stream.has_pending());
        assert_eq!(stream.finish(), "");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut stream = StreamDecoder::new();
        assert_eq!(stream.push_bytes(b"a\xFFb"), "a\u{FFFD}b");
        // A lead byte followed by a non-continuation byte.
        assert_eq!(stream.push_bytes(b"\xE6"), "");
        assert_eq!(stream.push_bytes(b"x"), "\u{FFFD}x");
        // An incomplete character at the end.
        assert_eq!(stream.push_bytes(b"\xF0\x9F"), "");
        assert_eq!(stream.finish(), "\u{FFFD}");
    }

    proptest::proptest! {
        #[test]
        fn streaming_equals_lossy_decoding(chunks in proptest::collection::vec(
            proptest::collection::vec(proptest::num::u8::ANY, 0..6), 0..20)) {
            let mut stream = StreamDecoder::new();
            let mut streamed = String::new();
            for chunk in &chunks {
                streamed.push_str(&stream.push_bytes(chunk));
            }
            streamed.push_str(&stream.finish());
            let all: Vec<u8> = chunks.concat();
            proptest::prop_assert_eq!(streamed, String::from_utf8_lossy(&all).into_owned());
        }
    }
}
