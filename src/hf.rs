//! Hugging Face checkpoint folders (placeholder: the real reader replaces this file).
use crate::error::{Error, Result};
use crate::source::ModelParts;
use std::path::Path;

/// Reads a Hugging Face checkpoint folder into [`ModelParts`].
pub fn load(dir: &Path) -> Result<ModelParts> {
    Err(Error::format(dir, "Hugging Face reader not built yet"))
}
