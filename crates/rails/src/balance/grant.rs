//! Grants (docs/methods/turnpike.md §3.1): compact JWS signed with Ed25519 by the platform,
//! checked offline against the issuer's public keys (§4 steps 2-4).
//!
//! The platform signs grants with `turnpike-policy`'s key ring; this side only verifies, with
//! the public halves as the issuer publishes them (its JWKS), so that the rails depend on no
//! signing code. The checks and their order are the key ring's: `typ`, `alg`, `kid`, the
//! signature, then `exp` and `iat`.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// JOSE `typ` of a grant (an agent token, `tp-agent+jwt`, is never one).
pub const GRANT_TYP: &str = "tp-grant+jwt";
/// The only JOSE `alg` accepted.
const ALG_EDDSA: &str = "EdDSA";
/// The longest grant verified, in bytes; longer is malformed.
pub const GRANT_LEN_MAX_BYTES: usize = 4096;
/// How far in the future a grant's `iat` may be, in seconds.
pub const IAT_SKEW_MAX_S: i64 = 60;
/// Most keys an issuer configuration holds (current plus those kept after rotations).
pub const ISSUER_KEYS_MAX: usize = 1_024;

/// Claims of a grant (§3.1).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct GrantClaims {
    /// `iss`: the issuer, equal to `methodDetails.issuer`.
    pub iss: String,
    /// `jti`: grant id, the reservation's ledger transfer id (hex).
    pub jti: String,
    /// `chal`: the challenge id it pays.
    pub chal: String,
    /// `amt`: amount in minor units.
    pub amt: String,
    /// `cur`: currency.
    pub cur: String,
    /// `rcp`: recipient tenant id.
    pub rcp: String,
    /// `pyr`: payer tenant id.
    pub pyr: String,
    /// `agt`: the agent that obtained it.
    pub agt: String,
    /// `iat`: issued at, Unix seconds.
    pub iat: i64,
    /// `exp`: expires at, Unix seconds (refused when now ≥ `exp`).
    pub exp: i64,
}

/// Why a grant was refused. Messages are the platform's token errors (what a `verification-failed`
/// detail says after `grant: `) and never echo the grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// Not a compact JWS of a grant (segments, base64url, JSON, size, `crit`).
    #[error("malformed token")]
    Malformed,
    /// `typ` is not [`GRANT_TYP`].
    #[error("wrong token type")]
    WrongType,
    /// No `kid`, or a `kid` the issuer configuration does not hold.
    #[error("unknown signing key")]
    UnknownKey,
    /// `alg` is not `EdDSA`, or the signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// now ≥ `exp`.
    #[error("token expired")]
    Expired,
    /// `iat` more than [`IAT_SKEW_MAX_S`] in the future.
    #[error("token not yet valid")]
    NotYetValid,
}

/// Why an issuer configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssuerError {
    /// A key is not an RFC 8037 Ed25519 public JWK with a `kid`.
    #[error("key {0} is not an Ed25519 public key with a kid")]
    BadKey(usize),
    /// No key, or more than [`ISSUER_KEYS_MAX`].
    #[error("an issuer has 1 to {ISSUER_KEYS_MAX} keys")]
    KeyCount,
}

/// A platform that issues grants: its public URL and the public keys that sign them, parsed
/// once (§4 step 3: from the verifier's own configuration, never from the credential).
#[derive(Clone)]
pub struct Issuer {
    url: String,
    /// (kid, key), unique by kid, in the order given.
    keys: Vec<(String, VerifyingKey)>,
    /// Grants this process signed itself, when it is the issuer (see [`SignedGrants`]).
    signed: Option<Arc<SignedGrants>>,
}

impl fmt::Debug for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|(kid, _)| kid.as_str()).collect();
        f.debug_struct("Issuer")
            .field("url", &self.url)
            .field("kids", &kids)
            .finish()
    }
}

impl Issuer {
    /// An issuer at `url` with raw 32-byte Ed25519 public keys by kid (a repeated kid keeps
    /// its first key).
    pub fn new(
        url: impl Into<String>,
        keys: impl IntoIterator<Item = (String, [u8; 32])>,
    ) -> Result<Self, IssuerError> {
        let mut parsed: Vec<(String, VerifyingKey)> = Vec::new();
        for (index, (kid, bytes)) in keys.into_iter().enumerate() {
            if parsed.len() == ISSUER_KEYS_MAX {
                return Err(IssuerError::KeyCount);
            }
            let key = VerifyingKey::from_bytes(&bytes).map_err(|_| IssuerError::BadKey(index))?;
            if kid.is_empty() {
                return Err(IssuerError::BadKey(index));
            }
            if !parsed.iter().any(|(k, _)| *k == kid) {
                parsed.push((kid, key));
            }
        }
        if parsed.is_empty() {
            return Err(IssuerError::KeyCount);
        }
        Ok(Self {
            url: url.into(),
            keys: parsed,
            signed: None,
        })
    }

    /// The same issuer, trusting the grants recorded in `signed` as its own (the process that
    /// signs grants verifies them too).
    #[must_use]
    pub fn with_signed(mut self, signed: Arc<SignedGrants>) -> Self {
        self.signed = Some(signed);
        self
    }

    /// An issuer at `url` with the keys of its JWKS (`{"keys": [...]}`, RFC 8037 `OKP`/`Ed25519`
    /// members `kid` and `x`), as served at `/.well-known/jwks.json`.
    pub fn from_jwks(url: impl Into<String>, jwks: &Value) -> Result<Self, IssuerError> {
        let list = jwks
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(IssuerError::KeyCount)?;
        let mut keys = Vec::with_capacity(list.len().min(ISSUER_KEYS_MAX));
        for (index, jwk) in list.iter().enumerate() {
            let field = |name: &str| jwk.get(name).and_then(Value::as_str);
            let x = (field("kty") == Some("OKP") && field("crv") == Some("Ed25519"))
                .then(|| field("x"))
                .flatten()
                .and_then(|x| URL_SAFE_NO_PAD.decode(x).ok())
                .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok());
            match (field("kid"), x) {
                (Some(kid), Some(x)) => keys.push((kid.to_owned(), x)),
                _ => return Err(IssuerError::BadKey(index)),
            }
        }
        Self::new(url, keys)
    }

    /// The issuer's URL (`methodDetails.issuer`, the grants' `iss`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Verify a grant's header and signature, then its time window at `now_s`, and return its
    /// claims. The claims are not compared with anything here.
    pub fn verify(&self, grant: &str, now_s: i64) -> Result<GrantClaims, GrantError> {
        let parsed = parse(grant)?;
        if parsed.header.typ.as_deref() != Some(GRANT_TYP) {
            return Err(GrantError::WrongType);
        }
        if parsed.header.alg != ALG_EDDSA {
            return Err(GrantError::BadSignature);
        }
        let kid = parsed.header.kid.as_deref().ok_or(GrantError::UnknownKey)?;
        let (_, key) = self
            .keys
            .iter()
            .find(|(k, _)| k == kid)
            .ok_or(GrantError::UnknownKey)?;
        // The strict engine refuses padding and non-canonical trailing bits: one signature has
        // exactly one encoding.
        let mut signature = [0u8; ed25519_dalek::SIGNATURE_LENGTH];
        match URL_SAFE_NO_PAD.decode_slice(parsed.signature_b64, &mut signature) {
            Ok(ed25519_dalek::SIGNATURE_LENGTH) => {}
            _ => return Err(GrantError::BadSignature),
        }
        // A grant this process signed (byte for byte, under a key still listed) is authentic
        // without checking its signature again: a lookup instead of an Ed25519 verification.
        let signed_here = self.signed.as_ref().is_some_and(|s| s.take(grant));
        if !signed_here {
            key.verify(
                parsed.signing_input.as_bytes(),
                &Signature::from_bytes(&signature),
            )
            .map_err(|_| GrantError::BadSignature)?;
        }
        let json = URL_SAFE_NO_PAD
            .decode(parsed.payload_b64)
            .map_err(|_| GrantError::Malformed)?;
        let claims: GrantClaims =
            serde_json::from_slice(&json).map_err(|_| GrantError::Malformed)?;
        if now_s >= claims.exp {
            return Err(GrantError::Expired);
        }
        if claims.iat > now_s.saturating_add(IAT_SKEW_MAX_S) {
            return Err(GrantError::NotYetValid);
        }
        Ok(claims)
    }
}

/// Most grants [`SignedGrants`] holds; at the limit the expired are dropped, and if none had
/// expired it starts over (a forgotten grant is only verified the slow way).
pub const SIGNED_GRANTS_MAX: usize = 65_536;

/// The grants a process signed and has not seen verified yet, by the SHA-256 of their compact
/// serialisation, with their `exp`. When the platform that issues a grant is also the one its
/// payee verifies with (the merchant's verify call on the same server), the grant's signature
/// is known good: the issuer records each grant it signs, and [`Issuer::verify`] takes a recorded
/// grant instead of verifying its signature again. Every other check still runs. A grant is taken
/// once: a second presentation (a replay, or another replica) is verified in full.
#[derive(Debug, Default)]
pub struct SignedGrants {
    entries: Mutex<HashMap<[u8; 32], i64>>,
}

impl SignedGrants {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// Record a grant this process has just signed, expiring at `exp_s`.
    pub fn remember(&self, grant: &str, exp_s: i64, now_s: i64) {
        let digest = digest(grant);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= SIGNED_GRANTS_MAX {
            entries.retain(|_, exp| *exp > now_s);
            if entries.len() >= SIGNED_GRANTS_MAX {
                entries.clear();
            }
        }
        entries.insert(digest, exp_s);
    }

    /// True (and forgotten) when `grant` was recorded.
    pub fn take(&self, grant: &str) -> bool {
        let digest = digest(grant);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.remove(&digest).is_some()
    }

    /// Grants recorded and not taken.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// True when none is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn digest(grant: &str) -> [u8; 32] {
    Sha256::digest(grant.as_bytes()).into()
}

/// The JOSE header members looked at; others are ignored.
#[derive(Debug, Deserialize)]
struct JoseHeader {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    /// No extension is understood, so any `crit` refuses the grant.
    #[serde(default)]
    crit: Option<IgnoredAny>,
}

/// A compact JWS split, header parsed, nothing verified.
struct Parsed<'a> {
    header: JoseHeader,
    signing_input: &'a str,
    payload_b64: &'a str,
    signature_b64: &'a str,
}

fn parse(token: &str) -> Result<Parsed<'_>, GrantError> {
    if token.len() > GRANT_LEN_MAX_BYTES {
        return Err(GrantError::Malformed);
    }
    let (signing_input, signature_b64) = token.rsplit_once('.').ok_or(GrantError::Malformed)?;
    let (header_b64, payload_b64) = signing_input.split_once('.').ok_or(GrantError::Malformed)?;
    if payload_b64.contains('.') {
        return Err(GrantError::Malformed);
    }
    let header_json = URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|_| GrantError::Malformed)?;
    let header: JoseHeader =
        serde_json::from_slice(&header_json).map_err(|_| GrantError::Malformed)?;
    if header.crit.is_some() {
        return Err(GrantError::Malformed);
    }
    Ok(Parsed {
        header,
        signing_input,
        payload_b64,
        signature_b64,
    })
}
