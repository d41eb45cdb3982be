//! CreateNetwork's options and subnets, checked and turned into a network's settings.
//! Pure: the kernel is asked about the parent later.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::Deserialize;
use serde_json::Value;

use super::calls::SubnetSpec;
use crate::error::{Error, Result};
use crate::ipam::allocator::{parse_address, parse_subnet};
use crate::kernel::IFNAME_MAX;
use crate::keys::check_option_keys;
use crate::model::{
    Family, IpvlanFlag, IpvlanMode, LinkKind, LinkMode, MacvlanMode, Named, ParentKind, ParentRecord, Subnet,
    VlanProtocol,
};

pub const GENERIC: &str = "com.docker.network.generic";
pub const INTERNAL: &str = "com.docker.network.internal";
pub const ENABLE_IPV6: &str = "com.docker.network.enable_ipv6";
/// Sent by dockerd 28 and later; `--ipv4=false` makes an IPv6-only network.
pub const ENABLE_IPV4: &str = "com.docker.network.enable_ipv4";

/// The `-o` options of a network, as dockerd sends them: strings under
/// `com.docker.network.generic`. Docker's own macvlan/ipvlan names are here too, so
/// that `-d macvlan` can become `-d rustvlan` without touching the options. Adding an
/// option: a field here (and its key in [`VALID_KEYS`]), its check in
/// [`parse_network_options`], and its use.
#[derive(Debug, Default, Deserialize)]
pub struct NetworkOptions {
    pub parent: Option<String>,
    pub vlan: Option<String>,
    pub kind: Option<String>,
    pub mode: Option<String>,
    pub macvlan_mode: Option<String>,
    pub ipvlan_mode: Option<String>,
    pub ipvlan_flag: Option<String>,
    pub mtu: Option<String>,
    #[serde(rename = "com.docker.network.driver.mtu")]
    pub driver_mtu: Option<String>,
    pub host_access: Option<String>,
    pub host_access_ip: Option<String>,
    pub vlan_protocol: Option<String>,
}

/// Every `-o` key rustvlan understands: the fields of [`NetworkOptions`].
pub const VALID_KEYS: &[&str] = &[
    "parent",
    "vlan",
    "kind",
    "mode",
    "macvlan_mode",
    "ipvlan_mode",
    "ipvlan_flag",
    "mtu",
    "com.docker.network.driver.mtu",
    "host_access",
    "host_access_ip",
    "vlan_protocol",
];

/// `--aux-address host=IP`: the shim's address, reserved by whatever IPAM the network has.
pub const HOST_AUX_ADDRESS: &str = "host";

/// An option's value; empty means "not given", as `-o parent=` does for Docker's drivers.
fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

/// A network's parent: its name, and how rustvlan makes it when it is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentChoice {
    pub name: String,
    /// `None`: an interface the user named, which must exist. A VLAN (`eth0.10`, or
    /// `parent=eth0 vlan=10`) is made on its base when missing; a dummy is what a
    /// network without a parent gets.
    pub make: Option<ParentKind>,
    /// QinQ: the outer VLAN the inner one is made on, made first when missing.
    pub outer: Option<ParentRecord>,
    /// The name as the user gave it, when it was over 15 bytes and `name` is short.
    pub alias: Option<String>,
}

impl ParentChoice {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_dummy(&self) -> bool {
        self.make == Some(ParentKind::Dummy)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    pub link: LinkMode,
    pub parent: ParentChoice,
    pub mtu: Option<u32>,
    pub internal: bool,
    /// `None` from dockerd before 28, which does not send it.
    pub enable_ipv4: Option<bool>,
    pub enable_ipv6: bool,
    /// Every `-o` option as given, namespaced ones too, for the network's record.
    pub options: BTreeMap<String, String>,
    /// `-o host_access=on`, with `-o host_access_ip` if given.
    pub host_access: Option<HostAccessRequest>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAccessRequest {
    pub ip: Option<IpAddr>,
}

/// Ids become link names and store keys: keep them to what dockerd sends (hex).
pub fn check_id(field: &str, id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{field} {id:?} is not a valid id (1-128 letters, digits, '-', '_' or '.')"
        )))
    }
}

/// The kernel's rules for interface names (dev_valid_name).
pub fn check_ifname(what: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(format!("{what} is empty")));
    }
    if name.len() > IFNAME_MAX {
        return Err(Error::invalid(format!(
            "{what} {name:?} is {} bytes long; interface names have at most {IFNAME_MAX}",
            name.len()
        )));
    }
    if name == "."
        || name == ".."
        || name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
    {
        return Err(Error::invalid(format!("{what} {name:?} is not a valid interface name")));
    }
    Ok(())
}

fn parse_vlan_id(text: &str, context: &str) -> Result<u16> {
    match text.parse::<u32>() {
        Ok(id @ 1..=4094) => Ok(id as u16),
        Ok(id) => Err(Error::invalid(format!("VLAN id {id} {context} is outside 1-4094"))),
        Err(_) => Err(Error::invalid(format!(
            "VLAN id {text:?} {context} is not a number from 1 to 4094"
        ))),
    }
}

/// One VLAN tag, or two for QinQ (outer first): `10`, `100.10`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VlanTags {
    pub outer: u16,
    pub inner: Option<u16>,
}

impl std::fmt::Display for VlanTags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.inner {
            Some(inner) => write!(f, "{}.{inner}", self.outer),
            None => write!(f, "{}", self.outer),
        }
    }
}

fn parse_vlan_option(text: &str) -> Result<VlanTags> {
    let context = "in option vlan";
    match text.split_once('.') {
        Some((outer, inner)) => Ok(VlanTags {
            outer: parse_vlan_id(outer, context)?,
            inner: Some(parse_vlan_id(inner, context)?),
        }),
        None => Ok(VlanTags {
            outer: parse_vlan_id(text, context)?,
            inner: None,
        }),
    }
}

fn numeric(suffix: &str) -> bool {
    !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit())
}

/// `eth0.10` names VLAN 10 on `eth0`, `eth0.100.10` VLAN 10 inside VLAN 100 (QinQ); a
/// name whose last dot is followed by anything but digits (`br.lan`) is an ordinary
/// interface name. Returns the base and the tags.
fn vlan_in_name(name: &str) -> Result<(&str, Option<VlanTags>)> {
    let Some((rest, last)) = name.rsplit_once('.').filter(|(_, last)| numeric(last)) else {
        return Ok((name, None));
    };
    let context = format!("in parent {name}");
    let last = parse_vlan_id(last, &context)?;
    let tags = match rest.rsplit_once('.').filter(|(_, outer)| numeric(outer)) {
        Some((base, outer)) => {
            let outer = parse_vlan_id(outer, &context)?;
            return Ok((
                base,
                Some(VlanTags {
                    outer,
                    inner: Some(last),
                }),
            ));
        }
        None => VlanTags {
            outer: last,
            inner: None,
        },
    };
    Ok((rest, Some(tags)))
}

/// A VLAN link's name: `base.tags`, or, when that is over 15 bytes, `v<tags>-<4 hex
/// digits of a hash of the long name>` (at most 15: `v4094.4094-abcd`).
fn vlan_link_name(long: &str, tags: &str) -> (String, Option<String>) {
    if long.len() <= IFNAME_MAX {
        return (long.to_string(), None);
    }
    let hash = crate::util::stable_hash(&[long.as_bytes()]) & 0xffff;
    (format!("v{tags}-{hash:04x}"), Some(long.to_string()))
}

/// One of a [`Named`] enum's values, or an error that lists them all.
fn parse_named<T: Named>(text: &str, what: &str, plural: &str) -> Result<T> {
    T::from_name(text)
        .ok_or_else(|| Error::invalid(format!("unknown {what} {text:?}; valid {plural}: {}", T::valid_names())))
}

fn parse_mtu(key: &str, text: &str) -> Result<u32> {
    match text.parse::<u32>() {
        Ok(mtu @ 68..=65535) => Ok(mtu),
        _ => Err(Error::invalid(format!(
            "{key} must be a number from 68 to 65535, got {text:?}"
        ))),
    }
}

/// Reads the options of a CreateNetwork request.
pub fn parse_network_options(network_id: &str, options: &BTreeMap<String, Value>) -> Result<NetworkConfig> {
    let flag = |key: &str| -> Result<bool> {
        match options.get(key) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            // Older clients have sent these as strings.
            Some(Value::String(s)) if s == "true" || s == "false" => Ok(s == "true"),
            Some(other) => Err(Error::invalid(format!("option {key} must be a boolean, got {other}"))),
        }
    };
    let internal = flag(INTERNAL)?;
    let enable_ipv6 = flag(ENABLE_IPV6)?;
    let enable_ipv4 = options
        .contains_key(ENABLE_IPV4)
        .then(|| flag(ENABLE_IPV4))
        .transpose()?;

    let mut generic = BTreeMap::new();
    match options.get(GENERIC) {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (key, value) in map {
                let Value::String(text) = value else {
                    return Err(Error::invalid(format!("option {key} must be a string, got {value}")));
                };
                generic.insert(key.clone(), text.clone());
            }
        }
        Some(other) => {
            return Err(Error::invalid(format!(
                "{GENERIC} must be an object of strings, got {other}"
            )));
        }
    }
    check_option_keys("option", generic.keys().map(String::as_str), VALID_KEYS)?;
    // Every value is a string and every bare key a field, so this cannot fail; the
    // namespaced keys are ignored.
    let o: NetworkOptions = serde_json::from_value(serde_json::to_value(&generic).expect("strings serialize"))
        .map_err(|e| Error::invalid(format!("invalid options: {e}")))?;

    let link = parse_link_mode(&o)?;
    let mtu = match (given(&o.mtu), given(&o.driver_mtu)) {
        (Some(a), Some(b)) if a != b => {
            return Err(Error::invalid(format!(
                "mtu={a} contradicts com.docker.network.driver.mtu={b}"
            )));
        }
        (Some(a), _) => Some(parse_mtu("mtu", a)?),
        (None, Some(b)) => Some(parse_mtu("com.docker.network.driver.mtu", b)?),
        (None, None) => None,
    };
    let vlan = given(&o.vlan).map(parse_vlan_option).transpose()?;
    let protocol = given(&o.vlan_protocol)
        .map(|p| parse_named::<VlanProtocol>(&p.to_ascii_lowercase(), "vlan_protocol", "protocols"))
        .transpose()?;
    // `--internal` keeps a given parent, as Docker 28's drivers do (20.10's replaced it
    // with a dummy): Join gives its containers no gateway.
    let parent = parse_parent(network_id, given(&o.parent), vlan, protocol, link.kind())?;
    let host_access = parse_host_access(&o, link, &parent, internal)?;

    Ok(NetworkConfig {
        link,
        parent,
        mtu,
        internal,
        enable_ipv4,
        enable_ipv6,
        options: generic,
        host_access,
    })
}

/// `host_access` and `host_access_ip`, refused with the reason where the kernel cannot
/// pass traffic between the host's shim and the containers.
fn parse_host_access(
    o: &NetworkOptions,
    link: LinkMode,
    parent: &ParentChoice,
    internal: bool,
) -> Result<Option<HostAccessRequest>> {
    let on = match given(&o.host_access) {
        None | Some("off" | "false" | "no") => false,
        Some("on" | "true" | "yes") => true,
        Some(other) => {
            return Err(Error::invalid(format!("host_access={other:?} is not on or off")));
        }
    };
    let ip = given(&o.host_access_ip)
        .map(|text| parse_address("host_access_ip", text))
        .transpose()?;
    if !on {
        return match ip {
            Some(ip) => Err(Error::invalid(format!(
                "host_access_ip={ip} is given but host_access is off; add -o host_access=on"
            ))),
            None => Ok(None),
        };
    }
    if let Some(ip @ IpAddr::V6(_)) = ip {
        return Err(Error::invalid(format!(
            "host_access_ip={ip} is IPv6; host access is IPv4 only for now, give an IPv4 address"
        )));
    }
    let refuse = |why: String| Err(Error::invalid(format!("host_access=on is refused: {why}")));
    if internal {
        return refuse("the network is --internal, which keeps its containers away from the host".into());
    }
    if parent.is_dummy() {
        return refuse(
            "the network has no parent (-o parent=IFACE), so there is nothing to reach the host over".into(),
        );
    }
    match link {
        LinkMode::Macvlan {
            mode: MacvlanMode::Bridge,
        } => Ok(Some(HostAccessRequest { ip })),
        LinkMode::Macvlan { mode } => refuse(format!(
            "macvlan {mode} mode never passes frames between two macvlan links of one parent, so the host's shim \
             cannot reach the containers; use macvlan_mode=bridge"
        )),
        LinkMode::Ipvlan {
            mode: IpvlanMode::L2,
            flag: IpvlanFlag::Bridge,
        } => Ok(Some(HostAccessRequest { ip })),
        LinkMode::Ipvlan {
            mode: IpvlanMode::L2,
            flag,
        } => refuse(format!(
            "ipvlan_flag={flag} stops traffic between ipvlan links of one parent, so the host's shim cannot reach \
             the containers; use ipvlan_flag=bridge"
        )),
        LinkMode::Ipvlan { mode, .. } => refuse(format!(
            "ipvlan {mode} routes every container's traffic through the parent's own stack, which host access \
             does not cover yet; use ipvlan_mode=l2"
        )),
    }
}

/// The parent from `parent`, `vlan` and `vlan_protocol`; without a parent, a dummy named
/// after the network.
fn parse_parent(
    network_id: &str,
    parent: Option<&str>,
    vlan: Option<VlanTags>,
    protocol: Option<VlanProtocol>,
    kind: LinkKind,
) -> Result<ParentChoice> {
    let Some(name) = parent else {
        return dummy_parent(network_id, vlan, protocol, kind);
    };
    let (base, in_name) = vlan_in_name(name)?;
    let tags = match (in_name, vlan) {
        (Some(named), Some(tags)) if named != tags => {
            return Err(Error::invalid(format!(
                "parent {name} names VLAN {named} but vlan={tags}"
            )));
        }
        (Some(_), Some(_)) if name.len() > IFNAME_MAX => {
            return Err(Error::invalid(format!(
                "give either parent={name} or vlan=, not both, when the name is over {IFNAME_MAX} bytes"
            )));
        }
        (None, Some(tags)) => Some(tags),
        (in_name, _) => in_name,
    };
    let base = if in_name.is_some() { base } else { name };
    check_ifname("parent", base)?;
    let Some(tags) = tags else {
        check_ifname("parent", name)?;
        if let Some(p) = protocol {
            return Err(Error::invalid(format!(
                "vlan_protocol={p} needs a VLAN parent (-o parent={name}.100, or -o vlan=100)"
            )));
        }
        return Ok(ParentChoice {
            name: name.to_string(),
            make: None,
            outer: None,
            alias: None,
        });
    };
    Ok(vlan_parent(base, tags, protocol))
}

/// No parent given: a dummy of this network's own (containers then reach only each
/// other), which takes no VLAN options.
fn dummy_parent(
    network_id: &str,
    vlan: Option<VlanTags>,
    protocol: Option<VlanProtocol>,
    kind: LinkKind,
) -> Result<ParentChoice> {
    if let Some(tags) = vlan {
        return Err(Error::invalid(format!(
            "vlan={tags} needs a parent interface (-o parent=eth0)"
        )));
    }
    if let Some(p) = protocol {
        return Err(Error::invalid(format!(
            "vlan_protocol={p} needs a VLAN parent (-o parent=eth0.100, or -o parent=eth0 -o vlan=100)"
        )));
    }
    let prefix = match kind {
        LinkKind::Macvlan => "dm-",
        LinkKind::Ipvlan => "di-",
    };
    Ok(ParentChoice {
        name: format!("{prefix}{}", crate::util::short_id(network_id)),
        make: Some(ParentKind::Dummy),
        outer: None,
        alias: None,
    })
}

/// A VLAN parent on `base`, and for QinQ the outer VLAN it sits on.
fn vlan_parent(base: &str, tags: VlanTags, protocol: Option<VlanProtocol>) -> ParentChoice {
    match tags.inner {
        None => {
            let (link, alias) = vlan_link_name(&format!("{base}.{tags}"), &tags.to_string());
            ParentChoice {
                name: link,
                make: Some(ParentKind::Vlan {
                    base: base.to_string(),
                    id: tags.outer,
                    protocol: protocol.unwrap_or_default(),
                }),
                outer: None,
                alias,
            }
        }
        Some(inner) => {
            // QinQ: the outer tag is 802.1ad unless told otherwise ("Q-in-Q" with two
            // 802.1Q tags is what some switches do); the inner tag is always 802.1Q.
            let (outer_name, outer_alias) = vlan_link_name(&format!("{base}.{}", tags.outer), &tags.outer.to_string());
            let (link, alias) = vlan_link_name(&format!("{base}.{tags}"), &tags.to_string());
            ParentChoice {
                name: link,
                make: Some(ParentKind::Vlan {
                    base: outer_name.clone(),
                    id: inner,
                    protocol: VlanProtocol::Ieee8021Q,
                }),
                outer: Some(ParentRecord {
                    name: outer_name,
                    kind: ParentKind::Vlan {
                        base: base.to_string(),
                        id: tags.outer,
                        protocol: protocol.unwrap_or(VlanProtocol::Ieee8021Ad),
                    },
                    alias: outer_alias,
                }),
                alias,
            }
        }
    }
}

/// macvlan or ipvlan, its mode and flag, from `kind`, `mode` and Docker's names.
fn parse_link_mode<'o>(o: &'o NetworkOptions) -> Result<LinkMode> {
    let (macvlan_mode, ipvlan_mode, flag) = (given(&o.macvlan_mode), given(&o.ipvlan_mode), given(&o.ipvlan_flag));
    let kind = match given(&o.kind) {
        Some(text) => parse_named(text, "kind", "kinds")?,
        None => match (macvlan_mode, ipvlan_mode.or(flag)) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid(
                    "macvlan_mode contradicts ipvlan_mode/ipvlan_flag: a network is either macvlan or ipvlan",
                ));
            }
            (_, Some(_)) => LinkKind::Ipvlan,
            _ => LinkKind::Macvlan,
        },
    };
    // The Docker-named option, and the generic `mode`, must agree when both are given.
    let pick = |specific_key: &str, specific: Option<&'o str>| -> Result<Option<&'o str>> {
        match (given(&o.mode), specific) {
            (Some(a), Some(b)) if a != b => Err(Error::invalid(format!("mode={a} contradicts {specific_key}={b}"))),
            (a, b) => Ok(b.or(a)),
        }
    };
    match kind {
        LinkKind::Macvlan => {
            if let Some(m) = ipvlan_mode {
                return Err(Error::invalid(format!(
                    "ipvlan_mode={m} is an ipvlan option but kind is macvlan"
                )));
            }
            if let Some(f) = flag {
                return Err(Error::invalid(format!(
                    "ipvlan_flag={f} is an ipvlan option but kind is macvlan"
                )));
            }
            let mode = pick("macvlan_mode", macvlan_mode)?;
            Ok(LinkMode::Macvlan {
                mode: mode.map_or(Ok(MacvlanMode::Bridge), |m| parse_named(m, "macvlan mode", "modes"))?,
            })
        }
        LinkKind::Ipvlan => {
            if let Some(m) = macvlan_mode {
                return Err(Error::invalid(format!(
                    "macvlan_mode={m} is a macvlan option but kind is ipvlan"
                )));
            }
            let mode = pick("ipvlan_mode", ipvlan_mode)?;
            Ok(LinkMode::Ipvlan {
                mode: mode.map_or(Ok(IpvlanMode::L2), |m| parse_named(m, "ipvlan mode", "modes"))?,
                flag: flag.map_or(Ok(IpvlanFlag::Bridge), |f| parse_named(f, "ipvlan_flag", "flags"))?,
            })
        }
    }
}

/// Reads CreateNetwork's IPv4Data or IPv6Data: pools, gateways and aux addresses, all CIDR.
pub fn parse_subnets(field: &str, data: &[SubnetSpec], family: Family) -> Result<Vec<Subnet>> {
    let mut subnets: Vec<Subnet> = Vec::with_capacity(data.len());
    for (i, d) in data.iter().enumerate() {
        let at = format!("{field}[{i}]");
        // 0.0.0.0/0 is what an IPAM that hands out no subnet shows (Docker's null IPAM,
        // rustvlan-dhcp without --subnet); anywhere else a /0 is a mistake.
        let pool = if d.pool == "0.0.0.0/0" {
            IpNetwork::V4(ipnetwork::Ipv4Network::new(std::net::Ipv4Addr::UNSPECIFIED, 0).expect("0 is a valid prefix"))
        } else {
            parse_subnet(&format!("{at}.Pool"), &d.pool)?
        };
        if Family::of(&pool) != family {
            return Err(Error::invalid(format!("{at}.Pool {pool} is not an {family} subnet")));
        }
        let inside = |what: &str, text: &str| -> Result<IpNetwork> {
            let ip = parse_address(what, text)?;
            if !pool.contains(ip) {
                return Err(Error::invalid(format!("{what} {ip} is outside subnet {pool}")));
            }
            Ok(IpNetwork::new(ip, pool.prefix()).expect("the pool's prefix fits its family"))
        };
        let gateway = match d.gateway.as_deref().filter(|g| !g.is_empty()) {
            Some(g) => Some(inside(&format!("{at}.Gateway"), g)?),
            None => None,
        };
        let mut aux_addresses = BTreeMap::new();
        for (name, text) in &d.aux_addresses {
            aux_addresses.insert(name.clone(), inside(&format!("{at}.AuxAddresses[{name}]"), text)?);
        }
        if let Some(other) = subnets.iter().find(|s| overlaps(&s.pool, &pool)) {
            return Err(Error::invalid(format!(
                "{at}.Pool {pool} overlaps {} of the same network",
                other.pool
            )));
        }
        subnets.push(Subnet {
            pool,
            gateway,
            aux_addresses,
            address_space: d.address_space.clone(),
        });
    }
    Ok(subnets)
}

pub fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    a.is_ipv6() == b.is_ipv6() && (a.contains(b.network()) || b.contains(a.network()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NET: &str = "18fb91e8ffcc24425b38e57adf743fcfb340c114853641a73959c624206ef42b";

    fn parse(generic: Value, internal: bool) -> Result<NetworkConfig> {
        let mut options = BTreeMap::new();
        options.insert(GENERIC.to_string(), generic);
        if internal {
            options.insert(INTERNAL.to_string(), json!(true));
        }
        parse_network_options(NET, &options)
    }

    fn err(generic: Value) -> String {
        parse(generic, false).unwrap_err().message
    }

    #[test]
    fn defaults_to_macvlan_bridge() {
        let c = parse(json!({"parent": "vp0"}), false).unwrap();
        assert_eq!(
            c.link,
            LinkMode::Macvlan {
                mode: MacvlanMode::Bridge
            }
        );
        assert_eq!(
            c.parent,
            ParentChoice {
                name: "vp0".into(),
                make: None,
                outer: None,
                alias: None,
            }
        );
        assert_eq!(c.mtu, None);
    }

    #[test]
    fn docker_option_names_work() {
        let c = parse(json!({"parent": "eth0", "macvlan_mode": "private"}), false).unwrap();
        assert_eq!(
            c.link,
            LinkMode::Macvlan {
                mode: MacvlanMode::Private
            }
        );
        let c = parse(json!({"parent": "eth0", "ipvlan_mode": "l3"}), false).unwrap();
        assert_eq!(
            c.link,
            LinkMode::Ipvlan {
                mode: IpvlanMode::L3,
                flag: IpvlanFlag::Bridge
            }
        );
        let c = parse(
            json!({"parent": "eth0", "ipvlan_mode": "l3s", "ipvlan_flag": "private"}),
            false,
        )
        .unwrap();
        assert_eq!(
            c.link,
            LinkMode::Ipvlan {
                mode: IpvlanMode::L3s,
                flag: IpvlanFlag::Private
            }
        );
        let c = parse(
            json!({"parent": "eth0", "kind": "ipvlan", "mode": "l2", "ipvlan_flag": "vepa"}),
            false,
        )
        .unwrap();
        assert_eq!(
            c.link,
            LinkMode::Ipvlan {
                mode: IpvlanMode::L2,
                flag: IpvlanFlag::Vepa
            }
        );
        let c = parse(json!({"parent": "eth0", "mode": "passthru"}), false).unwrap();
        assert!(c.link.is_passthru());
        let c = parse(
            json!({"parent": "eth0", "com.docker.network.driver.mtu": "1400"}),
            false,
        )
        .unwrap();
        assert_eq!(c.mtu, Some(1400));
    }

    #[test]
    fn contradictions_and_unknowns_are_named() {
        assert_eq!(
            err(json!({"kind": "ipvlan", "macvlan_mode": "bridge"})),
            "macvlan_mode=bridge is a macvlan option but kind is ipvlan"
        );
        assert_eq!(
            err(json!({"kind": "macvlan", "ipvlan_mode": "l2"})),
            "ipvlan_mode=l2 is an ipvlan option but kind is macvlan"
        );
        assert_eq!(
            err(json!({"kind": "macvlan", "ipvlan_flag": "private"})),
            "ipvlan_flag=private is an ipvlan option but kind is macvlan"
        );
        assert_eq!(
            err(json!({"macvlan_mode": "bridge", "ipvlan_mode": "l2"})),
            "macvlan_mode contradicts ipvlan_mode/ipvlan_flag: a network is either macvlan or ipvlan"
        );
        assert_eq!(
            err(json!({"mode": "vepa", "macvlan_mode": "bridge"})),
            "mode=vepa contradicts macvlan_mode=bridge"
        );
        assert_eq!(
            err(json!({"macvlan_mode": "l2"})),
            "unknown macvlan mode \"l2\"; valid modes: bridge (default), private, vepa, passthru"
        );
        assert_eq!(
            err(json!({"ipvlan_mode": "l4"})),
            "unknown ipvlan mode \"l4\"; valid modes: l2 (default), l3, l3s"
        );
        assert_eq!(
            err(json!({"ipvlan_flag": "loud"})),
            "unknown ipvlan_flag \"loud\"; valid flags: bridge (default), private, vepa"
        );
        assert_eq!(
            err(json!({"kind": "bridge"})),
            "unknown kind \"bridge\"; valid kinds: macvlan (default), ipvlan"
        );
        assert_eq!(
            err(json!({"parent": "vp0", "color": "red", "macvlan_mod": "vepa"})),
            "unknown options color, macvlan_mod (did you mean macvlan_mode?); valid options: parent, vlan, kind, \
             mode, macvlan_mode, ipvlan_mode, ipvlan_flag, mtu, com.docker.network.driver.mtu, host_access, \
             host_access_ip, vlan_protocol (namespaced keys such as com.example.key are accepted and ignored)"
        );
        assert_eq!(
            err(json!({"mtu": "9999999"})),
            "mtu must be a number from 68 to 65535, got \"9999999\""
        );
        assert_eq!(
            err(json!({"mtu": "1400", "com.docker.network.driver.mtu": "1500"})),
            "mtu=1400 contradicts com.docker.network.driver.mtu=1500"
        );
        assert_eq!(err(json!({"parent": 5})), "option parent must be a string, got 5");
        assert_eq!(
            err(json!("parent=eth0")),
            "com.docker.network.generic must be an object of strings, got \"parent=eth0\""
        );
    }

    #[test]
    fn vlan_parents() {
        let c = parse(json!({"parent": "eth0.10"}), false).unwrap();
        assert_eq!(
            c.parent,
            ParentChoice {
                name: "eth0.10".into(),
                make: Some(ParentKind::Vlan {
                    base: "eth0".into(),
                    id: 10,
                    protocol: VlanProtocol::Ieee8021Q,
                }),
                outer: None,
                alias: None,
            }
        );
        let c = parse(json!({"parent": "eth0", "vlan": "10"}), false).unwrap();
        assert_eq!(
            c.parent,
            ParentChoice {
                name: "eth0.10".into(),
                make: Some(ParentKind::Vlan {
                    base: "eth0".into(),
                    id: 10,
                    protocol: VlanProtocol::Ieee8021Q,
                }),
                outer: None,
                alias: None,
            }
        );
        let c = parse(json!({"parent": "eth0.10", "vlan": "10"}), false).unwrap();
        assert_eq!(c.parent.name(), "eth0.10");
        let c = parse(json!({"parent": "br.lan"}), false).unwrap();
        assert_eq!(
            c.parent,
            ParentChoice {
                name: "br.lan".into(),
                make: None,
                outer: None,
                alias: None,
            }
        );
        assert_eq!(
            err(json!({"parent": "eth0.0"})),
            "VLAN id 0 in parent eth0.0 is outside 1-4094"
        );
        assert_eq!(
            err(json!({"parent": "eth0.4095"})),
            "VLAN id 4095 in parent eth0.4095 is outside 1-4094"
        );
        assert_eq!(
            err(json!({"parent": "eth0", "vlan": "4096"})),
            "VLAN id 4096 in option vlan is outside 1-4094"
        );
        assert_eq!(
            err(json!({"parent": "eth0", "vlan": "abc"})),
            "VLAN id \"abc\" in option vlan is not a number from 1 to 4094"
        );
        assert_eq!(
            err(json!({"parent": "eth0", "vlan": "0"})),
            "VLAN id 0 in option vlan is outside 1-4094"
        );
        assert_eq!(
            err(json!({"parent": "eth0.20", "vlan": "10"})),
            "parent eth0.20 names VLAN 20 but vlan=10"
        );
        assert_eq!(
            err(json!({"vlan": "10"})),
            "vlan=10 needs a parent interface (-o parent=eth0)"
        );
        assert_eq!(
            err(json!({"parent": "enp0s31f6longer1"})),
            "parent \"enp0s31f6longer1\" is 16 bytes long; interface names have at most 15"
        );
    }

    #[test]
    fn qinq_parents() {
        let outer = |base: &str, name: &str, protocol| ParentRecord {
            name: name.into(),
            kind: ParentKind::Vlan {
                base: base.into(),
                id: 100,
                protocol,
            },
            alias: None,
        };
        let want = ParentChoice {
            name: "eth0.100.10".into(),
            make: Some(ParentKind::Vlan {
                base: "eth0.100".into(),
                id: 10,
                protocol: VlanProtocol::Ieee8021Q,
            }),
            outer: Some(outer("eth0", "eth0.100", VlanProtocol::Ieee8021Ad)),
            alias: None,
        };
        assert_eq!(parse(json!({"parent": "eth0.100.10"}), false).unwrap().parent, want);
        assert_eq!(
            parse(json!({"parent": "eth0", "vlan": "100.10"}), false)
                .unwrap()
                .parent,
            want
        );
        // Two 802.1Q tags, as some switches do QinQ.
        let c = parse(json!({"parent": "eth0.100.10", "vlan_protocol": "802.1q"}), false).unwrap();
        assert_eq!(c.parent.outer, Some(outer("eth0", "eth0.100", VlanProtocol::Ieee8021Q)));
        // One 802.1ad tag.
        let c = parse(json!({"parent": "eth0.100", "vlan_protocol": "802.1ad"}), false).unwrap();
        assert_eq!(
            c.parent.make,
            Some(ParentKind::Vlan {
                base: "eth0".into(),
                id: 100,
                protocol: VlanProtocol::Ieee8021Ad
            })
        );
        assert_eq!(c.parent.outer, None);
        // Long names get short ones, both the inner and the outer.
        let c = parse(json!({"parent": "enp0s31f6", "vlan": "100.10"}), false).unwrap();
        assert_eq!(c.parent.alias.as_deref(), Some("enp0s31f6.100.10"));
        assert!(
            c.parent.name.starts_with("v100.10-") && c.parent.name.len() == 12,
            "{}",
            c.parent.name
        );
        assert_eq!(c.parent.outer.as_ref().unwrap().name, "enp0s31f6.100");
        assert_eq!(
            err(json!({"parent": "eth0", "vlan_protocol": "802.1ad"})),
            "vlan_protocol=802.1ad needs a VLAN parent (-o parent=eth0.100, or -o vlan=100)"
        );
        assert_eq!(
            err(json!({"parent": "eth0.100", "vlan_protocol": "qinq"})),
            "unknown vlan_protocol \"qinq\"; valid protocols: 802.1q (default), 802.1ad"
        );
        assert_eq!(
            err(json!({"parent": "eth0.100.10", "vlan": "100.20"})),
            "parent eth0.100.10 names VLAN 100.10 but vlan=100.20"
        );
        assert_eq!(
            err(json!({"parent": "eth0", "vlan": "100.5000"})),
            "VLAN id 5000 in option vlan is outside 1-4094"
        );
    }

    #[test]
    fn interface_name_rules() {
        assert!(parse(json!({"parent": "enp0s31f6longe"}), false).is_ok());
        assert_eq!(
            err(json!({"parent": "averyveryverylongnic"})),
            "parent \"averyveryverylongnic\" is 20 bytes long; interface names have at most 15"
        );
        // A VLAN whose name would be over 15 bytes gets a short one, the same every time.
        let c = parse(json!({"parent": "enp0s31f6lo", "vlan": "1000"}), false).unwrap();
        assert_eq!(c.parent.name, "v1000-a01b");
        assert_eq!(c.parent.alias.as_deref(), Some("enp0s31f6lo.1000"));
        assert_eq!(
            err(json!({"parent": "a/b"})),
            "parent \"a/b\" is not a valid interface name"
        );
        assert_eq!(
            err(json!({"parent": ".."})),
            "parent \"..\" is not a valid interface name"
        );
    }

    #[test]
    fn every_valid_key_is_a_field_of_network_options() {
        for key in VALID_KEYS {
            let o: NetworkOptions = serde_json::from_value(json!({ *key: "x" })).unwrap();
            let fields = [
                &o.parent,
                &o.vlan,
                &o.kind,
                &o.mode,
                &o.macvlan_mode,
                &o.ipvlan_mode,
                &o.ipvlan_flag,
                &o.mtu,
                &o.driver_mtu,
                &o.host_access,
                &o.host_access_ip,
                &o.vlan_protocol,
            ];
            assert_eq!(fields.iter().filter(|f| f.is_some()).count(), 1, "{key}");
        }
    }

    #[test]
    fn namespaced_keys_are_accepted_and_ignored() {
        let c = parse(
            json!({"parent": "vp0", "com.example.x": "y", "com.docker.network.endpoint.ifname": "foo0"}),
            false,
        )
        .unwrap();
        assert_eq!(c.parent.name(), "vp0");
    }

    #[test]
    fn internal_keeps_its_parent_and_missing_parents_get_a_dummy() {
        // As Docker 28's drivers do: --internal only takes the gateway away.
        let c = parse(json!({"parent": "eth0"}), true).unwrap();
        assert_eq!(
            c.parent,
            ParentChoice {
                name: "eth0".into(),
                make: None,
                outer: None,
                alias: None,
            }
        );
        assert!(c.internal);
        let c = parse(json!({}), true).unwrap();
        assert_eq!(c.parent.name(), "dm-18fb91e8ffcc");
        let c = parse(json!({"ipvlan_mode": "l2"}), false).unwrap();
        assert_eq!(
            c.parent,
            ParentChoice {
                name: "di-18fb91e8ffcc".into(),
                make: Some(ParentKind::Dummy),
                outer: None,
                alias: None,
            }
        );
        assert!(!c.internal);
        let c = parse(json!({"parent": ""}), false).unwrap();
        assert_eq!(c.parent.name(), "dm-18fb91e8ffcc");
    }

    #[test]
    fn subnets_are_checked() {
        let data = |pool: &str, gw: Option<&str>| SubnetSpec {
            address_space: "rustvlan-local".into(),
            pool: pool.into(),
            gateway: gw.map(str::to_string),
            aux_addresses: BTreeMap::new(),
        };
        let s = parse_subnets("IPv4Data", &[data("10.77.0.0/24", Some("10.77.0.1/24"))], Family::V4).unwrap();
        assert_eq!(s[0].gateway.unwrap().to_string(), "10.77.0.1/24");
        let e = |d: Vec<SubnetSpec>, family| {
            parse_subnets(if family == Family::V6 { "IPv6Data" } else { "IPv4Data" }, &d, family)
                .unwrap_err()
                .message
        };
        assert_eq!(
            e(vec![data("10.77.0.0/24", Some("10.78.0.1/24"))], Family::V4),
            "IPv4Data[0].Gateway 10.78.0.1 is outside subnet 10.77.0.0/24"
        );
        assert_eq!(
            e(vec![data("fd00::/64", None)], Family::V4),
            "IPv4Data[0].Pool fd00::/64 is not an IPv4 subnet"
        );
        assert_eq!(
            e(vec![data("10.0.0.0/24", None)], Family::V6),
            "IPv6Data[0].Pool 10.0.0.0/24 is not an IPv6 subnet"
        );
        assert_eq!(
            e(vec![data("10.77.0.0/24", Some("bogus"))], Family::V4),
            "IPv4Data[0].Gateway \"bogus\" is not an IP address"
        );
        assert_eq!(
            e(vec![data("10.77.0.0/16", None), data("10.77.3.0/24", None)], Family::V4),
            "IPv4Data[1].Pool 10.77.3.0/24 overlaps 10.77.0.0/16 of the same network"
        );
        let mut aux = data("10.77.0.0/24", None);
        aux.aux_addresses = [("h".to_string(), "10.99.0.5/24".to_string())].into();
        assert_eq!(
            e(vec![aux], Family::V4),
            "IPv4Data[0].AuxAddresses[h] 10.99.0.5 is outside subnet 10.77.0.0/24"
        );
    }
}
