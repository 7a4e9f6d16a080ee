//! `ledge serve` end to end: the binary on an ephemeral loopback port, driven by a small raw
//! HTTP/1.1 client (so a test can also hang up mid-stream). Every bad input is checked for
//! its status code and OpenAI-style error body; chat answers are checked against `ledge run`
//! on the same rendered prompt.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn ledge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ledge"))
}

/// A `ledge serve` child process, killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    /// Starts SmolLM2 with a 512-token context and one matmul thread (tests run side by
    /// side on few cores), plus `extra` flags; returns once /health says ready.
    fn start(extra: &[&str]) -> Server {
        Server::start_model(SMOLLM2, extra)
    }

    fn start_model(name: &str, extra: &[&str]) -> Server {
        let mut child = ledge()
            .args(["serve", "-m"])
            .arg(model(name))
            .args(["--port", "0", "--ctx", "512", "--threads", "1"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        let addr = loop {
            line.clear();
            assert!(
                err.read_line(&mut line).unwrap() > 0,
                "the server exited before listening"
            );
            if let Some(rest) = line.strip_prefix("listening on http://") {
                break rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        };
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for l in err.lines().map_while(Result::ok) {
                log2.lock().unwrap().push_str(&(l + "\n"));
            }
        });
        let s = Server { child, addr, log };
        let t0 = Instant::now();
        loop {
            if let Ok(r) = s.try_request("GET", "/health", &[], None) {
                if r.status == 200 {
                    break;
                }
                assert_eq!(r.status, 503, "{}", r.text());
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "never became ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> std::io::Result<Response> {
        let mut s = self.send(method, path, headers, body)?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        Ok(Response::parse(&raw))
    }

    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Response {
        let body = body.map(|b| b.to_string());
        self.try_request(method, path, &[], body.as_deref().map(str::as_bytes))
            .unwrap()
    }

    fn post(&self, path: &str, body: &Value) -> Response {
        self.request("POST", path, Some(body))
    }

    /// Opens a connection and sends one request (Connection: close).
    fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> std::io::Result<TcpStream> {
        let mut s = TcpStream::connect(self.addr)?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        for (k, v) in headers {
            req += &format!("{k}: {v}\r\n");
        }
        if let Some(b) = body {
            if !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"))
            {
                req += &format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n",
                    b.len()
                );
            }
        }
        req += "\r\n";
        s.write_all(req.as_bytes())?;
        if let Some(b) = body {
            s.write_all(b)?;
        }
        Ok(s)
    }

    fn metric(&self, name: &str) -> f64 {
        let m = self.request("GET", "/metrics", None).text();
        m.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no {name} in\n{m}"))
            .parse()
            .unwrap()
    }

    fn health(&self) -> Value {
        self.request("GET", "/health", None).json()
    }

    /// Polls until `f` holds, failing after `limit`.
    fn wait_for(&self, what: &str, limit: Duration, f: impl Fn(&Server) -> bool) {
        let t0 = Instant::now();
        while !f(self) {
            assert!(t0.elapsed() < limit, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn parse(raw: &[u8]) -> Response {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a complete HTTP head");
        let head = String::from_utf8_lossy(&raw[..split]);
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut body = raw[split + 4..].to_vec();
        if headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v == "chunked")
        {
            body = dechunk(&body);
        }
        Response {
            status,
            headers,
            body,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n").expect("chunk size");
        let n = usize::from_str_radix(std::str::from_utf8(&b[..nl]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + n]);
        b = &b[nl + 4 + n..];
    }
}

/// Checks an error response: status, JSON content type, and OpenAI's error object.
fn assert_error(r: &Response, status: u16, param: Option<&str>, code: Option<&str>) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].as_str().is_some_and(|t| !t.is_empty()), "{v}");
    assert_eq!(e["param"].as_str(), param, "{v}");
    if let Some(c) = code {
        assert_eq!(e["code"].as_str(), Some(c), "{v}");
    }
    assert_eq!(
        e.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["code", "message", "param", "type"],
        "{v}"
    );
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

/// SmolLM2's ChatML rendering of one system and one user turn, as its template writes it.
fn chatml(system: &str, user: &str) -> String {
    format!(
        "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )
}

/// `ledge run`'s greedy continuation of `prompt` (its stdout echoes the prompt first).
fn ledge_run(prompt: &str, n: usize) -> String {
    ledge_run_on(SMOLLM2, prompt, n)
}

fn ledge_run_on(name: &str, prompt: &str, n: usize) -> String {
    let out = ledge()
        .args(["run", "-m"])
        .arg(model(name))
        .args([
            "-p",
            prompt,
            "-n",
            &n.to_string(),
            "--temp",
            "0",
            "-c",
            "512",
            "-t",
            "1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.strip_prefix(prompt)
        .and_then(|t| t.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("unexpected run output {text:?}"))
        .to_string()
}

/// Parses an SSE body into its `data:` payloads.
fn sse_events(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

#[test]
fn health_models_and_routing() {
    let s = Server::start(&[]);
    let h = s.health();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["slots_idle"], 1);
    let m = s.request("GET", "/v1/models", None);
    assert_eq!(m.status, 200);
    let v = m.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "SmolLM2-135M-Instruct.Q4_1");
    assert_eq!(v["data"][0]["object"], "model");
    let one = s.request("GET", "/v1/models/SmolLM2-135M-Instruct.Q4_1", None);
    assert_eq!(one.json()["id"], "SmolLM2-135M-Instruct.Q4_1");
    assert_error(
        &s.request("GET", "/v1/models/gpt-4", None),
        404,
        Some("model"),
        Some("model_not_found"),
    );
    assert_error(&s.request("GET", "/v1/nothing", None), 404, None, None);
    assert_error(
        &s.request("GET", "/v1/chat/completions", None),
        405,
        None,
        None,
    );
    let metrics = s.request("GET", "/metrics", None);
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    let text = metrics.text();
    for name in [
        "ledge_requests_total",
        "ledge_tokens_generated_total",
        "ledge_tokens_per_second",
        "ledge_queue_depth",
        "ledge_request_errors_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{text}"
        );
    }
    assert_eq!(s.metric("ledge_requests_total{endpoint=\"models\"}"), 3.0);
    assert_eq!(s.metric("ledge_request_errors_total{status=\"404\"}"), 1.0);
}

#[test]
fn every_bad_input_is_a_4xx_with_an_openai_error_body() {
    let s = Server::start(&["--max-tokens", "64", "--max-body", "4096"]);
    let chat = "/v1/chat/completions";
    let raw = |path: &str, body: &[u8]| s.try_request("POST", path, &[], Some(body)).unwrap();
    assert_error(
        &raw(chat, b"{\"messages\": [}"),
        400,
        None,
        Some("invalid_json"),
    );
    assert_error(&raw(chat, b""), 400, None, None);
    assert_error(&raw(chat, b"[1, 2]"), 400, None, Some("invalid_json"));
    let cases: Vec<(Value, Option<&str>, Option<&str>)> = vec![
        (
            json!({"messages": user("hi"), "temprature": 0.5}),
            Some("temprature"),
            Some("unknown_parameter"),
        ),
        (
            json!({"messages": user("hi"), "temperature": "warm"}),
            Some("temperature"),
            Some("invalid_type"),
        ),
        (
            json!({"messages": user("hi"), "temperature": 2.5}),
            Some("temperature"),
            Some("invalid_value"),
        ),
        (
            json!({"messages": user("hi"), "top_p": -0.1}),
            Some("top_p"),
            Some("invalid_value"),
        ),
        (
            json!({"messages": user("hi"), "max_tokens": "ten"}),
            Some("max_tokens"),
            Some("invalid_type"),
        ),
        (
            json!({"messages": user("hi"), "max_tokens": 0}),
            Some("max_tokens"),
            Some("invalid_value"),
        ),
        (
            json!({"messages": user("hi"), "max_tokens": 65}),
            Some("max_tokens"),
            Some("invalid_value"),
        ),
        (
            json!({"messages": user("hi"), "stream": "yes"}),
            Some("stream"),
            Some("invalid_type"),
        ),
        (
            json!({"messages": user("hi"), "stop": 5}),
            Some("stop"),
            Some("invalid_type"),
        ),
        (
            json!({"messages": user("hi"), "seed": 1.5}),
            Some("seed"),
            Some("invalid_type"),
        ),
        (
            json!({"messages": user("hi"), "n": 3}),
            Some("n"),
            Some("unsupported_parameter"),
        ),
        (
            json!({"messages": user("hi"), "tools": [{"type": "function"}]}),
            Some("tools"),
            Some("unsupported_parameter"),
        ),
        (
            json!({"model": "m"}),
            Some("messages"),
            Some("missing_required_parameter"),
        ),
        (
            json!({"messages": []}),
            Some("messages"),
            Some("empty_array"),
        ),
        (
            json!({"messages": "hi"}),
            Some("messages"),
            Some("invalid_type"),
        ),
        (
            json!({"messages": [{"role": "wizard", "content": "hi"}]}),
            Some("messages[0].role"),
            Some("invalid_value"),
        ),
        (
            json!({"messages": [{"role": "user", "content": 7}]}),
            Some("messages[0].content"),
            Some("invalid_type"),
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi", "mood": "x"}]}),
            Some("messages[0].mood"),
            Some("unknown_parameter"),
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
            Some("messages[0].content[0].type"),
            Some("unsupported_parameter"),
        ),
    ];
    for (body, param, code) in &cases {
        let r = s.post(chat, body);
        assert_error(&r, 400, *param, *code);
    }
    // The prompt is longer than the 512-token context.
    let long = "word ".repeat(600);
    assert_error(
        &s.post(chat, &json!({"messages": user(&long)})),
        400,
        Some("messages"),
        Some("context_length_exceeded"),
    );
    let comp = "/v1/completions";
    assert_error(
        &s.post(comp, &json!({"prompt": long})),
        400,
        Some("prompt"),
        Some("context_length_exceeded"),
    );
    assert_error(
        &s.post(comp, &json!({"max_tokens": 5})),
        400,
        Some("prompt"),
        Some("missing_required_parameter"),
    );
    assert_error(
        &s.post(comp, &json!({"prompt": [1, 99_999_999]})),
        400,
        Some("prompt"),
        Some("invalid_value"),
    );
    assert_error(
        &s.post(comp, &json!({"prompt": "x", "messages": []})),
        400,
        Some("messages"),
        Some("unknown_parameter"),
    );
    assert_error(
        &s.post(comp, &json!({"prompt": "x", "echo": true})),
        400,
        Some("echo"),
        Some("unsupported_parameter"),
    );
    // Over the 4096-byte body cap, declared by Content-Length or only found while reading
    // a chunked body.
    let big = json!({"messages": user(&"x".repeat(5000))}).to_string();
    assert_error(
        &raw(chat, big.as_bytes()),
        413,
        None,
        Some("request_too_large"),
    );
    let mut chunked = format!("{:x}\r\n", big.len()).into_bytes();
    chunked.extend_from_slice(big.as_bytes());
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let r = s
        .try_request(
            "POST",
            chat,
            &[
                ("Transfer-Encoding", "chunked"),
                ("Content-Type", "application/json"),
            ],
            Some(&chunked),
        )
        .unwrap();
    assert_error(&r, 413, None, Some("request_too_large"));
    // Nothing above hurt the server, and every error was counted.
    assert_eq!(s.health()["status"], "ok");
    let n400 = s.metric("ledge_request_errors_total{status=\"400\"}");
    assert_eq!(n400 as usize, 3 + cases.len() + 6);
    assert_eq!(s.metric("ledge_request_errors_total{status=\"413\"}"), 2.0);
    assert_eq!(s.metric("ledge_tokens_generated_total"), 0.0);
}

#[test]
fn api_key_is_required_on_the_api_but_not_on_health() {
    let s = Server::start(&["--api-key", "sekrit"]);
    let body = json!({"messages": user("hi"), "max_tokens": 1}).to_string();
    let call = |auth: &[(&str, &str)]| {
        s.try_request("POST", "/v1/chat/completions", auth, Some(body.as_bytes()))
            .unwrap()
    };
    let missing = call(&[]);
    assert_error(&missing, 401, None, Some("invalid_api_key"));
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    assert_error(
        &call(&[("Authorization", "Bearer wrong")]),
        401,
        None,
        Some("invalid_api_key"),
    );
    assert_error(
        &call(&[("Authorization", "sekrit")]),
        401,
        None,
        Some("invalid_api_key"),
    );
    assert_eq!(call(&[("Authorization", "Bearer sekrit")]).status, 200);
    assert_error(
        &s.request("GET", "/v1/models", None),
        401,
        None,
        Some("invalid_api_key"),
    );
    assert_eq!(s.request("GET", "/health", None).status, 200);
}

#[test]
fn greedy_chat_matches_ledge_run_and_streaming_matches_the_whole_answer() {
    let s = Server::start(&[]);
    let (system, question) = ("You are a concise assistant.", "Name three primary colors.");
    let body = json!({
        "model": "SmolLM2-135M-Instruct.Q4_1",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
        "temperature": 0,
        "max_tokens": 40,
    });
    let r = s.post("/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let choice = &v["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    let content = choice["message"]["content"].as_str().unwrap().to_string();
    let expected = ledge_run(&chatml(system, question), 40);
    assert_eq!(content, expected);
    assert!(!content.is_empty());
    let usage = &v["usage"];
    let (pt, ct) = (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    );
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), pt + ct);
    assert!((1..=40).contains(&ct), "{usage}");
    // The finish reason agrees with the count: 40 tokens is the limit, fewer is an end token.
    let finish = choice["finish_reason"].as_str().unwrap();
    assert_eq!(finish, if ct == 40 { "length" } else { "stop" }, "{v}");
    assert!(pt > 10, "{usage}");

    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    sbody["stream_options"] = json!({"include_usage": true});
    let r = s.post("/v1/chat/completions", &sbody);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let events = sse_events(&r.text());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks.len() >= 4, "{events:?}");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut streamed = String::new();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], chunks[0]["id"]);
        if let Some(t) = c["choices"][0]["delta"]["content"].as_str() {
            streamed.push_str(t);
        }
    }
    assert_eq!(streamed, content);
    let last_choice = &chunks[chunks.len() - 2]["choices"][0];
    assert_eq!(last_choice["finish_reason"], finish);
    let usage_chunk = &chunks[chunks.len() - 1];
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"], *usage);

    // Completions: the raw prompt tokenized as `ledge run` does it.
    let prompt = "The capital of France is";
    let r = s.post(
        "/v1/completions",
        &json!({"prompt": prompt, "temperature": 0, "max_tokens": 12}),
    );
    let v = r.json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(
        v["choices"][0]["text"].as_str().unwrap(),
        ledge_run(prompt, 12)
    );
    // A stop string ends the text before it, with finish_reason "stop".
    let full = v["choices"][0]["text"].as_str().unwrap().to_string();
    let cut = full.split_whitespace().nth(1).unwrap().to_string();
    let r = s.post(
        "/v1/completions",
        &json!({"prompt": prompt, "temperature": 0, "max_tokens": 12, "stop": [cut]}),
    );
    let v = r.json();
    let text = v["choices"][0]["text"].as_str().unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(text, &full[..full.find(&cut).unwrap()]);

    let chats = s.metric("ledge_requests_total{endpoint=\"chat_completions\"}");
    assert_eq!(chats, 2.0);
    assert_eq!(
        s.metric("ledge_requests_total{endpoint=\"completions\"}"),
        2.0
    );
    let generated = s.metric("ledge_tokens_generated_total") as u64;
    assert!(generated >= 2 * ct + 12, "{generated}");
}

/// Reads from a streaming response until the first text delta has arrived.
fn read_until_first_delta(s: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "stream ended early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen);
        if text.matches("data: ").count() >= 2 {
            return text.into_owned();
        }
    }
}

fn long_stream_body() -> String {
    json!({
        "messages": user("Write a very long story about a dragon."),
        "max_tokens": 400,
        "temperature": 0.7,
        "seed": 1,
        "stream": true,
    })
    .to_string()
}

#[test]
fn a_client_that_hangs_up_frees_its_slot() {
    let s = Server::start(&["--parallel", "1"]);
    let body = long_stream_body();
    let mut conn = s
        .send("POST", "/v1/chat/completions", &[], Some(body.as_bytes()))
        .unwrap();
    let head = read_until_first_delta(&mut conn);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(s.health()["slots_busy"], 1);
    let t0 = Instant::now();
    drop(conn);
    s.wait_for("the slot to be freed", Duration::from_secs(10), |s| {
        s.health()["slots_busy"] == 0
    });
    let freed_after = t0.elapsed();
    assert_eq!(s.metric("ledge_requests_cancelled_total"), 1.0);
    let generated = s.metric("ledge_tokens_generated_total");
    assert!(
        generated < 400.0,
        "generation was not stopped: {generated} tokens"
    );
    eprintln!("slot freed {freed_after:?} after the hang-up, {generated} tokens generated");
    // The slot serves the next request.
    let r = s.post(
        "/v1/chat/completions",
        &json!({"messages": user("hi"), "max_tokens": 3}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    let s = Server::start(&["--parallel", "1", "--queue", "1"]);
    let body = long_stream_body();
    let mut running = s
        .send("POST", "/v1/chat/completions", &[], Some(body.as_bytes()))
        .unwrap();
    read_until_first_delta(&mut running);
    let waiting = s
        .send("POST", "/v1/chat/completions", &[], Some(body.as_bytes()))
        .unwrap();
    s.wait_for("a queued request", Duration::from_secs(10), |s| {
        s.health()["queue_depth"] == 1
    });
    let r = s.post(
        "/v1/chat/completions",
        &json!({"messages": user("hi"), "max_tokens": 3}),
    );
    assert_error(&r, 503, None, Some("server_overloaded"));
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(s.metric("ledge_requests_rejected_total"), 1.0);
    assert_eq!(s.metric("ledge_queue_depth"), 1.0);
    // Hanging up both frees the slot and the queue place.
    drop(running);
    drop(waiting);
    s.wait_for("an idle server", Duration::from_secs(10), |s| {
        let h = s.health();
        h["slots_busy"] == 0 && h["queue_depth"] == 0
    });
    let r = s.post(
        "/v1/chat/completions",
        &json!({"messages": user("hi"), "max_tokens": 3}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn sigterm_finishes_the_running_stream_then_exits() {
    let mut s = Server::start(&["--shutdown-grace", "30"]);
    let body = json!({
        "messages": user("Count from one to twenty in words."),
        "max_tokens": 60,
        "temperature": 0,
        "stream": true,
    })
    .to_string();
    let mut conn = s
        .send("POST", "/v1/chat/completions", &[], Some(body.as_bytes()))
        .unwrap();
    let mut seen = read_until_first_delta(&mut conn).into_bytes();
    // SAFETY: kill(2) on our own child's pid, which has not been waited for yet.
    assert_eq!(unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) }, 0);
    conn.read_to_end(&mut seen).unwrap();
    let r = Response::parse(&seen);
    let events = sse_events(&r.text());
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let status = s.child.wait().unwrap();
    assert!(status.success(), "{status:?}\n{}", s.log.lock().unwrap());
    assert!(TcpStream::connect(s.addr).is_err(), "still accepting");
    let log = s.log.lock().unwrap().clone();
    assert!(
        log.contains("shutting down") && log.contains("stopped"),
        "{log}"
    );
}

#[test]
fn a_client_that_hangs_up_before_a_plain_answer_frees_its_slot() {
    let s = Server::start(&["--parallel", "1"]);
    let mut body: Value = serde_json::from_str(&long_stream_body()).unwrap();
    body["stream"] = json!(false);
    let body = body.to_string();
    let conn = s
        .send("POST", "/v1/chat/completions", &[], Some(body.as_bytes()))
        .unwrap();
    s.wait_for("the request to start", Duration::from_secs(10), |s| {
        s.health()["slots_busy"] == 1
    });
    drop(conn);
    s.wait_for("the slot to be freed", Duration::from_secs(10), |s| {
        s.health()["slots_busy"] == 0
    });
    assert_eq!(s.metric("ledge_requests_cancelled_total"), 1.0);
    assert!(s.metric("ledge_tokens_generated_total") < 400.0);
}

#[test]
fn a_file_that_is_not_a_model_ends_the_server_with_an_error() {
    let dir = std::env::temp_dir().join(format!("ledge-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.gguf");
    std::fs::write(&bad, b"this is not a GGUF file").unwrap();
    let out = ledge()
        .args(["serve", "--port", "0", "-m"])
        .arg(&bad)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a GGUF file") && err.contains("bad.gguf"),
        "{err}"
    );
}

/// Gemma 3's file has no chat template (the plain User:/Assistant: format is used) and its
/// vocabulary asks for a BOS token: the server adds it as `ledge run` does.
#[test]
fn greedy_chat_on_gemma_matches_ledge_run_with_the_plain_format() {
    let s = Server::start_model(GEMMA3, &[]);
    let question = "Name three fruits.";
    let r = s.post(
        "/v1/chat/completions",
        &json!({"messages": user(question), "temperature": 0, "max_tokens": 16}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    let prompt = format!("User: {question}\nAssistant:");
    assert_eq!(content, ledge_run_on(GEMMA3, &prompt, 16));
    // BOS + the prompt's tokens.
    let ids = ledge::tokenizer::Tokenizer::from_gguf(
        &ledge::gguf::GgufFile::open(model(GEMMA3)).unwrap(),
    )
    .unwrap()
    .encode(&prompt, true, true);
    assert_eq!(ids[0], 2);
    assert_eq!(v["usage"]["prompt_tokens"].as_u64(), Some(ids.len() as u64));
}

/// `serve --lora`: completions with the adapter are `ledge run --lora`'s greedy text (and not
/// the base model's); an adapter that does not fit ends the server with an error naming it.
#[test]
fn lora_adapter_is_served_as_ledge_run_applies_it() {
    use ledge::gguf::{GgmlType, GgufFile};
    use ledge::model::lora::{write_adapter, LoraPair};
    let dir = scratch("serve-lora");
    let f = GgufFile::open(model(SMOLLM2)).unwrap();
    let mut rng = Rng(77);
    let mut uniform = |n: usize, amp: f32| -> Vec<f32> {
        (0..n)
            .map(|_| ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * amp)
            .collect()
    };
    let pairs: Vec<LoraPair> = f
        .tensors()
        .filter(|v| v.name.ends_with("attn_v.weight") || v.name.ends_with("ffn_down.weight"))
        .map(|v| {
            let (k, m, r) = (v.shape[0], v.shape[1], 4);
            LoraPair {
                base: v.name.to_string(),
                rank: r,
                k,
                m,
                a: uniform(r * k, 1.0 / (k as f32).sqrt()),
                b: uniform(m * r, 2.0),
            }
        })
        .collect();
    let a = write_adapter(&dir.join("a.gguf"), "llama", 4.0, &pairs, GgmlType::F16).unwrap();
    let a = a.to_str().unwrap();

    let prompt = "The capital of France is";
    let run = |extra: &[&str]| {
        let out = ledge()
            .args(["run", "-m"])
            .arg(model(SMOLLM2))
            .args([
                "-p", prompt, "-n", "12", "--temp", "0", "-c", "512", "-t", "1",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()[prompt.len()..]
            .trim_end_matches('\n')
            .to_string()
    };
    let (with, without) = (run(&["--lora", a]), run(&[]));
    assert_ne!(with, without, "the adapter did not change the greedy text");
    let s = Server::start(&["--lora", a]);
    let r = s.post(
        "/v1/completions",
        &json!({"prompt": prompt, "temperature": 0, "max_tokens": 12}),
    );
    assert_eq!(r.json()["choices"][0]["text"].as_str().unwrap(), with);
    drop(s);

    // Gemma 3's adapter on SmolLM2: the server does not start, and says why.
    let g = write_adapter(
        &dir.join("g.gguf"),
        "gemma3",
        4.0,
        &pairs[..1],
        GgmlType::F16,
    )
    .unwrap();
    let out = ledge()
        .args(["serve", "--port", "0", "-m"])
        .arg(model(SMOLLM2))
        .arg("--lora")
        .arg(&g)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("g.gguf") && err.contains("\"gemma3\""),
        "{err}"
    );
}
