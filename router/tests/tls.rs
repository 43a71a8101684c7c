//! TLS termination with a wildcard certificate made in the test.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)] // a test: panicking is failing

mod common;

use std::sync::Arc;

use common::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use pier_router::{load_tls, serve_tls, ProxyOptions};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

struct Cert {
    _dir: tempfile::TempDir,
    cert_file: std::path::PathBuf,
    key_file: std::path::PathBuf,
    der: CertificateDer<'static>,
}

fn wildcard_cert(domain: &str) -> Cert {
    let key = rcgen::KeyPair::generate().expect("key");
    let params =
        rcgen::CertificateParams::new(vec![format!("*.{domain}")]).expect("certificate params");
    let cert = params.self_signed(&key).expect("self-signed certificate");
    let dir = tempfile::tempdir().expect("tempdir");
    let cert_file = dir.path().join("cert.pem");
    let key_file = dir.path().join("key.pem");
    std::fs::write(&cert_file, cert.pem()).expect("write cert");
    std::fs::write(&key_file, key.serialize_pem()).expect("write key");
    Cert {
        _dir: dir,
        cert_file,
        key_file,
        der: cert.der().clone(),
    }
}

/// An HTTPS GET through `addr`, trusting only `root`, with SNI and Host `host`.
async fn https_get(
    addr: std::net::SocketAddr,
    root: &CertificateDer<'static>,
    host: &str,
    alpn: &[&[u8]],
) -> Result<(StatusCode, String, String), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    let resp = if h2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(
            Request::get(format!("https://{host}/"))
                .body(empty())
                .expect("request"),
        )
        .await
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(
            Request::get("/")
                .header("host", host)
                .body(empty())
                .expect("request"),
        )
        .await
    }
    .map_err(|e| e.to_string())?;
    let status = resp.status();
    let version = format!("{:?}", resp.version());
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((
        status,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        version,
    ))
}

#[tokio::test]
async fn tls_is_terminated_with_a_wildcard_certificate() {
    let cert = wildcard_cert("apps.test");
    let config = load_tls(&cert.cert_file, &cert.key_file).expect("load certificate");
    let a = named_backend("a").await;
    let b = named_backend("b").await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (_tables, rx) = tokio::sync::watch::channel(Some(Arc::new(pier_api::RouteTable {
        epoch: "e".into(),
        version: 1,
        routes: vec![
            route("one.apps.test", "", "one", &[a.addr]),
            route("two.apps.test", "", "two", &[b.addr]),
        ],
    })));
    let shutdown = CancellationToken::new();
    let _guard = shutdown.clone().drop_guard();
    tokio::spawn(serve_tls(
        listener,
        config,
        rx,
        ProxyOptions::default(),
        shutdown.clone(),
    ));

    // One certificate serves every app under the domain, over HTTP/1.1 and HTTP/2 (ALPN).
    let (status, body, version) = https_get(addr, &cert.der, "one.apps.test", &[b"http/1.1"])
        .await
        .expect("https one");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(version, "HTTP/1.1");
    let seen: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(seen["name"], "a");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");

    let (status, body, version) = https_get(addr, &cert.der, "two.apps.test", &[b"h2"])
        .await
        .expect("https two");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(version, "HTTP/2.0");
    let seen: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(seen["name"], "b");

    // A name the certificate does not cover fails the client's check.
    let other = https_get(addr, &cert.der, "one.elsewhere.test", &[b"http/1.1"]).await;
    assert!(other.is_err(), "{other:?}");
}

#[test]
fn load_tls_names_the_bad_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, "not a certificate").expect("write");
    let err = load_tls(&cert, &dir.path().join("missing.pem")).expect_err("bad files");
    assert!(err.to_string().contains("cert.pem"), "{err}");
}
