//! Hugging Face checkpoint folders: `config.json`, optional
//! `generation_config.json`, `tokenizer.json`, optional
//! `tokenizer_config.json` (chat template, EOS token) and the weights in
//! `model.safetensors` or shards listed in `model.safetensors.index.json`.
//!
//! The readers for each piece are public so that they can be used (and
//! tested) on their own; [`load`] puts them together.

mod config;
mod weights;

pub use config::{
    config_json, generation_config_json, parse_config, parse_generation_config,
    parse_tokenizer_config, GenerationConfig, TokenizerConfig,
};
pub use weights::{open_weights, HfWeights, INDEX_FILE, SINGLE_FILE};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::source::{ModelParts, SourceFormat};
use crate::tokenizer::Tokenizer;
use config::merge_ids;
use std::path::Path;

/// Model hyperparameters.
pub const CONFIG_FILE: &str = "config.json";
/// Optional sampling defaults and extra EOS ids.
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";
/// The tokenizer (vocabulary, merges, special tokens).
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Optional chat template and EOS token.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// Where recent transformers versions save the chat template instead of
/// `tokenizer_config.json`.
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";

/// Reads a whole text file; a missing file is an error naming it.
fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// Reads a text file that may legitimately be absent.
fn read_optional(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Reads and validates `dir/config.json`.
pub fn read_config(dir: &Path) -> Result<ModelConfig> {
    let path = dir.join(CONFIG_FILE);
    parse_config(&read_text(&path)?, &path)
}

/// Reads `dir/generation_config.json`, or `None` if the folder has none.
pub fn read_generation_config(dir: &Path) -> Result<Option<GenerationConfig>> {
    let path = dir.join(GENERATION_CONFIG_FILE);
    read_optional(&path)?
        .map(|text| parse_generation_config(&text, &path))
        .transpose()
}

/// Reads `dir/tokenizer_config.json` (all fields empty if absent). A
/// `chat_template.jinja` file, when present, takes precedence over the
/// template in `tokenizer_config.json`, as in transformers.
pub fn read_tokenizer_config(dir: &Path) -> Result<TokenizerConfig> {
    let path = dir.join(TOKENIZER_CONFIG_FILE);
    let mut tc = match read_optional(&path)? {
        Some(text) => parse_tokenizer_config(&text, &path)?,
        None => TokenizerConfig::default(),
    };
    if let Some(template) = read_optional(&dir.join(CHAT_TEMPLATE_FILE))? {
        tc.chat_template = Some(template);
    }
    Ok(tc)
}

/// Reads a Hugging Face checkpoint folder into [`ModelParts`]. Every failure
/// names the file at fault: a missing folder or file, malformed JSON, an
/// unsupported architecture, corrupted weights.
///
/// End-of-sequence ids are the union, in this order, of `config.json`'s
/// `eos_token_id`, `generation_config.json`'s `eos_token_id` and the id of
/// `tokenizer_config.json`'s `eos_token`.
pub fn load(dir: &Path) -> Result<ModelParts> {
    if !dir.is_dir() {
        return Err(if dir.exists() {
            Error::format(dir, "not a folder (a Hugging Face checkpoint is a folder)")
        } else {
            Error::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder"),
            )
        });
    }
    let mut config = read_config(dir)?;

    let generation = match read_generation_config(dir)? {
        Some(g) => {
            // An id the embedding has no row for would crash generation
            // later; refuse it here, where the file can be named.
            if let Some(&id) = g
                .eos_token_ids
                .iter()
                .find(|&&id| id as usize >= config.vocab_size)
            {
                return Err(Error::format(
                    dir.join(GENERATION_CONFIG_FILE),
                    format!(
                        "eos_token_id {id} is outside the vocabulary ({})",
                        config.vocab_size
                    ),
                ));
            }
            merge_ids(&mut config.eos_token_ids, g.eos_token_ids);
            g.defaults
        }
        None => Default::default(),
    };

    // Check for the tokenizer before mapping the weights, so that an
    // incomplete download is reported by the name of the missing file.
    let tokenizer_path = dir.join(TOKENIZER_FILE);
    if !tokenizer_path.is_file() {
        return Err(Error::io(
            &tokenizer_path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        ));
    }
    let tensors = open_weights(dir)?;
    let tokenizer = Tokenizer::from_json_file(&tokenizer_path)?;

    let tokenizer_config = read_tokenizer_config(dir)?;
    if let Some(eos) = &tokenizer_config.eos_token {
        // Ids beyond the embedding can never be generated, so they cannot
        // end a generation either: leave them out.
        if let Some(id) = tokenizer.token_to_id(eos) {
            if (id as usize) < config.vocab_size {
                merge_ids(&mut config.eos_token_ids, [id]);
            }
        }
    }

    Ok(ModelParts {
        config,
        tokenizer,
        chat_template: tokenizer_config.chat_template,
        generation,
        tensors: Box::new(tensors),
        path: dir.to_path_buf(),
        format: SourceFormat::HfFolder,
    })
}
