//! `turnpike agent ...`, `turnpike policy ...`, `turnpike approvals ...` and `turnpike audit`:
//! an agent owner's commands over the tenant HTTP API (docs/api.md, "Agents" to "Audit").
//!
//! Every command authenticates with a tenant secret key (`--key` / `TURNPIKE_API_KEY`), prints
//! a human-readable answer (or, with `--json`, the server's JSON byte for byte) and exits 0; on
//! a refusal it prints the server's problem `detail` as one `error: ...` line and exits 1.
//! Neither the API key nor an agent token ever appears in an error message.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

mod agents;
mod approvals;
mod audit;
mod policy;
mod render;

pub use agents::AgentCommand;
pub use approvals::ApprovalsCommand;
pub use audit::AuditArgs;
pub use policy::PolicyCommand;

/// Longest wait for a TCP/TLS connection to the API.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for one whole API answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest API answer read (1,000 audit rows are well under a megabyte).
const RESPONSE_BYTES_MAX: usize = 16 << 20;
/// Largest policy or limits document read from a file or stdin.
const INPUT_BYTES_MAX: u64 = 1 << 20;
/// Most characters of a problem `detail` quoted in an error line.
const DETAIL_CHARS_MAX: usize = 300;
/// Longest id accepted on the command line (server ids are a prefix and 20 characters).
const ID_LEN_MAX: usize = 64;
/// Prefix of a tenant secret API key.
const SECRET_KEY_PREFIX: &str = "tp_sk_";

/// How to reach the API and how to print its answers (every owner command has these).
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// The Turnpike server.
    #[arg(long, env = "TURNPIKE_API", default_value = crate::pay::API_DEFAULT)]
    pub api: String,
    /// Tenant secret API key (`tp_sk_...`).
    #[arg(long, env = "TURNPIKE_API_KEY", hide_env_values = true)]
    pub key: String,
    /// Print the server's JSON answer as is.
    #[arg(long)]
    pub json: bool,
}

/// `turnpike agent ...`.
pub async fn agent(command: AgentCommand) -> anyhow::Result<()> {
    agents::run(command).await
}

/// `turnpike policy ...`.
pub async fn policy(command: PolicyCommand) -> anyhow::Result<()> {
    policy::run(command).await
}

/// `turnpike approvals ...`.
pub async fn approvals(command: ApprovalsCommand) -> anyhow::Result<()> {
    approvals::run(command).await
}

/// `turnpike audit`.
pub async fn audit(args: AuditArgs) -> anyhow::Result<()> {
    audit::run(args).await
}

/// A tenant's view of the API: one client, one base URL, one key.
#[derive(Debug)]
struct Api {
    client: reqwest::Client,
    /// The base URL as given (without a trailing `/`), for messages.
    base: String,
    url: Url,
    authorization: HeaderValue,
    /// `--json`: print answers as the server sent them.
    json: bool,
}

/// A successful API answer: its bytes as sent and their JSON.
#[derive(Debug)]
struct Answer {
    bytes: Vec<u8>,
    value: Value,
}

impl Api {
    fn new(args: &ApiArgs) -> anyhow::Result<Self> {
        let base = args.api.trim().trim_end_matches('/').to_owned();
        let url = Url::parse(&base).with_context(|| format!("invalid --api URL {base:?}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
            bail!("invalid --api URL {base:?}: only http and https are supported");
        }
        if url.query().is_some() || url.fragment().is_some() {
            bail!("invalid --api URL {base:?}: it takes no query or fragment");
        }
        // The key is never quoted: not here, not anywhere.
        let key = args.key.trim();
        if !key.starts_with(SECRET_KEY_PREFIX) {
            bail!(
                "--key (or TURNPIKE_API_KEY) must be a tenant secret API key ({SECRET_KEY_PREFIX}...)"
            );
        }
        let mut authorization = HeaderValue::from_str(&format!("Bearer {key}"))
            .map_err(|_| anyhow!("--key holds characters a header cannot carry"))?;
        authorization.set_sensitive(true);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("turnpike-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            client,
            base,
            url,
            authorization,
            json: args.json,
        })
    }

    /// `base` + `/` + the segments (each percent-encoded) + the query.
    fn endpoint(&self, segments: &[&str], query: &[(&str, &str)]) -> anyhow::Result<Url> {
        let mut url = self.url.clone();
        url.path_segments_mut()
            .map_err(|()| anyhow!("invalid --api URL {:?}", self.base))?
            .pop_if_empty()
            .extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }

    async fn get(&self, segments: &[&str], query: &[(&str, &str)]) -> anyhow::Result<Answer> {
        self.call(Method::GET, segments, query, None).await
    }

    async fn post(&self, segments: &[&str], body: &Value) -> anyhow::Result<Answer> {
        self.call(Method::POST, segments, &[], Some(body)).await
    }

    async fn put(&self, segments: &[&str], body: &Value) -> anyhow::Result<Answer> {
        self.call(Method::PUT, segments, &[], Some(body)).await
    }

    async fn delete(&self, segments: &[&str]) -> anyhow::Result<Answer> {
        self.call(Method::DELETE, segments, &[], None).await
    }

    /// One request; a non-2xx answer is an error carrying the problem's `detail` on one line.
    async fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> anyhow::Result<Answer> {
        let url = self.endpoint(segments, query)?;
        let mut request = self
            .client
            .request(method, url)
            .header(AUTHORIZATION, self.authorization.clone());
        if let Some(body) = body {
            request = request.json(body);
        }
        let mut response = request
            .send()
            .await
            .map_err(|err| anyhow::Error::new(err.without_url()))
            .with_context(|| format!("no answer from the Turnpike API at {}", self.base))?;
        let status = response.status();
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|err| anyhow::Error::new(err.without_url()))
            .with_context(|| format!("reading the answer of the Turnpike API at {}", self.base))?
        {
            if bytes.len() + chunk.len() > RESPONSE_BYTES_MAX {
                bail!(
                    "the Turnpike API at {} answered more than {RESPONSE_BYTES_MAX} bytes",
                    self.base
                );
            }
            bytes.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            return Err(refusal(&self.base, status, &bytes));
        }
        let value = serde_json::from_slice(&bytes).map_err(|_| {
            anyhow!(
                "the Turnpike API at {} answered {status} without JSON (is --api a Turnpike server?)",
                self.base
            )
        })?;
        Ok(Answer { bytes, value })
    }

    /// Print `answer` as the server sent it with `--json`, else `human` (computed lazily).
    fn print(&self, answer: &Answer, human: impl FnOnce(&Value) -> String) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        if self.json {
            out.write_all(&answer.bytes)
                .and_then(|()| {
                    if answer.bytes.ends_with(b"\n") {
                        Ok(())
                    } else {
                        out.write_all(b"\n")
                    }
                })
                .context("writing the output")?;
        } else {
            out.write_all(human(&answer.value).as_bytes())
                .context("writing the output")?;
        }
        out.flush().context("writing the output")
    }
}

/// The error for a non-2xx answer: the problem's detail and code, on one line.
fn refusal(base: &str, status: StatusCode, body: &[u8]) -> anyhow::Error {
    match problem(body) {
        Some((code, detail)) => anyhow!("{detail} ({} {code})", status.as_u16()),
        None => anyhow!(
            "the Turnpike API at {base} answered {status} without a problem description (is --api \
             a Turnpike server?)"
        ),
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
    let mut one_line: String = render::one_line(detail)
        .chars()
        .take(DETAIL_CHARS_MAX)
        .collect();
    if detail.chars().count() > DETAIL_CHARS_MAX {
        one_line.push('…');
    }
    Some((render::one_line(code), one_line))
}

/// An id given on the command line, checked before it goes into a URL path. `what` names the
/// argument; the value itself is never quoted (it may be a secret pasted in the wrong place).
fn checked_id<'a>(value: &'a str, what: &str) -> anyhow::Result<&'a str> {
    let value = value.trim();
    let plausible = !value.is_empty()
        && value.len() <= ID_LEN_MAX
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !plausible {
        bail!("{what} must be an id such as agt_..., of letters, digits, `_` and `-`");
    }
    Ok(value)
}

/// A JSON document from `--PATH_FLAG PATH` (`-` reads stdin) or inline text; `what` names it.
fn json_input(path: Option<&Path>, inline: Option<&str>, what: &str) -> anyhow::Result<Value> {
    let (text, source) = match (path, inline) {
        (Some(path), _) if path == Path::new("-") => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .lock()
                .take(INPUT_BYTES_MAX + 1)
                .read_to_end(&mut bytes)
                .with_context(|| format!("reading the {what} from stdin"))?;
            (bytes, "stdin".to_owned())
        }
        (Some(path), _) => {
            let shown = path.display();
            let len = std::fs::metadata(path)
                .with_context(|| format!("reading the {what} from {shown}"))?
                .len();
            if len > INPUT_BYTES_MAX {
                bail!("{shown} is larger than {INPUT_BYTES_MAX} bytes");
            }
            let bytes =
                std::fs::read(path).with_context(|| format!("reading the {what} from {shown}"))?;
            (bytes, shown.to_string())
        }
        (None, Some(text)) => (text.as_bytes().to_vec(), "the command line".to_owned()),
        (None, None) => bail!("no {what} given"),
    };
    if text.len() as u64 > INPUT_BYTES_MAX {
        bail!("the {what} on {source} is larger than {INPUT_BYTES_MAX} bytes");
    }
    let value: Value = serde_json::from_slice(&text)
        .map_err(|err| anyhow!("the {what} on {source} is not valid JSON: {err}"))?;
    if !value.is_object() {
        bail!("the {what} on {source} must be a JSON object");
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_reads_code_and_detail_on_one_line() {
        let body = br#"{"type":"https://turnpike.dev/problems/not-found","title":"Not found","status":404,"detail":"no such\nagent"}"#;
        assert_eq!(
            problem(body),
            Some(("not-found".into(), "no such agent".into()))
        );
        assert_eq!(problem(b"<html>bad gateway</html>"), None);
        let err = refusal("http://x", StatusCode::NOT_FOUND, body);
        assert_eq!(err.to_string(), "no such agent (404 not-found)");
    }

    #[test]
    fn ids_that_could_leave_their_path_segment_are_refused() {
        assert_eq!(checked_id(" agt_abc ", "AGENT_ID").unwrap(), "agt_abc");
        for bad in ["", "..", "a/b", "a?b", "eyJhbGciOi.x.y", &"a".repeat(65)] {
            let err = checked_id(bad, "AGENT_ID").unwrap_err().to_string();
            assert!(err.starts_with("AGENT_ID must be"), "{err}");
        }
        let err = checked_id("eyJhbGciOi.payload.sig", "AGENT_ID").unwrap_err();
        assert!(!err.to_string().contains("payload"), "{err}");
    }

    #[test]
    fn endpoints_keep_the_base_path_and_encode_segments_and_queries() {
        // `main` installs the process's TLS crypto provider; a unit test has to.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let api = Api::new(&ApiArgs {
            api: "http://127.0.0.1:8402/prefix/".into(),
            key: "tp_sk_x".into(),
            json: false,
        })
        .unwrap();
        let url = api
            .endpoint(&["v1", "agents", "agt_1", "policy"], &[])
            .unwrap();
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8402/prefix/v1/agents/agt_1/policy"
        );
        let url = api
            .endpoint(&["v1", "audit"], &[("agentId", "a&b"), ("limit", "5")])
            .unwrap();
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8402/prefix/v1/audit?agentId=a%26b&limit=5"
        );
    }

    #[test]
    fn a_key_that_is_not_a_secret_key_is_refused_without_quoting_it() {
        let err = Api::new(&ApiArgs {
            api: "http://127.0.0.1:8402".into(),
            key: "eyJhbGciOiJFZERTQSJ9.secret.sig".into(),
            json: false,
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("tp_sk_"), "{err}");
        assert!(!err.contains("secret.sig"), "{err}");
    }
}
