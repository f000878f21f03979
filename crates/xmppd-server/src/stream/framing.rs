//! Framings: how a stream's bytes travel. TCP with STARTTLS or direct TLS here; WebSocket
//! messages and BOSH bodies in `crate::http`. The driver only reads and writes through this
//! trait, so a new transport is a new framing, not a second server.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::tls::{CertResolver, ChannelBindings};

/// A framing's refusal of what the peer sent, carried in the `io::Error` of a read: the
/// driver answers it with this stream error (a WebSocket message with two elements, say).
#[derive(Debug)]
pub struct FramingError {
    pub condition: xmppd_core::StreamError,
    pub text: &'static str,
}

impl std::fmt::Display for FramingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text)
    }
}

impl std::error::Error for FramingError {}

pub fn framing_error(condition: xmppd_core::StreamError, text: &'static str) -> io::Error {
    io::Error::other(FramingError { condition, text })
}

/// Bytes read from the socket at a time.
pub const READ_BUFFER: usize = 2048;

/// Longest a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

pub trait Framing: AsyncWrite + Unpin + Send + 'static {
    /// What metrics call this transport (`tcp`, `websocket`, …).
    const TRANSPORT: &'static str;

    /// Reads into `buf`, holding no buffer while the connection is idle: an empty `buf`
    /// means the last read found nothing, so it is enough to wait for readiness before
    /// allocating; a non-empty one means there may be more already buffered.
    fn poll_read_lazy(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut Vec<u8>,
    ) -> Poll<io::Result<usize>>;

    /// Whether what is written is encrypted on the wire.
    fn is_secure(&self) -> bool;

    /// The TLS session's channel bindings and client certificate, when there is one.
    fn channel_bindings(&self) -> Option<&ChannelBindings>;

    /// Whether [`Framing::start_tls`] can be offered (STARTTLS, RFC 6120 §5).
    fn can_start_tls(&self) -> bool;

    /// Runs a TLS handshake as the server of the connection; false if it failed (the
    /// connection is over).
    fn start_tls(
        &mut self,
        acceptor: &TlsAcceptor,
        resolver: &CertResolver,
    ) -> impl Future<Output = bool> + Send;
}

/// Reads into `buf` from an [`AsyncRead`], growing an empty buffer first and releasing it
/// again when the read would block.
fn poll_read_into(
    io: Pin<&mut impl AsyncRead>,
    cx: &mut Context<'_>,
    buf: &mut Vec<u8>,
) -> Poll<io::Result<usize>> {
    if buf.is_empty() {
        buf.resize(READ_BUFFER, 0);
    }
    let mut read = ReadBuf::new(buf);
    match io.poll_read(cx, &mut read) {
        Poll::Ready(Ok(())) => Poll::Ready(Ok(read.filled().len())),
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => {
            *buf = Vec::new();
            Poll::Pending
        }
    }
}

/// A TCP connection: plain until STARTTLS, or TLS from the first byte (XEP-0368).
pub struct TcpFraming {
    transport: Transport,
    bindings: Option<Box<ChannelBindings>>,
}

enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// TLS as the client: an outgoing server-to-server link.
    ClientTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// Only while the TCP stream is handed to the TLS handshake, or after it failed.
    Upgrading,
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "transport is being upgraded")
}

impl TcpFraming {
    pub fn new(tcp: TcpStream) -> Self {
        TcpFraming {
            transport: Transport::Plain(tcp),
            bindings: None,
        }
    }

    /// Runs a TLS handshake as the client (an outgoing server-to-server link) for `name`;
    /// false if it failed. The peer's certificate chain is kept for the caller to verify.
    pub async fn connect_tls(&mut self, connector: &TlsConnector, name: &str) -> bool {
        let Ok(server_name) = ServerName::try_from(name.to_string()) else {
            return false;
        };
        let Transport::Plain(tcp) = std::mem::replace(&mut self.transport, Transport::Upgrading)
        else {
            return false;
        };
        let handshake = Box::pin(connector.connect(server_name, tcp));
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(stream)) => {
                let (_, conn) = stream.get_ref();
                self.bindings = Some(Box::new(ChannelBindings::of_client(conn)));
                self.transport = Transport::ClientTls(Box::new(stream));
                true
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, %name, "outgoing TLS handshake failed");
                false
            }
            Err(_) => {
                tracing::debug!(%name, "outgoing TLS handshake timed out");
                false
            }
        }
    }
}

impl Framing for TcpFraming {
    const TRANSPORT: &'static str = "tcp";

    /// tokio-rustls reports "pending" only once rustls holds no plaintext, so waiting for
    /// the socket's readiness is enough when the last read found nothing.
    fn poll_read_lazy(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut Vec<u8>,
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            let tcp = match &self.transport {
                Transport::Plain(s) => s,
                Transport::Tls(s) => s.get_ref().0,
                Transport::ClientTls(s) => s.get_ref().0,
                Transport::Upgrading => return Poll::Ready(Err(gone())),
            };
            ready!(tcp.poll_read_ready(cx))?;
        }
        poll_read_into(Pin::new(self), cx, buf)
    }

    fn is_secure(&self) -> bool {
        matches!(self.transport, Transport::Tls(_) | Transport::ClientTls(_))
    }

    fn channel_bindings(&self) -> Option<&ChannelBindings> {
        self.bindings.as_deref()
    }

    fn can_start_tls(&self) -> bool {
        matches!(self.transport, Transport::Plain(_))
    }

    async fn start_tls(&mut self, acceptor: &TlsAcceptor, resolver: &CertResolver) -> bool {
        let Transport::Plain(tcp) = std::mem::replace(&mut self.transport, Transport::Upgrading)
        else {
            return false;
        };
        let handshake = Box::pin(acceptor.accept(tcp));
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(stream)) => {
                let (_, conn) = stream.get_ref();
                self.bindings = Some(Box::new(ChannelBindings::capture(conn, resolver)));
                self.transport = Transport::Tls(Box::new(stream));
                true
            }
            // The driver logs the failure with the peer's address.
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                false
            }
            Err(_) => {
                tracing::debug!("TLS handshake timed out");
                false
            }
        }
    }
}

impl AsyncRead for TcpFraming {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().transport {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Transport::ClientTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Transport::Upgrading => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for TcpFraming {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().transport {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Transport::ClientTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Transport::Upgrading => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().transport {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Transport::ClientTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Transport::Upgrading => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().transport {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Transport::ClientTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Transport::Upgrading => Poll::Ready(Ok(())),
        }
    }
}

/// An in-memory connection (one end of [`tokio::io::duplex`]): drives whole streams in tests
/// and fuzzing without sockets. `secure` says whether to treat it as encrypted, as a
/// WebSocket framing over HTTPS would be.
pub struct MemoryFraming {
    io: DuplexStream,
    secure: bool,
}

impl MemoryFraming {
    pub fn new(io: DuplexStream, secure: bool) -> Self {
        MemoryFraming { io, secure }
    }
}

impl Framing for MemoryFraming {
    const TRANSPORT: &'static str = "memory";

    fn poll_read_lazy(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut Vec<u8>,
    ) -> Poll<io::Result<usize>> {
        poll_read_into(Pin::new(&mut self.io), cx, buf)
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

impl AsyncWrite for MemoryFraming {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
