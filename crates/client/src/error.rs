//! The SDK's error type. No variant ever holds the API key, a credential or a receipt.

/// Why a call to Turnpike did not produce a [`Decision`](crate::Decision).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The client could not be built (bad base URL, unusable API key, no TLS crypto provider).
    #[error("invalid Turnpike client configuration: {0}")]
    Config(String),
    /// The request could not be sent as given (e.g. an `Idempotency-Key` that is not a header value).
    #[error("invalid request to Turnpike: {0}")]
    InvalidRequest(&'static str),
    /// Turnpike could not be reached, timed out, or the connection failed mid-answer.
    #[error("Turnpike is unavailable: {}", unavailable_reason(.0))]
    Unavailable(#[source] reqwest::Error),
    /// Turnpike answered with a non-2xx status (an RFC 9457 problem).
    #[error("Turnpike answered {status} ({problem_type}){}", detail_suffix(.detail))]
    Api {
        /// The HTTP status Turnpike answered.
        status: u16,
        /// The problem `type` URI (`about:blank` when the body was not a problem).
        problem_type: String,
        /// The problem `detail`, when there was one.
        detail: Option<String>,
    },
    /// Turnpike answered 2xx with a body that is not a valid decision.
    #[error("Turnpike's answer is not a valid decision: {0}")]
    InvalidResponse(String),
}

fn detail_suffix(detail: &Option<String>) -> String {
    detail
        .as_deref()
        .map(|d| format!(": {d}"))
        .unwrap_or_default()
}

/// A short, secret-free reason for an [`ClientError::Unavailable`].
fn unavailable_reason(error: &reqwest::Error) -> &'static str {
    if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else if error.is_body() || error.is_decode() {
        "the answer was cut off"
    } else {
        "the request failed"
    }
}
