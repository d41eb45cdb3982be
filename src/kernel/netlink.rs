//! [`Kernel`] over rtnetlink.

use std::path::Path;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{
    IpVlanFlags, IpVlanMode, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage, MacVlanMode,
    VlanProtocol as NlVlanProtocol,
};
use rtnetlink::{Handle, LinkDummy, LinkIpVlan, LinkMacVlan, LinkMessageBuilder, LinkUnspec, LinkVlan};

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::IpNetwork;
use rtnetlink::packet_core::DefaultNla;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{AfSpecInet, AfSpecUnspec};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::{AddressMessageBuilder, RouteMessageBuilder};

use super::{ChildLink, Errno, HostRoute, KResult, Kernel, KernelError, LinkInfo, LinkType, ROUTE_PROTOCOL};
use crate::model::{IpvlanFlag, IpvlanMode, LinkMode, MacAddr, MacvlanMode, VlanProtocol};

/// The kernel handles a NETLINK_ROUTE request inside the sender's `sendmsg`, and a link
/// move or delete holds it there for an RCU grace period (~16 ms) under the RTNL lock.
/// So the sockets' message loops run on threads of their own, never on the runtime's
/// workers, and deletes have their own socket so that lookups and creations do not queue
/// behind them.
pub struct NetlinkKernel {
    handle: Handle,
    deletes: Handle,
}

/// Opens a NETLINK_ROUTE socket whose message loop runs on its own thread.
pub(crate) fn connection_thread(name: &str) -> anyhow::Result<Handle> {
    connection_thread_in(name, None)
}

/// Like [`connection_thread`], the socket opened in the network namespace `netns` (an
/// open namespace file). A socket stays in the namespace it was opened in, and the
/// thread that entered the namespace is the socket's own and ends with it, so the
/// process's other threads never leave theirs.
fn connection_thread_in(name: &str, netns: Option<std::fs::File>) -> anyhow::Result<Handle> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new().name(name.to_string()).spawn(move || {
        if let Some(netns) = netns
            && let Err(e) = nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
        {
            let _ = tx.send(Err(anyhow::anyhow!("cannot enter the namespace: {}", e.desc())));
            return;
        }
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_io().build() {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Err(anyhow::anyhow!("cannot start the netlink thread: {e}")));
                return;
            }
        };
        runtime.block_on(async move {
            match rtnetlink::new_connection() {
                Ok((connection, handle, _)) => {
                    let _ = tx.send(Ok(handle));
                    // Ends when every handle is dropped.
                    connection.await;
                }
                Err(e) => {
                    let _ = tx.send(Err(anyhow::anyhow!("cannot open a netlink socket: {e}")));
                }
            }
        });
    })?;
    rx.recv()?
}

impl NetlinkKernel {
    pub fn connect() -> anyhow::Result<Self> {
        Ok(NetlinkKernel {
            handle: connection_thread("netlink")?,
            deletes: connection_thread("netlink-delete")?,
        })
    }
}

fn kernel_error(what: &str, err: rtnetlink::Error) -> KernelError {
    match err {
        rtnetlink::Error::NetlinkError(msg) => match msg.code {
            Some(code) => KernelError::refused(what, Errno::from_raw(code.get().abs())),
            None => KernelError {
                op: what.to_string(),
                errno: None,
                reason: msg.to_io().to_string(),
            },
        },
        other => KernelError {
            op: what.to_string(),
            errno: None,
            reason: other.to_string(),
        },
    }
}

fn link_info(msg: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: msg.header.index,
        name: String::new(),
        kind: LinkType::Device,
        mtu: 0,
        group: 0,
        parent_index: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        mac: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => info.name = n.clone(),
            LinkAttribute::Mtu(m) => info.mtu = *m,
            LinkAttribute::Group(g) => info.group = *g,
            LinkAttribute::Link(l) => info.parent_index = Some(*l),
            LinkAttribute::Address(bytes) => info.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok().map(MacAddr),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let NlLinkInfo::Kind(kind) = i {
                        info.kind = LinkType::from_kind(&kind.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    info
}

fn finish<T>(builder: LinkMessageBuilder<T>, mtu: Option<u32>, group: u32) -> LinkMessage {
    let builder = builder.link_group(group);
    match mtu {
        Some(mtu) => builder.mtu(mtu).build(),
        None => builder.build(),
    }
}

fn macvlan_mode(mode: MacvlanMode) -> MacVlanMode {
    match mode {
        MacvlanMode::Bridge => MacVlanMode::Bridge,
        MacvlanMode::Private => MacVlanMode::Private,
        MacvlanMode::Vepa => MacVlanMode::Vepa,
        MacvlanMode::Passthru => MacVlanMode::Passthrough,
    }
}

fn ipvlan_mode(mode: IpvlanMode) -> IpVlanMode {
    match mode {
        IpvlanMode::L2 => IpVlanMode::L2,
        IpvlanMode::L3 => IpVlanMode::L3,
        IpvlanMode::L3s => IpVlanMode::L3S,
    }
}

fn ipvlan_flags(flag: IpvlanFlag) -> IpVlanFlags {
    match flag {
        IpvlanFlag::Bridge => IpVlanFlags::empty(),
        IpvlanFlag::Private => IpVlanFlags::Private,
        IpvlanFlag::Vepa => IpVlanFlags::Vepa,
    }
}

/// IFLA_INET_CONF inside AF_INET's IFLA_AF_SPEC: the per-link devconf values, each an
/// NLA whose type is the IPV4_DEVCONF_* index and whose payload is a u32.
const IFLA_INET_CONF: u16 = 1;
const IPV4_DEVCONF_ARP_ANNOUNCE: u16 = 18;
const IPV4_DEVCONF_ARP_IGNORE: u16 = 19;

/// Only the two values named: netlink-packet-route's `InetDevConf` would write every
/// devconf field of the link.
/// IPv4 devconf values of a link, as RTM_SETLINK takes them.
fn arp_conf(values: &[(u16, u32)]) -> LinkAttribute {
    let mut nested = Vec::with_capacity(8 * values.len());
    for &(index, value) in values {
        nested.extend_from_slice(&8u16.to_ne_bytes());
        nested.extend_from_slice(&index.to_ne_bytes());
        nested.extend_from_slice(&value.to_ne_bytes());
    }
    LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![AfSpecInet::Other(DefaultNla::new(
        IFLA_INET_CONF,
        nested,
    ))])])
}

fn address_message(index: u32, address: IpNetwork) -> AddressMessage {
    match address {
        IpNetwork::V4(a) => AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(a.ip(), a.prefix())
            .build(),
        IpNetwork::V6(a) => AddressMessageBuilder::<std::net::Ipv6Addr>::new()
            .index(index)
            .address(a.ip(), a.prefix())
            .build(),
    }
}

fn route_message(route: &HostRoute) -> RouteMessage {
    let mut builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(route.destination.ip(), route.destination.prefix())
        .expect("an IpNetwork's prefix fits its family")
        .output_interface(route.index)
        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
        .scope(RouteScope::Link);
    if let Some(source) = route.source {
        builder = builder.pref_source(source).expect("same family as the destination");
    }
    builder.build()
}

fn host_route(msg: &RouteMessage) -> Option<HostRoute> {
    if msg.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL) {
        return None;
    }
    let (mut destination, mut index, mut source, mut table) = (None, None, None, u32::from(msg.header.table));
    let ip = |a: &RouteAddress| match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    };
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(a) => destination = ip(a),
            RouteAttribute::Oif(i) => index = Some(*i),
            RouteAttribute::PrefSource(a) => source = ip(a),
            RouteAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    Some(HostRoute {
        destination: IpNetwork::new(destination?, msg.header.destination_prefix_length).ok()?,
        index: index?,
        source,
    })
}

impl Kernel for NetlinkKernel {
    async fn link(&self, name: &str) -> KResult<Option<LinkInfo>> {
        let mut stream = self.handle.link().get().match_name(name.to_string()).execute();
        match stream.try_next().await {
            Ok(Some(msg)) => Ok(Some(link_info(&msg))),
            Ok(None) => Ok(None),
            Err(err) => {
                let err = kernel_error(&format!("looking up {name}"), err);
                if err.is(Errno::ENODEV) { Ok(None) } else { Err(err) }
            }
        }
    }

    async fn links(&self) -> KResult<Vec<LinkInfo>> {
        let stream = self.handle.link().get().execute();
        let messages: Vec<LinkMessage> = stream
            .try_collect()
            .await
            .map_err(|e| kernel_error("listing links", e))?;
        Ok(messages.iter().map(link_info).collect())
    }

    async fn links_in(&self, netns: &Path) -> KResult<Option<Vec<LinkInfo>>> {
        let op = || format!("listing the links of namespace {}", netns.display());
        let file = match std::fs::File::open(netns) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(KernelError {
                    op: op(),
                    errno: e.raw_os_error().map(Errno::from_raw),
                    reason: e.to_string(),
                });
            }
        };
        // Rare (`rustvlan status`): a socket of its own for each namespace, closed after.
        let handle = connection_thread_in("netlink-netns", Some(file)).map_err(|e| KernelError {
            op: op(),
            errno: None,
            reason: format!("{e:#}"),
        })?;
        let messages: Vec<LinkMessage> = handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| kernel_error(&op(), e))?;
        Ok(Some(messages.iter().map(link_info).collect()))
    }

    async fn add_child(&self, link: &ChildLink) -> KResult<()> {
        let message = match link.mode {
            LinkMode::Macvlan { mode } => {
                let mut builder = LinkMacVlan::new(&link.name, link.parent_index, macvlan_mode(mode));
                if let Some(mac) = link.mac {
                    builder = builder.address(mac.0.to_vec());
                }
                finish(builder, link.mtu, link.group)
            }
            LinkMode::Ipvlan { mode, flag } => {
                let builder =
                    LinkIpVlan::new(&link.name, link.parent_index, ipvlan_mode(mode)).flag(ipvlan_flags(flag));
                finish(builder, link.mtu, link.group)
            }
        };
        self.handle
            .link()
            .add(message)
            .execute()
            .await
            .map_err(|e| kernel_error(&format!("creating {} link {}", link.mode.kind(), link.name), e))
    }

    async fn add_vlan(&self, name: &str, base_index: u32, id: u16, protocol: VlanProtocol, group: u32) -> KResult<()> {
        let tpid = match protocol {
            VlanProtocol::Ieee8021Q => NlVlanProtocol::Ieee8021Q,
            VlanProtocol::Ieee8021Ad => NlVlanProtocol::Ieee8021Ad,
        };
        let message = finish(LinkVlan::new(name, base_index, id).protocol(tpid).up(), None, group);
        self.handle
            .link()
            .add(message)
            .execute()
            .await
            .map_err(|e| kernel_error(&format!("creating {protocol} link {name} (VLAN {id})"), e))
    }

    async fn add_dummy(&self, name: &str, mtu: Option<u32>, group: u32) -> KResult<()> {
        let message = finish(LinkDummy::new(name).up(), mtu, group);
        self.handle
            .link()
            .add(message)
            .execute()
            .await
            .map_err(|e| kernel_error(&format!("creating dummy link {name}"), e))
    }

    async fn delete_links(&self, indices: &[u32], trash_group: u32) -> KResult<()> {
        for &index in indices {
            let message = LinkUnspec::new_with_index(index).link_group(trash_group).build();
            if let Err(e) = self.deletes.link().change(message).execute().await {
                let err = kernel_error(&format!("moving link {index} to the group being deleted"), e);
                if !err.is(Errno::ENODEV) {
                    return Err(err);
                }
            }
        }
        let mut message = LinkMessage::default();
        message.attributes.push(LinkAttribute::Group(trash_group));
        match self.deletes.link().del_with_message(message).execute().await {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = kernel_error(&format!("deleting link group {trash_group}"), e);
                // ENODEV: none of them was left.
                if err.is(Errno::ENODEV) { Ok(()) } else { Err(err) }
            }
        }
    }

    async fn delete(&self, index: u32) -> KResult<bool> {
        match self.deletes.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(err) => {
                let err = kernel_error(&format!("deleting link {index}"), err);
                if err.is(Errno::ENODEV) { Ok(false) } else { Err(err) }
            }
        }
    }

    async fn ready_shim(&self, index: u32, parent_index: u32) -> KResult<()> {
        let mut message = LinkUnspec::new_with_index(index).up().build();
        message.attributes.push(arp_conf(&[
            (IPV4_DEVCONF_ARP_IGNORE, 1),
            (IPV4_DEVCONF_ARP_ANNOUNCE, 2),
        ]));
        self.handle.link().change(message).execute().await.map_err(|e| {
            kernel_error(
                &format!("setting arp_ignore/arp_announce on link {index} and bringing it up"),
                e,
            )
        })?;
        let mut message = LinkUnspec::new_with_index(parent_index).build();
        message.attributes.push(arp_conf(&[(IPV4_DEVCONF_ARP_IGNORE, 1)]));
        self.handle
            .link()
            .change(message)
            .execute()
            .await
            .map_err(|e| kernel_error(&format!("setting arp_ignore on parent link {parent_index}"), e))
    }

    async fn addresses(&self, index: u32) -> KResult<Vec<IpNetwork>> {
        let messages: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| kernel_error(&format!("listing the addresses of link {index}"), e))?;
        Ok(messages
            .iter()
            .filter(|m| m.header.index == index)
            .filter_map(|m| {
                let ip = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(IpAddr::V4(ip)) => Some(IpAddr::V4(*ip)),
                    _ => None,
                })?;
                IpNetwork::new(ip, m.header.prefix_len).ok()
            })
            .collect())
    }

    async fn add_address(&self, index: u32, address: IpNetwork) -> KResult<()> {
        match self
            .handle
            .address()
            .add(index, address.ip(), address.prefix())
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = kernel_error(&format!("adding address {address} to link {index}"), e);
                if err.is(Errno::EEXIST) { Ok(()) } else { Err(err) }
            }
        }
    }

    async fn delete_address(&self, index: u32, address: IpNetwork) -> KResult<bool> {
        match self
            .handle
            .address()
            .del(address_message(index, address))
            .execute()
            .await
        {
            Ok(()) => Ok(true),
            Err(e) => {
                let err = kernel_error(&format!("removing address {address} from link {index}"), e);
                if err.is(Errno::EADDRNOTAVAIL) || err.is(Errno::ENODEV) {
                    Ok(false)
                } else {
                    Err(err)
                }
            }
        }
    }

    async fn host_routes(&self) -> KResult<Vec<HostRoute>> {
        let mut routes = Vec::new();
        for query in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        ] {
            let messages: Vec<RouteMessage> = self
                .handle
                .route()
                .get(query)
                .execute()
                .try_collect()
                .await
                .map_err(|e| kernel_error("listing routes", e))?;
            routes.extend(messages.iter().filter_map(host_route));
        }
        Ok(routes)
    }

    async fn add_route(&self, route: &HostRoute) -> KResult<()> {
        self.handle
            .route()
            .add(route_message(route))
            .replace()
            .execute()
            .await
            .map_err(|e| kernel_error(&format!("adding route {} dev {}", route.destination, route.index), e))
    }

    async fn delete_route(&self, route: &HostRoute) -> KResult<bool> {
        match self.handle.route().del(route_message(route)).execute().await {
            Ok(()) => Ok(true),
            Err(e) => {
                let err = kernel_error(&format!("removing route {} dev {}", route.destination, route.index), e);
                if err.is(Errno::ESRCH) || err.is(Errno::ENODEV) {
                    Ok(false)
                } else {
                    Err(err)
                }
            }
        }
    }
}
