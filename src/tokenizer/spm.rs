//! SentencePiece (`tokenizer.ggml.model = llama`), as llama.cpp's `llm_tokenizer_spm` does it.
//!
//! The text (spaces already escaped to `▁`) starts as one symbol per UTF-8 character. Every
//! pair of neighbours whose concatenation is a token is a candidate; the candidate whose
//! token has the highest score (the leftmost on a tie) is merged, its new neighbour pairs
//! become candidates, and so on until none is left. A final symbol that is not a token is
//! written as its bytes (`<0xNN>` tokens).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::Tokenizer;

/// One symbol: a byte range of the text, linked to its neighbours. A symbol merged into its
/// left neighbour keeps `len == 0`.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge of symbols `left` and `right` (neighbours when it was made).
struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    /// The merged byte length: a candidate is stale once either side has changed.
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// The max-heap's top is the highest score, then the leftmost. Scores compare as C's
    /// `<` does (so -0.0 == 0.0); GGUF scores are never NaN.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .partial_cmp(&other.score)
            .unwrap_or(Ordering::Equal)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// Appends the tokens of `text` (one fragment, spaces escaped) to `out`.
pub(crate) fn tokenize(tok: &Tokenizer, text: &str, out: &mut Vec<u32>) {
    let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
    for (i, (start, ch)) in text.char_indices().enumerate() {
        let len = ch.len_utf8();
        symbols.push(Symbol {
            start,
            len,
            prev: i.checked_sub(1),
            next: (start + len < text.len()).then_some(i + 1),
        });
    }
    if symbols.is_empty() {
        return;
    }

    let mut queue = BinaryHeap::new();
    let try_add =
        |symbols: &[Symbol], queue: &mut BinaryHeap<Bigram>, l: Option<usize>, r: Option<usize>| {
            let (Some(left), Some(right)) = (l, r) else {
                return;
            };
            let a = symbols[left];
            let size = a.len + symbols[right].len;
            if let Some(id) = tok.token_id(&text[a.start..a.start + size]) {
                queue.push(Bigram {
                    left,
                    right,
                    score: tok.tokens[id as usize].score,
                    size,
                });
            }
        };
    for i in 1..symbols.len() {
        try_add(&symbols, &mut queue, Some(i - 1), Some(i));
    }

    while let Some(b) = queue.pop() {
        let (l, r) = (symbols[b.left], symbols[b.right]);
        if l.len == 0 || r.len == 0 || l.len + r.len != b.size {
            continue;
        }
        symbols[b.left].len += r.len;
        symbols[b.right].len = 0;
        symbols[b.left].next = r.next;
        if let Some(n) = r.next {
            symbols[n].prev = Some(b.left);
        }
        try_add(&symbols, &mut queue, l.prev, Some(b.left));
        try_add(&symbols, &mut queue, Some(b.left), r.next);
    }

    // Every merged symbol is a token (a merge is only queued when it is one), so only a
    // single character can be missing from the vocabulary; it falls back to byte tokens.
    let mut i = Some(0);
    while let Some(k) = i {
        let s = symbols[k];
        let piece = &text[s.start..s.start + s.len];
        match tok.token_id(piece) {
            Some(id) => out.push(id),
            None => {
                for &b in piece.as_bytes() {
                    out.extend(byte_to_token(tok, b));
                }
            }
        }
        i = s.next;
    }
}

/// The token of one raw byte: `<0xNN>`, else a token whose text is that byte, else the
/// unknown token (where llama.cpp would throw).
fn byte_to_token(tok: &Tokenizer, b: u8) -> Option<u32> {
    tok.token_id(&format!("<0x{b:02X}>"))
        .or_else(|| {
            if b.is_ascii() {
                tok.token_id(std::str::from_utf8(&[b]).ok()?)
            } else {
                None
            }
        })
        .or(tok.special.unk)
}
