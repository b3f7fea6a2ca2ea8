//! Challenge binding (`draft-httpauth-payment-00` §5.1.3, digest §1.3): the challenge `id` is
//! `base64url(HMAC-SHA256(secret, realm|method|intent|request|expires|digest|opaque))`, seven
//! positional slots with absent optional fields as empty strings. A non-default credential
//! header (the reference SDKs' `Payment-Authorization` extension) goes in a slot before `opaque`.
//!
//! Secrets are at least 32 bytes, never printed (`Debug` is redacted), and compared in constant
//! time. A [`BindingKeyring`] verifies against the current and the previous secret so that
//! challenges issued before a rotation stay valid until they expire.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::limits::BINDING_SECRET_LEN_MIN;

type HmacSha256 = Hmac<Sha256>;

/// Why a binding secret was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    /// Shorter than [`BINDING_SECRET_LEN_MIN`] bytes.
    #[error("binding secret must be at least {BINDING_SECRET_LEN_MIN} bytes, got {0}")]
    SecretTooShort(usize),
}

/// The fields a challenge id binds, borrowed from a challenge or a credential's echo.
/// `request` and `opaque` are the base64url strings exactly as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingInput<'a> {
    /// Slot 0: `realm`.
    pub realm: &'a str,
    /// Slot 1: `method`.
    pub method: &'a str,
    /// Slot 2: `intent`.
    pub intent: &'a str,
    /// Slot 3: `request`, base64url of its JCS form, as sent.
    pub request: &'a str,
    /// Slot 4: `expires`, or empty.
    pub expires: Option<&'a str>,
    /// Slot 5: `digest`, or empty.
    pub digest: Option<&'a str>,
    /// Extension slot before `opaque`, present only for a header other than `Authorization`.
    pub header: Option<&'a str>,
    /// Slot 6: `opaque`, as sent, or empty.
    pub opaque: Option<&'a str>,
}

/// A challenge-binding secret: an HMAC-SHA256 key keyed once and cloned per use.
#[derive(Clone)]
pub struct BindingSecret {
    keyed: HmacSha256,
}

impl std::fmt::Debug for BindingSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BindingSecret(<redacted>)")
    }
}

impl BindingSecret {
    /// A secret from its bytes (the reference SDKs use the UTF-8 bytes of a string secret).
    pub fn new(secret: &[u8]) -> Result<Self, BindingError> {
        if secret.len() < BINDING_SECRET_LEN_MIN {
            return Err(BindingError::SecretTooShort(secret.len()));
        }
        let keyed = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
        Ok(Self { keyed })
    }

    fn mac(&self, input: &BindingInput<'_>) -> [u8; 32] {
        let mut mac = self.keyed.clone();
        mac.update(input.realm.as_bytes());
        for slot in [
            Some(input.method),
            Some(input.intent),
            Some(input.request),
            Some(input.expires.unwrap_or("")),
            Some(input.digest.unwrap_or("")),
            input
                .header
                .filter(|h| !h.eq_ignore_ascii_case("authorization")),
            Some(input.opaque.unwrap_or("")),
        ]
        .into_iter()
        .flatten()
        {
            mac.update(b"|");
            mac.update(slot.as_bytes());
        }
        mac.finalize().into_bytes().into()
    }

    /// The challenge `id` for these fields.
    pub fn challenge_id(&self, input: &BindingInput<'_>) -> String {
        crate::b64::encode(self.mac(input))
    }

    /// True when `id` is the binding of these fields under this secret. The MAC bytes are
    /// compared in constant time.
    pub fn verify(&self, input: &BindingInput<'_>, id: &str) -> bool {
        match crate::b64::decode_array::<32>(id) {
            Some(presented) => self.verify_mac(input, &presented),
            None => false,
        }
    }

    fn verify_mac(&self, input: &BindingInput<'_>, presented: &[u8; 32]) -> bool {
        self.mac(input).ct_eq(presented).into()
    }
}

/// The secrets a tenant binds challenges with: the current one issues, both verify.
#[derive(Debug, Clone)]
pub struct BindingKeyring {
    current: BindingSecret,
    previous: Option<BindingSecret>,
}

impl BindingKeyring {
    /// A keyring with one secret.
    pub fn new(current: BindingSecret) -> Self {
        Self {
            current,
            previous: None,
        }
    }

    /// A keyring after a rotation: `current` issues; `previous` still verifies.
    pub fn rotated(current: BindingSecret, previous: BindingSecret) -> Self {
        Self {
            current,
            previous: Some(previous),
        }
    }

    /// The id for a new challenge, under the current secret.
    pub fn challenge_id(&self, input: &BindingInput<'_>) -> String {
        self.current.challenge_id(input)
    }

    /// True when `id` binds these fields under the current or the previous secret. Both are
    /// always computed, so the time taken does not reveal which one matched.
    pub fn verify(&self, input: &BindingInput<'_>, id: &str) -> bool {
        let Some(presented) = crate::b64::decode_array::<32>(id) else {
            return false;
        };
        let current = self.current.verify_mac(input, &presented);
        let previous = self
            .previous
            .as_ref()
            .is_some_and(|p| p.verify_mac(input, &presented));
        current | previous
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(request: &str) -> BindingInput<'_> {
        BindingInput {
            realm: "api.example.com",
            method: "tempo",
            intent: "charge",
            request,
            expires: None,
            digest: None,
            header: None,
            opaque: None,
        }
    }

    #[test]
    fn refuses_secrets_shorter_than_32_bytes() {
        assert_eq!(
            BindingSecret::new(b"short").unwrap_err(),
            BindingError::SecretTooShort(5)
        );
        assert!(BindingSecret::new(&[7u8; 32]).is_ok());
    }

    #[test]
    fn matches_the_reference_sdk_golden_vector() {
        // digest §16.2: secret "test-secret-key-12345" is under 32 bytes, so use the conformance
        // vector `basic_charge` instead.
        let secret = BindingSecret::new(b"test-secret-key-12345-minimum-32-byte-secret").unwrap();
        let request = crate::jcs::to_b64(&serde_json::json!({
            "amount": "1000000",
            "currency": "0x20c0000000000000000000000000000000000001",
            "recipient": "0x1234567890abcdef1234567890abcdef12345678"
        }))
        .unwrap();
        assert_eq!(
            secret.challenge_id(&input(&request)),
            "Go8tV1muorsPUY3eQxjQ2oBMBDRPuK-jdO_E2sbtti8"
        );
    }

    #[test]
    fn absent_and_empty_optional_slots_differ_by_position() {
        let secret = BindingSecret::new(&[1u8; 32]).unwrap();
        let a = BindingInput {
            expires: Some("x"),
            ..input("e30")
        };
        let b = BindingInput {
            digest: Some("x"),
            ..input("e30")
        };
        assert_ne!(secret.challenge_id(&a), secret.challenge_id(&b));
    }

    #[test]
    fn keyring_accepts_previous_secret_after_rotation() {
        let old = BindingSecret::new(&[1u8; 32]).unwrap();
        let new = BindingSecret::new(&[2u8; 32]).unwrap();
        let id = old.challenge_id(&input("e30"));
        assert!(!BindingKeyring::new(new.clone()).verify(&input("e30"), &id));
        let ring = BindingKeyring::rotated(new, old);
        assert!(ring.verify(&input("e30"), &id));
        assert!(!ring.verify(&input("e30"), "forged"));
        assert_ne!(
            ring.challenge_id(&input("e30")),
            id,
            "new challenges use the new secret"
        );
    }
}
