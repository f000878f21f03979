//! Limits on what one peer may use: connections per address, bytes per second.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Counts open connections per IP address.
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
