//! Compact JWS plumbing: header encoding, splitting and strict header parsing.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde::Serialize;
use serde::de::IgnoredAny;

use crate::MAX_TOKEN_LEN_BYTES;
use crate::tokens::TokenError;

/// The only JOSE `alg` Turnpike signs or accepts.
pub(crate) const ALG_EDDSA: &str = "EdDSA";

/// base64url without padding, as JWS uses.
pub(crate) fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The encoded protected header `{"alg":"EdDSA","typ":typ,"kid":kid}`.
pub(crate) fn encode_header(kid: &str, typ: &str) -> String {
    let header = serde_json::json!({ "alg": ALG_EDDSA, "typ": typ, "kid": kid });
    b64url(header.to_string().as_bytes())
}

/// The encoded payload of `claims`.
pub(crate) fn encode_claims<T: Serialize>(claims: &T) -> String {
    // Invariant: the claim types are plain structs of strings and integers, which
    // serde_json always serializes.
    let json = serde_json::to_vec(claims).expect("token claims always serialize to JSON");
    b64url(&json)
}

/// The JOSE header fields Turnpike looks at; other members are ignored.
#[derive(Debug, Deserialize)]
pub(crate) struct JoseHeader {
    /// Signature algorithm.
    pub(crate) alg: String,
    /// Token type.
    #[serde(default)]
    pub(crate) typ: Option<String>,
    /// Key id.
    #[serde(default)]
    pub(crate) kid: Option<String>,
    /// Critical extensions: none are understood, so any `crit` refuses the token.
    #[serde(default)]
    crit: Option<IgnoredAny>,
}

/// A compact JWS split into its parts, header parsed, nothing verified yet.
#[derive(Debug)]
pub(crate) struct Parsed<'a> {
    /// The protected header.
    pub(crate) header: JoseHeader,
    /// `header.payload`, the bytes the signature covers.
    pub(crate) signing_input: &'a str,
    /// The encoded payload.
    pub(crate) payload_b64: &'a str,
    /// The encoded signature.
    pub(crate) signature_b64: &'a str,
}

/// Splits a compact JWS into three segments and parses its header.
pub(crate) fn parse(token: &str) -> Result<Parsed<'_>, TokenError> {
    if token.len() > MAX_TOKEN_LEN_BYTES {
        return Err(TokenError::Malformed);
    }
    let (signing_input, signature_b64) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let (header_b64, payload_b64) = signing_input.split_once('.').ok_or(TokenError::Malformed)?;
    if payload_b64.contains('.') {
        return Err(TokenError::Malformed);
    }
    let header_json = URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|_| TokenError::Malformed)?;
    let header: JoseHeader =
        serde_json::from_slice(&header_json).map_err(|_| TokenError::Malformed)?;
    if header.crit.is_some() {
        return Err(TokenError::Malformed);
    }
    Ok(Parsed {
        header,
        signing_input,
        payload_b64,
        signature_b64,
    })
}

/// Decodes and parses a payload whose signature has been verified.
pub(crate) fn decode_claims<T: for<'de> Deserialize<'de>>(
    payload_b64: &str,
) -> Result<T, TokenError> {
    let json = URL_SAFE_NO_PAD
        .decode(payload_b64)
        .map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)
}
