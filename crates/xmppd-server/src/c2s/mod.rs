//! Client-to-server listeners: STARTTLS (RFC 6120 §5) and direct TLS (XEP-0368). Each
//! connection is the stream driver over a TCP framing with the c2s profile.

mod profile;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use xmppd_core::ns;

use crate::limits::{ConnectionSlot, Pending};
use crate::stream::{Driver, Framing, Stream, TcpFraming};
use crate::ServerState;
pub use profile::C2s;

/// A client connection over `framing`, ready to run after the returned delay (its turn
/// under the per-address rate of new connections).
pub fn connection<F: Framing>(
    server: Arc<ServerState>,
    framing: F,
    peer: SocketAddr,
) -> (Driver<F, C2s>, Duration) {
    let admission = Admission::new(&server, peer);
    let delay = admission.delay;
    let stream = Stream::new(framing, peer, &server, ns::CLIENT);
    let driver = Driver::new(server.clone(), stream, C2s::new(server, admission));
    (driver, delay)
}

fn tcp_connection(
    server: Arc<ServerState>,
    tcp: TcpStream,
    peer: SocketAddr,
) -> (Driver<TcpFraming, C2s>, Duration) {
    connection(server, TcpFraming::new(tcp), peer)
}

/// What a new connection was let in with, under the per-address limits.
pub struct Admission {
    /// Its place under the total per-address cap; none when over it.
    _slot: Option<ConnectionSlot>,
    /// Its place among the address's unauthenticated connections, until it authenticates.
    pending: Option<Pending>,
    /// Why it only gets a stream error, if it does.
    refusal: Option<&'static str>,
    delay: Duration,
}

impl Admission {
    fn new(server: &ServerState, peer: SocketAddr) -> Self {
        let ip = peer.ip();
        let slot = server.connections.acquire(ip);
        let turn = server.connection_rate.admit(ip);
        let refusal = match (&slot, turn) {
            (None, _) => Some("too many connections from your address"),
            (_, None) => Some("too many new connections from your address; try again shortly"),
            _ => None,
        };
        if let Some(reason) = refusal {
            server.metrics.connections_refused.inc();
            tracing::info!(%peer, reason, "connection refused");
        }
        // A refused connection takes no place among the unauthenticated ones: it only
        // waits for its header, to be told why, or for its login deadline.
        let pending = refusal.is_none().then(|| {
            let (pending, evicted) = server.unauthenticated.admit(ip);
            if evicted {
                tracing::info!(%peer, "closed the oldest unauthenticated connection from this address");
            }
            pending
        });
        Admission {
            _slot: slot,
            pending,
            refusal,
            delay: turn.unwrap_or_default(),
        }
    }
}

/// Accepts connections until shutdown; each connection runs in its own task.
pub async fn listen(listener: TcpListener, direct_tls: bool, server: Arc<ServerState>) {
    let mut shutdown = server.shutdown.clone();
    loop {
        tokio::select! {
            _ = crate::shutting_down(&mut shutdown) => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    let (conn, delay) = tcp_connection(server.clone(), tcp, peer);
                    if delay.is_zero() {
                        tokio::spawn(conn.run(direct_tls));
                    } else {
                        // Only a connection that has to wait pays for the bigger task.
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            conn.run(direct_tls).await
                        });
                    }
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::SocketAddr;
    use crate::registry::{Ctx, IqHandler, IqResult, IqTarget, On};
    use crate::stream::MemoryFraming;

    /// A server on `dir` with no listeners: connections are made by hand in these tests.
    fn without_listeners(dir: &std::path::Path) -> crate::config::Config {
        let mut config = crate::config::Config::default();
        config.server.data_dir = dir.to_path_buf();
        config.listen = crate::config::ListenConfig::none();
        config.sasl.scram_iterations = 4096;
        config
    }

    /// Answers with an empty result.
    struct Answer;

    #[async_trait::async_trait]
    impl IqHandler for Answer {
        async fn handle(
            &self,
            _: &mut Ctx<'_>,
            _: IqTarget<'_>,
            _: &xmppd_core::Stanza,
        ) -> IqResult {
            Ok(None)
        }
    }

    /// Reads from the client's end until `needle` appears; returns everything read.
    async fn read_until(client: &mut DuplexStream, needle: &str) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains(needle) {
            let read =
                tokio::time::timeout(std::time::Duration::from_secs(10), client.read(&mut buf));
            let n = read.await.expect("server answers in time").unwrap();
            assert!(
                n > 0,
                "closed early; got {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(got).unwrap()
    }

    /// The stream driver over an in-memory framing: a whole c2s session without sockets.
    #[tokio::test]
    async fn an_in_memory_framing_drives_a_client_session() {
        let dir = tempfile::tempdir().unwrap();
        let config = without_listeners(dir.path());
        // No feature modules: one test handler shows the session reaches the router.
        let server = crate::start(config, |r| {
            r.iq(On::Server, "urn:test", "q", std::sync::Arc::new(Answer));
        })
        .await
        .unwrap();
        let account =
            crate::sasl::credentials::new_account("alice", "localhost", "pw", 4096).unwrap();
        server
            .state
            .router
            .storage()
            .accounts
            .create(&account)
            .await
            .unwrap();

        let (mut client, server_end) = tokio::io::duplex(64 * 1024);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let framing = MemoryFraming::new(server_end, true);
        let (driver, _) = super::connection(server.state.clone(), framing, peer);
        let task = tokio::spawn(driver.run(false));

        let header = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
            xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";
        client.write_all(header.as_bytes()).await.unwrap();
        let features = read_until(&mut client, "</stream:features>").await;
        // Encrypted by its carrier: no STARTTLS offered, PLAIN allowed.
        assert!(!features.contains("starttls"), "{features}");
        assert!(
            features.contains("<mechanism>PLAIN</mechanism>"),
            "{features}"
        );
        client
            .write_all(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHB3</auth>")
            .await
            .unwrap();
        read_until(&mut client, "<success").await;
        client.write_all(header.as_bytes()).await.unwrap();
        read_until(&mut client, "</stream:features>").await;
        client
            .write_all(b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>mem</resource></bind></iq>")
            .await
            .unwrap();
        let bound = read_until(&mut client, "</iq>").await;
        assert!(bound.contains("<jid>alice@localhost/mem</jid>"), "{bound}");
        client
            .write_all(b"<iq type='get' id='p' to='localhost'><q xmlns='urn:test'/></iq>")
            .await
            .unwrap();
        let pong = read_until(&mut client, "id='p'").await;
        assert!(pong.contains("type='result'"), "{pong}");
        client.write_all(b"</stream:stream>").await.unwrap();
        read_until(&mut client, "</stream:stream>").await;
        task.await.unwrap();
        assert!(server.state.router.sessions().all().is_empty());
        server.shutdown().await;
    }

    /// Every connection's task holds its future for its whole life, so the future's size is
    /// paid per idle connection: the big per-stanza work is boxed to keep it out. This guards
    /// against that regressing.
    #[tokio::test]
    async fn an_idle_connection_task_stays_small() {
        let dir = tempfile::tempdir().unwrap();
        let config = without_listeners(dir.path());
        let server = crate::start(config, |_| {}).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (task, _) = super::tcp_connection(server.state.clone(), tcp, addr);
        let task = task.run(false);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 2 * 1024, "connection future is {size} bytes");
        drop(task);
        server.shutdown().await;
    }
}
