//! `muc_rooms`: what persistent rooms cost while nobody is in them (XEP-0045 §10.1.3).
//!
//! A few sessions log in (unmeasured); once the server is quiet they create `rooms`
//! persistent rooms between them, each by joining it, submitting a configuration form with
//! `muc#roomconfig_persistentroom` and leaving it. Reports server CPU per room created and,
//! once the server is quiet again, RSS per idle persistent room (what the rooms left behind
//! divided by their number: a server that keeps no empty room in memory is near 0). Then a
//! session that was never in any room enters one: the latency of the first use of a stored
//! room, which a server that loads rooms lazily pays here rather than at startup.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{watch, OwnedSemaphorePermit};

use super::{finish, ramp, server_quiet, Phase, PhaseRx, Progress, Run, Window, INITIAL_PRESENCE};
use crate::conn::{self, send, Failure, Session};
use crate::procstat;
use crate::reader::Event;
use crate::xml::Stanza;

pub struct Params {
    pub rooms: usize,
    /// Sessions creating the rooms (one more account enters a room afterwards).
    pub creators: usize,
}

#[derive(Default)]
struct Counters {
    created: AtomicU64,
    done: AtomicU64,
}

fn room(run: &Run, k: usize) -> String {
    format!("idle{k}@conference.{}", run.target.domain)
}

pub async fn run(run: Arc<Run>, params: Params) -> (Value, &'static str) {
    let creators = params.creators.clamp(1, params.rooms.max(1));
    let timeout = run.target.timeout;
    let (phase, phase_rx) = watch::channel(Phase::Setup);
    let progress = Arc::new(Progress::default());
    let counters = Arc::new(Counters::default());
    let rooms = params.rooms;
    let tasks = ramp(&run, creators, |i, permit| {
        let run = run.clone();
        let progress = progress.clone();
        let counters = counters.clone();
        let mut rx = phase_rx.clone();
        async move {
            let rooms = (i..rooms).step_by(creators);
            let made = creator(&run, i, permit, &progress, &counters, &mut rx, rooms).await;
            counters.done.fetch_add(1, Ordering::Relaxed);
            match made {
                Ok(mut session) => {
                    if let Err(e) = super::hold(&mut session, &mut rx, Phase::Stop, |_| {}).await {
                        run.errors.record(&e);
                    }
                    session.close(Duration::from_secs(2)).await;
                }
                Err(e) => run.errors.record(&e),
            }
        }
    })
    .await;
    progress.settled(creators, timeout * 2).await;
    server_quiet(run.server_pid, timeout).await;

    let window = Window::start(run.server_pid);
    let _ = phase.send(Phase::Measure);
    // Each room takes a few round trips; a slow server gets the timeout per room it makes.
    let deadline = tokio::time::Instant::now() + timeout * (rooms / creators + 1) as u32;
    while counters.done.load(Ordering::Relaxed) < creators as u64
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let measured = window.finish();
    let created = counters.created.load(Ordering::Relaxed);
    run.errors.add(
        "room-missing",
        (rooms as u64).saturating_sub(created),
        "a room not created (and left) before the deadline",
    );
    server_quiet(run.server_pid, timeout).await;
    let idle = run.server_pid.and_then(procstat::memory);

    let mut metrics = json!({
        "rooms_created": created,
        "server_cpu_ms_per_room": measured.cpu_per(created, 1e3),
        "window": measured.to_json(),
        "params": { "rooms": rooms, "creators": creators },
    });
    if let (Some(idle), Some(before)) = (idle, measured.server_before) {
        metrics["server_rss_idle_kib"] = json!(idle.rss_kib);
        if created > 0 {
            let grown = idle.rss_kib as f64 - before.rss_kib as f64;
            metrics["server_rss_kib_per_idle_room"] = json!(grown / created as f64);
        }
    }
    if created > 0 {
        match first_use(&run, creators).await {
            Ok(ms) => metrics["first_join_ms"] = json!(ms),
            Err(e) => run.errors.record(&e),
        }
    }
    let _ = phase.send(Phase::Stop);
    finish(&phase, tasks, timeout).await;
    let status = if created == 0 { "failed" } else { "ok" };
    (metrics, status)
}

/// Logs in, waits for the Measure phase and makes its rooms; the session stays online.
async fn creator(
    run: &Run,
    i: usize,
    permit: OwnedSemaphorePermit,
    progress: &Progress,
    counters: &Counters,
    rx: &mut PhaseRx,
    rooms: impl Iterator<Item = usize>,
) -> Result<Session, Failure> {
    let target = &run.target;
    let login = async {
        let mut s = conn::login(target, i).await?;
        s.go_online(target, INITIAL_PRESENCE, |_| {}).await?;
        Ok::<Session, Failure>(s)
    };
    let mut session = match login.await {
        Ok(s) => {
            progress.online.fetch_add(1, Ordering::Relaxed);
            s
        }
        Err(e) => {
            progress.failed.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
    };
    drop(permit);
    super::hold(&mut session, rx, Phase::Measure, |_| {}).await?;
    for k in rooms {
        make_persistent_room(run, &mut session, &room(run, k), i).await?;
        counters.created.fetch_add(1, Ordering::Relaxed);
    }
    Ok(session)
}

/// Enters `room` (creating it), makes it persistent (XEP-0045 §10.1.3) and leaves it.
async fn make_persistent_room(
    run: &Run,
    session: &mut Session,
    room: &str,
    i: usize,
) -> Result<(), Failure> {
    let occupant = format!("{room}/c{i}");
    let enter = format!(
        "<presence to='{occupant}'><x xmlns='http://jabber.org/protocol/muc'>\
         <history maxstanzas='0'/></x></presence>"
    );
    send(&mut session.io, enter.as_bytes(), "create").await?;
    wait_for(run, session, "create", |s| {
        s.name() == b"presence" && s.attr(b"from") == Some(occupant.as_bytes())
    })
    .await?;
    let config = format!(
        "<iq type='set' id='p1' to='{room}'><query xmlns='http://jabber.org/protocol/muc#owner'>\
         <x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/muc#roomconfig</value></field>\
         <field var='muc#roomconfig_persistentroom'><value>1</value></field>\
         </x></query></iq>"
    );
    send(&mut session.io, config.as_bytes(), "configure").await?;
    wait_for(run, session, "configure", |s| {
        s.name() == b"iq" && s.attr(b"id") == Some(b"p1")
    })
    .await?;
    let leave = format!("<presence to='{occupant}' type='unavailable'/>");
    send(&mut session.io, leave.as_bytes(), "leave").await?;
    wait_for(run, session, "leave", |s| {
        s.name() == b"presence"
            && s.attr(b"type") == Some(b"unavailable")
            && s.attr(b"from") == Some(occupant.as_bytes())
    })
    .await
}

/// Reads until `wanted` matches; an error stanza (or an iq error) fails the step.
async fn wait_for(
    run: &Run,
    session: &mut Session,
    step: &'static str,
    mut wanted: impl FnMut(&Stanza<'_>) -> bool,
) -> Result<(), Failure> {
    let deadline = tokio::time::Instant::now() + run.target.timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let s = match conn::next_event(&mut session.reader, &mut session.io, left, step).await? {
            Event::Stanza(s) => s,
            _ => return Err(Failure::new(step, "stream ended")),
        };
        if s.attr(b"type") == Some(b"error") {
            return Err(Failure::new(step, String::from_utf8_lossy(s.raw())));
        }
        if wanted(&s) {
            return Ok(());
        }
    }
}

/// A session that was in no room enters the first one: the milliseconds from its
/// presence to its self-presence. The room must still be there: no 201 (§10.1.1).
async fn first_use(run: &Run, account: usize) -> Result<f64, Failure> {
    let target = &run.target;
    let mut session = conn::login(target, account).await?;
    session.go_online(target, INITIAL_PRESENCE, |_| {}).await?;
    let occupant = format!("{}/visitor", room(run, 0));
    let started = run.now_micros();
    let enter = format!(
        "<presence to='{occupant}'><x xmlns='http://jabber.org/protocol/muc'>\
         <history maxstanzas='0'/></x></presence>"
    );
    send(&mut session.io, enter.as_bytes(), "first-use").await?;
    let mut created_anew = false;
    wait_for(run, &mut session, "first-use", |s| {
        let own = s.name() == b"presence" && s.attr(b"from") == Some(occupant.as_bytes());
        created_anew |=
            own && (contains(s.raw(), b"code='201'") || contains(s.raw(), b"code=\"201\""));
        own
    })
    .await?;
    let ms = run.now_micros().saturating_sub(started) as f64 / 1e3;
    session.close(Duration::from_secs(2)).await;
    if created_anew {
        return Err(Failure::new(
            "first-use",
            "the persistent room was gone: entering created it anew (201)",
        ));
    }
    Ok(ms)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
