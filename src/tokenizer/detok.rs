//! Token ids back to bytes, as llama.cpp's `token_to_piece` and `llama_detokenize` do it.
//!
//! The steps are written as byte transducers (`CleanSpaces`, `Utf8Assembler`) so that the
//! whole-sequence decoder and the streaming one (`stream.rs`) are the same code and cannot
//! disagree.

use super::{bpe, Model, TokenAttr, Tokenizer, ATTR_SPECIAL};

/// Appends token `id`'s piece, special tokens rendered (llama.cpp's `token_to_piece` with
/// `special = true`, the contents of its piece cache).
pub(crate) fn append_piece(tok: &Tokenizer, id: usize, out: &mut Vec<u8>) {
    let t = &tok.tokens[id];
    let attr = t.attr;
    if attr.intersects(ATTR_SPECIAL | TokenAttr::USER_DEFINED) {
        out.extend_from_slice(t.text.as_bytes());
    } else if attr.intersects(TokenAttr::NORMAL) {
        match tok.model {
            Model::Spm => out.extend_from_slice(t.text.replace('\u{2581}', " ").as_bytes()),
            Model::Bpe(_) => bpe::decode_token_text(&t.text, out),
        }
    } else if attr.intersects(TokenAttr::BYTE) {
        // "<0xNN>": llama.cpp reads the two hex digits with strtol, 0 if they are not hex.
        let hex = t.text.get(3..5).unwrap_or("");
        out.push(u8::from_str_radix(hex, 16).unwrap_or(0));
    }
    // Unused and undefined tokens have no piece.
}

/// llama.cpp's `llama_detokenize`.
pub(crate) fn detokenize(
    tok: &Tokenizer,
    mut ids: &[u32],
    remove_special: bool,
    unparse_special: bool,
) -> Vec<u8> {
    let mut strip_space = tok.add_space_prefix;
    if remove_special && tok.add_bos && !ids.is_empty() && Some(ids[0]) == tok.special.bos {
        // llama.cpp keeps the text's first space when it drops a BOS.
        strip_space = false;
        ids = &ids[1..];
    }
    if remove_special && tok.add_eos && ids.last().copied() == tok.special.eos && !ids.is_empty() {
        ids = &ids[..ids.len() - 1];
    }
    let mut out = Vec::new();
    let mut clean = tok.clean_spaces.then(CleanSpaces::default);
    for &id in ids {
        let piece = first_piece(tok.piece(id, unparse_special), strip_space);
        strip_space = false;
        match clean.as_mut() {
            Some(c) => c.push(piece, &mut out),
            None => out.extend_from_slice(piece),
        }
    }
    if let Some(c) = clean.as_mut() {
        c.finish(&mut out);
    }
    out
}

/// The piece with one leading space removed when `strip` (the space SentencePiece's
/// `add_space_prefix` put before the first word).
pub(crate) fn first_piece(piece: &[u8], strip: bool) -> &[u8] {
    match piece {
        [b' ', rest @ ..] if strip => rest,
        _ => piece,
    }
}

/// llama.cpp's `clean_spaces` post-pass over decoded bytes, as a streaming transducer: three
/// passes, each removing spaces by looking at most two bytes ahead, run one after another.
///
/// 1. a space before `?`, `!`, `.` or `,` goes;
/// 2. ` ' ` becomes `'` (and the byte after the removed second space no longer counts as
///    following a space);
/// 3. the space before `'s`, `'m`, `'re`, `'ve` goes.
///
/// Each pass holds back only the bytes whose fate depends on bytes not yet seen.
#[derive(Default)]
pub(crate) struct CleanSpaces {
    p1: Pass1,
    p2: Pass2,
    p3: Pass3,
}

impl CleanSpaces {
    pub(crate) fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for &x in bytes {
            self.p1.push(x, &mut a);
        }
        for &x in &a {
            self.p2.push(x, &mut b);
        }
        for &x in &b {
            self.p3.push(x, out);
        }
    }

    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        self.p1.finish(&mut a);
        for &x in &a {
            self.p2.push(x, &mut b);
        }
        self.p2.finish(&mut b);
        for &x in &b {
            self.p3.push(x, out);
        }
        self.p3.finish(out);
    }
}

/// Pass 1 holds a space until it sees the next byte.
#[derive(Default)]
struct Pass1 {
    space: bool,
}

impl Pass1 {
    fn push(&mut self, x: u8, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.space) && !matches!(x, b'?' | b'!' | b'.' | b',') {
            out.push(b' ');
        }
        if x == b' ' {
            self.space = true;
        } else {
            out.push(x);
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.space) {
            out.push(b' ');
        }
    }
}

/// Pass 2's held bytes: nothing, a space, or a space and an apostrophe.
#[derive(Default, Clone, Copy, PartialEq)]
enum Held2 {
    #[default]
    None,
    Space,
    SpaceQuote,
}

#[derive(Default)]
struct Pass2 {
    held: Held2,
}

impl Pass2 {
    fn push(&mut self, x: u8, out: &mut Vec<u8>) {
        match (self.held, x) {
            (Held2::None, b' ') => self.held = Held2::Space,
            (Held2::None, _) => out.push(x),
            (Held2::Space, b'\'') => self.held = Held2::SpaceQuote,
            // The first space can no longer be removed; the new one might be.
            (Held2::Space, b' ') => out.push(b' '),
            (Held2::Space, _) => {
                out.extend_from_slice(&[b' ', x]);
                self.held = Held2::None;
            }
            (Held2::SpaceQuote, b' ') => {
                // " ' " -> "'". The swallowed space is not a space before the next byte.
                out.push(b'\'');
                self.held = Held2::None;
            }
            (Held2::SpaceQuote, _) => {
                // The apostrophe's successor is not a space, and follows an apostrophe.
                out.extend_from_slice(&[b' ', b'\'', x]);
                self.held = Held2::None;
            }
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        match std::mem::take(&mut self.held) {
            Held2::None => {}
            Held2::Space => out.push(b' '),
            Held2::SpaceQuote => out.extend_from_slice(b" '"),
        }
    }
}

/// Pass 3's held bytes: nothing, " ", " '", or " '" and an `r` or `v`.
#[derive(Default, Clone, Copy, PartialEq)]
enum Held3 {
    #[default]
    None,
    Space,
    SpaceQuote,
    SpaceQuoteLetter(u8),
}

#[derive(Default)]
struct Pass3 {
    held: Held3,
}

impl Pass3 {
    fn push(&mut self, x: u8, out: &mut Vec<u8>) {
        match (self.held, x) {
            (Held3::None, b' ') => self.held = Held3::Space,
            (Held3::None, _) => out.push(x),
            (Held3::Space, b'\'') => self.held = Held3::SpaceQuote,
            (Held3::Space, b' ') => out.push(b' '),
            (Held3::Space, _) => {
                out.extend_from_slice(&[b' ', x]);
                self.held = Held3::None;
            }
            (Held3::SpaceQuote, b's' | b'm') => {
                out.extend_from_slice(&[b'\'', x]);
                self.held = Held3::None;
            }
            (Held3::SpaceQuote, b'r' | b'v') => self.held = Held3::SpaceQuoteLetter(x),
            (Held3::SpaceQuote, _) => {
                out.extend_from_slice(b" '");
                self.held = Held3::None;
                self.push(x, out);
            }
            (Held3::SpaceQuoteLetter(l), b'e') => {
                out.extend_from_slice(&[b'\'', l, b'e']);
                self.held = Held3::None;
            }
            (Held3::SpaceQuoteLetter(l), _) => {
                out.extend_from_slice(&[b' ', b'\'', l]);
                self.held = Held3::None;
                self.push(x, out);
            }
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        match std::mem::take(&mut self.held) {
            Held3::None => {}
            Held3::Space => out.push(b' '),
            Held3::SpaceQuote => out.extend_from_slice(b" '"),
            Held3::SpaceQuoteLetter(l) => out.extend_from_slice(&[b' ', b'\'', l]),
        }
    }
}

/// Bytes in, text out: complete UTF-8 characters only, invalid sequences as U+FFFD exactly
/// where `String::from_utf8_lossy` of the whole byte stream would put them.
#[derive(Default)]
pub(crate) struct Utf8Assembler {
    pending: Vec<u8>,
}

impl Utf8Assembler {
    pub(crate) fn push(&mut self, bytes: &[u8], out: &mut String) {
        self.pending.extend_from_slice(bytes);
        let mut pos = 0;
        loop {
            match std::str::from_utf8(&self.pending[pos..]) {
                Ok(s) => {
                    out.push_str(s);
                    pos = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // from_utf8 vouched for these bytes.
                    out.push_str(
                        std::str::from_utf8(&self.pending[pos..pos + valid]).unwrap_or(""),
                    );
                    pos += valid;
                    match e.error_len() {
                        Some(n) => {
                            out.push('\u{FFFD}');
                            pos += n;
                        }
                        // An incomplete character at the end: wait for its other bytes.
                        None => break,
                    }
                }
            }
        }
        self.pending.drain(..pos);
    }

    pub(crate) fn finish(&mut self, out: &mut String) {
        if !self.pending.is_empty() {
            out.push('\u{FFFD}');
            self.pending.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line-by-line port of llama.cpp's three clean-up loops (in-place over a byte
    /// buffer, `text[++i] = '\0'` and all), the oracle for the transducer.
    fn clean_like_llama_cpp(input: &[u8]) -> Vec<u8> {
        let mut text = input.to_vec();
        let mut total = text.len();

        let total1 = total;
        total = usize::from(total > 0);
        for i in 1..total1 {
            let x = text[i];
            if text[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
                total -= 1;
            }
            text[total] = x;
            total += 1;
        }

        let total2 = total;
        total = usize::from(total > 0);
        let mut i = 1;
        while i < total2 {
            let x = text[i];
            if x == b'\'' && i + 1 < total2 && text[i - 1] == b' ' && text[i + 1] == b' ' {
                total -= 1;
                i += 1;
                text[i] = 0;
            }
            text[total] = x;
            total += 1;
            i += 1;
        }

        let total3 = total;
        total = usize::from(total > 0);
        for i in 1..total3 {
            let x = text[i];
            if text[i - 1] == b' ' && x == b'\'' && i + 1 < total3 {
                let x1 = text[i + 1];
                if x1 == b's' || x1 == b'm' {
                    total -= 1;
                } else if i + 2 < total3 {
                    let x2 = text[i + 2];
                    if (x1 == b'r' || x1 == b'v') && x2 == b'e' {
                        total -= 1;
                    }
                }
            }
            text[total] = x;
            total += 1;
        }
        text.truncate(total);
        text
    }

    fn clean_streamed(input: &[u8], chunk: usize) -> Vec<u8> {
        let mut c = CleanSpaces::default();
        let mut out = Vec::new();
        for part in input.chunks(chunk.max(1)) {
            c.push(part, &mut out);
        }
        c.finish(&mut out);
        out
    }

    #[test]
    fn clean_spaces_matches_llama_cpp_loops() {
        // Every string of up to 6 bytes over the alphabet that matters, then random longer.
        let alphabet = b" 'smrvedl.?x";
        let mut cases: Vec<Vec<u8>> = vec![vec![]];
        let mut frontier: Vec<Vec<u8>> = vec![vec![]];
        for _ in 0..6 {
            let mut next = Vec::new();
            for s in &frontier {
                for &c in alphabet {
                    let mut t = s.clone();
                    t.push(c);
                    next.push(t);
                }
            }
            cases.extend(next.iter().cloned());
            frontier = next;
        }
        let mut state = 0x1234_5678_9abc_def0u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 40) as usize;
            let s: Vec<u8> = (0..len)
                .map(|k| alphabet[((state >> (k % 50)) as usize + k * 7) % alphabet.len()])
                .collect();
            cases.push(s);
        }
        for s in &cases {
            let want = clean_like_llama_cpp(s);
            for chunk in [1, 2, 3, 64] {
                assert_eq!(
                    clean_streamed(s, chunk),
                    want,
                    "input {:?} in chunks of {chunk}",
                    String::from_utf8_lossy(s)
                );
            }
        }
        assert_eq!(
            clean_like_llama_cpp(b"Hello , world ' s it 's ok ?"),
            b"Hello, world's it's ok?"
        );
    }

    #[test]
    fn utf8_assembler_matches_lossy_whole_string() {
        let samples: [&[u8]; 6] = [
            "héllo wörld 日本 🎉".as_bytes(),
            b"\xe2\x82",
            b"\xe2\x82A\xff\xfe",
            b"ok\xf0\x9f\x8e",
            b"\xf0\x9f\x8e\x89\xf0",
            b"\xc3",
        ];
        for s in samples {
            let want = String::from_utf8_lossy(s).into_owned();
            for chunk in 1..=4 {
                let mut a = Utf8Assembler::default();
                let mut got = String::new();
                for part in s.chunks(chunk) {
                    a.push(part, &mut got);
                }
                a.finish(&mut got);
                assert_eq!(got, want, "{s:?} in chunks of {chunk}");
            }
        }
    }
}
