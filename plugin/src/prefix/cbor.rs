//! The subset of canonical CBOR (RFC 8949 §4.2.1) that vLLM's block hashes use:
//! unsigned integers, byte strings, text strings, arrays and null. Canonical means
//! the shortest head for every length and integer, which is what `cbor2.dumps(...,
//! canonical=True)` writes for these types.

/// A CBOR value borrowed from the caller.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    /// Major type 0.
    Uint(u64),
    /// Major type 2.
    Bytes(&'a [u8]),
    /// Major type 3.
    Text(&'a str),
    /// Major type 4.
    Array(&'a [Value<'a>]),
    /// Simple value 22.
    Null,
}

impl Value<'_> {
    /// Appends the canonical encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::Uint(v) => head(0, *v, out),
            Value::Bytes(b) => {
                head(2, b.len() as u64, out);
                out.extend_from_slice(b);
            }
            Value::Text(s) => {
                head(3, s.len() as u64, out);
                out.extend_from_slice(s.as_bytes());
            }
            Value::Array(items) => {
                head(4, items.len() as u64, out);
                for item in *items {
                    item.encode(out);
                }
            }
            Value::Null => out.push(0xf6),
        }
    }
}

fn head(major: u8, v: u64, out: &mut Vec<u8>) {
    let m = major << 5;
    if v < 24 {
        out.push(m | v as u8);
    } else if v <= u64::from(u8::MAX) {
        out.extend_from_slice(&[m | 24, v as u8]);
    } else if v <= u64::from(u16::MAX) {
        out.push(m | 25);
        out.extend_from_slice(&(v as u16).to_be_bytes());
    } else if v <= u64::from(u32::MAX) {
        out.push(m | 26);
        out.extend_from_slice(&(v as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors from RFC 8949 Appendix A.
    #[test]
    fn rfc_vectors() {
        let enc = |v: Value| {
            let mut o = Vec::new();
            v.encode(&mut o);
            o
        };
        assert_eq!(enc(Value::Uint(0)), [0x00]);
        assert_eq!(enc(Value::Uint(23)), [0x17]);
        assert_eq!(enc(Value::Uint(24)), [0x18, 0x18]);
        assert_eq!(enc(Value::Uint(1000)), [0x19, 0x03, 0xe8]);
        assert_eq!(enc(Value::Uint(1_000_000)), [0x1a, 0x00, 0x0f, 0x42, 0x40]);
        assert_eq!(
            enc(Value::Uint(1_000_000_000_000)),
            [0x1b, 0, 0, 0, 0xe8, 0xd4, 0xa5, 0x10, 0]
        );
        assert_eq!(enc(Value::Text("IETF")), [0x64, 0x49, 0x45, 0x54, 0x46]);
        assert_eq!(enc(Value::Bytes(&[1, 2, 3, 4])), [0x44, 1, 2, 3, 4]);
        assert_eq!(enc(Value::Null), [0xf6]);
        let inner = [Value::Uint(2), Value::Uint(3)];
        let outer = [Value::Uint(1), Value::Array(&inner)];
        assert_eq!(enc(Value::Array(&outer)), [0x82, 0x01, 0x82, 0x02, 0x03]);
    }
}
