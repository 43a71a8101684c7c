//! The access log and the per-request accounting both engines keep.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderValue, StatusCode};

use super::{cause, Proxy};
use crate::in_flight::InFlightGuard;
use crate::metrics::Metrics;
use crate::table::Route;

/// One finished request, as handed to an [`AccessLog`].
#[derive(Debug, Clone)]
pub struct AccessLogEntry {
    /// When the router received the request.
    pub started_at: SystemTime,
    /// The app's name and guid; `None` when no route matched.
    pub app: Option<String>,
    pub app_guid: Option<String>,
    /// The instance that answered (the last one tried); `None` when none was reached.
    pub instance_index: Option<u32>,
    pub instance_id: Option<String>,
    pub backend_addr: Option<SocketAddr>,
    pub host: String,
    pub method: String,
    /// Path and query as the client sent them.
    pub path: String,
    pub status: u16,
    /// Request body bytes read from the client.
    pub bytes_received: u64,
    /// Response body bytes sent to the client.
    pub bytes_sent: u64,
    /// From receiving the request until the response body ended (or was abandoned).
    pub duration: Duration,
    pub client_addr: SocketAddr,
    /// The `X-Forwarded-For` value sent to the instance.
    pub x_forwarded_for: String,
    pub request_id: String,
    pub user_agent: Option<String>,
    pub referer: Option<String>,
    /// Set when the router generated the response itself.
    pub router_error: Option<&'static str>,
}

impl AccessLogEntry {
    /// A gorouter-style access log line, as Cloud Foundry shows under the `RTR` source.
    pub fn to_rtr_line(&self) -> String {
        let q = |s: &Option<String>| s.as_deref().map_or_else(|| "-".into(), quoted);
        format!(
            "{host} - \"{method} {path}\" {status} {recv} {sent} \"{referer}\" \"{ua}\" \"{client}\" \"{backend}\" \
             x_forwarded_for:\"{xff}\" vcap_request_id:\"{rid}\" response_time:{secs:.6} app_id:\"{app}\" \
             app_index:\"{index}\"{err}",
            host = quoted(&self.host),
            method = quoted(&self.method),
            path = quoted(&self.path),
            status = self.status,
            recv = self.bytes_received,
            sent = self.bytes_sent,
            referer = q(&self.referer),
            ua = q(&self.user_agent),
            client = self.client_addr,
            backend = self
                .backend_addr
                .map(|a| a.to_string())
                .unwrap_or_else(|| "-".into()),
            xff = quoted(&self.x_forwarded_for),
            rid = quoted(&self.request_id),
            secs = self.duration.as_secs_f64(),
            app = q(&self.app_guid),
            index = self
                .instance_index
                .map(|i| i.to_string())
                .unwrap_or_else(|| "-".into()),
            err = self
                .router_error
                .map(|c| format!(" x_pier_router_error:\"{c}\""))
                .unwrap_or_default(),
        )
    }
}

/// A client-chosen value as it goes into an RTR line: `"` and `\\` escaped with a backslash (so
/// no value can close its quotes and forge the fields after it), control characters (C0, DEL,
/// C1) as `\\u{..}`, so the line stays one line and says exactly what was sent.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Receives one call per finished request. Calls happen on the proxy's tasks: return quickly
/// (hand the entry to a channel if the work is slow).
pub trait AccessLog: Send + Sync + 'static {
    fn log(&self, entry: AccessLogEntry);
}

impl<F: Fn(AccessLogEntry) + Send + Sync + 'static> AccessLog for F {
    fn log(&self, entry: AccessLogEntry) {
        self(entry)
    }
}

/// Per-request accounting, finished (logged and counted) when the response body is done or
/// dropped.
pub(crate) struct RequestLog {
    metrics: Arc<Metrics>,
    sink: Option<Arc<dyn AccessLog>>,
    started: Instant,
    app: Option<Arc<Route>>,
    pub(crate) status: u16,
    pub(crate) bytes_sent: u64,
    pub(crate) received: Option<Arc<AtomicU64>>,
    pub(crate) request_id: HeaderValue,
    /// Holds the backend's in-flight count (least-connections) until the response ends.
    pub(crate) in_flight: Option<InFlightGuard>,
    entry: Option<Box<AccessLogEntry>>,
    finished: bool,
}

impl RequestLog {
    pub(crate) fn new(
        proxy: &Proxy,
        method: &str,
        path_and_query: &str,
        user_agent_and_referer: (Option<&[u8]>, Option<&[u8]>),
        host: Option<&str>,
        client_addr: SocketAddr,
        request_id: HeaderValue,
    ) -> Self {
        let sink = proxy.opts.access_log.clone();
        let entry = sink.as_ref().map(|_| {
            let text = |v: Option<&[u8]>| v.map(|b| String::from_utf8_lossy(b).into_owned());
            let (user_agent, referer) = user_agent_and_referer;
            Box::new(AccessLogEntry {
                started_at: SystemTime::now(),
                app: None,
                app_guid: None,
                instance_index: None,
                instance_id: None,
                backend_addr: None,
                host: host.unwrap_or_default().to_string(),
                method: method.to_string(),
                path: path_and_query.to_string(),
                status: 0,
                bytes_received: 0,
                bytes_sent: 0,
                duration: Duration::ZERO,
                client_addr,
                x_forwarded_for: String::new(),
                request_id: String::from_utf8_lossy(request_id.as_bytes()).into_owned(),
                user_agent: text(user_agent),
                referer: text(referer),
                router_error: None,
            })
        });
        RequestLog {
            metrics: Arc::clone(&proxy.opts.metrics),
            sink,
            started: Instant::now(),
            app: None,
            status: 0,
            bytes_sent: 0,
            received: None,
            request_id,
            in_flight: None,
            entry,
            finished: false,
        }
    }

    pub(crate) fn set_route(&mut self, route: &Arc<Route>) {
        if let Some(e) = &mut self.entry {
            e.app = Some(route.app.clone());
            e.app_guid = Some(route.app_guid.clone());
        }
        self.app = Some(Arc::clone(route));
    }

    pub(crate) fn set_xff(&mut self, xff: &str) {
        if let Some(e) = &mut self.entry {
            e.x_forwarded_for = xff.to_string();
        }
    }

    pub(crate) fn set_backend(&mut self, b: &pier_api::Backend) {
        if let Some(e) = &mut self.entry {
            e.instance_index = Some(b.index);
            e.instance_id = Some(b.instance_id.clone());
            e.backend_addr = Some(b.addr);
        }
    }

    /// Time since the request arrived.
    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Records that the router answered `status` itself, for `cause`.
    pub(crate) fn refused(&mut self, status: StatusCode, cause: &'static str) {
        self.metrics.record_router_error(cause);
        self.status = status.as_u16();
        if let Some(e) = &mut self.entry {
            e.router_error = Some(cause);
        }
    }

    /// A response body cut off at the maximum request time.
    pub(crate) fn timed_out(&mut self) {
        self.metrics.record_router_error(cause::REQUEST_TIMEOUT);
        if let Some(e) = &mut self.entry {
            e.router_error = Some(cause::REQUEST_TIMEOUT);
        }
        tracing::warn!(app = %self.app.as_ref().map(|r| r.app.as_str()).unwrap_or(""),
            elapsed_ms = self.started.elapsed().as_millis() as u64,
            "response cut off: the request took longer than the maximum request time");
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        self.finish();
    }
}

impl RequestLog {
    /// Counts the request and hands its access log entry over (once; dropping does it too).
    /// Called before the last write of a response, so the figures are there by the time the
    /// client has its answer.
    pub(crate) fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        let app = self.app.as_ref().map(|r| r.app.as_str()).unwrap_or("");
        self.metrics.record_request(app, self.status);
        if let (Some(sink), Some(mut entry)) = (self.sink.take(), self.entry.take()) {
            entry.status = self.status;
            entry.bytes_sent = self.bytes_sent;
            entry.bytes_received = self
                .received
                .as_ref()
                .map(|r| r.load(Ordering::Relaxed))
                .unwrap_or(0);
            entry.duration = self.started.elapsed();
            sink.log(*entry);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn client_values_cannot_forge_rtr_fields_or_break_the_line() {
        let e = AccessLogEntry {
            started_at: SystemTime::UNIX_EPOCH,
            app: Some("a".into()),
            app_guid: Some("g".into()),
            instance_index: Some(0),
            instance_id: None,
            backend_addr: None,
            host: "a.localhost".into(),
            method: "GET".into(),
            path: "/x\"y".into(),
            status: 200,
            bytes_received: 0,
            bytes_sent: 2,
            duration: Duration::from_millis(1),
            client_addr: "127.0.0.1:5000".parse().unwrap(),
            x_forwarded_for: "1.2.3.4\", app_id:\"forged".into(),
            request_id: "r".into(),
            user_agent: Some("evil\" app_index:\"9\u{9b}31m\nnext\\".into()),
            referer: None,
            router_error: None,
        };
        let line = e.to_rtr_line();
        assert!(!line.contains('\n') && !line.contains('\u{9b}'), "{line}");
        assert!(
            line.contains(r#""evil\" app_index:\"9\u{9b}31m\u{a}next\\""#),
            "{line}"
        );
        assert!(
            line.contains(r#"x_forwarded_for:"1.2.3.4\", app_id:\"forged""#),
            "{line}"
        );
        assert!(line.contains(r#""GET /x\"y""#), "{line}");
        // One unescaped app_id and app_index field each: the real ones.
        assert_eq!(line.matches("app_id:\"").count(), 1, "{line}");
        assert_eq!(line.matches("app_index:\"").count(), 1, "{line}");
        assert!(line.ends_with("app_id:\"g\" app_index:\"0\""), "{line}");
    }
}
