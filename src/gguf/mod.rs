//! GGUF reader (placeholder: the real reader replaces this file).
use crate::error::{Error, Result};
use crate::source::ModelParts;
use std::path::Path;

/// Reads a Llama-family GGUF file into [`ModelParts`].
pub fn load(path: &Path) -> Result<ModelParts> {
    Err(Error::format(path, "GGUF reader not built yet"))
}
