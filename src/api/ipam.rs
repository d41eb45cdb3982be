//! The IpamDriver calls in Docker's words and the IPAM's: requests turned into
//! [`PoolRequest`]/[`AddressRequest`], answers into Docker's JSON, the capabilities
//! dockerd asks for.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::wire::{
    AddressSpacesResponse, GATEWAY_DATA, IpamCapabilities, REQUEST_ADDRESS_TYPE, REQUEST_ADDRESS_TYPE_GATEWAY,
    ReleaseAddressRequest, RequestAddressRequest, RequestAddressResponse, RequestPoolRequest, RequestPoolResponse,
};
use crate::error::Result;
use crate::ipam::{AddressRequest, GLOBAL_ADDRESS_SPACE, LOCAL_ADDRESS_SPACE, PoolGrant, PoolRequest, parse_address};
use crate::model::Family;

/// `rustvlan`'s: allocations are durable, so dockerd need not replay pools and addresses
/// after its restarts (replays were fragile in dockerd 20.10).
pub fn capabilities(dhcp: bool) -> IpamCapabilities {
    IpamCapabilities {
        // The MAC is what a lease is for: dockerd sends it with RequestAddress, and the
        // same one to CreateEndpoint.
        requires_mac_address: dhcp,
        requires_request_replay: false,
    }
}

pub fn address_spaces() -> AddressSpacesResponse {
    AddressSpacesResponse {
        local: LOCAL_ADDRESS_SPACE,
        global: GLOBAL_ADDRESS_SPACE,
    }
}

pub fn pool_request(req: RequestPoolRequest, dhcp: bool) -> PoolRequest {
    PoolRequest {
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
    }
}

pub fn pool_answer(grant: PoolGrant) -> RequestPoolResponse {
    let mut data = BTreeMap::new();
    if grant.dhcp {
        // dockerd takes this as the network's gateway instead of picking one (it still
        // asks for a --gateway the user gave); each container's router comes from its
        // lease at Join. The subnet's own address stands for "none".
        data.insert(GATEWAY_DATA.to_string(), grant.pool.to_string());
    }
    RequestPoolResponse {
        pool_id: grant.pool_id,
        pool: grant.pool.to_string(),
        data,
    }
}

pub fn address_request(req: RequestAddressRequest) -> Result<AddressRequest> {
    let address = match req.address.as_deref().filter(|a| !a.is_empty()) {
        Some(text) => Some(parse_address("Address", text)?),
        None => None,
    };
    let options = req.options.unwrap_or_default();
    let gateway = options
        .get(REQUEST_ADDRESS_TYPE)
        .is_some_and(|t| t == REQUEST_ADDRESS_TYPE_GATEWAY);
    Ok(AddressRequest {
        pool_id: req.pool_id,
        address,
        gateway,
        options,
    })
}

/// RequestAddress answers a CIDR: dockerd parses it with types.ParseCIDR.
pub fn address_answer(cidr: IpNetwork) -> RequestAddressResponse {
    RequestAddressResponse {
        address: cidr.to_string(),
        data: BTreeMap::new(),
    }
}

pub fn released_address(req: &ReleaseAddressRequest) -> Result<IpAddr> {
    parse_address("Address", &req.address)
}
