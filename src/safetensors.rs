//! safetensors reader (placeholder).
