//! `turnpike pay`: curl for agents.
//!
//! Sends one HTTP request. When the answer is `402 Payment Required`, hands every
//! `WWW-Authenticate` value to Turnpike's `POST /v1/agent/pay` with the agent token, then sends the
//! identical request again (same method, URL, headers and body bytes) with the returned
//! `Authorization: Payment ...` added. Prints the final response body (with `-i`, its status line
//! and headers first) and exits 0 on a 2xx, 1 otherwise with a one-line `error: ...` on stderr.
//!
//! The agent token and the credential are never printed, logged or put in an error message; the
//! token only ever goes to `--api`, never to a URL found in a challenge.

use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use reqwest::header::{
    AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, USER_AGENT, WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;
use turnpike_protocol::Receipt;

/// Default Turnpike server (where `/v1/agent/pay` is).
pub const API_DEFAULT: &str = "http://127.0.0.1:8402";
/// Longest wait for a TCP/TLS connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest `-d @file` body read.
const BODY_BYTES_MAX: u64 = 64 << 20;
/// Most characters of a problem `detail` quoted in an error line.
const DETAIL_CHARS_MAX: usize = 300;

/// Options of `turnpike pay`.
#[derive(Debug, Clone, clap::Args)]
pub struct PayArgs {
    /// The URL to request.
    pub url: String,
    /// Agent token (from `POST /v1/agents/{id}/tokens`); needed only when the URL asks for payment.
    #[arg(long, env = "TURNPIKE_AGENT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The Turnpike server that pays (its `POST /v1/agent/pay` receives the agent token).
    #[arg(long, env = "TURNPIKE_API", default_value = API_DEFAULT)]
    pub api: String,
    /// HTTP method (default: GET, or POST when -d is given).
    #[arg(short = 'X', long = "request", value_name = "METHOD")]
    pub method: Option<String>,
    /// Request body, sent byte for byte; `@FILE` reads a file, `@-` stdin. No Content-Type is
    /// added: pass one with -H.
    #[arg(
        short = 'd',
        long = "data",
        visible_alias = "data-binary",
        value_name = "BODY",
        allow_hyphen_values = true
    )]
    pub data: Option<String>,
    /// Extra request header `Name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    pub headers: Vec<String>,
    /// Print the final response's status line and headers before its body.
    #[arg(short = 'i', long = "include")]
    pub include: bool,
    /// Longest wait for each response, in seconds (default: no limit).
    #[arg(short = 'm', long = "max-time", value_name = "SECONDS")]
    pub max_time: Option<f64>,
}

/// The request as the user described it, sent once or twice unchanged.
#[derive(Debug)]
struct Request {
    method: Method,
    url: Url,
    headers: HeaderMap,
    body: Option<Vec<u8>>,
}

/// What `/v1/agent/pay` answered.
#[derive(Debug)]
struct Paid {
    authorization: HeaderValue,
    amount: String,
    currency: String,
    recipient: String,
    /// The method paid: `turnpike` (a reservation on the organisation's balance) or `evm` (an
    /// authorization signed by the organisation's wallet).
    method: String,
}

/// `turnpike pay`.
pub async fn run(args: PayArgs) -> anyhow::Result<()> {
    let request = Request::from_args(&args)?;
    let mut client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT);
    if let Some(seconds) = args.max_time {
        if !(seconds.is_finite() && seconds > 0.0) {
            bail!("--max-time must be a positive number of seconds");
        }
        client = client.timeout(Duration::from_secs_f64(seconds.min(1e9)));
    }
    let client = client.build().context("building the HTTP client")?;

    let first = request.send(&client, None).await?;
    if first.status() != StatusCode::PAYMENT_REQUIRED {
        return finish(&request, first, args.include, None).await;
    }
    let challenges: Vec<String> = first
        .headers()
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect();
    if challenges.is_empty() {
        return finish(&request, first, args.include, None).await;
    }
    // The 402's body is not shown: the paid answer replaces it.
    drop(first);
    let token = args
        .token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            anyhow!(
                "{} asks for payment (402) but no agent token was given: pass --token or set \
                 TURNPIKE_AGENT_TOKEN",
                request.url
            )
        })?;
    let paid = agent_pay(&client, &args.api, token, &challenges).await?;
    let second = request.send(&client, Some(&paid.authorization)).await?;
    finish(&request, second, args.include, Some(&paid)).await
}

impl Request {
    fn from_args(args: &PayArgs) -> anyhow::Result<Self> {
        let url = Url::parse(&args.url).with_context(|| format!("invalid URL {:?}", args.url))?;
        if !matches!(url.scheme(), "http" | "https") {
            bail!(
                "invalid URL {:?}: only http and https are supported",
                args.url
            );
        }
        let body = match args.data.as_deref() {
            None => None,
            Some("@-") => {
                let mut bytes = Vec::new();
                std::io::stdin()
                    .lock()
                    .take(BODY_BYTES_MAX + 1)
                    .read_to_end(&mut bytes)
                    .context("reading the body from stdin")?;
                if bytes.len() as u64 > BODY_BYTES_MAX {
                    bail!("the body on stdin is larger than {BODY_BYTES_MAX} bytes");
                }
                Some(bytes)
            }
            Some(data) => match data.strip_prefix('@') {
                Some(path) => {
                    let len = std::fs::metadata(path)
                        .with_context(|| format!("reading the body from {path}"))?
                        .len();
                    if len > BODY_BYTES_MAX {
                        bail!("{path} is larger than {BODY_BYTES_MAX} bytes");
                    }
                    Some(
                        std::fs::read(path)
                            .with_context(|| format!("reading the body from {path}"))?,
                    )
                }
                None => Some(data.as_bytes().to_vec()),
            },
        };
        let method = match args.method.as_deref() {
            Some(m) => Method::from_bytes(m.as_bytes())
                .map_err(|_| anyhow!("-X: {m:?} is not an HTTP method"))?,
            None if body.is_some() => Method::POST,
            None => Method::GET,
        };
        let mut headers = HeaderMap::new();
        for raw in &args.headers {
            let (name, value) = raw
                .split_once(':')
                .ok_or_else(|| anyhow!("-H: expected `Name: value`, got a header without `:`"))?;
            let name = name.trim();
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| anyhow!("-H: {name:?} is not a header name"))?;
            // The value may be a secret (an API key for the upstream): never quote it.
            let value = HeaderValue::from_str(value.trim())
                .map_err(|_| anyhow!("-H: the value of {name} is not a valid header value"))?;
            headers.append(header, value);
        }
        if !headers.contains_key(USER_AGENT) {
            headers.insert(
                USER_AGENT,
                HeaderValue::from_static(concat!("turnpike-pay/", env!("CARGO_PKG_VERSION"))),
            );
        }
        Ok(Self {
            method,
            url,
            headers,
            body,
        })
    }

    /// Send the request, with `authorization` appended to the user's own headers.
    async fn send(
        &self,
        client: &reqwest::Client,
        authorization: Option<&HeaderValue>,
    ) -> anyhow::Result<reqwest::Response> {
        let mut headers = self.headers.clone();
        if let Some(value) = authorization {
            let mut value = value.clone();
            value.set_sensitive(true);
            headers.append(AUTHORIZATION, value);
        }
        let mut builder = client
            .request(self.method.clone(), self.url.clone())
            .headers(headers);
        if let Some(body) = &self.body {
            builder = builder.body(body.clone());
        }
        builder
            .send()
            .await
            .map_err(|err| anyhow::Error::new(err.without_url()))
            .with_context(|| format!("no answer from {}", self.url))
    }
}

/// Ask Turnpike to pay one of `challenges`.
async fn agent_pay(
    client: &reqwest::Client,
    api: &str,
    token: &str,
    challenges: &[String],
) -> anyhow::Result<Paid> {
    let base = api.trim_end_matches('/');
    let endpoint = Url::parse(&format!("{base}/v1/agent/pay"))
        .with_context(|| format!("invalid --api URL {api:?}"))?;
    let mut bearer = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| anyhow!("the agent token holds characters a header cannot carry"))?;
    bearer.set_sensitive(true);
    let response = client
        .post(endpoint)
        .header(AUTHORIZATION, bearer)
        .json(&serde_json::json!({ "challenges": challenges }))
        .send()
        .await
        .map_err(|err| anyhow::Error::new(err.without_url()))
        .with_context(|| format!("no answer from the Turnpike API at {base}"))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|err| anyhow::Error::new(err.without_url()))
        .with_context(|| format!("reading the answer of {base}/v1/agent/pay"))?;
    if !status.is_success() {
        return Err(match problem(&body) {
            Some((code, detail)) => anyhow!("Turnpike refused to pay ({status}, {code}): {detail}"),
            None => anyhow!("Turnpike refused to pay: {base}/v1/agent/pay answered {status}"),
        });
    }
    let json: Value = serde_json::from_slice(&body).map_err(|_| {
        anyhow!("{base}/v1/agent/pay answered {status} without the expected JSON (is --api a Turnpike server?)")
    })?;
    let field = |name: &str| json.get(name).and_then(Value::as_str).map(str::to_owned);
    let (Some(authorization), Some(amount), Some(currency), Some(recipient)) = (
        field("authorization"),
        field("amount"),
        field("currency"),
        field("recipient"),
    ) else {
        bail!(
            "{base}/v1/agent/pay answered without an authorization (is --api a Turnpike server?)"
        );
    };
    let mut authorization = HeaderValue::from_str(&authorization)
        .map_err(|_| anyhow!("{base}/v1/agent/pay answered an unusable authorization"))?;
    authorization.set_sensitive(true);
    Ok(Paid {
        authorization,
        amount,
        currency,
        recipient,
        method: field("method").unwrap_or_else(|| "turnpike".to_owned()),
    })
}

/// Print the final response; `Ok` on a 2xx.
async fn finish(
    request: &Request,
    response: reqwest::Response,
    include: bool,
    paid: Option<&Paid>,
) -> anyhow::Result<()> {
    let status = response.status();
    let version = response.version();
    let headers = response.headers().clone();
    let body = response
        .bytes()
        .await
        .map_err(|err| anyhow::Error::new(err.without_url()))
        .with_context(|| format!("reading the answer of {}", request.url))?;
    {
        let mut out = std::io::stdout().lock();
        if include {
            writeln!(out, "{version:?} {status}").context("writing the output")?;
            for (name, value) in &headers {
                out.write_all(name.as_str().as_bytes())
                    .and_then(|()| out.write_all(b": "))
                    .and_then(|()| out.write_all(value.as_bytes()))
                    .and_then(|()| out.write_all(b"\n"))
                    .context("writing the output")?;
            }
            writeln!(out).context("writing the output")?;
        }
        out.write_all(&body).context("writing the output")?;
        // Keep the shell prompt and the summary line off the body's last line on a terminal.
        if !body.is_empty() && !body.ends_with(b"\n") && out.is_terminal() {
            out.write_all(b"\n").context("writing the output")?;
        }
        out.flush().context("writing the output")?;
    }
    if status.is_success() {
        if let Some(paid) = paid {
            let payment = headers
                .get("payment-receipt")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| Receipt::parse(v).ok())
                .map(|r| format!("payment {}", r.reference))
                .unwrap_or_else(|| "no receipt".to_owned());
            eprintln!(
                "paid {} {} to {} ({payment})",
                paid.amount, paid.currency, paid.recipient
            );
        }
        return Ok(());
    }
    let is_problem = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    let detail = is_problem
        .then(|| problem(&body))
        .flatten()
        .map(|(_, detail)| format!(": {detail}"))
        .unwrap_or_default();
    match paid {
        Some(paid) if paid.method == "evm" => bail!(
            "{} answered {status} to the paid request{detail} (the organisation's wallet signed \
             an authorization of {} {} to {}, usable on chain until the challenge expires)",
            request.url,
            paid.amount,
            paid.currency,
            paid.recipient
        ),
        Some(paid) => bail!(
            "{} answered {status} to the paid request{detail} ({} {} was reserved for {}; an \
             unsettled reservation returns to the balance when it expires)",
            request.url,
            paid.amount,
            paid.currency,
            paid.recipient
        ),
        None => bail!("{} answered {status}{detail}", request.url),
    }
}

/// The `(code, detail)` of an RFC 9457 problem body, on one line.
fn problem(body: &[u8]) -> Option<(String, String)> {
    let json: Value = serde_json::from_slice(body).ok()?;
    let detail = json
        .get("detail")
        .or_else(|| json.get("title"))
        .and_then(Value::as_str)?;
    let code = json
        .get("type")
        .and_then(Value::as_str)
        .map(|t| t.rsplit('/').next().unwrap_or(t))
        .unwrap_or("error");
    let mut one_line: String = detail
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(DETAIL_CHARS_MAX)
        .collect();
    if detail.chars().count() > DETAIL_CHARS_MAX {
        one_line.push('…');
    }
    Some((code.to_owned(), one_line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_reads_code_and_detail_on_one_line() {
        let body = br#"{"type":"https://turnpike.dev/problems/insufficient-balance","title":"x","status":403,"detail":"cannot\ncover 250"}"#;
        assert_eq!(
            problem(body),
            Some(("insufficient-balance".into(), "cannot cover 250".into()))
        );
        assert_eq!(problem(b"not json"), None);
    }
}
