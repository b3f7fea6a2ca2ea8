//! `Payment-Receipt: <base64url(JSON)>` (`draft-httpauth-payment-00` §5.3). Sent on 2xx only.
//! Unknown fields (method extras such as `chainId`, `externalId`) are preserved in `extra`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::limits::RECEIPT_LEN_MAX;

/// Why a `Payment-Receipt` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// Empty value.
    #[error("empty Payment-Receipt value")]
    Empty,
    /// Longer than [`RECEIPT_LEN_MAX`].
    #[error("receipt longer than {RECEIPT_LEN_MAX} bytes")]
    TooLong,
    /// Not base64url.
    #[error("receipt is not valid base64url")]
    InvalidBase64,
    /// Not JSON.
    #[error("receipt is not valid JSON")]
    InvalidJson,
    /// JSON not following the receipt schema.
    #[error("invalid receipt: {0}")]
    InvalidField(String),
}

/// A payment receipt (§5.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    /// `status`: always `"success"` on a receipt we issue.
    pub status: String,
    /// `method`: the payment method used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// `timestamp`: RFC 3339 settlement time.
    pub timestamp: String,
    /// `reference`: method-specific reference (transaction hash, payment intent id, …).
    pub reference: String,
    /// Method-specific extras, preserved as received.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Receipt {
    /// A success receipt.
    pub fn success(
        method: &str,
        timestamp: chrono::DateTime<chrono::Utc>,
        reference: &str,
    ) -> Self {
        Self {
            status: "success".into(),
            method: Some(method.into()),
            timestamp: timestamp.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            reference: reference.into(),
            extra: Map::new(),
        }
    }

    /// Parse a `Payment-Receipt` value (a leading `Payment-Receipt:` name is accepted).
    pub fn parse(header_value: &str) -> Result<Self, ReceiptError> {
        let token = crate::challenge::strip_header_name(header_value, "payment-receipt");
        if token.is_empty() {
            return Err(ReceiptError::Empty);
        }
        if token.len() > RECEIPT_LEN_MAX {
            return Err(ReceiptError::TooLong);
        }
        let bytes = crate::b64::decode(token).map_err(|_| ReceiptError::InvalidBase64)?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|_| ReceiptError::InvalidJson)?;
        Self::from_json(value)
    }

    /// Read a receipt from its JSON object.
    pub fn from_json(value: Value) -> Result<Self, ReceiptError> {
        let Value::Object(mut map) = value else {
            return Err(ReceiptError::InvalidField(
                "receipt must be a JSON object".into(),
            ));
        };
        let mut take = |field: &str, required: bool| -> Result<Option<String>, ReceiptError> {
            match map.remove(field) {
                Some(Value::String(s)) if !s.is_empty() || field == "method" => Ok(Some(s)),
                Some(Value::String(_)) => {
                    Err(ReceiptError::InvalidField(format!("`{field}` is empty")))
                }
                Some(_) => Err(ReceiptError::InvalidField(format!(
                    "`{field}` must be a string"
                ))),
                None if required => Err(ReceiptError::InvalidField(format!("missing `{field}`"))),
                None => Ok(None),
            }
        };
        let status = take("status", true)?.unwrap_or_default();
        let method = take("method", false)?;
        let timestamp = take("timestamp", true)?.unwrap_or_default();
        let reference = take("reference", true)?.unwrap_or_default();
        if !crate::challenge::is_rfc3339(&timestamp) {
            return Err(ReceiptError::InvalidField(
                "`timestamp` is not an RFC 3339 date-time".into(),
            ));
        }
        Ok(Self {
            status,
            method,
            timestamp,
            reference,
            extra: map,
        })
    }

    /// True when `status` is `"success"`, the only status the spec allows.
    pub fn is_success(&self) -> bool {
        self.status == "success"
    }

    /// The header value: `base64url-nopad(JSON)`. Refuses a receipt the parser would refuse.
    pub fn to_header_value(&self) -> Result<String, ReceiptError> {
        if self.status.is_empty() || self.reference.is_empty() {
            return Err(ReceiptError::InvalidField(
                "`status` and `reference` must be non-empty".into(),
            ));
        }
        if !crate::challenge::is_rfc3339(&self.timestamp) {
            return Err(ReceiptError::InvalidField(
                "`timestamp` is not an RFC 3339 date-time".into(),
            ));
        }
        let own = ["status", "method", "timestamp", "reference"];
        if let Some(field) = own.into_iter().find(|k| self.extra.contains_key(*k)) {
            return Err(ReceiptError::InvalidField(format!(
                "`{field}` is a receipt field, not an extra"
            )));
        }
        let json =
            serde_json::to_vec(self).map_err(|e| ReceiptError::InvalidField(e.to_string()))?;
        Ok(crate::b64::encode(json))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn preserves_unknown_fields() {
        let wire = crate::b64::encode(
            json!({"status": "success", "method": "evm", "timestamp": "2026-01-01T00:00:00Z",
                   "reference": "0xabc", "chainId": 31337, "externalId": "o-1"})
            .to_string(),
        );
        let receipt = Receipt::parse(&wire).unwrap();
        assert_eq!(receipt.extra["chainId"], 31337);
        let again = Receipt::parse(&receipt.to_header_value().unwrap()).unwrap();
        assert_eq!(again, receipt);
    }

    #[test]
    fn decodes_the_spec_example() {
        let r = Receipt::parse("eyJzdGF0dXMiOiJzdWNjZXNzIiwibWV0aG9kIjoiaW52b2ljZSIsInRpbWVzdGFtcCI6IjIwMjUtMDEtMTVUMTI6MDA6MDBaIiwicmVmZXJlbmNlIjoiaW52XzEyMzQ1In0").unwrap();
        assert!(r.is_success());
        assert_eq!(r.reference, "inv_12345");
    }

    #[test]
    fn rejects_missing_reference_and_bad_timestamp() {
        let no_ref =
            crate::b64::encode(r#"{"status":"success","timestamp":"2026-01-01T00:00:00Z"}"#);
        assert_eq!(
            Receipt::parse(&no_ref),
            Err(ReceiptError::InvalidField("missing `reference`".into()))
        );
        let bad_ts =
            crate::b64::encode(r#"{"status":"success","timestamp":"yesterday","reference":"x"}"#);
        assert!(Receipt::parse(&bad_ts).is_err());
    }
}
