//! `ledge inspect`: what a GGUF file holds, for people (text) and machines (JSON).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Map, Value as Json};

use crate::gguf::{GgmlType, GgufFile, Value};

/// How many leading elements of a long array are shown.
const ARRAY_HEAD: usize = 8;

/// Tensor totals per type, and overall.
pub struct Totals {
    pub by_type: BTreeMap<GgmlType, (usize, u64, u64)>, // count, elements, bytes
    pub elements: u64,
    pub bytes: u64,
}

pub fn totals(f: &GgufFile) -> Totals {
    let mut by_type: BTreeMap<GgmlType, (usize, u64, u64)> = BTreeMap::new();
    for t in f.tensor_infos() {
        let e = by_type.entry(t.ty).or_default();
        e.0 += 1;
        e.1 += t.n_elements();
        e.2 += t.n_bytes() as u64;
    }
    Totals {
        elements: by_type.values().map(|v| v.1).sum(),
        bytes: by_type.values().map(|v| v.2).sum(),
        by_type,
    }
}

fn bpw(bytes: u64, elements: u64) -> f64 {
    if elements == 0 {
        0.0
    } else {
        bytes as f64 * 8.0 / elements as f64
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

fn human_count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2} B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2} M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.2} K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

/// The text of a special-token id key, with the token it names when the vocabulary has it.
fn special_token(f: &GgufFile, key: &str) -> Option<String> {
    let id = f.get(key)?.to_i64()?;
    let token = f
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_array())
        .and_then(|a| usize::try_from(id).ok().and_then(|i| a.iter().nth(i)))
        .and_then(|v| v.as_str().map(|s| format!(" {s:?}")))
        .unwrap_or_default();
    Some(format!("{id}{token}"))
}

fn is_tokenizer_bulk(key: &str) -> bool {
    matches!(
        key,
        "tokenizer.ggml.tokens"
            | "tokenizer.ggml.scores"
            | "tokenizer.ggml.token_type"
            | "tokenizer.ggml.merges"
            | "tokenizer.chat_template"
    )
}

/// Whether ledge runs this file, from its architecture and hyperparameters (the tensors are
/// checked when the model loads: inspect stays instant on a 30 GB file).
pub fn support(f: &GgufFile) -> String {
    match f.get_str("general.type") {
        Ok("adapter") => {
            let kind = f.get_str("adapter.type").unwrap_or("unknown");
            let arch = f.architecture().unwrap_or("unknown");
            return if kind == "lora" {
                format!("a LoRA adapter for {arch} models: apply it with --lora")
            } else {
                format!("an adapter of type {kind:?} for {arch}, which ledge does not apply")
            };
        }
        Ok("gram") => return "Gram matrices from `ledge calibrate --gram`".into(),
        _ => {}
    }
    match crate::model::ModelConfig::from_gguf(f) {
        Ok(c) => format!("runs {} ({})", c.arch.name(), c.spec.covers),
        Err(e) => format!("cannot run this file: {e}"),
    }
}

/// The families ledge runs, one line each: for `ledge inspect --families`.
pub fn families_text() -> String {
    let mut s = String::new();
    for a in crate::model::Arch::ALL {
        let _ = writeln!(s, "{:<10} {}", a.name(), a.spec().covers);
    }
    s
}

/// The human-readable report.
pub fn report_text(f: &GgufFile) -> String {
    let mut s = String::new();
    let arch = f.architecture().unwrap_or("(none)");
    let _ = writeln!(
        s,
        "file:         {} ({}, GGUF v{}, alignment {})",
        f.path().display(),
        human_bytes(f.file_size()),
        f.version(),
        f.alignment()
    );
    let _ = writeln!(s, "architecture: {arch}");
    let _ = writeln!(s, "ledge:        {}", support(f));
    if let Ok(name) = f.get_str("general.name") {
        let _ = writeln!(s, "name:         {name}");
    }

    let prefix = format!("{arch}.");
    let _ = writeln!(s, "\nhyperparameters ({prefix}*):");
    for (k, v) in f.metadata().filter(|(k, _)| k.starts_with(&prefix)) {
        let _ = writeln!(s, "  {:<40} {v}", &k[prefix.len()..]);
    }

    let _ = writeln!(s, "\ntokenizer:");
    let field = |s: &mut String, label: &str, val: Option<String>| {
        if let Some(v) = val {
            let _ = writeln!(s, "  {label:<40} {v}");
        }
    };
    field(
        &mut s,
        "model",
        f.get_str("tokenizer.ggml.model").ok().map(str::to_string),
    );
    field(
        &mut s,
        "pre-tokenizer",
        f.get_str("tokenizer.ggml.pre").ok().map(str::to_string),
    );
    field(
        &mut s,
        "vocab size",
        f.get_array("tokenizer.ggml.tokens")
            .ok()
            .map(|a| a.len().to_string()),
    );
    field(
        &mut s,
        "merges",
        f.get_array("tokenizer.ggml.merges")
            .ok()
            .map(|a| a.len().to_string()),
    );
    for (label, key) in [
        ("bos", "tokenizer.ggml.bos_token_id"),
        ("eos", "tokenizer.ggml.eos_token_id"),
        ("eot", "tokenizer.ggml.eot_token_id"),
        ("unknown", "tokenizer.ggml.unknown_token_id"),
        ("padding", "tokenizer.ggml.padding_token_id"),
        ("separator", "tokenizer.ggml.seperator_token_id"),
    ] {
        field(&mut s, label, special_token(f, key));
    }
    field(
        &mut s,
        "chat template",
        f.get_str("tokenizer.chat_template")
            .ok()
            .map(|t| format!("present ({} bytes)", t.len())),
    );
    for (k, v) in f.metadata().filter(|(k, _)| {
        k.starts_with("tokenizer.") && !is_tokenizer_bulk(k) && !k.ends_with("_token_id")
    }) {
        if !matches!(k, "tokenizer.ggml.model" | "tokenizer.ggml.pre") {
            let _ = writeln!(s, "  {:<40} {v}", &k["tokenizer.".len()..]);
        }
    }

    let others: Vec<_> = f
        .metadata()
        .filter(|(k, _)| !k.starts_with(&prefix) && !k.starts_with("tokenizer."))
        .collect();
    if !others.is_empty() {
        let _ = writeln!(s, "\nother metadata:");
        for (k, v) in others {
            let _ = writeln!(s, "  {k:<40} {v}");
        }
    }

    let name_w = f
        .tensor_infos()
        .iter()
        .map(|t| f.tensor_name(t).len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(s, "\ntensors ({}):", f.tensor_count());
    let _ = writeln!(
        s,
        "  {:<name_w$}  {:<7}  {:<22}  {:>12}",
        "name", "type", "shape", "bytes"
    );
    for t in f.tensor_infos() {
        let shape = format!("{:?}", t.dims);
        let _ = writeln!(
            s,
            "  {:<name_w$}  {:<7}  {:<22}  {:>12}",
            f.tensor_name(t),
            t.ty.name(),
            shape,
            t.n_bytes()
        );
    }

    let tot = totals(f);
    let _ = writeln!(s, "\nby type:");
    for (ty, (n, elems, bytes)) in &tot.by_type {
        let _ = writeln!(
            s,
            "  {:<7} {:>4} tensors  {:>10} weights  {:>11}  {:>5.2} bits/weight",
            ty.name(),
            n,
            human_count(*elems),
            human_bytes(*bytes),
            bpw(*bytes, *elems)
        );
    }
    let _ = writeln!(
        s,
        "total: {} tensors, {} weights, {}, {:.2} bits per weight",
        f.tensor_count(),
        human_count(tot.elements),
        human_bytes(tot.bytes),
        bpw(tot.bytes, tot.elements)
    );
    s
}

fn value_json(v: &Value<'_>, abbreviate: bool) -> Json {
    match *v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::F32(x) => json!(x),
        Value::Bool(x) => json!(x),
        Value::String(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F64(x) => json!(x),
        Value::Array(a) => {
            let take = if abbreviate { ARRAY_HEAD } else { usize::MAX };
            let items: Vec<Json> = a.iter().take(take).map(|x| value_json(&x, true)).collect();
            if abbreviate && a.len() > ARRAY_HEAD {
                json!({"type": "array", "elem": a.elem_type().name(), "len": a.len(), "head": items})
            } else {
                Json::Array(items)
            }
        }
    }
}

/// The machine-readable report. Long arrays become `{type, elem, len, head}`.
pub fn report_json(f: &GgufFile) -> Json {
    let mut meta = Map::new();
    for (k, v) in f.metadata() {
        meta.insert(
            k.to_string(),
            json!({"type": v.value_type().name(), "value": value_json(&v, true)}),
        );
    }
    let tensors: Vec<Json> = f
        .tensor_infos()
        .iter()
        .map(|t| {
            json!({
                "name": f.tensor_name(t),
                "type": t.ty.name(),
                "shape": t.dims,
                "elements": t.n_elements(),
                "bytes": t.n_bytes(),
                "offset": t.data.start,
            })
        })
        .collect();
    let tot = totals(f);
    let by_type: Map<String, Json> = tot
        .by_type
        .iter()
        .map(|(ty, (n, e, b))| {
            (
                ty.name().to_string(),
                json!({"tensors": n, "elements": e, "bytes": b, "bits_per_weight": bpw(*b, *e)}),
            )
        })
        .collect();
    json!({
        "file": f.path().display().to_string(),
        "file_size": f.file_size(),
        "version": f.version(),
        "alignment": f.alignment(),
        "architecture": f.architecture().ok(),
        "ledge_support": support(f),
        "metadata": meta,
        "tensor_count": f.tensor_count(),
        "tensors": tensors,
        "totals": {
            "elements": tot.elements,
            "bytes": tot.bytes,
            "bits_per_weight": bpw(tot.bytes, tot.elements),
            "by_type": by_type,
        },
    })
}
