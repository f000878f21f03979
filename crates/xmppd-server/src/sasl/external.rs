//! SASL EXTERNAL with a client certificate, XEP-0178 §3.
//!
//! rustls has already verified the certificate chain against `tls.client_ca`; here the
//! identity is taken from the certificate's `id-on-xmppAddr` subjectAltNames.

use super::{Failure, SaslEnv, Step};

/// id-on-xmppAddr, RFC 6120 §13.7.1.4.
const XMPP_ADDR_OID: &str = "1.3.6.1.5.5.7.8.5";

/// The xmppAddr identities of a DER certificate.
pub fn xmpp_addrs(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::OtherName(oid, value)
                if oid.to_id_string() == XMPP_ADDR_OID =>
            {
                utf8_string(value)
            }
            _ => None,
        })
        .collect()
}

/// Reads a DER `UTF8String`, possibly wrapped in the `[0] EXPLICIT` tag of an OtherName.
fn utf8_string(mut der: &[u8]) -> Option<String> {
    fn header(der: &[u8]) -> Option<(u8, usize, usize)> {
        let tag = *der.first()?;
        let first = *der.get(1)? as usize;
        if first < 0x80 {
            return Some((tag, 2, first));
        }
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let len = der
            .get(2..2 + n)?
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize);
        Some((tag, 2 + n, len))
    }
    loop {
        let (tag, start, len) = header(der)?;
        let body = der.get(start..start + len)?;
        match tag {
            0xa0 => der = body,
            0x0c => return String::from_utf8(body.to_vec()).ok(),
            _ => return None,
        }
    }
}

pub async fn authenticate(data: &[u8], env: &SaslEnv<'_>) -> Step {
    let Some(cert) = env.bindings.and_then(|b| b.client_cert.as_ref()) else {
        return Step::Failure(Failure::NotAuthorized);
    };
    let Ok(authzid) = std::str::from_utf8(data) else {
        return Step::Failure(Failure::MalformedRequest);
    };
    // Identities in the certificate that are accounts of this domain.
    let local: Vec<(String, String)> = xmpp_addrs(cert)
        .iter()
        .filter_map(|a| jid::BareJid::new(a).ok())
        .filter(|j| j.domain().as_str() == env.domain)
        .filter_map(|j| j.node().map(|n| (n.as_str().to_string(), j.to_string())))
        .collect();
    // XEP-0178 §3: with no authzid the certificate must name exactly one identity; with one,
    // the authzid must be among those the certificate names.
    let username = if authzid.is_empty() || authzid == "=" {
        match local.as_slice() {
            [(user, _)] => user.clone(),
            [] => return Step::Failure(Failure::NotAuthorized),
            _ => return Step::Failure(Failure::InvalidAuthzid),
        }
    } else {
        let Ok(wanted) = jid::BareJid::new(authzid) else {
            return Step::Failure(Failure::InvalidAuthzid);
        };
        match local.iter().find(|(_, j)| *j == wanted.as_str()) {
            Some((user, _)) => user.clone(),
            None => return Step::Failure(Failure::InvalidAuthzid),
        }
    };
    match env.accounts.exists(&username, env.domain).await {
        Ok(true) => Step::Success {
            username,
            additional: None,
        },
        Ok(false) => Step::Failure(Failure::NotAuthorized),
        Err(e) => {
            tracing::error!(error = %e, "account lookup failed during SASL");
            Step::Failure(Failure::TemporaryAuthFailure)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_xmpp_addr_from_generated_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["client".to_string()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::OtherName((
            vec![1, 3, 6, 1, 5, 5, 7, 8, 5],
            rcgen::OtherNameValue::Utf8String("alice@example.org".into()),
        )));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(xmpp_addrs(cert.der()), vec!["alice@example.org"]);
    }

    #[test]
    fn der_reader_rejects_garbage() {
        assert_eq!(
            utf8_string(&[0x0c, 0x02, b'h', b'i']).as_deref(),
            Some("hi")
        );
        assert_eq!(
            utf8_string(&[0xa0, 0x04, 0x0c, 0x02, b'h', b'i']).as_deref(),
            Some("hi")
        );
        assert_eq!(utf8_string(&[0x0c, 0x05, b'h']), None);
        assert_eq!(utf8_string(&[0x0c, 0x85, 1, 2, 3, 4, 5]), None);
        assert_eq!(utf8_string(&[]), None);
    }
}
