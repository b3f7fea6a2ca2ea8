//! Random identifiers and secrets, and the hash under which secrets are stored.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// `N` random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The OS generator failing is unrecoverable: issuing predictable ids or keys is worse.
    #[allow(clippy::expect_used)]
    getrandom::getrandom(&mut bytes).expect("the operating system's random generator failed");
    bytes
}

/// A new id: `prefix_` and 20 lowercase base32 characters (100 random bits).
pub fn new_id(prefix: &str) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let bytes = random_bytes::<20>();
    let mut out = String::with_capacity(prefix.len() + 21);
    out.push_str(prefix);
    out.push('_');
    for b in bytes {
        out.push(char::from(ALPHABET[usize::from(b & 31)]));
    }
    out
}

/// A new secret API key: `tp_sk_` and 43 base64url characters (256 random bits).
pub fn new_api_key() -> String {
    format!("tp_sk_{}", URL_SAFE_NO_PAD.encode(random_bytes::<32>()))
}

/// A new challenge-binding secret (256 random bits, base64url).
pub fn new_binding_secret() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<32>())
}

/// Hex SHA-256: how API keys are stored. They carry 256 random bits, so a fast hash is as
/// safe as a slow one and keeps authentication off the CPU budget.
pub fn hash_secret(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// A ledger id (u128, never zero) derived from `parts`: deterministic ids make retries
/// idempotent.
pub fn derived_u128(parts: &[&str]) -> u128 {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(bytes).max(1)
}

/// A random ledger id (never zero).
pub fn random_u128() -> u128 {
    u128::from_be_bytes(random_bytes::<16>()).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_their_prefix_and_differ() {
        let a = new_id("pay");
        let b = new_id("pay");
        assert!(a.starts_with("pay_") && a.len() == 24);
        assert_ne!(a, b);
    }

    #[test]
    fn api_keys_are_long_and_hash_stably() {
        let key = new_api_key();
        assert!(key.starts_with("tp_sk_") && key.len() == 49);
        assert_eq!(hash_secret(&key), hash_secret(&key));
        assert_ne!(hash_secret(&key), hash_secret(&new_api_key()));
    }

    #[test]
    fn derived_ids_separate_their_parts() {
        assert_ne!(derived_u128(&["ab", "c"]), derived_u128(&["a", "bc"]));
        assert_eq!(derived_u128(&["x"]), derived_u128(&["x"]));
    }
}
