//! The network driver: networks, endpoints and their links.
//!
//! Order of work, so that a crash at any point leaves nothing that start-up cannot
//! explain: links are made in the kernel *before* the records that own them are written,
//! and records are removed *before* their links are deleted. A link whose record is
//! missing carries rustvlan's mark (its group number) and is swept by [`Driver::reconcile`].

mod calls;
mod endpoint;
pub mod host_access;
mod join;
mod network;
pub mod options;
mod reaper;
mod reconcile;

pub use calls::{
    EndpointCreated, EndpointInfo, EndpointRef, EndpointSpec, GatewayNeeds, HostAddressToClaim, JoinAnswer, JoinSpec,
    NetworkSpec, Route, SubnetSpec,
};
pub use reaper::LinkReaper;
pub use reconcile::ReconcileReport;

use crate::kernel::{Kernel, LinkInfo};
use crate::model::{EndpointRecord, PendingDelete};
use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex};

use crate::ledger::Ledger;

/// Host-side link names start with this; the rest comes from the endpoint id.
pub const LINK_PREFIX: &str = "rv";

/// The network driver: the ledger, and what only the driver keeps.
pub struct Driver<K> {
    ledger: Arc<Ledger<K>>,
    /// CreateNetwork and DeleteNetwork make and remove parents; they take this for
    /// writing so that no Join builds a child on a parent being removed. Endpoint work
    /// takes it for reading and runs concurrently.
    topology: tokio::sync::RwLock<()>,
    /// The group number that marks this store's links (see [`crate::kernel::LinkInfo::group`]).
    pub(crate) group: u32,
    /// Deletes queued links in the background.
    reaper: LinkReaper,
    /// Parent name -> interface index, so that Join costs one netlink round trip.
    parent_indexes: Mutex<HashMap<String, u32>>,
}

/// The driver reads and commits through the ledger as if its state were the driver's own.
impl<K> Deref for Driver<K> {
    type Target = Ledger<K>;
    fn deref(&self) -> &Ledger<K> {
        &self.ledger
    }
}

impl<K: Kernel> Driver<K> {
    pub fn new(ledger: Arc<Ledger<K>>, group: u32) -> Self {
        Driver {
            ledger,
            topology: tokio::sync::RwLock::new(()),
            group,
            reaper: LinkReaper::default(),
            parent_indexes: Mutex::new(HashMap::new()),
        }
    }

    /// Whether this store made the link: it carries the store's group number.
    pub(crate) fn is_ours(&self, link: &LinkInfo) -> bool {
        link.group == self.group
    }
}

fn pending_delete(endpoint: &EndpointRecord) -> PendingDelete {
    PendingDelete {
        link_name: endpoint.link_name.clone(),
        endpoint_id: endpoint.id.clone(),
        network_id: endpoint.network_id.clone(),
        mac: endpoint.mac,
        since: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    }
}

#[cfg(test)]
mod tests;
