//! Roles and the policy through the real axum router: two users in two spaces, auditors,
//! developers, managers, role changes taking effect on the next request, and every refusal of the
//! role endpoints writing nothing.

use http::{Request, StatusCode};
use serde_json::{json, Value};

use crate::policy::{Level, ENDPOINTS};
use crate::runtime::Kind;
use crate::testkit::TestPlatform;

const PW: &str = "Tr0ub4dor-and-3";

/// Makes user `name` and logs them in; their access token.
async fn user(p: &TestPlatform, name: &str) -> String {
    let (s, v) = p
        .call(
            "POST",
            "/v1/users",
            Some(json!({"name": name, "password": PW})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    use tower::ServiceExt as _;
    let req = Request::builder()
        .method("POST")
        .uri("/oauth/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("authorization", "Basic Y2Y6")
        .body(axum::body::Body::from(format!(
            "grant_type=password&username={name}&password={PW}"
        )))
        .unwrap();
    let resp = p.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

async fn space(p: &TestPlatform, org: &str, space: &str) {
    let (s, v) = p
        .call("POST", "/v1/orgs", Some(json!({ "name": org })))
        .await;
    assert!(s == StatusCode::CREATED || s == StatusCode::CONFLICT, "{v}");
    let path = format!("/v1/orgs/{org}/spaces");
    let (s, v) = p.call("POST", &path, Some(json!({ "name": space }))).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

/// Gives (PUT) or takes (DELETE) a role as the admin, checking it worked.
async fn role(p: &TestPlatform, method: &str, path: &str) {
    let (s, v) = p.call(method, path, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{method} {path}: {v}");
}

/// A request as `token`, answering only the status (a log stream's body never ends).
async fn status(p: &TestPlatform, method: &str, path: &str, token: &str) -> (StatusCode, Value) {
    use tower::ServiceExt as _;
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(axum::body::Body::from("{}"))
        .unwrap();
    let resp = p.router.clone().oneshot(req).await.unwrap();
    let s = resp.status();
    if path.contains("/logs/stream") && s == StatusCode::OK {
        return (s, Value::Null);
    }
    let body = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap();
    (s, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// The endpoint's path with its parameters filled in for app `app` of `org`/`space`.
fn concrete(path: &str, org: &str, space: &str, app: &str) -> String {
    let p = path
        .replace("{org}", org)
        .replace("{space}", space)
        .replace("{name}", app)
        .replace("{action}", "restart")
        .replace("{process}", "web")
        .replace("{id}", "1")
        .replace("{user}", "nobody")
        .replace("{role}", "SpaceAuditor")
        .replace("{service}", app)
        .replace("{key}", "k");
    if p.starts_with("/v1/apps")
        || p.starts_with("/v1/route-mappings")
        || p.starts_with("/v1/service-instances")
        || p.starts_with("/v1/marketplace")
        || p.starts_with("/v1/space-service-brokers")
    {
        format!("{p}?org={org}&space={space}")
    } else {
        p
    }
}

/// What the platform holds, to check that a refused request changed nothing.
fn snapshot(p: &TestPlatform) -> (String, usize, usize) {
    let apps = format!("{:?}", p.store.list_apps().unwrap());
    let roles: usize = p
        .store
        .users()
        .unwrap()
        .list()
        .unwrap()
        .iter()
        .map(|u| p.store.roles().unwrap().of_user(&u.guid).unwrap().len())
        .sum();
    (apps, p.fake.running(Kind::Instance).len(), roles)
}

/// acme/dev with app `a` (alice develops, carol audits), acme/prod with app `b` (bob develops),
/// each app with a secret in its env.
async fn two_spaces() -> (TestPlatform, String, String, String) {
    let p = TestPlatform::new().await;
    space(&p, "acme", "dev").await;
    space(&p, "acme", "prod").await;
    let env = json!({"env": {"SECRET": "s3cret"}});
    p.push_at("a", "?org=acme&space=dev", Some(env.clone()))
        .await;
    p.push_at("b", "?org=acme&space=prod", Some(env)).await;
    // A user-provided service named as each app, with a secret in its credentials.
    for (app, q) in [("a", "?org=acme&space=dev"), ("b", "?org=acme&space=prod")] {
        let body = json!({"name": app, "user_provided": {"credentials": {"password": "s3cret"}}});
        let (s, v) = p
            .call("POST", &format!("/v1/service-instances{q}"), Some(body))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let (alice, bob, carol) = (
        user(&p, "alice").await,
        user(&p, "bob").await,
        user(&p, "carol").await,
    );
    let dev = "/v1/orgs/acme/spaces/dev/users";
    role(&p, "PUT", &format!("{dev}/alice/roles/SpaceDeveloper")).await;
    role(&p, "PUT", &format!("{dev}/carol/roles/SpaceAuditor")).await;
    let prod = "/v1/orgs/acme/spaces/prod/users";
    role(&p, "PUT", &format!("{prod}/bob/roles/SpaceDeveloper")).await;
    p.eventually("both running", || {
        (p.fake.running(Kind::Instance).len() == 2).then_some(())
    })
    .await;
    // And both pushes' deployments over, so nothing changes under the snapshots but the tests.
    for q in ["a?org=acme&space=dev", "b?org=acme&space=prod"] {
        let path = format!("/v1/apps/{}", q.replacen('?', "/deployments?", 1));
        for _ in 0..500 {
            let (_, d) = p.call("GET", &path, None).await;
            if d[0]["state"] == "SUCCEEDED" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    (p, alice, bob, carol)
}

#[tokio::test]
async fn neither_developer_reaches_the_other_space_on_any_endpoint() {
    let (p, alice, bob, _) = two_spaces().await;
    let before = snapshot(&p);
    let mut tried = 0;
    for (token, space, app) in [(&alice, "prod", "b"), (&bob, "dev", "a")] {
        for e in ENDPOINTS
            .iter()
            .filter(|e| e.action.level() == Level::Space)
        {
            let path = concrete(e.path, "acme", space, app);
            let (s, v) = status(&p, e.method, &path, token).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{} {path}: {v}", e.method);
            // The same words as a space that does not exist: nothing about the app leaks.
            assert_eq!(v["message"], format!("space {space} not found in org acme"));
            tried += 1;
        }
    }
    assert!(tried > 40, "{tried}");
    assert_eq!(snapshot(&p), before, "a refused request changed something");
    // Each still works in their own space, env values included.
    let (s, v) = status(&p, "GET", "/v1/apps/a?org=acme&space=dev", &alice).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["env"]["SECRET"], "s3cret");
    // An org neither is in is not seen at all.
    space(&p, "other", "x").await;
    for path in [
        "/v1/orgs/other",
        "/v1/orgs/other/spaces",
        "/v1/orgs/other/users",
    ] {
        let (s, v) = status(&p, "GET", path, &alice).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {v}");
        assert_eq!(v["message"], "org other not found");
    }
    let (_, v) = status(&p, "GET", "/v1/apps?org=other&space=x", &alice).await;
    assert_eq!(v["message"], "org other not found");
    // The lists hold only what each sees.
    let (_, v) = status(&p, "GET", "/v1/orgs", &alice).await;
    let orgs: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(orgs, ["acme"]);
    assert_eq!(v[0]["spaces"], json!(["dev"]));
    let (_, v) = status(&p, "GET", "/v1/orgs/acme/spaces", &bob).await;
    let spaces: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(spaces, ["prod"]);
}

#[tokio::test]
async fn the_auditor_reads_and_changes_nothing_and_sees_no_env_values() {
    let (p, _, _, carol) = two_spaces().await;
    let before = snapshot(&p);
    for e in ENDPOINTS
        .iter()
        .filter(|e| e.action.level() == Level::Space)
    {
        let path = concrete(e.path, "acme", "dev", "a");
        let (s, v) = status(&p, e.method, &path, &carol).await;
        if e.method == "GET" {
            assert_eq!(s, StatusCode::OK, "{} {path}: {v}", e.method);
        } else {
            assert_eq!(s, StatusCode::FORBIDDEN, "{} {path}: {v}", e.method);
            assert!(
                v["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("carol may not call"),
                "{v}"
            );
        }
    }
    // Org endpoints that change: refused too (the space's auditor is only an OrgUser).
    for (m, path) in [
        ("POST", "/v1/orgs/acme/spaces"),
        ("DELETE", "/v1/orgs/acme"),
        ("PUT", "/v1/orgs/acme/quota"),
        ("PUT", "/v1/orgs/acme/users/carol/roles/OrgManager"),
        ("POST", "/v1/orgs"),
        ("POST", "/v1/packages"),
        ("POST", "/v1/buildpacks"),
        ("POST", "/v1/quotas"),
        ("POST", "/v1/users"),
    ] {
        let (s, v) = status(&p, m, path, &carol).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{m} {path}: {v}");
    }
    assert_eq!(snapshot(&p), before, "the auditor changed something");
    let (_, v) = status(
        &p,
        "GET",
        "/v1/service-instances/a?org=acme&space=dev",
        &carol,
    )
    .await;
    assert_eq!(
        v["credentials"]["password"],
        crate::apps::HIDDEN_VALUE,
        "{v}"
    );
    let (_, v) = status(&p, "GET", "/v1/apps/a/env?org=acme&space=dev", &carol).await;
    assert_eq!(
        v["environment_variables"]["SECRET"],
        crate::apps::HIDDEN_VALUE,
        "{v}"
    );
    assert!(!v.to_string().contains("s3cret"), "{v}");
    for path in [
        "/v1/apps/a?org=acme&space=dev",
        "/v1/apps?org=acme&space=dev",
    ] {
        let (_, v) = status(&p, "GET", path, &carol).await;
        let app = if v.is_array() { &v[0] } else { &v };
        assert_eq!(
            app["env"]["SECRET"],
            crate::apps::HIDDEN_VALUE,
            "{path}: {v}"
        );
        assert!(!v.to_string().contains("s3cret"), "{v}");
    }
}

#[tokio::test]
async fn a_developer_pushes_and_scales_and_losing_the_role_counts_on_the_next_request() {
    let (p, alice, _, _) = two_spaces().await;
    let q = "?org=acme&space=dev";
    let (s, v) = status(&p, "PUT", &format!("/v1/apps/new{q}"), &alice).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = p
        .call_with(
            "PUT",
            &format!("/v1/apps/a/processes/web{q}"),
            Some(json!({"instances": 2}).to_string().into_bytes()),
            Some(&alice),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    p.eventually("two instances of a", || {
        (p.fake.running(Kind::Instance).len() == 3).then_some(())
    })
    .await;
    // Events name who made the change.
    let (_, v) = status(&p, "GET", &format!("/v1/apps/a/events{q}"), &alice).await;
    assert!(
        v.as_array().unwrap().iter().any(|e| e["actor"] == "alice"),
        "{v}"
    );
    role(
        &p,
        "DELETE",
        "/v1/orgs/acme/spaces/dev/users/alice/roles/SpaceDeveloper",
    )
    .await;
    let (s, v) = status(&p, "GET", &format!("/v1/apps/a{q}"), &alice).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(v["message"], "space dev not found in org acme");
    // Given back as an auditor: she reads again, and may not scale.
    role(
        &p,
        "PUT",
        "/v1/orgs/acme/spaces/dev/users/alice/roles/SpaceAuditor",
    )
    .await;
    let (s, _) = status(&p, "GET", &format!("/v1/apps/a{q}"), &alice).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = status(&p, "PUT", &format!("/v1/apps/a/processes/web{q}"), &alice).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn managers_give_roles_where_they_manage_and_nowhere_else() {
    let (p, alice, bob, carol) = two_spaces().await;
    let dave = user(&p, "dave").await;
    // carol manages dev as well.
    role(
        &p,
        "PUT",
        "/v1/orgs/acme/spaces/dev/users/carol/roles/SpaceManager",
    )
    .await;
    let dev = "/v1/orgs/acme/spaces/dev/users";
    let (s, v) = status(
        &p,
        "PUT",
        &format!("{dev}/dave/roles/SpaceDeveloper"),
        &carol,
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    // Dave is now in the org, as an OrgUser, and a developer of dev.
    let (_, v) = p.call("GET", "/v1/orgs/acme/users", None).await;
    assert!(
        v.as_array()
            .unwrap()
            .contains(&json!({"user": "dave", "roles": ["OrgUser"]})),
        "{v}"
    );
    let (s, _) = status(&p, "GET", "/v1/apps/a?org=acme&space=dev", &dave).await;
    assert_eq!(s, StatusCode::OK);
    let before = snapshot(&p);
    // Not in prod, which carol cannot see; not org roles; a developer gives nothing.
    let (s, _) = status(
        &p,
        "PUT",
        "/v1/orgs/acme/spaces/prod/users/dave/roles/SpaceDeveloper",
        &carol,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = status(
        &p,
        "PUT",
        "/v1/orgs/acme/users/dave/roles/OrgManager",
        &carol,
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = status(
        &p,
        "PUT",
        &format!("{dev}/bob/roles/SpaceDeveloper"),
        &alice,
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = status(&p, "PUT", &format!("{dev}/bob/roles/SpaceManager"), &bob).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(snapshot(&p), before);
    // An org manager gives anything in the org, and sees every space.
    role(&p, "PUT", "/v1/orgs/acme/users/dave/roles/OrgManager").await;
    let (s, _) = status(
        &p,
        "PUT",
        "/v1/orgs/acme/spaces/prod/users/carol/roles/SpaceAuditor",
        &dave,
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, v) = status(&p, "GET", "/v1/orgs/acme/spaces/prod/users", &dave).await;
    assert_eq!(
        v,
        json!([{"user": "bob", "roles": ["SpaceDeveloper"]}, {"user": "carol", "roles": ["SpaceAuditor"]}])
    );
}

#[tokio::test]
async fn refused_role_changes_say_why_and_write_nothing() {
    let (p, _, _, _) = two_spaces().await;
    let before = snapshot(&p);
    let cases = [
        (
            "PUT",
            "/v1/orgs/acme/users/alice/roles/Owner",
            StatusCode::BAD_REQUEST,
            "unknown role \"Owner\"; roles are OrgUser, OrgManager",
        ),
        (
            "PUT",
            "/v1/orgs/acme/users/alice/roles/SpaceDeveloper",
            StatusCode::BAD_REQUEST,
            "SpaceDeveloper is a space role",
        ),
        (
            "PUT",
            "/v1/orgs/acme/spaces/dev/users/alice/roles/OrgManager",
            StatusCode::BAD_REQUEST,
            "OrgManager is an org role",
        ),
        (
            "PUT",
            "/v1/orgs/acme/users/zed/roles/OrgUser",
            StatusCode::NOT_FOUND,
            "user zed not found",
        ),
        (
            "PUT",
            "/v1/orgs/nope/users/alice/roles/OrgUser",
            StatusCode::NOT_FOUND,
            "org nope not found",
        ),
        (
            "PUT",
            "/v1/orgs/acme/spaces/nope/users/alice/roles/SpaceAuditor",
            StatusCode::NOT_FOUND,
            "space nope not found in org acme",
        ),
        (
            "DELETE",
            "/v1/orgs/acme/users/alice/roles/OrgUser",
            StatusCode::CONFLICT,
            "alice holds roles in spaces of org acme (dev)",
        ),
    ];
    for (m, path, want, says) in cases {
        let (s, v) = p.call(m, path, None).await;
        assert_eq!(s, want, "{m} {path}: {v}");
        assert!(
            v["message"].as_str().unwrap().contains(says),
            "{m} {path}: {v}"
        );
    }
    assert_eq!(
        snapshot(&p),
        before,
        "a refused role change wrote something"
    );
}

#[tokio::test]
async fn roles_go_with_their_user_their_space_and_their_org() {
    let (p, alice, _, _) = two_spaces().await;
    let guid = |name: &str| p.store.users().unwrap().get(name).unwrap().unwrap().guid;
    let (carol, bob) = (guid("carol"), guid("bob"));
    let roles = p.store.roles().unwrap();
    assert_eq!(
        roles.of_user(&carol).unwrap().len(),
        2,
        "SpaceAuditor and OrgUser"
    );
    let (s, _) = p.call("DELETE", "/v1/users/carol", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(roles.of_user(&carol).unwrap().is_empty());
    let (s, _) = p.call("DELETE", "/v1/orgs/acme/spaces/prod", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let left: Vec<_> = roles
        .of_user(&bob)
        .unwrap()
        .into_iter()
        .map(|r| r.role)
        .collect();
    assert_eq!(left, [pier_api::Role::OrgUser]);
    let (s, _) = p.call("DELETE", "/v1/orgs/acme", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(roles.of_user(&bob).unwrap().is_empty());
    // A new org of the same name is not alice's.
    space(&p, "acme", "dev").await;
    let (s, _) = status(&p, "GET", "/v1/orgs/acme", &alice).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
