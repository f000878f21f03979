//! Server configuration: one TOML file in which every key has a default.
//!
//! `xmppd.example.toml` at the repository root documents every key; keep the two in step.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub listen: ListenConfig,
    pub tls: TlsConfig,
    pub sasl: SaslConfig,
    pub limits: LimitsConfig,
    pub im: ImConfig,
    pub log: LogConfig,
    pub s2s: S2sConfig,
    pub http: HttpConfig,
    /// `[components."DOMAIN"]`: XEP-0114 external components allowed to connect.
    pub components: std::collections::BTreeMap<String, ComponentConfig>,
    /// `[modules.NAME]` sections, each read by its module (see `crate::modules`).
    pub modules: std::collections::BTreeMap<String, toml::Table>,
    /// The file this was read from (re-read on reload); not a key.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImConfig {
    /// Most items in one roster.
    pub max_roster_items: usize,
    /// Most messages stored for one offline account (XEP-0160); more are refused.
    pub max_offline_messages: usize,
    /// Largest vCard or private XML document, in bytes.
    pub max_document_size: usize,
    /// In-band registration of new accounts (XEP-0077) by anyone who can connect.
    pub allow_registration: bool,
    /// Accounts one IP address may register per hour when registration is on.
    pub registrations_per_ip_per_hour: u32,
    /// Privacy lists (XEP-0016).
    pub privacy_lists: bool,
    /// The blocking command (XEP-0191).
    pub blocking: bool,
}

impl Default for ImConfig {
    fn default() -> Self {
        ImConfig {
            max_roster_items: 1000,
            max_offline_messages: 500,
            max_document_size: 128 * 1024,
            allow_registration: false,
            registrations_per_ip_per_hour: 3,
            privacy_lists: true,
            blocking: true,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// The domains (virtual hosts) this server serves.
    pub domains: Vec<String>,
    /// Where the database and generated certificates live.
    pub data_dir: PathBuf,
    /// Storage URL; empty means `sqlite://<data_dir>/xmppd.sqlite`.
    pub storage: String,
    /// XEP-0157 contact addresses published in disco#info, by kind (abuse, admin, feedback,
    /// sales, security, status, support), e.g. `admin = ["xmpp:admin@example.org"]`.
    pub contact_addresses: std::collections::BTreeMap<String, Vec<String>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            domains: vec!["localhost".into()],
            data_dir: PathBuf::from("./data"),
            storage: String::new(),
            contact_addresses: Default::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenConfig {
    /// Client listeners that offer STARTTLS (RFC 6120 §5).
    pub c2s: Vec<SocketAddr>,
    /// Client listeners that speak TLS from the first byte (XEP-0368).
    pub c2s_direct_tls: Vec<SocketAddr>,
    /// A listener that serves only `/metrics` (OpenMetrics text); absent: none. `/metrics` is
    /// also on every `http` listener, so this is for keeping it on a separate address.
    pub metrics: Option<SocketAddr>,
    /// HTTP listeners: BOSH, WebSocket, XEP-0156 host-meta and `/metrics` (see `[http]`).
    pub http: Vec<SocketAddr>,
    /// The same over HTTPS, with the certificates of `[tls]`; none by default.
    pub https: Vec<SocketAddr>,
    /// Server-to-server listeners that offer STARTTLS (RFC 6120); federation is on when
    /// there is at least one s2s listener of either kind.
    pub s2s: Vec<SocketAddr>,
    /// Server-to-server listeners that speak TLS from the first byte (XEP-0368).
    pub s2s_direct_tls: Vec<SocketAddr>,
    /// XEP-0114 component listeners (`jabber:component:accept`).
    pub component: Vec<SocketAddr>,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            c2s: vec![SocketAddr::from(([127, 0, 0, 1], 5222))],
            c2s_direct_tls: vec![SocketAddr::from(([127, 0, 0, 1], 5223))],
            metrics: None,
            http: vec![SocketAddr::from(([127, 0, 0, 1], 5280))],
            https: Vec::new(),
            s2s: Vec::new(),
            s2s_direct_tls: Vec::new(),
            component: Vec::new(),
        }
    }
}

impl ListenConfig {
    /// No listener at all: the server's modules and storage without its network side
    /// (for admin commands run while no server is running).
    pub fn none() -> Self {
        ListenConfig {
            c2s: Vec::new(),
            c2s_direct_tls: Vec::new(),
            metrics: None,
            http: Vec::new(),
            https: Vec::new(),
            s2s: Vec::new(),
            s2s_direct_tls: Vec::new(),
            component: Vec::new(),
        }
    }
}

/// Federation (RFC 6120 server-to-server streams).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S2sConfig {
    /// PEM file of CAs trusted for peer certificates; absent: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Addresses used instead of DNS for these remote domains (tests, private networks).
    pub routes: std::collections::BTreeMap<String, SocketAddr>,
    /// Refuse unencrypted server-to-server streams (both directions).
    pub require_tls: bool,
    /// Allow server dialback (XEP-0220) where a peer's certificate does not verify.
    pub dialback: bool,
    /// Remote domains that must authenticate with a certificate (no dialback), whatever
    /// `dialback` says.
    pub require_certificate: Vec<String>,
    /// Stanzas to a remote domain bounce with remote-server-timeout when no authenticated
    /// link exists this long after the first was queued.
    pub connect_timeout_secs: u64,
    /// Links with no stanza either way for this long are closed.
    pub idle_timeout_secs: u64,
    /// Stanzas held for one remote domain while its link is set up.
    pub queue_size: usize,
    /// Most server-to-server connections at once, incoming and outgoing together.
    pub max_links: usize,
    /// After a failed attempt, stanzas to that domain bounce at once for this long
    /// (doubling per failure up to `max_retry_secs`) instead of reconnecting each time.
    pub retry_secs: u64,
    pub max_retry_secs: u64,
    /// Bidirectional streams (XEP-0288): one connection carries stanzas both ways with a
    /// peer that supports them, instead of one connection per direction.
    pub bidi: bool,
}

impl Default for S2sConfig {
    fn default() -> Self {
        S2sConfig {
            ca_file: None,
            routes: Default::default(),
            require_tls: true,
            dialback: true,
            require_certificate: Vec::new(),
            connect_timeout_secs: 30,
            idle_timeout_secs: 600,
            queue_size: 1000,
            max_links: 1000,
            retry_secs: 5,
            max_retry_secs: 300,
            bidi: true,
        }
    }
}

/// Web clients: BOSH (XEP-0124/0206) and WebSocket (RFC 7395) on the `listen.http` and
/// `listen.https` listeners, and their discovery (XEP-0156).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub bosh_path: String,
    pub websocket_path: String,
    /// Origins allowed for BOSH and WebSocket from browsers (CORS, and the WebSocket
    /// `Origin` check); `"*"` allows any.
    pub cors_origins: Vec<String>,
    /// Reverse proxies whose `X-Forwarded-For`/`Forwarded` and `X-Forwarded-Proto` headers
    /// are believed: per-address limits and logs then see the real client.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// The public base URL (`https://xmpp.example.org`) that host-meta lists, for a server
    /// behind a proxy; empty: taken from the request.
    pub public_url: String,
    /// Treat plain-HTTP clients as encrypted (TLS ends at a proxy that sends no
    /// `X-Forwarded-Proto`). Loopback clients always are: their traffic stays on the machine.
    pub consider_secure: bool,
    /// Where `<open/>` is answered with `<close see-other-uri=…/>` (RFC 7395 §3.6.1):
    /// WebSocket clients are sent to this URL instead; empty: none.
    pub websocket_see_other_uri: String,
    /// Longest `wait` a BOSH client may ask for, in seconds (XEP-0124 §7.1).
    pub bosh_max_wait_secs: u64,
    /// Seconds a BOSH session may have no request waiting before it ends (XEP-0124 §7.1).
    pub bosh_inactivity_secs: u64,
    /// Longest `pause` a BOSH client may ask for, in seconds (XEP-0124 §10).
    pub bosh_max_pause_secs: u64,
    /// Requests a BOSH client may have waiting at once (`hold`, XEP-0124 §7.1).
    pub bosh_max_hold: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            bosh_path: "/http-bind".into(),
            websocket_path: "/xmpp-websocket".into(),
            cors_origins: vec!["*".into()],
            trusted_proxies: Vec::new(),
            public_url: String::new(),
            consider_secure: false,
            websocket_see_other_uri: String::new(),
            bosh_max_wait_secs: 60,
            bosh_inactivity_secs: 60,
            bosh_max_pause_secs: 300,
            bosh_max_hold: 2,
        }
    }
}

/// One XEP-0114 component.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentConfig {
    /// The shared secret of the handshake (XEP-0114 §3).
    pub secret: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    pub domain: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Refuse SASL and stanzas until the client stream is encrypted.
    pub require_c2s_encryption: bool,
    /// Certificates per domain (PEM). Domains without one get a self-signed certificate
    /// generated under `<data_dir>/certs/` on first start.
    pub certificates: Vec<CertificateConfig>,
    /// PEM file of CAs trusted for client certificates; enables SASL EXTERNAL (XEP-0178).
    pub client_ca: Option<PathBuf>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            require_c2s_encryption: true,
            certificates: Vec::new(),
            client_ca: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SaslConfig {
    /// Mechanisms offered, in this order, where their conditions hold (PLAIN needs TLS,
    /// -PLUS needs TLS, EXTERNAL needs a verified client certificate).
    pub mechanisms: Vec<String>,
    /// PBKDF2 iteration count for newly set passwords.
    pub scram_iterations: u32,
    /// Domains that allow SASL ANONYMOUS (off everywhere by default).
    pub anonymous_domains: Vec<String>,
    /// Failed authentications from one IP address within `failure_window_secs` before further
    /// attempts from it are refused with `temporary-auth-failure`: the ceiling for an address
    /// shared by many users.
    pub max_failures_per_ip: u32,
    /// The same for one account from one address: guessing one account's password locks out
    /// that account from that address only, and stops counting toward the address ceiling.
    pub max_failures_per_account_and_ip: u32,
    pub failure_window_secs: u64,
    /// Milliseconds a failed authentication waits before its answer, to slow guessing.
    pub failure_delay_ms: u64,
    /// Failed attempts on one stream before it is closed (RFC 6120 §6.4.5).
    pub max_attempts_per_stream: u32,
}

impl Default for SaslConfig {
    fn default() -> Self {
        SaslConfig {
            mechanisms: [
                "SCRAM-SHA-256-PLUS",
                "SCRAM-SHA-1-PLUS",
                "SCRAM-SHA-256",
                "SCRAM-SHA-1",
                "PLAIN",
                "EXTERNAL",
                "ANONYMOUS",
            ]
            .map(String::from)
            .to_vec(),
            scram_iterations: 10_000,
            anonymous_domains: Vec::new(),
            max_failures_per_ip: 50,
            max_failures_per_account_and_ip: 5,
            failure_delay_ms: 500,
            failure_window_secs: 60,
            max_attempts_per_stream: 3,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest top-level element a client may send, in bytes.
    pub max_stanza_size: usize,
    /// Deepest element nesting below the stream root.
    pub max_depth: usize,
    /// Most attributes on one element.
    pub max_attributes: usize,
    /// Sustained bytes per second read from one connection; reading pauses above it.
    pub max_bytes_per_second: u32,
    /// Bytes a connection may send in a burst above the sustained rate.
    pub burst_bytes: u32,
    /// Concurrent connections from one IP address, authenticated or not (0: unlimited).
    pub max_connections_per_ip: u32,
    /// Concurrent unauthenticated connections from one IP address; over it the oldest is
    /// closed (0: unlimited).
    pub max_unauthenticated_per_ip: u32,
    /// New connections per second from one IP address, and the burst above it; over it a
    /// connection waits up to half a second for its turn, then is refused (0: unlimited).
    pub new_connections_per_ip_per_second: u32,
    pub new_connections_burst: u32,
    /// Sessions (resources) one account may have at once (0: unlimited).
    pub max_resources_per_account: u32,
    /// Seconds a connection has to authenticate and bind.
    pub unauthenticated_timeout_secs: u64,
    /// Stanzas queued for one session before it is disconnected as too slow. Entering a MUC
    /// room queues one presence per occupant at once, so this stays above the biggest room
    /// (the queue holds memory only while full).
    pub outbound_queue: usize,
    /// Seconds one write to a client may take before it is disconnected.
    pub write_timeout_secs: u64,
    /// Seconds of silence from a client before the server pings it (XEP-0199).
    pub ping_interval_secs: u64,
    /// Seconds the client has to answer (or send anything) before it is disconnected.
    pub ping_timeout_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_stanza_size: 256 * 1024,
            max_depth: 32,
            max_attributes: 64,
            max_bytes_per_second: 256 * 1024,
            burst_bytes: 1024 * 1024,
            max_connections_per_ip: 0,
            max_unauthenticated_per_ip: 1000,
            new_connections_per_ip_per_second: 500,
            new_connections_burst: 2000,
            max_resources_per_account: 100,
            unauthenticated_timeout_secs: 30,
            outbound_queue: 10_000,
            write_timeout_secs: 30,
            ping_interval_secs: 300,
            ping_timeout_secs: 60,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter, e.g. `info` or `xmppd=debug`; `RUST_LOG` overrides it.
    pub level: String,
    /// `text` for people and the journal, `json` (one object per line) for log collectors.
    pub format: LogFormat,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// The address kinds of XEP-0157 §4.
pub const CONTACT_KINDS: [&str; 7] = [
    "abuse", "admin", "feedback", "sales", "security", "status", "support",
];

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads and checks a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
        config.validate()?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Checks what serde cannot: values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        if self.server.domains.is_empty() {
            return invalid("server.domains is empty".into());
        }
        for domain in &self.server.domains {
            if jid::BareJid::new(domain).map(|j| j.node().is_some()) != Ok(false) {
                return invalid(format!("server.domains: {domain:?} is not a domain"));
            }
        }
        for kind in self.server.contact_addresses.keys() {
            if !CONTACT_KINDS.contains(&kind.as_str()) {
                return invalid(format!(
                    "server.contact_addresses: unknown kind {kind:?} (expected one of {CONTACT_KINDS:?})"
                ));
            }
        }
        for mech in &self.sasl.mechanisms {
            if !crate::sasl::KNOWN_MECHANISMS.contains(&mech.as_str()) {
                return invalid(format!("sasl.mechanisms: unknown mechanism {mech:?}"));
            }
        }
        if self.sasl.scram_iterations < 4096 {
            return invalid("sasl.scram_iterations must be at least 4096 (RFC 7677)".into());
        }
        if self.limits.max_stanza_size < 10_000 {
            return invalid(
                "limits.max_stanza_size must be at least 10000 (RFC 6120 §13.12)".into(),
            );
        }
        for domain in self.components.keys().chain(self.s2s.routes.keys()) {
            if jid::BareJid::new(domain).map(|j| j.node().is_some()) != Ok(false) {
                return invalid(format!("{domain:?} is not a domain"));
            }
        }
        for (domain, c) in &self.components {
            if self.server.domains.contains(domain) {
                return invalid(format!("components: {domain:?} is a served domain"));
            }
            if c.secret.len() < 8 {
                return invalid(format!(
                    "components.\"{domain}\".secret must be at least 8 characters"
                ));
            }
        }
        if self.s2s.queue_size == 0 || self.s2s.connect_timeout_secs == 0 {
            return invalid("s2s.queue_size and s2s.connect_timeout_secs must be positive".into());
        }
        for (key, path) in [
            ("http.bosh_path", &self.http.bosh_path),
            ("http.websocket_path", &self.http.websocket_path),
        ] {
            if !path.starts_with('/') || path.len() < 2 {
                return invalid(format!("{key} must start with '/' and name a path"));
            }
        }
        if self.http.bosh_path == self.http.websocket_path {
            return invalid("http.bosh_path and http.websocket_path must differ".into());
        }
        if self.http.bosh_max_wait_secs == 0 || self.http.bosh_inactivity_secs == 0 {
            return invalid(
                "http.bosh_max_wait_secs and http.bosh_inactivity_secs must be positive".into(),
            );
        }
        if self.limits.outbound_queue == 0 || self.limits.max_depth == 0 {
            return invalid("limits.outbound_queue and limits.max_depth must be positive".into());
        }
        Ok(())
    }

    /// The sections that differ between `self` and `other`, other than `[tls]` (which a
    /// reload applies): what a reload cannot change without a restart.
    pub fn changed_sections(&self, other: &Config) -> Vec<&'static str> {
        let differs =
            |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
        let sections: [(&'static str, bool); 11] = [
            ("server", differs(&self.server, &other.server)),
            ("listen", differs(&self.listen, &other.listen)),
            ("sasl", differs(&self.sasl, &other.sasl)),
            ("limits", differs(&self.limits, &other.limits)),
            ("im", differs(&self.im, &other.im)),
            ("log", differs(&self.log, &other.log)),
            ("s2s", differs(&self.s2s, &other.s2s)),
            ("http", differs(&self.http, &other.http)),
            ("components", differs(&self.components, &other.components)),
            ("modules", differs(&self.modules, &other.modules)),
            (
                "tls.client_ca",
                differs(&self.tls.client_ca, &other.tls.client_ca),
            ),
        ];
        sections
            .into_iter()
            .filter(|(_, changed)| *changed)
            .map(|(name, _)| name)
            .collect()
    }

    /// The storage URL, defaulting to SQLite under `data_dir`.
    pub fn storage_url(&self) -> String {
        if self.server.storage.is_empty() {
            format!(
                "sqlite://{}",
                self.server.data_dir.join("xmppd.sqlite").display()
            )
        } else {
            self.server.storage.clone()
        }
    }

    pub fn serves(&self, domain: &str) -> bool {
        self.server.domains.iter().any(|d| d == domain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_example_parses() {
        Config::default().validate().unwrap();
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../xmppd.example.toml");
        let config = Config::load(Path::new(example)).unwrap();
        assert_eq!(config.server.domains, vec!["localhost"]);
        assert_eq!(config.limits.max_stanza_size, 262144);
    }

    #[test]
    fn typos_and_nonsense_are_rejected() {
        assert!(toml::from_str::<Config>("[server]\ndomian = ['x']").is_err());
        let config: Config = toml::from_str("[sasl]\nmechanisms = ['CRAM-MD5']").unwrap();
        assert!(config.validate().is_err());
        let config: Config = toml::from_str("[server]\ndomains = ['a@b']").unwrap();
        assert!(config.validate().is_err());
    }
}
