//! Ed25519 signing keys, the key ring that signs and verifies tokens, and the JWKS.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signer as _, Verifier as _};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::jws::{self, ALG_EDDSA};
use crate::tokens::{AgentTokenClaims, GrantClaims, TokenError};
use crate::{AGENT_TOKEN_TYP, GRANT_TYP, MAX_IAT_SKEW_S};

/// Length of a key id in hex characters (the first 8 bytes of the public key's SHA-256).
const KID_LEN_HEX: usize = 16;

/// Why a signing key could not be built. Messages never include key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The bytes are not an Ed25519 PKCS#8 private key (or its public half does not match).
    #[error("not an Ed25519 PKCS#8 private key")]
    InvalidPkcs8,
    /// The key could not be encoded as PKCS#8.
    #[error("could not encode the key as PKCS#8")]
    Encode,
    /// The operating system's random source failed.
    #[error("the operating system's random source failed")]
    Rng,
}

/// An Ed25519 signing key with its key id. Debug must NOT print the secret.
pub struct SigningKey {
    /// First 16 hex characters of SHA-256(public key).
    kid: String,
    /// The raw 32-byte public key.
    public_key: [u8; 32],
    /// The private key, expanded once (ed25519-dalek zeroizes it on drop): signs grants, one
    /// per payment. jsonwebtoken re-derives the key from PKCS#8 on every signature, twice the
    /// cost of the signature itself (measured: 42 µs against 19 µs).
    key: ed25519_dalek::SigningKey,
    /// The same key as PKCS#8 for jsonwebtoken (zeroized on drop): signs agent tokens.
    encoding: EncodingKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new key from 32 bytes of OS randomness; panics only if the OS random source fails.
    ///
    /// # Panics
    ///
    /// When the operating system cannot provide randomness (see [`SigningKey::try_generate`]).
    pub fn generate() -> Self {
        match Self::try_generate() {
            Ok(key) => key,
            Err(err) => panic!("cannot generate an Ed25519 signing key: {err}"),
        }
    }

    /// A new key from 32 bytes of OS randomness, or the error that prevented it.
    pub fn try_generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; ed25519_dalek::SECRET_KEY_LENGTH];
        let filled = getrandom::getrandom(&mut seed).map_err(|_| KeyError::Rng);
        let key =
            filled.and_then(|()| Self::from_dalek(&ed25519_dalek::SigningKey::from_bytes(&seed)));
        seed.fill(0);
        std::hint::black_box(&seed);
        key
    }

    /// A key from its PKCS#8 DER encoding (v1, or v2 with a matching public key).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, KeyError> {
        let key =
            ed25519_dalek::SigningKey::from_pkcs8_der(der).map_err(|_| KeyError::InvalidPkcs8)?;
        Self::from_dalek(&key)
    }

    /// The PKCS#8 DER encoding of the private key, for storage (this is the secret).
    pub fn to_pkcs8_der(&self) -> Vec<u8> {
        // Invariant: encoding a valid in-memory Ed25519 key as PKCS#8 cannot fail.
        self.key
            .to_pkcs8_der()
            .expect("an Ed25519 key encodes as PKCS#8")
            .as_bytes()
            .to_vec()
    }

    /// The key id: first 16 hex characters of SHA-256 of the raw public key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as an RFC 8037 JWK with `kid`, `alg: EdDSA` and `use: sig`.
    pub fn public_jwk(&self) -> Value {
        json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": jws::b64url(&self.public_key),
            "kid": self.kid,
            "alg": ALG_EDDSA,
            "use": "sig",
        })
    }

    fn from_dalek(key: &ed25519_dalek::SigningKey) -> Result<Self, KeyError> {
        let der = key.to_pkcs8_der().map_err(|_| KeyError::Encode)?;
        let public_key = key.verifying_key().to_bytes();
        Ok(Self {
            kid: kid_of(&public_key),
            public_key,
            key: key.clone(),
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
        })
    }
}

/// First [`KID_LEN_HEX`] hex characters of SHA-256(public key).
fn kid_of(public_key: &[u8; 32]) -> String {
    let digest = Sha256::digest(public_key);
    let mut kid = String::with_capacity(KID_LEN_HEX);
    for byte in digest.iter().take(KID_LEN_HEX / 2) {
        kid.push_str(&format!("{byte:02x}"));
    }
    kid
}

/// A public key that verifies tokens, built once.
struct Verifier {
    /// Its key id.
    kid: String,
    /// The public key, decompressed once (not per verification): verifies grants.
    key: ed25519_dalek::VerifyingKey,
    /// jsonwebtoken's key holding the raw 32-byte public key: verifies agent tokens.
    decoding: DecodingKey,
}

/// What a [`KeyRing`] shares between its clones.
struct Inner {
    /// The key that signs.
    current: SigningKey,
    /// Encoded protected header of agent tokens under `current`.
    agent_header_b64: String,
    /// Encoded protected header of grants under `current`.
    grant_header_b64: String,
    /// Keys that verify, current first, unique by kid.
    verifiers: Vec<Verifier>,
    /// `{"keys":[...]}`, current first.
    jwks: Value,
}

/// The keys that sign (one current) and verify (current + older ones, by kid).
#[derive(Clone)]
pub struct KeyRing {
    inner: Arc<Inner>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids: Vec<&str> = self
            .inner
            .verifiers
            .iter()
            .map(|v| v.kid.as_str())
            .collect();
        f.debug_struct("KeyRing")
            .field("current", &self.inner.current.kid)
            .field("kids", &kids)
            .finish()
    }
}

/// Which implementation signs and verifies a kind of token. Both are Ed25519 over the same
/// keys, so either verifies the other's signatures.
#[derive(Debug, Clone, Copy)]
enum Crypto {
    /// jsonwebtoken: agent tokens (signed when minted, verified once per token and minute
    /// thanks to the server's cache).
    Jwt,
    /// ed25519-dalek with keys parsed once: payment grants, signed on every `/v1/agent/pay`
    /// and verified on every `/v1/verify` (42 → 19 µs per signature, 68 → 45 µs per check).
    Dalek,
}

/// Claims that carry a validity window.
trait TimeBound {
    /// Issued at, unix seconds.
    fn iat_s(&self) -> i64;
    /// Expires at, unix seconds.
    fn exp_s(&self) -> i64;
}

impl TimeBound for AgentTokenClaims {
    fn iat_s(&self) -> i64 {
        self.iat
    }
    fn exp_s(&self) -> i64 {
        self.exp
    }
}

impl TimeBound for GrantClaims {
    fn iat_s(&self) -> i64 {
        self.iat
    }
    fn exp_s(&self) -> i64 {
        self.exp
    }
}

impl KeyRing {
    /// A ring signing with `current` and also verifying with `older` (their secrets are dropped).
    pub fn new(current: SigningKey, older: Vec<SigningKey>) -> Self {
        let mut verifiers = Vec::with_capacity(1 + older.len());
        let mut jwk_list = Vec::with_capacity(1 + older.len());
        for key in std::iter::once(&current).chain(older.iter()) {
            if verifiers.iter().any(|v: &Verifier| v.kid == key.kid) {
                continue;
            }
            verifiers.push(Verifier {
                kid: key.kid.clone(),
                key: key.key.verifying_key(),
                decoding: DecodingKey::from_ed_der(&key.public_key),
            });
            jwk_list.push(key.public_jwk());
        }
        drop(older);
        let inner = Inner {
            agent_header_b64: jws::encode_header(&current.kid, AGENT_TOKEN_TYP),
            grant_header_b64: jws::encode_header(&current.kid, GRANT_TYP),
            current,
            verifiers,
            jwks: json!({ "keys": jwk_list }),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The kid of the key that signs new tokens.
    pub fn current_kid(&self) -> &str {
        &self.inner.current.kid
    }

    /// The public keys as a JWKS `{"keys":[jwk,...]}`, current first.
    pub fn jwks(&self) -> Value {
        self.inner.jwks.clone()
    }

    /// Signs an agent token: compact JWS, header `alg: EdDSA`, `kid`, `typ: tp-agent+jwt`.
    pub fn sign_agent_token(&self, claims: &AgentTokenClaims) -> String {
        self.sign(&self.inner.agent_header_b64, claims, Crypto::Jwt)
    }

    /// Verifies an agent token at `now_s` (unix seconds) and returns its claims.
    pub fn verify_agent_token(
        &self,
        token: &str,
        now_s: i64,
    ) -> Result<AgentTokenClaims, TokenError> {
        self.verify(token, AGENT_TOKEN_TYP, now_s, Crypto::Jwt)
    }

    /// Signs a payment grant: compact JWS, header `alg: EdDSA`, `kid`, `typ: tp-grant+jwt`.
    pub fn sign_grant(&self, claims: &GrantClaims) -> String {
        self.sign(&self.inner.grant_header_b64, claims, Crypto::Dalek)
    }

    /// Verifies a payment grant at `now_s` (unix seconds) and returns its claims.
    ///
    /// `/v1/verify` checks grants with the `turnpike` rail instead (`turnpike-rails`, from the
    /// public keys of [`KeyRing::jwks`] alone, with the same checks in the same order); this is
    /// the signer's own check, and the reference the rail's behaviour is held to.
    pub fn verify_grant(&self, token: &str, now_s: i64) -> Result<GrantClaims, TokenError> {
        self.verify(token, GRANT_TYP, now_s, Crypto::Dalek)
    }

    fn sign<T: Serialize>(&self, header_b64: &str, claims: &T, crypto: Crypto) -> String {
        let payload_b64 = jws::encode_claims(claims);
        let mut token = String::with_capacity(header_b64.len() + payload_b64.len() + 90);
        token.push_str(header_b64);
        token.push('.');
        token.push_str(&payload_b64);
        let current = &self.inner.current;
        match crypto {
            Crypto::Jwt => {
                // Invariant: the EncodingKey is PKCS#8 DER produced by ed25519-dalek from a
                // valid key, and Ed25519 signing itself cannot fail.
                let signature = jsonwebtoken::crypto::sign(
                    token.as_bytes(),
                    &current.encoding,
                    Algorithm::EdDSA,
                )
                .expect("signing with a validated Ed25519 key cannot fail");
                token.push('.');
                token.push_str(&signature);
            }
            Crypto::Dalek => {
                let signature = current.key.sign(token.as_bytes());
                token.push('.');
                URL_SAFE_NO_PAD.encode_string(signature.to_bytes(), &mut token);
            }
        }
        token
    }

    fn verify<T: DeserializeOwned + TimeBound>(
        &self,
        token: &str,
        typ: &str,
        now_s: i64,
        crypto: Crypto,
    ) -> Result<T, TokenError> {
        let parsed = jws::parse(token)?;
        if parsed.header.typ.as_deref() != Some(typ) {
            return Err(TokenError::WrongType);
        }
        if parsed.header.alg != ALG_EDDSA {
            return Err(TokenError::BadSignature);
        }
        let kid = parsed.header.kid.as_deref().ok_or(TokenError::UnknownKey)?;
        let verifier = self
            .inner
            .verifiers
            .iter()
            .find(|v| v.kid == kid)
            .ok_or(TokenError::UnknownKey)?;
        match crypto {
            Crypto::Jwt => {
                let valid = jsonwebtoken::crypto::verify(
                    parsed.signature_b64,
                    parsed.signing_input.as_bytes(),
                    &verifier.decoding,
                    Algorithm::EdDSA,
                )
                .map_err(|_| TokenError::BadSignature)?;
                if !valid {
                    return Err(TokenError::BadSignature);
                }
            }
            Crypto::Dalek => {
                // The strict base64url engine refuses padding and non-canonical trailing bits,
                // so one signature has exactly one encoding.
                let mut signature = [0u8; ed25519_dalek::SIGNATURE_LENGTH];
                match URL_SAFE_NO_PAD.decode_slice(parsed.signature_b64, &mut signature) {
                    Ok(ed25519_dalek::SIGNATURE_LENGTH) => {}
                    _ => return Err(TokenError::BadSignature),
                }
                verifier
                    .key
                    .verify(
                        parsed.signing_input.as_bytes(),
                        &ed25519_dalek::Signature::from_bytes(&signature),
                    )
                    .map_err(|_| TokenError::BadSignature)?;
            }
        }
        let claims: T = jws::decode_claims(parsed.payload_b64)?;
        if now_s >= claims.exp_s() {
            return Err(TokenError::Expired);
        }
        if claims.iat_s() > now_s.saturating_add(MAX_IAT_SKEW_S) {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

    use super::*;

    const NOW_S: i64 = 1_760_000_000;

    fn agent_claims() -> AgentTokenClaims {
        AgentTokenClaims {
            iss: "https://turnpike.example".into(),
            sub: "agt_01".into(),
            tid: "ten_payer".into(),
            jti: "tok_01".into(),
            iat: NOW_S,
            exp: NOW_S + 86_400,
            pv: 3,
            par: Some("tok_00".into()),
            lim: Some(
                serde_json::from_value(serde_json::json!({
                    "maxPerPayment": [{"amount": "500", "currency": "usd"}],
                    "expiresAtS": NOW_S + 86_400
                }))
                .unwrap(),
            ),
        }
    }

    fn grant_claims() -> GrantClaims {
        GrantClaims {
            iss: "https://turnpike.example".into(),
            jti: "0a1b2c3d4e5f60718293a4b5c6d7e8f9".into(),
            chal: "x7Tg2pLqR9mKvN3wY5bZcA".into(),
            amt: "250".into(),
            cur: "usd".into(),
            rcp: "ten_merchant".into(),
            pyr: "ten_payer".into(),
            agt: "agt_01".into(),
            iat: NOW_S,
            exp: NOW_S + 360,
        }
    }

    fn ring() -> KeyRing {
        KeyRing::new(SigningKey::generate(), vec![])
    }

    fn segments(token: &str) -> Vec<String> {
        token.split('.').map(str::to_owned).collect()
    }

    fn decode_json(segment: &str) -> Value {
        let bytes = URL_SAFE_NO_PAD.decode(segment).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn encode_json(value: &Value) -> String {
        URL_SAFE_NO_PAD.encode(value.to_string())
    }

    /// Signs `claims` under an arbitrary header with `key` (for forgeries).
    fn sign_with(key: &SigningKey, header: &Value, claims: &impl Serialize) -> String {
        let input = format!(
            "{}.{}",
            encode_json(header),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap())
        );
        let signature = jsonwebtoken::crypto::sign(
            input.as_bytes(),
            &EncodingKey::from_ed_der(&key.to_pkcs8_der()),
            Algorithm::EdDSA,
        )
        .unwrap();
        format!("{input}.{signature}")
    }

    fn secret_seed(key: &SigningKey) -> [u8; 32] {
        ed25519_dalek::SigningKey::from_pkcs8_der(&key.to_pkcs8_der())
            .unwrap()
            .to_bytes()
    }

    #[test]
    fn kid_is_16_hex_of_sha256_of_public_key() {
        let key = SigningKey::generate();
        let jwk = key.public_jwk();
        let x = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap();
        assert_eq!(x.len(), 32);
        let digest = Sha256::digest(&x);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(key.kid(), &hex[..16]);
        assert_eq!(key.kid().len(), 16);
    }

    #[test]
    fn public_jwk_has_the_rfc_8037_members() {
        let key = SigningKey::generate();
        let jwk = key.public_jwk();
        assert_eq!(jwk["kty"], "OKP");
        assert_eq!(jwk["crv"], "Ed25519");
        assert_eq!(jwk["alg"], "EdDSA");
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["kid"], key.kid());
        assert!(jwk.get("d").is_none());
        assert_eq!(jwk.as_object().unwrap().len(), 6);
    }

    #[test]
    fn generated_keys_differ() {
        assert_ne!(SigningKey::generate().kid(), SigningKey::generate().kid());
    }

    #[test]
    fn pkcs8_round_trip_keeps_kid_and_verifies() {
        let key = SigningKey::generate();
        let der = key.to_pkcs8_der();
        let reloaded = SigningKey::from_pkcs8_der(&der).unwrap();
        assert_eq!(reloaded.kid(), key.kid());
        assert_eq!(reloaded.to_pkcs8_der(), der);
        let token = KeyRing::new(reloaded, vec![]).sign_grant(&grant_claims());
        let verified = KeyRing::new(key, vec![])
            .verify_grant(&token, NOW_S)
            .unwrap();
        assert_eq!(verified, grant_claims());
    }

    #[test]
    fn pkcs8_v1_without_public_key_is_accepted() {
        let key = SigningKey::generate();
        let seed = secret_seed(&key);
        let v1 = ed25519_dalek::pkcs8::KeypairBytes {
            secret_key: seed,
            public_key: None,
        }
        .to_pkcs8_der()
        .unwrap();
        assert_eq!(
            SigningKey::from_pkcs8_der(v1.as_bytes()).unwrap().kid(),
            key.kid()
        );
    }

    #[test]
    fn garbage_pkcs8_is_refused() {
        let err = SigningKey::from_pkcs8_der(&[0x30, 0x03, 0x02, 0x01, 0x00]).unwrap_err();
        assert!(matches!(err, KeyError::InvalidPkcs8));
        assert!(matches!(
            SigningKey::from_pkcs8_der(&[]),
            Err(KeyError::InvalidPkcs8)
        ));
    }

    #[test]
    fn agent_token_round_trip() {
        let ring = ring();
        let token = ring.sign_agent_token(&agent_claims());
        assert_eq!(
            ring.verify_agent_token(&token, NOW_S).unwrap(),
            agent_claims()
        );

        let unlimited = AgentTokenClaims {
            lim: None,
            ..agent_claims()
        };
        let token = ring.sign_agent_token(&unlimited);
        assert!(decode_json(&segments(&token)[1]).get("lim").is_none());
        assert_eq!(ring.verify_agent_token(&token, NOW_S).unwrap(), unlimited);
    }

    #[test]
    fn grant_round_trip() {
        let ring = ring();
        let token = ring.sign_grant(&grant_claims());
        assert_eq!(ring.verify_grant(&token, NOW_S).unwrap(), grant_claims());
    }

    #[test]
    fn header_names_alg_typ_and_kid() {
        let ring = ring();
        let grant = decode_json(&segments(&ring.sign_grant(&grant_claims()))[0]);
        assert_eq!(
            grant,
            json!({"alg": "EdDSA", "typ": "tp-grant+jwt", "kid": ring.current_kid()})
        );
        let agent = decode_json(&segments(&ring.sign_agent_token(&agent_claims()))[0]);
        assert_eq!(agent["typ"], "tp-agent+jwt");
        assert_eq!(agent["kid"], ring.current_kid());
    }

    #[test]
    fn a_standard_jwt_library_verifies_tokens_with_the_jwks() {
        let ring = ring();
        let token = ring.sign_grant(&grant_claims());
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(ring.jwks()).unwrap();
        let jwk = jwks.find(ring.current_kid()).unwrap();
        let key = DecodingKey::from_jwk(jwk).unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::EdDSA);
        validation.validate_exp = false;
        let data = jsonwebtoken::decode::<GrantClaims>(&token, &key, &validation).unwrap();
        assert_eq!(data.claims, grant_claims());
        assert_eq!(data.header.typ.as_deref(), Some(GRANT_TYP));
    }

    #[test]
    fn token_from_another_ring_is_refused() {
        let ours = ring();
        let theirs = ring();
        let grant = theirs.sign_grant(&grant_claims());
        assert_eq!(
            ours.verify_grant(&grant, NOW_S),
            Err(TokenError::UnknownKey)
        );
        let agent = theirs.sign_agent_token(&agent_claims());
        assert_eq!(
            ours.verify_agent_token(&agent, NOW_S),
            Err(TokenError::UnknownKey)
        );
    }

    #[test]
    fn token_signed_by_another_key_under_our_kid_is_refused() {
        let ours = ring();
        let other = SigningKey::generate();
        let header = json!({"alg": "EdDSA", "typ": GRANT_TYP, "kid": ours.current_kid()});
        let forged = sign_with(&other, &header, &grant_claims());
        assert_eq!(
            ours.verify_grant(&forged, NOW_S),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn tampered_payload_is_refused() {
        let ring = ring();
        let token = ring.sign_grant(&grant_claims());
        let mut parts = segments(&token);
        let mut claims = decode_json(&parts[1]);
        claims["amt"] = json!("1");
        parts[1] = encode_json(&claims);
        assert_eq!(
            ring.verify_grant(&parts.join("."), NOW_S),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn tampered_header_or_signature_is_refused() {
        let ring = ring();
        let token = ring.sign_grant(&grant_claims());
        let parts = segments(&token);

        // Same meaning, different bytes: the signature covers the encoded header.
        let header = json!({"typ": GRANT_TYP, "alg": "EdDSA", "kid": ring.current_kid()});
        let reordered = format!("{}.{}.{}", encode_json(&header), parts[1], parts[2]);
        assert_eq!(
            ring.verify_grant(&reordered, NOW_S),
            Err(TokenError::BadSignature)
        );

        let mut signature = URL_SAFE_NO_PAD.decode(&parts[2]).unwrap();
        signature[0] ^= 1;
        let flipped = format!(
            "{}.{}.{}",
            parts[0],
            parts[1],
            URL_SAFE_NO_PAD.encode(signature)
        );
        assert_eq!(
            ring.verify_grant(&flipped, NOW_S),
            Err(TokenError::BadSignature)
        );

        let truncated = format!("{}.{}.{}", parts[0], parts[1], &parts[2][..40]);
        assert_eq!(
            ring.verify_grant(&truncated, NOW_S),
            Err(TokenError::BadSignature)
        );

        let empty = format!("{}.{}.", parts[0], parts[1]);
        assert_eq!(
            ring.verify_grant(&empty, NOW_S),
            Err(TokenError::BadSignature)
        );

        // The last character of an 86-character signature carries 2 unused bits: setting
        // them gives a different string for the same bytes, which must not verify.
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let last = parts[2].chars().last().unwrap();
        let index = alphabet.find(last).unwrap();
        let sibling = alphabet.chars().nth(index | 1).unwrap();
        let sibling = if sibling == last {
            alphabet.chars().nth(index & !1).unwrap()
        } else {
            sibling
        };
        let noncanonical = format!("{}.{}.{}{sibling}", parts[0], parts[1], &parts[2][..85]);
        assert_eq!(
            ring.verify_grant(&noncanonical, NOW_S),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn agent_token_is_never_a_grant_and_vice_versa() {
        let ring = ring();
        let agent = ring.sign_agent_token(&agent_claims());
        assert_eq!(ring.verify_grant(&agent, NOW_S), Err(TokenError::WrongType));
        let grant = ring.sign_grant(&grant_claims());
        assert_eq!(
            ring.verify_agent_token(&grant, NOW_S),
            Err(TokenError::WrongType)
        );
    }

    #[test]
    fn validly_signed_token_with_other_or_no_typ_is_refused() {
        let ring = ring();
        let key = &ring.inner.current;
        for header in [
            json!({"alg": "EdDSA", "kid": key.kid()}),
            json!({"alg": "EdDSA", "kid": key.kid(), "typ": "JWT"}),
            json!({"alg": "EdDSA", "kid": key.kid(), "typ": "TP-GRANT+JWT"}),
        ] {
            let token = sign_with(key, &header, &grant_claims());
            assert_eq!(ring.verify_grant(&token, NOW_S), Err(TokenError::WrongType));
        }
    }

    #[test]
    fn alg_none_is_refused() {
        let ring = ring();
        let header = json!({"alg": "none", "typ": GRANT_TYP, "kid": ring.current_kid()});
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&grant_claims()).unwrap());
        let unsigned = format!("{}.{payload}.", encode_json(&header));
        assert_eq!(
            ring.verify_grant(&unsigned, NOW_S),
            Err(TokenError::BadSignature)
        );

        // A real signature does not make `none` acceptable either.
        let signed = sign_with(&ring.inner.current, &header, &grant_claims());
        assert_eq!(
            ring.verify_grant(&signed, NOW_S),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn hs256_keyed_with_the_public_key_is_refused() {
        let ring = ring();
        let public_key = ring.inner.current.public_key;
        let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
        header.typ = Some(GRANT_TYP.into());
        header.kid = Some(ring.current_kid().into());
        for secret in [&public_key[..], ring.jwks().to_string().as_bytes()] {
            let token =
                jsonwebtoken::encode(&header, &grant_claims(), &EncodingKey::from_secret(secret))
                    .unwrap();
            assert_eq!(
                ring.verify_grant(&token, NOW_S),
                Err(TokenError::BadSignature)
            );
        }
    }

    #[test]
    fn missing_kid_or_crit_header_is_refused() {
        let ring = ring();
        let key = &ring.inner.current;
        let no_kid = sign_with(
            key,
            &json!({"alg": "EdDSA", "typ": GRANT_TYP}),
            &grant_claims(),
        );
        assert_eq!(
            ring.verify_grant(&no_kid, NOW_S),
            Err(TokenError::UnknownKey)
        );

        let header = json!({"alg": "EdDSA", "typ": GRANT_TYP, "kid": key.kid(), "crit": ["exp"]});
        let crit = sign_with(key, &header, &grant_claims());
        assert_eq!(ring.verify_grant(&crit, NOW_S), Err(TokenError::Malformed));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let ring = ring();
        let token = ring.sign_grant(&grant_claims());
        let parts = segments(&token);
        let too_long = format!("{token}{}", "A".repeat(crate::MAX_TOKEN_LEN_BYTES));
        let padded = format!("{}=.{}.{}", parts[0], parts[1], parts[2]);
        let four = format!("{token}.{}", parts[2]);
        let bad_json = format!("{}.{}.{}", URL_SAFE_NO_PAD.encode("{"), parts[1], parts[2]);
        for input in [
            "",
            ".",
            "..",
            "a.b",
            "not a token",
            &too_long,
            &padded,
            &four,
            &bad_json,
        ] {
            assert_eq!(
                ring.verify_grant(input, NOW_S),
                Err(TokenError::Malformed),
                "{input}"
            );
        }
    }

    #[test]
    fn validly_signed_payload_that_is_not_grant_claims_is_malformed() {
        let ring = ring();
        let key = &ring.inner.current;
        let header = json!({"alg": "EdDSA", "typ": GRANT_TYP, "kid": key.kid()});
        let token = sign_with(key, &header, &json!({"jti": "x", "exp": NOW_S + 10}));
        assert_eq!(ring.verify_grant(&token, NOW_S), Err(TokenError::Malformed));
    }

    #[test]
    fn expiry_boundary_has_no_leeway() {
        let ring = ring();
        let claims = grant_claims();
        let token = ring.sign_grant(&claims);
        assert!(ring.verify_grant(&token, claims.exp - 1).is_ok());
        assert_eq!(
            ring.verify_grant(&token, claims.exp),
            Err(TokenError::Expired)
        );
        assert_eq!(
            ring.verify_grant(&token, claims.exp + 1),
            Err(TokenError::Expired)
        );

        let agent = agent_claims();
        let token = ring.sign_agent_token(&agent);
        assert!(ring.verify_agent_token(&token, agent.exp - 1).is_ok());
        assert_eq!(
            ring.verify_agent_token(&token, agent.exp),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn iat_may_be_at_most_60_s_in_the_future() {
        let ring = ring();
        let claims = grant_claims();
        let token = ring.sign_grant(&claims);
        assert!(
            ring.verify_grant(&token, claims.iat - MAX_IAT_SKEW_S)
                .is_ok()
        );
        assert_eq!(
            ring.verify_grant(&token, claims.iat - MAX_IAT_SKEW_S - 1),
            Err(TokenError::NotYetValid)
        );
        let extreme = GrantClaims {
            iat: i64::MAX,
            exp: i64::MAX,
            ..grant_claims()
        };
        let token = ring.sign_grant(&extreme);
        assert_eq!(
            ring.verify_grant(&token, NOW_S),
            Err(TokenError::NotYetValid)
        );
        assert_eq!(
            ring.verify_grant(&token, i64::MAX),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn older_key_still_verifies_after_rotation() {
        let old_key = SigningKey::generate();
        let old_der = old_key.to_pkcs8_der();
        let old_kid = old_key.kid().to_owned();
        let old_ring = KeyRing::new(old_key, vec![]);
        let old_grant = old_ring.sign_grant(&grant_claims());
        let old_agent = old_ring.sign_agent_token(&agent_claims());

        let old_again = SigningKey::from_pkcs8_der(&old_der).unwrap();
        let rotated = KeyRing::new(SigningKey::generate(), vec![old_again]);
        assert_ne!(rotated.current_kid(), old_kid);
        assert_eq!(
            rotated.verify_grant(&old_grant, NOW_S).unwrap(),
            grant_claims()
        );
        assert_eq!(
            rotated.verify_agent_token(&old_agent, NOW_S).unwrap(),
            agent_claims()
        );

        let new_grant = rotated.sign_grant(&grant_claims());
        assert_eq!(
            decode_json(&segments(&new_grant)[0])["kid"],
            rotated.current_kid()
        );
        assert_eq!(
            old_ring.verify_grant(&new_grant, NOW_S),
            Err(TokenError::UnknownKey)
        );

        let keys = rotated.jwks()["keys"].as_array().unwrap().clone();
        let kids: Vec<&str> = keys.iter().map(|k| k["kid"].as_str().unwrap()).collect();
        assert_eq!(kids, [rotated.current_kid(), old_kid.as_str()]);
    }

    #[test]
    fn jwks_lists_each_kid_once_current_first() {
        let current = SigningKey::generate();
        let der = current.to_pkcs8_der();
        let older = SigningKey::generate();
        let older_kid = older.kid().to_owned();
        let ring = KeyRing::new(
            current,
            vec![SigningKey::from_pkcs8_der(&der).unwrap(), older],
        );
        let jwks = ring.jwks();
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0]["kid"], ring.current_kid());
        assert_eq!(keys[1]["kid"], older_kid.as_str());
        assert!(keys.iter().all(|k| k.get("d").is_none()));
    }

    #[test]
    fn clones_share_keys() {
        let ring = ring();
        let clone = ring.clone();
        assert!(Arc::ptr_eq(&ring.inner, &clone.inner));
        let token = clone.sign_grant(&grant_claims());
        assert!(ring.verify_grant(&token, NOW_S).is_ok());
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let key = SigningKey::generate();
        let seed = secret_seed(&key);
        let der = key.to_pkcs8_der();
        let secrets = [
            STANDARD.encode(seed),
            URL_SAFE_NO_PAD.encode(seed),
            STANDARD.encode(&der),
            URL_SAFE_NO_PAD.encode(&der),
            seed.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            format!("{seed:?}"),
        ];
        let kid = key.kid().to_owned();
        let key_debug = format!("{key:?} {key:#?}");
        let ring = KeyRing::new(key, vec![SigningKey::generate()]);
        let ring_debug = format!("{ring:?} {ring:#?}");
        for output in [&key_debug, &ring_debug] {
            assert!(output.contains(&kid), "{output}");
            for secret in &secrets {
                assert!(!output.contains(secret.as_str()));
                assert!(!output.contains(&secret[..12]));
            }
        }
    }

    #[test]
    fn error_messages_never_echo_the_token() {
        let ring = ring();
        let token = ring.sign_grant(&grant_claims());
        let parts = segments(&token);
        for err in [
            ring.verify_grant(&token, NOW_S + 10_000).unwrap_err(),
            ring.verify_agent_token(&token, NOW_S).unwrap_err(),
            ring.verify_grant(&format!("{token}x"), NOW_S).unwrap_err(),
        ] {
            let message = format!("{err} {err:?}");
            assert!(
                parts.iter().all(|p| !message.contains(&p[..10])),
                "{message}"
            );
        }
    }
}
