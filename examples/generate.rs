//! Load a model, stream a completion and a chat reply.
//!
//!     cargo run --release --example generate -- models/SmolLM2-135M-Instruct.Q4_1.gguf "Why is the sky blue?"

use microllm::{Control, GenerateOptions, Message, Model, SamplerConfig, Session};
use std::io::Write;
use std::sync::Arc;

fn main() -> microllm::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .unwrap_or_else(|| "models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let question = args
        .next()
        .unwrap_or_else(|| "What is the capital of France?".into());

    // One model, shared by any number of sessions.
    let model = Arc::new(Model::load(&path)?);
    let mut session = Session::new(model.clone());

    let opts = GenerateOptions {
        max_tokens: 128,
        sampler: SamplerConfig {
            temperature: 0.7,
            top_p: 0.9,
            seed: 1,
            ..Default::default()
        },
        ..Default::default()
    };
    // Streaming: the callback sees each piece of text as soon as it is final;
    // returning Control::Stop cancels.
    let reply = session.chat(&[Message::user(question)], &opts, |ev| {
        print!("{}", ev.text);
        let _ = std::io::stdout().flush();
        Control::Continue
    })?;
    println!(
        "\n[{:?}: {} tokens, {:.1} tok/s, context {}/{}]",
        reply.finish,
        reply.tokens.len(),
        reply.decode_tok_s(),
        session.tokens().len(),
        session.context_length()
    );
    Ok(())
}
