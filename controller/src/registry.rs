//! The image registry app images are pushed to (`--registry HOST:PORT`), for the nodes of a
//! cluster to pull them from; off by default.
//!
//! ```text
//!  pier-<controller>/<app>:<tag>  ──docker tag──▶  HOST:PORT/pier-<controller>/<app>:<tag>
//!        ──docker push (the engine)──▶  registry  ◀──HEAD / DELETE /v2/<repo>/manifests/…── controller
//! ```
//! The engine pushes (it has the layers); the controller speaks the registry's HTTP API v2 only
//! to ask whether a manifest is there and to delete one.
//!
//! Invariants:
//! - The address is a bare `HOST:PORT` (checked at startup: no scheme, no path), so an image's
//!   registry name is always `HOST:PORT/<its local name>` and its repository and tag in the
//!   registry are its local ones.
//! - The API is spoken over plain HTTP to a loopback registry (which Docker, too, allows without
//!   TLS) and over HTTPS to any other.
//! - Deleting a manifest that is not there succeeds; only the registry's garbage collection
//!   (`scripts/registry gc`) frees the blobs a deleted manifest leaves.
//!
//! Uses: nothing else in the controller.

use std::fmt;
use std::time::Duration;

/// The media types of the manifests Docker pushes, asked for so the registry answers with the
/// digest of the manifest it stored (not of a converted one).
const MANIFEST_TYPES: &str = "application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.oci.image.manifest.v1+json";

/// A registry's `HOST:PORT`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryAddr {
    host: String,
    port: u16,
}

impl std::str::FromStr for RegistryAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<RegistryAddr, String> {
        let hint = "give it as HOST:PORT, e.g. 127.0.0.1:5000";
        if s.contains("://") {
            return Err(format!(
                "{s:?} has a scheme: {hint} (no http:// or https://)"
            ));
        }
        if s.contains('/') {
            return Err(format!(
                "{s:?} has a path: {hint} (images go to HOST:PORT/<image name>)"
            ));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} has no port: {hint}"))?;
        let port: u16 =
            port.parse().ok().filter(|p| *p != 0).ok_or_else(|| {
                format!("{s:?}: the port must be a number from 1 to 65535 ({hint})")
            })?;
        let bracketed = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok());
        let name_ok = !host.is_empty()
            && host
                .split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        if !bracketed && !name_ok {
            return Err(format!(
                "{s:?}: {host:?} is not a host name or an IP address ({hint})"
            ));
        }
        Ok(RegistryAddr {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl fmt::Display for RegistryAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl RegistryAddr {
    /// Whether the registry is on this machine's loopback (spoken to over plain HTTP).
    pub fn is_loopback(&self) -> bool {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// The name of a local image (`repo:tag`) in this registry.
    pub fn image_name(&self, local: &str) -> String {
        format!("{self}/{local}")
    }

    fn base_url(&self) -> String {
        let scheme = if self.is_loopback() { "http" } else { "https" };
        format!("{scheme}://{self}")
    }
}

/// `repo:tag` split at the tag's colon (a colon before the last `/` is a registry's port).
pub fn split_reference(name: &str) -> (&str, &str) {
    match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (name, "latest"),
    }
}

/// What can go wrong speaking to the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot reach the registry {registry}: {reason}")]
    Unreachable { registry: String, reason: String },
    #[error("the registry {registry} answered {what} with status {status}")]
    Status {
        registry: String,
        what: String,
        status: u16,
    },
}

/// The registry's HTTP API v2, the little of it the controller needs.
#[derive(Clone)]
pub struct Registry {
    addr: RegistryAddr,
    http: reqwest::Client,
}

impl Registry {
    pub fn new(addr: RegistryAddr) -> Registry {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Registry { addr, http }
    }

    pub fn addr(&self) -> &RegistryAddr {
        &self.addr
    }

    fn manifest_url(&self, repo: &str, reference: &str) -> String {
        format!("{}/v2/{repo}/manifests/{reference}", self.addr.base_url())
    }

    fn unreachable(&self, e: reqwest::Error) -> RegistryError {
        RegistryError::Unreachable {
            registry: self.addr.to_string(),
            reason: e.to_string(),
        }
    }

    /// The digest of `repo:tag`'s manifest, `None` when the registry has no such tag.
    pub async fn digest(&self, repo: &str, tag: &str) -> Result<Option<String>, RegistryError> {
        let r = self
            .http
            .head(self.manifest_url(repo, tag))
            .header(reqwest::header::ACCEPT, MANIFEST_TYPES)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        match r.status().as_u16() {
            404 => Ok(None),
            200 => Ok(r
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                // A registry that gives no digest still has the manifest.
                .or_else(|| Some(String::new()))),
            status => Err(RegistryError::Status {
                registry: self.addr.to_string(),
                what: format!("HEAD {repo}:{tag}"),
                status,
            }),
        }
    }

    /// Whether the registry has `repo:tag`.
    pub async fn has(&self, repo: &str, tag: &str) -> Result<bool, RegistryError> {
        Ok(self.digest(repo, tag).await?.is_some())
    }

    /// Deletes `repo:tag`'s manifest (by its digest, as the API wants); true when one went.
    pub async fn delete(&self, repo: &str, tag: &str) -> Result<bool, RegistryError> {
        let Some(digest) = self.digest(repo, tag).await?.filter(|d| !d.is_empty()) else {
            return Ok(false);
        };
        let r = self
            .http
            .delete(self.manifest_url(repo, &digest))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        match r.status().as_u16() {
            200..=299 => Ok(true),
            404 => Ok(false),
            status => Err(RegistryError::Status {
                registry: self.addr.to_string(),
                what: format!("DELETE {repo}@{digest} (is storage.delete.enabled set?)"),
                status,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_registry_is_a_bare_host_and_port() {
        for ok in [
            "127.0.0.1:5000",
            "localhost:5000",
            "registry.example.com:443",
            "[::1]:5000",
        ] {
            let a: RegistryAddr = ok.parse().unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(a.to_string(), ok);
        }
        let a: RegistryAddr = "Reg.Example:5000".parse().unwrap();
        assert_eq!(
            a.image_name("pier-c/app:t1"),
            "reg.example:5000/pier-c/app:t1"
        );
        for (bad, says) in [
            ("http://127.0.0.1:5000", "has a scheme"),
            ("https://reg:5000", "has a scheme"),
            ("127.0.0.1:5000/pier", "has a path"),
            ("127.0.0.1", "has no port"),
            ("127.0.0.1:0", "the port must be"),
            ("127.0.0.1:99999", "the port must be"),
            ("127.0.0.1:abc", "the port must be"),
            (":5000", "is not a host name"),
            ("reg_x:5000", "is not a host name"),
            ("a..b:5000", "is not a host name"),
            ("[zz]:5000", "is not a host name"),
        ] {
            let e = bad.parse::<RegistryAddr>().unwrap_err();
            assert!(e.contains(says) && e.contains("HOST:PORT"), "{bad}: {e}");
        }
    }

    #[test]
    fn loopback_registries_are_spoken_to_over_http() {
        let url = |s: &str| s.parse::<RegistryAddr>().unwrap().base_url();
        assert_eq!(url("127.0.0.1:5000"), "http://127.0.0.1:5000");
        assert_eq!(url("127.9.9.9:5000"), "http://127.9.9.9:5000");
        assert_eq!(url("localhost:5000"), "http://localhost:5000");
        assert_eq!(url("[::1]:5000"), "http://[::1]:5000");
        assert_eq!(url("reg.example:5000"), "https://reg.example:5000");
        assert_eq!(url("10.0.0.5:5000"), "https://10.0.0.5:5000");
    }

    #[test]
    fn references_split_at_the_tags_colon() {
        assert_eq!(split_reference("pier-c/app:abc"), ("pier-c/app", "abc"));
        assert_eq!(
            split_reference("127.0.0.1:5000/pier-c/app:abc"),
            ("127.0.0.1:5000/pier-c/app", "abc")
        );
        assert_eq!(
            split_reference("127.0.0.1:5000/pier-c/app"),
            ("127.0.0.1:5000/pier-c/app", "latest")
        );
        assert_eq!(split_reference("app"), ("app", "latest"));
    }

    /// A registry's manifest API, in memory: `repo:tag` → digest.
    async fn fake_registry(
        manifests: Vec<(&'static str, &'static str, &'static str)>,
    ) -> (RegistryAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use axum::extract::{Path, State};
        use axum::http::{HeaderMap, StatusCode};
        use axum::response::IntoResponse;
        type Shared = std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>>;
        let deleted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let state: Shared = std::sync::Arc::new(std::sync::Mutex::new(
            manifests
                .into_iter()
                .map(|(r, t, d)| (r.to_string(), t.to_string(), d.to_string()))
                .collect(),
        ));
        let d2 = deleted.clone();
        let app = axum::Router::new()
            .route(
                "/v2/{a}/{b}/manifests/{reference}",
                axum::routing::head(
                    |State(s): State<Shared>,
                     Path((a, b, r)): Path<(String, String, String)>,
                     h: HeaderMap| async move {
                        let accept = h.get("accept").and_then(|v| v.to_str().ok()).unwrap_or("");
                        assert!(accept.contains("manifest.v2+json"), "{accept}");
                        let repo = format!("{a}/{b}");
                        let s = s.lock().unwrap();
                        match s.iter().find(|(rr, t, _)| *rr == repo && *t == r) {
                            Some((_, _, d)) => {
                                (StatusCode::OK, [("docker-content-digest", d.clone())])
                                    .into_response()
                            }
                            None => StatusCode::NOT_FOUND.into_response(),
                        }
                    },
                )
                .delete(
                    move |State(s): State<Shared>,
                          Path((a, b, r)): Path<(String, String, String)>| {
                        let deleted = d2.clone();
                        async move {
                            let repo = format!("{a}/{b}");
                            let mut s = s.lock().unwrap();
                            let before = s.len();
                            s.retain(|(rr, _, d)| !(*rr == repo && *d == r));
                            deleted.lock().unwrap().push(format!("{repo}@{r}"));
                            if s.len() < before {
                                StatusCode::ACCEPTED
                            } else {
                                StatusCode::NOT_FOUND
                            }
                        }
                    },
                ),
            )
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("127.0.0.1:{port}").parse().unwrap(), deleted)
    }

    #[tokio::test]
    async fn a_manifest_is_found_and_deleted_by_its_digest() {
        let (addr, deleted) = fake_registry(vec![
            ("pier-c/app", "t1", "sha256:aaa"),
            ("pier-c/app", "t2", "sha256:bbb"),
        ])
        .await;
        let r = Registry::new(addr);
        assert!(r.has("pier-c/app", "t1").await.unwrap());
        assert!(!r.has("pier-c/app", "t9").await.unwrap());
        assert!(r.delete("pier-c/app", "t1").await.unwrap());
        assert_eq!(
            *deleted.lock().unwrap(),
            vec!["pier-c/app@sha256:aaa".to_string()]
        );
        assert!(!r.has("pier-c/app", "t1").await.unwrap());
        assert!(
            r.has("pier-c/app", "t2").await.unwrap(),
            "the other tag stays"
        );
        // Gone already: fine, and nothing is sent.
        assert!(!r.delete("pier-c/app", "t1").await.unwrap());
        assert_eq!(deleted.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn an_unreachable_registry_is_named_in_the_error() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let r = Registry::new(format!("127.0.0.1:{port}").parse().unwrap());
        let e = r.has("pier-c/app", "t1").await.unwrap_err().to_string();
        assert!(
            e.contains(&format!("cannot reach the registry 127.0.0.1:{port}")),
            "{e}"
        );
    }
}
