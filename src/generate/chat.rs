//! Chat templates: the GGUF's `tokenizer.chat_template` (a Hugging Face Jinja template)
//! rendered with minijinja configured the way transformers renders them: trim_blocks and
//! lstrip_blocks on, Python string methods (pycompat), `raise_exception` and `strftime_now`.
//! A model without a template gets a plain "User:/Assistant:" format.
//!
//! Around the template ledge does what llama.cpp's server does (common/chat.cpp), so a
//! conversation renders to the same text: `date_string` / `datetime` (today) and
//! `enable_thinking` in the context; a system message folded into the first user message
//! when the template has no system role (Gemma); a leading BOS / trailing EOS text removed
//! when the tokenizer adds those tokens itself.

use minijinja::{context, Environment, Error, ErrorKind};

use crate::gguf::GgufFile;
use crate::tokenizer::Tokenizer;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("the model's chat template does not compile: {0}")]
    BadTemplate(String),
    #[error("rendering the chat template failed: {0}")]
    Render(String),
}

pub struct ChatTemplate {
    env: Environment<'static>,
    /// None: the model has no template and the plain format is used.
    source: Option<String>,
    bos: String,
    eos: String,
    /// The tokenizer adds BOS / EOS itself: the rendering's own copies are removed.
    strip_bos: bool,
    strip_eos: bool,
    /// Whether the template renders a system message (probed once).
    system_role: bool,
}

/// Formats the current UTC time with the strftime codes chat templates use.
fn strftime_now(fmt: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    strftime(fmt, secs)
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
const DAYS: [&str; 7] = [
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
];

/// strftime over a UTC Unix time: %Y %m %d %H %M %S %B %b %A %a %j %e %y %%.
pub fn strftime(fmt: &str, unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy_mar = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_mar + 2) / 153;
    let day = doy_mar - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as i64;
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cum[(month - 1) as usize] + day + (leap && month > 2) as i64;
    let wday = DAYS[days.rem_euclid(7) as usize];
    let mname = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out += &year.to_string(),
            Some('y') => out += &format!("{:02}", year % 100),
            Some('m') => out += &format!("{month:02}"),
            Some('d') => out += &format!("{day:02}"),
            Some('e') => out += &format!("{day:2}"),
            Some('H') => out += &format!("{:02}", secs / 3600),
            Some('M') => out += &format!("{:02}", secs / 60 % 60),
            Some('S') => out += &format!("{:02}", secs % 60),
            Some('B') => out += mname,
            Some('b') => out += &mname[..3],
            Some('A') => out += wday,
            Some('a') => out += &wday[..3],
            Some('j') => out += &format!("{yday:03}"),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

impl ChatTemplate {
    /// The model's template, or the plain fallback when it has none.
    pub fn from_gguf(f: &GgufFile, tok: &Tokenizer) -> Result<ChatTemplate, ChatError> {
        let source = f
            .get_str("tokenizer.chat_template")
            .ok()
            .map(str::to_string);
        let piece = |id: Option<u32>| {
            id.and_then(|i| tok.token_text(i))
                .unwrap_or_default()
                .to_string()
        };
        Ok(Self::new(source, piece(tok.bos()), piece(tok.eos()))?
            .strip_special(tok.add_bos(), tok.add_eos()))
    }

    /// Removes a leading BOS / trailing EOS text from renderings when the tokenizer adds
    /// those tokens itself (llama.cpp does, so its prompt text is ledge's).
    pub fn strip_special(mut self, add_bos: bool, add_eos: bool) -> ChatTemplate {
        self.strip_bos = add_bos && !self.bos.is_empty();
        self.strip_eos = add_eos && !self.eos.is_empty();
        self
    }

    pub fn new(
        source: Option<String>,
        bos: String,
        eos: String,
    ) -> Result<ChatTemplate, ChatError> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| ChatError::BadTemplate(e.to_string()))?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| strftime_now(&fmt));
        if let Some(src) = &source {
            env.add_template_owned("chat", src.clone())
                .map_err(|e| ChatError::BadTemplate(e.to_string()))?;
        }
        let mut t = ChatTemplate {
            env,
            source,
            bos,
            eos,
            strip_bos: false,
            strip_eos: false,
            system_role: true,
        };
        // As llama.cpp's capability check: a system message the output does not show (or
        // that the template refuses) means the template has no system role.
        const PROBE: &str = "ledge system-role probe";
        t.system_role = t.source.is_none()
            || t.render_raw(
                &[
                    Message::new("system", PROBE),
                    Message::new("user", "User message"),
                ],
                false,
            )
            .is_ok_and(|out| out.contains(PROBE));
        Ok(t)
    }

    /// True when the model has no template of its own.
    pub fn is_fallback(&self) -> bool {
        self.source.is_none()
    }

    /// The conversation as the model expects it, ending with the assistant's turn opened
    /// when `add_generation_prompt`.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        if self.source.is_none() {
            let mut s = String::new();
            for m in messages {
                let who = match m.role.as_str() {
                    "system" => "System",
                    "assistant" => "Assistant",
                    _ => "User",
                };
                s += &format!("{who}: {}\n", m.content);
            }
            if add_generation_prompt {
                s += "Assistant:";
            }
            return Ok(s);
        }
        let mut messages = std::borrow::Cow::Borrowed(messages);
        if !self.system_role && messages.first().is_some_and(|m| m.role == "system") {
            // llama.cpp: the system text joins the next message with a newline (or is
            // dropped when it is alone).
            let system = messages.to_mut().remove(0);
            if let Some(next) = messages.to_mut().first_mut() {
                next.content = format!("{}\n{}", system.content, next.content);
            }
        }
        let mut out = self.render_raw(&messages, add_generation_prompt)?;
        if self.strip_bos && out.starts_with(&self.bos) {
            out.drain(..self.bos.len());
        }
        if self.strip_eos && out.ends_with(&self.eos) {
            out.truncate(out.len() - self.eos.len());
        }
        Ok(out)
    }

    fn render_raw(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let t = self
            .env
            .get_template("chat")
            .map_err(|e| ChatError::BadTemplate(e.to_string()))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        t.render(context! {
            messages => minijinja::value::Serde(messages),
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos,
            eos_token => &self.eos,
            // What llama.cpp's server adds (common_chat_extra_context, enable_thinking).
            date_string => strftime("%d %b %Y", now),
            datetime => strftime("%b %d %Y", now),
            enable_thinking => true,
        })
        .map_err(|e| ChatError::Render(format!("{e:#}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_known_dates() {
        assert_eq!(strftime("%Y-%m-%d %H:%M:%S", 0), "1970-01-01 00:00:00");
        // 2024-02-29 12:34:56 UTC, a leap day and a Thursday.
        assert_eq!(
            strftime("%d %b %Y, %A %j %%", 1_709_210_096),
            "29 Feb 2024, Thursday 060 %"
        );
        assert_eq!(strftime("%B %e", 1_735_689_600), "January  1");
    }

    #[test]
    fn chatml_template_with_python_methods_and_trimming() {
        let src = "{% for m in messages %}{% if m.role == 'system' %}\n{{ '<|im_start|>system\\n' + m.content.strip() + '<|im_end|>\\n' }}{% else %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
        let t = ChatTemplate::new(Some(src.into()), "<s>".into(), "</s>".into()).unwrap();
        let out = t
            .render(
                &[
                    Message::new("system", "  be brief "),
                    Message::new("user", "hi"),
                ],
                true,
            )
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn raise_exception_becomes_an_error_and_fallback_is_plain() {
        let t = ChatTemplate::new(
            Some("{{ raise_exception('roles must alternate') }}".into()),
            String::new(),
            String::new(),
        )
        .unwrap();
        let e = t.render(&[], true).unwrap_err().to_string();
        assert!(e.contains("roles must alternate"), "{e}");
        let plain = ChatTemplate::new(None, String::new(), String::new()).unwrap();
        assert!(plain.is_fallback());
        assert_eq!(
            plain.render(&[Message::new("user", "hi")], true).unwrap(),
            "User: hi\nAssistant:"
        );
    }
}
