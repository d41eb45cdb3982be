//! `--ipam-driver rustvlan-dhcp` against a real DHCP server: Debian's dnsmasq in a LAN
//! namespace at the far end of the parent's veth, with short T1/T2 so that renewals
//! happen within seconds. rustvlan runs in a host namespace and is driven over its two
//! sockets as dockerd drives them (RequestPool and RequestAddress on the rustvlan-dhcp
//! socket, CreateNetwork, CreateEndpoint and Join on the driver's).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Netns, Server, TempDir, require_root};
use serde_json::{Value, json};

const NET: &str = "0000dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd";

fn ep_id(n: u32) -> String {
    format!("{n:04}{}", "e".repeat(60))
}

fn mac(n: u32) -> String {
    format!("02:42:0a:40:00:{n:02x}")
}

/// dnsmasq on `dhp` in the LAN namespace, leases in `dir/leases`.
struct Dnsmasq {
    child: Child,
    leases: PathBuf,
}

impl Dnsmasq {
    fn start(lan: &Netns, dir: &Path, range: &str, authoritative: bool) -> Dnsmasq {
        let leases = dir.join("leases");
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &lan.name,
            "dnsmasq",
            "--no-daemon",
            "--port=0",
            "--interface=dhp",
        ])
        .args(["--bind-interfaces", "--no-ping", "--no-resolv", "--conf-file=/dev/null"])
        .arg(format!("--dhcp-range={range},255.255.255.0,2m"))
        .args(["--dhcp-option=option:router,10.64.0.1", "--dhcp-option=option:T1,3"])
        .arg("--dhcp-option=option:T2,5")
        // Option 121: a route to 10.70.0.0/16 besides the default one.
        .arg("--dhcp-option=121,10.70.0.0/16,10.64.0.254,0.0.0.0/0,10.64.0.1")
        .arg(format!("--dhcp-leasefile={}", leases.display()))
        .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(dir.join("dnsmasq.log")).unwrap()));
        if authoritative {
            cmd.arg("--dhcp-authoritative");
        }
        let child = cmd.spawn().expect("dnsmasq (Debian's dnsmasq-base)");
        std::thread::sleep(Duration::from_millis(300));
        Dnsmasq { child, leases }
    }

    /// The lease file's line for `mac`: `expiry mac ip hostname client-id`.
    fn lease_of(&self, mac: &str) -> Option<(u64, String)> {
        let text = std::fs::read_to_string(&self.leases).unwrap_or_default();
        text.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&mac)).then(|| (f[0].parse().unwrap(), f[2].to_string()))
        })
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Rig {
    host: Netns,
    lan: Netns,
    dir: TempDir,
    server: Server,
    runtime: tokio::runtime::Runtime,
}

fn rig() -> Option<Rig> {
    rig_with(&[])
}

/// [`rig`], with more arguments to `serve`.
fn rig_with(args: &[&str]) -> Option<Rig> {
    if !require_root() {
        return None;
    }
    let host = Netns::new();
    let lan = Netns::new();
    host.veth("dh0", "dhp");
    host.ip(&["link", "set", "dhp", "netns", &lan.name]);
    lan.ip(&["link", "set", "dhp", "up"]);
    lan.ip(&["addr", "add", "10.64.0.1/24", "dev", "dhp"]);
    let dir = TempDir::new();
    let server = Server::start_with(Some(&host), dir.path(), args);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    Some(Rig {
        host,
        lan,
        dir,
        server,
        runtime,
    })
}

impl Rig {
    fn dhcp_socket(&self) -> PathBuf {
        self.server.socket.with_file_name("rustvlan-dhcp.sock")
    }

    /// A call on the rustvlan-dhcp socket.
    fn ipam(&self, method: &str, body: Value) -> (u16, Value) {
        let (status, bytes) = self
            .runtime
            .block_on(rustvlan::client::post(
                &self.dhcp_socket(),
                &format!("/{method}"),
                body.to_string(),
            ))
            .expect("rustvlan-dhcp socket");
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    fn ipam_ok(&self, method: &str, body: Value) -> Value {
        let (status, answer) = self.ipam(method, body.clone());
        assert_eq!(status, 200, "{method} {body}: {answer}");
        assert!(answer.get("Error").is_none_or(|e| e == ""), "{method}: {answer}");
        answer
    }

    /// RequestPool without a subnet and CreateNetwork on `dh0`, as dockerd does them.
    fn network(&self) -> String {
        let pool = self.ipam_ok(
            "IpamDriver.RequestPool",
            json!({"AddressSpace": "rustvlan-local", "Pool": "", "SubPool": "", "Options": {}, "V6": false}),
        );
        assert_eq!(pool["Pool"], "0.0.0.0/0", "{pool}");
        assert_eq!(pool["Data"]["com.docker.network.gateway"], "0.0.0.0/0", "{pool}");
        // A second network of the same subnet made at this moment waits its turn, so
        // that neither takes the other's pool (and parent) at CreateNetwork.
        let (status, second) = self.ipam(
            "IpamDriver.RequestPool",
            json!({"AddressSpace": "rustvlan-local", "Pool": "", "SubPool": "", "Options": {}, "V6": false}),
        );
        assert_ne!(status, 200, "{second}");
        assert!(second.to_string().contains("retry in a moment"), "{second}");
        self.server.ok(
            "/NetworkDriver.CreateNetwork",
            json!({"NetworkID": NET, "IPv4Data": [{"AddressSpace": "rustvlan-local", "Pool": "0.0.0.0/0",
                   "Gateway": "0.0.0.0/0"}], "Options": {"com.docker.network.generic": {"parent": "dh0"}}}),
        );
        pool["PoolID"].as_str().unwrap().to_string()
    }

    fn request(&self, pool: &str, n: u32) -> (u16, Value) {
        self.ipam(
            "IpamDriver.RequestAddress",
            json!({"PoolID": pool, "Address": "", "Options": {"com.docker.network.endpoint.macaddress": mac(n)}}),
        )
    }

    fn lease_renewals(&self, address: &str) -> u64 {
        let state = self.server.state();
        let lease = state.leases.iter().find(|l| l.address.to_string() == address);
        lease.map_or(0, |l| l.renewals)
    }
}

fn wait_for(seconds: u64, what: &str, mut ok: impl FnMut() -> bool) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out after {seconds} s waiting for {what}");
}

#[test]
fn leases_are_taken_renewed_across_a_crash_and_released() {
    let Some(mut rig) = rig() else { return };
    let mut dnsmasq = Dnsmasq::start(&rig.lan, rig.dir.path(), "10.64.0.50,10.64.0.150", false);
    let pool = rig.network();

    let (status, answer) = rig.request(&pool, 1);
    assert_eq!(status, 200, "{answer}");
    let address = answer["Address"].as_str().unwrap().to_string();
    assert!(address.starts_with("10.64.0.") && address.ends_with("/24"), "{address}");
    let (expiry, leased) = dnsmasq.lease_of(&mac(1)).expect("the lease is in dnsmasq's file");
    assert_eq!(format!("{leased}/24"), address);

    // The endpoint and Join: the gateway is the lease's router.
    let ep = ep_id(1);
    rig.server.ok(
        "/NetworkDriver.CreateEndpoint",
        json!({"NetworkID": NET, "EndpointID": ep, "Interface": {"Address": address, "MacAddress": mac(1)}}),
    );
    let joined = rig.server.ok(
        "/NetworkDriver.Join",
        json!({"NetworkID": NET, "EndpointID": ep, "SandboxKey": "/var/run/docker/netns/x"}),
    );
    assert_eq!(joined["Gateway"], "10.64.0.1", "{joined}");
    assert_eq!(
        joined["StaticRoutes"],
        json!([{"Destination": "10.70.0.0/16", "RouteType": 0, "NextHop": "10.64.0.254"}]),
        "option 121's routes"
    );

    // T1 is 3 s: renewals move the expiry in dnsmasq's file.
    wait_for(15, "a renewal", || rig.lease_renewals(&address) >= 1);
    wait_for(5, "a later expiry in dnsmasq's file", || {
        dnsmasq.lease_of(&mac(1)).is_some_and(|(e, _)| e > expiry)
    });

    // A crash: renewals go on after the restart.
    rig.server.kill9();
    rig.server.restart();
    let before = rig.lease_renewals(&address);
    wait_for(15, "a renewal after the restart", || {
        rig.lease_renewals(&address) > before
    });
    let status_text = rig.server.state_text();
    assert!(!status_text.is_empty());

    // ReleaseAddress: out of dnsmasq's file and out of rustvlan's records.
    rig.ipam_ok("IpamDriver.ReleaseAddress", json!({"PoolID": pool, "Address": address}));
    wait_for(5, "dnsmasq to drop the lease", || dnsmasq.lease_of(&mac(1)).is_none());
    assert!(rig.server.state().leases.is_empty());

    // No server: a clear error within 10 s, nothing allocated.
    dnsmasq.stop();
    let started = Instant::now();
    let (status, answer) = rig.request(&pool, 2);
    let took = started.elapsed();
    assert_ne!(status, 200, "{answer}");
    let err = answer["Err"]
        .as_str()
        .or(answer["Error"].as_str())
        .unwrap_or_default()
        .to_string();
    assert!(err.contains("no DHCP server answered on dh0"), "{err}");
    assert!(took < Duration::from_secs(10), "failed after {took:?}");
    assert!(rig.server.state().leases.is_empty());
    common::report(&format!("dhcp: no server -> error after {:.1} s", took.as_secs_f64()));

    // The server back: new leases work.
    let dnsmasq = Dnsmasq::start(&rig.lan, rig.dir.path(), "10.64.0.50,10.64.0.150", false);
    let (status, answer) = rig.request(&pool, 3);
    assert_eq!(status, 200, "{answer}");
    assert!(dnsmasq.lease_of(&mac(3)).is_some());
    // --ip asks for an address (option 50); this server grants a free one.
    let (status, answer) = rig.ipam(
        "IpamDriver.RequestAddress",
        json!({"PoolID": pool, "Address": "10.64.0.77", "Options": {"com.docker.network.endpoint.macaddress": mac(4)}}),
    );
    assert_eq!(
        (status, answer["Address"].as_str()),
        (200, Some("10.64.0.77/24")),
        "{answer}"
    );
    rig.ipam_ok(
        "IpamDriver.ReleaseAddress",
        json!({"PoolID": pool, "Address": "10.64.0.77/24"}),
    );
    drop(dnsmasq);

    // A server that no longer knows the lease and is authoritative NAKs its renewal:
    // status shows it (exit 1).
    let _ = std::fs::remove_file(rig.dir.path().join("leases"));
    let _dnsmasq = Dnsmasq::start(&rig.lan, rig.dir.path(), "10.64.0.200,10.64.0.250", true);
    wait_for(20, "a NAK recorded on the lease", || {
        rig.server
            .state()
            .leases
            .iter()
            .any(|l| l.trouble.as_deref().is_some_and(|t| t.contains("DHCPNAK")))
    });
    let out = rig
        .server
        .command()
        .args(["status", "--socket"])
        .arg(&rig.server.socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("DHCP LEASES (1)") && text.contains("DHCPNAK"), "{text}");
    let _ = &mut rig.host;
}

/// dockerd skips a ReleaseAddress when a container start fails at the wrong moment, or
/// the plugin is down, and a ReleasePool after DeleteNetwork: the sweep releases such
/// leases to the server, which would otherwise see them renewed forever.
#[test]
fn leases_no_endpoint_holds_are_released_to_the_server_by_the_sweep() {
    let Some(rig) = rig_with(&["--reclaim-after", "2s"]) else {
        return;
    };
    let dnsmasq = Dnsmasq::start(&rig.lan, rig.dir.path(), "10.64.0.50,10.64.0.150", false);
    let pool = rig.network();
    let (status, used) = rig.request(&pool, 1);
    assert_eq!(status, 200, "{used}");
    let used = used["Address"].as_str().unwrap().to_string();
    rig.server.ok(
        "/NetworkDriver.CreateEndpoint",
        json!({"NetworkID": NET, "EndpointID": ep_id(1), "Interface": {"Address": used, "MacAddress": mac(1)}}),
    );
    // Leased, and no endpoint ever came for it.
    let (status, forgotten) = rig.request(&pool, 2);
    assert_eq!(status, 200, "{forgotten}");
    assert!(dnsmasq.lease_of(&mac(2)).is_some());
    wait_for(15, "the unused lease out of dnsmasq's file", || {
        dnsmasq.lease_of(&mac(2)).is_none()
    });
    let held: Vec<String> = rig
        .server
        .state()
        .leases
        .iter()
        .map(|l| l.address.to_string())
        .collect();
    assert_eq!(held, vec![used.clone()], "the endpoint's lease stays");
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        dnsmasq.lease_of(&mac(1)).is_some(),
        "the endpoint's lease stays in dnsmasq's file"
    );

    // The endpoint and network go, and dockerd sends neither ReleaseAddress nor ReleasePool.
    rig.server.ok(
        "/NetworkDriver.DeleteEndpoint",
        json!({"NetworkID": NET, "EndpointID": ep_id(1)}),
    );
    rig.server.ok("/NetworkDriver.DeleteNetwork", json!({"NetworkID": NET}));
    wait_for(15, "the last lease out of dnsmasq's file", || {
        dnsmasq.lease_of(&mac(1)).is_none()
    });
    assert!(rig.server.state().leases.is_empty());
    common::report("dhcp: leases no endpoint held were released to dnsmasq by the sweep (2 s grace)");
}

#[test]
fn a_lease_that_contradicts_subnet_or_gateway_is_refused_and_released() {
    let Some(rig) = rig() else { return };
    let dnsmasq = Dnsmasq::start(&rig.lan, rig.dir.path(), "10.64.0.50,10.64.0.150", false);
    for (n, subnet, gateway, expect) in [
        (1u32, "10.65.0.0/24", None, "but the network's --subnet is 10.65.0.0/24"),
        (
            2,
            "10.64.0.0/24",
            Some("10.64.0.9"),
            "gives router 10.64.0.1, but the network's --gateway is 10.64.0.9",
        ),
    ] {
        let pool = rig.ipam_ok(
            "IpamDriver.RequestPool",
            json!({"AddressSpace": "rustvlan-local", "Pool": subnet, "SubPool": "", "Options": {}, "V6": false}),
        );
        let pool_id = pool["PoolID"].as_str().unwrap().to_string();
        let network_gateway = match gateway {
            Some(g) => {
                rig.ipam_ok(
                    "IpamDriver.RequestAddress",
                    json!({"PoolID": pool_id, "Address": g, "Options": {"RequestAddressType": "com.docker.network.gateway"}}),
                );
                format!("{g}/24")
            }
            None => pool["Data"]["com.docker.network.gateway"].as_str().unwrap().to_string(),
        };
        let net = format!("{n:04}{}", "f".repeat(60));
        rig.server.ok(
            "/NetworkDriver.CreateNetwork",
            json!({"NetworkID": net, "IPv4Data": [{"AddressSpace": "rustvlan-local", "Pool": subnet,
                   "Gateway": network_gateway}], "Options": {"com.docker.network.generic": {"parent": "dh0"}}}),
        );
        let (status, answer) = rig.request(&pool_id, 10 + n);
        assert_ne!(status, 200, "{answer}");
        assert!(answer.to_string().contains(expect), "{answer}");
        wait_for(5, "the refused lease released", || {
            dnsmasq.lease_of(&mac(10 + n)).is_none()
        });
        assert!(rig.server.state().leases.is_empty());
        rig.server.ok("/NetworkDriver.DeleteNetwork", json!({"NetworkID": net}));
        rig.ipam_ok("IpamDriver.ReleasePool", json!({"PoolID": pool_id}));
    }
}

/// Issue 25, must-show 4: a rustvlan-dhcp network without --subnet (Docker shows
/// 0.0.0.0/0) is made on a parent that already carries a static network of another
/// subnet, and takes nothing from rustvlan's own IPAM: a network without --subnet made
/// after it still gets a /24 of the default range.
#[test]
fn a_dhcp_network_without_a_subnet_shares_its_parent_and_leaves_the_default_range_free() {
    const STATIC_NET: &str = "5555aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let Some(rig) = rig() else { return };
    let _dnsmasq = Dnsmasq::start(&rig.lan, rig.dir.path(), "10.64.0.50,10.64.0.150", false);
    let fixed = rig.server.ok(
        "/IpamDriver.RequestPool",
        json!({"AddressSpace": "rustvlan-local", "Pool": "192.168.50.0/24", "SubPool": "", "Options": {}, "V6": false}),
    );
    assert_eq!(fixed["Pool"], "192.168.50.0/24", "{fixed}");
    rig.server.ok(
        "/NetworkDriver.CreateNetwork",
        json!({"NetworkID": STATIC_NET, "IPv4Data": [{"AddressSpace": "rustvlan-local", "Pool": "192.168.50.0/24",
               "Gateway": "192.168.50.1/24"}], "Options": {"com.docker.network.generic": {"parent": "dh0"}}}),
    );
    let pool = rig.network();
    let (status, answer) = rig.request(&pool, 1);
    assert_eq!(status, 200, "{answer}");
    let address = answer["Address"].as_str().unwrap().to_string();
    assert!(address.starts_with("10.64.0."), "{address}");
    let later = rig.server.ok(
        "/IpamDriver.RequestPool",
        json!({"AddressSpace": "rustvlan-local", "Pool": "", "SubPool": "", "Options": {}, "V6": false}),
    );
    let subnet = later["Pool"].as_str().unwrap().to_string();
    assert!(
        subnet.starts_with("10.123.") && subnet.ends_with("/24"),
        "a network without --subnet after a DHCP one got {later}"
    );
    common::report(&format!(
        "dhcp without --subnet: made beside static 192.168.50.0/24 on its parent, leased {address}; a later rustvlan network without --subnet got {subnet}"
    ));
}

/// A DHCP server that answers as told, for the checks of answers (issue 25, must-show
/// 3): a thread in the LAN namespace on UDP port 67 of `dhp`, broadcasting its answers.
/// Each answer is built from the good one (10.64.0.77/24, router 10.64.0.1, server
/// 10.64.0.1, lease 120 s) with `fault` applied; RELEASEs are counted.
mod hostile {
    use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode, UnknownOption};
    use dhcproto::{Decodable, Decoder, Encodable, Encoder};

    pub const SERVER: Ipv4Addr = Ipv4Addr::new(10, 64, 0, 1);
    pub const OFFERED: Ipv4Addr = Ipv4Addr::new(10, 64, 0, 77);

    /// What the server gets wrong.
    #[derive(Debug, Clone)]
    pub enum Fault {
        Address(Ipv4Addr),
        Mask(Ipv4Addr),
        /// Lease time, T1, T2.
        Times(u32, Option<u32>, Option<u32>),
        Router(Ipv4Addr),
        /// Option 121, raw (RFC 3442 encoding).
        Classless(Vec<u8>),
        NoServerId,
        /// A NAK with this message.
        Nak(String),
        /// An ACK from another server first (ignored), then the good one.
        RogueAckFirst(Ipv4Addr),
        /// Leases of 20 s with T1 at 2 s, and renewals (REQUESTs without a server id)
        /// answered only after this long.
        SlowRenewal(Duration),
        /// Leases of 20 s with T1 at 2 s and T2 at 4 s, and renewals answered by
        /// another server only (a failover partner).
        RenewedByOther(Ipv4Addr),
        /// Leases of 20 s with T1 at 2 s, and renewals answered with this address.
        RenewedWithAnother(Ipv4Addr),
        None,
    }

    pub struct Hostile {
        pub fault: Arc<Mutex<Fault>>,
        pub releases: Arc<AtomicUsize>,
        /// The client hardware address of each RELEASE, in order.
        pub released: Arc<Mutex<Vec<Vec<u8>>>>,
        /// The address (ciaddr) of each RELEASE, in order.
        pub released_addresses: Arc<Mutex<Vec<Ipv4Addr>>>,
        /// Renewals seen (REQUESTs without a server id).
        pub renewals: Arc<AtomicUsize>,
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Hostile {
        pub fn start(lan: &super::Netns) -> Hostile {
            let ns = lan.path();
            let fault = Arc::new(Mutex::new(Fault::None));
            let releases = Arc::new(AtomicUsize::new(0));
            let released = Arc::new(Mutex::new(Vec::new()));
            let released_addresses = Arc::new(Mutex::new(Vec::new()));
            let renewals = Arc::new(AtomicUsize::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let seen = Seen {
                releases: releases.clone(),
                released: released.clone(),
                released_addresses: released_addresses.clone(),
                renewals: renewals.clone(),
            };
            let (f, s) = (fault.clone(), stop.clone());
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let thread = std::thread::spawn(move || {
                let file = std::fs::File::open(&ns).unwrap();
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
                socket.set_broadcast(true).unwrap();
                socket.bind_device(Some(b"dhp")).unwrap();
                socket.set_reuse_address(true).unwrap();
                socket
                    .bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 67)).into())
                    .unwrap();
                let socket: UdpSocket = socket.into();
                socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
                ready_tx.send(()).unwrap();
                serve(&socket, &f, &seen, &s);
            });
            ready_rx.recv().unwrap();
            Hostile {
                fault,
                releases,
                released,
                released_addresses,
                renewals,
                stop,
                thread: Some(thread),
            }
        }

        pub fn set(&self, fault: Fault) {
            *self.fault.lock().unwrap() = fault;
        }
    }

    impl Drop for Hostile {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// What the server saw.
    struct Seen {
        releases: Arc<AtomicUsize>,
        released: Arc<Mutex<Vec<Vec<u8>>>>,
        released_addresses: Arc<Mutex<Vec<Ipv4Addr>>>,
        renewals: Arc<AtomicUsize>,
    }

    fn send(socket: &UdpSocket, answer: &Message) {
        let mut bytes = Vec::new();
        answer.encode(&mut Encoder::new(&mut bytes)).unwrap();
        let _ = socket.send_to(&bytes, (Ipv4Addr::BROADCAST, 68));
    }

    fn serve(socket: &UdpSocket, fault: &Mutex<Fault>, seen: &Seen, stop: &AtomicBool) {
        let mut buf = [0u8; 1500];
        while !stop.load(Ordering::SeqCst) {
            let Ok(n) = socket.recv(&mut buf) else { continue };
            let Ok(ask) = Message::decode(&mut Decoder::new(&buf[..n])) else {
                continue;
            };
            let fault = fault.lock().unwrap().clone();
            let answers = match ask.opts().msg_type() {
                // An offer without a server id cannot be requested from: refused at once.
                Some(MessageType::Discover) => match &fault {
                    Fault::NoServerId => vec![answer(&ask, MessageType::Offer, &fault)],
                    _ => vec![answer(&ask, MessageType::Offer, &Fault::None)],
                },
                Some(MessageType::Request) if ask.opts().get(OptionCode::ServerIdentifier).is_none() => {
                    seen.renewals.fetch_add(1, Ordering::SeqCst);
                    match fault {
                        Fault::SlowRenewal(delay) => {
                            let (socket, ack) = (socket.try_clone().unwrap(), answer(&ask, MessageType::Ack, &fault));
                            std::thread::spawn(move || {
                                std::thread::sleep(delay);
                                send(&socket, &ack);
                            });
                            continue;
                        }
                        _ => vec![answer(&ask, MessageType::Ack, &fault)],
                    }
                }
                Some(MessageType::Request) => match &fault {
                    Fault::Nak(_) => vec![answer(&ask, MessageType::Nak, &fault)],
                    Fault::RogueAckFirst(_) => vec![
                        answer(&ask, MessageType::Ack, &fault),
                        answer(&ask, MessageType::Ack, &Fault::None),
                    ],
                    _ => vec![answer(&ask, MessageType::Ack, &fault)],
                },
                Some(MessageType::Release) => {
                    seen.released.lock().unwrap().push(ask.chaddr().to_vec());
                    seen.released_addresses.lock().unwrap().push(ask.ciaddr());
                    seen.releases.fetch_add(1, Ordering::SeqCst);
                    Vec::new()
                }
                _ => Vec::new(),
            };
            for a in answers {
                send(socket, &a);
            }
        }
    }

    fn answer(ask: &Message, kind: MessageType, fault: &Fault) -> Message {
        let renewal = ask.opts().msg_type() == Some(MessageType::Request)
            && ask.opts().get(OptionCode::ServerIdentifier).is_none();
        let yiaddr = match fault {
            Fault::Address(ip) => *ip,
            Fault::RenewedWithAnother(ip) if renewal && kind == MessageType::Ack => *ip,
            _ if kind == MessageType::Nak => Ipv4Addr::UNSPECIFIED,
            _ => OFFERED,
        };
        let mut m = Message::new(
            Ipv4Addr::UNSPECIFIED,
            yiaddr,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            ask.chaddr(),
        );
        m.set_opcode(Opcode::BootReply)
            .set_xid(ask.xid())
            .set_flags(Flags::default().set_broadcast());
        let opts = m.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        match fault {
            Fault::NoServerId => {}
            Fault::RogueAckFirst(other) if kind == MessageType::Ack => {
                opts.insert(DhcpOption::ServerIdentifier(*other));
            }
            Fault::RenewedByOther(other) if kind == MessageType::Ack && renewal => {
                opts.insert(DhcpOption::ServerIdentifier(*other));
            }
            _ => {
                opts.insert(DhcpOption::ServerIdentifier(SERVER));
            }
        }
        if let Fault::Nak(text) = fault {
            opts.insert(DhcpOption::Message(text.clone()));
            return m;
        }
        let mask = match fault {
            Fault::Mask(mask) => *mask,
            _ => Ipv4Addr::new(255, 255, 255, 0),
        };
        opts.insert(DhcpOption::SubnetMask(mask));
        let (lease, t1, t2) = match fault {
            Fault::Times(lease, t1, t2) => (*lease, *t1, *t2),
            Fault::SlowRenewal(_) => (20, Some(2), Some(15)),
            Fault::RenewedByOther(_) => (20, Some(2), Some(4)),
            Fault::RenewedWithAnother(_) => (20, Some(2), Some(15)),
            _ => (120, None, None),
        };
        opts.insert(DhcpOption::AddressLeaseTime(lease));
        if let Some(t1) = t1 {
            opts.insert(DhcpOption::Renewal(t1));
        }
        if let Some(t2) = t2 {
            opts.insert(DhcpOption::Rebinding(t2));
        }
        let router = match fault {
            Fault::Router(r) => *r,
            _ => SERVER,
        };
        opts.insert(DhcpOption::Router(vec![router]));
        if let Fault::Classless(raw) = fault {
            opts.insert(DhcpOption::Unknown(UnknownOption::new(
                OptionCode::ClasslessStaticRoute,
                raw.clone(),
            )));
        }
        m
    }
}

/// Issue 25, must-show 3: each bad answer of a hostile server is refused with an error
/// that names it, and nothing is recorded; a NAK's text is shown escaped; an ACK from a
/// server the client is not talking to is ignored; an on-link classless route (gateway
/// 0.0.0.0) reaches dockerd as a connected route.
#[test]
fn a_hostile_server_s_bad_answers_are_refused_and_named() {
    use hostile::Fault;
    let Some(rig) = rig() else { return };
    // The host's own address on the parent, which no lease may be.
    rig.host.ip(&["addr", "add", "10.64.0.9/24", "dev", "dh0"]);
    let server = hostile::Hostile::start(&rig.lan);
    let pool = rig.network();
    let ip = |s: &str| s.parse::<std::net::Ipv4Addr>().unwrap();
    let bad: Vec<(Fault, &str)> = vec![
        (
            Fault::Address(ip("0.0.0.0")),
            "the offered address 0.0.0.0 is in 0.0.0.0/8 (this network)",
        ),
        (
            Fault::Address(ip("255.255.255.255")),
            "the offered address 255.255.255.255 is the broadcast address",
        ),
        (
            Fault::Address(ip("224.0.0.5")),
            "the offered address 224.0.0.5 is a multicast address",
        ),
        (
            Fault::Address(ip("127.0.0.9")),
            "the offered address 127.0.0.9 is a loopback address",
        ),
        (
            Fault::Address(ip("10.64.0.0")),
            "the offered address 10.64.0.0 is its subnet's network address",
        ),
        (
            Fault::Address(ip("10.64.0.255")),
            "the offered address 10.64.0.255 is its subnet's broadcast address",
        ),
        (
            Fault::Address(ip("10.64.0.1")),
            "its router 10.64.0.1 is not another host of the leased subnet",
        ),
        (
            Fault::Address(ip("10.64.0.9")),
            "the offered address 10.64.0.9/24 is this host's own on dh0",
        ),
        (
            Fault::Mask(ip("255.0.255.0")),
            "its subnet mask 255.0.255.0 is not a contiguous mask between /8 and /30",
        ),
        (
            Fault::Mask(ip("0.0.0.0")),
            "its subnet mask 0.0.0.0 is not a contiguous mask between /8 and /30",
        ),
        (
            Fault::Times(120, Some(0), None),
            "its times are out of order: T1 0 s, T2 105 s, lease 120 s",
        ),
        (
            Fault::Times(120, Some(300), None),
            "its times are out of order: T1 300 s, T2 105 s, lease 120 s",
        ),
        (
            Fault::Times(120, Some(60), Some(30)),
            "its times are out of order: T1 60 s, T2 30 s, lease 120 s",
        ),
        (
            Fault::Router(ip("192.168.9.1")),
            "its router 192.168.9.1 is not another host of the leased subnet",
        ),
        (
            // 10.70.0.0/16 through 192.168.1.1.
            Fault::Classless(vec![16, 10, 70, 192, 168, 1, 1]),
            "its classless route to 10.70.0.0/16 goes through 192.168.1.1, which is not on the leased subnet",
        ),
        (Fault::NoServerId, "no server identifier (option 54)"),
        (
            Fault::Nak("no lease\u{1b}[31m for you\u{7}".into()),
            r"DHCP server 10.64.0.1 refused the request (DHCPNAK: no lease\u{1b}[31m for you\u{7})",
        ),
    ];
    for (n, (fault, want)) in bad.into_iter().enumerate() {
        server.set(fault.clone());
        let (status, answer) = rig.request(&pool, 10 + n as u32);
        let error = answer["Error"]
            .as_str()
            .or(answer["Err"].as_str())
            .unwrap_or_default()
            .to_string();
        assert_ne!(status, 200, "{fault:?} was accepted: {answer}");
        assert!(
            error.contains(want),
            "{fault:?}: the error {error:?} does not name {want:?}"
        );
        assert!(
            !error.contains('\u{1b}'),
            "{fault:?}: a raw escape reached the error: {error:?}"
        );
        assert!(rig.server.state().leases.is_empty(), "{fault:?} left a lease recorded");
    }
    // Accepted: an ACK from another server (ignored) before this server's, and an
    // on-link classless route (10.70.0.0/16 through 0.0.0.0, and the default route).
    server.set(Fault::RogueAckFirst(ip("10.64.0.200")));
    let (status, answer) = rig.request(&pool, 40);
    assert_eq!(status, 200, "{answer}");
    let state = rig.server.state();
    assert_eq!(state.leases.len(), 1);
    assert_eq!(state.leases[0].server, hostile::SERVER, "the rogue's ACK was taken");
    let release = json!({"PoolID": pool, "Address": answer["Address"].as_str().unwrap().split('/').next().unwrap()});
    rig.ipam_ok("IpamDriver.ReleaseAddress", release);
    server.set(Fault::Classless(vec![16, 10, 70, 0, 0, 0, 0, 0, 10, 64, 0, 1]));
    let (status, answer) = rig.request(&pool, 41);
    assert_eq!(status, 200, "{answer}");
    let state = rig.server.state();
    assert_eq!(
        state.leases[0].routes,
        vec![("10.70.0.0/16".parse().unwrap(), ip("0.0.0.0"))]
    );
    assert_eq!(state.leases[0].router, Some(ip("10.64.0.1")));
    // The server gives the held address to a second endpoint: refused, and no RELEASE
    // goes out (a server keying leases by MAC would free the first endpoint's).
    server.set(Fault::None);
    let released = server.releases.load(std::sync::atomic::Ordering::SeqCst);
    let (status, answer) = rig.request(&pool, 42);
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer.to_string().contains("the server leased one address to two MACs"),
        "{answer}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        server.releases.load(std::sync::atomic::Ordering::SeqCst),
        released,
        "a RELEASE went out"
    );
    let state = rig.server.state();
    assert_eq!(state.leases.len(), 1);
    assert_eq!(state.leases[0].mac.to_string(), mac(41), "the first lease is untouched");
    common::report(
        "dhcp hostile server: 17 bad answers refused, each named; a NAK's escapes shown escaped; a rogue ACK ignored; an on-link route kept as on-link; one address given twice refused without a RELEASE",
    );
}

/// Issue 25, must-show 5 (its second half): A's renewal is on its way when A is
/// released and B takes A's address. The late ACK of A's renewal is written nowhere
/// (before, it overwrote B's lease with A's MAC), and gets a RELEASE of its own.
#[test]
fn a_renewal_answered_after_its_release_leaves_the_next_lease_alone() {
    use hostile::Fault;
    let Some(rig) = rig() else { return };
    let server = hostile::Hostile::start(&rig.lan);
    let pool = rig.network();
    server.set(Fault::SlowRenewal(Duration::from_secs(3)));
    let (status, answer) = rig.request(&pool, 50);
    assert_eq!(status, 200, "{answer}");
    let address = answer["Address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    wait_for(10, "A's renewal to reach the server", || {
        server.renewals.load(std::sync::atomic::Ordering::SeqCst) > 0
    });
    rig.ipam_ok("IpamDriver.ReleaseAddress", json!({"PoolID": pool, "Address": address}));
    let (status, answer) = rig.request(&pool, 51);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["Address"].as_str().unwrap().split('/').next().unwrap(), address);
    let mac_of = |n: u32| -> Vec<u8> { mac(n).split(':').map(|b| u8::from_str_radix(b, 16).unwrap()).collect() };
    wait_for(10, "a RELEASE for A's late renewal", || {
        server
            .released
            .lock()
            .unwrap()
            .iter()
            .filter(|m| **m == mac_of(50))
            .count()
            >= 2
    });
    let state = rig.server.state();
    assert_eq!(state.leases.len(), 1);
    assert_eq!(
        state.leases[0].mac.to_string(),
        mac(51),
        "A's renewal was written over B's lease"
    );
    assert!(
        !server.released.lock().unwrap().contains(&mac_of(51)),
        "B's lease was released"
    );
    common::report(&format!(
        "dhcp: A's renewal answered after A's release and B's lease of {address}: B's lease kept, A's late ACK released"
    ));
}

/// Issue 25: renewals go concurrently. With the server gone, each of 40 leases past T1
/// gets its own renewal within two renewal budgets (5 s each); one after another, the
/// last would wait 40 budgets, and leases could expire before they were tried.
#[test]
fn renewals_during_a_server_outage_are_tried_together() {
    let Some(rig) = rig() else { return };
    let mut dnsmasq = Dnsmasq::start(&rig.lan, rig.dir.path(), "10.64.0.50,10.64.0.150", false);
    let pool = rig.network();
    for n in 1..=40 {
        let (status, answer) = rig.request(&pool, n);
        assert_eq!(status, 200, "{answer}");
    }
    dnsmasq.stop();
    let stopped = Instant::now();
    let tried = || {
        rig.server
            .state()
            .leases
            .iter()
            .filter(|l| {
                l.trouble
                    .as_deref()
                    .is_some_and(|t| t.contains("no DHCP server answered"))
            })
            .count()
    };
    // T1 (3 s), then two rounds of 32 and 8 renewals of 5 s each.
    wait_for(20, "a failed renewal of each of the 40 leases", || tried() == 40);
    common::report(&format!(
        "dhcp: server gone with 40 leases past T1: each lease's renewal tried and failed within {:.1} s",
        stopped.elapsed().as_secs_f64()
    ));
}

/// Issue 25: before T2 a renewal listens to the lease's server only; past T2 (rebinding)
/// any server may extend the lease, as a failover partner does when the first is gone.
#[test]
fn past_t2_another_server_may_extend_the_lease() {
    use hostile::Fault;
    let Some(rig) = rig() else { return };
    let server = hostile::Hostile::start(&rig.lan);
    let pool = rig.network();
    let partner: std::net::Ipv4Addr = "10.64.0.200".parse().unwrap();
    server.set(Fault::RenewedByOther(partner));
    let (status, answer) = rig.request(&pool, 60);
    assert_eq!(status, 200, "{answer}");
    let server_of = || rig.server.state().leases[0].server;
    assert_eq!(server_of(), hostile::SERVER);
    // T1 at 2 s: the partner's answer is ignored, and the renewal fails past T2 (4 s).
    wait_for(15, "a failed renewal before T2", || {
        rig.server.state().leases[0].trouble.is_some()
    });
    assert_eq!(
        server_of(),
        hostile::SERVER,
        "an ACK of another server was taken before T2"
    );
    wait_for(25, "the partner's ACK taken past T2", || server_of() == partner);
    common::report("dhcp: past T2 a failover partner's ACK extends the lease; before T2 it is ignored");
}

/// Issue 25: a renewal the server answers with another address leaves the container on
/// its address (it cannot be changed under a running container), says so on the lease,
/// and gives the other address back at once: nothing would ever use or renew it.
#[test]
fn a_renewal_answered_with_another_address_gives_that_address_back() {
    use hostile::Fault;
    let Some(rig) = rig() else { return };
    let server = hostile::Hostile::start(&rig.lan);
    let pool = rig.network();
    let other: std::net::Ipv4Addr = "10.64.0.88".parse().unwrap();
    server.set(Fault::RenewedWithAnother(other));
    let (status, answer) = rig.request(&pool, 61);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["Address"], "10.64.0.77/24");
    wait_for(15, "the other address released", || {
        server.released_addresses.lock().unwrap().contains(&other)
    });
    let lease = rig.server.state().leases[0].clone();
    assert_eq!(lease.address.to_string(), "10.64.0.77/24");
    assert!(
        lease
            .trouble
            .as_deref()
            .is_some_and(|t| t.contains("another address, 10.64.0.88")),
        "{lease:?}"
    );
    assert!(
        !server.released_addresses.lock().unwrap().contains(&hostile::OFFERED),
        "the container's own address was not released"
    );
    common::report("dhcp: a renewal answered with another address: the container keeps its own, the other is released");
}
