//! The currencies Turnpike takes for prices and balances, each with its minor-unit scale: the ISO
//! 4217 codes it supports and the stablecoins its rails settle, all lowercase (`usd`, `usdc`).
//! Amounts everywhere are integers of minor units (`"250"` usd is 2.50 USD; `"1000000"` usdc is
//! 1 USDC). One list, used by the price catalog and the operator's credits: anything else
//! (`../../etc`, `USD`, `xyz`) is refused before it names a ledger account.

/// What a currency is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CurrencyKind {
    /// An ISO 4217 currency.
    Iso4217,
    /// A token a rail settles (its ledger currency; which contract it is, the rail's config
    /// says).
    Token,
}

/// A supported currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Currency {
    /// Lowercase code, as prices, balances and the ledger name it.
    pub code: &'static str,
    /// Decimal places of its minor unit: 2 for `usd` (cents), 0 for `jpy`, 6 for `usdc`.
    pub minor_unit_scale: u8,
    /// ISO 4217 or a token.
    pub kind: CurrencyKind,
}

const fn iso(code: &'static str, minor_unit_scale: u8) -> Currency {
    Currency {
        code,
        minor_unit_scale,
        kind: CurrencyKind::Iso4217,
    }
}

const fn token(code: &'static str, minor_unit_scale: u8) -> Currency {
    Currency {
        code,
        minor_unit_scale,
        kind: CurrencyKind::Token,
    }
}

/// Every supported currency, sorted by code. ISO 4217 scales are the standard's minor units;
/// token scales are the tokens' decimals (the USD stablecoins on the `evm` and `tempo` rails
/// have 6).
pub const CURRENCIES: &[Currency] = &[
    iso("aed", 2),
    iso("aud", 2),
    iso("bhd", 3),
    iso("brl", 2),
    iso("cad", 2),
    iso("chf", 2),
    iso("clp", 0),
    iso("cny", 2),
    iso("czk", 2),
    iso("dkk", 2),
    iso("eur", 2),
    token("eurc", 6),
    iso("gbp", 2),
    iso("hkd", 2),
    iso("huf", 2),
    iso("idr", 2),
    iso("ils", 2),
    iso("inr", 2),
    iso("isk", 0),
    iso("jod", 3),
    iso("jpy", 0),
    iso("krw", 0),
    iso("kwd", 3),
    iso("mxn", 2),
    iso("myr", 2),
    iso("nok", 2),
    iso("nzd", 2),
    iso("omr", 3),
    token("pathusd", 6),
    iso("php", 2),
    iso("pln", 2),
    iso("ron", 2),
    iso("sar", 2),
    iso("sek", 2),
    iso("sgd", 2),
    iso("thb", 2),
    iso("try", 2),
    iso("twd", 2),
    iso("usd", 2),
    token("usdc", 6),
    token("usdt", 6),
    iso("vnd", 0),
    iso("zar", 2),
];

/// The supported currency `code` (exactly, lowercase), if it is one.
pub fn currency(code: &str) -> Option<&'static Currency> {
    CURRENCIES
        .binary_search_by(|c| c.code.cmp(code))
        .ok()
        .map(|i| &CURRENCIES[i])
}

/// Whether `code` is a supported currency.
pub fn is_supported_currency(code: &str) -> bool {
    currency(code).is_some()
}

/// A few supported codes, for error messages.
pub const CURRENCY_EXAMPLES: &str = "\"usd\", \"eur\", \"jpy\", \"usdc\"";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_sorted_unique_and_lowercase() {
        for pair in CURRENCIES.windows(2) {
            assert!(pair[0].code < pair[1].code, "{pair:?}");
        }
        for c in CURRENCIES {
            assert!(
                !c.code.is_empty() && c.code.bytes().all(|b| b.is_ascii_lowercase()),
                "{c:?}"
            );
            assert_eq!(currency(c.code), Some(c));
        }
    }

    #[test]
    fn known_codes_have_their_scale_and_others_are_refused() {
        assert_eq!(currency("usd").map(|c| c.minor_unit_scale), Some(2));
        assert_eq!(currency("jpy").map(|c| c.minor_unit_scale), Some(0));
        assert_eq!(currency("kwd").map(|c| c.minor_unit_scale), Some(3));
        assert_eq!(currency("usdc").map(|c| c.kind), Some(CurrencyKind::Token));
        for refused in [
            "",
            "USD",
            "Usd",
            "../../etc",
            "usd ",
            "xyz",
            "us",
            "usdcx",
            "usd\0",
        ] {
            assert!(!is_supported_currency(refused), "{refused:?}");
        }
    }
}
