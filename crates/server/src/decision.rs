//! A payment decision: the exact HTTP answer a merchant forwards to its client (status,
//! headers, problem body), as `/v1/challenges` and `/v1/verify` return it and as the gateway
//! sends it.

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use turnpike_protocol::Problem;
use turnpike_protocol::problem::PROBLEM_CONTENT_TYPE;

/// What the merchant must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    /// Paid: serve the resource with the receipt headers.
    Paid,
    /// 402 with fresh challenges.
    PaymentRequired,
    /// 403: the credential was already used.
    Forbidden,
    /// 400: several credentials, or an unsupported method.
    BadRequest,
    /// 202: submitted on the rail, outcome not known yet; do not serve the resource yet.
    Pending,
}

/// The decision and its HTTP form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// What to do.
    pub decision: DecisionKind,
    /// HTTP status to send.
    pub status: u16,
    /// Headers to send, in order.
    pub headers: Vec<(String, String)>,
    /// Problem body (`null` for `paid`).
    pub body: Option<serde_json::Value>,
    /// The payment, when paid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<String>,
    /// The fresh challenges' ids, when payment is required.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub challenge_ids: Vec<String>,
}

impl Decision {
    /// A 402 with these challenges (header values) and problem.
    pub fn payment_required(challenges: Vec<(String, String)>, problem: Problem) -> Self {
        let mut headers: Vec<(String, String)> = challenges
            .iter()
            .map(|(_, value)| ("WWW-Authenticate".to_owned(), value.clone()))
            .collect();
        headers.push(("Cache-Control".to_owned(), "no-store".to_owned()));
        headers.push(("Content-Type".to_owned(), PROBLEM_CONTENT_TYPE.to_owned()));
        let ids = challenges.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
        let problem = match ids.first() {
            Some(id) => problem.with_challenge_id(id.clone()),
            None => problem,
        };
        Self {
            decision: DecisionKind::PaymentRequired,
            status: 402,
            headers,
            body: serde_json::to_value(problem).ok(),
            payment_id: None,
            challenge_ids: ids,
        }
    }

    /// A 403 or 400 with a problem and no challenge.
    pub fn refused(kind: DecisionKind, status: u16, problem: serde_json::Value) -> Self {
        Self {
            decision: kind,
            status,
            headers: vec![
                ("Cache-Control".to_owned(), "no-store".to_owned()),
                ("Content-Type".to_owned(), PROBLEM_CONTENT_TYPE.to_owned()),
            ],
            body: Some(problem),
            payment_id: None,
            challenge_ids: Vec::new(),
        }
    }

    /// Submitted, outcome unknown (202, problem body with the payment id, `Retry-After`).
    pub fn pending(payment_id: String, mut problem: serde_json::Value) -> Self {
        problem["paymentId"] = serde_json::Value::String(payment_id.clone());
        Self {
            decision: DecisionKind::Pending,
            status: 202,
            headers: vec![
                ("Cache-Control".to_owned(), "no-store".to_owned()),
                ("Content-Type".to_owned(), PROBLEM_CONTENT_TYPE.to_owned()),
                ("Retry-After".to_owned(), "2".to_owned()),
            ],
            body: Some(problem),
            payment_id: Some(payment_id),
            challenge_ids: Vec::new(),
        }
    }

    /// Paid, with the receipt header value.
    pub fn paid(payment_id: String, receipt: String) -> Self {
        Self {
            decision: DecisionKind::Paid,
            status: 200,
            headers: vec![
                ("Payment-Receipt".to_owned(), receipt),
                ("Cache-Control".to_owned(), "private".to_owned()),
            ],
            body: None,
            payment_id: Some(payment_id),
            challenge_ids: Vec::new(),
        }
    }

    /// The decision as the HTTP response a client gets (not for `paid`, which wraps the
    /// merchant's own response).
    pub fn to_response(&self) -> Response {
        let mut response = Response::new(match &self.body {
            Some(body) => Body::from(body.to_string()),
            None => Body::empty(),
        });
        *response.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        self.apply_headers(response.headers_mut());
        response
    }

    /// Append the decision's headers.
    pub fn apply_headers(&self, headers: &mut axum::http::HeaderMap) {
        for (name, value) in &self.headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                if name == axum::http::header::CACHE_CONTROL
                    || name == axum::http::header::CONTENT_TYPE
                {
                    headers.insert(name, value);
                } else {
                    headers.append(name, value);
                }
            }
        }
    }
}
