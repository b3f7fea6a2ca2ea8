//! End-to-end test of the merchant SDK (`turnpike-client`'s `PaymentLayer`) against the real
//! server: the `turnpike serve` binary on SQLite and on PostgreSQL (a private server this test
//! binary starts: `turnpike_store::testing`), and an axum merchant app running inside this test
//! process whose paid routes sit behind the layer. Everything goes through real HTTP: the
//! 402 challenge, `/v1/agent/pay`, the paid retry with its receipt, a replay, a body changed
//! after the challenge, `turnpike pay` as a separate process, and finally `turnpike ledger check`
//! on the same database.
//!
//! The harness is this file's own (the shared `tests/support` belongs to other suites).

// The test bodies are plain `async fn`s that macro-generated `#[tokio::test]`s call, which
// clippy's `allow-unwrap-in-tests` does not recognise as tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::HeaderMap as AxumHeaderMap;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use reqwest::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderMap, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use turnpike_client::{PaidRequest, PaymentLayer, TurnpikeClient};
use turnpike_protocol::{ContentDigest, Receipt, parse_challenges};
use turnpike_store::on_both_databases;
use turnpike_store::testing::{Kind, TestDb};

on_both_databases!(the_payment_layer_gates_a_merchant_app_end_to_end);

const BIN: &str = env!("CARGO_BIN_EXE_turnpike");
/// The operator token the server runs with (enables `/v1/admin/...`).
const ADMIN_TOKEN: &str = "client-layer-admin-token-0123456789";
/// Longest wait for `turnpike serve` to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Problem type base of the MPP core.
const MPP_PROBLEMS: &str = "https://paymentauth.org/problems/";
/// Problem type base of Turnpike's own problems.
const TP_PROBLEMS: &str = "https://turnpike.dev/problems/";
/// What the payer is credited with.
const CREDIT: u64 = 10_000;
/// `GET /weather/{city}`.
const WEATHER_PRICE: u64 = 250;
/// `POST /summarize`.
const SUMMARIZE_PRICE: u64 = 100;

// ---------------------------------------------------------------------------------------------
// Harness: the real server, a JSON client for its API, the in-process merchant app.
// ---------------------------------------------------------------------------------------------

/// A `turnpike` command whose settings come only from its arguments and `extra_env`.
fn turnpike_command() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(BIN);
    for var in [
        "DATABASE_URL",
        "TURNPIKE_DATA_DIR",
        "TURNPIKE_ADMIN_TOKEN",
        "TURNPIKE_SECRETS_KEY",
        "TURNPIKE_AGENT_TOKEN",
        "TURNPIKE_API",
        "TURNPIKE_LISTEN",
        "TURNPIKE_PUBLIC_URL",
        "TURNPIKE_PLATFORM_FEE_BPS",
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        command.env_remove(var);
    }
    command
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// The arguments naming `db` to `serve` and `ledger check`.
fn db_args(db: &TestDb) -> Vec<String> {
    match db.kind {
        Kind::Sqlite => vec![
            "--data-dir".into(),
            db.dir().expect("sqlite dir").display().to_string(),
        ],
        Kind::Postgres => vec!["--database-url".into(), db.url.clone()],
    }
}

fn describe(out: &Output) -> String {
    format!(
        "status {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A running `turnpike serve` on a free port, its stderr kept for failure messages.
struct Server {
    child: tokio::process::Child,
    /// `http://127.0.0.1:PORT`.
    base: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Start the server on `db` and wait until it prints `turnpike listening on http://ADDR`.
    async fn start(db: &TestDb) -> Self {
        let mut child = turnpike_command()
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(["--outbound-allow", "127.0.0.0/8,::1/128"])
            .args(db_args(db))
            .env("TURNPIKE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("TURNPIKE_SECRETS_KEY", "c1".repeat(32))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start turnpike serve");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<String>();
        let stderr = child.stderr.take().expect("piped stderr");
        let lines_log = Arc::clone(&log);
        tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            let mut lines = BufReader::new(stderr).lines();
            // Drained to the end so the server never blocks on a full pipe.
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.strip_prefix("turnpike listening on ")
                    && let Some(tx) = ready_tx.take()
                {
                    let url = rest.split_whitespace().next().unwrap_or_default();
                    let _ = tx.send(url.to_owned());
                }
                lines_log.lock().unwrap().push(line);
            }
        });
        let base = match tokio::time::timeout(START_TIMEOUT, ready_rx).await {
            Ok(Ok(base)) => base,
            Ok(Err(_)) => {
                let status = child.wait().await.ok();
                panic!(
                    "turnpike serve ended ({status:?}) before listening:\n{}",
                    log.lock().unwrap().join("\n")
                )
            }
            Err(_) => panic!(
                "turnpike serve did not listen within {START_TIMEOUT:?}:\n{}",
                log.lock().unwrap().join("\n")
            ),
        };
        assert!(base.starts_with("http://127.0.0.1:"), "address {base:?}");
        Self { child, base, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGTERM (a graceful stop), then wait; SIGKILL after 10 s.
    async fn stop(mut self) {
        let pid = self.child.id().expect("the server is running");
        let sent = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .expect("run kill");
        assert!(sent.success());
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(status) => {
                let status = status.expect("wait for the server");
                assert!(
                    status.success(),
                    "turnpike serve exited with {status}:\n{}",
                    self.log()
                );
            }
            Err(_) => {
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
                panic!(
                    "turnpike serve did not stop within 10 s of SIGTERM:\n{}",
                    self.log()
                );
            }
        }
    }
}

/// One HTTP answer, read whole.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Reply {
    /// The body as JSON (`Null` when it is not JSON).
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn header_all(&self, name: impl reqwest::header::AsHeaderName) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().expect("ASCII header").to_owned())
            .collect()
    }

    #[track_caller]
    fn expect(&self, status: u16, what: &str) -> Value {
        assert_eq!(self.status.as_u16(), status, "{what}: {self:#?}");
        self.json()
    }
}

/// A plain HTTP client for the server's API and the merchant app.
#[derive(Clone)]
struct Http(reqwest::Client);

impl Http {
    fn new() -> Self {
        Self(
            reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(15))
                .build()
                .expect("HTTP client"),
        )
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Reply {
        let mut request = self.0.request(method, url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("read the answer");
        Reply {
            status,
            headers,
            text,
        }
    }

    /// A JSON API call with `Authorization: Bearer {bearer}`.
    async fn api(&self, method: Method, url: &str, bearer: &str, body: Option<Value>) -> Reply {
        let auth = format!("Bearer {bearer}");
        let mut headers = vec![(AUTHORIZATION.as_str(), auth.as_str())];
        let body = body.map(|b| serde_json::to_vec(&b).unwrap());
        if body.is_some() {
            headers.push((CONTENT_TYPE.as_str(), "application/json"));
        }
        self.send(method, url, &headers, body).await
    }
}

/// The in-process merchant: how many times a paid handler ran.
#[derive(Clone, Default)]
struct Merchant {
    paid_calls: Arc<AtomicUsize>,
}

impl Merchant {
    fn paid_calls(&self) -> usize {
        self.paid_calls.load(Ordering::SeqCst)
    }
}

/// `GET /` (free).
async fn index() -> Json<Value> {
    Json(json!({"service": "client-layer-test", "free": true}))
}

/// `GET /weather/{city}` (paid).
async fn weather(
    State(merchant): State<Merchant>,
    Path(city): Path<String>,
    Extension(paid): Extension<PaidRequest>,
    headers: AxumHeaderMap,
) -> Json<Value> {
    merchant.paid_calls.fetch_add(1, Ordering::SeqCst);
    Json(json!({
        "city": city,
        "forecast": "sunny",
        "paymentId": paid.payment_id,
        "sawAuthorization": headers.contains_key(AUTHORIZATION),
    }))
}

/// `POST /summarize` (paid): echoes what it was given.
async fn summarize(
    State(merchant): State<Merchant>,
    Extension(paid): Extension<PaidRequest>,
    headers: AxumHeaderMap,
    body: String,
) -> Json<Value> {
    merchant.paid_calls.fetch_add(1, Ordering::SeqCst);
    let text = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["text"].as_str().map(str::to_owned))
        .unwrap_or_default();
    Json(json!({
        "summary": text.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        "bodyBytes": body.len(),
        "paymentId": paid.payment_id,
        "sawAuthorization": headers.contains_key(AUTHORIZATION),
    }))
}

/// The merchant app: a free route merged with the paid ones behind the payment layer.
fn merchant_app(turnpike: TurnpikeClient, merchant: Merchant) -> Router {
    let paid = Router::new()
        .route("/weather/{city}", get(weather))
        .route("/summarize", post(summarize))
        .route_layer(PaymentLayer::new(turnpike));
    Router::new()
        .route("/", get(index))
        .merge(paid)
        .with_state(merchant)
}

/// Serve `app` on a free port; the task ends with the test's runtime (or when aborted).
async fn spawn_merchant(app: Router) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the merchant");
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("merchant app");
    });
    (format!("http://{addr}"), task)
}

/// The payer's `payer_balance` account in usd: `(available, debitsPosted, debitsPending)`.
async fn payer_usd(http: &Http, server: &str, payer_key: &str) -> (u64, u64, u64) {
    let balances = http
        .api(
            Method::GET,
            &format!("{server}/v1/balances"),
            payer_key,
            None,
        )
        .await
        .expect(200, "payer balances");
    let account = balances["data"]
        .as_array()
        .expect("data")
        .iter()
        .find(|a| a["kind"] == "payer_balance" && a["currency"] == "usd")
        .unwrap_or_else(|| panic!("no usd payer_balance in {balances}"))
        .clone();
    let n = |field: &str| -> u64 {
        account[field]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("`{field}` in {account}"))
    };
    (n("available"), n("debitsPosted"), n("debitsPending"))
}

/// Hand the 402's `WWW-Authenticate` values to `/v1/agent/pay`: the `Authorization` value.
async fn agent_pay(
    http: &Http,
    server: &str,
    agent_token: &str,
    challenges: &[String],
    amount: u64,
) -> (String, String) {
    let paid = http
        .api(
            Method::POST,
            &format!("{server}/v1/agent/pay"),
            agent_token,
            Some(json!({ "challenges": challenges })),
        )
        .await
        .expect(200, "agent pay");
    assert_eq!(paid["amount"], amount.to_string(), "{paid}");
    assert_eq!(paid["currency"], "usd", "{paid}");
    let authorization = paid["authorization"].as_str().expect("authorization");
    assert!(authorization.starts_with("Payment "), "{paid}");
    let challenge_id = paid["challengeId"].as_str().expect("challengeId");
    (authorization.to_owned(), challenge_id.to_owned())
}

/// Check a 402 from the merchant app: a problem of `code` with fresh, parseable challenges for
/// the merchant's realm; answers the `WWW-Authenticate` values and the challenges' `digest`.
#[track_caller]
fn assert_402(reply: &Reply, code: &str, what: &str) -> (Vec<String>, Option<String>) {
    let problem = reply.expect(402, what);
    assert_eq!(reply.header_all(CACHE_CONTROL), ["no-store"], "{what}");
    assert!(
        reply
            .header(CONTENT_TYPE.as_str())
            .is_some_and(|v| v.starts_with("application/problem+json")),
        "{what}: {reply:#?}"
    );
    assert_eq!(
        problem["type"],
        format!("{MPP_PROBLEMS}{code}"),
        "{what}: {problem}"
    );
    assert_eq!(problem["status"], 402, "{what}: {problem}");
    assert!(reply.header("payment-receipt").is_none(), "{what}");
    let values = reply.header_all(WWW_AUTHENTICATE);
    assert!(!values.is_empty(), "{what}: no WWW-Authenticate");
    let mut challenges = Vec::new();
    for value in &values {
        let parsed = parse_challenges(value)
            .unwrap_or_else(|e| panic!("{what}: WWW-Authenticate {value:?}: {e}"));
        challenges.extend(parsed);
    }
    assert_eq!(challenges.len(), 1, "{what}: one accepted method");
    let challenge = &challenges[0];
    assert_eq!(challenge.method, "turnpike", "{what}");
    assert_eq!(challenge.intent, "charge", "{what}");
    assert_eq!(challenge.realm, "merchant", "{what}");
    assert!(challenge.expires.is_some(), "{what}");
    assert_eq!(
        problem["challengeId"].as_str(),
        Some(challenge.id.as_str()),
        "{what}: {problem}"
    );
    (values, challenge.digest.clone())
}

/// Check a paid 200 from the merchant app: its receipt names the handler's payment.
#[track_caller]
fn assert_paid(reply: &Reply, what: &str) -> (Value, String) {
    let body = reply.expect(200, what);
    let payment_id = body["paymentId"].as_str().expect("paymentId").to_owned();
    assert!(payment_id.starts_with("pay_"), "{what}: {body}");
    assert_eq!(
        body["sawAuthorization"], false,
        "{what}: credential reached the handler"
    );
    assert_eq!(reply.header_all(CACHE_CONTROL), ["private"], "{what}");
    assert_eq!(reply.header_all("payment-receipt").len(), 1, "{what}");
    let receipt = reply
        .header("payment-receipt")
        .unwrap_or_else(|| panic!("{what}: no Payment-Receipt: {reply:#?}"));
    let receipt = Receipt::parse(receipt).unwrap_or_else(|e| panic!("{what}: receipt: {e}"));
    assert!(receipt.is_success(), "{what}: {receipt:?}");
    assert_eq!(receipt.method.as_deref(), Some("turnpike"), "{what}");
    assert_eq!(receipt.reference, payment_id, "{what}: receipt reference");
    (body, payment_id)
}

// ---------------------------------------------------------------------------------------------
// The test.
// ---------------------------------------------------------------------------------------------

async fn the_payment_layer_gates_a_merchant_app_end_to_end(db: &TestDb) {
    let started = Instant::now();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = Server::start(db).await;
    let api = server.base.clone();
    let http = Http::new();

    // --- Set-up through the operator and tenant APIs. ---
    let create_tenant = |name: &'static str, slug: &'static str| {
        let (http, api) = (http.clone(), api.clone());
        async move {
            let created = http
                .api(
                    Method::POST,
                    &format!("{api}/v1/admin/tenants"),
                    ADMIN_TOKEN,
                    Some(json!({"name": name, "slug": slug})),
                )
                .await
                .expect(201, "create tenant");
            let id = created["tenant"]["id"].as_str().expect("tenant id");
            let secret = created["apiKey"]["secret"].as_str().expect("api key");
            assert!(secret.starts_with("tp_sk_"), "{created}");
            (id.to_owned(), secret.to_owned())
        }
    };
    let (_merchant_id, merchant_key) = create_tenant("Merchant", "merchant").await;
    let (payer_id, payer_key) = create_tenant("Payer", "payer").await;
    http.api(
        Method::POST,
        &format!("{api}/v1/admin/tenants/{payer_id}/credit"),
        ADMIN_TOKEN,
        Some(json!({"amount": CREDIT.to_string(), "currency": "usd"})),
    )
    .await
    .expect(200, "credit the payer");
    for (method, path, amount) in [
        ("GET", "/weather/{city}", WEATHER_PRICE),
        ("POST", "/summarize", SUMMARIZE_PRICE),
    ] {
        let price = http
            .api(
                Method::POST,
                &format!("{api}/v1/prices"),
                &merchant_key,
                Some(json!({
                    "route": {"method": method, "path": path},
                    "amount": amount.to_string(),
                    "currency": "usd",
                })),
            )
            .await
            .expect(201, "create a price");
        assert_eq!(price["methods"], json!(["turnpike"]), "{price}");
    }
    let agent = http
        .api(
            Method::POST,
            &format!("{api}/v1/agents"),
            &payer_key,
            Some(json!({"name": "weather-bot"})),
        )
        .await
        .expect(201, "create an agent");
    let agent_id = agent["id"].as_str().expect("agent id");
    let token = http
        .api(
            Method::POST,
            &format!("{api}/v1/agents/{agent_id}/tokens"),
            &payer_key,
            Some(json!({"maxPerPayment": {"amount": "1000", "currency": "usd"}})),
        )
        .await
        .expect(201, "create an agent token");
    let agent_token = token["token"].as_str().expect("token").to_owned();
    assert_eq!(
        payer_usd(&http, &api, &payer_key).await,
        (CREDIT, 0, 0),
        "credited"
    );

    // --- The merchant app, in this process, behind the payment layer. ---
    let merchant = Merchant::default();
    let turnpike = TurnpikeClient::new(&api, &merchant_key).expect("turnpike client");
    let (shop, shop_task) = spawn_merchant(merchant_app(turnpike, merchant.clone())).await;

    // The free route never involves Turnpike.
    let free = http.send(Method::GET, &format!("{shop}/"), &[], None).await;
    assert_eq!(free.expect(200, "free route")["free"], true);
    assert!(free.header("payment-receipt").is_none());

    // 1. No credential: the 402 challenge, straight from Turnpike through the layer.
    let rome = format!("{shop}/weather/rome");
    let first = http.send(Method::GET, &rome, &[], None).await;
    let (challenges, digest) = assert_402(&first, "payment-required", "GET without credential");
    assert_eq!(digest, None, "a GET without body binds no digest");
    assert_eq!(merchant.paid_calls(), 0, "the handler ran without payment");

    // 2. Pay the challenge, retry with the credential: served, with a receipt; money moved.
    let (authorization, challenge_id) =
        agent_pay(&http, &api, &agent_token, &challenges, WEATHER_PRICE).await;
    let paid = http
        .send(
            Method::GET,
            &rome,
            &[(AUTHORIZATION.as_str(), &authorization)],
            None,
        )
        .await;
    let (body, payment_id) = assert_paid(&paid, "paid GET");
    assert_eq!(body["city"], "rome", "{body}");
    assert_eq!(merchant.paid_calls(), 1);
    let payment = http
        .api(
            Method::GET,
            &format!("{api}/v1/payments/{payment_id}"),
            &merchant_key,
            None,
        )
        .await
        .expect(200, "the payment");
    assert_eq!(payment["id"], payment_id.as_str(), "{payment}");
    assert_eq!(payment["state"], "settled", "{payment}");
    assert_eq!(payment["method"], "turnpike", "{payment}");
    assert_eq!(payment["amount"], WEATHER_PRICE.to_string(), "{payment}");
    assert_eq!(payment["currency"], "usd", "{payment}");
    assert_eq!(payment["challengeId"], challenge_id.as_str(), "{payment}");
    assert_eq!(payment["payerTenantId"], payer_id.as_str(), "{payment}");
    // The payer sees nothing of the merchant's payment.
    http.api(
        Method::GET,
        &format!("{api}/v1/payments/{payment_id}"),
        &payer_key,
        None,
    )
    .await
    .expect(404, "another tenant's payment");
    assert_eq!(
        payer_usd(&http, &api, &payer_key).await,
        (CREDIT - WEATHER_PRICE, WEATHER_PRICE, 0),
        "after the paid GET"
    );

    // 3. The same credential again: refused before the handler, no second payment.
    let replay = http
        .send(
            Method::GET,
            &rome,
            &[(AUTHORIZATION.as_str(), &authorization)],
            None,
        )
        .await;
    let problem = replay.expect(403, "replayed credential");
    assert_eq!(
        problem["type"],
        format!("{TP_PROBLEMS}credential-already-used"),
        "{problem}"
    );
    assert_eq!(replay.header_all(CACHE_CONTROL), ["no-store"]);
    assert!(replay.header("payment-receipt").is_none());
    assert!(replay.header_all(WWW_AUTHENTICATE).is_empty());
    assert_eq!(merchant.paid_calls(), 1, "the handler ran for a replay");
    assert_eq!(
        payer_usd(&http, &api, &payer_key).await,
        (CREDIT - WEATHER_PRICE, WEATHER_PRICE, 0),
        "after the replay"
    );

    // 4. A body bound by the challenge: another body fails verification, the original pays.
    let summarize = format!("{shop}/summarize");
    let body_a = br#"{"text":"the quick brown fox jumps over the lazy dog"}"#.to_vec();
    let body_b = br#"{"text":"a different text entirely"}"#.to_vec();
    let json_type = [(CONTENT_TYPE.as_str(), "application/json")];
    let first = http
        .send(Method::POST, &summarize, &json_type, Some(body_a.clone()))
        .await;
    let (challenges, digest) = assert_402(&first, "payment-required", "POST without credential");
    assert_eq!(
        digest,
        Some(ContentDigest::sha256(&body_a).to_header_value()),
        "the challenge binds the body's digest"
    );
    let (authorization, _) =
        agent_pay(&http, &api, &agent_token, &challenges, SUMMARIZE_PRICE).await;
    let with_credential = [
        (CONTENT_TYPE.as_str(), "application/json"),
        (AUTHORIZATION.as_str(), authorization.as_str()),
    ];
    let other_body = http
        .send(
            Method::POST,
            &summarize,
            &with_credential,
            Some(body_b.clone()),
        )
        .await;
    let (_, digest) = assert_402(&other_body, "verification-failed", "POST with another body");
    assert_eq!(
        digest,
        Some(ContentDigest::sha256(&body_b).to_header_value()),
        "the fresh challenge binds the body actually sent"
    );
    assert_eq!(merchant.paid_calls(), 1, "the handler ran for a wrong body");
    let paid = http
        .send(
            Method::POST,
            &summarize,
            &with_credential,
            Some(body_a.clone()),
        )
        .await;
    let (body, summary_payment) = assert_paid(&paid, "paid POST");
    assert_ne!(summary_payment, payment_id);
    assert_eq!(body["summary"], "the quick brown", "{body}");
    assert_eq!(body["bodyBytes"], body_a.len(), "the handler got the body");
    assert_eq!(merchant.paid_calls(), 2);
    assert_eq!(
        payer_usd(&http, &api, &payer_key).await,
        (
            CREDIT - WEATHER_PRICE - SUMMARIZE_PRICE,
            WEATHER_PRICE + SUMMARIZE_PRICE,
            0
        ),
        "after the paid POST"
    );

    // 5. `turnpike pay`, a separate process, against the in-test merchant app.
    let out = turnpike_command()
        .args(["pay", &format!("{shop}/weather/paris"), "--token"])
        .arg(&agent_token)
        .args(["--api", &api])
        .output()
        .await
        .expect("run turnpike pay");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = String::from_utf8(out.stdout.clone()).expect("utf-8 stdout");
    let body: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not the handler's JSON ({e}): {}", describe(&out)));
    assert_eq!(body["city"], "paris", "{}", describe(&out));
    assert_eq!(body["forecast"], "sunny", "{}", describe(&out));
    let cli_payment = body["paymentId"].as_str().expect("paymentId").to_owned();
    assert!(cli_payment.starts_with("pay_"), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("paid {WEATHER_PRICE} usd")) && stderr.contains(&cli_payment),
        "{}",
        describe(&out)
    );
    assert!(
        !stdout.contains(&agent_token) && !stderr.contains(&agent_token),
        "the agent token was printed"
    );
    assert_eq!(merchant.paid_calls(), 3);
    let payment = http
        .api(
            Method::GET,
            &format!("{api}/v1/payments/{cli_payment}"),
            &merchant_key,
            None,
        )
        .await
        .expect(200, "the CLI's payment");
    assert_eq!(payment["state"], "settled", "{payment}");
    let spent = 2 * WEATHER_PRICE + SUMMARIZE_PRICE;
    assert_eq!(
        payer_usd(&http, &api, &payer_key).await,
        (CREDIT - spent, spent, 0),
        "after turnpike pay"
    );
    let payments = http
        .api(
            Method::GET,
            &format!("{api}/v1/payments?limit=10"),
            &merchant_key,
            None,
        )
        .await
        .expect(200, "the merchant's payments");
    assert_eq!(
        payments["data"].as_array().map(Vec::len),
        Some(3),
        "{payments}"
    );

    // 6. Stop the server: the layer fails closed (503) and never runs the handler; the free
    // route is unaffected. Then the ledger the server wrote checks out.
    let server_log = server.log();
    server.stop().await;
    let down = http.send(Method::GET, &rome, &[], None).await;
    let problem = down.expect(503, "paid route with Turnpike down");
    assert_eq!(problem["type"], turnpike_client::UNAVAILABLE_PROBLEM_TYPE);
    assert_eq!(down.header_all(CACHE_CONTROL), ["no-store"]);
    let down = http
        .send(
            Method::GET,
            &rome,
            &[(AUTHORIZATION.as_str(), &authorization)],
            None,
        )
        .await;
    down.expect(503, "paid route with a credential and Turnpike down");
    assert!(down.header("payment-receipt").is_none());
    assert_eq!(
        merchant.paid_calls(),
        3,
        "the handler ran with Turnpike down"
    );
    let free = http.send(Method::GET, &format!("{shop}/"), &[], None).await;
    free.expect(200, "free route with Turnpike down");
    shop_task.abort();
    let out = turnpike_command()
        .args(["ledger", "check"])
        .args(db_args(db))
        .output()
        .await
        .expect("run turnpike ledger check");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n--- server log ---\n{server_log}",
        describe(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.trim_end().ends_with(": ok"), "{}", describe(&out));

    eprintln!("client_layer on {:?}: {:?}", db.kind, started.elapsed());
}
