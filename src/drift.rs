//! Whether the kernel still matches rustvlan's records: where an endpoint's link is,
//! whether a parent or shim is present, and every disagreement (a [`Drift`]).
//!
//! One model for both readers. `rustvlan state` shows a running plugin's [`KernelView`],
//! which looks at the host namespace alone; `rustvlan status` builds a [`Comparison`],
//! which starts from the same [`HostView`] and also looks into the containers'
//! namespaces. Everything here is pure: the kernel is asked elsewhere, and its links
//! come in as [`SeenLink`]s (the kernel's own type belongs to an adapter, which the core
//! may not import).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::model::{EndpointRecord, LeaseRecord, MacAddr, NetworkRecord, ParentRecord, PendingDelete};
use crate::util::short_id;

/// What a running plugin adds to `rustvlan state`: a store read with no plugin has none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum KernelView {
    Seen(HostView),
    /// The kernel could not be asked.
    Failed {
        error: String,
    },
}

/// What the host namespace's links show of the records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostView {
    /// Endpoint id -> where its link is.
    pub endpoint_links: BTreeMap<String, LinkPlace>,
    /// Parent name -> whether it exists.
    pub parents: BTreeMap<String, Presence>,
}

impl HostView {
    /// `host_links` are the names of the host namespace's links.
    pub fn of<'a>(
        host_links: &BTreeSet<&str>,
        endpoints: impl IntoIterator<Item = &'a EndpointRecord>,
        networks: impl IntoIterator<Item = &'a NetworkRecord>,
    ) -> HostView {
        let endpoint_links = endpoints
            .into_iter()
            .map(|e| {
                let place = if host_links.contains(e.link_name.as_str()) {
                    LinkPlace::HostNamespace
                } else {
                    LinkPlace::Elsewhere
                };
                (e.id.clone(), place)
            })
            .collect();
        let parents = networks
            .into_iter()
            .map(|n| {
                let presence = if host_links.contains(n.parent.as_str()) {
                    Presence::Present
                } else {
                    Presence::Missing
                };
                (n.parent.clone(), presence)
            })
            .collect();
        HostView {
            endpoint_links,
            parents,
        }
    }
}

/// Where an endpoint's link is, as far as the host namespace tells: [`LinkIs`] says
/// more after a look into the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkPlace {
    #[serde(rename = "in host namespace")]
    HostNamespace,
    #[serde(rename = "not in host namespace (inside a container, or gone)")]
    Elsewhere,
}

impl fmt::Display for LinkPlace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LinkPlace::HostNamespace => "in host namespace",
            LinkPlace::Elsewhere => "not in host namespace (inside a container, or gone)",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    Present,
    Missing,
}

/// Where an endpoint's link is: [`LinkPlace`] refined by a look into the container's
/// namespace when the link is not in the host's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "where", rename_all = "snake_case")]
pub enum LinkIs {
    /// In the host namespace: made by Join and not moved yet, or back after Leave.
    Host,
    /// In the container's namespace, under the name dockerd gave it.
    Container { sandbox: String, name: String },
    /// Not joined: Join makes the link.
    NotJoined,
    /// Not looked for (the namespace could not be read, or the parent is missing).
    Unknown { why: String },
    /// Expected and not found: see the drift section.
    Missing,
}

impl fmt::Display for LinkIs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkIs::Host => f.write_str("in the host namespace"),
            LinkIs::Container { name, .. } => write!(f, "{name} in its container"),
            LinkIs::NotJoined => f.write_str("not joined"),
            LinkIs::Unknown { why } => write!(f, "unknown: {why}"),
            LinkIs::Missing => f.write_str("MISSING (see drift)"),
        }
    }
}

/// A disagreement between the records and the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Drift {
    /// A macvlan or ipvlan link carrying this store's mark that no endpoint owns.
    OrphanLink { link: String, link_kind: String },
    /// A VLAN or dummy link carrying this store's mark that is no recorded parent.
    OrphanParent { link: String },
    /// A joined endpoint whose container namespace has no link of it.
    EndpointLinkGone {
        endpoint: String,
        network: String,
        sandbox: String,
    },
    /// A joined endpoint whose container namespace is gone.
    ContainerGone {
        endpoint: String,
        network: String,
        sandbox: String,
    },
    /// A network's parent interface does not exist.
    ParentMissing { parent: String, networks: Vec<String> },
    /// An address this host records in a shared pool that another host holds in etcd.
    SharedConflict { plan: String, ip: IpAddr, held_by: String },
    /// A DHCP lease whose last renewal failed (NAK, no answer, another address).
    LeaseTrouble {
        address: IpNetwork,
        server: Ipv4Addr,
        trouble: String,
    },
    /// A host-access network's shim is not in the host namespace.
    ShimMissing { shim: String, parent: String },
    /// Shared pools are configured and etcd does not answer.
    EtcdUnreachable { endpoints: String, trouble: String },
}

impl Drift {
    /// The same finding, though etcd's error may be worded differently each time.
    pub fn same_as(&self, other: &Drift) -> bool {
        match (self, other) {
            (Drift::EtcdUnreachable { endpoints: a, .. }, Drift::EtcdUnreachable { endpoints: b, .. }) => a == b,
            _ => self == other,
        }
    }
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Drift::OrphanLink { link, link_kind } => write!(
                f,
                "orphan link {link}: a {link_kind} link with rustvlan's mark that no endpoint owns (left by a crash, or made \
                 behind rustvlan's back); restarting rustvlan deletes it"
            ),
            Drift::OrphanParent { link } => write!(
                f,
                "orphan parent {link}: a link with rustvlan's mark that is no parent rustvlan made; restarting rustvlan \
                 deletes it"
            ),
            Drift::EndpointLinkGone {
                endpoint,
                network,
                sandbox,
            } => write!(
                f,
                "endpoint {} of network {}: its link is gone from the container's namespace {sandbox} (deleted behind \
                 rustvlan's back); restart the container to get a new one",
                short_id(endpoint),
                short_id(network)
            ),
            Drift::ContainerGone {
                endpoint,
                network,
                sandbox,
            } => write!(
                f,
                "endpoint {} of network {}: its container's namespace {sandbox} is gone but the endpoint was never \
                 removed (dockerd crashed?); `docker network disconnect -f` or restarting dockerd removes it",
                short_id(endpoint),
                short_id(network)
            ),
            Drift::SharedConflict { plan, ip, held_by } => write!(
                f,
                "address {ip} of shared plan {plan}: recorded here, but held by host {held_by} in etcd (it was reclaimed \
                 while this host was away); the container using it here must move to another address"
            ),
            Drift::EtcdUnreachable { trouble, .. } => {
                // The trouble names etcd and its endpoints (see `SharedDump::trouble`).
                write!(
                    f,
                    "{trouble}; shared pools cannot allocate until it answers, local pools work, running containers \
                     are not affected"
                )
            }
            Drift::LeaseTrouble {
                address,
                server,
                trouble,
            } => write!(
                f,
                "DHCP lease {address} from {server}: {trouble}; the container keeps its address until it is restarted"
            ),
            Drift::ShimMissing { shim, parent } => write!(
                f,
                "host-access shim {shim} on {parent} is missing: the host cannot reach those networks' containers; \
                 restarting rustvlan re-makes it"
            ),
            Drift::ParentMissing { parent, networks } => {
                let networks: Vec<&str> = networks.iter().map(|n| short_id(n)).collect();
                write!(
                    f,
                    "parent {parent} of network {} is missing: containers cannot join; bring the interface back, or \
                     restart rustvlan if it made it",
                    networks.join(", ")
                )
            }
        }
    }
}

/// etcd not answering now (`trouble` says why), or never reached since start-up.
pub fn etcd_unreachable(endpoints: &str, connected: bool, trouble: Option<&str>) -> Option<Drift> {
    let trouble = match (trouble, connected) {
        (Some(t), _) => t.to_string(),
        (None, false) => format!("etcd unreachable ({endpoints}): not reached since rustvlan started"),
        (None, true) => return None,
    };
    Some(Drift::EtcdUnreachable {
        endpoints: endpoints.to_string(),
        trouble,
    })
}

/// Leases whose last renewal failed.
pub fn lease_troubles(leases: &[LeaseRecord]) -> Vec<Drift> {
    leases
        .iter()
        .filter_map(|lease| {
            Some(Drift::LeaseTrouble {
                address: IpNetwork::V4(lease.address),
                server: lease.server,
                trouble: lease.trouble.clone()?,
            })
        })
        .collect()
}

/// A link the kernel showed, as far as drift needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenLink {
    pub name: String,
    pub index: u32,
    /// IFLA_GROUP: rustvlan's links carry their store's number.
    pub group: u32,
    /// `macvlan` or `ipvlan`, the kinds of endpoints' links and shims; None for any other
    /// kind (a parent's).
    pub child_kind: Option<&'static str>,
    /// The lower device of a macvlan, ipvlan or VLAN link.
    pub parent_index: Option<u32>,
    pub mac: Option<MacAddr>,
}

/// What the kernel showed, for a [`Comparison`].
#[derive(Debug, Clone, Default)]
pub struct Observation {
    pub host_links: Vec<SeenLink>,
    /// By sandbox path (a joined endpoint's container namespace).
    pub sandboxes: BTreeMap<String, Sandbox>,
}

#[derive(Debug, Clone)]
pub enum Sandbox {
    /// No namespace is bound at the path any more: the container is gone.
    Gone,
    Links(Vec<SeenLink>),
    /// It could not be looked into (not root, not a namespace file).
    Unreadable(String),
}

/// The records that the kernel is compared with.
#[derive(Debug, Clone)]
pub struct Recorded<'a> {
    /// The IFLA_GROUP number that marks this store's links.
    pub link_group: u32,
    pub networks: &'a BTreeMap<String, NetworkRecord>,
    pub endpoints: &'a BTreeMap<String, EndpointRecord>,
    pub parents: &'a BTreeMap<String, ParentRecord>,
    pub pending_deletes: &'a BTreeMap<String, PendingDelete>,
    /// The host-access shims the networks call for: shim name -> parent. Passed in, as
    /// only the driver knows how a shim is named.
    pub shims: BTreeMap<String, String>,
}

impl Recorded<'_> {
    /// Which of this store's links no record accounts for: of `children` (macvlan and
    /// ipvlan links), those that are no endpoint's, not queued for the reaper (whose
    /// delete is under way) and no host-access shim; of `parents` (VLANs and dummies),
    /// those that are no recorded parent. Both `rustvlan status` and the start-up
    /// reconcile, which deletes them, decide with this.
    pub fn orphans<'l>(
        &self,
        children: impl IntoIterator<Item = &'l str>,
        parents: impl IntoIterator<Item = &'l str>,
    ) -> Vec<&'l str> {
        let endpoint_links: BTreeSet<&str> = self.endpoints.values().map(|e| e.link_name.as_str()).collect();
        let child_orphans = children.into_iter().filter(|name| {
            !endpoint_links.contains(name)
                && !self.pending_deletes.contains_key(*name)
                && !self.shims.contains_key(*name)
        });
        let parent_orphans = parents.into_iter().filter(|name| !self.parents.contains_key(*name));
        child_orphans.chain(parent_orphans).collect()
    }
}

/// The records beside what the kernel showed: each method decides one kind of finding.
pub struct Comparison<'a> {
    recorded: Recorded<'a>,
    seen: &'a Observation,
    /// The host namespace's links by name.
    host: BTreeMap<&'a str, &'a SeenLink>,
    /// What `rustvlan state` would show of the same records and host namespace.
    view: HostView,
}

impl<'a> Comparison<'a> {
    pub fn new(recorded: Recorded<'a>, seen: &'a Observation) -> Comparison<'a> {
        let host: BTreeMap<&str, &SeenLink> = seen.host_links.iter().map(|l| (l.name.as_str(), l)).collect();
        let names: BTreeSet<&str> = host.keys().copied().collect();
        let view = HostView::of(&names, recorded.endpoints.values(), recorded.networks.values());
        Comparison {
            recorded,
            seen,
            host,
            view,
        }
    }

    /// Whether this store made the link.
    fn ours(&self, link: &SeenLink) -> bool {
        link.group == self.recorded.link_group
    }

    /// Whether the host namespace has a link of that name, whoever made it.
    pub fn in_host(&self, name: &str) -> bool {
        self.host.contains_key(name)
    }

    /// Whether the host namespace has the shim, made by this store.
    pub fn shim_present(&self, shim: &str) -> bool {
        self.host.get(shim).is_some_and(|l| self.ours(l))
    }

    /// Links of this store in the host namespace that no record accounts for.
    pub fn orphans(&self) -> Vec<Drift> {
        let ours = || self.seen.host_links.iter().filter(|l| self.ours(l));
        let children = ours().filter(|l| l.child_kind.is_some()).map(|l| l.name.as_str());
        let parents = ours().filter(|l| l.child_kind.is_none()).map(|l| l.name.as_str());
        let orphans: BTreeSet<&str> = self.recorded.orphans(children, parents).into_iter().collect();
        ours()
            .filter(|l| orphans.contains(l.name.as_str()))
            .map(|l| match l.child_kind {
                Some(kind) => Drift::OrphanLink {
                    link: l.name.clone(),
                    link_kind: kind.to_string(),
                },
                None => Drift::OrphanParent { link: l.name.clone() },
            })
            .collect()
    }

    /// Parents that networks name and the host does not have.
    pub fn missing_parents(&self) -> Vec<Drift> {
        self.view
            .parents
            .iter()
            .filter(|(_, presence)| **presence == Presence::Missing)
            .map(|(parent, _)| Drift::ParentMissing {
                parent: parent.clone(),
                networks: (self.recorded.networks.values())
                    .filter(|n| &n.parent == parent)
                    .map(|n| n.id.clone())
                    .collect(),
            })
            .collect()
    }

    /// Shims that host-access networks call for and the host does not have.
    pub fn missing_shims(&self) -> Vec<Drift> {
        (self.recorded.shims.iter())
            .filter(|(shim, _)| !self.shim_present(shim))
            .map(|(shim, parent)| Drift::ShimMissing {
                shim: shim.clone(),
                parent: parent.clone(),
            })
            .collect()
    }

    /// Where an endpoint's link is, and the drift that shows.
    pub fn endpoint_link(&self, e: &EndpointRecord) -> (LinkIs, Option<Drift>) {
        if self.view.endpoint_links.get(&e.id) == Some(&LinkPlace::HostNamespace) {
            return (LinkIs::Host, None);
        }
        let parent_index = (self.recorded.networks.get(&e.network_id))
            .and_then(|n| self.host.get(n.parent.as_str()))
            .map(|p| p.index);
        let unknown = |why: &str| LinkIs::Unknown { why: why.to_string() };
        let (sandbox, parent_index) = match (&e.sandbox, parent_index) {
            (None, _) => return (LinkIs::NotJoined, None),
            (Some(_), None) => return (unknown("the network's parent is missing"), None),
            (Some(sandbox), Some(index)) => (sandbox, index),
        };
        let links = match self.seen.sandboxes.get(sandbox) {
            None => return (unknown("its namespace was not looked into"), None),
            Some(Sandbox::Unreadable(why)) => return (unknown(why), None),
            Some(Sandbox::Gone) => {
                let gone = Drift::ContainerGone {
                    endpoint: e.id.clone(),
                    network: e.network_id.clone(),
                    sandbox: sandbox.clone(),
                };
                return (LinkIs::Missing, Some(gone));
            }
            Some(Sandbox::Links(links)) => links,
        };
        // Another endpoint of the same network may share the container: its MAC tells.
        let found = links.iter().find(|l| {
            self.ours(l)
                && l.child_kind.is_some()
                && l.parent_index == Some(parent_index)
                && (e.mac.is_none() || l.mac == e.mac)
        });
        match found {
            Some(l) => (
                LinkIs::Container {
                    sandbox: sandbox.clone(),
                    name: l.name.clone(),
                },
                None,
            ),
            None => (
                LinkIs::Missing,
                Some(Drift::EndpointLinkGone {
                    endpoint: e.id.clone(),
                    network: e.network_id.clone(),
                    sandbox: sandbox.clone(),
                }),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROUP: u32 = 7;
    const NET: &str = "n1";
    const SANDBOX: &str = "/var/run/docker/netns/x";

    fn network(id: &str, parent: &str, host_access: bool) -> NetworkRecord {
        let mut n = serde_json::json!({"id": id, "link": {"kind": "macvlan", "mode": "bridge"}, "parent": parent});
        if host_access {
            n["host_access"] = serde_json::json!({"address": "10.0.0.250/24", "source": "aux_address"});
        }
        serde_json::from_value(n).unwrap()
    }

    fn endpoint(id: &str, link: &str, sandbox: Option<&str>, mac: Option<MacAddr>) -> EndpointRecord {
        EndpointRecord {
            id: id.into(),
            network_id: NET.into(),
            link_name: link.into(),
            mac,
            mac_generated: false,
            ipv4: None,
            ipv6: None,
            sandbox: sandbox.map(Into::into),
        }
    }

    fn link(name: &str, index: u32, group: u32, child_kind: Option<&'static str>) -> SeenLink {
        SeenLink {
            name: name.into(),
            index,
            group,
            child_kind,
            parent_index: None,
            mac: None,
        }
    }

    /// The host's eth0 (index 2), and an endpoint's link in a container, on eth0.
    fn in_container(name: &str, mac: Option<MacAddr>) -> SeenLink {
        SeenLink {
            parent_index: Some(2),
            mac,
            ..link(name, 40, GROUP, Some("macvlan"))
        }
    }

    /// Records of one network on eth0 and its endpoints, compared with what was seen.
    struct Fixture {
        networks: BTreeMap<String, NetworkRecord>,
        endpoints: BTreeMap<String, EndpointRecord>,
        parents: BTreeMap<String, ParentRecord>,
        pending_deletes: BTreeMap<String, PendingDelete>,
        shims: BTreeMap<String, String>,
    }

    impl Fixture {
        fn new(endpoints: Vec<EndpointRecord>) -> Fixture {
            Fixture {
                networks: [(NET.to_string(), network(NET, "eth0", false))].into(),
                endpoints: endpoints.into_iter().map(|e| (e.id.clone(), e)).collect(),
                parents: BTreeMap::new(),
                pending_deletes: BTreeMap::new(),
                shims: BTreeMap::new(),
            }
        }

        fn compare<'a>(&'a self, seen: &'a Observation) -> Comparison<'a> {
            let recorded = Recorded {
                link_group: GROUP,
                networks: &self.networks,
                endpoints: &self.endpoints,
                parents: &self.parents,
                pending_deletes: &self.pending_deletes,
                shims: self.shims.clone(),
            };
            Comparison::new(recorded, seen)
        }
    }

    fn observation(host_links: Vec<SeenLink>, sandbox: Option<Sandbox>) -> Observation {
        Observation {
            host_links,
            sandboxes: sandbox.into_iter().map(|s| (SANDBOX.to_string(), s)).collect(),
        }
    }

    fn eth0() -> SeenLink {
        link("eth0", 2, 0, None)
    }

    #[test]
    fn the_host_view_keeps_its_json() {
        let e = endpoint("e1", "rv1", None, None);
        let f = endpoint("e2", "rv2", Some(SANDBOX), None);
        let names: BTreeSet<&str> = ["rv1", "eth0"].into();
        let networks = [network(NET, "eth0", false), network("n2", "eth9", false)];
        let view = KernelView::Seen(HostView::of(&names, [&e, &f], &networks));
        let json = serde_json::json!({
            "endpoint_links": {
                "e1": "in host namespace",
                "e2": "not in host namespace (inside a container, or gone)"
            },
            "parents": {"eth0": "present", "eth9": "missing"}
        });
        assert_eq!(serde_json::to_value(&view).unwrap(), json);
        assert_eq!(serde_json::from_value::<KernelView>(json).unwrap(), view);
        let failed = KernelView::Failed { error: "no".into() };
        assert_eq!(
            serde_json::to_value(&failed).unwrap(),
            serde_json::json!({"error": "no"})
        );
    }

    #[test]
    fn a_link_place_reads_as_it_is_written_in_json() {
        for place in [LinkPlace::HostNamespace, LinkPlace::Elsewhere] {
            assert_eq!(
                serde_json::to_value(place).unwrap(),
                serde_json::json!(place.to_string())
            );
        }
    }

    #[test]
    fn link_is_and_drift_keep_their_json_names() {
        let container = LinkIs::Container {
            sandbox: SANDBOX.into(),
            name: "eth0".into(),
        };
        assert_eq!(
            serde_json::to_value(&container).unwrap(),
            serde_json::json!({"where": "container", "sandbox": SANDBOX, "name": "eth0"})
        );
        assert_eq!(
            serde_json::to_value(LinkIs::NotJoined).unwrap(),
            serde_json::json!({"where": "not_joined"})
        );
        let orphan = Drift::OrphanLink {
            link: "rv9".into(),
            link_kind: "ipvlan".into(),
        };
        assert_eq!(
            serde_json::to_value(&orphan).unwrap(),
            serde_json::json!({"kind": "orphan_link", "link": "rv9", "link_kind": "ipvlan"})
        );
    }

    #[test]
    fn a_link_in_the_host_namespace_needs_no_further_look() {
        let f = Fixture::new(vec![endpoint("e1", "rv1", Some(SANDBOX), None)]);
        let seen = observation(vec![eth0(), link("rv1", 30, GROUP, Some("macvlan"))], None);
        let found = f.compare(&seen).endpoint_link(&f.endpoints["e1"]);
        assert_eq!(found, (LinkIs::Host, None));
    }

    #[test]
    fn an_endpoint_without_sandbox_is_not_joined() {
        let f = Fixture::new(vec![endpoint("e1", "rv1", None, None)]);
        let seen = observation(vec![eth0()], None);
        assert_eq!(
            f.compare(&seen).endpoint_link(&f.endpoints["e1"]),
            (LinkIs::NotJoined, None)
        );
    }

    #[test]
    fn a_joined_endpoint_is_found_in_its_container_by_parent_mark_and_mac() {
        let mac = Some(MacAddr([2, 0, 0, 0, 0, 1]));
        let f = Fixture::new(vec![endpoint("e1", "rv1", Some(SANDBOX), mac)]);
        let theirs = SeenLink {
            group: 0,
            ..in_container("eth1", mac)
        };
        let another = in_container("eth2", Some(MacAddr([2, 0, 0, 0, 0, 2])));
        let links = vec![theirs, another, in_container("eth3", mac)];
        let seen = observation(vec![eth0()], Some(Sandbox::Links(links)));
        let expected = LinkIs::Container {
            sandbox: SANDBOX.into(),
            name: "eth3".into(),
        };
        assert_eq!(f.compare(&seen).endpoint_link(&f.endpoints["e1"]), (expected, None));
    }

    #[test]
    fn a_joined_endpoint_without_its_link_or_container_is_drift() {
        let f = Fixture::new(vec![endpoint("e1", "rv1", Some(SANDBOX), None)]);
        let gone = |sandbox| {
            let seen = observation(vec![eth0()], Some(sandbox));
            f.compare(&seen).endpoint_link(&f.endpoints["e1"])
        };
        let (endpoint, network, sandbox) = ("e1".to_string(), NET.to_string(), SANDBOX.to_string());
        assert_eq!(
            gone(Sandbox::Links(vec![])),
            (
                LinkIs::Missing,
                Some(Drift::EndpointLinkGone {
                    endpoint: endpoint.clone(),
                    network: network.clone(),
                    sandbox: sandbox.clone()
                })
            )
        );
        assert_eq!(
            gone(Sandbox::Gone),
            (
                LinkIs::Missing,
                Some(Drift::ContainerGone {
                    endpoint,
                    network,
                    sandbox
                })
            )
        );
    }

    #[test]
    fn a_link_not_looked_for_is_unknown_and_no_drift() {
        let f = Fixture::new(vec![endpoint("e1", "rv1", Some(SANDBOX), None)]);
        let unknown = |why: &str| (LinkIs::Unknown { why: why.into() }, None);
        let seen = observation(vec![], Some(Sandbox::Gone));
        let found = f.compare(&seen).endpoint_link(&f.endpoints["e1"]);
        assert_eq!(found, unknown("the network's parent is missing"));
        let seen = observation(vec![eth0()], None);
        let found = f.compare(&seen).endpoint_link(&f.endpoints["e1"]);
        assert_eq!(found, unknown("its namespace was not looked into"));
        let seen = observation(vec![eth0()], Some(Sandbox::Unreadable("not root".into())));
        assert_eq!(f.compare(&seen).endpoint_link(&f.endpoints["e1"]), unknown("not root"));
    }

    #[test]
    fn marked_links_no_record_accounts_for_are_orphans() {
        let mut f = Fixture::new(vec![endpoint("e1", "rv1", None, None)]);
        f.parents.insert(
            "eth0.10".into(),
            serde_json::from_value(serde_json::json!({"name": "eth0.10", "kind": "dummy"})).unwrap(),
        );
        f.pending_deletes.insert(
            "rv2".into(),
            PendingDelete {
                link_name: "rv2".into(),
                endpoint_id: "e2".into(),
                network_id: NET.into(),
                mac: None,
                since: 0,
            },
        );
        f.shims.insert("rvh1".into(), "eth0".into());
        let seen = observation(
            vec![
                eth0(),
                link("rv1", 10, GROUP, Some("macvlan")),
                link("rv2", 11, GROUP, Some("macvlan")),
                link("rvh1", 12, GROUP, Some("macvlan")),
                link("eth0.10", 13, GROUP, None),
                link("theirs", 14, 0, Some("ipvlan")),
                link("rv3", 15, GROUP, Some("ipvlan")),
                link("eth0.20", 16, GROUP, None),
            ],
            None,
        );
        assert_eq!(
            f.compare(&seen).orphans(),
            vec![
                Drift::OrphanLink {
                    link: "rv3".into(),
                    link_kind: "ipvlan".into()
                },
                Drift::OrphanParent { link: "eth0.20".into() }
            ]
        );
    }

    #[test]
    fn missing_parents_name_their_networks_and_shims_need_the_mark() {
        let mut f = Fixture::new(vec![]);
        for (id, parent) in [("n2", "eth9"), ("n3", "eth9"), ("n4", "eth0")] {
            f.networks.insert(id.into(), network(id, parent, id == "n4"));
        }
        f.shims.insert("rvh1".into(), "eth0".into());
        let seen = observation(vec![eth0(), link("rvh1", 12, 0, Some("macvlan"))], None);
        let comparison = f.compare(&seen);
        assert_eq!(
            comparison.missing_parents(),
            vec![Drift::ParentMissing {
                parent: "eth9".into(),
                networks: vec!["n2".into(), "n3".into()]
            }]
        );
        assert_eq!(
            comparison.missing_shims(),
            vec![Drift::ShimMissing {
                shim: "rvh1".into(),
                parent: "eth0".into()
            }]
        );
        let seen = observation(vec![eth0(), link("rvh1", 12, GROUP, Some("macvlan"))], None);
        assert_eq!(f.compare(&seen).missing_shims(), vec![]);
    }

    #[test]
    fn only_leases_whose_renewal_failed_are_drift() {
        let lease = |trouble: Option<&str>| -> LeaseRecord {
            serde_json::from_value(serde_json::json!({
                "pool_id": "rustvlan-dhcp/eth0", "address": "10.0.0.5/24", "server": "10.0.0.1",
                "parent": "eth0", "mac": "02:00:00:00:00:01", "client_id": "01",
                "lease_secs": 60, "t1_secs": 30, "t2_secs": 50, "acked_at": 0, "trouble": trouble
            }))
            .unwrap()
        };
        assert_eq!(
            lease_troubles(&[lease(None), lease(Some("NAK"))]),
            vec![Drift::LeaseTrouble {
                address: "10.0.0.5/24".parse().unwrap(),
                server: Ipv4Addr::new(10, 0, 0, 1),
                trouble: "NAK".into()
            }]
        );
    }

    #[test]
    fn etcd_is_drift_when_it_fails_now_or_was_never_reached() {
        assert_eq!(etcd_unreachable("http://e:2379", true, None), None);
        let never = etcd_unreachable("http://e:2379", false, None).unwrap();
        assert_eq!(
            never.to_string(),
            "etcd unreachable (http://e:2379): not reached since rustvlan started; shared pools cannot allocate \
             until it answers, local pools work, running containers are not affected"
        );
        let now = etcd_unreachable("http://e:2379", true, Some("etcd unreachable (http://e:2379): timeout")).unwrap();
        assert!(now.same_as(&never), "the same etcd, whatever its error says");
        assert!(!now.same_as(&Drift::OrphanParent { link: "x".into() }));
    }
}
