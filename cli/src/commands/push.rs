//! `pier push`: pack → upload → configure → stage → start → wait.
//!
//! Everything that can be checked locally (names, flags, the manifest, the folder, symlinks in it)
//! is checked before the first request, so a mistake never leaves a half-pushed app behind.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use futures_util::TryStreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use pier_api::{AppConfigRequest, AppName, BuildRequest};

use crate::archive::{self, Packed};
use crate::args::PushArgs;
use crate::client::Client;
use crate::manifest::{self, AppManifest, LoadedManifest};
use crate::output::{self, format_bytes, Failure};

/// One app to push, fully resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub name: AppName,
    pub path: PathBuf,
    pub config: AppConfigRequest,
}

pub async fn run(args: PushArgs) -> Result<()> {
    let cwd = std::env::current_dir().context("cannot read the current folder")?;
    let plans = plan(&args, &cwd)?;
    // Pack every app before connecting: an escaping symlink or unreadable file fails the push
    // with nothing sent.
    let mut packed = Vec::with_capacity(plans.len());
    for p in &plans {
        let path = p.path.clone();
        let pack = tokio::task::spawn_blocking(move || archive::pack(&path))
            .await
            .context("packing the app stopped unexpectedly")?
            .with_context(|| format!("cannot pack {}", p.path.display()))?;
        for skipped in &pack.skipped {
            eprintln!(
                "warning: left out {}: not a file, folder or symlink",
                skipped.display()
            );
        }
        packed.push(pack);
    }
    let client = super::connect()?;
    for (plan, pack) in plans.into_iter().zip(packed) {
        push_one(&client, plan, pack, args.no_start).await?;
    }
    Ok(())
}

/// Resolves the apps to push from the manifest and the flags (flags win), without any I/O beyond
/// reading the manifest and checking the folders exist.
pub fn plan(args: &PushArgs, cwd: &Path) -> Result<Vec<Plan>> {
    let loaded = if args.no_manifest {
        None
    } else if let Some(path) = &args.manifest {
        Some(manifest::load(&cwd.join(path))?)
    } else {
        manifest::find_in(cwd)
            .map(|file| manifest::load(&file))
            .transpose()?
    };

    let plans = match &loaded {
        None => {
            let name = args.name.clone().ok_or_else(|| {
                Failure::new("no app name given")
                    .hint("run `pier push NAME`, or add a manifest.yml with applications[].name")
            })?;
            let path = args
                .path
                .as_ref()
                .map_or_else(|| cwd.to_path_buf(), |p| cwd.join(p));
            vec![resolve(args, name, path, &AppManifest::default())]
        }
        Some(m) => from_manifest(args, cwd, m)?,
    };
    for p in &plans {
        if !p.path.exists() {
            return Err(Failure::new(format!(
                "the app folder {} does not exist",
                p.path.display()
            ))
            .hint("give the folder with -p PATH, or fix `path:` in the manifest")
            .into());
        }
    }
    Ok(plans)
}

fn from_manifest(args: &PushArgs, cwd: &Path, m: &LoadedManifest) -> Result<Vec<Plan>> {
    let apps = &m.manifest.applications;
    let file = m.file.display();
    let selected: Vec<(AppName, &AppManifest)> = match &args.name {
        // One app in the manifest: NAME renames it, as `cf push NAME` does.
        Some(name) if apps.len() == 1 => vec![(name.clone(), &apps[0])],
        Some(name) => {
            let app = apps
                .iter()
                .find(|a| a.name.as_ref() == Some(name))
                .ok_or_else(|| {
                    Failure::new(format!("{file} has no app named {name}"))
                        .hint("push one of the manifest's apps, or use --no-manifest")
                })?;
            vec![(name.clone(), app)]
        }
        None => apps
            .iter()
            .enumerate()
            .map(|(i, a)| {
                a.name.clone().map(|n| (n, a)).ok_or_else(|| {
                    Failure::new(format!("{file}: applications[{i}] has no name"))
                        .hint("add `name:` to it, or run `pier push NAME`")
                })
            })
            .collect::<Result<_, _>>()?,
    };
    if selected.len() > 1 && args.has_app_flags() {
        return Err(Failure::new(format!(
            "{file} lists {} apps, and flags like -p, -i, -m, -k, -b and -c apply to one app",
            selected.len()
        ))
        .hint("name the app to push: `pier push NAME ...`")
        .into());
    }
    let manifest_dir = m.file.parent().unwrap_or(cwd);
    Ok(selected
        .into_iter()
        .map(|(name, app)| {
            let path = match (&args.path, m.app_path(app)) {
                (Some(p), _) => cwd.join(p),
                (None, Some(p)) => p,
                (None, None) => manifest_dir.to_path_buf(),
            };
            resolve(args, name, path, app)
        })
        .collect())
}

/// Flags over the manifest; only what either gives is sent, so the controller keeps the rest.
fn resolve(args: &PushArgs, name: AppName, path: PathBuf, app: &AppManifest) -> Plan {
    let buildpacks = if args.buildpacks.is_empty() {
        app.buildpack_list()
    } else {
        Some(args.buildpacks.clone())
    }
    // `default` and `null` mean "detect", as in cf; detection is an empty list here.
    .map(|list| {
        list.into_iter()
            .filter(|b| b != "default" && b != "null")
            .collect::<Vec<_>>()
    });
    Plan {
        name,
        path,
        config: AppConfigRequest {
            instances: args.instances.or(app.instances),
            memory_mb: args.memory_mb.or(app.memory_mb),
            disk_mb: args.disk_mb.or(app.disk_mb),
            command: args.command.clone().or_else(|| app.command.clone()),
            buildpacks,
            env: app.env.clone(),
            routes: app.routes.clone(),
            no_route: app.no_route,
            random_route: app.random_route,
            health_check: app.health_check(),
        },
    }
}

async fn push_one(client: &Client, plan: Plan, packed: Packed, no_start: bool) -> Result<()> {
    let name = &plan.name;
    println!(
        "Pushing {name} from {} ({} entries, {})",
        plan.path.display(),
        packed.entries,
        format_bytes(packed.size)
    );
    let info = client.info().await?;
    if packed.size > info.max_package_bytes {
        return Err(Failure::new(format!(
            "the package for {name} is {}, over the controller's limit of {}",
            format_bytes(packed.size),
            format_bytes(info.max_package_bytes)
        ))
        .hint("list what the app doesn't need to run in .cfignore")
        .into());
    }
    let package = upload(client, packed).await?;
    println!("Uploaded package {}", super::app::short(&package.sha256));

    client.put_app(name, &plan.config).await?;

    // Staged even with --no-start: a build is what makes the upload the app's package, and it
    // leaves a droplet so `pier start` can run it later.
    let droplet = super::stage::run(
        client,
        name,
        &BuildRequest {
            package: Some(package.sha256.clone()),
        },
    )
    .await?;
    if no_start {
        println!(
            "{name} is staged but not started (--no-start): run `pier start {name}` to start it."
        );
        return Ok(());
    }
    println!("Starting {name}...");
    let app = client.action(name, "start").await?;
    let app = super::wait::until_running(client, app, &droplet.sha256).await?;
    super::wait::print_running(&app);
    Ok(())
}

/// Streams the package with a progress bar on stderr (hidden when stderr isn't a terminal).
async fn upload(client: &Client, packed: Packed) -> Result<pier_api::PackageResponse> {
    let bar = if output::stderr_is_terminal() {
        let bar = ProgressBar::new(packed.size);
        if let Ok(style) = ProgressStyle::with_template(
            "Uploading [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let counter = bar.clone();
    let file = tokio::fs::File::from_std(packed.file);
    let body = tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024)
        .inspect_ok(move |chunk| counter.inc(chunk.len() as u64));
    let result = client.upload_package(body, packed.size).await;
    bar.finish_and_clear();
    Ok(result?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(argv: &[&str]) -> PushArgs {
        let mut full = vec!["pier", "push"];
        full.extend(argv);
        match crate::args::Cli::parse_from(full).command {
            crate::args::Command::Push(p) => p,
            _ => unreachable!(),
        }
    }

    #[test]
    fn flags_override_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("site")).unwrap();
        std::fs::write(
            dir.path().join("manifest.yml"),
            "applications:\n- name: hello\n  path: site\n  instances: 3\n  memory: 128M\n  buildpack: python\n  env: {A: b}\n",
        )
        .unwrap();
        let plans = plan(&args(&["-i", "1", "-b", "staticfile"]), dir.path()).unwrap();
        assert_eq!(plans.len(), 1);
        let p = &plans[0];
        assert_eq!(p.name.as_str(), "hello");
        assert_eq!(p.path, dir.path().join("site"));
        assert_eq!(p.config.instances, Some(1));
        assert_eq!(p.config.memory_mb, Some(128));
        assert_eq!(p.config.buildpacks, Some(vec!["staticfile".to_string()]));
        assert_eq!(p.config.env.as_ref().unwrap()["A"], "b");

        // NAME renames the manifest's only app; --no-manifest ignores it.
        let plans = plan(&args(&["other"]), dir.path()).unwrap();
        assert_eq!(plans[0].name.as_str(), "other");
        let plans = plan(&args(&["other", "--no-manifest"]), dir.path()).unwrap();
        assert_eq!(plans[0].config, AppConfigRequest::default());
        assert_eq!(plans[0].path, dir.path());
    }

    #[test]
    fn several_apps_push_in_order_or_one_by_name() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["a", "b"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        std::fs::write(
            dir.path().join("manifest.yml"),
            "applications:\n- name: a\n  path: a\n- name: b\n  path: b\n",
        )
        .unwrap();
        let names = |plans: Vec<Plan>| {
            plans
                .into_iter()
                .map(|p| p.name.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(plan(&args(&[]), dir.path()).unwrap()), ["a", "b"]);
        assert_eq!(names(plan(&args(&["b"]), dir.path()).unwrap()), ["b"]);
        assert!(plan(&args(&["c"]), dir.path()).is_err());
        assert!(plan(&args(&["-i", "2"]), dir.path()).is_err());
    }

    #[test]
    fn needs_a_name_and_an_existing_folder() {
        let dir = tempfile::tempdir().unwrap();
        assert!(plan(&args(&[]), dir.path()).is_err());
        let err = plan(&args(&["x", "-p", "missing"]), dir.path()).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
