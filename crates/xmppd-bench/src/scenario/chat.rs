//! `chat`: N/2 pairs of sessions sending each other one-to-one messages (to the partner's
//! full JID) at a target total rate. Each body carries its send time, so the receiver
//! measures delivery latency. Reports delivered msgs/s, latency percentiles and the server's
//! CPU time per delivered message.
//!
//! `s2s` is the same between two federated servers: each pair has one session on each
//! server ([`Run::peer`]), so every message crosses the server-to-server link. One message
//! each way first opens and authenticates the links (not counted); the servers' RSS before
//! and after that is the memory of the idle links. CPU is both servers' together.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use super::{
    finish, hold, parse_u64, push_u64, ramp, reached, server_quiet, Phase, PhaseRx, Progress, Run,
    Window, INITIAL_PRESENCE,
};
use crate::conn::{self, Failure};
use crate::histogram::Histogram;
use crate::reader::{Event, StanzaReader};
use crate::xml::Stanza;

pub struct Params {
    pub pairs: usize,
    /// Messages per second, all senders together.
    pub rate: f64,
    pub duration: Duration,
    /// Longest wait, after sending stops, for messages still in flight.
    pub drain: Duration,
    /// chat_ws: the first session of each pair connects over WebSocket, its partner over TCP.
    pub ws_side: bool,
    /// s2s: the servers' s2s listening ports, to count the server-to-server connections.
    pub s2s_ports: Vec<u16>,
}

/// The body of the message each way that opens the s2s links before the measured window.
const WARM_BODY: &[u8] = b"warm-up";

#[derive(Default)]
struct Counters {
    /// Send loops still running: the drain waits for them before comparing counts.
    senders: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    errors: AtomicU64,
    /// s2s warm-up messages received.
    warm: AtomicU64,
    latency: Histogram,
}

pub async fn run(run: Arc<Run>, params: Params) -> (Value, &'static str) {
    let n = params.pairs * 2;
    let timeout = run.target.timeout;
    let (phase, phase_rx) = watch::channel(Phase::Setup);
    let progress = Arc::new(Progress::default());
    let counters = Arc::new(Counters::default());
    let jids: Arc<Vec<OnceLock<String>>> = Arc::new((0..n).map(|_| OnceLock::new()).collect());
    // Each sender's share of the rate, as an interval.
    let period = Duration::from_secs_f64(n as f64 / params.rate);

    let ws_side = params.ws_side;
    let pids = run.server_pids();
    let login = Window::start(pids.clone());
    let tasks = ramp(&run, n, |i, permit| {
        let run = run.clone();
        let progress = progress.clone();
        let counters = counters.clone();
        let jids = jids.clone();
        let rx = phase_rx.clone();
        async move {
            let transport = if ws_side && i % 2 == 0 {
                conn::Transport::Ws
            } else {
                conn::Transport::Tcp
            };
            let result = session_task(
                &run, i, transport, permit, &progress, &counters, &jids, rx, period,
            )
            .await;
            if let Err(e) = result {
                run.errors.record(&e);
            }
        }
    })
    .await;
    progress.settled(n, timeout * 2).await;
    let login = login.finish();
    let online = progress.online() as u64;

    server_quiet(pids.clone(), timeout).await;
    let links = match run.peer {
        Some(_) => Some(open_links(&run, &params, &phase, &counters, &pids).await),
        None => None,
    };
    let received_before = counters.received.load(Ordering::Relaxed);
    let window = Window::start(pids);
    let _ = phase.send(Phase::Measure);
    tokio::time::sleep(params.duration).await;
    let measured = window.finish();
    let delivered = counters.received.load(Ordering::Relaxed) - received_before;
    let _ = phase.send(Phase::Drain);

    // Wait (bounded) for messages still on their way.
    let drain_until = Instant::now() + params.drain;
    while (counters.senders.load(Ordering::Relaxed) > 0
        || counters.received.load(Ordering::Relaxed) < counters.sent.load(Ordering::Relaxed))
        && Instant::now() < drain_until
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    finish(&phase, tasks, timeout).await;

    let sent = counters.sent.load(Ordering::Relaxed);
    let received = counters.received.load(Ordering::Relaxed);
    run.errors.add(
        "lost",
        sent.saturating_sub(received),
        "messages sent but not received before the drain timeout",
    );
    run.errors.add(
        "message-error",
        counters.errors.load(Ordering::Relaxed),
        "message bounced with type='error'",
    );
    let status = if delivered == 0 { "failed" } else { "ok" };
    let mut metrics = json!({
        "sessions_online": online,
        "target_msgs_per_s": params.rate,
        "sent": sent,
        "received": received,
        "delivered_in_window": delivered,
        "delivered_per_s": measured.rate(delivered),
        "server_cpu_us_per_msg": measured.cpu_per(delivered, 1e6),
        "latency": counters.latency.summary_ms(),
        "logins_per_s": login.rate(online),
        "window": measured.to_json(),
        "params": {
            "pairs": params.pairs,
            "rate": params.rate,
            "duration_s": params.duration.as_secs_f64(),
        },
    });
    if params.ws_side {
        metrics["params"]["transports"] = json!("websocket to tcp and back, one of each per pair");
    }
    if let (Some(links), Some(peer)) = (links, &run.peer) {
        metrics["links"] = links;
        metrics["params"]["domains"] = json!([run.target.domain, peer.domain]);
    }
    (metrics, status)
}

/// s2s: sends one message from the first server to the second (session 0), once it has
/// arrived one back (session 1), so the servers open and authenticate their links; then waits
/// for the servers to be quiet. Returns the links' memory: both servers' RSS before and
/// after, and the server-to-server connections then open.
async fn open_links(
    run: &Run,
    params: &Params,
    phase: &watch::Sender<Phase>,
    counters: &Counters,
    pids: &[u32],
) -> Value {
    let timeout = run.target.timeout;
    let window = Window::start(pids.to_vec());
    let mut first_s = Vec::new();
    for (step, delivered) in [(Phase::Warm, 1), (Phase::WarmBack, 2)] {
        let started = Instant::now();
        let _ = phase.send(step);
        while counters.warm.load(Ordering::Relaxed) < delivered && started.elapsed() < timeout {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        first_s.push(started.elapsed().as_secs_f64());
    }
    let warm = counters.warm.load(Ordering::Relaxed);
    if warm < 2 {
        run.errors.add(
            "s2s-link",
            2 - warm,
            "warm-up message not delivered across the link",
        );
    }
    server_quiet(pids.to_vec(), timeout).await;
    let measured = window.finish();
    let connections = crate::procstat::established_on(&params.s2s_ports) as u64;
    let rss = |m: Option<crate::procstat::Memory>| m.map(|m| m.rss_kib);
    let delta = match (rss(measured.server_before), rss(measured.server_after)) {
        (Some(a), Some(b)) => Some(b as f64 - a as f64),
        _ => None,
    };
    json!({
        "warm_up_delivered": warm,
        "first_message_s": first_s[0],
        "first_message_back_s": first_s[1],
        "s2s_connections": (!params.s2s_ports.is_empty()).then_some(connections),
        "servers_rss_before_kib": rss(measured.server_before),
        "servers_rss_after_kib": rss(measured.server_after),
        "rss_delta_kib": delta,
        "rss_kib_per_connection": delta.filter(|_| connections > 0).map(|d| d / connections as f64),
        "server_cpu_s": measured.server_cpu_s,
    })
}

#[allow(clippy::too_many_arguments)]
async fn session_task(
    run: &Run,
    i: usize,
    transport: conn::Transport,
    permit: tokio::sync::OwnedSemaphorePermit,
    progress: &Progress,
    counters: &Counters,
    jids: &[OnceLock<String>],
    mut rx: PhaseRx,
    period: Duration,
) -> Result<(), Failure> {
    let target = run.target_of(i);
    // s2s: pair k is account k on each server.
    let account = if run.peer.is_some() { i / 2 } else { i };
    let mut session = match conn::login_via(target, account, transport).await {
        Ok(s) => s,
        Err(e) => {
            progress.failed.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
    };
    let _ = jids[i].set(session.jid.clone());
    if let Err(e) = session.go_online(target, INITIAL_PRESENCE, |_| {}).await {
        progress.failed.fetch_add(1, Ordering::Relaxed);
        return Err(e);
    }
    progress.online.fetch_add(1, Ordering::Relaxed);
    drop(permit);
    // A partner that starts sending first must not have its messages dropped here.
    // s2s: session 0 opens the way there, session 1 the way back (see open_links).
    for (step, sender) in [(Phase::Warm, 0), (Phase::WarmBack, 1)] {
        hold(&mut session, &mut rx, step, |s| record(run, s, counters)).await?;
        if let (Some(_), true, Some(partner)) = (&run.peer, i == sender, jids[i ^ 1].get()) {
            let mut stanza = format!("<message to='{partner}' type='chat'><body>").into_bytes();
            stanza.extend_from_slice(WARM_BODY);
            stanza.extend_from_slice(b"</body></message>");
            conn::send(&mut session.io, &stanza, "send").await?;
        }
    }
    hold(&mut session, &mut rx, Phase::Measure, |s| {
        record(run, s, counters)
    })
    .await?;
    let Some(partner) = jids[i ^ 1].get() else {
        // The partner never logged in (already counted as its error): just stay online.
        hold(&mut session, &mut rx, Phase::Stop, |_| {}).await?;
        session.close(Duration::from_secs(2)).await;
        return Ok(());
    };
    // Senders start spread over one period so they do not tick in lockstep.
    let offset = period.mul_f64((i as f64 * 0.618_034).fract());
    let conn::Session {
        io,
        mut reader,
        framed,
        ..
    } = session;
    let (rd, wr) = tokio::io::split(io);
    let sending = send_loop(run, wr, partner, period, offset, rx.clone(), counters);
    let receiving = receive_loop(run, rd, &mut reader, rx, counters);
    let (wr, read_result) = tokio::join!(sending, receiving);
    let mut wr = wr?;
    read_result?;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = wr.write_all(conn::close_tag(framed)).await;
        let _ = wr.flush().await;
        let _ = wr.shutdown().await;
    })
    .await;
    Ok(())
}

/// Sends a message every `period` until the drain phase. The stanza is assembled in one
/// reused buffer: a fixed prefix, the timestamp digits, a fixed suffix — no allocation per
/// message.
async fn send_loop<W: AsyncWrite + Unpin>(
    run: &Run,
    mut wr: W,
    partner: &str,
    period: Duration,
    offset: Duration,
    mut rx: PhaseRx,
    counters: &Counters,
) -> Result<W, Failure> {
    counters.senders.fetch_add(1, Ordering::Relaxed);
    let result = send_messages(run, &mut wr, partner, period, offset, &mut rx, counters).await;
    counters.senders.fetch_sub(1, Ordering::Relaxed);
    result.map(|()| wr)
}

async fn send_messages<W: AsyncWrite + Unpin>(
    run: &Run,
    wr: &mut W,
    partner: &str,
    period: Duration,
    offset: Duration,
    rx: &mut PhaseRx,
    counters: &Counters,
) -> Result<(), Failure> {
    let prefix = format!("<message to='{partner}' type='chat'><body>");
    let suffix = b"</body></message>";
    let mut buf = Vec::with_capacity(prefix.len() + 20 + suffix.len());
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    // A late generator catches up (open loop): the offered rate stays the target.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    loop {
        tokio::select! {
            _ = reached(rx, Phase::Drain) => return Ok(()),
            _ = ticks.tick() => {}
        }
        buf.clear();
        buf.extend_from_slice(prefix.as_bytes());
        push_u64(&mut buf, run.now_micros());
        buf.extend_from_slice(suffix);
        conn::send(wr, &buf, "send").await?;
        counters.sent.fetch_add(1, Ordering::Relaxed);
    }
}

async fn receive_loop<R: AsyncRead + Unpin>(
    run: &Run,
    mut rd: R,
    reader: &mut StanzaReader,
    mut rx: PhaseRx,
    counters: &Counters,
) -> Result<(), Failure> {
    loop {
        let event = tokio::select! {
            _ = reached(&mut rx, Phase::Stop) => return Ok(()),
            event = reader.next(&mut rd) => event,
        };
        let stanza = match event.map_err(|e| Failure::new("receive", e))? {
            Event::Stanza(s) => s,
            Event::StreamClose => return Err(Failure::new("receive", "stream closed by server")),
            Event::StreamOpen => return Err(Failure::new("receive", "unexpected stream header")),
        };
        record(run, stanza, counters);
    }
}

/// Counts a received message and its latency (or a bounce).
fn record(run: &Run, stanza: Stanza<'_>, counters: &Counters) {
    if stanza.name() != b"message" {
        return;
    }
    let body = stanza.child_text(b"body");
    if stanza.attr(b"type") == Some(b"error") {
        counters.errors.fetch_add(1, Ordering::Relaxed);
    } else if body == Some(WARM_BODY) {
        counters.warm.fetch_add(1, Ordering::Relaxed);
    } else if let Some(sent_at) = body.and_then(parse_u64) {
        counters
            .latency
            .record(run.now_micros().saturating_sub(sent_at));
        counters.received.fetch_add(1, Ordering::Relaxed);
    }
}
