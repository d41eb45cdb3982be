//! `rustvlan serve`: open the store, reconcile with the kernel, listen on the socket,
//! and stop cleanly on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{SignalKind, signal};

use crate::api::{dhcp_router, metrics_router, router};
use crate::etcd::Etcd;
use crate::ipam::SharedPlans;
use crate::kernel::NetlinkKernel;
use crate::plugin::Plugin;
use crate::store::{Journal, PoolDefaults, Store};

pub struct ServeConfig {
    pub socket: PathBuf,
    /// A second socket answering the same API, e.g. a managed plugin's socket in the
    /// host's /run/docker/plugins so that dockerd also finds it by its short name.
    pub extra_socket: Option<PathBuf>,
    /// The `rustvlan-dhcp` IPAM's socket.
    pub dhcp_socket: Option<PathBuf>,
    /// Grace period before unused addresses are released (see `driver::reclaim`).
    pub reclaim_after: Duration,
    pub state_dir: PathBuf,
    pub pool_defaults: PoolDefaults,
    /// Also serve `GET /metrics` over TCP here (only when the operator asks).
    pub metrics_listen: Option<SocketAddr>,
    /// Shared pools through etcd (`--etcd-endpoints`).
    pub etcd: Option<crate::etcd::EtcdConfig>,
}

/// How long in-flight requests get to finish after SIGTERM. dockerd keeps idle
/// connections open, so waiting for all connections to close could take forever.
const DRAIN: Duration = Duration::from_millis(500);

pub async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let started = Instant::now();
    let (store, plugin) = open_plugin(&config).await?;
    start_background_work(&plugin, &config).await;
    let bound = Bound::bind(&config).await?;
    tracing::info!(
        sockets = ?bound.socket_names(),
        metrics = ?bound.metrics.as_ref().and_then(|l| l.local_addr().ok()),
        startup_ms = started.elapsed().as_millis() as u64,
        "listening"
    );
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sockets = bound.sockets.clone();
    let mut servers = bound.serve(&plugin, &stop_rx);
    let signal_name = tokio::select! {
        Some(result) = servers.join_next() => {
            result.context("server task")?.context("serving")?;
            "none"
        }
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = signal_name, "stopping");
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(DRAIN, async { while servers.join_next().await.is_some() {} });
    if drained.await.is_err() {
        tracing::debug!("connections still open after the drain period; closing them");
        servers.abort_all();
    }
    // With containers' addresses still held (an upgrade, a restart), the host stays live for
    // the lease's TTL: long enough for the next start to take over, and no other host
    // may reclaim its addresses meanwhile.
    let attached = plugin
        .ledger
        .state()
        .ipam
        .pools()
        .any(|p| p.record.shared && p.allocated().any(|(_, gateway)| !gateway));
    if let Some(etcd) = plugin.ipam.shared.as_ref().and_then(|s| s.etcd().ok())
        && !attached
    {
        etcd.retire().await;
    }
    let flushed = store.flush();
    for socket in &sockets {
        remove_socket(socket);
    }
    flushed?;
    tracing::info!("stopped");
    Ok(())
}

/// The store loaded, the kernel connected, etcd asked (when configured).
async fn open_plugin(config: &ServeConfig) -> anyhow::Result<(Arc<Store>, Arc<Plugin<NetlinkKernel>>)> {
    let store = Arc::new(Store::open(&config.state_dir)?);
    let (state, loaded) = store.load(&config.pool_defaults)?;
    tracing::info!(
        state_dir = %config.state_dir.display(),
        networks = loaded.networks,
        endpoints = loaded.endpoints,
        pools = loaded.pools,
        addresses = loaded.addresses,
        parents_made = loaded.parents_made,
        "state loaded"
    );
    let kernel = NetlinkKernel::connect()?;
    let mut plugin = Plugin::new(state, Arc::clone(&store) as Arc<dyn Journal>, kernel, loaded.link_group);
    if let Some(etcd) = &config.etcd {
        plugin = plugin.with_shared(SharedPlans::new(&etcd.host_id, &etcd.endpoints.join(",")));
    }
    let plugin = Arc::new(plugin);
    if let Some(etcd) = config.etcd.clone() {
        connect_etcd(&plugin, etcd).await?;
        tokio::spawn(Arc::clone(&plugin.ipam).drain_shared_releases());
    }
    Ok((store, plugin))
}

/// The start-up reconcile, then the tasks that run for as long as rustvlan does.
async fn start_background_work(plugin: &Arc<Plugin<NetlinkKernel>>, config: &ServeConfig) {
    if let Err(e) = plugin.driver.reconcile().await {
        // Serving without a reconcile is better than not serving: dockerd's calls still
        // work, and the next start retries.
        tracing::warn!("reconcile with the kernel failed: {e}");
    }
    spawn_sweeper(Arc::clone(plugin), config.reclaim_after).await;
    tokio::spawn(Arc::clone(&plugin.driver).run_deleter());
    tokio::spawn(Arc::clone(&plugin.ipam).renew_leases());
}

/// Every listener rustvlan answers on.
struct Bound {
    /// The driver's socket and the extra one, both serving the whole API.
    plugin: Vec<UnixListener>,
    dhcp: Option<UnixListener>,
    metrics: Option<TcpListener>,
    /// Every socket path bound, to remove at shutdown.
    sockets: Vec<PathBuf>,
}

impl Bound {
    async fn bind(config: &ServeConfig) -> anyhow::Result<Bound> {
        // Bound before the plugin sockets, so that a taken port stops start-up with a
        // clear error (and no socket left behind) instead of leaving a plugin nobody can
        // scrape.
        let metrics = match config.metrics_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen for metrics on {addr}; choose another --metrics-listen, or none")
            })?),
            None => None,
        };
        let mut bound = Bound {
            plugin: vec![bind_socket(&config.socket)?],
            dhcp: None,
            metrics,
            sockets: vec![config.socket.clone()],
        };
        // Only a convenience (the short plugin name): never a reason not to serve.
        if let Some(extra) = &config.extra_socket
            && let Some(listener) = bound.optional(extra, "not answering on the extra socket")
        {
            bound.plugin.push(listener);
        }
        // Like the extra socket, never a reason not to serve the driver: another
        // rustvlan (a legacy service beside the managed plugin) may already serve it.
        if let Some(path) = &config.dhcp_socket {
            bound.dhcp = bound.optional(path, "not serving rustvlan-dhcp");
        }
        Ok(bound)
    }

    /// A socket whose failure is a warning.
    fn optional(&mut self, path: &Path, warning: &str) -> Option<UnixListener> {
        match bind_socket(path) {
            Ok(listener) => {
                self.sockets.push(path.to_path_buf());
                Some(listener)
            }
            Err(e) => {
                tracing::warn!("{warning}: {e:#}");
                None
            }
        }
    }

    fn socket_names(&self) -> Vec<String> {
        self.sockets.iter().map(|s| s.display().to_string()).collect()
    }

    /// One server per listener, each stopping (gracefully) when `stop` turns true.
    fn serve(
        self,
        plugin: &Arc<Plugin<NetlinkKernel>>,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinSet<std::io::Result<()>> {
        let mut servers = tokio::task::JoinSet::new();
        if let Some(listener) = self.dhcp {
            spawn_server(&mut servers, listener, dhcp_router(Arc::clone(plugin)), stop);
        }
        if let Some(listener) = self.metrics {
            spawn_server(&mut servers, listener, metrics_router(Arc::clone(plugin)), stop);
        }
        let app = router(Arc::clone(plugin));
        for listener in self.plugin {
            spawn_server(&mut servers, listener, app.clone(), stop);
        }
        servers
    }
}

fn spawn_server<L>(
    servers: &mut tokio::task::JoinSet<std::io::Result<()>>,
    listener: L,
    app: axum::Router,
    stop: &tokio::sync::watch::Receiver<bool>,
) where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let mut stop = stop.clone();
    let shutdown = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    servers.spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .into_future(),
    );
}

/// Connects to etcd and announces this host. A host id another live machine uses stops
/// start-up; an unreachable etcd does not (local pools work, shared pools answer that etcd
/// is unreachable) and is retried in the background.
async fn connect_etcd(plugin: &Arc<Plugin<NetlinkKernel>>, config: crate::etcd::EtcdConfig) -> anyhow::Result<()> {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let metrics = plugin.metrics().etcd.clone();
    let store = plugin.driver.group;
    async fn attempt(
        config: crate::etcd::EtcdConfig,
        hostname: String,
        store: u32,
        metrics: crate::metrics::EtcdMetrics,
    ) -> Result<Etcd, crate::etcd::EtcdError> {
        let etcd = Etcd::connect(&config).await?.metered(metrics);
        etcd.register(&hostname, store).await?;
        Ok(etcd)
    }
    let shared = plugin.ipam.shared.clone().expect("made above");
    let later = Arc::clone(plugin);
    match attempt(config.clone(), hostname.clone(), store, metrics.clone()).await {
        Ok(etcd) => {
            tracing::info!(host_id = %config.host_id, endpoints = %etcd.endpoints(), "connected to etcd: shared pools on");
            let announcements = etcd.announcements();
            shared.connected(etcd, plugin.metrics());
            spawn_shared_checks(plugin, announcements);
        }
        Err(e) if e.kind == crate::etcd::EtcdErrorKind::HostIdTaken => bail!("{e}"),
        Err(e) => {
            tracing::warn!("{e}; shared pools wait for etcd, local pools work; retrying in the background");
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    match attempt(config.clone(), hostname.clone(), store, metrics.clone()).await {
                        Ok(etcd) => {
                            tracing::info!(host_id = %config.host_id, "connected to etcd: shared pools on");
                            let announcements = etcd.announcements();
                            shared.connected(etcd, later.metrics());
                            spawn_shared_checks(&later, announcements);
                            return;
                        }
                        Err(e) => tracing::debug!("{e}"),
                    }
                }
            });
        }
    }
    Ok(())
}

/// Checks this host's shared claims against etcd, off the start-up path: once connected,
/// and again each time the host is announced anew after a lost lease (a partition from
/// etcd), when other hosts may have reclaimed or taken its addresses.
fn spawn_shared_checks(plugin: &Arc<Plugin<NetlinkKernel>>, mut announcements: tokio::sync::watch::Receiver<u64>) {
    let plugin = Arc::clone(plugin);
    tokio::spawn(async move {
        loop {
            announcements.mark_unchanged();
            if let Err(e) = plugin.ipam.reconcile_shared().await {
                tracing::warn!("checking this host's shared claims against etcd failed: {e}");
            }
            if announcements.changed().await.is_err() {
                return;
            }
        }
    });
}

/// Sweeps unused addresses: once now (marking, or with a zero grace releasing), then
/// every grace period. Only a zero grace (release at once) waits for the first sweep
/// before serving; a marking sweep runs beside the first requests, as later ones do.
async fn spawn_sweeper(plugin: Arc<Plugin<NetlinkKernel>>, grace: Duration) {
    if grace.is_zero() {
        if let Err(e) = plugin.ipam.sweep(true).await {
            tracing::warn!("sweep of unused addresses failed: {e}");
        }
        return;
    }
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(grace);
        loop {
            ticks.tick().await; // the first tick is immediate
            if let Err(e) = plugin.ipam.sweep(false).await {
                tracing::warn!("sweep of unused addresses failed: {e}");
            }
        }
    });
}

/// Binds the socket with mode 0600 from the first moment: it is bound inside a private
/// directory, restricted, then renamed into place. A stale socket (nobody answering) is
/// replaced; a live one means another rustvlan serves it, and is left alone.
fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!(
                "{} exists and is not a socket; remove it or choose another --socket",
                path.display()
            );
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another process is serving {}; stop it first or choose another --socket",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
        tracing::info!(socket = %path.display(), "replaced a stale socket");
    }
    // The pid alone is not unique: as a managed plugin rustvlan is PID 1 in its own
    // namespace, and the directory may be shared with the host.
    let mut nonce = [0u8; 4];
    crate::util::random_bytes(&mut nonce);
    let private = dir.join(format!(
        ".rustvlan-bind-{}-{:08x}",
        std::process::id(),
        u32::from_be_bytes(nonce)
    ));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::create_dir(&private).with_context(|| format!("cannot create {}", private.display()))?;
    let bound = (|| {
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700))?;
        let temp = private.join("s");
        let listener = std::os::unix::net::UnixListener::bind(&temp)?;
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&temp, path)?;
        listener.set_nonblocking(true)?;
        std::io::Result::Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    let listener = bound.with_context(|| format!("cannot listen on {}", path.display()))?;
    UnixListener::from_std(listener).context("registering the socket with the runtime")
}

fn remove_socket(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(socket = %path.display(), "cannot remove the socket: {e}");
    }
}
