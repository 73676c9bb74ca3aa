//! The store's protocol (RESP2), as much as the tier speaks: requests built in
//! one buffer ([`command`]; [`set_nx`] builds `SET key value NX EX ttl` around
//! the value as it is encoded, so the 1.4 MiB value is never copied again),
//! replies read with bounds ([`read`], [`read_value`]), and the cluster's key
//! slots ([`slot`]).

use std::io::{self, BufRead, Read};

/// Slots of a cluster.
pub const SLOTS: usize = 16384;
/// Largest reply other than a value (slot maps, errors, counts): a bound against
/// a hostile or confused peer.
const MAX_REPLY: usize = 1 << 20;
/// Largest value read (a block is a few MiB; far more is not one of ours, and
/// is refused before it is read).
pub const MAX_VALUE: usize = 1 << 30;

/// A reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Resp {
    /// `+...`
    Simple(String),
    /// `-...`
    Error(String),
    /// `:n`
    Int(i64),
    /// `$n ...` (`None`: the null bulk string)
    Bulk(Option<Vec<u8>>),
    /// `*n ...` (`None`: the null array)
    Array(Option<Vec<Resp>>),
}

/// A protocol error (the connection is out of step and must be closed).
pub fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("store protocol: {what}"))
}

fn line(r: &mut impl BufRead) -> io::Result<String> {
    let mut l = Vec::new();
    r.by_ref().take(MAX_REPLY as u64).read_until(b'\n', &mut l)?;
    if l.len() < 2 || !l.ends_with(b"\r\n") {
        return Err(if l.is_empty() {
            io::ErrorKind::UnexpectedEof.into()
        } else {
            bad("a line without CRLF")
        });
    }
    l.truncate(l.len() - 2);
    String::from_utf8(l).map_err(|_| bad("a line that is not UTF-8"))
}

fn len_of(s: &str, max: usize) -> io::Result<Option<usize>> {
    match s.parse::<i64>() {
        Ok(-1) => Ok(None),
        Ok(n) if (0..=max as i64).contains(&n) => Ok(Some(n as usize)),
        _ => Err(bad("a length out of bounds")),
    }
}

/// A reply that may be a value: a bulk string is read into the caller's buffer
/// (reused across replies: no allocation per value).
#[derive(Debug, PartialEq)]
pub enum Reply {
    /// A value of this many bytes, at the start of the buffer.
    Value(usize),
    /// No value (`$-1`).
    Nil,
    /// Anything else (errors, integers, statuses).
    Other(Resp),
}

/// Reads one reply; a bulk string goes into `buf` (grown as needed, never shrunk).
pub fn read_value(r: &mut impl BufRead, buf: &mut Vec<u8>) -> io::Result<Reply> {
    let head = r.fill_buf()?;
    if head.first() != Some(&b'$') {
        return read(r, 0).map(|v| match v {
            Resp::Bulk(None) => Reply::Nil,
            other => Reply::Other(other),
        });
    }
    let l = line(r)?;
    let Some(n) = len_of(&l[1..], MAX_VALUE)? else {
        return Ok(Reply::Nil);
    };
    if buf.len() < n + 2 {
        buf.resize(n + 2, 0);
    }
    r.read_exact(&mut buf[..n + 2])?;
    if &buf[n..n + 2] != b"\r\n" {
        return Err(bad("a value without CRLF"));
    }
    Ok(Reply::Value(n))
}

/// Reads one reply (nested at most 4 deep: a slot map is 3).
pub fn read(r: &mut impl BufRead, depth: usize) -> io::Result<Resp> {
    if depth > 4 {
        return Err(bad("a reply nested too deep"));
    }
    let l = line(r)?;
    let (kind, rest) = l.split_at(l.len().min(1));
    match kind {
        "+" => Ok(Resp::Simple(rest.into())),
        "-" => Ok(Resp::Error(rest.into())),
        ":" => rest.parse().map(Resp::Int).map_err(|_| bad("an integer")),
        "$" => match len_of(rest, MAX_REPLY)? {
            None => Ok(Resp::Bulk(None)),
            Some(n) => {
                let mut b = vec![0u8; n + 2];
                r.read_exact(&mut b)?;
                if !b.ends_with(b"\r\n") {
                    return Err(bad("a bulk string without CRLF"));
                }
                b.truncate(n);
                Ok(Resp::Bulk(Some(b)))
            }
        },
        "*" => match len_of(rest, MAX_REPLY)? {
            None => Ok(Resp::Array(None)),
            Some(n) => (0..n)
                .map(|_| read(r, depth + 1))
                .collect::<io::Result<_>>()
                .map(|v| Resp::Array(Some(v))),
        },
        "_" => Ok(Resp::Bulk(None)),
        _ => Err(bad("an unknown reply type")),
    }
}

/// A request of `args`.
pub fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The request `SET key <value> NX EX ttl`, the value's `value_len` bytes written
/// in place by `fill` (no copy of the value after it).
pub fn set_nx(key: &str, value_len: usize, ttl_s: u64, fill: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let head = format!("*6\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${value_len}\r\n", key.len());
    let ttl = ttl_s.to_string();
    let tail = format!("\r\n$2\r\nNX\r\n$2\r\nEX\r\n${}\r\n{ttl}\r\n", ttl.len());
    let mut out = Vec::with_capacity(head.len() + value_len + tail.len());
    out.extend_from_slice(head.as_bytes());
    out.resize(head.len() + value_len, 0);
    fill(&mut out[head.len()..]);
    out.extend_from_slice(tail.as_bytes());
    out
}

/// The cluster slot of `key` (CRC16/XMODEM of the key, or of its `{hash tag}`).
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&c| c == b'{')
        .and_then(|s| key[s + 1..].iter().position(|&c| c == b'}').map(|n| (s + 1, n)))
        .filter(|&(_, n)| n > 0)
        .map(|(s, n)| &key[s..s + n]);
    let mut crc: u16 = 0;
    for &b in tagged.unwrap_or(key) {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % SLOTS as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_the_cluster_specification() {
        // The specification's CRC16 check value and its hash-tag examples.
        assert_eq!(slot(b"123456789"), 0x31c3); // 12739 < 16384
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        // An empty tag: the whole key.
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"));
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(slot(b"foo{bar}{zap}"), slot(b"bar"));
    }

    #[test]
    fn a_set_request_is_the_command_with_the_value_in_place() {
        let r = set_nx("k", 3, 60, |v| v.copy_from_slice(b"abc"));
        assert_eq!(r, command(&[b"SET", b"k", b"abc", b"NX", b"EX", b"60"]));
    }

    #[test]
    fn replies_parse_and_bad_ones_are_refused() {
        let mut r = io::Cursor::new(&b"*2\r\n$3\r\nabc\r\n:-5\r\n+OK\r\n$-1\r\n-ERR x\r\n"[..]);
        assert_eq!(
            read(&mut r, 0).unwrap(),
            Resp::Array(Some(vec![Resp::Bulk(Some(b"abc".to_vec())), Resp::Int(-5)]))
        );
        assert_eq!(read(&mut r, 0).unwrap(), Resp::Simple("OK".into()));
        assert_eq!(read(&mut r, 0).unwrap(), Resp::Bulk(None));
        assert_eq!(read(&mut r, 0).unwrap(), Resp::Error("ERR x".into()));
        let mut buf = Vec::new();
        let mut r = io::Cursor::new(&b"$3\r\nabc\r\n$-1\r\n:1\r\n$2\r\nabc\r\n"[..]);
        assert_eq!(read_value(&mut r, &mut buf).unwrap(), Reply::Value(3));
        assert_eq!(&buf[..3], b"abc");
        assert_eq!(read_value(&mut r, &mut buf).unwrap(), Reply::Nil);
        assert_eq!(read_value(&mut r, &mut buf).unwrap(), Reply::Other(Resp::Int(1)));
        assert!(read_value(&mut r, &mut buf).is_err());
        for junk in [
            &b"$99999999999\r\n"[..],
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
            b"?x\r\n",
            b"+OK\n",
            b"$3\r\nabcd\r\n",
        ] {
            assert!(read(&mut io::Cursor::new(junk), 0).is_err(), "{junk:?}");
        }
    }
}
