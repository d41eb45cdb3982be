//! CreateEndpoint, DeleteEndpoint and EndpointOperInfo: an endpoint's record (address,
//! MAC, host link name) is planned and written; its link is only made at Join, and on
//! delete it is queued for the link reaper.

use ipnetwork::IpNetwork;

use super::Driver;
use super::calls::{EndpointCreated, EndpointInfo, EndpointRef, EndpointSpec};
use super::options::check_id;
use super::{LINK_PREFIX, pending_delete};
use crate::error::{Error, Result};
use crate::kernel::{IFNAME_MAX, Kernel};
use crate::keys::check_option_keys;
use crate::model::{EndpointRecord, Family, LinkMode, MacAddr, NetworkRecord};
use crate::state::{Change, State};
use crate::util::short_id;

/// Bare endpoint `driver-opt` keys rustvlan understands: none yet. dockerd's own keys
/// (`com.docker.network.endpoint.*`, `com.docker.network.portmap`) are namespaced.
const ENDPOINT_KEYS: &[&str] = &[];

impl<K: Kernel> Driver<K> {
    pub async fn create_endpoint(&self, req: EndpointSpec) -> Result<EndpointCreated> {
        check_id("NetworkID", &req.network_id)?;
        check_id("EndpointID", &req.endpoint_id)?;
        check_option_keys("endpoint option", req.options.keys().map(String::as_str), ENDPOINT_KEYS)?;
        let ipv4 = parse_endpoint_address("Interface.Address", req.ipv4.as_deref(), Family::V4)?;
        let ipv6 = parse_endpoint_address("Interface.AddressIPv6", req.ipv6.as_deref(), Family::V6)?;
        let requested_mac = match req.mac.as_deref().filter(|m| !m.is_empty()) {
            Some(text) => {
                let mac: MacAddr = text
                    .parse()
                    .map_err(|e: String| Error::invalid(format!("Interface.MacAddress {e}")))?;
                if mac.is_multicast() {
                    return Err(Error::invalid(format!(
                        "Interface.MacAddress {mac} is a multicast or broadcast address; a container needs a unicast MAC"
                    )));
                }
                if mac.is_zero() {
                    return Err(Error::invalid(
                        "Interface.MacAddress 00:00:00:00:00:00 is not a usable MAC",
                    ));
                }
                Some(mac)
            }
            None => None,
        };

        let answer = self
            .commit(|state| {
                let network = state
                    .networks
                    .get(&req.network_id)
                    .ok_or_else(|| Error::not_found(format!("network {} not found", short_id(&req.network_id))))?;
                if let Some(existing) = state.endpoints.get(&req.endpoint_id) {
                    let same = existing.network_id == req.network_id
                        && existing.ipv4 == ipv4
                        && existing.ipv6 == ipv6
                        && match requested_mac {
                            Some(mac) => existing.mac == Some(mac) && !existing.mac_generated,
                            None => existing.mac.is_none() || existing.mac_generated,
                        };
                    return if same {
                        Ok((endpoint_answer(existing), Vec::new()))
                    } else {
                        Err(Error::conflict(format!(
                            "endpoint {} already exists with other settings",
                            short_id(&req.endpoint_id)
                        )))
                    };
                }
                // rustvlan-dhcp asks dockerd for a MAC per endpoint, and dockerd then sends it
                // here too; an ipvlan link has its parent's MAC, and the MAC only named
                // the lease's client-id.
                let leased_ipvlan = matches!(network.link, LinkMode::Ipvlan { .. })
                    && state
                        .ipam
                        .pools()
                        .any(|p| p.record.dhcp && p.record.claimed_by.as_deref() == Some(network.id.as_str()));
                let requested_mac = requested_mac.filter(|_| !leased_ipvlan);
                let record = plan_endpoint(state, network, &req.endpoint_id, ipv4, ipv6, requested_mac)?;
                Ok((endpoint_answer(&record), vec![Change::PutEndpoint(record)]))
            })
            .await?;
        tracing::debug!(
            network = short_id(&req.network_id),
            endpoint = short_id(&req.endpoint_id),
            "endpoint created"
        );
        Ok(answer)
    }

    /// Forgets the endpoint and queues its link for deletion off the request path:
    /// `docker run --rm` does not wait for the kernel's RCU grace period.
    pub async fn delete_endpoint(&self, req: &EndpointRef) -> Result<()> {
        let removed = self
            .commit(|state| match state.endpoints.get(&req.endpoint_id) {
                Some(e) if e.network_id != req.network_id => Err(Error::invalid(format!(
                    "endpoint {} belongs to network {}, not {}",
                    short_id(&e.id),
                    short_id(&e.network_id),
                    short_id(&req.network_id)
                ))),
                Some(e) => Ok((
                    Some((e.clone(), state.networks.get(&e.network_id).cloned())),
                    vec![Change::DelEndpoint(e.id.clone()), Change::PutPending(pending_delete(e))],
                )),
                None => Ok((None, Vec::new())),
            })
            .await?;
        match removed {
            Some((endpoint, network)) => {
                if let Some(network) = network {
                    self.leave_host_access(&network, &endpoint).await;
                }
                self.reaper.queued();
                tracing::debug!(endpoint = short_id(&endpoint.id), link = %endpoint.link_name, "endpoint deleted; link delete queued");
            }
            None => tracing::debug!(
                endpoint = short_id(&req.endpoint_id),
                "delete of an unknown endpoint: nothing to do"
            ),
        }
        Ok(())
    }

    /// None for an endpoint this store does not know.
    pub fn endpoint_info(&self, endpoint_id: &str) -> Option<EndpointInfo> {
        let state = self.state();
        let e = state.endpoints.get(endpoint_id)?;
        Some(EndpointInfo {
            link_name: e.link_name.clone(),
            mac: e.mac,
            parent: state
                .networks
                .get(&e.network_id)
                .map(|n| (n.parent.clone(), n.link.to_string())),
        })
    }
}

fn parse_endpoint_address(field: &str, text: Option<&str>, family: Family) -> Result<Option<IpNetwork>> {
    let Some(text) = text.filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let net: IpNetwork = text
        .parse()
        .ok()
        .filter(|_| text.contains('/'))
        .ok_or_else(|| Error::invalid(format!("{field} {text:?} is not an address in CIDR notation")))?;
    if Family::of(&net) != family {
        return Err(Error::invalid(format!("{field} {text} is not an {family} address")));
    }
    Ok(Some(net))
}

/// Decides an endpoint's record: address checks, MAC, host link name.
fn plan_endpoint(
    state: &State,
    network: &NetworkRecord,
    endpoint_id: &str,
    ipv4: Option<IpNetwork>,
    ipv6: Option<IpNetwork>,
    requested_mac: Option<MacAddr>,
) -> Result<EndpointRecord> {
    let net_id = short_id(&network.id);
    for (address, subnets) in [(ipv4, &network.ipv4), (ipv6, &network.ipv6)] {
        if let Some(a) = address
            && !subnets.is_empty()
            && !subnets.iter().any(|s| s.pool.contains(a.ip()))
        {
            let list: Vec<String> = subnets.iter().map(|s| s.pool.to_string()).collect();
            return Err(Error::invalid(format!(
                "address {} is not in the subnets of network {net_id} ({})",
                a.ip(),
                list.join(", ")
            )));
        }
    }
    let siblings: Vec<&EndpointRecord> = state.endpoints_of(&network.id).collect();
    if network.link.is_passthru()
        && let Some(first) = siblings.first()
    {
        return Err(Error::conflict(format!(
            "macvlan passthru network {net_id} already has endpoint {}; passthru gives the parent to one container",
            short_id(&first.id)
        )));
    }
    let (mac, mac_generated) = match network.link {
        LinkMode::Ipvlan { .. } => {
            if let Some(mac) = requested_mac {
                return Err(Error::invalid(format!(
                    "ipvlan interfaces share the parent's MAC: MAC address {mac} cannot be set on ipvlan network {net_id}"
                )));
            }
            (None, false)
        }
        LinkMode::Macvlan { .. } => match requested_mac {
            Some(mac) => {
                if let Some(other) = siblings.iter().find(|e| e.mac == Some(mac)) {
                    return Err(Error::conflict(format!(
                        "MAC address {mac} is already used by endpoint {} on network {net_id}",
                        short_id(&other.id)
                    )));
                }
                (Some(mac), false)
            }
            // Passthru hands the parent itself to the container: it keeps the parent's
            // MAC, since setting another would change the NIC's own address.
            None if network.link.is_passthru() => (None, false),
            None => {
                let mac = std::iter::repeat_with(MacAddr::random_local)
                    .find(|m| !siblings.iter().any(|e| e.mac == Some(*m)))
                    .expect("an endless supply of random MACs");
                (Some(mac), true)
            }
        },
    };
    Ok(EndpointRecord {
        id: endpoint_id.to_string(),
        network_id: network.id.clone(),
        link_name: link_name_for(state, endpoint_id),
        mac,
        mac_generated,
        ipv4,
        ipv6,
        sandbox: None,
    })
}

/// `rv` and the start of the endpoint id, lengthened (then randomised) only if another
/// endpoint already has that name.
fn link_name_for(state: &State, endpoint_id: &str) -> String {
    let room = IFNAME_MAX - LINK_PREFIX.len();
    (12..=room)
        .map(|n| format!("{LINK_PREFIX}{}", crate::util::prefix(endpoint_id, n)))
        .chain(std::iter::repeat_with(|| {
            let mut bytes = [0u8; IFNAME_MAX / 2];
            crate::util::random_bytes(&mut bytes);
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            format!("{LINK_PREFIX}{}", &hex[..room])
        }))
        .find(|name| state.link_name_free(name))
        .expect("an endless supply of names")
}

fn endpoint_answer(record: &EndpointRecord) -> EndpointCreated {
    // Only what the caller left empty: a MAC rustvlan chose.
    EndpointCreated {
        chosen_mac: record.mac.filter(|_| record.mac_generated),
    }
}
