//! What the kernel shows of rustvlan's links and parents, beside what the records say:
//! the view that `rustvlan state` and the start-up reconcile read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum KernelView {
    Seen {
        /// Endpoint id -> where its link is.
        endpoint_links: BTreeMap<String, LinkPlace>,
        /// Parent name -> whether it exists.
        parents: BTreeMap<String, Presence>,
    },
    /// The kernel could not be asked.
    Failed { error: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkPlace {
    #[serde(rename = "in host namespace")]
    HostNamespace,
    #[serde(rename = "not in host namespace (inside a container, or gone)")]
    Elsewhere,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    Present,
    Missing,
}
