//! DHCP messages in Ethernet frames, as rustvlan sends them on a parent for an endpoint
//! (source MAC the endpoint's, so that switches doing DHCP snooping see chaddr match)
//! and reads the server's answers. The DHCP message itself is dhcproto's; the Ethernet,
//! IPv4 and UDP headers around it are built here. Pure: no I/O.

use std::net::Ipv4Addr;

use dhcproto::v4::{Message, MessageType};
use dhcproto::{Decodable, Decoder, Encodable};

use crate::model::MacAddr;

pub const CLIENT_PORT: u16 = 68;
pub const SERVER_PORT: u16 = 67;
const ETHERTYPE_IPV4: u16 = 0x0800;
const IPPROTO_UDP: u8 = 17;
pub const BROADCAST_MAC: MacAddr = MacAddr([0xff; 6]);

/// The RFC 1071 checksum of an IPv4 header.
fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One frame: Ethernet from `src_mac` to `dst_mac`, IPv4 from `src_ip` to `dst_ip`,
/// UDP 68 → 67 (the UDP checksum is 0, "not computed", which IPv4 allows).
pub fn frame(src_mac: MacAddr, dst_mac: MacAddr, src_ip: Ipv4Addr, dst_ip: Ipv4Addr, message: &Message) -> Vec<u8> {
    let payload = message.to_vec().expect("a DHCP message built by rustvlan encodes");
    let udp_len = 8 + payload.len();
    let ip_len = 20 + udp_len;
    let mut out = Vec::with_capacity(14 + ip_len);
    out.extend_from_slice(&dst_mac.0);
    out.extend_from_slice(&src_mac.0);
    out.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let ip_start = out.len();
    out.extend_from_slice(&[0x45, 0x10]); // version 4, IHL 5; DSCP "low delay" as dhclient
    out.extend_from_slice(&(ip_len as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]); // id, flags, fragment offset
    out.extend_from_slice(&[64, IPPROTO_UDP, 0, 0]); // TTL, protocol, checksum (below)
    out.extend_from_slice(&src_ip.octets());
    out.extend_from_slice(&dst_ip.octets());
    let checksum = ipv4_checksum(&out[ip_start..ip_start + 20]);
    out[ip_start + 10..ip_start + 12].copy_from_slice(&checksum.to_be_bytes());
    out.extend_from_slice(&CLIENT_PORT.to_be_bytes());
    out.extend_from_slice(&SERVER_PORT.to_be_bytes());
    out.extend_from_slice(&(udp_len as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&payload);
    out
}

/// A server's answer found in a frame: its Ethernet source and the message.
#[derive(Debug)]
pub struct Reply {
    pub from_mac: MacAddr,
    /// The client hardware address, when it is an Ethernet one (hlen 6).
    pub chaddr: MacAddr,
    pub message: Message,
    pub kind: MessageType,
}

/// The DHCP reply in an Ethernet frame (IPv4, UDP to port 68, not a fragment), or None.
pub fn parse(frame: &[u8]) -> Option<Reply> {
    if frame.len() < 14 + 20 + 8 || u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let fragmented = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
    if ip[0] >> 4 != 4 || ihl < 20 || ip[9] != IPPROTO_UDP || fragmented || ip.len() < ihl + 8 {
        return None;
    }
    // Frames come from anyone on the LAN: lengths are checked, never trusted.
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    if total < ihl + 8 {
        return None;
    }
    let udp = &ip[ihl..total];
    if udp.len() < 8 || u16::from_be_bytes([udp[2], udp[3]]) != CLIENT_PORT {
        return None;
    }
    let message = Message::decode(&mut Decoder::new(&udp[8..])).ok()?;
    // dhcproto slices chaddr by hlen, which any sender sets: only Ethernet's 6 is ours.
    if message.hlen() != 6 {
        return None;
    }
    let chaddr = MacAddr(message.chaddr().try_into().ok()?);
    let kind = message.opts().msg_type()?;
    let from_mac = MacAddr(frame[6..12].try_into().ok()?);
    Some(Reply {
        from_mac,
        chaddr,
        message,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4::{DhcpOption, Flags};

    #[test]
    fn a_frame_parses_back_once_its_ports_are_the_client_s() {
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let mut m = Message::new(
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &mac.0,
        );
        m.set_flags(Flags::default().set_broadcast());
        m.opts_mut().insert(DhcpOption::MessageType(MessageType::Offer));
        let mut f = frame(mac, BROADCAST_MAC, Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, &m);
        assert_eq!(ipv4_checksum(&f[14..34]), 0, "a correct header sums to zero");
        assert!(parse(&f).is_none(), "a client's frame goes to port 67");
        f.swap(34, 36);
        f.swap(35, 37);
        let reply = parse(&f).expect("the same frame to port 68");
        // Hostile lengths from the LAN are dropped, never a panic.
        let mut short = f.clone();
        short[16..18].copy_from_slice(&0u16.to_be_bytes());
        assert!(parse(&short).is_none(), "an IPv4 total length below its header");
        let mut odd_hlen = f.clone();
        odd_hlen[42 + 2] = 2;
        assert!(parse(&odd_hlen).is_none(), "hlen 2");
        odd_hlen[42 + 2] = 200;
        assert!(parse(&odd_hlen).is_none(), "hlen 200");
        assert_eq!((reply.kind, reply.from_mac), (MessageType::Offer, mac));
        assert_eq!(reply.message.xid(), m.xid());
    }
}
