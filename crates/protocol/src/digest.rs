//! Request body digests (RFC 9530), as carried by a challenge's `digest` parameter
//! (`draft-httpauth-payment-00` §5.1.4): `sha-256=:<base64 of SHA-256(body)>:`.
//!
//! Parsing accepts the RFC 9530 dictionary (several algorithms, `:…:` byte sequences) and, for
//! interoperability, the legacy `sha-256=<base64>` form some SDKs emit. Only `sha-256` and
//! `sha-512` are understood; a digest naming no algorithm we know cannot be checked.

use base64::Engine as _;
use sha2::{Digest as _, Sha256, Sha512};
use subtle::ConstantTimeEq;

/// Longest digest value parsed.
pub const DIGEST_LEN_MAX: usize = 1024;

/// Why a digest value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// Not `alg=:base64:` (or `alg=base64`) members separated by commas.
    #[error("malformed digest: {0}")]
    Malformed(&'static str),
    /// Longer than [`DIGEST_LEN_MAX`].
    #[error("digest value longer than {DIGEST_LEN_MAX} bytes")]
    TooLong,
    /// Names only algorithms we do not implement.
    #[error("digest names no supported algorithm (sha-256, sha-512)")]
    UnsupportedAlgorithm,
}

/// One algorithm's digest of a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentDigest {
    /// `sha-256`.
    Sha256([u8; 32]),
    /// `sha-512`.
    Sha512(Box<[u8; 64]>),
}

fn b64_standard_lenient(text: &str) -> Option<Vec<u8>> {
    let cfg = base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent);
    base64::engine::GeneralPurpose::new(&base64::alphabet::STANDARD, cfg)
        .decode(text)
        .ok()
}

impl ContentDigest {
    /// The SHA-256 digest of `body`.
    pub fn sha256(body: &[u8]) -> Self {
        Self::Sha256(Sha256::digest(body).into())
    }

    /// The RFC 9530 form, e.g. `sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:`.
    pub fn to_header_value(&self) -> String {
        let (alg, bytes): (&str, &[u8]) = match self {
            Self::Sha256(d) => ("sha-256", d),
            Self::Sha512(d) => ("sha-512", &d[..]),
        };
        format!(
            "{alg}=:{}:",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        )
    }

    /// Parse a digest value and return its strongest supported member.
    pub fn parse(value: &str) -> Result<Self, DigestError> {
        if value.len() > DIGEST_LEN_MAX {
            return Err(DigestError::TooLong);
        }
        let mut best: Option<Self> = None;
        for member in value.split(',') {
            let member = member.trim_matches([' ', '\t']);
            let (alg, raw) = member
                .split_once('=')
                .ok_or(DigestError::Malformed("expected alg=value"))?;
            let encoded = match raw.strip_prefix(':') {
                Some(inner) => inner
                    .strip_suffix(':')
                    .ok_or(DigestError::Malformed("unterminated byte sequence"))?,
                None => raw,
            };
            let bytes =
                b64_standard_lenient(encoded).ok_or(DigestError::Malformed("invalid base64"))?;
            let parsed = match alg.trim().to_ascii_lowercase().as_str() {
                "sha-256" => Self::Sha256(
                    bytes
                        .try_into()
                        .map_err(|_| DigestError::Malformed("sha-256 digest must be 32 bytes"))?,
                ),
                "sha-512" => {
                    Self::Sha512(Box::new(bytes.try_into().map_err(|_| {
                        DigestError::Malformed("sha-512 digest must be 64 bytes")
                    })?))
                }
                _ => continue,
            };
            if best.is_none() || matches!(parsed, Self::Sha512(_)) {
                best = Some(parsed);
            }
        }
        best.ok_or(DigestError::UnsupportedAlgorithm)
    }

    /// True when `body` has this digest (constant-time comparison).
    pub fn matches(&self, body: &[u8]) -> bool {
        match self {
            Self::Sha256(expected) => Sha256::digest(body).as_slice().ct_eq(expected).into(),
            Self::Sha512(expected) => Sha512::digest(body).as_slice().ct_eq(&expected[..]).into(),
        }
    }

    /// True when both name the same algorithm and bytes (constant time).
    pub fn ct_equals(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Sha256(a), Self::Sha256(b)) => a.ct_eq(b).into(),
            (Self::Sha512(a), Self::Sha512(b)) => a[..].ct_eq(&b[..]).into(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &[u8] = br#"{"hello": "world"}"#;

    #[test]
    fn matches_the_rfc_9530_example() {
        let d = ContentDigest::sha256(HELLO);
        assert_eq!(
            d.to_header_value(),
            "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
        );
        assert!(
            ContentDigest::parse(&d.to_header_value())
                .unwrap()
                .matches(HELLO)
        );
    }

    #[test]
    fn accepts_the_legacy_form_without_colons() {
        let d =
            ContentDigest::parse("sha-256=X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=").unwrap();
        assert!(d.matches(HELLO));
        assert!(!d.matches(b"{}"));
    }

    #[test]
    fn picks_a_supported_member_of_a_dictionary() {
        let v = "unixsum=:AAA=:, sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:";
        assert!(ContentDigest::parse(v).unwrap().matches(HELLO));
        assert_eq!(
            ContentDigest::parse("md5=:AAA=:"),
            Err(DigestError::UnsupportedAlgorithm)
        );
        assert!(ContentDigest::parse("sha-256=:abc").is_err());
    }
}
