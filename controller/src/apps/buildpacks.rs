//! Installing and changing buildpacks: the files and the registry are the staging subsystem's;
//! what the app service adds is the package's life: once unpacked, an uploaded buildpack package
//! goes, unless an app happens to use the same bytes.

use pier_api::{BuildpackResponse, CreateBuildpackRequest, UpdateBuildpackRequest};

use super::AppService;
use crate::error::Result;

impl AppService {
    pub async fn create_buildpack(
        &self,
        req: &CreateBuildpackRequest,
    ) -> Result<BuildpackResponse> {
        let resp = self
            .d
            .stager
            .buildpacks()
            .create(req, &self.d.blobs, self.d.settings.package_limits)
            .await?;
        self.forget_package(&req.package);
        Ok(resp)
    }

    pub async fn update_buildpack(
        &self,
        name: &str,
        req: &UpdateBuildpackRequest,
    ) -> Result<BuildpackResponse> {
        let resp = self
            .d
            .stager
            .buildpacks()
            .update(name, req, &self.d.blobs, self.d.settings.package_limits)
            .await?;
        if let Some(sha) = &req.package {
            self.forget_package(sha);
        }
        Ok(resp)
    }

    /// Deletes a package blob that was only a buildpack's transport.
    fn forget_package(&self, sha: &str) {
        let used = self
            .d
            .store
            .list_apps()
            .map(|apps| apps.iter().any(|a| a.blobs().any(|b| b == sha)));
        if let Ok(false) = used {
            let _ = self.d.blobs.delete(sha);
        }
    }
}
