//! What the brokers offer (`GET /v2/catalog`): the `postgresql` and `redis` offerings, each with
//! plans by memory and connections. The ids are fixed so that a platform's records stay valid
//! across broker restarts and upgrades.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The server an offering runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Postgresql,
    Redis,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Postgresql => "postgresql",
            Engine::Redis => "redis",
        }
    }

    /// The port the server listens on inside its container.
    pub fn port(self) -> u16 {
        match self {
            Engine::Postgresql => 5432,
            Engine::Redis => 6379,
        }
    }
}

/// A plan: what the instance's container and server are limited to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub id: &'static str,
    pub name: &'static str,
    /// The container's memory limit.
    pub memory_mib: u64,
    /// Client connections the server accepts (PostgreSQL `max_connections` not counting the
    /// superuser's reserved ones; Redis `maxclients`).
    pub connections: u32,
}

/// An offering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offering {
    pub id: &'static str,
    pub name: &'static str,
    pub description: &'static str,
    pub tags: &'static [&'static str],
    pub engine: Engine,
    pub plans: &'static [Plan],
}

pub const POSTGRESQL: Offering = Offering {
    id: "4e0ea333-dd7a-429e-9a13-1a9bd0087c5d",
    name: "postgresql",
    description: "PostgreSQL 15 database (Debian bookworm), one server per instance",
    tags: &["postgresql", "relational"],
    engine: Engine::Postgresql,
    plans: &[
        Plan {
            id: "3b853160-2fed-4e00-acd5-7fb4d137ad3b",
            name: "small",
            memory_mib: 256,
            connections: 20,
        },
        Plan {
            id: "d95061b0-4f7e-4965-995b-76024e1637b7",
            name: "medium",
            memory_mib: 1024,
            connections: 100,
        },
    ],
};

pub const REDIS: Offering = Offering {
    id: "14309975-53a1-460b-babb-8e6d286936d1",
    name: "redis",
    description: "Redis 7 key-value store (Debian bookworm), one server per instance, persisted",
    tags: &["redis", "key-value"],
    engine: Engine::Redis,
    plans: &[
        Plan {
            id: "4a42a680-04d1-4a3e-982c-a76c3b133b67",
            name: "small",
            memory_mib: 256,
            connections: 20,
        },
        Plan {
            id: "518899e8-76e0-40be-b977-084ef914c86b",
            name: "medium",
            memory_mib: 1024,
            connections: 100,
        },
    ],
};

pub const OFFERINGS: [Offering; 2] = [POSTGRESQL, REDIS];

/// The offering and plan a request names, or why not (for a 400).
pub fn find(service_id: &str, plan_id: &str) -> Result<(Offering, Plan), String> {
    let offering = OFFERINGS
        .iter()
        .find(|o| o.id == service_id)
        .ok_or_else(|| format!("unknown service_id {service_id:?}; see GET /v2/catalog"))?;
    let plan = find_plan(offering, plan_id)?;
    Ok((*offering, plan))
}

pub fn find_plan(offering: &Offering, plan_id: &str) -> Result<Plan, String> {
    offering
        .plans
        .iter()
        .find(|p| p.id == plan_id)
        .copied()
        .ok_or_else(|| {
            format!(
                "unknown plan_id {plan_id:?} for the {} offering; its plans are {}",
                offering.name,
                offering
                    .plans
                    .iter()
                    .map(|p| format!("{} ({})", p.name, p.id))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

impl Plan {
    fn description(&self, engine: Engine) -> String {
        let memory = if self.memory_mib >= 1024 && self.memory_mib % 1024 == 0 {
            format!("{} GiB", self.memory_mib / 1024)
        } else {
            format!("{} MiB", self.memory_mib)
        };
        let what = match engine {
            Engine::Postgresql => "max_connections",
            Engine::Redis => "maxclients",
        };
        format!("{memory} memory, {} connections ({what})", self.connections)
    }
}

/// The catalog, as OSB v2.17 shapes it.
pub fn catalog() -> Value {
    let services: Vec<Value> = OFFERINGS
        .iter()
        .map(|o| {
            let plans: Vec<Value> = o
                .plans
                .iter()
                .map(|p| {
                    json!({
                        "id": p.id,
                        "name": p.name,
                        "description": p.description(o.engine),
                        "free": true,
                        "bindable": true,
                        "plan_updateable": true,
                        "metadata": {
                            "memory_mib": p.memory_mib,
                            "connections": p.connections,
                            "bullets": [p.description(o.engine)],
                        },
                    })
                })
                .collect();
            json!({
                "id": o.id,
                "name": o.name,
                "description": o.description,
                "tags": o.tags,
                "bindable": true,
                "instances_retrievable": false,
                "bindings_retrievable": false,
                "plan_updateable": true,
                "metadata": { "displayName": o.name, "providerDisplayName": "Pier" },
                "plans": plans,
            })
        })
        .collect();
    json!({ "services": services })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_has_both_offerings_with_tags_and_plans() {
        let c = catalog();
        let services = c["services"].as_array().unwrap();
        assert_eq!(services.len(), 2);
        assert_eq!(services[0]["name"], "postgresql");
        assert_eq!(services[0]["tags"], json!(["postgresql", "relational"]));
        assert_eq!(services[1]["name"], "redis");
        assert_eq!(services[1]["tags"], json!(["redis", "key-value"]));
        let small = &services[0]["plans"][0];
        assert_eq!(small["name"], "small");
        assert_eq!(
            small["description"],
            "256 MiB memory, 20 connections (max_connections)"
        );
        assert_eq!(
            services[1]["plans"][1]["description"],
            "1 GiB memory, 100 connections (maxclients)"
        );
    }

    #[test]
    fn find_names_what_is_unknown() {
        let (o, p) = find(POSTGRESQL.id, POSTGRESQL.plans[1].id).unwrap();
        assert_eq!((o.name, p.name), ("postgresql", "medium"));
        assert!(find("nope", "x")
            .unwrap_err()
            .contains("unknown service_id \"nope\""));
        let e = find(REDIS.id, POSTGRESQL.plans[0].id).unwrap_err();
        assert!(e.contains("unknown plan_id"), "{e}");
        assert!(e.contains("small (4a42a680"), "{e}");
    }
}
