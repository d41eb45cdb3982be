//! The plugin: state, store and kernel together, and the IPAM requests.
//! The NetworkDriver requests live in [`crate::driver`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::api::wire::{
    AddressSpacesResponse, Empty, IpamCapabilities, REQUEST_ADDRESS_TYPE, REQUEST_ADDRESS_TYPE_GATEWAY,
    ReleaseAddressRequest, ReleasePoolRequest, RequestAddressRequest, RequestAddressResponse, RequestPoolRequest,
    RequestPoolResponse,
};
use crate::error::{Error, Result};
use crate::ipam::{GLOBAL_ADDRESS_SPACE, LOCAL_ADDRESS_SPACE, PoolRequest, parse_address, pool_id};
use crate::kernel::Kernel;
use crate::keys::check_option_keys;
use crate::state::{Change, State};
use crate::store::Store;

/// Bare `--ipam-opt` keys rustvlan's IPAM understands: none yet.
const IPAM_KEYS: &[&str] = &[];

pub struct Plugin<K> {
    state: Mutex<State>,
    pub(crate) store: Arc<Store>,
    pub(crate) kernel: K,
    /// CreateNetwork and DeleteNetwork make and remove parents; they take this for
    /// writing so that no Join builds a child on a parent being removed. Endpoint work
    /// takes it for reading and runs concurrently.
    pub(crate) topology: tokio::sync::RwLock<()>,
    /// The group number that marks this store's links (see [`crate::kernel::LinkInfo::group`]).
    pub(crate) group: u32,
    pub(crate) sweep_marks: Mutex<crate::driver::reclaim::SweepMarks>,
    /// Wakes the background deleter (see [`Plugin::process_pending`]).
    pub(crate) pending_wake: tokio::sync::Notify,
    /// One batch of link deletes at a time.
    pub(crate) deleting: tokio::sync::Mutex<()>,
    /// Parent name -> interface index, so that Join costs one netlink round trip.
    pub(crate) parent_indexes: Mutex<std::collections::HashMap<String, u32>>,
}

impl<K: Kernel> Plugin<K> {
    pub fn new(state: State, store: Arc<Store>, kernel: K, group: u32) -> Self {
        Plugin {
            state: Mutex::new(state),
            store,
            kernel,
            topology: tokio::sync::RwLock::new(()),
            group,
            sweep_marks: Mutex::new(Default::default()),
            pending_wake: tokio::sync::Notify::new(),
            deleting: tokio::sync::Mutex::new(()),
            parent_indexes: Mutex::new(Default::default()),
        }
    }

    /// Short critical sections only: never held across an await.
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Plans against the current state, persists the plan's changes, applies them in
    /// memory, and returns once they are on disk. A plan that fails changes nothing.
    ///
    /// A plan with no changes still waits for earlier writes to be durable, because its
    /// answer may depend on them (a repeated release answered before the first one is on
    /// disk would otherwise be a lie after a crash).
    pub(crate) async fn commit<T>(&self, plan: impl FnOnce(&State) -> Result<(T, Vec<Change>)>) -> Result<T> {
        let (answer, ticket) = {
            let mut state = self.state();
            let (answer, changes) = plan(&state)?;
            let ticket = self.store.write(&changes).map_err(|e| Error::store(&e))?;
            state.apply_all(changes);
            (answer, ticket)
        };
        self.store.sync(ticket).await.map_err(|e| Error::store(&e))?;
        Ok(answer)
    }

    /// The store's records as `rustvlan state --json` prints them, plus what the kernel
    /// shows of them now. Read under the state lock so that no request is half in.
    pub async fn dump(&self) -> Result<serde_json::Value> {
        let mut value = {
            let state = self.state();
            let mut value = self.store.records().map_err(|e| Error::store(&e))?.to_json();
            let mut unbound: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (seq, ip) in crate::driver::reclaim::unbound_addresses(&state) {
                if let Some(pool) = state.ipam.pool(seq) {
                    unbound.entry(pool.id()).or_default().push(ip.to_string());
                }
            }
            value["unbound_addresses"] = serde_json::json!(unbound);
            value
        };
        value["kernel"] = self.kernel_view().await;
        Ok(value)
    }

    /// Deletes queued links in batches until the process ends. A batch starts once
    /// deletes stop coming for a moment (QUIET), or has waited long enough (MAX_DELAY),
    /// or is big enough (MAX_BATCH): each batch costs the kernel one RCU grace period
    /// under its RTNL lock, however many links it holds, and holds up every other link
    /// operation on the host meanwhile.
    pub async fn run_deleter(self: Arc<Self>) {
        const QUIET: Duration = Duration::from_millis(300);
        const MAX_DELAY: Duration = Duration::from_millis(1000);
        const MAX_BATCH: usize = 64;
        loop {
            self.pending_wake.notified().await;
            let first = Instant::now();
            while self.state().pending.len() < MAX_BATCH && first.elapsed() < MAX_DELAY {
                let left = MAX_DELAY.saturating_sub(first.elapsed());
                if tokio::time::timeout(QUIET.min(left), self.pending_wake.notified())
                    .await
                    .is_err()
                {
                    break;
                }
            }
            if let Err(e) = self.process_pending().await {
                tracing::warn!("deleting queued links failed: {e}; retrying at the next delete or start-up");
            }
        }
    }

    // ------------------------------------------------------------- IpamDriver

    pub fn ipam_capabilities(&self) -> IpamCapabilities {
        // Allocations are durable, so dockerd need not replay pools and addresses after
        // its restarts (replays were fragile in dockerd 20.10).
        IpamCapabilities {
            requires_mac_address: false,
            requires_request_replay: false,
        }
    }

    pub fn address_spaces(&self) -> AddressSpacesResponse {
        AddressSpacesResponse {
            local: LOCAL_ADDRESS_SPACE,
            global: GLOBAL_ADDRESS_SPACE,
        }
    }

    pub async fn request_pool(&self, req: RequestPoolRequest) -> Result<RequestPoolResponse> {
        if let Some(options) = &req.options {
            check_option_keys("IPAM option", options.keys().map(String::as_str), IPAM_KEYS)?;
        }
        let request = PoolRequest {
            address_space: req.address_space,
            pool: req.pool.unwrap_or_default(),
            sub_pool: req.sub_pool.unwrap_or_default(),
            options: req.options.unwrap_or_default(),
            v6: req.v6.unwrap_or(false),
        };
        let record = self
            .commit(|state| {
                let (record, changes) = state.ipam.plan_request_pool(&request)?;
                Ok((record, changes.into_iter().map(Change::Ipam).collect()))
            })
            .await?;
        tracing::info!(pool_id = %pool_id(&record), "pool allocated");
        Ok(RequestPoolResponse {
            pool_id: pool_id(&record),
            pool: record.pool.to_string(),
            data: BTreeMap::new(),
        })
    }

    pub async fn release_pool(&self, req: ReleasePoolRequest) -> Result<Empty> {
        let released = self
            .commit(|state| {
                let changes = state.ipam.plan_release_pool(&req.pool_id)?;
                Ok((!changes.is_empty(), changes.into_iter().map(Change::Ipam).collect()))
            })
            .await?;
        if released {
            tracing::info!(pool_id = %req.pool_id, "pool released");
        } else {
            tracing::debug!(pool_id = %req.pool_id, "release of an unknown pool: nothing to do");
        }
        Ok(Empty {})
    }

    pub async fn request_address(&self, req: RequestAddressRequest) -> Result<RequestAddressResponse> {
        let address = match req.address.as_deref().filter(|a| !a.is_empty()) {
            Some(text) => Some(parse_address("Address", text)?),
            None => None,
        };
        let gateway = req
            .options
            .as_ref()
            .and_then(|o| o.get(REQUEST_ADDRESS_TYPE))
            .is_some_and(|t| t == REQUEST_ADDRESS_TYPE_GATEWAY);
        let cidr = self
            .commit(|state| {
                let (cidr, changes) = state.ipam.plan_request_address(&req.pool_id, address, gateway)?;
                Ok((cidr, changes.into_iter().map(Change::Ipam).collect()))
            })
            .await?;
        tracing::debug!(pool_id = %req.pool_id, address = %cidr, gateway, "address allocated");
        Ok(RequestAddressResponse {
            address: cidr.to_string(),
            data: BTreeMap::new(),
        })
    }

    pub async fn release_address(&self, req: ReleaseAddressRequest) -> Result<Empty> {
        let ip = parse_address("Address", &req.address)?;
        self.commit(|state| {
            let changes = state.ipam.plan_release_address(&req.pool_id, ip)?;
            if changes.is_empty() {
                tracing::debug!(pool_id = %req.pool_id, address = %ip, "release of an address not allocated: nothing to do");
            }
            Ok(((), changes.into_iter().map(Change::Ipam).collect()))
        })
        .await?;
        Ok(Empty {})
    }
}
