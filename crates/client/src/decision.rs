//! The JSON bodies of `POST /v1/challenges` and `POST /v1/verify` and the [`Decision`] both answer.

use std::fmt;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use serde::{Deserialize, Serialize};
use turnpike_protocol::problem::PROBLEM_CONTENT_TYPE;

/// Header names whose values are secrets and are redacted from `Debug` output.
const SECRET_HEADER_NAMES: [&str; 2] = ["payment-receipt", "authorization"];

/// What `Debug` prints in place of a secret.
const REDACTED: &str = "<redacted>";

/// The body of `POST /v1/challenges`: the request that needs a fresh 402 challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChallengeQuery {
    /// The request's HTTP method, e.g. `GET`.
    pub method: String,
    /// The request's path as priced in the catalog, e.g. `/weather/paris`.
    pub path: String,
    /// The request's `Accept-Payment` header, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept_payment: Option<String>,
    /// The RFC 9530 `Content-Digest` value (`sha-256=:…:`) of a non-empty request body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_digest: Option<String>,
}

/// The body of `POST /v1/verify`: the request that carries `Authorization: Payment` credentials.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyQuery {
    /// Every `Authorization` value that holds a Payment credential (a JSON string for one, an array for several).
    #[serde(with = "one_or_many")]
    pub authorization: Vec<String>,
    /// The request's HTTP method, e.g. `POST`.
    pub method: String,
    /// The request's path as priced in the catalog, e.g. `/summarize`.
    pub path: String,
    /// The RFC 9530 `Content-Digest` value (`sha-256=:…:`) of a non-empty request body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_digest: Option<String>,
    /// The request's `Accept-Payment` header, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept_payment: Option<String>,
}

impl fmt::Debug for VerifyQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyQuery")
            .field(
                "authorization",
                &format_args!("[{REDACTED}; {}]", self.authorization.len()),
            )
            .field("method", &self.method)
            .field("path", &self.path)
            .field("body_digest", &self.body_digest)
            .field("accept_payment", &self.accept_payment)
            .finish()
    }
}

/// `authorization`: one value serializes as a string, several as an array; both deserialize.
mod one_or_many {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// Either JSON form.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        /// `"Payment …"`.
        One(String),
        /// `["Payment …", "Payment …"]`.
        Many(Vec<String>),
    }

    /// A string when there is exactly one value, else an array.
    pub(super) fn serialize<S: Serializer>(values: &[String], ser: S) -> Result<S::Ok, S::Error> {
        match values {
            [one] => ser.serialize_str(one),
            many => many.serialize(ser),
        }
    }

    /// Accept a string or an array of strings.
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<String>, D::Error> {
        Ok(match OneOrMany::deserialize(de)? {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        })
    }
}

/// The kind of a [`Decision`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    /// The credential paid for this request: serve it and add the decision's headers.
    Paid,
    /// No (valid) payment: forward the 402 challenge.
    PaymentRequired,
    /// Paid but refused by policy (403): forward as is.
    Forbidden,
    /// Malformed payment request, e.g. several credentials (400): forward as is.
    BadRequest,
    /// Submitted on the rail, outcome not known yet (202): forward as is, do not serve yet.
    Pending,
}

/// Turnpike's answer for one request: what the merchant forwards to its client.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// What happened.
    pub decision: DecisionKind,
    /// The HTTP status to answer with (200, 402, 403 or 400).
    pub status: u16,
    /// `[name, value]` header pairs in order (several `WWW-Authenticate` are several pairs).
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The problem+json body for non-`paid` decisions; `null` for `paid`.
    #[serde(default)]
    pub body: Option<serde_json::Value>,
    /// The settled payment's id (`pay_…`), on `paid` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<String>,
    /// The ids of the fresh challenges, on `payment_required` only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub challenge_ids: Vec<String>,
}

impl fmt::Debug for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(name, value)| {
                let secret = SECRET_HEADER_NAMES
                    .iter()
                    .any(|s| name.eq_ignore_ascii_case(s));
                (
                    name.as_str(),
                    if secret { REDACTED } else { value.as_str() },
                )
            })
            .collect();
        f.debug_struct("Decision")
            .field("decision", &self.decision)
            .field("status", &self.status)
            .field("headers", &headers)
            .field("body", &self.body)
            .field("payment_id", &self.payment_id)
            .field("challenge_ids", &self.challenge_ids)
            .finish()
    }
}

impl Decision {
    /// True for a `paid` decision.
    pub fn is_paid(&self) -> bool {
        self.decision == DecisionKind::Paid
    }

    /// The decision's headers as typed pairs, in order; invalid names or values are skipped.
    pub fn header_pairs(&self) -> impl Iterator<Item = (HeaderName, HeaderValue)> + '_ {
        self.headers.iter().filter_map(|(name, value)| {
            let Ok(header_name) = HeaderName::from_bytes(name.as_bytes()) else {
                tracing::warn!(header = %name, "skipping a decision header with an invalid name");
                return None;
            };
            let Ok(mut header_value) = HeaderValue::from_str(value) else {
                tracing::warn!(header = %header_name, "skipping a decision header with an invalid value");
                return None;
            };
            if SECRET_HEADER_NAMES.contains(&header_name.as_str()) {
                header_value.set_sensitive(true);
            }
            Some((header_name, header_value))
        })
    }

    /// Set the decision's headers on `headers`, replacing same-named ones (for a paid 2xx response).
    pub fn apply_headers(&self, headers: &mut HeaderMap) {
        let mut replaced: Vec<HeaderName> = Vec::new();
        for (name, value) in self.header_pairs() {
            if replaced.contains(&name) {
                headers.append(name, value);
            } else {
                headers.insert(name.clone(), value);
                replaced.push(name);
            }
        }
    }

    /// The HTTP response to send for a non-`paid` decision: status, headers and JSON body.
    pub fn into_response<B: From<Bytes>>(self) -> Response<B> {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_GATEWAY);
        let mut headers = HeaderMap::new();
        for (name, value) in self.header_pairs() {
            headers.append(name, value);
        }
        let body = match &self.body {
            Some(value) => {
                if !headers.contains_key(CONTENT_TYPE) {
                    headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
                }
                Bytes::from(serde_json::to_vec(value).unwrap_or_default())
            }
            None => Bytes::new(),
        };
        let mut response = Response::new(B::from(body));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response
    }
}
