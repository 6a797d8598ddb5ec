//! Reader for `.safetensors` files, the weight format of Hugging Face
//! checkpoints.
//!
//! Layout: an 8-byte little-endian header length `n`, `n` bytes of UTF-8 JSON
//! (an object mapping each tensor name to `{dtype, shape, data_offsets}`, plus
//! an optional `__metadata__` object of strings), then the data section.
//! `data_offsets` are `[begin, end)` byte offsets relative to the start of the
//! data section.
//!
//! The whole file is memory-mapped and every number in the header is checked
//! before it is used, so that a truncated or hostile file is an error, never
//! a panic or an out-of-bounds read. F32 tensors are handed out as views into
//! the map (no copy); F16 and BF16 tensors are widened to f32.

use crate::error::{Error, Result};
use crate::tensor::{checked_numel, Tensor};
use memmap2::{Mmap, MmapMut};
use rayon::prelude::*;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest JSON header accepted. Real headers are tens of kilobytes (30 KB
/// for SmolLM2-135M, a few hundred KB for 70B-class shards); the bound stops
/// a corrupted length from making us parse gigabytes.
pub const MAX_HEADER_LEN: u64 = 100 * 1024 * 1024;

/// Element types a safetensors header may name.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// Boolean, one byte.
    BOOL,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 8-bit integer.
    I8,
    /// 8-bit float, 5 exponent bits.
    F8_E5M2,
    /// 8-bit float, 4 exponent bits.
    F8_E4M3,
    /// 8-bit exponent-only scale (microscaling formats).
    F8_E8M0,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 16-bit integer.
    U16,
    /// IEEE half precision.
    F16,
    /// bfloat16: the top half of an f32.
    BF16,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 32-bit integer.
    U32,
    /// IEEE single precision.
    F32,
    /// Complex number of two f32.
    C64,
    /// IEEE double precision.
    F64,
    /// Signed 64-bit integer.
    I64,
    /// Unsigned 64-bit integer.
    U64,
}

impl Dtype {
    /// Every dtype, for lookups by name.
    const ALL: [Dtype; 17] = [
        Dtype::BOOL,
        Dtype::U8,
        Dtype::I8,
        Dtype::F8_E5M2,
        Dtype::F8_E4M3,
        Dtype::F8_E8M0,
        Dtype::I16,
        Dtype::U16,
        Dtype::F16,
        Dtype::BF16,
        Dtype::I32,
        Dtype::U32,
        Dtype::F32,
        Dtype::C64,
        Dtype::F64,
        Dtype::I64,
        Dtype::U64,
    ];

    /// The dtype spelled `name` in a header (case-sensitive, as the format
    /// specifies), or `None` if unknown.
    pub fn from_name(name: &str) -> Option<Dtype> {
        Self::ALL.into_iter().find(|d| d.name() == name)
    }

    /// The name as written in headers ("F32", "BF16", ...).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::BOOL => "BOOL",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::F8_E5M2 => "F8_E5M2",
            Dtype::F8_E4M3 => "F8_E4M3",
            Dtype::F8_E8M0 => "F8_E8M0",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::F32 => "F32",
            Dtype::C64 => "C64",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::BOOL | Dtype::U8 | Dtype::I8 => 1,
            Dtype::F8_E5M2 | Dtype::F8_E4M3 | Dtype::F8_E8M0 => 1,
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::BF16 => 2,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 4,
            Dtype::C64 | Dtype::F64 | Dtype::I64 | Dtype::U64 => 8,
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One tensor as described by the header, already validated against the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Name as written in the file (`model.layers.0.self_attn.q_proj.weight`).
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions, outermost first; empty for a scalar.
    pub shape: Vec<usize>,
    /// `[begin, end)` in bytes, relative to the start of the data section.
    pub data_offsets: (usize, usize),
}

/// A validated header: where the data section starts and what is in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Contents of `__metadata__` (empty if absent).
    pub metadata: BTreeMap<String, String>,
    /// Tensors in the order the header lists them.
    pub tensors: Vec<TensorInfo>,
    /// Absolute byte offset of the data section (`8 + header length`).
    pub data_start: usize,
}

/// Parses and validates the header of a complete safetensors file held in
/// `bytes`; `path` names the file in errors. Nothing is trusted: the header
/// length, the JSON, every dtype, shape and offset is checked against
/// `bytes.len()`, and tensors may not overlap. This is the entry point for
/// tests and fuzzing; [`SafetensorsFile`] uses it on the mapped file.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Header> {
    let bad = |msg: String| Error::format(path, msg);
    let file_len = bytes.len();
    let Some(len_bytes) = bytes.get(..8) else {
        return Err(bad(format!(
            "file is too short ({file_len} bytes) to be safetensors: the 8-byte header length is missing"
        )));
    };
    let mut le = [0u8; 8];
    le.copy_from_slice(len_bytes);
    let header_len = u64::from_le_bytes(le);
    if header_len > MAX_HEADER_LEN {
        return Err(bad(format!(
            "header length {header_len} is larger than the {MAX_HEADER_LEN}-byte limit (corrupted or not a safetensors file)"
        )));
    }
    // header_len ≤ 100 MB, so the conversion and the addition cannot overflow
    // even on 32-bit hosts; checked anyway so that no assumption is silent.
    let data_start = usize::try_from(header_len)
        .ok()
        .and_then(|n| n.checked_add(8))
        .filter(|&end| end <= file_len)
        .ok_or_else(|| {
            bad(format!(
                "header length {header_len} runs past the end of the file ({file_len} bytes): truncated file?"
            ))
        })?;
    let header_bytes = &bytes[8..data_start];
    let text = std::str::from_utf8(header_bytes).map_err(|e| {
        bad(format!(
            "header is not valid UTF-8 (at byte {} of the header)",
            e.valid_up_to()
        ))
    })?;
    let entries =
        parse_json_object(text).map_err(|e| bad(format!("header is not valid JSON: {e}")))?;

    let data_len = file_len - data_start;
    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        if name == "__metadata__" {
            metadata = parse_metadata(&value).map_err(|m| bad(format!("__metadata__: {m}")))?;
            continue;
        }
        let info = parse_tensor(name, &value, data_len).map_err(bad)?;
        tensors.push(info);
    }

    // Overlap check: sorted by start, each tensor must begin at or after the
    // end of the previous one. Empty tensors occupy no bytes and cannot
    // overlap anything, so they are left out (several may share an offset).
    let mut spans: Vec<(usize, usize, &str)> = tensors
        .iter()
        .filter(|t| t.data_offsets.0 < t.data_offsets.1)
        .map(|t| (t.data_offsets.0, t.data_offsets.1, t.name.as_str()))
        .collect();
    spans.sort_unstable();
    for pair in spans.windows(2) {
        let (prev, next) = (pair[0], pair[1]);
        if next.0 < prev.1 {
            return Err(bad(format!(
                "tensors '{}' [{}, {}) and '{}' [{}, {}) overlap in the data section",
                prev.2, prev.0, prev.1, next.2, next.0, next.1
            )));
        }
    }
    Ok(Header {
        metadata,
        tensors,
        data_start,
    })
}

/// Reads `__metadata__`: an object whose values are all strings.
fn parse_metadata(value: &Value) -> std::result::Result<BTreeMap<String, String>, String> {
    let obj = value
        .as_object()
        .ok_or_else(|| format!("expected an object of strings, got {}", json_kind(value)))?;
    obj.iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            other => Err(format!(
                "value of '{k}' must be a string, got {}",
                json_kind(other)
            )),
        })
        .collect()
}

/// Validates one tensor entry against the size of the data section.
fn parse_tensor(
    name: String,
    value: &Value,
    data_len: usize,
) -> std::result::Result<TensorInfo, String> {
    let obj = value.as_object().ok_or_else(|| {
        format!(
            "tensor '{name}': expected an object with dtype, shape and data_offsets, got {}",
            json_kind(value)
        )
    })?;
    let field = |key: &str| {
        obj.get(key)
            .ok_or_else(|| format!("tensor '{name}': missing '{key}'"))
    };
    let dtype_name = field("dtype")?
        .as_str()
        .ok_or_else(|| format!("tensor '{name}': 'dtype' must be a string"))?;
    let dtype = Dtype::from_name(dtype_name)
        .ok_or_else(|| format!("tensor '{name}': unknown dtype '{dtype_name}'"))?;

    let shape = field("shape")?
        .as_array()
        .ok_or_else(|| format!("tensor '{name}': 'shape' must be an array of integers"))?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| {
            format!("tensor '{name}': 'shape' must be an array of non-negative integers")
        })?;

    let offsets = field("data_offsets")?
        .as_array()
        .filter(|a| a.len() == 2)
        .ok_or_else(|| format!("tensor '{name}': 'data_offsets' must be [begin, end]"))?;
    let offset = |v: &Value| {
        v.as_u64()
            .and_then(|o| usize::try_from(o).ok())
            .ok_or_else(|| format!("tensor '{name}': 'data_offsets' must be non-negative integers"))
    };
    let (begin, end) = (offset(&offsets[0])?, offset(&offsets[1])?);
    if begin > end {
        return Err(format!(
            "tensor '{name}': data_offsets [{begin}, {end}) begin after they end"
        ));
    }
    if end > data_len {
        return Err(format!(
            "tensor '{name}': data_offsets [{begin}, {end}) run past the end of the data section ({data_len} bytes): truncated file?"
        ));
    }
    let expected = checked_numel(&shape)
        .and_then(|n| n.checked_mul(dtype.size()))
        .ok_or_else(|| format!("tensor '{name}': shape {shape:?} overflows"))?;
    if end - begin != expected {
        return Err(format!(
            "tensor '{name}': data_offsets [{begin}, {end}) hold {} bytes but shape {shape:?} of {dtype} needs {expected}",
            end - begin
        ));
    }
    Ok(TensorInfo {
        name,
        dtype,
        shape,
        data_offsets: (begin, end),
    })
}

/// A short name for the kind of a JSON value, for error messages.
pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses `text` as a JSON object and returns its entries in file order.
/// Unlike plain `serde_json`, a key repeated in any object (at any depth) is
/// an error rather than silently keeping the last value: two readers must
/// never disagree about what a file says.
pub(crate) fn parse_json_object(text: &str) -> std::result::Result<Vec<(String, Value)>, String> {
    let mut de = serde_json::Deserializer::from_str(text);
    let entries = de
        .deserialize_map(EntriesVisitor)
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(entries)
}

/// Collects the entries of the top-level object, rejecting repeated keys.
struct EntriesVisitor;

impl<'de> Visitor<'de> for EntriesVisitor {
    type Value = Vec<(String, Value)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut seen = std::collections::HashSet::new();
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!("key '{key}' appears twice")));
            }
            let StrictValue(value) = map.next_value()?;
            entries.push((key, value));
        }
        Ok(entries)
    }
}

/// A `serde_json::Value` whose objects were checked for repeated keys.
struct StrictValue(Value);

impl<'de> de::Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

/// Builds a [`Value`] like serde_json's own visitor, except for duplicate keys.
struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Value, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> std::result::Result<Value, A::Error> {
        let entries = EntriesVisitor.visit_map(map)?;
        Ok(Value::Object(entries.into_iter().collect::<Map<_, _>>()))
    }
}

/// An open, validated safetensors file.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    map: Arc<Mmap>,
    header: Header,
    /// Tensor name → index into `header.tensors`.
    by_name: HashMap<String, usize>,
}

/// Tensors with at least this many elements are widened on all cores; below
/// it, starting rayon tasks costs more than the conversion.
const PARALLEL_MIN: usize = 1 << 16;

impl SafetensorsFile {
    /// Maps the file at `path` read-only and validates its header.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let meta = file.metadata().map_err(|e| Error::io(path, e))?;
        if !meta.is_file() {
            return Err(Error::format(path, "not a regular file"));
        }
        // SAFETY: the map is only ever read, and we assume that nobody
        // modifies or truncates the file while it is mapped (a checkpoint
        // being loaded is not being written). A concurrent writer would
        // change tensor values under us, and a truncation would make reads
        // past the new end fault (SIGBUS); neither can be prevented from
        // within the process, which is the usual contract of mmap-based
        // weight loading.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Self::from_map(Arc::new(map), path)
    }

    /// Validates a file held in memory, copied into an anonymous map so that
    /// it goes through exactly the code paths of [`SafetensorsFile::open`]
    /// (including zero-copy F32 views). For tests and fuzzing; `path` only
    /// names the data in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let mut anon = MmapMut::map_anon(bytes.len()).map_err(|e| Error::io(path, e))?;
        anon.copy_from_slice(bytes);
        let map = anon.make_read_only().map_err(|e| Error::io(path, e))?;
        Self::from_map(Arc::new(map), path)
    }

    fn from_map(map: Arc<Mmap>, path: &Path) -> Result<Self> {
        let header = parse(&map, path)?;
        let by_name = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            map,
            header,
            by_name,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The validated header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The `__metadata__` strings (e.g. `{"format": "pt"}`).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.header.metadata
    }

    /// All tensors, in header order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    /// The tensor called `name`, if present.
    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.header.tensors[i])
    }

    /// The raw little-endian bytes of tensor `name`, if present.
    pub fn raw_bytes(&self, name: &str) -> Option<&[u8]> {
        let info = self.get(name)?;
        // parse() checked data_start + end ≤ file length.
        let (begin, end) = self.absolute_range(info);
        self.map.get(begin..end)
    }

    /// Absolute byte range of a tensor's data in the file.
    fn absolute_range(&self, info: &TensorInfo) -> (usize, usize) {
        // Cannot overflow: parse() checked end ≤ file length - data_start.
        let start = self.header.data_start;
        (start + info.data_offsets.0, start + info.data_offsets.1)
    }

    /// Tensor `name` as f32: F32 data is used in place (zero-copy view into
    /// the map, unless misaligned), F16 and BF16 are widened exactly. Any
    /// other dtype or an unknown name is an error naming the file and tensor.
    pub fn load_f32(&self, name: &str) -> Result<Tensor> {
        let info = self
            .get(name)
            .ok_or_else(|| Error::format(&self.path, format!("no tensor named '{name}'")))?;
        let (begin, end) = self.absolute_range(info);
        let shape = info.shape.clone();
        match info.dtype {
            Dtype::F32 => Tensor::mapped(self.map.clone(), begin, shape, &self.path),
            Dtype::F16 => {
                let bytes = &self.map[begin..end];
                Tensor::from_vec(shape, widen(bytes, |b| half::f16::from_bits(b).to_f32()))
            }
            Dtype::BF16 => {
                let bytes = &self.map[begin..end];
                Tensor::from_vec(shape, widen(bytes, |b| half::bf16::from_bits(b).to_f32()))
            }
            other => Err(Error::format(
                &self.path,
                format!(
                    "unsupported dtype {other} for tensor '{name}' (supported: F32, F16, BF16)"
                ),
            )),
        }
    }
}

/// Converts little-endian 16-bit values to f32 with `conv`, on all cores for
/// big tensors. `bytes.len()` is even (checked by `parse`); a stray odd byte
/// would be ignored rather than read out of bounds.
fn widen(bytes: &[u8], conv: impl Fn(u16) -> f32 + Sync) -> Vec<f32> {
    let n = bytes.len() / 2;
    let mut out = vec![0.0f32; n];
    let convert = |(dst, src): (&mut [f32], &[u8])| {
        for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
            *d = conv(u16::from_le_bytes([s[0], s[1]]));
        }
    };
    const CHUNK: usize = 1 << 14;
    if n >= PARALLEL_MIN {
        out.par_chunks_mut(CHUNK)
            .zip(bytes.par_chunks(CHUNK * 2))
            .for_each(convert);
    } else {
        convert((&mut out[..], bytes));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a safetensors file from (name, dtype, shape, data) entries,
    /// laying the data out in order.
    fn build(entries: &[(&str, &str, &[usize], &[u8])]) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        for (name, dtype, shape, bytes) in entries {
            let begin = data.len();
            data.extend_from_slice(bytes);
            header.insert(
                name.to_string(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [begin, data.len()]}),
            );
        }
        let mut json = serde_json::to_vec(&Value::Object(header)).unwrap();
        // Pad to 8 bytes like the reference writer so F32 data is aligned.
        while !json.len().is_multiple_of(8) {
            json.push(b' ');
        }
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&json);
        out.extend_from_slice(&data);
        out
    }

    fn with_header(json: &str, data: &[u8]) -> Vec<u8> {
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(json.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn err(bytes: &[u8]) -> String {
        parse(bytes, Path::new("w.safetensors"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn dtype_names_round_trip() {
        for d in Dtype::ALL {
            assert_eq!(Dtype::from_name(d.name()), Some(d));
        }
        assert_eq!(Dtype::from_name("f32"), None);
        assert_eq!(Dtype::from_name("Q4_0"), None);
    }

    #[test]
    fn parses_metadata_and_tensors() {
        let bytes = build(&[
            ("a", "F32", &[2], &[0; 8]),
            ("b", "I8", &[3], &[1, 2, 3]),
            ("empty", "F16", &[0, 4], &[]),
        ]);
        let h = parse(&bytes, Path::new("x")).unwrap();
        let names: Vec<&str> = h.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "empty"]);
        assert_eq!(h.tensors[2].shape, vec![0, 4]);
        assert!(h.metadata.is_empty());

        let json = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"I8","shape":[3],"data_offsets":[8,11]}}"#;
        let h = parse(&with_header(json, &[0; 11]), Path::new("x")).unwrap();
        assert_eq!(h.metadata.get("format").map(String::as_str), Some("pt"));
        assert_eq!(h.tensors.len(), 2);
        assert_eq!(h.tensors[1].dtype, Dtype::I8);
        assert_eq!(h.tensors[1].data_offsets, (8, 11));
        assert_eq!(h.data_start, 8 + json.len());
    }

    #[test]
    fn rejects_bad_headers() {
        assert!(err(&[1, 2, 3]).contains("too short"));
        let mut huge = (MAX_HEADER_LEN + 1).to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(err(&huge).contains("larger than"));
        let mut past = 100u64.to_le_bytes().to_vec();
        past.extend_from_slice(b"{}");
        assert!(err(&past).contains("runs past the end of the file"));
        assert!(err(&with_header("{\"a\":", &[])).contains("not valid JSON"));
        assert!(err(&with_header("[]", &[])).contains("not valid JSON"));
        assert!(err(&with_header("{} x", &[])).contains("not valid JSON"));
        let mut bad_utf8 = 3u64.to_le_bytes().to_vec();
        bad_utf8.extend_from_slice(&[b'{', 0xff, b'}']);
        assert!(err(&bad_utf8).contains("not valid UTF-8"));
        let dup = r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#;
        assert!(err(&with_header(dup, &[0, 0])).contains("key 'a' appears twice"));
        let inner_dup = r#"{"a":{"dtype":"U8","dtype":"F32","shape":[1],"data_offsets":[0,1]}}"#;
        assert!(err(&with_header(inner_dup, &[0])).contains("appears twice"));
        let meta = r#"{"__metadata__":{"n":1}}"#;
        assert!(err(&with_header(meta, &[])).contains("must be a string"));
    }

    #[test]
    fn rejects_bad_tensor_entries() {
        let one = |entry: &str, data: &[u8]| err(&with_header(&format!("{{\"t\":{entry}}}"), data));
        assert!(
            one(r#"{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}"#, &[0])
                .contains("unknown dtype 'Q4'")
        );
        assert!(one(r#"{"shape":[1],"data_offsets":[0,1]}"#, &[0]).contains("missing 'dtype'"));
        assert!(
            one(r#"{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}"#, &[0])
                .contains("non-negative")
        );
        assert!(
            one(r#"{"dtype":"U8","shape":[1],"data_offsets":[0]}"#, &[0]).contains("[begin, end]")
        );
        assert!(
            one(r#"{"dtype":"U8","shape":[1],"data_offsets":[1,0]}"#, &[0])
                .contains("begin after they end")
        );
        assert!(
            one(r#"{"dtype":"U8","shape":[1],"data_offsets":[0,2]}"#, &[0])
                .contains("run past the end of the data section")
        );
        assert!(one(
            r#"{"dtype":"F32","shape":[2],"data_offsets":[0,4]}"#,
            &[0; 4]
        )
        .contains("needs 8"));
        let big = format!(
            r#"{{"dtype":"F32","shape":[{},{}],"data_offsets":[0,0]}}"#,
            u64::MAX,
            2
        );
        assert!(one(&big, &[]).contains("overflows"));
        assert!(one("[1]", &[]).contains("expected an object"));
    }

    #[test]
    fn rejects_overlap_but_allows_empty_tensors_anywhere() {
        let overlap = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[2],"data_offsets":[3,5]}}"#;
        let msg = err(&with_header(overlap, &[0; 5]));
        assert!(msg.contains("'a' [0, 4) and 'b' [3, 5) overlap"), "{msg}");
        let empties = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[0],"data_offsets":[2,2]},"c":{"dtype":"U8","shape":[0],"data_offsets":[2,2]}}"#;
        assert!(parse(&with_header(empties, &[0; 4]), Path::new("x")).is_ok());
    }

    #[test]
    fn widening_is_exact_on_both_paths() {
        // Every f16 bit pattern, through the serial and the parallel path.
        let bytes: Vec<u8> = (0..=u16::MAX).flat_map(|b| b.to_le_bytes()).collect();
        let big: Vec<u8> = bytes
            .iter()
            .copied()
            .cycle()
            .take(bytes.len() * 2)
            .collect();
        let small = widen(&bytes[..2000], |b| half::f16::from_bits(b).to_f32());
        let par = widen(&big, |b| half::f16::from_bits(b).to_f32());
        assert!(big.len() / 2 >= PARALLEL_MIN);
        for (i, v) in par.iter().enumerate() {
            let bits = (i % 65536) as u16;
            let want = half::f16::from_bits(bits).to_f32();
            assert!(
                v.to_bits() == want.to_bits() || (v.is_nan() && want.is_nan()),
                "{bits:#x}"
            );
        }
        assert_eq!(small.len(), 1000);
        let bf = widen(&[0x80, 0x3f, 0x00, 0x80], |b| {
            half::bf16::from_bits(b).to_f32()
        });
        assert_eq!(bf[0], 1.0);
        assert_eq!(bf[1].to_bits(), (-0.0f32).to_bits());
    }

    #[test]
    fn loads_each_supported_dtype() {
        let f32s: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let bytes = build(&[
            ("f", "F32", &[1, 2], &f32s),
            ("h", "F16", &[2], &[0x00, 0x3c, 0x00, 0xc0]),
            ("b", "BF16", &[1], &[0x49, 0x40]),
            ("i", "I32", &[1], &[1, 0, 0, 0]),
        ]);
        let f = SafetensorsFile::from_bytes(&bytes, Path::new("m.safetensors")).unwrap();
        let t = f.load_f32("f").unwrap();
        assert!(t.is_mapped());
        assert_eq!(t.shape(), &[1, 2]);
        assert_eq!(t.data(), &[1.5, -2.0]);
        assert_eq!(f.load_f32("h").unwrap().data(), &[1.0, -2.0]);
        assert_eq!(f.load_f32("b").unwrap().data(), &[3.140625]);
        let e = f.load_f32("i").unwrap_err().to_string();
        assert_eq!(
            e,
            "m.safetensors: unsupported dtype I32 for tensor 'i' (supported: F32, F16, BF16)"
        );
        let e = f.load_f32("nope").unwrap_err().to_string();
        assert_eq!(e, "m.safetensors: no tensor named 'nope'");
        assert_eq!(f.raw_bytes("i"), Some(&[1u8, 0, 0, 0][..]));
    }
}
