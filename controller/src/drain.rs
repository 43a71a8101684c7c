//! The drain: before a removed instance gets SIGTERM, the requests routers already sent it
//! finish. What "the routers" are, and how the controller knows:
//!
//! - The built-in router runs in this process: its [`pier_router::InFlight`] counts requests per
//!   instance, and the drain waits on it directly (no polling: it wakes when a count drops to 0).
//! - A standalone `pier-router` is another process. Its acknowledgement carries it: every
//!   route-table poll says which table version the router holds and which instances it still has
//!   requests in flight to among those no longer in that table (`draining=`). The drain waits
//!   until every standalone router heard from within the ack window has polled with a version at
//!   least the one that removed the instance, and no longer names it. Routers poll again at once
//!   when a new table arrives and whenever their draining set changes.
//!
//! Either way the drain ends at the deadline (`--drain-timeout-secs`); the log says what it waited
//! on and whether it ended idle.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::instances::{Drain, Drained};
use crate::network::addresses::AddressPool;

/// How often standalone routers' acknowledgements are looked at while a drain waits on them.
const STANDALONE_POLL: Duration = Duration::from_millis(25);
/// Routers get at least this long to acknowledge the table that removed an instance.
const FIRST_LOOK: Duration = Duration::from_millis(50);

/// The platform's drain: the built-in router (if it runs) and the standalone routers.
pub struct RouterDrain {
    pub builtin: Option<pier_router::InFlight>,
    /// Where standalone routers' acknowledgements are kept.
    pub addresses: Arc<AddressPool>,
}

#[async_trait::async_trait]
impl Drain for RouterDrain {
    async fn wait(&self, instance_id: &str, removed_in: u64, deadline: Instant) -> Drained {
        // The table without it reaches every router within moments; requests it gets meanwhile
        // are still counted.
        tokio::time::sleep(FIRST_LOOK.min(deadline.saturating_duration_since(Instant::now())))
            .await;
        let builtin_idle = match &self.builtin {
            Some(h) => h.wait_idle(instance_id, deadline).await,
            None => true,
        };
        let mut waiting = self.addresses.routers_draining(instance_id, removed_in);
        while !waiting.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(STANDALONE_POLL).await;
            waiting = self.addresses.routers_draining(instance_id, removed_in);
        }
        let mut on = Vec::new();
        if self.builtin.is_some() {
            on.push("the built-in router's in-flight requests".to_string());
        }
        let routers = self.addresses.routers_heard();
        if routers > 0 {
            on.push(format!("{routers} standalone router(s)' acknowledgements"));
        }
        if on.is_empty() {
            on.push("nothing: no router is connected".into());
        }
        Drained {
            idle: builtin_idle && waiting.is_empty(),
            waited_on: on.join(" and "),
        }
    }
}
