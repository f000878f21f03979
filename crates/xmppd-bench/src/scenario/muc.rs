//! `muc_join` and `muc`: multi-user chat (XEP-0045) in one room at `conference.<domain>`.
//!
//! Both first log every session in (unmeasured) and have the first one create the room
//! (an instant room: the owner submits an empty configuration form, XEP-0045 §10.1.2).
//! - `muc_join`: the other sessions join at `join_rate` per second (open loop); a join's
//!   latency is from its presence to the server's self-presence (status 110), after the
//!   server has sent it the presence of everyone already there. Reports join p50/p99, the
//!   time from the first join to the last self-presence, and server CPU per join.
//! - `muc`: everyone joins (unmeasured), then the occupants send groupchat messages at a
//!   target total rate; each is delivered to every occupant (the sender too). Reports
//!   deliveries/s, server CPU per delivered message and delivery latency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit};
use tokio::time::MissedTickBehavior;

use super::{
    finish, iq_reply, parse_u64, push_u64, ramp, reached, server_quiet, Phase, PhaseRx, Progress,
    Run, Window, INITIAL_PRESENCE,
};
use crate::conn::{self, send, Failure, Session};
use crate::histogram::Histogram;
use crate::reader::Event;
use crate::xml::Stanza;

pub struct Params {
    /// Occupants (sessions), the room's creator included.
    pub occupants: usize,
    /// muc_join: joins per second; muc: ignored (joins follow the login ramp).
    pub join_rate: f64,
    /// muc: groupchat messages per second, all occupants together; None for muc_join.
    pub msg_rate: Option<f64>,
    pub duration: Duration,
    pub drain: Duration,
}

#[derive(Default)]
struct Counters {
    joined: AtomicU64,
    join_errors: AtomicU64,
    join_latency: Histogram,
    /// Microseconds since the run's epoch of the last completed join.
    last_join_us: AtomicU64,
    sent: AtomicU64,
    delivered: AtomicU64,
    errors: AtomicU64,
    latency: Histogram,
}

fn room(run: &Run) -> String {
    format!("bench@conference.{}", run.target.domain)
}

fn join_presence(run: &Run, i: usize) -> Vec<u8> {
    format!(
        "<presence to='{}/n{}'><x xmlns='http://jabber.org/protocol/muc'>\
         <history maxstanzas='0'/></x></presence>",
        room(run),
        i + 1
    )
    .into_bytes()
}

/// Whether a presence is our own in the room (XEP-0045 status 110).
fn is_self_presence(s: &Stanza<'_>) -> bool {
    s.name() == b"presence"
        && s.attr(b"type").is_none()
        && s.raw()
            .windows(10)
            .any(|w| w == b"code='110'" || w == b"code=\"110\"")
}

pub async fn run(run: Arc<Run>, params: Params) -> (Value, &'static str) {
    let n = params.occupants.max(2);
    let timeout = run.target.timeout;
    let (phase, phase_rx) = watch::channel(Phase::Setup);
    let progress = Arc::new(Progress::default());
    let counters = Arc::new(Counters::default());
    let created = Arc::new(Notify::new());
    let room_ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fanout = params.msg_rate.is_some();
    let period = Duration::from_secs_f64(n as f64 / params.msg_rate.unwrap_or(1.0));
    // muc_join: session i joins at (i - 1) / join_rate after the Measure phase starts.
    let join_gap = Duration::from_secs_f64(1.0 / params.join_rate);

    let tasks = ramp(&run, n, |i, permit| {
        let run = run.clone();
        let progress = progress.clone();
        let counters = counters.clone();
        let created = created.clone();
        let room_ready = room_ready.clone();
        let rx = phase_rx.clone();
        async move {
            let result = occupant(
                &run,
                i,
                permit,
                &progress,
                &counters,
                (&created, &room_ready),
                rx,
                fanout,
                join_gap * i.saturating_sub(1) as u32,
                period,
            )
            .await;
            if let Err(e) = result {
                run.errors.record(&e);
            }
        }
    })
    .await;
    progress.settled(n, timeout * 2).await;
    let online = progress.online() as u64;
    // The creator made the room (or gave up) once it is online and configured it.
    let _ = tokio::time::timeout(timeout, async {
        while !room_ready.load(Ordering::Relaxed) {
            created.notified().await;
        }
    })
    .await;
    if fanout {
        // Everyone joins as soon as the room is there: wait for the joins to be done.
        let deadline = Instant::now() + timeout * 2;
        while counters.joined.load(Ordering::Relaxed) + counters.join_errors.load(Ordering::Relaxed)
            < online.saturating_sub(1)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    server_quiet(run.server_pid, timeout).await;

    let mut metrics = json!({ "sessions_online": online });
    let status;
    if !fanout {
        // Joins: 1 (the creator) is in; the others join on their schedule from now.
        let window = Window::start(run.server_pid);
        let started_us = run.now_micros();
        let _ = phase.send(Phase::Measure);
        let expected = online.saturating_sub(1);
        let deadline = Instant::now() + join_gap * n as u32 + timeout;
        while counters.joined.load(Ordering::Relaxed) + counters.join_errors.load(Ordering::Relaxed)
            < expected
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let measured = window.finish();
        let joined = counters.joined.load(Ordering::Relaxed);
        let total_s = counters
            .last_join_us
            .load(Ordering::Relaxed)
            .saturating_sub(started_us) as f64
            / 1e6;
        run.errors.add(
            "join",
            counters.join_errors.load(Ordering::Relaxed),
            "join answered with an error",
        );
        run.errors.add(
            "join-missing",
            expected.saturating_sub(joined + counters.join_errors.load(Ordering::Relaxed)),
            "no self-presence before the deadline",
        );
        status = if joined == 0 { "failed" } else { "ok" };
        metrics["joins"] = json!(joined);
        metrics["join_latency"] = counters.join_latency.summary_ms();
        metrics["join_total_s"] = json!(total_s);
        metrics["occupants_at_end"] = json!(joined + 1);
        metrics["server_cpu_ms_per_join"] = json!(measured.cpu_per(joined, 1e3));
        metrics["window"] = measured.to_json();
        metrics["params"] = json!({
            "occupants": n,
            "join_rate": params.join_rate,
        });
        let _ = phase.send(Phase::Drain);
    } else {
        let before = counters.delivered.load(Ordering::Relaxed);
        let window = Window::start(run.server_pid);
        let _ = phase.send(Phase::Measure);
        tokio::time::sleep(params.duration).await;
        let measured = window.finish();
        let delivered = counters.delivered.load(Ordering::Relaxed) - before;
        let _ = phase.send(Phase::Drain);
        let occupants = counters.joined.load(Ordering::Relaxed) + 1;
        let drain_until = Instant::now() + params.drain;
        while counters.delivered.load(Ordering::Relaxed)
            < counters.sent.load(Ordering::Relaxed) * occupants
            && Instant::now() < drain_until
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let sent = counters.sent.load(Ordering::Relaxed);
        let received = counters.delivered.load(Ordering::Relaxed);
        run.errors.add(
            "lost",
            (sent * occupants).saturating_sub(received),
            "deliveries expected (messages × occupants) but not received before the drain timeout",
        );
        run.errors.add(
            "message-error",
            counters.errors.load(Ordering::Relaxed),
            "groupchat message bounced with type='error'",
        );
        status = if delivered == 0 { "failed" } else { "ok" };
        metrics["occupants"] = json!(occupants);
        metrics["sent"] = json!(sent);
        metrics["deliveries_expected"] = json!(sent * occupants);
        metrics["received"] = json!(received);
        metrics["delivered_in_window"] = json!(delivered);
        metrics["delivered_per_s"] = json!(measured.rate(delivered));
        metrics["server_cpu_us_per_delivery"] = json!(measured.cpu_per(delivered, 1e6));
        metrics["latency"] = counters.latency.summary_ms();
        metrics["window"] = measured.to_json();
        metrics["params"] = json!({
            "occupants": n,
            "rate": params.msg_rate,
            "duration_s": params.duration.as_secs_f64(),
        });
    }
    finish(&phase, tasks, timeout).await;
    (metrics, status)
}

#[allow(clippy::too_many_arguments)]
async fn occupant(
    run: &Run,
    i: usize,
    permit: OwnedSemaphorePermit,
    progress: &Progress,
    counters: &Counters,
    (created, room_ready): (&Notify, &std::sync::atomic::AtomicBool),
    mut rx: PhaseRx,
    fanout: bool,
    join_after: Duration,
    period: Duration,
) -> Result<(), Failure> {
    let target = &run.target;
    let result = async {
        let mut s = conn::login(target, i).await?;
        s.go_online(target, INITIAL_PRESENCE, |_| {}).await?;
        Ok::<Session, Failure>(s)
    }
    .await;
    let mut session = match result {
        Ok(s) => {
            progress.online.fetch_add(1, Ordering::Relaxed);
            s
        }
        Err(e) => {
            progress.failed.fetch_add(1, Ordering::Relaxed);
            if i == 0 {
                room_ready.store(true, Ordering::Relaxed);
                created.notify_waiters();
            }
            return Err(e);
        }
    };
    drop(permit);
    if i == 0 {
        let made = create_room(run, &mut session).await;
        room_ready.store(true, Ordering::Relaxed);
        created.notify_waiters();
        made?;
    } else {
        // Everyone else waits for the room; in muc_join, for their turn too.
        while !room_ready.load(Ordering::Relaxed) {
            tokio::select! {
                _ = created.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        if !fanout {
            super::hold(&mut session, &mut rx, Phase::Measure, |_| {}).await?;
            tokio::time::sleep(join_after).await;
        }
        join(run, &mut session, i, counters, !fanout).await?;
    }
    if !fanout {
        super::hold(&mut session, &mut rx, Phase::Stop, |_| {}).await?;
        session.close(Duration::from_secs(2)).await;
        return Ok(());
    }
    super::hold(&mut session, &mut rx, Phase::Measure, |s| {
        record(run, s, counters)
    })
    .await?;
    let room = room(run);
    let prefix = format!("<message to='{room}' type='groupchat'><body>");
    let suffix = b"</body></message>";
    let mut buf = Vec::with_capacity(prefix.len() + 20 + suffix.len());
    let offset = period.mul_f64((i as f64 * 0.618_034).fract());
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut sending = true;
    loop {
        tokio::select! {
            _ = reached(&mut rx, Phase::Stop) => break,
            _ = ticks.tick(), if sending => {
                if *rx.borrow() >= Phase::Drain {
                    sending = false;
                    continue;
                }
                buf.clear();
                buf.extend_from_slice(prefix.as_bytes());
                push_u64(&mut buf, run.now_micros());
                buf.extend_from_slice(suffix);
                send(&mut session.io, &buf, "send").await?;
                counters.sent.fetch_add(1, Ordering::Relaxed);
            }
            event = session.reader.next(&mut session.io) => {
                let s = match event.map_err(|e| Failure::new("receive", e))? {
                    Event::Stanza(s) => s,
                    _ => return Err(Failure::new("receive", "stream ended")),
                };
                if let Some(reply) = iq_reply(s) {
                    send(&mut session.io, &reply, "receive").await?;
                } else {
                    record(run, s, counters);
                }
            }
        }
    }
    session.close(Duration::from_secs(2)).await;
    Ok(())
}

/// Joins as the first occupant and makes the room an instant room (XEP-0045 §10.1.2).
async fn create_room(run: &Run, session: &mut Session) -> Result<(), Failure> {
    let target = &run.target;
    send(&mut session.io, &join_presence(run, 0), "create").await?;
    let deadline = tokio::time::Instant::now() + target.timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let s = match conn::next_event(&mut session.reader, &mut session.io, left, "create").await?
        {
            Event::Stanza(s) => s,
            _ => return Err(Failure::new("create", "stream ended")),
        };
        if s.name() == b"presence" && s.attr(b"type") == Some(b"error") {
            return Err(Failure::new("create", String::from_utf8_lossy(s.raw())));
        }
        if is_self_presence(&s) {
            break;
        }
    }
    let config = format!(
        "<iq type='set' id='cfg1' to='{}'><query xmlns='http://jabber.org/protocol/muc#owner'>\
         <x xmlns='jabber:x:data' type='submit'/></query></iq>",
        room(run)
    );
    send(&mut session.io, config.as_bytes(), "create").await?;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let s = match conn::next_event(&mut session.reader, &mut session.io, left, "create").await?
        {
            Event::Stanza(s) => s,
            _ => return Err(Failure::new("create", "stream ended")),
        };
        if s.name() == b"iq" && s.attr(b"id") == Some(b"cfg1") {
            return if s.attr(b"type") == Some(b"result") {
                Ok(())
            } else {
                Err(Failure::new("create", String::from_utf8_lossy(s.raw())))
            };
        }
    }
}

/// Joins the room and waits for the self-presence; `measured`: its latency counts.
async fn join(
    run: &Run,
    session: &mut Session,
    i: usize,
    counters: &Counters,
    measured: bool,
) -> Result<(), Failure> {
    let started = run.now_micros();
    send(&mut session.io, &join_presence(run, i), "join").await?;
    // Every occupant's presence comes first: a big room takes a while to send.
    let deadline = tokio::time::Instant::now() + run.target.timeout * 2;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let s = match conn::next_event(&mut session.reader, &mut session.io, left, "join").await? {
            Event::Stanza(s) => s,
            _ => return Err(Failure::new("join", "stream ended")),
        };
        if s.name() == b"presence" && s.attr(b"type") == Some(b"error") {
            counters.join_errors.fetch_add(1, Ordering::Relaxed);
            return Err(Failure::new("join", String::from_utf8_lossy(s.raw())));
        }
        if let Some(reply) = iq_reply(s) {
            send(&mut session.io, &reply, "join").await?;
            continue;
        }
        if is_self_presence(&s) {
            let now = run.now_micros();
            if measured {
                counters.join_latency.record(now.saturating_sub(started));
            }
            counters.last_join_us.fetch_max(now, Ordering::Relaxed);
            counters.joined.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
    }
}

/// Counts a groupchat delivery and its latency (or a bounce).
fn record(run: &Run, s: Stanza<'_>, counters: &Counters) {
    if s.name() != b"message" {
        return;
    }
    if s.attr(b"type") == Some(b"error") {
        counters.errors.fetch_add(1, Ordering::Relaxed);
    } else if let Some(sent_at) = s.child_text(b"body").and_then(parse_u64) {
        counters
            .latency
            .record(run.now_micros().saturating_sub(sent_at));
        counters.delivered.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_presence_has_status_110() {
        let own = Stanza::new(
            b"<presence from='r@c/n1'><x xmlns='http://jabber.org/protocol/muc#user'>\
              <item affiliation='none' role='participant'/><status code='110'/></x></presence>",
        );
        assert!(is_self_presence(&own));
        let other = Stanza::new(
            b"<presence from='r@c/n2'><x xmlns='http://jabber.org/protocol/muc#user'>\
              <item affiliation='none' role='participant'/></x></presence>",
        );
        assert!(!is_self_presence(&other));
    }
}
