//! Limits on what one peer may use: connections per address, unauthenticated connections
//! and new connections per address, bytes per second.
//!
//! They limit what an attacker holds, not what users hold: many honest users share one
//! address (an office, carrier NAT, a web gateway), so what is capped per address is what
//! costs the server without a login behind it.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Addresses tracked before idle entries are swept.
const SWEEP_AT: usize = 10_000;

/// Counts open connections per IP address (a hard ceiling, off by default).
pub struct ConnectionLimiter {
    max: u32,
    open: Mutex<HashMap<IpAddr, u32>>,
}

/// Releases one connection slot when dropped.
pub struct ConnectionSlot {
    limiter: Arc<ConnectionLimiter>,
    ip: IpAddr,
}

impl ConnectionLimiter {
    pub fn new(max: u32) -> Arc<Self> {
        Arc::new(ConnectionLimiter {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a new connection from `ip`, or `None` when it has too many open.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(ip).or_insert(0);
        if self.max > 0 && *count >= self.max {
            return None;
        }
        *count += 1;
        Some(ConnectionSlot {
            limiter: self.clone(),
            ip,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Unauthenticated connections per address. Over the cap the oldest one is evicted rather
/// than the newcomer refused: honest clients authenticate within a second, so a flood of
/// slow sockets from the same address only ever evicts itself.
pub struct Unauthenticated {
    max: usize,
    next_id: AtomicU64,
    by_ip: Mutex<HashMap<IpAddr, VecDeque<Waiting>>>,
}

/// One unauthenticated connection: its id and how to evict it.
type Waiting = (u64, Arc<Eviction>);

/// Tells a connection it was evicted.
#[derive(Default)]
pub struct Eviction {
    evicted: AtomicBool,
    notify: Notify,
}

impl Eviction {
    /// Resolves once the connection has been evicted.
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.evicted.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

/// A connection that has not authenticated yet; dropping it (on authentication or close)
/// frees its place.
pub struct Pending {
    limiter: Arc<Unauthenticated>,
    ip: IpAddr,
    id: u64,
    pub eviction: Arc<Eviction>,
}

impl Unauthenticated {
    /// `max` 0 means no cap.
    pub fn new(max: u32) -> Arc<Self> {
        Arc::new(Unauthenticated {
            max: max as usize,
            next_id: AtomicU64::new(0),
            by_ip: Mutex::new(HashMap::new()),
        })
    }

    /// Admits a new connection from `ip`; returns it and whether an older one was evicted.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> (Pending, bool) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let eviction = Arc::new(Eviction::default());
        let mut evicted = false;
        {
            let mut by_ip = self.by_ip.lock().unwrap_or_else(|e| e.into_inner());
            let queue = by_ip.entry(ip).or_default();
            if self.max > 0 && queue.len() >= self.max {
                if let Some((_, oldest)) = queue.pop_front() {
                    oldest.evicted.store(true, Ordering::Release);
                    oldest.notify.notify_one();
                    evicted = true;
                }
            }
            queue.push_back((id, eviction.clone()));
        }
        let pending = Pending {
            limiter: self.clone(),
            ip,
            id,
            eviction,
        };
        (pending, evicted)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut by_ip = self.limiter.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(queue) = by_ip.get_mut(&self.ip) {
            queue.retain(|(id, _)| *id != self.id);
            if queue.is_empty() {
                by_ip.remove(&self.ip);
            }
        }
    }
}

/// New connections per address per second, with a burst. Over it a connection waits its
/// turn, at most [`ConnectionRate::MAX_WAIT`], and only past that is refused.
pub struct ConnectionRate {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl ConnectionRate {
    /// The longest a new connection is made to wait before it is refused instead.
    pub const MAX_WAIT: Duration = Duration::from_millis(500);

    /// `per_second` 0 means no limit.
    pub fn new(per_second: u32, burst: u32) -> Self {
        ConnectionRate {
            rate: per_second as f64,
            burst: burst.max(per_second).max(1) as f64,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// How long a new connection from `ip` must wait before it may start (its turn is
    /// reserved), or `None` if that would be longer than [`Self::MAX_WAIT`].
    pub fn admit(&self, ip: IpAddr) -> Option<Duration> {
        if self.rate <= 0.0 {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= SWEEP_AT {
            let (rate, burst) = (self.rate, self.burst);
            // Full buckets say nothing: forget them.
            buckets.retain(|_, (tokens, last)| {
                *tokens + now.duration_since(*last).as_secs_f64() * rate < burst
            });
        }
        let (tokens, last) = buckets.entry(ip).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.burst);
        *last = now;
        let wait = if *tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - *tokens) / self.rate)
        };
        if wait > Self::MAX_WAIT {
            return None;
        }
        *tokens -= 1.0;
        Some(wait)
    }
}

/// A token bucket over bytes read: reading pauses while the bucket is in debt, which is how
/// ejabberd's shapers and Prosody's mod_limits treat a fast sender too.
pub struct ByteRate {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl ByteRate {
    pub fn new(bytes_per_second: u32, burst: u32) -> Self {
        ByteRate {
            rate: bytes_per_second as f64,
            burst: burst.max(bytes_per_second) as f64,
            tokens: burst.max(bytes_per_second) as f64,
            last: Instant::now(),
        }
    }

    /// Takes `n` bytes; returns how long to wait before reading again, if at all.
    pub fn take(&mut self, n: usize) -> Option<Duration> {
        if self.rate <= 0.0 {
            return None;
        }
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst) - n as f64;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / self.rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_slots_are_counted_and_released() {
        let limiter = ConnectionLimiter::new(2);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = limiter.acquire(ip).unwrap();
        let _b = limiter.acquire(ip).unwrap();
        assert!(limiter.acquire(ip).is_none());
        assert!(limiter.acquire("127.0.0.2".parse().unwrap()).is_some());
        drop(a);
        assert!(limiter.acquire(ip).is_some());
    }

    #[tokio::test]
    async fn the_oldest_unauthenticated_connection_makes_room() {
        let limiter = Unauthenticated::new(2);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let (first, evicted) = limiter.admit(ip);
        assert!(!evicted);
        let (second, _) = limiter.admit(ip);
        let (_third, evicted) = limiter.admit(ip);
        assert!(evicted);
        first.eviction.wait().await;
        assert!(!second.eviction.evicted.load(Ordering::Acquire));
        // Another address has its own places; a freed place is not taken from anyone.
        let (_, evicted) = limiter.admit("127.0.0.2".parse().unwrap());
        assert!(!evicted);
        drop(second);
        let (_, evicted) = limiter.admit(ip);
        assert!(!evicted);
    }

    #[test]
    fn new_connections_wait_their_turn_then_are_refused() {
        let rate = ConnectionRate::new(10, 20);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..20 {
            assert_eq!(rate.admit(ip), Some(Duration::ZERO));
        }
        // Five more fit in the next half second: each waits a tenth of a second more.
        let waits: Vec<_> = (0..5).map(|_| rate.admit(ip).unwrap()).collect();
        assert!(waits.windows(2).all(|w| w[0] < w[1]), "{waits:?}");
        assert!(waits[4] <= ConnectionRate::MAX_WAIT);
        assert_eq!(rate.admit(ip), None);
        assert_eq!(
            rate.admit("127.0.0.2".parse().unwrap()),
            Some(Duration::ZERO)
        );
        assert_eq!(ConnectionRate::new(0, 0).admit(ip), Some(Duration::ZERO));
    }

    #[test]
    fn byte_rate_pauses_after_burst() {
        let mut rate = ByteRate::new(1000, 2000);
        assert_eq!(rate.take(1500), None);
        let wait = rate.take(1500).unwrap();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_millis(1001));
        let mut unlimited = ByteRate::new(0, 0);
        assert_eq!(unlimited.take(1 << 30), None);
    }
}
