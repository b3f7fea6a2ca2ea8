//! `turnpike demo`: the whole `turnpike` payment flow in one command, on the embedded SQLite.
//!
//! Starts the server in-process (platform fee 2.5%, a fresh admin token) and a built-in echo
//! upstream, sets up over the real HTTP API a merchant (`demo-weather`, a 250 usd price in front
//! of the echo server) and a payer organisation (`demo-agents`, 10000 usd, an agent and its token),
//! makes one paid request through the gateway printing every step decoded, then keeps running
//! until Ctrl-C or SIGTERM, printing the commands to try next.
//!
//! The data directory is wiped at each start, but only when `turnpike demo` created it (it holds
//! the `.turnpike-demo` marker) and it holds nothing but `turnpike.db*` files.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use axum::http::{HeaderMap, Method, Uri};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use turnpike_protocol::{Credential, Receipt, b64, parse_challenges_from_lines};
use turnpike_rails::outbound::OutboundPolicy;
use turnpike_server::Config;
use turnpike_server::connections::ConnectionLimits;
use turnpike_server::limits::RateLimits;

use crate::db::{DbArgs, SQLITE_FILE};

/// The file marking a data directory as the demo's own (so it may be wiped).
pub const MARKER_FILE: &str = ".turnpike-demo";
/// The demo's platform fee (2.5%).
pub const PLATFORM_FEE_BPS: u32 = 250;
/// The merchant's slug.
pub const MERCHANT_SLUG: &str = "demo-weather";
/// The payer organisation's slug.
pub const PAYER_SLUG: &str = "demo-agents";
/// The demo's `--outbound-allow`: its echo upstream listens on loopback, which a server refuses
/// unless allowed.
pub const OUTBOUND_ALLOW: &str = "127.0.0.0/8";
/// Line printed once the demo is fully up (after the commands to try).
pub const READY_LINE: &str = "demo ready: Ctrl-C (or SIGTERM) stops it";

/// Options of `turnpike demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    #[arg(long, default_value = "127.0.0.1:8402")]
    pub listen: SocketAddr,
    /// Data directory for the demo's SQLite database (wiped at each start).
    #[arg(long, default_value = "./turnpike-demo")]
    pub data_dir: PathBuf,
}

/// One line to stdout; a closed stdout (`| head`) is not an error.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `turnpike demo`.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    // Registered before anything is printed, so a SIGTERM right after start-up is graceful.
    let stop = stop_signal()?;
    tokio::pin!(stop);

    // Refuse a foreign data directory before anything starts; wipe only once listening.
    let data_dir = inspect_data_dir(&args.data_dir)?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let local = listener.local_addr()?;
    let reachable = if local.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), local.port())
    } else {
        local
    };
    let base = format!("http://{reachable}");
    out!("turnpike listening on {base}");

    let wiped = data_dir.prepare(&args.data_dir)?;
    let db = DbArgs {
        data_dir: args.data_dir.clone(),
        database_url: None,
    };
    if wiped {
        out!(
            "wiped the previous demo database in {}",
            args.data_dir.display()
        );
    }
    let admin_token = random_token("tpadm_")?;
    let config = Config {
        public_url: base.clone(),
        admin_token: Some(admin_token.clone()),
        platform_fee_bps: PLATFORM_FEE_BPS,
        upstream_timeout: Duration::from_secs(30),
        test_clock: false,
        // The demo database is wiped at each start: a key of this run's own will do.
        secrets_key: Some(match crate::serve::secrets_key_from_env()? {
            Some(key) => key,
            None => turnpike_server::secrets::SecretsKey::generate()?,
        }),
        allow_unsealed_signing_keys: false,
        metrics_token: None,
        outbound: OutboundPolicy::parse(OUTBOUND_ALLOW).map_err(|err| anyhow!(err))?,
        connections: ConnectionLimits::defaults(Duration::from_secs(30)),
        rate_limits: RateLimits::default(),
    };
    let store = db.open(true).await?;
    let state = turnpike_server::start(store, config).await?;
    out!("database: {}", db.describe());
    out!("platform fee: {PLATFORM_FEE_BPS} bps (2.5%)");
    out!("outbound allowed besides public addresses: {OUTBOUND_ALLOW} (the echo upstream)");
    out!("admin token (TURNPIKE_ADMIN_TOKEN): {admin_token}");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(turnpike_server::serve(
        listener,
        state,
        stopped(stop_rx.clone()),
    ));

    let upstream_listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .context("starting the echo upstream")?;
    let upstream_url = format!("http://{}", upstream_listener.local_addr()?);
    let upstream_app = axum::Router::new().fallback(echo);
    let mut stop_upstream = stop_rx;
    let upstream = tokio::spawn(async move {
        axum::serve(upstream_listener, upstream_app)
            .with_graceful_shutdown(async move {
                let _ = stop_upstream.changed().await;
            })
            .await
    });
    out!("echo upstream listening on {upstream_url}");
    out!();

    let demo = Demo {
        http: reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .context("building the HTTP client")?,
        base: base.clone(),
        admin_token,
        upstream_url,
        data_dir: args.data_dir.clone(),
    };
    let outcome = tokio::select! {
        result = demo.walkthrough() => Some(result),
        () = &mut stop => None,
    };
    let result = match outcome {
        Some(Ok(())) => {
            (&mut stop).await;
            Ok(())
        }
        Some(Err(err)) => Err(err),
        None => Ok(()),
    };
    out!("stopping the demo");
    let _ = stop_tx.send(true);
    let served = server.await.context("the server task failed")?;
    let _ = upstream.await;
    served?;
    out!("turnpike demo stopped");
    result
}

/// Resolves on Ctrl-C or SIGTERM; the handlers are installed when this is called.
fn stop_signal() -> anyhow::Result<impl Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.changed().await;
}

/// What the data directory holds, once checked to be the demo's to use.
#[derive(Debug)]
struct DataDir {
    exists: bool,
    marker: bool,
    databases: Vec<PathBuf>,
}

/// Check that `dir` is absent, empty, or an earlier demo's (its marker and `turnpike.db*` only).
fn inspect_data_dir(dir: &Path) -> anyhow::Result<DataDir> {
    let shown = dir.display();
    if !dir.exists() {
        return Ok(DataDir {
            exists: false,
            marker: false,
            databases: Vec::new(),
        });
    }
    if !dir.is_dir() {
        bail!("--data-dir {shown} is not a directory");
    }
    let mut marker = false;
    let mut databases = Vec::new();
    let mut others = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {shown}"))? {
        let entry = entry.with_context(|| format!("reading {shown}"))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
        if name == MARKER_FILE && is_file {
            marker = true;
        } else if name.starts_with(SQLITE_FILE) && is_file {
            databases.push(entry.path());
        } else {
            others.push(name);
        }
    }
    if !others.is_empty() {
        others.sort();
        let listed = others
            .iter()
            .take(3)
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ");
        bail!(
            "--data-dir {shown} holds files that are not a demo database ({listed}{}); the demo \
             wipes its data directory at each start, so give it an empty or new directory",
            if others.len() > 3 { ", ..." } else { "" }
        );
    }
    if !databases.is_empty() && !marker {
        bail!(
            "--data-dir {shown} holds a Turnpike database that `turnpike demo` did not create; \
             refusing to wipe it: give the demo an empty or new directory"
        );
    }
    Ok(DataDir {
        exists: true,
        marker,
        databases,
    })
}

impl DataDir {
    /// Create the directory or wipe the earlier demo database. Returns whether one was wiped.
    fn prepare(&self, dir: &Path) -> anyhow::Result<bool> {
        if !self.exists {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        for file in &self.databases {
            std::fs::remove_file(file).with_context(|| format!("removing {}", file.display()))?;
        }
        if !self.marker {
            write_marker(dir)?;
        }
        Ok(!self.databases.is_empty())
    }
}

fn write_marker(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join(MARKER_FILE);
    std::fs::write(
        &path,
        "created by `turnpike demo`: its turnpike.db* files are wiped at each demo start\n",
    )
    .with_context(|| format!("writing {}", path.display()))
}

/// `prefix` followed by 40 random hex digits.
fn random_token(prefix: &str) -> anyhow::Result<String> {
    let mut bytes = [0u8; 20];
    getrandom::getrandom(&mut bytes).map_err(|err| anyhow!("no randomness: {err}"))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{prefix}{hex}"))
}

/// The echo upstream: any request gets JSON describing it, plus a fake weather report.
pub(crate) async fn echo(method: Method, uri: Uri, headers: HeaderMap) -> axum::Json<Value> {
    let path = uri.path().to_owned();
    let city = path
        .strip_prefix("/weather/")
        .filter(|c| !c.is_empty())
        .unwrap_or("nowhere");
    let seed = city
        .bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    let skies = ["sunny", "partly cloudy", "overcast", "light rain", "windy"];
    let sky = skies.get((seed % 5) as usize).copied().unwrap_or("sunny");
    axum::Json(json!({
        "upstream": "turnpike demo echo",
        "method": method.as_str(),
        "path": path,
        "query": uri.query(),
        "xTurnpikePayment": headers.get("x-turnpike-payment").and_then(|v| v.to_str().ok()),
        "weather": {
            "city": city,
            "sky": sky,
            "temperatureC": 5 + (seed / 5 % 25),
            "windKmh": seed / 125 % 40,
        },
    }))
}

/// The demo's HTTP client side.
#[derive(Debug)]
struct Demo {
    http: reqwest::Client,
    base: String,
    admin_token: String,
    upstream_url: String,
    data_dir: PathBuf,
}

/// A tenant created for the demo.
#[derive(Debug)]
struct Tenant {
    id: String,
    slug: String,
    key: String,
}

impl Demo {
    /// Call the API and return its JSON; any status but `expect` fails naming the problem.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: &str,
        body: Option<Value>,
        expect: StatusCode,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(bearer);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|err| anyhow::Error::new(err.without_url()))
            .with_context(|| format!("{method} {path}"))?;
        let status = response.status();
        let json: Value = response
            .json()
            .await
            .map_err(|err| anyhow::Error::new(err.without_url()))
            .with_context(|| format!("{method} {path}: reading the JSON answer"))?;
        if status != expect {
            let detail = json
                .get("detail")
                .and_then(Value::as_str)
                .unwrap_or("(no detail)");
            bail!("{method} {path} answered {status}: {detail}");
        }
        Ok(json)
    }

    async fn create_tenant(&self, name: &str, slug: &str) -> anyhow::Result<Tenant> {
        let created = self
            .call(
                reqwest::Method::POST,
                "/v1/admin/tenants",
                &self.admin_token,
                Some(json!({"name": name, "slug": slug})),
                StatusCode::CREATED,
            )
            .await?;
        Ok(Tenant {
            id: text(&created, &["tenant", "id"])?,
            slug: slug.to_owned(),
            key: text(&created, &["apiKey", "secret"])?,
        })
    }

    async fn walkthrough(&self) -> anyhow::Result<()> {
        use reqwest::Method as M;
        let base = &self.base;

        out!("== 1. Setup, over the HTTP API ==");
        let merchant = self.create_tenant("Demo Weather", MERCHANT_SLUG).await?;
        out!(
            "POST /v1/admin/tenants           merchant `{}` = {}",
            merchant.slug,
            merchant.id
        );
        let price = self
            .call(
                M::POST,
                "/v1/prices",
                &merchant.key,
                Some(json!({
                    "route": {"method": "GET", "path": "/weather/{city}"},
                    "amount": "250",
                    "currency": "usd",
                    "methods": ["turnpike"],
                    "description": "Weather for one city",
                    "upstreamUrl": self.upstream_url,
                })),
                StatusCode::CREATED,
            )
            .await?;
        out!(
            "POST /v1/prices                  {}: GET /weather/{{city}} costs 250 usd, upstream {}",
            text(&price, &["id"])?,
            self.upstream_url
        );
        let payer = self.create_tenant("Demo Agents", PAYER_SLUG).await?;
        out!(
            "POST /v1/admin/tenants           payer `{}` = {}",
            payer.slug,
            payer.id
        );
        let credit = self
            .http
            .post(format!("{base}/v1/admin/tenants/{}/credit", payer.id))
            .bearer_auth(&self.admin_token)
            .header("Idempotency-Key", "demo-initial-credit")
            .json(&json!({"amount": "10000", "currency": "usd"}))
            .send()
            .await
            .map_err(|err| anyhow::Error::new(err.without_url()))
            .context("crediting the payer")?;
        if !credit.status().is_success() {
            bail!("crediting the payer answered {}", credit.status());
        }
        out!("POST /v1/admin/tenants/…/credit  credited 10000 usd to `{PAYER_SLUG}`");
        let agent = self
            .call(
                M::POST,
                "/v1/agents",
                &payer.key,
                Some(json!({"name": "demo-agent"})),
                StatusCode::CREATED,
            )
            .await?;
        let agent_id = text(&agent, &["id"])?;
        let token = self
            .call(
                M::POST,
                &format!("/v1/agents/{agent_id}/tokens"),
                &payer.key,
                Some(json!({"maxPerPayment": {"amount": "1000", "currency": "usd"}})),
                StatusCode::CREATED,
            )
            .await?;
        let token_id = text(&token, &["id"])?;
        let agent_token = text(&token, &["token"])?;
        out!("POST /v1/agents                  agent {agent_id}");
        out!(
            "POST /v1/agents/…/tokens         token {token_id} (max 1000 usd per payment, expires {})",
            text(&token, &["expiresAt"])?
        );
        out!();

        let resource = format!("{base}/gw/{MERCHANT_SLUG}/weather/paris");
        out!("== 2. The agent asks for the resource ==");
        out!("GET {resource}");
        let first = self
            .http
            .get(&resource)
            .send()
            .await
            .map_err(|err| anyhow::Error::new(err.without_url()))
            .context("GET through the gateway")?;
        out!("HTTP {}", first.status());
        if first.status() != StatusCode::PAYMENT_REQUIRED {
            bail!("the gateway answered {} instead of 402", first.status());
        }
        let challenges: Vec<String> = first
            .headers()
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect();
        for value in &challenges {
            out!("WWW-Authenticate: {}", shorten(value, 100));
        }
        let parsed = parse_challenges_from_lines(challenges.iter().map(String::as_str))
            .map_err(|err| anyhow!("the 402's challenge does not parse: {err}"))?;
        for challenge in &parsed {
            let request = challenge.request_json();
            let field = |name: &str| {
                request
                    .get(name)
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_owned()
            };
            out!("challenge, decoded:");
            out!("  id          {}", challenge.id);
            out!("  realm       {}", challenge.realm);
            out!(
                "  method      {} / intent {}",
                challenge.method,
                challenge.intent
            );
            out!("  amount      {} {}", field("amount"), field("currency"));
            out!("  recipient   {}", field("recipient"));
            out!(
                "  issuer      {}",
                request
                    .get("methodDetails")
                    .and_then(|d| d.get("issuer"))
                    .and_then(Value::as_str)
                    .unwrap_or("?")
            );
            out!(
                "  expires     {}",
                challenge.expires.as_deref().unwrap_or("(none)")
            );
        }
        out!();

        out!("== 3. The agent asks Turnpike to pay: POST /v1/agent/pay (agent token) ==");
        let paid = self
            .call(
                M::POST,
                "/v1/agent/pay",
                &agent_token,
                Some(json!({"challenges": challenges})),
                StatusCode::OK,
            )
            .await?;
        let authorization = text(&paid, &["authorization"])?;
        out!(
            "reserved {} {} for {} (reservation {}, until {})",
            text(&paid, &["amount"])?,
            text(&paid, &["currency"])?,
            text(&paid, &["recipient"])?,
            text(&paid, &["reservationId"])?,
            text(&paid, &["expiresAt"])?
        );
        let credential = Credential::parse(&authorization)
            .map_err(|err| anyhow!("the returned credential does not parse: {err}"))?;
        out!("credential (Authorization: Payment …), decoded, grant shortened:");
        let mut shown = serde_json::to_value(&credential)?;
        let grant = credential
            .payload
            .get("grant")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if let Some(g) = shown.pointer_mut("/payload/grant") {
            *g = Value::String(shorten(&grant, 24));
        }
        if let Some(r) = shown.pointer_mut("/challenge/request") {
            let wire = r.as_str().unwrap_or_default().to_owned();
            *r = Value::String(shorten(&wire, 24));
        }
        print_json(&shown, "  ");
        if let Some(claims) = jws_part(&grant, 1) {
            out!("grant claims (signed by Turnpike, Ed25519):");
            print_json(&claims, "  ");
        }
        out!();

        out!("== 4. The agent retries with the credential ==");
        out!("GET {resource}  (Authorization: Payment …)");
        let second = self
            .http
            .get(&resource)
            .header("authorization", &authorization)
            .send()
            .await
            .map_err(|err| anyhow::Error::new(err.without_url()))
            .context("paid GET through the gateway")?;
        let status = second.status();
        out!("HTTP {status}");
        let receipt_header = second
            .headers()
            .get("payment-receipt")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body: Value = second
            .json()
            .await
            .map_err(|err| anyhow::Error::new(err.without_url()))
            .context("reading the paid answer")?;
        if !status.is_success() {
            bail!("the paid request answered {status}: {body}");
        }
        let receipt_header =
            receipt_header.ok_or_else(|| anyhow!("the paid answer has no Payment-Receipt"))?;
        let receipt = Receipt::parse(&receipt_header)
            .map_err(|err| anyhow!("the receipt does not parse: {err}"))?;
        out!("Payment-Receipt, decoded:");
        print_json(&serde_json::to_value(&receipt)?, "  ");
        out!("body (from the echo upstream):");
        print_json(&body, "  ");
        out!();

        out!("== 5. The ledger ==");
        let payment_id = receipt.reference.clone();
        let payment = self
            .call(
                M::GET,
                &format!("/v1/payments/{payment_id}"),
                &merchant.key,
                None,
                StatusCode::OK,
            )
            .await?;
        let merchant_accounts = self.balances(&merchant).await?;
        let payer_accounts = self.balances(&payer).await?;
        let label = |id: &str| -> String {
            for (tenant, accounts) in [(&merchant, &merchant_accounts), (&payer, &payer_accounts)] {
                for account in accounts {
                    if account.get("id").and_then(Value::as_str) == Some(id) {
                        let kind = account.get("kind").and_then(Value::as_str).unwrap_or("?");
                        return format!("{}/{kind}", tenant.slug);
                    }
                }
            }
            "platform/platform_fees".to_owned()
        };
        out!(
            "GET /v1/payments/{payment_id} (merchant key): {} {} {}, payer {}",
            text(&payment, &["state"])?,
            text(&payment, &["amount"])?,
            text(&payment, &["currency"])?,
            payment
                .get("payerTenantId")
                .and_then(Value::as_str)
                .unwrap_or("?")
        );
        out!("transfers:");
        for t in payment
            .get("transfers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let s = |k: &str| t.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
            let role = match s("kind").as_str() {
                "pending" => "reservation (agent pay)",
                "post_pending" => "settlement of the reservation (verify)",
                _ => "platform fee",
            };
            out!(
                "  {:<12} {:>5} {}  {} -> {}  ({role})",
                s("kind"),
                s("amount"),
                s("currency"),
                label(&s("debitAccountId")),
                label(&s("creditAccountId"))
            );
        }
        out!("balances (GET /v1/balances with each tenant's key):");
        for (tenant, accounts) in [(&merchant, &merchant_accounts), (&payer, &payer_accounts)] {
            for a in accounts {
                let s = |k: &str| a.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
                out!(
                    "  {:<13} {:<17} {}  available {:>6}  credits {:>6}  debits {:>6}  pending debits {}",
                    tenant.slug,
                    s("kind"),
                    s("currency"),
                    s("available"),
                    s("creditsPosted"),
                    s("debitsPosted"),
                    s("debitsPending")
                );
            }
        }
        out!();

        let exe = "turnpike";
        out!("== Try next (the demo keeps running) ==");
        out!("Pay for another city as the agent:");
        out!(
            "  {exe} pay {base}/gw/{MERCHANT_SLUG}/weather/london --api {base} --token {agent_token}"
        );
        out!("The merchant's view (merchant key):");
        out!(
            "  curl -s {base}/v1/payments -H 'Authorization: Bearer {}'",
            merchant.key
        );
        out!(
            "  curl -s {base}/v1/balances -H 'Authorization: Bearer {}'",
            merchant.key
        );
        out!(
            "  curl -s {base}/v1/prices -H 'Authorization: Bearer {}'",
            merchant.key
        );
        out!("The payer's balance, and revoking the agent token (payer key):");
        out!(
            "  curl -s {base}/v1/balances -H 'Authorization: Bearer {}'",
            payer.key
        );
        out!(
            "  curl -s -X DELETE {base}/v1/agents/{agent_id}/tokens/{token_id} -H 'Authorization: Bearer {}'",
            payer.key
        );
        out!("Look at a raw 402 challenge:");
        out!("  curl -si {base}/gw/{MERCHANT_SLUG}/weather/rome | {exe} mpp decode");
        out!("Check the ledger invariants:");
        out!(
            "  {exe} ledger check --data-dir {}",
            self.data_dir.display()
        );
        out!();
        out!("{READY_LINE}");
        Ok(())
    }

    async fn balances(&self, tenant: &Tenant) -> anyhow::Result<Vec<Value>> {
        let json = self
            .call(
                reqwest::Method::GET,
                "/v1/balances",
                &tenant.key,
                None,
                StatusCode::OK,
            )
            .await?;
        Ok(json
            .get("data")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }
}

/// The string at `path` in `json`.
fn text(json: &Value, path: &[&str]) -> anyhow::Result<String> {
    let mut at = json;
    for key in path {
        at = at
            .get(*key)
            .ok_or_else(|| anyhow!("the answer lacks `{}`", path.join(".")))?;
    }
    at.as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("`{}` is not a string", path.join(".")))
}

/// The first `keep` characters of `s` and how long it was.
fn shorten(s: &str, keep: usize) -> String {
    let len = s.chars().count();
    if len <= keep {
        return s.to_owned();
    }
    let head: String = s.chars().take(keep).collect();
    format!("{head}… ({len} chars)")
}

/// Part `index` of a compact JWS (0 header, 1 payload) as JSON.
fn jws_part(jws: &str, index: usize) -> Option<Value> {
    let part = jws.split('.').nth(index)?;
    let bytes = b64::decode(part).ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    value.is_object().then_some(value)
}

/// Pretty JSON, each line indented.
fn print_json(value: &Value, indent: &str) {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    for line in text.lines() {
        out!("{indent}{line}");
    }
}
