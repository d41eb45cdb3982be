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
        /// How long an address in a rustvlan network's pool may stay unused by any
        /// endpoint, gateway or aux address before it is released (dockerd skips
        /// releases it cannot deliver). `0` releases them once, at start-up.
        #[arg(long, env = "RUSTVLAN_RECLAIM_AFTER", default_value = "10m", value_parser = parse_duration)]
        reclaim_after: Duration,
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
            reclaim_after,
        } => {
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
            if default_pool_size < default_pool.prefix() {
                eprintln!(
                    "rustvlan: --default-pool-size /{default_pool_size} is larger than --default-pool {default_pool}"
                );
                return ExitCode::from(2);
            }
            let config = ServeConfig {
                socket,
                extra_socket: Some(PathBuf::from(extra_socket)).filter(|p| !p.as_os_str().is_empty()),
                reclaim_after,
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // Two workers: the work is netlink and fsync waits, not CPU.
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}
