//! The client side of SCRAM (RFC 5802) for scripted clients: the tests' own, so they can
//! drive every channel-binding case and any transport.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};

#[derive(Clone, Copy)]
pub enum Hash {
    Sha1,
    Sha256,
}

impl Hash {
    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha1 => {
                let mut m = <Hmac<sha1::Sha1> as Mac>::new_from_slice(key).unwrap();
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
            Hash::Sha256 => {
                let mut m = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).unwrap();
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        use sha1::Digest;
        match self {
            Hash::Sha1 => sha1::Sha1::digest(data).to_vec(),
            Hash::Sha256 => sha2::Sha256::digest(data).to_vec(),
        }
    }

    fn salted(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            Hash::Sha1 => {
                let mut out = [0u8; 20];
                pbkdf2::pbkdf2_hmac::<sha1::Sha1>(password, salt, iterations, &mut out);
                out.to_vec()
            }
            Hash::Sha256 => {
                let mut out = [0u8; 32];
                pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password, salt, iterations, &mut out);
                out.to_vec()
            }
        }
    }
}

/// One SCRAM exchange as the client.
pub struct Scram {
    hash: Hash,
    gs2: String,
    first_bare: String,
    nonce: &'static str,
}

impl Scram {
    pub fn new(hash: Hash, user: &str, gs2: &str) -> Self {
        let nonce = "fyko+d2lbbFgONRv9qkxdawL";
        Scram {
            hash,
            gs2: gs2.to_string(),
            first_bare: format!("n={user},r={nonce}"),
            nonce,
        }
    }

    /// The client-first-message, base64 (the `<auth/>` text).
    pub fn first(&self) -> String {
        B64.encode(format!("{}{}", self.gs2, self.first_bare))
    }

    /// The client-final-message (base64, the `<response/>` text) for the server's challenge
    /// (base64), and the server-final-message a server that knows the password sends.
    pub fn answer(&self, challenge: &str, password: &str, cb_data: &[u8]) -> (String, String) {
        let hash = self.hash;
        let server_first = String::from_utf8(B64.decode(challenge.trim()).unwrap()).unwrap();
        let mut nonce = "";
        let mut salt = Vec::new();
        let mut iterations = 0;
        for part in server_first.split(',') {
            match part.split_at(2) {
                ("r=", v) => nonce = v,
                ("s=", v) => salt = B64.decode(v).unwrap(),
                ("i=", v) => iterations = v.parse().unwrap(),
                _ => {}
            }
        }
        assert!(nonce.starts_with(self.nonce));
        assert!(iterations >= 4096);
        let mut cbind = self.gs2.as_bytes().to_vec();
        cbind.extend_from_slice(cb_data);
        let without_proof = format!("c={},r={nonce}", B64.encode(&cbind));
        let auth_message = format!("{},{server_first},{without_proof}", self.first_bare);
        let salted = hash.salted(password.as_bytes(), &salt, iterations);
        let client_key = hash.hmac(&salted, b"Client Key");
        let stored_key = hash.hash(&client_key);
        let signature = hash.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let final_msg = B64.encode(format!("{without_proof},p={}", B64.encode(proof)));
        // The server proves it knows the password too (RFC 5802 §3, ServerSignature).
        let server_key = hash.hmac(&salted, b"Server Key");
        let verifier = format!(
            "v={}",
            B64.encode(hash.hmac(&server_key, auth_message.as_bytes()))
        );
        (final_msg, verifier)
    }
}

/// The text of `<success/>`, decoded.
pub fn success_text(success: &str) -> String {
    String::from_utf8(B64.decode(success.trim()).unwrap()).unwrap()
}
