//! GGUF container parsing: header, metadata, tensor directory.
//!
//! Layout (all little-endian, GGUF v2 and v3):
//!
//! ```text
//! "GGUF" | version u32 | tensor_count u64 | kv_count u64
//! kv_count   × (key: string, value_type: u32, value)
//! tensor_count × (name: string, n_dims: u32, ne[n_dims]: u64, ggml_type: u32, offset: u64)
//! padding to `general.alignment` (default 32)
//! tensor data; each tensor at data_start + offset
//! ```
//!
//! where a string is a u64 byte length followed by UTF-8 bytes. Every length
//! and count is checked against the bytes that remain before anything is
//! allocated, so a corrupt count fails fast instead of exhausting memory.

use super::quants;
use super::types::GgmlType;
use crate::error::{Error, Result};
use memmap2::{Mmap, MmapOptions};
use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";

/// Alignment of the data section and of every tensor when the file does not
/// set `general.alignment`.
pub const DEFAULT_ALIGNMENT: usize = 32;

/// ggml tensors have at most four dimensions.
pub const MAX_DIMS: usize = 4;

/// Arrays of arrays deeper than this are rejected: no real file nests at all,
/// and unbounded nesting would let a small file exhaust the stack.
const MAX_ARRAY_DEPTH: usize = 8;

/// Type tag of a metadata value (`gguf_type` in ggml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    /// 8-bit unsigned integer.
    U8,
    /// 8-bit signed integer.
    I8,
    /// 16-bit unsigned integer.
    U16,
    /// 16-bit signed integer.
    I16,
    /// 32-bit unsigned integer.
    U32,
    /// 32-bit signed integer.
    I32,
    /// IEEE binary32.
    F32,
    /// A byte that is 0 or 1.
    Bool,
    /// UTF-8 text with a u64 length prefix.
    String,
    /// A typed array with a u64 length prefix.
    Array,
    /// 64-bit unsigned integer.
    U64,
    /// 64-bit signed integer.
    I64,
    /// IEEE binary64.
    F64,
}

impl ValueType {
    /// The type for a tag as stored in the file, `None` if unknown.
    pub fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The fewest bytes a value of this type occupies in the file: its size
    /// for fixed-size types, the length prefix for a string, the element
    /// type and count for an array. Used to bound counts before allocating.
    fn min_encoded_size(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            ValueType::U8 => "u8",
            ValueType::I8 => "i8",
            ValueType::U16 => "u16",
            ValueType::I16 => "i16",
            ValueType::U32 => "u32",
            ValueType::I32 => "i32",
            ValueType::F32 => "f32",
            ValueType::Bool => "bool",
            ValueType::String => "string",
            ValueType::Array => "array",
            ValueType::U64 => "u64",
            ValueType::I64 => "i64",
            ValueType::F64 => "f64",
        };
        f.write_str(name)
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataValue {
    /// 8-bit unsigned integer.
    U8(u8),
    /// 8-bit signed integer.
    I8(i8),
    /// 16-bit unsigned integer.
    U16(u16),
    /// 16-bit signed integer.
    I16(i16),
    /// 32-bit unsigned integer.
    U32(u32),
    /// 32-bit signed integer.
    I32(i32),
    /// IEEE binary32.
    F32(f32),
    /// A byte that is 0 or 1.
    Bool(bool),
    /// UTF-8 text with a u64 length prefix.
    String(String),
    /// An array of values of one type.
    Array(MetadataArray),
    /// 64-bit unsigned integer.
    U64(u64),
    /// 64-bit signed integer.
    I64(i64),
    /// IEEE binary64.
    F64(f64),
}

/// A metadata array, stored by element type so that a large numeric array
/// costs no more memory than it does on disk.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataArray {
    /// Elements of type u8.
    U8(Vec<u8>),
    /// Elements of type i8.
    I8(Vec<i8>),
    /// Elements of type u16.
    U16(Vec<u16>),
    /// Elements of type i16.
    I16(Vec<i16>),
    /// Elements of type u32.
    U32(Vec<u32>),
    /// Elements of type i32.
    I32(Vec<i32>),
    /// Elements of type f32.
    F32(Vec<f32>),
    /// Elements of type bool.
    Bool(Vec<bool>),
    /// Elements of type string.
    String(Vec<String>),
    /// Elements of type array (nested arrays).
    Array(Vec<MetadataArray>),
    /// Elements of type u64.
    U64(Vec<u64>),
    /// Elements of type i64.
    I64(Vec<i64>),
    /// Elements of type f64.
    F64(Vec<f64>),
}

impl MetadataValue {
    /// The value's type tag.
    pub fn value_type(&self) -> ValueType {
        match self {
            MetadataValue::U8(_) => ValueType::U8,
            MetadataValue::I8(_) => ValueType::I8,
            MetadataValue::U16(_) => ValueType::U16,
            MetadataValue::I16(_) => ValueType::I16,
            MetadataValue::U32(_) => ValueType::U32,
            MetadataValue::I32(_) => ValueType::I32,
            MetadataValue::F32(_) => ValueType::F32,
            MetadataValue::Bool(_) => ValueType::Bool,
            MetadataValue::String(_) => ValueType::String,
            MetadataValue::Array(_) => ValueType::Array,
            MetadataValue::U64(_) => ValueType::U64,
            MetadataValue::I64(_) => ValueType::I64,
            MetadataValue::F64(_) => ValueType::F64,
        }
    }

    /// The value as an unsigned integer, for any integer type holding a
    /// non-negative value; `None` for other types and negative values.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetadataValue::U8(v) => Some(v.into()),
            MetadataValue::U16(v) => Some(v.into()),
            MetadataValue::U32(v) => Some(v.into()),
            MetadataValue::U64(v) => Some(v),
            MetadataValue::I8(v) => u64::try_from(v).ok(),
            MetadataValue::I16(v) => u64::try_from(v).ok(),
            MetadataValue::I32(v) => u64::try_from(v).ok(),
            MetadataValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as f32 for an f32 value, or an f64 value rounded to f32.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            MetadataValue::F32(v) => Some(v),
            MetadataValue::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    /// The string, if this is a string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetadataValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The array, if this is an array value.
    pub fn as_array(&self) -> Option<&MetadataArray> {
        match self {
            MetadataValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl MetadataArray {
    /// The type of the elements.
    pub fn element_type(&self) -> ValueType {
        match self {
            MetadataArray::U8(_) => ValueType::U8,
            MetadataArray::I8(_) => ValueType::I8,
            MetadataArray::U16(_) => ValueType::U16,
            MetadataArray::I16(_) => ValueType::I16,
            MetadataArray::U32(_) => ValueType::U32,
            MetadataArray::I32(_) => ValueType::I32,
            MetadataArray::F32(_) => ValueType::F32,
            MetadataArray::Bool(_) => ValueType::Bool,
            MetadataArray::String(_) => ValueType::String,
            MetadataArray::Array(_) => ValueType::Array,
            MetadataArray::U64(_) => ValueType::U64,
            MetadataArray::I64(_) => ValueType::I64,
            MetadataArray::F64(_) => ValueType::F64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            MetadataArray::U8(v) => v.len(),
            MetadataArray::I8(v) => v.len(),
            MetadataArray::U16(v) => v.len(),
            MetadataArray::I16(v) => v.len(),
            MetadataArray::U32(v) => v.len(),
            MetadataArray::I32(v) => v.len(),
            MetadataArray::F32(v) => v.len(),
            MetadataArray::Bool(v) => v.len(),
            MetadataArray::String(v) => v.len(),
            MetadataArray::Array(v) => v.len(),
            MetadataArray::U64(v) => v.len(),
            MetadataArray::I64(v) => v.len(),
            MetadataArray::F64(v) => v.len(),
        }
    }

    /// True when the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements as signed integers if every one is an integer that fits
    /// in i64 (any integer element type); `None` otherwise.
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        fn all<T: Copy>(v: &[T], f: impl Fn(T) -> Option<i64>) -> Option<Vec<i64>> {
            v.iter().map(|&x| f(x)).collect()
        }
        match self {
            MetadataArray::U8(v) => all(v, |x| Some(x.into())),
            MetadataArray::I8(v) => all(v, |x| Some(x.into())),
            MetadataArray::U16(v) => all(v, |x| Some(x.into())),
            MetadataArray::I16(v) => all(v, |x| Some(x.into())),
            MetadataArray::U32(v) => all(v, |x| Some(x.into())),
            MetadataArray::I32(v) => all(v, |x| Some(x.into())),
            MetadataArray::U64(v) => all(v, |x| i64::try_from(x).ok()),
            MetadataArray::I64(v) => Some(v.clone()),
            _ => None,
        }
    }
}

/// One entry of the tensor directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The name as written in the file (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions in GGUF order: `dims[0]` (ne0) is the innermost, contiguous
    /// one. A `[out, in]` weight matrix has `dims == [in, out]`.
    pub dims: Vec<usize>,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: usize,
    /// Byte size of the data.
    pub size: usize,
}

impl TensorInfo {
    /// Number of values: the product of the dimensions (checked not to
    /// overflow when parsed; saturates for a hand-made info that would).
    pub fn n_elements(&self) -> usize {
        self.dims
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .unwrap_or(usize::MAX)
    }

    /// The dimensions outermost first (row-major shape, `[out, in]` for a
    /// weight matrix): `dims` reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }
}

/// Everything in a GGUF file before the tensor data: version, metadata in
/// file order, the tensor directory, alignment and where the data starts.
/// All of it has been validated against the size of the file.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    path: PathBuf,
    version: u32,
    metadata: Vec<(String, MetadataValue)>,
    metadata_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: usize,
    data_offset: usize,
}

impl GgufHeader {
    /// The file this header was read from (used in error messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// All metadata entries in file order.
    pub fn metadata(&self) -> &[(String, MetadataValue)] {
        &self.metadata
    }

    /// The metadata value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.metadata_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// The tensor directory in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The directory entry of tensor `name` (GGUF name), if present.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// Alignment of the data section and of each tensor's data, in bytes.
    pub fn alignment(&self) -> usize {
        self.alignment
    }

    /// Absolute byte offset where the tensor data section starts.
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    /// `general.architecture`, if present and a string.
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(|v| v.as_str())
    }

    fn wrong_type(&self, key: &str, value: &MetadataValue, expected: &str) -> Error {
        Error::format(
            &self.path,
            format!(
                "metadata key '{key}' has type {}, expected {expected}",
                value.value_type()
            ),
        )
    }

    /// The string value of `key`; an error if present with another type.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, v, "string")),
        }
    }

    /// The value of `key` as a size or count: any integer type holding a
    /// non-negative value that fits in usize. An error for other types and
    /// values.
    pub fn get_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                let n = v
                    .as_u64()
                    .ok_or_else(|| self.wrong_type(key, v, "a non-negative integer"))?;
                usize::try_from(n).map(Some).map_err(|_| {
                    Error::format(
                        &self.path,
                        format!("metadata key '{key}' = {n} is too large"),
                    )
                })
            }
        }
    }

    /// The value of `key` as f32 (an f32 value, or f64 rounded to f32); an
    /// error if present with another type.
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f32()
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, v, "a float")),
        }
    }

    /// The array value of `key`; an error if present with another type.
    pub fn get_array(&self, key: &str) -> Result<Option<&MetadataArray>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_array()
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, v, "an array")),
        }
    }

    /// The array of strings under `key`; an error if present with another
    /// type or element type.
    pub fn get_string_array(&self, key: &str) -> Result<Option<&[String]>> {
        match self.get_array(key)? {
            None => Ok(None),
            Some(MetadataArray::String(v)) => Ok(Some(v)),
            Some(a) => Err(Error::format(
                &self.path,
                format!(
                    "metadata key '{key}' is an array of {}, expected an array of strings",
                    a.element_type()
                ),
            )),
        }
    }
}

/// A GGUF file mapped into memory, with its validated header.
#[derive(Debug)]
pub struct GgufFile {
    header: GgufHeader,
    map: Arc<Mmap>,
}

impl GgufFile {
    /// Maps `path` read-only and parses its header.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the file is opened read-only and the map is never written
        // through. Like every mmap-based reader we rely on the file not being
        // truncated or rewritten by another process while it is mapped.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let header = parse(&map, path)?;
        Ok(GgufFile {
            header,
            map: Arc::new(map),
        })
    }

    /// Parses `bytes` as the contents of a GGUF file named `path` and keeps a
    /// private copy of them, for tests and fuzzing without a file on disk.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<GgufFile> {
        let header = parse(bytes, path)?;
        // An anonymous map so that tensors can be handed out zero-copy
        // exactly as for a file. Parsing succeeded, so `bytes` is not empty.
        let mut map = MmapOptions::new()
            .len(bytes.len())
            .map_anon()
            .map_err(|e| Error::io(path, e))?;
        map.copy_from_slice(bytes);
        let map = map.make_read_only().map_err(|e| Error::io(path, e))?;
        Ok(GgufFile {
            header,
            map: Arc::new(map),
        })
    }

    /// The validated header.
    pub fn header(&self) -> &GgufHeader {
        &self.header
    }

    /// The file name given to [`GgufFile::open`].
    pub fn path(&self) -> &Path {
        self.header.path()
    }

    /// The metadata value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.header.get(key)
    }

    /// The tensor directory in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        self.header.tensors()
    }

    /// The mapped bytes of the whole file.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The shared map, for tensors used in place.
    pub(crate) fn map(&self) -> &Arc<Mmap> {
        &self.map
    }

    /// The raw bytes of a tensor's data.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> Result<&[u8]> {
        info.offset
            .checked_add(info.size)
            .and_then(|end| self.map.get(info.offset..end))
            .ok_or_else(|| {
                Error::format(
                    self.path(),
                    format!("tensor '{}' data lies outside the file", info.name),
                )
            })
    }

    /// Tensor `name` (GGUF name) dequantized to f32 in GGUF order: row-major
    /// with `dims[0]` innermost, no permutation undone.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let info = self
            .header
            .tensor(name)
            .ok_or_else(|| Error::format(self.path(), format!("no tensor named '{name}'")))?;
        if !quants::is_supported(info.ggml_type) {
            return Err(Error::format(
                self.path(),
                format!(
                    "tensor '{}': {}",
                    info.name,
                    quants::QuantError::Unsupported(info.ggml_type)
                ),
            ));
        }
        let bytes = self.tensor_bytes(info)?;
        let mut out = vec![0.0f32; info.n_elements()];
        quants::dequantize(info.ggml_type, bytes, &mut out)
            .map_err(|e| Error::format(self.path(), format!("tensor '{}': {e}", info.name)))?;
        Ok(out)
    }
}

/// Parses the header of a GGUF file whose whole contents are `bytes`;
/// `path` names the file in errors. Accepts GGUF versions 2 and 3,
/// little-endian. Never panics, whatever the bytes.
pub fn parse(bytes: &[u8], path: &Path) -> Result<GgufHeader> {
    let mut r = Cursor {
        bytes,
        pos: 0,
        path,
    };
    if bytes.len() < 4 {
        return Err(r.error(format!("not a GGUF file: only {} bytes long", bytes.len())));
    }
    let magic = r.take(4, "magic")?;
    if magic != GGUF_MAGIC {
        return Err(r.error(format!(
            "not a GGUF file: magic is {magic:02x?}, expected \"GGUF\""
        )));
    }
    let version = r.u32("version")?;
    match version {
        2 | 3 => {}
        _ if matches!(version.swap_bytes(), 2 | 3) => {
            return Err(r.error(
                "unsupported GGUF version: the file is big-endian, only little-endian files are supported",
            ))
        }
        _ => {
            return Err(r.error(format!(
                "unsupported GGUF version {version} (supported: 2 and 3)"
            )))
        }
    }
    let tensor_count = r.u64("tensor count")?;
    let kv_count = r.u64("metadata entry count")?;

    // Smallest possible metadata entry: empty key (8) + type (4) + 1 byte.
    r.check_count(kv_count, 13, "metadata entries", 16)?;
    let kv_count = kv_count as usize; // fits: bounded by the file size
    let mut metadata = Vec::with_capacity(kv_count);
    let mut metadata_index = HashMap::with_capacity(kv_count);
    for i in 0..kv_count {
        let key = r
            .string("metadata key")
            .map_err(|e| r.context(e, &format!("metadata entry {i}")))?;
        let value = r
            .value_of_tagged_type(0)
            .map_err(|e| r.context(e, &format!("metadata key '{key}'")))?;
        if metadata_index.insert(key.clone(), metadata.len()).is_some() {
            return Err(r.error(format!("duplicate metadata key '{key}'")));
        }
        metadata.push((key, value));
    }

    let alignment = match metadata_index.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(&i) => match metadata[i].1 {
            MetadataValue::U32(a) if a.is_power_of_two() => a as usize,
            ref v => {
                return Err(r.error(format!(
                    "general.alignment must be a u32 power of two, got {v:?}"
                )))
            }
        },
    };

    // Smallest tensor info: empty name (8) + n_dims (4) + one dim (8) +
    // type (4) + offset (8).
    r.check_count(tensor_count, 32, "tensor infos", 8)?;
    let tensor_count = tensor_count as usize; // fits: bounded by the file size
    let mut raw_infos = Vec::with_capacity(tensor_count);
    for i in 0..tensor_count {
        let info = r
            .raw_tensor_info()
            .map_err(|e| r.context(e, &format!("tensor info {i}")))?;
        raw_infos.push(info);
    }

    let data_offset = r
        .pos
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| r.error("data section offset overflows"))?;

    let mut tensors = Vec::with_capacity(tensor_count);
    let mut tensor_index = HashMap::with_capacity(tensor_count);
    for raw in raw_infos {
        let info = validate_tensor(raw, data_offset, alignment, bytes.len(), path)?;
        if tensor_index
            .insert(info.name.clone(), tensors.len())
            .is_some()
        {
            return Err(r.error(format!("duplicate tensor name '{}'", info.name)));
        }
        tensors.push(info);
    }
    check_no_overlap(&tensors, path)?;

    Ok(GgufHeader {
        path: path.to_path_buf(),
        version,
        metadata,
        metadata_index,
        tensors,
        tensor_index,
        alignment,
        data_offset,
    })
}

/// A tensor info as read, before it is checked against the file.
struct RawTensorInfo {
    name: String,
    dims: Vec<u64>,
    type_id: u32,
    offset: u64,
}

/// Checks one tensor's type, dimensions, alignment and extent and resolves
/// its absolute offset and byte size.
fn validate_tensor(
    raw: RawTensorInfo,
    data_offset: usize,
    alignment: usize,
    file_len: usize,
    path: &Path,
) -> Result<TensorInfo> {
    let name = raw.name;
    let bad = |msg: String| Error::format(path, format!("tensor '{name}': {msg}"));
    let ggml_type = GgmlType::from_id(raw.type_id)
        .ok_or_else(|| bad(format!("unknown ggml type id {}", raw.type_id)))?;

    // ggml counts elements in i64, so the product must fit there (and in usize).
    let n_elements = raw
        .dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| bad(format!("dimensions {:?} overflow", raw.dims)))?;
    let dims: Vec<usize> = raw.dims.iter().map(|&d| d as usize).collect(); // each ≤ product

    let ne0 = dims[0]; // raw_tensor_info guarantees at least one dimension
    if !ne0.is_multiple_of(ggml_type.block_size()) {
        return Err(bad(format!(
            "row length {ne0} is not a multiple of the {ggml_type} block size {}",
            ggml_type.block_size()
        )));
    }
    // ne0 divisible by the block size implies n_elements is too.
    let size = (n_elements / ggml_type.block_size())
        .checked_mul(ggml_type.type_size())
        .ok_or_else(|| bad(format!("byte size of dimensions {dims:?} overflows")))?;

    let relative = usize::try_from(raw.offset)
        .ok()
        .filter(|&o| o % alignment == 0)
        .ok_or_else(|| {
            bad(format!(
                "data offset {} is not a multiple of the alignment {alignment}",
                raw.offset
            ))
        })?;
    let offset = data_offset
        .checked_add(relative)
        .ok_or_else(|| bad(format!("data offset {relative} overflows")))?;
    match offset.checked_add(size) {
        Some(end) if end <= file_len => {}
        _ => {
            return Err(bad(format!(
            "data [{offset}, {offset} + {size}) runs past the end of the file ({file_len} bytes)"
        )))
        }
    }
    Ok(TensorInfo {
        name,
        dims,
        ggml_type,
        offset,
        size,
    })
}

/// Rejects tensors whose data ranges overlap.
fn check_no_overlap(tensors: &[TensorInfo], path: &Path) -> Result<()> {
    let mut by_offset: Vec<&TensorInfo> = tensors.iter().filter(|t| t.size > 0).collect();
    by_offset.sort_by_key(|t| t.offset);
    for pair in by_offset.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        // Both ends were checked to lie within the file, so no overflow.
        if a.offset + a.size > b.offset {
            return Err(Error::format(
                path,
                format!(
                    "tensors '{}' and '{}' have overlapping data ([{}, {}) and [{}, {}))",
                    a.name,
                    b.name,
                    a.offset,
                    a.offset + a.size,
                    b.offset,
                    b.offset + b.size
                ),
            ));
        }
    }
    Ok(())
}

/// A bounds-checked little-endian reader over the file bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn error(&self, msg: impl Into<String>) -> Error {
        Error::format(self.path, msg)
    }

    /// Prefixes a format error's message with where it happened.
    fn context(&self, e: Error, ctx: &str) -> Error {
        match e {
            Error::Format { path, msg } => Error::Format {
                path,
                msg: format!("{ctx}: {msg}"),
            },
            other => other,
        }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// Takes the next `n` bytes, or fails naming `what` if the file ends first.
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.bytes.len() => {
                let s = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            _ => Err(self.error(format!(
                "file is truncated: {what} needs {n} bytes at offset {}, but the file is {} bytes long",
                self.pos,
                self.bytes.len()
            ))),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// Fails unless `count` items of at least `min_size` bytes each fit in
    /// the rest of the file.
    /// `at` is where the count was read, for the message.
    fn check_count(&self, count: u64, min_size: u64, what: &str, at: usize) -> Result<()> {
        let fits = count
            .checked_mul(min_size)
            .is_some_and(|need| need <= self.remaining() as u64);
        if fits {
            Ok(())
        } else {
            Err(self.error(format!(
                "file is truncated or corrupt: {count} {what} (count at offset {at}) cannot fit in the remaining {} bytes",
                self.remaining()
            )))
        }
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let at = self.pos;
        let len = self.u64(what)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= self.remaining())
            .ok_or_else(|| {
                self.error(format!(
                    "file is truncated or corrupt: {what} length {len} (at offset {at}) is more than the remaining {} bytes",
                    self.remaining()
                ))
            })?;
        let start = self.pos;
        let s = self.take(len, what)?;
        std::str::from_utf8(s)
            .map(str::to_owned)
            .map_err(|_| self.error(format!("{what} at offset {start} is not valid UTF-8")))
    }

    fn value_type(&mut self, what: &str) -> Result<ValueType> {
        let at = self.pos;
        let id = self.u32(what)?;
        ValueType::from_id(id)
            .ok_or_else(|| self.error(format!("unknown metadata value type {id} at offset {at}")))
    }

    /// Reads a type tag and then a value of that type.
    fn value_of_tagged_type(&mut self, depth: usize) -> Result<MetadataValue> {
        let t = self.value_type("value type")?;
        self.value(t, depth)
    }

    fn value(&mut self, t: ValueType, depth: usize) -> Result<MetadataValue> {
        Ok(match t {
            ValueType::U8 => MetadataValue::U8(u8::from_le_bytes(self.array("u8 value")?)),
            ValueType::I8 => MetadataValue::I8(i8::from_le_bytes(self.array("i8 value")?)),
            ValueType::U16 => MetadataValue::U16(u16::from_le_bytes(self.array("u16 value")?)),
            ValueType::I16 => MetadataValue::I16(i16::from_le_bytes(self.array("i16 value")?)),
            ValueType::U32 => MetadataValue::U32(u32::from_le_bytes(self.array("u32 value")?)),
            ValueType::I32 => MetadataValue::I32(i32::from_le_bytes(self.array("i32 value")?)),
            ValueType::F32 => MetadataValue::F32(f32::from_le_bytes(self.array("f32 value")?)),
            ValueType::U64 => MetadataValue::U64(u64::from_le_bytes(self.array("u64 value")?)),
            ValueType::I64 => MetadataValue::I64(i64::from_le_bytes(self.array("i64 value")?)),
            ValueType::F64 => MetadataValue::F64(f64::from_le_bytes(self.array("f64 value")?)),
            ValueType::Bool => MetadataValue::Bool(self.bool()?),
            ValueType::String => MetadataValue::String(self.string("string value")?),
            ValueType::Array => MetadataValue::Array(self.array_value(depth + 1)?),
        })
    }

    fn bool(&mut self) -> Result<bool> {
        let at = self.pos;
        match self.array::<1>("bool value")?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(self.error(format!("bool value at offset {at} is {b}, not 0 or 1"))),
        }
    }

    fn array_value(&mut self, depth: usize) -> Result<MetadataArray> {
        if depth > MAX_ARRAY_DEPTH {
            return Err(self.error(format!(
                "arrays nested more than {MAX_ARRAY_DEPTH} deep at offset {}",
                self.pos
            )));
        }
        let t = self.value_type("array element type")?;
        let at = self.pos;
        let count = self.u64("array length")?;
        self.check_count(
            count,
            t.min_encoded_size(),
            &format!("{t} array elements"),
            at,
        )?;
        let n = count as usize; // fits: bounded by the file size

        /// Reads `n` fixed-size little-endian numbers.
        fn numbers<const N: usize, T>(
            c: &mut Cursor<'_>,
            n: usize,
            what: &str,
            from: fn([u8; N]) -> T,
        ) -> Result<Vec<T>> {
            // check_count guaranteed n * N bytes remain.
            let bytes = c.take(n * N, what)?;
            Ok(bytes
                .chunks_exact(N)
                .map(|b| {
                    let mut a = [0u8; N];
                    a.copy_from_slice(b);
                    from(a)
                })
                .collect())
        }

        Ok(match t {
            ValueType::U8 => MetadataArray::U8(numbers(self, n, "u8 array", u8::from_le_bytes)?),
            ValueType::I8 => MetadataArray::I8(numbers(self, n, "i8 array", i8::from_le_bytes)?),
            ValueType::U16 => {
                MetadataArray::U16(numbers(self, n, "u16 array", u16::from_le_bytes)?)
            }
            ValueType::I16 => {
                MetadataArray::I16(numbers(self, n, "i16 array", i16::from_le_bytes)?)
            }
            ValueType::U32 => {
                MetadataArray::U32(numbers(self, n, "u32 array", u32::from_le_bytes)?)
            }
            ValueType::I32 => {
                MetadataArray::I32(numbers(self, n, "i32 array", i32::from_le_bytes)?)
            }
            ValueType::F32 => {
                MetadataArray::F32(numbers(self, n, "f32 array", f32::from_le_bytes)?)
            }
            ValueType::U64 => {
                MetadataArray::U64(numbers(self, n, "u64 array", u64::from_le_bytes)?)
            }
            ValueType::I64 => {
                MetadataArray::I64(numbers(self, n, "i64 array", i64::from_le_bytes)?)
            }
            ValueType::F64 => {
                MetadataArray::F64(numbers(self, n, "f64 array", f64::from_le_bytes)?)
            }
            ValueType::Bool => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.bool()?);
                }
                MetadataArray::Bool(v)
            }
            ValueType::String => {
                let mut v = Vec::with_capacity(n);
                for i in 0..n {
                    let s = self
                        .string("string")
                        .map_err(|e| self.context(e, &format!("array element {i}")))?;
                    v.push(s);
                }
                MetadataArray::String(v)
            }
            ValueType::Array => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.array_value(depth + 1)?);
                }
                MetadataArray::Array(v)
            }
        })
    }

    fn raw_tensor_info(&mut self) -> Result<RawTensorInfo> {
        let name = self.string("tensor name")?;
        let bad = |c: &Self, msg: String| c.error(format!("tensor '{name}': {msg}"));
        let n_dims = self.u32("number of dimensions")?;
        if n_dims == 0 || n_dims as usize > MAX_DIMS {
            return Err(bad(
                self,
                format!("{n_dims} dimensions (GGUF allows 1 to {MAX_DIMS})"),
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.u64("dimension")?);
        }
        let type_id = self.u32("ggml type")?;
        let offset = self.u64("data offset")?;
        Ok(RawTensorInfo {
            name,
            dims,
            type_id,
            offset,
        })
    }
}
