//! The validating reader: every check of `docs/format.md`, section 8, runs
//! before anything is handed out; all arithmetic on file values is checked
//! and every read goes through `get`, so corrupt input gives an error,
//! never a panic or an out-of-bounds read.

use super::metadata::{decode_tokenizer_parts, Metadata, TokenizerKind};
use super::{
    arch, le_u32, le_u64, Header, Section, TensorInfo, ALIGN, HEADER_LEN, MAGIC, MAX_DIMS,
    RECORD_LEN, VERSION,
};
use crate::error::{Error, Result};
use crate::tokenizer::TokenizerParts;
use memmap2::Mmap;
use microllm_kernels::quant::{TensorType, WeightsRef};
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// 64 bytes aligned to 64: the unit of the owned buffer, so that tensors
/// are as aligned in a copy as in a map.
#[repr(C, align(64))]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Line([u8; 64]);

/// How [`MllmFile::open`] brings a file's bytes into memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum Residency {
    /// [`Residency::HugePages`] where the operating system offers
    /// transparent huge pages (Linux with them set to `always` or
    /// `madvise`), [`Residency::Mapped`] elsewhere.
    #[default]
    Auto,
    /// The file mapped read-only and used in place: nothing is copied, and
    /// the pages are the page cache's, which the system can drop and read
    /// again under memory pressure.
    Mapped,
    /// The file read once into private anonymous memory that the kernel is
    /// asked to back with 2 MiB pages. Decode reads every weight once per
    /// token: in 4 KiB pages a 100 MB model spans 25,000 of them, far more
    /// than the TLB holds, and the page walks cost decode 5–27% of its speed
    /// on the machine of `docs/performance.md`. The cost is one copy at
    /// load, and memory that only swap can reclaim.
    HugePages,
}

impl Residency {
    /// What [`Residency::Auto`] stands for on this system; other values as
    /// they are.
    pub fn resolve(self) -> Residency {
        match self {
            Residency::Auto if huge_pages_offered() => Residency::HugePages,
            Residency::Auto => Residency::Mapped,
            r => r,
        }
    }

    /// How a report names it ("huge pages", "file map", "auto").
    pub fn name(self) -> &'static str {
        match self {
            Residency::Auto => "auto",
            Residency::Mapped => "file map",
            Residency::HugePages => "huge pages",
        }
    }
}

/// Whether this system gives anonymous memory transparent huge pages on
/// request.
fn huge_pages_offered() -> bool {
    cfg!(target_os = "linux")
        && std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .is_ok_and(|s| thp_setting_offers(&s))
}

/// Whether a `transparent_hugepage/enabled` setting ("always [madvise]
/// never": the selected one in brackets) grants huge pages to memory that
/// asks for them.
pub(crate) fn thp_setting_offers(setting: &str) -> bool {
    setting
        .split_whitespace()
        .any(|w| w == "[always]" || w == "[madvise]")
}

/// The default of [`MllmFile::open`]: a [`Residency`] as its `u8`.
static DEFAULT_RESIDENCY: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Sets how [`MllmFile::open`] (and so [`crate::Model::load`]) brings
/// `.mllm` files into memory from now on; [`Residency::Auto`] unless set.
pub fn set_default_residency(r: Residency) {
    DEFAULT_RESIDENCY.store(r as u8, std::sync::atomic::Ordering::Relaxed);
}

/// What [`set_default_residency`] last set.
pub fn default_residency() -> Residency {
    let set = DEFAULT_RESIDENCY.load(std::sync::atomic::Ordering::Relaxed);
    [Residency::Mapped, Residency::HugePages]
        .into_iter()
        .find(|&r| r as u8 == set)
        .unwrap_or(Residency::Auto)
}

/// `file` read into anonymous memory asked for huge pages.
fn read_into_huge_pages(file: &std::fs::File, path: &Path) -> Result<Mmap> {
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let len = usize::try_from(len)
        .map_err(|_| Error::format(path, "the file does not fit in this platform's memory"))?;
    let mut anon = memmap2::MmapMut::map_anon(len).map_err(|e| Error::io(path, e))?;
    // A hint: where it is refused, the copy is made in small pages.
    #[cfg(target_os = "linux")]
    let _ = anon.advise(memmap2::Advice::HugePage);
    // Faulting the pages in (zeroing them) costs as much as the copy:
    // pieces of 2 MiB multiples are read on every core.
    #[cfg(unix)]
    {
        use rayon::prelude::*;
        use std::os::unix::fs::FileExt;
        const PIECE: usize = 8 << 20;
        anon.par_chunks_mut(PIECE)
            .enumerate()
            .try_for_each(|(i, piece)| file.read_exact_at(piece, (i * PIECE) as u64))
            .map_err(|e| Error::io(path, e))?;
    }
    #[cfg(not(unix))]
    {
        use std::io::Read;
        let mut reader: &std::fs::File = file;
        reader
            .read_exact(&mut anon)
            .map_err(|e| Error::io(path, e))?;
    }
    anon.make_read_only().map_err(|e| Error::io(path, e))
}

/// The bytes of an open file.
enum Backing {
    /// A read-only map of the file.
    Mapped(Mmap),
    /// A read-only map of private anonymous memory holding a copy of the
    /// file ([`Residency::HugePages`]).
    HugePages(Mmap),
    /// A 64-aligned copy (from [`MllmFile::parse`]) and its length.
    Owned(Vec<Line>, usize),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mapped(m) | Backing::HugePages(m) => m,
            Backing::Owned(v, len) => &bytemuck::cast_slice::<Line, u8>(v)[..*len],
        }
    }
}

/// An open, fully validated `.mllm` file. Tensor data is used in place.
pub struct MllmFile {
    path: PathBuf,
    backing: Backing,
    version: u32,
    metadata: Metadata,
    tokenizer: Range<usize>,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
}

impl std::fmt::Debug for MllmFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MllmFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("tensors", &self.tensors.len())
            .field("mapped", &self.is_mapped())
            .finish_non_exhaustive()
    }
}

/// A tensor's entry and its bytes, borrowed from the file.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    /// The table entry.
    pub info: &'a TensorInfo,
    /// `info.len` bytes at a 64-byte aligned address.
    pub bytes: &'a [u8],
}

impl<'a> TensorView<'a> {
    /// Typed planes for the kernels (no copy): the tensor as a
    /// `rows × cols` matrix, `cols` its last dimension.
    pub fn weights(&self) -> Result<WeightsRef<'a>> {
        WeightsRef::from_le_bytes(self.info.ty, self.bytes, self.info.rows(), self.info.cols())
            .map_err(|e| Error::invalid(format!("tensor '{}': {e}", self.info.name)))
    }
}

impl MllmFile {
    /// Opens `path` as [`default_residency`] says and validates it
    /// completely.
    pub fn open(path: impl AsRef<Path>) -> Result<MllmFile> {
        MllmFile::open_with(path, default_residency())
    }

    /// Opens `path`, its bytes mapped in place or read into huge pages
    /// ([`Residency`]), and validates it completely.
    pub fn open_with(path: impl AsRef<Path>, residency: Residency) -> Result<MllmFile> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let residency = residency.resolve();
        let backing = if residency == Residency::HugePages {
            Backing::HugePages(read_into_huge_pages(&file, path)?)
        } else {
            // SAFETY: the map is only ever read. The usual mmap caveat
            // holds: a process that truncates or rewrites the file while it
            // is mapped can make reads fault or change under us.
            // `MllmWriter` never rewrites a file in place (it renames a new
            // one over it), and the same contract is what every mmap-based
            // model loader accepts. Exercised by the tests in
            // tests/format_file.rs.
            Backing::Mapped(unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?)
        };
        let parsed = parse_bytes(backing.bytes(), path)?;
        Ok(parsed.into_file(path, backing))
    }

    /// Validates a file held in memory (tests, fuzzing, embedded models);
    /// the bytes are copied into a 64-byte aligned buffer. `path` only
    /// names the file in errors.
    pub fn parse(bytes: &[u8], path: impl AsRef<Path>) -> Result<MllmFile> {
        let path = path.as_ref();
        let mut lines = vec![Line([0; 64]); bytes.len().div_ceil(64)];
        bytemuck::cast_slice_mut::<Line, u8>(&mut lines)[..bytes.len()].copy_from_slice(bytes);
        let backing = Backing::Owned(lines, bytes.len());
        let parsed = parse_bytes(backing.bytes(), path)?;
        Ok(parsed.into_file(path, backing))
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Format version of the file.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// True when the bytes are a memory map of the file itself (not a
    /// copy).
    pub fn is_mapped(&self) -> bool {
        matches!(self.backing, Backing::Mapped(_))
    }

    /// Where an opened file's bytes live ([`Residency::Mapped`] or
    /// [`Residency::HugePages`]); `None` for one parsed from bytes.
    pub fn residency(&self) -> Option<Residency> {
        match self.backing {
            Backing::Mapped(_) => Some(Residency::Mapped),
            Backing::HugePages(_) => Some(Residency::HugePages),
            Backing::Owned(..) => None,
        }
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        self.backing.bytes()
    }

    /// Config, tokenizer kind, chat template, generation defaults, recipe,
    /// provenance.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The raw tokenizer section (described by `metadata().tokenizer.kind`).
    pub fn tokenizer_bytes(&self) -> &[u8] {
        &self.bytes()[self.tokenizer.clone()]
    }

    /// The tokenizer section as text. Its UTF-8 check runs here rather than
    /// at open: for a 2 MB `tokenizer.json` it costs ~1.4 ms, ten times the
    /// rest of opening, and only the tokenizer needs the text.
    pub fn tokenizer_text(&self) -> Result<&str> {
        std::str::from_utf8(self.tokenizer_bytes()).map_err(|e| {
            Error::format(
                &self.path,
                format!(
                    "the tokenizer section is not UTF-8 (at byte {})",
                    e.valid_up_to()
                ),
            )
        })
    }

    /// The tokenizer pieces, for a section of kind `gguf-parts`.
    pub fn tokenizer_parts(&self) -> Result<TokenizerParts> {
        if self.metadata.tokenizer.kind != TokenizerKind::GgufParts {
            return Err(Error::format(
                &self.path,
                format!(
                    "the tokenizer section is {:?}, not GGUF parts",
                    self.metadata.tokenizer.kind
                ),
            ));
        }
        decode_tokenizer_parts(self.tokenizer_text()?)
            .map_err(|e| Error::format(&self.path, format!("tokenizer section: {e}")))
    }

    /// Every tensor, in table order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor called `name`, with its bytes.
    pub fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        let info = &self.tensors[*self.index.get(name)?];
        let bytes = self.bytes().get(info.offset..info.offset + info.len)?;
        Some(TensorView { info, bytes })
    }
}

/// What `parse_bytes` found.
struct Parsed {
    version: u32,
    metadata: Metadata,
    tokenizer: Range<usize>,
    tensors: Vec<TensorInfo>,
}

impl Parsed {
    fn into_file(self, path: &Path, backing: Backing) -> MllmFile {
        let index = self
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        MllmFile {
            path: path.to_path_buf(),
            backing,
            version: self.version,
            metadata: self.metadata,
            tokenizer: self.tokenizer,
            tensors: self.tensors,
            index,
        }
    }
}

/// `u64` from the file to `usize`, which fails only on 32-bit hosts.
fn to_usize(v: u64, what: &str) -> std::result::Result<usize, String> {
    usize::try_from(v).map_err(|_| format!("{what} ({v}) is too large for this platform"))
}

/// Runs every check and returns what the file holds.
fn parse_bytes(b: &[u8], path: &Path) -> Result<Parsed> {
    let bad = |msg: String| Error::format(path, msg);
    if cfg!(target_endian = "big") {
        return Err(bad(
            "big-endian hosts cannot use .mllm files in place".into()
        ));
    }

    // 1-2. Magic and version come first: a newer header may differ.
    if b.len() < 8 {
        return Err(bad(format!(
            "file is {} bytes, too short to be a .mllm model",
            b.len()
        )));
    }
    if b[..4] != MAGIC {
        return Err(bad(format!(
            "not a .mllm file (magic {:?}, expected \"MLLM\")",
            String::from_utf8_lossy(&b[..4])
        )));
    }
    let version = le_u32(b, 4).unwrap_or(0);
    if version == 0 {
        return Err(bad("invalid format version 0".into()));
    }
    if version > VERSION {
        return Err(bad(format!(
            "made by a newer microllm (format version {version}, this build reads up to {VERSION})"
        )));
    }

    // 3. The rest of the header.
    let header = read_header(b).map_err(bad)?;
    // 4. Length.
    if header.file_len != b.len() as u64 {
        return Err(bad(if header.file_len > b.len() as u64 {
            format!(
                "truncated: the header says {} bytes, the file has {}",
                header.file_len,
                b.len()
            )
        } else {
            format!(
                "{} bytes of trailing data: the header says {} bytes, the file has {}",
                b.len() as u64 - header.file_len,
                header.file_len,
                b.len()
            )
        }));
    }
    // 5. Sections.
    let [meta, tok, table, data] = check_sections(&header).map_err(bad)?;

    // 6. Metadata.
    let metadata: Metadata =
        serde_json::from_slice(&b[meta.clone()]).map_err(|e| bad(format!("metadata: {e}")))?;
    metadata.validate(path)?;

    // 7. Tokenizer: present. (Its UTF-8 is checked when it is read.)
    if tok.is_empty() {
        return Err(bad("the tokenizer section is empty".into()));
    }

    // 8-9. Tensor table and overlaps.
    let tensors = read_table(&b[table], data.start, data.len()).map_err(bad)?;
    // Version 1 differs from 2 only in the `q4s24` block layout.
    if version == 1 {
        if let Some(t) = tensors.iter().find(|t| t.ty == TensorType::Q4S24) {
            return Err(bad(format!(
                "tensor '{}' is q4s24 in the format version 1 layout (2-bit positions), \
                 which this build no longer reads; prune the model again",
                t.name
            )));
        }
    }
    // 10. The tensors the architecture needs.
    arch::check_tensors(&metadata, &tensors).map_err(bad)?;

    Ok(Parsed {
        version,
        metadata,
        tokenizer: tok,
        tensors,
    })
}

/// Header fields after magic and version, with the fixed ones checked.
fn read_header(b: &[u8]) -> std::result::Result<Header, String> {
    if b.len() < HEADER_LEN {
        return Err(format!(
            "truncated: {} bytes, shorter than the {HEADER_LEN}-byte header",
            b.len()
        ));
    }
    let u32_at = |at| le_u32(b, at).unwrap_or(u32::MAX);
    let u64_at = |at| le_u64(b, at).unwrap_or(u64::MAX);
    let section = |at| Section {
        offset: u64_at(at),
        len: u64_at(at + 8),
    };
    let h = Header {
        version: u32_at(4),
        flags: u32_at(8),
        header_len: u32_at(12),
        file_len: u64_at(16),
        metadata: section(24),
        tokenizer: section(40),
        table: section(56),
        data: section(72),
    };
    if h.flags != 0 {
        return Err(format!(
            "unknown header flags {:#x} (version {VERSION} defines none)",
            h.flags
        ));
    }
    if h.header_len as usize != HEADER_LEN {
        return Err(format!(
            "header length {} is not {HEADER_LEN}",
            h.header_len
        ));
    }
    if let Some(i) = b[88..HEADER_LEN].iter().position(|&v| v != 0) {
        return Err(format!("reserved header byte {} is not zero", 88 + i));
    }
    Ok(h)
}

/// Byte ranges of metadata, tokenizer, table and data: inside the file,
/// after the header, not overlapping; data 64-aligned.
fn check_sections(h: &Header) -> std::result::Result<[Range<usize>; 4], String> {
    let named = [
        ("metadata", h.metadata),
        ("tokenizer", h.tokenizer),
        ("tensor table", h.table),
        ("data", h.data),
    ];
    let mut ranges: Vec<Range<u64>> = Vec::with_capacity(4);
    for (name, s) in named {
        let end = s
            .offset
            .checked_add(s.len)
            .ok_or_else(|| format!("the {name} section's offset + length overflows"))?;
        if s.offset < HEADER_LEN as u64 {
            return Err(format!(
                "the {name} section at offset {} overlaps the header",
                s.offset
            ));
        }
        if end > h.file_len {
            return Err(format!(
                "the {name} section [{}, {end}) runs past the end of the file ({} bytes)",
                s.offset, h.file_len
            ));
        }
        ranges.push(s.offset..end);
    }
    for i in 0..4 {
        for j in i + 1..4 {
            let (a, c) = (&ranges[i], &ranges[j]);
            if a.start < c.end && c.start < a.end {
                return Err(format!(
                    "the {} section [{}, {}) overlaps the {} section [{}, {})",
                    named[i].0, a.start, a.end, named[j].0, c.start, c.end
                ));
            }
        }
    }
    if h.metadata.len == 0 {
        return Err("the metadata section is empty".into());
    }
    if !h.data.offset.is_multiple_of(ALIGN as u64) {
        return Err(format!(
            "the data section starts at {}, not a multiple of {ALIGN}",
            h.data.offset
        ));
    }
    // Every end is at most the file length, which is a `usize`.
    let mut out: [Range<usize>; 4] = Default::default();
    for (o, r) in out.iter_mut().zip(ranges) {
        *o = to_usize(r.start, "section offset")?..to_usize(r.end, "section end")?;
    }
    Ok(out)
}

/// Parses and checks the tensor table. `data_start`/`data_len` locate the
/// data section in the file; returned offsets are absolute.
fn read_table(
    t: &[u8],
    data_start: usize,
    data_len: usize,
) -> std::result::Result<Vec<TensorInfo>, String> {
    if t.len() < 8 {
        return Err(format!(
            "the tensor table is {} bytes, too short for its count",
            t.len()
        ));
    }
    let count = le_u32(t, 0).unwrap_or(0) as u64;
    if le_u32(t, 4) != Some(0) {
        return Err("the tensor table's reserved field is not zero".into());
    }
    // count < 2^32, so this cannot overflow a u64.
    let records_end = 8 + count * RECORD_LEN as u64;
    if records_end > t.len() as u64 {
        return Err(format!(
            "the tensor table claims {count} records of {RECORD_LEN} bytes but is only {} bytes",
            t.len()
        ));
    }
    let records_end = records_end as usize;
    let names = &t[records_end..];
    let mut tensors = Vec::with_capacity(count as usize);
    let mut seen: HashSet<&str> = HashSet::with_capacity(count as usize);
    for i in 0..count as usize {
        let r = &t[8 + i * RECORD_LEN..8 + (i + 1) * RECORD_LEN];
        let u32_at = |at| le_u32(r, at).unwrap_or(u32::MAX);
        let u64_at = |at| le_u64(r, at).unwrap_or(u64::MAX);
        let (name_off, name_len) = (u32_at(0) as usize, u32_at(4) as usize);
        let name_bytes = name_off
            .checked_add(name_len)
            .and_then(|end| names.get(name_off..end))
            .ok_or_else(|| {
                format!(
                    "tensor {i}: its name [{name_off}, +{name_len}) lies outside the names area ({} bytes)",
                    names.len()
                )
            })?;
        let name = std::str::from_utf8(name_bytes)
            .map_err(|_| format!("tensor {i}: its name is not UTF-8"))?;
        if name.is_empty() {
            return Err(format!("tensor {i} has an empty name"));
        }
        if !seen.insert(name) {
            return Err(format!("tensor '{name}' appears twice in the table"));
        }
        let type_id = u32_at(8);
        let ty = TensorType::from_id(type_id).ok_or_else(|| {
            format!(
                "tensor '{name}' has unknown type id {type_id} (this build knows 0 to {})",
                TensorType::ALL.len() - 1
            )
        })?;
        let n_dims = u32_at(12) as usize;
        if !(1..=MAX_DIMS).contains(&n_dims) {
            return Err(format!(
                "tensor '{name}' has {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
            ));
        }
        let dims: Vec<u64> = (0..MAX_DIMS).map(|d| u64_at(16 + 8 * d)).collect();
        let shape = &dims[..n_dims];
        if shape.contains(&0) {
            return Err(format!("tensor '{name}' has a zero dimension: {shape:?}"));
        }
        if dims[n_dims..].iter().any(|&d| d != 0) {
            return Err(format!(
                "tensor '{name}': unused dimension slots are not zero ({dims:?})"
            ));
        }
        let cols = shape[n_dims - 1];
        let rows = shape[..n_dims - 1]
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|r| r.checked_mul(cols).is_some())
            .ok_or_else(|| format!("tensor '{name}': shape {shape:?} overflows"))?;
        if ty.is_quantized() && !cols.is_multiple_of(32) {
            return Err(format!(
                "tensor '{name}' is {ty} but its last dimension ({cols}) is not a multiple of 32"
            ));
        }
        let want = ty
            .byte_len(rows, cols)
            .ok_or_else(|| format!("tensor '{name}': {ty} {shape:?} overflows"))?;
        let (offset, len) = (u64_at(48), u64_at(56));
        if len != want {
            return Err(format!(
                "tensor '{name}' ({ty} {shape:?}) should be {want} bytes, the table says {len}"
            ));
        }
        if offset % ALIGN as u64 != 0 {
            return Err(format!(
                "tensor '{name}': data offset {offset} is not a multiple of {ALIGN}"
            ));
        }
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= data_len as u64)
            .ok_or_else(|| {
                format!(
                    "tensor '{name}': data [{offset}, +{len}) runs past the end of the data section ({data_len} bytes)"
                )
            })?;
        let shape = shape
            .iter()
            .map(|&d| to_usize(d, "dimension"))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        // offset + len ≤ data_len and data_start + data_len ≤ file length.
        tensors.push(TensorInfo {
            name: name.to_string(),
            ty,
            shape,
            offset: data_start + offset as usize,
            len: (end - offset) as usize,
        });
    }
    // No two tensors share a byte.
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| tensors[i].offset);
    for w in order.windows(2) {
        let (a, c) = (&tensors[w[0]], &tensors[w[1]]);
        if a.offset + a.len > c.offset {
            return Err(format!(
                "tensors '{}' [{}, {}) and '{}' [{}, {}) overlap",
                a.name,
                a.offset,
                a.offset + a.len,
                c.name,
                c.offset,
                c.offset + c.len
            ));
        }
    }
    Ok(tensors)
}

#[cfg(test)]
mod tests {
    use super::{thp_setting_offers, Residency};

    #[test]
    fn huge_pages_are_offered_only_when_always_or_madvise_is_selected() {
        assert!(thp_setting_offers("always [madvise] never\n"));
        assert!(thp_setting_offers("[always] madvise never"));
        assert!(!thp_setting_offers("always madvise [never]\n"));
        assert!(!thp_setting_offers("madvise always never"));
        assert!(!thp_setting_offers(""));
        // Explicit choices stay as they are.
        for r in [Residency::Mapped, Residency::HugePages] {
            assert_eq!(r.resolve(), r);
        }
    }

    #[test]
    fn the_default_residency_is_what_was_set_last() {
        assert_eq!(super::default_residency(), Residency::Auto);
        super::set_default_residency(Residency::Mapped);
        assert_eq!(super::default_residency(), Residency::Mapped);
        super::set_default_residency(Residency::HugePages);
        assert_eq!(super::default_residency(), Residency::HugePages);
        super::set_default_residency(Residency::Auto);
        assert_eq!(super::default_residency(), Residency::Auto);
    }
}
