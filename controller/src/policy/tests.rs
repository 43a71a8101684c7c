use std::collections::BTreeSet;

use super::*;

fn user(org: &[Role], space: &[Role]) -> Standing {
    Standing {
        org_roles: org.to_vec(),
        space_roles: space.to_vec(),
        ..Standing::default()
    }
}

/// Every `(method, path)` the HTTP modules declare with `.route(...)` in their `routes()` or
/// `router()` functions, read from the source.
fn declared_routes() -> BTreeSet<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let src = std::fs::read_to_string(&path).unwrap();
        for start in ["fn routes()", "fn router("] {
            let Some(at) = src.find(start) else { continue };
            let body = &src[at..];
            let body = &body[..body.find("\n}\n").unwrap()];
            for chunk in body.split(".route(").skip(1) {
                let p = chunk.split('"').nth(1).unwrap().to_string();
                for m in ["get", "post", "put", "delete", "patch"] {
                    let mut rest = chunk;
                    while let Some(i) = rest.find(&format!("{m}(")) {
                        let before = rest[..i].chars().last();
                        if matches!(
                            before,
                            None | Some('.') | Some(' ') | Some('\n') | Some('(')
                        ) {
                            out.insert((m.to_uppercase(), p.clone()));
                            break;
                        }
                        rest = &rest[i + 1..];
                    }
                }
            }
        }
    }
    assert!(
        out.len() > 40,
        "the route scan found too few routes: {out:?}"
    );
    out
}

#[test]
fn every_declared_route_is_in_the_table_and_every_entry_is_declared() {
    let declared = declared_routes();
    let table: BTreeSet<(String, String)> = ENDPOINTS
        .iter()
        .map(|e| (e.method.to_string(), e.path.to_string()))
        .collect();
    let missing: Vec<_> = declared.difference(&table).collect();
    assert!(
        missing.is_empty(),
        "routes missing from policy::ENDPOINTS: {missing:?}"
    );
    let stale: Vec<_> = table.difference(&declared).collect();
    assert!(
        stale.is_empty(),
        "policy entries no route declares: {stale:?}"
    );
    assert_eq!(
        table.len(),
        ENDPOINTS.len(),
        "an endpoint is in the table twice"
    );
}

#[test]
fn docs_roles_md_holds_the_generated_table() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/roles.md");
    let mut doc = std::fs::read_to_string(&path).unwrap();
    let table = render_docs();
    // `PIER_WRITE_DOCS=1 cargo test -p pier-controller docs_roles_md` rewrites the table (the rest
    // of the page is kept).
    if std::env::var_os("PIER_WRITE_DOCS").is_some() {
        let at = doc.find("| method | path |").unwrap_or(doc.len());
        doc.truncate(at);
        doc.push_str(&table);
        std::fs::write(&path, &doc).unwrap();
    }
    assert!(
        doc.contains(&table),
        "docs/roles.md is out of date with controller/src/policy.rs; rewrite its table with \
         PIER_WRITE_DOCS=1 cargo test -p pier-controller docs_roles_md"
    );
}

#[test]
fn the_admin_may_everything_and_the_router_only_its_two_endpoints() {
    let nobody = Standing::default();
    for e in ENDPOINTS {
        assert_eq!(
            nobody.decide(Caller::Admin, e.action),
            Decision::Allow,
            "{e:?}"
        );
        let router = nobody.decide(Caller::Router, e.action);
        let routers = matches!(
            e.action,
            Action::ReadRouteTable | Action::PostRouterLogs | Action::Public
        );
        assert_eq!(router == Decision::Allow, routers, "{e:?}");
    }
}

#[test]
fn a_user_with_no_role_sees_no_org_or_space_and_may_only_the_platform_reads() {
    let nobody = Standing::default();
    for e in ENDPOINTS {
        let d = nobody.decide(Caller::User, e.action);
        match e.action.level() {
            Level::Org | Level::Space => assert_eq!(d, Decision::Hidden, "{e:?}"),
            Level::Public => assert_eq!(d, Decision::Allow),
            Level::Platform => {
                let reads = matches!(
                    e.action,
                    Action::WhoAmI | Action::ListOrgs | Action::ReadQuotas | Action::ReadBuildpacks
                );
                assert_eq!(d == Decision::Allow, reads, "{e:?}");
            }
        }
    }
    let own = Standing {
        own: true,
        ..Standing::default()
    };
    assert_eq!(
        own.decide(Caller::User, Action::ChangePassword),
        Decision::Allow
    );
    assert_eq!(
        nobody.decide(Caller::User, Action::ChangePassword),
        Decision::Forbidden
    );
    let dev = Standing {
        developer_somewhere: true,
        ..Standing::default()
    };
    assert_eq!(
        dev.decide(Caller::User, Action::UploadPackage),
        Decision::Allow
    );
    assert_eq!(
        nobody.decide(Caller::User, Action::UploadPackage),
        Decision::Forbidden
    );
}

#[test]
fn auditors_read_and_change_nothing() {
    let auditor = user(&[Role::OrgUser], &[Role::SpaceAuditor]);
    let org_auditor = user(&[Role::OrgAuditor], &[]);
    for e in ENDPOINTS {
        let reads = e.method == "GET";
        if e.action.level() == Level::Space {
            let d = auditor.decide(Caller::User, e.action);
            assert_eq!(d == Decision::Allow, reads, "SpaceAuditor {e:?}");
            // An org auditor does not see into spaces.
            assert_eq!(org_auditor.decide(Caller::User, e.action), Decision::Hidden);
        }
        if e.action.level() == Level::Org {
            let d = org_auditor.decide(Caller::User, e.action);
            assert_eq!(d == Decision::Allow, reads, "OrgAuditor {e:?}");
        }
    }
    assert!(!auditor.sees_env());
    assert!(!user(&[Role::OrgManager], &[Role::SpaceManager]).sees_env());
    assert!(user(&[Role::OrgUser], &[Role::SpaceDeveloper]).sees_env());
}

#[test]
fn developers_change_apps_managers_give_roles_and_org_managers_see_every_space() {
    let dev = user(&[Role::OrgUser], &[Role::SpaceDeveloper]);
    let mgr = user(&[Role::OrgUser], &[Role::SpaceManager]);
    let org_mgr = user(&[Role::OrgManager], &[]);
    let member = user(&[Role::OrgUser], &[]);
    use Action::*;
    use Decision::*;
    let cases = [
        (&dev, ChangeApps, Allow),
        (&dev, ReadLogs, Allow),
        (&dev, ManageSpaceRoles, Forbidden),
        (&dev, CreateSpace, Forbidden),
        (&dev, DeleteSpace, Forbidden),
        (&mgr, ChangeApps, Forbidden),
        (&mgr, ReadApps, Allow),
        (&mgr, ManageSpaceRoles, Allow),
        (&mgr, ManageOrgRoles, Forbidden),
        (&org_mgr, ReadApps, Allow),
        (&org_mgr, ChangeApps, Forbidden),
        (&org_mgr, CreateSpace, Allow),
        (&org_mgr, DeleteSpace, Allow),
        (&org_mgr, ManageOrgRoles, Allow),
        (&org_mgr, DeleteOrg, Forbidden),
        (&org_mgr, AssignOrgQuota, Forbidden),
        (&org_mgr, AssignSpaceQuota, Allow),
        (&member, ReadOrg, Allow),
        (&member, ReadApps, Hidden),
        (&member, CreateSpace, Forbidden),
    ];
    for (who, action, want) in cases {
        assert_eq!(who.decide(Caller::User, action), want, "{who:?} {action:?}");
    }
}
