//! The IpamDriver requests: each checks its arguments, plans with the allocator under the
//! state lock, and is answered once the plan is on disk.

use std::collections::BTreeMap;

use crate::api::wire::{
    AddressSpacesResponse, Empty, IpamCapabilities, REQUEST_ADDRESS_TYPE, REQUEST_ADDRESS_TYPE_GATEWAY,
    ReleaseAddressRequest, ReleasePoolRequest, RequestAddressRequest, RequestAddressResponse, RequestPoolRequest,
    RequestPoolResponse,
};
use crate::error::Error;
use crate::error::Result;
use crate::ipam::{
    Allocations, GLOBAL_ADDRESS_SPACE, LOCAL_ADDRESS_SPACE, PoolRequest, PoolScope, SCOPE_OPTION, SEGMENT_OPTION,
    parse_address, pool_id,
};
use crate::kernel::Kernel;
use crate::keys::check_option_keys;
use crate::model::Family;
use crate::plugin::Plugin;

/// Bare `--ipam-opt` keys rustvlan's IPAM understands.
const IPAM_KEYS: &[&str] = &[SEGMENT_OPTION, SCOPE_OPTION];

impl<K: Kernel> Plugin<K> {
    pub fn ipam_capabilities(&self) -> IpamCapabilities {
        // Allocations are durable, so dockerd need not replay pools and addresses after
        // its restarts (replays were fragile in dockerd 20.10).
        IpamCapabilities {
            requires_mac_address: false,
            requires_request_replay: false,
        }
    }

    pub fn address_spaces(&self) -> AddressSpacesResponse {
        AddressSpacesResponse {
            local: LOCAL_ADDRESS_SPACE,
            global: GLOBAL_ADDRESS_SPACE,
        }
    }

    pub async fn request_pool(&self, req: RequestPoolRequest) -> Result<RequestPoolResponse> {
        self.request_pool_of(req, false).await
    }

    /// RequestPool of `rustvlan` (`dhcp` false) or `rustvlan-dhcp`.
    pub(crate) async fn request_pool_of(&self, req: RequestPoolRequest, dhcp: bool) -> Result<RequestPoolResponse> {
        if let Some(options) = &req.options {
            check_option_keys("IPAM option", options.keys().map(String::as_str), IPAM_KEYS)?;
            if let Some(segment) = options.get(SEGMENT_OPTION) {
                check_segment(segment)?;
            }
            if let Some(scope) = options.get(SCOPE_OPTION) {
                scope.parse::<PoolScope>()?;
            }
        }
        let request = PoolRequest {
            dhcp,
            address_space: req.address_space,
            pool: req.pool.unwrap_or_default(),
            sub_pool: req.sub_pool.unwrap_or_default(),
            options: req.options.unwrap_or_default(),
            family: if req.v6.unwrap_or(false) {
                Family::V6
            } else {
                Family::V4
            },
        };
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
        let mut data = BTreeMap::new();
        if dhcp {
            // dockerd takes this as the network's gateway instead of picking one (it
            // still asks for a --gateway the user gave); each container's router comes
            // from its lease at Join. The subnet's own address stands for "none".
            data.insert(crate::api::wire::GATEWAY_DATA.to_string(), record.pool.to_string());
        }
        Ok(RequestPoolResponse {
            pool_id: pool_id(&record),
            pool: record.pool.to_string(),
            data,
        })
    }

    pub async fn release_pool(&self, req: ReleasePoolRequest) -> Result<Empty> {
        self.release_pool_leases(&req.pool_id).await?;
        let released = self.allocations().release_pool(&req.pool_id).await?;
        if released {
            tracing::info!(pool_id = %req.pool_id, "pool released");
        } else {
            tracing::debug!(pool_id = %req.pool_id, "release of an unknown pool: nothing to do");
        }
        Ok(Empty {})
    }

    pub async fn request_address(&self, req: RequestAddressRequest) -> Result<RequestAddressResponse> {
        let address = match req.address.as_deref().filter(|a| !a.is_empty()) {
            Some(text) => Some(parse_address("Address", text)?),
            None => None,
        };
        let gateway = req
            .options
            .as_ref()
            .and_then(|o| o.get(REQUEST_ADDRESS_TYPE))
            .is_some_and(|t| t == REQUEST_ADDRESS_TYPE_GATEWAY);
        if !gateway
            && let Some(cidr) = self
                .request_lease(&req.pool_id, address, req.options.as_ref().unwrap_or(&BTreeMap::new()))
                .await?
        {
            return Ok(RequestAddressResponse {
                address: cidr.to_string(),
                data: BTreeMap::new(),
            });
        }
        let cidr = self
            .allocations()
            .request_address(&req.pool_id, address, gateway)
            .await?;
        tracing::debug!(pool_id = %req.pool_id, address = %cidr, gateway, "address allocated");
        Ok(RequestAddressResponse {
            address: cidr.to_string(),
            data: BTreeMap::new(),
        })
    }

    pub async fn release_address(&self, req: ReleaseAddressRequest) -> Result<Empty> {
        let ip = parse_address("Address", &req.address)?;
        if self.release_lease(&req.pool_id, ip).await? {
            return Ok(Empty {});
        }
        if !self.allocations().release_address(&req.pool_id, ip).await? {
            tracing::debug!(pool_id = %req.pool_id, address = %ip, "release of an address not allocated: nothing to do");
        }
        Ok(Empty {})
    }
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
