//! The plugin: the ledger and the two services that share it, put together once. A
//! front-end holds a [`Plugin`] and calls the services: [`Plugin::driver`] for networks,
//! endpoints, Join and Leave, [`Plugin::ipam`] for pools and addresses.

use std::sync::Arc;

use crate::driver::{Driver, NetworkSpec};
use crate::error::Result;
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

    /// CreateNetwork: what needs both services. With `host_access=on` on a shared pool
    /// the IPAM claims the host's address for this host first (released again if the
    /// network is not made); once the network is made, its aux addresses in shared pools
    /// become the LAN's reservations.
    pub async fn create_network(&self, mut spec: NetworkSpec) -> Result<()> {
        let network_id = spec.network_id.clone();
        let claim = self.driver.host_address_to_claim(&spec)?;
        if let Some(claim) = &claim {
            let address = self
                .ipam
                .allocations()
                .claim_host_address(&claim.pool_id, claim.ip)
                .await?;
            spec.host_address = Some(address);
        }
        let created = self.driver.create_network(spec.clone()).await;
        match (&created, claim, spec.host_address) {
            (Ok(()), ..) => self.ipam.reserve_aux_addresses(&network_id).await,
            (Err(_), Some(claim), Some(address)) => {
                if let Err(e) = self.ipam.release_address(&claim.pool_id, address.ip()).await {
                    tracing::warn!(%address, "the host address claimed for a network not made stays held: {e}");
                }
            }
            (Err(_), ..) => {}
        }
        created
    }

    pub fn metrics(&self) -> &Metrics {
        self.ledger.metrics()
    }

    pub fn metrics_text(&self) -> String {
        self.ledger.metrics_text()
    }
}
