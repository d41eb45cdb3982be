//! One AF_PACKET socket per parent, in the host namespace: rustvlan sends an endpoint's
//! DHCP frames on the parent and reads the server's answers there, before macvlan
//! steers them to a child (packet taps run first), so no container namespace is ever
//! entered. A classic BPF filter keeps the copies to IPv4 UDP to port 68. A thread per
//! socket reads and hands each reply to the transaction waiting for its xid.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};

use socket2::{Domain, SockAddr, SockAddrStorage, SockFilter, Socket, Type};
use tokio::sync::mpsc;

use super::wire::{Reply, parse};

const ETH_P_IP: u16 = 0x0800;

/// `udp dst port 68` for Ethernet frames carrying IPv4, not fragments: what
/// `tcpdump -dd 'ip and udp dst port 68'` compiles to, without the IPv6 branch.
const FILTER: [SockFilter; 11] = [
    SockFilter::new(0x28, 0, 0, 12),      // ldh [12]            ethertype
    SockFilter::new(0x15, 0, 8, 0x0800),  // jeq IPv4, else drop
    SockFilter::new(0x30, 0, 0, 23),      // ldb [23]            IP protocol
    SockFilter::new(0x15, 0, 6, 17),      // jeq UDP, else drop
    SockFilter::new(0x28, 0, 0, 20),      // ldh [20]            flags, fragment offset
    SockFilter::new(0x45, 4, 0, 0x1fff),  // jset fragment: drop
    SockFilter::new(0xb1, 0, 0, 14),      // ldxb 4*([14]&0xf)   IP header length
    SockFilter::new(0x48, 0, 0, 16),      // ldh [x+16]          UDP destination port
    SockFilter::new(0x15, 0, 1, 68),      // jeq 68, else drop
    SockFilter::new(0x06, 0, 0, 0x40000), // accept
    SockFilter::new(0x06, 0, 0, 0),       // drop
];

/// A parent's socket and the transactions waiting for replies on it.
pub struct ParentSocket {
    socket: Socket,
    waiting: Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<Reply>>>>,
}

/// The `sockaddr_ll` that binds a packet socket to one interface and to IPv4 frames.
fn link_address(ifindex: u32) -> SockAddr {
    let mut storage = SockAddrStorage::zeroed();
    // SAFETY: `SockAddrStorage` is a `sockaddr_storage`, which is larger than and
    // aligned at least as strictly as `sockaddr_ll`, and all-zero bytes are a valid
    // `sockaddr_ll`; the view is only written through while `storage` lives.
    let ll = unsafe { storage.view_as::<libc::sockaddr_ll>() };
    ll.sll_family = libc::AF_PACKET as u16;
    ll.sll_protocol = ETH_P_IP.to_be();
    ll.sll_ifindex = ifindex as i32;
    let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: `storage` holds an initialised `sockaddr_ll` of family AF_PACKET, and
    // `len` is exactly its size.
    unsafe { SockAddr::new(storage, len) }
}

impl ParentSocket {
    /// Opens the socket on interface `ifindex` and starts its reader thread, which ends
    /// when the socket fails (the interface is gone) or the socket is dropped.
    pub fn open(ifindex: u32, name: &str) -> std::io::Result<Arc<ParentSocket>> {
        let socket = Socket::new(Domain::PACKET, Type::RAW, Some(i32::from(ETH_P_IP.to_be()).into()))?;
        socket.attach_filter(&FILTER)?;
        socket.bind(&link_address(ifindex))?;
        let reader = socket.try_clone()?;
        let waiting: Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<Reply>>>> = Arc::default();
        let for_thread = Arc::clone(&waiting);
        std::thread::Builder::new()
            .name(format!("dhcp-{name}"))
            .spawn(move || read_replies(reader, for_thread))?;
        Ok(Arc::new(ParentSocket { socket, waiting }))
    }

    /// Replies with this xid go to the returned receiver until [`ParentSocket::forget`].
    pub fn expect(&self, xid: u32) -> mpsc::UnboundedReceiver<Reply> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).insert(xid, tx);
        rx
    }

    pub fn forget(&self, xid: u32) {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(&xid);
    }

    pub fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        self.socket.send(frame).map(|_| ())
    }

    /// Whether the reader thread still runs (it stops when the interface goes).
    pub fn alive(&self) -> bool {
        Arc::strong_count(&self.waiting) > 1
    }
}

fn read_replies(socket: Socket, waiting: Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<Reply>>>>) {
    let mut socket = socket;
    let mut buf = vec![0u8; 2048];
    loop {
        let n = match socket.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!("DHCP socket stopped reading: {e}");
                return;
            }
        };
        let Some(reply) = parse(&buf[..n]) else { continue };
        let xid = reply.message.xid();
        if let Some(tx) = waiting.lock().unwrap_or_else(|p| p.into_inner()).get(&xid) {
            let _ = tx.send(reply);
        }
    }
}
