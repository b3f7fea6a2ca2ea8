//! A small in-process fake of Turnpike's `POST /v1/challenges` and `POST /v1/verify` (canned
//! decisions, records what it received) and a merchant app wrapped in the payment layer.
//! Only for this crate's tests: the end-to-end test runs against the real server.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::{Value, json};
use turnpike_client::{ClientOptions, PaidRequest, PaymentLayer, TurnpikeClient};

/// The merchant's tenant key used by every test (a secret: must never leak).
pub const API_KEY: &str = "tp_sk_test_5ecret_never_shown";
/// A Payment credential (a secret: must never leak).
pub const CREDENTIAL_A: &str = "Payment eyJjaGFsbGVuZ2UiOnsiaWQiOiJhIn0sInBheWxvYWQiOnt9fQ";
/// A second Payment credential.
pub const CREDENTIAL_B: &str = "Payment eyJjaGFsbGVuZ2UiOnsiaWQiOiJiIn0sInBheWxvYWQiOnt9fQ";
/// The receipt the fake hands out on `paid`.
pub const RECEIPT: &str = "eyJzdGF0dXMiOiJzdWNjZXNzIiwicmVmZXJlbmNlIjoicGF5XzEyMyJ9";
/// The payment id the fake hands out on `paid`.
pub const PAYMENT_ID: &str = "pay_123";

/// Install the ring provider once per test binary (reqwest is built without one).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// What the fake received on one call.
#[derive(Debug, Clone)]
pub struct Received {
    /// `/v1/challenges` or `/v1/verify`.
    pub endpoint: &'static str,
    /// The JSON body.
    pub body: Value,
    /// The `Authorization` header (the API key).
    pub authorization: Option<String>,
    /// The `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
}

/// The fake's shared state.
pub struct FakeState {
    /// Answer to `POST /v1/challenges`: status and JSON body.
    pub challenge_answer: Mutex<(u16, Value)>,
    /// Answer to `POST /v1/verify`: status and JSON body.
    pub verify_answer: Mutex<(u16, Value)>,
    /// Delay before answering.
    pub delay: Mutex<Duration>,
    /// Every call, in order.
    pub received: Mutex<Vec<Received>>,
}

/// A running fake Turnpike.
pub struct FakeTurnpike {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its state.
    pub state: Arc<FakeState>,
}

impl FakeTurnpike {
    /// Start a fake that answers the canned decisions below.
    pub async fn start() -> Self {
        let state = Arc::new(FakeState {
            challenge_answer: Mutex::new((200, payment_required_decision())),
            verify_answer: Mutex::new((200, paid_decision())),
            delay: Mutex::new(Duration::ZERO),
            received: Mutex::new(Vec::new()),
        });
        let router = Router::new()
            .route("/v1/challenges", post(challenges))
            .route("/v1/verify", post(verify))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Self { addr, state }
    }

    /// The base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client for this fake.
    pub fn client(&self) -> TurnpikeClient {
        install_crypto_provider();
        TurnpikeClient::new(&self.url(), API_KEY).unwrap()
    }

    /// A client for this fake with a short timeout.
    pub fn client_with_timeout(&self, request_timeout: Duration) -> TurnpikeClient {
        install_crypto_provider();
        TurnpikeClient::with_options(&self.url(), API_KEY, ClientOptions { request_timeout })
            .unwrap()
    }

    /// Answer `/v1/challenges` with this.
    pub fn set_challenge_answer(&self, status: u16, body: Value) {
        *self.state.challenge_answer.lock().unwrap() = (status, body);
    }

    /// Answer `/v1/verify` with this.
    pub fn set_verify_answer(&self, status: u16, body: Value) {
        *self.state.verify_answer.lock().unwrap() = (status, body);
    }

    /// Wait this long before answering.
    pub fn set_delay(&self, delay: Duration) {
        *self.state.delay.lock().unwrap() = delay;
    }

    /// Every call received so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// The only call received (panics otherwise).
    pub fn only_call(&self) -> Received {
        let calls = self.received();
        assert_eq!(
            calls.len(),
            1,
            "expected one call to Turnpike, got {calls:?}"
        );
        calls.into_iter().next().unwrap()
    }
}

/// `POST /v1/challenges`.
async fn challenges(
    State(state): State<Arc<FakeState>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let answer = state.challenge_answer.lock().unwrap().clone();
    answer_with(&state, "/v1/challenges", &headers, body, answer).await
}

/// `POST /v1/verify`.
async fn verify(
    State(state): State<Arc<FakeState>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let answer = state.verify_answer.lock().unwrap().clone();
    answer_with(&state, "/v1/verify", &headers, body, answer).await
}

/// Record the call, wait, answer.
async fn answer_with(
    state: &FakeState,
    endpoint: &'static str,
    headers: &HeaderMap,
    body: Value,
    (status, answer): (u16, Value),
) -> Response {
    let header_text = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    state.received.lock().unwrap().push(Received {
        endpoint,
        body,
        authorization: header_text("authorization"),
        idempotency_key: header_text("idempotency-key"),
    });
    let delay = *state.delay.lock().unwrap();
    tokio::time::sleep(delay).await;
    let content_type = if status == 200 {
        "application/json"
    } else {
        "application/problem+json"
    };
    (
        StatusCode::from_u16(status).unwrap(),
        [(header::CONTENT_TYPE, content_type)],
        answer.to_string(),
    )
        .into_response()
}

/// A `payment_required` decision with two challenges, as docs/api.md shows it.
pub fn payment_required_decision() -> Value {
    json!({
        "decision": "payment_required",
        "status": 402,
        "headers": [
            ["WWW-Authenticate", "Payment id=\"ch_a\", realm=\"weather\", method=\"turnpike\", intent=\"charge\", request=\"e30\""],
            ["WWW-Authenticate", "Payment id=\"ch_b\", realm=\"weather\", method=\"stripe\", intent=\"charge\", request=\"e30\""],
            ["Cache-Control", "no-store"],
            ["Content-Type", "application/problem+json"]
        ],
        "body": {
            "type": "https://paymentauth.org/problems/payment-required",
            "title": "Payment Required",
            "status": 402,
            "challengeId": "ch_a"
        },
        "challengeIds": ["ch_a", "ch_b"]
    })
}

/// A `paid` decision.
pub fn paid_decision() -> Value {
    json!({
        "decision": "paid",
        "status": 200,
        "headers": [["Payment-Receipt", RECEIPT], ["Cache-Control", "private"]],
        "body": null,
        "paymentId": PAYMENT_ID
    })
}

/// What the merchant's handler saw on one call.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The `PaidRequest` extension.
    pub paid: Option<PaidRequest>,
    /// Its `Authorization` values.
    pub authorization: Vec<String>,
    /// Its body.
    pub body: Bytes,
}

/// The merchant under test and what its handlers saw.
pub struct Merchant {
    /// The app (routes: free `GET /`, paid `GET /weather/{city}`, `POST /summarize`, `GET /broken` → 500).
    pub app: Router,
    /// Every call that reached a paid handler.
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Merchant {
    /// A merchant whose paid routes sit behind `layer`.
    pub fn new(layer: PaymentLayer) -> Self {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::new(Mutex::new(Vec::new()));
        let paid = Router::new()
            .route("/weather/{city}", get(paid_handler))
            .route("/summarize", post(paid_handler))
            .route("/broken", get(broken_handler))
            .route_layer(layer)
            .layer(Extension(seen.clone()));
        let app = Router::new()
            .route("/", get(|| async { "free" }))
            .merge(paid);
        Self { app, seen }
    }

    /// Every call that reached a paid handler.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Send one request through the app.
    pub async fn send(&self, request: axum::http::Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
        use tower::ServiceExt as _;
        let response = self.app.clone().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        (parts.status, parts.headers, bytes)
    }
}

/// Record the request; answer 200 JSON with its own (public) caching.
async fn paid_handler(
    Extension(seen): Extension<Arc<Mutex<Vec<Seen>>>>,
    paid: Option<Extension<PaidRequest>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&seen, paid, &headers, body);
    (
        StatusCode::OK,
        [(header::CACHE_CONTROL, "public, max-age=60")],
        Json(json!({"ok": true})),
    )
        .into_response()
}

/// Record the request; answer 500.
async fn broken_handler(
    Extension(seen): Extension<Arc<Mutex<Vec<Seen>>>>,
    paid: Option<Extension<PaidRequest>>,
    headers: HeaderMap,
) -> Response {
    record(&seen, paid, &headers, Bytes::new());
    (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response()
}

/// Push one [`Seen`].
fn record(
    seen: &Mutex<Vec<Seen>>,
    paid: Option<Extension<PaidRequest>>,
    headers: &HeaderMap,
    body: Bytes,
) {
    seen.lock().unwrap().push(Seen {
        paid: paid.map(|Extension(p)| p),
        authorization: headers
            .get_all("authorization")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect(),
        body,
    });
}
