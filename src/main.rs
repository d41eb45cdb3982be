use std::path::PathBuf;
use std::process::ExitCode;

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
    Serve {
        #[arg(long, env = "RUSTVLAN_SOCKET", default_value = "/run/docker/plugins/rustvlan.sock")]
        socket: PathBuf,
        /// Also answer on this socket. A managed plugin uses it to appear in the host's
        /// /run/docker/plugins, so that `-d rustvlan` works besides `-d rustvlan:latest`.
        /// Empty means none (a managed plugin's settings can only empty a variable).
        #[arg(long, env = "RUSTVLAN_EXTRA_SOCKET", default_value = "")]
        extra_socket: String,
        #[arg(long, env = "RUSTVLAN_STATE_DIR", default_value = "/var/lib/rustvlan")]
        state_dir: PathBuf,
        /// error, warn, info, debug or trace.
        #[arg(long, env = "RUSTVLAN_LOG_LEVEL", default_value = "info")]
        log_level: tracing::Level,
        /// Range that subnets are picked from when a network is created without --subnet.
        #[arg(long, env = "RUSTVLAN_DEFAULT_POOL", default_value = "10.123.0.0/16")]
        default_pool: Ipv4Network,
        /// Prefix length of the subnets picked from --default-pool.
        #[arg(long, env = "RUSTVLAN_DEFAULT_POOL_SIZE", default_value_t = 24, value_parser = clap::value_parser!(u8).range(1..=30))]
        default_pool_size: u8,
    },
    /// Show networks, endpoints, pools and addresses: from the running plugin if one
    /// answers on the socket, else straight from the store.
    State {
        #[arg(long, env = "RUSTVLAN_SOCKET", default_value = "/run/docker/plugins/rustvlan.sock")]
        socket: PathBuf,
        #[arg(long, env = "RUSTVLAN_STATE_DIR", default_value = "/var/lib/rustvlan")]
        state_dir: PathBuf,
        /// Print the full state as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            socket,
            extra_socket,
            state_dir,
            log_level,
            default_pool,
            default_pool_size,
        } => {
            tracing_subscriber::fmt()
                .with_max_level(log_level)
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .with_target(false)
                .init();
            if default_pool_size < default_pool.prefix() {
                eprintln!(
                    "rustvlan: --default-pool-size /{default_pool_size} is larger than --default-pool {default_pool}"
                );
                return ExitCode::from(2);
            }
            let config = ServeConfig {
                socket,
                extra_socket: Some(PathBuf::from(extra_socket)).filter(|p| !p.as_os_str().is_empty()),
                state_dir,
                pool_defaults: PoolDefaults {
                    v4_range: default_pool,
                    v4_prefix: default_pool_size,
                },
            };
            runtime().and_then(|rt| rt.block_on(serve(config)))
        }
        Command::State {
            socket,
            state_dir,
            json,
        } => runtime().and_then(|rt| rt.block_on(rustvlan::cli::show_state(&socket, &state_dir, json))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rustvlan: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // Two workers: the work is netlink and fsync waits, not CPU.
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}
