//! `rustvlan state`, `rustvlan status` and `rustvlan metrics`.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};

use crate::dump::StateDump;
use crate::kernel::NetlinkKernel;
use crate::status::{Source, StatusReport, observe};
use crate::store::Store;
use crate::util::short_id;

/// Asks the running plugin for its state; with none running, reads the store itself.
pub async fn show_state(socket: &Path, state_dir: &Path, as_json: bool) -> anyhow::Result<()> {
    let (dump, _) = load_state(socket, state_dir).await?;
    if as_json {
        println!("{}", dump.to_json_pretty());
    } else {
        print_summary(&dump);
    }
    Ok(())
}

/// The state from the running plugin, or from the store when no plugin answers.
async fn load_state(socket: &Path, state_dir: &Path) -> anyhow::Result<(StateDump, Source)> {
    match crate::client::post(socket, "/Rustvlan.State", "").await {
        Ok((200, body)) => Ok((
            serde_json::from_slice(&body).context("the plugin's answer is not a state dump")?,
            Source::Plugin,
        )),
        Ok((status, body)) => bail!("the plugin answered {status}: {}", String::from_utf8_lossy(&body)),
        Err(e) if e.downcast_ref::<std::io::Error>().is_some() => {
            let dump = read_store(state_dir).with_context(|| {
                format!(
                    "no plugin answers on {} ({e}), and reading the store failed",
                    socket.display()
                )
            })?;
            Ok((dump, Source::Store))
        }
        Err(e) => Err(e),
    }
}

/// How long `status` waits before looking again at drift it found: long enough for a
/// container start or stop under way to finish its calls.
const SECOND_LOOK: Duration = Duration::from_millis(500);

/// `rustvlan status`: prints the report; Ok(true) when there is drift.
pub async fn show_status(socket: &Path, state_dir: &Path, as_json: bool) -> anyhow::Result<bool> {
    let kernel = NetlinkKernel::connect()?;
    let look = || async {
        let (records, source) = load_state(socket, state_dir).await?;
        let seen = observe(&kernel, &records)
            .await
            .context("asking the kernel for its links")?;
        anyhow::Ok(StatusReport::build(&records, &seen, source))
    };
    let mut report = look().await?;
    if !report.drift.is_empty() {
        // Records and kernel are read one after the other: drift is only what a second
        // look confirms, so that a container starting or stopping meanwhile is not news.
        tokio::time::sleep(SECOND_LOOK).await;
        let first = report;
        report = look().await?;
        report.confirm_drift(&first);
    }
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("a status report always serializes")
        );
    } else {
        print!("{}", report.to_text());
    }
    Ok(!report.drift.is_empty())
}

/// `rustvlan metrics`: what `GET /metrics` answers on the plugin's socket.
pub async fn show_metrics(socket: &Path) -> anyhow::Result<()> {
    let (status, body) = crate::client::get(socket, "/metrics")
        .await
        .with_context(|| format!("no plugin answers on {}", socket.display()))?;
    if status != 200 {
        bail!("the plugin answered {status}: {}", String::from_utf8_lossy(&body));
    }
    print!("{}", String::from_utf8_lossy(&body));
    Ok(())
}

/// `rustvlan hosts`.
pub async fn show_hosts(config: &crate::etcd::EtcdConfig, as_json: bool) -> anyhow::Result<()> {
    let etcd = crate::etcd::Etcd::connect(config).await?;
    let hosts = etcd.hosts().await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&hosts).expect("serializes"));
        return Ok(());
    }
    println!(
        "{:<36}  {:<5}  {:<20}  {:>11}  STARTED",
        "HOST", "LIVE", "HOSTNAME", "ADDRESSES"
    );
    for h in hosts {
        let (hostname, started) = match &h.record {
            Some(r) => (r.hostname.clone(), r.started.to_string()),
            None => ("-".to_string(), "-".to_string()),
        };
        let live = if h.live { "yes" } else { "no" };
        println!(
            "{:<36}  {live:<5}  {hostname:<20}  {:>11}  {started}",
            h.id, h.allocations
        );
    }
    Ok(())
}

/// `rustvlan reclaim --host ID`.
pub async fn reclaim_host(config: &crate::etcd::EtcdConfig, host: &str) -> anyhow::Result<()> {
    let etcd = crate::etcd::Etcd::connect(config).await?;
    let released = etcd.reclaim_host(host).await?;
    println!("released {released} addresses host {host} held");
    Ok(())
}

fn read_store(state_dir: &Path) -> anyhow::Result<StateDump> {
    if !state_dir.join("db").exists() {
        return Err(anyhow!("there is no rustvlan store in {}", state_dir.display()));
    }
    let store = Store::open(state_dir)?;
    Ok(crate::dump::StateDump::of_records(&store.records()?))
}

fn print_summary(state: &StateDump) {
    let text = |v: Option<String>| v.unwrap_or_default();

    println!("NETWORKS ({})", state.networks.len());
    for (id, n) in &state.networks {
        let subnets: Vec<String> = n.subnets().map(|s| s.pool.to_string()).collect();
        println!(
            "  {}  {:<22} parent {:<15} {}",
            short_id(id),
            n.link.to_string(),
            n.parent,
            subnets.join(" ")
        );
    }
    println!("ENDPOINTS ({})", state.endpoints.len());
    for (id, e) in &state.endpoints {
        let address = [text(e.ipv4.map(|a| a.to_string())), text(e.ipv6.map(|a| a.to_string()))].join(" ");
        let place = state.link_place(id).map(|p| p.to_string()).unwrap_or_default();
        println!(
            "  {}  network {}  link {:<15} mac {:<17} {}  {place}",
            short_id(id),
            short_id(&e.network_id),
            e.link_name,
            text(e.mac.map(|m| m.to_string())),
            address.trim()
        );
    }
    println!("POOLS ({})", state.pools.len());
    for (id, p) in &state.pools {
        println!("  {id}  {} addresses allocated", p.addresses.len());
    }
    if !state.pending_deletes.is_empty() {
        println!("LINKS BEING DELETED ({})", state.pending_deletes.len());
        for (name, p) in &state.pending_deletes {
            println!("  {name}  endpoint {}", short_id(&p.endpoint_id));
        }
    }
    println!("PARENTS MADE BY RUSTVLAN ({})", state.parents.len());
    for (name, p) in &state.parents {
        println!("  {name}  {}", p.describe());
    }
}
