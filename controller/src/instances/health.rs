//! Health checks: how the controller decides an instance may get traffic (startup) and must be
//! replaced (after startup). The probe is a trait so supervisor tests can play the app's part.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use pier_api::{HealthCheck, HealthCheckType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How often a starting instance's health check is tried: often, since a check of a port nothing
/// listens on yet is one refused connect, and every poll of delay is delay before traffic.
pub const STARTUP_POLL: Duration = Duration::from_millis(20);
/// Health checks of a running instance: how often, and how many failures in a row replace it.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
pub const HEALTH_FAILURES: u32 = 3;

/// One health check of an instance.
#[async_trait]
pub trait HealthProbe: Send + Sync + 'static {
    async fn check(&self, addr: SocketAddr, hc: &HealthCheck) -> bool;
}

/// The real checks, over the network from the controller: TCP connect, or an HTTP GET.
pub struct NetworkProbe;

#[async_trait]
impl HealthProbe for NetworkProbe {
    async fn check(&self, addr: SocketAddr, hc: &HealthCheck) -> bool {
        check_once(addr, hc).await
    }
}

/// One health check of an instance at `addr`.
pub async fn check_once(addr: SocketAddr, hc: &HealthCheck) -> bool {
    let invocation = Duration::from_secs(u64::from(hc.invocation_timeout_secs.max(1)));
    match hc.kind {
        HealthCheckType::Process => true,
        HealthCheckType::Port => matches!(
            tokio::time::timeout(invocation, tokio::net::TcpStream::connect(addr)).await,
            Ok(Ok(_))
        ),
        HealthCheckType::Http => {
            let path = hc.endpoint.as_deref().unwrap_or("/");
            tokio::time::timeout(invocation, http_status(addr, path))
                .await
                .ok()
                .flatten()
                .is_some_and(|s| (200..400).contains(&s))
        }
    }
}

/// GETs `path` and returns the response's status code.
async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: pier-health\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let m = s.read(&mut buf[n..]).await.ok()?;
        if m == 0 {
            break;
        }
        n += m;
    }
    let head = std::str::from_utf8(&buf[..n]).ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}

/// What a check tries, as failure messages say it.
pub fn describe(hc: &HealthCheck) -> String {
    match hc.kind {
        HealthCheckType::Port => "TCP connect to port 8080".to_string(),
        HealthCheckType::Http => format!("HTTP GET {}", hc.endpoint.as_deref().unwrap_or("/")),
        HealthCheckType::Process => "process".to_string(),
    }
}

/// Why a check of a running instance failed, as `HEALTH/<index>` lines say it.
pub fn failure(hc: &HealthCheck) -> String {
    match hc.kind {
        HealthCheckType::Http => format!(
            "HTTP GET {} failed or answered outside 200-399",
            hc.endpoint.as_deref().unwrap_or("/")
        ),
        _ => "TCP connect to port 8080 failed".to_string(),
    }
}

/// Tries the check every [`STARTUP_POLL`] until it passes (true) or `timeout` has passed (false).
pub async fn wait_healthy(
    probe: &dyn HealthProbe,
    addr: SocketAddr,
    hc: &HealthCheck,
    timeout: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if probe.check(addr, hc).await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(STARTUP_POLL).await;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;

    /// A probe the test answers: every address is healthy (or not, after `all_unhealthy`)
    /// unless marked otherwise with `set_healthy`.
    pub(crate) struct FakeProbe {
        overrides: Mutex<HashMap<std::net::IpAddr, bool>>,
        default: std::sync::atomic::AtomicBool,
    }

    impl Default for FakeProbe {
        fn default() -> Self {
            FakeProbe {
                overrides: Mutex::default(),
                default: std::sync::atomic::AtomicBool::new(true),
            }
        }
    }

    impl FakeProbe {
        pub(crate) fn set_healthy(&self, ip: std::net::IpAddr, healthy: bool) {
            self.overrides.lock().unwrap().insert(ip, healthy);
        }

        pub(crate) fn all_unhealthy(&self) {
            self.overrides.lock().unwrap().clear();
            self.default
                .store(false, std::sync::atomic::Ordering::SeqCst);
        }

        pub(crate) fn all_healthy(&self) {
            self.overrides.lock().unwrap().clear();
            self.default
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[async_trait]
    impl HealthProbe for FakeProbe {
        async fn check(&self, addr: SocketAddr, hc: &HealthCheck) -> bool {
            if hc.kind == HealthCheckType::Process {
                return true;
            }
            let o = self.overrides.lock().unwrap().get(&addr.ip()).copied();
            o.unwrap_or_else(|| self.default.load(std::sync::atomic::Ordering::SeqCst))
        }
    }

    #[tokio::test]
    async fn http_and_port_checks() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]).to_string();
                    let status = if req.starts_with("GET /ok ") {
                        "204 No Content"
                    } else {
                        "500 Oops"
                    };
                    let _ = s
                        .write_all(
                            format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes(),
                        )
                        .await;
                });
            }
        });
        let mut hc = HealthCheck::default();
        assert!(check_once(addr, &hc).await);
        hc.kind = HealthCheckType::Http;
        hc.endpoint = Some("/ok".into());
        assert!(check_once(addr, &hc).await);
        hc.endpoint = Some("/bad".into());
        assert!(!check_once(addr, &hc).await);
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert!(!check_once(closed, &HealthCheck::default()).await);
    }
}
