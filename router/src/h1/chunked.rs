//! `Transfer-Encoding: chunked` (RFC 9112 §7.1), decoded incrementally from a read buffer.
//!
//! The HTTP/1 engine never forwards a chunked body byte for byte: it decodes the client's (or
//! the instance's) framing here and writes its own, so a framing that two parsers could read
//! differently never crosses the router. The decoder is strict where leniency is how request
//! smuggling starts: chunk-size lines and the CRLF after each chunk's data must end in CRLF, a
//! size must be hex digits, and lines and trailers are bounded.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Longest chunk-size line (size plus extensions) accepted.
const MAX_LINE: usize = 4096;
/// Most trailer bytes accepted after the last chunk (they are read and dropped).
const MAX_TRAILERS: usize = 16 * 1024;

/// What the decoder found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// Body bytes (taken out of the buffer).
    Data(Bytes),
    /// The buffer holds no complete next piece: read more and call again.
    NeedMore,
    /// The last chunk and the trailers were read; the buffer now starts after the body.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// Incremental decoder of one chunked body.
#[derive(Debug)]
pub(crate) struct Decoder {
    state: State,
    trailer_bytes: usize,
}

impl Decoder {
    pub(crate) fn new() -> Self {
        Decoder {
            state: State::Size,
            trailer_bytes: 0,
        }
    }

    /// The next piece of the body from `buf`, consuming what it decodes.
    pub(crate) fn next(&mut self, buf: &mut BytesMut) -> Result<Chunk, &'static str> {
        loop {
            match self.state {
                State::Size => {
                    let Some(line) = take_line(buf, MAX_LINE, "chunk size line too long")? else {
                        return Ok(Chunk::NeedMore);
                    };
                    let size = parse_size(&line)?;
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Chunk::NeedMore);
                    }
                    let n = left.min(buf.len() as u64) as usize;
                    let data = buf.split_to(n).freeze();
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                    return Ok(Chunk::Data(data));
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Chunk::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err("chunk data not followed by CRLF");
                    }
                    buf.advance(2);
                    self.state = State::Size;
                }
                State::Trailers => {
                    let Some(line) = take_line(buf, MAX_TRAILERS, "chunked trailers too long")?
                    else {
                        return Ok(Chunk::NeedMore);
                    };
                    if line.is_empty() {
                        self.state = State::Done;
                        return Ok(Chunk::Done);
                    }
                    self.trailer_bytes += line.len() + 2;
                    if self.trailer_bytes > MAX_TRAILERS {
                        return Err("chunked trailers too long");
                    }
                }
                State::Done => return Ok(Chunk::Done),
            }
        }
    }
}

/// Takes one CRLF-terminated line off the front of `buf` (without the CRLF); `None` when the
/// buffer holds no complete line yet.
fn take_line(
    buf: &mut BytesMut,
    max: usize,
    too_long: &'static str,
) -> Result<Option<BytesMut>, &'static str> {
    match memchr::memchr(b'\n', buf) {
        Some(i) => {
            if i == 0 || buf[i - 1] != b'\r' {
                return Err("chunked line not terminated by CRLF");
            }
            if i > max {
                return Err(too_long);
            }
            let mut line = buf.split_to(i + 1);
            line.truncate(i - 1);
            Ok(Some(line))
        }
        None if buf.len() > max => Err(too_long),
        None => Ok(None),
    }
}

/// The chunk size of a chunk-size line: hex digits, then optional whitespace and extensions.
fn parse_size(line: &[u8]) -> Result<u64, &'static str> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err("chunk size is not hexadecimal");
    }
    if digits > 15 {
        return Err("chunk size too large");
    }
    let rest = &line[digits..];
    let rest_ok = match rest.iter().position(|&b| b != b' ' && b != b'\t') {
        None => true,
        Some(i) => rest[i] == b';',
    };
    if !rest_ok {
        return Err("chunk size is not hexadecimal");
    }
    let mut size = 0u64;
    for &b in &line[..digits] {
        size = size * 16 + (b as char).to_digit(16).unwrap_or(0) as u64;
    }
    Ok(size)
}

/// Appends `data` as one chunk.
pub(crate) fn encode_chunk(out: &mut BytesMut, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    out.reserve(data.len() + 20);
    let mut hex = [0u8; 16];
    let mut n = data.len();
    let mut i = hex.len();
    while n > 0 || i == hex.len() {
        i -= 1;
        hex[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
    }
    out.put_slice(&hex[i..]);
    out.put_slice(b"\r\n");
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

/// The last chunk, with no trailers.
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], step: usize) -> Result<(Vec<u8>, Vec<u8>), &'static str> {
        let mut d = Decoder::new();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut fed = 0;
        loop {
            match d.next(&mut buf)? {
                Chunk::Data(b) => out.extend_from_slice(&b),
                Chunk::Done => return Ok((out, buf.to_vec())),
                Chunk::NeedMore => {
                    if fed >= input.len() {
                        return Err("eof");
                    }
                    let end = (fed + step).min(input.len());
                    buf.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn decodes_in_any_split_and_leaves_what_follows() {
        let input = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-T: 1\r\n\r\nGET /next";
        for step in 1..input.len() {
            let (body, rest) = decode_all(input, step).unwrap();
            assert_eq!(body, b"hello, world", "step {step}");
            // What follows the body stays for the next request (only what was fed).
            assert!(b"GET /next".starts_with(&rest), "step {step}: {rest:?}");
        }
    }

    #[test]
    fn refuses_lenient_framings() {
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"zz\r\nhello\r\n0\r\n\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"\r\n",
            b"fffffffffffffffff\r\n",
        ] {
            assert!(
                decode_all(bad, 64).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn bounds_lines_and_trailers() {
        let mut long = b"5;".to_vec();
        long.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        assert_eq!(decode_all(&long, 1 << 20), Err("chunk size line too long"));
        let mut trailers = b"0\r\n".to_vec();
        for _ in 0..2000 {
            trailers.extend_from_slice(b"X-Trailer: 0123456789\r\n");
        }
        trailers.extend_from_slice(b"\r\n");
        assert_eq!(
            decode_all(&trailers, 1 << 20),
            Err("chunked trailers too long")
        );
    }

    #[test]
    fn encodes_chunks() {
        let mut out = BytesMut::new();
        encode_chunk(&mut out, b"hello");
        encode_chunk(&mut out, &[b'a'; 300]);
        encode_chunk(&mut out, b"");
        out.extend_from_slice(LAST_CHUNK);
        let (body, _) = decode_all(&out, 7).unwrap();
        assert_eq!(&body[..5], b"hello");
        assert_eq!(body.len(), 305);
        assert!(out.starts_with(b"5\r\nhello\r\n12c\r\n"));
    }
}
