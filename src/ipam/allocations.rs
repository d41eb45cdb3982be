//! The allocation seam: where a pool's allocations are decided and made durable. The
//! IpamDriver handlers only speak to [`Allocations`]; today's source is the local one,
//! which plans with the pure allocator and commits to the sled store. A store shared
//! across hosts (etcd) or a lease source (the LAN's DHCP server) is another
//! implementation beside it, chosen per pool, with neither the handlers nor the driver
//! changing.

use std::future::Future;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::PoolRequest;
use crate::error::Result;
use crate::kernel::Kernel;
use crate::ledger::Ledger;
use crate::model::PoolRecord;
use crate::state::Change;

/// A source of pools and addresses. Every answer is durable before it returns: dockerd
/// never replays an allocation.
pub trait Allocations {
    /// A new pool (its id is never reused).
    fn request_pool(&self, request: &PoolRequest) -> impl Future<Output = Result<PoolRecord>> + Send;
    /// Whether there was such a pool to release.
    fn release_pool(&self, pool_id: &str) -> impl Future<Output = Result<bool>> + Send;
    /// `address`, or the next free one; with its pool's prefix length.
    fn request_address(
        &self,
        pool_id: &str,
        address: Option<IpAddr>,
        gateway: bool,
    ) -> impl Future<Output = Result<IpNetwork>> + Send;
    /// Whether the address was allocated.
    fn release_address(&self, pool_id: &str, address: IpAddr) -> impl Future<Output = Result<bool>> + Send;
}

/// This host's own pools: planned by the pure allocator under the state lock, written in
/// the request's sled batch.
pub struct LocalAllocations<'a, K> {
    ledger: &'a Ledger<K>,
}

impl<'a, K: Kernel> LocalAllocations<'a, K> {
    pub fn new(ledger: &'a Ledger<K>) -> Self {
        LocalAllocations { ledger }
    }
}

fn ipam_changes(changes: Vec<super::IpamChange>) -> Vec<Change> {
    changes.into_iter().map(Change::Ipam).collect()
}

impl<K: Kernel> Allocations for LocalAllocations<'_, K> {
    async fn request_pool(&self, request: &PoolRequest) -> Result<PoolRecord> {
        self.ledger
            .commit(|state| {
                let (record, changes) = state.ipam.plan_request_pool(request)?;
                Ok((record, ipam_changes(changes)))
            })
            .await
    }

    async fn release_pool(&self, pool_id: &str) -> Result<bool> {
        self.ledger
            .commit(|state| {
                let changes = state.ipam.plan_release_pool(pool_id)?;
                Ok((!changes.is_empty(), ipam_changes(changes)))
            })
            .await
    }

    async fn request_address(&self, pool_id: &str, address: Option<IpAddr>, gateway: bool) -> Result<IpNetwork> {
        self.ledger
            .commit(|state| {
                let (cidr, changes) = state.ipam.plan_request_address(pool_id, address, gateway)?;
                Ok((cidr, ipam_changes(changes)))
            })
            .await
    }

    async fn release_address(&self, pool_id: &str, address: IpAddr) -> Result<bool> {
        self.ledger
            .commit(|state| {
                let changes = state.ipam.plan_release_address(pool_id, address)?;
                Ok((!changes.is_empty(), ipam_changes(changes)))
            })
            .await
    }
}
