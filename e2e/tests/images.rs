//! Apps as images: instances run the app's image, share it, and the image lives exactly as long as
//! its droplet.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)] // a test: panicking is failing

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use pier_e2e::pier_api::{AppResponse, InstanceState};
use pier_e2e::*;

fn fixture(name: &str) -> tempfile::TempDir {
    copy_dir(&repo_root().join("e2e/fixtures").join(name))
}

fn set_version(dir: &std::path::Path, v: &str) {
    std::fs::write(dir.join("VERSION"), v).unwrap();
}

/// Everything the running controller printed so far.
fn printed(p: &mut Platform) -> Vec<String> {
    let c = p.controller.as_mut().expect("a controller");
    c.printed().to_vec()
}

/// `repo:tag` of every image labelled with the controller and the app.
fn app_images(p: &Platform, app: &str) -> BTreeSet<String> {
    let out = docker_cli_ok(&[
        "images",
        "--filter",
        &format!("label=pier.controller={}", p.controller_id),
        "--filter",
        &format!("label=pier.app={app}"),
        "--format",
        "{{.Repository}}:{{.Tag}}",
    ]);
    out.lines().map(str::to_string).collect()
}

/// Images of the controller with no tag (left by a rebuild or a failed commit).
fn dangling(p: &Platform) -> String {
    docker_cli_ok(&[
        "images",
        "-q",
        "--filter",
        &format!("label=pier.controller={}", p.controller_id),
        "--filter",
        "dangling=true",
    ])
}

/// The image name and image id a container runs.
fn image_of(container: &str) -> (String, String) {
    let out = docker_cli_ok(&["inspect", "-f", "{{.Config.Image}} {{.Image}}", container]);
    let (name, id) = out.split_once(' ').unwrap();
    (name.to_string(), id.to_string())
}

fn running(app: &Option<AppResponse>) -> usize {
    app.as_ref().map_or(0, |a| {
        a.instances
            .iter()
            .filter(|i| i.state == InstanceState::Running)
            .count()
    })
}

#[test]
fn instances_run_the_apps_image_which_lives_as_long_as_its_droplet() {
    let mut p = Platform::start_with(Options {
        controller_args: vec!["--revisions-kept".into(), "2".into()],
        ..Default::default()
    });
    let app = fixture("versioned");
    set_version(app.path(), "1");
    p.pier_ok(&["push", "imgs", "-i", "2"], app.path());
    let ids = p.instance_ids("imgs");
    assert_eq!(ids.len(), 2);

    // Both instances run the app's own image (not the stack), the same one: its layers are shared.
    let (name, image_id) = image_of(&ids[0]);
    assert_eq!(image_of(&ids[1]), (name.clone(), image_id.clone()));
    assert!(
        name.starts_with(&format!("pier-{}/imgs:", p.controller_id)),
        "{name}"
    );
    assert_eq!(app_images(&p, "imgs"), BTreeSet::from([name.clone()]));
    let stack = docker_cli_ok(&[
        "image",
        "inspect",
        "-f",
        "{{.Id}}",
        "pier-stack:bookworm-v2",
    ]);
    assert_ne!(image_id, stack);
    // The droplet is in the image, not copied into the containers: their own layers hold only
    // what the app wrote.
    for id in &ids {
        let diff = docker_cli_ok(&["diff", id]);
        assert!(
            !diff.lines().any(|l| l.contains("/home/vcap/app/app.py")),
            "the droplet was copied into {id}:\n{diff}"
        );
        let ls = docker_cli_ok(&["exec", id, "ls", "/home/vcap/app"]);
        assert!(ls.contains("app.py"), "{ls}");
    }
    let (s, body) = p.get_via_router("imgs.localhost", "/");
    assert_eq!(s, 200);
    assert!(body.starts_with("version=1"), "{body}");

    // `pier app --json` answers at once with sampled figures and their time.
    let stats = eventually(Duration::from_secs(20), "sampled stats", || {
        let t = Instant::now();
        let out = p.pier_ok(&["app", "imgs", "--json"], app.path());
        let took = t.elapsed();
        let a: AppResponse = serde_json::from_str(&out).unwrap();
        let sampled = a
            .instances
            .iter()
            .filter(|i| i.stats.as_ref().is_some_and(|s| s.sampled_at.is_some()))
            .count();
        (sampled == 2).then_some((a, took))
    });
    // Loosely: the whole CLI run (the benchmark measures the API itself).
    assert!(
        stats.1 < Duration::from_secs(2),
        "pier app took {:?}",
        stats.1
    );
    let st = stats.0.instances[0].stats.clone().unwrap();
    assert!(
        st.memory_bytes > 0 && st.memory_limit_bytes == 256 << 20,
        "{st:?}"
    );

    // kill -9 and restart: the same containers and the same image, nothing rebuilt.
    p.controller.as_mut().unwrap().kill9();
    p.start_controller();
    eventually(Duration::from_secs(30), "instances adopted", || {
        (running(&p.app("imgs")) == 2).then_some(())
    });
    assert_eq!(p.instance_ids("imgs"), ids);
    assert_eq!(image_of(&ids[0]).1, image_id);
    assert!(
        !printed(&mut p).iter().any(|l| l.contains("app image made")),
        "the restarted controller made no image"
    );
    assert_eq!(app_images(&p, "imgs"), BTreeSet::from([name.clone()]));

    // An image removed behind the controller's back is made again before the next start.
    p.pier_ok(&["stop", "imgs"], app.path());
    eventually(Duration::from_secs(30), "instances gone", || {
        p.instance_ids("imgs").is_empty().then_some(())
    });
    docker_cli_ok(&["rmi", "-f", &name]);
    assert!(
        docker_cli_ok(&["images", "-q", &name]).is_empty(),
        "{name} removed"
    );
    p.pier_ok(&["start", "imgs"], app.path());
    let ids = p.instance_ids("imgs");
    assert_eq!(ids.len(), 2);
    let (again, again_id) = image_of(&ids[0]);
    assert_eq!(again, name, "the same name, made from the same droplet");
    // Made again from the same droplet on the same stack: the same content, so the same id.
    assert_eq!(again_id, image_id, "the image is reproducible");
    assert!(
        printed(&mut p).iter().any(|l| l.contains("app image made")),
        "the image was made again"
    );
    let (s, body) = p.get_via_router("imgs.localhost", "/");
    assert_eq!(s, 200);
    assert!(body.starts_with("version=1"), "{body}");

    // New versions: each revision has its image; the pruned revision's image goes with it.
    set_version(app.path(), "2");
    p.pier_ok(&["push", "imgs"], app.path());
    assert_eq!(app_images(&p, "imgs").len(), 2);
    set_version(app.path(), "3");
    p.pier_ok(&["push", "imgs"], app.path());
    let now = image_of(&p.instance_ids("imgs")[0]).0;
    let kept = eventually(Duration::from_secs(30), "revision 1's image pruned", || {
        let imgs = app_images(&p, "imgs");
        (imgs.len() == 2 && !imgs.contains(&name)).then_some(imgs)
    });
    assert!(kept.contains(&now), "{kept:?}");
    let (_, body) = p.get_via_router("imgs.localhost", "/");
    assert!(body.starts_with("version=3"), "{body}");
    assert_eq!(dangling(&p), "", "no untagged image left");

    // Delete: the images go with the app.
    p.pier_ok(&["delete", "imgs", "-f"], app.path());
    eventually(Duration::from_secs(30), "images removed", || {
        app_images(&p, "imgs").is_empty().then_some(())
    });
    assert_eq!(dangling(&p), "");
}

#[test]
fn a_droplet_that_cannot_become_an_image_fails_the_build_and_leaves_no_image() {
    use std::os::unix::fs::PermissionsExt;
    let p = Platform::start();
    // A buildpack pushed with the app whose droplet holds an entry climbing out of /home/vcap.
    let bp = fixture("bp-escaping");
    for e in std::fs::read_dir(bp.path().join("bin")).unwrap().flatten() {
        std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let app = fixture("escaping-app");
    let out = p.pier(
        &["push", "escapee", "-b", bp.path().to_str().unwrap()],
        app.path(),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("escaping compile"),
        "the buildpack ran: {text}"
    );
    assert!(
        text.contains("the droplet cannot become an image")
            && text.contains("../../etc/cron.d/evil"),
        "{text}"
    );
    assert!(p.instance_ids("escapee").is_empty(), "nothing started");
    assert!(app_images(&p, "escapee").is_empty());
    assert_eq!(dangling(&p), "");
    let a = p.app("escapee").unwrap();
    assert!(a.droplet.is_none(), "no droplet recorded: {a:?}");
}
