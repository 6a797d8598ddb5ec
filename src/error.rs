//! One error type for the whole library: every failure names the file (when
//! there is one) and says what is wrong with it.

use std::path::{Path, PathBuf};

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operating system refused a read, open or map.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A file exists but its contents are wrong: truncated, corrupted, an
    /// unknown dtype or architecture, a tensor of the wrong shape.
    #[error("{}: {msg}", path.display())]
    Format {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// The caller asked for something invalid (bad option, token id out of
    /// range, context full).
    #[error("{0}")]
    Invalid(String),
    /// A chat template failed to parse or render.
    #[error("chat template: {0}")]
    Template(String),
    /// Generation was stopped by the caller's callback.
    #[error("cancelled")]
    Cancelled,
}

/// Shorthand used across the crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A problem with the contents of `path`.
    pub fn format(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }

    /// An I/O failure on `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// An invalid request from the caller.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
}
