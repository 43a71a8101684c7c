//! The HTTP/2 path: a request from hyper's HTTP/2 server (h2c, or ALPN `h2` over TLS) goes to
//! an instance over hyper's HTTP/1 client ([`upstream`]), and the response comes back as a
//! body the client reads at its pace ([`body`]). HTTP/1 clients never come here: they are the
//! HTTP/1 engine's ([`crate::h1`]).
//!
//! ```text
//! handle: head ─▶ route ─▶ headers for instances ─▶ forward: attempt ─▶ pooled client ─▶ instance
//!                  │                                   ▲    │ connect failed, body untouched
//!                  ▼                                   └────┘ (proxy::Attempts)
//!         refusal (404, 503, 400)          respond: headers for the client, LoggedBody
//! ```
//!
//! What is shared with the HTTP/1 engine is not here: routing, instance choice, retries and the
//! access log are [`crate::proxy`]'s, the header policy is [`crate::headers`]'s (this module
//! applies it to hyper's header maps).
//!
//! Invariants:
//! - Bodies are never buffered: the client's body is handed to the instance's connection as a
//!   stream, and the instance's body back to the client the same way.
//! - A request is only retried when none of its bytes can have reached an instance: the pooled
//!   client reports a connect error *and* the request body was never polled. The body sits in a
//!   shared slot that the first poll empties, so a second attempt is impossible once it started.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::time::Instant as Deadline;

use crate::headers::{
    self, forwarded_for_from, request_id_from, sticky_cookie, sticky_instance_from, Forwarded,
    RequestField, Sent, X_VCAP_REQUEST_ID,
};
use crate::proxy::{error_response, Attempts, BoxError, Proxy, ProxyBody, Refusal, RequestLog};
use crate::table::Route;

mod body;
pub(crate) mod upstream;

use body::{BodySlot, LoggedBody};
use upstream::Lease;

/// Serves one request. Never fails: every error becomes a response.
pub(crate) async fn handle(
    proxy: Arc<Proxy>,
    mut req: Request<Incoming>,
    client_addr: SocketAddr,
    https: bool,
) -> Result<Response<ProxyBody>, Infallible> {
    let deadline = Deadline::now() + proxy.opts.max_request_time;
    let request_id = request_id(req.headers());
    let host = request_host(&req);
    let mut log = RequestLog::new(
        &proxy,
        req.method().as_str(),
        req.uri().path_and_query().map_or("/", |p| p.as_str()),
        (
            req.headers()
                .get(header::USER_AGENT)
                .map(HeaderValue::as_bytes),
            req.headers()
                .get(header::REFERER)
                .map(HeaderValue::as_bytes),
        ),
        host.as_deref(),
        client_addr,
        request_id.clone(),
    );
    let route = match proxy.route_for(host.as_deref(), req.uri().path()) {
        Ok(route) => route,
        Err(refusal) => return Ok(router_error(log, refusal)),
    };
    log.set_route(&route);

    // An HTTP/1 upgrade (WebSocket): keep Connection/Upgrade for the instance, and splice the
    // two connections together once it answers 101.
    let upgrade = upgrade_protocol(&req).map(|proto| (proto, hyper::upgrade::on(&mut req)));
    let (parts, body) = req.into_parts();
    let sticky = sticky_instance(&parts.headers);
    let xff = forwarded_for(&parts.headers, client_addr);
    log.set_xff(&xff);
    let mut headers = parts.headers;
    let fwd = Forwarded {
        host: host.as_deref().unwrap_or_default(),
        trusted: proxy.opts.is_trusted(client_addr.ip()),
        xff: &xff,
        https,
        request_id: &request_id,
        app_guid: route.app_guid_header(),
        upgrade: upgrade.as_ref().map(|(p, _)| p.as_bytes()),
    };
    upstream_headers(&mut headers, &fwd);
    let out = Outgoing {
        method: parts.method,
        path_and_query: parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
        headers,
        body: BodySlot::new(body, proxy.opts.body_read_timeout),
        upgrade,
        deadline,
    };
    Ok(forward(&proxy, &route, out, sticky, log).await)
}

/// A request ready for instances but for the per-instance headers.
struct Outgoing {
    method: Method,
    path_and_query: PathAndQuery,
    headers: HeaderMap,
    body: BodySlot,
    /// The protocol of an upgrade the client asked for, and the client's side of it.
    upgrade: Option<(HeaderValue, OnUpgrade)>,
    deadline: Deadline,
}

impl Outgoing {
    /// The request for backend `i`. Only a connect failure leads to another attempt, so the
    /// last one can have the headers themselves instead of a copy.
    fn for_instance(&mut self, route: &Route, i: usize, last: bool) -> Request<body::SlotBody> {
        let mut headers = if last {
            std::mem::take(&mut self.headers)
        } else {
            self.headers.clone()
        };
        let backend = &route.backends[i];
        headers::instance_fields(backend.index, route.instance_id_header(i), |name, value| {
            insert(&mut headers, name, value)
        });
        let mut up = Request::new(self.body.body());
        *up.method_mut() = self.method.clone();
        // Origin-form: the instance learns the host from the Host header.
        *up.uri_mut() = Uri::from(self.path_and_query.clone());
        *up.version_mut() = Version::HTTP_11;
        *up.headers_mut() = headers;
        up
    }
}

/// Sends the request to the first instance that takes it, and hands back its response.
async fn forward(
    proxy: &Proxy,
    route: &Arc<Route>,
    mut out: Outgoing,
    sticky: Option<String>,
    mut log: RequestLog,
) -> Response<ProxyBody> {
    log.received = Some(Arc::clone(&out.body.received));
    let mut attempts = Attempts::new(proxy, route, sticky);
    while let Some(i) = attempts.next(&mut log) {
        let backend = &route.backends[i];
        let up = out.for_instance(route, i, !attempts.more_left());
        let sent = Instant::now();
        // One timer for both limits: whichever comes first.
        let wait_until = (Deadline::from_std(sent) + proxy.opts.upstream_timeout).min(out.deadline);
        let result = tokio::time::timeout_at(wait_until, proxy.pool.send(backend.addr, up)).await;
        match result {
            Ok(Ok((resp, lease))) => {
                proxy.opts.metrics.record_upstream_latency(sent.elapsed());
                return respond(resp, lease, out.upgrade, backend, out.deadline, log);
            }
            Ok(Err(e)) if e.is_connect() && !out.body.started() => {
                attempts.connect_failed(i, &error_chain(&e), &mut log);
            }
            Ok(Err(upstream::Error::Limit { .. })) => {
                log.in_flight = None;
                return router_error(log, Refusal::upstream_limit());
            }
            Ok(Err(_)) if out.body.timed_out() && log.status == 0 => {
                return router_error(log, Refusal::body_timeout());
            }
            Ok(Err(e)) => {
                let refusal = proxy.instance_failed(route, backend, &error_chain(&e), &log);
                return router_error(log, refusal);
            }
            Err(_) => return router_error(log, proxy.instance_timed_out(route, backend)),
        }
    }
    router_error(log, attempts.exhausted())
}

/// The instance's response as the client gets it: headers by the policy, the body counted and
/// bounded by the deadline, the instance connection released when the body ends (or handed to
/// the tunnel after a 101 to an upgrade).
fn respond(
    mut resp: Response<Incoming>,
    lease: Lease,
    upgrade: Option<(HeaderValue, OnUpgrade)>,
    backend: &pier_api::Backend,
    deadline: Deadline,
    mut log: RequestLog,
) -> Response<ProxyBody> {
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    // Both framings (RFC 9112 §6.3): hyper decoded the transfer coding, so the length goes,
    // and the instance's connection is not used again (the message may be a smuggling
    // attempt).
    let both_framings = resp.headers().contains_key(header::TRANSFER_ENCODING)
        && resp.headers().contains_key(header::CONTENT_LENGTH);
    if resp.headers().contains_key(header::TRANSFER_ENCODING) {
        resp.headers_mut().remove(header::CONTENT_LENGTH);
    }
    // An upgraded connection belongs to the tunnel now; otherwise it is reusable once the
    // body has ended.
    let mut lease = (!switching && !both_framings).then_some(lease);
    if resp.body().is_end_stream() {
        if let Some(l) = lease.take() {
            l.release();
        }
    }
    let tunnel = switching && upgrade.is_some();
    if let Some((_, client_side)) = upgrade.filter(|_| switching) {
        let backend_side = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match tokio::try_join!(client_side, backend_side) {
                Ok((c, b)) => {
                    let mut c = TokioIo::new(c);
                    let mut b = TokioIo::new(b);
                    if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut b).await {
                        tracing::debug!(error = %e, "upgraded connection ended");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        });
    }
    let (mut parts, body) = resp.into_parts();
    response_headers(
        &mut parts.headers,
        tunnel,
        &log.request_id,
        &backend.instance_id,
    );
    log.status = parts.status.as_u16();
    let body = LoggedBody::new(
        body.map_err(BoxError::from).boxed_unsync(),
        log,
        Some(deadline),
        lease,
    );
    Response::from_parts(parts, body.boxed_unsync())
}

/// A response the router makes itself, counted and logged when the client has read it.
fn router_error(mut log: RequestLog, refusal: Refusal) -> Response<ProxyBody> {
    log.refused(refusal.status, refusal.cause);
    let mut resp = error_response(refusal.status, refusal.cause, refusal.message);
    resp.headers_mut()
        .insert(X_VCAP_REQUEST_ID, log.request_id.clone());
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, LoggedBody::new(body, log, None, None).boxed_unsync())
}

/// The host the client asked for: the Host header, else `:authority`. (A client may not send
/// a Host that differs from `:authority`, RFC 9113 §8.3.1; one that does is routed by its
/// Host, and the app is sent that host as Host, so it always sees the host it was routed by.)
fn request_host<B>(req: &Request<B>) -> Option<String> {
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_string()))
}

/// The incoming request id if it is sane, else a new one.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    request_id_from(headers.get(&X_VCAP_REQUEST_ID).map(HeaderValue::as_bytes))
}

/// The X-Forwarded-For value to send: the incoming one(s) with the client's address appended.
fn forwarded_for(headers: &HeaderMap, client: SocketAddr) -> String {
    forwarded_for_from(
        headers
            .get_all(headers::Set::ForwardedFor.name())
            .iter()
            .map(HeaderValue::as_bytes),
        client,
    )
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers::has_token(
        headers
            .get_all(header::CONNECTION)
            .iter()
            .map(HeaderValue::as_bytes),
        token.as_bytes(),
    )
}

/// The protocol an HTTP/1.1 client asks to upgrade to, if any.
fn upgrade_protocol<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 || !connection_has(req.headers(), "upgrade") {
        return None;
    }
    if req.method() == Method::CONNECT {
        return None;
    }
    req.headers().get(header::UPGRADE).cloned()
}

/// The request headers an instance gets from an HTTP/2 client: the policy of
/// [`crate::headers`] applied to hyper's map (the HTTP/1 engine applies it to raw fields in
/// `h1::fields`). The per-instance headers are added per attempt.
fn upstream_headers(headers: &mut HeaderMap, fwd: &Forwarded<'_>) {
    strip_hop_by_hop(headers);
    let mut sent = Sent::default();
    let mut dropped = Vec::new();
    for name in headers.keys() {
        match headers::request_field(name.as_str().as_bytes(), fwd.trusted) {
            RequestField::Drop => dropped.push(name.clone()),
            RequestField::Settles(s) => sent.mark(s),
            RequestField::Keep => {}
            RequestField::Host => {
                let mut values = headers.get_all(name).iter();
                let routed = values
                    .next()
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(fwd.host.as_bytes()));
                if routed && values.next().is_none() {
                    sent.mark(headers::Set::Host);
                } else {
                    dropped.push(name.clone());
                }
            }
        }
    }
    for name in dropped {
        headers.remove(name);
    }
    fwd.each(sent, |name, value| insert(headers, name, value));
}

/// Sets `name` (a lowercase constant of [`crate::headers`]) to `value`, replacing what was there.
fn insert(headers: &mut HeaderMap, name: &'static str, value: &[u8]) {
    if let Ok(v) = HeaderValue::from_bytes(value) {
        headers.insert(HeaderName::from_static(name), v);
    }
}

/// The response headers an HTTP/2 client gets: the policy of [`crate::headers`] applied to
/// hyper's map. `tunnel`: a 101 to an upgrade, which keeps the hop-by-hop headers.
fn response_headers(
    headers: &mut HeaderMap,
    tunnel: bool,
    request_id: &HeaderValue,
    instance_id: &str,
) {
    let named = if tunnel {
        Vec::new()
    } else {
        connection_named(headers)
    };
    let dropped: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            !headers::response_field_passes(k.as_str().as_bytes(), tunnel, |n| {
                named
                    .iter()
                    .any(|h| n.eq_ignore_ascii_case(h.as_str().as_bytes()))
            })
        })
        .cloned()
        .collect();
    for name in dropped {
        headers.remove(name);
    }
    headers.insert(X_VCAP_REQUEST_ID, request_id.clone());
    add_sticky_cookie(headers, instance_id);
}

/// The headers `Connection` names.
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers::list_items(
        headers
            .get_all(header::CONNECTION)
            .iter()
            .map(HeaderValue::as_bytes),
    )
    .filter_map(|t| HeaderName::from_bytes(t).ok())
    .collect()
}

/// Removes hop-by-hop headers ([`crate::headers::HOP_BY_HOP`]), including every header named
/// in `Connection`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in connection_named(headers) {
        headers.remove(name);
    }
    for name in headers::HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The instance id of a `__VCAP_ID__` cookie on the request.
fn sticky_instance(headers: &HeaderMap) -> Option<String> {
    sticky_instance_from(
        headers
            .get_all(header::COOKIE)
            .iter()
            .map(HeaderValue::as_bytes),
    )
}

/// When the app starts a session (`Set-Cookie: JSESSIONID=…`), pin the client to this instance
/// with a `__VCAP_ID__` cookie carrying the same attributes.
fn add_sticky_cookie(headers: &mut HeaderMap, instance_id: &str) {
    let set_cookies = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(HeaderValue::as_bytes);
    if let Some(cookie) = sticky_cookie(set_cookies, instance_id) {
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            headers.append(header::SET_COOKIE, v);
        }
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_including_those_named_in_connection() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn forwarded_for_appends() {
        const X_FORWARDED_FOR: &str = "x-forwarded-for";
        let client: SocketAddr = ([10, 0, 0, 9], 5000).into();
        let mut h = HeaderMap::new();
        assert_eq!(forwarded_for(&h, client), "10.0.0.9");
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
        assert_eq!(forwarded_for(&h, client), "1.1.1.1, 2.2.2.2, 10.0.0.9");
    }

    #[test]
    fn request_id_kept_when_sane() {
        let mut h = HeaderMap::new();
        h.insert(X_VCAP_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(X_VCAP_REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(request_id(&h), "has space");
        assert_eq!(request_id(&HeaderMap::new()).len(), 36);
    }

    #[test]
    fn sticky_cookie_parsing_and_setting() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; __VCAP_ID__=inst-7; JSESSIONID=x"),
        );
        assert_eq!(sticky_instance(&h).as_deref(), Some("inst-7"));

        let mut resp = HeaderMap::new();
        add_sticky_cookie(&mut resp, "inst-7");
        assert!(resp.get(header::SET_COOKIE).is_none());
        resp.insert(
            header::SET_COOKIE,
            HeaderValue::from_static("JSESSIONID=abc; Path=/app; Max-Age=60"),
        );
        add_sticky_cookie(&mut resp, "inst-7");
        let all: Vec<_> = resp.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1], "__VCAP_ID__=inst-7; Path=/app; Max-Age=60");
    }
}

/// What the HTTP/2 path sends, for tests that hold it against the HTTP/1 engine.
#[cfg(test)]
pub(crate) mod probe {
    use http::{HeaderMap, HeaderValue};

    use super::{insert, response_headers, upstream_headers};
    use crate::headers::{instance_fields, Forwarded};

    /// The `(lowercase name, value)` headers an instance gets for a request with `headers`,
    /// sent to instance `index`/`id`.
    pub(crate) fn request_fields(
        mut headers: HeaderMap,
        fwd: &Forwarded<'_>,
        index: u32,
        id: &HeaderValue,
    ) -> Vec<(String, String)> {
        upstream_headers(&mut headers, fwd);
        instance_fields(index, id, |name, value| insert(&mut headers, name, value));
        pairs(&headers)
    }

    /// The `(lowercase name, value)` headers a client gets for a response with `headers` from
    /// instance `instance_id`.
    pub(crate) fn response_fields(
        mut headers: HeaderMap,
        tunnel: bool,
        request_id: &HeaderValue,
        instance_id: &str,
    ) -> Vec<(String, String)> {
        response_headers(&mut headers, tunnel, request_id, instance_id);
        pairs(&headers)
    }

    fn pairs(headers: &HeaderMap) -> Vec<(String, String)> {
        headers
            .iter()
            .map(|(n, v)| {
                let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                (n.as_str().to_string(), v)
            })
            .collect()
    }
}
