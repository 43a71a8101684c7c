//! App images: one local Docker image per (app, droplet, stack), the stack image plus the droplet
//! as one layer, which the app's instances run as they are (no copy per instance).
//!
//! ```text
//!  droplet blob (the source of truth) ──check entries──▶ layer tar under home/vcap/
//!        ──docker load (stack's layers + this one)──▶ pier-<controller>/<app>:<guid8>-<droplet16>-<stack8>
//! ```
//! Invariants:
//! - An image is made only from a droplet whose entries all stay inside `/home/vcap` (checked
//!   first, so a hostile buildpack's droplet fails its build with a clear message and leaves no
//!   image); the layer file is removed on every path.
//! - The name says what the image is made of, so finding it is enough to reuse it: a re-push of
//!   unchanged source, a restarted controller and every instance of a revision use the same image.
//! - Images go exactly when nothing refers to them any more: [`Images::collect`] removes every
//!   image labelled with this controller that no app's current droplet or kept revision names,
//!   which covers revision pruning, app deletes and failed stagings. An image removed behind the
//!   controller's back is made again from the droplet before the next start ([`Images::ensure`]).
//! - With a registry (`--registry`, see `registry.rs`), an image is in use only once it is also
//!   in the registry as `HOST:PORT/<its name>`: it is tagged so and pushed when made, and pushed
//!   again before use when the registry lacks it. A push that fails fails the build or the start,
//!   naming the registry, and takes its registry tag back (and the image, if it was just made).
//! - With a registry, an image goes from the registry (its manifest) before it goes locally; while
//!   the registry cannot be reached the image is kept, to be collected on a later pass. Its local
//!   registry tag goes with it.
//!
//! Uses: `runtime/`, `store/` (blobs), `staging/package` (the entry checks), `registry`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use pier_api::ErrorCode;

use crate::error::{Error, Result};
use crate::registry::{split_reference, Registry};
use crate::runtime::labels::keys;
use crate::runtime::{ContainerRuntime, Kind, Labels, LayerImageSpec};
use crate::store::BlobStore;

/// Label naming the stack image an app image was made from.
const STACK_LABEL: &str = "pier.stack";

/// What one app image is made of.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageKey {
    pub app_name: String,
    pub app_guid: String,
    pub droplet: String,
    pub stack: String,
}

/// `pier-<controller>/`, lowercase: how the name of every app image of a controller begins.
fn repo_prefix(controller_id: &str) -> String {
    format!("pier-{}/", controller_id.to_ascii_lowercase())
}

impl ImageKey {
    /// `pier-<controller>/<app>:<guid8>-<droplet16>-<stack8>`: lowercase, as Docker wants.
    pub fn name(&self, controller_id: &str) -> String {
        use sha2::{Digest, Sha256};
        let stack = hex::encode(&Sha256::digest(self.stack.as_bytes())[..4]);
        format!(
            "{}{}:{}-{}-{stack}",
            repo_prefix(controller_id),
            self.app_name,
            &self.app_guid.get(..8).unwrap_or(&self.app_guid),
            &self.droplet.get(..16).unwrap_or(&self.droplet),
        )
    }
}

pub struct Images {
    runtime: Arc<dyn ContainerRuntime>,
    blobs: BlobStore,
    controller_id: String,
    /// The stack new images are made from when the one recorded is gone.
    default_stack: String,
    /// One build at a time per image (two slots starting at once build it once).
    building: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Apps (by guid) with an image build under way, counted: their build containers are not
    /// leftovers for the reconciler to remove.
    active: std::sync::Mutex<HashMap<String, usize>>,
    /// Where images are pushed too, when the controller was given one.
    registry: Option<Registry>,
}

/// Marks an app's image build as under way while it lives.
struct Active<'a> {
    images: &'a Images,
    app_guid: String,
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        let mut active = self.images.active.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = active.get_mut(&self.app_guid) {
            *n -= 1;
            if *n == 0 {
                active.remove(&self.app_guid);
            }
        }
    }
}

impl Images {
    pub fn new(
        runtime: Arc<dyn ContainerRuntime>,
        blobs: BlobStore,
        controller_id: &str,
        default_stack: &str,
    ) -> Images {
        Images {
            runtime,
            blobs,
            controller_id: controller_id.to_string(),
            default_stack: default_stack.to_string(),
            building: Default::default(),
            active: Default::default(),
            registry: None,
        }
    }

    /// Pushes every image to `registry` too (see the module doc).
    pub fn with_registry(mut self, registry: Option<Registry>) -> Images {
        self.registry = registry;
        self
    }

    pub fn default_stack(&self) -> &str {
        &self.default_stack
    }

    pub fn name(&self, key: &ImageKey) -> String {
        key.name(&self.controller_id)
    }

    /// The image for `key`, made from its droplet if it is not there (and pushed to the registry
    /// if there is one and it lacks it); returns its name.
    pub async fn ensure(&self, key: &ImageKey) -> Result<String> {
        let name = self.name(key);
        if self.runtime.image_exists(&name).await? && self.published(&name).await? {
            return Ok(name);
        }
        let lock = self
            .building
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.clone())
            .or_default()
            .clone();
        let made = async {
            let _one = lock.lock().await;
            if !self.runtime.image_exists(&name).await? {
                self.build(key, &name).await?;
                if let Err(e) = self.publish(&name).await {
                    // Just made for nothing: no image that is not in the registry stays.
                    let _ = self.runtime.remove_image(&name).await;
                    return Err(e);
                }
            } else if !self.published(&name).await? {
                self.publish(&name).await?;
            }
            Ok(())
        }
        .await;
        self.building
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&name);
        made.map(|()| name)
    }

    /// Whether the registry has the image `name`; true when there is no registry.
    async fn published(&self, name: &str) -> Result<bool> {
        let Some(registry) = &self.registry else {
            return Ok(true);
        };
        let (repo, tag) = split_reference(name);
        registry.has(repo, tag).await.map_err(|e| {
            Error::api(
                ErrorCode::Unavailable,
                format!("the app image {name} cannot be looked up in the registry: {e}"),
            )
        })
    }

    /// Tags the image `HOST:PORT/<name>` and pushes it; on failure the tag goes again.
    async fn publish(&self, name: &str) -> Result<()> {
        let Some(registry) = &self.registry else {
            return Ok(());
        };
        let remote = registry.addr().image_name(name);
        let (repo, tag) = split_reference(&remote);
        let started = std::time::Instant::now();
        let pushed = match self.runtime.tag_image(name, repo, tag).await {
            Ok(()) => self.runtime.push_image(repo, tag).await,
            Err(e) => Err(e),
        };
        match pushed {
            Ok(()) => {
                tracing::info!(image = %remote, took_ms = started.elapsed().as_millis() as u64,
                    "app image pushed to the registry");
                Ok(())
            }
            Err(e) => {
                // Removes only that name: the image keeps its own.
                let _ = self.runtime.remove_image(&remote).await;
                Err(Error::api(
                    ErrorCode::Unavailable,
                    format!(
                        "pushing the app image {name} to the registry {} failed: {e}",
                        registry.addr()
                    ),
                ))
            }
        }
    }

    /// Deletes the image's manifest from the registry and removes its local registry name
    /// (`HOST:PORT/...`), so that removing it by id leaves nothing. No registry: nothing to do.
    async fn unpublish(&self, image: &crate::runtime::ImageInfo) -> Result<()> {
        let Some(registry) = &self.registry else {
            return Ok(());
        };
        let own = repo_prefix(&self.controller_id);
        for name in image.tags.iter().filter(|t| t.starts_with(&own)) {
            let (repo, tag) = split_reference(name);
            if registry
                .delete(repo, tag)
                .await
                .map_err(|e| Error::Other(e.to_string()))?
            {
                tracing::info!(image = %name, registry = %registry.addr(), "app image deleted from the registry");
            }
        }
        let prefix = format!("{}/", registry.addr());
        for alias in image.tags.iter().filter(|t| t.starts_with(&prefix)) {
            self.runtime.remove_image(alias).await?;
        }
        Ok(())
    }

    /// True while an image of the app is being made (its build container is in use).
    pub fn is_building(&self, app_guid: &str) -> bool {
        self.active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(app_guid)
    }

    /// Makes the image: the droplet, checked, rewritten as one layer under `/home/vcap` and
    /// loaded on top of the stack image (no container, and no diff of the stack's files, which
    /// `docker commit` computes by walking them all on storage drivers without native diffs).
    async fn build(&self, key: &ImageKey, name: &str) -> Result<()> {
        *self
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.app_guid.clone())
            .or_default() += 1;
        let _active = Active {
            images: self,
            app_guid: key.app_guid.clone(),
        };
        let droplet = self.blobs.path(&key.droplet)?;
        let work = tempfile::Builder::new()
            .prefix("image-")
            .tempdir_in(self.blobs.tmp_dir())?;
        let layer = work.path().join("layer.tar");
        let (d, l) = (droplet.clone(), layer.clone());
        let diff_id =
            tokio::task::spawn_blocking(move || crate::staging::package::droplet_layer(&d, &l))
                .await
                .map_err(|e| Error::Other(format!("droplet check failed: {e}")))??;
        let mut stack = key.stack.clone();
        if stack.is_empty() || !self.runtime.image_exists(&stack).await? {
            tracing::warn!(app = %key.app_name, wanted = %key.stack, using = %self.default_stack,
                "the revision's stack image is gone; making its image from the current stack");
            stack = self.default_stack.clone();
        }
        let labels = Labels::new(&self.controller_id, Kind::AppImage)
            .with(keys::APP, &key.app_name)
            .with(keys::APP_GUID, &key.app_guid)
            .with(keys::DROPLET, &key.droplet)
            .with(STACK_LABEL, &key.stack);
        let (repo, tag) = split_reference(name);
        let made = self
            .runtime
            .add_layer(&LayerImageSpec {
                base: stack,
                layer,
                diff_id,
                repo: repo.to_string(),
                tag: tag.to_string(),
                labels,
                user: "vcap".into(),
                working_dir: "/home/vcap/app".into(),
            })
            .await;
        drop(work);
        match made {
            Ok(()) => {
                tracing::info!(image = %name, "app image made");
                Ok(())
            }
            Err(e) => {
                // A failed load may still have left the image.
                let _ = self.runtime.remove_image(name).await;
                Err(Error::api(
                    ErrorCode::StagingFailed,
                    format!("the droplet could not become an image: {e}"),
                ))
            }
        }
    }

    /// Removes every image of this controller that `keep` does not name, except those of apps in
    /// `busy` (being staged) and those being made. Returns how many went.
    pub async fn collect(&self, keep: &HashSet<ImageKey>, busy: &HashSet<String>) -> Result<usize> {
        let wanted: HashSet<String> = keep.iter().map(|k| self.name(k)).collect();
        let mut gone = 0;
        for image in self.runtime.list_images().await? {
            if image.labels.kind() != Some(Kind::AppImage) {
                continue;
            }
            if image.tags.iter().any(|t| wanted.contains(t)) {
                continue;
            }
            let guid = image.labels.app_guid();
            if guid.is_some_and(|g| busy.contains(g) || self.is_building(g)) {
                continue;
            }
            if let Err(e) = self.unpublish(&image).await {
                tracing::warn!(image = %image.id, tags = ?image.tags, error = %e,
                    "app image nothing refers to kept: it could not be deleted from the registry");
                continue;
            }
            // By id: removes every tag of it, and its layer, leaving nothing dangling.
            match self.runtime.remove_image(&image.id).await {
                Ok(()) => {
                    tracing::info!(image = %image.id, tags = ?image.tags, "app image nothing refers to removed");
                    gone += 1;
                }
                // In use by a container still stopping: the next pass.
                Err(e) => {
                    tracing::debug!(image = %image.id, error = %e, "app image not removed yet")
                }
            }
        }
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::registry::RegistryAddr;
    use crate::runtime::fake::{FakeRuntime, Op};

    type Manifests = Arc<std::sync::Mutex<(HashMap<String, String>, Vec<String>)>>;

    /// A registry's manifest API in memory: path of `repo/manifests/tag` → digest, and the
    /// deletes it was sent.
    async fn registry() -> (RegistryAddr, Manifests) {
        let state: Manifests = Default::default();
        let s = state.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let s = s.clone();
            async move {
                use axum::response::IntoResponse;
                let mut s = s.lock().unwrap();
                let path = req.uri().path().to_string();
                if req.method() == axum::http::Method::DELETE {
                    let digest = path.rsplit('/').next().unwrap().to_string();
                    s.0.retain(|_, d| *d != digest);
                    s.1.push(path);
                    return axum::http::StatusCode::ACCEPTED.into_response();
                }
                match s.0.get(&path) {
                    Some(d) => ([("docker-content-digest", d.clone())]).into_response(),
                    None => axum::http::StatusCode::NOT_FOUND.into_response(),
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (addr.to_string().parse().unwrap(), state)
    }

    struct Rig {
        _dir: tempfile::TempDir,
        fake: Arc<FakeRuntime>,
        images: Images,
        key: ImageKey,
    }

    fn rig(registry: Option<&RegistryAddr>) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path()).unwrap();
        let tgz = crate::testkit::targz(&[("app/app.py", b"print('hi')")]);
        let droplet = blobs
            .commit(blobs.write_reader(&mut &tgz[..]).unwrap())
            .unwrap();
        let fake = FakeRuntime::new("test");
        let stack = crate::runtime::stack::DEFAULT_STACK_IMAGE;
        let images = Images::new(fake.clone(), blobs, "test", stack)
            .with_registry(registry.cloned().map(Registry::new));
        let key = ImageKey {
            app_name: "app".into(),
            app_guid: "0123456789abcdef".into(),
            droplet,
            stack: stack.into(),
        };
        Rig {
            _dir: dir,
            fake,
            images,
            key,
        }
    }

    #[tokio::test]
    async fn without_a_registry_nothing_is_pushed() {
        let r = rig(None);
        let name = r.images.ensure(&r.key).await.unwrap();
        assert!(r.fake.pushed().is_empty());
        assert!(!r
            .fake
            .image_names()
            .iter()
            .any(|i| i != &name && i.contains("/pier-")));
        let gone = r
            .images
            .collect(&HashSet::new(), &HashSet::new())
            .await
            .unwrap();
        assert_eq!(gone, 1);
        assert!(!r.fake.image_names().contains(&name));
    }

    #[tokio::test]
    async fn an_image_is_pushed_when_made_and_again_when_the_registry_lost_it() {
        let (addr, manifests) = registry().await;
        let r = rig(Some(&addr));
        let name = r.images.ensure(&r.key).await.unwrap();
        let remote = format!("{addr}/{name}");
        assert_eq!(r.fake.pushed(), vec![remote.clone()]);
        assert!(r.fake.image_names().contains(&remote));
        // The registry has it: used as it is.
        let (repo, tag) = split_reference(&name);
        let path = format!("/v2/{repo}/manifests/{tag}");
        manifests
            .lock()
            .unwrap()
            .0
            .insert(path.clone(), "sha256:d1".into());
        r.images.ensure(&r.key).await.unwrap();
        assert_eq!(r.fake.pushed().len(), 1);
        // Lost: pushed again before use.
        manifests.lock().unwrap().0.clear();
        r.images.ensure(&r.key).await.unwrap();
        assert_eq!(r.fake.pushed(), vec![remote.clone(), remote.clone()]);

        // Collected: deleted from the registry by digest, then its registry tag and itself.
        manifests.lock().unwrap().0.insert(path, "sha256:d1".into());
        let gone = r
            .images
            .collect(&HashSet::new(), &HashSet::new())
            .await
            .unwrap();
        assert_eq!(gone, 1);
        assert_eq!(
            manifests.lock().unwrap().1,
            vec![format!("/v2/{repo}/manifests/sha256:d1")]
        );
        let left = r.fake.image_names();
        assert!(!left.contains(&name) && !left.contains(&remote), "{left:?}");
    }

    #[tokio::test]
    async fn a_failed_push_fails_the_build_and_leaves_no_image() {
        let (addr, _) = registry().await;
        let r = rig(Some(&addr));
        r.fake.fail_next(Op::Push, 1);
        let e = r.images.ensure(&r.key).await.unwrap_err().to_string();
        assert!(e.contains(&format!("to the registry {addr} failed")), "{e}");
        let name = r.images.name(&r.key);
        let left = r.fake.image_names();
        assert!(
            !left
                .iter()
                .any(|i| i == &name || i.starts_with(&addr.to_string())),
            "{left:?}"
        );
        assert!(r.fake.app_images().is_empty());
    }

    #[tokio::test]
    async fn an_image_is_kept_while_the_registry_cannot_be_reached() {
        let (addr, _) = registry().await;
        let r = rig(Some(&addr));
        let name = r.images.ensure(&r.key).await.unwrap();
        // The same image, now with a registry nothing listens on.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let down: RegistryAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let images = Images::new(r.fake.clone(), r.images.blobs.clone(), "test", "s")
            .with_registry(Some(Registry::new(down)));
        assert_eq!(
            images
                .collect(&HashSet::new(), &HashSet::new())
                .await
                .unwrap(),
            0
        );
        assert!(
            r.fake.image_names().contains(&name),
            "kept for a later pass"
        );
    }
}
