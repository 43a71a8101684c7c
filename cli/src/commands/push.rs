//! `pier push`: pack → upload → configure → stage → start → wait.
//!
//! Everything that can be checked locally (names, flags, the manifest, the folder, symlinks in it)
//! is checked before the first request, so a mistake never leaves a half-pushed app behind.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use futures_util::TryStreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use pier_api::{AppConfigRequest, AppName, BuildRequest, ProcessConfigRequest, ProcessType};

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
    /// Buildpack folders uploaded with the app: (index in `config.buildpacks`, folder).
    pub local_buildpacks: Vec<(usize, PathBuf)>,
    /// Manifest `processes:` other than web, applied after staging (when the types exist).
    pub processes: Vec<(ProcessType, ProcessConfigRequest)>,
}

/// The only stack there is (what `CF_STACK` says during staging).
pub const STACK: &str = "pier-bookworm";

pub async fn run(args: PushArgs) -> Result<()> {
    let cwd = std::env::current_dir().context("cannot read the current folder")?;
    let plans = plan(&args, &cwd)?;
    // Pack every app before connecting: an escaping symlink or unreadable file fails the push
    // with nothing sent.
    let mut packed = Vec::with_capacity(plans.len());
    let mut buildpacks = Vec::with_capacity(plans.len());
    for p in &plans {
        let mut local = Vec::new();
        for (_, path) in &p.local_buildpacks {
            local.push(super::create_buildpack::prepare(path)?);
        }
        buildpacks.push(local);
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
    for ((plan, pack), local) in plans.into_iter().zip(packed).zip(buildpacks) {
        push_one(&client, plan, pack, local, args.no_start, &args.deploy).await?;
    }
    Ok(())
}

/// Resolves the apps to push from the manifest and the flags (flags win), without any I/O beyond
/// reading the manifest and checking the folders exist.
pub fn plan(args: &PushArgs, cwd: &Path) -> Result<Vec<Plan>> {
    let vars_files: Vec<PathBuf> = args.vars_files.iter().map(|f| cwd.join(f)).collect();
    let vars = manifest::collect_vars(&args.vars, &vars_files)?;
    let loaded = if args.no_manifest {
        None
    } else if let Some(path) = &args.manifest {
        Some(manifest::load_with_vars(&cwd.join(path), &vars)?)
    } else {
        manifest::find_in(cwd)
            .map(|file| manifest::load_with_vars(&file, &vars))
            .transpose()?
    };
    if loaded.is_none() && !(args.vars.is_empty() && args.vars_files.is_empty()) {
        return Err(
            Failure::new("--var and --vars-file fill in a manifest, and there is none")
                .hint("add -f MANIFEST, or drop the variables")
                .into(),
        );
    }

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
            vec![resolve(
                args,
                name,
                path,
                &AppManifest::default(),
                cwd,
                cwd,
            )?]
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
        check_processes(p)?;
    }
    Ok(plans)
}

/// Manifest processes other than web must be Procfile types: staging makes processes from the
/// Procfile, and a process the droplet doesn't declare can't be configured.
fn check_processes(p: &Plan) -> Result<()> {
    if p.processes.is_empty() {
        return Ok(());
    }
    let procfile = std::fs::read_to_string(p.path.join("Procfile")).unwrap_or_default();
    let types: Vec<&str> = procfile
        .lines()
        .filter_map(|l| l.split_once(':').map(|(k, _)| k.trim()))
        .collect();
    for (kind, _) in &p.processes {
        if !types.contains(&kind.as_str()) {
            return Err(Failure::new(format!(
                "{}: the manifest configures process type {kind}, which the app's Procfile doesn't declare",
                p.name
            ))
            .hint(format!(
                "add `{kind}: COMMAND` to {}/Procfile (every Procfile type becomes a process)",
                p.path.display()
            ))
            .into());
        }
    }
    Ok(())
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
    selected
        .into_iter()
        .map(|(name, app)| {
            let path = match (&args.path, m.app_path(app)) {
                (Some(p), _) => cwd.join(p),
                (None, Some(p)) => {
                    check_inside(&name, &p, manifest_dir, args.allow_outside)?;
                    p
                }
                (None, None) => manifest_dir.to_path_buf(),
            };
            resolve(args, name, path, app, cwd, manifest_dir)
        })
        .collect()
}

/// Refuses a manifest `path:` that leaves the manifest's folder, unless allowed.
fn check_inside(name: &AppName, path: &Path, manifest_dir: &Path, allowed: bool) -> Result<()> {
    if allowed {
        return Ok(());
    }
    let real = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let (path, dir) = (real(path), real(manifest_dir));
    if path.starts_with(&dir) {
        return Ok(());
    }
    Err(Failure::new(format!(
        "{name}: the manifest's path {} is outside the manifest's folder {}",
        path.display(),
        dir.display()
    ))
    .hint("push with --allow-outside to upload that folder anyway")
    .into())
}

/// A buildpack entry that names a folder rather than an installed buildpack.
fn is_local_buildpack(b: &str) -> bool {
    b.starts_with("./")
        || b.starts_with("../")
        || b.starts_with('/')
        || b.starts_with("~/")
        || b == "."
}

/// The app's buildpack list (`None`: keep the controller's) and the folders among them, by
/// position. Buildpack folders are relative to where they were written: the flags' to the current
/// folder, the manifest's to the manifest's folder.
type Buildpacks = (Option<Vec<String>>, Vec<(usize, PathBuf)>);

fn resolve_buildpacks(
    args: &PushArgs,
    name: &AppName,
    app: &AppManifest,
    cwd: &Path,
    manifest_dir: &Path,
) -> Result<Buildpacks> {
    let (buildpacks, base) = if args.buildpacks.is_empty() {
        (app.buildpack_list(), manifest_dir)
    } else {
        (Some(args.buildpacks.clone()), cwd)
    };
    // `default` and `null` mean "detect", as in cf; detection is an empty list here.
    let buildpacks = buildpacks.map(|list| {
        list.into_iter()
            .filter(|b| b != "default" && b != "null")
            .collect::<Vec<_>>()
    });
    let mut local_buildpacks = Vec::new();
    if let Some(list) = &buildpacks {
        for (i, b) in list.iter().enumerate() {
            if is_local_buildpack(b) {
                let p = match b.strip_prefix("~/") {
                    Some(rest) => std::env::var_os("HOME")
                        .map(PathBuf::from)
                        .unwrap_or_default()
                        .join(rest),
                    None => base.join(b),
                };
                local_buildpacks.push((i, p));
            } else if b.contains("://") {
                return Err(Failure::new(format!(
                    "{name}: buildpack {b} is a URL; staging has no network, so Pier can't fetch it"
                ))
                .hint("download it and push with -b ./path/to/buildpack, or install it with pier create-buildpack")
                .into());
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (_, p) in &local_buildpacks {
            let n = super::create_buildpack::name_from_path(p);
            if !names.insert(n.clone()) {
                return Err(Failure::new(format!(
                    "{name}: two buildpack folders would both be called {n}"
                ))
                .hint("rename one of the folders")
                .into());
            }
        }
    }
    Ok((buildpacks, local_buildpacks))
}

/// Flags over the manifest; only what either gives is sent, so the controller keeps the rest.
/// Precedence for the web process: flags > app-level manifest fields > `processes: - type: web`.
fn resolve(
    args: &PushArgs,
    name: AppName,
    path: PathBuf,
    app: &AppManifest,
    cwd: &Path,
    manifest_dir: &Path,
) -> Result<Plan> {
    let (buildpacks, local_buildpacks) = resolve_buildpacks(args, &name, app, cwd, manifest_dir)?;
    if let Some(stack) = &app.stack {
        if stack != STACK {
            return Err(Failure::new(format!(
                "{name}: stack {stack} is not available; this platform has one stack, {STACK}"
            ))
            .hint(format!("write `stack: {STACK}` or leave stack out"))
            .into());
        }
    }
    let web = app.web_process();
    let processes = app
        .processes
        .iter()
        .flatten()
        .filter(|p| !p.kind.is_web())
        .map(|p| (p.kind.clone(), p.request()))
        .collect();
    Ok(Plan {
        name,
        path,
        config: AppConfigRequest {
            instances: args
                .instances
                .or(app.instances)
                .or(web.and_then(|w| w.instances)),
            memory_mb: args
                .memory_mb
                .or(app.memory_mb)
                .or(web.and_then(|w| w.memory_mb)),
            disk_mb: args.disk_mb.or(app.disk_mb).or(web.and_then(|w| w.disk_mb)),
            command: args
                .command
                .clone()
                .or_else(|| app.command.clone())
                .or_else(|| web.and_then(|w| w.command.clone())),
            buildpacks,
            env: app.env.clone(),
            routes: app.routes.clone(),
            no_route: app.no_route,
            random_route: app.random_route,
            health_check: app
                .health_check()
                .or_else(|| web.and_then(|w| w.health_check())),
        },
        local_buildpacks,
        processes,
    })
}

async fn push_one(
    client: &Client,
    mut plan: Plan,
    packed: Packed,
    local: Vec<super::create_buildpack::LocalBuildpack>,
    no_start: bool,
    deploy: &crate::args::DeployArgs,
) -> Result<()> {
    let name = plan.name.clone();
    let name = &name;
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
    // Buildpack folders go up as packages too; the app names them NAME@sha256:HEX.
    for ((i, path), bp) in plan.local_buildpacks.iter().zip(local) {
        let sha = super::create_buildpack::upload(client, bp).await?;
        let bp_name = super::create_buildpack::name_from_path(path);
        println!(
            "Uploaded buildpack {bp_name} from {} ({})",
            path.display(),
            super::app::short(&sha)
        );
        if let Some(list) = plan.config.buildpacks.as_mut() {
            list[*i] = pier_api::buildpacks::uploaded_buildpack_ref(&bp_name, &sha);
        }
    }

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
    for (kind, req) in &plan.processes {
        client.put_process(name, kind, req).await?;
        println!("Configured process {kind} from the manifest");
    }
    if no_start {
        println!(
            "{name} is staged but not started (--no-start): run `pier start {name}` to start it."
        );
        return Ok(());
    }
    println!("Starting {name}...");
    // The instances' first output, live, until they run (the stream opens before the start).
    let output = super::logs::show_startup(name).await;
    let _ = &droplet;
    let app = match client.deploy(name, &deploy.request()).await {
        Ok(d) => super::wait::until_deployed(client, name, &d).await,
        Err(e) => Err(e.into()),
    };
    if let Some(task) = output {
        task.abort();
    }
    let app = app?;
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
