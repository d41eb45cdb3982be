//! The IpamDriver requests: each checks its arguments, plans with the allocator under the
//! state lock, and is answered once the plan is on disk.

use std::collections::BTreeMap;

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::Ipam;
use crate::error::Error;
use crate::error::Result;
use crate::ipam::{
    AddressRequest, Allocations, PoolGrant, PoolRequest, PoolScope, SCOPE_OPTION, SEGMENT_OPTION, pool_id,
};
use crate::kernel::Kernel;
use crate::keys::check_option_keys;
use crate::model::AddressSource;

/// Bare `--ipam-opt` keys rustvlan's IPAM understands.
const IPAM_KEYS: &[&str] = &[SEGMENT_OPTION, SCOPE_OPTION];

impl<K: Kernel> Ipam<K> {
    /// RequestPool of `rustvlan`, or of `rustvlan-dhcp` when `request.dhcp`.
    pub async fn request_pool(&self, request: PoolRequest) -> Result<PoolGrant> {
        check_ipam_options(&request.options)?;
        let dhcp = request.dhcp;
        let record = if dhcp {
            self.check_no_dhcp_pool_being_bound(&request)?;
            // Leases are this host's: never shared through etcd.
            let record = crate::ipam::LocalAllocations::new(self).request_pool(&request).await?;
            self.dhcp_pools_made
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(record.seq, std::time::Instant::now());
            record
        } else {
            self.allocations().request_pool(&request).await?
        };
        tracing::info!(pool_id = %pool_id(&record), dhcp, "pool allocated");
        Ok(PoolGrant {
            pool_id: pool_id(&record),
            pool: record.pool,
            dhcp,
        })
    }

    pub async fn release_pool(&self, pool_id: &str) -> Result<()> {
        if self.source_of(pool_id)? == AddressSource::Lease {
            self.release_pool_leases(pool_id).await?;
        }
        let released = self.allocations().release_pool(pool_id).await?;
        if released {
            tracing::info!(pool_id, "pool released");
        } else {
            tracing::debug!(pool_id, "release of an unknown pool: nothing to do");
        }
        Ok(())
    }

    /// A lease on a DHCP pool (unless it is the gateway), else an allocation, local or
    /// shared as the pool's source says.
    pub async fn request_address(&self, ask: AddressRequest) -> Result<IpNetwork> {
        if self.source_of(&ask.pool_id)? == AddressSource::Lease && !ask.gateway {
            return self.request_lease(&ask.pool_id, ask.address, &ask.options).await;
        }
        let cidr = self
            .allocations()
            .request_address(&ask.pool_id, ask.address, ask.gateway)
            .await?;
        tracing::debug!(pool_id = %ask.pool_id, address = %cidr, gateway = ask.gateway, "address allocated");
        Ok(cidr)
    }

    pub async fn release_address(&self, pool_id: &str, ip: IpAddr) -> Result<()> {
        // A lease pool's gateway is allocated, not leased.
        if self.source_of(pool_id)? == AddressSource::Lease && self.release_lease(pool_id, ip).await? {
            return Ok(());
        }
        if !self.allocations().release_address(pool_id, ip).await? {
            tracing::debug!(pool_id, address = %ip, "release of an address not allocated: nothing to do");
        }
        Ok(())
    }
}

impl<K: Kernel> Ipam<K> {
    /// The source of the pool's addresses; an unknown pool is left to the allocations,
    /// which answer for it.
    fn source_of(&self, pool_id: &str) -> Result<AddressSource> {
        let state = self.state();
        Ok(state
            .ipam
            .lookup(pool_id)?
            .map_or(AddressSource::Local, |p| p.record.source()))
    }
}

/// `--ipam-opt`: the keys rustvlan knows, and their values.
fn check_ipam_options(options: &BTreeMap<String, String>) -> Result<()> {
    check_option_keys("IPAM option", options.keys().map(String::as_str), IPAM_KEYS)?;
    if let Some(segment) = options.get(SEGMENT_OPTION) {
        check_segment(segment)?;
    }
    if let Some(scope) = options.get(SCOPE_OPTION) {
        scope.parse::<PoolScope>()?;
    }
    Ok(())
}

/// A segment names an L2 segment: a short word, the same on every host of it.
fn check_segment(segment: &str) -> Result<()> {
    let fine = (1..=64).contains(&segment.len())
        && segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if fine {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "--ipam-opt segment={segment:?} is not a segment name: use 1 to 64 letters, digits, '-', '_' or '.', the same on every network of that L2 segment"
        )))
    }
}
