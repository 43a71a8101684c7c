//! The header policy, once for both engines: the HTTP/1 engine ([`crate::h1`]) applies it to the
//! raw fields of a head, copying the kept ones straight across with no header map (that is what
//! makes it as fast as nginx), and the HTTP/2 path ([`crate::h2`]) applies it to hyper's
//! `HeaderMap`s. Which fields go, which the router sets and when a client's value wins, and how
//! the values are made live here; the engines only read and write fields in their own form.
//!
//! A request, as an instance gets it:
//! - left out: the hop-by-hop fields ([`HOP_BY_HOP`]), every field `Connection` names, and
//!   `Expect` (answered on the client's side; passing it on would make the instance send a
//!   second 100);
//! - set by the router, replacing the client's: `X-Forwarded-For` (the client's values with its
//!   address appended), `X-Vcap-Request-Id` (the client's kept only when sane, see
//!   [`request_id_from`]), `X-CF-ApplicationID`, and per attempt `X-CF-InstanceIndex` and
//!   `X-CF-InstanceID` ([`Set`]);
//! - set by the router, always: `Host`, to the host the request is routed by (an absolute-form
//!   target's authority wins over the client's `Host`, RFC 9112 §3.2.2), so the app sees the
//!   host it was routed by;
//! - set by the router, replacing the client's unless the client's address is in a trusted
//!   proxy range ([`crate::ProxyOptions::trusted_proxies`]): `X-Forwarded-Proto` and
//!   `X-Forwarded-Host`; a client's RFC 7239 `Forwarded` is left out unless it is trusted (the
//!   router sets none), since frameworks read host and scheme from it too;
//! - set by the router only when the client sent none: `X-Request-Start`, `traceparent`;
//! - for an upgrade, `Connection: upgrade` and the client's `Upgrade` again.
//!
//! A response, as the client gets it: the hop-by-hop fields and those `Connection` names left
//! out (all kept on a 101, which the tunnel needs), `X-Vcap-Request-Id` replaced by the
//! router's, and a `__VCAP_ID__` cookie added when the app starts a `JSESSIONID` session
//! ([`sticky_cookie`]).
//!
//! Framing (`Content-Length`, `Transfer-Encoding`) is each engine's own: hyper's for HTTP/2, and
//! the HTTP/1 engine writes the framing it chose itself.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{HeaderName, HeaderValue};

/// Hop-by-hop fields (RFC 9110 §7.6.1), lowercase: never passed on, in either direction.
pub(crate) const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The request field a forwarded request never carries although it is not hop-by-hop.
const EXPECT: &str = "expect";

/// RFC 7239 `Forwarded`: kept only from a trusted proxy.
const FORWARDED: &str = "forwarded";

/// The request id field, set by the router on requests and responses alike.
pub const X_VCAP_REQUEST_ID: HeaderName = HeaderName::from_static("x-vcap-request-id");

/// The cookie naming the instance a client sticks to.
const STICKY_COOKIE: &str = "__VCAP_ID__";
/// The app's session cookie that makes the router add [`STICKY_COOKIE`].
const SESSION_COOKIE: &str = "JSESSIONID";

/// Whether `name` is a hop-by-hop field.
#[inline]
pub(crate) fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
}

/// A field the router sets on every forwarded request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Set {
    Host,
    ForwardedFor,
    ForwardedProto,
    ForwardedHost,
    RequestStart,
    RequestId,
    Traceparent,
    ApplicationId,
    InstanceIndex,
    InstanceId,
}

impl Set {
    /// In the order the router writes them; the per-instance ones last, as they change with
    /// each attempt.
    pub(crate) const ALL: [Set; 10] = [
        Set::Host,
        Set::ForwardedFor,
        Set::ForwardedProto,
        Set::ForwardedHost,
        Set::RequestStart,
        Set::RequestId,
        Set::Traceparent,
        Set::ApplicationId,
        Set::InstanceIndex,
        Set::InstanceId,
    ];

    #[inline]
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Set::Host => "host",
            Set::ForwardedFor => "x-forwarded-for",
            Set::ForwardedProto => "x-forwarded-proto",
            Set::ForwardedHost => "x-forwarded-host",
            Set::RequestStart => "x-request-start",
            Set::RequestId => "x-vcap-request-id",
            Set::Traceparent => "traceparent",
            Set::ApplicationId => "x-cf-applicationid",
            Set::InstanceIndex => "x-cf-instanceindex",
            Set::InstanceId => "x-cf-instanceid",
        }
    }

    /// Whether a value the client sent is passed on instead of the router's (`trusted`: the
    /// client is a proxy in a trusted range, whose word on the original host and scheme is
    /// kept). The others are the router's to say: which host the request was routed by, who
    /// the client is, which request this is, which app and instance it was meant for (an app
    /// may check these, so a client must not be able to forge them).
    #[inline]
    pub(crate) const fn client_may_set(self, trusted: bool) -> bool {
        match self {
            Set::RequestStart | Set::Traceparent => true,
            Set::ForwardedProto | Set::ForwardedHost => trusted,
            _ => false,
        }
    }

    /// Whether the value depends on the instance an attempt goes to.
    const fn per_instance(self) -> bool {
        matches!(self, Set::InstanceIndex | Set::InstanceId)
    }

    #[inline]
    fn of(name: &[u8]) -> Option<Set> {
        Set::ALL
            .into_iter()
            .find(|s| name.eq_ignore_ascii_case(s.name().as_bytes()))
    }
}

/// What a forwarded request does with one of the client's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestField {
    /// Left out (hop-by-hop, `Expect`, an untrusted `Forwarded`, or one the router replaces).
    Drop,
    /// Passed on, and the router then does not set its own ([`Set::client_may_set`]).
    Settles(Set),
    /// Passed on as it is.
    Keep,
    /// `Host`: passed on only when it names the host the request is routed by (then it is
    /// [`RequestField::Settles`]), else left out and the router's written instead.
    Host,
}

/// The policy for one field of the client's request (`trusted`: the client's address is in a
/// trusted proxy range). A field that `Connection` names is left out too; that list is the
/// request's own, so the caller checks it.
#[inline]
pub(crate) fn request_field(name: &[u8], trusted: bool) -> RequestField {
    if is_hop_by_hop(name) || name.eq_ignore_ascii_case(EXPECT.as_bytes()) {
        return RequestField::Drop;
    }
    if !trusted && name.eq_ignore_ascii_case(FORWARDED.as_bytes()) {
        return RequestField::Drop;
    }
    match Set::of(name) {
        Some(Set::Host) => RequestField::Host,
        Some(s) if s.client_may_set(trusted) => RequestField::Settles(s),
        Some(_) => RequestField::Drop,
        None => RequestField::Keep,
    }
}

/// The [`Set`] fields the client's request already settles.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Sent(u16);

impl Sent {
    #[inline]
    pub(crate) fn mark(&mut self, s: Set) {
        self.0 |= 1 << s as u16;
    }

    #[inline]
    fn has(self, s: Set) -> bool {
        self.0 & (1 << s as u16) != 0
    }
}

/// What the router says about one request in the fields it sets, whatever the protocol.
pub(crate) struct Forwarded<'a> {
    /// The host the request is routed by (an absolute-form target's authority, else Host; for
    /// HTTP/2 Host, else `:authority`): sent as `Host`, and as `X-Forwarded-Host` unless a
    /// trusted proxy sent one.
    pub(crate) host: &'a str,
    /// Whether the client's address is in a trusted proxy range.
    pub(crate) trusted: bool,
    /// See [`forwarded_for_from`].
    pub(crate) xff: &'a str,
    pub(crate) https: bool,
    pub(crate) request_id: &'a HeaderValue,
    pub(crate) app_guid: &'a HeaderValue,
    /// The protocol of an upgrade the client asked for.
    pub(crate) upgrade: Option<&'a [u8]>,
}

impl Forwarded<'_> {
    /// Hands `set` each field the router adds to the request, in order, except those the
    /// client's request settles (`sent`) and the per-instance ones ([`instance_fields`]).
    pub(crate) fn each(&self, sent: Sent, mut set: impl FnMut(&'static str, &[u8])) {
        if let Some(protocol) = self.upgrade {
            set("connection", b"upgrade");
            set("upgrade", protocol);
        }
        for s in Set::ALL {
            // `sent` only has the fields the engine kept, by [`request_field`]'s policy.
            if s.per_instance() || sent.has(s) {
                continue;
            }
            let name = s.name();
            match s {
                Set::Host | Set::ForwardedHost => set(name, self.host.as_bytes()),
                Set::ForwardedFor => set(name, self.xff.as_bytes()),
                Set::ForwardedProto => set(name, if self.https { b"https" } else { b"http" }),
                Set::RequestStart => set(name, request_start().as_bytes()),
                Set::RequestId => set(name, self.request_id.as_bytes()),
                Set::Traceparent => set(name, traceparent().as_bytes()),
                Set::ApplicationId => set(name, self.app_guid.as_bytes()),
                Set::InstanceIndex | Set::InstanceId => {}
            }
        }
    }
}

/// Hands `set` the fields naming the instance one attempt goes to.
#[inline]
pub(crate) fn instance_fields(
    index: u32,
    id: &HeaderValue,
    mut set: impl FnMut(&'static str, &[u8]),
) {
    set(Set::InstanceIndex.name(), index.to_string().as_bytes());
    set(Set::InstanceId.name(), id.as_bytes());
}

/// The comma-separated elements of a list-valued field's values, trimmed, empty ones skipped.
#[inline]
pub(crate) fn list_items<'a>(
    values: impl Iterator<Item = &'a [u8]>,
) -> impl Iterator<Item = &'a [u8]> {
    values
        .flat_map(|v| v.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Whether a list-valued field (`Connection`) with these values has `token`.
#[inline]
pub(crate) fn has_token<'a>(values: impl Iterator<Item = &'a [u8]>, token: &[u8]) -> bool {
    list_items(values).any(|t| t.eq_ignore_ascii_case(token))
}

/// The request id to use given the incoming `X-Vcap-Request-Id` value, if any: the client's if
/// it is sane, else a new one.
pub(crate) fn request_id_from(incoming: Option<&[u8]>) -> HeaderValue {
    incoming
        .filter(|b| !b.is_empty() && b.len() <= 256 && b.iter().all(|c| c.is_ascii_graphic()))
        .and_then(|b| HeaderValue::from_bytes(b).ok())
        .unwrap_or_else(|| {
            // A v4 uuid from the thread-local generator: `Uuid::new_v4` asks the OS for every id.
            let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
            let mut buf = uuid::Uuid::encode_buffer();
            HeaderValue::from_str(id.hyphenated().encode_lower(&mut buf))
                .unwrap_or_else(|_| HeaderValue::from_static("-"))
        })
}

/// The `X-Forwarded-For` value to send, from the incoming values: them with the client's
/// address appended.
pub(crate) fn forwarded_for_from<'a>(
    values: impl Iterator<Item = &'a [u8]>,
    client: SocketAddr,
) -> String {
    let ip = client.ip().to_canonical();
    let prior: Vec<&str> = values
        .filter_map(|v| std::str::from_utf8(v).ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if prior.is_empty() {
        ip.to_string()
    } else {
        format!("{}, {ip}", prior.join(", "))
    }
}

/// `X-Request-Start`: now, in milliseconds since the epoch.
fn request_start() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    ms.to_string()
}

/// A new W3C `traceparent`: version 00, random trace and span ids, not sampled.
pub(crate) fn traceparent() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let trace: u128 = rand::random::<u128>() | 1;
    let span: u64 = rand::random::<u64>() | 1;
    let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-00";
    for i in 0..32 {
        buf[3 + i] = HEX[((trace >> (124 - 4 * i)) & 0xf) as usize];
    }
    for i in 0..16 {
        buf[36 + i] = HEX[((span >> (60 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// Whether a field of the instance's response reaches the client as it is. `switching`: the
/// response is a 101 and keeps `Connection` and `Upgrade` for the tunnel; `named_by_connection`
/// tells whether the response's `Connection` names the field.
#[inline]
pub(crate) fn response_field_passes(
    name: &[u8],
    switching: bool,
    named_by_connection: impl Fn(&[u8]) -> bool,
) -> bool {
    if name.eq_ignore_ascii_case(X_VCAP_REQUEST_ID.as_str().as_bytes()) {
        return false;
    }
    switching || !(is_hop_by_hop(name) || named_by_connection(name))
}

/// The instance id of a `__VCAP_ID__` cookie, from the request's `Cookie` values.
pub(crate) fn sticky_instance_from<'a>(cookies: impl Iterator<Item = &'a [u8]>) -> Option<String> {
    cookies
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == STICKY_COOKIE)
        .map(|(_, v)| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
}

/// The `__VCAP_ID__` cookie to add to a response with these `Set-Cookie` values, if one of
/// them starts a `JSESSIONID` session: it pins the client to this instance, with the session
/// cookie's attributes.
pub(crate) fn sticky_cookie<'a>(
    set_cookies: impl Iterator<Item = &'a [u8]>,
    instance_id: &str,
) -> Option<String> {
    let session = set_cookies
        .filter_map(|v| std::str::from_utf8(v).ok())
        .find(|v| {
            v.split_once('=')
                .is_some_and(|(k, _)| k.trim() == SESSION_COOKIE)
        })?;
    let attrs = session.split_once(';').map(|(_, a)| a.trim()).unwrap_or("");
    Some(if attrs.is_empty() {
        format!("{STICKY_COOKIE}={instance_id}; Path=/; HttpOnly")
    } else {
        format!("{STICKY_COOKIE}={instance_id}; {attrs}")
    })
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;

    use super::*;

    /// The fields of a head in the form hyper hands the HTTP/2 path.
    fn map(raw: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in raw.split("\r\n").skip(1) {
            if let Some((n, v)) = line.split_once(": ") {
                let name = HeaderName::from_bytes(n.as_bytes()).expect("name");
                map.append(name, HeaderValue::from_str(v).expect("value"));
            }
        }
        map
    }

    fn sorted(mut fields: Vec<(String, String)>) -> Vec<(String, String)> {
        // Made fresh per request when the client sent none: equal in name, not in value.
        for (name, value) in &mut fields {
            if name == "traceparent" && !value.starts_with("00-client") {
                *value = "generated".into();
            }
            if name == "x-request-start" && value != "1" {
                *value = "generated".into();
            }
        }
        fields.sort();
        fields
    }

    #[test]
    fn both_engines_forward_and_strip_the_same_request_headers() {
        let everything =
            "GET /p HTTP/1.1\r\nHost: a.localhost\r\nConnection: keep-alive, X-Hop\r\n\
            X-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic x\r\n\
            Proxy-Connection: keep-alive\r\nUpgrade: h2c\r\nExpect: 100-continue\r\n\
            X-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For: 5.6.7.8\r\nX-Forwarded-Proto: https\r\n\
            X-Forwarded-Host: outer.example\r\nX-Request-Start: 1\r\nX-Vcap-Request-Id: forged\r\n\
            Forwarded: for=192.0.2.1;host=outer.example;proto=https\r\n\
            Traceparent: 00-client-span-01\r\nX-CF-ApplicationID: forged\r\n\
            X-CF-InstanceIndex: 9\r\nX-CF-InstanceID: forged\r\nContent-Length: 3\r\n\
            Cookie: a=1\r\nCookie: __VCAP_ID__=inst-7\r\nX-App: kept\r\n\r\n";
        let nothing = "GET / HTTP/1.1\r\n\r\n";
        let upgrade = "GET /ws HTTP/1.1\r\nHost: a.localhost\r\nConnection: Upgrade\r\n\
            Upgrade: websocket\r\nSec-WebSocket-Key: k\r\n\r\n";
        let (rid, guid, iid) = (
            HeaderValue::from_static("rid"),
            HeaderValue::from_static("guid"),
            HeaderValue::from_static("inst-2"),
        );
        let cases = [
            (everything, None),
            (nothing, None),
            (upgrade, Some(&b"websocket"[..])),
        ];
        for ((raw, upgrade), trusted) in cases.into_iter().flat_map(|c| [(c, false), (c, true)]) {
            let fwd = Forwarded {
                host: "a.localhost",
                trusted,
                xff: "1.2.3.4, 5.6.7.8, 10.0.0.9",
                https: false,
                request_id: &rid,
                app_guid: &guid,
                upgrade,
            };
            let h1 = sorted(crate::h1::probe::request_fields(raw, &fwd, 2, &iid));
            let h2 = sorted(crate::h2::probe::request_fields(map(raw), &fwd, 2, &iid));
            assert_eq!(h1, h2, "for {raw:?}");
            let names: Vec<&str> = h1.iter().map(|(n, _)| n.as_str()).collect();
            for set in Set::ALL {
                assert_eq!(
                    names.iter().filter(|n| **n == set.name()).count(),
                    1,
                    "{set:?}: {h1:?}"
                );
            }
            let value = |n: &str| h1.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
            // The host routed by, whatever else the client says; its host and scheme only
            // from a trusted proxy.
            assert_eq!(value("host"), Some("a.localhost"), "{h1:?}");
            let proxy_said = trusted && raw == everything;
            let (proto, host) = match proxy_said {
                true => ("https", "outer.example"),
                false => ("http", "a.localhost"),
            };
            assert_eq!(value("x-forwarded-proto"), Some(proto), "{h1:?}");
            assert_eq!(value("x-forwarded-host"), Some(host), "{h1:?}");
            assert_eq!(value("forwarded").is_some(), proxy_said, "{h1:?}");
            for gone in [
                "x-hop",
                "keep-alive",
                "te",
                "proxy-authorization",
                "proxy-connection",
                "expect",
            ] {
                assert!(!names.contains(&gone), "{gone}: {h1:?}");
            }
        }
    }

    #[test]
    fn both_engines_pass_the_same_response_headers() {
        let raw =
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Private\r\nKeep-Alive: timeout=5\r\n\
            X-Private: secret\r\nTrailer: x\r\nX-Vcap-Request-Id: forged\r\n\
            Set-Cookie: JSESSIONID=abc; Path=/app\r\nSet-Cookie: b=2\r\nX-Kept: yes\r\n\r\n";
        let switching = "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n\
            Upgrade: websocket\r\nX-Vcap-Request-Id: forged\r\n\r\n";
        let rid = HeaderValue::from_static("rid");
        for (raw, tunnel) in [(raw, false), (switching, true)] {
            let h1 = sorted(crate::h1::probe::response_fields(
                raw, tunnel, &rid, "inst-1",
            ));
            let h2 = sorted(crate::h2::probe::response_fields(
                map(raw),
                tunnel,
                &rid,
                "inst-1",
            ));
            assert_eq!(h1, h2, "for {raw:?}");
            assert!(h1.contains(&("x-vcap-request-id".into(), "rid".into())));
            assert!(!h1.iter().any(|(_, v)| v == "forged"));
        }
    }
}
