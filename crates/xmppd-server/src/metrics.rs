//! Counters exported at `/metrics` in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use xmppd_core::StanzaKind;

#[derive(Default)]
pub struct Metrics {
    pub connections_total: AtomicU64,
    pub connections_open: AtomicU64,
    pub sessions_bound: AtomicU64,
    pub stanzas_in: [AtomicU64; 3],
    pub stanzas_out: AtomicU64,
    pub auth_success: AtomicU64,
    pub auth_failures: AtomicU64,
    /// Logins refused without trying: the address or account failed too often lately.
    pub auth_throttled: AtomicU64,
    pub queue_overflows: AtomicU64,
    pub stream_errors: AtomicU64,
    pub connections_refused: AtomicU64,
}

fn kind_index(kind: StanzaKind) -> usize {
    match kind {
        StanzaKind::Message => 0,
        StanzaKind::Presence => 1,
        StanzaKind::Iq => 2,
    }
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(counter: &AtomicU64) {
        counter.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn stanza_in(&self, kind: StanzaKind) {
        Self::inc(&self.stanzas_in[kind_index(kind)]);
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, values: &[(&str, u64)]| {
            let _ = writeln!(
                out,
                "# HELP xmppd_{name} {help}\n# TYPE xmppd_{name} {kind}"
            );
            for (labels, v) in values {
                let _ = writeln!(out, "xmppd_{name}{labels} {v}");
            }
        };
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        metric(
            "connections_total",
            "counter",
            "Client connections accepted.",
            &[("", get(&self.connections_total))],
        );
        metric(
            "connections_open",
            "gauge",
            "Client connections open now.",
            &[("", get(&self.connections_open))],
        );
        metric(
            "connections_refused_total",
            "counter",
            "Connections refused by per-IP limits.",
            &[("", get(&self.connections_refused))],
        );
        metric(
            "sessions_bound",
            "gauge",
            "Sessions with a bound resource.",
            &[("", get(&self.sessions_bound))],
        );
        metric(
            "stanzas_in_total",
            "counter",
            "Stanzas received from clients.",
            &[
                ("{kind=\"message\"}", get(&self.stanzas_in[0])),
                ("{kind=\"presence\"}", get(&self.stanzas_in[1])),
                ("{kind=\"iq\"}", get(&self.stanzas_in[2])),
            ],
        );
        metric(
            "stanzas_out_total",
            "counter",
            "Stanzas queued to client sessions.",
            &[("", get(&self.stanzas_out))],
        );
        metric(
            "auth_success_total",
            "counter",
            "Successful SASL authentications.",
            &[("", get(&self.auth_success))],
        );
        metric(
            "auth_failures_total",
            "counter",
            "Failed SASL authentications.",
            &[("", get(&self.auth_failures))],
        );
        metric(
            "auth_throttled_total",
            "counter",
            "Logins refused because the address, or the account from it, failed too often.",
            &[("", get(&self.auth_throttled))],
        );
        metric(
            "queue_overflows_total",
            "counter",
            "Sessions disconnected because their outbound queue was full.",
            &[("", get(&self.queue_overflows))],
        );
        metric(
            "stream_errors_total",
            "counter",
            "Stream errors sent.",
            &[("", get(&self.stream_errors))],
        );
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
                    [("content-type", "text/plain; version=0.0.4")],
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
