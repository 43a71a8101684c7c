//! Which Docker network a space's service instance joins, and with what address.
//!
//! Apps of a space run on that space's bridge network (the controller makes one per space:
//! `pier-<controller id>` for the default space, `pier-<controller id>-<12 hex of the space
//! guid>` for the others, labelled `pier.controller`, `pier.kind=instances`, `pier.space`). A
//! service container joins the same network so the space's apps reach it by its name, and no
//! other space's can.
//!
//! Inside the controller ([`Placement`] implemented there) the network is found or made exactly as
//! for the space's first instance, and the container gets a fixed address from the controller's
//! own allocator: the controller hands out every address on its networks (`--ip`), so an address
//! Docker picked by itself could later collide with one it hands an app instance. A standalone
//! broker uses [`LabelledNetworks`]: the space's network must exist already, and Docker picks the
//! address.

use std::net::Ipv4Addr;

use async_trait::async_trait;

use crate::docker;

/// Where a service container goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub network: String,
    /// A fixed address; `None` lets Docker pick one.
    pub ip: Option<Ipv4Addr>,
}

#[async_trait]
pub trait Placement: Send + Sync {
    /// The network of the space (made if need be) and an address on it for `holder` (a stable
    /// id of the service instance).
    async fn attach(&self, space_guid: &str, holder: &str) -> anyhow::Result<Attachment>;
    /// The container of `holder` is gone: its address may be handed out again.
    async fn detach(&self, attachment: &Attachment, holder: &str);
}

/// A standalone broker's placement: the network labelled with the controller id and the space
/// guid, or, for the default space, the controller's default network.
pub struct LabelledNetworks {
    pub docker: docker::Engine,
    pub controller_id: String,
    /// The default space's guid, whose network carries no `pier.space` label.
    pub default_space: Option<String>,
}

#[async_trait]
impl Placement for LabelledNetworks {
    async fn attach(&self, space_guid: &str, _holder: &str) -> anyhow::Result<Attachment> {
        let labels = [
            format!("pier.controller={}", self.controller_id),
            "pier.kind=instances".to_string(),
            format!("pier.space={space_guid}"),
        ];
        if let Some(network) = self
            .docker
            .networks_labelled(&labels)
            .await?
            .into_iter()
            .next()
        {
            return Ok(Attachment { network, ip: None });
        }
        if self.default_space.as_deref() == Some(space_guid) {
            let network = format!("pier-{}", self.controller_id);
            if self.docker.network_exists(&network).await? {
                return Ok(Attachment { network, ip: None });
            }
        }
        anyhow::bail!(
            "no Docker network for the space {space_guid} (one labelled pier.controller={}, \
             pier.space={space_guid}); it is made when the space's first app instance starts, \
             or run the broker inside the controller, which makes it",
            self.controller_id
        )
    }

    async fn detach(&self, _attachment: &Attachment, _holder: &str) {}
}
