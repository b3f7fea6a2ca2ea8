//! base64url (RFC 4648 §5) as MPP uses it: emitted URL-safe without padding; accepted with or
//! without padding and, for robustness, in the standard alphabet too (`+` and `/`).

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// URL-safe alphabet; emits no padding; accepts input with or without it.
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a base64url value did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid base64url: {0}")]
pub struct Base64Error(String);

/// Encode bytes as base64url without padding.
pub fn encode(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_LENIENT.encode(bytes)
}

/// Decode base64url, with or without `=` padding; `+` and `/` are read as `-` and `_`.
pub fn decode(text: &str) -> Result<Vec<u8>, Base64Error> {
    match decode_url_safe(text) {
        Ok(bytes) => Ok(bytes),
        // Only on failure look for the standard alphabet: the common input costs one pass.
        Err(err) if !text.bytes().any(|b| b == b'+' || b == b'/') => Err(err),
        Err(_) => {
            let normalized: String = text
                .chars()
                .map(|c| match c {
                    '+' => '-',
                    '/' => '_',
                    other => other,
                })
                .collect();
            decode_url_safe(&normalized)
        }
    }
}

/// Decode base64url into a fixed-size array (e.g. a 32-byte MAC); `None` unless it decodes to
/// exactly `N` bytes.
pub fn decode_array<const N: usize>(text: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    // A slice one byte longer than N tells "too long" apart from "exactly N".
    let mut buf = [0u8; 96];
    if N + 1 > buf.len() {
        return decode(text).ok()?.try_into().ok();
    }
    let written = URL_SAFE_LENIENT
        .decode_slice(text, &mut buf[..N + 1])
        .ok()?;
    (written == N).then(|| {
        out.copy_from_slice(&buf[..N]);
        out
    })
}

/// True when `text` is non-empty and looks like base64url (see [`is_b64_char`]).
pub fn looks_like_b64(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(is_b64_char)
}

fn decode_url_safe(text: &str) -> Result<Vec<u8>, Base64Error> {
    URL_SAFE_LENIENT
        .decode(text)
        .map_err(|e| Base64Error(e.to_string()))
}

/// Decode base64url into UTF-8 text; bytes that are not UTF-8 are an error, never replaced.
pub fn decode_utf8(text: &str) -> Result<String, Base64Error> {
    let bytes = decode(text)?;
    String::from_utf8(bytes).map_err(|_| Base64Error("decoded bytes are not UTF-8".into()))
}

/// True when `b` is in the base64url alphabet, is padding, or is the standard alphabet's `+/`.
pub fn is_b64_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'+' | b'/' | b'=')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emits_url_safe_without_padding() {
        assert_eq!(encode(b">>>???"), "Pj4-Pz8_");
        assert_eq!(encode(b"a"), "YQ");
    }

    #[test]
    fn accepts_padding_and_standard_alphabet() {
        assert_eq!(decode("YQ==").unwrap(), b"a");
        assert_eq!(decode("YQ").unwrap(), b"a");
        assert_eq!(decode("Pj4+Pz8/").unwrap(), b">>>???");
    }

    #[test]
    fn rejects_characters_outside_the_alphabet() {
        assert!(decode("not-valid!!!").is_err());
    }

    #[test]
    fn rejects_non_utf8_text() {
        assert!(decode_utf8("_w").is_err());
    }
}
