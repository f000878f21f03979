//! Scenarios and the pieces they share: the run context, phases broadcast to every
//! connection task, the login ramp, and the measured window over the server process.
//!
//! A scenario is one async function taking the [`Run`] and returning its report. A new one
//! (MUC fan-out, say) adds a file here and an arm in `main.rs`; its connection tasks reuse
//! [`ramp`], [`hold`] and the timestamp helpers.

pub mod chat;
pub mod idle;
pub mod login;
pub mod muc;
pub mod muc_rooms;
pub mod pep;
pub mod presence;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::conn::{send, Failure, Session, Target};
use crate::errors::Errors;
use crate::procstat;
use crate::reader::Event;
use crate::xml::Stanza;

/// Everything a scenario needs, shared by its tasks.
pub struct Run {
    pub target: Arc<Target>,
    pub server_pid: Option<u32>,
    pub errors: Errors,
    /// Origin of the timestamps carried in message bodies and presence statuses.
    pub epoch: Instant,
    /// New connections per second during a login ramp.
    pub rate: f64,
    /// At most this many logins in progress at once.
    pub max_inflight: usize,
    /// s2s: the second server, federated with the first; odd-numbered sessions log in there.
    pub peer: Option<Arc<Target>>,
    pub peer_pid: Option<u32>,
}

impl Run {
    pub fn now_micros(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// The server session `i` logs in to: the peer for odd sessions when there is one.
    pub fn target_of(&self, i: usize) -> &Arc<Target> {
        match &self.peer {
            Some(peer) if i % 2 == 1 => peer,
            _ => &self.target,
        }
    }

    /// Every measured server process (both ends of a federated run).
    pub fn server_pids(&self) -> Vec<u32> {
        self.server_pid.into_iter().chain(self.peer_pid).collect()
    }
}

/// Where a scenario is; connection tasks watch it to start and stop together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Setup,
    /// s2s: the first message (first server to second) opens and authenticates a link.
    Warm,
    /// s2s: the first message back, once the first arrived (a server with bidirectional
    /// streams, XEP-0288, may reuse the link the other opened).
    WarmBack,
    Measure,
    Drain,
    Stop,
}

pub type PhaseRx = watch::Receiver<Phase>;

/// Returns once the phase is at least `at`. A dropped sender counts as Stop.
pub async fn reached(rx: &mut PhaseRx, at: Phase) {
    let _ = rx.wait_for(|p| *p >= at).await;
}

/// Starts `count` connection tasks at `run.rate` per second, never more than
/// `run.max_inflight` of them before they drop the permit they are given (once online).
pub async fn ramp<F, Fut>(run: &Run, count: usize, mut make: F) -> JoinSet<()>
where
    F: FnMut(usize, OwnedSemaphorePermit) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let inflight = Arc::new(Semaphore::new(run.max_inflight.max(1)));
    let mut tasks = JoinSet::new();
    let start = tokio::time::Instant::now();
    for i in 0..count {
        // Task i is due at i / rate seconds; past due (a slow server), it starts at once.
        let due = start + Duration::from_secs_f64(i as f64 / run.rate);
        tokio::time::sleep_until(due).await;
        let permit = inflight
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        tasks.spawn(make(i, permit));
    }
    tasks
}

/// Counts of connection tasks that got online or gave up.
#[derive(Default)]
pub struct Progress {
    pub online: AtomicUsize,
    pub failed: AtomicUsize,
}

impl Progress {
    pub fn online(&self) -> usize {
        self.online.load(Ordering::Relaxed)
    }

    /// Waits until `count` tasks are online or failed, or until `timeout`.
    pub async fn settled(&self, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.online() + self.failed.load(Ordering::Relaxed) < count {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}

/// Stops the tasks: raises `Stop`, waits for them a bounded time, then aborts the rest.
pub async fn finish(phase: &watch::Sender<Phase>, mut tasks: JoinSet<()>, timeout: Duration) {
    let _ = phase.send(Phase::Stop);
    let _ = tokio::time::timeout(timeout, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}

/// Waits until the server uses under 2% of a core over half a second — it may still be
/// working through what an earlier pass sent it — or until `max`. Without a PID, returns.
/// With several (a federated pair), waits for each of them to be that quiet.
pub async fn server_quiet(pids: impl IntoIterator<Item = u32>, max: Duration) {
    let pids: Vec<u32> = pids.into_iter().collect();
    if pids.is_empty() {
        return;
    }
    let deadline = Instant::now() + max;
    while Instant::now() < deadline {
        let Some(before) = procstat::cpu_seconds_each(&pids) else {
            return;
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(after) = procstat::cpu_seconds_each(&pids) else {
            return;
        };
        if after.iter().zip(&before).all(|(a, b)| a - b <= 0.01) {
            return;
        }
    }
    eprintln!("xmppd-bench: the server is still busy after {max:?}; measuring anyway");
}

/// CPU and memory of the server (and CPU of this generator) over a measured window. With
/// two servers (s2s), their CPU and memory are summed, and each one's CPU is kept too.
pub struct Window {
    pids: Vec<u32>,
    started: Instant,
    server: Option<Vec<procstat::Sample>>,
    generator_cpu_s: Option<f64>,
    machine_busy_s: Option<f64>,
    profiler: std::sync::Mutex<Option<std::process::Child>>,
}

/// Windows started so far, for `$WINDOW` in `BENCH_PROFILE_CMD`.
static WINDOWS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// `BENCH_PROFILE_CMD`, when set, runs beside each window with `$SERVER_PIDS` (comma
/// separated) and `$WINDOW` (1, 2, …) in its environment, and gets SIGINT when the window
/// ends: `perf record -g -p $SERVER_PIDS -o /tmp/w$WINDOW.data` profiles exactly what is
/// measured. Its CPU counts as other processes'.
fn start_profiler(pids: &[u32]) -> Option<std::process::Child> {
    let cmd = std::env::var("BENCH_PROFILE_CMD").ok()?;
    let window = WINDOWS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    let child = std::process::Command::new("sh")
        .args(["-c", &format!("exec {cmd}")])
        .env("SERVER_PIDS", pids.join(","))
        .env("WINDOW", window.to_string())
        .spawn();
    match child {
        Ok(child) => {
            // Give it time to attach before the window counts anything.
            std::thread::sleep(Duration::from_millis(500));
            Some(child)
        }
        Err(e) => {
            eprintln!("xmppd-bench: BENCH_PROFILE_CMD did not start: {e}");
            None
        }
    }
}

fn stop_profiler(child: Option<std::process::Child>) {
    let Some(mut child) = child else { return };
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

pub struct Measured {
    pub elapsed_s: f64,
    pub server_cpu_s: Option<f64>,
    pub server_before: Option<procstat::Memory>,
    pub server_after: Option<procstat::Memory>,
    pub generator_cpu_s: Option<f64>,
    /// CPU used by everything else on the machine meanwhile (noise: builds, other tests).
    pub other_cpu_s: Option<f64>,
    /// Each server's CPU in the window, when there are several.
    pub server_cpu_s_each: Option<Vec<f64>>,
}

impl Window {
    pub fn start(pids: impl IntoIterator<Item = u32>) -> Self {
        let pids: Vec<u32> = pids.into_iter().collect();
        let profiler = std::sync::Mutex::new(start_profiler(&pids));
        Window {
            profiler,
            server: procstat::sample_each(&pids),
            pids,
            started: Instant::now(),
            generator_cpu_s: procstat::cpu_seconds(std::process::id()),
            machine_busy_s: procstat::machine_busy_seconds(),
        }
    }

    pub fn finish(&self) -> Measured {
        let end = procstat::sample_each(&self.pids);
        let generator_end = procstat::cpu_seconds(std::process::id());
        let machine_end = procstat::machine_busy_seconds();
        stop_profiler(self.profiler.lock().ok().and_then(|mut p| p.take()));
        let generator_cpu_s = match (self.generator_cpu_s, generator_end) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        let each: Option<Vec<f64>> = match (&self.server, &end) {
            (Some(a), Some(b)) => Some(a.iter().zip(b).map(|(a, b)| b.cpu_s - a.cpu_s).collect()),
            _ => None,
        };
        let server_cpu_s = each.as_ref().map(|e| e.iter().sum());
        let other_cpu_s = match (self.machine_busy_s, machine_end) {
            (Some(a), Some(b)) => Some(
                (b - a - server_cpu_s.unwrap_or(0.0) - generator_cpu_s.unwrap_or(0.0)).max(0.0),
            ),
            _ => None,
        };
        Measured {
            elapsed_s: self.started.elapsed().as_secs_f64(),
            server_cpu_s,
            server_before: self.server.as_deref().map(procstat::total_memory),
            server_after: end.as_deref().map(procstat::total_memory),
            generator_cpu_s,
            other_cpu_s,
            server_cpu_s_each: each.filter(|e| e.len() > 1),
        }
    }
}

impl Measured {
    /// Server CPU per unit of work (`unit_scale` 1e3 for ms, 1e6 for µs); None without a PID
    /// or without work.
    pub fn cpu_per(&self, work: u64, unit_scale: f64) -> Option<f64> {
        let cpu = self.server_cpu_s?;
        (work > 0).then(|| cpu * unit_scale / work as f64)
    }

    pub fn rate(&self, work: u64) -> f64 {
        if self.elapsed_s > 0.0 {
            work as f64 / self.elapsed_s
        } else {
            0.0
        }
    }

    pub fn to_json(&self) -> Value {
        let mut value = json!({
            "elapsed_s": self.elapsed_s,
            "server_cpu_s": self.server_cpu_s,
            "server_rss_before_kib": self.server_before.map(|m| m.rss_kib),
            "server_rss_after_kib": self.server_after.map(|m| m.rss_kib),
            "server_peak_rss_kib": self.server_after.map(|m| m.peak_rss_kib),
            "generator_cpu_s": self.generator_cpu_s,
            "other_cpu_s": self.other_cpu_s,
        });
        if let Some(each) = &self.server_cpu_s_each {
            value["server_cpu_s_each"] = json!(each);
        }
        value
    }
}

/// Appends the decimal digits of `v` without allocating (given capacity).
pub fn push_u64(buf: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// Parses an unsigned decimal, as written by [`push_u64`].
pub fn parse_u64(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 20 {
        return None;
    }
    text.iter().try_fold(0u64, |acc, &b| {
        b.is_ascii_digit()
            .then_some(())
            .and_then(|_| acc.checked_mul(10)?.checked_add(u64::from(b - b'0')))
    })
}

/// A reply to an iq the server sends us (a roster push, a ping): `result` for get/set,
/// nothing for results and errors. Rare, so allocating here is fine.
pub fn iq_reply(stanza: Stanza<'_>) -> Option<Vec<u8>> {
    if stanza.name() != b"iq" || !matches!(stanza.attr(b"type"), Some(b"get" | b"set")) {
        return None;
    }
    let mut reply = b"<iq type='result' id='".to_vec();
    reply.extend_from_slice(stanza.attr(b"id").unwrap_or_default());
    reply.push(b'\'');
    if let Some(from) = stanza.attr(b"from") {
        reply.extend_from_slice(b" to='");
        reply.extend_from_slice(from);
        reply.push(b'\'');
    }
    reply.extend_from_slice(b"/>");
    Some(reply)
}

/// Keeps a session alive until the phase reaches `until`: reads what arrives, answers iqs
/// and hands every stanza to `on_stanza`.
pub async fn hold(
    session: &mut Session,
    rx: &mut PhaseRx,
    until: Phase,
    mut on_stanza: impl FnMut(Stanza<'_>),
) -> Result<(), Failure> {
    loop {
        let event = tokio::select! {
            _ = reached(rx, until) => return Ok(()),
            event = session.reader.next(&mut session.io) => event,
        };
        match event.map_err(|e| Failure::new("session", e))? {
            Event::Stanza(s) => {
                if let Some(reply) = iq_reply(s) {
                    send(&mut session.io, &reply, "session").await?;
                }
                on_stanza(s);
            }
            Event::StreamClose => return Err(Failure::new("session", "stream closed by server")),
            Event::StreamOpen => return Err(Failure::new("session", "unexpected stream header")),
        }
    }
}

/// The plain initial presence every scenario's sessions send.
pub const INITIAL_PRESENCE: &[u8] = b"<presence/>";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_round_trip() {
        for v in [0, 7, 10, 123_456_789, u64::MAX] {
            let mut buf = Vec::new();
            push_u64(&mut buf, v);
            assert_eq!(buf, v.to_string().as_bytes());
            assert_eq!(parse_u64(&buf), Some(v));
        }
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"12a"), None);
        assert_eq!(parse_u64(b"18446744073709551616"), None);
    }

    #[test]
    fn answers_server_iqs_only() {
        let push = Stanza::new(b"<iq type='set' id='p1' from='u@l'><query/></iq>");
        assert_eq!(
            iq_reply(push).unwrap(),
            b"<iq type='result' id='p1' to='u@l'/>".to_vec()
        );
        assert!(iq_reply(Stanza::new(b"<iq type='result' id='x'/>")).is_none());
        assert!(iq_reply(Stanza::new(b"<message type='get'/>")).is_none());
    }

    #[tokio::test]
    async fn ramp_starts_every_task_at_the_rate() {
        let run = Run {
            target: Arc::new(Target::new(
                "127.0.0.1:1".parse().unwrap(),
                "localhost".into(),
                "u".into(),
                "p",
                vec![],
                Duration::from_secs(1),
            )),
            server_pid: None,
            errors: Errors::default(),
            epoch: Instant::now(),
            rate: 1000.0,
            max_inflight: 2,
            peer: None,
            peer_pid: None,
        };
        let done = Arc::new(AtomicUsize::new(0));
        let mut tasks = ramp(&run, 20, |_, permit| {
            let done = done.clone();
            async move {
                drop(permit);
                done.fetch_add(1, Ordering::Relaxed);
            }
        })
        .await;
        while tasks.join_next().await.is_some() {}
        assert_eq!(done.load(Ordering::Relaxed), 20);
    }
}
