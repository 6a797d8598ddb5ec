//! Where model loading spends its time (each step from page cache).
//!
//!     cargo run --release --example load_time -- models/smollm2-135m-q4.mllm

use std::time::Instant;

fn main() -> microllm::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "models/smollm2-135m-q4.mllm".into());
    let path = std::path::Path::new(&path);
    for _ in 0..2 {
        let t = Instant::now();
        let file = microllm::format::MllmFile::open(path)?;
        let open = t.elapsed();
        let t = Instant::now();
        let tok = match file.metadata().tokenizer.kind {
            microllm::format::TokenizerKind::HfJson => {
                microllm::Tokenizer::from_json_bytes(file.tokenizer_bytes(), path)?
            }
            microllm::format::TokenizerKind::GgufParts => {
                microllm::Tokenizer::from_gguf_parts(file.tokenizer_parts()?, path)?
            }
            microllm::format::TokenizerKind::Binary => {
                microllm::Tokenizer::from_binary(file.tokenizer_bytes(), path)?
            }
        };
        let tokenizer = t.elapsed();
        drop((file, tok));
        let t = Instant::now();
        let model = microllm::Model::load(path)?;
        let total = t.elapsed();
        // The first prompt right after loading (nothing warmed up).
        let t = Instant::now();
        let ids = model.tokenizer().encode(
            "<|im_start|>user\nWhat is the capital of France? Answer in one word.<|im_end|>\n\
             <|im_start|>assistant\n",
        );
        let first_encode = t.elapsed();
        println!(
            "open+validate {:.2} ms, tokenizer {:.2} ms, Model::load total {:.2} ms ({} layers), \
             first encode {:.3} ms ({} ids)",
            open.as_secs_f64() * 1e3,
            tokenizer.as_secs_f64() * 1e3,
            total.as_secs_f64() * 1e3,
            model.config().n_layers,
            first_encode.as_secs_f64() * 1e3,
            ids.len()
        );
    }
    Ok(())
}
