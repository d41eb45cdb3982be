//! An in-memory [`Kernel`] for unit tests of the driver's decisions. It keeps the rules
//! the driver relies on (unique names, parents must exist, one passthru child, macvlan
//! and ipvlan never share a parent, deleting a parent deletes its children) and can be
//! told to fail. Every behaviour tested here is also tested against the real kernel.

use std::sync::Mutex;

use ipnetwork::IpNetwork;

use super::{ChildLink, Errno, HostRoute, IFNAME_MAX, KResult, Kernel, KernelError, LinkInfo, LinkType};
use crate::model::LinkMode;

#[derive(Debug, Default)]
pub struct FakeKernel {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    links: Vec<LinkInfo>,
    children: Vec<(String, LinkMode)>,
    next_index: u32,
    /// Kinds the "kernel" has no module for, like this machine's ipvlan, vlan and dummy.
    missing_kinds: Vec<&'static str>,
    fail_next_add: Option<KernelError>,
    group_deletes: usize,
    /// Other network namespaces (containers'), by path, with their links.
    namespaces: std::collections::BTreeMap<std::path::PathBuf, Vec<LinkInfo>>,
    /// (link index, address)
    addresses: Vec<(u32, IpNetwork)>,
    routes: Vec<HostRoute>,
    /// Links made ready as shims.
    shims: Vec<u32>,
}

fn err(errno: Errno, op: String) -> KernelError {
    KernelError::refused(op, errno)
}

impl FakeKernel {
    pub fn new() -> Self {
        let kernel = FakeKernel::default();
        kernel.inner.lock().unwrap().next_index = 100;
        kernel
    }

    /// Adds a plain link (a NIC or a veth end) the test pretends exists.
    pub fn add_nic(&self, name: &str, mtu: u32) {
        let mut inner = self.inner.lock().unwrap();
        let index = inner.next_index;
        inner.next_index += 1;
        inner.links.push(LinkInfo {
            index,
            name: name.to_string(),
            kind: LinkType::Device,
            mtu,
            group: 0,
            parent_index: None,
            up: true,
            mac: None,
        });
    }

    pub fn without_kind(&self, kind: &'static str) {
        self.inner.lock().unwrap().missing_kinds.push(kind);
    }

    pub fn fail_next_add(&self, errno: Errno, op: &str) {
        self.inner.lock().unwrap().fail_next_add = Some(err(errno, op.to_string()));
    }

    /// How many batched deletes (`delete_links`) ran.
    pub fn group_deletes(&self) -> usize {
        self.inner.lock().unwrap().group_deletes
    }

    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .inner
            .lock()
            .unwrap()
            .links
            .iter()
            .map(|l| l.name.clone())
            .collect();
        names.sort();
        names
    }

    pub fn get(&self, name: &str) -> Option<LinkInfo> {
        self.inner
            .lock()
            .unwrap()
            .links
            .iter()
            .find(|l| l.name == name)
            .cloned()
    }

    /// Moves a link into the namespace at `netns` under `new_name`, as dockerd does at
    /// Join; the namespace comes into being if it was not there.
    pub fn move_into(&self, name: &str, netns: &std::path::Path, new_name: &str) {
        let mut inner = self.inner.lock().unwrap();
        let position = inner.links.iter().position(|l| l.name == name).expect("no such link");
        let mut link = inner.links.remove(position);
        inner.children.retain(|(n, _)| n != name);
        link.name = new_name.to_string();
        inner.namespaces.entry(netns.to_path_buf()).or_default().push(link);
    }

    /// Makes an empty namespace at `netns`, or empties it.
    pub fn set_namespace(&self, netns: &std::path::Path, links: Vec<LinkInfo>) {
        self.inner.lock().unwrap().namespaces.insert(netns.to_path_buf(), links);
    }

    /// Removes the namespace at `netns` (its container is gone).
    pub fn remove_namespace(&self, netns: &std::path::Path) {
        self.inner.lock().unwrap().namespaces.remove(netns);
    }

    /// The addresses on `name`.
    pub fn addresses_of(&self, name: &str) -> Vec<IpNetwork> {
        let inner = self.inner.lock().unwrap();
        let Some(index) = inner.links.iter().find(|l| l.name == name).map(|l| l.index) else {
            return Vec::new();
        };
        inner
            .addresses
            .iter()
            .filter(|(i, _)| *i == index)
            .map(|(_, a)| *a)
            .collect()
    }

    /// Adds an address as someone else would (the host's own address on a parent).
    pub fn put_address(&self, name: &str, address: IpNetwork) {
        let mut inner = self.inner.lock().unwrap();
        let index = inner.links.iter().find(|l| l.name == name).expect("no such link").index;
        inner.addresses.push((index, address));
    }

    /// Every route with rustvlan's protocol, as (destination, device name).
    pub fn routes(&self) -> Vec<(IpNetwork, String)> {
        let inner = self.inner.lock().unwrap();
        let mut routes: Vec<(IpNetwork, String)> = inner
            .routes
            .iter()
            .map(|r| {
                let dev = inner.links.iter().find(|l| l.index == r.index).map(|l| l.name.clone());
                (r.destination, dev.unwrap_or_default())
            })
            .collect();
        routes.sort();
        routes
    }

    /// Whether the link was made ready as a shim (ARP settings, up).
    pub fn is_ready_shim(&self, name: &str) -> bool {
        let inner = self.inner.lock().unwrap();
        inner
            .links
            .iter()
            .any(|l| l.name == name && inner.shims.contains(&l.index))
    }

    /// Removes a link behind rustvlan's back (a host reboot, dockerd moving it away).
    pub fn vanish(&self, name: &str) {
        let mut inner = self.inner.lock().unwrap();
        inner.links.retain(|l| l.name != name);
        inner.children.retain(|(n, _)| n != name);
    }
}

impl Inner {
    fn add(
        &mut self,
        name: &str,
        kind: &'static str,
        parent: Option<u32>,
        mtu: u32,
        group: u32,
        up: bool,
    ) -> KResult<()> {
        if let Some(e) = self.fail_next_add.take() {
            return Err(e);
        }
        if self.missing_kinds.contains(&kind) {
            return Err(err(Errno::EOPNOTSUPP, format!("creating {kind} link {name}")));
        }
        if name.is_empty() || name.len() > IFNAME_MAX {
            return Err(err(Errno::EINVAL, format!("creating {kind} link {name}")));
        }
        if self.links.iter().any(|l| l.name == name) {
            return Err(err(Errno::EEXIST, format!("creating {kind} link {name}")));
        }
        let index = self.next_index;
        self.next_index += 1;
        self.links.push(LinkInfo {
            index,
            name: name.to_string(),
            kind: LinkType::from_kind(kind),
            mtu,
            group,
            parent_index: parent,
            up,
            mac: None,
        });
        Ok(())
    }

    fn delete_tree(&mut self, index: u32) {
        let children: Vec<u32> = self
            .links
            .iter()
            .filter(|l| l.parent_index == Some(index))
            .map(|l| l.index)
            .collect();
        for child in children {
            self.delete_tree(child);
        }
        if let Some(pos) = self.links.iter().position(|l| l.index == index) {
            let link = self.links.remove(pos);
            self.children.retain(|(n, _)| *n != link.name);
            // As the kernel does, a link takes its addresses and routes with it.
            self.addresses.retain(|(i, _)| *i != index);
            self.routes.retain(|r| r.index != index);
            self.shims.retain(|i| *i != index);
        }
    }
}

impl Kernel for FakeKernel {
    async fn link(&self, name: &str) -> KResult<Option<LinkInfo>> {
        Ok(self.get(name))
    }

    async fn links(&self) -> KResult<Vec<LinkInfo>> {
        Ok(self.inner.lock().unwrap().links.clone())
    }

    async fn links_in(&self, netns: &std::path::Path) -> KResult<Option<Vec<LinkInfo>>> {
        Ok(self.inner.lock().unwrap().namespaces.get(netns).cloned())
    }

    async fn add_child(&self, link: &ChildLink) -> KResult<()> {
        let mut inner = self.inner.lock().unwrap();
        if let Some(e) = inner.fail_next_add.take() {
            return Err(e);
        }
        let kind = match link.mode {
            LinkMode::Macvlan { .. } => "macvlan",
            LinkMode::Ipvlan { .. } => "ipvlan",
        };
        let parent = inner
            .links
            .iter()
            .find(|l| l.index == link.parent_index)
            .cloned()
            .ok_or_else(|| err(Errno::ENODEV, format!("creating {kind} link {}", link.name)))?;
        let siblings: Vec<LinkMode> = inner
            .children
            .iter()
            .filter(|(n, _)| {
                inner
                    .links
                    .iter()
                    .any(|l| l.name == *n && l.parent_index == Some(parent.index))
            })
            .map(|(_, m)| *m)
            .collect();
        let busy = siblings
            .iter()
            .any(|m| m.kind() != link.mode.kind() || m.is_passthru() || link.mode.is_passthru());
        if busy {
            return Err(err(Errno::EBUSY, format!("creating {kind} link {}", link.name)));
        }
        let mtu = link.mtu.unwrap_or(parent.mtu);
        if mtu > parent.mtu {
            return Err(err(Errno::EINVAL, format!("creating {kind} link {}", link.name)));
        }
        inner.add(&link.name, kind, Some(parent.index), mtu, link.group, false)?;
        if let Some(made) = inner.links.last_mut() {
            made.mac = link.mac;
        }
        inner.children.push((link.name.clone(), link.mode));
        Ok(())
    }

    async fn add_vlan(
        &self,
        name: &str,
        base_index: u32,
        _id: u16,
        _protocol: crate::model::VlanProtocol,
        group: u32,
    ) -> KResult<()> {
        let mut inner = self.inner.lock().unwrap();
        let base = inner
            .links
            .iter()
            .find(|l| l.index == base_index)
            .cloned()
            .ok_or_else(|| err(Errno::ENODEV, format!("creating 802.1Q link {name}")))?;
        inner.add(name, "vlan", Some(base_index), base.mtu, group, true)
    }

    async fn add_dummy(&self, name: &str, mtu: Option<u32>, group: u32) -> KResult<()> {
        self.inner
            .lock()
            .unwrap()
            .add(name, "dummy", None, mtu.unwrap_or(1500), group, true)
    }

    async fn delete_links(&self, indices: &[u32], _trash_group: u32) -> KResult<()> {
        let mut inner = self.inner.lock().unwrap();
        inner.group_deletes += 1;
        for &index in indices {
            inner.delete_tree(index);
        }
        Ok(())
    }

    async fn delete(&self, index: u32) -> KResult<bool> {
        let mut inner = self.inner.lock().unwrap();
        if !inner.links.iter().any(|l| l.index == index) {
            return Ok(false);
        }
        inner.delete_tree(index);
        Ok(true)
    }

    async fn ready_shim(&self, index: u32, _parent_index: u32) -> KResult<()> {
        let mut inner = self.inner.lock().unwrap();
        let link = inner
            .links
            .iter_mut()
            .find(|l| l.index == index)
            .ok_or_else(|| err(Errno::ENODEV, format!("setting up link {index}")))?;
        link.up = true;
        inner.shims.push(index);
        Ok(())
    }

    async fn addresses(&self, index: u32) -> KResult<Vec<IpNetwork>> {
        let inner = self.inner.lock().unwrap();
        Ok(inner
            .addresses
            .iter()
            .filter(|(i, a)| *i == index && a.is_ipv4())
            .map(|(_, a)| *a)
            .collect())
    }

    async fn add_address(&self, index: u32, address: IpNetwork) -> KResult<()> {
        let mut inner = self.inner.lock().unwrap();
        if !inner.links.iter().any(|l| l.index == index) {
            return Err(err(Errno::ENODEV, format!("adding address {address} to link {index}")));
        }
        if !inner.addresses.contains(&(index, address)) {
            inner.addresses.push((index, address));
        }
        Ok(())
    }

    async fn delete_address(&self, index: u32, address: IpNetwork) -> KResult<bool> {
        let mut inner = self.inner.lock().unwrap();
        let before = inner.addresses.len();
        inner.addresses.retain(|a| *a != (index, address));
        Ok(inner.addresses.len() != before)
    }

    async fn host_routes(&self) -> KResult<Vec<HostRoute>> {
        Ok(self.inner.lock().unwrap().routes.clone())
    }

    async fn add_route(&self, route: &HostRoute) -> KResult<()> {
        let mut inner = self.inner.lock().unwrap();
        if !inner.links.iter().any(|l| l.index == route.index) {
            return Err(err(Errno::ENODEV, format!("adding route {}", route.destination)));
        }
        inner.routes.retain(|r| r.destination != route.destination);
        inner.routes.push(route.clone());
        Ok(())
    }

    async fn delete_route(&self, route: &HostRoute) -> KResult<bool> {
        let mut inner = self.inner.lock().unwrap();
        let before = inner.routes.len();
        inner
            .routes
            .retain(|r| !(r.destination == route.destination && r.index == route.index));
        Ok(inner.routes.len() != before)
    }
}
