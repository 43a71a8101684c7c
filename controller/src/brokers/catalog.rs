//! A broker's `GET /v2/catalog`, checked: every offering and plan needs an id, a name and a
//! description; ids are unique in the catalog, names unique among the offerings and among an
//! offering's plans; an offering has at least one plan. What is wrong is said with where it is
//! (`services[1].plans[0]: no "id"`), so the broker's author can fix it.

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::Value;

use crate::store::{OfferingRecord, PlanRecord};

#[derive(Deserialize)]
struct Catalog {
    services: Vec<Offering>,
}

#[derive(Deserialize)]
struct Offering {
    id: String,
    name: String,
    description: String,
    bindable: bool,
    #[serde(default)]
    plan_updateable: bool,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    bindings_retrievable: bool,
    plans: Vec<Plan>,
}

#[derive(Deserialize)]
struct Plan {
    id: String,
    name: String,
    description: String,
    #[serde(default)]
    free: Option<bool>,
    #[serde(default)]
    bindable: Option<bool>,
    #[serde(default)]
    plan_updateable: Option<bool>,
    #[serde(default)]
    maximum_polling_duration: Option<u64>,
}

/// Names of offerings and plans: what a CLI user types.
fn cli_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The catalog as the store keeps it, or what is wrong with it.
pub fn parse(body: Value) -> Result<Vec<OfferingRecord>, String> {
    let c: Catalog = serde_json::from_value(body).map_err(|e| format!("a catalog that {e}"))?;
    if c.services.is_empty() {
        return Err("a catalog with no services".into());
    }
    let mut ids = HashSet::new();
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for (i, o) in c.services.into_iter().enumerate() {
        let at = format!("services[{i}]");
        if o.id.is_empty() || !ids.insert(o.id.clone()) {
            return Err(format!("{at}: an empty or repeated id {:?}", o.id));
        }
        if !cli_name(&o.name) || !names.insert(o.name.clone()) {
            return Err(format!(
                "{at}: the name {:?} is empty, repeated or not letters, digits, '-', '_', '.'",
                o.name
            ));
        }
        if o.plans.is_empty() {
            return Err(format!("{at} ({}): no plans", o.name));
        }
        let mut plan_names = HashSet::new();
        let mut plans = Vec::new();
        for (j, p) in o.plans.into_iter().enumerate() {
            let at = format!("{at}.plans[{j}]");
            if p.id.is_empty() || !ids.insert(p.id.clone()) {
                return Err(format!("{at}: an empty or repeated id {:?}", p.id));
            }
            if !cli_name(&p.name) || !plan_names.insert(p.name.clone()) {
                return Err(format!(
                    "{at}: the plan name {:?} is empty, repeated or not letters, digits, '-', \
                     '_', '.'",
                    p.name
                ));
            }
            plans.push(PlanRecord {
                id: p.id,
                name: p.name,
                description: p.description,
                free: p.free.unwrap_or(true),
                bindable: p.bindable,
                plan_updateable: p.plan_updateable,
                maximum_polling_duration: p.maximum_polling_duration,
                public: false,
                orgs: Vec::new(),
            });
        }
        out.push(OfferingRecord {
            id: o.id,
            name: o.name,
            description: o.description,
            bindable: o.bindable,
            plan_updateable: o.plan_updateable,
            tags: o.tags,
            bindings_retrievable: o.bindings_retrievable,
            plans,
        });
    }
    Ok(out)
}

/// `new` with the access `old` gave each plan kept (by plan id), for a catalog fetched again.
pub fn keep_access(old: &[OfferingRecord], mut new: Vec<OfferingRecord>) -> Vec<OfferingRecord> {
    for o in &mut new {
        for p in &mut o.plans {
            if let Some(was) = old.iter().flat_map(|o| &o.plans).find(|q| q.id == p.id) {
                p.public = was.public;
                p.orgs = was.orgs.clone();
            }
        }
    }
    new
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn plan(id: &str, name: &str) -> Value {
        json!({"id": id, "name": name, "description": "d"})
    }

    #[test]
    fn a_good_catalog_is_kept_and_each_fault_is_named_with_where_it_is() {
        let good = json!({"services": [{"id": "o1", "name": "pg", "description": "PostgreSQL",
            "bindable": true, "tags": ["postgresql"], "plans": [plan("p1", "small")]}]});
        let c = parse(good).unwrap();
        assert_eq!(c[0].plans[0].name, "small");
        assert!(c[0].plans[0].free && !c[0].plans[0].public);

        let cases = [
            (json!([1, 2]), "a catalog that"),
            (json!({"services": []}), "no services"),
            (
                json!({"services": [{"id": "o1", "name": "pg", "bindable": true,
                "plans": [plan("p1", "s")]}]}),
                "description",
            ),
            (
                json!({"services": [{"id": "o1", "name": "pg", "description": "d",
                "bindable": true, "plans": []}]}),
                "services[0] (pg): no plans",
            ),
            (
                json!({"services": [{"id": "o1", "name": "pg", "description": "d",
                "bindable": true, "plans": [plan("p1", "s"), plan("p1", "t")]}]}),
                "services[0].plans[1]: an empty or repeated id \"p1\"",
            ),
            (
                json!({"services": [{"id": "o1", "name": "my pg", "description": "d",
                "bindable": true, "plans": [plan("p1", "s")]}]}),
                "the name \"my pg\"",
            ),
        ];
        for (body, says) in cases {
            let e = parse(body.clone()).unwrap_err();
            assert!(e.contains(says), "{body}: {e}");
        }
    }

    #[test]
    fn fetching_again_keeps_each_plans_access() {
        let body = json!({"services": [{"id": "o1", "name": "pg", "description": "d",
            "bindable": true, "plans": [plan("p1", "small"), plan("p2", "big")]}]});
        let mut old = parse(body.clone()).unwrap();
        old[0].plans[0].public = true;
        old[0].plans[1].orgs = vec!["org-guid".into()];
        let new = keep_access(&old, parse(body).unwrap());
        assert!(new[0].plans[0].public);
        assert_eq!(new[0].plans[1].orgs, vec!["org-guid".to_string()]);
    }
}
