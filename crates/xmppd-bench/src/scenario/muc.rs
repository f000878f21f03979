//! `muc_join` and `muc`: multi-user chat (XEP-0045) in one room at `conference.<domain>`.
//!
//! Both first log every session in (unmeasured) and have the first one create the room
//! (an instant room: the owner submits an empty configuration form, XEP-0045 §10.1.2).
//! - `muc_join`: the other sessions join at `join_rate` per second (open loop), or all at
//!   once with a rate of 0 (a join storm); a join's latency is from its presence to the
//!   server's self-presence (status 110), after the server has sent it the presence of
//!   everyone already there. Reports join p50/p99, the time from the first join to the
//!   last self-presence and until every occupant has everyone's presence (the full list),
//!   server CPU per join, peak RSS, and RSS per idle occupant once it is quiet.
//! - `muc`: everyone joins (unmeasured), then `senders` occupants (all by default) send
//!   groupchat messages at a target total rate; each is delivered to every occupant (the
//!   sender too). Reports deliveries/s, server CPU per delivered message, the latency of
//!   each delivery and, per message, to its last occupant.

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
use crate::procstat;
use crate::reader::Event;
use crate::xml::Stanza;

pub struct Params {
    /// Occupants (sessions), the room's creator included.
    pub occupants: usize,
    /// muc_join: joins per second, 0 for all at once; muc: ignored (joins follow the
    /// login ramp).
    pub join_rate: f64,
    /// muc: groupchat messages per second, all senders together; None for muc_join.
    pub msg_rate: Option<f64>,
    /// muc: how many occupants send (0: all of them).
    pub senders: usize,
    /// The roles whose presence the room broadcasts (`muc#roomconfig_presencebroadcast`),
    /// when not the service's default: for rooms too big for everyone to see everyone.
    pub presence_broadcast: Vec<String>,
    pub duration: Duration,
    pub drain: Duration,
    /// Longest wait for the joins of a big room (a slow server takes a while).
    pub setup_timeout: Duration,
}

/// One groupchat message of the fan-out: when it was sent, when its last copy arrived
/// and how many copies did.
#[derive(Default)]
struct Sent {
    at_us: AtomicU64,
    last_us: AtomicU64,
    copies: AtomicU64,
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
    /// muc: indexed by the message's id; messages past the end are not followed.
    messages: Vec<Sent>,
    /// muc_join: occupants expected in the full list (0 until the logins are done).
    expected: AtomicU64,
    /// muc_join: sessions that have everyone's presence, and when the last one did.
    full_lists: AtomicU64,
    last_full_us: AtomicU64,
}

impl Counters {
    /// Another available presence from the room reached a session that has now seen
    /// `seen`; the session's list is full when that is everyone.
    fn presence_seen(&self, run: &Run, seen: u64) {
        let expected = self.expected.load(Ordering::Relaxed);
        if expected > 0 && seen == expected {
            self.last_full_us
                .fetch_max(run.now_micros(), Ordering::Relaxed);
            self.full_lists.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// An occupant's available presence from the room (an entry of the occupant list).
fn is_room_presence(run: &Run, s: &Stanza<'_>) -> bool {
    let room = room(run);
    s.name() == b"presence"
        && s.attr(b"type").is_none()
        && s.attr(b"from")
            .is_some_and(|f| f.len() > room.len() && f.starts_with(room.as_bytes()))
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

/// What one occupant does, besides joining.
#[derive(Clone)]
struct Plan {
    fanout: bool,
    /// muc: whether this occupant sends, and how often.
    sends: bool,
    period: Duration,
    /// muc_join: how long after the Measure phase starts to join.
    join_after: Duration,
    /// Longest wait for a join's self-presence.
    wait: Duration,
    /// The configuration form the creator submits (empty: an instant room).
    config: Arc<str>,
}

pub async fn run(run: Arc<Run>, params: Params) -> (Value, &'static str) {
    let n = params.occupants.max(2);
    let timeout = run.target.timeout;
    let wait = params.setup_timeout.max(timeout);
    let (phase, phase_rx) = watch::channel(Phase::Setup);
    let progress = Arc::new(Progress::default());
    let fanout = params.msg_rate.is_some();
    let senders = match params.senders {
        0 => n,
        k => k.min(n),
    };
    let rate = params.msg_rate.unwrap_or(1.0);
    // Every message of the window followed, with room to spare for a late one.
    let followed = if fanout {
        (rate * (params.duration.as_secs_f64() + 1.0) * 1.5) as usize + senders
    } else {
        0
    };
    let counters = Arc::new(Counters {
        messages: (0..followed).map(|_| Sent::default()).collect(),
        ..Counters::default()
    });
    let created = Arc::new(Notify::new());
    let room_ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // muc_join: session i joins at (i - 1) / join_rate after the Measure phase starts.
    let join_gap = if params.join_rate > 0.0 {
        Duration::from_secs_f64(1.0 / params.join_rate)
    } else {
        Duration::ZERO
    };
    let plan = Plan {
        fanout,
        sends: false,
        period: Duration::from_secs_f64(senders as f64 / rate),
        join_after: Duration::ZERO,
        wait,
        config: config_form(&run, &params.presence_broadcast).into(),
    };

    let tasks = ramp(&run, n, |i, permit| {
        let run = run.clone();
        let progress = progress.clone();
        let counters = counters.clone();
        let created = created.clone();
        let room_ready = room_ready.clone();
        let rx = phase_rx.clone();
        let plan = Plan {
            sends: fanout && i < senders,
            join_after: join_gap * i.saturating_sub(1) as u32,
            ..plan.clone()
        };
        async move {
            let result = occupant(
                &run,
                i,
                permit,
                &progress,
                &counters,
                (&created, &room_ready),
                rx,
                plan,
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
    let settled = |want: u64, deadline: Instant| {
        let counters = counters.clone();
        async move {
            while counters.joined.load(Ordering::Relaxed)
                + counters.join_errors.load(Ordering::Relaxed)
                < want
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    if fanout {
        // Everyone joins as soon as the room is there: wait for the joins to be done.
        settled(online.saturating_sub(1), Instant::now() + wait).await;
    }
    server_quiet(run.server_pid, timeout).await;

    let mut metrics = json!({ "sessions_online": online });
    let status;
    if !fanout {
        // Joins: 1 (the creator) is in; the others join on their schedule from now.
        counters.expected.store(online, Ordering::Relaxed);
        let window = Window::start(run.server_pid);
        let started_us = run.now_micros();
        let _ = phase.send(Phase::Measure);
        let expected = online.saturating_sub(1);
        let deadline = Instant::now() + join_gap * n as u32 + wait;
        settled(expected, deadline).await;
        // Then until everyone (the creator too) has everyone's presence.
        while counters.full_lists.load(Ordering::Relaxed) < online && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let measured = window.finish();
        let joined = counters.joined.load(Ordering::Relaxed);
        let since_start =
            |us: &AtomicU64| us.load(Ordering::Relaxed).saturating_sub(started_us) as f64 / 1e6;
        let full_lists = counters.full_lists.load(Ordering::Relaxed);
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
        run.errors.add(
            "list-incomplete",
            online.saturating_sub(full_lists),
            "an occupant without everyone's presence at the deadline",
        );
        // Memory of the occupants once the server is done with the storm.
        server_quiet(run.server_pid, timeout).await;
        let idle = run.server_pid.and_then(procstat::memory);
        let before = measured.server_before;
        if let (Some(idle), Some(before)) = (idle, before) {
            metrics["server_rss_idle_kib"] = json!(idle.rss_kib);
            if joined > 0 {
                metrics["server_rss_kib_per_occupant"] =
                    json!(idle.rss_kib.saturating_sub(before.rss_kib) as f64 / joined as f64);
            }
        }
        status = if joined == 0 { "failed" } else { "ok" };
        metrics["joins"] = json!(joined);
        metrics["join_latency"] = counters.join_latency.summary_ms();
        metrics["join_total_s"] = json!(since_start(&counters.last_join_us));
        metrics["full_list_s"] = json!(since_start(&counters.last_full_us));
        metrics["full_lists"] = json!(full_lists);
        metrics["occupants_at_end"] = json!(joined + 1);
        metrics["server_cpu_ms_per_join"] = json!(measured.cpu_per(joined, 1e3));
        metrics["window"] = measured.to_json();
        metrics["params"] = json!({
            "occupants": n,
            "join_rate": params.join_rate,
            "presence_broadcast": params.presence_broadcast,
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
        // Per message: from its sending to its copy for the last occupant.
        let to_last = Histogram::default();
        let mut to_everyone = 0u64;
        for m in counters.messages.iter().take(sent as usize) {
            let at = m.at_us.load(Ordering::Relaxed);
            if at > 0 && m.copies.load(Ordering::Relaxed) == occupants {
                to_last.record(m.last_us.load(Ordering::Relaxed).saturating_sub(at));
                to_everyone += 1;
            }
        }
        status = if delivered == 0 { "failed" } else { "ok" };
        metrics["occupants"] = json!(occupants);
        metrics["senders"] = json!(senders);
        metrics["sent"] = json!(sent);
        metrics["deliveries_expected"] = json!(sent * occupants);
        metrics["received"] = json!(received);
        metrics["delivered_in_window"] = json!(delivered);
        metrics["delivered_per_s"] = json!(measured.rate(delivered));
        metrics["server_cpu_us_per_delivery"] = json!(measured.cpu_per(delivered, 1e6));
        metrics["latency"] = counters.latency.summary_ms();
        metrics["latency_to_last"] = to_last.summary_ms();
        metrics["messages_to_everyone"] = json!(to_everyone);
        metrics["window"] = measured.to_json();
        metrics["params"] = json!({
            "occupants": n,
            "senders": senders,
            "rate": params.msg_rate,
            "duration_s": params.duration.as_secs_f64(),
            "presence_broadcast": params.presence_broadcast,
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
    plan: Plan,
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
    // Available presences from the room this session has seen: its occupant list.
    let mut seen;
    if i == 0 {
        let made = create_room(run, &mut session, &plan.config).await;
        room_ready.store(true, Ordering::Relaxed);
        created.notify_waiters();
        seen = made?;
    } else {
        // Everyone else waits for the room; in muc_join, for their turn too.
        while !room_ready.load(Ordering::Relaxed) {
            tokio::select! {
                _ = created.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        if !plan.fanout {
            super::hold(&mut session, &mut rx, Phase::Measure, |_| {}).await?;
            tokio::time::sleep(plan.join_after).await;
        }
        seen = join(run, &mut session, i, counters, &plan).await?;
    }
    if !plan.fanout {
        counters.presence_seen(run, seen);
        super::hold(&mut session, &mut rx, Phase::Stop, |s| {
            if is_room_presence(run, &s) {
                seen += 1;
                counters.presence_seen(run, seen);
            }
        })
        .await?;
        session.close(Duration::from_secs(2)).await;
        return Ok(());
    }
    super::hold(&mut session, &mut rx, Phase::Measure, |s| {
        record(run, s, counters)
    })
    .await?;
    let room = room(run);
    let prefix = format!("<message to='{room}' type='groupchat' id='");
    let middle = b"'><body>";
    let suffix = b"</body></message>";
    let mut buf = Vec::with_capacity(prefix.len() + 40 + suffix.len());
    let offset = plan.period.mul_f64((i as f64 * 0.618_034).fract());
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, plan.period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut sending = plan.sends;
    loop {
        tokio::select! {
            _ = reached(&mut rx, Phase::Stop) => break,
            _ = ticks.tick(), if sending => {
                if *rx.borrow() >= Phase::Drain {
                    sending = false;
                    continue;
                }
                let seq = counters.sent.fetch_add(1, Ordering::Relaxed);
                let now = run.now_micros();
                if let Some(m) = counters.messages.get(seq as usize) {
                    m.at_us.store(now, Ordering::Relaxed);
                }
                buf.clear();
                buf.extend_from_slice(prefix.as_bytes());
                push_u64(&mut buf, seq);
                buf.extend_from_slice(middle);
                push_u64(&mut buf, now);
                buf.extend_from_slice(suffix);
                send(&mut session.io, &buf, "send").await?;
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

/// The creator's configuration: an empty submit makes an instant room (XEP-0045
/// §10.1.2); with roles, only theirs is broadcast (§10.2, `presencebroadcast`).
fn config_form(run: &Run, broadcast: &[String]) -> String {
    let mut fields = String::new();
    if !broadcast.is_empty() {
        fields.push_str(
            "<field var='FORM_TYPE' type='hidden'>\
             <value>http://jabber.org/protocol/muc#roomconfig</value></field>\
             <field var='muc#roomconfig_presencebroadcast'>",
        );
        for role in broadcast {
            fields.push_str(&format!("<value>{role}</value>"));
        }
        fields.push_str("</field>");
    }
    format!(
        "<iq type='set' id='cfg1' to='{}'><query xmlns='http://jabber.org/protocol/muc#owner'>\
         <x xmlns='jabber:x:data' type='submit'>{fields}</x></query></iq>",
        room(run)
    )
}

/// Joins as the first occupant and configures the room; returns the presences seen (1).
async fn create_room(run: &Run, session: &mut Session, config: &str) -> Result<u64, Failure> {
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
                Ok(1)
            } else {
                Err(Failure::new("create", String::from_utf8_lossy(s.raw())))
            };
        }
    }
}

/// Joins the room and waits for the self-presence (its latency counts in muc_join);
/// returns the presences of the occupant list seen, its own included.
async fn join(
    run: &Run,
    session: &mut Session,
    i: usize,
    counters: &Counters,
    plan: &Plan,
) -> Result<u64, Failure> {
    let started = run.now_micros();
    send(&mut session.io, &join_presence(run, i), "join").await?;
    // Every occupant's presence comes first: a big room takes a while to send.
    let deadline = tokio::time::Instant::now() + plan.wait;
    let mut seen = 0;
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
        if is_room_presence(run, &s) {
            seen += 1;
        }
        if is_self_presence(&s) {
            let now = run.now_micros();
            if !plan.fanout {
                counters.join_latency.record(now.saturating_sub(started));
            }
            counters.last_join_us.fetch_max(now, Ordering::Relaxed);
            counters.joined.fetch_add(1, Ordering::Relaxed);
            return Ok(seen);
        }
    }
}

/// Counts a groupchat delivery and its latency (or a bounce), and its message's copies.
fn record(run: &Run, s: Stanza<'_>, counters: &Counters) {
    if s.name() != b"message" {
        return;
    }
    if s.attr(b"type") == Some(b"error") {
        counters.errors.fetch_add(1, Ordering::Relaxed);
    } else if let Some(sent_at) = s.child_text(b"body").and_then(parse_u64) {
        let now = run.now_micros();
        counters.latency.record(now.saturating_sub(sent_at));
        counters.delivered.fetch_add(1, Ordering::Relaxed);
        let seq = s.attr(b"id").and_then(parse_u64);
        if let Some(m) = seq.and_then(|seq| counters.messages.get(seq as usize)) {
            m.last_us.fetch_max(now, Ordering::Relaxed);
            m.copies.fetch_add(1, Ordering::Relaxed);
        }
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
