//! `WWW-Authenticate: Payment` challenges (`draft-httpauth-payment-00` §5.1).

use serde_json::{Map, Value};

use crate::auth_params::{self, ParamSyntaxError};
use crate::binding::{BindingInput, BindingKeyring, BindingSecret};
use crate::limits::{
    AUTH_PARAMS_MAX, CHALLENGE_ID_LEN_MAX, CHALLENGES_MAX, REQUEST_PARAM_LEN_MAX,
    WWW_AUTHENTICATE_LEN_MAX,
};

/// Why a challenge could not be parsed or formatted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    /// The header value is empty.
    #[error("empty header value")]
    Empty,
    /// No challenge of the Payment scheme in the value.
    #[error("no Payment challenge in the header")]
    NoPaymentChallenge,
    /// The header value exceeds [`WWW_AUTHENTICATE_LEN_MAX`].
    #[error("header longer than {WWW_AUTHENTICATE_LEN_MAX} bytes")]
    TooLong,
    /// More than [`CHALLENGES_MAX`] Payment challenges.
    #[error("more than {CHALLENGES_MAX} Payment challenges")]
    TooManyChallenges,
    /// More than [`AUTH_PARAMS_MAX`] parameters in one challenge.
    #[error("more than {AUTH_PARAMS_MAX} parameters in one challenge")]
    TooManyParams,
    /// A required parameter is absent.
    #[error("missing required parameter `{0}`")]
    MissingParam(&'static str),
    /// `id` is empty after unescaping (spec: parsers MUST reject it).
    #[error("parameter `id` is empty")]
    EmptyId,
    /// `id` is longer than [`CHALLENGE_ID_LEN_MAX`].
    #[error("parameter `id` longer than {CHALLENGE_ID_LEN_MAX} bytes")]
    IdTooLong,
    /// The same parameter appears twice.
    #[error("duplicate parameter `{0}`")]
    DuplicateParam(String),
    /// A parameter is not `name=token` or `name="quoted-string"`.
    #[error("malformed parameter: {0}")]
    MalformedParam(&'static str),
    /// A required parameter's quoted-string has no closing quote, or text follows it.
    #[error("malformed value for parameter `{0}`")]
    MalformedValue(&'static str),
    /// `method` is not `1*LOWERALPHA`.
    #[error("parameter `method` must be lowercase letters a-z only")]
    InvalidMethod,
    /// `intent` is not `1*(ALPHA / DIGIT / "-")`.
    #[error("parameter `intent` must be letters, digits and '-' only")]
    InvalidIntent,
    /// `request` exceeds [`REQUEST_PARAM_LEN_MAX`].
    #[error("parameter `request` longer than {REQUEST_PARAM_LEN_MAX} bytes")]
    RequestTooLarge,
    /// `request` is not base64url of a JSON object.
    #[error("parameter `request` is not base64url-encoded JSON object: {0}")]
    InvalidRequest(&'static str),
    /// `expires` is not an RFC 3339 date-time.
    #[error("parameter `expires` is not an RFC 3339 date-time")]
    InvalidExpires,
    /// A value holds a control character (CR/LF would inject headers); formatting refused.
    #[error("parameter `{0}` contains a control character")]
    ControlCharacter(&'static str),
    /// The request object cannot be canonicalized.
    #[error("request cannot be canonicalized: {0}")]
    Canonicalization(String),
}

/// `true` when `s` is `1*LOWERALPHA` (the `method` grammar).
pub fn is_valid_method(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase())
}

/// `true` when `s` is `1*(ALPHA / DIGIT / "-")` (the `intent` grammar).
pub fn is_valid_intent(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// `true` when `s` is an RFC 3339 date-time.
pub fn is_rfc3339(s: &str) -> bool {
    chrono::DateTime::parse_from_rfc3339(s).is_ok()
}

/// A JSON object together with its wire form `base64url-nopad(JCS(object))` (the `request`
/// auth-param). Built from either side, so the two always agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedRequest {
    wire: String,
    json: Map<String, Value>,
}

impl EncodedRequest {
    /// Canonicalize (RFC 8785) and encode a request object.
    /// The stored object is the canonical one read back, so it equals what a client decodes.
    pub fn from_json(json: Map<String, Value>) -> Result<Self, ChallengeError> {
        let canonical = crate::jcs::to_string(&json)
            .map_err(|e| ChallengeError::Canonicalization(e.to_string()))?;
        let wire = crate::b64::encode(&canonical);
        if wire.len() > REQUEST_PARAM_LEN_MAX {
            return Err(ChallengeError::RequestTooLarge);
        }
        // Keep the object clients will see: JCS writes numbers as ECMAScript doubles, so 1.0
        // becomes 1 and integers beyond 2^53 lose precision (amounts are strings for this reason).
        let json = match serde_json::from_str(&canonical) {
            Ok(Value::Object(map)) => map,
            _ => {
                return Err(ChallengeError::Canonicalization(
                    "canonical form is not an object".into(),
                ));
            }
        };
        Ok(Self { wire, json })
    }

    /// Decode a `request` value as received. The wire string is kept exactly as sent: it is what
    /// the binding covers.
    pub fn from_wire(wire: &str) -> Result<Self, ChallengeError> {
        Ok(Self {
            json: decode_request(wire)?,
            wire: wire.to_owned(),
        })
    }

    /// The base64url string as sent or emitted.
    pub fn wire(&self) -> &str {
        &self.wire
    }

    /// The decoded JSON object.
    pub fn json(&self) -> &Map<String, Value> {
        &self.json
    }
}

/// Decode a `request` wire value to its JSON object.
pub fn decode_request(wire: &str) -> Result<Map<String, Value>, ChallengeError> {
    if wire.len() > REQUEST_PARAM_LEN_MAX {
        return Err(ChallengeError::RequestTooLarge);
    }
    let bytes = crate::b64::decode(wire)
        .map_err(|_| ChallengeError::InvalidRequest("invalid base64url"))?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ChallengeError::InvalidRequest("JSON is not an object")),
        Err(_) => Err(ChallengeError::InvalidRequest("not valid JSON")),
    }
}

/// One Payment challenge (`WWW-Authenticate: Payment id=…, realm=…, …`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// `id`: the challenge identifier, bound to the other fields (§5.1.1).
    pub id: String,
    /// `realm`: protection space (§5.1.1).
    pub realm: String,
    /// `method`: payment method, `1*LOWERALPHA` (§6).
    pub method: String,
    /// `intent`: payment intent, e.g. `charge` (§7).
    pub intent: String,
    /// `request`: the method/intent request object and its wire form (§5.1.1).
    pub request: EncodedRequest,
    /// `expires`: RFC 3339 expiry (§5.1.2).
    pub expires: Option<String>,
    /// `digest`: RFC 9530 digest of the request body (§5.1.2).
    pub digest: Option<String>,
    /// `description`: display only, never verified (§5.1.2).
    pub description: Option<String>,
    /// `opaque`: server correlation data, echoed unchanged (§5.1.2).
    pub opaque: Option<String>,
    /// `header`: credential header name when not `Authorization` (reference-SDK extension).
    pub header: Option<String>,
}

/// The fields of a challenge before its `id` is computed.
#[derive(Debug, Clone, PartialEq)]
pub struct ChallengeParams {
    /// `realm`.
    pub realm: String,
    /// `method`.
    pub method: String,
    /// `intent`.
    pub intent: String,
    /// `request` object (canonicalized when bound).
    pub request: Map<String, Value>,
    /// `expires` (RFC 3339).
    pub expires: Option<String>,
    /// `digest` (RFC 9530).
    pub digest: Option<String>,
    /// `description`.
    pub description: Option<String>,
    /// `opaque` as it will be sent.
    pub opaque: Option<String>,
}

impl Challenge {
    /// The binding input of this challenge.
    pub fn binding_input(&self) -> BindingInput<'_> {
        BindingInput {
            realm: &self.realm,
            method: &self.method,
            intent: &self.intent,
            request: self.request.wire(),
            expires: self.expires.as_deref(),
            digest: self.digest.as_deref(),
            header: self.header.as_deref(),
            opaque: self.opaque.as_deref(),
        }
    }

    /// Build a challenge whose `id` is the HMAC binding of its fields under `keyring`'s current
    /// secret.
    pub fn issue(
        keyring: &BindingKeyring,
        params: ChallengeParams,
    ) -> Result<Self, ChallengeError> {
        let mut challenge = Self::unbound(params)?;
        challenge.id = keyring.challenge_id(&challenge.binding_input());
        Ok(challenge)
    }

    /// Build a challenge bound under a single secret.
    pub fn issue_with_secret(
        secret: &BindingSecret,
        params: ChallengeParams,
    ) -> Result<Self, ChallengeError> {
        let mut challenge = Self::unbound(params)?;
        challenge.id = secret.challenge_id(&challenge.binding_input());
        Ok(challenge)
    }

    fn unbound(params: ChallengeParams) -> Result<Self, ChallengeError> {
        let challenge = Self {
            id: String::new(),
            realm: params.realm,
            method: params.method,
            intent: params.intent,
            request: EncodedRequest::from_json(params.request)?,
            expires: params.expires,
            digest: params.digest,
            description: params.description,
            opaque: params.opaque,
            header: None,
        };
        challenge.check_fields()?;
        Ok(challenge)
    }

    /// The request object decoded.
    pub fn request_json(&self) -> &Map<String, Value> {
        self.request.json()
    }

    /// `expires` as a UTC time, when present and valid.
    pub fn expires_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let expires = self.expires.as_deref()?;
        chrono::DateTime::parse_from_rfc3339(expires)
            .ok()
            .map(|t| t.to_utc())
    }

    fn check_fields(&self) -> Result<(), ChallengeError> {
        if !is_valid_method(&self.method) {
            return Err(ChallengeError::InvalidMethod);
        }
        if !is_valid_intent(&self.intent) {
            return Err(ChallengeError::InvalidIntent);
        }
        if let Some(expires) = &self.expires
            && !is_rfc3339(expires)
        {
            return Err(ChallengeError::InvalidExpires);
        }
        Ok(())
    }

    /// Format as one `WWW-Authenticate` header value:
    /// `Payment id="…", realm="…", method="…", intent="…", request="…"[, …]`.
    /// Refuses an empty `id`, an invalid method or intent, and any control character (CR/LF).
    pub fn to_header_value(&self) -> Result<String, ChallengeError> {
        if self.id.is_empty() {
            return Err(ChallengeError::EmptyId);
        }
        if self.id.len() > CHALLENGE_ID_LEN_MAX {
            return Err(ChallengeError::IdTooLong);
        }
        self.check_fields()?;
        let fields: [(&'static str, Option<&str>); 10] = [
            ("id", Some(&self.id)),
            ("realm", Some(&self.realm)),
            ("method", Some(&self.method)),
            ("intent", Some(&self.intent)),
            ("request", Some(self.request.wire())),
            ("description", self.description.as_deref()),
            ("digest", self.digest.as_deref()),
            ("expires", self.expires.as_deref()),
            ("opaque", self.opaque.as_deref()),
            ("header", self.header.as_deref()),
        ];
        let mut out = String::with_capacity(128 + self.request.wire().len());
        out.push_str(crate::SCHEME);
        let mut first = true;
        for (name, value) in fields {
            let Some(value) = value else { continue };
            if !auth_params::is_quotable(value) {
                return Err(ChallengeError::ControlCharacter(name));
            }
            out.push_str(if first { " " } else { ", " });
            first = false;
            out.push_str(name);
            out.push('=');
            auth_params::push_quoted(&mut out, value);
        }
        Ok(out)
    }

    /// Parse exactly the Payment challenges of one header value and return the first.
    /// Use [`parse_challenges`] when a response may offer several.
    pub fn parse(header_value: &str) -> Result<Self, ChallengeError> {
        parse_challenges(header_value)?
            .into_iter()
            .next()
            .ok_or(ChallengeError::NoPaymentChallenge)
    }
}

/// Parse every Payment challenge in one `WWW-Authenticate` value (which may also hold challenges
/// of other schemes, comma-joined). An optional leading `WWW-Authenticate:` name is accepted.
/// Any malformed Payment challenge makes the whole value an error; other schemes are skipped.
/// Returns `Err(NoPaymentChallenge)` when there is none.
pub fn parse_challenges(header_value: &str) -> Result<Vec<Challenge>, ChallengeError> {
    parse_challenges_from_lines([header_value])
}

/// Parse every Payment challenge from several `WWW-Authenticate` header lines.
pub fn parse_challenges_from_lines<'a>(
    lines: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<Challenge>, ChallengeError> {
    let mut challenges = Vec::new();
    let mut any_content = false;
    for line in lines {
        if line.len() > WWW_AUTHENTICATE_LEN_MAX {
            return Err(ChallengeError::TooLong);
        }
        let line = strip_header_name(line, "www-authenticate");
        if !line.trim().is_empty() {
            any_content = true;
        }
        for scheme in auth_params::group_schemes(line) {
            if !scheme.scheme.eq_ignore_ascii_case(crate::SCHEME) {
                continue;
            }
            if challenges.len() == CHALLENGES_MAX {
                return Err(ChallengeError::TooManyChallenges);
            }
            challenges.push(parse_one(&scheme.elements)?);
        }
    }
    if !any_content {
        return Err(ChallengeError::Empty);
    }
    if challenges.is_empty() {
        return Err(ChallengeError::NoPaymentChallenge);
    }
    Ok(challenges)
}

/// Drop a leading `Name:` if the caller passed a whole header line.
pub(crate) fn strip_header_name<'a>(line: &'a str, name: &str) -> &'a str {
    let trimmed = line.trim_start();
    if let Some((head, rest)) = trimmed.split_once(':')
        && head.trim_end().eq_ignore_ascii_case(name)
    {
        return rest.trim();
    }
    line.trim()
}

const KNOWN: [&str; 10] = [
    "id",
    "realm",
    "method",
    "intent",
    "request",
    "expires",
    "digest",
    "description",
    "opaque",
    "header",
];

fn parse_one(elements: &[&str]) -> Result<Challenge, ChallengeError> {
    if elements.len() > AUTH_PARAMS_MAX {
        return Err(ChallengeError::TooManyParams);
    }
    let mut values: [Option<String>; 10] = Default::default();
    let mut unknown_seen: Vec<String> = Vec::new();
    for element in elements {
        let (name, value) = auth_params::parse_param(element).map_err(|e| {
            ChallengeError::MalformedParam(match e {
                ParamSyntaxError::MissingName => "expected a parameter name",
                ParamSyntaxError::MissingEquals => {
                    "expected `=` after the parameter name (token68 is not allowed)"
                }
                ParamSyntaxError::MissingValue => "expected a token or quoted-string value",
            })
        })?;
        let lower = name.to_ascii_lowercase();
        match KNOWN.iter().position(|k| *k == lower) {
            Some(slot) => {
                if values[slot].is_some() {
                    return Err(ChallengeError::DuplicateParam(lower));
                }
                // `description` is display-only: a stray quote truncates it (as the reference
                // parsers do); every field that is bound or verified must be well formed.
                let lenient = KNOWN[slot] == "description";
                if !lenient && (!value.terminated || !value.trailing.is_empty()) {
                    return Err(ChallengeError::MalformedValue(KNOWN[slot]));
                }
                values[slot] = Some(value.value.into_owned());
            }
            None => {
                // Unknown parameters are ignored (§5.1.2), even malformed ones, but a name may
                // still appear only once.
                if unknown_seen.contains(&lower) {
                    return Err(ChallengeError::DuplicateParam(lower));
                }
                unknown_seen.push(lower);
            }
        }
    }
    let [
        id,
        realm,
        method,
        intent,
        request,
        expires,
        digest,
        description,
        opaque,
        header,
    ] = values;
    let id = id.ok_or(ChallengeError::MissingParam("id"))?;
    if id.is_empty() {
        return Err(ChallengeError::EmptyId);
    }
    if id.len() > CHALLENGE_ID_LEN_MAX {
        return Err(ChallengeError::IdTooLong);
    }
    let realm = realm.ok_or(ChallengeError::MissingParam("realm"))?;
    let method = method.ok_or(ChallengeError::MissingParam("method"))?;
    let intent = intent.ok_or(ChallengeError::MissingParam("intent"))?;
    let request = request.ok_or(ChallengeError::MissingParam("request"))?;
    let challenge = Challenge {
        id,
        realm,
        method,
        intent,
        request: EncodedRequest::from_wire(&request)?,
        expires,
        digest,
        description,
        opaque,
        header,
    };
    challenge.check_fields()?;
    Ok(challenge)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params() -> ChallengeParams {
        ChallengeParams {
            realm: "api.example.com".into(),
            method: "tempo".into(),
            intent: "charge".into(),
            request: json!({"amount": "1000", "currency": "usd"})
                .as_object()
                .unwrap()
                .clone(),
            expires: Some("2030-01-01T00:00:00Z".into()),
            digest: None,
            description: Some("Say \"hi\" \\ ok".into()),
            opaque: None,
        }
    }

    #[test]
    fn issued_challenge_round_trips_and_verifies() {
        let ring = BindingKeyring::new(BindingSecret::new(&[9u8; 32]).unwrap());
        let challenge = Challenge::issue(&ring, params()).unwrap();
        let header = challenge.to_header_value().unwrap();
        let parsed = Challenge::parse(&header).unwrap();
        assert_eq!(parsed, challenge);
        assert!(ring.verify(&parsed.binding_input(), &parsed.id));
    }

    #[test]
    fn finds_payment_challenges_among_other_schemes() {
        let line = r#"Bearer realm="x", Payment id="a", realm="r", method="tempo", intent="charge", request="e30", Basic realm="y", Payment id="b", realm="r", method="stripe", intent="charge", request="e30""#;
        let found = parse_challenges(line).unwrap();
        assert_eq!(
            found.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(found[1].method, "stripe");
    }

    #[test]
    fn reads_several_header_lines() {
        let lines = [
            r#"WWW-Authenticate: Payment id="a", realm="r", method="tempo", intent="charge", request="e30""#,
            r#"Payment id="b", realm="r", method="lightning", intent="charge", request="e30""#,
        ];
        assert_eq!(parse_challenges_from_lines(lines).unwrap().len(), 2);
    }

    #[test]
    fn rejects_uppercase_or_digit_methods() {
        for m in ["Tempo", "tempo2", "te-mpo"] {
            let line = format!(
                r#"Payment id="a", realm="r", method="{m}", intent="charge", request="e30""#
            );
            assert_eq!(
                Challenge::parse(&line),
                Err(ChallengeError::InvalidMethod),
                "{m}"
            );
        }
    }

    #[test]
    fn rejects_oversized_request_param() {
        let big = "A".repeat(REQUEST_PARAM_LEN_MAX + 4);
        let line = format!(
            r#"Payment id="a", realm="r", method="tempo", intent="charge", request="{big}""#
        );
        assert_eq!(
            Challenge::parse(&line),
            Err(ChallengeError::RequestTooLarge)
        );
    }

    #[test]
    fn refuses_to_format_crlf() {
        let ring = BindingKeyring::new(BindingSecret::new(&[9u8; 32]).unwrap());
        let mut p = params();
        p.description = Some("a\r\nSet-Cookie: x".into());
        let challenge = Challenge::issue(&ring, p).unwrap();
        assert_eq!(
            challenge.to_header_value(),
            Err(ChallengeError::ControlCharacter("description"))
        );
    }

    #[test]
    fn malformed_bound_value_is_rejected_but_description_is_truncated() {
        let bad = r#"Payment id="a"x, realm="r", method="tempo", intent="charge", request="e30""#;
        assert_eq!(
            Challenge::parse(bad),
            Err(ChallengeError::MalformedValue("id"))
        );
        let ok = r#"Payment id="a", realm="r", method="tempo", intent="charge", request="e30", description="x "y" z""#;
        assert_eq!(
            Challenge::parse(ok).unwrap().description.as_deref(),
            Some("x ")
        );
    }
}
