//! Helpers shared by the GGUF tests: a minimal safetensors reader (the
//! product's reader is developed separately; the tests must not depend on
//! it) and a GGUF byte builder for hand-made and corrupted files.
#![allow(dead_code)]

use memmap2::Mmap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Path of a file in the repository.
pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// One safetensors entry.
pub struct StEntry {
    pub dtype: String,
    pub shape: Vec<usize>,
    pub start: usize,
    pub end: usize,
}

/// A safetensors file parsed from its 8-byte header length and JSON header.
pub struct SafeTensors {
    map: Mmap,
    data_start: usize,
    pub entries: HashMap<String, StEntry>,
}

impl SafeTensors {
    pub fn open(path: &Path) -> SafeTensors {
        let file = std::fs::File::open(path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
        // SAFETY: a read-only test fixture nobody modifies during the test.
        let map = unsafe { Mmap::map(&file) }.expect("mmap");
        let n = u64::from_le_bytes(map[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value =
            serde_json::from_slice(&map[8..8 + n]).expect("safetensors JSON header");
        let mut entries = HashMap::new();
        for (name, v) in header.as_object().expect("header object") {
            if name == "__metadata__" {
                continue;
            }
            let shape = v["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            let offs = v["data_offsets"].as_array().unwrap();
            entries.insert(
                name.clone(),
                StEntry {
                    dtype: v["dtype"].as_str().unwrap().to_owned(),
                    shape,
                    start: offs[0].as_u64().unwrap() as usize,
                    end: offs[1].as_u64().unwrap() as usize,
                },
            );
        }
        SafeTensors {
            map,
            data_start: 8 + n,
            entries,
        }
    }

    pub fn bytes(&self, name: &str) -> &[u8] {
        let e = &self.entries[name];
        &self.map[self.data_start + e.start..self.data_start + e.end]
    }

    /// An F32 tensor's values as bit patterns (so NaNs compare exactly).
    pub fn f32_bits(&self, name: &str) -> Vec<u32> {
        assert_eq!(self.entries[name].dtype, "F32", "{name}");
        self.bytes(name)
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }
}

/// Bit patterns of f32 values.
pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

// ---------------------------------------------------------------------------
// GGUF builder
// ---------------------------------------------------------------------------

/// A metadata value to encode.
#[derive(Clone, Debug)]
pub enum Val {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    /// Element type id and elements (encoded without their own tags).
    Arr(u32, Vec<Val>),
    U64(u64),
    I64(i64),
    F64(f64),
    /// Arbitrary bytes after an arbitrary type tag, for corrupt values.
    Raw(u32, Vec<u8>),
}

impl Val {
    pub fn str(s: &str) -> Val {
        Val::Str(s.to_owned())
    }

    pub fn strs(v: &[&str]) -> Val {
        Val::Arr(8, v.iter().map(|s| Val::str(s)).collect())
    }

    fn type_id(&self) -> u32 {
        match self {
            Val::U8(_) => 0,
            Val::I8(_) => 1,
            Val::U16(_) => 2,
            Val::I16(_) => 3,
            Val::U32(_) => 4,
            Val::I32(_) => 5,
            Val::F32(_) => 6,
            Val::Bool(_) => 7,
            Val::Str(_) => 8,
            Val::Arr(..) => 9,
            Val::U64(_) => 10,
            Val::I64(_) => 11,
            Val::F64(_) => 12,
            Val::Raw(t, _) => *t,
        }
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Val::U8(v) => out.push(*v),
            Val::I8(v) => out.extend(v.to_le_bytes()),
            Val::U16(v) => out.extend(v.to_le_bytes()),
            Val::I16(v) => out.extend(v.to_le_bytes()),
            Val::U32(v) => out.extend(v.to_le_bytes()),
            Val::I32(v) => out.extend(v.to_le_bytes()),
            Val::F32(v) => out.extend(v.to_le_bytes()),
            Val::Bool(v) => out.push(*v as u8),
            Val::Str(s) => put_str(out, s),
            Val::Arr(t, items) => {
                out.extend(t.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for it in items {
                    it.encode_body(out);
                }
            }
            Val::U64(v) => out.extend(v.to_le_bytes()),
            Val::I64(v) => out.extend(v.to_le_bytes()),
            Val::F64(v) => out.extend(v.to_le_bytes()),
            Val::Raw(_, b) => out.extend(b),
        }
    }
}

pub fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// A tensor to write.
#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub name: String,
    pub dims: Vec<u64>,
    pub type_id: u32,
    pub data: Vec<u8>,
    /// Offset relative to the data section; `None` places it after the
    /// previous tensor, aligned.
    pub offset: Option<u64>,
}

/// Writes GGUF files, valid or deliberately not.
#[derive(Clone, Debug)]
pub struct GgufBuilder {
    pub magic: [u8; 4],
    pub version: u32,
    pub kvs: Vec<(String, Val)>,
    pub tensors: Vec<TensorSpec>,
    pub alignment: usize,
    pub tensor_count: Option<u64>,
    pub kv_count: Option<u64>,
}

impl Default for GgufBuilder {
    fn default() -> Self {
        GgufBuilder {
            magic: *b"GGUF",
            version: 3,
            kvs: Vec::new(),
            tensors: Vec::new(),
            alignment: 32,
            tensor_count: None,
            kv_count: None,
        }
    }
}

impl GgufBuilder {
    pub fn kv(mut self, key: &str, v: Val) -> Self {
        self.set(key, v);
        self
    }

    /// Sets (or replaces) a key in place.
    pub fn set(&mut self, key: &str, v: Val) {
        match self.kvs.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = v,
            None => self.kvs.push((key.to_owned(), v)),
        }
    }

    pub fn remove(&mut self, key: &str) {
        self.kvs.retain(|(k, _)| k != key);
    }

    /// Adds an F32 tensor of GGUF dims `dims` with values 0, 1, 2, ...
    pub fn f32_tensor(mut self, name: &str, dims: &[u64]) -> Self {
        let n: u64 = dims.iter().product();
        let data = (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect();
        self.tensors.push(TensorSpec {
            name: name.to_owned(),
            dims: dims.to_vec(),
            type_id: 0,
            data,
            offset: None,
        });
        self
    }

    pub fn tensor(mut self, t: TensorSpec) -> Self {
        self.tensors.push(t);
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(self.magic);
        out.extend(self.version.to_le_bytes());
        out.extend(
            self.tensor_count
                .unwrap_or(self.tensors.len() as u64)
                .to_le_bytes(),
        );
        out.extend(self.kv_count.unwrap_or(self.kvs.len() as u64).to_le_bytes());
        for (k, v) in &self.kvs {
            put_str(&mut out, k);
            out.extend(v.type_id().to_le_bytes());
            v.encode_body(&mut out);
        }
        let align = |x: usize| x.div_ceil(self.alignment) * self.alignment;
        let mut offsets = Vec::new();
        let mut next = 0usize;
        for t in &self.tensors {
            match t.offset {
                Some(o) => offsets.push(o),
                None => {
                    offsets.push(next as u64);
                    next = align(next + t.data.len());
                }
            }
        }
        for (t, &off) in self.tensors.iter().zip(&offsets) {
            put_str(&mut out, &t.name);
            out.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.type_id.to_le_bytes());
            out.extend(off.to_le_bytes());
        }
        let data_start = align(out.len());
        out.resize(data_start, 0);
        for (t, &off) in self.tensors.iter().zip(&offsets) {
            if t.data.is_empty() {
                continue; // lets a test point a tensor anywhere, even far past the end
            }
            let at = data_start + off as usize;
            if out.len() < at + t.data.len() {
                out.resize(at + t.data.len(), 0);
            }
            out[at..at + t.data.len()].copy_from_slice(&t.data);
        }
        out
    }
}

/// A small valid untied llama: hidden 32, 2 heads of 16, 1 kv head, ffn 32,
/// 4 tokens, one layer, every tensor F32.
pub fn mini_llama() -> GgufBuilder {
    let mut b = GgufBuilder::default()
        .kv("general.architecture", Val::str("llama"))
        .kv("llama.block_count", Val::U32(1))
        .kv("llama.context_length", Val::U32(64))
        .kv("llama.embedding_length", Val::U32(32))
        .kv("llama.feed_forward_length", Val::U32(32))
        .kv("llama.attention.head_count", Val::U32(2))
        .kv("llama.attention.head_count_kv", Val::U32(1))
        .kv("llama.attention.layer_norm_rms_epsilon", Val::F32(1e-6))
        .kv("tokenizer.ggml.model", Val::str("gpt2"))
        .kv("tokenizer.ggml.tokens", Val::strs(&["a", "b", "c", "ab"]))
        .kv("tokenizer.ggml.merges", Val::strs(&["a b"]))
        .kv(
            "tokenizer.ggml.token_type",
            Val::Arr(5, vec![Val::I32(1), Val::I32(1), Val::I32(1), Val::I32(3)]),
        )
        .kv("tokenizer.ggml.bos_token_id", Val::U32(0))
        .kv("tokenizer.ggml.eos_token_id", Val::U32(3))
        .f32_tensor("token_embd.weight", &[32, 4])
        .f32_tensor("output_norm.weight", &[32])
        .f32_tensor("output.weight", &[32, 4]);
    for (name, dims) in [
        ("attn_norm.weight", vec![32]),
        ("ffn_norm.weight", vec![32]),
        ("attn_q.weight", vec![32, 32]),
        ("attn_k.weight", vec![32, 16]),
        ("attn_v.weight", vec![32, 16]),
        ("attn_output.weight", vec![32, 32]),
        ("ffn_gate.weight", vec![32, 32]),
        ("ffn_up.weight", vec![32, 32]),
        ("ffn_down.weight", vec![32, 32]),
    ] {
        b = b.f32_tensor(&format!("blk.0.{name}"), &dims);
    }
    b
}
