//! Claims of agent tokens and payment grants, and why a token is refused.

use serde::{Deserialize, Serialize};

/// An amount of money: integer minor units as a decimal string plus a lowercase currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    /// Integer minor units as a decimal string, e.g. `"250"`.
    pub amount: String,
    /// Lowercase ISO 4217 currency code, e.g. `"usd"`.
    pub currency: String,
}

/// Claims of an agent token (JOSE `typ: tp-agent+jwt`): lets one agent pay for its tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentTokenClaims {
    /// Issuer: the server's public URL.
    pub iss: String,
    /// Subject: the agent id `agt_...`.
    pub sub: String,
    /// The agent's tenant (organisation) id `ten_...`.
    pub tid: String,
    /// Token id `tok_...` (what revocation names).
    pub jti: String,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Expires at, unix seconds (refused when `now_s >= exp`).
    pub exp: i64,
    /// The agent's policy version when the token was issued (informational: payments are
    /// always evaluated under the current version).
    #[serde(default)]
    pub pv: i64,
    /// The token it was minted under (a child token), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub par: Option<String>,
    /// The token's own limits, narrower than the policy (and than its parent's), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lim: Option<crate::policy::TokenLimits>,
}

/// Claims of a `turnpike` payment grant (JOSE `typ: tp-grant+jwt`): pays one challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantClaims {
    /// Issuer: the server's public URL.
    pub iss: String,
    /// Grant id: the reservation's ledger transfer id (hex).
    pub jti: String,
    /// The MPP challenge id this grant pays.
    pub chal: String,
    /// Amount in minor units, as in the challenge request.
    pub amt: String,
    /// Lowercase currency, as in the challenge request.
    pub cur: String,
    /// Recipient (merchant) tenant id `ten_...`.
    pub rcp: String,
    /// Payer tenant id `ten_...`.
    pub pyr: String,
    /// Agent id `agt_...` that obtained the grant.
    pub agt: String,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Expires at, unix seconds (refused when `now_s >= exp`).
    pub exp: i64,
}

/// Why a token was refused. Messages are short and never echo the token.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not a compact JWS we can parse (segments, base64url, JSON, size, `crit`).
    #[error("malformed token")]
    Malformed,
    /// The JOSE `typ` is not the one expected here.
    #[error("wrong token type")]
    WrongType,
    /// The `kid` is missing or names no key in the ring.
    #[error("unknown signing key")]
    UnknownKey,
    /// The `alg` is not `EdDSA`, or the signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// `now_s >= exp`.
    #[error("token expired")]
    Expired,
    /// `iat` is more than [`crate::MAX_IAT_SKEW_S`] seconds in the future.
    #[error("token not yet valid")]
    NotYetValid,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn agent_claims_omit_absent_limits_and_accept_them_missing() {
        let claims = AgentTokenClaims {
            iss: "https://tp.example".into(),
            sub: "agt_1".into(),
            tid: "ten_1".into(),
            jti: "tok_1".into(),
            iat: 1,
            exp: 2,
            pv: 0,
            par: None,
            lim: None,
        };
        let value = serde_json::to_value(&claims).unwrap();
        assert_eq!(
            value,
            json!({"iss": "https://tp.example", "sub": "agt_1", "tid": "ten_1", "jti": "tok_1", "iat": 1, "exp": 2, "pv": 0})
        );
        assert_eq!(
            serde_json::from_value::<AgentTokenClaims>(value).unwrap(),
            claims
        );

        let limits: crate::policy::TokenLimits = serde_json::from_value(json!({
            "maxPerPayment": [{"amount": "500", "currency": "usd"}], "expiresAtS": 2
        }))
        .unwrap();
        let limited = AgentTokenClaims {
            par: Some("tok_0".into()),
            lim: Some(limits),
            ..claims
        };
        let value = serde_json::to_value(&limited).unwrap();
        assert_eq!(
            value["lim"]["maxPerPayment"],
            json!([{"amount": "500", "currency": "usd"}])
        );
        assert_eq!(value["par"], "tok_0");
        assert_eq!(
            serde_json::from_value::<AgentTokenClaims>(value).unwrap(),
            limited
        );
    }

    #[test]
    fn grant_claims_use_the_short_names() {
        let claims = GrantClaims {
            iss: "https://tp.example".into(),
            jti: "ab12".into(),
            chal: "ch".into(),
            amt: "250".into(),
            cur: "usd".into(),
            rcp: "ten_m".into(),
            pyr: "ten_p".into(),
            agt: "agt_1".into(),
            iat: 10,
            exp: 20,
        };
        let value = serde_json::to_value(&claims).unwrap();
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "iss", "jti", "chal", "amt", "cur", "rcp", "pyr", "agt", "iat", "exp"
            ]
        );
        assert_eq!(
            serde_json::from_value::<GrantClaims>(value).unwrap(),
            claims
        );
    }

    #[test]
    fn error_messages_are_short_and_fixed() {
        for err in [
            TokenError::Malformed,
            TokenError::WrongType,
            TokenError::UnknownKey,
            TokenError::BadSignature,
            TokenError::Expired,
            TokenError::NotYetValid,
        ] {
            let message = err.to_string();
            assert!(!message.is_empty() && message.len() <= 24, "{message}");
        }
    }
}
