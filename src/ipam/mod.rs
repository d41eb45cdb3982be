//! IPAM: the IpamDriver requests, the pure allocator they plan with, and the sweep that
//! reclaims what dockerd forgot to release.
//!
//! A request flows: `handlers` (decode done, validate) → `allocations` (the seam where
//! a pool's allocations are decided and made durable: the local one plans with the pure
//! `allocator` and persists through [`crate::ledger::Ledger::commit`]) → answer.

mod addrset;
mod allocations;
pub mod allocator;
mod blocks;
mod handlers;
pub mod leases;
pub mod reclaim;
pub mod shared;

pub use addrset::AddressSet;
pub use allocations::{Allocations, LocalAllocations};
pub use allocator::*;
pub use shared::{PoolAllocations, SharedPlans};

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex};

use crate::kernel::Kernel;
use crate::ledger::Ledger;

/// The IPAM: the ledger, and what only the IPAM keeps.
pub struct Ipam<K> {
    ledger: Arc<Ledger<K>>,
    sweep_marks: Arc<Mutex<reclaim::SweepMarks>>,
    /// Shared pools through etcd, when `--etcd-endpoints` is given.
    pub(crate) shared: Option<Arc<SharedPlans>>,
    /// The DHCP client of `rustvlan-dhcp` pools.
    pub(crate) dhcp: crate::dhcp::Dhcp,
    /// When each `rustvlan-dhcp` pool was made (seq -> instant), to keep two networks
    /// being created at once from claiming each other's pool.
    dhcp_pools_made: Mutex<HashMap<u64, std::time::Instant>>,
}

/// The IPAM reads and commits through the ledger as if its state were the IPAM's own.
impl<K> Deref for Ipam<K> {
    type Target = Ledger<K>;
    fn deref(&self) -> &Ledger<K> {
        &self.ledger
    }
}

impl<K: Kernel> Ipam<K> {
    pub fn new(ledger: Arc<Ledger<K>>) -> Self {
        let sweep_marks = Arc::new(Mutex::new(reclaim::SweepMarks::default()));
        ledger.add_hook(Arc::new(reclaim::ForgetMarks(sweep_marks.clone())));
        Ipam {
            ledger,
            sweep_marks,
            shared: None,
            dhcp: Default::default(),
            dhcp_pools_made: Mutex::new(HashMap::new()),
        }
    }

    /// Allocates shared pools through etcd; every commit then notes the etcd claims that
    /// its releases leave to delete.
    pub fn with_shared(mut self, shared: SharedPlans) -> Self {
        self.shared = Some(Arc::new(shared));
        self.ledger.add_hook(Arc::new(shared::SharedReleaseNotes));
        self
    }
}
