//! The HTTP listeners (`listen.http`, `listen.https`): BOSH (XEP-0124/0206) and WebSocket
//! (RFC 7395) for web clients, XEP-0156 host-meta so they find both, and `/metrics`.
//!
//! Both web transports are framings for the one stream driver with the c2s profile
//! ([`websocket::WebSocketFraming`], [`bosh::BoshFraming`]): SASL, binding, routing and limits
//! are those of TCP. This module only adds what HTTP itself needs: the real client address
//! behind a trusted proxy, whether the client's connection is encrypted, and CORS.

pub mod bosh;
mod bosh_conn;
mod units;
pub mod websocket;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{FromRequestParts, State, WebSocketUpgrade};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::{IncomingStream, Listener};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::stream::{Framing, TcpFraming};
use crate::ServerState;

/// What the HTTP handlers share.
pub struct Web {
    pub server: Arc<ServerState>,
    pub bosh: Arc<bosh::Sessions>,
}

/// The connection a request came on.
#[derive(Clone, Copy, Debug)]
pub struct Conn {
    peer: SocketAddr,
    tls: bool,
}

/// The client a request is from, after believing trusted proxies.
#[derive(Clone, Copy, Debug)]
pub struct Client {
    pub addr: SocketAddr,
    /// Its traffic is encrypted (or never leaves this machine): SASL may go ahead.
    pub secure: bool,
    /// The URL scheme it used (`https` or `http`), for host-meta.
    pub https: bool,
}

impl Web {
    /// Who sent a request on `conn` with these headers. Forwarding headers count only from a
    /// trusted proxy; a loopback client is taken as secure unless a proxy stands in front of
    /// it, which the forwarding headers betray.
    fn client(&self, conn: Conn, headers: &HeaderMap) -> Client {
        let config = &self.server.config.http;
        let forwarded =
            headers.contains_key("x-forwarded-for") || headers.contains_key("forwarded");
        let mut client = Client {
            addr: conn.peer,
            secure: conn.tls,
            https: conn.tls,
        };
        if config.trusted_proxies.contains(&conn.peer.ip()) {
            if let Some(ip) = forwarded_client(headers, &config.trusted_proxies) {
                client.addr = SocketAddr::new(ip, 0);
            }
            if let Some(proto) = forwarded_proto(headers) {
                client.https = proto.eq_ignore_ascii_case("https");
                client.secure = client.https;
            }
        } else if conn.peer.ip().is_loopback() && !forwarded {
            client.secure = true;
        }
        client.secure |= config.consider_secure;
        client
    }

    /// Whether a browser page from `origin` may use BOSH and WebSocket (`http.cors_origins`).
    fn origin_allowed(&self, origin: &[u8]) -> bool {
        self.server
            .config
            .http
            .cors_origins
            .iter()
            .any(|allowed| allowed == "*" || allowed.as_bytes().eq_ignore_ascii_case(origin))
    }

    /// CORS headers for a response to a request with these headers (none when its origin
    /// is not allowed, so the browser refuses the response).
    fn cors(&self, headers: &HeaderMap) -> Vec<(header::HeaderName, HeaderValue)> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Vec::new();
        };
        if !self.origin_allowed(origin.as_bytes()) {
            return Vec::new();
        }
        vec![
            // A copy: the request's value shares the buffer the whole request was read into.
            (
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_bytes(origin.as_bytes())
                    .unwrap_or(HeaderValue::from_static("null")),
            ),
            (
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, OPTIONS"),
            ),
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("Content-Type"),
            ),
            (
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("86400"),
            ),
            (header::VARY, HeaderValue::from_static("Origin")),
        ]
    }
}

/// The rightmost address in `Forwarded: for=` or `X-Forwarded-For` that is not one of our
/// proxies: the one the nearest untrusted hop connected from (RFC 7239 §5.2).
fn forwarded_client(headers: &HeaderMap, trusted: &[IpAddr]) -> Option<IpAddr> {
    let mut hops: Vec<IpAddr> = Vec::new();
    for value in headers
        .get_all("forwarded")
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        for element in value.split(',') {
            for pair in element.split(';') {
                let Some((key, value)) = pair.trim().split_once('=') else {
                    continue;
                };
                if key.eq_ignore_ascii_case("for") {
                    hops.extend(parse_node(value));
                }
            }
        }
    }
    if hops.is_empty() {
        for value in headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            hops.extend(value.split(',').filter_map(parse_node));
        }
    }
    hops.into_iter().rev().find(|ip| !trusted.contains(ip))
}

/// An address out of a forwarding header: `192.0.2.1`, `"[2001:db8::1]:4711"`, `1.2.3.4:80`.
fn parse_node(value: &str) -> Option<IpAddr> {
    let value = value.trim().trim_matches('"');
    if let Ok(ip) = value.parse() {
        return Some(ip);
    }
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    value
        .strip_prefix('[')
        .and_then(|v| v.split(']').next())
        .and_then(|v| v.parse().ok())
}

fn forwarded_proto(headers: &HeaderMap) -> Option<String> {
    if let Some(value) = headers.get("forwarded").and_then(|v| v.to_str().ok()) {
        let proto = value
            .split(',')
            .next_back()
            .into_iter()
            .flat_map(|e| e.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(key, _)| key.eq_ignore_ascii_case("proto"));
        if let Some((_, proto)) = proto {
            return Some(proto.trim_matches('"').to_string());
        }
    }
    let value = headers.get("x-forwarded-proto")?.to_str().ok()?;
    Some(value.split(',').next_back()?.trim().to_string())
}

impl FromRequestParts<Arc<Web>> for Client {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, web: &Arc<Web>) -> Result<Self, Infallible> {
        let conn = parts
            .extensions
            .get::<ConnectInfo<Conn>>()
            .map(|c| c.0)
            .unwrap_or(Conn {
                peer: SocketAddr::from(([0, 0, 0, 0], 0)),
                tls: false,
            });
        Ok(web.client(conn, &parts.headers))
    }
}

/// The routes of an HTTP listener.
fn routes(web: Arc<Web>) -> axum::Router {
    let config = &web.server.config.http;
    let metrics = web.server.metrics.clone();
    let mut pages = axum::Router::new();
    for (prefix, page) in web.server.router.hooks().http_pages() {
        let prefix = prefix.trim_end_matches('/');
        let (web_, page_) = (web.clone(), page.clone());
        let index = move || module_page(web_.clone(), page_.clone(), String::new());
        let (web_, page_) = (web.clone(), page.clone());
        let below = move |axum::extract::Path(rest): axum::extract::Path<String>| {
            module_page(web_.clone(), page_.clone(), rest)
        };
        pages = pages
            .route(&format!("{prefix}/"), get(index))
            .route(&format!("{prefix}/{{*rest}}"), get(below));
    }
    axum::Router::new()
        .route(
            &config.bosh_path,
            post(bosh_request).options(preflight).get(bosh_page),
        )
        .route(&config.websocket_path, get(websocket_upgrade))
        .route(
            "/.well-known/host-meta",
            get(host_meta_xrd).options(preflight),
        )
        .route(
            "/.well-known/host-meta.json",
            get(host_meta_json).options(preflight),
        )
        .with_state(web)
        .merge(pages)
        .merge(crate::metrics::routes(metrics))
}

/// A module's page (see [`crate::registry::HttpPages`]).
async fn module_page(
    web: Arc<Web>,
    page: Arc<dyn crate::registry::HttpPages>,
    rest: String,
) -> Response {
    let mut cx = web.server.router.context();
    let page = page.get(&mut cx, &rest).await;
    web.server.router.apply(cx).await;
    let status = StatusCode::from_u16(page.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, page.content_type)],
        page.body,
    )
        .into_response()
}

/// A BOSH request that came through axum: one [`bosh_conn`] handed over (a chunked body,
/// `Expect`, or a connection that served something else first).
async fn bosh_request(
    State(web): State<Arc<Web>>,
    client: Client,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let cors = web.cors(&headers);
    let pending = bosh::submit(&web, client, &body);
    // Both share hyper's read buffer: freed before the request is held.
    drop((headers, body));
    let reply = pending.response().await;
    let mut response = (
        reply.status,
        [(header::CONTENT_TYPE, reply.content_type)],
        reply.body,
    )
        .into_response();
    response.headers_mut().extend(cors);
    response
}

async fn bosh_page() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "This is an XMPP BOSH endpoint (XEP-0124, XEP-0206): clients POST <body/> here.\n",
    )
}

async fn preflight(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().extend(web.cors(&headers));
    response
}

async fn websocket_upgrade(
    State(web): State<Arc<Web>>,
    client: Client,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    match ws {
        Ok(ws) => websocket::upgrade(web, client, headers, ws).await,
        Err(rejection) => (
            StatusCode::BAD_REQUEST,
            format!(
                "XMPP over WebSocket (RFC 7395) is here; this was not a WebSocket handshake: {rejection}\n"
            ),
        )
            .into_response(),
    }
}

/// The BOSH and WebSocket URLs a client at this request should use: `http.public_url`, or
/// the request's own scheme and host.
fn endpoints(web: &Web, client: Client, headers: &HeaderMap) -> (String, String) {
    let config = &web.server.config.http;
    let base = if config.public_url.is_empty() {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        let scheme = if client.https { "https" } else { "http" };
        format!("{scheme}://{host}")
    } else {
        config.public_url.trim_end_matches('/').to_string()
    };
    let ws_base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.clone()
    };
    (
        format!("{base}{}", config.bosh_path),
        format!("{ws_base}{}", config.websocket_path),
    )
}

const XBOSH_REL: &str = "urn:xmpp:alt-connections:xbosh";
const WEBSOCKET_REL: &str = "urn:xmpp:alt-connections:websocket";

/// XEP-0156 §3.2: host-meta as XRD; any origin may read it.
async fn host_meta_xrd(
    State(web): State<Arc<Web>>,
    client: Client,
    headers: HeaderMap,
) -> Response {
    let (bosh, ws) = endpoints(&web, client, &headers);
    let body = format!(
        "<?xml version='1.0' encoding='utf-8'?>\n\
         <XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>\n\
         \x20 <Link rel='{XBOSH_REL}' href='{}'/>\n\
         \x20 <Link rel='{WEBSOCKET_REL}' href='{}'/>\n\
         </XRD>\n",
        xmppd_xml::attr_string(&bosh),
        xmppd_xml::attr_string(&ws)
    );
    (
        [
            (header::CONTENT_TYPE, "application/xrd+xml; charset=utf-8"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        body,
    )
        .into_response()
}

/// XEP-0156 §3.2: host-meta as JSON (RFC 6415 JRD).
async fn host_meta_json(
    State(web): State<Arc<Web>>,
    client: Client,
    headers: HeaderMap,
) -> Response {
    let (bosh, ws) = endpoints(&web, client, &headers);
    let links = [(XBOSH_REL, bosh), (WEBSOCKET_REL, ws)]
        .iter()
        .map(|(rel, href)| {
            format!(
                "{{\"rel\":{},\"href\":{}}}",
                json_string(rel),
                json_string(href)
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        format!("{{\"links\":[{links}]}}\n"),
    )
        .into_response()
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// An HTTP or HTTPS listener for `axum::serve`. Each connection is a task of its own from
/// the start: its TLS handshake, so a slow one does not hold up the next accept, then its BOSH
/// requests ([`bosh_conn`]), until a request for axum arrives.
pub struct WebListener {
    local: SocketAddr,
    accepted: mpsc::Receiver<(bosh_conn::Replay, Conn)>,
}

/// How long a TLS handshake may take on the HTTPS listener.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

impl WebListener {
    pub fn new(tcp: TcpListener, tls: bool, web: Arc<Web>) -> Self {
        let local = tcp
            .local_addr()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, accepted) = mpsc::channel(64);
        tokio::spawn(accept(tcp, tls, web, tx));
        WebListener { local, accepted }
    }
}

async fn accept(tcp: TcpListener, tls: bool, web: Arc<Web>, tx: bosh_conn::Handoff) {
    let mut shutdown = web.server.shutdown.clone();
    loop {
        let (stream, peer) = tokio::select! {
            _ = crate::shutting_down(&mut shutdown) => return,
            accepted = tcp.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let mut framing = TcpFraming::new(stream);
        let conn = Conn { peer, tls };
        let web = web.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            if tls {
                let server = &web.server;
                let handshake = framing.start_tls(&server.tls.acceptor, &server.tls.resolver);
                if !matches!(
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await,
                    Ok(true)
                ) {
                    return;
                }
            }
            bosh_conn::serve(web, framing, conn, tx).await;
        });
    }
}

impl Listener for WebListener {
    type Io = bosh_conn::Replay;
    type Addr = Conn;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The accept task ended (shutdown): serve nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Conn {
            peer: self.local,
            tls: false,
        })
    }
}

impl Connected<IncomingStream<'_, WebListener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, WebListener>) -> Self {
        *stream.remote_addr()
    }
}

/// Serves one HTTP or HTTPS listener until shutdown.
pub async fn serve(listener: TcpListener, tls: bool, web: Arc<Web>) {
    let mut shutdown = web.server.shutdown.clone();
    let listener = WebListener::new(listener, tls, web.clone());
    let app = routes(web).into_make_service_with_connect_info::<Conn>();
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { crate::shutting_down(&mut shutdown).await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "HTTP listener failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn the_client_behind_trusted_proxies_is_the_nearest_untrusted_hop() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "203.0.113.9, 198.51.100.7, 10.0.0.1")]);
        assert_eq!(
            forwarded_client(&h, &[proxy]),
            Some("198.51.100.7".parse().unwrap())
        );
        let h = headers(&[(
            "forwarded",
            "for=192.0.2.43, for=\"[2001:db8:cafe::17]:4711\";proto=https",
        )]);
        assert_eq!(
            forwarded_client(&h, &[proxy]),
            Some("2001:db8:cafe::17".parse().unwrap())
        );
        assert_eq!(forwarded_proto(&h).as_deref(), Some("https"));
        assert_eq!(
            forwarded_proto(&headers(&[("x-forwarded-proto", "http")])).as_deref(),
            Some("http")
        );
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
