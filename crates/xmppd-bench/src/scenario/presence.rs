//! `presence`: accounts in cliques of R+1 with mutual subscriptions log in and change
//! presence; the server broadcasts each change to the R contacts.
//!
//! Pass 1 (not measured) makes the rosters through the protocol itself — every account asks
//! every clique member for a subscription and approves the requests it gets — so no server
//! needs a roster import tool. Pass 2 logs everyone in again (measured as logins with a
//! roster) and has each session change its status at a target total rate; each status
//! carries its send time. Reports broadcasts received/s, broadcast latency and server CPU
//! per broadcast; a server that broadcasts nothing is reported as "not supported".

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::MissedTickBehavior;

use super::{
    finish, hold, iq_reply, parse_u64, push_u64, ramp, reached, server_quiet, Phase, PhaseRx,
    Progress, Run, Window, INITIAL_PRESENCE,
};
use crate::conn::{self, send, Failure, Session};
use crate::reader::Event;
use crate::xml::{attr_in, Stanza};

pub struct Params {
    pub accounts: usize,
    /// Contacts per account (the clique size less one).
    pub contacts: usize,
    /// Presence changes per second, all sessions together.
    pub rate: f64,
    pub duration: Duration,
    pub drain: Duration,
    /// Longest wait for the subscriptions of pass 1.
    pub setup_timeout: Duration,
}

/// Sessions that logged in but saw no broadcast mean a server without rosters or presence
/// broadcast: that is a result ("not supported"), not a failure of the run.
fn status(broadcasts: u64, online: u64) -> &'static str {
    match (broadcasts, online) {
        (0, 0) => "failed",
        (0, _) => "not supported",
        _ => "ok",
    }
}

/// The other members of account `i`'s clique.
pub(super) fn clique(i: usize, n: usize, contacts: usize) -> std::ops::Range<usize> {
    let size = contacts + 1;
    let first = i / size * size;
    first..(first + size).min(n)
}

/// Whether `from` is `bare` itself or one of its full JIDs.
pub(super) fn is_own(from: &[u8], bare: &[u8]) -> bool {
    from.starts_with(bare) && (from.len() == bare.len() || from[bare.len()] == b'/')
}

fn bare(jid: &[u8]) -> &[u8] {
    match jid.iter().position(|&b| b == b'/') {
        Some(slash) => &jid[..slash],
        None => jid,
    }
}

#[derive(Default)]
pub(super) struct Setup {
    /// Sessions whose clique is fully subscribed both ways.
    pub complete: AtomicUsize,
    /// Sessions whose roster request failed (a server without rosters).
    pub no_roster: AtomicUsize,
    /// Contacts with subscription 'both', summed over sessions.
    pub contacts: AtomicU64,
    /// Stanzas received while subscribing, to tell a slow server from a stalled one.
    stanzas: AtomicU64,
}

/// Roster setup stops once no stanza has arrived for this long. A subscription storm of
/// 500 × 50 on a server that commits each roster change to disk can go 10 s without a
/// stanza out right after the requests land (seen with xmppd on this VM's disk).
const SETUP_STALL: Duration = Duration::from_secs(30);

pub async fn run(run: Arc<Run>, params: Params) -> (Value, &'static str) {
    let setup = make_rosters(&run, &params).await;
    // A server may still be saving rosters (Prosody takes longer than the setup timeout
    // for 500 accounts): the measured logins must not pay for that.
    server_quiet(run.server_pid, params.setup_timeout).await;

    let (mut metrics, broadcasts) = measure(&run, &params).await;
    let contacts_avg = metrics["roster_contacts_avg"].as_f64().unwrap_or(0.0);
    metrics["setup"] = json!({
        "complete_sessions": setup.complete.load(Ordering::Relaxed),
        "no_roster_sessions": setup.no_roster.load(Ordering::Relaxed),
        "mutual_contacts_seen": setup.contacts.load(Ordering::Relaxed),
    });
    let status = status(broadcasts, metrics["sessions_online"].as_u64().unwrap_or(0));
    if status == "not supported" {
        metrics["note"] = json!(format!(
            "no presence broadcasts arrived (mutual contacts per account: {contacts_avg:.1} of {})",
            params.contacts
        ));
    }
    (metrics, status)
}

/// Pass 1: everyone online, then subscriptions within each clique until all are mutual or
/// the setup timeout.
pub(super) async fn make_rosters(run: &Arc<Run>, params: &Params) -> Arc<Setup> {
    let n = params.accounts;
    let (phase, phase_rx) = watch::channel(Phase::Setup);
    let progress = Arc::new(Progress::default());
    let setup = Arc::new(Setup::default());
    let tasks = ramp(run, n, |i, permit| {
        let run = run.clone();
        let progress = progress.clone();
        let setup = setup.clone();
        let rx = phase_rx.clone();
        let contacts = params.contacts;
        async move {
            if let Err(e) =
                subscribe_task(&run, i, n, contacts, permit, &progress, &setup, rx).await
            {
                let e = Failure::new("roster-setup", format!("{}: {}", e.stage, e.detail));
                run.errors.record(&e);
            }
        }
    })
    .await;
    progress.settled(n, run.target.timeout * 2).await;
    let online = progress.online();
    let _ = phase.send(Phase::Measure);
    // A slow server (Prosody under load) may need minutes; a server that dropped some
    // handshakes never completes. So: wait while stanzas keep coming, up to the timeout.
    let deadline = Instant::now() + params.setup_timeout;
    let (mut seen, mut last_progress) = (0, Instant::now());
    while setup.complete.load(Ordering::Relaxed) + setup.no_roster.load(Ordering::Relaxed) < online
        && Instant::now() < deadline
        && last_progress.elapsed() < SETUP_STALL
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now_seen = setup.stanzas.load(Ordering::Relaxed);
        if now_seen != seen {
            (seen, last_progress) = (now_seen, Instant::now());
        }
    }
    // Let the last approvals reach everyone before the sessions close.
    tokio::time::sleep(Duration::from_millis(500)).await;
    finish(&phase, tasks, run.target.timeout).await;
    setup
}

#[allow(clippy::too_many_arguments)]
async fn subscribe_task(
    run: &Run,
    i: usize,
    n: usize,
    contacts: usize,
    permit: OwnedSemaphorePermit,
    progress: &Progress,
    setup: &Setup,
    mut rx: PhaseRx,
) -> Result<(), Failure> {
    let target = &run.target;
    let mut session = online(run, i, permit, progress, INITIAL_PRESENCE, |_| {}).await?;
    let mut pending: HashSet<Vec<u8>> = clique(i, n, contacts)
        .filter(|&j| j != i)
        .map(|j| target.bare_jid(j).into_bytes())
        .collect();
    let wanted = pending.len();
    // Requests from faster clique members may come before this session's own start, so
    // approving runs from the beginning; asking starts with the Measure phase.
    let mut asked = false;
    let mut complete = false;
    let mut start_rx = rx.clone();
    loop {
        let event = tokio::select! {
            _ = reached(&mut rx, Phase::Stop) => break,
            _ = reached(&mut start_rx, Phase::Measure), if !asked => {
                asked = true;
                let get = b"<iq type='get' id='roster1'><query xmlns='jabber:iq:roster'/></iq>";
                send(&mut session.io, get, "roster").await?;
                continue;
            }
            event = session.reader.next(&mut session.io) => event,
        };
        let s = match event.map_err(|e| Failure::new("roster", e))? {
            Event::Stanza(s) => s,
            _ => return Err(Failure::new("roster", "stream ended")),
        };
        setup.stanzas.fetch_add(1, Ordering::Relaxed);
        let mut out = Vec::new();
        if s.name() == b"iq" && s.attr(b"id") == Some(b"roster1") {
            if s.attr(b"type") != Some(b"result") {
                setup.no_roster.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            remove_mutual(s, &mut pending);
            for jid in &pending {
                out.extend_from_slice(b"<presence type='subscribe' to='");
                out.extend_from_slice(jid);
                out.extend_from_slice(b"'/>");
            }
        } else if s.name() == b"iq" {
            remove_mutual(s, &mut pending);
            out.extend(iq_reply(s).unwrap_or_default());
        } else if s.name() == b"presence" && s.attr(b"type") == Some(b"subscribe") {
            if let Some(from) = s.attr(b"from") {
                out.extend_from_slice(b"<presence type='subscribed' to='");
                out.extend_from_slice(bare(from));
                out.extend_from_slice(b"'/>");
            }
        }
        if !out.is_empty() {
            send(&mut session.io, &out, "roster").await?;
        }
        if asked && !complete && pending.is_empty() {
            complete = true;
            setup.complete.fetch_add(1, Ordering::Relaxed);
        }
    }
    setup
        .contacts
        .fetch_add((wanted - pending.len()) as u64, Ordering::Relaxed);
    session.close(Duration::from_secs(2)).await;
    Ok(())
}

/// Drops from `pending` every roster item (of a result or a push) that is now mutual.
fn remove_mutual(s: Stanza<'_>, pending: &mut HashSet<Vec<u8>>) {
    s.for_each_child(b"item", |item| {
        if attr_in(item, b"subscription") == Some(b"both") {
            if let Some(jid) = attr_in(item, b"jid") {
                pending.remove(jid);
            }
        }
    });
}

/// Logs in and sends `presence`; stanzas arriving meanwhile go to `on_stanza`.
async fn online(
    run: &Run,
    i: usize,
    permit: OwnedSemaphorePermit,
    progress: &Progress,
    presence: &[u8],
    on_stanza: impl FnMut(Stanza<'_>),
) -> Result<Session, Failure> {
    let result = async {
        let mut session = conn::login(&run.target, i).await?;
        session.go_online(&run.target, presence, on_stanza).await?;
        Ok(session)
    }
    .await;
    match &result {
        Ok(_) => progress.online.fetch_add(1, Ordering::Relaxed),
        Err(_) => progress.failed.fetch_add(1, Ordering::Relaxed),
    };
    drop(permit);
    result
}

#[derive(Default)]
struct Counters {
    /// Mutual contacts in the rosters fetched at login, summed.
    contacts: AtomicU64,
    /// Presences from contacts during the login pass (initial broadcasts and probes).
    login_presences: AtomicU64,
    changes_sent: AtomicU64,
    broadcasts: AtomicU64,
    latency: crate::histogram::Histogram,
}

/// What a client does at login: fetch the roster, then send initial presence.
const ROSTER_AND_PRESENCE: &[u8] =
    b"<iq type='get' id='roster2'><query xmlns='jabber:iq:roster'/></iq><presence/>";

/// Pass 2: measured logins with rosters, then presence changes at the target rate.
async fn measure(run: &Arc<Run>, params: &Params) -> (Value, u64) {
    let n = params.accounts;
    let (phase, phase_rx) = watch::channel(Phase::Setup);
    let progress = Arc::new(Progress::default());
    let counters = Arc::new(Counters::default());
    let period = Duration::from_secs_f64(n as f64 / params.rate);
    let login = Window::start(run.server_pid);
    let tasks = ramp(run, n, |i, permit| {
        let run = run.clone();
        let progress = progress.clone();
        let counters = counters.clone();
        let rx = phase_rx.clone();
        async move {
            if let Err(e) = change_task(&run, i, permit, &progress, &counters, rx, period).await {
                run.errors.record(&e);
            }
        }
    })
    .await;
    progress.settled(n, run.target.timeout * 2).await;
    let login = login.finish();
    let online = progress.online() as u64;
    let contacts_avg = counters.contacts.load(Ordering::Relaxed) as f64 / online.max(1) as f64;
    // Let the initial broadcasts of the last logins land before measuring.
    server_quiet(run.server_pid, run.target.timeout).await;

    let before = counters.broadcasts.load(Ordering::Relaxed);
    let window = Window::start(run.server_pid);
    let _ = phase.send(Phase::Measure);
    tokio::time::sleep(params.duration).await;
    let measured = window.finish();
    let broadcasts = counters.broadcasts.load(Ordering::Relaxed) - before;
    let _ = phase.send(Phase::Drain);
    // Drain until broadcasts stop arriving for a moment, bounded by the drain time.
    let drain_until = Instant::now() + params.drain;
    let mut last = counters.broadcasts.load(Ordering::Relaxed);
    while Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = counters.broadcasts.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    finish(&phase, tasks, run.target.timeout).await;

    let sent = counters.changes_sent.load(Ordering::Relaxed);
    let metrics = json!({
        "sessions_online": online,
        "roster_contacts_avg": contacts_avg,
        "logins_per_s": login.rate(online),
        "server_cpu_ms_per_login": login.cpu_per(online, 1e3),
        "login_presences_received": counters.login_presences.load(Ordering::Relaxed),
        "changes_sent": sent,
        "broadcasts_received": counters.broadcasts.load(Ordering::Relaxed),
        "broadcasts_expected": (sent as f64 * contacts_avg).round(),
        "broadcasts_in_window": broadcasts,
        "broadcasts_per_s": measured.rate(broadcasts),
        "server_cpu_us_per_broadcast": measured.cpu_per(broadcasts, 1e6),
        "latency": counters.latency.summary_ms(),
        "login_window": login.to_json(),
        "window": measured.to_json(),
        "params": {
            "accounts": n,
            "contacts": params.contacts,
            "rate": params.rate,
            "duration_s": params.duration.as_secs_f64(),
        },
    });
    (metrics, broadcasts)
}

async fn change_task(
    run: &Run,
    i: usize,
    permit: OwnedSemaphorePermit,
    progress: &Progress,
    counters: &Counters,
    mut rx: PhaseRx,
    period: Duration,
) -> Result<(), Failure> {
    let own = run.target.bare_jid(i).into_bytes();
    let from_contact = |s: &Stanza<'_>| {
        s.name() == b"presence"
            && s.attr(b"type").is_none()
            && s.attr(b"from").is_some_and(|f| !is_own(f, &own))
    };
    // Counts a broadcast (a status carrying a send time) or else a login presence.
    let count_broadcast = |s: &Stanza<'_>| {
        let Some(sent_at) = s.child_text(b"status").and_then(parse_u64) else {
            return false;
        };
        counters
            .latency
            .record(run.now_micros().saturating_sub(sent_at));
        counters.broadcasts.fetch_add(1, Ordering::Relaxed);
        true
    };
    // Before this session sees the Measure phase, faster contacts may already broadcast.
    let count_login = |s: Stanza<'_>| {
        if from_contact(&s) {
            if !count_broadcast(&s) {
                counters.login_presences.fetch_add(1, Ordering::Relaxed);
            }
        } else if s.name() == b"iq" && s.attr(b"id") == Some(b"roster2") {
            let mut mutual = 0;
            s.for_each_child(b"item", |item| {
                mutual += u64::from(attr_in(item, b"subscription") == Some(b"both"));
            });
            counters.contacts.fetch_add(mutual, Ordering::Relaxed);
        }
    };
    let mut session = online(run, i, permit, progress, ROSTER_AND_PRESENCE, count_login).await?;
    hold(&mut session, &mut rx, Phase::Measure, count_login).await?;

    let mut buf = Vec::with_capacity(64);
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
                buf.extend_from_slice(b"<presence><status>");
                push_u64(&mut buf, run.now_micros());
                buf.extend_from_slice(b"</status></presence>");
                send(&mut session.io, &buf, "send").await?;
                counters.changes_sent.fetch_add(1, Ordering::Relaxed);
            }
            event = session.reader.next(&mut session.io) => {
                let s = match event.map_err(|e| Failure::new("receive", e))? {
                    Event::Stanza(s) => s,
                    _ => return Err(Failure::new("receive", "stream ended")),
                };
                if let Some(reply) = iq_reply(s) {
                    send(&mut session.io, &reply, "receive").await?;
                } else if from_contact(&s) {
                    count_broadcast(&s);
                }
            }
        }
    }
    session.close(Duration::from_secs(2)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cliques_partition_accounts() {
        assert_eq!(clique(0, 10, 3), 0..4);
        assert_eq!(clique(5, 10, 3), 4..8);
        // The last clique is cut short by the account count.
        assert_eq!(clique(9, 10, 3), 8..10);
    }

    #[test]
    fn no_broadcast_is_not_a_failure() {
        assert_eq!(status(10, 5), "ok");
        assert_eq!(status(0, 5), "not supported");
        assert_eq!(status(0, 0), "failed");
    }

    #[test]
    fn own_jid_detection() {
        assert!(is_own(b"bench1@localhost/r", b"bench1@localhost"));
        assert!(is_own(b"bench1@localhost", b"bench1@localhost"));
        assert!(!is_own(b"bench10@localhost/r", b"bench1@localhost"));
        assert_eq!(bare(b"a@b/c"), b"a@b");
    }
}
