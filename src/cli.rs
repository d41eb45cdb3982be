//! `rustvlan state`.

use std::path::Path;

use anyhow::{Context, anyhow, bail};
use serde_json::Value;

use crate::store::Store;

/// Asks the running plugin for its state; with none running, reads the store itself.
pub async fn show_state(socket: &Path, state_dir: &Path, as_json: bool) -> anyhow::Result<()> {
    let value = match crate::client::post(socket, "/Rustvlan.State", "").await {
        Ok((200, body)) => serde_json::from_slice(&body).context("the plugin's answer is not JSON")?,
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
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_summary(&value);
    }
    Ok(())
}

fn read_store(state_dir: &Path) -> anyhow::Result<Value> {
    if !state_dir.join("db").exists() {
        return Err(anyhow!("there is no rustvlan store in {}", state_dir.display()));
    }
    let store = Store::open(state_dir)?;
    Ok(store.records()?.to_json())
}

fn print_summary(state: &Value) {
    let empty = serde_json::Map::new();
    let map = |key: &str| state.get(key).and_then(Value::as_object).unwrap_or(&empty).clone();
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let short = |id: &str| id.chars().take(12).collect::<String>();
    let links = state
        .pointer("/kernel/endpoint_links")
        .and_then(Value::as_object)
        .cloned();

    let networks = map("networks");
    println!("NETWORKS ({})", networks.len());
    for (id, n) in &networks {
        let subnets: Vec<String> = ["ipv4", "ipv6"]
            .iter()
            .flat_map(|f| n[*f].as_array().cloned().unwrap_or_default())
            .map(|sn| s(&sn["pool"]))
            .collect();
        let mode = match n["link"]["flag"].as_str() {
            Some(flag) => format!("{} {} {flag}", s(&n["link"]["kind"]), s(&n["link"]["mode"])),
            None => format!("{} {}", s(&n["link"]["kind"]), s(&n["link"]["mode"])),
        };
        println!(
            "  {}  {mode:<22} parent {:<15} {}",
            short(id),
            s(&n["parent"]),
            subnets.join(" ")
        );
    }
    let endpoints = map("endpoints");
    println!("ENDPOINTS ({})", endpoints.len());
    for (id, e) in &endpoints {
        let address = [s(&e["ipv4"]), s(&e["ipv6"])].join(" ");
        let place = links.as_ref().and_then(|l| l.get(id)).map(s).unwrap_or_default();
        println!(
            "  {}  network {}  link {:<15} mac {:<17} {}  {place}",
            short(id),
            short(&s(&e["network_id"])),
            s(&e["link_name"]),
            s(&e["mac"]),
            address.trim()
        );
    }
    let pools = map("pools");
    println!("POOLS ({})", pools.len());
    for (id, p) in &pools {
        let count = p["addresses"].as_object().map_or(0, |a| a.len());
        println!("  {id}  {count} addresses allocated");
    }
    let pending = map("pending_deletes");
    if !pending.is_empty() {
        println!("LINKS BEING DELETED ({})", pending.len());
        for (name, p) in &pending {
            println!("  {name}  endpoint {}", short(&s(&p["endpoint_id"])));
        }
    }
    let parents = map("parents");
    println!("PARENTS MADE BY RUSTVLAN ({})", parents.len());
    for (name, p) in &parents {
        println!("  {name}  {}", s(&p["kind"]));
    }
}
