//! The HTTP/1 engine: one task per client connection parses the client's requests, writes them
//! to a pooled connection to the instance and copies the response back, both hops driven by
//! the same future, like one nginx event handler.
//!
//! ```text
//! client ──read──▶ [rd] ─httparse─▶ head ─▶ route, pick ─▶ write head (+ buffered body) ──▶ instance
//!    ▲                                                       stream the rest of the body ──▶
//!    └──── write head (+ buffered body) ◀─ rewrite ◀─httparse─ [up.buf] ◀──read───────────┘
//!          stream the rest of the body ◀────────────────────────────────
//! ```
//!
//! Why not hyper on both sides (as the router first did): a hyper server connection, a hyper
//! client connection and the proxy's service are three state machines and two tasks, with
//! channels between them and a wake-up per hand-over; here one future owns both sockets and a
//! request costs its syscalls, two parses and two header rewrites. HTTP/2 clients (h2c prior
//! knowledge, or ALPN `h2` over TLS) still go through hyper ([`crate::h2`]).
//!
//! | module | owns |
//! |---|---|
//! | `connection` | the serve loop and one exchange: admit → route → forward → relay |
//! | `forward` | the request's head for instances, the attempts, pooled or new connections |
//! | `respond` | reading the response, its head for the client, relaying its body |
//! | `head` | parsing request and response heads, and the framing rules (RFC 9112 §6) |
//! | `fields` | a head's fields as parsed (no header map), writing fields and heads |
//! | `body` | copying a length-framed, chunked or close-delimited body |
//! | `chunked` | the chunked decoder and encoder |
//! | `timer` | reads bounded by deadlines on one lazily re-armed timer per connection |
//! | `upstream` | connections to instances and their idle pool |
//!
//! The header policy (what is forwarded, stripped and set) is not the engine's own: it is
//! [`crate::headers`], shared with the HTTP/2 path; the engine applies it to raw fields.
//! Routing, instance choice, retries and the access log are [`crate::proxy`]'s, shared too.
//!
//! What the engine enforces (the rules are listed in `docs/router.md`):
//! - request framing: `Content-Length` together with `Transfer-Encoding` is 400, as are differing
//!   `Content-Length`s, a transfer coding other than a single `chunked`, several `Host` headers,
//!   a malformed head and a control character in a header value; a head over the limit is 431;
//! - chunked bodies are decoded and re-encoded (`chunked`), never passed through raw;
//! - a request is retried on another instance only when its connection could not be opened (no
//!   byte written); a pooled connection that turns out to be closed before the first byte is
//!   written is replaced by a new connection to the same instance;
//! - an instance's malformed response is 502 for that request, and its connection is dropped;
//! - a client connection is closed after any response whose request body was not read to its
//!   end, so no byte of a body is ever parsed as a request.

mod body;
mod chunked;
mod connection;
mod fields;
mod forward;
mod head;
mod respond;
mod timer;
mod upstream;

pub(crate) use connection::{serve, Ended};
pub(crate) use upstream::Pool;

/// Most headers in a request or response head.
pub(super) const MAX_HEADERS: usize = 100;
/// Bytes asked of the kernel per read.
pub(super) const READ_SIZE: usize = 16 * 1024;
/// Largest response head accepted from an instance.
pub(super) const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the engine writes for a head, for tests that hold it against the HTTP/2 path.
#[cfg(test)]
pub(crate) mod probe {
    use bytes::BytesMut;
    use http::HeaderValue;

    use super::fields::{
        put_field, put_request_fields, put_response_fields, put_router_response_fields,
    };
    use super::head::{parse_request, parse_response};
    use crate::headers::{instance_fields, Forwarded};

    /// The `(lowercase name, value)` fields an instance gets for the request head `raw`, sent
    /// to instance `index`/`id`.
    pub(crate) fn request_fields(
        raw: &str,
        fwd: &Forwarded<'_>,
        index: u32,
        id: &HeaderValue,
    ) -> Vec<(String, String)> {
        let mut rd = BytesMut::from(raw.as_bytes());
        let Ok(Some(head)) = parse_request(&mut rd, 64 * 1024) else {
            panic!("not a request head: {raw:?}");
        };
        let mut out = BytesMut::new();
        put_request_fields(&mut out, &head.fields, fwd, false);
        instance_fields(index, id, |name, value| {
            put_field(&mut out, name.as_bytes(), value)
        });
        pairs(&out)
    }

    /// The `(lowercase name, value)` fields a client gets for the response head `raw` from
    /// instance `instance_id`, framing aside.
    pub(crate) fn response_fields(
        raw: &str,
        switching: bool,
        request_id: &HeaderValue,
        instance_id: &str,
    ) -> Vec<(String, String)> {
        let mut buf = BytesMut::from(raw.as_bytes());
        let Ok(Some(head)) = parse_response(&mut buf) else {
            panic!("not a response head: {raw:?}");
        };
        let mut out = BytesMut::new();
        put_response_fields(&mut out, &head, switching);
        put_router_response_fields(&mut out, &head, request_id, instance_id);
        pairs(&out)
    }

    fn pairs(out: &[u8]) -> Vec<(String, String)> {
        String::from_utf8_lossy(out)
            .split("\r\n")
            .filter_map(|line| line.split_once(": "))
            .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
            .collect()
    }
}
