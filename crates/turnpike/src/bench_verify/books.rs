//! What `bench verify` reads back from the server after its run, and what it must equal: every
//! paid cycle is one settled payment of the price, and the merchant's revenue, the platform's
//! fee and the payer's balance moved by exactly the paid cycles' worth, to the unit.

use anyhow::{Context, ensure};
use serde_json::{Value, json};

/// Payments asked for per page (the API's largest page).
const PAYMENTS_PAGE_LIMIT: u32 = 1_000;
/// Most pages read: a bound on the loop (10^8 payments, far beyond any run's).
const PAYMENT_PAGES_MAX: u32 = 100_000;

/// One account's figures (`GET /v1/balances`), zero when the account does not exist yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Account {
    pub(crate) available: i128,
    pub(crate) credits_posted: u128,
    pub(crate) debits_posted: u128,
    pub(crate) debits_pending: u128,
}

impl Account {
    fn json(&self) -> Value {
        json!({
            "available": self.available.to_string(),
            "creditsPosted": self.credits_posted.to_string(),
            "debitsPosted": self.debits_posted.to_string(),
            "debitsPending": self.debits_pending.to_string(),
        })
    }
}

/// What the run should have booked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expected {
    /// Paid cycles the load generator counted (the warm-up's included).
    pub(crate) paid: u64,
    pub(crate) price_minor: u128,
    pub(crate) fee_minor: u128,
    /// The payer's credit before the run.
    pub(crate) payer_credit_minor: u128,
}

/// What the server says after the run.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Observed {
    /// The merchant's payments in state `settled`.
    pub(crate) settled: u64,
    /// The merchant's payments in any other state.
    pub(crate) unsettled: u64,
    /// Payments of another amount or currency than the price's.
    pub(crate) off_price: u64,
    pub(crate) revenue: Account,
    pub(crate) payer: Account,
    /// How much the platform's fee account grew during the run.
    pub(crate) platform_fee_gain: i128,
}

impl Observed {
    /// The figures for `--json`.
    pub(crate) fn json(&self) -> Value {
        json!({
            "settled": self.settled, "unsettled": self.unsettled, "offPrice": self.off_price,
            "merchantRevenue": self.revenue.json(), "payer": self.payer.json(),
            "platformFeeGainMinor": self.platform_fee_gain.to_string(),
        })
    }
}

/// Every way `observed` differs from `expected`, one phrase each; empty when the books agree.
pub(crate) fn discrepancies(expected: &Expected, observed: &Observed) -> Vec<String> {
    let n = u128::from(expected.paid);
    let gross = n * expected.price_minor;
    let fees = n * expected.fee_minor;
    let mut out = Vec::new();
    let mut check = |what: &str, seen: i128, want: i128| {
        if seen != want {
            out.push(format!("{what} is {seen}, expected {want}"));
        }
    };
    let signed = |v: u128| i128::try_from(v).unwrap_or(i128::MAX);
    check(
        "settled payments",
        i128::from(observed.settled),
        i128::from(expected.paid),
    );
    check("payments not settled", i128::from(observed.unsettled), 0);
    check("payments off the price", i128::from(observed.off_price), 0);
    let revenue = &observed.revenue;
    check(
        "merchant revenue credited",
        signed(revenue.credits_posted),
        signed(gross),
    );
    check(
        "merchant revenue debited (fees)",
        signed(revenue.debits_posted),
        signed(fees),
    );
    check(
        "merchant revenue pending",
        signed(revenue.debits_pending),
        0,
    );
    check(
        "merchant revenue available",
        revenue.available,
        signed(gross) - signed(fees),
    );
    check(
        "platform fees gained",
        observed.platform_fee_gain,
        signed(fees),
    );
    check(
        "payer available",
        observed.payer.available,
        signed(expected.payer_credit_minor) - signed(gross),
    );
    check("payer pending", signed(observed.payer.debits_pending), 0);
    out
}

fn amount(account: &Value, field: &str) -> anyhow::Result<u128> {
    account[field]
        .as_str()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("`{field}` is not an amount: {account}"))
}

/// The usd account of `kind` in a balances list (`GET /v1/balances`, `/v1/admin/balances`).
pub(crate) fn account_of(balances: &Value, kind: &str) -> anyhow::Result<Account> {
    let accounts = balances["data"].as_array().context("balances: no data")?;
    let mut found = accounts
        .iter()
        .filter(|a| a["kind"] == kind && a["currency"] == "usd");
    let Some(account) = found.next() else {
        return Ok(Account::default());
    };
    ensure!(found.next().is_none(), "two usd {kind} accounts");
    Ok(Account {
        available: account["available"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("`available` is not a signed amount: {account}"))?,
        credits_posted: amount(account, "creditsPosted")?,
        debits_posted: amount(account, "debitsPosted")?,
        debits_pending: amount(account, "debitsPending")?,
    })
}

/// `GET` `url` with `bearer`: the JSON body of a 200.
pub(crate) async fn get_json(
    client: &reqwest::Client,
    url: reqwest::Url,
    bearer: &str,
) -> anyhow::Result<Value> {
    let response = client
        .get(url.clone())
        .bearer_auth(bearer)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .with_context(|| format!("GET {url}: body"))?;
    ensure!(
        status.is_success(),
        "GET {url}: {status}: {}",
        body["detail"]
    );
    Ok(body)
}

/// The merchant's payments, page by page (`GET /v1/payments` with its cursor): (settled, not
/// settled, off the price) counts.
pub(crate) async fn count_payments(
    client: &reqwest::Client,
    api: &str,
    merchant_key: &str,
    price_minor: u128,
) -> anyhow::Result<(u64, u64, u64)> {
    let (mut settled, mut unsettled, mut off_price) = (0, 0, 0);
    let mut cursor: Option<String> = None;
    for _ in 0..PAYMENT_PAGES_MAX {
        let mut url = reqwest::Url::parse(&format!("{api}/v1/payments"))?;
        url.query_pairs_mut()
            .append_pair("limit", &PAYMENTS_PAGE_LIMIT.to_string());
        if let Some(cursor) = &cursor {
            url.query_pairs_mut().append_pair("cursor", cursor);
        }
        let page = get_json(client, url, merchant_key).await?;
        for payment in page["data"].as_array().context("payments: no data")? {
            if payment["state"] == "settled" {
                settled += 1;
            } else {
                unsettled += 1;
            }
            let price_seen = payment["amount"].as_str() == Some(&price_minor.to_string())
                && payment["currency"] == "usd";
            off_price += u64::from(!price_seen);
        }
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return Ok((settled, unsettled, off_price)),
        }
    }
    anyhow::bail!("more than {PAYMENT_PAGES_MAX} pages of payments")
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPECTED: Expected = Expected {
        paid: 3,
        price_minor: 400,
        fee_minor: 10,
        payer_credit_minor: 10_000,
    };

    fn agreeing() -> Observed {
        Observed {
            settled: 3,
            unsettled: 0,
            off_price: 0,
            revenue: Account {
                available: 1_170,
                credits_posted: 1_200,
                debits_posted: 30,
                debits_pending: 0,
            },
            payer: Account {
                available: 8_800,
                credits_posted: 10_000,
                debits_posted: 1_200,
                debits_pending: 0,
            },
            platform_fee_gain: 30,
        }
    }

    #[test]
    fn books_that_agree_have_no_discrepancy() {
        assert_eq!(discrepancies(&EXPECTED, &agreeing()), Vec::<String>::new());
    }

    #[test]
    fn each_difference_is_named() {
        type Change = fn(&mut Observed);
        let cases: [(Change, &str); 7] = [
            (|o| o.settled = 2, "settled payments is 2, expected 3"),
            (|o| o.unsettled = 1, "payments not settled is 1, expected 0"),
            (|o| o.off_price = 1, "payments off the price is 1"),
            (
                |o| o.revenue.available = -1,
                "merchant revenue available is -1, expected 1170",
            ),
            (
                |o| o.revenue.debits_posted = 0,
                "merchant revenue debited (fees) is 0, expected 30",
            ),
            (
                |o| o.platform_fee_gain = 29,
                "platform fees gained is 29, expected 30",
            ),
            (|o| o.payer.debits_pending = 400, "payer pending is 400"),
        ];
        for (change, phrase) in cases {
            let mut observed = agreeing();
            change(&mut observed);
            let found = discrepancies(&EXPECTED, &observed);
            assert_eq!(found.len(), 1, "{found:?}");
            assert!(found[0].starts_with(phrase), "{found:?} vs {phrase}");
        }
    }

    #[test]
    fn accounts_are_read_signed_and_absent_ones_are_zero() {
        let balances = json!({"data": [
            {"kind": "merchant_revenue", "currency": "usd", "available": "-5",
             "creditsPosted": "10", "debitsPosted": "15", "debitsPending": "0"},
            {"kind": "merchant_revenue", "currency": "eur", "available": "7",
             "creditsPosted": "7", "debitsPosted": "0", "debitsPending": "0"},
        ]});
        let revenue = account_of(&balances, "merchant_revenue").unwrap();
        assert_eq!(revenue.available, -5);
        assert_eq!(revenue.debits_posted, 15);
        assert_eq!(
            account_of(&balances, "payer_balance").unwrap(),
            Account::default()
        );
    }
}
