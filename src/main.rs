use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ipnetwork::Ipv4Network;

use rustvlan::server::{ServeConfig, serve};
use rustvlan::store::PoolDefaults;

#[derive(Parser)]
#[command(
    name = "rustvlan",
    version,
    about = "Docker network driver and IPAM plugin for macvlan, ipvlan and 802.1Q VLANs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the plugin API on a unix socket.
    Serve(ServeArgs),
    /// The hosts sharing pools through etcd: live or not, and how many addresses each holds.
    Hosts {
        #[command(flatten)]
        etcd: EtcdArgs,
        /// Print them as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Releases every address a dead host holds in etcd (refused while it is live).
    Reclaim {
        #[command(flatten)]
        etcd: EtcdArgs,
        /// The dead host's id, as `rustvlan hosts` lists it.
        #[arg(long = "host")]
        dead_host: String,
    },
    /// Show networks, endpoints, pools and addresses: from the running plugin if one
    /// answers on the socket, else straight from the store.
    State {
        #[command(flatten)]
        at: Location,
        /// Print the full state as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Networks, pools, endpoints and where their links are, and drift: what the
    /// kernel shows that the records do not (and the reverse). Exits 0 when there is no
    /// drift, 1 when there is, 2 when the check itself failed.
    Status {
        #[command(flatten)]
        at: Location,
        /// Print the report as JSON (documented in the README).
        #[arg(long)]
        json: bool,
    },
    /// Print the running plugin's Prometheus metrics (GET /metrics on its socket).
    Metrics {
        #[arg(long, env = "RUSTVLAN_SOCKET", default_value = "/run/docker/plugins/rustvlan.sock")]
        socket: PathBuf,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    #[arg(long, env = "RUSTVLAN_SOCKET", default_value = "/run/docker/plugins/rustvlan.sock")]
    socket: PathBuf,
    /// Also answer on this socket. A managed plugin uses it to appear in the host's
    /// /run/docker/plugins, so that `-d rustvlan` works besides `-d rustvlan:latest`.
    /// Empty means none (a managed plugin's settings can only empty a variable).
    #[arg(long, env = "RUSTVLAN_EXTRA_SOCKET", default_value = "")]
    extra_socket: String,
    /// The socket of the `rustvlan-dhcp` IPAM (leases from the LAN's DHCP server).
    /// Empty: `rustvlan-dhcp.sock` beside --extra-socket if given, else beside
    /// --socket; `none`: not served.
    #[arg(long, env = "RUSTVLAN_DHCP_SOCKET", default_value = "")]
    dhcp_socket: String,
    #[arg(long, env = "RUSTVLAN_STATE_DIR", default_value = "/var/lib/rustvlan")]
    state_dir: PathBuf,
    /// error, warn, info, debug or trace.
    #[arg(long, env = "RUSTVLAN_LOG_LEVEL", default_value = "info")]
    log_level: tracing::Level,
    /// Range that subnets are picked from when a network is created without --subnet.
    #[arg(long, env = "RUSTVLAN_DEFAULT_POOL", default_value = "10.123.0.0/16")]
    default_pool: Ipv4Network,
    /// How long an address in a rustvlan network's pool may stay unused by any
    /// endpoint, gateway or aux address before it is released (dockerd skips
    /// releases it cannot deliver). `0` releases them once, at start-up.
    #[arg(long, env = "RUSTVLAN_RECLAIM_AFTER", default_value = "10m", value_parser = parse_duration)]
    reclaim_after: Duration,
    /// Prefix length of the subnets picked from --default-pool.
    #[arg(long, env = "RUSTVLAN_DEFAULT_POOL_SIZE", default_value_t = 24, value_parser = clap::value_parser!(u8).range(1..=30))]
    default_pool_size: u8,
    /// Also serve Prometheus metrics (`GET /metrics`, nothing else) over TCP on this
    /// address, like 127.0.0.1:9477. None by default: the plugin socket serves
    /// /metrics too, and rustvlan opens no TCP port unless asked.
    #[arg(long, env = "RUSTVLAN_METRICS_LISTEN", value_parser = parse_listen)]
    metrics_listen: Option<MetricsListen>,
    #[command(flatten)]
    etcd: EtcdArgs,
}

/// etcd, for pools shared across hosts. Without endpoints every pool is this host's own.
#[derive(clap::Args, Clone)]
struct EtcdArgs {
    /// etcd client URLs, comma-separated (http://10.0.0.5:2379,…). Empty: no shared pools.
    #[arg(long, env = "RUSTVLAN_ETCD_ENDPOINTS", default_value = "", value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// Where rustvlan's keys live in etcd.
    #[arg(long, env = "RUSTVLAN_ETCD_PREFIX", default_value = "/rustvlan")]
    etcd_prefix: String,
    /// CA certificate (PEM) that etcd's server certificate is checked against.
    #[arg(long, env = "RUSTVLAN_ETCD_CA")]
    etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM), with --etcd-key.
    #[arg(long, env = "RUSTVLAN_ETCD_CERT")]
    etcd_cert: Option<PathBuf>,
    /// Client key (PEM), with --etcd-cert.
    #[arg(long, env = "RUSTVLAN_ETCD_KEY")]
    etcd_key: Option<PathBuf>,
    /// This host's id among those sharing pools; default: /etc/machine-id.
    #[arg(long, env = "RUSTVLAN_HOST_ID", default_value = "")]
    host_id: String,
    /// Seconds this host stays listed live in etcd after its last renewal (renewed every
    /// third of it): how long a host cut off from etcd is still trusted, and how long
    /// `reclaim` waits after a host dies.
    #[arg(long, env = "RUSTVLAN_ETCD_HOST_TTL", default_value_t = rustvlan::etcd::DEFAULT_HOST_TTL,
          value_parser = clap::value_parser!(u32).range(6..=3600))]
    etcd_host_ttl: u32,
}

impl EtcdArgs {
    fn config(&self) -> Result<Option<rustvlan::etcd::EtcdConfig>, String> {
        let endpoints: Vec<String> = self.etcd_endpoints.iter().filter(|e| !e.is_empty()).cloned().collect();
        if endpoints.is_empty() {
            return Ok(None);
        }
        let host_id = if self.host_id.is_empty() {
            std::fs::read_to_string("/etc/machine-id")
                .map(|id| id.trim().to_string())
                .map_err(|e| format!("no --host-id, and /etc/machine-id cannot be read ({e}): give --host-id"))?
        } else {
            self.host_id.clone()
        };
        if host_id.is_empty() || host_id.contains('/') || host_id.len() > 64 {
            return Err(format!("--host-id {host_id:?} must be 1 to 64 characters without '/'"));
        }
        Ok(Some(rustvlan::etcd::EtcdConfig {
            endpoints,
            prefix: self.etcd_prefix.clone(),
            host_id,
            host_ttl: self.etcd_host_ttl,
            ca: self.etcd_ca.clone(),
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
        }))
    }

    /// For the commands that need etcd.
    fn required(&self) -> anyhow::Result<rustvlan::etcd::EtcdConfig> {
        self.config()
            .map_err(anyhow::Error::msg)?
            .ok_or_else(|| anyhow::anyhow!("give --etcd-endpoints (or RUSTVLAN_ETCD_ENDPOINTS)"))
    }
}

/// Where the plugin answers, and its store for when it does not.
#[derive(clap::Args)]
struct Location {
    #[arg(long, env = "RUSTVLAN_SOCKET", default_value = "/run/docker/plugins/rustvlan.sock")]
    socket: PathBuf,
    #[arg(long, env = "RUSTVLAN_STATE_DIR", default_value = "/var/lib/rustvlan")]
    state_dir: PathBuf,
}

/// Logging set up, and the arguments checked and turned into the server's config.
fn serve_config(args: ServeArgs) -> Result<ServeConfig, String> {
    let ServeArgs {
        socket,
        extra_socket,
        dhcp_socket,
        state_dir,
        log_level,
        default_pool,
        default_pool_size,
        reclaim_after,
        metrics_listen,
        etcd,
    } = args;
    // At debug and below, every request's span also logs how long it was busy and
    // how long it waited when it closes.
    let span_events = if log_level >= tracing::Level::DEBUG {
        tracing_subscriber::fmt::format::FmtSpan::CLOSE
    } else {
        tracing_subscriber::fmt::format::FmtSpan::NONE
    };
    tracing_subscriber::fmt()
        .with_max_level(log_level)
        .with_span_events(span_events)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .init();
    let etcd = etcd.config()?;
    if default_pool_size < default_pool.prefix() {
        return Err(format!(
            "--default-pool-size /{default_pool_size} is larger than --default-pool {default_pool}"
        ));
    }
    let extra_socket = Some(PathBuf::from(extra_socket)).filter(|p| !p.as_os_str().is_empty());
    let dhcp_socket = match dhcp_socket.as_str() {
        "none" => None,
        "" => Some(
            extra_socket
                .as_ref()
                .unwrap_or(&socket)
                .with_file_name("rustvlan-dhcp.sock"),
        ),
        path => Some(PathBuf::from(path)),
    };
    Ok(ServeConfig {
        socket,
        extra_socket,
        dhcp_socket,
        reclaim_after,
        state_dir,
        pool_defaults: PoolDefaults {
            v4_range: default_pool,
            v4_prefix: default_pool_size,
        },
        metrics_listen: metrics_listen.and_then(|m| m.0),
        etcd,
    })
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => match serve_config(args) {
            Ok(config) => runtime().and_then(|rt| rt.block_on(serve(config))),
            Err(e) => {
                eprintln!("rustvlan: {e}");
                return ExitCode::from(2);
            }
        },
        Command::State { at, json } => {
            runtime().and_then(|rt| rt.block_on(rustvlan::cli::show_state(&at.socket, &at.state_dir, json)))
        }
        Command::Status { at, json } => {
            let checked =
                runtime().and_then(|rt| rt.block_on(rustvlan::cli::show_status(&at.socket, &at.state_dir, json)));
            return match checked {
                Ok(false) => ExitCode::SUCCESS,
                Ok(true) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("rustvlan: {e:#}");
                    ExitCode::from(2)
                }
            };
        }
        Command::Metrics { socket } => runtime().and_then(|rt| rt.block_on(rustvlan::cli::show_metrics(&socket))),
        Command::Hosts { etcd, json } => etcd
            .required()
            .and_then(|c| runtime().and_then(|rt| rt.block_on(rustvlan::cli::show_hosts(&c, json)))),
        Command::Reclaim { etcd, dead_host } => etcd
            .required()
            .and_then(|c| runtime().and_then(|rt| rt.block_on(rustvlan::cli::reclaim_host(&c, &dead_host)))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rustvlan: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--metrics-listen`: an address and port, or empty for none (a managed plugin's
/// settings can only empty a variable).
#[derive(Clone)]
struct MetricsListen(Option<std::net::SocketAddr>);

fn parse_listen(text: &str) -> Result<MetricsListen, String> {
    if text.is_empty() {
        return Ok(MetricsListen(None));
    }
    text.parse().map(|a| MetricsListen(Some(a))).map_err(|_| {
        format!("{text:?} is not an address and port like 127.0.0.1:9477 or [::1]:9477 (a host name is not taken)")
    })
}

/// `90`, `90s`, `10m`, `1h`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 10m or 1h"))?;
    let seconds = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{text:?} is not a duration like 90s, 10m or 1h")),
    };
    Ok(Duration::from_secs(seconds))
}

/// glibc gives each thread that allocates under contention an arena of its own; with
/// tokio's blocking threads that is many half-empty heaps and a peak well above what is
/// live (bench P5: 33 MiB against 30 while creating 10 000 endpoints). Two arenas, one per
/// worker, keep the peak near the live size.
fn limit_malloc_arenas() {
    // SAFETY: mallopt only sets an allocator parameter; it is called before any thread
    // is started, so no allocation runs concurrently, and M_ARENA_MAX accepts any
    // positive value. A zero return (refused) leaves glibc's default, which is harmless.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // Two workers: the work is netlink and fsync waits, not CPU.
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}
