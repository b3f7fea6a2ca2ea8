//! The black-box harness: the real `turnpike serve` binary on a free port against a test
//! database, an HTTP client with helpers for the merchant and payer flows, and a tiny upstream
//! server for gateway tests.

// Each test binary uses a different part of the harness.
#![allow(dead_code)]

/// The real-chain harness for the `evm` rail (anvil, the test stablecoin, EIP-3009 signing).
pub mod chain;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use turnpike_store::testing::{Kind, TestDb};

/// The operator token the harness starts servers with.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";
/// Problem type base of the MPP core.
pub const MPP_PROBLEMS: &str = "https://paymentauth.org/problems/";
/// Problem type base of Turnpike's own problems.
pub const TP_PROBLEMS: &str = "https://turnpike.dev/problems/";
/// The key that seals rail secrets in harness servers (32 bytes of hex).
pub const SECRETS_KEY: &str = "5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e";
/// The platform fee the harness starts servers with (2.5%).
pub const FEE_BPS: u32 = 250;

/// Longest wait for a server to bind and answer `/readyz`.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// One process-wide rustls crypto provider (reqwest is built without one).
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The arguments naming `db` to the binary's database options.
pub fn db_args(db: &TestDb) -> Vec<String> {
    match db.kind {
        Kind::Sqlite => vec![
            "--data-dir".into(),
            db.dir().expect("sqlite dir").display().to_string(),
        ],
        Kind::Postgres => vec!["--database-url".into(), db.url.clone()],
    }
}

/// A `turnpike` command with no database or server settings inherited from the environment.
fn turnpike_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_turnpike"));
    for var in [
        "DATABASE_URL",
        "TURNPIKE_DATA_DIR",
        "TURNPIKE_ADMIN_TOKEN",
        "TURNPIKE_SECRETS_KEY",
        "TURNPIKE_METRICS_TOKEN",
        "TURNPIKE_ALLOW_UNSEALED_SIGNING_KEYS",
        "TURNPIKE_LISTEN",
        "TURNPIKE_PUBLIC_URL",
        "TURNPIKE_PLATFORM_FEE_BPS",
        "TURNPIKE_OUTBOUND_ALLOW",
        "TURNPIKE_MAX_CONNECTIONS",
        "TURNPIKE_HEADER_TIMEOUT_S",
        "TURNPIKE_KEEP_ALIVE_TIMEOUT_S",
        "TURNPIKE_REQUEST_TIMEOUT_S",
        "TURNPIKE_RATE_LIMIT_AUTH_FAILURES",
        "TURNPIKE_RATE_LIMIT_CHALLENGES",
        "TURNPIKE_RATE_LIMIT_CHALLENGES_BURST",
        "TURNPIKE_RATE_LIMIT_VERIFICATIONS",
        "TURNPIKE_RATE_LIMIT_VERIFICATIONS_BURST",
        "TURNPIKE_TRUST_FORWARDED_FOR",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Run the binary to completion with `args` plus the database arguments of `db`.
pub async fn run_turnpike(db: &TestDb, args: &[&str]) -> std::process::Output {
    let mut cmd = tokio::process::Command::from(turnpike_command());
    cmd.args(args)
        .args(db_args(db))
        .kill_on_drop(true)
        .output()
        .await
        .expect("run the turnpike binary")
}

/// An `Output` for assertion messages.
pub fn describe(out: &std::process::Output) -> String {
    format!(
        "status {}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// How to start a server.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Set TURNPIKE_ADMIN_TOKEN (the operator API is on).
    pub admin: bool,
    /// `--platform-fee-bps`.
    pub fee_bps: u32,
    /// `--test-clock`: time stands still and moves only by [`Server::set_clock`] /
    /// [`Server::advance_clock`] (needs `admin`).
    pub test_clock: bool,
    /// Set TURNPIKE_SECRETS_KEY to [`SECRETS_KEY`] (off: the server cannot keep rail, wallet or
    /// deposit keys, and is started with `--allow-unsealed-signing-keys`).
    pub secrets_key: bool,
    /// Set TURNPIKE_METRICS_TOKEN.
    pub metrics_token: Option<&'static str>,
    /// `--outbound-allow` [`OUTBOUND_ALLOW`]: upstreams and RPCs on this machine may be used
    /// (off: only public addresses, as a server started without the switch).
    pub outbound_allow: bool,
    /// Connection limits, timeouts and rate limits ([`Limits::GENEROUS`] unless a test sets
    /// tight ones).
    pub limits: Limits,
}

/// The loopback ranges harness servers allow outbound (test upstreams and anvil).
pub const OUTBOUND_ALLOW: &str = "127.0.0.0/8,::1/128";

impl Default for Options {
    fn default() -> Self {
        Self {
            admin: true,
            fee_bps: FEE_BPS,
            test_clock: false,
            secrets_key: true,
            metrics_token: None,
            outbound_allow: true,
            limits: Limits::GENEROUS,
        }
    }
}

/// The limit flags a server is started with. A rate of 0 is no limit.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `--upstream-timeout-s`.
    pub upstream_timeout_s: u64,
    /// `--max-connections`.
    pub max_connections: u32,
    /// `--header-timeout-s`.
    pub header_timeout_s: u64,
    /// `--keep-alive-timeout-s`.
    pub keep_alive_timeout_s: u64,
    /// `--request-timeout-s` (must exceed `upstream_timeout_s`).
    pub request_timeout_s: u64,
    /// `--rate-limit-auth-failures` (per address and minute).
    pub auth_failures_per_min: u32,
    /// `--rate-limit-challenges` and its burst.
    pub challenges_per_s: (u32, u32),
    /// `--rate-limit-verifications` and its burst.
    pub verifications_per_s: (u32, u32),
}

impl Limits {
    /// Limits no load test reaches: the harness's every server but those of the limit tests.
    pub const GENEROUS: Self = Self {
        upstream_timeout_s: 10,
        max_connections: 4_096,
        header_timeout_s: 30,
        keep_alive_timeout_s: 75,
        request_timeout_s: 120,
        auth_failures_per_min: 0,
        challenges_per_s: (0, 1),
        verifications_per_s: (0, 1),
    };

    /// The flags.
    pub fn args(&self) -> Vec<String> {
        [
            ("--upstream-timeout-s", self.upstream_timeout_s.to_string()),
            ("--max-connections", self.max_connections.to_string()),
            ("--header-timeout-s", self.header_timeout_s.to_string()),
            (
                "--keep-alive-timeout-s",
                self.keep_alive_timeout_s.to_string(),
            ),
            ("--request-timeout-s", self.request_timeout_s.to_string()),
            (
                "--rate-limit-auth-failures",
                self.auth_failures_per_min.to_string(),
            ),
            (
                "--rate-limit-challenges",
                self.challenges_per_s.0.to_string(),
            ),
            (
                "--rate-limit-challenges-burst",
                self.challenges_per_s.1.to_string(),
            ),
            (
                "--rate-limit-verifications",
                self.verifications_per_s.0.to_string(),
            ),
            (
                "--rate-limit-verifications-burst",
                self.verifications_per_s.1.to_string(),
            ),
        ]
        .into_iter()
        .flat_map(|(flag, value)| [flag.to_owned(), value])
        .collect()
    }
}

/// A running `turnpike serve`, stopped (SIGTERM, then SIGKILL) on drop.
#[derive(Debug)]
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The client every helper uses.
    pub http: reqwest::Client,
    db_args: Vec<String>,
    log: Arc<Mutex<String>>,
}

/// An HTTP answer, fully read.
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HTTP {} {:?}\n{}",
            self.status,
            self.headers,
            String::from_utf8_lossy(&self.body)
        )
    }
}

impl Reply {
    /// The body as JSON (panics, naming the reply, when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("the body is not JSON ({e}): {self:?}"))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header").to_owned())
    }

    /// Every value of a header.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().expect("ASCII header").to_owned())
            .collect()
    }

    /// Assert the status, returning `self` for chaining.
    #[track_caller]
    pub fn expect_status(self, status: u16) -> Self {
        assert_eq!(self.status, status, "unexpected answer: {self:?}");
        self
    }

    /// Assert a problem+json answer with this status and type; returns the problem.
    #[track_caller]
    pub fn expect_problem(&self, status: u16, type_uri: &str) -> Value {
        assert_eq!(self.status, status, "unexpected answer: {self:?}");
        assert_eq!(
            self.header("content-type").as_deref(),
            Some("application/problem+json"),
            "{self:?}"
        );
        let problem = self.json();
        assert_eq!(problem["type"], type_uri, "{self:?}");
        assert_eq!(problem["status"], status, "{self:?}");
        problem
    }
}

/// A tenant as the harness knows it.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// `ten_...`.
    pub id: String,
    /// URL slug (gateway prefix).
    pub slug: String,
    /// MPP realm.
    pub realm: String,
    /// Its first secret API key.
    pub key: String,
}

/// A payer tenant with an agent and an agent token.
#[derive(Debug, Clone)]
pub struct Payer {
    /// The tenant.
    pub tenant: Tenant,
    /// `agt_...`.
    pub agent_id: String,
    /// `tok_...`.
    pub token_id: String,
    /// The agent token (a JWS).
    pub token: String,
}

/// A tenant's balance in one account, as `/v1/balances` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Balance {
    /// `available`.
    pub available: u128,
    /// `debitsPending`.
    pub debits_pending: u128,
    /// `creditsPosted`.
    pub credits_posted: u128,
    /// `debitsPosted`.
    pub debits_posted: u128,
}

/// Read a raw HTTP/1.1 answer to its end (at most 30 s; a reset after the answer arrived is
/// fine: what was read is the answer): (status, head, body). Panics, showing what came, when
/// no status line did.
pub async fn read_raw_answer(stream: &mut tokio::net::TcpStream) -> (u16, String, String) {
    use tokio::io::AsyncReadExt as _;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    (status, head.to_owned(), body.to_owned())
}

/// The signed `available` of the one account of `kind` in `currency` in a balances list.
fn signed_available(body: &Value, kind: &str, currency: &str) -> i128 {
    let accounts: Vec<&Value> = body["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter(|a| a["kind"] == kind && a["currency"] == currency)
        .collect();
    assert!(accounts.len() <= 1, "{body}");
    accounts.first().map_or(0, |a| {
        a["available"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("`available` is not a signed amount: {a}"))
    })
}

fn number(value: &Value, field: &str) -> u128 {
    value[field]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("`{field}` is not an amount string: {value}"))
}

impl Server {
    /// A server with the operator API on and a 2.5% platform fee.
    pub async fn start(db: &TestDb) -> Self {
        Self::start_with(db, Options::default()).await
    }

    /// A server started with `options`.
    pub async fn start_with(db: &TestDb, options: Options) -> Self {
        Self::start_with_args(db, options, &[]).await
    }

    /// Another replica of `self` on the same database: the same public URL (as behind one
    /// load balancer), its own process and port.
    pub async fn start_replica(&self, db: &TestDb, options: Options) -> Self {
        Self::start_with_args(db, options, &["--public-url", &self.url]).await
    }

    /// A server started with `options` and `extra` arguments to `turnpike serve`.
    pub async fn start_with_args(db: &TestDb, options: Options, extra: &[&str]) -> Self {
        install_crypto_provider();
        let db_args = db_args(db);
        let mut cmd = turnpike_command();
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--platform-fee-bps"])
            .arg(options.fee_bps.to_string())
            .args(options.limits.args())
            .args(extra)
            .args(&db_args)
            .env("RUST_LOG", "warn,turnpike=info,turnpike_server=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if options.admin {
            cmd.env("TURNPIKE_ADMIN_TOKEN", ADMIN_TOKEN);
        }
        if options.secrets_key {
            cmd.env("TURNPIKE_SECRETS_KEY", SECRETS_KEY);
        } else {
            cmd.arg("--allow-unsealed-signing-keys");
        }
        if let Some(token) = options.metrics_token {
            cmd.env("TURNPIKE_METRICS_TOKEN", token);
        }
        if options.test_clock {
            cmd.arg("--test-clock");
        }
        if options.outbound_allow {
            cmd.args(["--outbound-allow", OUTBOUND_ALLOW]);
        }
        let mut child = cmd.spawn().expect("spawn `turnpike serve`");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<SocketAddr>();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("turnpike listening on http://")
                    && let Some((addr, _)) = rest.split_once(' ')
                    && let Ok(addr) = addr.parse()
                {
                    let _ = tx.send(addr);
                }
                if let Ok(mut log) = sink.lock() {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        let addr = tokio::task::spawn_blocking(move || rx.recv_timeout(START_TIMEOUT))
            .await
            .expect("join");
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("HTTP client");
        let mut server = Self {
            child,
            url: String::new(),
            http,
            db_args,
            log,
        };
        let Ok(addr) = addr else {
            panic!(
                "`turnpike serve` did not report its address:\n{}",
                server.log()
            );
        };
        server.url = format!("http://{addr}");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let ready = server
                .http
                .get(format!("{}/readyz", server.url))
                .send()
                .await
                .is_ok_and(|r| r.status().as_u16() == 200);
            if ready {
                break;
            }
            if Instant::now() > deadline || server.child.try_wait().ok().flatten().is_some() {
                panic!("`turnpike serve` did not become ready:\n{}", server.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    /// Send SIGTERM (a graceful stop: the requests in flight are finished).
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// The exit status, once the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Kill the server with SIGKILL (no shutdown of any kind) and wait for it to be gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What the server wrote on stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// `turnpike ledger check` on this server's database: its output.
    pub async fn ledger_check(&self) -> std::process::Output {
        let args: Vec<&str> = ["ledger", "check"]
            .into_iter()
            .chain(self.db_args.iter().map(String::as_str))
            .collect();
        tokio::process::Command::from(turnpike_command())
            .args(&args)
            .kill_on_drop(true)
            .output()
            .await
            .expect("run `turnpike ledger check`")
    }

    /// `turnpike ledger check` on this server's database must exit 0 and report `ok`.
    pub async fn assert_ledger_consistent(&self) {
        let out = self.ledger_check().await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.code() == Some(0) && stdout.trim_end().ends_with(": ok"),
            "`turnpike ledger check` failed:\n{}",
            describe(&out)
        );
    }

    /// Send a request; `body` is sent as JSON.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        Self::read(request).await
    }

    /// Send a built request and read the whole answer.
    pub async fn read(request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("HTTP request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.expect("HTTP body").to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }

    /// GET with a bearer.
    pub async fn get(&self, path: &str, bearer: &str) -> Reply {
        self.call(Method::GET, path, Some(bearer), None).await
    }

    /// POST JSON with a bearer.
    pub async fn post(&self, path: &str, bearer: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(bearer), Some(body))
            .await
    }

    /// A request to the gateway, `path` relative to `/gw/{slug}`.
    pub fn gateway(&self, method: Method, slug: &str, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}/gw/{slug}{path}", self.url))
    }

    /// `GET /metrics` with the admin token: the Prometheus text (must be 200).
    pub async fn metrics(&self) -> String {
        self.get("/metrics", ADMIN_TOKEN)
            .await
            .expect_status(200)
            .text()
    }

    /// Set a `--test-clock` server's time (unix ms; never backwards).
    pub async fn set_clock(&self, now_ms: i64) {
        self.post("/v1/admin/clock", ADMIN_TOKEN, json!({"nowMs": now_ms}))
            .await
            .expect_status(200);
    }

    /// Move a `--test-clock` server's time forward by `ms`.
    pub async fn advance_clock(&self, ms: i64) {
        self.post("/v1/admin/clock", ADMIN_TOKEN, json!({"advanceMs": ms}))
            .await
            .expect_status(200);
    }

    /// Create a tenant through the operator API.
    pub async fn create_tenant(&self, slug: &str) -> Tenant {
        let reply = self
            .post(
                "/v1/admin/tenants",
                ADMIN_TOKEN,
                json!({"name": format!("Tenant {slug}"), "slug": slug}),
            )
            .await
            .expect_status(201);
        let body = reply.json();
        let secret = body["apiKey"]["secret"]
            .as_str()
            .expect("secret")
            .to_owned();
        assert!(secret.starts_with("tp_sk_"), "{reply:?}");
        Tenant {
            id: body["tenant"]["id"].as_str().expect("id").to_owned(),
            slug: slug.to_owned(),
            realm: body["tenant"]["realm"].as_str().expect("realm").to_owned(),
            key: secret,
        }
    }

    /// Credit `amount` usd to a tenant's balance through the operator API.
    pub async fn credit(&self, tenant: &Tenant, amount: u128) {
        self.post(
            &format!("/v1/admin/tenants/{}/credit", tenant.id),
            ADMIN_TOKEN,
            json!({"amount": amount.to_string(), "currency": "usd"}),
        )
        .await
        .expect_status(200);
    }

    /// Create a price (the body without route is `{"route": {...}, "amount", ...}`).
    pub async fn create_price(&self, tenant: &Tenant, body: Value) -> Value {
        self.post("/v1/prices", &tenant.key, body)
            .await
            .expect_status(201)
            .json()
    }

    /// A usd price on `method path`, optionally behind the gateway.
    pub async fn price(
        &self,
        tenant: &Tenant,
        method: &str,
        path: &str,
        amount: u128,
        upstream: Option<&str>,
    ) -> Value {
        let mut body = json!({
            "route": {"method": method, "path": path},
            "amount": amount.to_string(),
            "currency": "usd",
        });
        if let Some(upstream) = upstream {
            body["upstreamUrl"] = json!(upstream);
        }
        self.create_price(tenant, body).await
    }

    /// Create an agent of `tenant`; its id.
    pub async fn create_agent(&self, tenant: &Tenant, name: &str) -> String {
        self.post("/v1/agents", &tenant.key, json!({"name": name}))
            .await
            .expect_status(201)
            .json()["id"]
            .as_str()
            .expect("agent id")
            .to_owned()
    }

    /// Create an agent token; (token id, token).
    pub async fn create_token(
        &self,
        tenant: &Tenant,
        agent_id: &str,
        body: Value,
    ) -> (String, String) {
        let body = self
            .post(&format!("/v1/agents/{agent_id}/tokens"), &tenant.key, body)
            .await
            .expect_status(201)
            .json();
        (
            body["id"].as_str().expect("token id").to_owned(),
            body["token"].as_str().expect("token").to_owned(),
        )
    }

    /// A payer tenant credited with `credit` usd, with an agent and an unlimited token.
    pub async fn payer(&self, slug: &str, credit: u128) -> Payer {
        let tenant = self.create_tenant(slug).await;
        if credit > 0 {
            self.credit(&tenant, credit).await;
        }
        let agent_id = self.create_agent(&tenant, "buyer").await;
        let (token_id, token) = self.create_token(&tenant, &agent_id, json!({})).await;
        Payer {
            tenant,
            agent_id,
            token_id,
            token,
        }
    }

    /// `POST /v1/challenges`: the decision (must be 200).
    pub async fn challenge(&self, tenant: &Tenant, method: &str, path: &str) -> Value {
        self.challenge_with(tenant, json!({"method": method, "path": path}))
            .await
    }

    /// `POST /v1/challenges` with a full body: the decision (must be 200).
    pub async fn challenge_with(&self, tenant: &Tenant, body: Value) -> Value {
        let decision = self
            .post("/v1/challenges", &tenant.key, body)
            .await
            .expect_status(200)
            .json();
        assert_eq!(decision["decision"], "payment_required", "{decision}");
        decision
    }

    /// `POST /v1/agent/pay` with these `WWW-Authenticate` values.
    pub async fn pay(&self, token: &str, challenges: &[String]) -> Reply {
        self.post("/v1/agent/pay", token, json!({"challenges": challenges}))
            .await
    }

    /// `POST /v1/agent/pay` that must succeed: its answer.
    pub async fn pay_ok(&self, payer: &Payer, challenges: &[String]) -> Value {
        self.pay(&payer.token, challenges)
            .await
            .expect_status(200)
            .json()
    }

    /// Challenge `method path` at `merchant` and have `payer` pay it: the `Authorization`.
    pub async fn credential(
        &self,
        merchant: &Tenant,
        payer: &Payer,
        method: &str,
        path: &str,
    ) -> String {
        let decision = self.challenge(merchant, method, path).await;
        let paid = self
            .pay_ok(payer, &decision_header(&decision, "www-authenticate"))
            .await;
        paid["authorization"]
            .as_str()
            .expect("authorization")
            .to_owned()
    }

    /// `POST /v1/verify` (one credential, or `Value::Array` of several, or `Value::Null`).
    pub async fn verify(
        &self,
        merchant: &Tenant,
        authorization: Value,
        method: &str,
        path: &str,
        idempotency_key: Option<&str>,
    ) -> Reply {
        let mut body = json!({"method": method, "path": path});
        if !authorization.is_null() {
            body["authorization"] = authorization;
        }
        self.verify_with(merchant, body, idempotency_key).await
    }

    /// `POST /v1/verify` with a full body.
    pub async fn verify_with(
        &self,
        merchant: &Tenant,
        body: Value,
        idempotency_key: Option<&str>,
    ) -> Reply {
        let mut request = self
            .http
            .post(format!("{}/v1/verify", self.url))
            .bearer_auth(&merchant.key)
            .json(&body);
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        Self::read(request).await
    }

    /// The tenant's usd account of `kind` (`payer_balance`, `merchant_revenue`); zero when it
    /// has none yet.
    pub async fn balance(&self, tenant: &Tenant, kind: &str) -> Balance {
        let body = self
            .get("/v1/balances", &tenant.key)
            .await
            .expect_status(200)
            .json();
        let accounts: Vec<&Value> = body["data"]
            .as_array()
            .expect("data")
            .iter()
            .filter(|a| a["kind"] == kind && a["currency"] == "usd")
            .collect();
        assert!(accounts.len() <= 1, "{body}");
        accounts.first().map_or_else(Balance::default, |a| Balance {
            available: number(a, "available"),
            debits_pending: number(a, "debitsPending"),
            credits_posted: number(a, "creditsPosted"),
            debits_posted: number(a, "debitsPosted"),
        })
    }

    /// The signed `available` of a tenant's account of `kind` in `currency` (zero when it has
    /// none yet): a negative balance reads negative here.
    pub async fn signed_balance(&self, tenant: &Tenant, kind: &str, currency: &str) -> i128 {
        let body = self
            .get("/v1/balances", &tenant.key)
            .await
            .expect_status(200)
            .json();
        signed_available(&body, kind, currency)
    }

    /// The signed `available` of the platform's account of `kind` (`platform_fees`,
    /// `rail_clearing`) in `currency`, through the operator API.
    pub async fn platform_balance(&self, kind: &str, currency: &str) -> i128 {
        let body = self
            .get("/v1/admin/balances", ADMIN_TOKEN)
            .await
            .expect_status(200)
            .json();
        signed_available(&body, kind, currency)
    }

    /// Send `request_line_and_headers` (everything before the blank line, without it) as
    /// written over a raw TCP connection (no client normalises the path) and read the answer:
    /// (status, head, body).
    pub async fn raw(&self, head: &str) -> (u16, String, String) {
        use tokio::io::AsyncWriteExt as _;
        let addr = self.url.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("{head}\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        read_raw_answer(&mut stream).await
    }

    /// `GET /v1/payments/{id}` as the merchant (must be 200).
    pub async fn payment(&self, merchant: &Tenant, id: &str) -> Value {
        self.get(&format!("/v1/payments/{id}"), &merchant.key)
            .await
            .expect_status(200)
            .json()
    }

    /// The merchant's payments, newest first.
    pub async fn payments(&self, merchant: &Tenant) -> Vec<Value> {
        self.get("/v1/payments", &merchant.key)
            .await
            .expect_status(200)
            .json()["data"]
            .as_array()
            .expect("data")
            .clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- turnpike serve log ({}) ---\n{}", self.url, self.log());
        }
        if self.exited().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The values of header `name` (case-insensitive) in a decision's `headers` list.
pub fn decision_header(decision: &Value, name: &str) -> Vec<String> {
    decision["headers"]
        .as_array()
        .unwrap_or_else(|| panic!("no headers: {decision}"))
        .iter()
        .filter(|pair| {
            pair[0]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
        .map(|pair| pair[1].as_str().expect("header value").to_owned())
        .collect()
}

/// What the upstream does.
const ANSWER_200: u8 = 0;
const ANSWER_500: u8 = 1;

/// A tiny upstream for gateway tests: echoes what it received as JSON (status 200), or
/// answers 500 when told to.
#[derive(Debug)]
pub struct Upstream {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    mode: Arc<AtomicU8>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// Start answering 200.
    pub async fn start() -> Self {
        let mode = Arc::new(AtomicU8::new(ANSWER_200));
        let hits = Arc::new(AtomicUsize::new(0));
        let (m, h) = (Arc::clone(&mode), Arc::clone(&hits));
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let (mode, hits) = (Arc::clone(&m), Arc::clone(&h));
            async move { echo(request, &mode, &hits).await }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the upstream");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url,
            mode,
            hits,
            task,
        }
    }

    /// From now on answer 500.
    pub fn fail(&self) {
        self.mode.store(ANSWER_500, Ordering::SeqCst);
    }

    /// How many requests arrived.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo(
    request: axum::extract::Request,
    mode: &AtomicU8,
    hits: &AtomicUsize,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    hits.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if mode.load(Ordering::SeqCst) == ANSWER_500 {
        // A forged receipt: the gateway must not relay it on an error.
        return (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            [("payment-receipt", "forged")],
            axum::Json(json!({"error": "upstream broke"})),
        )
            .into_response();
    }
    axum::Json(json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "payment": header("x-turnpike-payment"),
        "authorization": parts.headers.contains_key("authorization"),
        "custom": header("x-custom"),
        "body": String::from_utf8_lossy(&body),
    }))
    .into_response()
}

/// An upstream that misbehaves by path (any prefix before the marker is ignored): `/slow-ok`
/// answers 200 after [`HostileUpstream::SLOW`], `/slow-fail` 500 after it, `/hang` never,
/// `/big` a body over the gateway's 10 MiB limit, `/cut` a body cut off after a few bytes,
/// `/forge` 200 with forged payment headers; anything else echoes its `Authorization` values.
#[derive(Debug)]
pub struct HostileUpstream {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    hits: Arc<AtomicUsize>,
    finished: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl HostileUpstream {
    /// How long `/slow-*` takes.
    pub const SLOW: Duration = Duration::from_millis(700);

    /// Start it.
    pub async fn start() -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(AtomicUsize::new(0));
        let (h, f) = (Arc::clone(&hits), Arc::clone(&finished));
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let (hits, finished) = (Arc::clone(&h), Arc::clone(&f));
            async move {
                hits.fetch_add(1, Ordering::SeqCst);
                let answer = hostile(request).await;
                finished.fetch_add(1, Ordering::SeqCst);
                answer
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the upstream");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url,
            hits,
            finished,
            task,
        }
    }

    /// How many requests arrived.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// How many requests it finished answering (a slow answer counts once it is sent).
    pub fn finished(&self) -> usize {
        self.finished.load(Ordering::SeqCst)
    }
}

impl Drop for HostileUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn hostile(request: axum::extract::Request) -> axum::response::Response {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let path = request.uri().path().to_owned();
    let has = |marker: &str| path.split('/').any(|segment| segment == marker);
    if has("slow-ok") || has("slow-fail") {
        tokio::time::sleep(HostileUpstream::SLOW).await;
        let status = if has("slow-ok") {
            StatusCode::OK
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        return (status, "slow").into_response();
    }
    if has("hang") {
        tokio::time::sleep(Duration::from_secs(3_600)).await;
    }
    if has("big") {
        return vec![b'x'; (10 << 20) + 1].into_response();
    }
    if has("cut") {
        let chunks: Vec<Result<&'static str, std::io::Error>> =
            vec![Ok("the beginning"), Err(std::io::Error::other("cut off"))];
        let mut answer =
            axum::body::Body::from_stream(futures_util::stream::iter(chunks)).into_response();
        answer.headers_mut().insert(
            "content-length",
            axum::http::HeaderValue::from_static("1000"),
        );
        return answer;
    }
    if has("forge") {
        return (
            [
                ("payment-receipt", "forged"),
                ("www-authenticate", "Payment id=\"forged\""),
                ("x-turnpike-payment", "pay_forged"),
            ],
            "forged",
        )
            .into_response();
    }
    let authorizations: Vec<String> = request
        .headers()
        .get_all("authorization")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    axum::Json(json!({"path": path, "authorizations": authorizations})).into_response()
}

/// A URL nothing listens on: its port stays bound (so no other test can take it) but never
/// listens, so connections are refused. Dropping a listener instead would free the port for
/// the next `bind(":0")` of a test running in parallel.
#[derive(Debug)]
pub struct DeadPort {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    _socket: tokio::net::TcpSocket,
}

impl DeadPort {
    /// Reserve a port.
    pub fn reserve() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("address"))
            .expect("bind");
        let addr = socket.local_addr().expect("address");
        Self {
            url: format!("http://{addr}"),
            _socket: socket,
        }
    }
}
