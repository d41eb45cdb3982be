//! The HTTP face of the plugin: wire types and the router.

pub mod driver;
mod ipam;
mod router;
pub mod wire;

pub use router::{MAX_BODY, dhcp_router, metrics_router, router};
