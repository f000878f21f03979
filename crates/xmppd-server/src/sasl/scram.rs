//! Server side of SCRAM (RFC 5802, RFC 7677) with channel binding (RFC 5929, RFC 9266).
//!
//! Written by hand: the `sasl` crate's server side has no -PLUS channel-binding checks and no
//! way to answer for unknown users without revealing that they are unknown.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::distributions::Alphanumeric;
use rand::Rng;
use subtle::ConstantTimeEq;
use xmppd_storage::ScramKeys;

use super::credentials::ScramHash;
use super::{Failure, SaslEnv, Step};

/// An exchange after the client-first message.
pub struct ScramServer {
    hash: ScramHash,
    username: String,
    gs2_header: String,
    cb_data: Vec<u8>,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    /// `None` when the account does not exist: the exchange runs to the end with a fake salt
    /// and then fails, so that the reply does not tell which usernames exist.
    keys: Option<ScramKeys>,
}

/// RFC 5802 §5.1: `=2C` and `=3D` are the only escapes in a saslname.
fn decode_saslname(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('=') {
        out.push_str(&rest[..pos]);
        match rest.get(pos + 1..pos + 3) {
            Some("2C") => out.push(','),
            Some("3D") => out.push('='),
            _ => return None,
        }
        rest = &rest[pos + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// The GS2 header: channel-binding flag and optional authzid (RFC 5802 §7).
struct Gs2<'a> {
    flag: &'a str,
    authzid: Option<String>,
    header_len: usize,
}

fn parse_gs2(msg: &str) -> Result<Gs2<'_>, Failure> {
    let mut parts = msg.splitn(3, ',');
    let flag = parts.next().ok_or(Failure::MalformedRequest)?;
    let authz = parts.next().ok_or(Failure::MalformedRequest)?;
    if parts.next().is_none() {
        return Err(Failure::MalformedRequest);
    }
    let authzid = match authz {
        "" => None,
        a => Some(
            a.strip_prefix("a=")
                .and_then(decode_saslname)
                .ok_or(Failure::MalformedRequest)?,
        ),
    };
    Ok(Gs2 {
        flag,
        authzid,
        header_len: flag.len() + authz.len() + 2,
    })
}

/// Value of attribute `key` in a SCRAM message part `k=v`.
fn attr(part: Option<&str>, key: char) -> Result<&str, Failure> {
    part.and_then(|p| p.strip_prefix(key))
        .and_then(|p| p.strip_prefix('='))
        .ok_or(Failure::MalformedRequest)
}

impl ScramServer {
    /// Handles the client-first message; returns the server-first challenge.
    pub async fn start(
        hash: ScramHash,
        plus: bool,
        msg: &[u8],
        env: &SaslEnv<'_>,
    ) -> Result<(ScramServer, Step), Failure> {
        let nonce: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(24)
            .map(char::from)
            .collect();
        let msg = std::str::from_utf8(msg).map_err(|_| Failure::MalformedRequest)?;
        let gs2 = parse_gs2(msg)?;
        let cb_data = check_channel_binding(gs2.flag, plus, env)?;
        let bare = &msg[gs2.header_len..];
        let mut parts = bare.split(',');
        let first = parts.next();
        if first.is_some_and(|p| p.starts_with("m=")) {
            // RFC 5802 §5.1: mandatory extensions we do not know must fail the exchange.
            return Err(Failure::MalformedRequest);
        }
        let raw_user = decode_saslname(attr(first, 'n')?).ok_or(Failure::MalformedRequest)?;
        let client_nonce = attr(parts.next(), 'r')?;
        if client_nonce.is_empty() || client_nonce.contains(',') {
            return Err(Failure::MalformedRequest);
        }
        let username = env.normalise_username(&raw_user)?;
        if let Some(authzid) = &gs2.authzid {
            env.check_authzid(&username, authzid)?;
        }
        let account = env.accounts.get(&username, env.domain).await.map_err(|e| {
            tracing::error!(error = %e, "account lookup failed during SASL");
            Failure::TemporaryAuthFailure
        })?;
        let (salt, iterations, keys) = match account {
            Some(account) => {
                let keys = hash.keys_of(&account).clone();
                (keys.salt.clone(), account.iterations, Some(keys))
            }
            None => (env.fake_salt(&username), env.iterations, None),
        };
        let mut server = ScramServer {
            hash,
            username,
            gs2_header: msg[..gs2.header_len].to_string(),
            cb_data,
            client_first_bare: bare.to_string(),
            server_first: String::new(),
            nonce: format!("{client_nonce}{nonce}"),
            keys,
        };
        server.server_first = format!(
            "r={},s={},i={}",
            server.nonce,
            B64.encode(&salt),
            iterations
        );
        let challenge = server.server_first.clone().into_bytes();
        Ok((server, Step::Challenge(challenge)))
    }

    /// Handles the client-final message; on success returns the server-final message.
    pub fn finish(self, msg: &[u8]) -> Step {
        match self.verify(msg) {
            Ok(server_final) => Step::Success {
                username: self.username,
                additional: Some(server_final.into_bytes()),
            },
            Err(f) => Step::Failure(f),
        }
    }

    fn verify(&self, msg: &[u8]) -> Result<String, Failure> {
        let msg = std::str::from_utf8(msg).map_err(|_| Failure::MalformedRequest)?;
        let (without_proof, proof) = msg.rsplit_once(",p=").ok_or(Failure::MalformedRequest)?;
        let mut parts = without_proof.split(',');
        let cbind = B64
            .decode(attr(parts.next(), 'c')?)
            .map_err(|_| Failure::IncorrectEncoding)?;
        let nonce = attr(parts.next(), 'r')?;
        let proof = B64.decode(proof).map_err(|_| Failure::IncorrectEncoding)?;
        let mut expected_cbind = self.gs2_header.as_bytes().to_vec();
        expected_cbind.extend_from_slice(&self.cb_data);
        if nonce != self.nonce {
            return Err(Failure::MalformedRequest);
        }
        if !bool::from(cbind.ct_eq(&expected_cbind)) {
            return Err(Failure::NotAuthorized);
        }
        let Some(keys) = &self.keys else {
            return Err(Failure::NotAuthorized);
        };
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let signature = self.hash.hmac(&keys.stored_key, &[auth_message.as_bytes()]);
        if proof.len() != signature.len() {
            return Err(Failure::NotAuthorized);
        }
        let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
        if !bool::from(self.hash.hash(&client_key).ct_eq(&keys.stored_key)) {
            return Err(Failure::NotAuthorized);
        }
        let server_signature = self.hash.hmac(&keys.server_key, &[auth_message.as_bytes()]);
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

/// Checks the GS2 channel-binding flag against the mechanism and the connection; returns the
/// channel-binding data the client must echo.
fn check_channel_binding(flag: &str, plus: bool, env: &SaslEnv<'_>) -> Result<Vec<u8>, Failure> {
    match (flag, plus) {
        ("n", false) => Ok(Vec::new()),
        // RFC 5802 §6: "y" means the client thinks we do not support channel binding. If we
        // offered -PLUS on this stream, someone removed it on the way: fail.
        ("y", false) if env.plus_offered() => Err(Failure::ChannelBindingDowngrade),
        ("y", false) => Ok(Vec::new()),
        (flag, true) => {
            let cb_type = flag.strip_prefix("p=").ok_or(Failure::MalformedRequest)?;
            env.channel_binding(cb_type)
                .ok_or(Failure::ChannelBindingUnavailable)
        }
        _ => Err(Failure::MalformedRequest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sasl::tests::TestEnv;

    #[test]
    fn saslname_decoding() {
        assert_eq!(decode_saslname("a=2Cb=3Dc").as_deref(), Some("a,b=c"));
        assert_eq!(decode_saslname("a=2"), None);
        assert_eq!(decode_saslname("a=41"), None);
    }

    /// Runs the RFC's exchange with our server nonce replaced by the RFC's.
    async fn rfc_exchange(
        hash: ScramHash,
        salt_b64: &str,
        client_first: &str,
        server_nonce: &str,
        client_final: &str,
    ) -> Step {
        let salt = B64.decode(salt_b64).unwrap();
        let salted = hash.salted_password(b"pencil", &salt, 4096);
        let t = TestEnv::with_account("user", hash, hash.keys(&salted, salt), 4096).await;
        let env = t.env(None);
        let (mut server, _) = ScramServer::start(hash, false, client_first.as_bytes(), &env)
            .await
            .unwrap();
        let client_nonce = client_first.rsplit_once("r=").unwrap().1;
        server.nonce = format!("{client_nonce}{server_nonce}");
        server.server_first = format!("r={},s={},i=4096", server.nonce, salt_b64);
        server.finish(client_final.as_bytes())
    }

    #[tokio::test]
    async fn rfc5802_sha1_vector() {
        let step = rfc_exchange(
            ScramHash::Sha1,
            "QSXCR+Q6sek8bf92",
            "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
            "3rfcNHYJY1ZVvWVs7j",
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
        )
        .await;
        match step {
            Step::Success { additional, .. } => {
                assert_eq!(additional.unwrap(), b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn rfc7677_sha256_vector() {
        let step = rfc_exchange(
            ScramHash::Sha256,
            "W22ZaJ0SNY7soEsUEjb6gQ==",
            "n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        )
        .await;
        match step {
            Step::Success { additional, .. } => assert_eq!(
                additional.unwrap(),
                b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
            ),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn wrong_proof_fails() {
        let step = rfc_exchange(
            ScramHash::Sha1,
            "QSXCR+Q6sek8bf92",
            "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
            "3rfcNHYJY1ZVvWVs7j",
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=AAAAv3Bz2T0CJGbJQyF0X+HI4Ts=",
        )
        .await;
        assert!(matches!(step, Step::Failure(Failure::NotAuthorized)));
    }

    #[tokio::test]
    async fn channel_binding_rules() {
        let t = TestEnv::with_account(
            "user",
            ScramHash::Sha1,
            ScramHash::Sha1.keys(b"x", vec![1]),
            4096,
        )
        .await;
        let cb = crate::tls::ChannelBindings {
            tls_exporter: Some(vec![7; 32]),
            tls_server_end_point: Some(vec![8; 32]),
            client_cert: None,
            peer_chain: Vec::new(),
        };
        let env = t.env(Some(&cb));
        let start = |flag: &'static str, plus| {
            let msg = format!("{flag},,n=user,r=abc");
            let env = &env;
            async move {
                ScramServer::start(ScramHash::Sha1, plus, msg.as_bytes(), env)
                    .await
                    .map(|(s, _)| s)
            }
        };
        // Downgrade detected: the client says "y" but we offer -PLUS on this stream.
        assert!(matches!(
            start("y", false).await,
            Err(Failure::ChannelBindingDowngrade)
        ));
        assert!(start("n", false).await.is_ok());
        let s = start("p=tls-exporter", true).await.ok().unwrap();
        assert_eq!(s.cb_data, vec![7; 32]);
        let s = start("p=tls-server-end-point", true).await.ok().unwrap();
        assert_eq!(s.cb_data, vec![8; 32]);
        assert!(matches!(
            start("p=tls-unique", true).await,
            Err(Failure::ChannelBindingUnavailable)
        ));
        assert!(matches!(
            start("n", true).await,
            Err(Failure::MalformedRequest)
        ));
        let env_plain = t.env(None);
        let r = ScramServer::start(ScramHash::Sha1, false, b"y,,n=user,r=abc", &env_plain).await;
        assert!(r.is_ok(), "y is fine when we offer no channel binding");
    }

    #[tokio::test]
    async fn unknown_user_gets_a_challenge_then_fails() {
        let t = TestEnv::with_account(
            "user",
            ScramHash::Sha1,
            ScramHash::Sha1.keys(b"x", vec![1]),
            4096,
        )
        .await;
        let env = t.env(None);
        let (server, step) = ScramServer::start(ScramHash::Sha1, false, b"n,,n=ghost,r=abc", &env)
            .await
            .ok()
            .unwrap();
        assert!(matches!(step, Step::Challenge(_)));
        let fin = format!("c=biws,r={},p=AAAA", server.nonce);
        assert!(matches!(
            server.finish(fin.as_bytes()),
            Step::Failure(Failure::NotAuthorized)
        ));
        let r = ScramServer::start(ScramHash::Sha1, false, b"n,,m=ext,n=user,r=abc", &env).await;
        assert!(matches!(r, Err(Failure::MalformedRequest)));
        let r = ScramServer::start(ScramHash::Sha1, false, b"n,a=other@x,n=user,r=abc", &env).await;
        assert!(matches!(r, Err(Failure::InvalidAuthzid)));
    }
}
