//! The verify pipeline: issuing challenges for a request, and turning a credential into a
//! decision (parse, tenant binding, expiry, body digest, price and route, offline method
//! check, single-use claim, settlement, receipt). Nothing is written for an unpaid request.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value, json};
use turnpike_protocol::challenge::ChallengeParams;
use turnpike_protocol::credential::CredentialError;
use turnpike_protocol::{
    BindingSecret, Challenge, ContentDigest, Credential, Problem, ProblemType, Receipt,
    accept_payment, b64, find_payment_credential, jcs,
};
use turnpike_store::{Idempotency, PaymentRow, TenantRow};

use crate::catalog::{PriceDefinition, match_route};
use crate::decision::{Decision, DecisionKind};
use crate::error::{ApiError, PROBLEM_BASE};
use crate::ids;
use crate::method_turnpike;
use crate::state::AppState;
use turnpike_rails::Rail as _;
use turnpike_rails::balance::{BalanceConfig, BalanceRail, Issuer, PostError, VerifiedGrant};
use turnpike_rails::{EvmRail, TempoRail};

use crate::rails::ServerRail;

/// Binding secrets read per tenant (the current one and those still verifying).
const BINDING_SECRETS_READ_MAX: i64 = 8;
/// Longest Idempotency-Key.
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 255;

/// The merchant's incoming request, as far as payment is concerned.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestFacts {
    /// HTTP method.
    pub method: String,
    /// Path (no query).
    pub path: String,
    /// `Accept-Payment` header.
    #[serde(default)]
    pub accept_payment: Option<String>,
    /// `Content-Digest` of the body (RFC 9530).
    #[serde(default)]
    pub body_digest: Option<String>,
}

impl RequestFacts {
    fn validate(&self) -> Result<Option<ContentDigest>, ApiError> {
        if self.method.is_empty()
            || self.method.len() > 16
            || !self.method.bytes().all(|b| b.is_ascii_uppercase())
        {
            return Err(ApiError::invalid(
                "`method` must be an uppercase HTTP method",
            ));
        }
        if !self.path.starts_with('/') || self.path.len() > 2048 || self.path.contains('?') {
            return Err(ApiError::invalid(
                "`path` must start with `/`, hold no query and be at most 2048 bytes",
            ));
        }
        // A path that a server would normalise to another resource is not priced as written.
        if self
            .path
            .split('/')
            .any(|segment| segment == "." || segment == "..")
        {
            return Err(ApiError::invalid(
                "`path` must be normalised: no `.` or `..` segments",
            ));
        }
        self.body_digest
            .as_deref()
            .map(ContentDigest::parse)
            .transpose()
            .map_err(|_| {
                ApiError::invalid("`bodyDigest` must be an RFC 9530 value like `sha-256=:...:`")
            })
    }
}

/// A price version as a challenge names it.
#[derive(Debug, Clone)]
pub struct PriceRef {
    /// Price id.
    pub id: String,
    /// Version.
    pub version: i64,
    /// Its definition.
    pub definition: PriceDefinition,
}

/// The tenant's binding secrets: the current one issues, all listed verify.
#[derive(Debug)]
pub struct Secrets {
    current: BindingSecret,
    verifying: Vec<BindingSecret>,
}

impl Secrets {
    /// True when `id` binds `input` under one of the secrets.
    pub fn verify(&self, input: &turnpike_protocol::binding::BindingInput<'_>, id: &str) -> bool {
        // Every secret is tried, so the time taken does not tell which one matched.
        self.verifying
            .iter()
            .fold(false, |found, secret| secret.verify(input, id) | found)
    }
}

/// A tenant's binding secrets, through the cache (`fresh` skips it: after a rotation on
/// another replica, a challenge may be bound under a secret this replica has not seen yet).
pub async fn secrets(
    state: &AppState,
    tenant_id: &str,
    fresh: bool,
) -> Result<Arc<Secrets>, ApiError> {
    if !fresh && let Some(secrets) = state.caches.secrets.get(&tenant_id.to_owned()) {
        return Ok(secrets);
    }
    let rows = state
        .store
        .binding_secrets(tenant_id, BINDING_SECRETS_READ_MAX)
        .await?;
    let now_ms = state.now_ms();
    let ttl_max_ms = i64::try_from(crate::catalog::CHALLENGE_TTL_S_MAX).unwrap_or(i64::MAX) * 1000;
    let mut verifying = Vec::with_capacity(rows.len());
    // rows are newest first: a secret verifies until the challenges issued before its
    // successor was created may have expired.
    let mut superseded_at: Option<i64> = None;
    for row in &rows {
        let still_valid =
            superseded_at.is_none_or(|at| now_ms < at.saturating_add(ttl_max_ms) + 1000);
        if still_valid
            && let Some(secret) = b64::decode(&row.secret)
                .ok()
                .and_then(|b| BindingSecret::new(&b).ok())
        {
            verifying.push(secret);
        }
        superseded_at = Some(row.created_at);
    }
    let current = verifying.first().cloned().ok_or_else(|| {
        tracing::error!(tenant = tenant_id, "tenant has no usable binding secret");
        ApiError::internal()
    })?;
    let secrets = Arc::new(Secrets { current, verifying });
    state
        .caches
        .secrets
        .insert(tenant_id.to_owned(), secrets.clone());
    Ok(secrets)
}

/// A tenant's live prices, parsed, through the cache (in creation order).
pub async fn prices(state: &AppState, tenant_id: &str) -> Result<Arc<Vec<PriceRef>>, ApiError> {
    if let Some(prices) = state.caches.prices.get(&tenant_id.to_owned()) {
        return Ok(prices);
    }
    let mut out = Vec::new();
    for row in state.store.prices(tenant_id).await? {
        match serde_json::from_str::<PriceDefinition>(&row.definition) {
            Ok(definition) => out.push(PriceRef {
                id: row.id,
                version: row.version,
                definition,
            }),
            Err(_) => tracing::error!(price = %row.id, "stored price definition does not parse"),
        }
    }
    let prices = Arc::new(out);
    state
        .caches
        .prices
        .insert(tenant_id.to_owned(), prices.clone());
    Ok(prices)
}

/// The tenant's most specific live price for a request.
pub async fn find_price(
    state: &AppState,
    tenant: &TenantRow,
    method: &str,
    path: &str,
) -> Result<Option<PriceRef>, ApiError> {
    let prices = prices(state, &tenant.id).await?;
    let mut best: Option<(Vec<u8>, &PriceRef)> = None;
    for price in prices.iter() {
        if let Some(key) = match_route(&price.definition.route, method, path)
            && best.as_ref().is_none_or(|(k, _)| key > *k)
        {
            best = Some((key, price));
        }
    }
    Ok(best.map(|(_, price)| price.clone()))
}

fn no_matching_price(method: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "no-matching-price",
        format!("no price in the catalog matches this {method} request"),
    )
}

/// The opaque a challenge carries: which tenant, price and version it was issued for, and a
/// nonce.
fn opaque(tenant: &TenantRow, price: &PriceRef) -> Result<String, ApiError> {
    let mut map = Map::new();
    // A fresh nonce: two 402s for one price in the same second must be different challenges,
    // each single-use on its own.
    map.insert(
        "nonce".into(),
        Value::String(b64::encode(ids::random_bytes::<12>())),
    );
    map.insert("price".into(), Value::String(price.id.clone()));
    map.insert("tenant".into(), Value::String(tenant.id.clone()));
    map.insert("version".into(), Value::String(price.version.to_string()));
    jcs::to_b64(&map).map_err(|_| ApiError::internal())
}

fn format_expires(at_ms: i64) -> String {
    // Whole seconds, rounded up: a challenge never lives less than its price's TTL.
    let at_ms = at_ms
        .saturating_add(999)
        .div_euclid(1000)
        .saturating_mul(1000);
    chrono::DateTime::from_timestamp_millis(at_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Issue one challenge per method of `price` the rails can offer now, in `Accept-Payment`
/// order: (id, header value).
fn issue_challenges(
    state: &AppState,
    secret: &BindingSecret,
    tenant: &TenantRow,
    price: &PriceRef,
    facts: &RequestFacts,
    digest: Option<&ContentDigest>,
    context: &MethodContext,
) -> Result<Vec<(String, String)>, ApiError> {
    let def = &price.definition;
    let offers: Vec<(&str, &str)> = def
        .methods
        .iter()
        .map(|m| (m.as_str(), def.intent.as_str()))
        .collect();
    let order = accept_payment::negotiate(facts.accept_payment.as_deref(), &offers);
    let ttl_ms = i64::try_from(def.challenge_ttl_s)
        .unwrap_or(i64::MAX)
        .saturating_mul(1000);
    let expires = format_expires(state.now_ms().saturating_add(ttl_ms));
    let opaque = opaque(tenant, price)?;
    let mut out = Vec::with_capacity(order.len());
    // `Accept-Payment` may exclude every method: a 402 without challenges is then right.
    let negotiated_any = !order.is_empty();
    for index in order {
        let method = &def.methods[index];
        let Some(request) = method_request(state, tenant, method, def, context) else {
            continue;
        };
        let challenge = Challenge::issue_with_secret(
            secret,
            ChallengeParams {
                realm: tenant.realm.clone(),
                method: method.clone(),
                intent: def.intent.clone(),
                request,
                expires: Some(expires.clone()),
                digest: digest.map(ContentDigest::to_header_value),
                description: def.description.clone(),
                opaque: Some(opaque.clone()),
            },
        )
        .map_err(|err| {
            tracing::error!(error = %err, "issuing a challenge failed");
            ApiError::internal()
        })?;
        let header = challenge.to_header_value().map_err(|err| {
            tracing::error!(error = %err, "formatting a challenge failed");
            ApiError::internal()
        })?;
        out.push((challenge.id, header));
    }
    if out.is_empty() && negotiated_any {
        return Err(ApiError::unavailable(
            "no payment method of this price can be offered right now",
        )
        .retry_after(5));
    }
    Ok(out)
}

/// What issuing or checking a price's challenges needs from the rails, loaded once per request
/// (only for the methods the price accepts).
#[derive(Debug, Default)]
pub struct MethodContext {
    /// The tenant's `evm` configuration, when the price accepts `evm`.
    pub evm: Option<Arc<turnpike_rails::evm::EvmConfig>>,
    /// The platform as the issuer of grants, when the price accepts `turnpike`.
    pub turnpike: Option<Arc<Issuer>>,
    /// The tenant's `tempo` configuration, when the price accepts `tempo`.
    pub tempo: Option<Arc<turnpike_rails::tempo::TempoConfig>>,
}

/// Load what the price's methods need.
pub async fn method_context(
    state: &AppState,
    tenant: &TenantRow,
    def: &PriceDefinition,
) -> Result<MethodContext, ApiError> {
    let mut context = MethodContext::default();
    if def.methods.iter().any(|m| m == "evm") {
        context.evm = crate::rails::evm_config(state, &tenant.id).await?;
    }
    if def.methods.iter().any(|m| m == "turnpike") {
        context.turnpike = Some(state.issuer());
    }
    if def.methods.iter().any(|m| m == "tempo") {
        context.tempo = crate::rails::tempo_config(state, &tenant.id).await?;
    }
    Ok(context)
}

/// The method-specific `request` object for a price, or `None` when its rail cannot offer it
/// now (not configured, no token for the currency, the hot wallet low on gas).
fn method_request(
    state: &AppState,
    tenant: &TenantRow,
    method: &str,
    def: &PriceDefinition,
    context: &MethodContext,
) -> Option<Map<String, Value>> {
    match method {
        "turnpike" => {
            let config = method_turnpike::offline_config(context.turnpike.as_ref()?, tenant);
            BalanceRail::new()
                .challenge_request(&config, &crate::rails::price_terms(def))
                .ok()
        }
        "evm" => offer::<EvmRail>(state, tenant, def, context.evm.as_deref()),
        "tempo" => offer::<TempoRail>(state, tenant, def, context.tempo.as_deref()),
        _ => None,
    }
}

/// A rail's `request` for a price, or `None` (logged) when it cannot offer it.
fn offer<R: ServerRail>(
    state: &AppState,
    tenant: &TenantRow,
    def: &PriceDefinition,
    config: Option<&R::Config>,
) -> Option<Map<String, Value>> {
    match R::of(state).challenge_request(config?, &crate::rails::price_terms(def)) {
        Ok(request) => Some(request),
        Err(why) => {
            tracing::debug!(tenant = %tenant.id, method = R::METHOD, reason = %why, "not offered");
            None
        }
    }
}

/// `POST /v1/challenges`: the 402 for a request (or `no-matching-price`).
pub async fn challenge(
    state: &AppState,
    tenant: &TenantRow,
    facts: &RequestFacts,
) -> Result<Decision, ApiError> {
    let digest = facts.validate()?;
    let price = find_price(state, tenant, &facts.method, &facts.path)
        .await?
        .ok_or_else(|| no_matching_price(&facts.method))?;
    let secrets = secrets(state, &tenant.id, false).await?;
    fresh_402(
        state,
        &secrets,
        tenant,
        &price,
        facts,
        digest.as_ref(),
        Problem::new(
            ProblemType::PaymentRequired,
            "payment is required for this resource",
        ),
    )
    .await
}

async fn fresh_402(
    state: &AppState,
    secrets: &Secrets,
    tenant: &TenantRow,
    price: &PriceRef,
    facts: &RequestFacts,
    digest: Option<&ContentDigest>,
    problem: Problem,
) -> Result<Decision, ApiError> {
    let context = method_context(state, tenant, &price.definition).await?;
    let challenges = issue_challenges(
        state,
        &secrets.current,
        tenant,
        price,
        facts,
        digest,
        &context,
    )?;
    Ok(Decision::payment_required(challenges, problem))
}

fn turnpike_problem(code: &str, title: &str, status: u16, detail: &str) -> Value {
    json!({
        "type": format!("{PROBLEM_BASE}{code}"),
        "title": title,
        "status": status,
        "detail": detail,
    })
}

/// Why a credential was refused before settlement.
enum Refusal {
    /// 402 with a fresh challenge and this problem.
    Retry(ProblemType, String),
    /// 400, no challenge.
    BadRequest(Value),
}

fn retry(kind: ProblemType, detail: impl Into<String>) -> Refusal {
    Refusal::Retry(kind, detail.into())
}

/// `POST /v1/verify`: the whole pipeline, under an optional idempotency key.
pub async fn verify(
    state: &AppState,
    tenant: &TenantRow,
    authorization: &[String],
    facts: &RequestFacts,
    idempotency_key: Option<&str>,
) -> Result<Decision, ApiError> {
    let digest = facts.validate()?;
    let Some(key) = idempotency_key else {
        return verify_once(state, tenant, authorization, facts, digest.as_ref()).await;
    };
    if key.is_empty() || key.len() > IDEMPOTENCY_KEY_LEN_MAX || key.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "`Idempotency-Key` must be 1 to {IDEMPOTENCY_KEY_LEN_MAX} printable characters"
        )));
    }
    let request_hash = ids::hash_secret(&format!(
        "{}\n{}\n{}\n{}",
        authorization.join("\n"),
        facts.method,
        facts.path,
        facts.body_digest.as_deref().unwrap_or("")
    ));
    match state
        .store
        .idempotency_start(&tenant.id, key, &request_hash, state.now_ms())
        .await?
    {
        Idempotency::Started => {}
        Idempotency::Done(stored) => {
            return serde_json::from_str(&stored).map_err(|_| ApiError::internal());
        }
        Idempotency::InProgress => {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "idempotency-key-in-use",
                "a request with this Idempotency-Key is still running; retry shortly",
            ));
        }
        Idempotency::Mismatch => {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "idempotency-key-in-use",
                "this Idempotency-Key was used for a different request",
            ));
        }
    }
    let outcome = verify_once(state, tenant, authorization, facts, digest.as_ref()).await;
    match &outcome {
        // Only a payment is remembered: a refused attempt may be retried under the same key
        // with a better credential.
        Ok(decision) if decision.decision == DecisionKind::Paid => {
            let stored = serde_json::to_string(decision).map_err(|_| ApiError::internal())?;
            state
                .store
                .idempotency_finish(&tenant.id, key, &stored)
                .await?;
        }
        _ => state.store.idempotency_abandon(&tenant.id, key).await?,
    }
    outcome
}

async fn verify_once(
    state: &AppState,
    tenant: &TenantRow,
    authorization: &[String],
    facts: &RequestFacts,
    digest: Option<&ContentDigest>,
) -> Result<Decision, ApiError> {
    let secrets = secrets(state, &tenant.id, false).await?;
    let credential = match find_payment_credential(authorization.iter().map(String::as_str)) {
        Ok(Some(credential)) => credential,
        Ok(None) => {
            return challenge_for(
                state,
                &secrets,
                tenant,
                facts,
                digest,
                retry(
                    ProblemType::PaymentRequired,
                    "payment is required for this resource",
                ),
            )
            .await;
        }
        Err(CredentialError::MultipleCredentials) => {
            return Ok(Decision::refused(
                DecisionKind::BadRequest,
                400,
                turnpike_problem(
                    "multiple-credentials",
                    "Several Payment credentials",
                    400,
                    "the request carries more than one Payment credential; send exactly one",
                ),
            ));
        }
        Err(err) => {
            return challenge_for(
                state,
                &secrets,
                tenant,
                facts,
                digest,
                retry(ProblemType::MalformedCredential, err.to_string()),
            )
            .await;
        }
    };
    match check_credential(state, &secrets, tenant, facts, digest, &credential).await? {
        Ok(checked) => settle(state, &secrets, tenant, facts, digest, checked).await,
        Err(refusal) => challenge_for(state, &secrets, tenant, facts, digest, refusal).await,
    }
}

async fn challenge_for(
    state: &AppState,
    secrets: &Secrets,
    tenant: &TenantRow,
    facts: &RequestFacts,
    digest: Option<&ContentDigest>,
    refusal: Refusal,
) -> Result<Decision, ApiError> {
    match refusal {
        Refusal::BadRequest(problem) => {
            Ok(Decision::refused(DecisionKind::BadRequest, 400, problem))
        }
        Refusal::Retry(kind, detail) => {
            let price = find_price(state, tenant, &facts.method, &facts.path)
                .await?
                .ok_or_else(|| no_matching_price(&facts.method))?;
            fresh_402(
                state,
                secrets,
                tenant,
                &price,
                facts,
                digest,
                Problem::new(kind, detail),
            )
            .await
        }
    }
}

/// A credential that passed every offline check.
struct Checked {
    credential: Credential,
    price: PriceRef,
    verified: Verified,
}

/// What a method's offline checks established.
enum Verified {
    /// `turnpike`: a grant over a reservation, with the issuer it was checked against.
    Turnpike(VerifiedGrant, Arc<Issuer>),
    /// `evm`: a credential to settle on the chain, with the configuration it was checked under.
    Evm(
        Box<turnpike_rails::evm::VerifiedEvm>,
        Arc<turnpike_rails::evm::EvmConfig>,
    ),
    /// `tempo`: likewise.
    Tempo(
        Box<turnpike_rails::tempo::VerifiedTempo>,
        Arc<turnpike_rails::tempo::TempoConfig>,
    ),
}

async fn check_credential(
    state: &AppState,
    secrets: &Secrets,
    tenant: &TenantRow,
    facts: &RequestFacts,
    digest: Option<&ContentDigest>,
    credential: &Credential,
) -> Result<Result<Checked, Refusal>, ApiError> {
    let echo = &credential.challenge;
    // The binding first: nothing echoed is trusted before it.
    let input = echo.binding_input();
    let bound = echo.realm == tenant.realm
        && (secrets.verify(&input, &echo.id)
            // Bound under a secret rotated in on another replica since this one cached them?
            || crate::pipeline::secrets(state, &tenant.id, true)
                .await?
                .verify(&input, &echo.id));
    if !bound {
        return Ok(Err(retry(
            ProblemType::InvalidChallenge,
            "the challenge was not issued by this merchant or was altered",
        )));
    }
    let Some(price) = price_of_challenge(state, tenant, echo.opaque.as_deref()).await? else {
        return Ok(Err(retry(
            ProblemType::InvalidChallenge,
            "the challenge names no known price",
        )));
    };
    if !price.definition.methods.contains(&echo.method) || echo.intent != price.definition.intent {
        return Ok(Err(Refusal::BadRequest(
            serde_json::to_value(Problem::new(
                ProblemType::MethodUnsupported,
                format!(
                    "payment method `{}` is not accepted for this resource",
                    echo.method
                ),
            ))
            .unwrap_or_default(),
        )));
    }
    // A credential pays for the request it was issued for: the challenge's price (any of its
    // versions) must be the one the catalog charges for this request now, not only one whose
    // route also matches it (a cheaper `/shop/*` does not pay for `/shop/gold`).
    let charged = find_price(state, tenant, &facts.method, &facts.path).await?;
    if match_route(&price.definition.route, &facts.method, &facts.path).is_none()
        || charged.is_none_or(|charged| charged.id != price.id)
    {
        return Ok(Err(retry(
            ProblemType::InvalidChallenge,
            "the challenge was issued for another resource or price",
        )));
    }
    match echo.expires_at() {
        Ok(Some(at)) if at.timestamp_millis() > state.now_ms() => {}
        Ok(Some(_)) => {
            return Ok(Err(retry(
                ProblemType::InvalidChallenge,
                "the challenge has expired",
            )));
        }
        _ => {
            return Ok(Err(retry(
                ProblemType::InvalidChallenge,
                "the challenge has no valid expiry",
            )));
        }
    }
    if let Some(echoed) = echo.digest.as_deref() {
        let same = match (ContentDigest::parse(echoed), digest) {
            (Ok(expected), Some(actual)) => expected.ct_equals(actual),
            _ => false,
        };
        if !same {
            return Ok(Err(retry(
                ProblemType::VerificationFailed,
                "the request body differs from the one the challenge was issued for",
            )));
        }
    }
    let Ok(request) = echo.request_json() else {
        return Ok(Err(retry(
            ProblemType::InvalidChallenge,
            "the challenge request does not decode",
        )));
    };
    let context = method_context(state, tenant, &price.definition).await?;
    let Some(expected) = method_request(state, tenant, &echo.method, &price.definition, &context)
    else {
        return Ok(Err(retry(
            ProblemType::InvalidChallenge,
            "this payment method is not offered for the resource any more",
        )));
    };
    if request != expected {
        return Ok(Err(retry(
            ProblemType::InvalidChallenge,
            "the challenge request does not match the price it names",
        )));
    }
    let verified = match echo.method.as_str() {
        "turnpike" => {
            let Some(issuer) = context.turnpike.clone() else {
                return Ok(Err(retry(
                    ProblemType::VerificationFailed,
                    "unsupported method",
                )));
            };
            let terms = crate::rails::price_terms(&price.definition);
            method_turnpike::verify(state, issuer, tenant, echo, &terms, credential)
                .await?
                .map(|(grant, issuer)| Verified::Turnpike(grant, issuer))
                .map_err(|r| (r.kind, r.detail))
        }
        "evm" => {
            let Some(config) = context.evm.clone() else {
                return Ok(Err(retry(
                    ProblemType::VerificationFailed,
                    "this merchant has no evm rail",
                )));
            };
            verify_on::<EvmRail>(state, &config, echo, &price.definition, credential)
                .map(|v| Verified::Evm(Box::new(v), config))
        }
        "tempo" => {
            let Some(config) = context.tempo.clone() else {
                return Ok(Err(retry(
                    ProblemType::VerificationFailed,
                    "this merchant has no tempo rail",
                )));
            };
            verify_on::<TempoRail>(state, &config, echo, &price.definition, credential)
                .map(|v| Verified::Tempo(Box::new(v), config))
        }
        _ => {
            return Ok(Err(retry(
                ProblemType::VerificationFailed,
                "unsupported method",
            )));
        }
    };
    Ok(match verified {
        Ok(verified) => Ok(Checked {
            credential: credential.clone(),
            price,
            verified,
        }),
        Err((kind, detail)) => Err(retry(kind, detail)),
    })
}

/// A rail's offline verification of a credential.
fn verify_on<R: ServerRail>(
    state: &AppState,
    config: &R::Config,
    echo: &turnpike_protocol::ChallengeEcho,
    def: &PriceDefinition,
    credential: &Credential,
) -> Result<R::Verified, (ProblemType, String)> {
    let facts = turnpike_rails::ChallengeFacts {
        id: &echo.id,
        realm: &echo.realm,
        expires_at_s: echo
            .expires_at()
            .ok()
            .flatten()
            .map_or(0, |t| t.timestamp()),
    };
    R::of(state)
        .verify(
            config,
            facts,
            &crate::rails::price_terms(def),
            credential,
            state.now_ms().div_euclid(1000),
        )
        .map_err(|r| (r.kind, r.detail))
}

async fn price_of_challenge(
    state: &AppState,
    tenant: &TenantRow,
    opaque: Option<&str>,
) -> Result<Option<PriceRef>, ApiError> {
    let Some(map) = opaque
        .and_then(|o| b64::decode(o).ok())
        .and_then(|bytes| serde_json::from_slice::<Map<String, Value>>(&bytes).ok())
    else {
        return Ok(None);
    };
    let field = |name: &str| map.get(name).and_then(Value::as_str);
    let (Some(tenant_id), Some(price_id), Some(version)) = (
        field("tenant"),
        field("price"),
        field("version").and_then(|v| v.parse::<i64>().ok()),
    ) else {
        return Ok(None);
    };
    if tenant_id != tenant.id {
        return Ok(None);
    }
    let key = (tenant.id.clone(), price_id.to_owned(), version);
    if let Some(price) = state.caches.price_versions.get(&key) {
        return Ok(Some(price));
    }
    let Some(definition) = state
        .store
        .price_version(&tenant.id, price_id, version)
        .await?
    else {
        return Ok(None);
    };
    let Ok(definition) = serde_json::from_str::<PriceDefinition>(&definition) else {
        return Ok(None);
    };
    let price = PriceRef {
        id: price_id.to_owned(),
        version,
        definition,
    };
    state.caches.price_versions.insert(key, price.clone());
    Ok(Some(price))
}

async fn settle(
    state: &AppState,
    secrets: &Secrets,
    tenant: &TenantRow,
    facts: &RequestFacts,
    digest: Option<&ContentDigest>,
    checked: Checked,
) -> Result<Decision, ApiError> {
    let now_ms = state.now_ms();
    let payment_id = ids::new_id("pay");
    let row = PaymentRow {
        id: payment_id.clone(),
        tenant_id: tenant.id.clone(),
        challenge_id: checked.credential.challenge.id.clone(),
        proof_key: String::new(),
        state: "settled".to_owned(),
        method: checked.credential.challenge.method.clone(),
        amount: checked.price.definition.amount.clone(),
        currency: checked.price.definition.currency.clone(),
        price_id: checked.price.id.clone(),
        price_version: checked.price.version,
        payer_tenant_id: None,
        reference: None,
        created_at: now_ms,
        updated_at: now_ms,
    };
    let (grant, issuer) = match checked.verified {
        Verified::Turnpike(grant, issuer) => (grant, issuer),
        Verified::Evm(verified, config) => {
            return settle_rail::<EvmRail>(
                state, secrets, tenant, facts, digest, row, &verified, &config,
            )
            .await;
        }
        Verified::Tempo(verified, config) => {
            return settle_rail::<TempoRail>(
                state, secrets, tenant, facts, digest, row, &verified, &config,
            )
            .await;
        }
    };
    // The payment row and the posting commit together (one ledger transaction): a challenge or
    // proof used before is refused there, on every replica.
    let config = BalanceConfig {
        issuer: &issuer,
        recipient: &tenant.id,
        ledger: method_turnpike::PaymentLedger::new(state, row),
    };
    match BalanceRail::new().settle(&config, &grant).await {
        Ok(()) => {}
        Err(PostError::Taken) => return Ok(already_used()),
        Err(PostError::Refused(rejection)) => {
            let refusal = retry(rejection.kind, rejection.detail);
            return challenge_for(state, secrets, tenant, facts, digest, refusal).await;
        }
        Err(PostError::Ledger(err)) => return Err(err),
    }
    let timestamp = chrono::DateTime::from_timestamp_millis(state.now_ms()).unwrap_or_default();
    let receipt = Receipt::success("turnpike", timestamp, &payment_id)
        .to_header_value()
        .map_err(|_| ApiError::internal())?;
    tracing::info!(payment = %payment_id, tenant = %tenant.id, "payment settled");
    Ok(Decision::paid(payment_id, receipt))
}

fn already_used() -> Decision {
    Decision::refused(
        DecisionKind::Forbidden,
        403,
        turnpike_problem(
            "credential-already-used",
            "Credential already used",
            403,
            "this challenge or proof has already been used for a payment",
        ),
    )
}

/// Settle a credential on an outside rail (see [`crate::rails::settle_on`]).
#[allow(clippy::too_many_arguments)]
async fn settle_rail<R: ServerRail>(
    state: &AppState,
    secrets: &Secrets,
    tenant: &TenantRow,
    facts: &RequestFacts,
    digest: Option<&ContentDigest>,
    row: PaymentRow,
    verified: &R::Verified,
    config: &R::Config,
) -> Result<Decision, ApiError> {
    let challenge_id = row.challenge_id.clone();
    let row = PaymentRow {
        proof_key: R::of(state).replay_token(verified),
        ..row
    };
    match crate::rails::settle_on::<R>(state, config, row, verified).await? {
        crate::rails::Outcome::Paid {
            payment_id,
            reference,
        } => {
            let timestamp =
                chrono::DateTime::from_timestamp_millis(state.now_ms()).unwrap_or_default();
            let mut receipt = Receipt::success(R::METHOD, timestamp, &reference);
            receipt
                .extra
                .insert("challengeId".into(), Value::String(challenge_id));
            receipt
                .extra
                .insert("chainId".into(), Value::from(R::chain_id(verified)));
            let receipt = receipt
                .to_header_value()
                .map_err(|_| ApiError::internal())?;
            Ok(Decision::paid(payment_id, receipt))
        }
        crate::rails::Outcome::Pending { payment_id } => Ok(Decision::pending(
            payment_id,
            turnpike_problem(
                "settlement-pending",
                "Settlement pending",
                202,
                "the payment was submitted but its outcome is not known yet; it will be \
                 settled or released without being charged twice",
            ),
        )),
        crate::rails::Outcome::Taken => Ok(already_used()),
        crate::rails::Outcome::Refused(rejection) => {
            challenge_for(
                state,
                secrets,
                tenant,
                facts,
                digest,
                retry(rejection.kind, rejection.detail),
            )
            .await
        }
    }
}
