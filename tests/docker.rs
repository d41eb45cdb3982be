//! End to end with a real dockerd: rustvlan runs as a legacy plugin on
//! /run/docker/plugins/rustvlan.sock in the host namespace (dockerd moves links from
//! there), the parent is one end of a veth pair the test makes, and containers from a
//! busybox image ping each other over it. scripts/test.sh starts the dockerd
//! (DOCKER_HOST) and builds the image (RUSTVLAN_TEST_IMAGE).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use common::docker::{
    Scene, docker_ok, engine_is_28_or_later, host_links, ipv4_of, mac_of, pings, remove_network, require_dockerd,
};
use common::{Server, TempDir, mark_ran};
use rustvlan::dump::{AddressUse, StateDump};
use rustvlan::model::NetworkRecord;

const SOCKET: &str = "/run/docker/plugins/rustvlan.sock";
/// The tests share the host namespace and the plugin socket: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// What every test here starts with: the one-at-a-time lock, and rustvlan on the legacy
/// plugin socket with its store in a temporary directory. None (skip) without dockerd.
fn setup() -> Option<(MutexGuard<'static, ()>, TempDir, Server)> {
    let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !require_dockerd() {
        return None;
    }
    let dir = TempDir::new();
    let plugin = Server::start_at(None, dir.path(), Path::new(SOCKET));
    Some((serial, dir, plugin))
}

#[test]
fn containers_get_addresses_and_ping_over_macvlan() {
    let Some((_serial, _dir, plugin)) = setup() else {
        return;
    };
    let links_before = host_links();
    let mut scene = Scene::new("a");
    scene.network(
        "rvnet-a",
        &[
            "--subnet",
            "10.88.0.0/24",
            "--gateway",
            "10.88.0.1",
            "-o",
            &format!("parent={}", scene.veth),
        ],
    );
    let c1 = scene.run("rv-e2e-a1", "rvnet-a", &[]);
    let c2 = scene.run("rv-e2e-a2", "rvnet-a", &[]);
    let (ip1, ip2) = (ipv4_of(&c1), ipv4_of(&c2));
    assert_ne!(ip1, ip2, "distinct addresses");
    assert!(ip1.starts_with("10.88.0.") && ip1.ends_with("/24"), "{ip1}");
    assert!(pings(&c1, &ip2), "{c1} cannot ping {c2} over macvlan bridge");
    assert!(pings(&c2, &ip1), "{c2} cannot ping {c1} over macvlan bridge");
    let route = docker_ok(&["exec", &c1, "ip", "route"]);
    assert!(route.contains("default via 10.88.0.1 dev eth0"), "{route}");

    // --ip and --mac-address land on the container.
    let c3 = scene.run(
        "rv-e2e-a3",
        "rvnet-a",
        &["--ip", "10.88.0.50", "--mac-address", "02:11:22:33:44:55"],
    );
    assert_eq!(ipv4_of(&c3), "10.88.0.50/24");
    assert_eq!(mac_of(&c3), "02:11:22:33:44:55");
    assert!(pings(&c3, &ip1));

    assert_eq!(plugin.state().endpoints.len(), 3);
    scene.rm_containers();
    plugin.settle();
    assert_eq!(
        host_links(),
        links_before
            .iter()
            .cloned()
            .chain([scene.veth.clone(), format!("{}p", scene.veth)])
            .collect(),
        "docker rm -f leaves no link behind"
    );
    assert!(plugin.state().endpoints.is_empty());

    remove_network("rvnet-a");
    scene.networks.clear();
    let state = plugin.state();
    assert!(
        state.networks.is_empty() && state.endpoints.is_empty() && state.pools.is_empty() && state.parents.is_empty(),
        "docker network rm left records: {state:?}"
    );
    mark_ran("RUSTVLAN_E2E_MARKER", "containers_get_addresses_and_ping_over_macvlan");
}

#[test]
fn running_containers_survive_a_plugin_restart() {
    let Some((_serial, _dir, mut plugin)) = setup() else {
        return;
    };
    let links_before = host_links();
    let mut scene = Scene::new("b");
    scene.network(
        "rvnet-b",
        &["--subnet", "10.89.0.0/24", "-o", &format!("parent={}", scene.veth)],
    );
    let c1 = scene.run("rv-e2e-b1", "rvnet-b", &[]);
    let c2 = scene.run("rv-e2e-b2", "rvnet-b", &[]);
    let (ip1, ip2) = (ipv4_of(&c1), ipv4_of(&c2));

    plugin.kill9();
    plugin.restart();
    assert!(pings(&c1, &ip2) && pings(&c2, &ip1), "running containers keep pinging");
    let c3 = scene.run("rv-e2e-b3", "rvnet-b", &[]);
    let ip3 = ipv4_of(&c3);
    assert!(ip3 != ip1 && ip3 != ip2, "{ip3} is fresh");
    assert!(pings(&c3, &ip1));

    scene.rm_containers();
    plugin.settle();
    let expected: BTreeSet<String> = links_before
        .iter()
        .cloned()
        .chain([scene.veth.clone(), format!("{}p", scene.veth)])
        .collect();
    assert_eq!(host_links(), expected, "removal after the restart leaves no link");
    remove_network("rvnet-b");
    scene.networks.clear();
    let state = plugin.state();
    assert!(
        state.networks.is_empty() && state.endpoints.is_empty() && state.pools.is_empty(),
        "records left behind: {state:?}"
    );
    mark_ran("RUSTVLAN_E2E_MARKER", "running_containers_survive_a_plugin_restart");
}

#[test]
fn docker_option_names_keep_the_built_in_behaviour() {
    let Some((_serial, _dir, _plugin)) = setup() else {
        return;
    };
    let mut scene = Scene::new("c");
    let parent = format!("parent={}", scene.veth);
    scene.network(
        "rvnet-priv",
        &["--subnet", "10.90.0.0/24", "-o", &parent, "-o", "macvlan_mode=private"],
    );
    let p1 = scene.run("rv-e2e-c1", "rvnet-priv", &[]);
    let p2 = scene.run("rv-e2e-c2", "rvnet-priv", &[]);
    assert!(
        !pings(&p1, &ipv4_of(&p2)),
        "private-mode macvlans must not reach each other"
    );
    assert!(!pings(&p2, &ipv4_of(&p1)));
    // The same pair in bridge mode on another network (and parent) does reach.
    let mut scene2 = Scene::new("d");
    scene2.network(
        "rvnet-bridge",
        &[
            "--subnet",
            "10.91.0.0/24",
            "-o",
            &format!("parent={}", scene2.veth),
            "-o",
            "macvlan_mode=bridge",
        ],
    );
    let b1 = scene2.run("rv-e2e-d1", "rvnet-bridge", &[]);
    let b2 = scene2.run("rv-e2e-d2", "rvnet-bridge", &[]);
    assert!(pings(&b1, &ipv4_of(&b2)), "bridge mode is the control: it must ping");
    mark_ran("RUSTVLAN_E2E_MARKER", "docker_option_names_keep_the_built_in_behaviour");
}

/// The network record rustvlan holds for a Docker network name.
fn network_record(plugin: &Server, name: &str) -> NetworkRecord {
    let id = docker_ok(&["network", "inspect", "--format", "{{.Id}}", name]);
    plugin.state().networks.remove(&id).expect("rustvlan holds the network")
}

#[test]
fn internal_networks_keep_their_parent_and_give_no_gateway() {
    let Some((_serial, _dir, plugin)) = setup() else {
        return;
    };
    let docker28 = engine_is_28_or_later();
    let mut scene = Scene::new("i");
    scene.network(
        "rvnet-int",
        &[
            "--internal",
            "--subnet",
            "10.92.0.0/24",
            "-o",
            &format!("parent={}", scene.veth),
        ],
    );
    assert_eq!(
        network_record(&plugin, "rvnet-int").parent,
        scene.veth,
        "--internal keeps -o parent, as Docker 28's macvlan does"
    );
    let c1 = scene.run("rv-e2e-i1", "rvnet-int", &[]);
    let c2 = scene.run("rv-e2e-i2", "rvnet-int", &[]);
    let (ip1, ip2) = (ipv4_of(&c1), ipv4_of(&c2));
    // dockerd 28 asks GwAllocCheck and reserves no gateway address; 20.10 reserves .1.
    let first = if docker28 { "10.92.0.1/24" } else { "10.92.0.2/24" };
    assert_eq!(ip1, first, "first container's address");
    for c in [&c1, &c2] {
        let routes = docker_ok(&["exec", c, "ip", "route"]);
        assert!(
            !routes.contains("default"),
            "{c} on an internal network has no default route: {routes}"
        );
    }
    assert!(
        pings(&c1, &ip2) && pings(&c2, &ip1),
        "containers of an internal network reach each other"
    );

    if docker28 {
        // A point-to-point /31 (RFC 3021): both addresses go to containers.
        let mut p2p = Scene::new("j");
        p2p.network(
            "rvnet-p2p",
            &[
                "--internal",
                "--subnet",
                "10.93.0.0/31",
                "-o",
                &format!("parent={}", p2p.veth),
            ],
        );
        let a = p2p.run("rv-e2e-j1", "rvnet-p2p", &[]);
        let b = p2p.run("rv-e2e-j2", "rvnet-p2p", &[]);
        let (ip_a, ip_b) = (ipv4_of(&a), ipv4_of(&b));
        let got: BTreeSet<String> = [ip_a.clone(), ip_b.clone()].into();
        assert_eq!(got, ["10.93.0.0/31".to_string(), "10.93.0.1/31".to_string()].into());
        assert!(
            pings(&a, &ip_b) && pings(&b, &ip_a),
            "the two ends of a /31 reach each other"
        );
    }
    mark_ran(
        "RUSTVLAN_E2E_MARKER",
        "internal_networks_keep_their_parent_and_give_no_gateway",
    );
}

/// ping6 in a container, a few times: a fresh address is tentative while the kernel
/// runs duplicate address detection.
fn pings6(from: &str, to_cidr: &str) -> bool {
    let ip = to_cidr.split('/').next().unwrap();
    (0..5).any(|_| {
        let ok = common::docker::docker(&["exec", from, "ping", "-6", "-c", "1", "-W", "2", ip])
            .status
            .success();
        if !ok {
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        ok
    })
}

fn ipv6_of(container: &str) -> String {
    let out = docker_ok(&[
        "exec", container, "ip", "-o", "-6", "addr", "show", "dev", "eth0", "scope", "global",
    ]);
    out.split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .unwrap_or_else(|| panic!("no global IPv6 on eth0 of {container}: {out}"))
        .to_string()
}

#[test]
fn ipv6_networks_carry_ping6() {
    let Some((_serial, _dir, plugin)) = setup() else {
        return;
    };
    let docker28 = engine_is_28_or_later();
    let mut scene = Scene::new("k");
    let parent = format!("parent={}", scene.veth);
    // IPv6-only networks exist from Docker 28 on; 20.10 gets a dual-stack network.
    let mut args = vec!["--ipv6", "--subnet", "fd00:94::/64", "-o", &parent];
    if docker28 {
        args.insert(0, "--ipv4=false");
    } else {
        args.extend(["--subnet", "10.94.0.0/24"]);
    }
    scene.network("rvnet-v6", &args);
    let record = network_record(&plugin, "rvnet-v6");
    assert_eq!(record.ipv4.len(), usize::from(!docker28), "{record:?}");
    assert_eq!(record.ipv6.len(), 1, "{record:?}");
    let c1 = scene.run("rv-e2e-k1", "rvnet-v6", &[]);
    let c2 = scene.run("rv-e2e-k2", "rvnet-v6", &[]);
    let (ip1, ip2) = (ipv6_of(&c1), ipv6_of(&c2));
    assert_ne!(ip1, ip2);
    assert!(ip1.starts_with("fd00:94::"), "{ip1}");
    if docker28 {
        let v4 = docker_ok(&["exec", &c1, "ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
        assert!(v4.is_empty(), "an IPv6-only network gives no IPv4 address: {v4}");
    }
    assert!(pings6(&c1, &ip2) && pings6(&c2, &ip1), "ping6 between {ip1} and {ip2}");
    mark_ran("RUSTVLAN_E2E_MARKER", "ipv6_networks_carry_ping6");
}

#[test]
fn bare_unknown_keys_are_refused_and_namespaced_ones_accepted() {
    let Some((_serial, _dir, plugin)) = setup() else {
        return;
    };
    let mut scene = Scene::new("u");
    let parent = format!("parent={}", scene.veth);
    let before = plugin.state();
    let refused = |extra: &[&str]| {
        let mut args = vec!["network", "create", "-d", "rustvlan", "--ipam-driver", "rustvlan"];
        args.extend_from_slice(&["--subnet", "10.95.0.0/24", "-o", &parent]);
        args.extend_from_slice(extra);
        args.push("rvnet-typo");
        let out = common::docker::docker(&args);
        assert!(!out.status.success(), "{extra:?} must be refused");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = refused(&["-o", "macvlan_mod=private"]);
    assert!(
        err.contains("unknown option macvlan_mod (did you mean macvlan_mode?); valid options: parent, vlan,"),
        "{err}"
    );
    let err = refused(&["--ipam-opt", "colour=blue"]);
    assert!(
        err.contains("unknown IPAM option colour; valid IPAM options: segment, scope"),
        "{err}"
    );
    // Pool ids are never reused, so the sequence may move: on 20.10 the refusal comes at
    // CreateNetwork, after dockerd's RequestPool and ReleasePool (on 28, GwAllocCheck
    // refuses before any pool is asked for).
    let held = |state: StateDump| StateDump {
        next_pool_seq: 0,
        ..state
    };
    assert_eq!(
        held(plugin.state()),
        held(before),
        "refused creates leave nothing behind"
    );

    // Namespaced keys belong to other tools (or dockerd): accepted and ignored.
    scene.network(
        "rvnet-ns",
        &[
            "--subnet",
            "10.95.0.0/24",
            "-o",
            &parent,
            "-o",
            "com.example.x=y",
            "--ipam-opt",
            "com.example.y=z",
        ],
    );
    // An endpoint's driver-opt (`network connect --driver-opt`, which both engines
    // have): a bare unknown key is refused, a namespaced one accepted. The container
    // runs on the dockerd's default bridge, so the connect makes the endpoint at once.
    let c = scene.run("rv-e2e-u1", "bridge", &[]);
    let out = common::docker::docker(&["network", "connect", "--driver-opt", "colour=blue", "rvnet-ns", &c]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "driver-opt colour=blue must be refused");
    assert!(stderr.contains("unknown endpoint option colour"), "{stderr}");
    docker_ok(&["network", "connect", "--driver-opt", "com.example.z=1", "rvnet-ns", &c]);
    let eth1 = docker_ok(&["exec", &c, "ip", "-o", "-4", "addr", "show", "dev", "eth1"]);
    assert!(eth1.contains("inet 10.95.0."), "{eth1}");
    mark_ran(
        "RUSTVLAN_E2E_MARKER",
        "bare_unknown_keys_are_refused_and_namespaced_ones_accepted",
    );
}

/// Stands between dockerd and rustvlan on the legacy plugin socket and breaks the
/// connection of the first call to each of `drop_once` before it reaches rustvlan, as a
/// crash or a network fault would; every other call is passed through, request by
/// request, on the connection dockerd keeps open.
struct BreakingProxy {
    /// dockerd's connections: shut down on drop, or dockerd would send the next test's
    /// calls down them to this test's plugin, which is gone by then.
    clients: std::sync::Arc<Mutex<Vec<std::os::unix::net::UnixStream>>>,
    pending: std::sync::Arc<Mutex<Vec<String>>>,
    dropped: std::sync::Arc<Mutex<Vec<String>>>,
    retried_empty: std::sync::Arc<Mutex<Vec<String>>>,
}

impl Drop for BreakingProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

impl BreakingProxy {
    fn start(listen: &Path, upstream: &Path) -> BreakingProxy {
        let _ = std::fs::remove_file(listen);
        let listener = std::os::unix::net::UnixListener::bind(listen).unwrap();
        let pending = std::sync::Arc::new(Mutex::new(Vec::new()));
        let dropped = std::sync::Arc::new(Mutex::new(Vec::new()));
        let retried_empty = std::sync::Arc::new(Mutex::new(Vec::new()));
        let clients = std::sync::Arc::new(Mutex::new(Vec::new()));
        let (upstream, pending_, out, clients_) = (
            upstream.to_path_buf(),
            pending.clone(),
            (dropped.clone(), retried_empty.clone()),
            clients.clone(),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                if let Ok(clone) = client.try_clone() {
                    clients_.lock().unwrap().push(clone);
                }
                let (upstream, pending, out) = (upstream.clone(), pending_.clone(), out.clone());
                std::thread::spawn(move || {
                    // Shut down, not just dropped: `clients` holds a clone of the stream.
                    let closer = client.try_clone();
                    let _ = proxy_connection(client, &upstream, &pending, &out.0, &out.1);
                    if let Ok(c) = closer {
                        let _ = c.shutdown(std::net::Shutdown::Both);
                    }
                });
            }
        });
        BreakingProxy {
            clients,
            pending,
            dropped,
            retried_empty,
        }
    }

    /// Stops serving: the socket goes, and every connection dockerd holds is closed.
    fn stop(&self) {
        let _ = std::fs::remove_file(SOCKET);
        for client in self.clients.lock().unwrap().drain(..) {
            let _ = client.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Breaks the next call to `call`; forgets what was broken and retried before.
    fn arm(&self, call: &str) {
        self.dropped.lock().unwrap().clear();
        self.retried_empty.lock().unwrap().clear();
        *self.pending.lock().unwrap() = vec![call.to_string()];
    }
}

/// One HTTP/1.1 message: head and body (by Content-Length; dockerd and rustvlan send it).
fn read_message(r: &mut impl std::io::BufRead) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0; length];
    r.read_exact(&mut body)?;
    Ok(Some((head, body)))
}

fn proxy_connection(
    client: std::os::unix::net::UnixStream,
    upstream: &Path,
    pending: &Mutex<Vec<String>>,
    dropped: &Mutex<Vec<String>>,
    retried_empty: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    use std::io::Write;
    let mut from_client = std::io::BufReader::new(client.try_clone()?);
    let mut to_client = client;
    let server = std::os::unix::net::UnixStream::connect(upstream)?;
    let mut from_server = std::io::BufReader::new(server.try_clone()?);
    let mut to_server = server;
    while let Some((head, body)) = read_message(&mut from_client)? {
        let call = head
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .trim_start_matches('/')
            .to_string();
        {
            let mut pending = pending.lock().unwrap();
            if let Some(i) = pending.iter().position(|p| *p == call) {
                pending.remove(i);
                dropped.lock().unwrap().push(call);
                return Ok(()); // the caller closes the connection without an answer
            }
        }
        if body.is_empty() && dropped.lock().unwrap().contains(&call) {
            retried_empty.lock().unwrap().push(call);
        }
        to_server.write_all(head.as_bytes())?;
        to_server.write_all(&body)?;
        let Some((answer_head, answer_body)) = read_message(&mut from_server)? else {
            return Ok(());
        };
        to_client.write_all(answer_head.as_bytes())?;
        to_client.write_all(&answer_body)?;
    }
    Ok(())
}

/// What dockerd does after a call's connection broke: it retries it with an empty body
/// (20.10 and 28 alike), which rustvlan refuses by name and without changing anything.
#[test]
fn calls_whose_connection_broke_are_retried_and_change_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !require_dockerd() {
        return;
    }
    let dir = TempDir::new();
    let plugin = Server::start_at(None, dir.path(), &dir.path().join("behind-proxy.sock"));
    let mut scene = Scene::new("r");
    // dockerd keeps its connections to a plugin open: one proxy serves the whole test.
    let proxy = BreakingProxy::start(Path::new(SOCKET), &plugin.socket);
    scene.network(
        "rvnet-retry",
        &["--subnet", "10.96.0.0/24", "-o", &format!("parent={}", scene.veth)],
    );
    // What is held; a pool's cursor may move (dockerd requested an address, then
    // released it when CreateEndpoint failed).
    let held = |state: StateDump| {
        let pools: BTreeMap<String, BTreeMap<std::net::IpAddr, AddressUse>> =
            state.pools.into_iter().map(|(id, pool)| (id, pool.addresses)).collect();
        (state.endpoints, pools, state.unbound_addresses)
    };
    // One container through the proxy unbroken first: dockerd's connections to the
    // plugins of earlier tests are gone from its pool, so the broken call takes the proxy.
    docker_ok(&["run", "--rm", "--net", "rvnet-retry", &common::docker::image(), "true"]);
    plugin.settle();
    for call in ["IpamDriver.RequestAddress", "NetworkDriver.CreateEndpoint"] {
        let before = held(plugin.state());
        proxy.arm(call);
        let name = format!("rv-e2e-r-{}", call.rsplit('.').next().unwrap().to_lowercase());
        let out = common::docker::docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--label",
            &scene.label,
            "--net",
            "rvnet-retry",
            &common::docker::image(),
            "sleep",
            "100000",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(
            *proxy.dropped.lock().unwrap(),
            vec![call.to_string()],
            "the proxy broke {call}; docker run said: {stderr}"
        );
        // Both engines retry with an empty body (the shared notes saw it in 28 only).
        assert!(!out.status.success(), "docker run after a broken {call} must fail");
        assert_eq!(
            *proxy.retried_empty.lock().unwrap(),
            vec![call.to_string()],
            "dockerd retried {call} with an empty body"
        );
        assert!(
            stderr.contains(&format!("{call} came with an empty body, without its arguments")),
            "{stderr}"
        );
        plugin.settle();
        assert_eq!(
            held(plugin.state()),
            before,
            "the refused retry of {call} changed nothing"
        );
        let _ = common::docker::docker(&["rm", "-f", &name]);
    }
    // Through the proxy still: dockerd must reach the plugin to remove the network.
    scene.rm_containers();
    remove_network("rvnet-retry");
    scene.networks.clear();
    drop(proxy);
    mark_ran(
        "RUSTVLAN_E2E_MARKER",
        "calls_whose_connection_broke_are_retried_and_change_nothing",
    );
}

/// A Prometheus server, started with a scrape config of its own, killed on drop.
struct Prometheus {
    child: std::process::Child,
    address: String,
    _dir: TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrapes `target` (host:port) every second.
    fn start(target: &str) -> Prometheus {
        let dir = TempDir::new();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: rustvlan\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let address = format!("127.0.0.1:{}", common::free_port());
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={address}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting prometheus (Debian package prometheus; scripts/test.sh installs it)");
        Prometheus {
            child,
            address,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query through the HTTP API: the first result's value.
    fn query(&self, query: &str) -> Option<f64> {
        let out = common::run(std::process::Command::new("curl").args([
            "-sf",
            "--get",
            "--data-urlencode",
            &format!("query={query}"),
            &format!("http://{}/api/v1/query", self.address),
        ]));
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        answer["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Waits until the query answers `expected`; returns what it answered last.
    fn wait_for(&self, query: &str, expected: f64) -> Option<f64> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let got = self.query(query);
            if got == Some(expected) || std::time::Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }
}

/// `rustvlan status` against the plugin dockerd uses: exit code and screen.
fn status(plugin: &Server) -> (i32, String) {
    let out = common::run(
        plugin
            .command()
            .arg("status")
            .arg("--socket")
            .arg(&plugin.socket)
            .arg("--state-dir")
            .arg(&plugin.state_dir),
    );
    (
        out.status.code().expect("exited"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn prometheus_scrapes_the_pool_gauge_and_status_finds_a_link_deleted_in_a_container() {
    let Some((_serial, _dir, mut plugin)) = setup() else {
        return;
    };
    let metrics_port = common::free_port();
    plugin.terminate();
    plugin.extra_args = vec!["--metrics-listen".into(), format!("127.0.0.1:{metrics_port}")];
    plugin.restart();
    let prometheus = Prometheus::start(&format!("127.0.0.1:{metrics_port}"));

    let mut scene = Scene::new("m");
    scene.network(
        "rvnet-m",
        &["--subnet", "10.93.0.0/24", "-o", &format!("parent={}", scene.veth)],
    );
    let containers: Vec<String> = (1..=10)
        .map(|n| scene.run(&format!("rv-e2e-m{n}"), "rvnet-m", &[]))
        .collect();

    // What the store holds: ten containers' addresses and the gateway.
    let state = plugin.state();
    let (pool_id, pool) = state
        .pools
        .iter()
        .find(|(_, p)| p.pool.to_string() == "10.93.0.0/24")
        .expect("the network's pool");
    let containers_in_pool = pool.addresses.values().filter(|u| **u == AddressUse::Allocated).count();
    assert_eq!(containers_in_pool, 10);
    let allocated = pool.addresses.len() as f64;

    // Prometheus reads the same through its query API...
    let query = r#"rustvlan_pool_allocated_addresses{subnet="10.93.0.0/24"}"#;
    let scraped = prometheus.wait_for(query, allocated);
    assert_eq!(
        scraped,
        Some(allocated),
        "Prometheus answered {scraped:?} for {query}; its log:\n{}",
        prometheus.log()
    );
    assert_eq!(prometheus.wait_for("rustvlan_endpoints", 10.0), Some(10.0));
    let starts = prometheus.wait_for(
        r#"sum(rustvlan_requests_total{call="NetworkDriver.Join",outcome="ok"})"#,
        10.0,
    );
    assert_eq!(starts, Some(10.0), "ten Joins counted");
    // ...and the plugin's own socket says it too.
    let socket_text = common::check(plugin.command().arg("metrics").arg("--socket").arg(&plugin.socket));
    let series = format!(
        r#"rustvlan_pool_allocated_addresses{{pool="{pool_id}",subnet="10.93.0.0/24",network="{}"}} "#,
        &pool.claimed_by.as_deref().expect("claimed by its network")[..12]
    );
    let on_socket = socket_text
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert_eq!(on_socket, Some(allocated), "{series}in:\n{socket_text}");
    common::report(&format!(
        "Prometheus {} read {query} = {allocated} after 10 containers (the socket's /metrics: {on_socket:?})",
        prometheus.address
    ));

    // Clean: every endpoint's link found in its container.
    let (code, screen) = status(&plugin);
    assert_eq!(code, 0, "{screen}");
    assert_eq!(screen.matches("eth0 in its container").count(), 10, "{screen}");

    // One container's link deleted inside it, behind rustvlan's back.
    let victim = &containers[3];
    let sandbox = docker_ok(&["inspect", "-f", "{{.NetworkSettings.SandboxKey}}", victim]);
    let endpoint = docker_ok(&[
        "inspect",
        "-f",
        r#"{{(index .NetworkSettings.Networks "rvnet-m").EndpointID}}"#,
        victim,
    ]);
    common::check(
        std::process::Command::new("nsenter")
            .arg(format!("--net={}", sandbox.trim()))
            .args(["ip", "link", "del", "eth0"]),
    );
    let (code, screen) = status(&plugin);
    assert_eq!(code, 1, "{screen}");
    assert!(
        screen.contains(&format!("endpoint {} of network", &endpoint.trim()[..12]))
            && screen.contains("its link is gone from the container's namespace"),
        "{screen}"
    );
    common::report(&format!(
        "rustvlan status after `ip link del eth0` inside {victim}:\n{screen}"
    ));

    scene.rm_containers();
    plugin.settle();
    let (code, screen) = status(&plugin);
    assert_eq!(code, 0, "removing the containers ends the drift:\n{screen}");
    remove_network("rvnet-m");
    scene.networks.clear();
    mark_ran(
        "RUSTVLAN_E2E_MARKER",
        "prometheus_scrapes_the_pool_gauge_and_status_finds_a_link_deleted_in_a_container",
    );
}

/// moby's TestMacvlanIPAMOverlap against rustvlan: two networks of one subnet on two
/// parents (one LAN reached twice) never hand out one address twice, and share the
/// gateway; `--ipam-opt segment=` keeps apart two LANs that really reuse a subnet.
#[test]
fn networks_of_one_subnet_share_one_address_plan() {
    let Some((_serial, _dir, plugin)) = setup() else {
        return;
    };
    let mut scene = Scene::new("o");
    let second = common::Veth::new("e2eo2");
    let subnet = ["--subnet", "192.168.77.0/24"];
    scene.network(
        "rvnet-o1",
        &[&subnet[..], &["-o", &format!("parent={}", scene.veth)]].concat(),
    );
    scene.network(
        "rvnet-o2",
        &[&subnet[..], &["-o", &format!("parent={}", second.0)]].concat(),
    );
    let mut seen = BTreeSet::new();
    for n in 0..3 {
        for net in ["rvnet-o1", "rvnet-o2"] {
            let c = scene.run(&format!("rv-e2e-{net}-{n}"), net, &[]);
            let ip = ipv4_of(&c);
            assert!(seen.insert(ip.clone()), "{ip} handed out twice: {seen:?}");
        }
    }
    // The containers' default route: the gateway each network got.
    let gateway = |net: &str| {
        let route = docker_ok(&["exec", &format!("rv-e2e-{net}-0"), "ip", "route"]);
        route
            .lines()
            .find_map(|l| l.strip_prefix("default via "))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no default route in {net}: {route}"))
            .to_string()
    };
    assert_eq!(gateway("rvnet-o1"), "192.168.77.1", "the first network's gateway");
    assert_eq!(gateway("rvnet-o2"), "192.168.77.1", "one LAN, one router");
    // An --ip the other network holds is refused, naming why.
    let taken = seen.iter().next().unwrap().split('/').next().unwrap().to_string();
    let refused = common::docker::docker(&[
        "run",
        "--rm",
        "--net",
        "rvnet-o2",
        "--ip",
        &taken,
        &common::docker::image(),
        "true",
    ]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("on the same subnet 192.168.77.0/24"),
        "{err}"
    );
    // A third network on another LAN that reuses the subnet: its own segment starts over.
    let third = common::Veth::new("e2eo3");
    scene.network(
        "rvnet-o3",
        &[
            "--subnet",
            "192.168.77.0/24",
            "--ipam-opt",
            "segment=lab",
            "-o",
            &format!("parent={}", third.0),
        ],
    );
    let c = scene.run("rv-e2e-o3", "rvnet-o3", &[]);
    assert_eq!(ipv4_of(&c), "192.168.77.2/24");
    common::report(&format!(
        "one subnet on two parents: 6 containers, 6 addresses {seen:?}; gateway {}",
        gateway("rvnet-o1")
    ));
    scene.rm_containers();
    plugin.settle();
    for net in ["rvnet-o1", "rvnet-o2", "rvnet-o3"] {
        remove_network(net);
    }
    scene.networks.clear();
    assert!(plugin.state().holds_nothing());
    mark_ran("RUSTVLAN_E2E_MARKER", "networks_of_one_subnet_share_one_address_plan");
}
