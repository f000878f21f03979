//! `idle`: N authenticated sessions with initial presence, held open doing nothing.
//! Reports the server's resident memory per session (RSS growth over the baseline before the
//! first connection, divided by the sessions online) and what it keeps after they close.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;

use super::{finish, hold, ramp, Phase, Progress, Run, Window, INITIAL_PRESENCE};
use crate::conn;
use crate::procstat;

pub struct Params {
    pub sessions: usize,
    /// Seconds to wait once everyone is online before reading memory (lets the server
    /// finish lazy work) — also the window for its idle CPU.
    pub hold: Duration,
    /// How the sessions connect (idle over TCP, idle_ws, idle_bosh).
    pub transport: conn::Transport,
}

/// The parameters in the result; the transport only when it is not TCP (as before).
fn idle_params(params: &Params) -> Value {
    let mut p = json!({ "sessions": params.sessions, "hold_s": params.hold.as_secs_f64() });
    match params.transport {
        conn::Transport::Tcp => {}
        conn::Transport::Bosh => {
            p["transport"] = json!("bosh");
            p["bosh_hold"] = json!(1);
            p["bosh_wait_s"] = json!(crate::web::BOSH_WAIT);
        }
        t => p["transport"] = json!(t.name()),
    }
    p
}

pub async fn run(run: Arc<Run>, params: Params) -> (Value, &'static str) {
    let n = params.sessions;
    let timeout = run.target.timeout;
    let (phase, phase_rx) = watch::channel(Phase::Setup);
    let progress = Arc::new(Progress::default());
    let baseline = Window::start(run.server_pid);
    let transport = params.transport;
    let tasks = ramp(&run, n, |i, permit| {
        let run = run.clone();
        let progress = progress.clone();
        let mut rx = phase_rx.clone();
        async move {
            let target = &run.target;
            let mut session = match conn::login_via(target, i, transport).await {
                Ok(s) => s,
                Err(e) => {
                    run.errors.record(&e);
                    progress.failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            if let Err(e) = session.go_online(target, INITIAL_PRESENCE, |_| {}).await {
                run.errors.record(&e);
                progress.failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            progress.online.fetch_add(1, Ordering::Relaxed);
            drop(permit);
            if let Err(e) = hold(&mut session, &mut rx, Phase::Stop, |_| {}).await {
                run.errors.record(&e);
            }
            session.close(Duration::from_secs(2)).await;
        }
    })
    .await;
    progress.settled(n, timeout * 2).await;
    let login = baseline.finish();
    let online = progress.online() as u64;

    let idle = Window::start(run.server_pid);
    tokio::time::sleep(params.hold).await;
    let held = idle.finish();
    // Sessions the server dropped while idle are errors too: count who is still there.
    let still_online = online.saturating_sub(run.errors.count("session"));

    finish(&phase, tasks, timeout).await;
    // Give the server a moment to release the closed sessions before reading memory again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_close = run.server_pid.and_then(procstat::memory);

    let before = login.server_before.map(|m| m.rss_kib);
    let during = held.server_after.map(|m| m.rss_kib);
    let per_session = match (before, during) {
        (Some(b), Some(d)) if online > 0 => Some((d as f64 - b as f64) / online as f64),
        _ => None,
    };
    let status = if online == 0 { "failed" } else { "ok" };
    let metrics = json!({
        "sessions_online": online,
        "sessions_still_online": still_online,
        "logins_per_s": login.rate(online),
        "server_cpu_ms_per_login": login.cpu_per(online, 1e3),
        "server_rss_baseline_kib": before,
        "server_rss_idle_kib": during,
        "server_rss_kib_per_session": per_session,
        "server_peak_rss_kib": held.server_after.map(|m| m.peak_rss_kib),
        "server_rss_after_close_kib": after_close.map(|m| m.rss_kib),
        "server_idle_cpu_s": held.server_cpu_s,
        "login_window": login.to_json(),
        "idle_window": held.to_json(),
        "params": idle_params(&params),
    });
    (metrics, status)
}
