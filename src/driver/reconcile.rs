//! Start-up reconcile: the kernel is brought in line with the records (orphan links
//! deleted, missing parents re-made), and the kernel's view of the records for
//! `rustvlan state`.

use std::collections::BTreeSet;

use super::Driver;
use crate::drift::{HostView, KernelView, Recorded};
use crate::error::Result;
use crate::kernel::{Kernel, LinkInfo};
use crate::model::{ParentKind, ParentRecord};

/// The report of a start-up reconcile, logged and kept for `rustvlan state`.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ReconcileReport {
    pub orphan_links_deleted: Vec<String>,
    pub orphan_parents_deleted: Vec<String>,
    pub parents_recreated: Vec<String>,
    pub parents_missing: Vec<String>,
    pub endpoints_without_host_link: usize,
    pub pending_deletes_finished: usize,
    pub host_access: super::host_access::HostAccessReconcile,
}

/// The start-up reconcile's work, decided under the state lock.
struct ReconcilePlan {
    /// Links this store marked that no record owns.
    orphans: Vec<LinkInfo>,
    orphan_parents: Vec<LinkInfo>,
    /// Parents rustvlan made that are gone, outer VLANs first.
    missing_parents: Vec<ParentRecord>,
    without_link: usize,
}

impl<K: Kernel> Driver<K> {
    /// Start-up: delete links this store marked but no record owns (crash leftovers),
    /// re-make parents rustvlan made that are missing (host reboot), and count endpoints
    /// whose link is not in this namespace (their containers may still run).
    pub async fn reconcile(&self) -> Result<ReconcileReport> {
        let links = self.kernel.links().await?;
        let mut report = ReconcileReport::default();
        let ReconcilePlan {
            orphans,
            orphan_parents,
            missing_parents,
            without_link,
        } = self.reconcile_plan(&links);
        // Deletes queued before a crash.
        report.pending_deletes_finished = self.process_pending().await?;
        for link in orphans {
            self.delete_quietly(link.index, &link.name).await;
            report.orphan_links_deleted.push(link.name);
        }
        for link in orphan_parents {
            self.delete_quietly(link.index, &link.name).await;
            report.orphan_parents_deleted.push(link.name);
        }
        for parent in missing_parents {
            match self.remake_parent(&parent).await {
                Ok(()) => report.parents_recreated.push(parent.name),
                Err(e) => {
                    tracing::warn!(parent = %parent.name, "cannot re-make missing parent: {e}");
                    report.parents_missing.push(parent.name);
                }
            }
        }
        report.endpoints_without_host_link = without_link;
        match self.reconcile_host_access(&links).await {
            Ok(done) => report.host_access = done,
            Err(e) => tracing::warn!("host access not reconciled: {e}"),
        }
        for (action, n) in [
            ("orphan_link_deleted", report.orphan_links_deleted.len()),
            ("orphan_parent_deleted", report.orphan_parents_deleted.len()),
            ("parent_recreated", report.parents_recreated.len()),
            ("parent_missing", report.parents_missing.len()),
            ("pending_delete_finished", report.pending_deletes_finished),
        ] {
            self.metrics.count_reconcile(action, n);
        }
        tracing::info!(
            orphan_links_deleted = ?report.orphan_links_deleted,
            orphan_parents_deleted = ?report.orphan_parents_deleted,
            parents_recreated = ?report.parents_recreated,
            parents_missing = ?report.parents_missing,
            endpoints_without_host_link = report.endpoints_without_host_link,
            pending_deletes_finished = report.pending_deletes_finished,
            host_access = ?report.host_access,
            "reconciled with the kernel"
        );
        Ok(report)
    }

    /// What start-up must do, read from the records and the host's links.
    fn reconcile_plan(&self, links: &[LinkInfo]) -> ReconcilePlan {
        let state = self.state();
        let names: BTreeSet<&str> = links.iter().map(|l| l.name.as_str()).collect();
        let recorded = Recorded {
            link_group: self.group,
            networks: &state.networks,
            endpoints: &state.endpoints,
            parents: &state.parents,
            pending_deletes: &state.pending,
            shims: super::host_access::expected_shims(state.networks.values()),
        };
        let ours = || links.iter().filter(|l| self.is_ours(l));
        let children = ours().filter(|l| l.kind.is_child()).map(|l| l.name.as_str());
        let parents = ours().filter(|l| !l.kind.is_child()).map(|l| l.name.as_str());
        let orphaned: BTreeSet<&str> = recorded.orphans(children, parents).into_iter().collect();
        let (orphans, orphan_parents): (Vec<LinkInfo>, Vec<LinkInfo>) = ours()
            .filter(|l| orphaned.contains(l.name.as_str()))
            .cloned()
            .partition(|l| l.kind.is_child());
        let mut missing: Vec<ParentRecord> = state
            .parents
            .values()
            .filter(|p| !names.contains(p.name.as_str()))
            .cloned()
            .collect();
        // A QinQ outer VLAN before the inner ones made on it.
        let missing_names: BTreeSet<String> = missing.iter().map(|p| p.name.clone()).collect();
        missing.sort_by_key(|p| matches!(&p.kind, ParentKind::Vlan { base, .. } if missing_names.contains(base)));
        let without = state
            .endpoints
            .values()
            .filter(|e| !names.contains(e.link_name.as_str()))
            .count();
        ReconcilePlan {
            orphans,
            orphan_parents,
            missing_parents: missing,
            without_link: without,
        }
    }

    /// Makes a parent rustvlan made again (after a reboot), as it was recorded.
    async fn remake_parent(&self, parent: &ParentRecord) -> std::result::Result<(), String> {
        match &parent.kind {
            ParentKind::Vlan { base, id, protocol } => match self.kernel.link(base).await {
                Ok(Some(b)) => self
                    .kernel
                    .add_vlan(&parent.name, b.index, *id, *protocol, self.group)
                    .await
                    .map_err(|e| e.to_string()),
                Ok(None) => Err(format!("its base interface {base} does not exist")),
                Err(e) => Err(e.to_string()),
            },
            ParentKind::Dummy => {
                let mtu = self.state().networks_on_parent(&parent.name).find_map(|n| n.mtu);
                self.kernel
                    .add_dummy(&parent.name, mtu, self.group)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// What the kernel shows of rustvlan's records now, for `rustvlan state`.
    pub async fn kernel_view(&self) -> KernelView {
        let links = match self.kernel.links().await {
            Ok(l) => l,
            Err(e) => return KernelView::Failed { error: e.to_string() },
        };
        let names: BTreeSet<&str> = links.iter().map(|l| l.name.as_str()).collect();
        let state = self.state();
        KernelView::Seen(HostView::of(&names, state.endpoints.values(), state.networks.values()))
    }
}
