//! `example-merchant`: a small axum service whose routes are paid through Turnpike.
//!
//! Routes: `GET /` is free; `GET /weather/{city}` and `POST /summarize` (JSON `{"text": "…"}`)
//! sit behind `turnpike_client::PaymentLayer`, so a request without payment gets Turnpike's
//! `402` challenge and a paid one is served with a `Payment-Receipt`.
//!
//! Configuration (environment):
//!
//! | variable | default | |
//! |---|---|---|
//! | `TURNPIKE_URL` | `http://127.0.0.1:8402` | the Turnpike API |
//! | `TURNPIKE_API_KEY` | (required) | the merchant tenant's secret key `tp_sk_…` |
//! | `LISTEN` | `127.0.0.1:3000` | where this service listens |
//! | `RUST_LOG` | `info` | log filter (logs never hold keys, credentials or receipts) |
//!
//! Running it against a local Turnpike:
//!
//! 1. Start Turnpike: `turnpike demo`, or `turnpike serve --listen 127.0.0.1:8402` and create a
//!    tenant with the operator API (`POST /v1/admin/tenants {"name","slug"}` with
//!    `Authorization: Bearer $TURNPIKE_ADMIN_TOKEN`); keep the tenant's `apiKey.secret`:
//!    `export TURNPIKE_API_KEY=tp_sk_…`.
//! 2. Price the two paid routes (`POST /v1/prices`, amounts in minor units):
//!    ```sh
//!    for route in '{"method":"GET","path":"/weather/{city}"}' '{"method":"POST","path":"/summarize"}'; do
//!      curl -s http://127.0.0.1:8402/v1/prices \
//!        -H "Authorization: Bearer $TURNPIKE_API_KEY" -H 'Content-Type: application/json' \
//!        -d "{\"route\":$route,\"amount\":\"5\",\"currency\":\"usd\",\"methods\":[\"turnpike\"],\"intent\":\"charge\"}"
//!    done
//!    ```
//! 3. Run this service: `cargo run -p example-merchant`.
//! 4. `curl -i http://127.0.0.1:3000/weather/paris` answers `402` with
//!    `WWW-Authenticate: Payment …`. Pay that challenge (an agent token and
//!    `POST /v1/agent/pay`, or `turnpike pay`), then retry with the returned
//!    `Authorization: Payment …` header: `200`, the forecast and a `Payment-Receipt`.
//!
//! This example listens on plain HTTP for local use; MPP requires TLS in production.

use std::net::SocketAddr;
use std::process::ExitCode;

use axum::extract::Path;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use turnpike_client::{PaidRequest, PaymentLayer, TurnpikeClient};

/// The Turnpike URL used when `TURNPIKE_URL` is unset.
const TURNPIKE_URL_DEFAULT: &str = "http://127.0.0.1:8402";

/// The listen address used when `LISTEN` is unset.
const LISTEN_DEFAULT: &str = "127.0.0.1:3000";

/// The most words `POST /summarize` returns.
const SUMMARY_WORDS_MAX: usize = 12;

/// Settings read from the environment at start-up (no `Debug`: it holds the API key).
struct Config {
    /// `TURNPIKE_URL`.
    turnpike_url: String,
    /// `TURNPIKE_API_KEY` (never printed).
    turnpike_api_key: String,
    /// `LISTEN`.
    listen: SocketAddr,
}

impl Config {
    /// Read and validate the environment; the error is one line.
    fn from_env() -> Result<Self, String> {
        let turnpike_url =
            std::env::var("TURNPIKE_URL").unwrap_or_else(|_| TURNPIKE_URL_DEFAULT.to_owned());
        let turnpike_api_key = std::env::var("TURNPIKE_API_KEY")
            .ok()
            .filter(|key| !key.trim().is_empty())
            .ok_or("TURNPIKE_API_KEY is not set (the merchant tenant's secret key, tp_sk_...)")?;
        let listen_text = std::env::var("LISTEN").unwrap_or_else(|_| LISTEN_DEFAULT.to_owned());
        let listen = listen_text
            .parse()
            .map_err(|_| format!("LISTEN={listen_text:?} is not an address like 127.0.0.1:3000"))?;
        Ok(Self {
            turnpike_url,
            turnpike_api_key,
            listen,
        })
    }
}

/// The merchant's app: free routes merged with the paid ones behind the payment layer.
fn app(turnpike: TurnpikeClient) -> Router {
    let paid = Router::new()
        .route("/weather/{city}", get(weather))
        .route("/summarize", post(summarize))
        .route_layer(PaymentLayer::new(turnpike));
    Router::new().route("/", get(index)).merge(paid)
}

/// `GET /` (free): what this service sells.
async fn index() -> Json<Value> {
    Json(json!({
        "service": "example-merchant",
        "free": ["GET /"],
        "paid": ["GET /weather/{city}", "POST /summarize"],
    }))
}

/// `GET /weather/{city}` (paid): a made-up forecast.
async fn weather(Extension(paid): Extension<PaidRequest>, Path(city): Path<String>) -> Json<Value> {
    const FORECASTS: [&str; 4] = ["sunny", "cloudy", "rain", "windy"];
    let seed = city.bytes().fold(0_usize, |acc, b| {
        acc.wrapping_mul(31).wrapping_add(b.into())
    });
    let temperature_c = i64::try_from(seed % 35).unwrap_or(0) - 5;
    Json(json!({
        "city": city,
        "forecast": FORECASTS[seed % FORECASTS.len()],
        "temperatureC": temperature_c,
        "paymentId": paid.payment_id,
    }))
}

/// The body of `POST /summarize`.
#[derive(Debug, Deserialize)]
struct SummarizeRequest {
    /// The text to summarize.
    text: String,
}

/// `POST /summarize` (paid): the first words of the text.
async fn summarize(
    Extension(paid): Extension<PaidRequest>,
    Json(request): Json<SummarizeRequest>,
) -> Json<Value> {
    let words: Vec<&str> = request.text.split_whitespace().collect();
    let mut summary = words
        .iter()
        .take(SUMMARY_WORDS_MAX)
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    if words.len() > SUMMARY_WORDS_MAX {
        summary.push('…');
    }
    Json(json!({
        "summary": summary,
        "wordCount": words.len(),
        "paymentId": paid.payment_id,
    }))
}

/// Read the config, connect the client and serve until the process is stopped.
async fn run() -> Result<(), String> {
    let config = Config::from_env()?;
    let turnpike = TurnpikeClient::new(&config.turnpike_url, &config.turnpike_api_key)
        .map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    eprintln!(
        "example-merchant listening on http://{} (Turnpike at {})",
        config.listen,
        turnpike.base_url()
    );
    axum::serve(listener, app(turnpike))
        .await
        .map_err(|e| format!("server error: {e}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    // reqwest is built without a TLS crypto provider; an Err means one is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Shows why the layer failed closed (never secrets); `RUST_LOG` overrides the level.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("example-merchant: error: {message}");
            ExitCode::FAILURE
        }
    }
}
