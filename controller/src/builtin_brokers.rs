//! The built-in PostgreSQL and Redis brokers ([`pier_broker`]), run by the controller: served in
//! process on a loopback port and registered as the platform-wide broker `pier-services` with
//! access enabled for every org, so `pier marketplace` lists `postgresql` and `redis` with no
//! operator step. The controller talks to them over HTTP with its OSB client, as to any broker.
//!
//! - Each start picks a new port and re-registers the broker's URL (the record, its plans'
//!   access and its service instances stay); the basic-auth password is made once and kept in
//!   `DATA_DIR/builtin-broker/password` (mode 0600), the broker's own records next to it.
//! - Service containers join their space's network exactly as app instances do
//!   ([`SpacePlacement`]): the network is found or made by [`Networks::for_space`], and the
//!   container's fixed address comes from the controller's address pool, which hands out every
//!   address on its networks; the container carries `pier.instance=svc-<instance id>`, so the
//!   pool keeps that address while the container exists.
//! - `--builtin-brokers false` leaves them off (the record, if any, stays; its instances keep
//!   running but cannot be changed until they are back on).

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use pier_api::{CreateServiceBrokerRequest, ServiceAccessRequest, UpdateServiceBrokerRequest};
use pier_broker::{Attachment, Placement};
use rand::distr::{Alphanumeric, SampleString};
use tokio_util::sync::CancellationToken;

use crate::brokers::Brokers;
use crate::events::Actor;
use crate::network::Networks;

/// The name the built-in brokers are registered under.
pub const BROKER_NAME: &str = "pier-services";
const USERNAME: &str = "pier";

/// Spaces' networks and addresses, as the controller's own instances get them.
pub struct SpacePlacement {
    pub networks: Arc<Networks>,
}

#[async_trait]
impl Placement for SpacePlacement {
    async fn attach(&self, space_guid: &str, holder: &str) -> anyhow::Result<Attachment> {
        let net = self.networks.for_space(space_guid).await?;
        let ip: Ipv4Addr = self
            .networks
            .addresses()
            .allocate(holder, &net.name)
            .with_context(|| format!("no address for a service instance on {}", net.name))?;
        Ok(Attachment {
            network: net.name,
            ip: Some(ip),
        })
    }

    async fn detach(&self, attachment: &Attachment, holder: &str) {
        if let Some(ip) = attachment.ip {
            // A service container is never in a route table: its address is free at once.
            if let Err(e) = self.networks.addresses().free_unrouted(ip, holder) {
                tracing::warn!(%ip, holder, error = %e, "cannot free a service instance's address");
            }
        }
    }
}

/// The broker's password, made at the first start.
fn password(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("password");
    match std::fs::read_to_string(&path) {
        Ok(p) if !p.trim().is_empty() => return Ok(p.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    std::fs::create_dir_all(dir)?;
    let p = Alphanumeric.sample_string(&mut rand::rng(), 40);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    std::io::Write::write_all(&mut opts.open(&path)?, p.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(p)
}

/// Starts the brokers (adopting the service containers a previous run left) and registers
/// them; they are served until `shutdown`.
pub async fn start(
    brokers: &Brokers,
    networks: Arc<Networks>,
    controller_id: &str,
    data_dir: &Path,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let dir = data_dir.join("builtin-broker");
    let password = password(&dir)?;
    let docker = pier_broker::docker::Engine::connect().await?;
    let image = pier_broker::image::DEFAULT_IMAGE;
    if !docker.image_exists(image).await? {
        tracing::warn!(
            image,
            "the services image is missing: creating PostgreSQL and Redis services fails until \
             it is built (pier-controller build-services-image)"
        );
    }
    let config = pier_broker::Config {
        controller_id: controller_id.to_string(),
        image: image.to_string(),
        data_dir: dir,
        username: USERNAME.into(),
        password: password.clone(),
        ready_timeout: Duration::from_secs(120),
    };
    let broker = pier_broker::Broker::open(config, docker, Arc::new(SpacePlacement { networks }))?;
    broker.adopt().await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        if let Err(e) = pier_broker::http::serve(listener, broker, shutdown.cancelled_owned()).await
        {
            tracing::error!(error = %e, "the built-in brokers stopped");
        }
    });
    register(brokers, &url, &password).await?;
    tracing::info!(%url, broker = BROKER_NAME, "built-in PostgreSQL and Redis brokers ready");
    Ok(())
}

/// Registers the broker at `url`, or points its record there; a first registration enables its
/// plans for every org.
async fn register(brokers: &Brokers, url: &str, password: &str) -> anyhow::Result<()> {
    let known = brokers
        .list(None)?
        .into_iter()
        .any(|b| b.name == BROKER_NAME);
    if known {
        let req = UpdateServiceBrokerRequest {
            url: url.to_string(),
            username: USERNAME.into(),
            password: password.to_string(),
        };
        brokers.update(BROKER_NAME, req, None).await?;
        return Ok(());
    }
    let req = CreateServiceBrokerRequest {
        name: BROKER_NAME.into(),
        url: url.to_string(),
        username: USERNAME.into(),
        password: password.to_string(),
    };
    brokers.create(req, None, &Actor::Platform).await?;
    for offering in pier_broker::catalog::OFFERINGS {
        brokers
            .set_access(ServiceAccessRequest {
                offering: offering.name.into(),
                plan: None,
                org: None,
                broker: Some(BROKER_NAME.into()),
                enable: true,
            })
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::addresses::AddrState;
    use crate::store::SpaceRecord;

    #[tokio::test]
    async fn a_service_gets_its_spaces_network_and_an_address_the_pool_holds() {
        let p = crate::testkit::TestPlatform::new().await;
        let networks = p.parts.instances.networks().clone();
        let pool = networks.addresses().clone();
        let placement = SpacePlacement {
            networks: networks.clone(),
        };
        let a = placement.attach("", "svc-a").await.unwrap();
        assert_eq!(a.network, "pier-test");
        let ip = a.ip.unwrap();
        assert_eq!(
            pool.state(ip),
            Some(AddrState::InUse {
                instance_id: "svc-a".into()
            })
        );
        let b = placement.attach("", "svc-b").await.unwrap();
        assert_ne!(b.ip, a.ip, "each service has its own address");

        let org = p.store.org_named("default").unwrap().unwrap();
        let space = "0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d";
        p.store
            .put_space(&SpaceRecord {
                guid: space.into(),
                name: "dev".into(),
                org_guid: org.guid,
                created_at: time::OffsetDateTime::now_utc(),
                quota: None,
            })
            .unwrap();
        let c = placement.attach(space, "svc-c").await.unwrap();
        assert_eq!(
            c.network, "pier-test-0b1c2d3e4f50",
            "the space's own network, made"
        );
        assert!(p.fake.network("pier-test-0b1c2d3e4f50").is_some());

        placement.detach(&a, "svc-a").await;
        assert_eq!(pool.state(ip), None, "never routed: free at once");
    }

    #[test]
    fn the_password_is_made_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("builtin-broker");
        let p = password(&d).unwrap();
        assert_eq!(p.len(), 40);
        assert_eq!(password(&d).unwrap(), p);
        let mode = std::fs::metadata(d.join("password")).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }
}
