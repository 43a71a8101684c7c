//! Persistence of instance address states (the allocator's logic is in
//! `network/addresses.rs`): tree `addresses` (`a.b.c.d` → state as JSON) and `addresses_meta`
//! (`last:<subnet>`: the address handed out last on that subnet; `last`, without a subnet, as a
//! Pier with one instance network wrote it). Every write is flushed before it returns, so an address
//! is on disk as in use before any container gets it.

use std::net::Ipv4Addr;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::Result;
use crate::network::addresses::Ipv4Net;

#[derive(Clone)]
pub struct AddressStore {
    tree: sled::Tree,
    meta: sled::Tree,
}

impl AddressStore {
    pub(super) fn open(db: &sled::Db) -> Result<AddressStore> {
        Ok(AddressStore {
            tree: db.open_tree("addresses")?,
            meta: db.open_tree("addresses_meta")?,
        })
    }

    /// Every state kept whose address `keep` accepts; the others (an earlier network's, or keys
    /// that are not addresses) are removed.
    pub fn load<T: DeserializeOwned>(
        &self,
        keep: impl Fn(Ipv4Addr) -> bool,
    ) -> Result<Vec<(Ipv4Addr, T)>> {
        let mut out = Vec::new();
        for item in self.tree.iter() {
            let (k, v) = item?;
            let ip = std::str::from_utf8(&k)
                .ok()
                .and_then(|s| s.parse::<Ipv4Addr>().ok());
            match ip {
                Some(ip) if keep(ip) => out.push((ip, serde_json::from_slice(&v)?)),
                _ => {
                    self.tree.remove(k)?;
                }
            }
        }
        self.tree.flush()?;
        Ok(out)
    }

    /// Records `state` for `ip`, or forgets `ip` when `None`.
    pub fn put<T: Serialize>(&self, ip: Ipv4Addr, state: Option<&T>) -> Result<()> {
        let key = ip.to_string();
        match state {
            Some(s) => {
                self.tree.insert(key.as_bytes(), serde_json::to_vec(s)?)?;
            }
            None => {
                self.tree.remove(key.as_bytes())?;
            }
        }
        self.tree.flush()?;
        Ok(())
    }

    /// The address handed out last on `subnet`.
    pub fn last_in(&self, subnet: Ipv4Net) -> Result<Option<Ipv4Addr>> {
        let parse = |v: sled::IVec| std::str::from_utf8(&v).ok()?.parse::<Ipv4Addr>().ok();
        if let Some(ip) = self.meta.get(format!("last:{subnet}"))?.and_then(parse) {
            return Ok(Some(ip));
        }
        // Written before there was one network per space: the one network's.
        Ok(self
            .meta
            .get("last")?
            .and_then(parse)
            .filter(|ip| subnet.contains(*ip)))
    }

    pub fn set_last(&self, subnet: Ipv4Net, ip: Ipv4Addr) -> Result<()> {
        self.meta
            .insert(format!("last:{subnet}"), ip.to_string().as_bytes())?;
        self.meta.flush()?;
        Ok(())
    }
}
