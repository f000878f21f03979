//! The HTTP/1.1 connections of the web listeners, read here first so BOSH requests skip hyper.
//!
//! A BOSH session keeps a request held at all times (XEP-0124 §7, §11), so every idle session
//! costs an HTTP connection. hyper keeps two 8 KiB buffers per connection (its
//! `INIT_BUFFER_SIZE`, which no option lowers), and axum's extracted body and headers keep a
//! third one referenced while the handler waits: heaptrack at 1,000 idle BOSH sessions found
//! 24.5 KiB of hyper buffers per session, of 39 KiB in all (bench `idle_bosh`: 33.5 KiB RSS
//! per session). Here a request is read with httparse into a buffer that is freed before the
//! request is held, so a waiting connection keeps only its socket.
//!
//! Only the plain case is ours: `POST` to the BOSH path with a `Content-Length` body within
//! the stanza limit. Anything else (WebSocket upgrades, host-meta, preflights, chunked bodies,
//! `Expect`, malformed or oversized heads) goes to axum with the bytes read so far put back
//! in front ([`Replay`]), and the connection stays with axum from then on.

use std::io::{self, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;

use super::{bosh, Conn, Web};
use crate::stream::TcpFraming;

/// The longest request head read here; a longer one goes to axum, which refuses it.
const MAX_HEAD: usize = 8 * 1024;
/// More header fields than this go to axum too.
const MAX_HEADERS: usize = 32;
/// How long a kept-alive connection may wait for its next request.
const IDLE: Duration = Duration::from_secs(120);
/// How long a request may take to arrive once it started, and its response to be written.
const TRANSFER: Duration = Duration::from_secs(30);
/// What one read asks for.
const READ_CHUNK: usize = 2048;

/// A connection handed to axum, with what was already read from it put back in front.
pub struct Replay {
    read: Vec<u8>,
    at: usize,
    io: TcpFraming,
}

/// What a connection goes on with when it is not ours: axum's accept queue.
pub type Handoff = mpsc::Sender<(Replay, Conn)>;

/// Serves BOSH requests on `io` until it closes, or hands it to axum at the first request
/// that is not a plain BOSH `POST`.
pub async fn serve(web: Arc<Web>, mut io: TcpFraming, conn: Conn, axum: Handoff) {
    let mut shutdown = web.server.shutdown.clone();
    let mut read = Vec::new();
    loop {
        if read.is_empty() {
            let next = async {
                tokio::select! {
                    _ = crate::shutting_down(&mut shutdown) => None,
                    first = tokio::time::timeout(IDLE, read_more(&mut io, &mut read)) => Some(first),
                }
            };
            let Some(first) = Box::pin(next).await else {
                return;
            };
            if !matches!(first, Ok(Ok(1..))) {
                return;
            }
        }
        // Boxed, as the write below: only the held wait should size an idle connection's task.
        let reading = tokio::time::timeout(TRANSFER, read_request(&web, &mut io, &mut read));
        let head = match Box::pin(reading).await {
            Ok(Ok(Some(head))) => head,
            Ok(Ok(None)) => {
                let _ = axum.send((Replay { read, at: 0, io }, conn)).await;
                return;
            }
            // Too slow, closed halfway, or a transport error: nothing to answer.
            _ => return,
        };
        let client = web.client(conn, &head.headers);
        let cors = web.cors(&head.headers);
        let end = head.len + head.content_length;
        let pending = bosh::submit(&web, client, &read[head.len..end]);
        read.drain(..end);
        if read.is_empty() {
            read = Vec::new();
        }
        let keep_alive = head.keep_alive;
        let http_10 = head.http_10;
        drop(head);
        let reply = pending.response().await;
        let response = render(&reply, &cors, keep_alive, http_10);
        let written = Box::pin(tokio::time::timeout(TRANSFER, async {
            io.write_all(&response).await?;
            io.flush().await
        }))
        .await;
        if !matches!(written, Ok(Ok(()))) {
            return;
        }
        if !keep_alive {
            let _ = io.shutdown().await;
            return;
        }
    }
}

/// Reads once more into `read`: how many bytes came (0 at the end of the stream).
async fn read_more(io: &mut TcpFraming, read: &mut Vec<u8>) -> io::Result<usize> {
    read.reserve(READ_CHUNK);
    io.read_buf(read).await
}

/// A BOSH request's head, as far as answering it needs.
struct Head {
    /// Where its body starts in the read buffer.
    len: usize,
    content_length: usize,
    keep_alive: bool,
    http_10: bool,
    headers: HeaderMap,
}

/// Reads until `read` holds a whole request: its head if it is a plain BOSH `POST` (with its
/// body read too), `None` if it is for axum.
async fn read_request(
    web: &Web,
    io: &mut TcpFraming,
    read: &mut Vec<u8>,
) -> io::Result<Option<Head>> {
    let head = loop {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut fields);
        match request.parse(read) {
            Ok(httparse::Status::Complete(len)) => break bosh_head(web, &request, len),
            Ok(httparse::Status::Partial) if read.len() < MAX_HEAD => {}
            // Malformed, too many fields, or too long: axum says so.
            _ => return Ok(None),
        }
        if read_more(io, read).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    };
    let Some(head) = head else {
        return Ok(None);
    };
    while read.len() < head.len + head.content_length {
        if read_more(io, read).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(Some(head))
}

/// The head of a request this module answers, or `None` for axum's.
fn bosh_head(web: &Web, request: &httparse::Request<'_, '_>, len: usize) -> Option<Head> {
    let config = &web.server.config;
    let path = request.path?.split('?').next()?;
    if request.method? != "POST" || path != config.http.bosh_path {
        return None;
    }
    let http_10 = request.version? == 0;
    let mut keep_alive = !http_10;
    let mut content_length = None;
    let mut headers = HeaderMap::with_capacity(request.headers.len());
    for field in request.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(field.value).ok()?;
        if name == axum::http::header::CONTENT_LENGTH {
            // RFC 9112 §6.3: a repeated or unreadable length is not for us to guess at.
            if content_length.is_some() {
                return None;
            }
            content_length = Some(value.to_str().ok()?.trim().parse::<usize>().ok()?);
        } else if name == axum::http::header::TRANSFER_ENCODING
            || name == axum::http::header::EXPECT
            || name == axum::http::header::UPGRADE
        {
            return None;
        } else if name == axum::http::header::CONNECTION {
            for option in value.to_str().ok()?.split(',').map(str::trim) {
                if option.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if option.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        }
        headers.append(name, value);
    }
    // Larger bodies go to axum, whose answer is the same policy-violation body.
    let content_length = content_length.filter(|&n| n <= config.limits.max_stanza_size)?;
    Some(Head {
        len,
        content_length,
        keep_alive,
        http_10,
        headers,
    })
}

/// The HTTP response carrying `reply`.
fn render(
    reply: &bosh::Response,
    cors: &[(HeaderName, HeaderValue)],
    keep_alive: bool,
    http_10: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + reply.body.len());
    let status = reply.status;
    // Writing to a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\ndate: {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        reply.content_type,
        reply.body.len(),
        httpdate::fmt_http_date(SystemTime::now()),
    );
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    for (name, value) in cors {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&reply.body);
    out
}

impl AsyncRead for Replay {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.read.len() {
            let n = buf.remaining().min(this.read.len() - this.at);
            buf.put_slice(&this.read[this.at..this.at + n]);
            this.at += n;
            if this.at == this.read.len() {
                this.read = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    /// A rendered response's status, fields and body, through httparse.
    fn parsed(out: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let mut fields = [httparse::EMPTY_HEADER; 8];
        let mut response = httparse::Response::new(&mut fields);
        let Ok(httparse::Status::Complete(len)) = response.parse(out) else {
            panic!("a whole head: {}", String::from_utf8_lossy(out));
        };
        let fields = response
            .headers
            .iter()
            .map(|f| {
                let value = std::str::from_utf8(f.value).unwrap();
                (f.name.to_ascii_lowercase(), value.to_string())
            })
            .collect();
        (response.code.unwrap(), fields, out[len..].to_vec())
    }

    fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn responses_say_their_length_type_and_connection() {
        let reply = bosh::Response {
            status: StatusCode::OK,
            content_type: bosh::CONTENT_TYPE.into(),
            body: bytes::Bytes::from_static(b"<body/>"),
        };
        let cors = [(
            axum::http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("https://app.example"),
        )];
        let (code, fields, body) = parsed(&render(&reply, &cors, false, false));
        assert_eq!(code, 200);
        assert_eq!(field(&fields, "content-length"), Some("7"));
        assert_eq!(field(&fields, "content-type"), Some(bosh::CONTENT_TYPE));
        assert_eq!(field(&fields, "connection"), Some("close"));
        assert_eq!(
            field(&fields, "access-control-allow-origin"),
            Some("https://app.example")
        );
        assert!(httpdate::parse_http_date(field(&fields, "date").unwrap()).is_ok());
        assert_eq!(body, b"<body/>");
        let (_, fields, _) = parsed(&render(&reply, &[], true, true));
        assert_eq!(field(&fields, "connection"), Some("keep-alive"));
        let (_, fields, _) = parsed(&render(&reply, &[], true, false));
        assert_eq!(field(&fields, "connection"), None);
    }
}
