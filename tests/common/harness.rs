//! A libnetwork-like harness: drives rustvlan over its socket the way dockerd 20.10 does
//! for a container's network (RequestAddress, CreateEndpoint, Join, moving the link into
//! the container's namespace and configuring it, Leave, moving it back, DeleteEndpoint,
//! ReleaseAddress), with dockerd's retries of broken connections and its rollbacks. It
//! uses netlink directly, not `ip`, so that its own cost stays small next to the kernel's.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use rtnetlink::LinkUnspec;
use serde_json::{Value, json};

/// Calls retried because their connection failed, over the whole process.
pub static RETRIES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A netlink connection whose socket lives in one network namespace.
#[derive(Clone)]
pub struct Netlink(pub rtnetlink::Handle);

/// Opens a netlink socket inside the namespace at `ns` (like /run/netns/NAME). A thread
/// of its own enters the namespace, makes the socket (which stays bound to it) and runs
/// its message loop: the kernel answers link moves inside `sendmsg`, after an RCU grace
/// period, and that must not block the caller's runtime.
pub fn netlink_in(ns: &Path) -> Netlink {
    let ns = ns.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let file = File::open(&ns).unwrap_or_else(|e| panic!("open {}: {e}", ns.display()));
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let (connection, handle, _) = rtnetlink::new_connection().expect("netlink socket");
            tx.send(handle).unwrap();
            connection.await;
        });
    });
    Netlink(rx.recv().expect("netlink thread"))
}

/// A container's network namespace, with a netlink socket inside it.
pub struct Sandbox {
    pub path: PathBuf,
    fd: File,
    netlink: Netlink,
}

impl Sandbox {
    pub fn netlink(&self) -> &Netlink {
        &self.netlink
    }

    pub fn open(path: &Path) -> Sandbox {
        Sandbox {
            path: path.to_path_buf(),
            fd: File::open(path).unwrap(),
            netlink: netlink_in(path),
        }
    }
}

/// How long each step took, for per-call figures.
#[derive(Debug, Default, Clone)]
pub struct Timings(pub Vec<(&'static str, Duration)>);

impl Timings {
    async fn time<T>(&mut self, step: &'static str, f: impl std::future::Future<Output = T>) -> T {
        let started = Instant::now();
        let out = f.await;
        self.0.push((step, started.elapsed()));
        out
    }
}

/// An endpoint the harness attached to a sandbox.
#[derive(Debug, Clone)]
pub struct Attached {
    pub endpoint: String,
    /// CIDR, as RequestAddress answered it.
    pub address: String,
    pub link: String,
    pub index: u32,
    /// The address came from RequestAddress, so detach releases it.
    pub from_ipam: bool,
}

/// The dockerd stand-in.
pub struct Dockerd {
    pub socket: PathBuf,
    host: Netlink,
    host_fd: File,
    /// dockerd retries a call whose connection fails for about this long (15.5 s
    /// measured with dockerd 20.10), then gives up.
    pub retry_for: Duration,
    pub pool_id: String,
    pub network: String,
    /// A keep-alive connection, as dockerd keeps one.
    conn: tokio::sync::Mutex<rustvlan::client::Client>,
}

fn remote_error(body: &Value) -> Option<String> {
    ["Err", "Error"]
        .iter()
        .filter_map(|k| body.get(*k).and_then(Value::as_str))
        .find(|e| !e.is_empty())
        .map(str::to_string)
}

impl Dockerd {
    /// `host`: the namespace rustvlan runs in, where its links appear.
    pub fn new(socket: &Path, host: &Path, network: &str, pool_id: &str) -> Dockerd {
        Dockerd {
            socket: socket.to_path_buf(),
            host: netlink_in(host),
            host_fd: File::open(host).unwrap(),
            retry_for: Duration::from_secs(15),
            pool_id: pool_id.to_string(),
            network: network.to_string(),
            conn: tokio::sync::Mutex::new(rustvlan::client::Client::new(socket)),
        }
    }

    /// One plugin call, retried like dockerd's plugin client: only when the connection
    /// fails (refused, reset mid-request), with backoff, for `retry_for` at most.
    pub async fn call(&self, method: &str, body: Value) -> Result<Value, String> {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(20);
        loop {
            let result = self
                .conn
                .lock()
                .await
                .post(&format!("/{method}"), body.to_string())
                .await;
            match result {
                Ok((status, bytes)) => {
                    let answer: Value = serde_json::from_slice(&bytes).map_err(|e| {
                        format!(
                            "{method}: answer is not JSON ({e}): {}",
                            String::from_utf8_lossy(&bytes)
                        )
                    })?;
                    if let Some(err) = remote_error(&answer) {
                        return Err(format!("{method}: {status} {err}"));
                    }
                    if status != 200 {
                        return Err(format!("{method}: status {status}"));
                    }
                    return Ok(answer);
                }
                Err(e) if started.elapsed() < self.retry_for => {
                    RETRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if std::env::var_os("RUSTVLAN_HARNESS_DEBUG").is_some() {
                        eprintln!("retrying {method}: {e:#}");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(format!("{method}: {e:#}")),
            }
        }
    }

    async fn link_index(netlink: &Netlink, name: &str) -> Result<u32, String> {
        let mut links = netlink.0.link().get().match_name(name.to_string()).execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(msg.header.index),
            Ok(None) => Err(format!("no link {name}")),
            Err(e) => Err(format!("looking up {name}: {e}")),
        }
    }

    /// A container start: address, endpoint, Join, link into the sandbox as eth0, up.
    /// Failures are rolled back as dockerd does.
    pub async fn attach(&self, endpoint: &str, sandbox: &Sandbox, t: &mut Timings) -> Result<Attached, String> {
        self.attach_with(endpoint, sandbox, None, t).await
    }

    /// Like [`Dockerd::attach`]; with `address` given (CIDR), IPAM is not asked.
    pub async fn attach_with(
        &self,
        endpoint: &str,
        sandbox: &Sandbox,
        address: Option<&str>,
        t: &mut Timings,
    ) -> Result<Attached, String> {
        let from_ipam = address.is_none();
        let address = match address {
            Some(a) => a.to_string(),
            None => {
                let answer = t
                    .time(
                        "RequestAddress",
                        self.call(
                            "IpamDriver.RequestAddress",
                            json!({"PoolID": self.pool_id, "Address": "", "Options": null}),
                        ),
                    )
                    .await?;
                answer["Address"]
                    .as_str()
                    .ok_or("RequestAddress: no Address")?
                    .to_string()
            }
        };
        let release = || async {
            if from_ipam {
                let ip = address.split('/').next().unwrap();
                let _ = self
                    .call(
                        "IpamDriver.ReleaseAddress",
                        json!({"PoolID": self.pool_id, "Address": ip}),
                    )
                    .await;
            }
        };
        let ids = json!({"NetworkID": self.network, "EndpointID": endpoint});
        let created = t
            .time(
                "CreateEndpoint",
                self.call(
                    "NetworkDriver.CreateEndpoint",
                    json!({"NetworkID": self.network, "EndpointID": endpoint,
                           "Interface": {"Address": address, "AddressIPv6": "", "MacAddress": ""}, "Options": {}}),
                ),
            )
            .await;
        if let Err(e) = created {
            release().await;
            return Err(e);
        }
        let joined = t
            .time(
                "Join",
                self.call(
                    "NetworkDriver.Join",
                    json!({"NetworkID": self.network, "EndpointID": endpoint, "SandboxKey": sandbox.path, "Options": {}}),
                ),
            )
            .await;
        let joined = match joined {
            Ok(j) => j,
            Err(e) => {
                let _ = self.call("NetworkDriver.DeleteEndpoint", ids.clone()).await;
                release().await;
                return Err(e);
            }
        };
        let link = joined["InterfaceName"]["SrcName"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let moved = t
            .time("move into sandbox", self.move_in(&link, &address, sandbox))
            .await;
        match moved {
            Ok(index) => Ok(Attached {
                endpoint: endpoint.to_string(),
                address,
                link,
                index,
                from_ipam,
            }),
            Err(e) => {
                let _ = self.call("NetworkDriver.Leave", ids.clone()).await;
                let _ = self.call("NetworkDriver.DeleteEndpoint", ids).await;
                release().await;
                Err(e)
            }
        }
    }

    async fn move_in(&self, link: &str, cidr: &str, sandbox: &Sandbox) -> Result<u32, String> {
        let host_index = Self::link_index(&self.host, link).await?;
        self.host
            .0
            .link()
            .change(
                LinkUnspec::new_with_index(host_index)
                    .setns_by_fd(sandbox.fd.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| format!("moving {link} into the sandbox: {e}"))?;
        let nl = &sandbox.netlink.0;
        let index = Self::link_index(&sandbox.netlink, link).await?;
        nl.link()
            .change(LinkUnspec::new_with_index(index).name("eth0".to_string()).build())
            .execute()
            .await
            .map_err(|e| format!("renaming {link}: {e}"))?;
        let (ip, prefix) = cidr.split_once('/').ok_or("address is not CIDR")?;
        nl.address()
            .add(
                index,
                ip.parse().map_err(|_| "bad address")?,
                prefix.parse().map_err(|_| "bad prefix")?,
            )
            .execute()
            .await
            .map_err(|e| format!("addressing eth0: {e}"))?;
        nl.link()
            .change(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| format!("bringing eth0 up: {e}"))?;
        Ok(index)
    }

    /// A container stop: Leave, link back to the host under its name, DeleteEndpoint,
    /// ReleaseAddress.
    pub async fn detach(&self, attached: &Attached, sandbox: &Sandbox, t: &mut Timings) -> Result<(), String> {
        let ids = json!({"NetworkID": self.network, "EndpointID": attached.endpoint});
        t.time("Leave", self.call("NetworkDriver.Leave", ids.clone())).await?;
        t.time("move back to host", self.move_out(attached, sandbox)).await?;
        t.time("DeleteEndpoint", self.call("NetworkDriver.DeleteEndpoint", ids))
            .await?;
        if attached.from_ipam {
            let ip = attached.address.split('/').next().unwrap();
            t.time(
                "ReleaseAddress",
                self.call(
                    "IpamDriver.ReleaseAddress",
                    json!({"PoolID": self.pool_id, "Address": ip}),
                ),
            )
            .await?;
        }
        Ok(())
    }

    async fn move_out(&self, attached: &Attached, sandbox: &Sandbox) -> Result<(), String> {
        let nl = &sandbox.netlink.0;
        let message = LinkUnspec::new_with_index(attached.index)
            .down()
            .name(attached.link.clone())
            .setns_by_fd(self.host_fd.as_raw_fd())
            .build();
        nl.link()
            .change(message)
            .execute()
            .await
            .map_err(|e| format!("moving {} back: {e}", attached.link))
    }
}
