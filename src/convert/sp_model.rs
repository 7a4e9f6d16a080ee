//! SentencePiece's `tokenizer.model` (a `sentencepiece.ModelProto` protobuf) → the pieces,
//! scores and types llama.cpp's converter writes for Phi-3, Gemma 2 and Llama 2.
//!
//! Only the fields the conversion needs are decoded; the protobuf wire format is small
//! enough (varints, fixed 32/64-bit, length-delimited) that a reader of it is shorter than
//! the generated code of a protobuf crate, and unknown fields are skipped as the format
//! requires.

/// sentencepiece_model.proto's `SentencePiece.Type`.
pub mod piece_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

#[derive(Clone, Debug, PartialEq)]
pub struct Piece {
    pub piece: String,
    pub score: f32,
    /// One of [`piece_type`].
    pub ty: i32,
}

/// The decoded model: its pieces in id order and the trainer's special ids.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpModel {
    pub pieces: Vec<Piece>,
    /// `TrainerSpec.model_type`: 1 = unigram, 2 = BPE, 3 = word, 4 = char.
    pub model_type: i32,
    pub unk_id: Option<u32>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub pad_id: Option<u32>,
    /// `NormalizerSpec.add_dummy_prefix` (true unless the file says otherwise).
    pub add_dummy_prefix: bool,
}

#[derive(Debug)]
pub struct SpError(pub String);

impl std::fmt::Display for SpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tokenizer.model: {}", self.0)
    }
}

fn err(msg: impl Into<String>) -> SpError {
    SpError(msg.into())
}

/// A field's payload.
enum Value<'a> {
    Varint(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

/// Protobuf wire-format reader over one message's bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, SpError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| err("truncated varint"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(err("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], SpError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| err(format!("field of {n} bytes runs past the end")))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// The next (field number, value), skipping 64-bit fixed fields (none is needed).
    fn next(&mut self) -> Result<Option<(u64, Value<'a>)>, SpError> {
        loop {
            if self.pos >= self.buf.len() {
                return Ok(None);
            }
            let key = self.varint()?;
            let (field, wire) = (key >> 3, key & 7);
            let v = match wire {
                0 => Value::Varint(self.varint()?),
                1 => {
                    self.take(8)?;
                    continue;
                }
                2 => {
                    let n = usize::try_from(self.varint()?).map_err(|_| err("huge length"))?;
                    Value::Bytes(self.take(n)?)
                }
                5 => {
                    let b = self.take(4)?;
                    Value::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                }
                w => return Err(err(format!("field {field} has wire type {w} (groups?)"))),
            };
            return Ok(Some((field, v)));
        }
    }
}

fn id_field(v: &Value) -> Option<u32> {
    match v {
        // Ids are int32: -1 (encoded as a 10-byte varint) means "none".
        Value::Varint(x) => i32::try_from(*x as i64)
            .ok()
            .and_then(|i| u32::try_from(i).ok()),
        _ => None,
    }
}

impl SpModel {
    pub fn parse(bytes: &[u8]) -> Result<SpModel, SpError> {
        // Defaults of sentencepiece's TrainerSpec / NormalizerSpec.
        let mut m = SpModel {
            model_type: 1,
            unk_id: Some(0),
            bos_id: Some(1),
            eos_id: Some(2),
            pad_id: None,
            add_dummy_prefix: true,
            ..SpModel::default()
        };
        let mut r = Reader::new(bytes);
        while let Some((field, v)) = r.next()? {
            match (field, v) {
                (1, Value::Bytes(b)) => m.pieces.push(parse_piece(b, m.pieces.len())?),
                (2, Value::Bytes(b)) => {
                    let mut t = Reader::new(b);
                    while let Some((f, v)) = t.next()? {
                        match f {
                            3 => {
                                if let Value::Varint(x) = v {
                                    m.model_type = x as i32;
                                }
                            }
                            40 => m.unk_id = id_field(&v),
                            41 => m.bos_id = id_field(&v),
                            42 => m.eos_id = id_field(&v),
                            43 => m.pad_id = id_field(&v),
                            _ => {}
                        }
                    }
                }
                (3, Value::Bytes(b)) => {
                    let mut n = Reader::new(b);
                    while let Some((f, v)) = n.next()? {
                        if let (3, Value::Varint(x)) = (f, v) {
                            m.add_dummy_prefix = x != 0;
                        }
                    }
                }
                _ => {}
            }
        }
        if m.pieces.is_empty() {
            return Err(err("no pieces (is this a SentencePiece model?)"));
        }
        Ok(m)
    }
}

fn parse_piece(b: &[u8], id: usize) -> Result<Piece, SpError> {
    let mut p = Piece {
        piece: String::new(),
        score: 0.0,
        ty: piece_type::NORMAL,
    };
    let mut r = Reader::new(b);
    while let Some((f, v)) = r.next()? {
        match (f, v) {
            (1, Value::Bytes(s)) => {
                p.piece = String::from_utf8(s.to_vec())
                    .map_err(|_| err(format!("piece {id} is not UTF-8")))?
            }
            (2, Value::Fixed32(bits)) => p.score = f32::from_bits(bits),
            (3, Value::Varint(t)) => p.ty = t as i32,
            _ => {}
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn bytes_field(field: u64, payload: &[u8], out: &mut Vec<u8>) {
        varint(field << 3 | 2, out);
        varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }

    fn piece(text: &str, score: f32, ty: u64) -> Vec<u8> {
        let mut p = Vec::new();
        bytes_field(1, text.as_bytes(), &mut p);
        varint(2 << 3 | 5, &mut p);
        p.extend_from_slice(&score.to_le_bytes());
        varint(3 << 3, &mut p);
        varint(ty, &mut p);
        p
    }

    #[test]
    fn reads_pieces_ids_and_normalizer() {
        let mut m = Vec::new();
        bytes_field(1, &piece("<unk>", 0.0, 2), &mut m);
        bytes_field(1, &piece("▁the", -3.5, 1), &mut m);
        bytes_field(1, &piece("<0x0A>", 0.0, 6), &mut m);
        let mut trainer = Vec::new();
        // An unknown fixed64 field first: skipped.
        varint(7 << 3 | 1, &mut trainer);
        trainer.extend_from_slice(&[0; 8]);
        varint(40 << 3, &mut trainer);
        varint(0, &mut trainer);
        varint(43 << 3, &mut trainer);
        varint((-1i64) as u64, &mut trainer);
        varint(41 << 3, &mut trainer);
        varint(1, &mut trainer);
        bytes_field(2, &trainer, &mut m);
        let mut norm = Vec::new();
        varint(3 << 3, &mut norm);
        varint(0, &mut norm);
        bytes_field(3, &norm, &mut m);
        let sp = SpModel::parse(&m).unwrap();
        assert_eq!(sp.pieces.len(), 3);
        assert_eq!(sp.pieces[1].piece, "▁the");
        assert_eq!(sp.pieces[1].score, -3.5);
        assert_eq!(sp.pieces[2].ty, piece_type::BYTE);
        assert_eq!((sp.unk_id, sp.bos_id, sp.pad_id), (Some(0), Some(1), None));
        assert!(!sp.add_dummy_prefix);
    }

    #[test]
    fn truncated_input_is_an_error() {
        let mut m = Vec::new();
        bytes_field(1, &piece("abc", 0.0, 1), &mut m);
        m.truncate(m.len() - 3);
        assert!(SpModel::parse(&m).is_err());
        assert!(SpModel::parse(&[]).is_err());
    }
}
