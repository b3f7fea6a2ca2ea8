//! Secrets at rest (a rail's hot wallet key, the platform's signing keys): sealed with XChaCha20-Poly1305 under a 32-byte key
//! from `TURNPIKE_SECRETS_KEY`, bound to the row they belong to (tenant and method as associated
//! data), so a sealed value copied to another row does not open. The key and the plaintexts
//! never reach a log: [`SecretsKey`]'s `Debug` shows nothing.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// The environment variable that holds the key (64 hex digits, or 43 base64url characters).
pub const SECRETS_KEY_ENV: &str = "TURNPIKE_SECRETS_KEY";

/// Format tag of a sealed value (changes if the scheme does).
const SEALED_PREFIX: &str = "v1.";
const NONCE_LEN: usize = 24;

/// The key that seals secrets at rest.
#[derive(Clone)]
pub struct SecretsKey([u8; 32]);

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(..)")
    }
}

/// Why a key or a sealed value is unusable (the message quotes neither).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretsError {
    /// The key is not 32 bytes of hex or base64url.
    #[error("{SECRETS_KEY_ENV} must be 32 bytes: 64 hex digits or 43 base64url characters")]
    BadKey,
    /// The sealed value does not open with this key for this row.
    #[error("a sealed secret does not open with the configured {SECRETS_KEY_ENV}")]
    Unsealable,
    /// The operating system gave no randomness for a nonce.
    #[error("no randomness for sealing a secret")]
    NoRandomness,
}

impl SecretsKey {
    /// Parse the key from its text form.
    pub fn parse(text: &str) -> Result<Self, SecretsError> {
        let text = text.trim();
        let bytes = if text.len() == 64 {
            decode_hex(text).ok_or(SecretsError::BadKey)?
        } else {
            URL_SAFE_NO_PAD
                .decode(text.trim_end_matches('='))
                .map_err(|_| SecretsError::BadKey)?
        };
        let key: [u8; 32] = bytes.try_into().map_err(|_| SecretsError::BadKey)?;
        Ok(Self(key))
    }

    /// A fresh random key (for a server whose data lives only as long as it runs: the demo).
    pub fn generate() -> Result<Self, SecretsError> {
        let mut key = [0u8; 32];
        getrandom::getrandom(&mut key).map_err(|_| SecretsError::NoRandomness)?;
        Ok(Self(key))
    }

    /// Seal `plaintext` for the row named by `context`.
    pub fn seal(&self, plaintext: &[u8], context: &str) -> Result<String, SecretsError> {
        let cipher = XChaCha20Poly1305::new((&self.0).into());
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::getrandom(&mut nonce).map_err(|_| SecretsError::NoRandomness)?;
        let sealed = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| SecretsError::NoRandomness)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(format!("{SEALED_PREFIX}{}", URL_SAFE_NO_PAD.encode(out)))
    }

    /// Open a value [`SecretsKey::seal`]ed for `context`.
    pub fn open(&self, sealed: &str, context: &str) -> Result<Vec<u8>, SecretsError> {
        let bytes = sealed
            .strip_prefix(SEALED_PREFIX)
            .and_then(|b| URL_SAFE_NO_PAD.decode(b).ok())
            .filter(|b| b.len() > NONCE_LEN)
            .ok_or(SecretsError::Unsealable)?;
        let (nonce, body) = bytes.split_at(NONCE_LEN);
        XChaCha20Poly1305::new((&self.0).into())
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| SecretsError::Unsealable)
    }
}

/// Whether a stored value is in the sealed form (rows written before sealing was introduced hold
/// the plaintext: a base64url PKCS#8 key never starts with the sealed form's tag).
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(SEALED_PREFIX)
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretsKey {
        SecretsKey::parse(&"ab".repeat(32)).expect("key")
    }

    #[test]
    fn sealed_secrets_open_only_for_their_row_and_key() {
        let sealed = key().seal(b"0xsecret", "t1/evm").expect("seals");
        assert!(!sealed.contains("secret"));
        assert_eq!(key().open(&sealed, "t1/evm").expect("opens"), b"0xsecret");
        assert_eq!(key().open(&sealed, "t2/evm"), Err(SecretsError::Unsealable));
        let other = SecretsKey::parse(&"cd".repeat(32)).expect("key");
        assert_eq!(other.open(&sealed, "t1/evm"), Err(SecretsError::Unsealable));
        let again = key().seal(b"0xsecret", "t1/evm").expect("seals");
        assert_ne!(sealed, again, "fresh nonce each time");
    }

    #[test]
    fn keys_must_be_32_bytes() {
        assert!(SecretsKey::parse(&"ab".repeat(31)).is_err());
        assert!(SecretsKey::parse("not a key").is_err());
        assert!(SecretsKey::parse(&URL_SAFE_NO_PAD.encode([7u8; 32])).is_ok());
        assert_eq!(format!("{:?}", key()), "SecretsKey(..)");
    }
}
