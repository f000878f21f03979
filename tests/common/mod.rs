//! Test harness: a real server on ephemeral loopback ports with a test CA, and a raw XML
//! client for exact protocol exchanges.
#![allow(dead_code)]

pub mod binary;
pub mod caps;
pub mod http;
pub mod scram;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use xmppd_server::config::{CertificateConfig, Config};
use xmppd_server::RunningServer;

pub const DOMAIN: &str = "localhost";
pub const PASSWORD: &str = "s3cret pässword";
/// How long an expected reply may take: generous, as debug builds on a busy machine are slow.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A CA, a server certificate for `localhost` signed by it, and a client certificate for
/// `alice@localhost` (xmppAddr) for SASL EXTERNAL.
pub struct Pki {
    pub dir: PathBuf,
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_der: Vec<u8>,
    pub client_cert_der: Vec<u8>,
    pub client_key_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    /// A certificate for `domain` (and `*.domain`) signed by the test CA, serverAuth only
    /// (as public CAs issue them now): (certificate file, key file).
    pub fn domain_cert(&self, domain: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec![domain.to_string(), format!("*.{domain}")]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let cert_file = self.dir.join(format!("{domain}.crt"));
        let key_file = self.dir.join(format!("{domain}.key"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }
}

pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("xmppd-test-pki-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca.distinguished_name
            .push(DnType::CommonName, "xmppd test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);

        let server_key = KeyPair::generate().unwrap();
        // With the wildcard: the MUC and pubsub services live on subdomains.
        let mut server =
            CertificateParams::new(vec![DOMAIN.to_string(), format!("*.{DOMAIN}")]).unwrap();
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server.signed_by(&server_key, &issuer).unwrap();

        let client_key = KeyPair::generate().unwrap();
        let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
        client.subject_alt_names.push(rcgen::SanType::OtherName((
            vec![1, 3, 6, 1, 5, 5, 7, 8, 5],
            rcgen::OtherNameValue::Utf8String(format!("alice@{DOMAIN}")),
        )));
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client.signed_by(&client_key, &issuer).unwrap();

        let ca_file = dir.join("ca.pem");
        let cert_file = dir.join("server.crt");
        let key_file = dir.join("server.key");
        std::fs::write(&ca_file, ca_cert.pem()).unwrap();
        std::fs::write(&cert_file, server_cert.pem()).unwrap();
        std::fs::write(&key_file, server_key.serialize_pem()).unwrap();
        // tokio-xmpp trusts the platform store, which rustls-native-certs reads from here.
        std::env::set_var("SSL_CERT_FILE", &ca_file);
        Pki {
            dir,
            ca_file,
            cert_file,
            key_file,
            ca_der: ca_cert.der().to_vec(),
            client_cert_der: client_cert.der().to_vec(),
            client_key_der: client_key.serialize_der(),
            issuer,
        }
    })
}

pub struct TestServer {
    server: Option<RunningServer>,
    config: Config,
    _dir: tempfile::TempDir,
    pub c2s: SocketAddr,
    pub direct_tls: SocketAddr,
    pub metrics: Option<SocketAddr>,
    /// BOSH, WebSocket and host-meta.
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a server; `tweak` adjusts the test configuration first.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_with_modules(tweak, |_| {}).await
    }

    /// Starts a server with the modules `extra` registers besides the standard ones.
    pub async fn start_with_modules(
        tweak: impl FnOnce(&mut Config),
        extra: impl FnOnce(&mut xmppd_server::registry::Registry),
    ) -> Self {
        let pki = pki();
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.server.data_dir = dir.path().to_path_buf();
        config.listen.c2s = vec!["127.0.0.1:0".parse().unwrap()];
        config.listen.c2s_direct_tls = vec!["127.0.0.1:0".parse().unwrap()];
        config.listen.metrics = Some("127.0.0.1:0".parse().unwrap());
        config.listen.http = vec!["127.0.0.1:0".parse().unwrap()];
        config.tls.certificates = vec![CertificateConfig {
            domain: DOMAIN.into(),
            cert: pki.cert_file.clone(),
            key: pki.key_file.clone(),
        }];
        config.sasl.scram_iterations = 4096;
        tweak(&mut config);
        let server = xmppd_server::start(config.clone(), |r| {
            xmppd_modules::standard(r);
            extra(r);
        })
        .await
        .expect("server starts");
        let ts = TestServer {
            c2s: server.c2s_addrs[0],
            direct_tls: server.direct_tls_addrs[0],
            metrics: server.metrics_addr,
            http: server.http_addrs.first().copied(),
            https: server.https_addrs.first().copied(),
            server: Some(server),
            config,
            _dir: dir,
        };
        for user in ["alice", "bob", "carol"] {
            ts.add_user(user, PASSWORD).await;
        }
        ts
    }

    pub fn data_dir(&self) -> &std::path::Path {
        &self.config.server.data_dir
    }

    pub fn state(&self) -> &xmppd_server::ServerState {
        &self.server.as_ref().unwrap().state
    }

    pub async fn add_user(&self, user: &str, password: &str) {
        let account =
            xmppd_server::sasl::credentials::new_account(user, DOMAIN, password, 4096).unwrap();
        self.state()
            .router
            .storage()
            .accounts
            .create(&account)
            .await
            .unwrap();
    }

    /// Stops the server and starts it again on the same data (new ports).
    pub async fn restart(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
        let server = xmppd_server::start(self.config.clone(), xmppd_modules::standard)
            .await
            .expect("server restarts");
        self.c2s = server.c2s_addrs[0];
        self.direct_tls = server.direct_tls_addrs[0];
        self.metrics = server.metrics_addr;
        self.http = server.http_addrs.first().copied();
        self.https = server.https_addrs.first().copied();
        self.server = Some(server);
    }

    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    /// Fetches `/metrics` with a minimal HTTP/1.1 request.
    pub async fn metrics_text(&self) -> String {
        let mut s = TcpStream::connect(self.metrics.unwrap()).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        tokio::time::timeout(TIMEOUT, s.read_to_string(&mut out))
            .await
            .unwrap()
            .unwrap();
        out
    }

    /// A metric's value from `/metrics`.
    pub async fn metric(&self, name: &str) -> u64 {
        let text = self.metrics_text().await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing in:\n{text}"))
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// A scripted client that speaks raw XML.
pub struct Raw {
    io: Option<Io>,
    /// The domain its stream headers and TLS name (`localhost` unless connected elsewhere).
    pub domain: String,
    buf: String,
    /// Stanzas read while looking for another one, oldest first.
    skipped: std::collections::VecDeque<String>,
}

pub fn tls_connector(client_cert: bool) -> tokio_rustls::TlsConnector {
    let pki = pki();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone().into()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = if client_cert {
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(pki.client_key_der.clone().into());
        builder
            .with_client_auth_cert(vec![pki.client_cert_der.clone().into()], key)
            .unwrap()
    } else {
        builder.with_no_client_auth()
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

pub fn header(to: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' to='{to}' version='1.0'>"
    )
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let tcp = TcpStream::connect(addr).await.unwrap();
        Raw {
            io: Some(Io::Plain(tcp)),
            domain: DOMAIN.to_string(),
            buf: String::new(),
            skipped: Default::default(),
        }
    }

    /// A direct TLS (XEP-0368) connection.
    pub async fn connect_tls(addr: SocketAddr, client_cert: bool) -> Raw {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = tls_connector(client_cert)
            .connect(DOMAIN.try_into().unwrap(), tcp)
            .await
            .unwrap();
        Raw {
            io: Some(Io::Tls(Box::new(tls))),
            domain: DOMAIN.to_string(),
            buf: String::new(),
            skipped: Default::default(),
        }
    }

    pub async fn send(&mut self, data: &str) {
        assert!(self.try_send(data.as_bytes()).await, "send failed");
    }

    /// Sends and ignores a failure (the server may have closed already).
    pub async fn try_send(&mut self, data: &[u8]) -> bool {
        // Flushed: TLS keeps what the socket did not take until then.
        let res = match self.io.as_mut().unwrap() {
            Io::Plain(s) => s.write_all(data).await,
            Io::Tls(s) => match s.write_all(data).await {
                Ok(()) => s.flush().await,
                e => e,
            },
        };
        res.is_ok()
    }

    async fn read_some(&mut self) -> usize {
        let mut chunk = [0u8; 8192];
        let n = match self.io.as_mut().unwrap() {
            Io::Plain(s) => s.read(&mut chunk).await,
            Io::Tls(s) => s.read(&mut chunk).await,
        };
        let n = n.unwrap_or(0);
        self.buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
        n
    }

    /// Reads until `needle` has arrived; returns everything read up to and including it.
    pub async fn read_until(&mut self, needle: &str) -> String {
        self.read_until_any(&[needle]).await
    }

    /// Reads until any of `needles` has arrived; returns everything up to the first match.
    pub async fn read_until_any(&mut self, needles: &[&str]) -> String {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let found = needles
                .iter()
                .filter_map(|n| self.buf.find(n).map(|pos| pos + n.len()))
                .min();
            if let Some(end) = found {
                let rest = self.buf.split_off(end);
                return std::mem::replace(&mut self.buf, rest);
            }
            match tokio::time::timeout_at(deadline, self.read_some()).await {
                Ok(0) => panic!(
                    "connection closed waiting for {needles:?}; got {:?}",
                    self.buf
                ),
                Ok(_) => {}
                Err(_) => panic!("timed out waiting for {needles:?}; got {:?}", self.buf),
            }
        }
    }

    /// Reads one SASL outcome: `<success/>`, `<success>…</success>` or `<failure>…</failure>`.
    pub async fn read_sasl_outcome(&mut self) -> String {
        self.read_until_any(&["</failure>", "</success>", "sasl'/>", "</challenge>"])
            .await
    }

    /// Reads until the server closes the connection; returns everything.
    pub async fn read_to_close(&mut self) -> String {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.read_some()).await {
                Ok(0) => return std::mem::take(&mut self.buf),
                Ok(_) => {}
                Err(_) => panic!("server did not close; got {:?}", self.buf),
            }
        }
    }

    /// Sends a stream header and reads the features.
    pub async fn open(&mut self) -> String {
        self.send(&header(&self.domain.clone())).await;
        self.read_until("</stream:features>").await
    }

    pub async fn starttls(&mut self) {
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await;
        self.read_until("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await;
        let Some(Io::Plain(tcp)) = self.io.take() else {
            panic!("starttls on a TLS stream")
        };
        let name = rustls::pki_types::ServerName::try_from(self.domain.clone()).unwrap();
        let tls = tls_connector(false).connect(name, tcp).await.unwrap();
        self.io = Some(Io::Tls(Box::new(tls)));
    }

    /// The TLS 1.3 exporter channel binding of this connection (RFC 9266).
    pub fn tls_exporter(&self) -> Vec<u8> {
        let Some(Io::Tls(tls)) = &self.io else {
            panic!("not TLS")
        };
        tls.get_ref()
            .1
            .export_keying_material([0u8; 32], b"EXPORTER-Channel-Binding", None)
            .unwrap()
            .to_vec()
    }

    /// RFC 5929 tls-server-end-point: SHA-256 of the server certificate (ECDSA-SHA256 here).
    pub fn tls_server_end_point(&self) -> Vec<u8> {
        use sha2::Digest;
        let Some(Io::Tls(tls)) = &self.io else {
            panic!("not TLS")
        };
        let cert = &tls.get_ref().1.peer_certificates().unwrap()[0];
        sha2::Sha256::digest(cert.as_ref()).to_vec()
    }

    /// Connects with STARTTLS and opens the encrypted stream; returns its features.
    pub async fn secure(addr: SocketAddr) -> (Raw, String) {
        let mut raw = Raw::connect(addr).await;
        raw.open().await;
        raw.starttls().await;
        let features = raw.open().await;
        (raw, features)
    }

    pub async fn auth_plain(&mut self, user: &str, password: &str) -> String {
        let payload = B64.encode(format!("\0{user}\0{password}"));
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>"
        ))
        .await;
        self.read_sasl_outcome().await
    }

    /// Binds `resource` (or asks the server for one); returns the full JID.
    pub async fn bind(&mut self, resource: Option<&str>) -> String {
        let res = resource
            .map(|r| format!("<resource>{r}</resource>"))
            .unwrap_or_default();
        self.send(&format!(
            "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>{res}</bind></iq>"
        ))
        .await;
        let reply = self.read_until("</iq>").await;
        let start = reply.find("<jid>").expect("bound jid") + 5;
        let end = reply.find("</jid>").unwrap();
        reply[start..end].to_string()
    }

    /// STARTTLS, PLAIN, bind, initial presence.
    pub async fn login(addr: SocketAddr, user: &str, resource: &str) -> (Raw, String) {
        let (mut raw, _) = Raw::secure(addr).await;
        let reply = raw.auth_plain(user, PASSWORD).await;
        assert!(reply.contains("<success"), "{reply}");
        raw.open().await;
        let jid = raw.bind(Some(resource)).await;
        raw.send("<presence/>").await;
        (raw, jid)
    }

    /// Logs in without sending presence, requests the roster (so it gets pushes).
    pub async fn login_quiet(addr: SocketAddr, user: &str, resource: &str) -> Raw {
        let (mut raw, _) = Raw::secure(addr).await;
        let reply = raw.auth_plain(user, PASSWORD).await;
        assert!(reply.contains("<success"), "{reply}");
        raw.open().await;
        raw.bind(Some(resource)).await;
        raw
    }

    /// Reads the next complete top-level element the server sends.
    pub async fn next_stanza(&mut self) -> String {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            if let Some(end) = element_end(&self.buf) {
                let rest = self.buf.split_off(end);
                return std::mem::replace(&mut self.buf, rest).trim().to_string();
            }
            match tokio::time::timeout_at(deadline, self.read_some()).await {
                Ok(0) => panic!("connection closed waiting for a stanza; got {:?}", self.buf),
                Ok(_) => {}
                Err(_) => panic!(
                    "timed out waiting for a stanza; got {:?}, skipped {:?}",
                    self.buf, self.skipped
                ),
            }
        }
    }

    /// The oldest stanza containing every needle: one skipped earlier, or the next such one
    /// to arrive (others that arrive meanwhile are kept for later calls).
    pub async fn stanza_with(&mut self, needles: &[&str]) -> String {
        let matches = |s: &str| needles.iter().all(|n| s.contains(n));
        if let Some(pos) = self.skipped.iter().position(|s| matches(s)) {
            return self.skipped.remove(pos).unwrap();
        }
        for _ in 0..200 {
            let stanza = self.next_stanza().await;
            if matches(&stanza) {
                return stanza;
            }
            self.skipped.push_back(stanza);
        }
        panic!("no stanza with {needles:?} among {:?}", self.skipped)
    }

    /// Sends an iq and returns the reply with the same id.
    pub async fn iq(&mut self, id: &str, iq: &str) -> String {
        self.send(iq).await;
        self.stanza_with(&[&format!("id='{id}'")]).await
    }

    /// Whatever arrives within a short while ("" if nothing does).
    pub async fn next_stanza_if_any(&mut self) -> String {
        let _ = tokio::time::timeout(Duration::from_millis(300), self.read_some()).await;
        let mut all: Vec<String> = self.skipped.drain(..).collect();
        all.push(std::mem::take(&mut self.buf));
        all.concat()
    }

    /// Round trip through the server: after this, everything sent before has been handled.
    pub async fn sync(&mut self) {
        self.iq(
            "sync",
            "<iq type='get' id='sync' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
        )
        .await;
    }
}

/// Parses one element the server sent (default namespace jabber:client).
pub fn parse(xml: &str) -> xmppd_xml::Element {
    xmppd_xml::parse_fragment(xml, "jabber:client")
        .unwrap_or_else(|| panic!("not one well-formed element: {xml:?}"))
}

pub fn roster_get(id: &str) -> String {
    format!("<iq type='get' id='{id}'><query xmlns='jabber:iq:roster'/></iq>")
}

/// Logs in, requests the roster (becoming an interested resource) and sends presence.
pub async fn online(server: &TestServer, user: &str, resource: &str, priority: i8) -> Raw {
    let mut raw = Raw::login_quiet(server.c2s, user, resource).await;
    raw.iq("r0", &roster_get("r0")).await;
    raw.send(&format!(
        "<presence><priority>{priority}</priority></presence>"
    ))
    .await;
    // Our own presence comes back to us (RFC 6121 §4.2.2).
    raw.stanza_with(&["<presence", &format!("from='{user}@localhost/{resource}'")])
        .await;
    raw
}

/// Makes alice and bob (both online) mutual contacts through the protocol itself, and
/// consumes the presence each then receives from the other.
pub async fn befriend(alice: &mut Raw, alice_jid: &str, bob: &mut Raw, bob_jid: &str) {
    alice
        .send("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    bob.stanza_with(&["type='subscribe'"]).await;
    bob.send("<presence to='alice@localhost' type='subscribed'/>")
        .await;
    bob.send("<presence to='alice@localhost' type='subscribe'/>")
        .await;
    alice.stanza_with(&["type='subscribe'"]).await;
    alice
        .send("<presence to='bob@localhost' type='subscribed'/>")
        .await;
    alice
        .stanza_with(&["jid='bob@localhost'", "subscription='both'"])
        .await;
    bob.stanza_with(&["jid='alice@localhost'", "subscription='both'"])
        .await;
    alice
        .stanza_with(&["<presence", &format!("from='{bob_jid}'")])
        .await;
    bob.stanza_with(&["<presence", &format!("from='{alice_jid}'")])
        .await;
    alice.sync().await;
    bob.sync().await;
}

/// alice and bob online with the given resources, as mutual contacts.
pub async fn friends(server: &TestServer, alice_res: &str, bob_res: &str) -> (Raw, Raw) {
    let mut alice = online(server, "alice", alice_res, 0).await;
    let mut bob = online(server, "bob", bob_res, 0).await;
    let (a, b) = (
        format!("alice@localhost/{alice_res}"),
        format!("bob@localhost/{bob_res}"),
    );
    befriend(&mut alice, &a, &mut bob, &b).await;
    (alice, bob)
}

/// Where the first complete element in `s` ends (the server writes no comments or CDATA).
fn element_end(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut depth = 0;
    loop {
        while i < b.len() && b[i] != b'<' {
            i += 1;
        }
        if i >= b.len() {
            return None;
        }
        let closing = b.get(i + 1) == Some(&b'/');
        let mut j = i + 1;
        let mut quote = None;
        while j < b.len() {
            match (quote, b[j]) {
                (None, b'\'' | b'"') => quote = Some(b[j]),
                (Some(q), c) if c == q => quote = None,
                (None, b'>') => break,
                _ => {}
            }
            j += 1;
        }
        if j >= b.len() {
            return None;
        }
        if closing {
            depth -= 1;
        } else if b[j - 1] != b'/' {
            depth += 1;
        }
        i = j + 1;
        if depth == 0 {
            return Some(i);
        }
    }
}

/// Asserts a fresh client can still log in and round-trip a ping.
pub async fn assert_login_works(addr: SocketAddr) {
    let (mut raw, jid) = Raw::login(addr, "carol", "check").await;
    assert_eq!(jid, "carol@localhost/check");
    raw.sync().await;
}
