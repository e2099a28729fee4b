//! Fan-out of committed changes to prefix watchers, shared by the local store implementations.

use futures::stream;
use tokio::sync::broadcast;

use super::{StoreError, WatchEvent, WatchStream};

/// How many events a watcher may fall behind before it is told it lagged.
const WATCH_BUFFER: usize = 4096;

/// Publishes committed events to every live watcher; each watcher filters by its prefix.
#[derive(Debug)]
pub(crate) struct WatchHub {
    tx: broadcast::Sender<WatchEvent>,
}

impl Default for WatchHub {
    fn default() -> Self {
        Self::new()
    }
}

impl WatchHub {
    pub(crate) fn new() -> Self {
        let (tx, _) = broadcast::channel(WATCH_BUFFER);
        WatchHub { tx }
    }

    /// True if anyone watches (so writers can skip building events nobody reads).
    pub(crate) fn has_watchers(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// Publishes events; the caller holds its write lock so that order equals revision order.
    pub(crate) fn publish(&self, events: Vec<WatchEvent>) {
        for event in events {
            // An error only means there is no watcher at the moment.
            let _ = self.tx.send(event);
        }
    }

    pub(crate) fn subscribe(&self, prefix: &str) -> WatchStream {
        let rx = self.tx.subscribe();
        let prefix = prefix.to_owned();
        Box::pin(stream::unfold(
            (rx, prefix, false),
            |(mut rx, prefix, done)| async move {
                if done {
                    return None;
                }
                loop {
                    match rx.recv().await {
                        Ok(event) if event.key().starts_with(&prefix) => {
                            return Some((Ok(event), (rx, prefix, false)));
                        }
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            // Report once and end: the caller must list again anyway.
                            return Some((
                                Err(StoreError::WatchLagged { missed }),
                                (rx, prefix, true),
                            ));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            },
        ))
    }
}
