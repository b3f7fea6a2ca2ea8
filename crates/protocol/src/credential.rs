//! `Authorization: Payment <base64url(JSON)>` credentials (`draft-httpauth-payment-00` §5.2).
//!
//! Error messages never contain the credential or any of its values: a credential is a bearer
//! secret (§11.3) and these errors reach logs and problem bodies.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::binding::BindingInput;
use crate::challenge::{ChallengeError, decode_request, is_valid_intent, is_valid_method};
use crate::limits::{CHALLENGE_ID_LEN_MAX, CREDENTIAL_LEN_MAX};

/// Why an `Authorization` value is not a usable Payment credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// The value is empty.
    #[error("empty Authorization value")]
    Empty,
    /// The scheme is not `Payment`.
    #[error("not a Payment credential")]
    NotPayment,
    /// More than one `Authorization: Payment` credential in one request (§5.2: reject with 400).
    #[error("more than one Payment credential in the request")]
    MultipleCredentials,
    /// `Payment` is not followed by exactly one base64url token.
    #[error("expected `Payment <base64url>`")]
    MalformedHeader,
    /// Longer than [`CREDENTIAL_LEN_MAX`].
    #[error("credential longer than {CREDENTIAL_LEN_MAX} bytes")]
    TooLong,
    /// The token is not base64url.
    #[error("credential is not valid base64url")]
    InvalidBase64,
    /// The decoded bytes are not JSON.
    #[error("credential is not valid JSON")]
    InvalidJson,
    /// The JSON does not follow the credential schema.
    #[error("invalid credential: {0}")]
    InvalidField(String),
}

/// The challenge parameters a credential echoes back (§5.2, "challenge" object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeEcho {
    /// `id` as issued.
    pub id: String,
    /// `realm`.
    pub realm: String,
    /// `method`.
    pub method: String,
    /// `intent`.
    pub intent: String,
    /// `request`: the base64url string exactly as issued (what the binding covers).
    pub request: String,
    /// `description`, if the challenge had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `digest`, if the challenge had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// `expires`, if the challenge had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// `opaque`, if the challenge had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opaque: Option<String>,
    /// Credential header name, if the challenge named one other than `Authorization`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
}

impl crate::challenge::Challenge {
    /// The echo of this challenge a credential carries (§5.2: every parameter as received).
    pub fn echo(&self) -> ChallengeEcho {
        ChallengeEcho {
            id: self.id.clone(),
            realm: self.realm.clone(),
            method: self.method.clone(),
            intent: self.intent.clone(),
            request: self.request.wire().to_owned(),
            description: self.description.clone(),
            digest: self.digest.clone(),
            expires: self.expires.clone(),
            opaque: self.opaque.clone(),
            header: self.header.clone(),
        }
    }
}

impl ChallengeEcho {
    /// The fields the binding covers.
    pub fn binding_input(&self) -> BindingInput<'_> {
        BindingInput {
            realm: &self.realm,
            method: &self.method,
            intent: &self.intent,
            request: &self.request,
            expires: self.expires.as_deref(),
            digest: self.digest.as_deref(),
            header: self.header.as_deref(),
            opaque: self.opaque.as_deref(),
        }
    }

    /// Decode the echoed `request` (not done while parsing: the binding check comes first).
    pub fn request_json(&self) -> Result<Map<String, Value>, ChallengeError> {
        decode_request(&self.request)
    }

    /// `expires` as a UTC time; `Ok(None)` when absent, `Err` when not RFC 3339.
    pub fn expires_at(&self) -> Result<Option<chrono::DateTime<chrono::Utc>>, ChallengeError> {
        match self.expires.as_deref() {
            None => Ok(None),
            Some(s) => chrono::DateTime::parse_from_rfc3339(s)
                .map(|t| Some(t.to_utc()))
                .map_err(|_| ChallengeError::InvalidExpires),
        }
    }
}

/// A Payment credential (§5.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Credential {
    /// `challenge`: the echoed challenge.
    pub challenge: ChallengeEcho,
    /// `source`: payer identifier, RECOMMENDED a DID. `null` on the wire reads as absent, and
    /// `Some(Value::Null)` is written as absent.
    #[serde(default, skip_serializing_if = "is_absent")]
    pub source: Option<Value>,
    /// `payload`: the method-specific proof.
    pub payload: Map<String, Value>,
}

impl Credential {
    /// Parse an `Authorization` value holding exactly one credential, `Payment <token>`. A leading
    /// `Authorization:` name is accepted. For a value that may hold other schemes too, use
    /// [`find_payment_credential`].
    pub fn parse(header_value: &str) -> Result<Self, CredentialError> {
        let value = crate::challenge::strip_header_name(header_value, "authorization");
        if value.is_empty() {
            return Err(CredentialError::Empty);
        }
        let (scheme, rest) = split_scheme(value);
        if !scheme.eq_ignore_ascii_case(crate::SCHEME) {
            return Err(CredentialError::NotPayment);
        }
        Self::from_token(rest)
    }

    /// Decode the credential token (the part after `Payment `).
    pub fn from_token(token: &str) -> Result<Self, CredentialError> {
        let token = token.trim_matches([' ', '\t']);
        if token.len() > CREDENTIAL_LEN_MAX {
            return Err(CredentialError::TooLong);
        }
        if token.is_empty() {
            return Err(CredentialError::MalformedHeader);
        }
        let bytes = crate::b64::decode(token).map_err(|_| CredentialError::InvalidBase64)?;
        Self::from_json_bytes(&bytes)
    }

    /// Parse the decoded credential JSON.
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Self, CredentialError> {
        let credential: Self = match serde_json::from_slice(bytes) {
            Ok(c) => c,
            Err(_) => return Err(diagnose(bytes)),
        };
        credential.check()?;
        Ok(credential)
    }

    fn check(&self) -> Result<(), CredentialError> {
        let c = &self.challenge;
        if c.id.is_empty() {
            return Err(CredentialError::InvalidField(
                "`challenge.id` is empty".into(),
            ));
        }
        if c.id.len() > CHALLENGE_ID_LEN_MAX {
            return Err(CredentialError::InvalidField(
                "`challenge.id` is too long".into(),
            ));
        }
        if !is_valid_method(&c.method) {
            return Err(CredentialError::InvalidField(
                "`challenge.method` must be lowercase letters a-z".into(),
            ));
        }
        if !is_valid_intent(&c.intent) {
            return Err(CredentialError::InvalidField(
                "`challenge.intent` must be letters, digits and '-'".into(),
            ));
        }
        match &self.source {
            None | Some(Value::String(_)) | Some(Value::Object(_)) | Some(Value::Null) => Ok(()),
            Some(_) => Err(CredentialError::InvalidField(
                "`source` must be a string".into(),
            )),
        }
    }

    /// The wire token: `base64url-nopad(JSON)` (without the scheme).
    pub fn to_token(&self) -> String {
        let json = serde_json::to_vec(self).expect("a credential always serializes");
        crate::b64::encode(json)
    }

    /// The `Authorization` header value: `Payment <token>`.
    pub fn to_header_value(&self) -> String {
        format!("{} {}", crate::SCHEME, self.to_token())
    }
}

fn is_absent(source: &Option<Value>) -> bool {
    matches!(source, None | Some(Value::Null))
}

fn split_scheme(value: &str) -> (&str, &str) {
    match value.find([' ', '\t']) {
        Some(i) => (&value[..i], &value[i..]),
        None => (value, ""),
    }
}

/// Explain, without quoting any value, why `bytes` did not deserialize as a credential.
fn diagnose(bytes: &[u8]) -> CredentialError {
    let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
        return CredentialError::InvalidJson;
    };
    let invalid = |s: &str| CredentialError::InvalidField(s.to_owned());
    let Some(root) = value.as_object() else {
        return invalid("credential must be a JSON object");
    };
    let Some(challenge) = root.get("challenge") else {
        return invalid("missing `challenge`");
    };
    let Some(challenge) = challenge.as_object() else {
        return invalid("`challenge` must be an object");
    };
    for field in ["id", "realm", "method", "intent", "request"] {
        match challenge.get(field) {
            None => return CredentialError::InvalidField(format!("missing `challenge.{field}`")),
            Some(Value::String(_)) => {}
            Some(_) => {
                return CredentialError::InvalidField(format!(
                    "`challenge.{field}` must be a string"
                ));
            }
        }
    }
    for field in ["description", "digest", "expires", "opaque", "header"] {
        if let Some(v) = challenge.get(field)
            && !v.is_string()
            && !v.is_null()
        {
            return CredentialError::InvalidField(format!("`challenge.{field}` must be a string"));
        }
    }
    match root.get("payload") {
        None => invalid("missing `payload`"),
        Some(Value::Object(_)) => invalid("credential does not follow the schema"),
        Some(_) => invalid("`payload` must be an object"),
    }
}

/// Find the one Payment credential among `Authorization` values (each may hold several
/// comma-joined credentials of other schemes). `Ok(None)` when there is none; an error when
/// there are several or when the Payment one is malformed.
pub fn find_payment_credential<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> Result<Option<Credential>, CredentialError> {
    let mut found: Option<&str> = None;
    for value in values {
        if value.len() > CREDENTIAL_LEN_MAX + 1024 {
            return Err(CredentialError::TooLong);
        }
        let value = crate::challenge::strip_header_name(value, "authorization");
        for group in crate::auth_params::group_schemes(value) {
            if !group.scheme.eq_ignore_ascii_case(crate::SCHEME) {
                continue;
            }
            if found.is_some() {
                return Err(CredentialError::MultipleCredentials);
            }
            match group.elements.as_slice() {
                [token] => found = Some(token),
                _ => return Err(CredentialError::MalformedHeader),
            }
        }
    }
    found.map(Credential::from_token).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Credential {
        serde_json::from_value(json!({
            "challenge": {"id": "abc", "realm": "r", "method": "tempo", "intent": "charge", "request": "e30"},
            "payload": {"type": "hash", "hash": "0xdeadbeef"},
            "source": "did:pkh:eip155:1:0x00"
        }))
        .unwrap()
    }

    #[test]
    fn round_trips_through_the_header() {
        let c = sample();
        assert_eq!(Credential::parse(&c.to_header_value()).unwrap(), c);
        assert_eq!(
            Credential::parse(&format!("authorization: payment   {}", c.to_token())).unwrap(),
            c
        );
    }

    #[test]
    fn finds_payment_among_other_schemes() {
        let c = sample();
        let line = format!("Bearer abc.def, Payment {}", c.to_token());
        assert_eq!(find_payment_credential([line.as_str()]).unwrap(), Some(c));
        assert_eq!(find_payment_credential(["Bearer x"]).unwrap(), None);
    }

    #[test]
    fn several_payment_credentials_are_an_error() {
        let t = sample().to_token();
        let a = format!("Payment {t}");
        assert_eq!(
            find_payment_credential([a.as_str(), a.as_str()]),
            Err(CredentialError::MultipleCredentials)
        );
        let joined = format!("Payment {t}, Payment {t}");
        assert_eq!(
            find_payment_credential([joined.as_str()]),
            Err(CredentialError::MultipleCredentials)
        );
    }

    #[test]
    fn errors_never_quote_the_payload() {
        let secret = "0xSECRETSECRETSECRET";
        let bad =
            crate::b64::encode(json!({"challenge": {"id": 5}, "payload": secret}).to_string());
        let err = Credential::from_token(&bad).unwrap_err().to_string();
        assert!(!err.contains("SECRET"), "{err}");
        assert_eq!(err, "invalid credential: `challenge.id` must be a string");
    }

    #[test]
    fn ignores_unknown_fields() {
        let token = crate::b64::encode(
            json!({"challenge": {"id": "a", "realm": "r", "method": "tempo", "intent": "charge", "request": "e30", "x": 1},
                   "payload": {}, "extra": true})
            .to_string(),
        );
        assert!(Credential::from_token(&token).is_ok());
    }
}
