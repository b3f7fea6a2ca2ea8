//! The `turnpike` charge method (docs/methods/turnpike.md): an organisation's balance on the
//! platform pays a merchant on the same platform.
//!
//! The payer's agent obtains a grant (an Ed25519 JWS over one challenge) when the platform
//! reserves the amount as a pending ledger transfer. Verification is offline: the grant's
//! signature against the issuer's public keys, then every claim against the challenge and the
//! price. Settlement posts the reservation through the host's ledger ([`BalanceLedger`]): this
//! crate never sees the ledger, and the ledger never sees the method's JSON.

mod grant;

use std::marker::PhantomData;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use turnpike_protocol::Credential;

pub use grant::{
    GRANT_LEN_MAX_BYTES, GRANT_TYP, GrantClaims, GrantError, IAT_SKEW_MAX_S, ISSUER_KEYS_MAX,
    Issuer, IssuerError, SIGNED_GRANTS_MAX, SignedGrants,
};

use crate::{
    ChallengeFacts, PrepareError, Prepared, PriceTerms, Rail, Rejection, Settlement, Unavailable,
};

/// The method name.
pub const METHOD: &str = "turnpike";

/// The prefix of a credential `source` (`turnpike:<payer tenant id>`, §3) and of the replay
/// token of a grant.
const SOURCE_PREFIX: &str = "turnpike:";

/// The detail of a rejection for a grant signed under a key the issuer configuration does not
/// hold (see [`is_unknown_key`]).
const UNKNOWN_KEY_DETAIL: &str = "grant: unknown signing key";

/// True when `rejection` refused a grant signed under a key the configuration does not hold: the
/// host may hold an outdated key list (a key rotated in on another replica), reload it and
/// verify again.
pub fn is_unknown_key(rejection: &Rejection) -> bool {
    rejection.detail == UNKNOWN_KEY_DETAIL
}

/// A merchant's `turnpike` rail, as the host gives it for one call.
#[derive(Debug)]
pub struct BalanceConfig<'a, L> {
    /// The platform that issues grants: `methodDetails.issuer` and its keys.
    pub issuer: &'a Issuer,
    /// The merchant's tenant id (`recipient`).
    pub recipient: &'a str,
    /// Where reservations are posted (settling), or [`NoLedger`] (offering, verifying).
    pub ledger: L,
}

/// A grant that passed every offline check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedGrant {
    /// The reservation (pending ledger transfer) it spends: `jti` read as hex.
    pub reservation: u128,
    /// `jti` as the grant wrote it (the single-use proof).
    pub grant_id: String,
    /// `pyr`: the payer tenant id.
    pub payer_tenant_id: String,
    /// `agt`: the paying agent.
    pub agent_id: String,
    /// The amount in minor units.
    pub amount_minor: u128,
    /// `cur`.
    pub currency: String,
    /// `exp`: when the grant and its reservation expire, Unix seconds.
    pub expires_at_s: i64,
}

/// What the host's ledger is asked to post: the reservation, to the recipient's revenue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posting<'a> {
    /// The pending transfer to post in full.
    pub reservation: u128,
    /// The grant id (`jti` as written).
    pub grant_id: &'a str,
    /// The replay token of the grant ([`Rail::replay_token`]): single-use, claimed with the
    /// posting.
    pub replay_token: String,
    /// The payer tenant id.
    pub payer_tenant_id: &'a str,
    /// The recipient (merchant) tenant id.
    pub recipient: &'a str,
    /// The amount in minor units.
    pub amount_minor: u128,
    /// The currency.
    pub currency: &'a str,
}

/// Why the ledger did not post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostError<E> {
    /// The reservation cannot be posted (expired, voided, spent, missing): final, nothing was
    /// posted, and the credential will never settle.
    Refused(Rejection),
    /// The challenge or the grant was already used by a payment: nothing was posted.
    Taken,
    /// The ledger failed: nothing was posted as far as the ledger knows.
    Ledger(E),
}

/// What voiding a reservation found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Voided {
    /// It was pending and is released now: the payer has the funds back.
    Released,
    /// It had been released already (voided, or expired).
    AlreadyReleased,
    /// It had been posted: the payment happened.
    AlreadyPosted,
    /// No such reservation.
    NotFound,
}

/// The host's ledger side of the rail (the server implements it over its posting engine).
/// Its futures are not boxed: settling a grant is the hot path of `/v1/verify`.
pub trait BalanceLedger: Send + Sync {
    /// The host's error.
    type Error: Send + Sync;

    /// Post the reservation to the recipient, with the platform fee and the host's record of
    /// the payment, all or nothing, claiming the replay token.
    fn post(
        &self,
        posting: Posting<'_>,
    ) -> impl Future<Output = Result<(), PostError<Self::Error>>> + Send;

    /// Void (release) the reservation.
    fn void(&self, reservation: u128) -> impl Future<Output = Result<Voided, Self::Error>> + Send;
}

/// The ledger of a configuration that only offers and verifies: it posts nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoLedger;

impl BalanceLedger for NoLedger {
    type Error = Unavailable;

    async fn post(&self, _posting: Posting<'_>) -> Result<(), PostError<Unavailable>> {
        Err(PostError::Ledger(Self::unavailable()))
    }

    async fn void(&self, _reservation: u128) -> Result<Voided, Unavailable> {
        Err(Self::unavailable())
    }
}

impl NoLedger {
    fn unavailable() -> Unavailable {
        Unavailable("this turnpike configuration has no ledger".into())
    }
}

/// What [`Rail::prepare`] records of a grant (nothing secret: never the grant itself).
#[derive(Debug, Serialize, Deserialize)]
struct Recorded {
    reservation: String,
    grant_id: String,
    payer_tenant_id: String,
    amount: String,
    currency: String,
    expires_at_s: i64,
}

/// The `turnpike` rail. It holds nothing: the issuer, the merchant and the ledger come with
/// each call's [`BalanceConfig`].
///
/// Settling is one step, [`BalanceRail::settle`]: the ledger claims the challenge and the grant
/// in the same transaction as the posting, so "already used" is only known then and is told
/// apart there ([`PostError::Taken`]). [`Rail::prepare`] and [`Rail::submit`] are the same
/// posting for a generic caller: the record holds the posting (never the grant); a ledger
/// failure is [`Settlement::Pending`], and [`Rail::resolve`] decides it by voiding the
/// reservation: released means nothing was paid, already posted means it was. The rail's
/// `reference` is the grant id; the platform's receipt names its own payment (§6).
pub struct BalanceRail<'a, L>(PhantomData<fn() -> BalanceConfig<'a, L>>);

impl<L> Default for BalanceRail<'_, L> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<L> std::fmt::Debug for BalanceRail<'_, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BalanceRail")
    }
}

impl<'a, L: BalanceLedger> BalanceRail<'a, L> {
    /// The rail.
    pub fn new() -> Self {
        Self::default()
    }

    /// Post a verified grant's reservation through the configuration's ledger.
    pub async fn settle(
        &self,
        config: &BalanceConfig<'a, L>,
        verified: &VerifiedGrant,
    ) -> Result<(), PostError<L::Error>> {
        let posting = Posting {
            reservation: verified.reservation,
            grant_id: &verified.grant_id,
            replay_token: self.replay_token(verified),
            payer_tenant_id: &verified.payer_tenant_id,
            recipient: config.recipient,
            amount_minor: verified.amount_minor,
            currency: &verified.currency,
        };
        config.ledger.post(posting).await
    }
}

/// The offline checks of §4 steps 2-5 on a credential's payload.
fn verify_grant(
    issuer: &Issuer,
    recipient: &str,
    challenge: ChallengeFacts<'_>,
    price: &PriceTerms<'_>,
    credential: &Credential,
    now_s: i64,
) -> Result<VerifiedGrant, Rejection> {
    let Some(grant) = credential.payload.get("grant").and_then(Value::as_str) else {
        return Err(Rejection::failed("payload has no `grant`"));
    };
    let claims = match issuer.verify(grant, now_s) {
        Ok(claims) => claims,
        Err(GrantError::Expired) => return Err(Rejection::expired("the grant has expired")),
        Err(err) => return Err(Rejection::failed(format!("grant: {err}"))),
    };
    let mismatch = if claims.chal != challenge.id {
        Some("the grant pays another challenge")
    } else if claims.amt != price.amount || claims.cur != price.currency {
        Some("the grant's amount or currency differs from the request")
    } else if claims.rcp != recipient {
        Some("the grant pays another recipient")
    } else if claims.iss != issuer.url() {
        Some("the grant was issued by another platform")
    } else if credential.source.as_ref().is_some_and(|source| {
        source.as_str().and_then(|s| s.strip_prefix(SOURCE_PREFIX)) != Some(claims.pyr.as_str())
    }) {
        Some("the credential's source is not the grant's payer")
    } else {
        None
    };
    if let Some(detail) = mismatch {
        return Err(Rejection::failed(detail));
    }
    let Some(reservation) = parse_transfer_id(&claims.jti) else {
        return Err(Rejection::failed("the grant names no reservation"));
    };
    Ok(VerifiedGrant {
        reservation,
        grant_id: claims.jti,
        payer_tenant_id: claims.pyr,
        agent_id: claims.agt,
        amount_minor: price.amount_minor,
        currency: claims.cur,
        expires_at_s: claims.exp,
    })
}

/// A ledger transfer id: 1 to 32 hex digits.
fn parse_transfer_id(text: &str) -> Option<u128> {
    if text.is_empty() || text.len() > 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u128::from_str_radix(text, 16).ok()
}

/// The grant id, in the platform's proof namespace: one grant pays once.
fn replay_token(grant_id: &str) -> String {
    let mut token = String::with_capacity(SOURCE_PREFIX.len() + grant_id.len());
    token.push_str(SOURCE_PREFIX);
    token.push_str(grant_id);
    token
}

/// A [`Settlement`] for what the ledger said about the posting of `grant_id`.
fn settlement<E>(grant_id: &str, posted: Result<(), PostError<E>>) -> Settlement {
    match posted {
        Ok(()) => Settlement::Settled {
            reference: grant_id.to_owned(),
        },
        Err(PostError::Refused(rejection)) => Settlement::Failed(rejection),
        Err(PostError::Taken) => Settlement::Failed(Rejection::failed(
            "this challenge or grant has already been used for a payment",
        )),
        // The ledger's transaction may or may not have committed: never `failed` on a doubt.
        Err(PostError::Ledger(_)) => Settlement::Pending,
    }
}

#[async_trait]
impl<'a, L: BalanceLedger> Rail for BalanceRail<'a, L> {
    type Config = BalanceConfig<'a, L>;
    type Verified = VerifiedGrant;

    fn method(&self) -> &'static str {
        METHOD
    }

    fn challenge_request(
        &self,
        config: &BalanceConfig<'a, L>,
        price: &PriceTerms<'_>,
    ) -> Result<Map<String, Value>, Unavailable> {
        // §2; `description` stays in the challenge's own auth-param.
        let mut details = Map::new();
        details.insert("issuer".into(), Value::from(config.issuer.url()));
        let mut request = Map::new();
        request.insert("amount".into(), Value::from(price.amount));
        request.insert("currency".into(), Value::from(price.currency));
        request.insert("recipient".into(), Value::from(config.recipient));
        request.insert("methodDetails".into(), Value::Object(details));
        Ok(request)
    }

    fn verify(
        &self,
        config: &BalanceConfig<'a, L>,
        challenge: ChallengeFacts<'_>,
        price: &PriceTerms<'_>,
        credential: &Credential,
        now_s: i64,
    ) -> Result<VerifiedGrant, Rejection> {
        verify_grant(
            config.issuer,
            config.recipient,
            challenge,
            price,
            credential,
            now_s,
        )
    }

    fn replay_token(&self, verified: &VerifiedGrant) -> String {
        replay_token(&verified.grant_id)
    }

    async fn prepare(
        &self,
        _config: &BalanceConfig<'a, L>,
        verified: &VerifiedGrant,
    ) -> Result<Prepared, PrepareError> {
        let recorded = Recorded {
            reservation: format!("{:032x}", verified.reservation),
            grant_id: verified.grant_id.clone(),
            payer_tenant_id: verified.payer_tenant_id.clone(),
            amount: verified.amount_minor.to_string(),
            currency: verified.currency.clone(),
            expires_at_s: verified.expires_at_s,
        };
        let state = serde_json::to_value(&recorded).map_err(|_| {
            PrepareError::Unavailable(Unavailable("the posting does not serialize".into()))
        })?;
        Ok(Prepared {
            reference: verified.grant_id.clone(),
            state,
        })
    }

    async fn submit(&self, config: &BalanceConfig<'a, L>, prepared: &Prepared) -> Settlement {
        let Some((recorded, reservation, amount_minor)) = read_record(prepared) else {
            return Settlement::Failed(Rejection::failed("the settlement record is unreadable"));
        };
        let posting = Posting {
            reservation,
            grant_id: &recorded.grant_id,
            replay_token: replay_token(&recorded.grant_id),
            payer_tenant_id: &recorded.payer_tenant_id,
            recipient: config.recipient,
            amount_minor,
            currency: &recorded.currency,
        };
        let posted = config.ledger.post(posting).await;
        settlement(&recorded.grant_id, posted)
    }

    async fn resolve(
        &self,
        config: &BalanceConfig<'a, L>,
        prepared: &Prepared,
        _now_s: i64,
    ) -> Settlement {
        let Some((_, reservation, _)) = read_record(prepared) else {
            return Settlement::Failed(Rejection::failed("the settlement record is unreadable"));
        };
        // Whether the posting committed is unknown: voiding decides it either way.
        match config.ledger.void(reservation).await {
            Ok(Voided::AlreadyPosted) => Settlement::Settled {
                reference: prepared.reference.clone(),
            },
            Ok(Voided::Released | Voided::AlreadyReleased) => Settlement::Failed(
                Rejection::expired("the payer's reservation was released; pay again"),
            ),
            Ok(Voided::NotFound) => {
                Settlement::Failed(Rejection::failed("the grant's reservation does not exist"))
            }
            Err(_) => Settlement::Pending,
        }
    }
}

/// A [`Prepared`] record read back: the record, its reservation and its amount.
fn read_record(prepared: &Prepared) -> Option<(Recorded, u128, u128)> {
    let recorded = Recorded::deserialize(&prepared.state).ok()?;
    let reservation = parse_transfer_id(&recorded.reservation)?;
    let amount_minor = recorded.amount.parse().ok()?;
    Some((recorded, reservation, amount_minor))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use ed25519_dalek::{Signer as _, SigningKey};
    use serde_json::json;
    use turnpike_protocol::ProblemType;

    use super::*;

    const NOW_S: i64 = 1_788_264_002;
    const ISSUER: &str = "https://pay.turnpike.example";
    const MERCHANT: &str = "ten_01J9Z8M4Q7W2";
    const PAYER: &str = "ten_01J9Z7P2K5";
    const CHALLENGE: &str = "kQ3vX9mTz0bN4sLw7yRj2uHcA1dE5fG8iK6oP0qS2tU";
    const JTI: &str = "0190c3a2f1e84b7d9a6c5e4f3b2a1d0c";

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn kid(seed: u8) -> String {
        format!("kid-{seed}")
    }

    fn issuer() -> Issuer {
        Issuer::new(ISSUER, [(kid(1), key(1).verifying_key().to_bytes())]).unwrap()
    }

    fn claims() -> Value {
        json!({
            "iss": ISSUER, "jti": JTI, "chal": CHALLENGE, "amt": "250", "cur": "usd",
            "rcp": MERCHANT, "pyr": PAYER, "agt": "agt_01J9Z9X3VB",
            "iat": NOW_S, "exp": NOW_S + 358,
        })
    }

    fn b64_json(value: &Value) -> String {
        URL_SAFE_NO_PAD.encode(value.to_string())
    }

    /// A compact JWS of `claims` under `header`, signed by `signer`.
    fn sign(signer: &SigningKey, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", b64_json(header), b64_json(claims));
        let signature = signer.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }

    fn grant_with(claims: &Value) -> String {
        let header = json!({"alg": "EdDSA", "typ": GRANT_TYP, "kid": kid(1)});
        sign(&key(1), &header, claims)
    }

    fn credential(grant: &str, source: Option<&str>) -> Credential {
        let mut value = json!({
            "challenge": {
                "id": CHALLENGE, "realm": "weather", "method": METHOD, "intent": "charge",
                "request": "e30", "expires": "2026-09-01T12:05:00Z",
            },
            "payload": {"grant": grant},
        });
        if let Some(source) = source {
            value["source"] = json!(source);
        }
        serde_json::from_value(value).unwrap()
    }

    fn price(amount: &'static str, currency: &'static str) -> PriceTerms<'static> {
        PriceTerms {
            amount,
            amount_minor: amount.parse().unwrap(),
            currency,
            description: None,
        }
    }

    fn facts(id: &str) -> ChallengeFacts<'_> {
        ChallengeFacts {
            id,
            realm: "weather",
            expires_at_s: NOW_S + 300,
        }
    }

    fn verify_with(
        issuer: &Issuer,
        recipient: &str,
        challenge_id: &str,
        price: &PriceTerms<'_>,
        credential: &Credential,
        now_s: i64,
    ) -> Result<VerifiedGrant, Rejection> {
        let config = BalanceConfig {
            issuer,
            recipient,
            ledger: NoLedger,
        };
        BalanceRail::new().verify(&config, facts(challenge_id), price, credential, now_s)
    }

    fn verify(credential: &Credential) -> Result<VerifiedGrant, Rejection> {
        verify_with(
            &issuer(),
            MERCHANT,
            CHALLENGE,
            &price("250", "usd"),
            credential,
            NOW_S,
        )
    }

    fn refused(result: Result<VerifiedGrant, Rejection>, kind: ProblemType, detail: &str) {
        assert_eq!(
            result,
            Err(Rejection {
                kind,
                detail: detail.into()
            })
        );
    }

    fn good() -> VerifiedGrant {
        VerifiedGrant {
            reservation: 0x0190c3a2f1e84b7d9a6c5e4f3b2a1d0c,
            grant_id: JTI.into(),
            payer_tenant_id: PAYER.into(),
            agent_id: "agt_01J9Z9X3VB".into(),
            amount_minor: 250,
            currency: "usd".into(),
            expires_at_s: NOW_S + 358,
        }
    }

    #[test]
    fn good_grant_verifies_offline() {
        let grant = grant_with(&claims());
        assert_eq!(verify(&credential(&grant, None)), Ok(good()));
        let source = format!("turnpike:{PAYER}");
        assert_eq!(verify(&credential(&grant, Some(&source))), Ok(good()));
    }

    #[test]
    fn grant_for_another_challenge_is_refused() {
        let grant = grant_with(&claims());
        refused(
            verify_with(
                &issuer(),
                MERCHANT,
                "another-challenge",
                &price("250", "usd"),
                &credential(&grant, None),
                NOW_S,
            ),
            ProblemType::VerificationFailed,
            "the grant pays another challenge",
        );
    }

    #[test]
    fn grant_for_another_amount_or_currency_is_refused() {
        let grant = grant_with(&claims());
        for price in [price("251", "usd"), price("25", "usd"), price("250", "eur")] {
            refused(
                verify_with(
                    &issuer(),
                    MERCHANT,
                    CHALLENGE,
                    &price,
                    &credential(&grant, None),
                    NOW_S,
                ),
                ProblemType::VerificationFailed,
                "the grant's amount or currency differs from the request",
            );
        }
    }

    #[test]
    fn grant_for_another_recipient_is_refused() {
        let grant = grant_with(&claims());
        refused(
            verify_with(
                &issuer(),
                "ten_other",
                CHALLENGE,
                &price("250", "usd"),
                &credential(&grant, None),
                NOW_S,
            ),
            ProblemType::VerificationFailed,
            "the grant pays another recipient",
        );
    }

    #[test]
    fn expired_grant_is_payment_expired_without_leeway() {
        let grant = grant_with(&claims());
        let exp = NOW_S + 358;
        let credential = credential(&grant, None);
        let at = |now_s| {
            verify_with(
                &issuer(),
                MERCHANT,
                CHALLENGE,
                &price("250", "usd"),
                &credential,
                now_s,
            )
        };
        assert!(at(exp - 1).is_ok());
        refused(
            at(exp),
            ProblemType::PaymentExpired,
            "the grant has expired",
        );
        let mut future = claims();
        future["iat"] = json!(NOW_S + IAT_SKEW_MAX_S + 1);
        refused(
            verify(&self::credential(&grant_with(&future), None)),
            ProblemType::VerificationFailed,
            "grant: token not yet valid",
        );
    }

    #[test]
    fn bad_signatures_are_refused() {
        let grant = grant_with(&claims());
        let parts: Vec<&str> = grant.split('.').collect();
        // Claims changed after signing.
        let mut cheaper = claims();
        cheaper["amt"] = json!("1");
        let tampered = format!("{}.{}.{}", parts[0], b64_json(&cheaper), parts[2]);
        // Signed by another key under our kid.
        let header = json!({"alg": "EdDSA", "typ": GRANT_TYP, "kid": kid(1)});
        let forged = sign(&key(2), &header, &claims());
        // `alg: none`, and a truncated signature.
        let none = json!({"alg": "none", "typ": GRANT_TYP, "kid": kid(1)});
        let unsigned = format!("{}.{}.", b64_json(&none), parts[1]);
        let truncated = format!("{}.{}.{}", parts[0], parts[1], &parts[2][..40]);
        for bad in [tampered, forged, unsigned, truncated] {
            refused(
                verify(&credential(&bad, None)),
                ProblemType::VerificationFailed,
                "grant: bad signature",
            );
        }
    }

    #[test]
    fn a_grant_signed_here_is_taken_once_and_others_are_still_checked() {
        let signed = Arc::new(SignedGrants::new());
        let issuer = issuer().with_signed(signed.clone());
        let grant = grant_with(&claims());
        signed.remember(&grant, NOW_S + 358, NOW_S);
        assert_eq!(signed.len(), 1);
        let claims = issuer.verify(&grant, NOW_S).unwrap();
        assert_eq!(claims.jti, JTI);
        // Taken: presenting it again verifies its signature in full (and it holds).
        assert!(signed.is_empty());
        assert_eq!(issuer.verify(&grant, NOW_S).unwrap().jti, JTI);
        // A grant not recorded here is checked: tampered claims are refused.
        let parts: Vec<&str> = grant.split('.').collect();
        let mut cheaper = self::claims();
        cheaper["amt"] = json!("1");
        let tampered = format!("{}.{}.{}", parts[0], b64_json(&cheaper), parts[2]);
        assert_eq!(
            issuer.verify(&tampered, NOW_S).unwrap_err(),
            GrantError::BadSignature
        );
        // A recorded grant still has its header and time window checked: under a kid the
        // issuer does not list, or expired, it is refused and stays recorded.
        let header = json!({"alg": "EdDSA", "typ": GRANT_TYP, "kid": kid(3)});
        let retired = sign(&key(3), &header, &self::claims());
        signed.remember(&retired, NOW_S + 358, NOW_S);
        assert_eq!(
            issuer.verify(&retired, NOW_S).unwrap_err(),
            GrantError::UnknownKey
        );
        let again = grant_with(&self::claims());
        signed.remember(&again, NOW_S + 358, NOW_S);
        assert_eq!(
            issuer.verify(&again, NOW_S + 358).unwrap_err(),
            GrantError::Expired
        );
    }

    #[test]
    fn the_signed_grants_record_is_bounded() {
        let signed = SignedGrants::new();
        for n in 0..SIGNED_GRANTS_MAX {
            signed.remember(&format!("g{n}"), NOW_S - 1, NOW_S - 10);
        }
        signed.remember("fresh", NOW_S + 60, NOW_S);
        // The expired were dropped to make room; the fresh one is kept.
        assert_eq!(signed.len(), 1);
        assert!(signed.take("fresh"));
        assert!(!signed.take("fresh"));
    }

    #[test]
    fn grant_of_another_issuer_is_refused() {
        // Signed by another platform's key: unknown here (the host may reload its keys).
        let header = json!({"alg": "EdDSA", "typ": GRANT_TYP, "kid": kid(3)});
        let result = verify(&credential(&sign(&key(3), &header, &claims()), None));
        assert!(is_unknown_key(result.as_ref().unwrap_err()));
        refused(
            result,
            ProblemType::VerificationFailed,
            "grant: unknown signing key",
        );
        // Signed by our key but naming another issuer.
        let mut other = claims();
        other["iss"] = json!("https://other.example");
        let result = verify(&credential(&grant_with(&other), None));
        assert!(!is_unknown_key(result.as_ref().unwrap_err()));
        refused(
            result,
            ProblemType::VerificationFailed,
            "the grant was issued by another platform",
        );
    }

    #[test]
    fn agent_tokens_and_malformed_grants_are_refused() {
        let agent = json!({"alg": "EdDSA", "typ": "tp-agent+jwt", "kid": kid(1)});
        refused(
            verify(&credential(&sign(&key(1), &agent, &claims()), None)),
            ProblemType::VerificationFailed,
            "grant: wrong token type",
        );
        let crit = json!({"alg": "EdDSA", "typ": GRANT_TYP, "kid": kid(1), "crit": ["exp"]});
        let long = "A".repeat(GRANT_LEN_MAX_BYTES + 1);
        for bad in [sign(&key(1), &crit, &claims()), "a.b".into(), long] {
            refused(
                verify(&credential(&bad, None)),
                ProblemType::VerificationFailed,
                "grant: malformed token",
            );
        }
        let no_grant: Credential = {
            let mut c = credential("x", None);
            c.payload.clear();
            c
        };
        refused(
            verify(&no_grant),
            ProblemType::VerificationFailed,
            "payload has no `grant`",
        );
    }

    #[test]
    fn source_must_name_the_payer_and_jti_a_reservation() {
        let grant = grant_with(&claims());
        for source in ["turnpike:ten_other", PAYER, "did:key:z6Mk"] {
            refused(
                verify(&credential(&grant, Some(source))),
                ProblemType::VerificationFailed,
                "the credential's source is not the grant's payer",
            );
        }
        let mut no_hex = claims();
        no_hex["jti"] = json!("not-a-transfer-id");
        refused(
            verify(&credential(&grant_with(&no_hex), None)),
            ProblemType::VerificationFailed,
            "the grant names no reservation",
        );
    }

    #[test]
    fn issuer_reads_its_jwks() {
        let jwks = json!({"keys": [{
            "kty": "OKP", "crv": "Ed25519", "kid": kid(1), "alg": "EdDSA", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(key(1).verifying_key().to_bytes()),
        }]});
        let issuer = Issuer::from_jwks(ISSUER, &jwks).unwrap();
        let grant = grant_with(&claims());
        assert_eq!(
            verify_with(
                &issuer,
                MERCHANT,
                CHALLENGE,
                &price("250", "usd"),
                &credential(&grant, None),
                NOW_S
            ),
            Ok(good())
        );
        assert_eq!(
            Issuer::from_jwks(ISSUER, &json!({"keys": [{"kty": "RSA", "kid": "k"}]})).unwrap_err(),
            IssuerError::BadKey(0)
        );
        assert_eq!(
            Issuer::from_jwks(ISSUER, &json!({"keys": []})).unwrap_err(),
            IssuerError::KeyCount
        );
    }

    #[test]
    fn challenge_request_names_amount_currency_recipient_and_issuer() {
        let issuer = issuer();
        let config = BalanceConfig {
            issuer: &issuer,
            recipient: MERCHANT,
            ledger: NoLedger,
        };
        let request = BalanceRail::new()
            .challenge_request(&config, &price("250", "usd"))
            .unwrap();
        assert_eq!(
            Value::Object(request),
            json!({"amount": "250", "currency": "usd", "recipient": MERCHANT,
                   "methodDetails": {"issuer": ISSUER}})
        );
    }

    /// A ledger holding one reservation, to check how the rail reads its answers.
    struct OneReservation {
        state: Mutex<&'static str>,
        down: bool,
    }

    impl BalanceLedger for OneReservation {
        type Error = ();

        async fn post(&self, posting: Posting<'_>) -> Result<(), PostError<()>> {
            assert_eq!(posting.replay_token, format!("turnpike:{JTI}"));
            assert_eq!(posting.recipient, MERCHANT);
            if self.down {
                return Err(PostError::Ledger(()));
            }
            let mut state = self.state.lock().unwrap();
            match *state {
                "pending" => {
                    *state = "posted";
                    Ok(())
                }
                "posted" => Err(PostError::Taken),
                _ => Err(PostError::Refused(Rejection::expired("expired"))),
            }
        }

        async fn void(&self, _reservation: u128) -> Result<Voided, ()> {
            if self.down {
                return Err(());
            }
            let mut state = self.state.lock().unwrap();
            Ok(match *state {
                "pending" => {
                    *state = "voided";
                    Voided::Released
                }
                "posted" => Voided::AlreadyPosted,
                _ => Voided::AlreadyReleased,
            })
        }
    }

    #[tokio::test]
    async fn prepared_posting_settles_once_and_resolves_by_voiding() {
        let issuer = issuer();
        let config = |state, down| BalanceConfig {
            issuer: &issuer,
            recipient: MERCHANT,
            ledger: OneReservation {
                state: Mutex::new(state),
                down,
            },
        };
        let rail = BalanceRail::new();
        let pending = config("pending", false);
        let prepared = rail.prepare(&pending, &good()).await.unwrap();
        assert_eq!(prepared.reference, JTI);
        assert!(
            !prepared.state.to_string().contains('.'),
            "no grant recorded"
        );
        let settled = Settlement::Settled {
            reference: JTI.into(),
        };
        assert_eq!(rail.submit(&pending, &prepared).await, settled);
        assert!(matches!(
            rail.submit(&pending, &prepared).await,
            Settlement::Failed(_)
        ));
        assert_eq!(rail.resolve(&pending, &prepared, NOW_S).await, settled);

        let down = config("pending", true);
        assert_eq!(rail.submit(&down, &prepared).await, Settlement::Pending);
        assert_eq!(
            rail.resolve(&down, &prepared, NOW_S).await,
            Settlement::Pending
        );
        let unknown = config("pending", false);
        assert!(matches!(
            rail.resolve(&unknown, &prepared, NOW_S).await,
            Settlement::Failed(Rejection {
                kind: ProblemType::PaymentExpired,
                ..
            })
        ));
        assert_eq!(*unknown.ledger.state.lock().unwrap(), "voided");
    }
}
