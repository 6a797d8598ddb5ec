//! Chat templates: turn a conversation into the prompt text a chat model was
//! trained on.
//!
//! Models ship a Jinja2 `chat_template` (in `tokenizer_config.json` or the
//! GGUF metadata `tokenizer.chat_template`). [`ChatTemplate`] renders it the
//! way Hugging Face transformers' `apply_chat_template` does, so the prompt is
//! byte-for-byte what the model saw in training:
//!
//! * variables `messages` (a list of `{role, content}` maps, in that key
//!   order), `add_generation_prompt`, `bos_token` and `eos_token`;
//! * `trim_blocks` and `lstrip_blocks` on, a single trailing newline of the
//!   template dropped (Jinja2's `keep_trailing_newline=False`);
//! * `{% break %}` / `{% continue %}` (transformers loads `loopcontrols`);
//! * Python string and dict methods (`.strip()`, `.startswith()`,
//!   `.items()`, ...) through `minijinja_contrib::pycompat`;
//! * the globals `raise_exception(msg)` and `strftime_now(fmt)`, and a
//!   `tojson` filter that behaves like transformers' (plain `json.dumps`:
//!   no HTML escaping, `ensure_ascii=False`, options `indent`, `separators`,
//!   `sort_keys`, `ensure_ascii`).
//!
//! Known differences from transformers: `strftime_now` uses UTC rather than
//! the local time zone; `{% generation %}` blocks (assistant-mask tracking)
//! are not supported; message content is always a plain string; a list or
//! dict printed directly (`{{ [1, 'a'] }}`) shows strings in double quotes
//! where Python's repr uses single ones (`tojson` output is exact); division
//! by zero gives `inf` instead of an error.
//!
//! ```
//! use microllm::chat::{ChatTemplate, Message};
//!
//! let source = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}\
//!               {% if add_generation_prompt %}<|assistant|>{% endif %}";
//! let template = ChatTemplate::new(source, "<s>", "</s>")?;
//! let prompt = template.render(&[Message::user("Hi!")], true)?;
//! assert_eq!(prompt, "<|user|>Hi!\n<|assistant|>");
//! # Ok::<(), microllm::Error>(())
//! ```

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{from_args, Kwargs, Rest, Value, ValueKind};
use minijinja::{context, AutoEscape, Environment, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The name the template is registered under; it shows up in error messages
/// ("... (in chat_template:3)").
const TEMPLATE_NAME: &str = "chat_template";

/// One turn of a conversation.
///
/// Serialises as `{"role": ..., "content": ...}` in that key order, which is
/// what templates see (and what `{{ message | tojson }}` prints).
///
/// ```
/// use microllm::chat::Message;
///
/// let m = Message::user("Hello");
/// assert_eq!((m.role.as_str(), m.content.as_str()), ("user", "Hello"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Who speaks: usually `system`, `user` or `assistant`; templates decide
    /// what they accept.
    pub role: String,
    /// What was said.
    pub content: String,
}

impl Message {
    /// A message with an arbitrary role (e.g. `tool`).
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Message::new("system", content)
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Message::new("user", content)
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Message::new("assistant", content)
    }
}

/// A compiled chat template together with the special tokens it may print.
///
/// Compiled once in [`ChatTemplate::new`]; [`render`](ChatTemplate::render)
/// can then be called any number of times (also from several threads: the
/// type is `Send + Sync`).
///
/// ```
/// use microllm::chat::{ChatTemplate, Message};
///
/// // SmolLM2's template, abridged.
/// let t = ChatTemplate::new(
///     "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' \
///      + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}\
///      {% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
///     "<|im_start|>",
///     "<|im_end|>",
/// )?;
/// let text = t.render(
///     &[Message::system("Be brief."), Message::user("Hi")],
///     true,
/// )?;
/// assert_eq!(
///     text,
///     "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
/// );
/// # Ok::<(), microllm::Error>(())
/// ```
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source` (a Jinja2 chat template) for rendering with the
    /// given special tokens.
    ///
    /// A syntax error is reported as [`Error::Template`] with minijinja's
    /// message, which names the line (`... (in chat_template:3)`).
    ///
    /// ```
    /// use microllm::chat::ChatTemplate;
    ///
    /// let err = ChatTemplate::new("{% for m in messages %}", "", "").unwrap_err();
    /// assert!(err.to_string().contains("syntax error"));
    /// ```
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        // transformers: ImmutableSandboxedEnvironment(trim_blocks=True,
        // lstrip_blocks=True); Jinja2's keep_trailing_newline defaults off.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        // Chat prompts are plain text: never HTML-escape, whatever the name.
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(template_error)?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// Renders `messages` into the prompt text; with `add_generation_prompt`
    /// the template appends the header that opens the assistant's reply.
    ///
    /// Errors ([`Error::Template`]): the template called
    /// `raise_exception(msg)` (the error carries exactly `msg`, e.g. a bad
    /// role order), or evaluation failed (unknown filter or function, a type
    /// error, ...), described by minijinja's message with the line.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(template_error)?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(template_error)
    }

    /// The beginning-of-sequence token passed to the template as `bos_token`.
    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    /// The end-of-sequence token passed to the template as `eos_token`.
    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }
}

/// Marks an error raised by the template's own `raise_exception(msg)`, so
/// that it can be reported as exactly `msg` rather than as an engine error.
#[derive(Debug)]
struct Raised(String);

impl fmt::Display for Raised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

fn template_error(err: minijinja::Error) -> Error {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = cur {
        if let Some(raised) = e.downcast_ref::<Raised>() {
            return Error::Template(raised.0.clone());
        }
        cur = e.source();
    }
    // minijinja's Display is "<kind>: <detail> (in chat_template:<line>)";
    // errors from nested calls (e.g. a filter) hang off `source`.
    let mut msg = err.to_string();
    let mut cur = std::error::Error::source(&err);
    while let Some(e) = cur {
        msg.push_str(": ");
        msg.push_str(&e.to_string());
        cur = e.source();
    }
    Error::Template(msg)
}

/// `raise_exception(msg)`: templates call it to reject a conversation.
fn raise_exception(msg: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg.clone()).with_source(Raised(msg)))
}

/// `strftime_now(fmt)`: the current time formatted like Python's
/// `datetime.now().strftime(fmt)` (in UTC; see [`strftime`]).
fn strftime_now(format: String) -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime(&format, secs)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Formats the UTC time `unix_secs` with the common C/Python `strftime`
/// directives (`%Y %y %m %d %e %j %H %I %M %S %p %b %h %B %a %A %u %w %F %T
/// %D %%`); others are copied through unchanged, as glibc does.
fn strftime(format: &str, unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs_of_day = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (secs_of_day / 3600, secs_of_day / 60 % 60, secs_of_day % 60);
    // 1970-01-01 was a Thursday (index 3 with Monday = 0).
    let weekday = (days + 3).rem_euclid(7) as usize;
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;
    let month_name = MONTHS[(month - 1) as usize];
    let weekday_name = WEEKDAYS[weekday];
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };

    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(d) = chars.next() else {
            out.push('%');
            break;
        };
        match d {
            'Y' => out.push_str(&year.to_string()),
            'y' => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            'm' => out.push_str(&format!("{month:02}")),
            'd' => out.push_str(&format!("{day:02}")),
            'e' => out.push_str(&format!("{day:2}")),
            'j' => out.push_str(&format!("{day_of_year:03}")),
            'H' => out.push_str(&format!("{hour:02}")),
            'I' => out.push_str(&format!("{hour12:02}")),
            'M' => out.push_str(&format!("{minute:02}")),
            'S' => out.push_str(&format!("{second:02}")),
            'p' => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            'b' | 'h' => out.push_str(&month_name[..3]),
            'B' => out.push_str(month_name),
            'a' => out.push_str(&weekday_name[..3]),
            'A' => out.push_str(weekday_name),
            'u' => out.push_str(&(weekday + 1).to_string()),
            'w' => out.push_str(&((weekday + 1) % 7).to_string()),
            'F' => out.push_str(&format!("{year}-{month:02}-{day:02}")),
            'T' => out.push_str(&format!("{hour:02}:{minute:02}:{second:02}")),
            'D' => out.push_str(&format!("{month:02}/{day:02}/{:02}", year.rem_euclid(100))),
            '%' => out.push('%'),
            other => {
                out.push('%');
                out.push(other);
            }
        }
    }
    out
}

/// Days since 1970-01-01 → (year, month 1-12, day 1-31), proleptic
/// Gregorian (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (year, month, day) → days since 1970-01-01 (inverse of
/// [`civil_from_days`]).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Options of transformers' `tojson` filter, which is
/// `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`.
struct JsonOptions {
    ensure_ascii: bool,
    /// The per-level indent string; `None` means everything on one line.
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

/// The `tojson` filter. Positional arguments follow transformers' Python
/// signature (`ensure_ascii, indent, separators, sort_keys`); keywords
/// override them.
fn tojson(value: &Value, args: Rest<Value>) -> std::result::Result<String, minijinja::Error> {
    let (positional, kwargs): (&[Value], Kwargs) = from_args(&args)?;
    if positional.len() > 4 {
        return Err(minijinja::Error::new(
            ErrorKind::TooManyArguments,
            "tojson takes at most 4 positional arguments",
        ));
    }
    let arg = |i: usize, name: &str| -> std::result::Result<Option<Value>, minijinja::Error> {
        if kwargs.has(name) {
            Ok(Some(kwargs.get::<Value>(name)?))
        } else {
            Ok(positional.get(i).cloned())
        }
    };
    let ensure_ascii = arg(0, "ensure_ascii")?.is_some_and(|v| v.is_true());
    let indent = match arg(1, "indent")? {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        // Python: an int indents by that many spaces (negative → none, but
        // still multi-line), a string indents by itself.
        Some(v) => Some(match v.as_str() {
            Some(s) => s.to_owned(),
            None => {
                let n = i64::try_from(v.clone()).map_err(|_| {
                    minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        format!("tojson: indent must be an integer or a string, not {v}"),
                    )
                })?;
                " ".repeat(n.clamp(0, 64) as usize)
            }
        }),
    };
    let (item_sep, key_sep) = match arg(2, "separators")? {
        Some(v) if !(v.is_none() || v.is_undefined()) => {
            let parts: Vec<Value> = v.try_iter()?.collect();
            match parts.as_slice() {
                [a, b] if a.as_str().is_some() && b.as_str().is_some() => (
                    a.as_str().unwrap_or_default().to_owned(),
                    b.as_str().unwrap_or_default().to_owned(),
                ),
                _ => {
                    return Err(minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be a pair of strings",
                    ))
                }
            }
        }
        // Python's defaults: no trailing space after ',' when indenting.
        _ if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        _ => (", ".to_owned(), ": ".to_owned()),
    };
    let sort_keys = arg(3, "sort_keys")?.is_some_and(|v| v.is_true());
    kwargs.assert_all_used()?;
    let opts = JsonOptions {
        ensure_ascii,
        indent,
        item_sep,
        key_sep,
        sort_keys,
    };
    let mut out = String::new();
    write_json(&mut out, value, &opts, 0)?;
    Ok(out)
}

/// Serialises like Python's `json.dumps` (minijinja's own `tojson` differs:
/// compact separators and HTML-escaping of `<`, `>`, `&`, `'`).
fn write_json(
    out: &mut String,
    value: &Value,
    opts: &JsonOptions,
    depth: usize,
) -> std::result::Result<(), minijinja::Error> {
    // Guards against self-referential objects; real data is never this deep.
    if depth > 512 {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            "tojson: value nested too deeply",
        ));
    }
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if value.is_integer() {
                out.push_str(&value.to_string());
            } else {
                let f = f64::try_from(value.clone())?;
                out.push_str(&python_float_repr(f));
            }
        }
        ValueKind::String => write_json_str(out, value.as_str().unwrap_or_default(), opts),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_container(out, '[', ']', items.len(), opts, depth, |out, i| {
                write_json(out, &items[i], opts, depth + 1)
            })?;
        }
        ValueKind::Map => {
            let mut pairs = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                pairs.push((json_key(&key)?, item));
            }
            if opts.sort_keys {
                pairs.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_container(out, '{', '}', pairs.len(), opts, depth, |out, i| {
                write_json_str(out, &pairs[i].0, opts);
                out.push_str(&opts.key_sep);
                write_json(out, &pairs[i].1, opts, depth + 1)
            })?;
        }
        ValueKind::Undefined => {
            return Err(minijinja::Error::new(
                ErrorKind::UndefinedError,
                "tojson: undefined value is not JSON serializable",
            ))
        }
        kind => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: value of type {kind} is not JSON serializable"),
            ))
        }
    }
    Ok(())
}

/// Writes `[...]` / `{...}` with Python's layout: `[]` when empty, items on
/// their own indented lines when indenting.
fn write_container(
    out: &mut String,
    open: char,
    close: char,
    len: usize,
    opts: &JsonOptions,
    depth: usize,
    mut item: impl FnMut(&mut String, usize) -> std::result::Result<(), minijinja::Error>,
) -> std::result::Result<(), minijinja::Error> {
    out.push(open);
    if len == 0 {
        out.push(close);
        return Ok(());
    }
    for i in 0..len {
        if i > 0 {
            out.push_str(&opts.item_sep);
        }
        if let Some(indent) = &opts.indent {
            out.push('\n');
            out.push_str(&indent.repeat(depth + 1));
        }
        item(out, i)?;
    }
    if let Some(indent) = &opts.indent {
        out.push('\n');
        out.push_str(&indent.repeat(depth));
    }
    out.push(close);
    Ok(())
}

/// Python's JSON object keys: strings as they are, other scalars converted
/// (`1` → `"1"`, `true` → `"true"`, `none` → `"null"`).
fn json_key(key: &Value) -> std::result::Result<String, minijinja::Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_owned()),
        ValueKind::None => Ok("null".to_owned()),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.to_owned()),
        ValueKind::Number if key.is_integer() => Ok(key.to_string()),
        ValueKind::Number => Ok(python_float_repr(f64::try_from(key.clone())?)),
        kind => Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: keys must be str, int, float, bool or None, not {kind}"),
        )),
    }
}

/// A JSON string literal with Python's escaping rules.
fn write_json_str(out: &mut String, s: &str, opts: &JsonOptions) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            // ensure_ascii escapes everything outside ' '..='~' (so DEL too),
            // astral characters as UTF-16 surrogate pairs.
            c if opts.ensure_ascii && (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)` (which `json.dumps` uses): shortest round-trip
/// digits, positional notation for exponents in [-4, 16), scientific
/// (`1e-05`, `1.5e+16`) otherwise; `NaN` / `Infinity` as Python writes them.
fn python_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".to_owned();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    // Rust's `{:e}` gives the shortest round-trip digits, e.g. "-1.2345e-7".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let n = digits.len() as i32;
        let body = if exp < 0 {
            format!("0.{}{}", "0".repeat((-exp - 1) as usize), digits)
        } else if exp + 1 >= n {
            format!("{}{}.0", digits, "0".repeat((exp + 1 - n) as usize))
        } else {
            let (int, frac) = digits.split_at((exp + 1) as usize);
            format!("{int}.{frac}")
        };
        format!("{sign}{body}")
    } else {
        let (first, rest) = digits.split_at(1);
        let mant = if rest.is_empty() {
            first.to_owned()
        } else {
            format!("{first}.{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mant}e{esign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str, messages: &[Message], agp: bool) -> Result<String> {
        ChatTemplate::new(source, "<s>", "</s>")?.render(messages, agp)
    }

    fn template_msg(err: Error) -> String {
        match err {
            Error::Template(msg) => msg,
            other => panic!("expected Error::Template, got {other:?}"),
        }
    }

    #[test]
    fn chat_renders_variables() {
        let out = render(
            "{{ bos_token }}{% for m in messages %}[{{ m.role }}:{{ m['content'] }}]{% endfor %}\
             {% if add_generation_prompt %}GEN{% endif %}{{ eos_token }}",
            &[
                Message::system("s"),
                Message::user("u"),
                Message::assistant("a"),
            ],
            true,
        )
        .unwrap();
        assert_eq!(out, "<s>[system:s][user:u][assistant:a]GEN</s>");
    }

    #[test]
    fn chat_trim_and_lstrip_blocks_and_no_trailing_newline() {
        let source = "{% for m in messages %}\n    {% if m.role == 'user' %}\nU: {{ m.content }}\n    {% endif %}\n{% endfor %}\n";
        let out = render(source, &[Message::user("a"), Message::user("b")], false).unwrap();
        assert_eq!(out, "U: a\nU: b\n");
        // keep_trailing_newline is off: one final newline of the source goes.
        assert_eq!(render("x\n", &[], false).unwrap(), "x");
        assert_eq!(render("x\n\n", &[], false).unwrap(), "x\n");
    }

    #[test]
    fn chat_no_html_escaping() {
        let out = render(
            "{{ messages[0].content }}",
            &[Message::user("<b>&'\"")],
            false,
        )
        .unwrap();
        assert_eq!(out, "<b>&'\"");
    }

    #[test]
    fn chat_python_methods() {
        let out = render(
            "{{ messages[0].content.strip() }}|{{ messages[0].content.startswith('  hi') }}|\
             {{ messages[0].content.upper().split() | join(',') }}|{{ messages[0].get('role') }}",
            &[Message::user("  hi there \n")],
            false,
        )
        .unwrap();
        // Booleans print the Python way, as in Jinja2.
        assert_eq!(out, "hi there|True|HI,THERE|user");
    }

    #[test]
    fn chat_loop_controls() {
        let out = render(
            "{% for m in messages %}{% if loop.index0 == 1 %}{% continue %}{% endif %}\
             {% if loop.index0 == 3 %}{% break %}{% endif %}{{ m.content }}{% endfor %}",
            &[
                Message::user("a"),
                Message::user("b"),
                Message::user("c"),
                Message::user("d"),
            ],
            false,
        )
        .unwrap();
        assert_eq!(out, "ac");
    }

    #[test]
    fn chat_message_key_order() {
        let out = render(
            "{% for k, v in messages[0].items() %}{{ k }}={{ v }};{% endfor %}{{ messages[0] | tojson }}",
            &[Message::user("x")],
            false,
        )
        .unwrap();
        assert_eq!(
            out,
            "role=user;content=x;{\"role\": \"user\", \"content\": \"x\"}"
        );
    }

    #[test]
    fn chat_syntax_error_names_line() {
        let err = ChatTemplate::new("line one\n{% if x %}\n{{ x }", "", "").unwrap_err();
        let msg = template_msg(err);
        assert!(msg.contains("syntax error"), "{msg}");
        assert!(msg.contains("chat_template:3"), "{msg}");
    }

    #[test]
    fn chat_raise_exception_message() {
        let t = ChatTemplate::new(
            "{% if messages[0]['role'] != 'user' %}{{ raise_exception('First message must be from the user') }}{% endif %}ok",
            "",
            "",
        )
        .unwrap();
        assert_eq!(t.render(&[Message::user("x")], false).unwrap(), "ok");
        let err = t.render(&[Message::assistant("x")], false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "chat template: First message must be from the user"
        );
        assert_eq!(template_msg(err), "First message must be from the user");
    }

    #[test]
    fn chat_unknown_filter_and_function() {
        let err = ChatTemplate::new("{{ messages | no_such_filter }}", "", "")
            .and_then(|t| t.render(&[], false))
            .unwrap_err();
        let msg = template_msg(err);
        assert!(msg.contains("unknown filter"), "{msg}");
        let err = render("\n{{ no_such_function() }}", &[], false).unwrap_err();
        let msg = template_msg(err);
        assert!(msg.contains("chat_template:2"), "{msg}");
    }

    #[test]
    fn chat_runtime_errors_do_not_panic() {
        for source in [
            "{{ messages[0].content.strip(1, 2, 3) }}",
            "{{ messages + 1 }}",
            "{{ raise_exception() }}",
            "{{ nothing.at.all }}",
            "{{ messages | tojson(indent=[1]) }}",
            "{{ messages | tojson(bogus=1) }}",
            "{{ nothing | tojson }}",
            "{{ strftime_now() }}",
        ] {
            let err = render(source, &[Message::user("x")], false).unwrap_err();
            assert!(matches!(err, Error::Template(_)), "{source}: {err:?}");
        }
    }

    #[test]
    fn chat_tojson_like_python() {
        let out = render(
            "{{ {'b': [1, 2.5, none, true], 'a': 'é\\n<'} | tojson }}|\
             {{ {'b': 1, 'a': 2} | tojson(sort_keys=true) }}|\
             {{ 'é😀\\x7f' | tojson(ensure_ascii=true) }}|\
             {{ [1, [], {}] | tojson(indent=2) }}|{{ [1, 2] | tojson(indent='\\t') }}|\
             {{ {'a': [1, 2]} | tojson(separators=[',', ':']) }}|{{ {1: 'x'} | tojson }}",
            &[],
            false,
        )
        .unwrap();
        assert_eq!(
            out,
            "{\"b\": [1, 2.5, null, true], \"a\": \"é\\n<\"}|\
             {\"a\": 2, \"b\": 1}|\
             \"\\u00e9\\ud83d\\ude00\\u007f\"|\
             [\n  1,\n  [],\n  {}\n]|[\n\t1,\n\t2\n]|\
             {\"a\":[1,2]}|{\"1\": \"x\"}"
        );
    }

    #[test]
    fn chat_python_float_repr() {
        for (f, want) in [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (1.5, "1.5"),
            (-2.25, "-2.25"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (123456.789, "123456.789"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.2345e20, "1.2345e+20"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e300, "1e+300"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
        ] {
            assert_eq!(python_float_repr(f), want, "{f}");
        }
    }

    #[test]
    fn chat_strftime() {
        // 2024-07-23 14:05:09 UTC, a Tuesday, day 205 of a leap year.
        let t = 1_721_743_509;
        assert_eq!(strftime("%d %b %Y", t), "23 Jul 2024");
        assert_eq!(
            strftime("%A %B %e %j %H:%M:%S %I%p %y %F %T %u %w %% %Q", t),
            "Tuesday July 23 205 14:05:09 02PM 24 2024-07-23 14:05:09 2 2 % %Q"
        );
        assert_eq!(strftime("%Y-%m-%d %a", 0), "1970-01-01 Thu");
        assert_eq!(strftime("%Y-%m-%d", 951_782_400), "2000-02-29");
        assert_eq!(strftime("%Y-%m-%d %H", -1), "1969-12-31 23");
        assert_eq!(strftime("trailing %", 0), "trailing %");
        // The template function itself renders today's date.
        let out = render("{{ strftime_now('%Y') }}", &[], false).unwrap();
        assert!(
            out.len() == 4 && out.parse::<u32>().is_ok_and(|y| y >= 2024),
            "{out}"
        );
    }

    #[test]
    fn chat_is_send_sync_clone() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<ChatTemplate>();
    }
}
