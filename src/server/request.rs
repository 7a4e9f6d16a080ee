//! Request bodies, checked field by field from the JSON value so every mistake becomes a 400
//! naming the field (`param`) and what was expected — serde's derive would only say "invalid
//! type at line 1 column 40". Unknown top-level fields are rejected, as OpenAI does
//! ("Unrecognized request argument supplied"); so are known features this server lacks
//! (tools, n > 1, logprobs…), rather than silently ignored.

use serde_json::{Map, Value};

use super::error::ApiError;
use crate::generate::chat::Message;
use crate::generate::SamplerConfig;

/// Settings shared by both generation endpoints.
#[derive(Clone, Debug)]
pub struct GenParams {
    pub max_tokens: Option<usize>,
    pub sampler: SamplerConfig,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
}

#[derive(Clone, Debug)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<Message>,
    pub params: GenParams,
}

#[derive(Clone, Debug)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

#[derive(Clone, Debug)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Prompt,
    pub params: GenParams,
}

/// Fields both endpoints take. top_k, min_p and repeat_penalty are llama-server extensions.
const COMMON: &[&str] = &[
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "stop",
    "seed",
    "stream",
    "stream_options",
    "n",
    "user",
    "logit_bias",
    "logprobs",
    "top_k",
    "min_p",
    "repeat_penalty",
];
const CHAT_ONLY: &[&str] = &[
    "messages",
    "max_completion_tokens",
    "top_logprobs",
    "response_format",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "parallel_tool_calls",
];
const COMPLETION_ONLY: &[&str] = &["prompt", "echo", "suffix", "best_of"];

/// Most stop strings, as OpenAI allows.
const MAX_STOP: usize = 4;

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong_type(param: &str, expected: &str, got: &Value) -> ApiError {
    ApiError::invalid(
        param,
        format!(
            "Invalid type for '{param}': expected {expected}, but got {} instead.",
            type_name(got)
        ),
    )
    .with_code("invalid_type")
}

fn out_of_range(param: &str, range: &str, got: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(
        param,
        format!("Invalid '{param}': expected a value {range}, but got {got} instead."),
    )
    .with_code("invalid_value")
}

fn unsupported(param: &str, what: &str) -> ApiError {
    ApiError::invalid(
        param,
        format!("'{param}' {what} is not supported by this server."),
    )
    .with_code("unsupported_parameter")
}

/// The body as a JSON object; the message names the problem for a body that is not one.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "the request body is empty: send a JSON object",
        ));
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "We could not parse the JSON body of your request: {e}"
        ))
        .with_code("invalid_json")
    })?;
    match v {
        Value::Object(m) => Ok(m),
        other => Err(ApiError::bad_request(format!(
            "the request body must be a JSON object, but it is {}",
            type_name(&other)
        ))
        .with_code("invalid_json")),
    }
}

/// Field accessors: `None` for an absent field or JSON null (OpenAI treats both as unset).
struct Fields<'a>(&'a Map<String, Value>);

impl<'a> Fields<'a> {
    fn get(&self, k: &str) -> Option<&'a Value> {
        self.0.get(k).filter(|v| !v.is_null())
    }

    fn number(&self, k: &str, lo: f64, hi: f64) -> Result<Option<f32>, ApiError> {
        let Some(v) = self.get(k) else {
            return Ok(None);
        };
        let x = v.as_f64().ok_or_else(|| wrong_type(k, "a number", v))?;
        if !(lo..=hi).contains(&x) {
            return Err(out_of_range(k, &format!("between {lo} and {hi}"), x));
        }
        Ok(Some(x as f32))
    }

    fn integer(&self, k: &str) -> Result<Option<i64>, ApiError> {
        let Some(v) = self.get(k) else {
            return Ok(None);
        };
        match v.as_i64() {
            Some(i) => Ok(Some(i)),
            None if v.as_u64().is_some() => Err(out_of_range(k, "that fits in 64 bits", v)),
            None => Err(wrong_type(k, "an integer", v)),
        }
    }

    fn boolean(&self, k: &str) -> Result<Option<bool>, ApiError> {
        let Some(v) = self.get(k) else {
            return Ok(None);
        };
        v.as_bool()
            .map(Some)
            .ok_or_else(|| wrong_type(k, "a boolean", v))
    }

    fn string(&self, k: &str) -> Result<Option<&'a str>, ApiError> {
        let Some(v) = self.get(k) else {
            return Ok(None);
        };
        v.as_str()
            .map(Some)
            .ok_or_else(|| wrong_type(k, "a string", v))
    }
}

fn check_fields(m: &Map<String, Value>, extra: &[&str]) -> Result<(), ApiError> {
    for k in m.keys() {
        if !COMMON.contains(&k.as_str()) && !extra.contains(&k.as_str()) {
            return Err(ApiError::invalid(
                k,
                format!("Unrecognized request argument supplied: {k}"),
            )
            .with_code("unknown_parameter"));
        }
    }
    Ok(())
}

fn seed_now() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.as_nanos() as u64 ^ 0x9E37_79B9_7F4A_7C15
}

fn gen_params(f: &Fields, max_tokens_key: &[&str]) -> Result<GenParams, ApiError> {
    if let Some(v) = f.get("model") {
        if !v.is_string() {
            return Err(wrong_type("model", "a string", v));
        }
    }
    let mut max_tokens = None;
    for &k in max_tokens_key {
        if let Some(n) = f.integer(k)? {
            if n < 1 {
                return Err(out_of_range(k, "of at least 1", n));
            }
            max_tokens = Some(usize::try_from(n).unwrap_or(usize::MAX));
        }
    }
    let stop = match f.get("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => {
            if a.len() > MAX_STOP {
                return Err(out_of_range(
                    "stop",
                    &format!("with at most {MAX_STOP} strings"),
                    format!("{} strings", a.len()),
                ));
            }
            a.iter()
                .map(|s| {
                    s.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| wrong_type("stop", "a string or an array of strings", s))
                })
                .collect::<Result<_, _>>()?
        }
        Some(v) => return Err(wrong_type("stop", "a string or an array of strings", v)),
    };
    // An empty stop string would end every generation before its first character.
    let stop: Vec<String> = stop.into_iter().filter(|s| !s.is_empty()).collect();
    if let Some(n) = f.integer("n")? {
        if n != 1 {
            return Err(unsupported("n", &format!("= {n}")));
        }
    }
    if let Some(v) = f.get("user") {
        if !v.is_string() {
            return Err(wrong_type("user", "a string", v));
        }
    }
    match f.get("logit_bias") {
        None => {}
        Some(Value::Object(m)) if m.is_empty() => {}
        Some(Value::Object(_)) => return Err(unsupported("logit_bias", "with entries")),
        Some(v) => return Err(wrong_type("logit_bias", "an object", v)),
    }
    let stream = f.boolean("stream")?.unwrap_or(false);
    let include_usage = match f.get("stream_options") {
        None => false,
        Some(Value::Object(o)) => {
            if !stream {
                return Err(ApiError::invalid(
                    "stream_options",
                    "'stream_options' is only allowed when 'stream' is true.",
                ));
            }
            for k in o.keys() {
                if k != "include_usage" {
                    return Err(ApiError::invalid(
                        &format!("stream_options.{k}"),
                        format!("Unrecognized stream option: {k}"),
                    )
                    .with_code("unknown_parameter"));
                }
            }
            Fields(o).boolean("include_usage")?.unwrap_or(false)
        }
        Some(v) => return Err(wrong_type("stream_options", "an object", v)),
    };
    let seed = match f.integer("seed")? {
        Some(s) => s as u64,
        None => seed_now(),
    };
    let top_k = match f.integer("top_k")? {
        Some(k) if k < 0 => return Err(out_of_range("top_k", "of at least 0", k)),
        Some(k) => k as usize,
        None => 0,
    };
    let sampler = SamplerConfig {
        temperature: f.number("temperature", 0.0, 2.0)?.unwrap_or(1.0),
        top_k,
        top_p: f.number("top_p", 0.0, 1.0)?.unwrap_or(1.0),
        min_p: f.number("min_p", 0.0, 1.0)?.unwrap_or(0.0),
        repeat_penalty: f.number("repeat_penalty", 0.01, 10.0)?.unwrap_or(1.0),
        frequency_penalty: f.number("frequency_penalty", -2.0, 2.0)?.unwrap_or(0.0),
        presence_penalty: f.number("presence_penalty", -2.0, 2.0)?.unwrap_or(0.0),
        penalty_window: 64,
        seed,
    };
    Ok(GenParams {
        max_tokens,
        sampler,
        stop,
        stream,
        include_usage,
    })
}

/// A message's content: a string, or an array of text parts (other part types need a
/// multimodal model).
fn content(v: Option<&Value>, param: &str) -> Result<String, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::new();
            for (j, p) in parts.iter().enumerate() {
                let pp = format!("{param}[{j}]");
                let Value::Object(o) = p else {
                    return Err(wrong_type(&pp, "an object", p));
                };
                match o.get("type").and_then(Value::as_str) {
                    Some("text") => {}
                    Some(t) => {
                        return Err(unsupported(&format!("{pp}.type"), &format!("= '{t}'")));
                    }
                    None => {
                        return Err(ApiError::invalid(
                            &format!("{pp}.type"),
                            format!("Missing required parameter: '{pp}.type'."),
                        )
                        .with_code("missing_required_parameter"))
                    }
                }
                match o.get("text") {
                    Some(Value::String(s)) => texts.push(s.as_str()),
                    Some(t) => return Err(wrong_type(&format!("{pp}.text"), "a string", t)),
                    None => {
                        return Err(ApiError::invalid(
                            &format!("{pp}.text"),
                            format!("Missing required parameter: '{pp}.text'."),
                        )
                        .with_code("missing_required_parameter"))
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        Some(other) => Err(wrong_type(
            param,
            "a string or an array of content parts",
            other,
        )),
    }
}

fn reject_present(f: &Fields, keys: &[&str]) -> Result<(), ApiError> {
    for &k in keys {
        match f.get(k) {
            None => {}
            Some(Value::Bool(false)) => {}
            Some(Value::Array(a)) if a.is_empty() => {}
            Some(Value::String(s)) if k.contains("choice") && s == "none" => {}
            Some(_) => return Err(unsupported(k, "")),
        }
    }
    Ok(())
}

pub fn chat_request(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let m = parse_object(body)?;
    check_fields(&m, CHAT_ONLY)?;
    let f = Fields(&m);
    let params = gen_params(&f, &["max_tokens", "max_completion_tokens"])?;
    reject_present(
        &f,
        &[
            "logprobs",
            "top_logprobs",
            "tools",
            "tool_choice",
            "functions",
            "function_call",
        ],
    )?;
    if let Some(v) = f.get("parallel_tool_calls") {
        if !v.is_boolean() {
            return Err(wrong_type("parallel_tool_calls", "a boolean", v));
        }
    }
    match f.get("response_format") {
        None => {}
        Some(Value::Object(o)) => match o.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some(t) => return Err(unsupported("response_format.type", &format!("= '{t}'"))),
            None => {
                return Err(ApiError::invalid(
                    "response_format.type",
                    "Missing required parameter: 'response_format.type'.",
                )
                .with_code("missing_required_parameter"))
            }
        },
        Some(v) => return Err(wrong_type("response_format", "an object", v)),
    }
    let msgs = match f.get("messages") {
        None => {
            return Err(
                ApiError::invalid("messages", "Missing required parameter: 'messages'.")
                    .with_code("missing_required_parameter"),
            )
        }
        Some(Value::Array(a)) => a,
        Some(v) => return Err(wrong_type("messages", "an array", v)),
    };
    if msgs.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "Invalid 'messages': empty array. Expected an array with minimum length 1.",
        )
        .with_code("empty_array"));
    }
    let mut messages = Vec::with_capacity(msgs.len());
    for (i, v) in msgs.iter().enumerate() {
        let p = format!("messages[{i}]");
        let Value::Object(o) = v else {
            return Err(wrong_type(&p, "an object", v));
        };
        for k in o.keys() {
            if !matches!(k.as_str(), "role" | "content" | "name") {
                return Err(ApiError::invalid(
                    &format!("{p}.{k}"),
                    format!("Unrecognized message field supplied: {p}.{k}"),
                )
                .with_code("unknown_parameter"));
            }
        }
        let role = match o.get("role") {
            Some(Value::String(r)) => r.as_str(),
            Some(r) => return Err(wrong_type(&format!("{p}.role"), "a string", r)),
            None => {
                return Err(ApiError::invalid(
                    &format!("{p}.role"),
                    format!("Missing required parameter: '{p}.role'."),
                )
                .with_code("missing_required_parameter"))
            }
        };
        // "developer" is OpenAI's newer name for the system role; templates know "system".
        let role = match role {
            "system" | "developer" => "system",
            "user" | "assistant" => role,
            other => {
                return Err(ApiError::invalid(
                    &format!("{p}.role"),
                    format!(
                        "Invalid value: '{other}'. Supported values are: 'system', 'developer', 'user' and 'assistant'."
                    ),
                )
                .with_code("invalid_value"))
            }
        };
        if let Some(n) = o.get("name") {
            if !n.is_string() {
                return Err(wrong_type(&format!("{p}.name"), "a string", n));
            }
        }
        if role != "assistant" && o.get("content").is_none_or(Value::is_null) {
            return Err(ApiError::invalid(
                &format!("{p}.content"),
                format!("Missing required parameter: '{p}.content'."),
            )
            .with_code("missing_required_parameter"));
        }
        let text = content(o.get("content"), &format!("{p}.content"))?;
        messages.push(Message::new(role, &text));
    }
    Ok(ChatRequest {
        model: f.string("model")?.map(str::to_string),
        messages,
        params,
    })
}

pub fn completion_request(body: &[u8], n_vocab: usize) -> Result<CompletionRequest, ApiError> {
    let m = parse_object(body)?;
    check_fields(&m, COMPLETION_ONLY)?;
    let f = Fields(&m);
    let params = gen_params(&f, &["max_tokens"])?;
    if let Some(true) = f.boolean("echo")? {
        return Err(unsupported("echo", "= true"));
    }
    if f.get("suffix").is_some() {
        return Err(unsupported("suffix", ""));
    }
    if let Some(n) = f.integer("best_of")? {
        if n != 1 {
            return Err(unsupported("best_of", &format!("= {n}")));
        }
    }
    if let Some(v) = f.get("logprobs") {
        if v.as_i64() != Some(0) {
            return Err(unsupported("logprobs", ""));
        }
    }
    let tokens = |a: &[Value]| -> Result<Vec<u32>, ApiError> {
        a.iter()
            .map(|t| match t.as_u64() {
                Some(id) if (id as usize) < n_vocab => Ok(id as u32),
                Some(id) => Err(out_of_range(
                    "prompt",
                    &format!("below the vocabulary size {n_vocab}"),
                    format!("token {id}"),
                )),
                None => Err(wrong_type("prompt", "a string or token ids", t)),
            })
            .collect()
    };
    let prompt = match f.get("prompt") {
        None => {
            return Err(
                ApiError::invalid("prompt", "Missing required parameter: 'prompt'.")
                    .with_code("missing_required_parameter"),
            )
        }
        Some(Value::String(s)) => Prompt::Text(s.clone()),
        Some(Value::Array(a)) => match a.as_slice() {
            [Value::String(s)] => Prompt::Text(s.clone()),
            [Value::Array(t)] => Prompt::Tokens(tokens(t)?),
            a if !a.is_empty() && a.iter().all(Value::is_number) => Prompt::Tokens(tokens(a)?),
            [] => {
                return Err(ApiError::invalid("prompt", "'prompt' is an empty array.")
                    .with_code("empty_array"))
            }
            _ => return Err(unsupported("prompt", "with several prompts (batch)")),
        },
        Some(v) => return Err(wrong_type("prompt", "a string or an array", v)),
    };
    Ok(CompletionRequest {
        model: f.string("model")?.map(str::to_string),
        prompt,
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_fields_are_checked_with_the_field_named() {
        let ok = chat_request(br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"stop":"x","max_tokens":5}"#).unwrap();
        assert_eq!(ok.messages, vec![Message::new("user", "hi")]);
        assert_eq!(ok.params.sampler.temperature, 0.0);
        assert_eq!(ok.params.stop, vec!["x".to_string()]);
        assert_eq!(ok.params.max_tokens, Some(5));
        let cases: &[(&[u8], &str)] = &[
            (br#"{"messages":[{"role":"user","content":"hi"}],"temprature":1}"#, "temprature"),
            (br#"{"messages":[{"role":"user","content":"hi"}],"temperature":"hot"}"#, "temperature"),
            (br#"{"messages":[{"role":"user","content":"hi"}],"temperature":3}"#, "temperature"),
            (br#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":0}"#, "max_tokens"),
            (br#"{"messages":[{"role":"user","content":"hi"}],"n":2}"#, "n"),
            (br#"{"messages":[]}"#, "messages"),
            (br#"{"messages":"hi"}"#, "messages"),
            (br#"{"messages":[{"role":"robot","content":"hi"}]}"#, "messages[0].role"),
            (br#"{"messages":[{"role":"user"}]}"#, "messages[0].content"),
            (br#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#, "messages[0].content[0].type"),
            (br#"{"messages":[{"role":"user","content":"hi"}],"stop":["a","b","c","d","e"]}"#, "stop"),
            (br#"{"messages":[{"role":"user","content":"hi"}],"stream_options":{"include_usage":true}}"#, "stream_options"),
        ];
        for (body, param) in cases {
            let e = chat_request(body).unwrap_err();
            assert_eq!(e.status.as_u16(), 400, "{}", String::from_utf8_lossy(body));
            assert_eq!(e.param.as_deref(), Some(*param), "{e}");
        }
        let e = chat_request(b"{not json").unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (400, Some("invalid_json")));
    }

    #[test]
    fn completion_prompts() {
        let r = completion_request(br#"{"prompt":[1,2,3]}"#, 10).unwrap();
        assert!(matches!(r.prompt, Prompt::Tokens(ref t) if t == &[1, 2, 3]));
        let r = completion_request(br#"{"prompt":["hello"]}"#, 10).unwrap();
        assert!(matches!(r.prompt, Prompt::Text(ref t) if t == "hello"));
        let e = completion_request(br#"{"prompt":[1,20]}"#, 10).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("prompt"));
        let e = completion_request(br#"{"prompt":"x","echo":true}"#, 10).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("echo"));
        let e = completion_request(br#"{"messages":[]}"#, 10).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
    }
}
