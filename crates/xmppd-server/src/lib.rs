//! The xmppd core: configuration, TLS, SASL, the stream driver and its c2s profile, the
//! router, and the [`registry`] through which feature modules (crate `xmppd-modules`) plug
//! in. Nothing here knows a feature: the core builds and runs without any module.
//!
//! Layers, outside in: listeners ([`c2s`]) accept sockets and run one [`stream`] driver per
//! connection; it negotiates the stream (TLS, [`sasl`], bind) and hands stanzas to the
//! [`router`], which applies routing rules and calls what the modules registered.
//! [`xmppd_storage`] holds what must survive a restart.

pub mod accounts;
#[cfg(unix)]
pub mod admin;
pub mod c2s;
pub mod config;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod registry;
pub mod router;
pub mod s2s;
pub mod sasl;
pub mod stream;
pub mod time;
pub mod tls;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use xmppd_storage::Storage;

use config::Config;
use limits::ConnectionLimiter;
use metrics::Metrics;
use router::Router;
use sasl::AuthThrottle;
use tls::TlsContext;

/// Resolves once shutdown has been requested.
pub async fn shutting_down(rx: &mut watch::Receiver<bool>) {
    // Dropping the guard here keeps callers' futures Send.
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

/// What every connection shares.
pub struct ServerState {
    pub config: Config,
    pub router: Router,
    pub tls: TlsContext,
    /// Links to other servers and connected components.
    pub federation: Arc<s2s::Federation>,
    pub metrics: Arc<Metrics>,
    /// Failed authentications per address (the ceiling) and per address and account.
    pub throttle: AuthThrottle,
    pub account_throttle: AuthThrottle<(std::net::IpAddr, String)>,
    /// Unauthenticated connections and new connections per address.
    pub unauthenticated: Arc<limits::Unauthenticated>,
    pub connection_rate: limits::ConnectionRate,
    pub connections: Arc<ConnectionLimiter>,
    /// Server secret (persisted in the data directory) for values that must be stable but
    /// unguessable, such as the fake SCRAM salts of unknown users.
    pub secret: Vec<u8>,
    pub shutdown: watch::Receiver<bool>,
    /// Applies a new `log.level` to the running process, when the program that started
    /// the server owns the log output (the binary does; tests do not).
    pub log_level: std::sync::OnceLock<LogLevelSetter>,
}

/// Sets the log filter; `Err` says why the level cannot be applied.
pub type LogLevelSetter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("storage: {0}")]
    Storage(#[from] xmppd_storage::StorageError),
    #[error(transparent)]
    Modules(#[from] registry::RegistryError),
    #[error("{what} {addr}: {source}")]
    Io {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
}

/// A started server: its bound addresses and the means to stop it.
pub struct RunningServer {
    pub c2s_addrs: Vec<SocketAddr>,
    pub direct_tls_addrs: Vec<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    /// HTTP listeners (BOSH, WebSocket, host-meta, `/metrics`), and the HTTPS ones.
    pub http_addrs: Vec<SocketAddr>,
    pub https_addrs: Vec<SocketAddr>,
    pub s2s_addrs: Vec<SocketAddr>,
    pub s2s_direct_tls_addrs: Vec<SocketAddr>,
    pub component_addrs: Vec<SocketAddr>,
    pub state: Arc<ServerState>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

fn io_error(what: &'static str, addr: impl ToString) -> impl FnOnce(std::io::Error) -> StartError {
    let addr = addr.to_string();
    move |source| StartError::Io { what, addr, source }
}

/// Creates `path` and its missing parents readable by this user only (0700): the data
/// directory holds the database, keys and the admin socket.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path)
}

/// Reads the server secret from the data directory, creating it on first start.
fn load_secret(data_dir: &Path) -> Result<Vec<u8>, StartError> {
    use rand::RngCore;
    let path = data_dir.join("server.secret");
    if let Ok(secret) = std::fs::read(&path) {
        if secret.len() >= 32 {
            return Ok(secret);
        }
    }
    let mut secret = vec![0u8; 32];
    rand::thread_rng().fill_bytes(&mut secret);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(
        &mut options
            .open(&path)
            .map_err(io_error("writing", path.display()))?,
        &secret,
    )
    .map_err(io_error("writing", path.display()))?;
    Ok(secret)
}

/// What the core itself implements (streams, TLS, SASL, federation, components); the
/// modules add theirs (`registry::Module::SPECS`).
pub const CORE_SPECS: &[registry::Spec] = &[
    registry::Spec::xep("RFC 6120", "")
        .note("client and server streams: STARTTLS, SASL, binding, stanza and stream errors"),
    registry::Spec::xep("RFC 7590", "").note("TLS required on every stream by default"),
    registry::Spec::xep("RFC 9266", "").note("tls-exporter channel binding for SCRAM-*-PLUS"),
    registry::Spec::xep("RFC 7395", "").note("XMPP over WebSocket on `listen.http`/`https`"),
    registry::Spec::xep("XEP-0114", "1.6").note("external components on `listen.component`"),
    registry::Spec::xep("XEP-0124", "1.11.2").note("BOSH, with acks, pause and the rid window"),
    registry::Spec::xep("XEP-0156", "").note("host-meta and host-meta.json"),
    registry::Spec::xep("XEP-0178", "1.2").note("SASL EXTERNAL for clients and servers"),
    registry::Spec::xep("XEP-0185", ""),
    registry::Spec::xep("XEP-0206", "1.4").note("XMPP over BOSH"),
    registry::Spec::xep("XEP-0220", "1.1.1").note("with dialback errors; keys per XEP-0185"),
    registry::Spec::xep("XEP-0288", "1.0.1")
        .partial("the peer may not piggyback dialback for more of its domains on our stream"),
    registry::Spec::xep("XEP-0368", "1.1.0").note("direct TLS for clients and servers"),
    registry::Spec::xep("XEP-0440", "").note("the channel-binding types offered are listed"),
];

/// Days before expiry from which certificates are warned about (at start, on reload, daily).
pub const CERT_WARNING_DAYS: i64 = 14;

/// Re-reads the configuration file and the certificates it names, without dropping any
/// session: connections made from now on get the new certificates. Other changed sections
/// are reported (they take a restart). Returns a one-line summary.
pub fn reload(state: &ServerState) -> Result<String, String> {
    let Some(path) = &state.config.source else {
        return Err("the server was started without a configuration file".into());
    };
    let fresh = Config::load(path).map_err(|e| e.to_string())?;
    let certificates = state
        .tls
        .resolver
        .reload(&fresh)
        .map_err(|e| e.to_string())?;
    tls::warn_expiring(&fresh, CERT_WARNING_DAYS);
    let mut restart = fresh.changed_sections(&state.config);
    let mut summary = format!("reloaded {certificates} certificates");
    if let Some(set_level) = state.log_level.get() {
        set_level(&fresh.log.level)?;
        summary.push_str(&format!(", log level {:?}", fresh.log.level));
        // Applied now; only a new format needs a restart.
        if fresh.log.format == state.config.log.format {
            restart.retain(|section| *section != "log");
        }
    }
    if !restart.is_empty() {
        summary.push_str(&format!(
            "; changes to [{}] take effect after a restart",
            restart.join("], [")
        ));
    }
    tracing::info!(path = %path.display(), "{summary}");
    Ok(summary)
}

/// Checks the configuration and builds the registry from what `modules` registers (the
/// binary passes the standard feature modules, tests add their own).
pub fn hooks(
    config: &Config,
    modules: impl FnOnce(&mut registry::Registry),
) -> Result<registry::Hooks, StartError> {
    config.validate()?;
    let mut registry = registry::Registry::new(config);
    modules(&mut registry);
    Ok(registry.freeze()?)
}

/// Registers the modules, opens storage, loads certificates and binds every listener.
pub async fn start(
    config: Config,
    modules: impl FnOnce(&mut registry::Registry),
) -> Result<RunningServer, StartError> {
    let hooks = hooks(&config, modules)?;
    let data_dir = &config.server.data_dir;
    create_private_dir(data_dir).map_err(io_error("creating", data_dir.display()))?;
    let secret = load_secret(data_dir)?;
    #[cfg(unix)]
    let admin = match admin::bind(data_dir).await {
        Ok(listener) => Some(listener),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let path = admin::socket_path(data_dir);
            return Err(io_error("admin socket", path.display())(e));
        }
        Err(e) => {
            // Not fatal (say, a data directory path too long for a Unix socket): the server
            // runs, and `xmppd user del` falls back to deleting from storage directly.
            tracing::warn!(error = %e, "no admin socket");
            None
        }
    };
    let storage = Storage::open(&config.storage_url()).await?;
    let tls = TlsContext::new(&config)?;
    tls::warn_expiring(&config, CERT_WARNING_DAYS);
    let metrics = Arc::new(Metrics::default());
    let storage_seconds = metrics.storage_seconds.clone();
    storage.latency.observe_with(Box::new(move |took| {
        storage_seconds.observe(took.as_secs_f64())
    }));
    let federation = Arc::new(s2s::Federation::new(&config, &tls.resolver, &metrics)?);
    let router = Router::new(&config, storage, hooks, metrics.clone(), federation.clone());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut c2s = Vec::new();
    for addr in &config.listen.c2s {
        c2s.push(
            TcpListener::bind(addr)
                .await
                .map_err(io_error("listening on", addr))?,
        );
    }
    let mut direct = Vec::new();
    for addr in &config.listen.c2s_direct_tls {
        direct.push(
            TcpListener::bind(addr)
                .await
                .map_err(io_error("listening on", addr))?,
        );
    }
    let bind_all = |addrs: &[SocketAddr]| {
        let addrs = addrs.to_vec();
        async move {
            let mut listeners = Vec::new();
            for addr in addrs {
                listeners.push(
                    TcpListener::bind(addr)
                        .await
                        .map_err(io_error("listening on", addr))?,
                );
            }
            Ok::<_, StartError>(listeners)
        }
    };
    let s2s_listeners = bind_all(&config.listen.s2s).await?;
    let s2s_direct = bind_all(&config.listen.s2s_direct_tls).await?;
    let components = bind_all(&config.listen.component).await?;
    let http = bind_all(&config.listen.http).await?;
    let https = bind_all(&config.listen.https).await?;
    // An old config's metrics address that is now also an HTTP listener is served there.
    let metrics_listener = match config.listen.metrics {
        Some(addr) if config.listen.http.contains(&addr) => None,
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(io_error("listening on", addr))?,
        ),
        None => None,
    };
    let local = |l: &TcpListener| l.local_addr().ok();
    let c2s_addrs: Vec<_> = c2s.iter().filter_map(local).collect();
    let direct_tls_addrs: Vec<_> = direct.iter().filter_map(local).collect();
    let http_addrs: Vec<_> = http.iter().filter_map(local).collect();
    let https_addrs: Vec<_> = https.iter().filter_map(local).collect();
    let metrics_addr = metrics_listener
        .as_ref()
        .and_then(local)
        .or_else(|| http_addrs.first().copied());
    let s2s_addrs: Vec<_> = s2s_listeners.iter().filter_map(local).collect();
    let s2s_direct_tls_addrs: Vec<_> = s2s_direct.iter().filter_map(local).collect();
    let component_addrs: Vec<_> = components.iter().filter_map(local).collect();
    let state = Arc::new(ServerState {
        throttle: AuthThrottle::new(
            config.sasl.max_failures_per_ip,
            Duration::from_secs(config.sasl.failure_window_secs),
        ),
        account_throttle: AuthThrottle::new(
            config.sasl.max_failures_per_account_and_ip,
            Duration::from_secs(config.sasl.failure_window_secs),
        ),
        unauthenticated: limits::Unauthenticated::new(config.limits.max_unauthenticated_per_ip),
        connection_rate: limits::ConnectionRate::new(
            config.limits.new_connections_per_ip_per_second,
            config.limits.new_connections_burst,
        ),
        connections: ConnectionLimiter::new(config.limits.max_connections_per_ip),
        config,
        router,
        tls,
        federation: federation.clone(),
        metrics: metrics.clone(),
        secret,
        shutdown: shutdown_rx.clone(),
        log_level: std::sync::OnceLock::new(),
    });
    state.router.set_server(Arc::downgrade(&state));
    let mut cx = state.router.context();
    cx.fire(registry::Event::Started).await;
    state.router.apply(cx).await;
    let mut tasks = Vec::new();
    for l in c2s {
        tasks.push(tokio::spawn(c2s::listen(l, false, state.clone())));
    }
    for l in direct {
        tasks.push(tokio::spawn(c2s::listen(l, true, state.clone())));
    }
    for l in s2s_listeners {
        tasks.push(tokio::spawn(s2s::listen(l, false, state.clone())));
    }
    for l in s2s_direct {
        tasks.push(tokio::spawn(s2s::listen(l, true, state.clone())));
    }
    for l in components {
        tasks.push(tokio::spawn(s2s::component::listen(l, state.clone())));
    }
    tasks.push(tokio::spawn(federation.close_idle(shutdown_rx.clone())));
    if !http.is_empty() || !https.is_empty() {
        let web = Arc::new(http::Web {
            server: state.clone(),
            bosh: Default::default(),
        });
        for (listeners, tls) in [(http, false), (https, true)] {
            for l in listeners {
                tasks.push(tokio::spawn(http::serve(l, tls, web.clone())));
            }
        }
    }
    if let Some(l) = metrics_listener {
        tasks.push(tokio::spawn(metrics::serve(l, metrics, shutdown_rx)));
    }
    #[cfg(unix)]
    if let Some(listener) = admin {
        tasks.push(tokio::spawn(admin::serve(listener, state.clone())));
    }
    for addr in c2s_addrs.iter() {
        tracing::info!(%addr, "listening for clients (STARTTLS)");
    }
    for addr in direct_tls_addrs.iter() {
        tracing::info!(%addr, "listening for clients (direct TLS)");
    }
    for addr in s2s_addrs.iter() {
        tracing::info!(%addr, "listening for servers (STARTTLS)");
    }
    for addr in s2s_direct_tls_addrs.iter() {
        tracing::info!(%addr, "listening for servers (direct TLS)");
    }
    for addr in component_addrs.iter() {
        tracing::info!(%addr, "listening for components (XEP-0114)");
    }
    for (addrs, scheme) in [(&http_addrs, "http"), (&https_addrs, "https")] {
        for addr in addrs.iter() {
            let paths = &state.config.http;
            tracing::info!(
                bosh = %format!("{scheme}://{addr}{}", paths.bosh_path),
                websocket = %format!("{scheme}://{addr}{}", paths.websocket_path),
                "listening for web clients"
            );
        }
    }
    if let Some(addr) = metrics_addr {
        tracing::info!("metrics at http://{addr}/metrics");
    }
    Ok(RunningServer {
        c2s_addrs,
        direct_tls_addrs,
        metrics_addr,
        http_addrs,
        https_addrs,
        s2s_addrs,
        s2s_direct_tls_addrs,
        component_addrs,
        state,
        shutdown: shutdown_tx,
        tasks,
    })
}

impl RunningServer {
    /// Stops accepting, sends every stream `<system-shutdown/>`, and waits (up to 10 s) for
    /// the connections to close.
    pub async fn shutdown(self) {
        // Modules say goodbye while the sessions are still there (bounded: a stuck
        // module must not keep the server from stopping).
        let router = &self.state.router;
        let farewell = async {
            let mut cx = router.context();
            cx.fire(registry::Event::ShuttingDown).await;
            router.apply(cx).await;
        };
        if tokio::time::timeout(Duration::from_secs(5), farewell)
            .await
            .is_err()
        {
            tracing::warn!("modules took over 5 s to shut down");
        }
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        let open = &self.state.metrics.connections_open;
        for _ in 0..200 {
            if open.get() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
