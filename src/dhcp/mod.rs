//! Leases from the LAN's DHCP server for `--ipam-driver rustvlan-dhcp`: rustvlan speaks
//! DHCP (RFC 2131) for each endpoint on the endpoint's parent, from the host namespace,
//! with the endpoint's MAC (macvlan) or the parent's MAC and a client-id of the
//! endpoint's own (ipvlan). Acquire is DISCOVER → OFFER → REQUEST → ACK; renewal is a
//! broadcast REQUEST for the leased address (as INIT-REBOOT), whose ACK comes back
//! broadcast, so no unicast path to the container is needed; release is RELEASE.

pub mod checks;
mod socket;
pub mod wire;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, OptionCode};
use ipnetwork::Ipv4Network;

use crate::model::MacAddr;
pub use checks::Unusable;
use socket::ParentSocket;
use wire::BROADCAST_MAC;

/// Who asks: the frame's source MAC and chaddr, and option 61.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub mac: MacAddr,
    pub client_id: Vec<u8>,
}

impl Identity {
    /// macvlan: the endpoint's own MAC, and the client-id a DHCP client on that MAC
    /// sends (RFC 2132: type 1, Ethernet), so MAC reservations on the server work.
    pub fn of_mac(mac: MacAddr) -> Identity {
        let mut client_id = vec![1];
        client_id.extend_from_slice(&mac.0);
        Identity { mac, client_id }
    }
}

/// What an ACK granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    pub address: Ipv4Network,
    pub router: Option<Ipv4Addr>,
    /// Option 121 (RFC 3442) without a default route through a router, which is
    /// `router` then; a gateway of 0.0.0.0 is on-link (RFC 3442's own spelling).
    pub routes: Vec<(Ipv4Network, Ipv4Addr)>,
    pub server: Ipv4Addr,
    pub lease_secs: u32,
    pub t1_secs: u32,
    pub t2_secs: u32,
}

/// Why a transaction failed, in words for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DhcpError {
    /// No server answered within the budget.
    NoAnswer { parent: String, waited: Duration },
    /// The server refused (DHCPNAK), with its message if it gave one, escaped.
    Refused { server: Ipv4Addr, message: String },
    /// The packet socket could not be opened or used.
    Socket { parent: String, error: String },
    /// The answer fails a check (from `server`, when it named itself).
    Unusable { server: Option<Ipv4Addr>, what: Unusable },
}

impl std::fmt::Display for DhcpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DhcpError::NoAnswer { parent, waited } => write!(
                f,
                "no DHCP server answered on {parent} within {:.0} s; is a DHCP server (or relay) reachable on that \
                 LAN or VLAN? (a server on this host itself cannot see frames sent on the parent)",
                waited.as_secs_f64()
            ),
            DhcpError::Refused { server, message } if message.is_empty() => {
                write!(f, "DHCP server {server} refused the request (DHCPNAK)")
            }
            DhcpError::Refused { server, message } => {
                write!(f, "DHCP server {server} refused the request (DHCPNAK: {message})")
            }
            DhcpError::Socket { parent, error } => {
                write!(f, "cannot send DHCP on {parent}: {error} (rustvlan needs CAP_NET_RAW)")
            }
            DhcpError::Unusable { server, what } => {
                match server {
                    Some(server) => write!(f, "the answer of DHCP server {server} is unusable: {what}")?,
                    None => write!(f, "a DHCP answer is unusable: {what}")?,
                }
                f.write_str("; fix the server's configuration (or stop the rogue server answering on this LAN)")
            }
        }
    }
}

impl std::error::Error for DhcpError {}

/// The DHCP client of every endpoint: one packet socket per parent interface.
#[derive(Default)]
pub struct Dhcp {
    sockets: Mutex<HashMap<u32, Arc<ParentSocket>>>,
}

/// Retransmissions within a budget: after 1, 2, 4, 4, ... seconds (RFC 2131 4.1 asks
/// for exponential backoff; dnsmasq may ping an address for a few seconds first).
fn retransmit_after(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.min(2))
}

const PARAMETERS: [OptionCode; 7] = [
    OptionCode::SubnetMask,
    OptionCode::Router,
    OptionCode::ClasslessStaticRoute,
    OptionCode::AddressLeaseTime,
    OptionCode::ServerIdentifier,
    OptionCode::Renewal,
    OptionCode::Rebinding,
];

impl Dhcp {
    fn socket(&self, ifindex: u32, parent: &str) -> Result<Arc<ParentSocket>, DhcpError> {
        let mut sockets = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = sockets.get(&ifindex).filter(|s| s.alive()) {
            return Ok(Arc::clone(s));
        }
        let socket = ParentSocket::open(ifindex, parent).map_err(|e| DhcpError::Socket {
            parent: parent.to_string(),
            error: e.to_string(),
        })?;
        sockets.insert(ifindex, Arc::clone(&socket));
        Ok(socket)
    }

    fn request(identity: &Identity, kind: MessageType) -> Message {
        let zero = Ipv4Addr::UNSPECIFIED;
        let mut m = Message::new(zero, zero, zero, zero, &identity.mac.0);
        // Broadcast answers: the endpoint's link may not exist yet, and a renewal's
        // answer then needs no unicast path to the container.
        m.set_flags(Flags::default().set_broadcast());
        let opts = m.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        opts.insert(DhcpOption::ClientIdentifier(identity.client_id.clone()));
        opts.insert(DhcpOption::ParameterRequestList(PARAMETERS.to_vec()));
        m
    }
}

/// One client transaction's frame: who asks, on which socket, until when.
struct Exchange<'a> {
    socket: &'a ParentSocket,
    parent: &'a str,
    identity: &'a Identity,
    started: Instant,
    deadline: Instant,
    /// The server this transaction talks to: ACKs and NAKs of any other are ignored.
    server: Option<Ipv4Addr>,
}

impl Exchange<'_> {
    /// Sends `message` (again at growing intervals) until a reply of one of `kinds`
    /// arrives or the deadline passes.
    async fn send(&self, message: &Message, kinds: &[MessageType]) -> Result<wire::Reply, DhcpError> {
        let Exchange {
            socket,
            parent,
            identity,
            started,
            deadline,
            server,
        } = *self;
        let from_our_server = |reply: &wire::Reply| {
            reply.kind == MessageType::Offer || server.is_none_or(|s| server_of(&reply.message).ok() == Some(s))
        };
        let frame = wire::frame(
            identity.mac,
            BROADCAST_MAC,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::BROADCAST,
            message,
        );
        let xid = message.xid();
        let mut replies = socket.expect(xid);
        let result = async {
            let mut attempt = 0;
            loop {
                socket.send(&frame).map_err(|e| DhcpError::Socket {
                    parent: parent.to_string(),
                    error: e.to_string(),
                })?;
                let wait_until = (Instant::now() + retransmit_after(attempt)).min(deadline);
                attempt += 1;
                loop {
                    let left = wait_until.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, replies.recv()).await {
                        Ok(Some(reply))
                            if kinds.contains(&reply.kind)
                                && reply.chaddr == identity.mac
                                && from_our_server(&reply) =>
                        {
                            return Ok(reply);
                        }
                        Ok(Some(_)) => continue,
                        Ok(None) | Err(_) => break,
                    }
                }
                if Instant::now() >= deadline {
                    return Err(DhcpError::NoAnswer {
                        parent: parent.to_string(),
                        waited: started.elapsed(),
                    });
                }
            }
        }
        .await;
        socket.forget(xid);
        result
    }
}

impl Dhcp {
    /// DISCOVER → OFFER → REQUEST → ACK, within `budget`. `wanted`: option 50, the
    /// address asked for (`--ip`); the server decides.
    pub async fn acquire(
        &self,
        ifindex: u32,
        parent: &str,
        identity: &Identity,
        wanted: Option<Ipv4Addr>,
        budget: Duration,
    ) -> Result<Granted, DhcpError> {
        let started = Instant::now();
        let deadline = started + budget;
        let socket = self.socket(ifindex, parent)?;
        let mut discover = Self::request(identity, MessageType::Discover);
        if let Some(ip) = wanted {
            discover.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
        }
        let mut exchange = Exchange {
            socket: &socket,
            parent,
            identity,
            started,
            deadline,
            server: None,
        };
        let offer = exchange.send(&discover, &[MessageType::Offer]).await?;
        let server = server_of(&offer.message)?;
        exchange.server = Some(server);
        let mut request = Self::request(identity, MessageType::Request);
        request.set_xid(discover.xid());
        request
            .opts_mut()
            .insert(DhcpOption::RequestedIpAddress(offer.message.yiaddr()));
        request.opts_mut().insert(DhcpOption::ServerIdentifier(server));
        let ack = exchange.send(&request, &[MessageType::Ack, MessageType::Nak]).await?;
        granted(&ack)
    }

    /// Renews `address`: a broadcast REQUEST for it (ciaddr 0, option 50), which the
    /// lease's server ACKs, extending it, or NAKs. `server`: the only one listened to
    /// (before T2); None: any (past T2, when RFC 2131 lets any server extend a lease).
    pub async fn renew(
        &self,
        ifindex: u32,
        parent: &str,
        identity: &Identity,
        address: Ipv4Addr,
        server: Option<Ipv4Addr>,
        budget: Duration,
    ) -> Result<Granted, DhcpError> {
        let started = Instant::now();
        let socket = self.socket(ifindex, parent)?;
        let mut request = Self::request(identity, MessageType::Request);
        request.opts_mut().insert(DhcpOption::RequestedIpAddress(address));
        let exchange = Exchange {
            socket: &socket,
            parent,
            identity,
            started,
            deadline: started + budget,
            server,
        };
        let ack = exchange.send(&request, &[MessageType::Ack, MessageType::Nak]).await?;
        granted(&ack)
    }

    /// RELEASE: no answer comes. Sent to the server's address in a broadcast frame, so
    /// its MAC need not be known.
    pub fn release(
        &self,
        ifindex: u32,
        parent: &str,
        identity: &Identity,
        address: Ipv4Addr,
        server: Ipv4Addr,
    ) -> Result<(), DhcpError> {
        let socket = self.socket(ifindex, parent)?;
        let mut m = Self::request(identity, MessageType::Release);
        m.set_flags(Flags::default());
        m.set_ciaddr(address);
        m.opts_mut().remove(OptionCode::ParameterRequestList);
        m.opts_mut().insert(DhcpOption::ServerIdentifier(server));
        let frame = wire::frame(identity.mac, BROADCAST_MAC, address, server, &m);
        socket.send(&frame).map_err(|e| DhcpError::Socket {
            parent: parent.to_string(),
            error: e.to_string(),
        })
    }
}

fn server_of(m: &Message) -> Result<Ipv4Addr, DhcpError> {
    let unusable = |what| DhcpError::Unusable { server: None, what };
    match m.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => checks::check_server(*ip).map(|()| *ip).map_err(unusable),
        _ => Err(unusable(Unusable::Missing("server identifier (option 54)"))),
    }
}

/// The lease an ACK grants, once every field passed its check; a NAK's refusal.
fn granted(reply: &wire::Reply) -> Result<Granted, DhcpError> {
    let server = server_of(&reply.message)?;
    if reply.kind == MessageType::Nak {
        let message = match reply.message.opts().get(OptionCode::Message) {
            Some(DhcpOption::Message(text)) => checks::shown(text),
            _ => String::new(),
        };
        return Err(DhcpError::Refused { server, message });
    }
    lease_of(&reply.message).map_err(|what| DhcpError::Unusable {
        server: Some(server),
        what,
    })
}

fn lease_of(message: &Message) -> Result<Granted, Unusable> {
    let opts = message.opts();
    let server = match opts.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => *ip,
        _ => return Err(Unusable::Missing("server identifier (option 54)")),
    };
    let mask = match opts.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(mask)) => *mask,
        _ => return Err(Unusable::Missing("subnet mask (option 1)")),
    };
    let address = Ipv4Network::new(message.yiaddr(), checks::prefix_of(mask)?).expect("a checked prefix");
    if let Some(why) = checks::not_a_host(address) {
        return Err(Unusable::Address {
            address: address.ip(),
            why,
        });
    }
    let lease_secs = match opts.get(OptionCode::AddressLeaseTime) {
        Some(DhcpOption::AddressLeaseTime(secs)) => *secs,
        _ => return Err(Unusable::Missing("lease time (option 51)")),
    };
    let t1 = match opts.get(OptionCode::Renewal) {
        Some(DhcpOption::Renewal(secs)) => Some(*secs),
        _ => None,
    };
    let t2 = match opts.get(OptionCode::Rebinding) {
        Some(DhcpOption::Rebinding(secs)) => Some(*secs),
        _ => None,
    };
    let (t1_secs, t2_secs) = checks::lease_times(lease_secs, t1, t2)?;
    let (router, routes) = routing_of(opts, address)?;
    Ok(Granted {
        address,
        router,
        routes,
        server,
        lease_secs,
        t1_secs,
        t2_secs,
    })
}

/// A classless route (RFC 3442): destination and gateway, 0.0.0.0 for on-link.
type Classless = (Ipv4Network, Ipv4Addr);

/// The router and classless routes of an ACK, checked against the leased subnet.
fn routing_of(
    opts: &dhcproto::v4::DhcpOptions,
    leased: Ipv4Network,
) -> Result<(Option<Ipv4Addr>, Vec<Classless>), Unusable> {
    let mut router = match opts.get(OptionCode::Router) {
        Some(DhcpOption::Router(routers)) => routers.first().copied(),
        _ => None,
    };
    let mut routes = Vec::new();
    if let Some(DhcpOption::ClasslessStaticRoute(classless)) = opts.get(OptionCode::ClasslessStaticRoute) {
        // RFC 3442: with option 121 the client ignores option 3; a default route, if
        // any, is among the classless ones.
        router = None;
        for (net, gateway) in classless {
            let Ok(destination) = Ipv4Network::new(net.network(), net.prefix_len()) else {
                continue;
            };
            checks::check_route(leased, destination, *gateway)?;
            if destination.prefix() == 0 && !gateway.is_unspecified() {
                router = Some(*gateway);
            } else {
                routes.push((destination, *gateway));
            }
        }
    }
    if let Some(router) = router {
        checks::check_router(leased, router)?;
    }
    Ok((router, routes))
}
