//! Chat templates: the Jinja program a model ships (GGUF
//! `tokenizer.chat_template`, HF `tokenizer_config.json`) that turns a list of
//! messages into the exact prompt text the model was trained on.
//!
//! Templates are written for Python's Jinja2 as HF `apply_chat_template` runs
//! it, so the environment mirrors that one: `trim_blocks` and `lstrip_blocks`
//! on, Python string/dict methods (`.strip()`, `.items()`, via minijinja-contrib's
//! pycompat), `raise_exception(msg)`, `strftime_now(fmt)`, and a `tojson` that
//! prints like Python's `json.dumps` (`", "` and `": "` separators, non-ASCII kept).

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, context};
use serde::{Deserialize, Serialize};

use crate::checkpoint::TokenizerSpec;
use crate::tokenizer::Tokenizer;
use crate::{ModelError, Result};

/// Name under which the template is stored in its environment.
const TEMPLATE_NAME: &str = "chat_template";

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// "system", "user" or "assistant" (templates may accept others, e.g. "tool").
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
}

impl ChatTemplate {
    /// Compiles `source`; a syntax error is reported here, not at first render.
    pub fn new(source: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(|e| ModelError::Template(format!("cannot compile: {}", describe(&e))))?;
        Ok(ChatTemplate { env })
    }

    /// The template a model file declares, or an error saying it has none
    /// (base models usually don't: prompt them with raw text).
    pub fn from_source(source: Option<&str>) -> Result<Self> {
        match source {
            Some(s) if !s.trim().is_empty() => Self::new(s),
            _ => Err(ModelError::Template(
                "model has no chat template; give a raw prompt instead of chat messages".into(),
            )),
        }
    }

    pub fn from_spec(spec: &TokenizerSpec) -> Result<Self> {
        Self::from_source(spec.chat_template.as_deref())
    }

    pub fn from_tokenizer(tokenizer: &Tokenizer) -> Result<Self> {
        Self::from_source(tokenizer.chat_template())
    }

    /// The prompt text for `messages`. `add_generation_prompt` appends the
    /// header of the assistant's turn (`<|im_start|>assistant\n`), which is
    /// what makes the model answer rather than continue the user's message.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| ModelError::Template(describe(&e)))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => bos_token,
                eos_token => eos_token,
            })
            .map_err(|e| ModelError::Template(describe(&e)))
    }

    /// [`ChatTemplate::render`] with the BOS/EOS texts of `tokenizer`.
    pub fn render_for(
        &self,
        tokenizer: &Tokenizer,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let text = |id: Option<u32>| {
            id.and_then(|id| tokenizer.token_str(id))
                .unwrap_or("")
                .to_owned()
        };
        self.render(
            messages,
            add_generation_prompt,
            &text(tokenizer.bos_id()),
            &text(tokenizer.eos_id()),
        )
    }
}

/// A minijinja error with its cause chain, on one line.
fn describe(e: &Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// `raise_exception(msg)`: how HF templates reject input (e.g. roles out of order).
fn raise_exception(msg: String) -> std::result::Result<Value, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("template raised an exception: {msg}"),
    ))
}

/// `strftime_now(fmt)`: the current UTC date/time, as Llama 3.x templates use
/// for "Today Date:". Supports the common C `strftime` fields.
fn strftime_now(format: String) -> String {
    // web_time: std's clock panics in a browser.
    let secs = web_time::SystemTime::now()
        .duration_since(web_time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_utc(&format, secs as i64)
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

/// Formats a Unix time (UTC) with `strftime` fields; unknown fields are kept as written.
fn format_utc(format: &str, unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs_of_day = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (secs_of_day / 3600, secs_of_day / 60 % 60, secs_of_day % 60);
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let weekday = (days + 3).rem_euclid(7) as usize;
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;
    let month_name = MONTHS[(month - 1) as usize];
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };

    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let field = match chars.next() {
            Some('Y') => year.to_string(),
            Some('y') => format!("{:02}", year.rem_euclid(100)),
            Some('m') => format!("{month:02}"),
            Some('d') => format!("{day:02}"),
            Some('e') => format!("{day:2}"),
            Some('-') => match chars.next() {
                // glibc's no-padding flag, used as "%-d".
                Some('d') => day.to_string(),
                Some('m') => month.to_string(),
                Some(other) => format!("%-{other}"),
                None => "%-".into(),
            },
            Some('H') => format!("{hour:02}"),
            Some('I') => format!("{hour12:02}"),
            Some('M') => format!("{minute:02}"),
            Some('S') => format!("{second:02}"),
            Some('p') => (if hour < 12 { "AM" } else { "PM" }).into(),
            Some('B') => month_name.into(),
            Some('b') | Some('h') => month_name[..3].into(),
            Some('A') => WEEKDAYS[weekday].into(),
            Some('a') => WEEKDAYS[weekday][..3].into(),
            Some('j') => format!("{day_of_year:03}"),
            Some('%') => "%".into(),
            Some(other) => format!("%{other}"),
            None => "%".into(),
        };
        out.push_str(&field);
    }
    out
}

/// Days since 1970-01-01 -> (year, month 1-12, day 1-31), proleptic Gregorian.
/// Counts in 400-year eras of 146,097 days, with years starting in March so
/// that the leap day falls at the end (H. Hinnant, "chrono-compatible
/// low-level date algorithms").
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y.rem_euclid(400);
    let m = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * m + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// `tojson` as HF's Jinja environment defines it: Python `json.dumps` with
/// `ensure_ascii=False`, optional `indent`. minijinja's own escapes `<>&'`
/// for HTML and drops the spaces after `,` and `:`, which changes the prompt.
fn tojson(
    value: &Value,
    indent: Option<usize>,
    kwargs: Kwargs,
) -> std::result::Result<Value, Error> {
    let indent = match kwargs.get::<Option<usize>>("indent")? {
        Some(i) => Some(i),
        None => indent,
    };
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&mut out, value, indent, 0)?;
    Ok(Value::from_safe_string(out))
}

fn write_json(
    out: &mut String,
    v: &Value,
    indent: Option<usize>,
    depth: usize,
) -> std::result::Result<(), Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => match v.as_i64() {
            Some(i) if v.is_integer() => out.push_str(&i.to_string()),
            _ => {
                let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
                // Python prints floats with a fractional part ("1.0").
                if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e16 {
                    out.push_str(&format!("{f:.1}"));
                } else if f.is_finite() {
                    out.push_str(&f.to_string());
                } else {
                    out.push_str(if f.is_nan() {
                        "NaN"
                    } else if f > 0.0 {
                        "Infinity"
                    } else {
                        "-Infinity"
                    });
                }
            }
        },
        ValueKind::String => {
            let s = v.as_str().unwrap_or_default();
            out.push_str(
                &serde_json::to_string(s)
                    .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?,
            );
        }
        ValueKind::Map => {
            let keys: Vec<Value> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                let key_text = key.as_str().map_or_else(|| key.to_string(), str::to_owned);
                write_json(out, &Value::from(key_text), None, 0)?;
                out.push_str(": ");
                write_json(out, &v.get_item(key)?, indent, depth + 1)?;
            }
            newline(out, depth);
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_json(out, item, indent, depth + 1)?;
            }
            newline(out, depth);
            out.push(']');
        }
        _ => write_json(out, &Value::from(v.to_string()), indent, depth)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-Instruct's template (ChatML with a default system prompt).
    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    #[test]
    fn chatml_renders_default_system_and_generation_prompt() {
        let t = ChatTemplate::new(CHATML).unwrap();
        let got = t
            .render(
                &[ChatMessage::user("Hi")],
                true,
                "<|im_start|>",
                "<|im_end|>",
            )
            .unwrap();
        let want = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n";
        assert_eq!(got, want);
        let no_gen = t
            .render(
                &[ChatMessage::system("S"), ChatMessage::user("Hi")],
                false,
                "",
                "",
            )
            .unwrap();
        assert_eq!(
            no_gen,
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        );
    }

    #[test]
    fn missing_template_is_a_template_error() {
        let err = ChatTemplate::from_source(None).unwrap_err();
        assert!(
            matches!(&err, ModelError::Template(m) if m.contains("model has no chat template")),
            "{err}"
        );
        assert!(ChatTemplate::from_spec(&TokenizerSpec::default()).is_err());
    }

    #[test]
    fn syntax_error_is_reported_at_compile() {
        let err = ChatTemplate::new("{% for m in messages %}").unwrap_err();
        assert!(matches!(err, ModelError::Template(_)), "{err}");
    }

    #[test]
    fn raise_exception_surfaces_the_message() {
        let t = ChatTemplate::new(
            "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}ok",
        )
        .unwrap();
        let err = t
            .render(&[ChatMessage::assistant("x")], false, "", "")
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("Conversation must start with user"),
            "{err}"
        );
        assert_eq!(
            t.render(&[ChatMessage::user("x")], false, "", "").unwrap(),
            "ok"
        );
    }

    #[test]
    fn python_methods_and_block_trimming() {
        // lstrip_blocks/trim_blocks: block tags on their own lines leave no blank lines.
        let src = "{% for m in messages %}\n  {% if m.role == 'user' %}\n[{{ m.content.strip().upper() }}]\n  {% endif %}\n{% endfor %}";
        let t = ChatTemplate::new(src).unwrap();
        let got = t
            .render(
                &[ChatMessage::user("  hi  "), ChatMessage::assistant("no")],
                false,
                "",
                "",
            )
            .unwrap();
        assert_eq!(got, "[HI]\n");
    }

    #[test]
    fn bos_and_eos_are_available() {
        let t = ChatTemplate::new(
            "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}",
        )
        .unwrap();
        assert_eq!(
            t.render(&[ChatMessage::user("a")], true, "<s>", "</s>")
                .unwrap(),
            "<s>a</s>"
        );
    }

    #[test]
    fn tojson_prints_like_python() {
        let t = ChatTemplate::new(
            "{{ messages | tojson }}|{{ {'a': [1, 2.5, none, true, 'é\"<']} | tojson(indent=2) }}",
        )
        .unwrap();
        let got = t.render(&[ChatMessage::user("x")], false, "", "").unwrap();
        assert_eq!(
            got,
            "[{\"role\": \"user\", \"content\": \"x\"}]|{\n  \"a\": [\n    1,\n    2.5,\n    null,\n    true,\n    \"é\\\"<\"\n  ]\n}"
        );
    }

    #[test]
    fn strftime_known_dates() {
        // 2024-02-29 13:05:09 UTC was a Thursday, day 60 of a leap year.
        let t = 1_709_211_909;
        assert_eq!(format_utc("%Y-%m-%d %H:%M:%S", t), "2024-02-29 13:05:09");
        assert_eq!(
            format_utc("%d %b %Y|%A|%a|%B|%j|%I%p|%-d|%%|%Q", t),
            "29 Feb 2024|Thursday|Thu|February|060|01PM|29|%|%Q"
        );
        assert_eq!(format_utc("%Y-%m-%d %A", 0), "1970-01-01 Thursday");
        assert_eq!(format_utc("%Y-%m-%d", -86_400), "1969-12-31");
        for days in [-800_000i64, -1, 0, 59, 60, 11_016, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        let now = ChatTemplate::new("{{ strftime_now('%Y') }}")
            .unwrap()
            .render(&[], false, "", "")
            .unwrap();
        assert!(now.len() == 4 && now.as_str() >= "2024", "{now}");
    }
}
