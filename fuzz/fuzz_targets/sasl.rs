//! The server side of every SASL mechanism: an `<auth/>` payload and up to three responses
//! from the input, against an account store with one account; nothing may panic, and only
//! the right credentials may succeed (the fuzzer cannot know them).
#![no_main]

use std::sync::{LazyLock, Mutex};

use async_trait::async_trait;
use libfuzzer_sys::fuzz_target;
use xmppd_server::config::SaslConfig;
use xmppd_server::sasl::{self, credentials, Step};
use xmppd_server::tls::ChannelBindings;
use xmppd_storage::{Account, AccountStore};

struct OneAccount(Mutex<Account>);

#[async_trait]
impl AccountStore for OneAccount {
    async fn create(&self, _: &Account) -> xmppd_storage::Result<bool> {
        Ok(false)
    }
    async fn get(&self, u: &str, d: &str) -> xmppd_storage::Result<Option<Account>> {
        let account = self.0.lock().unwrap();
        Ok((account.username == u && account.domain == d).then(|| account.clone()))
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

static ACCOUNTS: LazyLock<OneAccount> = LazyLock::new(|| {
    let account =
        credentials::new_account("alice", "localhost", "a password nobody guesses", 4096)
            .unwrap();
    OneAccount(Mutex::new(account))
});
static CONFIG: LazyLock<SaslConfig> = LazyLock::new(|| {
    let mut config = SaslConfig::default();
    config.anonymous_domains = vec!["localhost".into()];
    config
});
static BINDINGS: LazyLock<ChannelBindings> = LazyLock::new(|| ChannelBindings {
    tls_exporter: Some(vec![7; 32]),
    tls_server_end_point: Some(vec![8; 32]),
    ..ChannelBindings::default()
});
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
});

const MECHANISMS: [&str; 8] = [
    "SCRAM-SHA-1",
    "SCRAM-SHA-256",
    "SCRAM-SHA-1-PLUS",
    "SCRAM-SHA-256-PLUS",
    "PLAIN",
    "EXTERNAL",
    "ANONYMOUS",
    "NOPE",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let mechanism = MECHANISMS[pick as usize % MECHANISMS.len()];
    let mut messages = rest.split(|&b| b == 0xff);
    let env = sasl::SaslEnv {
        config: &CONFIG,
        domain: "localhost",
        secure: pick & 0x80 != 0,
        bindings: (pick & 0x40 != 0).then_some(&*BINDINGS),
        accounts: &*ACCOUNTS,
        anonymous: pick & 0x20 != 0,
        iterations: 4096,
        secret: b"fuzzing secret",
    };
    RUNTIME.block_on(async {
        let initial = messages.next().map(|m| m.to_vec());
        let (mut step, mut exchange) = sasl::begin(mechanism, initial, &env).await;
        for _ in 0..3 {
            match (step, exchange.take()) {
                (Step::Challenge(_), Some(ex)) => {
                    let next = messages.next().unwrap_or_default().to_vec();
                    (step, exchange) = sasl::respond(ex, next, &env).await;
                }
                (Step::Success { username, .. }, _) => {
                    // Without the password only ANONYMOUS may get here.
                    assert!(mechanism == "ANONYMOUS", "{mechanism} let {username} in");
                    return;
                }
                _ => return,
            }
        }
    });
});
