//! The gateway: `/gw/{tenant-slug}/...` answers the whole 402 flow for prices with an upstream,
//! proxies paid requests there with `X-Turnpike-Payment`, and, when the upstream fails (5xx or
//! no answer), refunds a `turnpike` payer at once or, for a chain payment (which Turnpike cannot
//! send back), reverses its booking and marks it `refund_due` for the merchant to return.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use turnpike_protocol::ContentDigest;
use turnpike_store::TenantRow;

use crate::decision::{Decision, DecisionKind};
use crate::error::{ApiError, ApiResult};
use crate::pipeline::{self, PriceRef, RequestFacts};
use crate::rails;
use crate::state::AppState;

/// Largest request body the gateway reads.
pub const REQUEST_BODY_BYTES_MAX: usize = 1 << 20;
/// Largest upstream response body the gateway relays.
pub const RESPONSE_BODY_BYTES_MAX: usize = 10 << 20;
/// The header naming the payment on proxied requests.
pub const PAYMENT_HEADER: &str = "x-turnpike-payment";

/// `/gw/{slug}` and `/gw/{slug}/{*rest}`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/gw/{slug}", any(gateway))
        .route("/gw/{slug}/{*rest}", any(gateway))
}

/// No path extractor: the path is read as sent and decoded here, segment by segment (a
/// router's plain-text rejection of an undecodable segment would not be a problem+json).
async fn gateway(state: State<AppState>, request: Request) -> Response {
    // `/gw/{slug}/...`: a slug is `[a-z0-9-]`, so as sent is as decoded.
    let slug = request
        .uri()
        .path()
        .split('/')
        .nth(2)
        .unwrap_or_default()
        .to_owned();
    handle(state, slug, request)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// The decoded segments of a gateway request's path after `/gw/{slug}`, read from the path as
/// sent (not as a router decoded it). Dot segments (`.`, `..`, also percent-encoded), empty
/// segments, and segments that decode to `/`, `\`, `?`, `#`, a control character or invalid
/// UTF-8 are refused: each segment stays one segment under the price's upstream base path,
/// and what was priced is what is proxied.
pub fn gateway_segments(raw_path: &str) -> ApiResult<Vec<String>> {
    let mut parts = raw_path.split('/');
    // "", "gw", the slug.
    let _ = (parts.next(), parts.next(), parts.next());
    let rest: Vec<&str> = parts.collect();
    let mut out = Vec::with_capacity(rest.len());
    for (i, raw) in rest.iter().enumerate() {
        // One trailing slash is a path of its own (`/docs/`); any other empty segment is not.
        if raw.is_empty() && i + 1 == rest.len() {
            out.push(String::new());
            continue;
        }
        let decoded = percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| bad_path("a path segment is not UTF-8 once decoded"))?;
        if decoded.is_empty() || decoded == "." || decoded == ".." {
            return Err(bad_path("empty and dot segments (`.`, `..`) are refused"));
        }
        if decoded
            .chars()
            .any(|c| matches!(c, '/' | '\\' | '?' | '#') || c.is_control())
        {
            return Err(bad_path(
                "a path segment may not hold `/`, `\\`, `?`, `#` or control characters, encoded or not",
            ));
        }
        out.push(decoded.into_owned());
    }
    Ok(out)
}

fn bad_path(detail: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid-path", detail.to_owned())
}

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// True when an `Authorization` value carries a Payment credential, however it is spelled or
/// joined (`Payment<TAB>…`, `Bearer x, payment …`): such a value never reaches the upstream.
/// A value is checked by the protocol's own scheme parser and, beyond it, by any token equal
/// to `payment` between spaces, tabs and commas.
fn is_payment_authorization(value: &HeaderValue) -> bool {
    let text = String::from_utf8_lossy(value.as_bytes());
    turnpike_protocol::auth_params::group_schemes(&text)
        .iter()
        .any(|group| group.scheme.eq_ignore_ascii_case(turnpike_protocol::SCHEME))
        || text
            .split(|c: char| c == ',' || c.is_ascii_whitespace())
            .any(|token| token.eq_ignore_ascii_case("payment"))
}

/// Upstream answer headers never relayed: Turnpike's own payment headers are the only ones a
/// client may trust.
const UPSTREAM_DROPPED: [&str; 3] = ["payment-receipt", "www-authenticate", PAYMENT_HEADER];

/// The gateway for `/{rest}` (also reached from [`super::discovery`] for methods other than
/// GET and HEAD on its path).
pub(crate) async fn handle(
    State(state): State<AppState>,
    slug: String,
    request: Request,
) -> ApiResult<Response> {
    let tenant = state
        .tenant_by_slug(&slug)
        .await?
        .ok_or_else(|| ApiError::not_found("gateway"))?;
    let (parts, body) = request.into_parts();
    let segments = gateway_segments(parts.uri.path())?;
    let path = format!("/{}", segments.join("/"));
    let method = parts.method.as_str().to_owned();
    let price = pipeline::find_price(&state, &tenant, &method, &path)
        .await?
        .filter(|p| p.definition.upstream_url.is_some())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no-matching-price",
                format!("no paid route matches {method} {path}"),
            )
        })?;
    let body = axum::body::to_bytes(body, REQUEST_BODY_BYTES_MAX)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                format!("the gateway accepts bodies of at most {REQUEST_BODY_BYTES_MAX} bytes"),
            )
        })?;
    let facts = RequestFacts {
        method,
        path,
        accept_payment: parts
            .headers
            .get("accept-payment")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body_digest: (!body.is_empty()).then(|| ContentDigest::sha256(&body).to_header_value()),
    };
    let authorization = authorization_values(&parts.headers);
    if !authorization
        .iter()
        .any(|v| v.to_ascii_lowercase().contains("payment"))
    {
        return Ok(pipeline::challenge(&state, &tenant, &facts)
            .await?
            .to_response());
    }
    let delivery = Delivery {
        state,
        tenant,
        price,
        facts,
        authorization,
        segments,
        parts,
        body,
    };
    // Detached from the client's connection: once a credential may pay, the request is
    // finished (served, or refunded) even when the client goes away meanwhile.
    tokio::spawn(delivery.run()).await.map_err(|err| {
        tracing::error!(error = %err, "a gateway delivery task failed");
        ApiError::internal()
    })?
}

fn authorization_values(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect()
}

/// A gateway request carrying a credential, handled to its end on a task of its own.
struct Delivery {
    state: AppState,
    tenant: TenantRow,
    price: PriceRef,
    facts: RequestFacts,
    authorization: Vec<String>,
    segments: Vec<String>,
    parts: axum::http::request::Parts,
    body: Bytes,
}

impl Delivery {
    /// Record the delivery before the credential may pay (`gateway_deliveries`), verify,
    /// proxy, refund on an upstream failure; the record is deleted only once the request is
    /// finished, so a crash anywhere in between leaves it for [`crate::deliveries`]' job.
    async fn run(self) -> ApiResult<Response> {
        let challenge_id = turnpike_protocol::find_payment_credential(
            self.authorization.iter().map(String::as_str),
        )
        .ok()
        .flatten()
        .map(|credential| credential.challenge.id);
        let (state, tenant) = (self.state.clone(), self.tenant.clone());
        let began = match &challenge_id {
            Some(id) => {
                state
                    .store
                    .begin_delivery(&tenant.id, id, state.now_ms())
                    .await?
            }
            None => false,
        };
        let (response, finished) = self.deliver().await?;
        if let (true, true, Some(id)) = (began, finished, &challenge_id)
            && let Err(err) = state.store.end_delivery(&tenant.id, id).await
        {
            // The job finds the request finished (its payment settled or refunded) later.
            tracing::warn!(error = %err, "a finished gateway delivery could not be cleared");
        }
        Ok(response)
    }

    /// The answer, and whether the request is finished (false: a refund or reversal is still
    /// owed and the delivery job is to retry it).
    async fn deliver(self) -> ApiResult<(Response, bool)> {
        let state = &self.state;
        let decision =
            pipeline::verify(state, &self.tenant, &self.authorization, &self.facts, None).await?;
        if decision.decision != DecisionKind::Paid {
            return Ok((decision.to_response(), true));
        }
        let payment_id = decision.payment_id.clone().ok_or_else(ApiError::internal)?;
        let query = self
            .parts
            .uri
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        let upstream = proxy(
            state,
            &self.price,
            &self.segments,
            &query,
            &self.parts.method,
            &self.parts.headers,
            self.body,
            &payment_id,
        )
        .await;
        match upstream {
            Ok(response) if !response.status().is_server_error() => {
                Ok((with_receipt(response, &decision), true))
            }
            outcome => after_failure(state, &self.tenant, &payment_id, outcome).await,
        }
    }
}

/// The upstream failed after payment: refund a `turnpike` payer at once, or reverse a chain
/// payment and mark it owed back.
async fn after_failure(
    state: &AppState,
    tenant: &TenantRow,
    payment_id: &str,
    outcome: Result<Response, String>,
) -> ApiResult<(Response, bool)> {
    let payment = state
        .store
        .payment(&tenant.id, payment_id)
        .await?
        .ok_or_else(ApiError::internal)?;
    if payment.payer_tenant_id.is_some() {
        crate::refunds::refund_balance(state, &payment).await?;
        return Ok((
            match outcome {
                Ok(response) => response,
                Err(detail) => ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream-failed",
                    format!("{detail}; the payment was refunded"),
                )
                .into_response(),
            },
            true,
        ));
    }
    let owed = owe_back(state, &payment).await;
    let response = match outcome {
        Ok(response) => response,
        Err(detail) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "upstream-failed",
            format!("{detail}; {}", owed.detail(payment_id)),
        )
        .with("paymentId", payment_id.to_owned().into())
        .with("refund", owed.as_str().into())
        .into_response(),
    };
    Ok((
        with_refund_headers(response, payment_id, owed),
        owed != Owed::Unrecorded,
    ))
}

/// The response header saying what became of a chain payment whose upstream failed.
pub const REFUND_HEADER: &str = "x-turnpike-refund";

/// What became of a payment settled on a chain (`evm`, `tempo`) whose upstream failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owed {
    /// Reversed in the ledger and `refund_due`: the merchant returns it on chain.
    Due,
    /// A zero amount: nothing was paid, nothing is owed.
    Nothing,
    /// The reversal could not be booked (logged): the payment stays settled for an operator.
    Unrecorded,
}

impl Owed {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Due => "due",
            Self::Nothing => "none",
            Self::Unrecorded => "unrecorded",
        }
    }

    fn detail(self, payment_id: &str) -> String {
        match self {
            Self::Due => format!(
                "the payment {payment_id} is to be returned to the payer by the merchant, on chain"
            ),
            Self::Nothing => "nothing was charged".to_owned(),
            Self::Unrecorded => format!(
                "the payment {payment_id} could not be marked for return yet; the merchant owes it back"
            ),
        }
    }
}

fn with_refund_headers(mut response: Response, payment_id: &str, owed: Owed) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        HeaderName::from_static(REFUND_HEADER),
        HeaderValue::from_static(owed.as_str()),
    );
    if let Ok(value) = HeaderValue::from_str(payment_id) {
        headers.insert(HeaderName::from_static(PAYMENT_HEADER), value);
    }
    response
}

/// A chain payment cannot be sent back by Turnpike (the tokens are at the merchant's
/// recipient): reverse its booking and mark it `refund_due` with the paying address, once.
/// Never fails the client's request: a ledger failure is logged and reported as `Unrecorded`.
pub(crate) async fn owe_back(state: &AppState, payment: &turnpike_store::PaymentRow) -> Owed {
    if payment.amount == "0" {
        return Owed::Nothing;
    }
    let payer = match rails::payer_address(state, payment).await {
        Ok(payer) => payer,
        Err(err) => {
            tracing::warn!(error = ?err, payment = %payment.id, "the payer's address could not be read");
            None
        }
    };
    if payer.is_none() {
        tracing::warn!(payment = %payment.id, "refund due to an unknown payer address");
    }
    match rails::reverse(state, payment, payer).await {
        Ok(true) => {
            tracing::info!(payment = %payment.id, method = %payment.method,
                "upstream failed after a chain payment: reversed, refund due from the merchant");
            Owed::Due
        }
        Ok(false) => Owed::Due,
        Err(err) => {
            tracing::error!(error = ?err, payment = %payment.id,
                "upstream failed after a chain payment and its reversal could not be booked");
            Owed::Unrecorded
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn proxy(
    state: &AppState,
    price: &PriceRef,
    segments: &[String],
    query: &str,
    method: &axum::http::Method,
    headers: &HeaderMap,
    body: Bytes,
    payment_id: &str,
) -> Result<Response, String> {
    let url = upstream_url(price, segments, query)?;
    // reqwest resolves DNS names through the outbound policy, but not IP literals.
    let refused = |_| "the upstream is not allowed".to_owned();
    state.config.outbound.check_url(&url).map_err(refused)?;
    let mut forwarded = reqwest::header::HeaderMap::new();
    for (name, value) in headers {
        let lower = name.as_str();
        if HOP_BY_HOP.contains(&lower)
            || lower == "content-length"
            || lower == PAYMENT_HEADER
            || (name == header::AUTHORIZATION && is_payment_authorization(value))
        {
            continue;
        }
        forwarded.append(name.clone(), value.clone());
    }
    if let Ok(value) = HeaderValue::from_str(payment_id) {
        forwarded.insert(HeaderName::from_static(PAYMENT_HEADER), value);
    }
    let response = state
        .http
        .request(method.clone(), &url)
        .headers(forwarded)
        .body(body)
        .send()
        .await
        .map_err(|err| {
            let timeout = err.is_timeout();
            tracing::warn!(error = %err.without_url(), "upstream request failed");
            if timeout {
                "the upstream did not answer in time".to_owned()
            } else {
                "the upstream could not be reached".to_owned()
            }
        })?;
    let status = response.status();
    let out_headers = relayed_headers(response.headers());
    let mut body = Vec::new();
    let mut response = response;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > RESPONSE_BODY_BYTES_MAX {
                    return Err("the upstream's answer is too large".to_owned());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(_) => return Err("the upstream's answer broke off".to_owned()),
        }
    }
    let mut out = Response::new(Body::from(body));
    *out.status_mut() = status;
    *out.headers_mut() = out_headers;
    Ok(out)
}

/// The upstream's answer headers a client gets: not hop-by-hop ones, not its length (the
/// body is re-framed), never its payment headers.
fn relayed_headers(headers: &reqwest::header::HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in headers {
        if HOP_BY_HOP.contains(&name.as_str())
            || name == header::CONTENT_LENGTH
            || UPSTREAM_DROPPED.contains(&name.as_str())
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// The upstream URL for a request: the price's base URL with each decoded segment appended as
/// one encoded segment (never re-parsed as a path), then the query as sent.
fn upstream_url(price: &PriceRef, segments: &[String], query: &str) -> Result<String, String> {
    let base = price.definition.upstream_url.as_deref().unwrap_or_default();
    let mut url =
        reqwest::Url::parse(base).map_err(|_| "the upstream URL is invalid".to_owned())?;
    {
        let mut path = url
            .path_segments_mut()
            .map_err(|()| "the upstream URL cannot take a path".to_owned())?;
        path.pop_if_empty();
        path.extend(segments);
    }
    let query = query.strip_prefix('?').filter(|q| !q.is_empty());
    url.set_query(query);
    Ok(url.into())
}

fn with_receipt(mut response: Response, decision: &Decision) -> Response {
    if response.status().is_success() {
        decision.apply_headers(response.headers_mut());
    }
    response
}
