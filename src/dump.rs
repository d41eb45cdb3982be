//! The state dump: what `rustvlan state --json` prints, what `POST /Rustvlan.State`
//! answers, and what the CLI's table and the tests read. One serializable type, so that
//! nobody indexes JSON by string.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::{IpNetwork, Ipv6Network};
use serde::{Deserialize, Serialize};

pub use crate::drift::{KernelView, LinkPlace, Presence};
use crate::error::{Error, Result};
use crate::ipam::allocator::pool_id;
use crate::kernel::Kernel;
use crate::model::{EndpointRecord, NetworkRecord, ParentRecord, PendingDelete};
use crate::plugin::Plugin;
use crate::store::Records;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateDump {
    pub schema: u64,
    /// The sequence number the next pool gets: pool ids are never reused.
    pub next_pool_seq: u64,
    pub default_v6_range: Option<Ipv6Network>,
    /// The IFLA_GROUP number that marks this store's links.
    pub link_group: u32,
    pub networks: BTreeMap<String, NetworkRecord>,
    pub endpoints: BTreeMap<String, EndpointRecord>,
    /// The parents rustvlan made (VLANs, dummies), by name.
    pub parents: BTreeMap<String, ParentRecord>,
    /// Links queued for deletion, by name.
    pub pending_deletes: BTreeMap<String, PendingDelete>,
    /// Shared addresses released here whose etcd claims are still to be deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_releases: Vec<crate::model::SharedRelease>,
    /// DHCP leases of `rustvlan-dhcp` pools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leases: Vec<crate::model::LeaseRecord>,
    /// By pool id (`rustvlan-local/10.0.0.0/24#3`).
    pub pools: BTreeMap<String, PoolDump>,
    /// Addresses recorded for a pool that no longer exists: a store bug, shown if any.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub orphan_addresses: BTreeMap<u64, Vec<IpAddr>>,
    /// Only from a running plugin: allocated addresses no endpoint, gateway or aux
    /// address uses (yet), by pool id; the reclaim sweep releases them in time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unbound_addresses: Option<BTreeMap<String, Vec<IpAddr>>>,
    /// Only from a running plugin: what the kernel shows of the records now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelView>,
    /// Only from a running plugin with `--etcd-endpoints`: shared pools' health.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<SharedDump>,
}

impl StateDump {
    /// The state as `rustvlan state --json` prints it: deterministic, readable.
    pub fn of_records(records: &Records) -> StateDump {
        let pools = records
            .pools
            .values()
            .map(|p| {
                let addresses = records
                    .addresses
                    .get(&p.seq)
                    .into_iter()
                    .flatten()
                    .map(|(ip, &gw)| (*ip, if gw { AddressUse::Gateway } else { AddressUse::Allocated }))
                    .collect();
                let dump = PoolDump {
                    address_space: p.address_space.clone(),
                    pool: p.pool,
                    sub_pool: p.sub_pool,
                    options: p.options.clone(),
                    claimed_by: p.claimed_by.clone(),
                    cursor: records.cursors.get(&p.seq).copied(),
                    addresses,
                };
                (pool_id(p), dump)
            })
            .collect();
        let orphan_addresses = records
            .addresses
            .iter()
            .filter(|(seq, _)| !records.pools.contains_key(seq))
            .map(|(seq, a)| (*seq, a.keys().copied().collect()))
            .collect();
        StateDump {
            schema: records.schema,
            next_pool_seq: records.next_pool_seq,
            default_v6_range: records.default_v6_range,
            link_group: records.link_group,
            networks: records.networks.clone(),
            endpoints: records.endpoints.clone(),
            parents: records.parents.clone(),
            pending_deletes: records.pending.clone(),
            shared_releases: records.shared_releases.values().cloned().collect(),
            leases: records.leases.values().cloned().collect(),
            pools,
            orphan_addresses,
            unbound_addresses: None,
            kernel: None,
            shared: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedDump {
    pub host_id: String,
    pub endpoints: String,
    /// Connected to etcd since start-up.
    pub connected: bool,
    /// Why etcd did not answer when this dump was made, in a sentence that starts
    /// "etcd unreachable (endpoints)"; None: it did.
    #[serde(default)]
    pub trouble: Option<String>,
    /// Addresses this host records that another host holds in etcd.
    pub conflicts: Vec<crate::ipam::shared::SharedConflict>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolDump {
    pub address_space: String,
    pub pool: IpNetwork,
    pub sub_pool: Option<IpNetwork>,
    pub options: BTreeMap<String, String>,
    /// The rustvlan network using the pool, once its CreateNetwork came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
    /// The last address handed out; the next dynamic one comes after it.
    pub cursor: Option<IpAddr>,
    pub addresses: BTreeMap<IpAddr, AddressUse>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AddressUse {
    Gateway,
    Allocated,
}

impl StateDump {
    /// Addresses allocated to containers: every pool's addresses but gateways.
    pub fn container_allocations(&self) -> usize {
        self.pools
            .values()
            .flat_map(|p| p.addresses.values())
            .filter(|u| **u == AddressUse::Allocated)
            .count()
    }

    /// The store's records alone, as `rustvlan state` reads them with no plugin running.
    pub fn records(&self) -> StateDump {
        StateDump {
            unbound_addresses: None,
            kernel: None,
            shared: None,
            ..self.clone()
        }
    }

    /// No network, endpoint, pool or parent: what a host without rustvlan networks holds.
    pub fn holds_nothing(&self) -> bool {
        self.networks.is_empty() && self.endpoints.is_empty() && self.pools.is_empty() && self.parents.is_empty()
    }

    /// Where an endpoint's link is, if the dump came from a running plugin.
    pub fn link_place(&self, endpoint_id: &str) -> Option<LinkPlace> {
        match &self.kernel {
            Some(KernelView::Seen(view)) => view.endpoint_links.get(endpoint_id).copied(),
            _ => None,
        }
    }

    /// The dump as pretty JSON, as `rustvlan state --json` prints it.
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).expect("a state dump always serializes")
    }
}

impl<K: Kernel> Plugin<K> {
    /// The store's records as `rustvlan state --json` prints them, plus what the kernel
    /// shows of them now. Read under the state lock so that no request is half in.
    pub async fn dump(&self) -> Result<StateDump> {
        // The store is read, not the memory: first let every write so far reach it (the
        // sandbox notes of Join and Leave do not wait for the disk themselves).
        self.ledger.commit(|_| Ok(((), Vec::new()))).await?;
        let mut dump = {
            let state = self.ledger.state();
            let records = self.ledger.journal.records().map_err(|e| Error::store(&e))?;
            let mut dump = StateDump::of_records(&records);
            let mut unbound: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
            for (seq, ip) in crate::ipam::reclaim::unbound_addresses(&state) {
                if let Some(pool) = state.ipam.pool(seq) {
                    unbound.entry(pool.id()).or_default().push(ip);
                }
            }
            dump.unbound_addresses = Some(unbound);
            dump
        };
        // Both at once: etcd's answer may take its 2 s when it has no quorum.
        let etcd_trouble = async {
            match &self.ipam.shared {
                Some(s) => s.trouble().await,
                None => None,
            }
        };
        let (kernel, trouble) = tokio::join!(self.driver.kernel_view(), etcd_trouble);
        dump.kernel = Some(kernel);
        dump.shared = self.ipam.shared.as_ref().map(|s| SharedDump {
            host_id: s.host().to_string(),
            endpoints: s.endpoints().to_string(),
            connected: s.is_connected(),
            trouble,
            conflicts: s.conflicts(),
        });
        Ok(dump)
    }
}
