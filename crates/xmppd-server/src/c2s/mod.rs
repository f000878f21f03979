//! Client-to-server listeners: STARTTLS (RFC 6120 §5) and direct TLS (XEP-0368).

mod stream;
mod transport;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::ServerState;
pub use stream::Connection;

/// Accepts connections until shutdown; each connection runs in its own task.
pub async fn listen(listener: TcpListener, direct_tls: bool, server: Arc<ServerState>) {
    let mut shutdown = server.shutdown.clone();
    loop {
        tokio::select! {
            _ = crate::shutting_down(&mut shutdown) => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    let slot = server.connections.acquire(peer.ip());
                    if slot.is_none() {
                        crate::metrics::Metrics::inc(&server.metrics.connections_refused);
                        tracing::info!(%peer, "connection over the per-address limit");
                    }
                    let conn = Connection::new(server.clone(), tcp, peer, slot);
                    tokio::spawn(conn.run(direct_tls));
                }
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}
