//! Problem Details (RFC 9457) for the Payment scheme (`draft-httpauth-payment-00` §8.2).
//! Type URIs are `https://paymentauth.org/problems/<code>`.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The base of the spec's problem type URIs.
pub const PROBLEM_BASE_URI: &str = "https://paymentauth.org/problems/";

/// The seven core problem types (§8.2 "Error Codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProblemType {
    /// `payment-required` (402): the resource requires payment.
    PaymentRequired,
    /// `payment-insufficient` (402): amount too low.
    PaymentInsufficient,
    /// `payment-expired` (402): a method-level authorization expired.
    PaymentExpired,
    /// `verification-failed` (402): the proof is invalid.
    VerificationFailed,
    /// `method-unsupported` (400): the method is not accepted.
    MethodUnsupported,
    /// `malformed-credential` (402): invalid credential format.
    MalformedCredential,
    /// `invalid-challenge` (402): challenge id unknown, expired or already used.
    InvalidChallenge,
}

impl ProblemType {
    /// Every core problem type.
    pub const ALL: [Self; 7] = [
        Self::PaymentRequired,
        Self::PaymentInsufficient,
        Self::PaymentExpired,
        Self::VerificationFailed,
        Self::MethodUnsupported,
        Self::MalformedCredential,
        Self::InvalidChallenge,
    ];

    /// The code, e.g. `invalid-challenge`.
    pub fn code(self) -> &'static str {
        match self {
            Self::PaymentRequired => "payment-required",
            Self::PaymentInsufficient => "payment-insufficient",
            Self::PaymentExpired => "payment-expired",
            Self::VerificationFailed => "verification-failed",
            Self::MethodUnsupported => "method-unsupported",
            Self::MalformedCredential => "malformed-credential",
            Self::InvalidChallenge => "invalid-challenge",
        }
    }

    /// The type URI.
    pub fn uri(self) -> String {
        format!("{PROBLEM_BASE_URI}{}", self.code())
    }

    /// The HTTP status.
    pub fn status(self) -> u16 {
        match self {
            Self::MethodUnsupported => 400,
            _ => 402,
        }
    }

    /// A short title.
    pub fn title(self) -> &'static str {
        match self {
            Self::PaymentRequired => "Payment Required",
            Self::PaymentInsufficient => "Payment Insufficient",
            Self::PaymentExpired => "Payment Expired",
            Self::VerificationFailed => "Payment Verification Failed",
            Self::MethodUnsupported => "Payment Method Unsupported",
            Self::MalformedCredential => "Malformed Credential",
            Self::InvalidChallenge => "Invalid Challenge",
        }
    }

    /// The type named by a URI, if it is a core one.
    pub fn from_uri(uri: &str) -> Option<Self> {
        let code = uri.strip_prefix(PROBLEM_BASE_URI)?;
        Self::ALL.into_iter().find(|t| t.code() == code)
    }
}

/// An RFC 9457 problem body (`application/problem+json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// `type`: a URI naming the problem.
    #[serde(rename = "type")]
    pub type_uri: Cow<'static, str>,
    /// `title`: short summary of the type.
    pub title: Cow<'static, str>,
    /// `status`: the HTTP status.
    pub status: u16,
    /// `detail`: this occurrence, human readable; never holds a credential or secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// `challengeId`: the fresh challenge's id (the spec's example extension member).
    #[serde(
        rename = "challengeId",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub challenge_id: Option<String>,
    /// Other extension members.
    #[serde(flatten)]
    pub extensions: Map<String, Value>,
}

/// The media type of a problem body.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

impl Problem {
    /// A problem of one of the core types.
    pub fn new(kind: ProblemType, detail: impl Into<String>) -> Self {
        Self {
            type_uri: Cow::Owned(kind.uri()),
            title: Cow::Borrowed(kind.title()),
            status: kind.status(),
            detail: Some(detail.into()),
            challenge_id: None,
            extensions: Map::new(),
        }
    }

    /// Attach the id of the fresh challenge sent with this problem.
    pub fn with_challenge_id(mut self, id: impl Into<String>) -> Self {
        self.challenge_id = Some(id.into());
        self
    }

    /// The core type, when `type` is one.
    pub fn kind(&self) -> Option<ProblemType> {
        ProblemType::from_uri(&self.type_uri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_types_have_spec_uris_and_statuses() {
        let table: Vec<_> = ProblemType::ALL
            .iter()
            .map(|t| (t.code(), t.status()))
            .collect();
        assert_eq!(
            table,
            [
                ("payment-required", 402),
                ("payment-insufficient", 402),
                ("payment-expired", 402),
                ("verification-failed", 402),
                ("method-unsupported", 400),
                ("malformed-credential", 402),
                ("invalid-challenge", 402),
            ]
        );
        for t in ProblemType::ALL {
            assert_eq!(ProblemType::from_uri(&t.uri()), Some(t));
        }
    }

    #[test]
    fn serializes_like_the_spec_example() {
        let p = Problem::new(ProblemType::PaymentRequired, "Payment required for access.")
            .with_challenge_id("qB3wErTyU7iOpAsD9fGhJk");
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "type": "https://paymentauth.org/problems/payment-required",
                "title": "Payment Required",
                "status": 402,
                "detail": "Payment required for access.",
                "challengeId": "qB3wErTyU7iOpAsD9fGhJk"
            })
        );
        let back: Problem = serde_json::from_value(v).unwrap();
        assert_eq!(back.kind(), Some(ProblemType::PaymentRequired));
    }
}
