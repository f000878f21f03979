//! Where a remote domain's server listens: the static routes of the config, else DNS SRV
//! (`_xmpps-server._tcp` for direct TLS, XEP-0368, and `_xmpp-server._tcp`, RFC 6120
//! §3.2.1), else the domain's own addresses on port 5269 (§3.2.2). hickory's resolver is
//! asynchronous and caches answers for their TTL.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use rand::Rng;
use tokio::net::TcpStream;
use tokio::sync::OnceCell;

/// How long one address may take to accept a TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The default server-to-server port (RFC 6120 §14.7).
const DEFAULT_PORT: u16 = 5269;

/// One place to try, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// TLS from the first byte (an `_xmpps-server` record).
    pub direct_tls: bool,
}

/// An SRV answer: (priority, weight, target).
type Srv = (u16, u16, Target);

pub struct Resolver {
    routes: BTreeMap<String, SocketAddr>,
    dns: OnceCell<Option<TokioResolver>>,
}

impl Resolver {
    pub fn new(routes: BTreeMap<String, SocketAddr>) -> Self {
        Resolver {
            routes,
            dns: OnceCell::new(),
        }
    }

    async fn dns(&self) -> Option<&TokioResolver> {
        self.dns
            .get_or_init(|| async {
                match TokioResolver::builder_tokio().and_then(|b| b.build()) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::error!(error = %e, "no DNS resolver: federation only by static routes");
                        None
                    }
                }
            })
            .await
            .as_ref()
    }

    /// Connects to `domain`'s server: the first target and address that accepts.
    /// Returns the connection and whether it starts with TLS.
    pub async fn connect(&self, domain: &str) -> Option<(TcpStream, bool)> {
        if let Some(addr) = self.routes.get(domain) {
            return tcp(*addr).await.map(|s| (s, false));
        }
        let dns = self.dns().await?;
        for target in self.targets(dns, domain).await {
            let Ok(addrs) = dns.lookup_ip(target.host.as_str()).await else {
                continue;
            };
            for ip in addrs.iter() {
                if let Some(stream) = tcp(SocketAddr::new(ip, target.port)).await {
                    return Some((stream, target.direct_tls));
                }
            }
        }
        None
    }

    async fn targets(&self, dns: &TokioResolver, domain: &str) -> Vec<Target> {
        let mut records = Vec::new();
        let mut answered = false;
        for (service, direct_tls) in [("_xmpps-server._tcp", true), ("_xmpp-server._tcp", false)] {
            let Ok(lookup) = dns.srv_lookup(format!("{service}.{domain}.")).await else {
                continue;
            };
            answered = true;
            for record in lookup.answers() {
                if let RData::SRV(srv) = &record.data {
                    // A target of "." says the service is decidedly not there (RFC 2782).
                    if srv.target.is_root() {
                        continue;
                    }
                    let host = srv.target.to_utf8();
                    records.push((
                        srv.priority,
                        srv.weight,
                        Target {
                            host: host.trim_end_matches('.').to_string(),
                            port: srv.port,
                            direct_tls,
                        },
                    ));
                }
            }
        }
        if !answered {
            return vec![Target {
                host: domain.to_string(),
                port: DEFAULT_PORT,
                direct_tls: false,
            }];
        }
        order(records, &mut rand::thread_rng())
    }
}

/// RFC 2782 ordering: by priority, and within one priority a weighted random order.
fn order(mut records: Vec<Srv>, rng: &mut impl Rng) -> Vec<Target> {
    records.sort_by_key(|(priority, _, _)| *priority);
    let mut out = Vec::with_capacity(records.len());
    while !records.is_empty() {
        let priority = records[0].0;
        let same = records.iter().take_while(|r| r.0 == priority).count();
        let mut group: Vec<Srv> = records.drain(..same).collect();
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| u32::from(r.1)).sum();
            let mut pick = rng.gen_range(0..=total);
            let index = group
                .iter()
                .position(|r| {
                    if pick <= u32::from(r.1) {
                        return true;
                    }
                    pick -= u32::from(r.1);
                    false
                })
                .unwrap_or(0);
            out.push(group.remove(index).2);
        }
    }
    out
}

async fn tcp(addr: SocketAddr) -> Option<TcpStream> {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Some(stream)
        }
        Ok(Err(e)) => {
            tracing::debug!(%addr, error = %e, "s2s connection refused");
            None
        }
        Err(_) => {
            tracing::debug!(%addr, "s2s connection timed out");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn srv(priority: u16, weight: u16, host: &str) -> Srv {
        (
            priority,
            weight,
            Target {
                host: host.into(),
                port: 5269,
                direct_tls: false,
            },
        )
    }

    #[test]
    fn lower_priority_first_and_weight_decides_within_one() {
        let mut heavy_first = 0;
        for seed in 0..200 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let records = vec![
                srv(20, 0, "backup"),
                srv(10, 1, "light"),
                srv(10, 99, "heavy"),
            ];
            let hosts: Vec<_> = order(records, &mut rng)
                .into_iter()
                .map(|t| t.host)
                .collect();
            assert_eq!(hosts.len(), 3);
            assert_eq!(hosts[2], "backup");
            heavy_first += usize::from(hosts[0] == "heavy");
        }
        assert!(heavy_first > 180, "heavy first {heavy_first} times of 200");
    }
}
