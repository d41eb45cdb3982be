//! The link reaper: DeleteEndpoint and DeleteNetwork queue links (a store record, so
//! start-up finishes the queue after a crash), and a background task deletes them in
//! batches once deletes pause, one RCU grace period per batch.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::Driver;
use crate::error::{Error, Result};
use crate::kernel::{Kernel, LinkInfo};
use crate::state::Change;

/// The wake-up and the batch lock of the link delete queue. The queue itself is the
/// store's pending-delete records, so that start-up finishes it after a crash.
#[derive(Default)]
pub struct LinkReaper {
    /// Rung by every delete that queues a link.
    wake: Notify,
    /// One batch at a time; links queued meanwhile wait for the next.
    batch: tokio::sync::Mutex<()>,
}

impl LinkReaper {
    /// A link was queued: the background deleter starts its batch once deletes pause.
    pub fn queued(&self) {
        self.wake.notify_one();
    }
}

impl<K: Kernel> Driver<K> {
    /// Deletes queued links in batches until the process ends. A batch starts once
    /// deletes stop coming for a moment (QUIET), or has waited long enough (MAX_DELAY),
    /// or is big enough (MAX_BATCH): each batch costs the kernel one RCU grace period
    /// under its RTNL lock, however many links it holds, and holds up every other link
    /// operation on the host meanwhile.
    pub async fn run_deleter(self: Arc<Self>) {
        const QUIET: Duration = Duration::from_millis(300);
        const MAX_DELAY: Duration = Duration::from_millis(1000);
        const MAX_BATCH: usize = 64;
        loop {
            self.reaper.wake.notified().await;
            let first = Instant::now();
            while self.state().pending.len() < MAX_BATCH && first.elapsed() < MAX_DELAY {
                let left = MAX_DELAY.saturating_sub(first.elapsed());
                if tokio::time::timeout(QUIET.min(left), self.reaper.wake.notified())
                    .await
                    .is_err()
                {
                    break;
                }
            }
            if let Err(e) = self.process_pending().await {
                tracing::warn!("deleting queued links failed: {e}; retrying at the next delete or start-up");
            }
        }
    }

    /// The group links are moved to just before a batched delete: this store's own.
    fn trash_group(&self) -> u32 {
        self.group ^ 1
    }

    /// Deletes the links queued by DeleteEndpoint and DeleteNetwork, all at once, and
    /// forgets them. A queued link that is not in this namespace (it died with its
    /// container) needs nothing. One batch runs at a time; links queued meanwhile wait
    /// for the next, which is how concurrent deletes share one RCU grace period.
    pub async fn process_pending(&self) -> Result<usize> {
        let _one_batch = self.reaper.batch.lock().await;
        let queued: Vec<String> = self.state().pending.keys().cloned().collect();
        if queued.is_empty() {
            return Ok(0);
        }
        let names: HashSet<&str> = queued.iter().map(String::as_str).collect();
        let trash = self.trash_group();
        let links = self.kernel.links().await?;
        let doomed: Vec<&LinkInfo> = links
            .iter()
            .filter(|l| names.contains(l.name.as_str()) && (self.is_ours(l) || l.group == trash))
            .collect();
        for l in links
            .iter()
            .filter(|l| names.contains(l.name.as_str()) && !doomed.iter().any(|d| d.index == l.index))
        {
            tracing::warn!(link = %l.name, "a link with a deleted endpoint's name is not rustvlan's; left in place");
        }
        // Group delete only if the trash group holds nothing else (another store whose
        // group number happens to be ours ^ 1).
        let intruders = links
            .iter()
            .any(|l| l.group == trash && !names.contains(l.name.as_str()));
        if !doomed.is_empty() {
            let indices: Vec<u32> = doomed.iter().map(|l| l.index).collect();
            let batched = if intruders {
                Err(Error::kernel("the trash group holds other links"))
            } else {
                self.kernel.delete_links(&indices, trash).await.map_err(Error::from)
            };
            if let Err(e) = batched {
                tracing::debug!("batched delete not possible ({e}); deleting one by one");
                for l in &doomed {
                    self.delete_quietly(l.index, &l.name).await;
                }
            }
        }
        self.commit(|_| Ok(((), queued.iter().cloned().map(Change::DelPending).collect())))
            .await?;
        tracing::debug!(
            deleted = doomed.len(),
            queued = queued.len(),
            "queued link deletes done"
        );
        Ok(doomed.len())
    }

    pub(super) async fn delete_quietly(&self, index: u32, name: &str) {
        match self.kernel.delete(index).await {
            Ok(true) => tracing::debug!(link = name, "link deleted"),
            Ok(false) => {}
            Err(e) => tracing::warn!(link = name, "cannot delete link: {e}; start-up reconcile will retry"),
        }
    }
}
