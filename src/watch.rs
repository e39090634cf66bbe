//! Discovery of new versions: a file watcher (`notify`: inotify on Linux) on the model root, with a
//! periodic rescan as fallback (a watcher can miss events, e.g. on network file systems, or fail to
//! start).
//!
//! Every event (debounced) and every poll tick runs [`Registry::reconcile_all`] on the blocking pool;
//! the registry decides what is complete, what to load and what to swap, so a burst of events during a
//! slow copy costs a few `stat` calls, never a half-loaded version. The same task releases replaced
//! snapshots once their last request is done ([`Registry::reap`], off the request path) and, on the
//! same tick, applies the reports of finished deferred verifications
//! ([`Registry::apply_verifications`]: a version whose item files fail is taken out of service). The
//! task owns the watcher and ends when aborted.

use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::registry::Registry;

/// How new versions are discovered.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// Watch the model root for changes.
    pub watch: bool,
    /// Rescan interval; `None`: no periodic rescan.
    pub poll: Option<Duration>,
    /// Quiet time after an event before rescanning (coalesces the events of one copy).
    pub debounce: Duration,
}

/// How often replaced snapshots are checked for release (see [`Registry::reap`]) and deferred
/// verification reports for application.
const REAP_EVERY: Duration = Duration::from_millis(250);

/// Loads every model now, then keeps the registry in step with the repository until aborted.
pub fn spawn(registry: Arc<Registry>, cfg: DiscoveryConfig) -> JoinHandle<()> {
    tokio::spawn(async move {
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        // Created before the first scan, so a version published during it is not missed.
        let watcher = if cfg.watch {
            start_watcher(&registry, tx)
        } else {
            None
        };
        let watching = watcher.is_some();
        reconcile(&registry).await;
        let mut reap = tokio::time::interval(REAP_EVERY);
        reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut next_poll = cfg.poll.map(|p| tokio::time::Instant::now() + p);
        loop {
            let poll_due = async {
                match next_poll {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                got = rx.recv(), if watching => {
                    if got.is_some() {
                        tokio::time::sleep(cfg.debounce).await;
                        while rx.try_recv().is_ok() {}
                        reconcile(&registry).await;
                    }
                }
                () = poll_due => {
                    next_poll = cfg.poll.map(|p| tokio::time::Instant::now() + p);
                    reconcile(&registry).await;
                }
                _ = reap.tick() => {
                    if registry.retired_count() > 0 || registry.verification_reports_pending() {
                        let r = Arc::clone(&registry);
                        let _ = tokio::task::spawn_blocking(move || {
                            r.apply_verifications();
                            r.reap()
                        })
                        .await;
                    }
                }
            }
        }
    })
}

async fn reconcile(registry: &Arc<Registry>) {
    let r = Arc::clone(registry);
    if let Err(e) = tokio::task::spawn_blocking(move || r.reconcile_all()).await {
        tracing::error!(error = %e, "model repository scan failed");
    }
}

fn start_watcher(
    registry: &Registry,
    tx: mpsc::UnboundedSender<()>,
) -> Option<notify::RecommendedWatcher> {
    let handler = move |res: notify::Result<notify::Event>| match res {
        Ok(ev) if ev.kind.is_access() => {}
        Ok(_) => {
            let _ = tx.send(());
        }
        Err(e) => {
            tracing::warn!(error = %e, "model root watcher error; polling continues");
            let _ = tx.send(());
        }
    };
    let mut w = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the file watcher; relying on polling");
            return None;
        }
    };
    match w.watch(registry.root(), RecursiveMode::Recursive) {
        Ok(()) => {
            tracing::info!(root = %registry.root().display(), "watching the model root");
            Some(w)
        }
        Err(e) => {
            tracing::warn!(root = %registry.root().display(), error = %e, "cannot watch the model root; relying on polling");
            None
        }
    }
}
