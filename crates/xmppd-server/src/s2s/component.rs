//! XEP-0114 external components (`jabber:component:accept`): a program that serves a
//! domain of its own (a gateway, a bot service) connects, proves the shared secret with the
//! handshake of §3, and from then on takes every stanza for its domain and may send from it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use xmppd_core::{ns, Element, FullJid, Jid, Stanza, StreamError};
use xmppd_xml::StreamHeader;

use crate::router::SessionHandle;
use crate::stream::{Driver, Flow, Framing, Profile, Stream, TcpFraming};
use crate::ServerState;

/// How long a component may take to complete the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts component connections.
pub async fn listen(listener: TcpListener, server: Arc<ServerState>) {
    let mut shutdown = server.shutdown.clone();
    loop {
        tokio::select! {
            _ = crate::shutting_down(&mut shutdown) => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    tokio::spawn(serve(server.clone(), tcp, peer));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

async fn serve(server: Arc<ServerState>, tcp: TcpStream, peer: SocketAddr) {
    let stream = Stream::new(TcpFraming::new(tcp), peer, &server, ns::COMPONENT);
    let profile = Component {
        server: server.clone(),
        domain: None,
        handle: None,
        stream_id: String::new(),
        deadline: Instant::now() + HANDSHAKE_TIMEOUT,
    };
    Driver::new(server, stream, profile).run(false).await;
}

/// The handshake value: hex(SHA-1(stream id + secret)) (XEP-0114 §3).
pub fn handshake(stream_id: &str, secret: &str) -> String {
    let digest = Sha1::new()
        .chain_update(stream_id.as_bytes())
        .chain_update(secret.as_bytes())
        .finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

pub struct Component {
    server: Arc<ServerState>,
    /// The domain the component asked for in its header.
    domain: Option<String>,
    /// Set once the handshake succeeded.
    handle: Option<Arc<SessionHandle>>,
    /// The `id` of our stream header: the handshake covers it.
    stream_id: String,
    deadline: Instant,
}

impl Component {
    async fn on_handshake<F: Framing>(&mut self, s: &mut Stream<F>, el: &Element) -> Flow {
        let Some(domain) = self.domain.clone() else {
            return s.stream_error(StreamError::NotAuthorized, None).await;
        };
        let secret = self
            .server
            .federation
            .component_secret(&domain)
            .unwrap_or_default();
        let expected = handshake(&self.stream_id, secret);
        let offered = el.text().trim().to_ascii_lowercase();
        if self.handle.is_some() || !bool::from(expected.as_bytes().ct_eq(offered.as_bytes())) {
            tracing::info!(peer = %s.peer, %domain, "component handshake refused");
            return s
                .stream_error(StreamError::NotAuthorized, Some("wrong handshake"))
                .await;
        }
        let Ok(jid) = FullJid::new(&format!("{domain}/component")) else {
            return s.stream_error(StreamError::InternalServerError, None).await;
        };
        let handle = SessionHandle::new(jid, self.server.config.limits.outbound_queue);
        self.server.federation.component_up(&domain, &handle);
        self.handle = Some(handle);
        tracing::info!(peer = %s.peer, %domain, "component connected");
        s.send_element(&Element::new("handshake", ns::COMPONENT));
        s.flush_flow().await
    }

    /// A stanza from the component: from its domain (or below it), to anyone.
    async fn stanza<F: Framing>(&mut self, s: &mut Stream<F>, mut el: Element) -> Flow {
        let (Some(domain), Some(_)) = (&self.domain, &self.handle) else {
            return s
                .stream_error(StreamError::NotAuthorized, Some("handshake first"))
                .await;
        };
        let from = el.attr("from").and_then(|f| Jid::new(f).ok());
        let allowed = from.as_ref().is_some_and(|f| {
            let d = f.domain().as_str();
            d == domain || d.ends_with(&format!(".{domain}"))
        });
        if !allowed {
            return s
                .stream_error(StreamError::InvalidFrom, Some("send from your own domain"))
                .await;
        }
        if el.attr("to").is_none() {
            return s
                .stream_error(StreamError::ImproperAddressing, Some("stanzas need a to"))
                .await;
        }
        el.rename_ns(ns::COMPONENT, ns::CLIENT);
        match Stanza::parse(el) {
            Ok(stanza) => self.server.router.route_inbound(stanza).await,
            Err(failed) => {
                let (el, error) = *failed;
                if let Some(mut reply) = xmppd_core::stanza::error_reply(&el, &error) {
                    reply.rename_ns(ns::CLIENT, ns::COMPONENT);
                    s.send_element(&reply);
                    return s.flush_flow().await;
                }
            }
        }
        Flow::Continue
    }
}

impl<F: Framing> Profile<F> for Component {
    const KIND: &'static str = "component";

    async fn on_header(&mut self, s: &mut Stream<F>, header: StreamHeader) -> Flow {
        if header.default_ns.as_deref() != Some(ns::COMPONENT) {
            return s
                .stream_error(
                    StreamError::InvalidNamespace,
                    Some("components use jabber:component:accept"),
                )
                .await;
        }
        let domain = header.attr("to").map(str::to_ascii_lowercase);
        let Some(domain) = domain.filter(|d| self.server.federation.component_secret(d).is_some())
        else {
            return s
                .stream_error(
                    StreamError::HostUnknown,
                    Some("no component is configured for that domain"),
                )
                .await;
        };
        s.domain = domain.clone();
        self.domain = Some(domain);
        self.stream_id = s.send_header();
        s.flush_flow().await
    }

    async fn on_element(&mut self, s: &mut Stream<F>, el: Element) -> Flow {
        match (el.ns(), el.name()) {
            (ns::COMPONENT, "handshake") => self.on_handshake(s, &el).await,
            (ns::COMPONENT, "message" | "presence" | "iq") => self.stanza(s, el).await,
            _ => {
                s.stream_error(StreamError::UnsupportedStanzaType, None)
                    .await
            }
        }
    }

    fn session(&self) -> Option<&Arc<SessionHandle>> {
        self.handle.as_ref()
    }

    fn login_deadline(&self) -> Option<Instant> {
        self.handle.is_none().then_some(self.deadline)
    }

    fn eviction(&self) -> Option<Arc<crate::limits::Eviction>> {
        None
    }

    fn keepalive(&self, _: &Stream<F>) -> Option<Element> {
        None
    }

    async fn close(&mut self) {
        if let (Some(domain), Some(handle)) = (&self.domain, &self.handle) {
            tracing::info!(%domain, "component disconnected");
            self.server.federation.component_down(domain, handle);
            handle.outbox().close();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn handshake_is_the_sha1_of_id_and_secret() {
        // XEP-0114 §3's stream id; the value was computed with Python's hashlib.
        assert_eq!(
            super::handshake("3BF96D32", "sometestsecret"),
            "a1106702540b89b8534e121f786c7fbc15ec14f3"
        );
    }
}
