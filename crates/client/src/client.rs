//! [`TurnpikeClient`]: `POST /v1/challenges` and `POST /v1/verify` over `reqwest`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{AUTHORIZATION, HeaderName, HeaderValue};
use reqwest::Url;
use serde::Serialize;

use crate::decision::{ChallengeQuery, Decision, DecisionKind, VerifyQuery};
use crate::error::ClientError;

/// The default time limit for one call to Turnpike, connection included.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest answer body read from Turnpike.
pub const RESPONSE_BYTES_MAX: usize = 1024 * 1024;

/// The `Idempotency-Key` request header.
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Tunables for [`TurnpikeClient::with_options`]; start from `ClientOptions::default()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// The time limit for one call to Turnpike, connection included (default 10 s).
    pub request_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// A Turnpike tenant API client (cheap to clone; `Debug` never shows the API key).
#[derive(Clone)]
pub struct TurnpikeClient {
    /// Shared state: one allocation per client, not per clone.
    inner: Arc<Inner>,
}

/// What every clone of a client shares.
struct Inner {
    /// The HTTP client (its own connection pool).
    http: reqwest::Client,
    /// The base URL as given (validated: no credentials in it).
    base_url: Url,
    /// `{base}/v1/challenges`.
    challenges_url: Url,
    /// `{base}/v1/verify`.
    verify_url: Url,
    /// `Bearer tp_sk_…`, marked sensitive.
    authorization: HeaderValue,
    /// The per-call time limit.
    request_timeout: Duration,
}

impl fmt::Debug for TurnpikeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnpikeClient")
            .field("base_url", &self.inner.base_url.as_str())
            .field("api_key", &"<redacted>")
            .field("request_timeout", &self.inner.request_timeout)
            .finish()
    }
}

impl TurnpikeClient {
    /// A client for the Turnpike at `base_url` (e.g. `http://127.0.0.1:8402`) with a tenant key.
    pub fn new(base_url: &str, api_key: &str) -> Result<Self, ClientError> {
        Self::with_options(base_url, api_key, ClientOptions::default())
    }

    /// A client with explicit [`ClientOptions`].
    pub fn with_options(
        base_url: &str,
        api_key: &str,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        let base = parse_base_url(base_url)?;
        let challenges_url = endpoint(&base, "v1/challenges");
        let verify_url = endpoint(&base, "v1/verify");
        if api_key.trim().is_empty() {
            return Err(ClientError::Config("the API key is empty".to_owned()));
        }
        let mut authorization =
            HeaderValue::from_str(&format!("Bearer {api_key}")).map_err(|_| {
                ClientError::Config("the API key is not a valid HTTP header value".to_owned())
            })?;
        authorization.set_sensitive(true);
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            return Err(ClientError::Config(
                "no rustls crypto provider is installed: call \
                 rustls::crypto::ring::default_provider().install_default() first"
                    .to_owned(),
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(options.request_timeout)
            .connect_timeout(options.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ClientError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base_url: base,
                challenges_url,
                verify_url,
                authorization,
                request_timeout: options.request_timeout,
            }),
        })
    }

    /// The base URL this client calls.
    pub fn base_url(&self) -> &str {
        self.inner.base_url.as_str()
    }

    /// `POST /v1/challenges`: a fresh `payment_required` decision for a request without credential.
    pub async fn challenge(&self, query: &ChallengeQuery) -> Result<Decision, ClientError> {
        self.post(&self.inner.challenges_url, query, None).await
    }

    /// `POST /v1/verify`: check a request's Payment credentials (retries with the same `idempotency_key` get the first decision).
    pub async fn verify(
        &self,
        query: &VerifyQuery,
        idempotency_key: Option<&str>,
    ) -> Result<Decision, ClientError> {
        let idempotency_key = idempotency_key
            .map(|key| {
                HeaderValue::from_str(key).map_err(|_| {
                    ClientError::InvalidRequest("the Idempotency-Key is not a valid header value")
                })
            })
            .transpose()?;
        let decision = self
            .post(&self.inner.verify_url, query, idempotency_key)
            .await?;
        if decision.decision == DecisionKind::Paid && decision.payment_id.is_none() {
            return Err(ClientError::InvalidResponse(
                "a paid decision without paymentId".to_owned(),
            ));
        }
        Ok(decision)
    }

    /// POST `body` as JSON to `url` and read a [`Decision`] (any non-2xx is [`ClientError::Api`]).
    async fn post<Q: Serialize>(
        &self,
        url: &Url,
        body: &Q,
        idempotency_key: Option<HeaderValue>,
    ) -> Result<Decision, ClientError> {
        let mut request = self
            .inner
            .http
            .post(url.clone())
            .header(AUTHORIZATION, self.inner.authorization.clone())
            .json(body);
        if let Some(key) = idempotency_key {
            request = request.header(IDEMPOTENCY_KEY, key);
        }
        let response = request
            .send()
            .await
            .map_err(|e| ClientError::Unavailable(e.without_url()))?;
        let status = response.status();
        let bytes = read_bounded(response).await?;
        if !status.is_success() {
            return Err(api_error(status.as_u16(), &bytes));
        }
        let decision: Decision = serde_json::from_slice(&bytes).map_err(|e| {
            // The serde message can quote the input (a receipt): report only where it failed.
            ClientError::InvalidResponse(format!(
                "{:?} error at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            ))
        })?;
        if !(100..=599).contains(&decision.status) {
            return Err(ClientError::InvalidResponse(format!(
                "status {} is not an HTTP status",
                decision.status
            )));
        }
        Ok(decision)
    }
}

/// Parse and check a base URL: `http`/`https`, no user info, no query or fragment.
fn parse_base_url(base_url: &str) -> Result<Url, ClientError> {
    let url = Url::parse(base_url.trim())
        .map_err(|e| ClientError::Config(format!("the base URL is invalid: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ClientError::Config(
            "the base URL must be http:// or https://".to_owned(),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ClientError::Config(
            "the base URL must not hold credentials (pass the API key separately)".to_owned(),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ClientError::Config(
            "the base URL must not have a query or fragment".to_owned(),
        ));
    }
    Ok(url)
}

/// `base` + `/` + `relative`, keeping any path prefix of `base` (e.g. `https://x/turnpike`).
fn endpoint(base: &Url, relative: &str) -> Url {
    let prefix = base.path().trim_end_matches('/');
    let mut url = base.clone();
    url.set_path(&format!("{prefix}/{relative}"));
    url
}

/// Read at most [`RESPONSE_BYTES_MAX`] bytes of an answer.
async fn read_bounded(mut response: reqwest::Response) -> Result<Bytes, ClientError> {
    let too_large = || ClientError::InvalidResponse("answer larger than 1 MiB".to_owned());
    if response
        .content_length()
        .is_some_and(|len| len > RESPONSE_BYTES_MAX as u64)
    {
        return Err(too_large());
    }
    let mut buffer = BytesMut::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| ClientError::Unavailable(e.without_url()))?
    {
        if buffer.len() + chunk.len() > RESPONSE_BYTES_MAX {
            return Err(too_large());
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(buffer.freeze())
}

/// A non-2xx answer as [`ClientError::Api`], reading `type` and `detail` from a problem body.
fn api_error(status: u16, body: &[u8]) -> ClientError {
    let problem: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        problem
            .as_ref()
            .and_then(|p| p.get(name))
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    };
    ClientError::Api {
        status,
        problem_type: field("type").unwrap_or_else(|| "about:blank".to_owned()),
        detail: field("detail"),
    }
}
