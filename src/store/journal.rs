//! Where `commit` puts a request's changes: queued in order under the state lock, then
//! made durable. The sled [`Store`] in production; a [`MemoryJournal`] in unit tests,
//! which encodes and decodes every record as the store does, without a disk.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{Loaded, PoolDefaults, Records, Store, add_to_batch, decode_records, new_store_records, state_of};
use crate::metrics::StoreMetrics;
use crate::state::{Change, State};

pub type Synced = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

pub trait Journal: Send + Sync {
    /// Queues one request's changes (call it under the state lock, so that the journal's
    /// order is the state's) and returns the ticket to pass to [`Journal::sync`].
    fn write(&self, changes: &[Change]) -> anyhow::Result<u64>;
    /// Resolves once every change up to `ticket` is durable.
    fn sync(self: Arc<Self>, ticket: u64) -> Synced;
    /// Every record, as a restart would load them.
    fn records(&self) -> anyhow::Result<Records>;
    /// The group commits' metrics, for the registry.
    fn metrics(&self) -> &StoreMetrics;
}

impl Journal for Store {
    fn write(&self, changes: &[Change]) -> anyhow::Result<u64> {
        Store::write(self, changes)
    }

    fn sync(self: Arc<Self>, ticket: u64) -> Synced {
        Box::pin(async move { Store::sync(&self, ticket).await })
    }

    fn records(&self) -> anyhow::Result<Records> {
        Store::records(self)
    }

    fn metrics(&self) -> &StoreMetrics {
        Store::metrics(self)
    }
}

/// A journal in memory: durable at once, for as long as the value lives. Reopening it
/// (`load` again) is a restart that lost nothing.
#[derive(Default)]
pub struct MemoryJournal {
    records: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
    written: AtomicU64,
    metrics: StoreMetrics,
}

impl MemoryJournal {
    /// Loads the state from the records written so far, as [`Store::load`] does.
    pub fn load(&self, defaults: &PoolDefaults) -> anyhow::Result<(State, Loaded)> {
        let mut records = self.records()?;
        if records.schema == 0 {
            let mut stored = self.lock();
            for (key, value) in new_store_records(&mut records) {
                stored.insert(key.as_bytes().to_vec(), value);
            }
        }
        state_of(records, defaults)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Journal for MemoryJournal {
    fn write(&self, changes: &[Change]) -> anyhow::Result<u64> {
        let mut stored = self.lock();
        let mut batch = BTreeMap::new();
        for change in changes {
            add_to_batch(&mut batch, change, |prefix| {
                Ok(stored
                    .range(prefix.to_vec()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .map(|(k, _)| k.clone())
                    .collect())
            })?;
        }
        for (key, value) in batch {
            match value {
                Some(v) => stored.insert(key, v),
                None => stored.remove(&key),
            };
        }
        Ok(self.written.fetch_add(1, Ordering::SeqCst) + 1)
    }

    fn sync(self: Arc<Self>, _ticket: u64) -> Synced {
        Box::pin(std::future::ready(Ok(())))
    }

    fn records(&self) -> anyhow::Result<Records> {
        let stored = self.lock();
        decode_records(stored.iter().map(|(k, v)| Ok((k.as_slice(), v.as_slice()))))
    }

    fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }
}
