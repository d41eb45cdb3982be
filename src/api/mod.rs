//! The HTTP face of the plugin: wire types and the router.

mod router;
pub mod wire;

pub use router::{MAX_BODY, metrics_router, router};
