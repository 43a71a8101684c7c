//! `pier audit` and `pier events`' actor with the real `pier` binary against the real controller
//! (in this process, on the fake runtime, over real HTTP).

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)] // a test: panicking is failing

mod common;

use common::{Output, Real};
use pier_api::{AppConfigRequest, AuditEntry, CreateUserRequest, Role};

const PW: &str = "Cli-audit-pw-4471";

fn ok(out: &Output) -> &str {
    assert_eq!(
        out.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    &out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pier_audit_shows_who_did_what_since_a_time_and_only_to_the_admin() {
    let c = Real::start().await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let admin = c.admin();
    ok(&c.pier(h, &["create-org", "acme"]).await);
    admin
        .create_user(&CreateUserRequest {
            name: "alice".into(),
            password: PW.into(),
        })
        .await
        .unwrap();
    admin
        .put_app(&"hello".parse().unwrap(), &AppConfigRequest::default())
        .await
        .unwrap();

    let out = c.pier(h, &["audit"]).await;
    let text = ok(&out);
    let row = text
        .lines()
        .find(|l| l.contains("POST /v1/orgs"))
        .unwrap_or_else(|| panic!("no row for the org in\n{text}"));
    for cell in ["admin", "201", "acme"] {
        assert!(row.contains(cell), "{cell:?} in {row:?}");
    }
    let row = text
        .lines()
        .find(|l| l.contains("PUT /v1/apps/hello"))
        .unwrap();
    assert!(row.contains("default/default"), "{row}");

    // --since: an age keeps what happened in it, a later time keeps nothing.
    let out = c.pier(h, &["audit", "--since", "1h", "--json"]).await;
    let entries: Vec<AuditEntry> = serde_json::from_str(ok(&out)).unwrap();
    let actions: Vec<_> = entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        ["PUT /v1/apps/hello", "POST /v1/users", "POST /v1/orgs"],
        "newest first"
    );
    let out = c
        .pier(h, &["audit", "--since", "2099-01-01T00:00:00Z"])
        .await;
    assert!(
        ok(&out).contains("Nothing in the audit log"),
        "{}",
        out.stdout
    );
    let out = c.pier(h, &["audit", "--since", "yesterday"]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("invalid time \"yesterday\""),
        "{}",
        out.stderr
    );
    let out = c.pier(h, &["audit", "--limit", "1", "--json"]).await;
    let entries: Vec<AuditEntry> = serde_json::from_str(ok(&out)).unwrap();
    assert_eq!(entries.len(), 1);

    // The admin's change shows as theirs in `pier events` too.
    let out = c.pier(h, &["events", "hello"]).await;
    let text = ok(&out);
    let row = text.lines().find(|l| l.contains("created")).unwrap();
    assert!(row.contains("admin"), "{row}");

    // A user logs in and is refused the log; both show, as that user.
    let user_home = tempfile::tempdir().unwrap();
    let out = common::run(common::pier(
        user_home.path(),
        &["login", "--api", &c.url, "-u", "alice", "-p", PW],
    ))
    .await;
    ok(&out);
    let out = common::run(common::pier(user_home.path(), &["audit"])).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(out.stderr.contains("platform admin only"), "{}", out.stderr);
    assert!(!out.stdout.contains("POST /v1/orgs"), "{}", out.stdout);
    let out = c.pier(h, &["audit", "--json", "--limit", "2"]).await;
    let entries: Vec<AuditEntry> = serde_json::from_str(ok(&out)).unwrap();
    let got: Vec<_> = entries
        .iter()
        .map(|e| (e.actor.as_str(), e.action.as_str(), e.status))
        .collect();
    assert_eq!(
        got,
        [("alice", "GET /v1/audit", 403), ("alice", "login", 200)]
    );
    assert!(!out.stdout.contains(PW));

    // With a role, alice's change is hers in `pier events` and in the log.
    for (space, role) in [
        (None, Role::OrgUser),
        (Some("default"), Role::SpaceDeveloper),
    ] {
        admin
            .set_role("default", space, "alice", role, true)
            .await
            .unwrap();
    }
    let out = common::run(common::pier(
        user_home.path(),
        &["scale", "hello", "-i", "2"],
    ))
    .await;
    ok(&out);
    let out = c.pier(h, &["events", "hello"]).await;
    let text = ok(&out);
    let row = text
        .lines()
        .find(|l| l.contains("scaled"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("alice"), "{row}");
    let out = c.pier(h, &["audit", "--json", "--limit", "1"]).await;
    let entries: Vec<AuditEntry> = serde_json::from_str(ok(&out)).unwrap();
    assert_eq!(
        (
            entries[0].actor.as_str(),
            entries[0].action.as_str(),
            entries[0].target.as_deref()
        ),
        ("alice", "PUT /v1/apps/hello/processes/web", Some("hello"))
    );
}
