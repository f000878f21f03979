//! TLS: certificates per domain chosen by SNI, self-signed generation on first start, client
//! certificates for SASL EXTERNAL, and the data for SCRAM channel binding.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::Digest;

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {msg}")]
    File { path: String, msg: String },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client CA: {0}")]
    Verifier(String),
}

/// One domain's certificate and its RFC 5929 `tls-server-end-point` hash.
struct DomainCert {
    key: Arc<CertifiedKey>,
    end_point_hash: Vec<u8>,
}

/// Picks a certificate by SNI: the exact domain, else its parent (so `conference.example.org`
/// gets the certificate of `example.org`, which carries `*.example.org`), else the first.
/// The certificates can be replaced while the server runs ([`CertResolver::reload`], on
/// SIGHUP): connections made afterwards get the new ones, open ones keep theirs.
#[derive(Debug)]
pub struct CertResolver {
    certs: std::sync::RwLock<HashMap<String, Arc<DomainCertDebug>>>,
    default: String,
}

/// Newtype so the resolver can derive Debug (rustls requires it).
pub struct DomainCertDebug(DomainCert);

impl std::fmt::Debug for DomainCertDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DomainCert")
    }
}

impl CertResolver {
    fn lookup(&self, sni: Option<&str>) -> Option<Arc<DomainCertDebug>> {
        let certs = self.certs.read().unwrap_or_else(|e| e.into_inner());
        let by_name = |name: &str| certs.get(name).cloned();
        if let Some(name) = sni {
            let name = name.to_ascii_lowercase();
            if let Some(c) = by_name(&name) {
                return Some(c);
            }
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(c) = by_name(parent) {
                    return Some(c);
                }
            }
        }
        by_name(&self.default)
    }

    /// The certificate and key served for `domain` (also presented as the client
    /// certificate of outgoing server-to-server links).
    pub fn certified_key(&self, domain: &str) -> Option<Arc<CertifiedKey>> {
        self.lookup(Some(domain)).map(|c| c.0.key.clone())
    }

    /// The `tls-server-end-point` channel binding for a connection that sent `sni`.
    pub fn end_point_hash(&self, sni: Option<&str>) -> Option<Vec<u8>> {
        self.lookup(sni).map(|c| c.0.end_point_hash.clone())
    }

    /// Reads every domain's certificate again (from the paths `config` names): the files an
    /// ACME client renewed. All or nothing: on an error the old ones stay.
    pub fn reload(&self, config: &Config) -> Result<usize, TlsError> {
        let fresh = load_all(config)?;
        let n = fresh.len();
        *self.certs.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(n)
    }
}

/// Loads (or generates, for domains without a configured one) every domain's certificate.
fn load_all(config: &Config) -> Result<HashMap<String, Arc<DomainCertDebug>>, TlsError> {
    let mut certs = HashMap::new();
    for domain in &config.server.domains {
        let (cert, key, generated) = cert_paths(config, domain);
        if generated && ensure_self_signed(domain, &cert, &key)? {
            tracing::warn!(%domain, path = %cert.display(),
                "generated a self-signed certificate; clients will have to accept it");
        }
        let loaded = load_domain_cert(&cert, &key)?;
        certs.insert(
            domain.to_ascii_lowercase(),
            Arc::new(DomainCertDebug(loaded)),
        );
    }
    Ok(certs)
}

/// Logs a warning for each certificate that expires within `days` (or has expired).
pub fn warn_expiring(config: &Config, days: i64) {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for domain in &config.server.domains {
        let (cert, key, generated) = cert_paths(config, domain);
        let Ok(info) = inspect_certificate(&cert, &key) else {
            continue;
        };
        let left = (info.not_after - now).div_euclid(86_400);
        if left < days && !generated {
            tracing::warn!(%domain, path = %cert.display(), days_left = left,
                "certificate expires soon: renew it, then reload (SIGHUP or `xmppd reload`)");
        }
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.lookup(hello.server_name()).map(|c| c.0.key.clone())
    }
}

/// Everything TLS the listeners need.
pub struct TlsContext {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub resolver: Arc<CertResolver>,
    /// Whether client certificates are requested (SASL EXTERNAL is possible).
    pub client_auth: bool,
    /// Server-to-server streams: the peer's certificate is always asked for.
    pub s2s_acceptor: tokio_rustls::TlsAcceptor,
}

fn file_error(path: &Path, msg: impl ToString) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        msg: msg.to_string(),
    }
}

/// How long a generated self-signed certificate is valid.
const SELF_SIGNED_DAYS: i64 = 365;

/// Whether the PEM certificate at `path` has expired (or cannot be read as one).
fn expired(path: &Path) -> bool {
    let Ok(pem) = std::fs::read(path) else {
        return true;
    };
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(&pem) else {
        return true;
    };
    let Ok(cert) = pem.parse_x509() else {
        return true;
    };
    let not_after = cert.validity().not_after.timestamp();
    not_after <= time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Writes a self-signed certificate for `domain` and `*.domain`, named after the domain (a
/// client's trust prompt shows its subject) and valid for a year, unless a valid one exists;
/// an expired one is replaced.
pub fn ensure_self_signed(domain: &str, cert: &Path, key: &Path) -> Result<bool, TlsError> {
    if cert.exists() && key.exists() && !expired(cert) {
        return Ok(false);
    }
    if let Some(dir) = cert.parent() {
        crate::create_private_dir(dir).map_err(|e| file_error(dir, e))?;
    }
    let mut params =
        rcgen::CertificateParams::new(vec![domain.to_string(), format!("*.{domain}")])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, domain);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "xmppd (self-signed)");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(SELF_SIGNED_DAYS);
    let signing_key = rcgen::KeyPair::generate()?;
    let generated = params.self_signed(&signing_key)?;
    std::fs::write(cert, generated.pem()).map_err(|e| file_error(cert, e))?;
    write_private(key, signing_key.serialize_pem().as_bytes()).map_err(|e| file_error(key, e))?;
    Ok(true)
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(data)
}

/// The certificate and key paths to use for `domain`.
pub fn cert_paths(config: &Config, domain: &str) -> (std::path::PathBuf, std::path::PathBuf, bool) {
    match config.tls.certificates.iter().find(|c| c.domain == domain) {
        Some(c) => (c.cert.clone(), c.key.clone(), false),
        None => {
            let dir = config.server.data_dir.join("certs");
            (
                dir.join(format!("{domain}.crt")),
                dir.join(format!("{domain}.key")),
                true,
            )
        }
    }
}

fn load_domain_cert(cert: &Path, key: &Path) -> Result<DomainCert, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_error(cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(cert, e))?;
    let Some(leaf) = chain.first() else {
        return Err(file_error(cert, "no certificate in file"));
    };
    let end_point_hash = end_point_hash(leaf);
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e))?;
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| file_error(key, e))?;
    Ok(DomainCert {
        key: Arc::new(CertifiedKey::new(chain, signing)),
        end_point_hash,
    })
}

/// What `xmppd check` reports of one certificate file.
pub struct CertificateInfo {
    /// DNS names in its subjectAltNames (`*.example.org` for a wildcard).
    pub names: Vec<String>,
    /// Unix time it stops being valid.
    pub not_after: i64,
}

impl CertificateInfo {
    /// Whether it covers `domain`: a name equal to it, or a wildcard one label up.
    pub fn covers(&self, domain: &str) -> bool {
        let parent = domain.split_once('.').map(|(_, p)| p);
        self.names.iter().any(|n| {
            n.eq_ignore_ascii_case(domain)
                || n.strip_prefix("*.").is_some_and(|p| {
                    Some(p.to_ascii_lowercase().as_str())
                        == parent.map(str::to_ascii_lowercase).as_deref()
                })
        })
    }
}

/// Loads a certificate chain and key as the server would (without generating anything),
/// checks that the key belongs to the certificate, and reads the leaf's names and expiry.
pub fn inspect_certificate(cert: &Path, key: &Path) -> Result<CertificateInfo, TlsError> {
    let loaded = load_domain_cert(cert, key)?;
    if loaded.key.keys_match().is_err() {
        return Err(file_error(
            key,
            "the key does not belong to the certificate",
        ));
    }
    let leaf = &loaded.key.cert[0];
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf).map_err(|e| file_error(cert, e))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push(dns.to_string());
            }
        }
    }
    Ok(CertificateInfo {
        names,
        not_after: parsed.validity().not_after.timestamp(),
    })
}

/// RFC 5929 §4.1: hash the certificate with the hash of its signature algorithm, using
/// SHA-256 where that is MD5 or SHA-1 (or where the algorithm names no hash, as Ed25519).
fn end_point_hash(cert: &CertificateDer) -> Vec<u8> {
    let oid = x509_parser::parse_x509_certificate(cert)
        .map(|(_, c)| c.signature_algorithm.algorithm.to_id_string())
        .unwrap_or_default();
    match oid.as_str() {
        // sha384WithRSAEncryption, ecdsa-with-SHA384
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => sha2::Sha384::digest(cert).to_vec(),
        // sha512WithRSAEncryption, ecdsa-with-SHA512
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => sha2::Sha512::digest(cert).to_vec(),
        _ => sha2::Sha256::digest(cert).to_vec(),
    }
}

impl TlsContext {
    /// Loads (or generates) a certificate for every served domain.
    pub fn new(config: &Config) -> Result<TlsContext, TlsError> {
        let certs = std::sync::RwLock::new(load_all(config)?);
        let resolver = Arc::new(CertResolver {
            certs,
            default: config.server.domains[0].to_ascii_lowercase(),
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let (builder, client_auth) = match &config.tls.client_ca {
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(path).map_err(|e| file_error(path, e))? {
                    roots
                        .add(cert.map_err(|e| file_error(path, e))?)
                        .map_err(|e| file_error(path, e))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| TlsError::Verifier(e.to_string()))?;
                (builder.with_client_cert_verifier(verifier), true)
            }
            None => (builder.with_no_client_auth(), false),
        };
        let server_config = builder.with_cert_resolver(resolver.clone());
        Ok(TlsContext {
            s2s_acceptor: crate::s2s::certs::acceptor(&resolver)?,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server_config)),
            resolver,
            client_auth,
        })
    }
}

/// Channel-binding data of one TLS connection, captured right after the handshake.
#[derive(Clone, Debug, Default)]
pub struct ChannelBindings {
    /// RFC 9266 `tls-exporter` (TLS 1.3 only).
    pub tls_exporter: Option<Vec<u8>>,
    /// RFC 5929 `tls-server-end-point`.
    pub tls_server_end_point: Option<Vec<u8>>,
    /// The verified client certificate, if any (for SASL EXTERNAL).
    pub client_cert: Option<CertificateDer<'static>>,
    /// The whole chain the peer presented, leaf first, for servers (whose certificates the
    /// s2s code verifies itself, see `crate::s2s::certs`).
    pub peer_chain: Vec<CertificateDer<'static>>,
}

impl ChannelBindings {
    pub fn capture(conn: &rustls::ServerConnection, resolver: &CertResolver) -> Self {
        let tls_exporter = match conn.protocol_version() {
            // RFC 9266 §2: 32 bytes, label "EXPORTER-Channel-Binding", no context. Under
            // TLS 1.2 without extended master secret it is insecure, so only offer it on 1.3.
            Some(rustls::ProtocolVersion::TLSv1_3) => conn
                .export_keying_material([0u8; 32], b"EXPORTER-Channel-Binding", None)
                .ok()
                .map(|k| k.to_vec()),
            _ => None,
        };
        ChannelBindings {
            tls_exporter,
            tls_server_end_point: resolver.end_point_hash(conn.server_name()),
            client_cert: conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.clone().into_owned()),
            peer_chain: chain(conn.peer_certificates()),
        }
    }

    /// What an outgoing connection learns: the server's certificate chain.
    pub fn of_client(conn: &rustls::ClientConnection) -> Self {
        ChannelBindings {
            peer_chain: chain(conn.peer_certificates()),
            ..ChannelBindings::default()
        }
    }
}

fn chain(certs: Option<&[CertificateDer<'_>]>) -> Vec<CertificateDer<'static>> {
    certs
        .unwrap_or_default()
        .iter()
        .map(|c| c.clone().into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("certs/example.org.crt");
        let key = dir.path().join("certs/example.org.key");
        assert!(ensure_self_signed("example.org", &cert, &key).unwrap());
        let first = std::fs::read(&cert).unwrap();
        assert!(!ensure_self_signed("example.org", &cert, &key).unwrap());
        assert_eq!(first, std::fs::read(&cert).unwrap());
        let loaded = load_domain_cert(&cert, &key).unwrap();
        assert_eq!(loaded.end_point_hash.len(), 32);
        // Named after the domain, valid for about a year.
        let pem = std::fs::read(&cert).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        let parsed = pem.parse_x509().unwrap();
        let cn = parsed.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), "example.org");
        let days = (parsed.validity().not_after.timestamp()
            - parsed.validity().not_before.timestamp())
            / 86_400;
        assert!((365..=367).contains(&days), "{days} days");
        assert!(!expired(&cert));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "key must not be readable by others");
        }
    }
}
