//! Chat templates (placeholder until the minijinja renderer lands).
use crate::error::{Error, Result};

/// One chat turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    /// A user turn.
    pub fn user(content: impl Into<String>) -> Self {
        Message { role: "user".into(), content: content.into() }
    }
    /// A system prompt.
    pub fn system(content: impl Into<String>) -> Self {
        Message { role: "system".into(), content: content.into() }
    }
    /// An assistant turn.
    pub fn assistant(content: impl Into<String>) -> Self {
        Message { role: "assistant".into(), content: content.into() }
    }
}

/// A compiled chat template.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    _src: String,
}

impl ChatTemplate {
    /// Compiles a Jinja chat template.
    pub fn new(source: &str, _bos_token: &str, _eos_token: &str) -> Result<Self> {
        Ok(ChatTemplate { _src: source.to_string() })
    }
    /// Renders a conversation.
    pub fn render(&self, _messages: &[Message], _add_generation_prompt: bool) -> Result<String> {
        Err(Error::Template("not built yet".into()))
    }
}
