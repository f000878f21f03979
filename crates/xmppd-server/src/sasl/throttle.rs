//! Throttling of failed authentications: per address and account (a guess at one account
//! locks out only that account from that address) and, with a higher ceiling, per address.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Remembers recent failures per key (an address, or an address and an account); bounded in
/// keys and in failures per key.
pub struct AuthThrottle<K = IpAddr> {
    max_failures: usize,
    window: Duration,
    failures: Mutex<HashMap<K, VecDeque<Instant>>>,
}

/// Addresses tracked before old entries are swept.
const SWEEP_AT: usize = 10_000;

impl<K: Hash + Eq> AuthThrottle<K> {
    pub fn new(max_failures: u32, window: Duration) -> Self {
        AuthThrottle {
            max_failures: max_failures as usize,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `key` has failed too often recently to try again now.
    pub fn is_blocked(&self, key: &K) -> bool {
        if self.max_failures == 0 {
            return false;
        }
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(key) {
            Some(times) => {
                while times
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > self.window)
                {
                    times.pop_front();
                }
                times.len() >= self.max_failures
            }
            None => false,
        }
    }

    pub fn record_failure(&self, key: K) {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= SWEEP_AT {
            let window = self.window;
            map.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.duration_since(*t) <= window)
            });
        }
        let times = map.entry(key).or_default();
        times.push_back(now);
        while times.len() > self.max_failures.max(1) {
            times.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_limit_and_forgets_after_window() {
        let t = AuthThrottle::new(2, Duration::from_millis(50));
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let other: IpAddr = "127.0.0.10".parse().unwrap();
        assert!(!t.is_blocked(&ip));
        t.record_failure(ip);
        assert!(!t.is_blocked(&ip));
        t.record_failure(ip);
        assert!(t.is_blocked(&ip));
        assert!(!t.is_blocked(&other));
        std::thread::sleep(Duration::from_millis(80));
        assert!(!t.is_blocked(&ip));
    }
}
