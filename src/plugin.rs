//! The plugin: state, store and kernel together, and `commit`, through which every
//! request's plan is persisted and applied. The requests themselves live in
//! [`crate::driver`] (NetworkDriver) and [`crate::ipam`] (IpamDriver).

use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::kernel::{Kernel, Metered};
use crate::metrics::{LinkOpMetrics, Metrics};
use crate::model::EndpointRecord;
use crate::state::{Change, State};
use crate::store::Journal;

pub struct Plugin<K> {
    state: Mutex<State>,
    /// Where committed changes go: the sled store, or memory in unit tests.
    pub(crate) journal: Arc<dyn Journal>,
    /// Every link operation is counted and timed (see [`crate::metrics`]).
    pub(crate) kernel: Metered<K>,
    pub(crate) metrics: Metrics,
    /// CreateNetwork and DeleteNetwork make and remove parents; they take this for
    /// writing so that no Join builds a child on a parent being removed. Endpoint work
    /// takes it for reading and runs concurrently.
    pub(crate) topology: tokio::sync::RwLock<()>,
    /// The group number that marks this store's links (see [`crate::kernel::LinkInfo::group`]).
    pub(crate) group: u32,
    pub(crate) sweep_marks: Mutex<crate::ipam::reclaim::SweepMarks>,
    /// Deletes queued links in the background (see [`crate::driver::LinkReaper`]).
    pub(crate) reaper: crate::driver::LinkReaper,
    /// Shared pools through etcd, when `--etcd-endpoints` is given.
    pub(crate) shared: Option<Arc<crate::ipam::SharedPlans>>,
    /// Parent name -> interface index, so that Join costs one netlink round trip.
    pub(crate) parent_indexes: Mutex<std::collections::HashMap<String, u32>>,
    /// The DHCP client of `rustvlan-dhcp` pools.
    pub(crate) dhcp: crate::dhcp::Dhcp,
    /// When each `rustvlan-dhcp` pool was made (seq -> instant), to keep two networks
    /// being created at once from claiming each other's pool.
    pub(crate) dhcp_pools_made: Mutex<std::collections::HashMap<u64, std::time::Instant>>,
}

impl<K: Kernel> Plugin<K> {
    pub fn new(state: State, journal: Arc<dyn Journal>, kernel: K, group: u32) -> Self {
        let link_metrics = LinkOpMetrics::default();
        let metrics = Metrics::new(journal.metrics(), &link_metrics);
        Plugin {
            state: Mutex::new(state),
            journal,
            kernel: Metered::new(kernel, link_metrics),
            metrics,
            topology: tokio::sync::RwLock::new(()),
            group,
            sweep_marks: Mutex::new(Default::default()),
            reaper: Default::default(),
            shared: None,
            parent_indexes: Mutex::new(Default::default()),
            dhcp: Default::default(),
            dhcp_pools_made: Mutex::new(Default::default()),
        }
    }

    /// Short critical sections only: never held across an await.
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Allocates shared pools through etcd.
    pub fn with_shared(mut self, shared: crate::ipam::SharedPlans) -> Self {
        self.shared = Some(Arc::new(shared));
        self
    }

    /// The metrics in the Prometheus text format, the gauges read from the state now.
    pub fn metrics_text(&self) -> String {
        self.metrics.encode(|| self.state())
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Records where an endpoint's link went (`Some(sandbox)` at Join, None at Leave),
    /// for `rustvlan status`. A hint, not an answer dockerd relies on, so Join does not
    /// wait for the disk (an fsync would cost every container start): the change goes
    /// to disk with the next commit, the next `rustvlan state` or `status`, or the flush
    /// at shutdown. A crash before that loses only the hint (status then shows the
    /// endpoint as not joined, and does not look for its link).
    pub(crate) fn note_sandbox(&self, endpoint_id: &str, sandbox: Option<String>) {
        let mut state = self.state();
        let Some(endpoint) = state.endpoints.get(endpoint_id) else {
            return; // deleted meanwhile, or never known
        };
        if endpoint.sandbox == sandbox {
            return;
        }
        let change = Change::PutEndpoint(EndpointRecord {
            sandbox,
            ..endpoint.clone()
        });
        match self.journal.write(std::slice::from_ref(&change)) {
            Ok(_) => state.apply_owned(change),
            Err(e) => tracing::warn!("not recording where the endpoint's link went: {e:#}"),
        }
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
            let (answer, mut changes) = plan(&state)?;
            self.shared_bookkeeping(&state, &mut changes);
            let ticket = self.journal.write(&changes).map_err(|e| Error::store(&e))?;
            state.apply_all(changes);
            (answer, ticket)
        };
        Arc::clone(&self.journal)
            .sync(ticket)
            .await
            .map_err(|e| Error::store(&e))?;
        Ok(answer)
    }
}
