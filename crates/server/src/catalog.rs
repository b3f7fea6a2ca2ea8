//! The price catalog's model: a price definition (what one version of a price says), its
//! validation, and route patterns (`GET /weather/{city}`, `* /files/*`).

use serde::{Deserialize, Serialize};
use turnpike_ledger::model::is_valid_currency;
use turnpike_protocol::challenge::is_valid_method;
use turnpike_protocol::charge::parse_amount_minor;

use crate::error::ApiError;

/// Payment methods this server can issue challenges for.
pub const METHODS_SUPPORTED: &[&str] = &["turnpike", "evm", "tempo"];
/// Methods that can take a zero amount (a `tempo` proof: the payer proves an account, nothing
/// moves); a price of `"0"` may offer only these.
pub const ZERO_AMOUNT_METHODS: &[&str] = &["tempo"];
/// Longest accepted challenge lifetime (one day).
pub const CHALLENGE_TTL_S_MAX: u64 = 86_400;
/// Challenge lifetime when the price names none.
pub const CHALLENGE_TTL_S_DEFAULT: u64 = 300;
/// Longest route pattern.
pub const ROUTE_PATH_LEN_MAX: usize = 512;
/// Longest description.
pub const DESCRIPTION_LEN_MAX: usize = 256;

/// A route: an HTTP method (or `*`) and a path pattern.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// `GET`, `POST`, ... or `*`.
    pub method: String,
    /// `/literal/{param}/*`.
    pub path: String,
}

/// One version of a price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PriceDefinition {
    /// What requests it prices.
    pub route: Route,
    /// Minor units (charge `amount`).
    pub amount: String,
    /// Lowercase currency (charge `currency`).
    pub currency: String,
    /// Payment methods offered, in the server's order of preference.
    pub methods: Vec<String>,
    /// Always `charge` for now.
    pub intent: String,
    /// Challenge `description`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Challenge lifetime.
    pub challenge_ttl_s: u64,
    /// Where the gateway forwards paid requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_url: Option<String>,
}

/// A create or patch body: every field optional (create requires some).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PriceInput {
    /// Route.
    pub route: Option<Route>,
    /// Amount.
    pub amount: Option<String>,
    /// Currency.
    pub currency: Option<String>,
    /// Methods.
    pub methods: Option<Vec<String>>,
    /// Intent.
    pub intent: Option<String>,
    /// Description (`null` in a patch removes it).
    #[serde(default, deserialize_with = "double_option")]
    pub description: Option<Option<String>>,
    /// Challenge lifetime.
    pub challenge_ttl_s: Option<u64>,
    /// Upstream (`null` in a patch removes it).
    #[serde(default, deserialize_with = "double_option")]
    pub upstream_url: Option<Option<String>>,
}

fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

impl PriceInput {
    /// A new definition from a create body.
    pub fn create(self) -> Result<PriceDefinition, ApiError> {
        let definition = PriceDefinition {
            route: self
                .route
                .ok_or_else(|| ApiError::invalid("`route` is required"))?,
            amount: self
                .amount
                .ok_or_else(|| ApiError::invalid("`amount` is required"))?,
            currency: self
                .currency
                .ok_or_else(|| ApiError::invalid("`currency` is required"))?,
            methods: self.methods.unwrap_or_else(|| vec!["turnpike".to_owned()]),
            intent: self.intent.unwrap_or_else(|| "charge".to_owned()),
            description: self.description.flatten(),
            challenge_ttl_s: self.challenge_ttl_s.unwrap_or(CHALLENGE_TTL_S_DEFAULT),
            upstream_url: self.upstream_url.flatten(),
        };
        definition.validate()?;
        Ok(definition)
    }

    /// `current` with this patch applied.
    pub fn apply(self, current: &PriceDefinition) -> Result<PriceDefinition, ApiError> {
        let mut next = current.clone();
        if let Some(route) = self.route {
            next.route = route;
        }
        if let Some(amount) = self.amount {
            next.amount = amount;
        }
        if let Some(currency) = self.currency {
            next.currency = currency;
        }
        if let Some(methods) = self.methods {
            next.methods = methods;
        }
        if let Some(intent) = self.intent {
            next.intent = intent;
        }
        if let Some(description) = self.description {
            next.description = description;
        }
        if let Some(ttl) = self.challenge_ttl_s {
            next.challenge_ttl_s = ttl;
        }
        if let Some(upstream) = self.upstream_url {
            next.upstream_url = upstream;
        }
        next.validate()?;
        Ok(next)
    }
}

/// The largest amount Turnpike accepts for a price or a credit, in minor units: far above any
/// real one, and far enough below `u128::MAX` (about 3.4 * 10^38) that fee arithmetic is exact
/// and no account's totals can overflow before hundreds of millions of such payments.
pub const AMOUNT_MINOR_MAX: u128 = 1_000_000_000_000_000_000_000_000_000_000;

impl PriceDefinition {
    /// Check every field; the error names the field.
    pub fn validate(&self) -> Result<(), ApiError> {
        validate_route(&self.route)?;
        match parse_amount_minor(&self.amount) {
            Some(amount) if amount > AMOUNT_MINOR_MAX => {
                return Err(ApiError::invalid(
                    "`amount` may be at most 10^30 minor units (1 followed by 30 zeros)",
                ));
            }
            Some(amount) if amount > 0 => {}
            Some(0)
                if !self.methods.is_empty()
                    && self
                        .methods
                        .iter()
                        .all(|m| ZERO_AMOUNT_METHODS.contains(&m.as_str())) => {}
            Some(0) => {
                return Err(ApiError::invalid(format!(
                    "`amount` \"0\" is only for methods that prove an account without moving \
                     money ({}); `methods` names others",
                    ZERO_AMOUNT_METHODS.join(", ")
                )));
            }
            _ => {
                return Err(ApiError::invalid(
                    "`amount` must be a string of minor units greater than zero, e.g. \"250\"",
                ));
            }
        }
        if !is_currency_code(&self.currency) {
            return Err(unsupported_currency("currency"));
        }
        if self.methods.is_empty() {
            return Err(ApiError::invalid(
                "`methods` must name at least one payment method",
            ));
        }
        for (i, method) in self.methods.iter().enumerate() {
            if !is_valid_method(method) {
                return Err(ApiError::invalid(format!(
                    "`methods[{i}]` is not a method name (lowercase letters only)"
                )));
            }
            if !METHODS_SUPPORTED.contains(&method.as_str()) {
                return Err(ApiError::invalid(format!(
                    "payment method `{method}` is not available on this server (available: {})",
                    METHODS_SUPPORTED.join(", ")
                )));
            }
            if self.methods[..i].contains(method) {
                return Err(ApiError::invalid(format!(
                    "`methods` lists `{method}` twice"
                )));
            }
        }
        if self.intent != "charge" {
            return Err(ApiError::invalid("`intent` must be \"charge\""));
        }
        if let Some(d) = &self.description
            && (d.len() > DESCRIPTION_LEN_MAX || d.chars().any(char::is_control))
        {
            return Err(ApiError::invalid(format!(
                "`description` must be at most {DESCRIPTION_LEN_MAX} bytes without control characters"
            )));
        }
        if !(1..=CHALLENGE_TTL_S_MAX).contains(&self.challenge_ttl_s) {
            return Err(ApiError::invalid(format!(
                "`challengeTtlS` must be between 1 and {CHALLENGE_TTL_S_MAX}"
            )));
        }
        if let Some(url) = &self.upstream_url {
            let ok = (url.starts_with("http://") || url.starts_with("https://"))
                && reqwest::Url::parse(url)
                    .is_ok_and(|u| u.host().is_some() && u.query().is_none());
            if !ok {
                return Err(ApiError::invalid(
                    "`upstreamUrl` must be an absolute http(s) URL without a query",
                ));
            }
        }
        Ok(())
    }

    /// The amount in minor units (validated at creation).
    pub fn amount_minor(&self) -> u128 {
        parse_amount_minor(&self.amount).unwrap_or(0)
    }
}

/// A currency as Turnpike takes it: one of the registry's ([`turnpike_protocol::currency`]).
pub fn is_currency_code(currency: &str) -> bool {
    turnpike_protocol::currency::is_supported_currency(currency) && is_valid_currency(currency)
}

/// The `400` for a `field` that names no supported currency.
pub fn unsupported_currency(field: &str) -> ApiError {
    ApiError::invalid(format!(
        "`{field}` must be a currency Turnpike supports, lowercase: an ISO 4217 code or a \
         stablecoin the rails settle, e.g. {}",
        turnpike_protocol::currency::CURRENCY_EXAMPLES
    ))
    .with("field", field.into())
}

fn validate_route(route: &Route) -> Result<(), ApiError> {
    let method_ok = route.method == "*"
        || (!route.method.is_empty()
            && route.method.len() <= 16
            && route.method.bytes().all(|b| b.is_ascii_uppercase()));
    if !method_ok {
        return Err(ApiError::invalid(
            "`route.method` must be an uppercase HTTP method (GET, POST, ...) or `*`",
        ));
    }
    let path = &route.path;
    if !path.starts_with('/') || path.len() > ROUTE_PATH_LEN_MAX {
        return Err(ApiError::invalid(format!(
            "`route.path` must start with `/` and be at most {ROUTE_PATH_LEN_MAX} bytes"
        )));
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        let ok = if *segment == "*" {
            last
        } else if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        } else {
            segment
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'{' | b'}' | b'*' | b'?' | b'#'))
        };
        if !ok {
            return Err(ApiError::invalid(
                "`route.path`: segments are literals, `{name}`, or a final `*`",
            ));
        }
    }
    Ok(())
}

/// How specifically `route` matches a request, or `None` when it does not. Higher is more
/// specific: compare the keys lexicographically.
pub fn match_route(route: &Route, method: &str, path: &str) -> Option<Vec<u8>> {
    let method_rank = if route.method == "*" {
        0
    } else if route.method == method {
        1
    } else {
        return None;
    };
    let pattern: Vec<&str> = route.path[1..].split('/').collect();
    let path = path.strip_prefix('/')?;
    let parts: Vec<&str> = path.split('/').collect();
    let mut key = Vec::with_capacity(pattern.len() + 1);
    for (i, segment) in pattern.iter().enumerate() {
        if *segment == "*" {
            key.push(0);
            key.push(method_rank);
            return Some(key);
        }
        let part = parts.get(i)?;
        if segment.starts_with('{') {
            if part.is_empty() {
                return None;
            }
            key.push(1);
        } else if segment == part {
            key.push(2);
        } else {
            return None;
        }
    }
    if parts.len() != pattern.len() {
        return None;
    }
    key.push(3);
    key.push(method_rank);
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: &str, path: &str) -> Route {
        Route {
            method: method.into(),
            path: path.into(),
        }
    }

    #[test]
    fn literal_beats_parameter_beats_wildcard() {
        let lit = match_route(&route("GET", "/weather/paris"), "GET", "/weather/paris").unwrap();
        let param = match_route(&route("GET", "/weather/{city}"), "GET", "/weather/paris").unwrap();
        let wild = match_route(&route("*", "/weather/*"), "GET", "/weather/paris").unwrap();
        assert!(lit > param && param > wild);
    }

    #[test]
    fn routes_do_not_match_other_methods_or_lengths() {
        assert!(match_route(&route("POST", "/a"), "GET", "/a").is_none());
        assert!(match_route(&route("GET", "/a/{b}"), "GET", "/a").is_none());
        assert!(match_route(&route("GET", "/a/{b}"), "GET", "/a/").is_none());
        assert!(match_route(&route("GET", "/a"), "GET", "/a/b").is_none());
        assert!(match_route(&route("GET", "/a/*"), "GET", "/a/").is_some());
        assert!(match_route(&route("GET", "/a/*"), "GET", "/a/b/c").is_some());
    }

    #[test]
    fn bad_patterns_and_amounts_are_refused() {
        for path in ["weather", "/a/*/b", "/{}", "/a b"] {
            assert!(validate_route(&route("GET", path)).is_err(), "{path}");
        }
        assert!(validate_route(&route("get", "/a")).is_err());
        let input = |amount: &str| PriceInput {
            route: Some(route("GET", "/a")),
            amount: Some(amount.into()),
            currency: Some("usd".into()),
            ..PriceInput::default()
        };
        assert!(input("0").create().is_err());
        assert!(input("1.5").create().is_err());
        assert!(input("-1").create().is_err());
        assert!(input("250").create().is_ok());
    }
}
