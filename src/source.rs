//! What every model reader hands to the model: hyperparameters, tokenizer,
//! chat template and a way to fetch each weight as f32.
//!
//! Tensors are named as in Hugging Face `LlamaForCausalLM`
//! (`model.layers.7.self_attn.q_proj.weight`), whatever the file calls them,
//! and q/k projections are in Hugging Face row order (llama.cpp's RoPE
//! permutation undone), so the model needs no knowledge of the file format.

use crate::config::ModelConfig;
use crate::error::Result;
use crate::tensor::Tensor;
use crate::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};

/// The kind of file a model was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    /// A Hugging Face checkpoint folder (config.json, safetensors, tokenizer.json).
    HfFolder,
    /// A llama.cpp GGUF file.
    Gguf,
    /// microllm's own `.mllm` file.
    Mllm,
}

/// Access to the weights of one model file or folder.
pub trait TensorSource: Send + Sync {
    /// Names of all tensors, Hugging Face style.
    fn names(&self) -> Vec<String>;
    /// Shape of a tensor, outermost first (`[out, in]` for a linear weight).
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// The tensor as row-major f32, zero-copy where the file allows it.
    /// An unknown name, unsupported dtype or corrupted data is an error that
    /// names the file and the tensor.
    fn load_f32(&self, name: &str) -> Result<Tensor>;
    /// The tensor in the type it is stored as (a `.mllm` file keeps q8/q4
    /// blocks as they are); sources that only hold floats give f32.
    fn load(&self, name: &str) -> Result<Tensor> {
        self.load_f32(name)
    }
}

/// Sampling defaults a checkpoint may suggest (`generation_config.json`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationDefaults {
    /// Suggested temperature.
    pub temperature: Option<f32>,
    /// Suggested top-k.
    pub top_k: Option<usize>,
    /// Suggested top-p.
    pub top_p: Option<f32>,
    /// Suggested repetition penalty.
    pub repetition_penalty: Option<f32>,
}

/// Everything read from a model source, ready for [`crate::Model`].
pub struct ModelParts {
    /// Hyperparameters.
    pub config: ModelConfig,
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// Jinja chat template, if the source has one.
    pub chat_template: Option<String>,
    /// Sampling defaults the source suggests.
    pub generation: GenerationDefaults,
    /// The weights.
    pub tensors: Box<dyn TensorSource>,
    /// The file or folder it came from.
    pub path: PathBuf,
    /// The kind of source.
    pub format: SourceFormat,
}

/// Reads a model from a Hugging Face folder, a `.gguf` or a `.mllm` file;
/// a file's kind is told by its first bytes, not its name.
pub fn open(path: &Path) -> Result<ModelParts> {
    if path.is_dir() {
        return crate::hf::load(path);
    }
    let mut magic = [0u8; 4];
    let read = std::fs::File::open(path).and_then(|mut f| {
        use std::io::Read;
        f.read(&mut magic)
    });
    match read {
        Err(e) => Err(crate::Error::io(path, e)),
        Ok(4) if &magic == b"MLLM" => crate::format::load(path),
        Ok(4) if &magic == b"GGUF" => crate::gguf::load(path),
        Ok(_) => Err(crate::Error::format(
            path,
            "not a model: expected a Hugging Face folder, a .gguf file or a .mllm file",
        )),
    }
}
