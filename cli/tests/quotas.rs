//! The real `pier` binary against the real controller (in this process, on the fake runtime, over
//! real HTTP): quotas defined, changed, assigned to an org and a space, shown against use by
//! `pier org` and `pier space`, and every refusal leaving the quota and the assignment as they were.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)] // a test: panicking is failing

mod common;

use common::{Output, Real};
use pier_api::{AppConfigRequest, OrgResponse, QuotaLimits, QuotaResponse, SpaceResponse};
use pier_client::Client;

fn ok(out: &Output) -> &str {
    assert_eq!(
        out.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    &out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_are_defined_assigned_and_shown_against_use() {
    let c = Real::start().await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let admin = c.admin();

    let out = c
        .pier(
            h,
            &[
                "create-quota",
                "small",
                "-m",
                "1G",
                "-a",
                "4",
                "--apps",
                "2",
                "-r",
                "3",
            ],
        )
        .await;
    assert!(ok(&out).contains("Created quota small."), "{}", out.stdout);
    let out = c.pier(h, &["quota", "small", "--json"]).await;
    let q: QuotaResponse = serde_json::from_str(ok(&out)).unwrap();
    let limits = QuotaLimits {
        memory_mb: Some(1024),
        instances: Some(4),
        apps: Some(2),
        routes: Some(3),
    };
    assert_eq!(q.limits, limits);

    // A bad size is a usage error: nothing is sent, nothing is created or changed.
    let out = c.pier(h, &["create-quota", "big", "-m", "10X"]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("invalid size \"10X\""),
        "{}",
        out.stderr
    );
    let out = c.pier(h, &["update-quota", "small", "-m", "10X"]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    let names: Vec<String> = admin
        .quotas()
        .await
        .unwrap()
        .into_iter()
        .map(|q| q.name)
        .collect();
    assert_eq!(names, ["small"]);
    assert_eq!(admin.quota("small").await.unwrap().limits, limits);

    // update-quota changes what it names and keeps the rest.
    let out = c
        .pier(h, &["update-quota", "small", "-r", "unlimited", "-m", "2G"])
        .await;
    assert!(ok(&out).contains("Updated quota small."), "{}", out.stdout);
    let limits = QuotaLimits {
        memory_mb: Some(2048),
        routes: None,
        ..limits
    };
    assert_eq!(admin.quota("small").await.unwrap().limits, limits);
    let out = c.pier(h, &["update-quota", "small"]).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("nothing to change"), "{}", out.stderr);
    let out = c.pier(h, &["update-quota", "nope", "-a", "1"]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("quota nope does not exist"),
        "{}",
        out.stderr
    );

    ok(&c.pier(h, &["create-org", "acme"]).await);
    ok(&c.pier(h, &["create-space", "dev", "-o", "acme"]).await);

    // An unknown quota is named, and the org keeps having none.
    let out = c.pier(h, &["set-quota", "acme", "nope"]).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stderr.contains("quota nope not found"),
        "{}",
        out.stderr
    );
    assert_eq!(admin.org("acme").await.unwrap().quota, None);
    let out = c
        .pier(h, &["set-space-quota", "-o", "acme", "dev", "nope"])
        .await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stderr.contains("quota nope not found"),
        "{}",
        out.stderr
    );
    assert_eq!(admin.space("acme", "dev").await.unwrap().quota, None);

    let out = c.pier(h, &["set-quota", "acme", "small"]).await;
    assert!(
        ok(&out).contains("Org acme now has quota small."),
        "{}",
        out.stdout
    );
    let out = c
        .pier(h, &["set-space-quota", "-o", "acme", "dev", "small"])
        .await;
    assert!(
        ok(&out).contains("Space dev of org acme now has quota small."),
        "{}",
        out.stdout
    );

    // One app in acme/dev, not started: it counts as an app (and its default route), not as
    // memory or instances.
    let in_dev = Client::builder(&c.url)
        .token(Some(c.token.clone()))
        .space(Some("acme".into()), Some("dev".into()))
        .build()
        .unwrap();
    in_dev
        .put_app(&"hello".parse().unwrap(), &AppConfigRequest::default())
        .await
        .unwrap();

    let out = c.pier(h, &["org", "acme"]).await;
    let text = ok(&out);
    for line in [
        "name:            acme",
        "spaces:          dev",
        "quota:           small",
        "total memory:    0M of 2G",
        "app instances:   0 of 4",
        "apps:            1 of 2",
        "routes:          1 of unlimited", // its default route
    ] {
        assert!(text.contains(line), "{line:?} in\n{text}");
    }
    let out = c.pier(h, &["org", "acme", "--json"]).await;
    let org: OrgResponse = serde_json::from_str(ok(&out)).unwrap();
    assert_eq!(
        (org.usage.apps, org.quota.unwrap().name),
        (1, "small".into())
    );

    let out = c.pier(h, &["space", "dev", "-o", "acme"]).await;
    let text = ok(&out);
    for line in [
        "name:            dev",
        "org:             acme",
        "apps:            hello",
        "space quota:     small",
        "apps:            1 of 2",
        "org acme has quota small:",
    ] {
        assert!(text.contains(line), "{line:?} in\n{text}");
    }
    let out = c.pier(h, &["space", "dev", "-o", "acme", "--json"]).await;
    let space: SpaceResponse = serde_json::from_str(ok(&out)).unwrap();
    assert_eq!(space.apps, ["hello"]);
    let out = c.pier(h, &["org", "nope"]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("org nope does not exist"),
        "{}",
        out.stderr
    );

    // The listing shows where it is assigned.
    let out = c.pier(h, &["quotas"]).await;
    let text = ok(&out);
    assert!(
        text.contains("small") && text.contains("acme, acme/dev"),
        "{text}"
    );
    let out = c.pier(h, &["quotas", "--json"]).await;
    let all: Vec<QuotaResponse> = serde_json::from_str(ok(&out)).unwrap();
    assert_eq!(
        (all[0].orgs.clone(), all[0].spaces.clone()),
        (vec!["acme".to_string()], vec!["acme/dev".to_string()])
    );

    // A push over the quota is refused, naming the quota and its use, and makes no app.
    ok(&c.pier(h, &["update-quota", "small", "--apps", "1"]).await);
    let dir = h.join("second");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), "hi\n").unwrap();
    let out = c
        .pier(
            h,
            &[
                "push",
                "second",
                "-p",
                dir.to_str().unwrap(),
                "-o",
                "acme",
                "-s",
                "dev",
            ],
        )
        .await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stderr
            .contains("quota small allows 1 apps; 1 is in use and this needs 1 more"),
        "{}",
        out.stderr
    );
    let names: Vec<String> = in_dev
        .apps()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.name.to_string())
        .collect();
    assert_eq!(names, ["hello"]);

    // A quota in use cannot be deleted; unassigned, it can.
    let out = c.pier(h, &["delete-quota", "small", "-f"]).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(out.stderr.contains("small"), "{}", out.stderr);
    assert!(admin.quota("small").await.is_ok());
    let out = c.pier(h, &["unset-space-quota", "-o", "acme", "dev"]).await;
    assert!(ok(&out).contains("no quota of its own"), "{}", out.stdout);
    let out = c.pier(h, &["unset-quota", "acme"]).await;
    assert!(ok(&out).contains("unlimited"), "{}", out.stdout);
    let out = c.pier(h, &["delete-quota", "small", "-f"]).await;
    assert!(ok(&out).contains("Deleted quota small."), "{}", out.stdout);
    assert!(admin.quotas().await.unwrap().is_empty());
    let out = c.pier(h, &["quotas"]).await;
    assert!(ok(&out).contains("No quotas yet"), "{}", out.stdout);
}
