//! `Accept-Payment` (`draft-httpauth-payment-00` §7.3): the client's weighted method/intent
//! preferences, e.g. `tempo/charge, tempo/session;q=0, stripe/*;q=0.5`.
//!
//! Servers SHOULD keep only offers matching a range with q > 0, order them by descending q, keep
//! their own order on ties, and take the q of the most specific range that matches an offer.

use crate::limits::{ACCEPT_PAYMENT_LEN_MAX, ACCEPT_PAYMENT_RANGES_MAX};

/// Why an `Accept-Payment` value is malformed (servers MAY then ignore it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed Accept-Payment: {0}")]
pub struct AcceptPaymentError(&'static str);

/// One `payment-range`: `method/intent` with `*` wildcards and a weight in thousandths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRange {
    /// Method, or `None` for `*`.
    pub method: Option<String>,
    /// Intent, or `None` for `*`.
    pub intent: Option<String>,
    /// `q` × 1000 (0..=1000); omitted `q` is 1000.
    pub q_milli: u16,
}

impl PaymentRange {
    /// Specificity when this range matches `(method, intent)`, higher is more specific.
    fn specificity(&self, method: &str, intent: &str) -> Option<u8> {
        let method_score = match &self.method {
            Some(m) if m == method => 2,
            Some(_) => return None,
            None => 0,
        };
        let intent_score = match &self.intent {
            Some(i) if i == intent => 1,
            Some(_) => return None,
            None => 0,
        };
        Some(method_score + intent_score)
    }
}

/// A parsed `Accept-Payment` header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AcceptPayment {
    /// Ranges in the order the client sent them.
    pub ranges: Vec<PaymentRange>,
}

fn parse_qvalue(s: &str) -> Option<u16> {
    // qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_milli = format!("{frac:0<3}").parse::<u16>().ok()?;
    match int {
        "0" => Some(frac_milli),
        "1" if frac_milli == 0 => Some(1000),
        _ => None,
    }
}

fn is_range_part(s: &str, method: bool) -> bool {
    s == "*"
        || if method {
            crate::challenge::is_valid_method(s)
        } else {
            crate::challenge::is_valid_intent(s)
        }
}

impl AcceptPayment {
    /// Parse a header value. An empty value has no ranges (nothing acceptable is declared).
    pub fn parse(value: &str) -> Result<Self, AcceptPaymentError> {
        if value.len() > ACCEPT_PAYMENT_LEN_MAX {
            return Err(AcceptPaymentError("value too long"));
        }
        let mut ranges = Vec::new();
        for item in value.split(',') {
            let item = item.trim_matches([' ', '\t']);
            if item.is_empty() {
                continue;
            }
            if ranges.len() == ACCEPT_PAYMENT_RANGES_MAX {
                return Err(AcceptPaymentError("too many ranges"));
            }
            let mut parts = item.split(';');
            let token = parts.next().unwrap_or("").trim_matches([' ', '\t']);
            let (method, intent) = token
                .split_once('/')
                .ok_or(AcceptPaymentError("expected method/intent"))?;
            if !is_range_part(method, true) || !is_range_part(intent, false) {
                return Err(AcceptPaymentError("invalid method or intent"));
            }
            let mut q_milli = 1000;
            for param in parts {
                let param = param.trim_matches([' ', '\t']);
                let (name, val) = param
                    .split_once('=')
                    .ok_or(AcceptPaymentError("expected q=value"))?;
                if !name.eq_ignore_ascii_case("q") {
                    return Err(AcceptPaymentError("only the q parameter is defined"));
                }
                q_milli = parse_qvalue(val).ok_or(AcceptPaymentError("invalid q value"))?;
            }
            let wildcard = |s: &str| (s != "*").then(|| s.to_owned());
            ranges.push(PaymentRange {
                method: wildcard(method),
                intent: wildcard(intent),
                q_milli,
            });
        }
        Ok(Self { ranges })
    }

    /// The weight the client gives `(method, intent)`: the q of the most specific matching range
    /// (the first such range on a tie), or `None` when no range matches.
    pub fn weight(&self, method: &str, intent: &str) -> Option<u16> {
        let mut best: Option<(u8, u16)> = None;
        for range in &self.ranges {
            if let Some(spec) = range.specificity(method, intent)
                && best.is_none_or(|(s, _)| spec > s)
            {
                best = Some((spec, range.q_milli));
            }
        }
        best.map(|(_, q)| q)
    }

    /// Order offers (given in the server's preference order) for the 402: indices of offers with
    /// q > 0, by descending q, ties in server order. May be empty; the server MAY then ignore the
    /// header and offer everything.
    pub fn rank<'a>(&self, offers: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<usize> {
        let mut ranked: Vec<(usize, u16)> = offers
            .into_iter()
            .enumerate()
            .filter_map(|(i, (m, intent))| {
                self.weight(m, intent).filter(|q| *q > 0).map(|q| (i, q))
            })
            .collect();
        ranked.sort_by_key(|&(_, q)| std::cmp::Reverse(q)); // stable: ties keep server order
        ranked.into_iter().map(|(i, _)| i).collect()
    }
}

/// Order offers for a request's optional `Accept-Payment` header: absent or malformed means
/// "everything, in server order"; a header that matches nothing also falls back to everything.
pub fn negotiate<'a>(header: Option<&str>, offers: &[(&'a str, &'a str)]) -> Vec<usize> {
    let all = || (0..offers.len()).collect();
    let Some(Ok(accept)) = header.map(AcceptPayment::parse) else {
        return all();
    };
    let ranked = accept.rank(offers.iter().copied());
    if ranked.is_empty() { all() } else { ranked }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFERS: [(&str, &str); 4] = [
        ("tempo", "charge"),
        ("tempo", "session"),
        ("stripe", "charge"),
        ("solana", "charge"),
    ];

    fn rank(header: &str) -> Vec<(&'static str, &'static str)> {
        AcceptPayment::parse(header)
            .unwrap()
            .rank(OFFERS)
            .into_iter()
            .map(|i| OFFERS[i])
            .collect()
    }

    #[test]
    fn orders_by_q_as_in_spec_example_1() {
        assert_eq!(
            rank("tempo/charge, tempo/session, stripe/charge;q=0.5, solana/charge;q=0.3"),
            OFFERS.to_vec()
        );
    }

    #[test]
    fn wildcards_rank_whole_methods_spec_example_3() {
        let got = rank("tempo/*, solana/*;q=0.6, stripe/charge;q=0.2");
        assert_eq!(
            got,
            [
                ("tempo", "charge"),
                ("tempo", "session"),
                ("solana", "charge"),
                ("stripe", "charge")
            ]
        );
    }

    #[test]
    fn q_zero_excludes_spec_example_4() {
        let got = rank("tempo/charge, tempo/session;q=0, solana/charge;q=0.8, stripe/charge;q=0.4");
        assert_eq!(
            got,
            [
                ("tempo", "charge"),
                ("solana", "charge"),
                ("stripe", "charge")
            ]
        );
    }

    #[test]
    fn most_specific_range_wins_even_when_lower() {
        // tempo/* says 1, but tempo/session;q=0 is more specific and excludes it.
        let got = rank("tempo/*, tempo/session;q=0, */*;q=0.1");
        assert_eq!(
            got,
            [
                ("tempo", "charge"),
                ("stripe", "charge"),
                ("solana", "charge")
            ]
        );
    }

    #[test]
    fn equal_q_keeps_server_order() {
        assert_eq!(
            rank("solana/charge, tempo/charge"),
            [("tempo", "charge"), ("solana", "charge")]
        );
    }

    #[test]
    fn malformed_or_unmatched_header_offers_everything() {
        assert_eq!(negotiate(Some("tempo charge;;"), &OFFERS), [0, 1, 2, 3]);
        assert_eq!(negotiate(Some("bitcoin/charge"), &OFFERS), [0, 1, 2, 3]);
        assert_eq!(negotiate(None, &OFFERS), [0, 1, 2, 3]);
        assert!(AcceptPayment::parse("tempo/charge;q=1.5").is_err());
    }
}
