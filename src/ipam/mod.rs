//! IPAM: the IpamDriver requests, the pure allocator they plan with, and the sweep that
//! reclaims what dockerd forgot to release.
//!
//! A request flows: `handlers` (decode done, validate) → `allocations` (the seam where
//! a pool's allocations are decided and made durable: the local one plans with the pure
//! `allocator` and persists through [`crate::plugin::Plugin::commit`]) → answer.

mod addrset;
mod allocations;
pub mod allocator;
mod handlers;
pub mod leases;
pub mod reclaim;
pub mod shared;

pub use addrset::AddressSet;
pub use allocations::{Allocations, LocalAllocations};
pub use allocator::*;
pub use shared::{PoolAllocations, SharedPlans};
