//! The fields of a head as received, and writing heads.
//!
//! [`Fields`] keeps the head's bytes and where each name and value is, with no header map: the
//! fields the router keeps are copied straight to the other side. Which ones those are, and
//! what the router adds, is [`crate::headers`]'s policy; this module only applies it.

use std::time::SystemTime;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::HeaderValue;
use http::StatusCode;

use super::head::ResponseHead;
use crate::headers::{
    self, list_items, sticky_cookie, Forwarded, RequestField, Sent, X_VCAP_REQUEST_ID,
};

/// The fields of a head as received: its bytes, and where each name and value is. The router
/// reads them and copies the ones it keeps straight to the other side (no header map).
pub(super) struct Fields {
    pub(super) head: Bytes,
    pub(super) spans: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
}

impl Fields {
    /// Records the fields httparse found in `buf` (httparse checked that names are tokens and
    /// that values hold no CR, LF or other control character but tab).
    pub(super) fn new(buf: &[u8], parsed: &[httparse::Header<'_>]) -> Self {
        let base = buf.as_ptr() as usize;
        let span = |s: &[u8]| {
            let start = s.as_ptr() as usize - base;
            start..start + s.len()
        };
        Fields {
            head: Bytes::new(),
            spans: parsed
                .iter()
                .map(|h| (span(h.name.as_bytes()), span(h.value)))
                .collect(),
        }
    }

    #[inline]
    pub(super) fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.spans
            .iter()
            .map(|(n, v)| (&self.head[n.clone()], &self.head[v.clone()]))
    }

    /// Every value of the field `name` (lowercase).
    #[inline]
    pub(super) fn values<'a>(&'a self, name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    #[inline]
    pub(super) fn first(&self, name: &[u8]) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Whether a list-valued field (`Connection`) has `token`.
    #[inline]
    pub(super) fn has_token(&self, name: &[u8], token: &[u8]) -> bool {
        headers::has_token(self.values(name), token)
    }
}

/// Writes the request's fields for the instance in one pass, by the policy in
/// [`crate::headers`]: the client's fields that policy keeps, then the ones the router sets
/// (the per-instance ones come per attempt). Framing is the engine's own: `Content-Length` is
/// written again for a length-framed body (the parsed value), `Transfer-Encoding: chunked` for
/// a chunked one (`chunked`), whatever the client wrote.
pub(super) fn put_request_fields(
    out: &mut BytesMut,
    fields: &Fields,
    fwd: &Forwarded<'_>,
    chunked: bool,
) {
    let named: Vec<&[u8]> = list_items(fields.values(b"connection")).collect();
    let mut sent = Sent::default();
    let mut length: Option<&[u8]> = None;
    for (name, value) in fields.iter() {
        if name.eq_ignore_ascii_case(b"content-length") {
            length.get_or_insert(value);
            continue;
        }
        if named.iter().any(|h| name.eq_ignore_ascii_case(h)) {
            continue;
        }
        match headers::request_field(name, fwd.trusted) {
            RequestField::Drop => continue,
            RequestField::Settles(s) => sent.mark(s),
            RequestField::Keep => {}
            RequestField::Host if value.eq_ignore_ascii_case(fwd.host.as_bytes()) => {
                sent.mark(headers::Set::Host)
            }
            RequestField::Host => continue,
        }
        put_field(out, name, value);
    }
    if let Some(len) = length.filter(|_| !chunked) {
        // Checked by `request_framing`: every value is the same number.
        let first = len
            .split(|&b| b == b',')
            .next()
            .unwrap_or(b"0")
            .trim_ascii();
        put_field(out, b"content-length", first);
    }
    if chunked {
        put_field(out, b"transfer-encoding", b"chunked");
    }
    fwd.each(sent, |name, value| put_field(out, name.as_bytes(), value));
}

#[inline]
pub(super) fn put_field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// Writes the fields of `head` that reach the client by the policy in [`crate::headers`]
/// (`switching`: a 101, which keeps the hop-by-hop ones). The router's own fields follow.
///
/// A head with `Transfer-Encoding` loses its `Content-Length` too (RFC 9112 §6.3: the transfer
/// coding frames the body, and an intermediary removes the length before forwarding): the
/// client gets only the framing the router writes.
pub(super) fn put_response_fields(out: &mut BytesMut, head: &ResponseHead, switching: bool) {
    let named: Vec<&[u8]> = if switching {
        Vec::new()
    } else {
        list_items(head.values(b"connection")).collect()
    };
    let named_by_connection = |name: &[u8]| named.iter().any(|h| name.eq_ignore_ascii_case(h));
    let coded = head.values(b"transfer-encoding").next().is_some();
    for (name, value) in head.fields.iter() {
        if coded && name.eq_ignore_ascii_case(b"content-length") {
            continue;
        }
        if headers::response_field_passes(name, switching, named_by_connection) {
            put_field(out, name, value);
        }
    }
}

/// Writes the fields the router adds to a response it passes on: its request id, and the
/// sticky-session cookie when the app starts a session.
pub(super) fn put_router_response_fields(
    out: &mut BytesMut,
    head: &ResponseHead,
    request_id: &HeaderValue,
    instance_id: &str,
) {
    put_field(
        out,
        X_VCAP_REQUEST_ID.as_str().as_bytes(),
        request_id.as_bytes(),
    );
    if let Some(cookie) = sticky_cookie(head.values(b"set-cookie"), instance_id) {
        put_field(out, b"set-cookie", cookie.as_bytes());
    }
}

pub(super) fn put_status_line(out: &mut BytesMut, status: StatusCode, reason: &[u8]) {
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    let reason = if reason.is_empty() {
        status.canonical_reason().unwrap_or("").as_bytes()
    } else {
        reason
    };
    out.put_slice(reason);
    out.put_slice(b"\r\n");
}

thread_local! {
    static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
}

/// `Date: …` for responses the router makes, formatted once a second per thread.
fn put_date(out: &mut BytesMut) {
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs || d.1.is_empty() {
            *d = (secs, httpdate::fmt_http_date(now));
        }
        out.put_slice(b"date: ");
        out.put_slice(d.1.as_bytes());
        out.put_slice(b"\r\n");
    });
}

/// A response the router makes itself: status, cause header, request id, plain-text body.
pub(super) fn error_bytes(
    status: StatusCode,
    cause: &str,
    request_id: Option<&HeaderValue>,
    message: &str,
    close: bool,
) -> BytesMut {
    let mut out = BytesMut::with_capacity(256 + message.len());
    put_status_line(&mut out, status, b"");
    out.put_slice(b"content-type: text/plain; charset=utf-8\r\n");
    out.put_slice(pier_api::ROUTER_ERROR_HEADER.as_bytes());
    out.put_slice(b": ");
    out.put_slice(cause.as_bytes());
    out.put_slice(b"\r\n");
    if let Some(id) = request_id {
        out.put_slice(b"x-vcap-request-id: ");
        out.put_slice(id.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(format!("content-length: {}\r\n", message.len() + 1).as_bytes());
    if close {
        out.put_slice(b"connection: close\r\n");
    }
    put_date(&mut out);
    out.put_slice(b"\r\n");
    out.put_slice(message.as_bytes());
    out.put_u8(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h1::head::parse_response;
    use crate::h1::head::tests::head;

    #[test]
    fn response_fields_lose_hop_by_hop_ones() {
        let mut b = BytesMut::from(
            &b"HTTP/1.1 200 Fine\r\nConnection: keep-alive, X-Private\r\nKeep-Alive: timeout=5\r\n\
               X-Private: secret\r\nTransfer-Encoding: chunked\r\nX-Vcap-Request-Id: forged\r\n\
               Set-Cookie: JSESSIONID=abc; Path=/app\r\nX-Kept: yes\r\n\r\n"[..],
        );
        let head = parse_response(&mut b).unwrap().unwrap();
        assert_eq!(head.reason(), b"Fine");
        let mut out = BytesMut::new();
        put_response_fields(&mut out, &head, false);
        let s = String::from_utf8(out.to_vec()).unwrap();
        assert_eq!(
            s,
            "Set-Cookie: JSESSIONID=abc; Path=/app\r\nX-Kept: yes\r\n"
        );
        let cookie = sticky_cookie(head.values(b"set-cookie"), "inst-1").unwrap();
        assert_eq!(cookie, "__VCAP_ID__=inst-1; Path=/app");
        // A 101 keeps Connection and Upgrade for the client.
        let mut out = BytesMut::new();
        put_response_fields(&mut out, &head, true);
        assert!(String::from_utf8(out.to_vec())
            .unwrap()
            .starts_with("Connection: keep-alive"));
    }

    #[test]
    fn request_fields_for_the_instance() {
        let h = head(
            "POST /p HTTP/1.1\r\nHost: a.localhost\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\
             Expect: 100-continue\r\nX-Forwarded-For: 1.2.3.4\r\nX-CF-InstanceID: forged\r\n\
             Content-Length: 3, 3\r\nX-App: kept\r\nTraceparent: 00-t-s-01\r\n\r\n",
        )
        .ok()
        .flatten()
        .unwrap();
        let id = HeaderValue::from_static("rid");
        let guid = HeaderValue::from_static("guid");
        let mut out = BytesMut::new();
        put_request_fields(
            &mut out,
            &h.fields,
            &Forwarded {
                host: "a.localhost",
                trusted: false,
                xff: "1.2.3.4, 127.0.0.1",
                https: false,
                request_id: &id,
                app_guid: &guid,
                upgrade: None,
            },
            false,
        );
        let s = String::from_utf8(out.to_vec()).unwrap();
        for absent in ["X-Hop", "Connection", "Expect", "forged", "1.2.3.4\r\n"] {
            assert!(!s.contains(absent), "{absent} in {s}");
        }
        for present in [
            "Host: a.localhost\r\n",
            "X-App: kept\r\n",
            "Traceparent: 00-t-s-01\r\n",
            "content-length: 3\r\n",
            "x-forwarded-for: 1.2.3.4, 127.0.0.1\r\n",
            "x-forwarded-proto: http\r\n",
            "x-forwarded-host: a.localhost\r\n",
            "x-vcap-request-id: rid\r\n",
            "x-cf-applicationid: guid\r\n",
            "x-request-start: ",
        ] {
            assert!(s.contains(present), "{present} not in {s}");
        }
        assert!(
            !s.contains("traceparent: "),
            "the client's traceparent is kept: {s}"
        );
    }

    #[test]
    fn error_responses_name_their_cause() {
        let id = HeaderValue::from_static("rid");
        let out = error_bytes(
            StatusCode::NOT_FOUND,
            "unknown_route",
            Some(&id),
            "no",
            true,
        );
        let s = String::from_utf8(out.to_vec()).unwrap();
        assert!(s.starts_with("HTTP/1.1 404 Not Found\r\n"), "{s}");
        assert!(s.contains("x-pier-router-error: unknown_route\r\n"), "{s}");
        assert!(s.contains("x-vcap-request-id: rid\r\n"), "{s}");
        assert!(s.contains("content-length: 3\r\n"), "{s}");
        assert!(s.contains("connection: close\r\n"), "{s}");
        assert!(s.ends_with("\r\n\r\nno\n"), "{s}");
    }
}
