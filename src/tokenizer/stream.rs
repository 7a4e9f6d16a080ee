//! Incremental detokenization for streaming output.
//!
//! A token can end in the middle of a UTF-8 character (byte-fallback tokens, or byte-level
//! BPE tokens that split an emoji), so a token's piece cannot always be printed on its own.
//! `StreamDecoder` takes ids one at a time and returns only text that is complete: whole
//! characters, and (for vocabularies with llama.cpp's space clean-up) only spaces whose fate
//! is known. Everything it returns, followed by `finish`, is exactly `Tokenizer::decode` of
//! the ids pushed (with `with_special`, `detokenize(ids, false, true)` as text).
//!
//! Like llama.cpp's detokenizer, it drops the leading space of the first piece when the
//! vocabulary adds a space prefix (SentencePiece's `add_space_prefix`), since that space was
//! not in the text. Text generated after a prompt is a continuation, and llama.cpp's
//! generation loop prints its first piece as is: use `continuation()` there.

use super::detok::{first_piece, CleanSpaces, Utf8Assembler};
use super::Tokenizer;

pub struct StreamDecoder<'t> {
    tok: &'t Tokenizer,
    special: bool,
    /// No token has been pushed yet: the next piece loses the space SentencePiece's
    /// `add_space_prefix` put before the first word (llama.cpp's detokenizer does the same).
    first: bool,
    clean: Option<CleanSpaces>,
    utf8: Utf8Assembler,
    bytes: Vec<u8>,
}

impl<'t> StreamDecoder<'t> {
    pub fn new(tok: &'t Tokenizer) -> StreamDecoder<'t> {
        StreamDecoder {
            tok,
            special: false,
            first: true,
            clean: tok.clean_spaces.then(CleanSpaces::default),
            utf8: Utf8Assembler::default(),
            bytes: Vec::new(),
        }
    }

    /// Render control tokens (`<|im_end|>`) as their text instead of nothing.
    pub fn with_special(mut self, special: bool) -> Self {
        self.special = special;
        self
    }

    /// For ids that continue earlier text (generation after a prompt): the first piece keeps
    /// its leading space.
    pub fn continuation(mut self) -> Self {
        self.first = false;
        self
    }

    /// Takes the next id; returns the text it completes (often empty).
    pub fn push(&mut self, id: u32) -> String {
        let piece = first_piece(
            self.tok.piece(id, self.special),
            self.first && self.tok.add_space_prefix,
        );
        self.first = false;
        self.bytes.clear();
        match self.clean.as_mut() {
            Some(c) => c.push(piece, &mut self.bytes),
            None => self.bytes.extend_from_slice(piece),
        }
        let mut out = String::new();
        self.utf8.push(&self.bytes, &mut out);
        out
    }

    /// Ends the stream: returns what was held back (an incomplete character becomes U+FFFD)
    /// and makes the decoder ready for a new sequence (one that starts a text).
    pub fn finish(&mut self) -> String {
        self.bytes.clear();
        if let Some(c) = self.clean.as_mut() {
            c.finish(&mut self.bytes);
        }
        let mut out = String::new();
        self.utf8.push(&self.bytes, &mut out);
        self.utf8.finish(&mut out);
        self.first = true;
        out
    }
}
