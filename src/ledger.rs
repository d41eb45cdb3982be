//! The ledger: the state behind its lock, the journal it is written to, the kernel and
//! the metrics, and `commit`, through which every request's plan is persisted and
//! applied. The services ([`crate::driver`], [`crate::ipam`]) each hold the ledger and
//! their own rooms; [`crate::plugin`] puts them together.

use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::error::{Error, Result};
use crate::kernel::{Kernel, Metered};
use crate::metrics::{LinkOpMetrics, Metrics};
use crate::model::EndpointRecord;
use crate::state::{Change, State};
use crate::store::Journal;

pub struct Ledger<K> {
    state: Mutex<State>,
    /// Where committed changes go: the sled store, or memory in unit tests.
    pub(crate) journal: Arc<dyn Journal>,
    /// Every link operation is counted and timed (see [`crate::metrics`]).
    pub(crate) kernel: Metered<K>,
    pub(crate) metrics: Metrics,
    /// Registered by the services: each adds the changes that follow from a plan's own.
    hooks: RwLock<Vec<Arc<dyn CommitHook>>>,
}

/// Changes that follow from a plan's changes, written in the same commit (one write, one
/// fsync): a service registers one for book-keeping no plan should have to remember.
pub trait CommitHook: Send + Sync {
    /// Sees the state before the plan's `changes` apply.
    fn follow_up(&self, state: &State, changes: &[Change]) -> Vec<Change>;
}

impl<K: Kernel> Ledger<K> {
    pub fn new(state: State, journal: Arc<dyn Journal>, kernel: K) -> Self {
        let link_metrics = LinkOpMetrics::default();
        let metrics = Metrics::new(journal.metrics(), &link_metrics);
        Ledger {
            state: Mutex::new(state),
            journal,
            kernel: Metered::new(kernel, link_metrics),
            metrics,
            hooks: RwLock::new(Vec::new()),
        }
    }

    pub fn add_hook(&self, hook: Arc<dyn CommitHook>) {
        self.hooks.write().unwrap_or_else(|p| p.into_inner()).push(hook);
    }

    /// Short critical sections only: never held across an await.
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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
            for hook in self.hooks.read().unwrap_or_else(|p| p.into_inner()).iter() {
                let follow_ups = hook.follow_up(&state, &changes);
                changes.extend(follow_ups);
            }
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
