//! The labels on every object the controller makes: they are how the actual state is read back
//! from the runtime after a restart (which controller, what kind of object, which app, slot,
//! instance, droplet, revision and spec).

use std::collections::BTreeMap;

/// Label keys.
pub mod keys {
    pub const CONTROLLER: &str = "pier.controller";
    /// [`super::Kind`].
    pub const KIND: &str = "pier.kind";
    pub const APP: &str = "pier.app";
    pub const APP_GUID: &str = "pier.app-guid";
    pub const PROCESS: &str = "pier.process";
    pub const INDEX: &str = "pier.index";
    pub const INSTANCE: &str = "pier.instance";
    pub const DROPLET: &str = "pier.droplet";
    pub const REVISION: &str = "pier.revision";
    /// Hash of everything that makes an instance what it is; a different hash means replace it.
    pub const SPEC: &str = "pier.spec";
    /// The cache volume a staging container mounts.
    pub const VOLUME: &str = "pier.volume";
    /// The space whose instances a network carries (none on the default space's network).
    pub const SPACE: &str = "pier.space";
}

/// What an object is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// An app instance's container.
    Instance,
    /// A staging container, or an app's buildpack cache volume.
    Staging,
    /// A staging container made ahead of need, waiting for its app's next staging
    /// (`staging/warm.rs`); it runs that staging as it is, with this label.
    WarmStaging,
    /// One of the controller's instance networks (one per space).
    Instances,
    /// An app image (the stack plus a droplet), or the throwaway container it is made in.
    AppImage,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Instance => "instance",
            Kind::Staging => "staging",
            Kind::WarmStaging => "warm-staging",
            Kind::Instances => "instances",
            Kind::AppImage => "image",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        [
            Kind::Instance,
            Kind::Staging,
            Kind::WarmStaging,
            Kind::Instances,
            Kind::AppImage,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// An object's labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    /// The labels every object of `controller` of this kind starts with.
    pub fn new(controller: &str, kind: Kind) -> Labels {
        Labels::default()
            .with(keys::CONTROLLER, controller)
            .with(keys::KIND, kind.as_str())
    }

    /// Labels as the runtime returned them.
    pub fn from_map(map: impl IntoIterator<Item = (String, String)>) -> Labels {
        Labels(map.into_iter().collect())
    }

    pub fn with(mut self, key: &str, value: impl ToString) -> Labels {
        self.0.insert(key.to_string(), value.to_string());
        self
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn kind(&self) -> Option<Kind> {
        self.get(keys::KIND).and_then(Kind::parse)
    }

    pub fn app_guid(&self) -> Option<&str> {
        self.get(keys::APP_GUID)
    }

    pub fn instance(&self) -> Option<&str> {
        self.get(keys::INSTANCE)
    }

    pub fn controller(&self) -> Option<&str> {
        self.get(keys::CONTROLLER)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }

    /// As Docker's API takes them (containers, images, networks, volumes).
    pub fn to_map<M: FromIterator<(String, String)>>(&self) -> M {
        self.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// As the `label=k=v` filter a listing by controller uses.
    pub fn controller_filter(controller: &str) -> String {
        format!("{}={controller}", keys::CONTROLLER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_keys_keep_their_spelling() {
        let l = Labels::new("c1", Kind::Staging).with(keys::APP_GUID, "g");
        assert_eq!(l.get("pier.controller"), Some("c1"));
        assert_eq!(l.get("pier.kind"), Some("staging"));
        assert_eq!(l.kind(), Some(Kind::Staging));
        assert_eq!(l.app_guid(), Some("g"));
        for k in [
            Kind::Instance,
            Kind::Staging,
            Kind::WarmStaging,
            Kind::Instances,
            Kind::AppImage,
        ] {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
        assert_eq!(Kind::parse("other"), None);
        assert_eq!(Labels::controller_filter("x"), "pier.controller=x");
    }
}
