//! Counters and gauges exported at `/metrics` (the OpenMetrics text format, which Prometheus
//! reads), kept and encoded by the prometheus-client crate.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use xmppd_core::StanzaKind;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConditionLabel {
    condition: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthFailureLabel {
    mechanism: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabel {
    transport: &'static str,
}

/// The process's own CPU time, memory and descriptors, read from /proc at each scrape.
#[derive(Debug)]
struct ProcessCollector;

impl ProcessCollector {
    /// (CPU seconds, resident bytes) from /proc/self/stat and statm.
    fn read() -> Option<(f64, u64)> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = stat.get(stat.rfind(')')? + 2..)?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        // The kernel's USER_HZ is 100 on every Linux ABI; pages are 4 KiB on the ones we run.
        Some((ticks / 100.0, pages * 4096))
    }
}

impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let Some((cpu, rss)) = Self::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(cpu);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time the process used.",
            None,
            cpu.metric_type(),
        )?)?;
        let rss = ConstGauge::new(rss as i64);
        rss.encode(encoder.encode_descriptor(
            "process_resident_memory_bytes",
            "Resident memory of the process.",
            None,
            rss.metric_type(),
        )?)?;
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            let fds = ConstGauge::new(fds.count() as i64);
            fds.encode(encoder.encode_descriptor(
                "process_open_fds",
                "File descriptors open (sockets included).",
                None,
                fds.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct S2sAuthLabel {
    direction: &'static str,
    method: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub connections_total: Counter,
    pub connections_open: Gauge,
    pub connections_refused: Counter,
    sessions_bound: Gauge,
    /// Per stanza kind, taken from the family once so counting needs no lookup.
    stanzas_in: [Counter; 3],
    pub stanzas_out: Counter,
    pub auth_success: Counter,
    auth_failures: Counter,
    /// Logins refused without trying: the address or account failed too often lately.
    pub auth_throttled: Counter,
    pub queue_overflows: Counter,
    stream_errors: Counter,
    /// Server-to-server connections open, both directions.
    pub s2s_links_open: Gauge,
    s2s_authenticated: Family<S2sAuthLabel, Counter>,
    /// Stanzas bounced because no authenticated link to their domain came about.
    pub s2s_bounced: Counter,
    stream_error_conditions: Family<ConditionLabel, Counter>,
    auth_failure_reasons: Family<AuthFailureLabel, Counter>,
    sessions_by_transport: Family<TransportLabel, Gauge>,
    /// Multi-user chat (set by the MUC module): rooms with a task now, their occupants,
    /// and copies of groupchat messages fanned out to occupants.
    pub muc_rooms_active: Gauge,
    /// Rooms in storage, in use or not.
    pub muc_rooms_persistent: Gauge,
    pub muc_occupants: Gauge,
    pub muc_messages_out: Counter,
    /// How long each storage statement or write transaction took (see
    /// `xmppd_storage::Latency`).
    pub storage_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        // process_* unprefixed, as every Prometheus client names them; the rest xmppd_*.
        let mut root = Registry::default();
        root.register_collector(Box::new(ProcessCollector));
        let registry = root.sub_registry_with_prefix("xmppd");
        let mut counter = |name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let connections_total = counter("connections", "Client connections accepted.");
        let connections_refused = counter(
            "connections_refused",
            "Connections refused by per-address limits.",
        );
        let stanzas_out = counter("stanzas_out", "Stanzas queued to client sessions.");
        let auth_success = counter("auth_success", "Successful SASL authentications.");
        let auth_failures = counter("auth_failures", "Failed SASL authentications.");
        let auth_throttled = counter(
            "auth_throttled",
            "Logins refused because the address, or the account from it, failed too often.",
        );
        let queue_overflows = counter(
            "queue_overflows",
            "Sessions disconnected because their outbound queue was full.",
        );
        let stream_errors = counter("stream_errors", "Stream errors sent.");
        let s2s_bounced = counter(
            "s2s_bounced",
            "Stanzas bounced because no link to their server could be set up.",
        );
        let muc_messages_out = counter(
            "muc_messages_out",
            "Copies of groupchat messages (and subject changes) sent to room occupants.",
        );
        let s2s_links_open = Gauge::default();
        registry.register(
            "s2s_links_open",
            "Server-to-server connections open now, both directions.",
            s2s_links_open.clone(),
        );
        let stream_error_conditions = Family::<ConditionLabel, Counter>::default();
        registry.register(
            "stream_error_conditions",
            "Stream errors sent, by condition (RFC 6120 §4.9.3).",
            stream_error_conditions.clone(),
        );
        let auth_failure_reasons = Family::<AuthFailureLabel, Counter>::default();
        registry.register(
            "auth_failure_reasons",
            "Failed SASL authentications, by mechanism and SASL failure condition.",
            auth_failure_reasons.clone(),
        );
        let sessions_by_transport = Family::<TransportLabel, Gauge>::default();
        registry.register(
            "sessions",
            "Sessions with a bound resource, by transport.",
            sessions_by_transport.clone(),
        );
        let s2s_authenticated = Family::<S2sAuthLabel, Counter>::default();
        registry.register(
            "s2s_authenticated",
            "Server-to-server domain pairs authenticated, by direction and method.",
            s2s_authenticated.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Client connections open now.",
            connections_open.clone(),
        );
        let sessions_bound = Gauge::default();
        registry.register(
            "sessions_bound",
            "Sessions with a bound resource.",
            sessions_bound.clone(),
        );
        let mut gauge = |name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let muc_rooms_active = gauge("muc_rooms_active", "Multi-user chat rooms active now.");
        let muc_rooms_persistent = gauge(
            "muc_rooms_persistent",
            "Persistent multi-user chat rooms (stored), in use or not.",
        );
        let muc_occupants = gauge("muc_occupants", "Occupants of the active rooms.");
        let family = Family::<KindLabel, Counter>::default();
        registry.register(
            "stanzas_in",
            "Stanzas received from clients.",
            family.clone(),
        );
        // 50 µs to about 3 s, in factors of 2.5: a cached read to a stalled disk.
        let storage_seconds = Histogram::new(exponential_buckets(0.00005, 2.5, 13));
        registry.register(
            "storage_seconds",
            "Time of each storage statement or write transaction, waiting for a database connection included.",
            storage_seconds.clone(),
        );
        let per_kind = |kind| family.get_or_create(&KindLabel { kind }).clone();
        let stanzas_in = [per_kind("message"), per_kind("presence"), per_kind("iq")];
        Metrics {
            registry: root,
            connections_total,
            connections_open,
            connections_refused,
            sessions_bound,
            stanzas_in,
            stanzas_out,
            auth_success,
            auth_failures,
            auth_throttled,
            queue_overflows,
            stream_errors,
            s2s_links_open,
            s2s_authenticated,
            s2s_bounced,
            stream_error_conditions,
            auth_failure_reasons,
            sessions_by_transport,
            muc_rooms_active,
            muc_rooms_persistent,
            muc_occupants,
            muc_messages_out,
            storage_seconds,
        }
    }
}

impl Metrics {
    pub fn stanza_in(&self, kind: StanzaKind) {
        let index = match kind {
            StanzaKind::Message => 0,
            StanzaKind::Presence => 1,
            StanzaKind::Iq => 2,
        };
        self.stanzas_in[index].inc();
    }

    /// A stream error sent.
    pub fn stream_error(&self, condition: &'static str) {
        self.stream_errors.inc();
        self.stream_error_conditions
            .get_or_create(&ConditionLabel { condition })
            .inc();
    }

    /// A failed SASL authentication.
    pub fn auth_failure(&self, mechanism: &'static str, reason: &'static str) {
        self.auth_failures.inc();
        self.auth_failure_reasons
            .get_or_create(&AuthFailureLabel { mechanism, reason })
            .inc();
    }

    /// A session bound (`+1`) or ended (`-1`) on `transport` (`tcp`, `websocket`, …).
    pub fn session_bound(&self, transport: &'static str, delta: i64) {
        self.sessions_bound.inc_by(delta);
        self.sessions_by_transport
            .get_or_create(&TransportLabel { transport })
            .inc_by(delta);
    }

    /// A server-to-server domain pair authenticated: `direction` is `in` or `out`, `method`
    /// `sasl-external`, `dialback` or `certificate`.
    pub fn s2s_authenticated(&self, direction: &'static str, method: &'static str) {
        self.s2s_authenticated
            .get_or_create(&S2sAuthLabel { direction, method })
            .inc();
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// Serves `/metrics` until `shutdown` fires.
/// `/metrics`, for the metrics-only listener and every HTTP listener.
pub fn routes(metrics: std::sync::Arc<Metrics>) -> axum::Router {
    use axum::routing::get;
    axum::Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.render(),
                )
            }
        }),
    )
}

/// The `listen.metrics` listener: only `/metrics`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: std::sync::Arc<Metrics>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let result = axum::serve(listener, routes(metrics))
        .with_graceful_shutdown(async move {
            crate::shutting_down(&mut shutdown).await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "metrics endpoint failed");
    }
}
