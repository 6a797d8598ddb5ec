//! The writer: metadata, tokenizer and tensors in, a `.mllm` file out,
//! checked by the same rules the reader applies and written atomically
//! (a temporary file in the same folder, synced, then renamed).

use super::metadata::Metadata;
use super::{
    align_up, arch, Header, Section, TensorInfo, ALIGN, HEADER_LEN, MAX_DIMS, RECORD_LEN, VERSION,
};
use crate::error::{Error, Result};
use microllm_kernels::quant::{self, TensorType};
use std::borrow::Cow;
use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

/// A tensor waiting to be written.
struct Pending<'a> {
    name: String,
    ty: TensorType,
    shape: Vec<usize>,
    bytes: Cow<'a, [u8]>,
}

/// Collects a model's parts and writes them as a `.mllm` file.
///
/// Tensors are stored in the order they are added (add them in forward-pass
/// order, [`super::expected_tensors`], so that a first pass reads the file
/// front to back). Tensor bytes may be borrowed, e.g. from a mapped source
/// file, so that nothing is copied before it is written.
///
/// ```no_run
/// # fn demo(metadata: microllm::format::Metadata, tokenizer_json: &[u8], w: &[f32]) -> microllm::Result<()> {
/// use microllm::format::{MllmWriter, TensorType};
/// let mut writer = MllmWriter::new(metadata, tokenizer_json);
/// writer.add_f32("model.embed_tokens.weight", TensorType::Q8, &[49152, 576], w)?;
/// // ... every other tensor ...
/// writer.write("smollm2-135m.q4.mllm")?;
/// # Ok(()) }
/// ```
pub struct MllmWriter<'a> {
    metadata: Metadata,
    tokenizer: Cow<'a, [u8]>,
    tensors: Vec<Pending<'a>>,
    names: HashSet<String>,
}

/// Where everything goes.
struct Plan {
    header: Header,
    metadata: Vec<u8>,
    table: Vec<u8>,
    /// Offset of each tensor from the start of the data section.
    offsets: Vec<u64>,
}

impl<'a> MllmWriter<'a> {
    /// A writer for a model with `metadata` and the tokenizer section
    /// `tokenizer` (as `metadata.tokenizer.kind` describes).
    pub fn new(metadata: Metadata, tokenizer: impl Into<Cow<'a, [u8]>>) -> Self {
        MllmWriter {
            metadata,
            tokenizer: tokenizer.into(),
            tensors: Vec::new(),
            names: HashSet::new(),
        }
    }

    /// The metadata, to amend before writing.
    pub fn metadata_mut(&mut self) -> &mut Metadata {
        &mut self.metadata
    }

    /// Adds a tensor already in the file layout of `ty` (see
    /// [`quant::encode`]). Its length must match `shape` and `ty`.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        ty: TensorType,
        shape: &[usize],
        bytes: impl Into<Cow<'a, [u8]>>,
    ) -> Result<()> {
        let name = name.into();
        let bytes = bytes.into();
        let bad = |msg: String| Err(Error::invalid(format!("tensor '{name}': {msg}")));
        if name.is_empty() || u32::try_from(name.len()).is_err() {
            return bad("a name must be 1 to 2^32 − 1 bytes".into());
        }
        if self.names.contains(&name) {
            return bad("added twice".into());
        }
        if !(1..=MAX_DIMS).contains(&shape.len()) || shape.contains(&0) {
            return bad(format!(
                "shape {shape:?} needs 1 to {MAX_DIMS} non-zero dimensions"
            ));
        }
        let (rows, cols) = rows_cols(shape)
            .ok_or_else(|| Error::invalid(format!("tensor '{name}': shape {shape:?} overflows")))?;
        match ty.byte_len(rows, cols) {
            Some(n) if n == bytes.len() as u64 => {}
            Some(n) => return bad(format!("{ty} {shape:?} is {n} bytes, got {}", bytes.len())),
            None => return bad(format!("{ty} cannot hold shape {shape:?}")),
        }
        self.names.insert(name.clone());
        self.tensors.push(Pending {
            name,
            ty,
            shape: shape.to_vec(),
            bytes,
        });
        Ok(())
    }

    /// Converts row-major f32 `values` to `ty` (quantizing for `q8`, `q4`,
    /// `q4m`) and adds them. NaN or infinite values are an error.
    pub fn add_f32(
        &mut self,
        name: impl Into<String>,
        ty: TensorType,
        shape: &[usize],
        values: &[f32],
    ) -> Result<()> {
        let name = name.into();
        let (rows, cols) = rows_cols(shape)
            .and_then(|(r, c)| Some((usize::try_from(r).ok()?, usize::try_from(c).ok()?)))
            .ok_or_else(|| Error::invalid(format!("tensor '{name}': shape {shape:?} overflows")))?;
        let bytes = quant::encode(ty, values, rows, cols)
            .map_err(|e| Error::invalid(format!("tensor '{name}' as {ty}: {e}")))?;
        self.add_tensor(name, ty, shape, bytes)
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let plan = self.plan(Path::new("<memory>"))?;
        let mut out = Vec::with_capacity(plan.header.file_len as usize);
        self.emit(&plan, &mut out)
            .map_err(|e| Error::io("<memory>", e))?;
        Ok(out)
    }

    /// Writes the file to `path` atomically: into a temporary file next to
    /// it, synced to disk, then renamed over `path`. A reader never sees a
    /// half-written file and an existing file is never modified in place
    /// (which would break its memory maps).
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let plan = self.plan(path)?;
        let file_name = path
            .file_name()
            .ok_or_else(|| Error::invalid(format!("{}: not a file path", path.display())))?;
        let tmp = path.with_file_name(format!(
            ".{}.tmp-{}",
            file_name.to_string_lossy(),
            std::process::id()
        ));
        let result = (|| -> std::io::Result<()> {
            let file = std::fs::File::create(&tmp)?;
            let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
            self.emit(&plan, &mut w)?;
            let file = w.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::io(path, e));
        }
        Ok(())
    }

    /// Checks everything the reader will check and lays the file out.
    fn plan(&self, path: &Path) -> Result<Plan> {
        let refuse = |msg: String| Error::invalid(format!("not writing {}: {msg}", path.display()));
        self.metadata.validate(path).map_err(|e| match e {
            Error::Format { msg, .. } => refuse(msg),
            other => other,
        })?;
        let text = self.metadata.tokenizer.kind.is_text();
        if self.tokenizer.is_empty() || (text && std::str::from_utf8(&self.tokenizer).is_err()) {
            return Err(refuse(
                "the tokenizer section must be non-empty (and UTF-8 for a JSON kind)".into(),
            ));
        }
        let metadata =
            serde_json::to_vec(&self.metadata).map_err(|e| refuse(format!("metadata: {e}")))?;

        // Data offsets, each aligned.
        let overflow = || refuse("the file would exceed 2^64 bytes".into());
        let mut offsets = Vec::with_capacity(self.tensors.len());
        let mut infos = Vec::with_capacity(self.tensors.len());
        let mut end = 0u64;
        for t in &self.tensors {
            let off = align_up(end).ok_or_else(overflow)?;
            end = off.checked_add(t.bytes.len() as u64).ok_or_else(overflow)?;
            offsets.push(off);
            infos.push(TensorInfo {
                name: t.name.clone(),
                ty: t.ty,
                shape: t.shape.clone(),
                offset: 0,
                len: t.bytes.len(),
            });
        }
        arch::check_tensors(&self.metadata, &infos).map_err(refuse)?;

        // Table: count, reserved, records, names.
        let names_len: usize = self.tensors.iter().map(|t| t.name.len()).sum();
        if u32::try_from(names_len).is_err() || u32::try_from(self.tensors.len()).is_err() {
            return Err(refuse(
                "too many tensors or names too long for the table".into(),
            ));
        }
        let mut table = Vec::with_capacity(8 + self.tensors.len() * RECORD_LEN + names_len);
        table.extend_from_slice(&(self.tensors.len() as u32).to_le_bytes());
        table.extend_from_slice(&0u32.to_le_bytes());
        let mut name_off = 0u32;
        for (t, &off) in self.tensors.iter().zip(&offsets) {
            table.extend_from_slice(&name_off.to_le_bytes());
            table.extend_from_slice(&(t.name.len() as u32).to_le_bytes());
            table.extend_from_slice(&t.ty.id().to_le_bytes());
            table.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for d in 0..MAX_DIMS {
                let v = t.shape.get(d).copied().unwrap_or(0) as u64;
                table.extend_from_slice(&v.to_le_bytes());
            }
            table.extend_from_slice(&off.to_le_bytes());
            table.extend_from_slice(&(t.bytes.len() as u64).to_le_bytes());
            name_off += t.name.len() as u32;
        }
        for t in &self.tensors {
            table.extend_from_slice(t.name.as_bytes());
        }

        let meta = Section {
            offset: HEADER_LEN as u64,
            len: metadata.len() as u64,
        };
        let tok = Section {
            offset: meta.offset + meta.len,
            len: self.tokenizer.len() as u64,
        };
        let tab = Section {
            offset: tok.offset + tok.len,
            len: table.len() as u64,
        };
        let data = Section {
            offset: align_up(tab.offset + tab.len).ok_or_else(overflow)?,
            len: end,
        };
        let header = Header {
            version: VERSION,
            flags: 0,
            header_len: HEADER_LEN as u32,
            file_len: data.offset.checked_add(data.len).ok_or_else(overflow)?,
            metadata: meta,
            tokenizer: tok,
            table: tab,
            data,
        };
        Ok(Plan {
            header,
            metadata,
            table,
            offsets,
        })
    }

    /// Writes the planned bytes, zero padding included.
    fn emit(&self, plan: &Plan, w: &mut impl Write) -> std::io::Result<()> {
        let zeros = [0u8; ALIGN];
        w.write_all(&plan.header.to_bytes())?;
        w.write_all(&plan.metadata)?;
        w.write_all(&self.tokenizer)?;
        w.write_all(&plan.table)?;
        let mut pos = plan.header.table.offset + plan.header.table.len;
        let data_start = plan.header.data.offset;
        for (t, &off) in self.tensors.iter().zip(&plan.offsets) {
            let at = data_start + off;
            w.write_all(&zeros[..(at - pos) as usize])?;
            w.write_all(&t.bytes)?;
            pos = at + t.bytes.len() as u64;
        }
        // No tensors: the data section is empty but still starts aligned.
        if pos < data_start {
            w.write_all(&zeros[..(data_start - pos) as usize])?;
        }
        w.flush()
    }
}

/// `(rows, cols)` of a shape as u64: all dimensions but the last, and the last.
fn rows_cols(shape: &[usize]) -> Option<(u64, u64)> {
    let (last, rest) = shape.split_last()?;
    let rows = rest
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d as u64))?;
    rows.checked_mul(*last as u64)?;
    Some((rows, *last as u64))
}
