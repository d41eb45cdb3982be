//! The plugin: the ledger and the two services that share it, put together once. A
//! front-end holds a [`Plugin`] and calls the services: [`Plugin::driver`] for networks,
//! endpoints, Join and Leave, [`Plugin::ipam`] for pools and addresses.

use std::sync::Arc;

use crate::driver::Driver;
use crate::ipam::{Ipam, SharedPlans};
use crate::kernel::Kernel;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::state::State;
use crate::store::Journal;

pub struct Plugin<K> {
    pub ledger: Arc<Ledger<K>>,
    pub driver: Arc<Driver<K>>,
    pub ipam: Arc<Ipam<K>>,
}

impl<K: Kernel> Plugin<K> {
    /// `group` is the number that marks the links of this store (see
    /// [`crate::store::Loaded::link_group`]).
    pub fn new(state: State, journal: Arc<dyn Journal>, kernel: K, group: u32) -> Self {
        let ledger = Arc::new(Ledger::new(state, journal, kernel));
        Plugin {
            driver: Arc::new(Driver::new(Arc::clone(&ledger), group)),
            ipam: Arc::new(Ipam::new(Arc::clone(&ledger))),
            ledger,
        }
    }

    /// Allocates shared pools through etcd. Called while the plugin is built.
    pub fn with_shared(self, shared: SharedPlans) -> Self {
        let ipam = Arc::into_inner(self.ipam).expect("pools are made shared before the IPAM is handed out");
        Plugin {
            ipam: Arc::new(ipam.with_shared(shared)),
            ledger: self.ledger,
            driver: self.driver,
        }
    }

    pub fn metrics(&self) -> &Metrics {
        self.ledger.metrics()
    }

    pub fn metrics_text(&self) -> String {
        self.ledger.metrics_text()
    }
}
