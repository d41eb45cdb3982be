//! The records rustvlan keeps: networks, endpoints, the parent links it made, IPAM pools.
//! They are what the store persists and what `rustvlan state` shows.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A unit enum whose names live in one table, used to parse options, to display, and
/// as its serde (store) form.
pub trait Named: Copy + PartialEq + 'static {
    /// Every value, the default first.
    const ALL: &'static [Self];
    fn name(self) -> &'static str;

    fn from_name(text: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.name() == text)
    }

    /// `bridge (default), private, vepa, passthru`
    fn valid_names() -> String {
        Self::ALL
            .iter()
            .enumerate()
            .map(|(i, v)| {
                if i == 0 {
                    format!("{} (default)", v.name())
                } else {
                    v.name().to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

macro_rules! named {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant),+
        }

        impl Named for $name {
            const ALL: &'static [Self] = &[$($name::$variant),+];
            fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

named!(MacvlanMode {
    Bridge = "bridge",
    Private = "private",
    Vepa = "vepa",
    Passthru = "passthru",
});

named!(IpvlanMode {
    L2 = "l2",
    L3 = "l3",
    L3s = "l3s",
});

named!(IpvlanFlag {
    Bridge = "bridge",
    Private = "private",
    Vepa = "vepa",
});

named!(
    /// A VLAN tag's protocol (its TPID): 802.1Q (0x8100), or 802.1ad (0x88a8), the outer
    /// "service" tag of QinQ.
    VlanProtocol {
        Ieee8021Q = "802.1q",
        Ieee8021Ad = "802.1ad",
    }
);

// `named!` writes the variants, so `#[default]` cannot go on one.
#[allow(clippy::derivable_impls)]
impl Default for VlanProtocol {
    fn default() -> Self {
        VlanProtocol::Ieee8021Q
    }
}

impl VlanProtocol {
    pub fn is_8021q(&self) -> bool {
        *self == VlanProtocol::Ieee8021Q
    }
}

named!(
    /// The two kinds of child link; macvlan is the default, as Docker's `-d macvlan`.
    LinkKind {
        Macvlan = "macvlan",
        Ipvlan = "ipvlan",
    }
);

/// What kind of child link a network's endpoints get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LinkMode {
    Macvlan { mode: MacvlanMode },
    Ipvlan { mode: IpvlanMode, flag: IpvlanFlag },
}

impl LinkMode {
    pub fn kind(&self) -> LinkKind {
        match self {
            LinkMode::Macvlan { .. } => LinkKind::Macvlan,
            LinkMode::Ipvlan { .. } => LinkKind::Ipvlan,
        }
    }

    /// ipvlan in l3/l3s routes instead of bridging: no gateway, a connected default route.
    pub fn is_routed(&self) -> bool {
        matches!(
            self,
            LinkMode::Ipvlan {
                mode: IpvlanMode::L3 | IpvlanMode::L3s,
                ..
            }
        )
    }

    pub fn is_passthru(&self) -> bool {
        matches!(
            self,
            LinkMode::Macvlan {
                mode: MacvlanMode::Passthru
            }
        )
    }
}

impl fmt::Display for LinkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkMode::Macvlan { mode } => write!(f, "macvlan {mode}"),
            LinkMode::Ipvlan { mode, flag } => write!(f, "ipvlan {mode} {flag}"),
        }
    }
}

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Family {
    #[default]
    V4,
    V6,
}

impl Family {
    pub fn of(net: &IpNetwork) -> Family {
        if net.is_ipv6() { Family::V6 } else { Family::V4 }
    }

    pub fn of_ip(ip: &std::net::IpAddr) -> Family {
        if ip.is_ipv6() { Family::V6 } else { Family::V4 }
    }

    /// Bits in an address.
    pub fn bits(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// One subnet of a network, as dockerd's IPAM (ours or another) handed it out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    pub pool: IpNetwork,
    /// CIDR, as dockerd sends it: the gateway address with the pool's prefix length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpNetwork>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub aux_addresses: BTreeMap<String, IpNetwork>,
    #[serde(default)]
    pub address_space: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub id: String,
    pub link: LinkMode,
    /// The interface the children hang off: an existing NIC, a VLAN or a dummy link.
    pub parent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub enable_ipv6: bool,
    #[serde(default)]
    pub ipv4: Vec<Subnet>,
    #[serde(default)]
    pub ipv6: Vec<Subnet>,
    /// The `-o` options exactly as given, for `rustvlan state` and for idempotency checks.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// `-o host_access=on`: the host reaches the containers through its shim link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_access: Option<HostAccess>,
}

/// A network's share of its parent's shim link: the host's address on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostAccess {
    /// S: the shim's address in this network (with the subnet's prefix length), the
    /// source of the host's routes to the containers and their next hop to the host.
    pub address: IpNetwork,
    /// Where S came from; rustvlan's IPAM holds it for the network unless it is an aux address.
    pub source: HostAddressSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostAddressSource {
    /// `--aux-address host=IP`: the network's IPAM (any IPAM) reserved it.
    AuxAddress,
    /// Reserved in the network's rustvlan pool (`-o host_access_ip=IP`, or chosen).
    Reserved,
    /// Claimed in a shared pool for this host alone, before the network was made.
    Claimed,
}

impl NetworkRecord {
    pub fn subnets(&self) -> impl Iterator<Item = &Subnet> {
        self.ipv4.iter().chain(self.ipv6.iter())
    }
}

/// A parent link rustvlan created, and therefore may delete and re-create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentRecord {
    pub name: String,
    #[serde(flatten)]
    pub kind: ParentKind,
    /// The name the user gave (`enp0s31f6.100.10`) when it is over 15 bytes and the
    /// link got a short one instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
}

impl ParentRecord {
    /// `vlan 10 on eth0`, `802.1ad vlan 100 on eth0`, `dummy`, and the name the user gave
    /// when the link has a short one.
    pub fn describe(&self) -> String {
        let what = match &self.kind {
            ParentKind::Vlan { base, id, protocol } if protocol.is_8021q() => format!("vlan {id} on {base}"),
            ParentKind::Vlan { base, id, protocol } => format!("{protocol} vlan {id} on {base}"),
            ParentKind::Dummy => "dummy".to_string(),
        };
        match &self.alias {
            Some(alias) => format!("{what} (for {alias})"),
            None => what,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ParentKind {
    /// VLAN sub-interface `base.id`: 802.1Q, or an 802.1ad outer tag (QinQ's S-tag).
    /// For QinQ the inner VLAN's base is the outer VLAN, itself a parent record.
    Vlan {
        base: String,
        id: u16,
        #[serde(default, skip_serializing_if = "VlanProtocol::is_8021q")]
        protocol: VlanProtocol,
    },
    /// Isolated parent for `--internal` networks or networks without a parent.
    Dummy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub id: String,
    pub network_id: String,
    /// Host-side name of the link made at Join; dockerd renames it inside the container.
    pub link_name: String,
    /// macvlan only: ipvlan children share the parent's MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// True when rustvlan chose the MAC (and so returns it from CreateEndpoint).
    #[serde(default)]
    pub mac_generated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<IpNetwork>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<IpNetwork>,
    /// The container's network namespace (Join's SandboxKey) while the endpoint is
    /// joined, so that `rustvlan status` can look for its link there. Recorded without
    /// waiting for the disk (see [`crate::ledger::Ledger::note_sandbox`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// A link whose endpoint is gone and that is being deleted off the request path (the
/// kernel takes an RCU grace period, ~16 ms, per delete; deletes are batched). While it is
/// pending, its name is not given to another endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingDelete {
    pub link_name: String,
    pub endpoint_id: String,
    pub network_id: String,
    /// The link's MAC (macvlan), so that a new endpoint asking for the same MAC on the
    /// same parent waits for this link to be gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// Seconds since the epoch when DeleteEndpoint (or DeleteNetwork) queued it.
    pub since: u64,
}

/// An IPAM pool. Immutable once made; its allocations and cursor are separate records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRecord {
    /// Unique for the life of the store: pool ids are never reused, so a late release
    /// for a pool that is gone can never free an address of a newer pool.
    pub seq: u64,
    pub address_space: String,
    pub pool: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_pool: Option<IpNetwork>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    /// The rustvlan network using this pool, once its CreateNetwork came. Only then does
    /// rustvlan see every endpoint using the pool's addresses, and may reclaim the ones
    /// nothing uses. Pools used by another driver are never claimed nor swept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
    /// Its addresses are claimed in etcd too, in the plan of its subnet and segment that
    /// every host shares (see [`crate::etcd`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
    /// A pool of `--ipam-driver rustvlan-dhcp`: its addresses are leases from the LAN's
    /// DHCP server, kept as [`LeaseRecord`]s, never taken from the pool itself.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dhcp: bool,
}

/// Where a pool's addresses come from, chosen once when the pool is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressSource {
    /// This host's store alone.
    Local,
    /// This host's store and a claim in etcd, in the plan every host shares.
    Shared,
    /// Leases from the LAN's DHCP server (the network's gateway aside, which is local).
    Lease,
}

impl PoolRecord {
    pub fn source(&self) -> AddressSource {
        match (self.dhcp, self.shared) {
            (true, _) => AddressSource::Lease,
            (false, true) => AddressSource::Shared,
            (false, false) => AddressSource::Local,
        }
    }
}

/// A lease from the LAN's DHCP server for one endpoint's address, renewed by rustvlan
/// for as long as the address is held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The pool id dockerd holds the address under.
    pub pool_id: String,
    pub address: ipnetwork::Ipv4Network,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<std::net::Ipv4Addr>,
    /// Classless static routes (option 121) besides the default one: (destination, via).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<(ipnetwork::Ipv4Network, std::net::Ipv4Addr)>,
    /// The DHCP server that granted it (option 54).
    pub server: std::net::Ipv4Addr,
    /// The parent interface the lease's packets go through.
    pub parent: String,
    /// chaddr: the endpoint's MAC (macvlan) or the parent's (ipvlan).
    pub mac: MacAddr,
    /// Option 61, as hex.
    pub client_id: String,
    /// Lease time, T1 and T2 from the last ACK, in seconds.
    pub lease_secs: u32,
    pub t1_secs: u32,
    pub t2_secs: u32,
    /// When the last ACK came (Unix seconds).
    pub acked_at: u64,
    #[serde(default)]
    pub renewals: u64,
    /// `bound`, or what went wrong with the last renewal (a NAK, no answer).
    #[serde(default)]
    pub trouble: Option<String>,
}

impl LeaseRecord {
    /// The store key: one lease per pool and address.
    pub fn key(&self) -> String {
        lease_key(&self.pool_id, std::net::IpAddr::V4(self.address.ip()))
    }

    pub fn expires_at(&self) -> u64 {
        self.acked_at + u64::from(self.lease_secs)
    }

    pub fn renew_at(&self) -> u64 {
        self.acked_at + u64::from(self.t1_secs)
    }
}

/// What happened to a `rustvlan-dhcp` lease: acquired, renewed, released, or a renewal
/// that failed and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DhcpEvent {
    Acquired,
    Renewed,
    Released,
    /// The server refused the renewal (DHCPNAK).
    Nak,
    /// No answer, and the lease is still valid.
    NoAnswer,
    /// No lease, and the old one has ended.
    Expired,
    /// The server answered with another address.
    Changed,
}

impl DhcpEvent {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            DhcpEvent::Acquired => "acquired",
            DhcpEvent::Renewed => "renewed",
            DhcpEvent::Released => "released",
            DhcpEvent::Nak => "nak",
            DhcpEvent::NoAnswer => "no_answer",
            DhcpEvent::Expired => "expired",
            DhcpEvent::Changed => "changed",
        }
    }
}

pub fn lease_key(pool_id: &str, ip: std::net::IpAddr) -> String {
    format!("{pool_id}@{ip}")
}

/// A shared address released here whose claim in etcd is still to be deleted (etcd was
/// unreachable, or the delete is under way). The address stays claimed meanwhile: a
/// leak until etcd is back, never a duplicate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedRelease {
    pub plan: String,
    pub ip: std::net::IpAddr,
    /// Not before this time (Unix seconds): a claim whose answer never came may still be
    /// carried out by etcd a moment later (a proposal that commits after a leader change),
    /// and a delete that comes first would leave it behind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<u64>,
}

impl SharedRelease {
    pub fn key(&self) -> String {
        format!("{}/{}", self.plan, self.ip)
    }
}

/// An Ethernet address, shown and parsed as `02:42:0a:4d:00:02`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// A random locally administered unicast address (first octet xxxxxx10).
    pub fn random_local() -> MacAddr {
        let mut bytes = [0u8; 6];
        crate::util::random_bytes(&mut bytes);
        bytes[0] = (bytes[0] & 0xfe) | 0x02;
        MacAddr(bytes)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a MAC address (expected six hex octets like 02:42:0a:00:00:02)");
        let mut bytes = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in bytes.iter_mut() {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(bytes))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip_and_checks() {
        let mac: MacAddr = "02:11:22:33:44:55".parse().unwrap();
        assert_eq!(mac.to_string(), "02:11:22:33:44:55");
        assert!(!mac.is_multicast());
        assert!("01:00:5e:00:00:01".parse::<MacAddr>().unwrap().is_multicast());
        assert!("ff:ff:ff:ff:ff:ff".parse::<MacAddr>().unwrap().is_multicast());
        assert!("02:11:22:33:44".parse::<MacAddr>().is_err());
        assert!("02:11:22:33:44:55:66".parse::<MacAddr>().is_err());
        assert!("zz:11:22:33:44:55".parse::<MacAddr>().is_err());
        for _ in 0..64 {
            let m = MacAddr::random_local();
            assert_eq!(m.0[0] & 0x03, 0x02, "{m} must be local unicast");
        }
    }

    #[test]
    fn link_mode_serializes_readably() {
        let mode = LinkMode::Ipvlan {
            mode: IpvlanMode::L3s,
            flag: IpvlanFlag::Private,
        };
        assert_eq!(
            serde_json::to_string(&mode).unwrap(),
            r#"{"kind":"ipvlan","mode":"l3s","flag":"private"}"#
        );
        assert_eq!(mode.to_string(), "ipvlan l3s private");
    }
}
