//! Chat templates rendered by `microllm::chat` must match, byte for byte,
//! what Python's Jinja2 produces when configured like transformers'
//! `apply_chat_template` (fixtures from `scripts/make-chat-fixtures.py`).

use std::path::{Path, PathBuf};

use microllm::chat::{ChatTemplate, Message};
use microllm::Error;
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    name: String,
    bos_token: String,
    eos_token: String,
    template: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    messages: Vec<Message>,
    add_generation_prompt: bool,
    expected: Option<String>,
    error: Option<String>,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn load(name: &str) -> Fixture {
    let path = root().join("fixtures/chat").join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Renders every case of a fixture and compares with Jinja2's output (or
/// with the message the template passed to `raise_exception`).
fn check(name: &str) -> usize {
    let fx = load(name);
    assert_eq!(fx.name, name);
    let template = ChatTemplate::new(&fx.template, &fx.bos_token, &fx.eos_token)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    for case in &fx.cases {
        let got = template.render(&case.messages, case.add_generation_prompt);
        match (&case.expected, &case.error) {
            (Some(want), None) => {
                let got = got.unwrap_or_else(|e| panic!("{name}/{}: {e}", case.name));
                assert_eq!(&got, want, "{name}/{}", case.name);
            }
            (None, Some(want)) => match got {
                Err(Error::Template(msg)) => assert_eq!(&msg, want, "{name}/{}", case.name),
                other => panic!(
                    "{name}/{}: expected template error, got {other:?}",
                    case.name
                ),
            },
            _ => panic!(
                "{name}/{}: fixture needs exactly one of expected/error",
                case.name
            ),
        }
    }
    fx.cases.len()
}

#[test]
fn chat_smollm2_template() {
    assert_eq!(check("smollm2"), 8);
}

#[test]
fn chat_chatml_template() {
    assert_eq!(check("chatml"), 8);
}

#[test]
fn chat_llama3_template() {
    assert_eq!(check("llama3"), 11);
}

#[test]
fn chat_gemma_template() {
    assert_eq!(check("gemma"), 9);
}

#[test]
fn chat_pycompat_tojson_template() {
    assert_eq!(check("pycompat"), 8);
}

/// The fixture's SmolLM2 template is the model's own, when the model is
/// present (`models/` is a git-ignored link).
#[test]
fn chat_smollm2_fixture_matches_model() {
    let path = root().join("models/smollm2-135m-hf-f32/tokenizer_config.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!("skipping: {} not found", path.display());
        return;
    };
    let config: serde_json::Value = serde_json::from_str(&text).unwrap();
    let fx = load("smollm2");
    assert_eq!(config["chat_template"].as_str(), Some(fx.template.as_str()));
    assert_eq!(config["bos_token"].as_str(), Some(fx.bos_token.as_str()));
    assert_eq!(config["eos_token"].as_str(), Some(fx.eos_token.as_str()));
}

/// `fixtures/golden/smollm2-135m-instruct/chatml_chat.json` was rendered
/// from the SmolLM2 template with a system and a user message and the
/// generation prompt.
#[test]
fn chat_golden_chatml_text() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/golden/smollm2-135m-instruct/chatml_chat.json");
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let want = golden["text"].as_str().unwrap();
    let fx = load("smollm2");
    let template = ChatTemplate::new(&fx.template, &fx.bos_token, &fx.eos_token).unwrap();
    let got = template
        .render(
            &[
                Message::system("You are a concise assistant."),
                Message::user("List three primary colors."),
            ],
            true,
        )
        .unwrap();
    assert_eq!(got, want);
}
