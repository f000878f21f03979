//! Client side of SASL SCRAM-SHA-1 (RFC 5802) without channel binding (gs2 header `n,,`).
//!
//! PBKDF2 dominates a SCRAM login's client cost. Every bench account has the same password,
//! so the derived keys depend only on (salt, iterations): [`KeyCache`] computes them once per
//! pair and the generator stays cheap next to the server it measures.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::{Digest, Sha1};

type HmacSha1 = Hmac<Sha1>;
const KEY_LEN: usize = 20;
/// Refuse absurd iteration counts rather than spin for minutes on a hostile or broken server.
const MAX_ITERATIONS: u32 = 1_000_000;

#[derive(Debug, PartialEq, Eq)]
pub enum ScramError {
    Malformed(&'static str),
    NonceMismatch,
    ServerError(String),
    BadServerSignature,
}

impl std::fmt::Display for ScramError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScramError::Malformed(what) => write!(f, "malformed SCRAM message: {what}"),
            ScramError::NonceMismatch => write!(f, "server nonce does not extend ours"),
            ScramError::ServerError(e) => write!(f, "server error {e}"),
            ScramError::BadServerSignature => write!(f, "server signature mismatch"),
        }
    }
}

#[derive(Clone, Copy)]
struct Keys {
    client_key: [u8; KEY_LEN],
    stored_key: [u8; KEY_LEN],
    server_key: [u8; KEY_LEN],
}

/// Keys derived from the shared password, per (salt, iterations).
pub struct KeyCache {
    password: String,
    keys: Mutex<HashMap<(Vec<u8>, u32), Keys>>,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

impl KeyCache {
    pub fn new(password: &str) -> Self {
        KeyCache {
            password: password.to_owned(),
            keys: Mutex::new(HashMap::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn keys(&self, salt: &[u8], iterations: u32) -> Keys {
        let key = (salt.to_vec(), iterations);
        if let Some(k) = self.keys.lock().unwrap().get(&key) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return *k;
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        // Computed outside the lock: two tasks may race on the same salt, which costs one
        // extra derivation but never blocks the others.
        let mut salted = [0u8; KEY_LEN];
        pbkdf2::pbkdf2_hmac::<Sha1>(self.password.as_bytes(), salt, iterations, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        let keys = Keys {
            client_key,
            stored_key: Sha1::digest(client_key).into(),
            server_key: hmac(&salted, b"Server Key"),
        };
        self.keys.lock().unwrap().insert(key, keys);
        keys
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; KEY_LEN] {
    let mut mac = HmacSha1::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// One SCRAM-SHA-1 exchange.
pub struct ScramClient {
    client_first_bare: String,
    cnonce: String,
    /// AuthMessage and ServerKey, kept to check the server's final signature.
    expected_server_signature: Option<[u8; KEY_LEN]>,
}

impl ScramClient {
    pub fn new(username: &str, cnonce: &str) -> Self {
        let user = username.replace('=', "=3D").replace(',', "=2C");
        ScramClient {
            client_first_bare: format!("n={user},r={cnonce}"),
            cnonce: cnonce.to_owned(),
            expected_server_signature: None,
        }
    }

    /// A random printable nonce (base64 of 18 random bytes: no commas).
    pub fn random_nonce() -> String {
        B64.encode(rand::random::<[u8; 18]>())
    }

    /// client-first-message, gs2 header `n,,` (no channel binding, no authzid).
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// Takes server-first-message and returns client-final-message.
    pub fn client_final(
        &mut self,
        server_first: &[u8],
        cache: &KeyCache,
    ) -> Result<String, ScramError> {
        let server_first =
            std::str::from_utf8(server_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for part in server_first.split(',') {
            match part.split_at_checked(2) {
                Some(("r=", v)) => nonce = Some(v),
                Some(("s=", v)) => salt = Some(v),
                Some(("i=", v)) => iterations = v.parse::<u32>().ok(),
                Some(("e=", v)) => return Err(ScramError::ServerError(v.to_owned())),
                _ => {}
            }
        }
        let nonce = nonce.ok_or(ScramError::Malformed("no nonce"))?;
        let salt = B64
            .decode(salt.ok_or(ScramError::Malformed("no salt"))?)
            .map_err(|_| ScramError::Malformed("salt is not base64"))?;
        let iterations = iterations.ok_or(ScramError::Malformed("no iteration count"))?;
        if iterations == 0 || iterations > MAX_ITERATIONS {
            return Err(ScramError::Malformed("iteration count out of range"));
        }
        if !nonce.starts_with(&self.cnonce) || nonce.len() == self.cnonce.len() {
            return Err(ScramError::NonceMismatch);
        }
        let keys = cache.keys(&salt, iterations);
        // c=biws is base64("n,,"): the gs2 header repeated, as RFC 5802 §7 requires.
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let signature = hmac(&keys.stored_key, auth_message.as_bytes());
        let mut proof = keys.client_key;
        for (p, s) in proof.iter_mut().zip(signature) {
            *p ^= s;
        }
        self.expected_server_signature = Some(hmac(&keys.server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks server-final-message (`v=…`), from `<success>` or a last challenge.
    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let text =
            std::str::from_utf8(server_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        if let Some(e) = text.strip_prefix("e=") {
            return Err(ScramError::ServerError(e.to_owned()));
        }
        let v = text
            .split(',')
            .find_map(|p| p.strip_prefix("v="))
            .ok_or(ScramError::Malformed("no verifier"))?;
        let v = B64
            .decode(v)
            .map_err(|_| ScramError::Malformed("verifier is not base64"))?;
        match self.expected_server_signature {
            Some(expected) if v == expected => Ok(()),
            _ => Err(ScramError::BadServerSignature),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5802 §5: user "user", password "pencil".
    #[test]
    fn rfc5802_example() {
        let cache = KeyCache::new("pencil");
        let mut client = ScramClient::new("user", "fyko+d2lbbFgONRv9qkxdawL");
        assert_eq!(
            client.client_first(),
            "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL"
        );
        let server_first =
            b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096";
        let client_final = client.client_final(server_first, &cache).unwrap();
        assert_eq!(
            client_final,
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
        );
        client
            .verify_server_final(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=")
            .unwrap();
        assert_eq!(
            client.verify_server_final(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            Err(ScramError::BadServerSignature)
        );
    }

    #[test]
    fn cache_derives_once_per_salt() {
        let cache = KeyCache::new("pencil");
        for _ in 0..3 {
            let mut c = ScramClient::new("user", "abc");
            c.client_final(b"r=abcdef,s=QSXCR+Q6sek8bf92,i=16", &cache)
                .unwrap();
        }
        assert_eq!(cache.misses.load(Ordering::Relaxed), 1);
        assert_eq!(cache.hits.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn rejects_bad_server_first() {
        let cache = KeyCache::new("p");
        let mut c = ScramClient::new("u", "abc");
        assert_eq!(
            c.client_final(b"r=xyz,s=QQ==,i=4096", &cache),
            Err(ScramError::NonceMismatch)
        );
        assert_eq!(
            c.client_final(b"r=abcd,s=QQ==", &cache),
            Err(ScramError::Malformed("no iteration count"))
        );
        assert!(matches!(
            c.client_final(b"e=other-error", &cache),
            Err(ScramError::ServerError(_))
        ));
    }

    #[test]
    fn escapes_username() {
        assert_eq!(
            ScramClient::new("a=b,c", "n").client_first(),
            "n,,n=a=3Db=2Cc,r=n"
        );
    }
}
