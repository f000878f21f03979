//! Counters and gauges exported at `/metrics` (the OpenMetrics text format, which Prometheus
//! reads), kept and encoded by the prometheus-client crate.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use xmppd_core::StanzaKind;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
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
    pub sessions_bound: Gauge,
    /// Per stanza kind, taken from the family once so counting needs no lookup.
    stanzas_in: [Counter; 3],
    pub stanzas_out: Counter,
    pub auth_success: Counter,
    pub auth_failures: Counter,
    /// Logins refused without trying: the address or account failed too often lately.
    pub auth_throttled: Counter,
    pub queue_overflows: Counter,
    pub stream_errors: Counter,
    /// Server-to-server connections open, both directions.
    pub s2s_links_open: Gauge,
    s2s_authenticated: Family<S2sAuthLabel, Counter>,
    /// Stanzas bounced because no authenticated link to their domain came about.
    pub s2s_bounced: Counter,
    /// Multi-user chat (set by the MUC module): rooms with a task now, their occupants,
    /// and copies of groupchat messages fanned out to occupants.
    pub muc_rooms_active: Gauge,
    pub muc_occupants: Gauge,
    pub muc_messages_out: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("xmppd");
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
        let muc_occupants = gauge("muc_occupants", "Occupants of the active rooms.");
        let family = Family::<KindLabel, Counter>::default();
        registry.register(
            "stanzas_in",
            "Stanzas received from clients.",
            family.clone(),
        );
        let per_kind = |kind| family.get_or_create(&KindLabel { kind }).clone();
        let stanzas_in = [per_kind("message"), per_kind("presence"), per_kind("iq")];
        Metrics {
            registry,
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
            muc_rooms_active,
            muc_occupants,
            muc_messages_out,
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
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: std::sync::Arc<Metrics>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    use axum::routing::get;
    let app = axum::Router::new().route(
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
    );
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            crate::shutting_down(&mut shutdown).await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "metrics endpoint failed");
    }
}
