//! Metadata values: `Value` borrows from the file (strings and array bytes point into the
//! map), `MetaValue` owns its data (for the writer, or to keep a value past the file).

use std::fmt;

/// The 13 GGUF metadata value types, by on-disk id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    pub fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// Bytes of a fixed-size value; `None` for strings and arrays.
    pub fn fixed_size(self) -> Option<usize> {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }

    /// The fewest bytes one value of this type can take: what bounds an array's length.
    pub fn min_size(self) -> usize {
        match self {
            ValueType::String => 8,    // u64 length
            ValueType::Array => 4 + 8, // element type + count
            t => t.fixed_size().unwrap_or(1),
        }
    }

    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A metadata value borrowed from a GGUF file.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(&'a str),
    Array(ArrayRef<'a>),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// An array inside the file: element type, count, and the raw bytes of its elements. The
/// reader validated these bytes at open, so decoding them cannot fail.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ArrayRef<'a> {
    pub(crate) elem: ValueType,
    pub(crate) len: usize,
    pub(crate) bytes: &'a [u8],
}

fn le<const N: usize>(b: &[u8]) -> [u8; N] {
    // Callers pass slices cut to exactly N bytes from validated data.
    let mut out = [0u8; N];
    out.copy_from_slice(&b[..N]);
    out
}

/// Decodes one value of type `ty` at the start of `b` (validated data), returning it and the
/// number of bytes it took.
pub(crate) fn decode(ty: ValueType, b: &[u8]) -> (Value<'_>, usize) {
    use ValueType as T;
    match ty {
        T::U8 => (Value::U8(b[0]), 1),
        T::I8 => (Value::I8(b[0] as i8), 1),
        T::Bool => (Value::Bool(b[0] != 0), 1),
        T::U16 => (Value::U16(u16::from_le_bytes(le(b))), 2),
        T::I16 => (Value::I16(i16::from_le_bytes(le(b))), 2),
        T::U32 => (Value::U32(u32::from_le_bytes(le(b))), 4),
        T::I32 => (Value::I32(i32::from_le_bytes(le(b))), 4),
        T::F32 => (Value::F32(f32::from_le_bytes(le(b))), 4),
        T::U64 => (Value::U64(u64::from_le_bytes(le(b))), 8),
        T::I64 => (Value::I64(i64::from_le_bytes(le(b))), 8),
        T::F64 => (Value::F64(f64::from_le_bytes(le(b))), 8),
        T::String => {
            let n = u64::from_le_bytes(le(b)) as usize;
            // Validated as UTF-8 at open; the fallback is unreachable for a parsed file.
            let s = std::str::from_utf8(&b[8..8 + n]).unwrap_or("");
            (Value::String(s), 8 + n)
        }
        T::Array => {
            let elem = ValueType::from_id(u32::from_le_bytes(le(b))).unwrap_or(T::U8);
            let len = u64::from_le_bytes(le(&b[4..])) as usize;
            let size = encoded_array_size(elem, len, &b[12..]);
            let arr = ArrayRef {
                elem,
                len,
                bytes: &b[12..12 + size],
            };
            (Value::Array(arr), 12 + size)
        }
    }
}

/// Bytes taken by `len` elements of `elem` at the start of `b` (validated data).
fn encoded_array_size(elem: ValueType, len: usize, b: &[u8]) -> usize {
    match elem.fixed_size() {
        Some(s) => s * len,
        None => {
            let mut pos = 0;
            for _ in 0..len {
                pos += decode(elem, &b[pos..]).1;
            }
            pos
        }
    }
}

impl<'a> ArrayRef<'a> {
    pub fn elem_type(&self) -> ValueType {
        self.elem
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The elements in order.
    pub fn iter(&self) -> ArrayIter<'a> {
        ArrayIter {
            elem: self.elem,
            left: self.len,
            bytes: self.bytes,
        }
    }

    /// The elements as strings, if this is an array of strings.
    pub fn strings(&self) -> Option<impl Iterator<Item = &'a str> + 'a> {
        (self.elem == ValueType::String).then(|| {
            self.iter().map(|v| match v {
                Value::String(s) => s,
                _ => "",
            })
        })
    }

    /// Numeric elements converted to f32 (any integer or float type), or `None`.
    pub fn to_f32_vec(&self) -> Option<Vec<f32>> {
        self.iter().map(|v| v.to_f64().map(|x| x as f32)).collect()
    }

    /// Integer elements converted to i64, or `None` if any is not an integer (or a u64 > i64::MAX).
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        self.iter().map(|v| v.to_i64()).collect()
    }
}

pub struct ArrayIter<'a> {
    elem: ValueType,
    left: usize,
    bytes: &'a [u8],
}

impl<'a> Iterator for ArrayIter<'a> {
    type Item = Value<'a>;

    fn next(&mut self) -> Option<Value<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let (v, n) = decode(self.elem, self.bytes);
        self.bytes = &self.bytes[n..];
        Some(v)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for ArrayIter<'_> {}

impl<'a> Value<'a> {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// Any integer type as i64 (None for floats, strings, arrays, and u64 past i64::MAX).
    pub fn to_i64(&self) -> Option<i64> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => i64::try_from(v).ok()?,
            Value::I64(v) => v,
            _ => return None,
        })
    }

    /// Any number as f64.
    pub fn to_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.to_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<ArrayRef<'a>> {
        match *self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// A short description for messages: "u32", "array of 49152 string".
    pub fn describe(&self) -> String {
        match self {
            Value::Array(a) => format!("array of {} {}", a.len(), a.elem_type()),
            v => v.value_type().name().to_string(),
        }
    }

    /// Copies the value out of the file.
    pub fn to_owned_value(&self) -> MetaValue {
        match *self {
            Value::U8(v) => MetaValue::U8(v),
            Value::I8(v) => MetaValue::I8(v),
            Value::U16(v) => MetaValue::U16(v),
            Value::I16(v) => MetaValue::I16(v),
            Value::U32(v) => MetaValue::U32(v),
            Value::I32(v) => MetaValue::I32(v),
            Value::F32(v) => MetaValue::F32(v),
            Value::Bool(v) => MetaValue::Bool(v),
            Value::String(s) => MetaValue::String(s.to_string()),
            Value::Array(a) => MetaValue::Array(MetaArray {
                elem: a.elem_type(),
                items: a.iter().map(|v| v.to_owned_value()).collect(),
            }),
            Value::U64(v) => MetaValue::U64(v),
            Value::I64(v) => MetaValue::I64(v),
            Value::F64(v) => MetaValue::F64(v),
        }
    }
}

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::U8(v) => write!(f, "{v}"),
            Value::I8(v) => write!(f, "{v}"),
            Value::U16(v) => write!(f, "{v}"),
            Value::I16(v) => write!(f, "{v}"),
            Value::U32(v) => write!(f, "{v}"),
            Value::I32(v) => write!(f, "{v}"),
            Value::F32(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::String(s) => write!(f, "{s:?}"),
            Value::U64(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::Array(a) => {
                // Tokenizer arrays hold 10⁵ entries: show the first few and the count.
                const SHOW: usize = 6;
                write!(f, "[")?;
                for (i, v) in a.iter().take(SHOW).enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{v}")?;
                }
                if a.len() > SHOW {
                    write!(f, ", … ({} {} in all)", a.len(), a.elem_type())?;
                }
                write!(f, "]")
            }
        }
    }
}

/// An owned metadata value, for writing.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(MetaArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// An owned array: its element type is explicit so that an empty array keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct MetaArray {
    pub elem: ValueType,
    pub items: Vec<MetaValue>,
}

impl MetaArray {
    /// An array whose items must all be of type `elem` (checked by the writer).
    pub fn new(elem: ValueType, items: Vec<MetaValue>) -> Self {
        MetaArray { elem, items }
    }

    pub fn strings<S: Into<String>>(items: impl IntoIterator<Item = S>) -> Self {
        Self::new(
            ValueType::String,
            items
                .into_iter()
                .map(|s| MetaValue::String(s.into()))
                .collect(),
        )
    }
}

impl MetaValue {
    pub fn value_type(&self) -> ValueType {
        match self {
            MetaValue::U8(_) => ValueType::U8,
            MetaValue::I8(_) => ValueType::I8,
            MetaValue::U16(_) => ValueType::U16,
            MetaValue::I16(_) => ValueType::I16,
            MetaValue::U32(_) => ValueType::U32,
            MetaValue::I32(_) => ValueType::I32,
            MetaValue::F32(_) => ValueType::F32,
            MetaValue::Bool(_) => ValueType::Bool,
            MetaValue::String(_) => ValueType::String,
            MetaValue::Array(_) => ValueType::Array,
            MetaValue::U64(_) => ValueType::U64,
            MetaValue::I64(_) => ValueType::I64,
            MetaValue::F64(_) => ValueType::F64,
        }
    }
}

impl From<&str> for MetaValue {
    fn from(s: &str) -> Self {
        MetaValue::String(s.to_string())
    }
}

impl From<String> for MetaValue {
    fn from(s: String) -> Self {
        MetaValue::String(s)
    }
}

impl From<u32> for MetaValue {
    fn from(v: u32) -> Self {
        MetaValue::U32(v)
    }
}

impl From<f32> for MetaValue {
    fn from(v: f32) -> Self {
        MetaValue::F32(v)
    }
}

impl From<bool> for MetaValue {
    fn from(v: bool) -> Self {
        MetaValue::Bool(v)
    }
}
