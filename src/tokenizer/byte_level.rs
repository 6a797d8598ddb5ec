//! GPT-2's reversible map between bytes and printable characters.
//!
//! Byte-level BPE vocabularies are written as strings in which every byte of
//! the UTF-8 text is replaced by one printable character (a space becomes
//! `Ġ`, a newline `Ċ`), so that a vocabulary can be stored as JSON/GGUF
//! strings even for tokens that are not valid UTF-8 on their own.

/// The character standing for each byte (GPT-2's `bytes_to_unicode`).
///
/// Printable Latin-1 bytes (`!`..=`~`, `¡`..=`¬`, `®`..=`ÿ`) stand for
/// themselves; the other 68 bytes, in increasing order, take the characters
/// U+0100, U+0101, ... .
pub(crate) const BYTE_TO_CHAR: [char; 256] = build_byte_to_char();

/// One more than the largest character in [`BYTE_TO_CHAR`].
const CHAR_LIMIT: usize = 256 + 68;

/// The byte each character of [`BYTE_TO_CHAR`] stands for, by code point.
const CHAR_TO_BYTE: [Option<u8>; CHAR_LIMIT] = build_char_to_byte();

const fn stands_for_itself(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

const fn build_byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next_extra = 0u32;
    let mut b = 0usize;
    while b < 256 {
        let code = if stands_for_itself(b as u8) {
            b as u32
        } else {
            next_extra += 1;
            255 + next_extra
        };
        table[b] = match char::from_u32(code) {
            Some(c) => c,
            None => '\0', // unreachable: every code here is below 0x144
        };
        b += 1;
    }
    table
}

const fn build_char_to_byte() -> [Option<u8>; CHAR_LIMIT] {
    let mut table = [None; CHAR_LIMIT];
    let forward = build_byte_to_char();
    let mut b = 0usize;
    while b < 256 {
        table[forward[b] as usize] = Some(b as u8);
        b += 1;
    }
    table
}

/// The byte a vocabulary character stands for, `None` if it is not one of
/// the 256 byte characters.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    CHAR_TO_BYTE.get(c as usize).copied().flatten()
}

/// The raw bytes a vocabulary string stands for.
///
/// As in Hugging Face's `ByteLevel` decoder, a string containing any
/// character outside the byte alphabet (for example an added token written
/// as plain text) is taken as its own UTF-8 bytes.
pub(crate) fn token_string_to_bytes(token: &str) -> Vec<u8> {
    let mapped: Option<Vec<u8>> = token.chars().map(char_to_byte).collect();
    mapped.unwrap_or_else(|| token.as_bytes().to_vec())
}

/// Writes `bytes` in the byte alphabet, e.g. `b" hi"` → `"Ġhi"`.
pub(crate) fn bytes_to_token_string(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| BYTE_TO_CHAR[b as usize]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_characters() {
        assert_eq!(BYTE_TO_CHAR[b' ' as usize], 'Ġ');
        assert_eq!(BYTE_TO_CHAR[b'\n' as usize], 'Ċ');
        assert_eq!(BYTE_TO_CHAR[b'\r' as usize], 'č');
        assert_eq!(BYTE_TO_CHAR[b'\t' as usize], 'ĉ');
        assert_eq!(BYTE_TO_CHAR[0], 'Ā');
        assert_eq!(BYTE_TO_CHAR[b'a' as usize], 'a');
        assert_eq!(BYTE_TO_CHAR[0xAD], 'Ń'); // the soft hyphen is not printable
        assert_eq!(BYTE_TO_CHAR[0xE9], 'é');
        assert_eq!(BYTE_TO_CHAR[0x7F], 'ġ');
    }

    #[test]
    fn map_is_a_bijection() {
        let mut seen = std::collections::HashSet::new();
        for b in 0..=255u8 {
            let c = BYTE_TO_CHAR[b as usize];
            assert!(seen.insert(c), "{c:?} used twice");
            assert_eq!(char_to_byte(c), Some(b));
        }
        assert_eq!(char_to_byte(' '), None);
        assert_eq!(char_to_byte('\u{144}'), None);
        assert_eq!(char_to_byte('東'), None);
    }

    #[test]
    fn strings_round_trip() {
        let text = "héllo, 東京 🤗\n";
        let token = bytes_to_token_string(text.as_bytes());
        assert_eq!(token_string_to_bytes(&token), text.as_bytes());
        assert_eq!(bytes_to_token_string(b" hi"), "Ġhi");
        // Not in the byte alphabet: taken as plain text.
        assert_eq!(token_string_to_bytes("<|im_end|>"), b"<|im_end|>");
        assert_eq!(token_string_to_bytes("a b"), b"a b");
    }
}
