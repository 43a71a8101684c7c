//! The real `pier` binary over HTTPS (a fake controller behind the controller's own TLS accept
//! loop, with a certificate made at test time), and its clear-text warning.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)] // a test: panicking is failing

mod common;

use std::net::IpAddr;

use common::{pier, run, test_cert, Fake, TOKEN};

fn app_folder(home: &std::path::Path) -> std::path::PathBuf {
    let dir = home.join("hello");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("app.py"), "print('hello')\n").unwrap();
    std::fs::write(dir.join("requirements.txt"), "").unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_push_and_apps_over_https_with_a_ca_cert() {
    let home = tempfile::tempdir().unwrap();
    let (cert, key) = test_cert(home.path(), "controller");
    let fake = Fake::start_tls(&cert, &key).await;
    assert!(fake.url().starts_with("https://127.0.0.1:"));

    // A relative --ca-cert is saved absolute: later commands run from anywhere.
    let out = run(pier(
        home.path(),
        &[
            "login",
            "--api",
            &fake.url(),
            "--token",
            TOKEN,
            "--ca-cert",
            "controller.pem",
        ],
    ))
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("Logged in to https://"),
        "{}",
        out.stdout
    );
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);
    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(home.path().join("pier-home/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(saved["api"], fake.url());
    assert_eq!(saved["ca_cert"], cert.to_str().unwrap());

    let dir = app_folder(home.path());
    let out = run(pier(
        home.path(),
        &["push", "hello", "-p", dir.to_str().unwrap()],
    ))
    .await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("Staged with buildpack python"),
        "{}",
        out.stdout
    );
    let out = run(pier(home.path(), &["apps"])).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("hello"), "{}", out.stdout);
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);
    assert!(fake
        .changes()
        .contains(&"POST /v1/apps/hello/builds".to_string()));

    // PIER_CA_CERT serves as well as the saved one.
    let mut cmd = pier(home.path(), &["apps"]);
    cmd.env("PIER_API", fake.url())
        .env("PIER_TOKEN", TOKEN)
        .env("PIER_CA_CERT", &cert)
        .env("PIER_HOME", home.path().join("other-home"));
    let out = run(cmd).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("hello"), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_pier_cannot_trust_fails_clearly_and_saves_nothing() {
    let home = tempfile::tempdir().unwrap();
    let (cert, key) = test_cert(home.path(), "controller");
    let (other, _) = test_cert(home.path(), "other-ca");
    let fake = Fake::start_tls(&cert, &key).await;
    let config = home.path().join("pier-home/config.json");
    let url = fake.url();

    for ca in [None, Some(other.to_str().unwrap())] {
        let mut args = vec!["login", "--api", &url, "--token", TOKEN];
        if let Some(ca) = ca {
            args.extend(["--ca-cert", ca]);
        }
        let out = run(pier(home.path(), &args)).await;
        assert_eq!(out.code, 1, "{}", out.stderr);
        assert!(
            out.stderr.contains(&format!(
                "error: cannot connect securely to the controller at {}: the controller's \
                 certificate is not trusted",
                fake.url()
            )),
            "{}",
            out.stderr
        );
        assert!(out.stderr.contains("hint: "), "{}", out.stderr);
        assert!(out.stderr.contains("--ca-cert FILE"), "{}", out.stderr);
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
        assert!(!out.stderr.contains("cannot reach"), "{}", out.stderr);
        assert!(!config.exists());
    }
    // The handshake failed before any request: the fake saw none.
    assert_eq!(fake.requests(), Vec::<String>::new());

    // A CA file that is not there is named.
    let out = run(pier(
        home.path(),
        &[
            "login",
            "--api",
            &fake.url(),
            "--token",
            TOKEN,
            "--ca-cert",
            "missing.pem",
        ],
    ))
    .await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("the CA certificate file") && out.stderr.contains("missing.pem"),
        "{}",
        out.stderr
    );
    assert!(!config.exists());
}

/// An IPv4 address of this machine that is not loopback (eth0's, docker0's, ...).
fn own_non_loopback_address() -> IpAddr {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .expect("`ip` runs");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("this machine has no non-loopback IPv4 address: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_clear_text_to_another_host_warns_once_and_loopback_does_not() {
    let home = tempfile::tempdir().unwrap();
    // The machine's own address: traffic stays on this host, yet it is not loopback.
    let ip = own_non_loopback_address();
    let fake = Fake::start_on(&format!("{ip}:0"), None).await;
    let warning = format!(
        "warning: sending the token in clear text to {}; use https",
        fake.url()
    );

    let out = run(fake.pier(home.path(), &["apps"])).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stderr.matches(&warning).count(), 1, "{}", out.stderr);

    // A push opens several connections; the warning still shows once.
    let dir = app_folder(home.path());
    let out = run(fake.pier(home.path(), &["push", "hello", "-p", dir.to_str().unwrap()])).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.stderr.matches(&warning).count(), 1, "{}", out.stderr);
    assert!(!out.stdout.contains("warning"), "{}", out.stdout);

    // Loopback stays quiet.
    let local = Fake::start().await;
    let out = run(local.pier(home.path(), &["apps"])).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);
}
