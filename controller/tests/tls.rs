//! The whole controller (on the fake runtime) serving its API over HTTPS, spoken to by
//! `pier-client` the way the CLI and the router speak to it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: panicking is failing

use std::path::{Path, PathBuf};

use pier_controller::runtime::fake::FakeRuntime;
use pier_controller::{Config, Controller};
use tokio_util::sync::CancellationToken;

fn test_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    std::fs::write(&c, cert.cert.pem()).unwrap();
    std::fs::write(&k, cert.key_pair.serialize_pem()).unwrap();
    (c, k)
}

fn config(dir: &Path, cert: PathBuf, key: PathBuf) -> Config {
    let mut config = Config::for_tests(dir.join("data"));
    config.router_listen = "none".into();
    config.tls_cert = Some(cert);
    config.tls_key = Some(key);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_speaks_https_to_a_client_that_trusts_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = test_cert(dir.path(), "controller");
    let (other, _) = test_cert(dir.path(), "other");
    let shutdown = CancellationToken::new();
    let controller = Controller::start_on(
        config(dir.path(), cert.clone(), key),
        FakeRuntime::new("tls-test"),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let token = controller.new_token.clone().unwrap();
    let url = format!("https://127.0.0.1:{}", controller.api_addr.port());
    let run = tokio::spawn(controller.run());

    let client = pier_client::Client::builder(&url)
        .token(Some(token.clone()))
        .ca_cert_file(Some(cert))
        .build()
        .unwrap();
    assert_eq!(client.info().await.unwrap().name, "pier");
    assert!(client.apps().await.unwrap().is_empty());

    // Another CA, or none: a TLS error that says the certificate is not trusted.
    for ca in [Some(other), None] {
        let client = pier_client::Client::builder(&url)
            .token(Some(token.clone()))
            .ca_cert_file(ca)
            .build()
            .unwrap();
        let e = client.apps().await.unwrap_err();
        assert!(e.is_tls(), "{e:?}");
        assert!(
            e.to_string()
                .contains("the controller's certificate is not trusted"),
            "{e}"
        );
    }

    // http:// to the HTTPS port gets no answer it could mistake for one.
    let plain = pier_client::Client::new(&url.replace("https", "http"), Some(token)).unwrap();
    assert!(plain.info().await.is_err());

    shutdown.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_bad_certificate_stops_the_start_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = test_cert(dir.path(), "controller");
    let garbage = dir.path().join("garbage-key.pem");
    std::fs::write(&garbage, "nope\n").unwrap();
    let e = Controller::start_on(
        config(dir.path(), cert, garbage),
        FakeRuntime::new("tls-test-bad"),
        CancellationToken::new(),
    )
    .await
    .err()
    .expect("the start is refused");
    let e = format!("{e:#}");
    assert!(
        e.contains("--tls-key") && e.contains("garbage-key.pem"),
        "{e}"
    );
    assert!(!dir.path().join("data").exists(), "no data dir was made");
}
