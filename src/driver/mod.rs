//! The network driver: networks, endpoints and their links.
//!
//! Order of work, so that a crash at any point leaves nothing that start-up cannot
//! explain: links are made in the kernel *before* the records that own them are written,
//! and records are removed *before* their links are deleted. A link whose record is
//! missing carries rustvlan's mark (its group number) and is swept by [`Plugin::reconcile`].

mod calls;
mod endpoint;
pub mod host_access;
mod join;
mod network;
pub mod options;
mod reaper;
mod reconcile;

pub use calls::{
    EndpointCreated, EndpointInfo, EndpointRef, EndpointSpec, GatewayNeeds, JoinAnswer, JoinSpec, NetworkSpec, Route,
    SubnetSpec,
};
pub use reaper::LinkReaper;
pub use reconcile::ReconcileReport;

use crate::kernel::{Kernel, LinkInfo};
use crate::model::{EndpointRecord, PendingDelete};
use crate::plugin::Plugin;

/// Host-side link names start with this; the rest comes from the endpoint id.
pub const LINK_PREFIX: &str = "rv";

impl<K: Kernel> Plugin<K> {
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
