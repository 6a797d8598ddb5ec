//! Property tests: a valid safetensors file, mutated at random (bit flips,
//! byte writes, digit edits in the header, truncation, splices), must give
//! either an error naming the file or tensors whose values are exactly what
//! the (mutated) bytes say. Never a panic, never a read out of bounds.

use microllm::safetensors::{Dtype, SafetensorsFile};
use proptest::prelude::*;
use std::path::Path;

const NAME: &str = "fuzz.safetensors";

/// The valid file every case starts from: one tensor of each dtype the
/// reader converts, an unsupported one, an empty one, and metadata.
fn base() -> Vec<u8> {
    let f32s: Vec<u8> = [1.0f32, -2.5, 3.25e-3, f32::MAX, -0.0, 7.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let f16s: Vec<u8> = [0x3C00u16, 0x8001, 0x7C00, 0xC500]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let bf16s: Vec<u8> = [0x3F80u16, 0x0001, 0xFF80]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let json = concat!(
        r#"{"__metadata__":{"format":"pt"},"#,
        r#""w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"#,
        r#""h":{"dtype":"F16","shape":[2,2],"data_offsets":[24,32]},"#,
        r#""b":{"dtype":"BF16","shape":[3],"data_offsets":[32,38]},"#,
        r#""u":{"dtype":"U8","shape":[2],"data_offsets":[38,40]},"#,
        r#""e":{"dtype":"F32","shape":[0],"data_offsets":[40,40]}}"#
    );
    let mut json = json.as_bytes().to_vec();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out.extend_from_slice(&f32s);
    out.extend_from_slice(&f16s);
    out.extend_from_slice(&bf16s);
    out.extend_from_slice(&[9, 10]);
    out
}

/// f16 → f32 from the IEEE layout, written out independently of the `half`
/// crate the reader uses.
fn f16_reference(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0f64 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let man = f64::from(h & 0x3ff);
    let v = match exp {
        0 => man * 2f64.powi(-24),
        31 if man == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        e => (1.0 + man / 1024.0) * 2f64.powi(e - 15),
    };
    (sign * v) as f32
}

/// The values a tensor of `dtype` stored as `bytes` must load as.
fn reference_values(dtype: Dtype, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| f16_reference(u16::from_le_bytes([b[0], b[1]])))
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16))
            .collect(),
        _ => unreachable!(),
    }
}

/// Opens `bytes` and checks the outcome: an error must name the file; a
/// success must report in-bounds tensors whose loaded values match the bytes.
fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
    let file = match SafetensorsFile::from_bytes(bytes, Path::new(NAME)) {
        Err(e) => {
            let msg = e.to_string();
            prop_assert!(
                msg.starts_with(&format!("{NAME}: ")),
                "error does not name the file: {msg}"
            );
            return Ok(());
        }
        Ok(f) => f,
    };
    // Recompute where the data section starts straight from the bytes.
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let data_start = 8 + header_len;
    prop_assert_eq!(file.header().data_start, data_start);
    for t in file.tensors() {
        let (begin, end) = t.data_offsets;
        prop_assert!(begin <= end && data_start + end <= bytes.len());
        let numel: usize = t.shape.iter().product();
        prop_assert_eq!(end - begin, numel * t.dtype.size());
        let raw = &bytes[data_start + begin..data_start + end];
        prop_assert_eq!(file.raw_bytes(&t.name), Some(raw));
        match t.dtype {
            Dtype::F32 | Dtype::F16 | Dtype::BF16 => {
                let loaded = file
                    .load_f32(&t.name)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(loaded.shape(), &t.shape[..]);
                let want = reference_values(t.dtype, raw);
                prop_assert_eq!(loaded.data().len(), want.len());
                for (g, w) in loaded.data().iter().zip(&want) {
                    prop_assert!(
                        g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                        "tensor {}: got {g:e}, want {w:e}",
                        t.name
                    );
                }
            }
            other => {
                let msg = file
                    .load_f32(&t.name)
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                prop_assert_eq!(
                    msg,
                    format!("{NAME}: unsupported dtype {other} for tensor '{}' (supported: F32, F16, BF16)", t.name)
                );
            }
        }
    }
    // No two non-empty tensors share a byte.
    let mut spans: Vec<(usize, usize)> = file
        .tensors()
        .iter()
        .map(|t| t.data_offsets)
        .filter(|(b, e)| b < e)
        .collect();
    spans.sort_unstable();
    prop_assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0));
    Ok(())
}

#[derive(Debug, Clone)]
enum Mutation {
    /// XOR one byte with a non-zero mask.
    Flip(usize, u8),
    /// Overwrite one byte.
    Set(usize, u8),
    /// Replace the n-th ASCII digit of the file with another digit: keeps the
    /// JSON valid while changing shapes, offsets and the header length.
    Digit(usize, u8),
    /// Cut the file to a length.
    Truncate(usize),
    /// Remove `len` bytes at a position and insert others there.
    Splice(usize, usize, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(i, m)| Mutation::Flip(i, m)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), 0..10u8).prop_map(|(i, d)| Mutation::Digit(i, d)),
        any::<usize>().prop_map(Mutation::Truncate),
        (
            any::<usize>(),
            0..16usize,
            prop::collection::vec(any::<u8>(), 0..16)
        )
            .prop_map(|(i, n, b)| Mutation::Splice(i, n, b)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        if let Mutation::Splice(_, _, ins) = m {
            bytes.extend_from_slice(ins);
        }
        return;
    }
    let len = bytes.len();
    match *m {
        Mutation::Flip(i, mask) => bytes[i % len] ^= mask,
        Mutation::Set(i, b) => bytes[i % len] = b,
        Mutation::Digit(n, d) => {
            let digits: Vec<usize> = (0..len).filter(|&i| bytes[i].is_ascii_digit()).collect();
            if !digits.is_empty() {
                bytes[digits[n % digits.len()]] = b'0' + d;
            }
        }
        Mutation::Truncate(n) => bytes.truncate(n % (len + 1)),
        Mutation::Splice(i, n, ref ins) => {
            let at = i % (len + 1);
            let end = (at + n).min(len);
            bytes.splice(at..end, ins.iter().copied());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn mutated_files_error_or_read_correctly(muts in prop::collection::vec(mutation(), 1..4)) {
        let mut bytes = base();
        for m in &muts {
            apply(&mut bytes, m);
        }
        check(&bytes)?;
    }

    /// Digit edits keep the header valid JSON of the same length, so they
    /// mostly reach the shape/offset validation rather than the JSON parser.
    #[test]
    fn header_number_edits_error_or_read_correctly(
        edits in prop::collection::vec((any::<usize>(), 0..10u8), 1..4)
    ) {
        let mut bytes = base();
        for (n, d) in edits {
            apply(&mut bytes, &Mutation::Digit(n, d));
        }
        check(&bytes)?;
    }

    /// Damage confined to the data section cannot make a valid header
    /// invalid: the file must still open, list the same tensors, and load
    /// the damaged values exactly.
    #[test]
    fn data_damage_keeps_the_header(flips in prop::collection::vec((any::<usize>(), 1..=255u8), 1..8)) {
        let original = base();
        let data_start = 8 + u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
        let data_len = original.len() - data_start;
        let mut bytes = original.clone();
        for (i, mask) in flips {
            bytes[data_start + i % data_len] ^= mask;
        }
        let before = SafetensorsFile::from_bytes(&original, Path::new(NAME)).unwrap();
        let after = SafetensorsFile::from_bytes(&bytes, Path::new(NAME))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(before.header(), after.header());
        check(&bytes)?;
    }
}

#[test]
fn base_file_is_valid_and_reads_back() {
    let bytes = base();
    let f = SafetensorsFile::from_bytes(&bytes, Path::new(NAME)).unwrap();
    let names: Vec<&str> = f.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["w", "h", "b", "u", "e"]);
    assert_eq!(f.metadata().get("format").map(String::as_str), Some("pt"));
    let w = f.load_f32("w").unwrap();
    assert!(w.is_mapped());
    assert_eq!(w.data(), &[1.0, -2.5, 3.25e-3, f32::MAX, -0.0, 7.0]);
    let h = f.load_f32("h").unwrap();
    assert_eq!(h.data(), &[1.0, -(2f32.powi(-24)), f32::INFINITY, -5.0]);
    assert_eq!(f.load_f32("e").unwrap().shape(), &[0]);
    check(&bytes).unwrap();
    // The reference decoder agrees with the reader on every f16 pattern.
    for b in 0..=u16::MAX {
        let (r, h) = (f16_reference(b), half::f16::from_bits(b).to_f32());
        assert!(
            r.to_bits() == h.to_bits() || (r.is_nan() && h.is_nan()),
            "{b:#x}"
        );
    }
}
