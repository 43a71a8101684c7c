//! Routes: several per app, host plus path with the longest prefix winning, map and unmap, and
//! the refusals (a route of another app, a reserved host name) that change nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)] // a test: panicking is failing

use pier_e2e::*;

#[test]
fn path_routes_map_unmap_and_refusals() {
    let p = Platform::start();
    let front = copy_dir(&repo_root().join("examples/python-app"));
    // Answers any path with JSON (the router passes the full path on, as gorouter does).
    let docs = copy_dir(&repo_root().join("e2e/fixtures/envdump"));
    p.pier_ok(&["push", "front"], front.path());
    p.pier_ok(&["push", "docs"], docs.path());

    // docs also answers under front.localhost/docs: the longer prefix wins there.
    let out = p.pier_ok(
        &[
            "map-route",
            "docs",
            "localhost",
            "--hostname",
            "front",
            "--path",
            "/docs",
        ],
        docs.path(),
    );
    assert!(out.contains("Mapped front.localhost/docs to docs"), "{out}");
    let (s, body) = p.get_via_router("front.localhost", "/docs/page");
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("\"env\""), "served by docs: {body}");
    let (s, body) = p.get_via_router("front.localhost", "/");
    assert_eq!(s, 200);
    assert!(body.contains("Hello from Pier"), "{body}");
    let (_, body) = p.get_via_router("front.localhost", "/docsx");
    assert!(
        !body.contains("\"env\""),
        "/docsx is not under /docs: {body}"
    );

    let listing = p.pier_ok(&["routes"], docs.path());
    assert!(
        listing.contains("front.localhost") && listing.contains("/docs"),
        "{listing}"
    );

    // Refused: a route another app has, and a reserved host name. Nothing changes.
    let before = p.pier_ok(&["routes", "--json"], docs.path());
    let out = p.pier(
        &["map-route", "front", "localhost", "--hostname", "docs"],
        front.path(),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already mapped to app docs"));
    let out = p.pier(
        &["map-route", "front", "localhost", "--hostname", "api"],
        front.path(),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("reserved"));
    assert_eq!(p.pier_ok(&["routes", "--json"], docs.path()), before);

    // Unmapped: front.localhost/docs goes to front again.
    p.pier_ok(
        &[
            "unmap-route",
            "docs",
            "localhost",
            "--hostname",
            "front",
            "--path",
            "/docs",
        ],
        docs.path(),
    );
    let (_, body) = p.get_via_router("front.localhost", "/docs/page");
    assert!(!body.contains("\"env\""), "{body}");
    let out = p.pier(
        &[
            "unmap-route",
            "docs",
            "localhost",
            "--hostname",
            "front",
            "--path",
            "/docs",
        ],
        docs.path(),
    );
    assert!(!out.status.success(), "unmapping twice is an error");
}
