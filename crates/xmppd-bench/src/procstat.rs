//! The measured server's CPU time and memory, read from /proc.

use std::fs;

/// /proc/PID/stat counts in USER_HZ, which the kernel fixes at 100 for its user-visible
/// interfaces on every architecture Linux runs on (independent of CONFIG_HZ).
const USER_HZ: f64 = 100.0;

/// utime + stime of the whole process (all threads), in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    parse_cpu_seconds(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    // The command name (field 2) may contain spaces and parentheses: skip past its last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // After the name come state (field 3) … utime (14) and stime (15).
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// CPU time the whole machine spent busy (all CPUs, everything but idle and iowait), in
/// seconds: with the server's and the generator's own, it shows what else was running.
pub fn machine_busy_seconds() -> Option<f64> {
    parse_machine_busy(&fs::read_to_string("/proc/stat").ok()?)
}

fn parse_machine_busy(stat: &str) -> Option<f64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_ascii_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum();
    Some(busy as f64 / USER_HZ)
}

/// Resident set size now and its peak (VmRSS, VmHWM), in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
}

pub fn memory(pid: u32) -> Option<Memory> {
    parse_memory(&fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

fn parse_memory(status: &str) -> Option<Memory> {
    let field = |name: &str| {
        status.lines().find_map(|l| {
            l.strip_prefix(name)?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        })
    };
    Some(Memory {
        rss_kib: field("VmRSS:")?,
        peak_rss_kib: field("VmHWM:")?,
    })
}

/// A snapshot of one process, taken at the edges of a measured phase.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    pub cpu_s: f64,
    pub mem: Memory,
}

pub fn sample(pid: u32) -> Option<Sample> {
    Some(Sample {
        cpu_s: cpu_seconds(pid)?,
        mem: memory(pid)?,
    })
}

/// Each process's CPU seconds, in order; None if any of them is gone.
pub fn cpu_seconds_each(pids: &[u32]) -> Option<Vec<f64>> {
    pids.iter().map(|&pid| cpu_seconds(pid)).collect()
}

/// A sample of each process, in order; None without processes or if any of them is gone.
pub fn sample_each(pids: &[u32]) -> Option<Vec<Sample>> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&pid| sample(pid)).collect()
}

/// The memory of several processes together (RSS and peaks summed).
pub fn total_memory(samples: &[Sample]) -> Memory {
    samples.iter().fold(Memory::default(), |acc, s| Memory {
        rss_kib: acc.rss_kib + s.mem.rss_kib,
        peak_rss_kib: acc.peak_rss_kib + s.mem.peak_rss_kib,
    })
}

/// Established TCP connections whose local port is one of `ports` (/proc/net/tcp and tcp6):
/// with the servers' s2s listening ports, one per server-to-server connection, counted at
/// its accepting end.
pub fn established_on(ports: &[u16]) -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| fs::read_to_string(p).ok())
        .map(|table| count_established(&table, ports))
        .sum()
}

fn count_established(table: &str, ports: &[u16]) -> usize {
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let mut fields = line.split_ascii_whitespace();
            // sl local_address rem_address st …; an address is HEXIP:HEXPORT.
            let local = fields.nth(1);
            let state = fields.nth(1);
            let port = local
                .and_then(|l| l.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            state == Some("01") && port.is_some_and(|p| ports.contains(&p))
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_in_name() {
        let stat =
            "4242 (beam smp) (x)) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 30 0 1 2 3";
        assert_eq!(parse_cpu_seconds(stat), Some(3.25));
    }

    #[test]
    fn machine_busy_skips_idle_and_iowait() {
        let stat = "cpu  100 10 50 9000 40 5 5 30 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(parse_machine_busy(stat), Some(2.0));
    }

    #[test]
    fn status_fields() {
        let status = "Name:\txmppd\nVmPeak:\t  999 kB\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\n";
        assert_eq!(
            parse_memory(status),
            Some(Memory {
                rss_kib: 1024,
                peak_rss_kib: 2048
            })
        );
    }

    #[test]
    fn counts_established_connections_on_ports() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue\n\
            0: 0200007F:14B5 00000000:0000 0A 00000000:00000000\n\
            1: 0200007F:14B5 0300007F:C350 01 00000000:00000000\n\
            2: 0300007F:C350 0200007F:14B5 01 00000000:00000000\n\
            3: 0300007F:14B6 0200007F:D000 01 00000000:00000000\n\
            4: 0300007F:14B6 0200007F:D001 06 00000000:00000000\n";
        // 0x14B5 = 5301 and 0x14B6 = 5302: one listener (0A), three established, one closing.
        assert_eq!(count_established(table, &[5301, 5302]), 2);
        assert_eq!(count_established(table, &[5301]), 1);
        assert_eq!(count_established(table, &[]), 0);
    }

    #[test]
    fn sums_memory_of_samples() {
        let s = |rss, peak| Sample {
            cpu_s: 0.0,
            mem: Memory {
                rss_kib: rss,
                peak_rss_kib: peak,
            },
        };
        let total = total_memory(&[s(10, 20), s(1, 2)]);
        assert_eq!((total.rss_kib, total.peak_rss_kib), (11, 22));
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert!(cpu_seconds(me).is_some());
        assert!(memory(me).unwrap().rss_kib > 0);
    }
}
