//! `rustvlan state`.

use std::path::Path;

use anyhow::{Context, anyhow, bail};

use crate::dump::{LinkPlace, StateDump};
use crate::model::ParentKind;
use crate::store::Store;
use crate::util::short_id;

/// Asks the running plugin for its state; with none running, reads the store itself.
pub async fn show_state(socket: &Path, state_dir: &Path, as_json: bool) -> anyhow::Result<()> {
    let dump: StateDump = match crate::client::post(socket, "/Rustvlan.State", "").await {
        Ok((200, body)) => serde_json::from_slice(&body).context("the plugin's answer is not a state dump")?,
        Ok((status, body)) => bail!("the plugin answered {status}: {}", String::from_utf8_lossy(&body)),
        Err(e) if e.downcast_ref::<std::io::Error>().is_some() => read_store(state_dir).with_context(|| {
            format!(
                "no plugin answers on {} ({e}), and reading the store failed",
                socket.display()
            )
        })?,
        Err(e) => return Err(e),
    };
    if as_json {
        println!("{}", dump.to_json_pretty());
    } else {
        print_summary(&dump);
    }
    Ok(())
}

fn read_store(state_dir: &Path) -> anyhow::Result<StateDump> {
    if !state_dir.join("db").exists() {
        return Err(anyhow!("there is no rustvlan store in {}", state_dir.display()));
    }
    let store = Store::open(state_dir)?;
    Ok(store.records()?.to_dump())
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
        let place = match state.link_place(id) {
            Some(LinkPlace::HostNamespace) => "in host namespace",
            Some(LinkPlace::Elsewhere) => "not in host namespace (inside a container, or gone)",
            None => "",
        };
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
        let kind = match &p.kind {
            ParentKind::Vlan { .. } => "vlan",
            ParentKind::Dummy => "dummy",
        };
        println!("  {name}  {kind}");
    }
}
