//! The load-generating process of `turnpike bench evm` (`turnpike bench evm-load`, hidden):
//! `payers` concurrent payers, each paying the gateway route with EIP-3009 authorizations in a
//! loop, timed from the `402` to the receipt; prints one JSON object of figures and errors.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alloy::primitives::{Address, B256, Bytes, U256, keccak256};
use alloy::signers::SignerSync;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::{Eip712Domain, SolStruct};
use anyhow::Context;
use serde_json::{Value, json};
use turnpike_protocol::{Credential, Receipt, parse_challenges_from_lines};

use super::{PAYER_SEED_ENV, check_limits, payer_key};

alloy::sol! {
    /// EIP-3009's signed message (the `authorization` credential's EIP-712 primary type).
    struct TransferWithAuthorization {
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
    }
}

/// Options of the load-generating process.
#[derive(Debug, Clone, clap::Args)]
pub struct EvmLoadArgs {
    /// The gateway URL of the priced route.
    #[arg(long)]
    pub url: String,
    /// Concurrent payers.
    #[arg(long)]
    pub payers: u32,
    /// Seconds to run.
    #[arg(long)]
    pub duration_s: u64,
    /// The token's EIP-712 domain name.
    #[arg(long)]
    pub token_name: String,
    /// The token's EIP-712 domain version.
    #[arg(long)]
    pub token_version: String,
}

/// Seconds an authorization stays valid (`validBefore` = now + this).
const AUTHORIZATION_VALIDITY_S: u64 = 600;
/// Most characters of an error's example detail.
const DETAIL_CHARS_MAX: usize = 300;
/// Timeout of each HTTP request of the load generator (above the rail's 20 s receipt wait).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// One failed paid request.
struct Failure {
    /// A stable kind: the problem `type`, or what went wrong outside HTTP.
    kind: String,
    detail: String,
}

impl Failure {
    fn new(kind: impl Into<String>, detail: impl Into<String>) -> Self {
        let detail: String = detail.into();
        Self {
            kind: kind.into(),
            detail: detail.chars().take(DETAIL_CHARS_MAX).collect(),
        }
    }

    fn transport(err: reqwest::Error) -> Self {
        let kind = if err.is_timeout() {
            "transport-timeout"
        } else if err.is_connect() {
            "transport-connect"
        } else {
            "transport"
        };
        Self::new(kind, format!("{:#}", anyhow::Error::new(err.without_url())))
    }
}

/// A non-2xx answer: its problem `type` and `detail`, else its status.
async fn failure_of(response: reqwest::Response, what: &str) -> Failure {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/problem+json"));
    let body = response.bytes().await.unwrap_or_default();
    if is_problem && let Ok(problem) = serde_json::from_slice::<Value>(&body) {
        let kind = problem["type"].as_str().unwrap_or("about:blank");
        let detail = problem["detail"].as_str().unwrap_or_default();
        return Failure::new(kind, format!("{what}: {status}: {detail}"));
    }
    Failure::new(
        format!("http-{}", status.as_u16()),
        format!("{what}: {status}: {}", String::from_utf8_lossy(&body)),
    )
}

/// One payer's identity and what it signs for.
struct Payer {
    signer: PrivateKeySigner,
    token_name: String,
    token_version: String,
}

impl Payer {
    /// The `Authorization: Payment` value answering `challenge` (an `evm` charge).
    fn credential(&self, challenge: &turnpike_protocol::Challenge) -> Result<String, Failure> {
        let bad = |what: &str| Failure::new("bad-challenge", format!("the evm challenge {what}"));
        let request = challenge.request_json();
        let field = |name: &str| request.get(name).and_then(Value::as_str);
        let value: U256 = field("amount")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("has no integer amount"))?;
        let token: Address = field("currency")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("has no token address as currency"))?;
        let to: Address = field("recipient")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("has no recipient address"))?;
        let chain_id = request
            .get("methodDetails")
            .and_then(|d| d.get("chainId"))
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("has no methodDetails.chainId"))?;
        let domain = Eip712Domain::new(
            Some(self.token_name.clone().into()),
            Some(self.token_version.clone().into()),
            Some(U256::from(chain_id)),
            Some(token),
            None,
        );
        let valid_before = unix_now_s() + AUTHORIZATION_VALIDITY_S;
        // draft-evm-charge-00: the EIP-3009 nonce binds the credential to the challenge.
        let nonce = keccak256([challenge.id.as_bytes(), challenge.realm.as_bytes()].concat());
        let from = self.signer.address();
        let message = TransferWithAuthorization {
            from,
            to,
            value,
            validAfter: U256::ZERO,
            validBefore: U256::from(valid_before),
            nonce,
        };
        let signature = self
            .signer
            .sign_hash_sync(&message.eip712_signing_hash(&domain))
            .map_err(|e| Failure::new("signing", e.to_string()))?;
        let payload = json!({
            "type": "authorization",
            "from": from.to_checksum(None),
            "to": to.to_checksum(None),
            "value": value.to_string(),
            "validAfter": "0",
            "validBefore": valid_before.to_string(),
            "nonce": nonce.to_string(),
            "signature": Bytes::from(signature.as_bytes()).to_string(),
        });
        let Value::Object(payload) = payload else {
            unreachable!("a JSON object literal")
        };
        let credential = Credential {
            challenge: challenge.echo(),
            source: Some(json!(format!("did:pkh:eip155:{chain_id}:{from}"))),
            payload,
        };
        Ok(credential.to_header_value())
    }

    /// One paid request: the time from the 402 to the receipt.
    async fn pay_once(&self, client: &reqwest::Client, url: &str) -> Result<Duration, Failure> {
        let first = client.get(url).send().await.map_err(Failure::transport)?;
        if first.status() != reqwest::StatusCode::PAYMENT_REQUIRED {
            let status = first.status().as_u16();
            let mut failure = failure_of(first, "the unpaid request").await;
            failure.kind = format!("unpaid-request-{status}: {}", failure.kind);
            return Err(failure);
        }
        let lines: Vec<String> = first
            .headers()
            .get_all(reqwest::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect();
        first.bytes().await.map_err(Failure::transport)?;
        let started = Instant::now();
        let challenges = parse_challenges_from_lines(lines.iter().map(String::as_str))
            .map_err(|e| Failure::new("bad-challenge", e.to_string()))?;
        let challenge = challenges
            .iter()
            .find(|c| c.method == "evm" && c.intent == "charge")
            .ok_or_else(|| Failure::new("no-evm-challenge", lines.join(" | ")))?;
        let authorization = self.credential(challenge)?;
        let paid = client
            .get(url)
            .header(reqwest::header::AUTHORIZATION, authorization)
            .send()
            .await
            .map_err(Failure::transport)?;
        if paid.status() != reqwest::StatusCode::OK {
            return Err(failure_of(paid, "the paid request").await);
        }
        let receipt = paid
            .headers()
            .get("payment-receipt")
            .and_then(|v| v.to_str().ok())
            .map(Receipt::parse);
        let elapsed = started.elapsed();
        paid.bytes().await.map_err(Failure::transport)?;
        match receipt {
            Some(Ok(receipt)) if receipt.is_success() => Ok(elapsed),
            Some(Ok(_)) => Err(Failure::new(
                "receipt-not-success",
                "200 with a failed receipt",
            )),
            Some(Err(e)) => Err(Failure::new("bad-receipt", e.to_string())),
            None => Err(Failure::new("no-receipt", "200 without Payment-Receipt")),
        }
    }
}

fn unix_now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// One payer's results.
#[derive(Default)]
struct Samples {
    /// Microseconds from 402 to receipt, per paid request.
    receipt_us: Vec<u64>,
    /// Failures by kind: (count, first detail).
    errors: BTreeMap<String, (u64, String)>,
}

impl Samples {
    fn fail(&mut self, failure: Failure) {
        let entry = self
            .errors
            .entry(failure.kind)
            .or_insert_with(|| (0, failure.detail));
        entry.0 += 1;
    }

    fn merge(&mut self, other: Samples) {
        self.receipt_us.extend(other.receipt_us);
        for (kind, (count, detail)) in other.errors {
            self.errors.entry(kind).or_insert((0, detail)).0 += count;
        }
    }
}

/// `turnpike bench evm-load`: the load-generating process; prints one JSON object.
pub async fn load(args: EvmLoadArgs) -> anyhow::Result<()> {
    check_limits(args.payers, args.duration_s)?;
    let seed: B256 = std::env::var(PAYER_SEED_ENV)
        .with_context(|| format!("{PAYER_SEED_ENV} is not set"))?
        .parse()
        .with_context(|| format!("{PAYER_SEED_ENV} is not 32 bytes of hex"))?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(args.payers as usize)
        .timeout(REQUEST_TIMEOUT)
        .build()?;
    let payers: Vec<Arc<Payer>> = (0..args.payers)
        .map(|i| {
            Ok(Arc::new(Payer {
                signer: payer_key(&seed, i)?,
                token_name: args.token_name.clone(),
                token_version: args.token_version.clone(),
            }))
        })
        .collect::<anyhow::Result<_>>()?;
    // Warm up: one paid request, so that a broken set-up fails loudly and connection set-up is
    // not measured.
    payers[0]
        .pay_once(&client, &args.url)
        .await
        .map_err(|f| anyhow::anyhow!("the warm-up payment failed ({}): {}", f.kind, f.detail))?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration_s);
    let mut tasks = Vec::new();
    for payer in payers {
        let (client, url) = (client.clone(), args.url.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = Samples::default();
            while Instant::now() < deadline {
                match payer.pay_once(&client, &url).await {
                    Ok(elapsed) => s
                        .receipt_us
                        .push(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)),
                    Err(failure) => s.fail(failure),
                }
            }
            s
        }));
    }
    let mut all = Samples::default();
    for task in tasks {
        all.merge(task.await?);
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    let paid = all.receipt_us.len();
    let errors: u64 = all.errors.values().map(|(n, _)| n).sum();
    let by_kind: serde_json::Map<String, Value> = all
        .errors
        .iter()
        .map(|(kind, (count, example))| (kind.clone(), json!({"count": count, "example": example})))
        .collect();
    for (kind, (count, example)) in &all.errors {
        eprintln!("load: {count} errors of kind {kind}, e.g. {example}");
    }
    println!(
        "{}",
        json!({
            "paid": paid, "errors": errors, "errorsByKind": by_kind,
            "elapsedS": (elapsed_s * 100.0).round() / 100.0,
            "paidPerSecond": (paid as f64 / elapsed_s * 10.0).round() / 10.0,
            "timeToReceiptMs": percentiles(all.receipt_us),
        })
    );
    Ok(())
}

/// p50, p90, p99 and max of microsecond samples, in milliseconds (two decimals).
fn percentiles(mut us: Vec<u64>) -> Value {
    if us.is_empty() {
        return json!({"p50": null, "p90": null, "p99": null, "max": null, "count": 0});
    }
    us.sort_unstable();
    let at = |q: f64| {
        let i = ((us.len() as f64 * q).ceil() as usize).clamp(1, us.len()) - 1;
        (us[i] as f64 / 10.0).round() / 100.0
    };
    json!({"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": at(1.0), "count": us.len()})
}
