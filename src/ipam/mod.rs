//! IPAM: the IpamDriver requests, the pure allocator they plan with, and the sweep that
//! reclaims what dockerd forgot to release.
//!
//! A request flows: `handlers` (decode done, validate) → `allocator` (plan, pure) →
//! [`crate::plugin::Plugin::commit`] (persist, apply) → answer.

mod addrset;
mod allocator;
mod handlers;
pub mod reclaim;

pub use addrset::AddressSet;
pub use allocator::*;
