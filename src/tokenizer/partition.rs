//! Cutting special tokens out of the text before the vocabulary's own algorithm runs
//! (llama.cpp's `tokenizer_st_partition`).
//!
//! llama.cpp takes the special tokens one at a time, longest text first, and splits every
//! text fragment left at each occurrence of that token. This is not leftmost-longest
//! matching: a longer token is cut out wherever it occurs before a shorter one is looked
//! for. User-defined tokens are always cut out; control and unknown tokens only when
//! `parse_special`.

use std::ops::Range;

use super::{TokenAttr, Tokenizer, ATTR_SPECIAL};

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fragment {
    /// A byte range of the text still to be tokenized.
    Text(Range<usize>),
    Token(u32),
}

/// C's `isspace` in the "C" locale, which llama.cpp uses for LSTRIP/RSTRIP.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

pub(crate) fn partition(tok: &Tokenizer, text: &str, parse_special: bool) -> Vec<Fragment> {
    if text.is_empty() {
        return Vec::new();
    }
    let bytes = text.as_bytes();
    let mut frags = vec![Fragment::Text(0..text.len())];
    let mut next = Vec::new();
    let pairs = BytePairs::of(bytes);
    for &id in &tok.special_order {
        let data = &tok.tokens[id as usize];
        if !parse_special && data.attr.intersects(ATTR_SPECIAL) {
            continue;
        }
        let needle = data.text.as_str();
        // Most special tokens appear nowhere in a given text (Gemma has 6,000 "<unusedN>"):
        // reject them by their first two bytes before searching.
        if !pairs.may_contain(needle.as_bytes()) || !text.contains(needle) {
            continue;
        }
        let lstrip = data.attr.intersects(TokenAttr::LSTRIP);
        let rstrip = data.attr.intersects(TokenAttr::RSTRIP);
        next.clear();
        for f in frags.drain(..) {
            let Fragment::Text(mut r) = f else {
                next.push(f);
                continue;
            };
            while let Some(pos) = text[r.clone()].find(needle) {
                let at = r.start + pos;
                let mut left_end = at;
                if lstrip {
                    while left_end > r.start && is_c_space(bytes[left_end - 1]) {
                        left_end -= 1;
                    }
                }
                if left_end > r.start {
                    next.push(Fragment::Text(r.start..left_end));
                }
                next.push(Fragment::Token(id));
                let mut right_start = at + needle.len();
                if rstrip {
                    while right_start < r.end && is_c_space(bytes[right_start]) {
                        right_start += 1;
                    }
                }
                r = right_start..r.end;
            }
            if !r.is_empty() {
                next.push(Fragment::Text(r));
            }
        }
        std::mem::swap(&mut frags, &mut next);
    }
    frags
}

/// Which byte pairs (and single bytes) occur in a text: a 64 Ki-bit set.
struct BytePairs {
    bits: Vec<u64>,
    singles: [bool; 256],
}

impl BytePairs {
    fn of(text: &[u8]) -> BytePairs {
        let mut bits = vec![0u64; 65536 / 64];
        let mut singles = [false; 256];
        for w in text.windows(2) {
            let k = usize::from(w[0]) << 8 | usize::from(w[1]);
            bits[k / 64] |= 1 << (k % 64);
        }
        for &b in text {
            singles[usize::from(b)] = true;
        }
        BytePairs { bits, singles }
    }

    /// False only if `needle` cannot occur in the text.
    fn may_contain(&self, needle: &[u8]) -> bool {
        match needle {
            [] => true,
            [b] => self.singles[usize::from(*b)],
            [a, b, ..] => {
                let k = usize::from(*a) << 8 | usize::from(*b);
                self.bits[k / 64] & (1 << (k % 64)) != 0
            }
        }
    }
}
