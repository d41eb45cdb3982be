//! Everything rustvlan knows, in memory, and the changes that move it forward.
//!
//! `State` is a materialised view of the store: it only ever changes through
//! [`State::apply`], with changes that were first written to the store. Start-up replays
//! the stored records through the same function.

use std::collections::{BTreeMap, HashMap};

use crate::ipam::allocator::{Ipam, IpamChange};
use crate::model::{EndpointRecord, LeaseRecord, NetworkRecord, ParentRecord, PendingDelete, SharedRelease};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    PutNetwork(NetworkRecord),
    DelNetwork(String),
    PutEndpoint(EndpointRecord),
    DelEndpoint(String),
    PutParent(ParentRecord),
    DelParent(String),
    PutPending(PendingDelete),
    DelPending(String),
    PutSharedRelease(SharedRelease),
    /// By [`SharedRelease::key`].
    DelSharedRelease(String),
    PutLease(LeaseRecord),
    /// By [`LeaseRecord::key`].
    DelLease(String),
    Ipam(IpamChange),
}

#[derive(Debug)]
pub struct State {
    pub networks: BTreeMap<String, NetworkRecord>,
    pub endpoints: BTreeMap<String, EndpointRecord>,
    /// Parent links rustvlan made, by name.
    pub parents: BTreeMap<String, ParentRecord>,
    /// Links being deleted in the background, by name.
    pub pending: BTreeMap<String, PendingDelete>,
    /// Shared addresses released here whose etcd claims are still to be deleted.
    pub shared_releases: BTreeMap<String, SharedRelease>,
    /// DHCP leases of `rustvlan-dhcp` pools, by [`LeaseRecord::key`].
    pub leases: BTreeMap<String, LeaseRecord>,
    pub ipam: Ipam,
    /// Host link name -> endpoint id, so that names stay unique without a scan.
    link_names: HashMap<String, String>,
}

impl State {
    pub fn new(ipam: Ipam) -> Self {
        State {
            networks: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            parents: BTreeMap::new(),
            pending: BTreeMap::new(),
            shared_releases: BTreeMap::new(),
            leases: BTreeMap::new(),
            ipam,
            link_names: HashMap::new(),
        }
    }

    /// The router and option-121 routes of the DHCP lease holding `ip` on `parent`,
    /// for Join's gateway and static routes.
    #[allow(clippy::type_complexity)]
    pub fn lease_routing(
        &self,
        parent: &str,
        ip: std::net::Ipv4Addr,
    ) -> Option<(
        Option<std::net::Ipv4Addr>,
        Vec<(ipnetwork::Ipv4Network, std::net::Ipv4Addr)>,
    )> {
        self.leases
            .values()
            .find(|l| l.parent == parent && l.address.ip() == ip)
            .map(|l| (l.router, l.routes.clone()))
    }

    pub fn apply(&mut self, change: &Change) {
        self.apply_owned(change.clone());
    }

    /// As [`State::apply`], moving the records in instead of copying them.
    pub fn apply_owned(&mut self, change: Change) {
        match change {
            Change::PutNetwork(n) => {
                self.networks.insert(n.id.clone(), n);
            }
            Change::DelNetwork(id) => {
                self.networks.remove(&id);
            }
            Change::PutEndpoint(e) => {
                let (id, link_name) = (e.id.clone(), e.link_name.clone());
                if let Some(old) = self.endpoints.insert(id.clone(), e) {
                    self.link_names.remove(&old.link_name);
                }
                self.link_names.insert(link_name, id);
            }
            Change::DelEndpoint(id) => {
                if let Some(old) = self.endpoints.remove(&id) {
                    self.link_names.remove(&old.link_name);
                }
            }
            Change::PutParent(p) => {
                self.parents.insert(p.name.clone(), p);
            }
            Change::DelParent(name) => {
                self.parents.remove(&name);
            }
            Change::PutPending(p) => {
                self.pending.insert(p.link_name.clone(), p);
            }
            Change::DelPending(name) => {
                self.pending.remove(&name);
            }
            Change::PutSharedRelease(r) => {
                self.shared_releases.insert(r.key(), r);
            }
            Change::DelSharedRelease(key) => {
                self.shared_releases.remove(&key);
            }
            Change::PutLease(l) => {
                self.leases.insert(l.key(), l);
            }
            Change::DelLease(key) => {
                self.leases.remove(&key);
            }
            Change::Ipam(c) => self.ipam.apply(&c),
        }
    }

    pub fn apply_all(&mut self, changes: Vec<Change>) {
        for c in changes {
            self.apply_owned(c);
        }
    }

    /// Whether a new endpoint may take this host link name: no endpoint has it, and no
    /// link of that name is still being deleted.
    pub fn link_name_free(&self, name: &str) -> bool {
        !self.link_names.contains_key(name) && !self.pending.contains_key(name)
    }

    /// The endpoint whose host link is named `name`, if any.
    pub fn endpoint_by_link(&self, name: &str) -> Option<&EndpointRecord> {
        self.link_names.get(name).and_then(|id| self.endpoints.get(id))
    }

    pub fn networks_on_parent<'a>(&'a self, parent: &'a str) -> impl Iterator<Item = &'a NetworkRecord> + 'a {
        self.networks.values().filter(move |n| n.parent == parent)
    }

    pub fn endpoints_of<'a>(&'a self, network_id: &'a str) -> impl Iterator<Item = &'a EndpointRecord> + 'a {
        self.endpoints.values().filter(move |e| e.network_id == network_id)
    }
}
