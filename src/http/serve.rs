//! The connection layer: accepts TCP connections and serves them with hyper's HTTP/1.1 server, with
//! the limits `axum::serve` does not expose.
//!
//! - A client must send its complete request head within `header_read_timeout` (slowloris
//!   protection): a connection trickling header bytes is closed, and costs only a parked task
//!   meanwhile. Idle keep-alive connections are closed by the same timer.
//! - The request head (request line and headers) may not exceed `max_header_bytes`; hyper answers
//!   431 and closes the connection.
//! - Shutdown is graceful: once `stop` resolves the listener is closed, idle connections are closed,
//!   and requests already being handled run to completion, unless `deadline` resolves first.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// Per-connection limits.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// Time allowed to receive a complete request head.
    pub header_read_timeout: Duration,
    /// Largest request head, bytes (at least 8192, hyper's minimum).
    pub max_header_bytes: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
        }
    }
}

/// Serves `app` on `listener` until `stop` resolves, then drains: no new connections, open
/// requests complete. Returns when every connection is closed or `deadline` resolves.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    stop: impl Future<Output = ()>,
    deadline: impl Future<Output = ()>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    let conn = builder.serve_connection(
                        TokioIo::new(stream),
                        TowerToHyperService::new(app.clone()),
                    );
                    let watched = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = watched.await {
                            tracing::debug!(error = %e, "connection closed with an error");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = &mut stop => break,
        }
    }
    drop(listener);
    let open = graceful.count();
    tracing::info!(
        open_connections = open,
        "listener closed; finishing open connections"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = deadline => tracing::warn!("drain deadline reached; closing remaining connections"),
    }
}
