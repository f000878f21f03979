//! `login`: complete logins (TCP, STARTTLS, SCRAM-SHA-1, bind, initial presence, a ping
//! round trip) followed by a stream close, as fast as the rate and concurrency allow.
//! Reports logins/s, login latency and the server's CPU time per login.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{ramp, server_quiet, Run, Window, INITIAL_PRESENCE};
use crate::conn::{self, Failure};
use crate::histogram::Histogram;

pub struct Params {
    /// Distinct accounts used in turn.
    pub accounts: usize,
    /// Logins in the measured pass.
    pub logins: usize,
    /// Log every account in once before measuring, so the generator's SCRAM key cache is
    /// warm and the measured pass spends its client CPU on the protocol, not on PBKDF2.
    pub warmup: bool,
}

struct Counters {
    ok: AtomicU64,
    latency: Histogram,
}

/// One pass of `count` logins; warm-up failures are counted apart, under "warmup".
async fn pass(run: &Arc<Run>, count: usize, accounts: usize, warmup: bool) -> Arc<Counters> {
    let counters = Arc::new(Counters {
        ok: AtomicU64::new(0),
        latency: Histogram::default(),
    });
    let mut tasks = ramp(run, count, |i, permit| {
        let run = run.clone();
        let counters = counters.clone();
        async move {
            let started = Instant::now();
            match login_once(&run, i % accounts).await {
                Ok(()) => {
                    counters
                        .latency
                        .record(started.elapsed().as_micros() as u64);
                    counters.ok.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if warmup => run.errors.record(&Failure::new(
                    "warmup",
                    format!("{}: {}", e.stage, e.detail),
                )),
                Err(e) => run.errors.record(&e),
            }
            drop(permit);
        }
    })
    .await;
    // Every step of a login is bounded by the target's timeout, so this ends.
    while tasks.join_next().await.is_some() {}
    counters
}

async fn login_once(run: &Run, index: usize) -> Result<(), Failure> {
    let target = &run.target;
    let mut session = conn::login(target, index).await?;
    session.go_online(target, INITIAL_PRESENCE, |_| {}).await?;
    session.close(Duration::from_secs(2)).await;
    Ok(())
}

pub async fn run(run: Arc<Run>, params: Params) -> (Value, &'static str) {
    if params.warmup {
        pass(&run, params.accounts, params.accounts, true).await;
        server_quiet(run.server_pid, run.target.timeout).await;
    }
    let window = Window::start(run.server_pid);
    let counters = pass(&run, params.logins, params.accounts, false).await;
    let measured = window.finish();
    let ok = counters.ok.load(Ordering::Relaxed);
    let status = if ok == 0 { "failed" } else { "ok" };
    let metrics = json!({
        "logins_ok": ok,
        "logins_per_s": measured.rate(ok),
        "server_cpu_ms_per_login": measured.cpu_per(ok, 1e3),
        "login_latency": counters.latency.summary_ms(),
        "window": measured.to_json(),
        "params": {
            "accounts": params.accounts,
            "logins": params.logins,
            "warmup": params.warmup,
        },
    });
    (metrics, status)
}
