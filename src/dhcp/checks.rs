//! What an ACK must be before a lease is taken from it: answers come from anyone on the
//! LAN, so each field is checked against RFC 2131/2132/3442 and what a container can
//! use, and an answer that fails names the field and what it held.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

/// Shortest and longest subnet a lease may bring: a /31 or /32 leaves no other host on
/// the link to route through, and a mask shorter than /8 is a typo for one.
pub const PREFIXES: std::ops::RangeInclusive<u8> = 8..=30;
/// A lease shorter than this would be renewed before its ACK settled.
pub const MIN_LEASE_SECS: u32 = 10;
/// The longest text from the LAN (a NAK's message) that reaches a log line or status.
const MAX_SHOWN_CHARS: usize = 160;

/// Why an answer is not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unusable {
    /// A required option is absent.
    Missing(&'static str),
    /// The server identifier (option 54) is not a unicast address.
    Server(Ipv4Addr),
    /// The subnet mask is not contiguous, or outside [`PREFIXES`].
    Mask(Ipv4Addr),
    /// The offered address cannot be a host's on its subnet.
    Address { address: Ipv4Addr, why: &'static str },
    /// Lease time, T1 and T2 are not 0 < T1 < T2 < lease (or the lease is too short).
    Times { lease: u32, t1: u32, t2: u32 },
    /// The router is not another host of the leased subnet.
    Router(Ipv4Addr),
    /// A classless route's gateway is not reachable on the link.
    RouteGateway {
        destination: Ipv4Network,
        gateway: Ipv4Addr,
    },
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unusable::Missing(what) => write!(f, "it has no {what}"),
            Unusable::Server(ip) => write!(f, "its server identifier {ip} is not a unicast address"),
            Unusable::Mask(mask) => write!(
                f,
                "its subnet mask {mask} is not a contiguous mask between /{} and /{}",
                PREFIXES.start(),
                PREFIXES.end()
            ),
            Unusable::Address { address, why } => write!(f, "the offered address {address} is {why}"),
            Unusable::Times { lease, t1, t2 } => write!(
                f,
                "its times are out of order: T1 {t1} s, T2 {t2} s, lease {lease} s (RFC 2131 needs 0 < T1 < T2 < \
                 lease, and rustvlan a lease of at least {MIN_LEASE_SECS} s)"
            ),
            Unusable::Router(router) => write!(f, "its router {router} is not another host of the leased subnet"),
            Unusable::RouteGateway { destination, gateway } => write!(
                f,
                "its classless route to {destination} goes through {gateway}, which is not on the leased subnet"
            ),
        }
    }
}

/// Why `ip` cannot be any host's unicast address, if it cannot.
fn not_unicast(ip: Ipv4Addr) -> Option<&'static str> {
    let [first, ..] = ip.octets();
    if ip.is_unspecified() || first == 0 {
        Some("in 0.0.0.0/8 (this network)")
    } else if ip.is_broadcast() {
        Some("the broadcast address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_link_local() {
        Some("a link-local address (169.254.0.0/16, never leased)")
    } else if first >= 240 {
        Some("a reserved address (240.0.0.0/4)")
    } else {
        None
    }
}

/// Why `net`'s address cannot be a host's on `net`, if it cannot.
pub fn not_a_host(net: Ipv4Network) -> Option<&'static str> {
    not_unicast(net.ip()).or(if net.ip() == net.network() {
        Some("its subnet's network address")
    } else if net.ip() == net.broadcast() {
        Some("its subnet's broadcast address")
    } else {
        None
    })
}

pub fn check_server(server: Ipv4Addr) -> Result<(), Unusable> {
    match not_unicast(server) {
        Some(_) => Err(Unusable::Server(server)),
        None => Ok(()),
    }
}

/// The prefix of a contiguous mask in [`PREFIXES`].
pub fn prefix_of(mask: Ipv4Addr) -> Result<u8, Unusable> {
    let bits = u32::from(mask);
    let ones = bits.leading_ones();
    let contiguous = ones + bits.trailing_zeros() == 32;
    match u8::try_from(ones) {
        Ok(prefix) if contiguous && PREFIXES.contains(&prefix) => Ok(prefix),
        _ => Err(Unusable::Mask(mask)),
    }
}

/// T1 and T2, the RFC 2131 defaults (half and seven eighths of the lease) where absent.
pub fn lease_times(lease: u32, t1: Option<u32>, t2: Option<u32>) -> Result<(u32, u32), Unusable> {
    let t1 = t1.unwrap_or(lease / 2);
    let t2 = t2.unwrap_or((u64::from(lease) * 7 / 8) as u32);
    if lease < MIN_LEASE_SECS || t1 == 0 || t1 >= t2 || t2 >= lease {
        return Err(Unusable::Times { lease, t1, t2 });
    }
    Ok((t1, t2))
}

/// The router, if any, must be another host of `leased`.
pub fn check_router(leased: Ipv4Network, router: Ipv4Addr) -> Result<(), Unusable> {
    let on_subnet = Ipv4Network::new(router, leased.prefix()).expect("the leased prefix");
    if router == leased.ip() || !leased.contains(router) || not_a_host(on_subnet).is_some() {
        return Err(Unusable::Router(router));
    }
    Ok(())
}

/// A classless route goes through a host of `leased`, or is on-link (gateway 0.0.0.0,
/// RFC 3442), as the kernel takes it.
pub fn check_route(leased: Ipv4Network, destination: Ipv4Network, gateway: Ipv4Addr) -> Result<(), Unusable> {
    if gateway.is_unspecified() || check_router(leased, gateway).is_ok() {
        return Ok(());
    }
    Err(Unusable::RouteGateway { destination, gateway })
}

/// Text from the LAN as it may be shown: escaped (no terminal control sequence gets
/// through) and cut short.
pub fn shown(text: &str) -> String {
    let escaped: String = text.escape_debug().collect();
    match escaped.char_indices().nth(MAX_SHOWN_CHARS) {
        Some((cut, _)) => format!("{}…", &escaped[..cut]),
        None => escaped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> Ipv4Network {
        text.parse().unwrap()
    }

    #[test]
    fn an_offered_address_must_be_a_host_of_its_subnet() {
        for (address, why) in [
            ("0.0.0.0/24", "in 0.0.0.0/8 (this network)"),
            ("255.255.255.255/24", "the broadcast address"),
            ("224.0.0.5/24", "a multicast address"),
            ("127.0.0.9/8", "a loopback address"),
            ("169.254.3.4/16", "a link-local address (169.254.0.0/16, never leased)"),
            ("250.1.2.3/24", "a reserved address (240.0.0.0/4)"),
            ("10.64.0.0/24", "its subnet's network address"),
            ("10.64.0.255/24", "its subnet's broadcast address"),
        ] {
            assert_eq!(not_a_host(net(address)), Some(why), "{address}");
        }
        assert_eq!(not_a_host(net("10.64.0.7/24")), None);
    }

    #[test]
    fn masks_are_contiguous_and_between_8_and_30() {
        assert_eq!(prefix_of("255.255.255.0".parse().unwrap()), Ok(24));
        assert_eq!(prefix_of("255.0.0.0".parse().unwrap()), Ok(8));
        assert_eq!(prefix_of("255.255.255.252".parse().unwrap()), Ok(30));
        for bad in [
            "255.0.255.0",
            "0.0.0.0",
            "255.255.255.254",
            "255.255.255.255",
            "254.0.0.0",
        ] {
            let mask: Ipv4Addr = bad.parse().unwrap();
            assert_eq!(prefix_of(mask), Err(Unusable::Mask(mask)), "{bad}");
        }
    }

    #[test]
    fn times_are_in_order_with_rfc_defaults() {
        assert_eq!(lease_times(3600, None, None), Ok((1800, 3150)));
        assert_eq!(lease_times(120, Some(3), Some(5)), Ok((3, 5)));
        assert_eq!(lease_times(u32::MAX, None, None), Ok((u32::MAX / 2, 3_758_096_383)));
        for (lease, t1, t2) in [
            (0, None, None),
            (5, None, None),
            (600, Some(0), None),
            (600, Some(700), None),
            (600, Some(300), Some(200)),
            (600, None, Some(600)),
        ] {
            assert!(lease_times(lease, t1, t2).is_err(), "{lease} {t1:?} {t2:?}");
        }
    }

    #[test]
    fn routers_and_route_gateways_are_other_hosts_of_the_subnet() {
        let leased = net("10.64.0.7/24");
        assert!(check_router(leased, "10.64.0.1".parse().unwrap()).is_ok());
        for bad in ["10.64.0.7", "10.65.0.1", "10.64.0.255", "10.64.0.0", "0.0.0.0"] {
            assert!(check_router(leased, bad.parse().unwrap()).is_err(), "{bad}");
        }
        let to = net("10.70.0.0/16");
        assert!(check_route(leased, to, Ipv4Addr::UNSPECIFIED).is_ok(), "on-link");
        assert!(check_route(leased, to, "10.64.0.254".parse().unwrap()).is_ok());
        assert_eq!(
            check_route(leased, to, "192.168.1.1".parse().unwrap()),
            Err(Unusable::RouteGateway {
                destination: to,
                gateway: "192.168.1.1".parse().unwrap()
            })
        );
    }

    #[test]
    fn text_from_the_lan_is_escaped_and_cut() {
        assert_eq!(shown("no \u{1b}[31mlease\u{7}"), "no \\u{1b}[31mlease\\u{7}");
        assert_eq!(shown("line\nnext"), "line\\nnext");
        assert_eq!(shown(&"x".repeat(500)).chars().count(), MAX_SHOWN_CHARS + 1);
    }
}
