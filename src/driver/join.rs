//! Join and Leave: the endpoint's link is made in the host namespace in one netlink
//! round trip, and dockerd moves it into the container (and back at Leave).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

use super::Driver;
use super::calls::{EndpointRef, JoinAnswer, JoinSpec, Route};
use crate::error::{Error, Result};
use crate::kernel::{ChildLink, Errno, Kernel, KernelError};
use crate::model::{EndpointRecord, NetworkRecord};
use crate::util::short_id;

impl<K: Kernel> Driver<K> {
    pub async fn join(&self, req: JoinSpec) -> Result<JoinAnswer> {
        let _topology = self.topology.read().await;
        let (endpoint, network, wait_for_deletes) = self.join_targets(&req.endpoint)?;
        if wait_for_deletes {
            self.process_pending().await?;
        }
        self.add_child_link(&network, &endpoint).await?;
        let host_routes = match self.join_host_access(&network, &endpoint).await {
            Ok(routes) => routes,
            Err(err) => {
                // A failed Join leaves no link behind.
                if let Ok(Some(link)) = self.kernel.link(&endpoint.link_name).await {
                    self.delete_quietly(link.index, &endpoint.link_name).await;
                }
                return Err(err);
            }
        };
        self.note_sandbox(&endpoint.id, req.sandbox.filter(|k| !k.is_empty()));
        tracing::debug!(endpoint = short_id(&endpoint.id), link = %endpoint.link_name, "joined");
        let mut answer = join_answer(&network, &endpoint);
        answer.routes.extend(host_routes);
        // A DHCP lease's router is the gateway (rustvlan-dhcp pools have no other), and
        // its classless static routes (option 121) are the container's too.
        let lease_routing = match endpoint.ipv4 {
            Some(IpNetwork::V4(address)) if !network.internal => {
                self.state().lease_routing(&network.parent, address.ip())
            }
            _ => None,
        };
        if let Some((router, routes)) = lease_routing {
            answer.gateway = router.map(IpAddr::V4);
            answer.routes.extend(routes.into_iter().map(|(destination, via)| {
                let destination = IpNetwork::V4(destination);
                // RFC 3442 spells an on-link route with a gateway of 0.0.0.0.
                if via.is_unspecified() {
                    Route::Connected { destination }
                } else {
                    Route::Via {
                        destination,
                        next_hop: IpAddr::V4(via),
                    }
                }
            }));
        }
        Ok(answer)
    }

    /// The endpoint and network a Join is for, and whether a link being deleted stands
    /// in the way.
    fn join_targets(&self, req: &EndpointRef) -> Result<(EndpointRecord, NetworkRecord, bool)> {
        let state = self.state();
        let endpoint = state
            .endpoints
            .get(&req.endpoint_id)
            .ok_or_else(|| Error::not_found(format!("endpoint {} not found", short_id(&req.endpoint_id))))?;
        if endpoint.network_id != req.network_id {
            return Err(Error::invalid(format!(
                "endpoint {} belongs to network {}, not {}",
                short_id(&endpoint.id),
                short_id(&endpoint.network_id),
                short_id(&req.network_id)
            )));
        }
        let network = state
            .networks
            .get(&endpoint.network_id)
            .ok_or_else(|| Error::not_found(format!("network {} not found", short_id(&endpoint.network_id))))?;
        // A link still being deleted can stand in the new one's way: passthru takes
        // its parent alone, and macvlan refuses a MAC twice on one parent.
        let in_the_way = state.pending.values().any(|p| {
            (network.link.is_passthru() && p.network_id == network.id)
                || (endpoint.mac.is_some() && p.mac == endpoint.mac)
        });
        Ok((endpoint.clone(), network.clone(), in_the_way))
    }

    /// Makes the endpoint's link in the host namespace.
    async fn add_child_link(&self, network: &NetworkRecord, endpoint: &EndpointRecord) -> Result<()> {
        // One netlink round trip in the common case: the parent's index is cached, and a
        // leftover of the same name is only looked at if the kernel reports one.
        let mut child = ChildLink {
            name: endpoint.link_name.clone(),
            parent_index: self.parent_index(network, false).await?,
            mode: network.link,
            mac: endpoint.mac,
            mtu: network.mtu,
            group: self.group,
        };
        let (mut refreshed_parent, mut removed_leftover) = (false, false);
        loop {
            match self.kernel.add_child(&child).await {
                Ok(()) => return Ok(()),
                // The parent was re-made (a reboot, a reconcile) and has a new index.
                Err(e) if e.is(Errno::ENODEV) && !refreshed_parent => {
                    refreshed_parent = true;
                    child.parent_index = self.parent_index(network, true).await?;
                }
                Err(e) if e.is(Errno::EEXIST) && !removed_leftover => {
                    removed_leftover = true;
                    self.remove_leftover(&endpoint.link_name).await?;
                }
                Err(e) => return Err(explain_child_error(e, network, endpoint)),
            }
        }
    }

    /// The parent's interface index, from the cache unless `refresh`.
    async fn parent_index(&self, network: &NetworkRecord, refresh: bool) -> Result<u32> {
        if !refresh
            && let Some(&index) = self
                .parent_indexes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&network.parent)
        {
            return Ok(index);
        }
        let parent = self.kernel.link(&network.parent).await?.ok_or_else(|| {
            Error::kernel(format!(
                "parent interface {} of network {} is missing",
                network.parent,
                short_id(&network.id)
            ))
        })?;
        self.parent_indexes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(network.parent.clone(), parent.index);
        Ok(parent.index)
    }

    /// A link with this endpoint's name exists: a leftover of an earlier Join of the same
    /// endpoint (names are unique per store, so a marked link of this name is this
    /// endpoint's), which goes; or someone else's, which stays and fails the Join.
    async fn remove_leftover(&self, name: &str) -> Result<()> {
        let Some(leftover) = self.kernel.link(name).await? else {
            return Ok(()); // gone meanwhile
        };
        if !self.is_ours(&leftover) {
            return Err(Error::conflict(format!(
                "interface name {name} is taken by a link rustvlan did not make; remove that link"
            )));
        }
        tracing::info!(link = name, "removing this endpoint's leftover link before Join");
        self.kernel.delete(leftover.index).await?;
        Ok(())
    }

    pub async fn leave(&self, req: &EndpointRef) {
        // dockerd moves the link back to the host itself; DeleteEndpoint removes it.
        self.note_sandbox(&req.endpoint_id, None);
        let records = {
            let state = self.state();
            state.endpoints.get(&req.endpoint_id).and_then(|e| {
                let network = state.networks.get(&e.network_id)?;
                network.host_access.is_some().then(|| (network.clone(), e.clone()))
            })
        };
        if let Some((network, endpoint)) = records {
            self.leave_host_access(&network, &endpoint).await;
        }
        tracing::debug!(endpoint = short_id(&req.endpoint_id), "leave");
    }
}

fn join_answer(network: &NetworkRecord, endpoint: &EndpointRecord) -> JoinAnswer {
    let gateway_for = |address: Option<IpNetwork>, subnets: &[crate::model::Subnet]| {
        let address = address?;
        subnets
            .iter()
            .find(|s| s.pool.contains(address.ip()))
            .and_then(|s| s.gateway)
            .map(|g| g.ip())
    };
    let mut answer = JoinAnswer {
        link_name: endpoint.link_name.clone(),
        name_prefix: "eth",
        gateway: None,
        gateway_v6: None,
        routes: Vec::new(),
    };
    if network.internal {
        return answer;
    }
    if network.link.is_routed() {
        // ipvlan l3/l3s: no gateway on the wire; everything leaves through the device.
        let unspecified: [IpAddr; 2] = [Ipv4Addr::UNSPECIFIED.into(), Ipv6Addr::UNSPECIFIED.into()];
        for (address, any) in [endpoint.ipv4, endpoint.ipv6].into_iter().zip(unspecified) {
            let destination = IpNetwork::new(any, 0).expect("0 is a valid prefix");
            if address.is_some() {
                answer.routes.push(Route::Connected { destination });
            }
        }
    } else {
        answer.gateway = gateway_for(endpoint.ipv4, &network.ipv4);
        answer.gateway_v6 = gateway_for(endpoint.ipv6, &network.ipv6);
    }
    answer
}

fn explain_child_error(e: KernelError, network: &NetworkRecord, endpoint: &EndpointRecord) -> Error {
    let kind = network.link.kind();
    let parent = &network.parent;
    if e.is(Errno::EBUSY) {
        Error::conflict(format!(
            "{}: parent {parent} already has links that cannot live beside a {} child (macvlan and ipvlan cannot share a parent; passthru takes it alone)",
            e, network.link
        ))
        .caused_by(e)
    } else if e.is(Errno::EADDRINUSE) {
        Error::conflict(format!(
            "{}: MAC address {} is already used on parent {parent}",
            e,
            endpoint.mac.map(|m| m.to_string()).unwrap_or_default()
        ))
    } else if e.is(Errno::EOPNOTSUPP) {
        Error::kernel(format!("{}: this kernel has no {kind} support (modprobe {kind})", e)).caused_by(e)
    } else if e.is(Errno::EINVAL) && network.mtu.is_some() {
        Error::kernel(format!(
            "{}: is mtu {} above the parent's?",
            e,
            network.mtu.unwrap_or_default()
        ))
        .caused_by(e)
    } else {
        Error::from(e)
    }
}
