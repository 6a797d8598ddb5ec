//! A `.mllm` file as a model source: tensors stay in the map, in their type.

use super::{MllmFile, TokenizerKind};
use crate::error::{Error, Result};
use crate::source::{ModelParts, SourceFormat, TensorSource};
use crate::tensor::{Backing, Tensor};
use crate::tokenizer::Tokenizer;
use microllm_kernels::quant::TensorType;
use std::path::Path;
use std::sync::Arc;

impl Backing for MllmFile {
    fn bytes(&self) -> &[u8] {
        MllmFile::bytes(self)
    }
}

/// The tensors of an open `.mllm` file.
#[derive(Debug)]
pub struct MllmTensors {
    file: Arc<MllmFile>,
}

impl TensorSource for MllmTensors {
    fn names(&self) -> Vec<String> {
        self.file.tensors().iter().map(|t| t.name.clone()).collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.file.tensor(name).map(|v| v.info.shape.clone())
    }

    fn load(&self, name: &str) -> Result<Tensor> {
        let info = self
            .file
            .tensor(name)
            .ok_or_else(|| Error::format(self.file.path(), format!("no tensor '{name}'")))?
            .info;
        Tensor::in_file(
            self.file.clone(),
            info.ty,
            info.offset,
            info.shape.clone(),
            self.file.path(),
        )
    }

    fn load_f32(&self, name: &str) -> Result<Tensor> {
        let t = self.load(name)?;
        if t.ty() == TensorType::F32 {
            return Ok(t);
        }
        let values = t.weights().dequantize();
        Tensor::from_vec(t.shape().to_vec(), values)
    }
}

/// Opens a `.mllm` file (validating all of it) as a model source.
pub fn load(path: &Path) -> Result<ModelParts> {
    let file = Arc::new(MllmFile::open(path)?);
    let meta = file.metadata().clone();
    let tokenizer = match meta.tokenizer.kind {
        TokenizerKind::HfJson => Tokenizer::from_json_bytes(file.tokenizer_bytes(), path)?,
        TokenizerKind::GgufParts => Tokenizer::from_gguf_parts(file.tokenizer_parts()?, path)?,
        TokenizerKind::Binary => Tokenizer::from_binary(file.tokenizer_bytes(), path)?,
    };
    Ok(ModelParts {
        config: meta.config,
        tokenizer,
        chat_template: meta.chat_template,
        generation: meta.generation,
        tensors: Box::new(MllmTensors { file }),
        path: path.to_path_buf(),
        format: SourceFormat::Mllm,
    })
}
