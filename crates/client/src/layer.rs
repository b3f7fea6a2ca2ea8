//! [`PaymentLayer`]: the tower middleware that puts a merchant's routes behind Turnpike.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap};
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use tower::{Layer, Service};
use turnpike_protocol::auth_params::group_schemes;
use turnpike_protocol::problem::PROBLEM_CONTENT_TYPE;
use turnpike_protocol::{ContentDigest, Problem};

use crate::client::TurnpikeClient;
use crate::decision::{ChallengeQuery, VerifyQuery};

/// The largest request body the layer buffers (1 MiB); larger bodies get `413`.
pub const BODY_BYTES_MAX: usize = 1024 * 1024;

/// The problem type of the layer's `503` when Turnpike cannot decide.
pub const UNAVAILABLE_PROBLEM_TYPE: &str = "https://turnpike.dev/problems/unavailable";

/// The problem type of the layer's `413` for a body over [`BODY_BYTES_MAX`].
const PAYLOAD_TOO_LARGE_PROBLEM_TYPE: &str = "https://turnpike.dev/problems/payload-too-large";

/// The problem type of the layer's `400` for a body that could not be read.
const INVALID_REQUEST_PROBLEM_TYPE: &str = "https://turnpike.dev/problems/invalid-request";

/// The `Accept-Payment` request header.
const ACCEPT_PAYMENT: HeaderName = HeaderName::from_static("accept-payment");

/// The `Idempotency-Key` request header.
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Put in the request extensions of a paid request for the wrapped handler to read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PaidRequest {
    /// The settled payment's id (`pay_…`), e.g. to look it up with `GET /v1/payments/{id}`.
    pub payment_id: String,
}

/// A [`tower::Layer`] that gates the wrapped service on Turnpike's payment decisions.
///
/// Apply it to paid routes only (axum: `Router::route_layer`). The path sent to Turnpike is the
/// request URI's path as the layer sees it (inside `Router::nest` that is the nested path), minus
/// [`PaymentLayer::path_prefix_strip`] when set. Authenticate your own users (401) outside it.
#[derive(Debug, Clone)]
pub struct PaymentLayer {
    /// The Turnpike client.
    client: TurnpikeClient,
    /// A path prefix removed before the path is sent to Turnpike.
    path_prefix_strip: Option<Arc<str>>,
}

impl PaymentLayer {
    /// A layer that asks `client` for every request's decision.
    pub fn new(client: TurnpikeClient) -> Self {
        Self {
            client,
            path_prefix_strip: None,
        }
    }

    /// Remove `prefix` (e.g. `/api`) from request paths before matching them against prices.
    pub fn path_prefix_strip(mut self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        let prefix = prefix.trim_end_matches('/');
        self.path_prefix_strip = (!prefix.is_empty()).then(|| Arc::from(prefix));
        self
    }
}

impl<S> Layer<S> for PaymentLayer {
    type Service = PaymentService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PaymentService {
            inner,
            client: self.client.clone(),
            path_prefix_strip: self.path_prefix_strip.clone(),
        }
    }
}

/// The service [`PaymentLayer`] produces around `S`.
#[derive(Debug, Clone)]
pub struct PaymentService<S> {
    /// The wrapped (paid) service.
    inner: S,
    /// The Turnpike client.
    client: TurnpikeClient,
    /// A path prefix removed before the path is sent to Turnpike.
    path_prefix_strip: Option<Arc<str>>,
}

impl<S, B, ResBody> Service<Request<B>> for PaymentService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + From<Bytes> + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
    ResBody: From<Bytes> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The ready service goes into the future; a fresh clone waits for the next poll_ready.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let client = self.client.clone();
        let prefix = self.path_prefix_strip.clone();
        Box::pin(gate(client, prefix, inner, request))
    }
}

/// The per-request flow: buffer, challenge or verify, then serve only when paid.
async fn gate<S, B, ResBody>(
    client: TurnpikeClient,
    path_prefix_strip: Option<Arc<str>>,
    mut inner: S,
    request: Request<B>,
) -> Result<Response<ResBody>, S::Error>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    B: http_body::Body + From<Bytes>,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
    ResBody: From<Bytes>,
{
    let (mut parts, body) = request.into_parts();
    let body_bytes = match read_body(body, &parts.headers).await {
        Ok(bytes) => bytes,
        Err(BodyError::TooLarge) => {
            return Ok(problem_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                PAYLOAD_TOO_LARGE_PROBLEM_TYPE,
                "Payload Too Large",
                "the request body is larger than 1 MiB",
            ));
        }
        Err(BodyError::Unreadable) => {
            return Ok(problem_response(
                StatusCode::BAD_REQUEST,
                INVALID_REQUEST_PROBLEM_TYPE,
                "Invalid Request",
                "the request body could not be read",
            ));
        }
    };
    let body_digest =
        (!body_bytes.is_empty()).then(|| ContentDigest::sha256(&body_bytes).to_header_value());
    let method = parts.method.as_str().to_owned();
    let path = turnpike_path(parts.uri.path(), path_prefix_strip.as_deref());
    let accept_payment = joined_header(&parts.headers, &ACCEPT_PAYMENT);
    let credentials = payment_credentials(&parts.headers);

    if credentials.is_empty() {
        let query = ChallengeQuery {
            method,
            path,
            accept_payment,
            body_digest,
        };
        return Ok(match client.challenge(&query).await {
            Ok(decision) if !decision.is_paid() => decision.into_response(),
            Ok(_) => {
                tracing::warn!(
                    path = %query.path,
                    "turnpike answered a challenge request with a paid decision; failing closed"
                );
                unavailable_response()
            }
            Err(error) => {
                tracing::warn!(path = %query.path, %error, "turnpike challenge failed; failing closed");
                unavailable_response()
            }
        });
    }

    let idempotency_key = parts
        .headers
        .get(&IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let query = VerifyQuery {
        authorization: credentials,
        method,
        path,
        body_digest,
        accept_payment,
    };
    let decision = match client.verify(&query, idempotency_key.as_deref()).await {
        Ok(decision) => decision,
        Err(error) => {
            tracing::warn!(path = %query.path, %error, "turnpike verify failed; failing closed");
            return Ok(unavailable_response());
        }
    };
    if !decision.is_paid() {
        return Ok(decision.into_response());
    }
    // `verify` refuses a paid decision without a payment id; never serve without one.
    let Some(payment_id) = decision.payment_id.clone() else {
        return Ok(unavailable_response());
    };

    strip_payment_credentials(&mut parts.headers);
    parts.extensions.insert(PaidRequest { payment_id });
    let mut response = inner
        .call(Request::from_parts(parts, B::from(body_bytes)))
        .await?;
    if response.status().is_success() {
        decision.apply_headers(response.headers_mut());
    }
    Ok(response)
}

/// Why a request body was not buffered.
enum BodyError {
    /// Over [`BODY_BYTES_MAX`].
    TooLarge,
    /// The body stream failed.
    Unreadable,
}

/// Buffer a request body of at most [`BODY_BYTES_MAX`] bytes.
async fn read_body<B>(body: B, headers: &HeaderMap) -> Result<Bytes, BodyError>
where
    B: http_body::Body,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let declared_bytes = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_bytes.is_some_and(|len| len > BODY_BYTES_MAX as u64) {
        return Err(BodyError::TooLarge);
    }
    match Limited::new(body, BODY_BYTES_MAX).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            Err(BodyError::TooLarge)
        }
        Err(_) => Err(BodyError::Unreadable),
    }
}

/// The path priced in the catalog: `path` minus `prefix` (at a segment boundary), never empty.
fn turnpike_path(path: &str, prefix: Option<&str>) -> String {
    let stripped = prefix
        .and_then(|prefix| path.strip_prefix(prefix))
        .filter(|rest| rest.is_empty() || rest.starts_with('/'));
    match stripped {
        Some("") => "/".to_owned(),
        Some(rest) => rest.to_owned(),
        None => path.to_owned(),
    }
}

/// All values of a list header joined with `, `, when there is at least one.
fn joined_header(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// True when `scheme` is the Payment scheme (case-insensitive).
fn is_payment_scheme(scheme: &str) -> bool {
    scheme.eq_ignore_ascii_case(turnpike_protocol::SCHEME)
}

/// True when an `Authorization` value holds a Payment credential.
fn holds_payment_credential(value: &HeaderValue) -> bool {
    value.to_str().is_ok_and(|text| {
        group_schemes(text)
            .iter()
            .any(|group| is_payment_scheme(group.scheme))
    })
}

/// Every Payment credential among the `Authorization` values; other schemes are never forwarded.
fn payment_credentials(headers: &HeaderMap) -> Vec<String> {
    let mut credentials = Vec::new();
    for value in headers.get_all(AUTHORIZATION) {
        let Ok(text) = value.to_str() else { continue };
        let groups = group_schemes(text);
        let payment_count = groups
            .iter()
            .filter(|group| is_payment_scheme(group.scheme))
            .count();
        if payment_count == 0 {
            continue;
        }
        if payment_count == groups.len() {
            credentials.push(text.trim().to_owned());
            continue;
        }
        // A value mixing schemes: forward only its Payment parts.
        for group in groups.iter().filter(|g| is_payment_scheme(g.scheme)) {
            let credential: Cow<'_, str> = if group.elements.is_empty() {
                Cow::Borrowed(group.scheme)
            } else {
                Cow::Owned(format!("{} {}", group.scheme, group.elements.join(", ")))
            };
            credentials.push(credential.into_owned());
        }
    }
    credentials
}

/// Remove the `Authorization` values holding a Payment credential (the handler never sees them).
fn strip_payment_credentials(headers: &mut HeaderMap) {
    let kept: Vec<HeaderValue> = headers
        .get_all(AUTHORIZATION)
        .iter()
        .filter(|v| !holds_payment_credential(v))
        .cloned()
        .collect();
    headers.remove(AUTHORIZATION);
    for value in kept {
        headers.append(AUTHORIZATION, value);
    }
}

/// The layer's `503`: Turnpike could not decide, so the paid route is not served.
fn unavailable_response<B: From<Bytes>>() -> Response<B> {
    problem_response(
        StatusCode::SERVICE_UNAVAILABLE,
        UNAVAILABLE_PROBLEM_TYPE,
        "Service Unavailable",
        "payment verification is temporarily unavailable; retry later",
    )
}

/// An `application/problem+json` response with `Cache-Control: no-store`.
fn problem_response<B: From<Bytes>>(
    status: StatusCode,
    type_uri: &'static str,
    title: &'static str,
    detail: &'static str,
) -> Response<B> {
    let problem = Problem {
        type_uri: Cow::Borrowed(type_uri),
        title: Cow::Borrowed(title),
        status: status.as_u16(),
        detail: Some(detail.to_owned()),
        challenge_id: None,
        extensions: serde_json::Map::new(),
    };
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    let mut response = Response::new(B::from(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_the_prefix_at_a_segment_boundary_only() {
        assert_eq!(turnpike_path("/api/weather/x", Some("/api")), "/weather/x");
        assert_eq!(turnpike_path("/api", Some("/api")), "/");
        assert_eq!(
            turnpike_path("/apix/weather", Some("/api")),
            "/apix/weather"
        );
        assert_eq!(turnpike_path("/weather", None), "/weather");
    }

    #[test]
    fn forwards_only_payment_parts_of_authorization_values() {
        let mut headers = HeaderMap::new();
        headers.append(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        headers.append(AUTHORIZATION, HeaderValue::from_static("payment eyJ0"));
        headers.append(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer xyz, Payment eyJ1"),
        );
        assert_eq!(
            payment_credentials(&headers),
            ["payment eyJ0", "Payment eyJ1"]
        );
        strip_payment_credentials(&mut headers);
        let left: Vec<_> = headers.get_all(AUTHORIZATION).iter().collect();
        assert_eq!(left, [HeaderValue::from_static("Bearer abc")]);
    }
}
