//! Certificates per domain, chosen by SNI (RFC 6120 §13.7.2, XEP-0368).

mod common;

use std::sync::Arc;

use common::{Raw, TestServer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn each_domain_gets_its_own_certificate() {
    let server = TestServer::start_with(|c| c.server.domains.push("other.test".into())).await;
    // localhost has the configured CA-signed certificate (Raw verifies it against the CA).
    let mut raw = Raw::connect_tls(server.direct_tls, false).await;
    raw.open().await;

    // other.test got a self-signed one generated on first start; trust exactly that one.
    let generated = server.data_dir().join("certs/other.test.crt");
    let cert = CertificateDer::from_pem_file(&generated).expect("generated certificate");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(server.direct_tls)
        .await
        .unwrap();
    let mut tls = connector
        .connect("other.test".try_into().unwrap(), tcp)
        .await
        .expect("other.test presents its own certificate");
    tls.write_all(common::header("other.test").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tls.read(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.contains("from='other.test'"), "{text}");

    // The localhost CA does not vouch for other.test: a client verifying with it refuses.
    let tcp = tokio::net::TcpStream::connect(server.direct_tls)
        .await
        .unwrap();
    let refused = common::tls_connector(false)
        .connect("other.test".try_into().unwrap(), tcp)
        .await;
    assert!(refused.is_err());
    server.stop().await;
}
