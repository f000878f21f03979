//! Federation end to end: two xmppd servers on two loopback addresses with static routes,
//! certificates from the test CA, clients on both; and raw server-to-server and component
//! streams for the error paths.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use common::{parse, pki, Raw, PASSWORD};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use xmppd_server::config::{CertificateConfig, ComponentConfig, Config};
use xmppd_server::RunningServer;

const ONE: &str = "one.test";
const TWO: &str = "two.test";
const COMPONENT: &str = "echo.one.test";
const COMPONENT_SECRET: &str = "component-secret";

/// A free port on `ip` (bound and released, so two servers can name each other).
fn free_port(ip: &str) -> SocketAddr {
    let l = std::net::TcpListener::bind((ip, 0)).unwrap();
    l.local_addr().unwrap()
}

struct Node {
    server: Option<RunningServer>,
    _dir: tempfile::TempDir,
    domain: &'static str,
    c2s: SocketAddr,
    s2s: SocketAddr,
}

impl Node {
    fn state(&self) -> &xmppd_server::ServerState {
        &self.server.as_ref().unwrap().state
    }

    async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }

    /// STARTTLS, PLAIN, bind, initial presence, roster requested.
    async fn login(&self, user: &str, resource: &str) -> Raw {
        let mut raw = Raw::connect(self.c2s).await;
        raw.domain = self.domain.to_string();
        raw.open().await;
        raw.starttls().await;
        raw.open().await;
        let reply = raw.auth_plain(user, PASSWORD).await;
        assert!(reply.contains("<success"), "{reply}");
        raw.open().await;
        raw.bind(Some(resource)).await;
        raw.iq(
            "r",
            "<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>",
        )
        .await;
        raw.send("<presence/>").await;
        raw
    }
}

/// Options for a pair of servers.
#[derive(Clone, Copy, Default)]
struct Setup {
    /// Trust anchors that do not include the test CA: certificates do not verify.
    untrusted: bool,
    /// Refuse dialback.
    certificates_only: bool,
    /// Bidirectional streams (XEP-0288); off here so each test sees one link per
    /// direction unless it asks for them.
    bidi: bool,
}

fn untrusted_ca() -> PathBuf {
    let path = pki().dir.join("other-ca.pem");
    if !path.exists() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(&path, cert.pem()).unwrap();
    }
    path
}

async fn start_node(
    domain: &'static str,
    c2s: SocketAddr,
    s2s: SocketAddr,
    routes: &[(&str, SocketAddr)],
    setup: Setup,
    tweak: impl FnOnce(&mut Config),
) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pki().domain_cert(domain);
    let mut config = Config::default();
    config.server.domains = vec![domain.to_string()];
    config.server.data_dir = dir.path().to_path_buf();
    config.listen.c2s = vec![c2s];
    config.listen.c2s_direct_tls = vec![];
    config.listen.metrics = None;
    config.listen.http = vec![];
    config.listen.s2s = vec![s2s];
    config.tls.certificates = vec![CertificateConfig {
        domain: domain.into(),
        cert,
        key,
    }];
    config.sasl.scram_iterations = 4096;
    config.s2s.ca_file = Some(if setup.untrusted {
        untrusted_ca()
    } else {
        pki().ca_file.clone()
    });
    config.s2s.dialback = !setup.certificates_only;
    config.s2s.bidi = setup.bidi;
    config.s2s.connect_timeout_secs = 10;
    for (d, addr) in routes {
        config.s2s.routes.insert(d.to_string(), *addr);
    }
    tweak(&mut config);
    let server = xmppd_server::start(config, xmppd_modules::standard)
        .await
        .expect("server starts");
    for user in ["alice", "bob", "carol"] {
        let account =
            xmppd_server::sasl::credentials::new_account(user, domain, PASSWORD, 4096).unwrap();
        server
            .state
            .router
            .storage()
            .accounts
            .create(&account)
            .await
            .unwrap();
    }
    Node {
        c2s: server.c2s_addrs[0],
        s2s: server.s2s_addrs[0],
        server: Some(server),
        _dir: dir,
        domain,
    }
}

/// one.test on 127.0.0.2 and two.test on 127.0.0.3, each routing to the other.
async fn pair(setup: Setup) -> (Node, Node) {
    let (c1, s1) = (free_port("127.0.0.2"), free_port("127.0.0.2"));
    let (c2, s2) = (free_port("127.0.0.3"), free_port("127.0.0.3"));
    let one = start_node(ONE, c1, s1, &[(TWO, s2)], setup, |c| {
        c.components.insert(
            COMPONENT.into(),
            ComponentConfig {
                secret: COMPONENT_SECRET.into(),
            },
        );
        c.listen.component = vec!["127.0.0.2:0".parse().unwrap()];
    })
    .await;
    // The component's domain is served by one.test's server too (as its SRV would say).
    let two = start_node(TWO, c2, s2, &[(ONE, s1), (COMPONENT, s1)], setup, |_| {}).await;
    (one, two)
}

async fn chat_both_ways(alice: &mut Raw, bob: &mut Raw) {
    alice
        .send("<message to='bob@two.test' type='chat' id='m1'><body>hello two</body></message>")
        .await;
    let got = parse(&bob.stanza_with(&["id='m1'"]).await);
    assert_eq!(got.attr("from"), Some("alice@one.test/phone"));
    assert_eq!(
        got.get_child("body", "jabber:client").unwrap().text(),
        "hello two"
    );
    bob.send(
        "<message to='alice@one.test/phone' type='chat' id='m2'><body>hi one</body></message>",
    )
    .await;
    let got = parse(&alice.stanza_with(&["id='m2'"]).await);
    assert_eq!(got.attr("from"), Some("bob@two.test/laptop"));
    assert_eq!(
        got.get_child("body", "jabber:client").unwrap().text(),
        "hi one"
    );
}

/// alice@one.test and bob@two.test subscribe to each other; returns once both rosters say
/// `both`.
async fn befriend_across(alice: &mut Raw, bob: &mut Raw) {
    alice
        .send("<presence to='bob@two.test' type='subscribe'/>")
        .await;
    bob.stanza_with(&["type='subscribe'", "from='alice@one.test'"])
        .await;
    bob.send("<presence to='alice@one.test' type='subscribed'/>")
        .await;
    bob.send("<presence to='alice@one.test' type='subscribe'/>")
        .await;
    alice
        .stanza_with(&["type='subscribe'", "from='bob@two.test'"])
        .await;
    alice
        .send("<presence to='bob@two.test' type='subscribed'/>")
        .await;
    for (raw, contact) in [(&mut *alice, "bob@two.test"), (&mut *bob, "alice@one.test")] {
        let mut both = false;
        for _ in 0..50 {
            let roster = parse(
                &raw.iq(
                    "q",
                    "<iq type='get' id='q'><query xmlns='jabber:iq:roster'/></iq>",
                )
                .await,
            );
            let query = roster.get_child("query", "jabber:iq:roster").unwrap();
            both = query
                .children()
                .any(|i| i.attr("jid") == Some(contact) && i.attr("subscription") == Some("both"));
            if both {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(both, "{contact} is not `both`");
    }
}

#[tokio::test]
async fn two_servers_federate_with_verified_certificates() {
    let (one, two) = pair(Setup::default()).await;
    let mut alice = one.login("alice", "phone").await;
    let mut bob = two.login("bob", "laptop").await;
    chat_both_ways(&mut alice, &mut bob).await;

    // Subscription handshake across the link, ending in `both` on both sides.
    befriend_across(&mut alice, &mut bob).await;
    // Presence flows now; unavailable too.
    bob.send("<presence><status>here</status></presence>").await;
    let p = parse(
        &alice
            .stanza_with(&["from='bob@two.test/laptop'", "<status>here"])
            .await,
    );
    assert_eq!(p.name(), "presence");

    // An iq to the remote server, and to a remote full JID.
    let pong = parse(
        &alice
            .iq(
                "p1",
                "<iq type='get' id='p1' to='two.test'><ping xmlns='urn:xmpp:ping'/></iq>",
            )
            .await,
    );
    assert_eq!(
        (pong.attr("type"), pong.attr("from")),
        (Some("result"), Some("two.test"))
    );
    alice
        .send("<iq type='get' id='p2' to='bob@two.test/laptop'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let ping = parse(&bob.stanza_with(&["id='p2'"]).await);
    assert_eq!(ping.attr("from"), Some("alice@one.test/phone"));
    bob.send("<iq type='result' id='p2' to='alice@one.test/phone'/>")
        .await;
    let result = parse(&alice.stanza_with(&["id='p2'"]).await);
    assert_eq!(
        (result.attr("type"), result.attr("from")),
        (Some("result"), Some("bob@two.test/laptop"))
    );

    // A burst of 200 arrives complete and in order.
    for i in 0..200 {
        alice
            .send(&format!(
                "<message to='bob@two.test/laptop' type='chat' id='b{i}'><body>{i}</body></message>"
            ))
            .await;
    }
    for i in 0..200 {
        let m = parse(&bob.stanza_with(&["<message", "id='b"]).await);
        assert_eq!(m.attr("id"), Some(format!("b{i}").as_str()), "out of order");
    }
    // One outgoing link per direction.
    assert_eq!(one.state().federation.link_count(), 1);
    assert_eq!(two.state().federation.link_count(), 1);
    // Both links authenticated with certificates, and the metrics say so.
    for node in [&one, &two] {
        let text = node.state().metrics.render();
        let counted = |direction: &str| {
            text.lines().any(|l| {
                l.starts_with("xmppd_s2s_authenticated_total{")
                    && l.contains(&format!("direction=\"{direction}\""))
                    && l.contains("method=\"sasl-external\"")
                    && l.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok()) >= Some(1)
            })
        };
        assert!(counted("in") && counted("out"), "{text}");
        assert!(text.contains("xmppd_s2s_links_open 2"), "{text}");
    }

    drop(bob);
    let gone = parse(
        &alice
            .stanza_with(&["from='bob@two.test/laptop'", "unavailable"])
            .await,
    );
    assert_eq!(gone.attr("type"), Some("unavailable"));
    one.stop().await;
    two.stop().await;
}

/// XEP-0288: with bidirectional streams one connection carries both directions, whether
/// the pair authenticated with SASL EXTERNAL or with dialback.
#[tokio::test]
async fn bidirectional_streams_carry_both_directions_on_one_connection() {
    for untrusted in [false, true] {
        let (one, two) = pair(Setup {
            untrusted,
            bidi: true,
            ..Setup::default()
        })
        .await;
        let mut alice = one.login("alice", "phone").await;
        let mut bob = two.login("bob", "laptop").await;
        // alice speaks first: one.test connects, two.test answers on that connection.
        chat_both_ways(&mut alice, &mut bob).await;
        befriend_across(&mut alice, &mut bob).await;
        for node in [&one, &two] {
            let text = node.state().metrics.render();
            assert!(
                text.contains("xmppd_s2s_links_open 1\n"),
                "untrusted={untrusted}: {text}"
            );
            // The pool knows a link to the other domain: its own, or the one over the
            // incoming stream.
            assert_eq!(node.state().federation.link_count(), 1);
        }
        // A peer that closes the connection takes the return path with it; the next
        // stanza opens a link of its own.
        one.stop().await;
        let mut gone = false;
        for _ in 0..100 {
            gone = two.state().federation.link_count() == 0;
            if gone {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(gone, "the link over the closed stream is still in the pool");
        bob.send("<message to='alice@one.test' type='chat' id='late'><body>?</body></message>")
            .await;
        let bounce = parse(&bob.stanza_with(&["id='late'"]).await);
        assert_eq!(bounce.attr("type"), Some("error"), "{bounce:?}");
        two.stop().await;
    }
}

#[tokio::test]
async fn dialback_when_certificates_do_not_verify() {
    let (one, two) = pair(Setup {
        untrusted: true,
        ..Setup::default()
    })
    .await;
    let mut alice = one.login("alice", "phone").await;
    let mut bob = two.login("bob", "laptop").await;
    chat_both_ways(&mut alice, &mut bob).await;
    one.stop().await;
    two.stop().await;
}

#[tokio::test]
async fn certificates_only_bounces_when_the_peer_cannot_prove_its_name() {
    let (one, two) = pair(Setup {
        untrusted: true,
        certificates_only: true,
        ..Setup::default()
    })
    .await;
    let mut alice = one.login("alice", "phone").await;
    alice
        .send("<message to='bob@two.test' type='chat' id='x1'><body>?</body></message>")
        .await;
    let bounce = parse(&alice.stanza_with(&["id='x1'"]).await);
    assert_eq!(bounce.attr("type"), Some("error"));
    let error = bounce.get_child("error", "jabber:client").unwrap();
    assert!(error
        .get_child(
            "remote-server-not-found",
            "urn:ietf:params:xml:ns:xmpp-stanzas"
        )
        .is_some());
    one.stop().await;
    two.stop().await;
}

/// A raw server-to-server (or component) peer.
struct Peer {
    io: PeerIo,
    buf: String,
}

enum PeerIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Upgrading,
}

impl Peer {
    async fn connect(addr: SocketAddr) -> Peer {
        Peer {
            io: PeerIo::Plain(TcpStream::connect(addr).await.unwrap()),
            buf: String::new(),
        }
    }

    async fn send(&mut self, data: &str) {
        let result = match &mut self.io {
            PeerIo::Plain(s) => s.write_all(data.as_bytes()).await,
            PeerIo::Tls(s) => match s.write_all(data.as_bytes()).await {
                Ok(()) => s.flush().await,
                e => e,
            },
            PeerIo::Upgrading => unreachable!(),
        };
        result.unwrap();
    }

    /// Reads until `needle` appears (or the stream closes); returns everything read.
    async fn read_until(&mut self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while !self.buf.contains(needle) {
            let mut chunk = [0u8; 4096];
            let read = async {
                match &mut self.io {
                    PeerIo::Plain(s) => s.read(&mut chunk).await,
                    PeerIo::Tls(s) => s.read(&mut chunk).await,
                    PeerIo::Upgrading => unreachable!(),
                }
            };
            match tokio::time::timeout_at(deadline, read).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => self.buf.push_str(&String::from_utf8_lossy(&chunk[..n])),
                Err(_) => panic!("timed out waiting for {needle:?}; got {:?}", self.buf),
            }
        }
        std::mem::take(&mut self.buf)
    }

    /// Opens a stream from `from` to `to`, upgrades it with STARTTLS (presenting the test
    /// CA's certificate for `cert_for`, if any) and returns the features after TLS.
    async fn secure(
        addr: SocketAddr,
        from: &str,
        to: &str,
        cert_for: Option<&str>,
    ) -> (Peer, String) {
        let mut peer = Peer::connect(addr).await;
        peer.send(&s2s_header(from, to)).await;
        peer.read_until("</stream:features>").await;
        peer.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await;
        peer.read_until("<proceed").await;
        let PeerIo::Plain(tcp) = std::mem::replace(&mut peer.io, PeerIo::Upgrading) else {
            unreachable!()
        };
        let name = rustls::pki_types::ServerName::try_from(to.to_string()).unwrap();
        let tls = connector(cert_for).connect(name, tcp).await.unwrap();
        peer.io = PeerIo::Tls(Box::new(tls));
        peer.send(&s2s_header(from, to)).await;
        let features = peer.read_until("</stream:features>").await;
        (peer, features)
    }
}

/// A TLS client trusting the test CA, with a certificate for `cert_for` if given.
fn connector(cert_for: Option<&str>) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    let Some(domain) = cert_for else {
        return common::tls_connector(false);
    };
    let (cert, key) = pki().domain_cert(domain);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki().ca_der.clone().into()).unwrap();
    let chain = rustls::pki_types::CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&key).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// The `type` of the `<db:result/>` in what a peer read.
fn dialback_type(read: &str) -> String {
    let start = read
        .find("<db:result")
        .unwrap_or_else(|| panic!("no db:result in {read:?}"));
    let wrapped = format!(
        "<w xmlns:db='jabber:server:dialback'>{}</w>",
        &read[start..]
    );
    let w = xmppd_xml::parse_fragment(&wrapped, "jabber:server")
        .unwrap_or_else(|| panic!("not XML: {read:?}"));
    let result = w.children().next().unwrap();
    assert!(result.is("result", "jabber:server:dialback"));
    result.attr("type").unwrap_or_default().to_string()
}

fn s2s_header(from: &str, to: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
         xmlns:db='jabber:server:dialback' xmlns:stream='http://etherx.jabber.org/streams' \
         from='{from}' to='{to}' version='1.0'>"
    )
}

/// The stream error condition in what a peer read, parsed.
fn stream_error(read: &str) -> String {
    let start = read
        .find("<stream:error")
        .unwrap_or_else(|| panic!("no stream error in {read:?}"));
    let end = read[start..].find("</stream:error>").unwrap() + start + "</stream:error>".len();
    let wrapped = format!(
        "<w xmlns:stream='http://etherx.jabber.org/streams'>{}</w>",
        &read[start..end]
    );
    let w = xmppd_xml::parse_fragment(&wrapped, "jabber:server").unwrap();
    let error = w.children().next().unwrap();
    let condition = error
        .children()
        .find(|c| c.ns() == "urn:ietf:params:xml:ns:xmpp-streams" && c.name() != "text")
        .unwrap()
        .name()
        .to_string();
    condition
}

#[tokio::test]
async fn bad_server_streams_get_the_stream_error_rfc_6120_names_and_links_keep_working() {
    let (one, two) = pair(Setup::default()).await;
    // Unknown domain in the header.
    let mut p = Peer::connect(one.s2s).await;
    p.send(&s2s_header(TWO, "nowhere.test")).await;
    assert_eq!(
        stream_error(&p.read_until("</stream:stream>").await),
        "host-unknown"
    );
    // Wrong namespace.
    let mut p = Peer::connect(one.s2s).await;
    p.send(&s2s_header(TWO, ONE).replace("jabber:server'", "jabber:client'"))
        .await;
    assert_eq!(
        stream_error(&p.read_until("</stream:stream>").await),
        "invalid-namespace"
    );
    // A stanza before TLS and authentication.
    let mut p = Peer::connect(one.s2s).await;
    p.send(&s2s_header(TWO, ONE)).await;
    p.read_until("</stream:features>").await;
    p.send("<message from='bob@two.test' to='alice@one.test'><body>x</body></message>")
        .await;
    assert_eq!(
        stream_error(&p.read_until("</stream:stream>").await),
        "policy-violation"
    );

    // Over TLS: a stanza before authentication.
    let (mut p, _) = Peer::secure(one.s2s, TWO, ONE, None).await;
    p.send("<message from='bob@two.test' to='alice@one.test'><body>x</body></message>")
        .await;
    assert_eq!(
        stream_error(&p.read_until("</stream:stream>").await),
        "not-authorized"
    );

    // A dialback key two.test never made: its authoritative server says invalid.
    let (mut p, features) = Peer::secure(one.s2s, TWO, ONE, None).await;
    assert!(
        features.contains("urn:xmpp:features:dialback"),
        "{features}"
    );
    p.send("<db:result from='two.test' to='one.test'>0123456789abcdef</db:result>")
        .await;
    assert_eq!(dialback_type(&p.read_until("/>").await), "invalid");

    // A certificate for another domain: no EXTERNAL for two.test, and a forced attempt fails.
    let (mut p, features) = Peer::secure(one.s2s, TWO, ONE, Some("evil.test")).await;
    assert!(!features.contains("EXTERNAL"), "{features}");
    p.send(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>dHdvLnRlc3Q=</auth>",
    )
    .await;
    assert!(p.read_until("</failure>").await.contains("<not-authorized"));

    // Authenticated as evil.test, it may not send as two.test, nor to a domain not served.
    for (stanza, condition) in [
        (
            "<message from='bob@two.test' to='alice@one.test'><body>x</body></message>",
            "invalid-from",
        ),
        (
            "<message from='eve@evil.test' to='alice@elsewhere.test'><body>x</body></message>",
            "host-unknown",
        ),
    ] {
        let (mut p, features) = Peer::secure(one.s2s, "evil.test", ONE, Some("evil.test")).await;
        assert!(features.contains("EXTERNAL"), "{features}");
        p.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>")
            .await;
        p.read_until("<success").await;
        p.send(&s2s_header("evil.test", ONE)).await;
        p.read_until("</stream:features>").await;
        p.send(stanza).await;
        assert_eq!(
            stream_error(&p.read_until("</stream:stream>").await),
            condition
        );
    }

    // A peer that stops after <proceed/> holds nothing up for the others.
    let mut stalled = Peer::connect(one.s2s).await;
    stalled.send(&s2s_header(TWO, ONE)).await;
    stalled.read_until("</stream:features>").await;
    stalled
        .send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await;
    stalled.read_until("<proceed").await;

    // After all that, the real link still works.
    let mut alice = one.login("alice", "phone").await;
    let mut bob = two.login("bob", "laptop").await;
    chat_both_ways(&mut alice, &mut bob).await;
    one.stop().await;
    two.stop().await;
}

#[tokio::test]
async fn a_component_serves_its_domain_and_a_wrong_secret_is_refused() {
    let (one, two) = pair(Setup::default()).await;
    let addr = one.server.as_ref().unwrap().component_addrs[0];
    let header = format!(
        "<stream:stream xmlns='jabber:component:accept' \
         xmlns:stream='http://etherx.jabber.org/streams' to='{COMPONENT}'>"
    );
    // Wrong secret.
    let mut bad = Peer::connect(addr).await;
    bad.send(&header).await;
    let read = bad.read_until("id='").await;
    assert!(read.contains("<stream:stream"), "{read}");
    bad.send("<handshake>0000</handshake>").await;
    assert_eq!(
        stream_error(&bad.read_until("</stream:stream>").await),
        "not-authorized"
    );

    // The right one.
    let mut c = Peer::connect(addr).await;
    c.send(&header).await;
    let read = c.read_until("id='").await;
    let id_start = read.find("id='").unwrap() + 4;
    let id = &read[id_start..id_start + read[id_start..].find('\'').unwrap()];
    let digest = {
        use sha1::Digest;
        sha1::Sha1::digest(format!("{id}{COMPONENT_SECRET}").as_bytes())
    };
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    c.send(&format!("<handshake>{hex}</handshake>")).await;
    c.read_until("<handshake/>").await;

    // A user's message reaches the component, and the component's reaches the user.
    let mut alice = one.login("alice", "phone").await;
    alice
        .send("<message to='bot@echo.one.test' id='c1'><body>to the component</body></message>")
        .await;
    let got = c.read_until("</message>").await;
    let start = got.find("<message").unwrap();
    let m = xmppd_xml::parse_fragment(&got[start..], "jabber:component:accept").unwrap();
    assert_eq!(m.attr("from"), Some("alice@one.test/phone"));
    assert!(m.get_child("body", "jabber:component:accept").is_some());
    c.send("<message from='bot@echo.one.test' to='alice@one.test/phone' id='c2'><body>back</body></message>")
        .await;
    let back = parse(&alice.stanza_with(&["id='c2'"]).await);
    assert_eq!(back.attr("from"), Some("bot@echo.one.test"));
    // Users of other servers reach it over federation too, and it answers them.
    let mut bob = two.login("bob", "laptop").await;
    bob.send("<message to='bot@echo.one.test' id='c3'><body>from afar</body></message>")
        .await;
    let got = c.read_until("</message>").await;
    let start = got.find("<message").unwrap();
    let m = xmppd_xml::parse_fragment(&got[start..], "jabber:component:accept").unwrap();
    assert_eq!(m.attr("from"), Some("bob@two.test/laptop"));
    c.send("<message from='bot@echo.one.test' to='bob@two.test/laptop' id='c4'><body>hi bob</body></message>")
        .await;
    let back = parse(&bob.stanza_with(&["id='c4'"]).await);
    assert_eq!(back.attr("from"), Some("bot@echo.one.test"));
    // Sending as another domain is refused.
    c.send("<message from='mallory@one.test' to='alice@one.test'><body>x</body></message>")
        .await;
    assert_eq!(
        stream_error(&c.read_until("</stream:stream>").await),
        "invalid-from"
    );
    one.stop().await;
    two.stop().await;
}

/// The stanza error condition of a bounced stanza.
fn bounce_condition(xml: &str) -> String {
    let el = parse(xml);
    assert_eq!(el.attr("type"), Some("error"), "{xml}");
    let error = el.get_child("error", "jabber:client").unwrap();
    let condition = error
        .children()
        .find(|c| c.ns() == "urn:ietf:params:xml:ns:xmpp-stanzas")
        .unwrap()
        .name()
        .to_string();
    condition
}

#[tokio::test]
async fn unreachable_and_silent_servers_bounce_with_their_own_conditions() {
    let dead = free_port("127.0.0.4");
    let silent = std::net::TcpListener::bind("127.0.0.4:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let routes = [("dead.test", dead), ("silent.test", silent_addr)];
    let node = start_node(
        ONE,
        free_port("127.0.0.2"),
        free_port("127.0.0.2"),
        &routes,
        Setup::default(),
        |c| c.s2s.connect_timeout_secs = 2,
    )
    .await;
    let mut alice = node.login("alice", "phone").await;
    alice
        .send("<message to='x@dead.test' type='chat' id='d1'><body>?</body></message>")
        .await;
    let started = std::time::Instant::now();
    alice
        .send("<message to='x@silent.test' type='chat' id='s1'><body>?</body></message>")
        .await;
    assert_eq!(
        bounce_condition(&alice.stanza_with(&["id='d1'"]).await),
        "remote-server-not-found"
    );
    assert_eq!(
        bounce_condition(&alice.stanza_with(&["id='s1'"]).await),
        "remote-server-timeout"
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(1500));
    // Straight after a failure the domain is not tried again: the bounce is immediate.
    alice
        .send("<message to='x@dead.test' type='chat' id='d2'><body>?</body></message>")
        .await;
    assert_eq!(
        bounce_condition(&alice.stanza_with(&["id='d2'"]).await),
        "remote-server-not-found"
    );
    assert_eq!(node.state().federation.link_count(), 0);
    drop(silent);
    node.stop().await;
}

#[tokio::test]
async fn offline_storage_and_blocking_work_for_remote_senders() {
    let (one, two) = pair(Setup::default()).await;
    let mut alice = one.login("alice", "phone").await;
    // Bob is offline: the message waits on two.test and arrives at his next login.
    alice
        .send("<message to='bob@two.test' type='chat' id='o1'><body>while you were out</body></message>")
        .await;
    let mut waited = false;
    for _ in 0..100 {
        let stored = two
            .state()
            .router
            .storage()
            .offline
            .oldest("bob", TWO, 10)
            .await
            .unwrap();
        if !stored.is_empty() {
            waited = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(waited, "the message from another server was not stored");
    let mut bob = two.login("bob", "laptop").await;
    let stored = parse(&bob.stanza_with(&["id='o1'"]).await);
    assert_eq!(stored.attr("from"), Some("alice@one.test/phone"));
    assert!(stored.get_child("delay", "urn:xmpp:delay").is_some());

    // Bob blocks alice@one.test (XEP-0191): her next message bounces and never reaches him.
    let blocked = parse(
        &bob.iq(
            "bl",
            "<iq type='set' id='bl'><block xmlns='urn:xmpp:blocking'><item jid='alice@one.test'/></block></iq>",
        )
        .await,
    );
    assert_eq!(blocked.attr("type"), Some("result"));
    alice
        .send(
            "<message to='bob@two.test/laptop' type='chat' id='x2'><body>blocked?</body></message>",
        )
        .await;
    let bounce = alice.stanza_with(&["id='x2'"]).await;
    assert_eq!(bounce_condition(&bounce), "service-unavailable");
    // After a round trip through two.test nothing from alice arrived.
    bob.sync().await;
    let rest = bob.next_stanza_if_any().await;
    assert!(!rest.contains("id='x2'"), "{rest}");
    one.stop().await;
    two.stop().await;
}

#[tokio::test]
async fn direct_tls_server_streams_authenticate_with_the_certificate() {
    let (one, two) = {
        let (c1, s1, t1) = (
            free_port("127.0.0.2"),
            free_port("127.0.0.2"),
            free_port("127.0.0.2"),
        );
        let (c2, s2) = (free_port("127.0.0.3"), free_port("127.0.0.3"));
        let one = start_node(ONE, c1, s1, &[(TWO, s2)], Setup::default(), |c| {
            c.listen.s2s_direct_tls = vec![t1];
        })
        .await;
        let two = start_node(TWO, c2, s2, &[(ONE, s1)], Setup::default(), |_| {}).await;
        (one, two)
    };
    let addr = one.server.as_ref().unwrap().s2s_direct_tls_addrs[0];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(ONE).unwrap();
    let tls = connector(Some(TWO)).connect(name, tcp).await.unwrap();
    let mut p = Peer {
        io: PeerIo::Tls(Box::new(tls)),
        buf: String::new(),
    };
    p.send(&s2s_header(TWO, ONE)).await;
    let features = p.read_until("</stream:features>").await;
    assert!(!features.contains("starttls"), "{features}");
    assert!(
        features.contains("<mechanism>EXTERNAL</mechanism>"),
        "{features}"
    );
    p.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>")
        .await;
    p.read_until("<success").await;
    p.send(&s2s_header(TWO, ONE)).await;
    p.read_until("</stream:features>").await;
    // Authenticated as two.test: a message from there reaches alice.
    let mut alice = one.login("alice", "phone").await;
    p.send("<message from='bob@two.test/x' to='alice@one.test' type='chat' id='dt'><body>direct</body></message>")
        .await;
    let got = parse(&alice.stanza_with(&["id='dt'"]).await);
    assert_eq!(got.attr("from"), Some("bob@two.test/x"));
    one.stop().await;
    two.stop().await;
}

#[tokio::test]
async fn pep_notifications_reach_a_contact_on_another_server_after_asking_its_caps() {
    let (one, two) = pair(Setup::default()).await;
    let mut alice = one.login("alice", "phone").await;
    let mut bob = two.login("bob", "laptop").await;
    befriend_across(&mut alice, &mut bob).await;
    // Bob's client wants nicknames. Neither server knows its hash: two.test asks it (for
    // its own PEP), and one.test asks it over the link; bob answers both.
    let features = [
        "http://jabber.org/protocol/caps",
        "http://jabber.org/protocol/disco#info",
        "http://jabber.org/protocol/nick+notify",
    ];
    common::caps::advertise(&mut bob, &features).await;
    common::caps::answer_caps(&mut bob, &features).await;
    alice
        .send(
            "<iq type='set' id='pub'><pubsub xmlns='http://jabber.org/protocol/pubsub'>\
             <publish node='http://jabber.org/protocol/nick'><item id='current'>\
             <nick xmlns='http://jabber.org/protocol/nick'>Alice</nick></item></publish>\
             </pubsub></iq>",
        )
        .await;
    let published = parse(&alice.stanza_with(&["id='pub'"]).await);
    assert_eq!(published.attr("type"), Some("result"), "{published:?}");
    let note = parse(
        &bob.stanza_with(&["<message", "http://jabber.org/protocol/pubsub#event"])
            .await,
    );
    assert_eq!(note.attr("from"), Some("alice@one.test"));
    let event = note
        .get_child("event", "http://jabber.org/protocol/pubsub#event")
        .unwrap();
    let items = event
        .get_child("items", "http://jabber.org/protocol/pubsub#event")
        .unwrap();
    assert_eq!(items.attr("node"), Some("http://jabber.org/protocol/nick"));
    let nick = items
        .children()
        .next()
        .and_then(|item| item.get_child("nick", "http://jabber.org/protocol/nick"))
        .expect("the nick");
    assert_eq!(nick.text(), "Alice");
    one.stop().await;
    two.stop().await;
}
