//! Sessions: a conversation's context (tokens and KV cache) and text
//! generation with streaming, stop conditions and cancellation.

use crate::chat::Message;
use crate::error::{Error, Result};
use crate::lora::{LoraAdapter, LoraSet};
use crate::model::{KvCache, Logits, Model};
use crate::sampler::{Sampler, SamplerConfig};
use crate::tokenizer::StreamDecoder;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a streaming callback tells the generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Keep generating.
    Continue,
    /// Stop now; the generation ends with [`FinishReason::Cancelled`].
    Stop,
}

/// One generated token as the callback sees it.
#[derive(Debug, Clone, Copy)]
pub struct TokenEvent<'a> {
    /// The token id.
    pub token: u32,
    /// Text that became final with this token. It can be empty: bytes of an
    /// unfinished UTF-8 character, or text that may be the start of a stop
    /// string, are held back until they are decided.
    pub text: &'a str,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-sequence token.
    Eos,
    /// The text reached one of the stop strings (not included in the output).
    StopString,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The callback returned [`Control::Stop`] or the cancel flag was set.
    Cancelled,
    /// The context window is full.
    ContextFull,
}

/// How to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Most new tokens to generate.
    pub max_tokens: usize,
    /// Sampling settings (the default is greedy).
    pub sampler: SamplerConfig,
    /// End at the model's end-of-sequence tokens (they are not part of the text).
    pub stop_at_eos: bool,
    /// End when the text contains any of these; the text is cut before it.
    pub stop_strings: Vec<String>,
    /// Set this flag from another thread to stop generation.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 256,
            sampler: SamplerConfig::default(),
            stop_at_eos: true,
            stop_strings: Vec::new(),
            cancel: None,
        }
    }
}

/// The result of one generation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The generated text, without the prompt, EOS or stop string.
    pub text: String,
    /// Every generated token id (including an EOS that ended it).
    pub tokens: Vec<u32>,
    /// Tokens the prompt added to the context.
    pub prompt_tokens: usize,
    /// Prompt tokens that had to be computed (the rest were reused from the KV cache).
    pub prefill_tokens: usize,
    /// Why it ended.
    pub finish: FinishReason,
    /// Time to process the prompt.
    pub prefill_time: Duration,
    /// Time from the start until the first token was sampled.
    pub time_to_first_token: Duration,
    /// Time spent generating after the first token.
    pub decode_time: Duration,
}

impl Generation {
    /// Prompt tokens processed per second.
    pub fn prefill_tok_s(&self) -> f64 {
        self.prefill_tokens as f64 / self.prefill_time.as_secs_f64().max(1e-9)
    }

    /// Tokens generated per second after the first.
    pub fn decode_tok_s(&self) -> f64 {
        self.tokens.len().saturating_sub(1) as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }
}

/// A context on a shared model: the tokens seen so far and their KV cache.
///
/// ```no_run
/// use microllm::{GenerateOptions, Model, Session, Control};
/// use std::sync::Arc;
/// let model = Arc::new(Model::load("models/smollm2-135m-hf-f32")?);
/// let mut session = Session::new(model);
/// let out = session.generate("Once upon a time", &GenerateOptions::default(), |ev| {
///     print!("{}", ev.text);
///     Control::Continue
/// })?;
/// println!("\n[{:?}, {} tokens]", out.finish, out.tokens.len());
/// # Ok::<(), microllm::Error>(())
/// ```
#[derive(Debug)]
pub struct Session {
    model: Arc<Model>,
    cache: KvCache,
    tokens: Vec<u32>,
    /// Logits after the last token of `tokens`: (vocab).
    last_logits: Option<Vec<f32>>,
    /// LoRA adapters applied unmerged in this session.
    lora: LoraSet,
}

impl Session {
    /// A session with the model's full context length (the KV cache grows
    /// with use, so an unused context costs nothing).
    pub fn new(model: Arc<Model>) -> Session {
        let n = model.config().max_seq_len;
        Session::with_context_length(model, n)
    }

    /// A session limited to `n_ctx` positions (capped at the model's).
    pub fn with_context_length(model: Arc<Model>, n_ctx: usize) -> Session {
        let cache = model.new_cache(n_ctx);
        Session {
            model,
            cache,
            tokens: Vec::new(),
            last_logits: None,
            lora: LoraSet::new(),
        }
    }

    /// The model this session runs.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Most tokens the context holds.
    pub fn context_length(&self) -> usize {
        self.cache.capacity()
    }

    /// Tokens in the context now (prompt and generated).
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Bytes held by the KV cache.
    pub fn kv_cache_bytes(&self) -> usize {
        self.cache.bytes()
    }

    /// Forgets the context.
    pub fn reset(&mut self) {
        self.cache.truncate(0);
        self.tokens.clear();
        self.last_logits = None;
    }

    /// Applies `adapter` unmerged from now on, its product multiplied by
    /// `scale` (0 turns it off, 1 is as trained, more exaggerates it); an
    /// adapter already attached gets the new scale. It is checked against
    /// the model first. The context is kept, but its KV cache was computed
    /// without the change, so it is dropped and recomputed on the next call.
    pub fn attach_lora(&mut self, adapter: Arc<LoraAdapter>, scale: f32) -> Result<()> {
        if self.lora.attach(adapter, scale, self.model.config())? {
            self.invalidate_cache();
        }
        Ok(())
    }

    /// Changes the scale of an attached adapter (see [`Session::attach_lora`]).
    pub fn set_lora_scale(&mut self, adapter: &Arc<LoraAdapter>, scale: f32) -> Result<()> {
        if self.lora.set_scale(adapter, scale)? {
            self.invalidate_cache();
        }
        Ok(())
    }

    /// Stops applying `adapter`; returns whether it was attached. The KV
    /// cache is recomputed as for [`Session::attach_lora`].
    pub fn detach_lora(&mut self, adapter: &Arc<LoraAdapter>) -> bool {
        let changed = self.lora.detach(adapter);
        if changed {
            self.invalidate_cache();
        }
        changed
    }

    /// The adapters applied unmerged in this session.
    pub fn lora(&self) -> &LoraSet {
        &self.lora
    }

    /// Keeps the tokens but forgets their keys, values and logits, which
    /// the next call recomputes (with the current adapters).
    fn invalidate_cache(&mut self) {
        self.cache.truncate(0);
        self.last_logits = None;
    }

    /// Adds `tokens` to the context and returns the logits after the last
    /// one: (vocab).
    pub fn append(&mut self, tokens: &[u32]) -> Result<&[f32]> {
        if tokens.is_empty() && self.cache.len() == self.tokens.len() {
            return self
                .last_logits
                .as_deref()
                .ok_or_else(|| Error::invalid("empty context: nothing to compute"));
        }
        self.tokens.extend_from_slice(tokens);
        self.feed()
    }

    /// Runs the tokens not yet in the KV cache and keeps their last logits.
    fn feed(&mut self) -> Result<&[f32]> {
        let todo = &self.tokens[self.cache.len()..];
        let hook = self.lora.hook();
        match self
            .model
            .forward_with(todo, &mut self.cache, Logits::Last, hook)
        {
            Ok(logits) => Ok(self.last_logits.insert(logits)),
            Err(e) => {
                // Keep tokens and cache in step: drop what was not computed.
                self.tokens.truncate(self.cache.len());
                Err(e)
            }
        }
    }

    /// Makes the context exactly `tokens`, reusing the cached prefix they
    /// share with the current context, and returns the logits after the
    /// last token and how many tokens had to be computed.
    pub fn set_tokens(&mut self, tokens: &[u32]) -> Result<(&[f32], usize)> {
        if tokens.is_empty() {
            return Err(Error::invalid("set_tokens: no tokens"));
        }
        let shared = self
            .tokens
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count();
        // The last token is always recomputed: its logits are what we need.
        let keep = shared.min(tokens.len() - 1).min(self.cache.len());
        self.cache.truncate(keep);
        self.tokens.truncate(keep);
        let todo = tokens.len() - keep;
        let logits = self.append(&tokens[keep..])?;
        Ok((logits, todo))
    }

    /// Appends `prompt` to the context and generates a continuation, calling
    /// `on_token` for every new token. An empty prompt continues from the
    /// current context.
    pub fn generate(
        &mut self,
        prompt: &str,
        opts: &GenerateOptions,
        on_token: impl FnMut(&TokenEvent) -> Control,
    ) -> Result<Generation> {
        let ids = self.model.tokenizer().encode(prompt);
        self.generate_tokens(&ids, opts, on_token)
    }

    /// [`Session::generate`] with the prompt already tokenized.
    pub fn generate_tokens(
        &mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
        on_token: impl FnMut(&TokenEvent) -> Control,
    ) -> Result<Generation> {
        let start = Instant::now();
        let computed = self.tokens.len() - self.cache.len() + prompt.len();
        self.append(prompt)?;
        self.run(start, prompt.len(), computed, opts, on_token)
    }

    /// Renders the conversation with the model's chat template (adding the
    /// assistant's turn) and generates the reply. Across turns the shared
    /// prefix of the conversation is reused from the KV cache.
    pub fn chat(
        &mut self,
        messages: &[Message],
        opts: &GenerateOptions,
        on_token: impl FnMut(&TokenEvent) -> Control,
    ) -> Result<Generation> {
        let start = Instant::now();
        let template = self
            .model
            .chat_template()
            .ok_or_else(|| Error::invalid("this model has no chat template"))?;
        let text = template.render(messages, true)?;
        let ids = self.model.tokenizer().encode(&text);
        let (_, computed) = self.set_tokens(&ids)?;
        self.run(start, ids.len(), computed, opts, on_token)
    }

    /// The generation loop, starting from `last_logits`.
    fn run(
        &mut self,
        start: Instant,
        prompt_tokens: usize,
        prefill_tokens: usize,
        opts: &GenerateOptions,
        mut on_token: impl FnMut(&TokenEvent) -> Control,
    ) -> Result<Generation> {
        let prefill_time = start.elapsed();
        let mut sampler = Sampler::new(opts.sampler)?;
        let eos = self.model.config().eos_token_ids.clone();
        let mut decoder = StreamDecoder::new();
        let mut stops = StopMatcher::new(&opts.stop_strings);
        let mut generated = Vec::new();
        let mut time_to_first_token = Duration::ZERO;
        let mut first_token_at = Instant::now();
        let mut finish = FinishReason::MaxTokens;

        for i in 0..opts.max_tokens {
            if opts
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(Ordering::Relaxed))
            {
                finish = FinishReason::Cancelled;
                break;
            }
            // The previous token is in `tokens` but not yet in the cache.
            if i == 0 {
                self.append(&[])?;
            } else {
                self.feed()?;
            }
            let logits = self
                .last_logits
                .as_deref()
                .ok_or_else(|| Error::invalid("no logits"))?;
            let id = sampler.sample(logits, &self.tokens);
            if i == 0 {
                time_to_first_token = start.elapsed();
                first_token_at = Instant::now();
            }
            generated.push(id);
            if opts.stop_at_eos && eos.contains(&id) {
                finish = FinishReason::Eos;
                break;
            }
            if self.tokens.len() >= self.context_length() {
                finish = FinishReason::ContextFull;
                break;
            }
            // Fed lazily: the next step, or the next call, computes it.
            self.tokens.push(id);
            let piece = decoder.push(self.model.tokenizer(), id);
            let (text, hit) = stops.push(&piece);
            if hit {
                // Text before the stop string is still the model's answer.
                if !text.is_empty() {
                    on_token(&TokenEvent {
                        token: id,
                        text: &text,
                    });
                }
                finish = FinishReason::StopString;
                break;
            }
            if on_token(&TokenEvent {
                token: id,
                text: &text,
            }) == Control::Stop
            {
                finish = FinishReason::Cancelled;
                break;
            }
        }
        if finish != FinishReason::StopString {
            let tail = decoder.finish();
            let (mut text, _) = stops.push(&tail);
            text.push_str(&stops.flush());
            if !text.is_empty() {
                let token = generated.last().copied().unwrap_or(0);
                on_token(&TokenEvent { token, text: &text });
            }
        }
        Ok(Generation {
            text: stops.into_text(),
            tokens: generated,
            prompt_tokens,
            prefill_tokens,
            finish,
            prefill_time,
            time_to_first_token,
            decode_time: first_token_at.elapsed(),
        })
    }
}

/// Finds stop strings in streamed text, holding back the tail that could
/// still turn into one.
#[derive(Debug)]
struct StopMatcher<'a> {
    stops: &'a [String],
    /// All text so far (cut at a stop string once one is found).
    text: String,
    /// Bytes of `text` already handed out.
    emitted: usize,
}

impl<'a> StopMatcher<'a> {
    fn new(stops: &'a [String]) -> Self {
        StopMatcher {
            stops,
            text: String::new(),
            emitted: 0,
        }
    }

    /// Adds `piece`; returns the text that is now final and whether a stop
    /// string was reached.
    fn push(&mut self, piece: &str) -> (String, bool) {
        // A stop string can only end inside the new piece, so it starts no
        // earlier than the longest stop string before the old end.
        let longest = self.stops.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut from = self.text.len().saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        self.text.push_str(piece);
        let hit = self
            .stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min();
        if let Some(at) = hit {
            self.text.truncate(at.max(self.emitted));
            let out = self.text[self.emitted..].to_string();
            self.emitted = self.text.len();
            return (out, true);
        }
        let hold = self
            .stops
            .iter()
            .map(|s| longest_suffix_prefix(&self.text[self.emitted..], s))
            .max()
            .unwrap_or(0);
        let end = self.text.len() - hold;
        let out = self.text[self.emitted..end].to_string();
        self.emitted = end;
        (out, false)
    }

    /// Hands out whatever was held back.
    fn flush(&mut self) -> String {
        let out = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        out
    }

    fn into_text(self) -> String {
        self.text
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    let max = stop.len().saturating_sub(1).min(text.len());
    (1..=max)
        .rev()
        .find(|&k| {
            text.is_char_boundary(text.len() - k)
                && stop
                    .as_bytes()
                    .starts_with(&text.as_bytes()[text.len() - k..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_matcher_holds_back_possible_prefix_and_cuts_at_match() {
        let stops = vec!["<END>".to_string()];
        let mut m = StopMatcher::new(&stops);
        assert_eq!(m.push("Hello <"), ("Hello ".to_string(), false));
        assert_eq!(m.push("EN"), (String::new(), false));
        assert_eq!(m.push("D> more"), (String::new(), true));
        assert_eq!(m.into_text(), "Hello ");
    }

    #[test]
    fn stop_matcher_releases_false_alarm() {
        let stops = vec!["\n\n".to_string()];
        let mut m = StopMatcher::new(&stops);
        assert_eq!(m.push("a\n"), ("a".to_string(), false));
        assert_eq!(m.push("b"), ("\nb".to_string(), false));
        assert_eq!(m.flush(), "");
        assert_eq!(m.into_text(), "a\nb");
    }

    #[test]
    fn stop_matcher_finds_match_split_over_pieces_and_inside_one() {
        let stops = vec!["STOP".to_string(), "xy".to_string()];
        let mut m = StopMatcher::new(&stops);
        assert_eq!(m.push("abST"), ("ab".to_string(), false));
        assert_eq!(m.push("OPzz"), (String::new(), true));
        let mut m = StopMatcher::new(&stops);
        assert_eq!(m.push("1xy2"), ("1".to_string(), true));
    }

    #[test]
    fn stop_matcher_without_stops_passes_everything() {
        let mut m = StopMatcher::new(&[]);
        assert_eq!(m.push("héllo"), ("héllo".to_string(), false));
        assert_eq!(m.flush(), "");
    }

    #[test]
    fn suffix_prefix_respects_char_boundaries() {
        assert_eq!(longest_suffix_prefix("abc<E", "<END>"), 2);
        assert_eq!(longest_suffix_prefix("é", "\u{a9}x"), 0);
        assert_eq!(longest_suffix_prefix("", "abc"), 0);
    }
}
