//! A [`Kernel`] that counts and times every operation of the kernel it wraps, for the
//! `rustvlan_link_operations_*` metrics.

use std::future::Future;
use std::ops::Deref;
use std::path::Path;
use std::time::Instant;

use ipnetwork::IpNetwork;

use super::{ChildLink, HostRoute, KResult, Kernel, LinkInfo};
use crate::metrics::{LinkOp, LinkOpMetrics};
use crate::model::VlanProtocol;

pub struct Metered<K> {
    inner: K,
    metrics: LinkOpMetrics,
}

impl<K> Metered<K> {
    pub fn new(inner: K, metrics: LinkOpMetrics) -> Self {
        Metered { inner, metrics }
    }
}

/// The wrapped kernel, for tests that look at the fake one.
impl<K> Deref for Metered<K> {
    type Target = K;
    fn deref(&self) -> &K {
        &self.inner
    }
}

impl<K: Kernel> Metered<K> {
    async fn timed<T>(&self, op: LinkOp, call: impl Future<Output = KResult<T>>) -> KResult<T> {
        let started = Instant::now();
        let result = call.await;
        let outcome = match &result {
            Ok(_) => Ok(()),
            Err(e) => Err(e.errno),
        };
        self.metrics.observe(op, outcome, started.elapsed());
        result
    }
}

impl<K: Kernel> Kernel for Metered<K> {
    async fn link(&self, name: &str) -> KResult<Option<LinkInfo>> {
        self.timed(LinkOp::Get, self.inner.link(name)).await
    }

    async fn links(&self) -> KResult<Vec<LinkInfo>> {
        self.timed(LinkOp::Dump, self.inner.links()).await
    }

    async fn links_in(&self, netns: &Path) -> KResult<Option<Vec<LinkInfo>>> {
        self.timed(LinkOp::DumpNamespace, self.inner.links_in(netns)).await
    }

    async fn add_child(&self, link: &ChildLink) -> KResult<()> {
        self.timed(LinkOp::AddChild, self.inner.add_child(link)).await
    }

    async fn add_vlan(&self, name: &str, base_index: u32, id: u16, protocol: VlanProtocol, group: u32) -> KResult<()> {
        self.timed(
            LinkOp::AddVlan,
            self.inner.add_vlan(name, base_index, id, protocol, group),
        )
        .await
    }

    async fn add_dummy(&self, name: &str, mtu: Option<u32>, group: u32) -> KResult<()> {
        self.timed(LinkOp::AddDummy, self.inner.add_dummy(name, mtu, group))
            .await
    }

    async fn delete(&self, index: u32) -> KResult<bool> {
        self.timed(LinkOp::Delete, self.inner.delete(index)).await
    }

    async fn delete_links(&self, indices: &[u32], trash_group: u32) -> KResult<()> {
        self.timed(LinkOp::DeleteBatch, self.inner.delete_links(indices, trash_group))
            .await
    }

    async fn ready_shim(&self, index: u32, parent_index: u32) -> KResult<()> {
        self.timed(LinkOp::Set, self.inner.ready_shim(index, parent_index))
            .await
    }

    async fn addresses(&self, index: u32) -> KResult<Vec<IpNetwork>> {
        self.timed(LinkOp::Addresses, self.inner.addresses(index)).await
    }

    async fn add_address(&self, index: u32, address: IpNetwork) -> KResult<()> {
        self.timed(LinkOp::AddAddress, self.inner.add_address(index, address))
            .await
    }

    async fn delete_address(&self, index: u32, address: IpNetwork) -> KResult<bool> {
        self.timed(LinkOp::DeleteAddress, self.inner.delete_address(index, address))
            .await
    }

    async fn host_routes(&self) -> KResult<Vec<HostRoute>> {
        self.timed(LinkOp::Routes, self.inner.host_routes()).await
    }

    async fn add_route(&self, route: &HostRoute) -> KResult<()> {
        self.timed(LinkOp::AddRoute, self.inner.add_route(route)).await
    }

    async fn delete_route(&self, route: &HostRoute) -> KResult<bool> {
        self.timed(LinkOp::DeleteRoute, self.inner.delete_route(route)).await
    }
}
