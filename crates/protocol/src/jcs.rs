//! JSON Canonicalization Scheme (RFC 8785) through the `serde_jcs` crate, and the
//! `base64url(JCS(json))` encoding MPP uses for `request` and `opaque`.

use serde::Serialize;

/// Why a value could not be canonicalized (e.g. a non-finite number).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot canonicalize JSON (RFC 8785): {0}")]
pub struct JcsError(String);

/// The RFC 8785 canonical serialization of `value`.
pub fn to_string<T: Serialize + ?Sized>(value: &T) -> Result<String, JcsError> {
    serde_jcs::to_string(value).map_err(|e| JcsError(e.to_string()))
}

/// `base64url-nopad(JCS(value))`: the wire form of a challenge's `request` and `opaque`.
pub fn to_b64<T: Serialize + ?Sized>(value: &T) -> Result<String, JcsError> {
    Ok(crate::b64::encode(to_string(value)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sorts_keys_by_utf16_code_units() {
        // U+E000 sorts before U+1F600 in UTF-16 (0xE000 < 0xD83D is false: 0xD83D < 0xE000),
        // so the emoji (a surrogate pair starting 0xD83D) comes first, unlike in UTF-8 order.
        let value = json!({"\u{e000}": 1, "\u{1f600}": 2, "a": 0, "B": 3});
        assert_eq!(
            to_string(&value).unwrap(),
            "{\"B\":3,\"a\":0,\"\u{1f600}\":2,\"\u{e000}\":1}"
        );
    }

    #[test]
    fn formats_numbers_as_ecmascript() {
        let value = json!({"n": 1.0e21, "m": 10.0, "s": 0.000001});
        assert_eq!(
            to_string(&value).unwrap(),
            r#"{"m":10,"n":1e+21,"s":0.000001}"#
        );
    }

    #[test]
    fn does_not_escape_html_sensitive_characters() {
        let value = json!({"d": "<a> & 'b'"});
        assert_eq!(to_string(&value).unwrap(), r#"{"d":"<a> & 'b'"}"#);
    }
}
