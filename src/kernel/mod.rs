//! The kernel side: the only code that speaks netlink.
//!
//! The driver decides *what* to do; a [`Kernel`] does it in the current network
//! namespace. [`NetlinkKernel`] is the real one; [`fake::FakeKernel`] lets unit tests of
//! the driver's decisions run without privileges.

#[cfg(any(test, feature = "fake-kernel"))]
pub mod fake;
mod metered;
mod netlink;

use std::fmt;
use std::future::Future;
use std::path::Path;

pub use metered::Metered;
pub use netlink::NetlinkKernel;

use ipnetwork::IpNetwork;

use crate::model::{LinkMode, MacAddr, VlanProtocol};

/// The routing protocol number (RTPROT) of the host routes rustvlan adds, so that they
/// are told apart from everyone else's, as `ip route show proto 250` does.
pub const ROUTE_PROTOCOL: u8 = 250;

/// A host route to one container through a shim: `dst dev shim src S proto 250`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostRoute {
    pub destination: IpNetwork,
    /// The shim's interface index.
    pub index: u32,
    /// The preferred source: the shim's address in the container's network.
    pub source: Option<std::net::IpAddr>,
}

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// The errno a kernel answered, as a type (`Errno::ENODEV`).
pub use nix::errno::Errno;

/// What a link is (IFLA_INFO_KIND), as far as rustvlan cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkType {
    /// No kind: a plain device, such as a NIC.
    Device,
    Macvlan,
    Ipvlan,
    /// 802.1Q.
    Vlan,
    Dummy,
    /// Any other kind the kernel names: `veth`, `bridge`, ...
    Other(String),
}

impl LinkType {
    pub fn from_kind(kind: &str) -> LinkType {
        match kind {
            "macvlan" => LinkType::Macvlan,
            "ipvlan" => LinkType::Ipvlan,
            "vlan" => LinkType::Vlan,
            "dummy" => LinkType::Dummy,
            other => LinkType::Other(other.to_string()),
        }
    }

    /// The kinds of link an endpoint gets; the parents rustvlan makes are VLANs or dummies.
    pub fn is_child(&self) -> bool {
        matches!(self, LinkType::Macvlan | LinkType::Ipvlan)
    }
}

/// What the driver needs to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub kind: LinkType,
    pub mtu: u32,
    /// IFLA_GROUP. rustvlan marks the links it makes with its store's group number: the
    /// kernel takes it in the same message that creates the link (it ignores an alias
    /// there), and keeps it when dockerd moves the link between namespaces.
    pub group: u32,
    /// IFLA_LINK: the lower device of a macvlan, ipvlan or VLAN link.
    pub parent_index: Option<u32>,
    pub up: bool,
    /// IFLA_ADDRESS, when it is an Ethernet address.
    pub mac: Option<MacAddr>,
}

/// A container's link, made in the host namespace at Join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildLink {
    pub name: String,
    pub parent_index: u32,
    pub mode: LinkMode,
    pub mac: Option<MacAddr>,
    pub mtu: Option<u32>,
    pub group: u32,
}

/// A link operation the kernel refused, or that could not be asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelError {
    /// What rustvlan asked: `creating macvlan link rv1a2b3c4d5e6`.
    pub op: String,
    /// The errno the kernel answered, if it answered one.
    pub errno: Option<Errno>,
    /// Why, in words: the errno's description, or what went wrong on the way.
    pub reason: String,
}

impl KernelError {
    /// The kernel answered `errno` to `op`; worded as the C library words it, like the
    /// errors of real netlink requests.
    pub fn refused(op: impl Into<String>, errno: Errno) -> Self {
        KernelError {
            op: op.into(),
            errno: Some(errno),
            reason: std::io::Error::from_raw_os_error(errno as i32).to_string(),
        }
    }

    pub fn is(&self, errno: Errno) -> bool {
        self.errno == Some(errno)
    }
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.op, self.reason)
    }
}

impl std::error::Error for KernelError {}

/// A kernel refusal as it is: its text for the user, itself for the log.
impl From<KernelError> for crate::error::Error {
    fn from(e: KernelError) -> Self {
        crate::error::Error::kernel(e.to_string()).caused_by(e)
    }
}

pub type KResult<T> = Result<T, KernelError>;

/// Link operations in the namespace rustvlan runs in. Every method is one netlink
/// round trip (a dump for `links`), so callers can reason about what the kernel saw.
pub trait Kernel: Send + Sync + 'static {
    /// The link named `name`, or None.
    fn link(&self, name: &str) -> impl Future<Output = KResult<Option<LinkInfo>>> + Send;
    /// Every link of the namespace.
    fn links(&self) -> impl Future<Output = KResult<Vec<LinkInfo>>> + Send;
    /// Every link of the network namespace bound at `netns` (a container's sandbox
    /// key), or None when no namespace is there any more.
    fn links_in(&self, netns: &Path) -> impl Future<Output = KResult<Option<Vec<LinkInfo>>>> + Send;
    /// A macvlan or ipvlan child, in one RTM_NEWLINK so that it exists fully set up or not
    /// at all. Left down: dockerd brings it up inside the container.
    fn add_child(&self, link: &ChildLink) -> impl Future<Output = KResult<()>> + Send;
    /// A VLAN link `name` with VLAN `id` of `protocol` on `base_index`, set up.
    fn add_vlan(
        &self,
        name: &str,
        base_index: u32,
        id: u16,
        protocol: VlanProtocol,
        group: u32,
    ) -> impl Future<Output = KResult<()>> + Send;
    /// A dummy link, set up, with `mtu` if given.
    fn add_dummy(&self, name: &str, mtu: Option<u32>, group: u32) -> impl Future<Output = KResult<()>> + Send;
    /// Deletes a link; Ok(false) if it was already gone.
    fn delete(&self, index: u32) -> impl Future<Output = KResult<bool>> + Send;
    /// Deletes several links at the cost of one: each is moved into `trash_group`
    /// (cheap), then the group is deleted in one RTM_DELLINK, which the kernel tears down
    /// with one RCU grace period instead of one per link. Links already gone are skipped.
    /// The caller makes sure nothing else is in `trash_group`.
    fn delete_links(&self, indices: &[u32], trash_group: u32) -> impl Future<Output = KResult<()>> + Send;
    /// Readies a host-access shim: ARP answered only for the shim's own addresses
    /// (`arp_ignore=1`, `arp_announce=2`, set per link over netlink, not /proc/sys), and up;
    /// and its parent answers ARP only for its own addresses (`arp_ignore=1`), so that
    /// the LAN sees one MAC, the shim's, for the host's address on it.
    fn ready_shim(&self, index: u32, parent_index: u32) -> impl Future<Output = KResult<()>> + Send;
    /// The IPv4 addresses of the link `index`, with their prefix lengths.
    fn addresses(&self, index: u32) -> impl Future<Output = KResult<Vec<IpNetwork>>> + Send;
    /// Adds an address; one that is already there is not an error.
    fn add_address(&self, index: u32, address: IpNetwork) -> impl Future<Output = KResult<()>> + Send;
    /// Removes an address; Ok(false) if it was not there.
    fn delete_address(&self, index: u32, address: IpNetwork) -> impl Future<Output = KResult<bool>> + Send;
    /// Every route of the main table with rustvlan's [`ROUTE_PROTOCOL`].
    fn host_routes(&self) -> impl Future<Output = KResult<Vec<HostRoute>>> + Send;
    /// Adds (or replaces) a host route, with rustvlan's protocol and link scope.
    fn add_route(&self, route: &HostRoute) -> impl Future<Output = KResult<()>> + Send;
    /// Removes a host route; Ok(false) if it was not there.
    fn delete_route(&self, route: &HostRoute) -> impl Future<Output = KResult<bool>> + Send;
}
