//! `pep`: accounts in cliques of R+1 with mutual subscriptions (made as in `presence`) log in
//! advertising XEP-0115 caps that include `http://jabber.org/protocol/nick+notify`, answer
//! the server's disco#info query for that caps node, publish one XEP-0172 nickname each
//! before the window (it creates the node), and then publish nicknames to their PEP service
//! (XEP-0163) at a target total rate. The server notifies each publish to
//! the R contacts (and the publisher's own session). Each nick carries the run's id and its
//! send time. Reports notifications received/s, their latency, server CPU per notification
//! and server RSS per account online.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};
use sha1::{Digest, Sha1};
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::MissedTickBehavior;

use super::presence::{self, is_own};
use super::{
    finish, parse_u64, push_u64, ramp, server_quiet, Phase, PhaseRx, Progress, Run, Window,
};
use crate::conn::{self, send, Failure};
use crate::histogram::Histogram;
use crate::procstat;
use crate::reader::Event;
use crate::xml::Stanza;

pub struct Params {
    pub accounts: usize,
    pub contacts: usize,
    /// Nickname publishes per second, all sessions together.
    pub rate: f64,
    pub duration: Duration,
    pub drain: Duration,
    pub setup_timeout: Duration,
}

pub const NICK: &str = "http://jabber.org/protocol/nick";
const CAPS_NODE: &str = "https://github.com/xmppd/xmppd-bench";
/// Our one identity (category/type/lang/name) and our features, for disco#info and caps.
const IDENTITY: (&str, &str, &str, &str) = ("client", "pc", "", "xmppd-bench");
const FEATURES: [&str; 4] = [
    "http://jabber.org/protocol/caps",
    "http://jabber.org/protocol/disco#info",
    NICK,
    "http://jabber.org/protocol/nick+notify",
];

/// The XEP-0115 §5.1 verification string hashed with SHA-1, base64: identities
/// `category/type/lang/name<` sorted, then features `var<` sorted (no forms here).
pub fn caps_ver(identities: &[(&str, &str, &str, &str)], features: &[&str]) -> String {
    let mut ids: Vec<String> = identities
        .iter()
        .map(|(c, t, l, n)| format!("{c}/{t}/{l}/{n}<"))
        .collect();
    ids.sort();
    let mut vars: Vec<&str> = features.to_vec();
    vars.sort();
    let mut s = ids.concat();
    for v in vars {
        s.push_str(v);
        s.push('<');
    }
    B64.encode(Sha1::digest(s.as_bytes()))
}

/// The disco#info answer for our caps node (or any disco#info query to us).
fn disco_reply(query: Stanza<'_>) -> Vec<u8> {
    let mut r = b"<iq type='result' id='".to_vec();
    r.extend_from_slice(query.attr(b"id").unwrap_or_default());
    r.push(b'\'');
    if let Some(from) = query.attr(b"from") {
        r.extend_from_slice(b" to='");
        r.extend_from_slice(from);
        r.push(b'\'');
    }
    r.extend_from_slice(b"><query xmlns='http://jabber.org/protocol/disco#info'");
    let mut node = None;
    query.for_each_child(b"query", |tag| node = crate::xml::attr_in(tag, b"node"));
    if let Some(node) = node {
        r.extend_from_slice(b" node='");
        r.extend_from_slice(node);
        r.push(b'\'');
    }
    let (c, t, _, n) = IDENTITY;
    r.extend_from_slice(format!("><identity category='{c}' type='{t}' name='{n}'/>").as_bytes());
    for f in FEATURES {
        r.extend_from_slice(format!("<feature var='{f}'/>").as_bytes());
    }
    r.extend_from_slice(b"</query></iq>");
    r
}

fn is_disco_info(s: &Stanza<'_>) -> bool {
    s.name() == b"iq"
        && s.attr(b"type") == Some(b"get")
        && s.raw().windows(37).any(|w| {
            w == b"'http://jabber.org/protocol/disco#inf"
                || w == b"\"http://jabber.org/protocol/disco#inf"
        })
}

#[derive(Default)]
struct Counters {
    contacts: AtomicU64,
    disco_queries: AtomicU64,
    publishes: AtomicU64,
    publish_errors: AtomicU64,
    /// Warm-up publishes answered (each account's first, which creates its node), and
    /// those answered with an error.
    warmed: AtomicU64,
    warm_errors: AtomicU64,
    /// Notifications of a contact's publish, and of one's own.
    notifications: AtomicU64,
    own_notifications: AtomicU64,
    /// Notifications at login (last items of contacts), and stale ones from another run.
    other_notifications: AtomicU64,
    latency: Histogram,
}

pub async fn run(run: Arc<Run>, params: Params) -> (Value, &'static str) {
    let baseline = run.server_pid.and_then(procstat::memory);
    let roster_params = presence::Params {
        accounts: params.accounts,
        contacts: params.contacts,
        rate: 1.0,
        duration: params.duration,
        drain: params.drain,
        setup_timeout: params.setup_timeout,
    };
    let setup = presence::make_rosters(&run, &roster_params).await;
    server_quiet(run.server_pid, params.setup_timeout).await;

    let n = params.accounts;
    let (phase, phase_rx) = watch::channel(Phase::Setup);
    let progress = Arc::new(Progress::default());
    let counters = Arc::new(Counters::default());
    let period = Duration::from_secs_f64(n as f64 / params.rate);
    // Told apart from nicknames a server kept from an earlier run.
    let run_id = format!("r{}-", rand::random::<u32>());
    let ver = caps_ver(&[IDENTITY], &FEATURES);
    let login = Window::start(run.server_pid);
    let tasks = ramp(&run, n, |i, permit| {
        let run = run.clone();
        let progress = progress.clone();
        let counters = counters.clone();
        let rx = phase_rx.clone();
        let run_id = run_id.clone();
        let ver = ver.clone();
        async move {
            let result = pep_task(
                &run, i, permit, &progress, &counters, rx, period, &run_id, &ver,
            )
            .await;
            if let Err(e) = result {
                run.errors.record(&e);
            }
        }
    })
    .await;
    progress.settled(n, run.target.timeout * 2).await;
    let login = login.finish();
    let online = progress.online() as u64;
    // Caps queries, last-item notifications: let the server finish before measuring.
    server_quiet(run.server_pid, run.target.timeout).await;
    // One publish per account before the window: it creates the account's node, a cost
    // paid once per account, so the window measures what the scenario is about, updates
    // of an existing nickname (without it, every publish in the window was a first one).
    let _ = phase.send(Phase::Warm);
    let deadline = Instant::now() + period + run.target.timeout;
    while counters.warmed.load(Ordering::Relaxed) < online && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server_quiet(run.server_pid, run.target.timeout).await;
    let with_sessions = run.server_pid.and_then(procstat::memory);

    let before = counters.notifications.load(Ordering::Relaxed);
    let before_own = counters.own_notifications.load(Ordering::Relaxed);
    let window = Window::start(run.server_pid);
    let _ = phase.send(Phase::Measure);
    tokio::time::sleep(params.duration).await;
    let measured = window.finish();
    let notified = counters.notifications.load(Ordering::Relaxed) - before;
    let notified_own = counters.own_notifications.load(Ordering::Relaxed) - before_own;
    let _ = phase.send(Phase::Drain);
    let drain_until = Instant::now() + params.drain;
    let mut last = counters.notifications.load(Ordering::Relaxed);
    while Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = counters.notifications.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    finish(&phase, tasks, run.target.timeout).await;

    let publishes = counters.publishes.load(Ordering::Relaxed);
    let contacts_avg = counters.contacts.load(Ordering::Relaxed) as f64 / online.max(1) as f64;
    run.errors.add(
        "publish-error",
        counters.publish_errors.load(Ordering::Relaxed),
        "publish answered with type='error'",
    );
    run.errors.add(
        "warm-up-error",
        counters.warm_errors.load(Ordering::Relaxed),
        "warm-up publish (the node's creation) answered with type='error'",
    );
    let per_account = match (baseline, with_sessions) {
        (Some(b), Some(w)) if online > 0 => {
            Some((w.rss_kib as f64 - b.rss_kib as f64) / online as f64)
        }
        _ => None,
    };
    let all = notified + notified_own;
    let status = match (notified, online) {
        (_, 0) => "failed",
        (0, _) => "not supported",
        _ => "ok",
    };
    let mut metrics = json!({
        "sessions_online": online,
        "roster_contacts_avg": contacts_avg,
        "caps_ver": ver,
        "disco_queries_answered": counters.disco_queries.load(Ordering::Relaxed),
        "warm_up_publishes_answered": counters.warmed.load(Ordering::Relaxed),
        "warm_up_errors": counters.warm_errors.load(Ordering::Relaxed),
        "publishes_sent": publishes,
        "notifications_expected": (publishes as f64 * contacts_avg).round(),
        "notifications_received": counters.notifications.load(Ordering::Relaxed),
        "own_notifications_received": counters.own_notifications.load(Ordering::Relaxed),
        "other_notifications_received": counters.other_notifications.load(Ordering::Relaxed),
        "notifications_in_window": notified,
        "notifications_per_s": measured.rate(notified),
        "server_cpu_us_per_notification": measured.cpu_per(notified, 1e6),
        "server_cpu_us_per_delivery_incl_own": measured.cpu_per(all, 1e6),
        "latency": counters.latency.summary_ms(),
        "server_rss_baseline_kib": baseline.map(|m| m.rss_kib),
        "server_rss_online_kib": with_sessions.map(|m| m.rss_kib),
        "server_rss_kib_per_account": per_account,
        "server_cpu_ms_per_login": login.cpu_per(online, 1e3),
        "login_window": login.to_json(),
        "window": measured.to_json(),
        "setup": {
            "complete_sessions": setup.complete.load(Ordering::Relaxed),
            "no_roster_sessions": setup.no_roster.load(Ordering::Relaxed),
            "mutual_contacts_seen": setup.contacts.load(Ordering::Relaxed),
        },
        "params": {
            "accounts": n,
            "contacts": params.contacts,
            "rate": params.rate,
            "duration_s": params.duration.as_secs_f64(),
        },
    });
    if status == "not supported" {
        metrics["note"] = json!(format!(
            "no PEP notification from a contact arrived ({} publishes, {} disco#info queries \
             answered, mutual contacts per account: {contacts_avg:.1} of {})",
            publishes,
            counters.disco_queries.load(Ordering::Relaxed),
            params.contacts
        ));
    }
    (metrics, status)
}

#[allow(clippy::too_many_arguments)]
async fn pep_task(
    run: &Run,
    i: usize,
    permit: OwnedSemaphorePermit,
    progress: &Progress,
    counters: &Counters,
    mut rx: PhaseRx,
    period: Duration,
    run_id: &str,
    ver: &str,
) -> Result<(), Failure> {
    let target = &run.target;
    let own = target.bare_jid(i).into_bytes();
    let notification = |s: &Stanza<'_>| {
        if s.name() != b"message" || !s.has_child(b"event") {
            return;
        }
        let Some(text) = s.child_text(b"nick") else {
            return;
        };
        let Some(sent_at) = text.strip_prefix(run_id.as_bytes()).and_then(parse_u64) else {
            counters.other_notifications.fetch_add(1, Ordering::Relaxed);
            return;
        };
        counters
            .latency
            .record(run.now_micros().saturating_sub(sent_at));
        if s.attr(b"from").is_some_and(|f| is_own(f, &own)) {
            counters.own_notifications.fetch_add(1, Ordering::Relaxed);
        } else {
            counters.notifications.fetch_add(1, Ordering::Relaxed);
        }
    };
    let result = async {
        let mut session = conn::login(target, i).await?;
        let presence = format!(
            "<iq type='get' id='roster2'><query xmlns='jabber:iq:roster'/></iq>\
             <presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='{CAPS_NODE}' \
             ver='{ver}'/></presence>"
        );
        // Queries that arrive before the ping's answer are answered right after it.
        let mut replies = Vec::new();
        session
            .go_online(target, presence.as_bytes(), |s| {
                if is_disco_info(&s) {
                    replies.extend(disco_reply(s));
                    counters.disco_queries.fetch_add(1, Ordering::Relaxed);
                } else if s.name() == b"iq" && s.attr(b"id") == Some(b"roster2") {
                    let mut mutual = 0;
                    s.for_each_child(b"item", |item| {
                        mutual +=
                            u64::from(crate::xml::attr_in(item, b"subscription") == Some(b"both"));
                    });
                    counters.contacts.fetch_add(mutual, Ordering::Relaxed);
                } else {
                    notification(&s);
                }
            })
            .await?;
        if !replies.is_empty() {
            send(&mut session.io, &replies, "disco").await?;
        }
        Ok(session)
    }
    .await;
    let mut session = match result {
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

    let prefix = format!(
        "<iq type='set' id='pub'><pubsub xmlns='http://jabber.org/protocol/pubsub'>\
         <publish node='{NICK}'><item id='current'><nick xmlns='{NICK}'>{run_id}"
    );
    let suffix = b"</nick></item></publish></pubsub></iq>";
    let mut buf = Vec::with_capacity(prefix.len() + 20 + suffix.len());
    let offset = period.mul_f64((i as f64 * 0.618_034).fract());
    let mut ticks: Option<tokio::time::Interval> = None;
    let mut warmed = false;
    loop {
        let phase = *rx.borrow();
        if phase >= Phase::Stop {
            break;
        }
        if phase >= Phase::Warm && !warmed {
            // At the window's rate, each in its slot: 500 node creations at once are
            // another benchmark (ejabberd refused most of them).
            warmed = true;
            tokio::time::sleep(offset).await;
            let warm = prefix
                .replace("id='pub'", "id='warm'")
                .replace(run_id, "warm-up");
            send(&mut session.io, &[warm.as_bytes(), suffix].concat(), "send").await?;
        }
        if phase == Phase::Measure && ticks.is_none() {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
            t.set_missed_tick_behavior(MissedTickBehavior::Burst);
            ticks = Some(t);
        }
        if phase >= Phase::Drain {
            ticks = None;
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { break },
            _ = async { ticks.as_mut().expect("guarded").tick().await }, if ticks.is_some() => {
                buf.clear();
                buf.extend_from_slice(prefix.as_bytes());
                push_u64(&mut buf, run.now_micros());
                buf.extend_from_slice(suffix);
                send(&mut session.io, &buf, "send").await?;
                counters.publishes.fetch_add(1, Ordering::Relaxed);
            }
            event = session.reader.next(&mut session.io) => {
                let s = match event.map_err(|e| Failure::new("receive", e))? {
                    Event::Stanza(s) => s,
                    _ => return Err(Failure::new("receive", "stream ended")),
                };
                if is_disco_info(&s) {
                    counters.disco_queries.fetch_add(1, Ordering::Relaxed);
                    let reply = disco_reply(s);
                    send(&mut session.io, &reply, "disco").await?;
                } else if let Some(reply) = super::iq_reply(s) {
                    send(&mut session.io, &reply, "receive").await?;
                } else if s.name() == b"iq" && s.attr(b"id") == Some(b"warm") {
                    if s.attr(b"type") == Some(b"error") {
                        counters.warm_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    counters.warmed.fetch_add(1, Ordering::Relaxed);
                } else if s.name() == b"iq" && s.attr(b"id") == Some(b"pub") {
                    if s.attr(b"type") == Some(b"error") {
                        counters.publish_errors.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    notification(&s);
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
    fn caps_ver_matches_xep_0115_example() {
        // XEP-0115 §5.2, the simple example.
        let ver = caps_ver(
            &[("client", "pc", "", "Exodus 0.9.1")],
            &[
                "http://jabber.org/protocol/disco#info",
                "http://jabber.org/protocol/disco#items",
                "http://jabber.org/protocol/muc",
                "http://jabber.org/protocol/caps",
            ],
        );
        assert_eq!(ver, "QgayPKawpkPSDYmwT/WM94uAlu0=");
    }

    #[test]
    fn answers_disco_for_the_node() {
        let q = Stanza::new(
            b"<iq type='get' id='d1' from='localhost' to='u@l/r'><query \
              xmlns='http://jabber.org/protocol/disco#info' node='n#v'/></iq>",
        );
        assert!(is_disco_info(&q));
        let r = String::from_utf8(disco_reply(q)).unwrap();
        assert!(r.starts_with("<iq type='result' id='d1' to='localhost'><query"));
        assert!(r.contains("node='n#v'"));
        assert!(r.contains("<feature var='http://jabber.org/protocol/nick+notify'/>"));
        assert!(!is_disco_info(&Stanza::new(
            b"<iq type='get' id='p'><ping/></iq>"
        )));
    }
}
