//! SASL (RFC 6120 §6): the mechanisms, independent of the stream that carries them.

pub mod credentials;
pub(crate) mod external;
mod scram;
mod throttle;

use hmac::Mac;
use rand::distributions::Alphanumeric;
use rand::Rng;
use xmppd_storage::AccountStore;

use crate::config::SaslConfig;
use crate::tls::ChannelBindings;
use credentials::ScramHash;
use scram::ScramServer;
pub use throttle::AuthThrottle;

/// Every mechanism the server implements.
pub const KNOWN_MECHANISMS: &[&str] = &[
    "SCRAM-SHA-256-PLUS",
    "SCRAM-SHA-1-PLUS",
    "SCRAM-SHA-256",
    "SCRAM-SHA-1",
    "PLAIN",
    "EXTERNAL",
    "ANONYMOUS",
];

/// SASL failure conditions, RFC 6120 §6.5.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    Aborted,
    AccountDisabled,
    CredentialsExpired,
    EncryptionRequired,
    IncorrectEncoding,
    InvalidAuthzid,
    InvalidMechanism,
    MalformedRequest,
    MechanismTooWeak,
    NotAuthorized,
    TemporaryAuthFailure,
    /// A -PLUS mechanism with a channel-binding type this connection cannot give (for
    /// example `tls-unique`, which TLS 1.3 does not have).
    ChannelBindingUnavailable,
    /// The client said it supports channel binding but thinks we do not ("y"), while we
    /// offered -PLUS: a downgrade, or a client that could not use our types (RFC 5802 §6).
    ChannelBindingDowngrade,
}

impl Failure {
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Aborted => "aborted",
            Failure::AccountDisabled => "account-disabled",
            Failure::CredentialsExpired => "credentials-expired",
            Failure::EncryptionRequired => "encryption-required",
            Failure::IncorrectEncoding => "incorrect-encoding",
            Failure::InvalidAuthzid => "invalid-authzid",
            Failure::InvalidMechanism => "invalid-mechanism",
            Failure::MalformedRequest => "malformed-request",
            Failure::MechanismTooWeak => "mechanism-too-weak",
            Failure::NotAuthorized => "not-authorized",
            Failure::TemporaryAuthFailure => "temporary-auth-failure",
            Failure::ChannelBindingUnavailable | Failure::ChannelBindingDowngrade => {
                "not-authorized"
            }
        }
    }

    /// What went wrong, for the client's `<text/>` and the log, where the condition alone
    /// would mislead (a channel-binding mismatch is not a wrong password).
    pub fn text(self) -> Option<&'static str> {
        match self {
            Failure::ChannelBindingUnavailable => Some(
                "this channel-binding type is not available on this connection; \
                 use one from <sasl-channel-binding/> (tls-exporter, tls-server-end-point)",
            ),
            Failure::ChannelBindingDowngrade => Some(
                "channel binding was offered but not used (possible downgrade); \
                 use a -PLUS mechanism with an offered channel-binding type",
            ),
            _ => None,
        }
    }

    /// Whether this failure counts against the peer's address in the throttle.
    pub fn is_credential_failure(self) -> bool {
        matches!(self, Failure::NotAuthorized | Failure::InvalidAuthzid)
    }

    /// Whether it counts toward the failed attempts a stream may make (RFC 6120 §6.4.5).
    /// Channel-binding negotiation is not guessing: a client that tries -PLUS types in turn
    /// must still reach its fallback (poezio with slixmpp 1.8 tries tls-unique first).
    pub fn is_attempt(self) -> bool {
        !matches!(
            self,
            Failure::ChannelBindingUnavailable | Failure::ChannelBindingDowngrade
        )
    }
}

/// What to send after a client message.
#[derive(Debug)]
pub enum Step {
    Challenge(Vec<u8>),
    Success {
        username: String,
        additional: Option<Vec<u8>>,
    },
    Failure(Failure),
}

/// What a mechanism may know of the stream and the server.
pub struct SaslEnv<'a> {
    pub config: &'a SaslConfig,
    pub domain: &'a str,
    /// The stream is encrypted.
    pub secure: bool,
    pub bindings: Option<&'a ChannelBindings>,
    pub accounts: &'a dyn AccountStore,
    pub anonymous: bool,
    pub iterations: u32,
    /// Server secret that derives stable fake salts for unknown users.
    pub secret: &'a [u8],
}

impl<'a> SaslEnv<'a> {
    /// The nodeprep'd localpart for a SASL username, or not-authorized.
    fn normalise_username(&self, raw: &str) -> Result<String, Failure> {
        let jid = jid::BareJid::new(&format!("{raw}@{}", self.domain))
            .map_err(|_| Failure::NotAuthorized)?;
        let node = jid.node().ok_or(Failure::NotAuthorized)?;
        Ok(node.as_str().to_string())
    }

    /// RFC 6120 §6.3.8: an authzid must name the authenticated account itself.
    fn check_authzid(&self, username: &str, authzid: &str) -> Result<(), Failure> {
        let wanted = jid::BareJid::new(authzid).map_err(|_| Failure::InvalidAuthzid)?;
        match wanted.node() {
            Some(node) if node.as_str() == username && wanted.domain().as_str() == self.domain => {
                Ok(())
            }
            _ => Err(Failure::InvalidAuthzid),
        }
    }

    fn fake_salt(&self, username: &str) -> Vec<u8> {
        let mut mac =
            <hmac::Hmac<sha2::Sha256> as hmac::digest::KeyInit>::new_from_slice(self.secret)
                .expect("HMAC takes any key length");
        mac.update(username.as_bytes());
        mac.update(self.domain.as_bytes());
        mac.finalize().into_bytes()[..16].to_vec()
    }

    /// Whether a -PLUS mechanism is offered on this stream (RFC 5802 §6: then a client's "y"
    /// flag means someone stripped it on the way).
    fn plus_offered(&self) -> bool {
        self.offered().iter().any(|m| m.ends_with("-PLUS"))
    }

    fn channel_binding_available(&self) -> bool {
        self.bindings
            .is_some_and(|b| b.tls_exporter.is_some() || b.tls_server_end_point.is_some())
    }

    fn channel_binding(&self, cb_type: &str) -> Option<Vec<u8>> {
        let b = self.bindings?;
        match cb_type {
            "tls-exporter" => b.tls_exporter.clone(),
            "tls-server-end-point" => b.tls_server_end_point.clone(),
            _ => None,
        }
    }

    /// Channel-binding types usable on this stream (XEP-0440).
    pub fn channel_binding_types(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if let Some(b) = self.bindings {
            if b.tls_exporter.is_some() {
                out.push("tls-exporter");
            }
            if b.tls_server_end_point.is_some() {
                out.push("tls-server-end-point");
            }
        }
        out
    }

    /// The configured mechanisms whose conditions hold on this stream, in configured order.
    pub fn offered(&self) -> Vec<&'a str> {
        self.config
            .mechanisms
            .iter()
            .map(String::as_str)
            .filter(|m| self.usable(m))
            .collect()
    }

    fn usable(&self, mechanism: &str) -> bool {
        match mechanism {
            "SCRAM-SHA-256" | "SCRAM-SHA-1" => true,
            "SCRAM-SHA-256-PLUS" | "SCRAM-SHA-1-PLUS" => self.channel_binding_available(),
            // RFC 6120 §6.4.2 / §13.8: never offer PLAIN on an unencrypted stream.
            "PLAIN" => self.secure,
            "EXTERNAL" => self.bindings.is_some_and(|b| b.client_cert.is_some()),
            "ANONYMOUS" => self.anonymous,
            _ => false,
        }
    }
}

/// An exchange in progress.
pub enum Exchange {
    /// The mechanism needs its initial response, which the client did not send with `<auth/>`.
    AwaitingInitial(String),
    Scram(Box<ScramServer>),
}

/// The account an initial response tries to log in to, as far as the mechanism names it
/// (PLAIN's authcid, SCRAM's `n=`), lower-cased: the key of the per-account throttle. Only
/// a label for counting failures; authentication itself parses the message properly.
pub fn attempted_username(mechanism: &str, initial: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(initial).ok()?;
    let name = if mechanism == "PLAIN" {
        text.split('\0').nth(1)?.to_string()
    } else if mechanism.starts_with("SCRAM-") {
        // gs2-cb-flag "," [authzid] "," then "n=" saslname.
        let bare = text.splitn(3, ',').nth(2)?;
        let name = bare.split(',').find_map(|p| p.strip_prefix("n="))?;
        name.replace("=2C", ",").replace("=3D", "=")
    } else {
        return None;
    };
    (!name.is_empty()).then(|| name.to_lowercase())
}

/// Starts `mechanism` with the client's initial response, if any.
pub async fn begin(
    mechanism: &str,
    initial: Option<Vec<u8>>,
    env: &SaslEnv<'_>,
) -> (Step, Option<Exchange>) {
    let offered = env.offered();
    if !offered.contains(&mechanism) {
        // PLAIN on a plain-text stream is refused for encryption, other unknowns as invalid.
        let failure = if mechanism == "PLAIN" && !env.secure {
            Failure::EncryptionRequired
        } else {
            Failure::InvalidMechanism
        };
        return (Step::Failure(failure), None);
    }
    // SCRAM, PLAIN and EXTERNAL are client-first: ask for the initial response (empty
    // challenge, RFC 6120 §6.4.2) when it was left out. ANONYMOUS may carry trace data.
    let Some(data) = initial.or_else(|| (mechanism == "ANONYMOUS").then(Vec::new)) else {
        return (
            Step::Challenge(Vec::new()),
            Some(Exchange::AwaitingInitial(mechanism.to_string())),
        );
    };
    run_initial(mechanism, data, env).await
}

async fn run_initial(
    mechanism: &str,
    data: Vec<u8>,
    env: &SaslEnv<'_>,
) -> (Step, Option<Exchange>) {
    let scram = |hash, plus| (hash, plus);
    let (hash, plus) = match mechanism {
        "SCRAM-SHA-1" => scram(ScramHash::Sha1, false),
        "SCRAM-SHA-256" => scram(ScramHash::Sha256, false),
        "SCRAM-SHA-1-PLUS" => scram(ScramHash::Sha1, true),
        "SCRAM-SHA-256-PLUS" => scram(ScramHash::Sha256, true),
        "PLAIN" => return (plain(&data, env).await, None),
        "EXTERNAL" => return (external::authenticate(&data, env).await, None),
        "ANONYMOUS" => return (anonymous(), None),
        _ => return (Step::Failure(Failure::InvalidMechanism), None),
    };
    match ScramServer::start(hash, plus, &data, env).await {
        Ok((server, step)) => (step, Some(Exchange::Scram(Box::new(server)))),
        Err(f) => (Step::Failure(f), None),
    }
}

/// Feeds a client `<response/>` to an exchange.
pub async fn respond(
    exchange: Exchange,
    data: Vec<u8>,
    env: &SaslEnv<'_>,
) -> (Step, Option<Exchange>) {
    match exchange {
        Exchange::AwaitingInitial(mechanism) => run_initial(&mechanism, data, env).await,
        Exchange::Scram(server) => (server.finish(&data), None),
    }
}

/// PLAIN (RFC 4616): `authzid NUL authcid NUL passwd`.
async fn plain(data: &[u8], env: &SaslEnv<'_>) -> Step {
    let mut parts = data.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Step::Failure(Failure::MalformedRequest);
    };
    let (Ok(authzid), Ok(authcid), Ok(password)) = (
        std::str::from_utf8(authzid),
        std::str::from_utf8(authcid),
        std::str::from_utf8(password),
    ) else {
        return Step::Failure(Failure::MalformedRequest);
    };
    let username = match env.normalise_username(authcid) {
        Ok(u) => u,
        Err(f) => return Step::Failure(f),
    };
    if !authzid.is_empty() {
        if let Err(f) = env.check_authzid(&username, authzid) {
            return Step::Failure(f);
        }
    }
    let account = match env.accounts.get(&username, env.domain).await {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "account lookup failed during SASL");
            return Step::Failure(Failure::TemporaryAuthFailure);
        }
    };
    let password = password.to_string();
    // PBKDF2 is deliberately slow: keep it off the async workers. An unknown user costs the
    // same work, against a throwaway account, so timing does not tell who exists.
    let iterations = env.iterations;
    let ok = tokio::task::spawn_blocking(move || match account {
        Some(account) => credentials::verify_password(&account, &password),
        None => {
            let _ = ScramHash::Sha256.salted_password(password.as_bytes(), b"0000", iterations);
            false
        }
    })
    .await
    .unwrap_or(false);
    if ok {
        Step::Success {
            username,
            additional: None,
        }
    } else {
        Step::Failure(Failure::NotAuthorized)
    }
}

/// ANONYMOUS (RFC 4505): a random, unguessable username for this session only.
fn anonymous() -> Step {
    let username: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(16)
        .map(|c| char::from(c).to_ascii_lowercase())
        .collect();
    Step::Success {
        username,
        additional: None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use async_trait::async_trait;
    use std::sync::Mutex;
    use xmppd_storage::{Account, ScramKeys};

    /// An in-memory account store for mechanism tests.
    #[derive(Default)]
    pub struct MemAccounts(pub Mutex<Vec<Account>>);

    #[async_trait]
    impl AccountStore for MemAccounts {
        async fn create(&self, a: &Account) -> xmppd_storage::Result<bool> {
            self.0.lock().unwrap().push(a.clone());
            Ok(true)
        }
        async fn get(&self, u: &str, d: &str) -> xmppd_storage::Result<Option<Account>> {
            let all = self.0.lock().unwrap();
            Ok(all
                .iter()
                .find(|a| a.username == u && a.domain == d)
                .cloned())
        }
        async fn exists(&self, u: &str, d: &str) -> xmppd_storage::Result<bool> {
            Ok(self.get(u, d).await?.is_some())
        }
        async fn set_credentials(&self, _: &Account) -> xmppd_storage::Result<bool> {
            Ok(false)
        }
        async fn delete(&self, _: &str, _: &str) -> xmppd_storage::Result<bool> {
            Ok(false)
        }
        async fn list(&self, _: &str) -> xmppd_storage::Result<Vec<String>> {
            Ok(Vec::new())
        }
    }

    static DEFAULT_CONFIG: std::sync::LazyLock<SaslConfig> =
        std::sync::LazyLock::new(SaslConfig::default);

    pub struct TestEnv {
        pub accounts: MemAccounts,
    }

    impl TestEnv {
        pub async fn with_account(
            name: &str,
            hash: ScramHash,
            keys: ScramKeys,
            iterations: u32,
        ) -> Self {
            let mut account = Account {
                username: name.into(),
                domain: "example.org".into(),
                iterations,
                sha1: keys.clone(),
                sha256: keys.clone(),
            };
            match hash {
                ScramHash::Sha1 => account.sha1 = keys,
                ScramHash::Sha256 => account.sha256 = keys,
            }
            let accounts = MemAccounts::default();
            accounts.create(&account).await.unwrap();
            TestEnv { accounts }
        }

        pub fn env<'a>(&'a self, bindings: Option<&'a ChannelBindings>) -> SaslEnv<'a> {
            SaslEnv {
                config: &DEFAULT_CONFIG,
                domain: "example.org",
                secure: true,
                bindings,
                accounts: &self.accounts,
                anonymous: false,
                iterations: 4096,
                secret: b"test secret",
            }
        }
    }

    #[test]
    fn the_attempted_account_is_read_from_the_initial_response() {
        assert_eq!(
            attempted_username("PLAIN", b"\0Alice\0pw").as_deref(),
            Some("alice")
        );
        assert_eq!(
            attempted_username("SCRAM-SHA-1", b"n,,n=bob,r=abc").as_deref(),
            Some("bob")
        );
        assert_eq!(
            attempted_username("SCRAM-SHA-256-PLUS", b"p=tls-exporter,a=x,n=c=2Cd,r=1").as_deref(),
            Some("c,d")
        );
        assert_eq!(attempted_username("EXTERNAL", b""), None);
        assert_eq!(attempted_username("PLAIN", b"garbage"), None);
    }

    async fn plain_env() -> TestEnv {
        let accounts = MemAccounts::default();
        let account = credentials::new_account("alice", "example.org", "secret", 4096).unwrap();
        accounts.create(&account).await.unwrap();
        TestEnv { accounts }
    }

    #[tokio::test]
    async fn plain_accepts_right_password_only() {
        let t = plain_env().await;
        let env = t.env(None);
        let (step, _) = begin("PLAIN", Some(b"\0alice\0secret".to_vec()), &env).await;
        assert!(matches!(step, Step::Success { ref username, .. } if username == "alice"));
        let (step, _) = begin("PLAIN", Some(b"\0ALICE\0secret".to_vec()), &env).await;
        assert!(
            matches!(step, Step::Success { .. }),
            "usernames are nodeprep'd"
        );
        let (step, _) = begin("PLAIN", Some(b"\0alice\0wrong".to_vec()), &env).await;
        assert!(matches!(step, Step::Failure(Failure::NotAuthorized)));
        let (step, _) = begin("PLAIN", Some(b"\0bob\0secret".to_vec()), &env).await;
        assert!(matches!(step, Step::Failure(Failure::NotAuthorized)));
        let (step, _) = begin("PLAIN", Some(b"alice\0secret".to_vec()), &env).await;
        assert!(matches!(step, Step::Failure(Failure::MalformedRequest)));
        let (step, _) = begin(
            "PLAIN",
            Some(b"bob@example.org\0alice\0secret".to_vec()),
            &env,
        )
        .await;
        assert!(matches!(step, Step::Failure(Failure::InvalidAuthzid)));
    }

    #[tokio::test]
    async fn offers_depend_on_the_stream() {
        let t = plain_env().await;
        let mut env = t.env(None);
        env.secure = false;
        assert_eq!(env.offered(), vec!["SCRAM-SHA-256", "SCRAM-SHA-1"]);
        let (step, _) = begin("PLAIN", Some(b"\0alice\0secret".to_vec()), &env).await;
        assert!(matches!(step, Step::Failure(Failure::EncryptionRequired)));
        let (step, _) = begin("X-UNKNOWN", None, &env).await;
        assert!(matches!(step, Step::Failure(Failure::InvalidMechanism)));
        let cb = ChannelBindings {
            tls_exporter: Some(vec![1; 32]),
            ..Default::default()
        };
        let env = t.env(Some(&cb));
        assert_eq!(
            env.offered(),
            vec![
                "SCRAM-SHA-256-PLUS",
                "SCRAM-SHA-1-PLUS",
                "SCRAM-SHA-256",
                "SCRAM-SHA-1",
                "PLAIN"
            ]
        );
    }

    #[tokio::test]
    async fn missing_initial_response_gets_empty_challenge() {
        let t = plain_env().await;
        let env = t.env(None);
        let (step, exchange) = begin("PLAIN", None, &env).await;
        assert!(matches!(step, Step::Challenge(ref c) if c.is_empty()));
        let (step, _) = respond(exchange.unwrap(), b"\0alice\0secret".to_vec(), &env).await;
        assert!(matches!(step, Step::Success { .. }));
    }
}
