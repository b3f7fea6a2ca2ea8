//! The `charge` intent's request schema (`draft-payment-intent-charge-00` §4): what one payment
//! asks for. Methods put their own fields in `methodDetails`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The intent name.
pub const CHARGE_INTENT: &str = "charge";

/// Why a charge request is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChargeRequestError {
    /// Not a JSON object with string `amount` and `currency`.
    #[error("invalid charge request: {0}")]
    Schema(String),
    /// `amount` is not a base-10 integer of base units without leading zeros, or overflows u128.
    #[error("`amount` must be a string of base units (digits, no sign, no leading zeros)")]
    InvalidAmount,
    /// `currency` is empty.
    #[error("`currency` must not be empty")]
    EmptyCurrency,
}

/// A charge request (§4, the `request` auth-param's JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChargeRequest {
    /// `amount`: base units as a decimal string, e.g. `"1000"` for 10.00 USD.
    pub amount: String,
    /// `currency`: lowercase ISO 4217 code, token address, or method-defined.
    pub currency: String,
    /// `recipient`: method-specific payee.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// `description`: display only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `externalId`: the merchant's reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// `methodDetails`: method-specific fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method_details: Option<Map<String, Value>>,
    /// Fields this version does not know, kept so a request round-trips unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Parse a base-units amount string: `0` or digits without a leading zero, within u128.
pub fn parse_amount_minor(amount: &str) -> Option<u128> {
    let well_formed = !amount.is_empty()
        && amount.bytes().all(|b| b.is_ascii_digit())
        && (amount == "0" || !amount.starts_with('0'));
    if !well_formed {
        return None;
    }
    amount.parse().ok()
}

impl ChargeRequest {
    /// A request for `amount_minor` of `currency`.
    pub fn new(amount_minor: u128, currency: impl Into<String>) -> Self {
        Self {
            amount: amount_minor.to_string(),
            currency: currency.into(),
            recipient: None,
            description: None,
            external_id: None,
            method_details: None,
            extra: Map::new(),
        }
    }

    /// Read and validate a charge request from a decoded `request` object.
    pub fn from_json(json: &Map<String, Value>) -> Result<Self, ChargeRequestError> {
        let request: Self = serde_json::from_value(Value::Object(json.clone())).map_err(|_| {
            let reason = match (json.get("amount"), json.get("currency")) {
                (None, _) => "missing `amount`",
                (Some(a), _) if !a.is_string() => "`amount` must be a string",
                (_, None) => "missing `currency`",
                (_, Some(c)) if !c.is_string() => "`currency` must be a string",
                _ => "an optional field has the wrong type",
            };
            ChargeRequestError::Schema(reason.into())
        })?;
        request.validate()?;
        Ok(request)
    }

    /// Check the amount and currency.
    pub fn validate(&self) -> Result<(), ChargeRequestError> {
        parse_amount_minor(&self.amount).ok_or(ChargeRequestError::InvalidAmount)?;
        if self.currency.is_empty() {
            return Err(ChargeRequestError::EmptyCurrency);
        }
        Ok(())
    }

    /// The amount in base (minor) units.
    pub fn amount_minor(&self) -> Result<u128, ChargeRequestError> {
        parse_amount_minor(&self.amount).ok_or(ChargeRequestError::InvalidAmount)
    }

    /// The request as a JSON object, ready for [`crate::challenge::EncodedRequest::from_json`].
    pub fn to_json(&self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            _ => unreachable!("a struct serializes to an object"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn amounts_are_exact_integers_of_base_units() {
        assert_eq!(parse_amount_minor("0"), Some(0));
        assert_eq!(parse_amount_minor("1000"), Some(1000));
        assert_eq!(parse_amount_minor(&u128::MAX.to_string()), Some(u128::MAX));
        for bad in [
            "",
            "01",
            "-1",
            "1.5",
            "1e3",
            " 1",
            "340282366920938463463374607431768211456",
        ] {
            assert_eq!(parse_amount_minor(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn reads_the_spec_fields_and_keeps_unknown_ones() {
        let json = json!({"amount": "1000", "currency": "usd", "externalId": "o-1",
                          "methodDetails": {"chainId": 1}, "future": true});
        let r = ChargeRequest::from_json(json.as_object().unwrap()).unwrap();
        assert_eq!(r.amount_minor().unwrap(), 1000);
        assert_eq!(r.external_id.as_deref(), Some("o-1"));
        assert_eq!(Value::Object(r.to_json()), json);
    }

    #[test]
    fn rejects_numeric_amounts() {
        let json = json!({"amount": 1000, "currency": "usd"});
        assert_eq!(
            ChargeRequest::from_json(json.as_object().unwrap()),
            Err(ChargeRequestError::Schema(
                "`amount` must be a string".into()
            ))
        );
    }
}
