//! The character classes the pre-tokenizer regexes use, defined as the
//! reference implementation's engines define them.
//!
//! Hugging Face `tokenizers` runs its pre-tokenizer regexes with Oniguruma
//! (Unicode 16 tables), splits digits with Rust's `char::is_numeric`, and
//! checks added-token word boundaries with the `regex` crate's `\w` and `\s`.
//! `fixtures/tokenizer/unicode_classes.json`, made from the reference, pins
//! these down for every code point (see `tests/tokenizer_parity.rs`).

use unicode_general_category::{get_general_category, GeneralCategory as Gc};

/// `\p{L}`: general category Lu, Ll, Lt, Lm or Lo.
#[inline]
pub(crate) fn is_letter(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphabetic();
    }
    matches!(
        get_general_category(c),
        Gc::UppercaseLetter
            | Gc::LowercaseLetter
            | Gc::TitlecaseLetter
            | Gc::ModifierLetter
            | Gc::OtherLetter
    )
}

/// `\p{N}`: general category Nd, Nl or No.
#[inline]
pub(crate) fn is_number(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_digit();
    }
    matches!(
        get_general_category(c),
        Gc::DecimalNumber | Gc::LetterNumber | Gc::OtherNumber
    )
}

/// `\s`: the Unicode `White_Space` property (the same 25 code points in
/// Oniguruma, the `regex` crate and `char::is_whitespace`).
#[inline]
pub(crate) fn is_space(c: char) -> bool {
    c.is_whitespace()
}

/// What the `Digits` pre-tokenizer splits off: Rust's `char::is_numeric`,
/// exactly what the reference calls.
#[inline]
pub(crate) fn is_digit_for_split(c: char) -> bool {
    c.is_numeric()
}

/// The `regex` crate's Unicode `\w`: Alphabetic, marks (M), decimal digits
/// (Nd), connector punctuation (Pc) and the joiners U+200C/U+200D. Added
/// tokens marked `single_word` only match between non-word characters.
pub(crate) fn is_word_char(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphanumeric() || c == '_';
    }
    c.is_alphabetic()
        || matches!(c, '\u{200C}' | '\u{200D}')
        || matches!(
            get_general_category(c),
            Gc::NonspacingMark
                | Gc::SpacingMark
                | Gc::EnclosingMark
                | Gc::DecimalNumber
                | Gc::ConnectorPunctuation
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_of_sample_characters() {
        for c in ['a', 'Z', 'é', 'ß', 'ǅ', 'ʰ', '東', 'ж', 'ſ'] {
            assert!(is_letter(c), "{c:?}");
            assert!(!is_number(c) && !is_space(c), "{c:?}");
        }
        for c in ['0', '9', '٣', '²', '½', 'Ⅻ', '１', '𝟙'] {
            assert!(is_number(c), "{c:?}");
            assert!(is_digit_for_split(c), "{c:?}");
            assert!(!is_letter(c), "{c:?}");
        }
        for c in [
            ' ', '\t', '\n', '\r', '\u{0B}', '\u{0C}', '\u{85}', '\u{A0}', '\u{3000}',
        ] {
            assert!(is_space(c), "{c:?}");
        }
        for c in ['\u{1C}', '\u{200B}', '\u{FEFF}', '\u{180E}'] {
            assert!(!is_space(c), "{c:?}");
        }
        // Marks are neither letters nor numbers for the GPT-2 regex...
        assert!(!is_letter('\u{301}') && !is_number('\u{301}'));
        // ...but are word characters for `single_word`.
        assert!(is_word_char('\u{301}'));
        assert!(is_word_char('_') && is_word_char('\u{200D}') && is_word_char('é'));
        assert!(!is_word_char('-') && !is_word_char(' ') && !is_word_char('²'));
    }

    /// Inclusive code point ranges from `fixtures/tokenizer/unicode_classes.json`.
    fn reference_ranges() -> Vec<(&'static str, Vec<(u32, u32)>)> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/tokenizer/unicode_classes.json"
        );
        let text = std::fs::read_to_string(path).expect("unicode_classes.json");
        let json: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        ["letter", "number", "whitespace", "digits_numeric"]
            .into_iter()
            .map(|key| {
                let ranges = json[key]
                    .as_array()
                    .expect("list of ranges")
                    .iter()
                    .map(|r| {
                        let lo = r[0].as_u64().expect("lo") as u32;
                        let hi = r[1].as_u64().expect("hi") as u32;
                        (lo, hi)
                    })
                    .collect();
                (key, ranges)
            })
            .collect()
    }

    /// Every code point is classified as the reference classifies it
    /// (its Oniguruma \p{L}, \p{N}, \s and its Digits' `is_numeric`).
    #[test]
    fn classes_match_the_reference_for_every_code_point() {
        for (key, ranges) in reference_ranges() {
            let class: fn(char) -> bool = match key {
                "letter" => is_letter,
                "number" => is_number,
                "whitespace" => is_space,
                _ => is_digit_for_split,
            };
            let mut expected = vec![false; 0x11_0000];
            for (lo, hi) in ranges {
                for c in lo..=hi {
                    expected[c as usize] = true;
                }
            }
            let members = expected.iter().filter(|&&m| m).count();
            assert!(members >= 25, "{key}: only {members} code points listed");
            let wrong: Vec<String> = (0..0x11_0000u32)
                .filter_map(char::from_u32)
                .filter(|&c| class(c) != expected[c as usize])
                .map(|c| format!("U+{:04X}", c as u32))
                .collect();
            assert!(
                wrong.is_empty(),
                "{key}: {} code points differ from the reference, e.g. {:?}",
                wrong.len(),
                &wrong[..wrong.len().min(20)]
            );
        }
    }
}
