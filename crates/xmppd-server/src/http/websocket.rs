//! XMPP over WebSocket (RFC 7395): a framing for the one stream driver, so a WebSocket client
//! gets the same SASL, binding, routing and limits as a TCP one.
//!
//! The driver reads and writes an ordinary XML stream; this framing translates at the edge.
//! In: `<open/>` becomes a stream header and `<close/>` the closing tag (§3.3.2, §3.6), each
//! other message passes through once it is checked to be one element (§3.3.3). Out: the
//! [`Splitter`] cuts the driver's stream back into one message per element, our header becoming
//! `<open/>` and our closing tag `<close/>`.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{Sink, Stream};
use tokio::io::AsyncWrite;
use tokio_rustls::TlsAcceptor;
use xmppd_core::{ns, StreamError};

use super::units::{one_element, NotOneElement, Splitter, Unit};
use super::{Client, Web};
use crate::stream::framing::{framing_error, Framing};
use crate::tls::{CertResolver, ChannelBindings};

/// The framing namespace of `<open/>` and `<close/>` (RFC 7395 §3.3.2).
pub const FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";

/// tungstenite's own buffers, kept small: they live as long as an idle session (its
/// defaults are 128 KiB each). Larger messages grow the read buffer as needed.
const READ_BUFFER: usize = 1024;

/// How long a client sent elsewhere (see-other-uri) has to send its `<open/>`.
const REDIRECT_WAIT: Duration = Duration::from_secs(10);

/// The WebSocket handshake: refused without the `xmpp` subprotocol (RFC 7395 §3.1) or from
/// an origin `http.cors_origins` does not allow; otherwise the connection becomes a client
/// stream.
pub async fn upgrade(
    web: Arc<Web>,
    client: Client,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let offers_xmpp = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == "xmpp");
    if !offers_xmpp {
        return (
            StatusCode::BAD_REQUEST,
            "XMPP over WebSocket needs the subprotocol \"xmpp\" (RFC 7395 §3.1)\n",
        )
            .into_response();
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        if !web.origin_allowed(origin.as_bytes()) {
            tracing::info!(peer = %client.addr, origin = ?origin, "WebSocket from an origin not in http.cors_origins");
            return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
        }
    }
    // Up to twice the stanza limit the message reaches the parser, which refuses what is
    // over the limit as on TCP; beyond, tungstenite refuses it before buffering it all.
    let limit = 2 * web.server.config.limits.max_stanza_size + 1024;
    ws.protocols(["xmpp"])
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| serve(web, client, socket))
}

async fn serve(web: Arc<Web>, client: Client, socket: WebSocket) {
    let see_other = &web.server.config.http.websocket_see_other_uri;
    if !see_other.is_empty() {
        redirect(socket, see_other).await;
        return;
    }
    let framing = WebSocketFraming::new(socket, client.secure);
    let (driver, delay) = crate::c2s::connection(web.server.clone(), framing, client.addr);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    driver.run(false).await;
}

/// Answers the client's `<open/>` with `<close see-other-uri=…/>` (RFC 7395 §3.6.1).
async fn redirect(mut socket: WebSocket, uri: &str) {
    use futures_util::{SinkExt, StreamExt};
    if tokio::time::timeout(REDIRECT_WAIT, socket.next())
        .await
        .is_err()
    {
        return;
    }
    let mut close = format!("<close xmlns='{FRAMING}' see-other-uri='").into_bytes();
    xmppd_xml::escape_attr(&mut close, uri);
    close.extend_from_slice(b"'/>");
    let close = String::from_utf8(close).unwrap_or_default();
    let _ = tokio::time::timeout(REDIRECT_WAIT, async {
        socket.send(Message::Text(close.into())).await?;
        socket.close().await
    })
    .await;
}

pub struct WebSocketFraming {
    ws: WebSocket,
    secure: bool,
    /// The part of a translated message the driver's read buffer did not take yet.
    unread: Vec<u8>,
    out: Splitter,
    /// Messages cut from the driver's output, waiting for the socket.
    queued: VecDeque<String>,
}

fn ws_error(e: axum::Error) -> io::Error {
    io::Error::other(e)
}

impl WebSocketFraming {
    pub fn new(ws: WebSocket, secure: bool) -> Self {
        WebSocketFraming {
            ws,
            secure,
            unread: Vec::new(),
            out: Splitter::default(),
            queued: VecDeque::new(),
        }
    }

    /// What the driver's parser reads for one client message.
    fn translate(text: &[u8]) -> io::Result<Vec<u8>> {
        let name = one_element(text).map_err(|e| {
            let why = match e {
                NotOneElement::Several => "one element per WebSocket message (RFC 7395 §3.3.3)",
                NotOneElement::Text => "text outside an element (RFC 7395 §3.3.3)",
                NotOneElement::Unfinished => {
                    "the element does not end in its message (RFC 7395 §3.3.3)"
                }
            };
            framing_error(StreamError::NotWellFormed, why)
        })?;
        if name != b"open" && name != b"close" {
            return Ok(text.to_vec());
        }
        let parsed = std::str::from_utf8(text)
            .ok()
            .and_then(|t| xmppd_xml::parse_fragment(t, ""));
        let Some(el) = parsed.filter(|el| el.ns() == FRAMING) else {
            // An `open` of another namespace is an ordinary (unsupported) element.
            return Ok(text.to_vec());
        };
        if el.name() == "close" {
            return Ok(b"</stream:stream>".to_vec());
        }
        let mut header = format!(
            "<stream:stream xmlns='{}' xmlns:stream='{}'",
            ns::CLIENT,
            ns::STREAM
        )
        .into_bytes();
        for name in ["to", "from", "version", "xml:lang", "id"] {
            if let Some(value) = el.attr(name) {
                header.push(b' ');
                header.extend_from_slice(name.as_bytes());
                header.extend_from_slice(b"='");
                xmppd_xml::escape_attr(&mut header, value);
                header.push(b'\'');
            }
        }
        header.push(b'>');
        Ok(header)
    }

    /// Hands `unread` to the driver's buffer, as much as fits.
    fn give(&mut self, buf: &mut Vec<u8>) -> usize {
        let n = self.unread.len();
        if buf.len() < n {
            // The driver frees its buffer while idle: ours becomes its, with no allocation,
            // zeroing or copy per message.
            std::mem::swap(buf, &mut self.unread);
        } else {
            buf[..n].copy_from_slice(&self.unread);
        }
        self.unread.clear();
        if self.unread.capacity() > 4096 {
            self.unread = Vec::new();
        }
        n
    }

    /// Cuts what the driver wrote into messages.
    fn cut(&mut self) {
        while let Some(unit) = self.out.next_unit() {
            let message = match unit {
                Unit::Element(bytes) => bytes,
                Unit::Close => format!("<close xmlns='{FRAMING}'/>").into_bytes(),
                Unit::Open(attrs) => {
                    let mut open = format!("<open xmlns='{FRAMING}'").into_bytes();
                    for (name, value) in attrs {
                        open.extend_from_slice(format!(" {name}='{value}'").as_bytes());
                    }
                    open.extend_from_slice(b"/>");
                    open
                }
            };
            // Our serialiser writes UTF-8 only.
            let message = String::from_utf8(message)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
            self.queued.push_back(message);
        }
    }

    /// Sends the queued messages (without flushing them).
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.queued.is_empty() {
            ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(ws_error)?;
            let message = self.queued.pop_front().unwrap_or_default();
            Pin::new(&mut self.ws)
                .start_send(Message::Text(message.into()))
                .map_err(ws_error)?;
        }
        if self.queued.capacity() > 16 {
            self.queued = VecDeque::new();
        }
        Poll::Ready(Ok(()))
    }
}

/// What a failed WebSocket read means for the stream: a message over the size limit or text
/// that is not UTF-8 gets its stream error; anything else is a lost connection.
fn refusal(e: axum::Error) -> io::Result<()> {
    use tungstenite::error::{CapacityError, Error};
    match e.into_inner().downcast::<Error>().map(|e| *e) {
        Ok(Error::Capacity(CapacityError::MessageTooLong { .. })) => Err(framing_error(
            StreamError::PolicyViolation,
            "stanza too large",
        )),
        Ok(Error::Utf8(_)) => Err(framing_error(
            StreamError::NotWellFormed,
            "a text message that is not UTF-8",
        )),
        _ => Ok(()),
    }
}

impl Framing for WebSocketFraming {
    const TRANSPORT: &'static str = "websocket";

    fn poll_read_lazy(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut Vec<u8>,
    ) -> Poll<io::Result<usize>> {
        if !self.unread.is_empty() {
            return Poll::Ready(Ok(self.give(buf)));
        }
        loop {
            let next = match Pin::new(&mut self.ws).poll_next(cx) {
                Poll::Pending => {
                    *buf = Vec::new();
                    return Poll::Pending;
                }
                Poll::Ready(next) => next,
            };
            let text = match next {
                Some(Err(e)) => return Poll::Ready(refusal(e).map(|()| 0)),
                None | Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(0)),
                // tungstenite answers pings itself; pongs only prove the peer is there.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Binary(_))) => {
                    return Poll::Ready(Err(framing_error(
                        StreamError::BadFormat,
                        "XMPP travels in text messages (RFC 7395 §3.3.1)",
                    )))
                }
                Some(Ok(Message::Text(text))) => text,
            };
            self.unread = Self::translate(text.as_bytes())?;
            return Poll::Ready(Ok(self.give(buf)));
        }
    }

    fn is_secure(&self) -> bool {
        self.secure
    }

    fn channel_bindings(&self) -> Option<&ChannelBindings> {
        None
    }

    fn can_start_tls(&self) -> bool {
        false
    }

    async fn start_tls(&mut self, _: &TlsAcceptor, _: &CertResolver) -> bool {
        false
    }
}

impl AsyncWrite for WebSocketFraming {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Back-pressure: what was cut before goes out before more is taken.
        ready!(this.poll_send(cx))?;
        this.out.push(buf);
        this.cut();
        let _ = this.poll_send(cx)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.ws).poll_flush(cx).map_err(ws_error)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.ws).poll_close(cx).map_err(ws_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_and_close_become_the_stream_header_and_end() {
        let header = WebSocketFraming::translate(
            b"<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='localhost' version='1.0' xml:lang='de'/>",
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(header).unwrap(),
            "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' \
             to='localhost' version='1.0' xml:lang='de'>"
        );
        let close =
            WebSocketFraming::translate(b"<close xmlns=\"urn:ietf:params:xml:ns:xmpp-framing\"/>");
        assert_eq!(close.unwrap(), b"</stream:stream>");
        let stanza = b"<message xmlns='jabber:client'><body>hi</body></message>";
        assert_eq!(WebSocketFraming::translate(stanza).unwrap(), stanza);
        let two = WebSocketFraming::translate(b"<presence/><presence/>").unwrap_err();
        let condition = two
            .get_ref()
            .and_then(|e| e.downcast_ref::<crate::stream::framing::FramingError>())
            .map(|e| e.condition);
        assert_eq!(condition, Some(StreamError::NotWellFormed));
    }
}
