//! Dequantization is bit-exact with the reference `gguf.quants.dequantize`
//! on random blocks (fixture made by scripts/make-gguf-fixtures.py).

mod gguf_common;

use gguf_common::{bits, repo_path, SafeTensors};
use microllm::gguf::{quants, GgmlType};

const TYPES: [GgmlType; 9] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

#[test]
fn every_supported_type_matches_the_python_reference_bit_for_bit() {
    let st = SafeTensors::open(&repo_path("fixtures/gguf/quants.safetensors"));
    for t in TYPES {
        assert!(quants::is_supported(t));
        let raw = st.bytes(&format!("{t}.raw"));
        let expected = st.f32_bits(&format!("{t}.expected"));
        // At least a few blocks per type, so every code path ran.
        assert!(
            expected.len() >= 3 * t.block_size(),
            "{t}: fixture too small"
        );
        assert_eq!(raw.len(), expected.len() / t.block_size() * t.type_size());

        let mut out = vec![0f32; expected.len()];
        quants::dequantize(t, raw, &mut out).unwrap_or_else(|e| panic!("{t}: {e}"));
        let got = bits(&out);
        if let Some(i) = (0..got.len()).find(|&i| got[i] != expected[i]) {
            panic!(
                "{t}: value {i} (block {}) is {:#010x} ({}), expected {:#010x} ({})",
                i / t.block_size(),
                got[i],
                out[i],
                expected[i],
                f32::from_bits(expected[i])
            );
        }
        // The fixture is not degenerate: values vary.
        let distinct: std::collections::HashSet<u32> = got.iter().copied().collect();
        assert!(
            distinct.len() > 16,
            "{t}: only {} distinct values",
            distinct.len()
        );
    }
}

#[test]
fn special_f16_values_are_in_the_fixture() {
    // The F16 fixture carries subnormals, infinities and a signalling NaN,
    // whose payload the reference keeps (no quieting).
    let st = SafeTensors::open(&repo_path("fixtures/gguf/quants.safetensors"));
    let expected = st.f32_bits("F16.expected");
    for want in [0x3380_0000u32, 0x7f80_0000, 0xff80_0000, 0x7f80_2000] {
        assert!(expected.contains(&want), "missing {want:#x}");
    }
}

#[test]
fn unsupported_types_are_errors_not_garbage() {
    for t in [
        GgmlType::Q5_0,
        GgmlType::Q2_K,
        GgmlType::IQ4_NL,
        GgmlType::I32,
    ] {
        let data = vec![0u8; t.type_size()];
        let mut out = vec![0f32; t.block_size()];
        let err = quants::dequantize(t, &data, &mut out).unwrap_err();
        assert!(err.to_string().contains(t.name()), "{err}");
    }
}
