//! Bad input: each refusal says what is wrong and leaves nothing written, changed or started.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)] // a test: panicking is failing

use std::time::Duration;

use pier_e2e::pier_api::{AppConfigRequest, ErrorCode};
use pier_e2e::pier_client::ClientError;
use pier_e2e::*;

/// A raw tar entry: path, type flag, data, link target.
type Entry<'a> = (&'a str, u8, &'a [u8], &'a str);

fn gz_tar(entries: &[Entry]) -> Vec<u8> {
    // Raw headers, so the test can write what a hostile client would ('..', absolute paths...).
    let mut out = Vec::new();
    for (path, kind, data, link) in entries {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(tar::EntryType::new(*kind));
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.extend(std::iter::repeat_n(0u8, (512 - data.len() % 512) % 512));
    }
    out.extend(std::iter::repeat_n(0u8, 1024));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &out).unwrap();
    gz.finish().unwrap()
}

/// The API's refusal with `status`, decoded (`{"code": ..., "message": ...}`).
fn refusal<T: std::fmt::Debug>(
    result: Result<T, ClientError>,
    status: u16,
) -> pier_e2e::pier_api::ApiError {
    match result {
        Err(ClientError::Api {
            status: got, error, ..
        }) if got.as_u16() == status => error,
        other => panic!("expected a {status} with an API error, got {other:?}"),
    }
}

fn assert_nothing_changed(p: &Platform) {
    assert_eq!(p.blob_count(), 0, "nothing written to the blob store");
    let apps = p.call(p.api().apps()).expect("list apps");
    assert!(apps.is_empty(), "no app created: {apps:?}");
    assert!(
        p.containers().is_empty(),
        "no container: {:?}",
        p.containers()
    );
}

#[test]
fn hostile_packages_are_refused_naming_the_entry() {
    let p = Platform::start();
    let cases: &[(&[Entry], &str)] = &[
        (&[("../evil.sh", b'0', b"x", "")], "../evil.sh"),
        (&[("ok/../../evil", b'0', b"x", "")], "ok/../../evil"),
        (&[("/etc/cron.d/evil", b'0', b"x", "")], "/etc/cron.d/evil"),
        (&[("escape", b'2', b"", "../../etc/passwd")], "escape"),
        (&[("abs", b'2', b"", "/etc/shadow")], "abs"),
        (
            &[("app.py", b'0', b"x", ""), ("hard", b'1', b"", "app.py")],
            "hard",
        ),
        (&[("tty", b'3', b"", "")], "tty"),
        (&[("disk", b'4', b"", "")], "disk"),
    ];
    for (entries, name) in cases {
        let refused = refusal(p.upload(gz_tar(entries)), 422);
        assert_eq!(
            refused.code,
            ErrorCode::InvalidPackage,
            "{name}: {refused:?}"
        );
        assert!(
            refused.message.contains(name),
            "the error names {name:?}: {refused:?}"
        );
    }
    // Not a tarball at all.
    refusal(p.upload(b"definitely not gzip".to_vec()), 422);
    assert_nothing_changed(&p);
}

#[test]
fn oversized_uploads_get_413() {
    let p = Platform::start_with(Options {
        max_package_bytes: Some(4096),
        ..Default::default()
    });
    // Content-Length over the limit: refused before the body is read.
    let big = vec![7u8; 10_000];
    let refused = refusal(p.upload(big.clone()), 413);
    assert_eq!(refused.code, ErrorCode::PayloadTooLarge, "{refused:?}");
    // Through the CLI: a folder that packs to more than the limit.
    let dir = tempfile::tempdir().unwrap();
    // Incompressible bytes (xorshift), so the gzipped package stays over the limit.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let noise: Vec<u8> = (0..20_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    std::fs::write(dir.path().join("index.html"), &noise).unwrap();
    let out = p.pier(&["push", "big"], dir.path());
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success());
    assert!(text.contains("over the controller's limit"), "{text}");
    // No Content-Length (chunked): the controller stops reading at the limit.
    let (status, text) = post_chunked(&format!("{}/v1/packages", p.api), &p.token, big.clone());
    assert_eq!(status, 413, "{text}");
    assert_nothing_changed(&p);
}

#[test]
fn bad_names_tokens_manifests_and_undetectable_apps() {
    let p = Platform::start();
    let app = copy_dir(&repo_root().join("examples/python-app"));

    // Invalid names: refused by the CLI before anything is sent, and by the API.
    for bad in ["Hello", "my_app", "x-", &"a".repeat(64)] {
        let out = p.pier(&["push", bad], app.path());
        assert!(!out.status.success(), "{bad} accepted");
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(
            text.contains("DNS label") || text.contains("63"),
            "{bad}: {text}"
        );
        let (status, _, body) = http_request(
            "PUT",
            &format!("{}/v1/apps/{bad}", p.api),
            None,
            Some(&p.token),
            &[],
            b"{}",
        );
        assert_eq!(status, 400, "{bad}: {body}");
    }

    // No token, wrong token: 401 with a JSON error, and nothing created.
    for token in [None, Some("pier_wrong".to_string())] {
        let api = p.api_with(token);
        let put = p.call(api.put_app(&app_name("sneaky"), &AppConfigRequest::default()));
        let refused = refusal(put, 401);
        assert_eq!(refused.code, ErrorCode::Unauthorized, "{refused:?}");
    }
    let out = std::process::Command::new(bin("pier"))
        .args(["apps"])
        .env("PIER_HOME", p.home.path())
        .env("PIER_API", &p.api)
        .env("PIER_TOKEN", "pier_wrong")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pier login"));

    // A malformed manifest: the error names the field and the line; nothing is pushed.
    let m = tempfile::tempdir().unwrap();
    std::fs::write(m.path().join("app.py"), "print(1)\n").unwrap();
    std::fs::write(
        m.path().join("manifest.yml"),
        "applications:\n  - name: manifesto\n    instances: lots\n",
    )
    .unwrap();
    let out = p.pier(&["push"], m.path());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.contains("instances") && text.contains("line 3"),
        "{text}"
    );

    // A symlink out of the folder is refused, naming it.
    let s = tempfile::tempdir().unwrap();
    std::fs::write(s.path().join("index.html"), "hi").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", s.path().join("passwords")).unwrap();
    let out = p.pier(&["push", "linky"], s.path());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(text.contains("passwords"), "{text}");

    assert_nothing_changed(&p);

    // No buildpack detects the folder: the tried ones are listed; nothing runs or is left.
    let nothing = copy_dir(&repo_root().join("e2e/fixtures/nothing-to-detect"));
    let out = p.pier(&["push", "nothing"], nothing.path());
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("Tried: staticfile, java, nodejs, python, binary"),
        "{text}"
    );
    let unstaged = p.app("nothing").expect("the app record exists, unstaged");
    assert!(unstaged.droplet.is_none(), "no droplet");
    assert!(unstaged.instances.is_empty());
    eventually(Duration::from_secs(10), "staging container removed", || {
        p.containers().is_empty().then_some(())
    });
}
