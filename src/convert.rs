//! Making `.mllm` files: a quantization recipe applied to any model source,
//! in memory (for a quick try, or to compare) or written to a file.

use crate::error::{Error, Result};
use crate::format::{
    expected_tensors, LoraInfo, Metadata, MllmWriter, Provenance, Recipe, Role, SourceFile,
    TokenizerInfo, TokenizerKind,
};
use crate::lora::LoraAdapter;
use crate::source::{self, ModelParts, SourceFormat, TensorSource};
use crate::tensor::{Backing, Tensor};
use microllm_kernels::quant::{encode, TensorType};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Name and version of the quantizers (see `kernels/src/quant`), recorded
/// in every file so that a later change of algorithm is visible.
pub const QUANT_METHOD: &str = "microllm-mse-v1";

/// Bytes in the layout of a tensor type, 8-byte aligned so that f32 and f16
/// planes can be viewed in place, like a file's.
#[derive(Debug)]
struct OwnedBytes {
    words: Vec<u64>,
    len: usize,
}

impl OwnedBytes {
    fn new(bytes: &[u8]) -> OwnedBytes {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        OwnedBytes {
            words,
            len: bytes.len(),
        }
    }
}

impl Backing for OwnedBytes {
    fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.len]
    }
}

/// A recipe: `default` for every weight matrix; the output head (the token
/// embedding when they are `tied`) as `output` if given; then `overrides`.
pub fn recipe(
    default: TensorType,
    output: Option<TensorType>,
    tied: bool,
    overrides: &[(String, TensorType)],
) -> Recipe {
    let mut r = Recipe {
        method: QUANT_METHOD.to_string(),
        default_type: default,
        overrides: Default::default(),
    };
    if let Some(t) = output {
        let head = if tied {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        };
        r.overrides.insert(head.into(), t);
    }
    for (name, t) in overrides {
        r.overrides.insert(name.clone(), *t);
    }
    r
}

/// A tensor of type `ty` over a private, aligned copy of `bytes` (in the
/// layout a file holds), as [`quantize_tensor`] makes them.
pub(crate) fn tensor_from_bytes(ty: TensorType, shape: Vec<usize>, bytes: &[u8]) -> Result<Tensor> {
    Tensor::in_file(
        Arc::new(OwnedBytes::new(bytes)),
        ty,
        0,
        shape,
        Path::new("<memory>"),
    )
}

/// `f32` values stored as `ty`: the bytes a file would hold, and the same
/// bytes as a tensor the kernels can run on.
pub fn quantize_tensor(t: &Tensor, ty: TensorType) -> Result<(Tensor, Vec<u8>)> {
    let w = t.weights();
    let values = match t.ty() {
        TensorType::F32 => std::borrow::Cow::Borrowed(t.data()),
        _ => std::borrow::Cow::Owned(w.dequantize()),
    };
    let bytes = encode(ty, &values, w.rows(), w.cols())
        .map_err(|e| Error::invalid(format!("{ty}: {e}")))?;
    let backing = Arc::new(OwnedBytes::new(&bytes));
    let tensor = Tensor::in_file(backing, ty, 0, t.shape().to_vec(), Path::new("<memory>"))?;
    Ok((tensor, bytes))
}

/// Root-mean-square error of `q` against `reference`, relative to the RMS
/// of `reference` (0 for an all-zero reference reproduced exactly).
pub fn relative_rmse(reference: &[f32], q: &Tensor) -> f64 {
    let deq = q.weights().dequantize();
    let (mut err, mut sig) = (0.0f64, 0.0f64);
    for (&a, &b) in reference.iter().zip(&deq) {
        err += (a as f64 - b as f64).powi(2);
        sig += (a as f64).powi(2);
    }
    if sig == 0.0 {
        return if err == 0.0 { 0.0 } else { f64::INFINITY };
    }
    (err / sig).sqrt()
}

/// The tensors of another source with a recipe applied at load time (norms
/// stay f32). Each tensor is quantized when it is loaded: a private copy.
struct QuantizedSource {
    inner: Box<dyn TensorSource>,
    recipe: Recipe,
}

impl TensorSource for QuantizedSource {
    fn names(&self) -> Vec<String> {
        self.inner.names()
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.inner.shape(name)
    }
    fn load_f32(&self, name: &str) -> Result<Tensor> {
        self.inner.load_f32(name)
    }
    fn load(&self, name: &str) -> Result<Tensor> {
        let t = self.inner.load_f32(name)?;
        if t.shape().len() < 2 {
            return Ok(t);
        }
        let ty = self.recipe.type_for(name);
        quantize_tensor(&t, ty)
            .map(|(q, _)| q)
            .map_err(|e| Error::invalid(format!("tensor '{name}': {e}")))
    }
}

impl ModelParts {
    /// The same model with `recipe` applied in memory when it is loaded.
    pub fn quantized(self, recipe: Recipe) -> ModelParts {
        ModelParts {
            tensors: Box::new(QuantizedSource {
                inner: self.tensors,
                recipe,
            }),
            ..self
        }
    }
}

/// One row of the conversion report.
#[derive(Debug, Clone)]
pub struct TensorReport {
    /// Hugging Face name.
    pub name: String,
    /// The type it was stored as.
    pub ty: TensorType,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Bytes in the file.
    pub bytes: usize,
    /// RMSE relative to the tensor's RMS.
    pub rel_rmse: f64,
}

/// What [`convert`] wrote.
#[derive(Debug, Clone)]
pub struct ConvertReport {
    /// Every tensor, in file order.
    pub tensors: Vec<TensorReport>,
    /// Size of the written file.
    pub file_bytes: u64,
    /// Parameters (values in all tensors).
    pub params: u64,
}

impl ConvertReport {
    /// Bits per weight of the tensor data.
    pub fn bits_per_weight(&self) -> f64 {
        let bytes: usize = self.tensors.iter().map(|t| t.bytes).sum();
        bytes as f64 * 8.0 / self.params.max(1) as f64
    }
}

/// The tokenizer section for a source, whatever its format: the built
/// tokenizer in binary (kind `microllm-bpe`), which loads in 1–2 ms
/// instead of the 30–60 ms of parsing `tokenizer.json` or GGUF parts. The source's tokenizer was already built (and checked) when the
/// source was opened.
fn tokenizer_section(parts: &ModelParts) -> Result<(TokenizerKind, Vec<u8>)> {
    Ok((TokenizerKind::Binary, parts.tokenizer.to_binary()))
}

/// The files a source was read from.
pub(crate) fn source_files(parts: &ModelParts) -> Result<Vec<PathBuf>> {
    if parts.format != SourceFormat::HfFolder {
        return Ok(vec![parts.path.clone()]);
    }
    let dir = &parts.path;
    let mut files = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for e in entries {
        let p = e.map_err(|e| Error::io(dir, e))?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".safetensors") || name.ends_with(".json") {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// Name, size and SHA-256 of a file.
pub fn describe_file(path: &Path) -> Result<SourceFile> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    let sha256 = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(SourceFile {
        name,
        bytes,
        sha256,
    })
}

/// Reads `source`, quantizes it by `recipe` and writes `out` (atomically).
/// `on_tensor(done, total, name)` is called as each tensor is finished.
pub fn convert(
    source: &Path,
    out: &Path,
    recipe: &Recipe,
    on_tensor: impl FnMut(usize, usize, &str),
) -> Result<ConvertReport> {
    convert_with_lora(source, out, recipe, &[], on_tensor)
}

/// [`convert`] with LoRA adapters baked in: each targeted matrix gets
/// `scale · (alpha/r) · B·A` added in f32 before it is quantized, and the
/// adapters are recorded in the provenance (folder name, size and SHA-256
/// of `adapter_model.safetensors`, scale, r, alpha).
pub fn convert_with_lora(
    source: &Path,
    out: &Path,
    recipe: &Recipe,
    adapters: &[(&LoraAdapter, f32)],
    mut on_tensor: impl FnMut(usize, usize, &str),
) -> Result<ConvertReport> {
    let parts = source::open(source)?;
    parts.config.validate(&parts.path)?;
    let mut lora = Vec::new();
    for (a, scale) in adapters {
        if !scale.is_finite() {
            return Err(Error::invalid(format!(
                "LoRA {}: scale {scale} is not finite",
                a.dir().display()
            )));
        }
        a.validate(&parts.config)?;
        lora.push(LoraInfo {
            source: describe_file(&a.weights_path())?,
            scale: *scale,
            adapter: a
                .dir()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned()),
            r: u32::try_from(a.config().r).ok(),
            lora_alpha: Some(a.config().lora_alpha),
        });
    }
    let (kind, tokenizer) = tokenizer_section(&parts)?;
    let sources = source_files(&parts)?
        .iter()
        .map(|p| describe_file(p))
        .collect::<Result<Vec<_>>>()?;
    let metadata = Metadata {
        config: parts.config.clone(),
        tokenizer: TokenizerInfo { kind },
        chat_template: parts.chat_template.clone(),
        generation: parts.generation.clone(),
        quantization: recipe.clone(),
        provenance: Provenance {
            tool: format!("microllm {}", env!("CARGO_PKG_VERSION")),
            sources,
            pruning: None,
            lora,
        },
    };
    let mut writer = MllmWriter::new(metadata, tokenizer);
    let expected = expected_tensors(&parts.config);
    let mut report = ConvertReport {
        tensors: Vec::new(),
        file_bytes: 0,
        params: 0,
    };
    for (i, e) in expected.iter().enumerate() {
        let mut t = parts.tensors.load_f32(&e.name)?;
        if !adapters.is_empty() && e.role == Role::Matrix {
            let mut values = t.data().to_vec();
            let mut merged = false;
            for (a, scale) in adapters {
                merged |= a.merge_into(&e.name, &mut values, *scale);
            }
            if merged {
                t = Tensor::from_vec(t.shape().to_vec(), values)?;
            }
        }
        if t.shape() != e.shape.as_slice() {
            return Err(Error::format(
                &parts.path,
                format!(
                    "tensor '{}' has shape {:?}, expected {:?}",
                    e.name,
                    t.shape(),
                    e.shape
                ),
            ));
        }
        let ty = match e.role {
            Role::Norm => TensorType::F32,
            Role::Matrix => recipe.type_for(&e.name),
        };
        let (q, bytes) = quantize_tensor(&t, ty)
            .map_err(|err| Error::invalid(format!("tensor '{}': {err}", e.name)))?;
        report.tensors.push(TensorReport {
            name: e.name.clone(),
            ty,
            shape: e.shape.clone(),
            bytes: bytes.len(),
            rel_rmse: relative_rmse(t.data(), &q),
        });
        report.params += t.numel() as u64;
        writer.add_tensor(e.name.clone(), ty, &e.shape, bytes)?;
        on_tensor(i + 1, expected.len(), &e.name);
    }
    writer.write(out)?;
    report.file_bytes = std::fs::metadata(out).map_err(|e| Error::io(out, e))?.len();
    Ok(report)
}
