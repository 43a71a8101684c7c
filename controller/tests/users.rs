//! Users and logins against the whole controller (on the fake runtime) over real HTTP, spoken to
//! by `pier-client`: the UAA-shaped token endpoint, brute force slowed and locked as documented,
//! and no password anywhere it could leak: the controller's log output (captured at debug),
//! error bodies, or the files of its data dir.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: panicking is failing

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pier_api::{CreateUserRequest, SetPasswordRequest};
use pier_client::{Client, ClientError};
use pier_controller::runtime::fake::FakeRuntime;
use pier_controller::{Config, Controller};
use tokio_util::sync::CancellationToken;

const PASSWORD: &str = "pw-Zebra-7731-unique";
const WRONG: &str = "pw-Wrong-5512-unique";
const NEW: &str = "pw-Newer-9043-unique";
const REFUSED: &str = "pw-Refused-2291-unique";

/// Everything the controller logs, as text.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            hits.extend(files_containing(&path, needle));
        } else if let Ok(bytes) = std::fs::read(&path) {
            if bytes.windows(needle.len()).any(|w| w == needle) {
                hits.push(path.display().to_string());
            }
        }
    }
    hits
}

fn oauth_error(e: &ClientError) -> (u16, String, String) {
    match e {
        ClientError::OAuth { status, error, .. } => (
            status.as_u16(),
            error.error.clone(),
            error.error_description.clone(),
        ),
        other => panic!("not an OAuth refusal: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_are_uaa_shaped_locked_after_five_failures_and_never_leak_a_password() {
    let log = Captured::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path().join("data"));
    config.router_listen = "none".into();
    let shutdown = CancellationToken::new();
    let controller = Controller::start_on(config, FakeRuntime::new("users-test"), shutdown.clone())
        .await
        .unwrap();
    let url = format!("http://127.0.0.1:{}", controller.api_addr.port());
    let admin = Client::new(&url, controller.new_token.clone()).unwrap();
    let run = tokio::spawn(controller.run());

    admin
        .create_user(&CreateUserRequest {
            name: "alice".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap();
    let anon = Client::new(&url, None).unwrap();
    let t = anon.password_grant("alice", PASSWORD).await.unwrap();
    assert_eq!(t.token_type, "bearer");
    assert_eq!(t.expires_in, 600);
    assert_eq!(
        t.scope,
        "openid cloud_controller.read cloud_controller.write"
    );
    let alice = Client::new(&url, Some(t.access_token.clone())).unwrap();
    assert_eq!(alice.whoami().await.unwrap().user_name, "alice");

    // Refusals that carry a password: none comes back in the body.
    for (name, pw) in [("Bad Name", REFUSED), ("bob", "Qx-4chz")] {
        let e = admin
            .create_user(&CreateUserRequest {
                name: name.into(),
                password: pw.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.status().unwrap().as_u16(), 400, "{e:?}");
        assert!(!format!("{e:?}").contains(pw), "{e:?}");
    }
    let e = alice
        .set_password(
            "alice",
            &SetPasswordRequest {
                old_password: Some(WRONG.into()),
                password: NEW.into(),
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("old password is wrong"), "{e}");
    assert!(!format!("{e:?}").contains(WRONG) && !format!("{e:?}").contains(NEW));

    // Brute force: each failure answered after ~200 ms; the fifth locks for five minutes.
    for i in 1..=5 {
        let started = Instant::now();
        let e = anon.password_grant("alice", WRONG).await.unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(200), "{i}");
        let (status, error, description) = oauth_error(&e);
        assert_eq!((status, error.as_str()), (401, "unauthorized"), "{i}");
        assert!(!description.contains(WRONG));
        if i < 5 {
            assert_eq!(description, "Bad credentials", "{i}");
        } else {
            assert!(description.contains("locked until 20"), "{description}");
        }
    }
    let e = anon.password_grant("alice", PASSWORD).await.unwrap_err();
    assert!(
        oauth_error(&e).2.contains("locked"),
        "the right password, locked: {e:?}"
    );
    let users = admin.users().await.unwrap();
    assert!(users[0].locked_until.is_some());
    // The access token from before the lock still works: the lock is on logging in.
    assert_eq!(alice.whoami().await.unwrap().user_name, "alice");
    // A refresh token from this login is refused once revoked.
    anon.revoke(&t.refresh_token).await.unwrap();
    let e = anon.refresh_grant(&t.refresh_token).await.unwrap_err();
    assert_eq!(oauth_error(&e).1, "invalid_grant");
    let e = alice.whoami().await.unwrap_err();
    assert_eq!(e.status().unwrap().as_u16(), 401);

    shutdown.cancel();
    run.await.unwrap().unwrap();
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("failed login"),
        "the log was captured: {text}"
    );
    assert!(text.contains("user created"));
    for pw in [PASSWORD, WRONG, NEW, REFUSED] {
        assert!(!text.contains(pw), "{pw} is in the controller's log");
        let hits = files_containing(&dir.path().join("data"), pw.as_bytes());
        assert!(hits.is_empty(), "{pw} is in {hits:?}");
    }
    assert!(
        !text.contains(&t.refresh_token),
        "a refresh token is in the log"
    );
}
