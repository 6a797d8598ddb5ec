//! The ggml tensor types a GGUF file can name, with their block geometry.

use std::fmt;

/// Defines [`GgmlType`] from one table: variant, type id, name, values per
/// block, bytes per block. Sizes are those of ggml's `type_traits` table.
macro_rules! ggml_types {
    ($( $(#[$doc:meta])* $variant:ident = $id:literal, $name:literal, $block:literal, $bytes:literal; )*) => {
        /// A ggml tensor element type, as stored in a GGUF tensor info.
        ///
        /// Every type ggml currently defines is listed, so that a reader can
        /// describe any file; [`super::quants::dequantize`] supports a subset.
        // Variants are spelled as in ggml ("Q4_K"), the names users know.
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum GgmlType {
            $( $(#[$doc])* $variant, )*
        }

        impl GgmlType {
            /// The type for a GGUF type id, `None` for an id ggml does not define
            /// (or no longer defines, such as the removed Q4_2 = 4).
            pub fn from_id(id: u32) -> Option<GgmlType> {
                match id {
                    $( $id => Some(GgmlType::$variant), )*
                    _ => None,
                }
            }

            /// The numeric id stored in the file.
            pub fn id(self) -> u32 {
                match self {
                    $( GgmlType::$variant => $id, )*
                }
            }

            /// ggml's name for the type ("Q4_1", "F32", ...).
            pub fn name(self) -> &'static str {
                match self {
                    $( GgmlType::$variant => $name, )*
                }
            }

            /// Number of values in one block (1 for plain float/int types).
            pub fn block_size(self) -> usize {
                match self {
                    $( GgmlType::$variant => $block, )*
                }
            }

            /// Number of bytes of one block.
            pub fn type_size(self) -> usize {
                match self {
                    $( GgmlType::$variant => $bytes, )*
                }
            }
        }
    };
}

ggml_types! {
    /// IEEE binary32.
    F32 = 0, "F32", 1, 4;
    /// IEEE binary16.
    F16 = 1, "F16", 1, 2;
    /// 32 values: f16 scale `d`, 4-bit `q`; value `d * (q - 8)`.
    Q4_0 = 2, "Q4_0", 32, 18;
    /// 32 values: f16 scale `d` and minimum `m`, 4-bit `q`; value `d * q + m`.
    Q4_1 = 3, "Q4_1", 32, 20;
    /// 32 values, 5-bit, symmetric.
    Q5_0 = 6, "Q5_0", 32, 22;
    /// 32 values, 5-bit, with minimum.
    Q5_1 = 7, "Q5_1", 32, 24;
    /// 32 values: f16 scale `d`, 8-bit signed `q`; value `d * q`.
    Q8_0 = 8, "Q8_0", 32, 34;
    /// 32 values, 8-bit with a precomputed sum (an activation type).
    Q8_1 = 9, "Q8_1", 32, 36;
    /// K-quant, 2-bit.
    Q2_K = 10, "Q2_K", 256, 84;
    /// K-quant, 3-bit.
    Q3_K = 11, "Q3_K", 256, 110;
    /// K-quant, 4-bit: 8 sub-blocks of 32 with 6-bit scales and minimums.
    Q4_K = 12, "Q4_K", 256, 144;
    /// K-quant, 5-bit: as Q4_K plus one high bit per value.
    Q5_K = 13, "Q5_K", 256, 176;
    /// K-quant, 6-bit: 16 sub-blocks of 16 with 8-bit scales.
    Q6_K = 14, "Q6_K", 256, 210;
    /// K-quant, 8-bit (an activation type).
    Q8_K = 15, "Q8_K", 256, 292;
    /// Importance-matrix quant, 2.06 bits per weight.
    IQ2_XXS = 16, "IQ2_XXS", 256, 66;
    /// Importance-matrix quant, 2.31 bits per weight.
    IQ2_XS = 17, "IQ2_XS", 256, 74;
    /// Importance-matrix quant, 3.06 bits per weight.
    IQ3_XXS = 18, "IQ3_XXS", 256, 98;
    /// Importance-matrix quant, 1.56 bits per weight.
    IQ1_S = 19, "IQ1_S", 256, 50;
    /// Non-linear 4-bit quant, blocks of 32.
    IQ4_NL = 20, "IQ4_NL", 32, 18;
    /// Importance-matrix quant, 3.44 bits per weight.
    IQ3_S = 21, "IQ3_S", 256, 110;
    /// Importance-matrix quant, 2.5 bits per weight.
    IQ2_S = 22, "IQ2_S", 256, 82;
    /// Non-linear 4-bit quant, blocks of 256.
    IQ4_XS = 23, "IQ4_XS", 256, 136;
    /// 8-bit signed integer.
    I8 = 24, "I8", 1, 1;
    /// 16-bit signed integer.
    I16 = 25, "I16", 1, 2;
    /// 32-bit signed integer.
    I32 = 26, "I32", 1, 4;
    /// 64-bit signed integer.
    I64 = 27, "I64", 1, 8;
    /// IEEE binary64.
    F64 = 28, "F64", 1, 8;
    /// Importance-matrix quant, 1.75 bits per weight.
    IQ1_M = 29, "IQ1_M", 256, 56;
    /// bfloat16: the top half of an f32.
    BF16 = 30, "BF16", 1, 2;
    /// Ternary quant, 1.69 bits per weight.
    TQ1_0 = 34, "TQ1_0", 256, 54;
    /// Ternary quant, 2.06 bits per weight.
    TQ2_0 = 35, "TQ2_0", 256, 66;
    /// Microscaling FP4.
    MXFP4 = 39, "MXFP4", 32, 17;
    /// NVIDIA FP4.
    NVFP4 = 40, "NVFP4", 64, 36;
    /// 1-bit quant.
    Q1_0 = 41, "Q1_0", 128, 18;
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_gaps_are_unknown() {
        for id in 0..64 {
            if let Some(t) = GgmlType::from_id(id) {
                assert_eq!(t.id(), id);
                assert!(t.block_size() >= 1 && t.type_size() >= 1);
            }
        }
        // Removed or never-assigned ids.
        for id in [4, 5, 31, 32, 33, 36, 37, 38, 42, 1000, u32::MAX] {
            assert_eq!(GgmlType::from_id(id), None, "id {id}");
        }
        assert_eq!(GgmlType::from_id(3), Some(GgmlType::Q4_1));
        assert_eq!(GgmlType::Q4_1.to_string(), "Q4_1");
        assert_eq!(GgmlType::Q6_K.type_size(), 210);
    }
}
