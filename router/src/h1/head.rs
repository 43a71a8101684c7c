//! Request and response heads: parsing them (httparse) and deciding how their bodies are
//! framed (RFC 9112 §6.3).
//!
//! The framing rules refuse what two parsers could read differently, since that is how request
//! smuggling starts: a request with both `Content-Length` and `Transfer-Encoding`, differing
//! lengths, or a transfer coding other than a single `chunked` has no framing here, only a 400.
//! A parsed head is taken out of the read buffer, so what follows it is the body.

use bytes::BytesMut;
use http::StatusCode;

use super::fields::Fields;
use super::{MAX_HEADERS, MAX_RESPONSE_HEAD};
use crate::headers::list_items;

/// How a message's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the instance closes the connection (responses only).
    Close,
}

pub(super) struct RequestHead {
    pub(super) method: http::Method,
    /// The target in origin form (`/path?query`).
    pub(super) path_and_query: String,
    /// Host from an absolute-form target, which wins over the Host header.
    pub(super) target_host: Option<String>,
    pub(super) http11: bool,
    pub(super) fields: Fields,
}

pub(super) enum HeadError {
    /// 431: the head is over the limit.
    TooLarge,
    /// 400, with the reason.
    Bad(String),
}

/// Parses a request head at the front of `rd`; on success the head is taken out of `rd`.
pub(super) fn parse_request(
    rd: &mut BytesMut,
    max: usize,
) -> Result<Option<RequestHead>, HeadError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let len = match req.parse(rd) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if rd.len() >= max {
                Err(HeadError::TooLarge)
            } else {
                Ok(None)
            }
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(e) => return Err(HeadError::Bad(format!("malformed request: {e}"))),
    };
    if len > max {
        return Err(HeadError::TooLarge);
    }
    let method = http::Method::from_bytes(req.method.unwrap_or("").as_bytes())
        .map_err(|_| HeadError::Bad("malformed request method".into()))?;
    let http11 = req.version == Some(1);
    let target = req.path.unwrap_or("/");
    let (path_and_query, target_host) = if target.starts_with('/') || target == "*" {
        (target.to_string(), None)
    } else {
        let uri: http::Uri = target
            .parse()
            .map_err(|_| HeadError::Bad("malformed request target".into()))?;
        let pq = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        (pq, uri.authority().map(|a| a.as_str().to_string()))
    };
    let mut fields = Fields::new(rd, req.headers);
    fields.head = rd.split_to(len).freeze();
    Ok(Some(RequestHead {
        method,
        path_and_query,
        target_host,
        http11,
        fields,
    }))
}

/// The framing of a request's body (RFC 9112 §6.3), refusing the ambiguous ones.
pub(super) fn request_framing(fields: &Fields, http11: bool) -> Result<Framing, String> {
    if fields.first(b"transfer-encoding").is_some() {
        if fields.first(b"content-length").is_some() {
            return Err("Content-Length together with Transfer-Encoding".into());
        }
        if !http11 {
            return Err("Transfer-Encoding in an HTTP/1.0 request".into());
        }
        let mut codings = list_items(fields.values(b"transfer-encoding"));
        let ok = matches!(codings.next(), Some(c) if c.eq_ignore_ascii_case(b"chunked"))
            && codings.next().is_none();
        if !ok {
            return Err("unsupported Transfer-Encoding (only a single chunked)".into());
        }
        return Ok(Framing::Chunked);
    }
    match parse_content_length(fields.values(b"content-length"))? {
        None | Some(0) => Ok(Framing::None),
        Some(n) => Ok(Framing::Length(n)),
    }
}

pub(super) fn parse_content_length<'a>(
    values: impl Iterator<Item = &'a [u8]>,
) -> Result<Option<u64>, String> {
    let mut found: Option<u64> = None;
    for v in values {
        for part in v.split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                return Err("malformed Content-Length".into());
            }
            let n: u64 = std::str::from_utf8(part)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or("malformed Content-Length")?;
            if found.is_some_and(|f| f != n) {
                return Err("differing Content-Length values".into());
            }
            found = Some(n);
        }
    }
    Ok(found)
}

/// A response head as the instance sent it; its fields are copied to the client one by one,
/// leaving out the hop-by-hop ones.
pub(super) struct ResponseHead {
    pub(super) status: StatusCode,
    pub(super) http11: bool,
    pub(super) reason: std::ops::Range<usize>,
    pub(super) fields: Fields,
}

impl ResponseHead {
    pub(super) fn values<'a>(&'a self, name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.fields.values(name)
    }

    pub(super) fn reason(&self) -> &[u8] {
        &self.fields.head[self.reason.clone()]
    }
}

/// Parses a response head at the front of `buf`; on success the head is taken out of `buf`.
pub(super) fn parse_response(buf: &mut BytesMut) -> Result<Option<ResponseHead>, String> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_RESPONSE_HEAD => {
            return Err("response head too large".into())
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("malformed response: {e}")),
    };
    let status = StatusCode::from_u16(resp.code.unwrap_or(0))
        .map_err(|_| "malformed response status".to_string())?;
    let http11 = resp.version == Some(1);
    let reason = resp.reason.map_or(0..0, |r| {
        let start = r.as_ptr() as usize - buf.as_ptr() as usize;
        start..start + r.len()
    });
    let mut fields = Fields::new(buf, resp.headers);
    fields.head = buf.split_to(len).freeze();
    Ok(Some(ResponseHead {
        status,
        http11,
        reason,
        fields,
    }))
}

/// The framing of a response's body (RFC 9112 §6.3).
pub(super) fn response_framing(head: &ResponseHead, head_request: bool) -> Result<Framing, String> {
    let s = head.status.as_u16();
    if head_request || (100..200).contains(&s) || s == 204 || s == 304 {
        return Ok(Framing::None);
    }
    if head.values(b"transfer-encoding").next().is_some() {
        return Ok(match list_items(head.values(b"transfer-encoding")).last() {
            Some(c) if c.eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
            _ => Framing::Close,
        });
    }
    match parse_content_length(head.values(b"content-length"))? {
        Some(0) => Ok(Framing::None),
        Some(n) => Ok(Framing::Length(n)),
        None => Ok(Framing::Close),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) fn head(raw: &str) -> Result<Option<RequestHead>, HeadError> {
        let mut b = BytesMut::from(raw.as_bytes());
        parse_request(&mut b, 64 * 1024)
    }

    fn framing(raw: &str) -> Result<Framing, String> {
        match head(raw) {
            Ok(Some(h)) => request_framing(&h.fields, h.http11),
            _ => Err("unparsed".into()),
        }
    }

    #[test]
    fn request_framing_refuses_ambiguity() {
        assert_eq!(
            framing("GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok(Framing::None)
        );
        assert_eq!(
            framing("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n"),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            framing("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n"),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            framing("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        for bad in [
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5x\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(framing(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn heads_are_parsed_or_refused() {
        let h =
            head("GET http://Example.com:8080/a?b HTTP/1.1\r\nHost: other\r\nX-A: 1\r\n\r\nrest")
                .ok()
                .flatten()
                .unwrap();
        assert_eq!(h.path_and_query, "/a?b");
        assert_eq!(h.target_host.as_deref(), Some("Example.com:8080"));
        assert_eq!(h.fields.first(b"x-a"), Some(&b"1"[..]));
        assert!(matches!(head("GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None)));
        assert!(matches!(
            head("GET / HTTP/1.1\r\nX: a\rb\r\n\r\n"),
            Err(HeadError::Bad(_))
        ));
        assert!(matches!(
            head("GET / HTTP/1.1\r\nX a\r\n\r\n"),
            Err(HeadError::Bad(_))
        ));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert!(matches!(
            head(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            Err(HeadError::TooLarge)
        ));
        let mut big = BytesMut::from(&b"GET / HTTP/1.1\r\nX: "[..]);
        big.extend_from_slice(&[b'a'; 2000]);
        assert!(matches!(
            parse_request(&mut big, 1024),
            Err(HeadError::TooLarge)
        ));
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let resp = |raw: &str| {
            let mut b = BytesMut::from(raw.as_bytes());
            parse_response(&mut b).unwrap().unwrap()
        };
        let r = resp("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n");
        assert_eq!(response_framing(&r, false), Ok(Framing::Length(3)));
        assert_eq!(response_framing(&r, true), Ok(Framing::None));
        let r = resp("HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(response_framing(&r, false), Ok(Framing::None));
        let r = resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(response_framing(&r, false), Ok(Framing::Chunked));
        let r = resp("HTTP/1.0 200 OK\r\n\r\n");
        assert_eq!(response_framing(&r, false), Ok(Framing::Close));
        let r = resp("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n");
        assert!(response_framing(&r, false).is_err());
        let mut b = BytesMut::from(&b"HTTP/1.1 abc\r\n\r\n"[..]);
        assert!(parse_response(&mut b).is_err());
    }
}
