//! TLS between servers: the acceptor that asks peers for a certificate, the connectors that
//! present ours, and the RFC 6125 check of a peer's certificate against its domain.
//!
//! rustls verifies handshake signatures (the peer holds the key) but the chain is checked
//! here, after the handshake, for two reasons: a certificate that does not verify is not
//! fatal (the peer can still authenticate with dialback, XEP-0220), and an incoming peer's
//! certificate must be accepted with the serverAuth usage alone. Public CAs stopped issuing
//! clientAuth in 2025–2026, and rustls' client verifier insists on it.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::TrustAnchor;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::Config;
use crate::tls::{CertResolver, TlsError};

/// The acceptor of server-to-server streams: it asks for the peer's certificate, which
/// [`PeerTls::verify`] checks after the handshake.
pub fn acceptor(resolver: &Arc<CertResolver>) -> Result<TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let checked_later = Arc::new(CheckedLater(provider.signature_verification_algorithms));
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(checked_later)
        .with_cert_resolver(resolver.clone());
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// The client side of server-to-server TLS, and the check of a peer's certificate.
pub struct PeerTls {
    /// One per served domain: it presents that domain's certificate.
    connectors: std::collections::HashMap<String, TlsConnector>,
    verifier: CertVerifier,
}

/// What a server certificate proves under the trust anchors of `[s2s] ca_file` (or the
/// system's roots): used on peers' certificates, and by `xmppd check` on our own, as
/// peers with the same anchors will see it.
pub struct CertVerifier {
    anchors: Vec<TrustAnchor<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
}

/// Accepts any certificate in the handshake (checking only that the peer holds its key);
/// [`PeerTls::verify`] decides afterwards what the certificate proves.
#[derive(Debug)]
struct CheckedLater(WebPkiSupportedAlgorithms);

impl ClientCertVerifier for CheckedLater {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

impl ServerCertVerifier for CheckedLater {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// Presents one served domain's certificate as the client certificate (the current one:
/// the resolver's certificates are replaced on reload).
#[derive(Debug)]
struct OwnCertificate {
    resolver: Arc<CertResolver>,
    domain: String,
}

impl ResolvesClientCert for OwnCertificate {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.resolver.certified_key(&self.domain)
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn load_anchors(config: &Config) -> Result<Vec<TrustAnchor<'static>>, TlsError> {
    let ders: Vec<CertificateDer<'static>> = match &config.s2s.ca_file {
        Some(path) => CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<_, _>>())
            .map_err(|e| TlsError::File {
                path: path.display().to_string(),
                msg: e.to_string(),
            })?,
        None => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "reading the system's trusted certificates");
            }
            found.certs
        }
    };
    Ok(ders
        .iter()
        .filter_map(|der| webpki::anchor_from_trusted_cert(der).ok())
        .map(|a| a.to_owned())
        .collect())
}

impl PeerTls {
    pub fn new(config: &Config, resolver: &Arc<CertResolver>) -> Result<PeerTls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let algorithms = provider.signature_verification_algorithms;
        let checked_later = Arc::new(CheckedLater(algorithms));
        let mut connectors = std::collections::HashMap::new();
        for domain in &config.server.domains {
            let own = OwnCertificate {
                resolver: resolver.clone(),
                domain: domain.clone(),
            };
            let client = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?
                .dangerous()
                .with_custom_certificate_verifier(checked_later.clone())
                .with_client_cert_resolver(Arc::new(own));
            connectors.insert(domain.clone(), TlsConnector::from(Arc::new(client)));
        }
        Ok(PeerTls {
            connectors,
            verifier: CertVerifier::new(config)?,
        })
    }

    /// See [`CertVerifier::verify`].
    pub fn verify(&self, chain: &[CertificateDer<'_>], domain: &str) -> bool {
        self.verifier.verify(chain, domain)
    }

    /// The connector presenting the certificate of `local` (a served domain, or the domain
    /// a subdomain such as `conference.example.org` belongs to).
    pub fn connector(&self, local: &str) -> Option<&TlsConnector> {
        self.connectors.get(local).or_else(|| {
            let (_, parent) = local.split_once('.')?;
            self.connectors.get(parent)
        })
    }
}

impl CertVerifier {
    /// Whether the certificate chain in the PEM file `cert` verifies for `domain`.
    pub fn verify_file(&self, cert: &std::path::Path, domain: &str) -> Result<bool, TlsError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<_, _>>())
            .map_err(|e| TlsError::File {
                path: cert.display().to_string(),
                msg: e.to_string(),
            })?;
        Ok(self.verify(&chain, domain))
    }

    pub fn new(config: &Config) -> Result<CertVerifier, TlsError> {
        let provider = rustls::crypto::ring::default_provider();
        Ok(CertVerifier {
            anchors: load_anchors(config)?,
            algorithms: provider.signature_verification_algorithms,
        })
    }

    /// Whether `chain` (leaf first) is a valid certificate for `domain` under the trust
    /// anchors (RFC 6125 §6): a DNS-ID (including a `*.` wildcard) or an XmppAddr. SRV-IDs
    /// are not checked: no public CA issues them.
    pub fn verify(&self, chain: &[CertificateDer<'_>], domain: &str) -> bool {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return false;
        };
        let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else {
            return false;
        };
        let now = UnixTime::now();
        // serverAuth first: what public CAs issue; clientAuth for older private CAs.
        let trusted = [
            webpki::KeyUsage::server_auth(),
            webpki::KeyUsage::client_auth(),
        ]
        .iter()
        .any(|usage| {
            cert.verify_for_usage(
                self.algorithms.all,
                &self.anchors,
                intermediates,
                now,
                *usage,
                None,
                None,
            )
            .is_ok()
        });
        if !trusted {
            return false;
        }
        let dns_id = ServerName::try_from(domain)
            .is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok());
        dns_id
            || crate::sasl::external::xmpp_addrs(leaf)
                .iter()
                .any(|addr| addr.eq_ignore_ascii_case(domain))
    }
}
