//! `turnpike-server`: Turnpike's HTTP API (axum). Tenants and API keys, the price catalog,
//! `/v1/challenges` and `/v1/verify` (the verify pipeline), the `turnpike` balance method
//! (agents, tokens, `/v1/agent/pay`), and the gateway. See `docs/api.md`.

pub mod auth;
pub mod cache;
pub mod catalog;
pub mod connections;
pub mod decision;
pub mod deliveries;
pub mod deposits;
pub mod error;
pub mod http;
pub mod ids;
pub mod limits;
pub mod method_turnpike;
pub mod pipeline;
pub mod rails;
pub mod refunds;
pub mod secrets;
pub mod spend;
pub mod state;
pub mod wallets;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::{Router, middleware};
use tokio::net::TcpListener;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use turnpike_ledger::{Clock as _, Engine, EngineConfig, ManualClock, SystemClock};
use turnpike_store::{Store, StoreEngine, spawn_expiry_sweeper};

pub use decision::{Decision, DecisionKind};
pub use error::ApiError;
pub use state::{AppState, Config};

/// Largest request body any route reads.
pub const BODY_BYTES_MAX: usize = 1 << 20;
/// How often due reservations are voided.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(500);
/// Most reservations voided per sweep.
pub const SWEEP_BATCH_MAX: usize = 1_000;

/// The application: every route with its middleware.
pub fn app(state: AppState) -> Router {
    http::router()
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limits::middleware,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            connections::request_timeout,
        ))
        .with_state(state)
        .layer(middleware::from_fn(http::body_limit))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

/// Start the ledger engine and the expiry sweeper over `store`, and build the state.
pub async fn start(store: Store, config: Config) -> anyhow::Result<AppState> {
    let test_clock = config
        .test_clock
        .then(|| Arc::new(ManualClock::new(SystemClock.now_ms())));
    let mut engine_config = EngineConfig::default();
    if let Some(clock) = &test_clock {
        tracing::warn!("test clock: time stands still and moves only by POST /v1/admin/clock");
        engine_config.clock = clock.clone();
    }
    let engine = start_engine(&store, engine_config).await?;
    spawn_expiry_sweeper(
        store.clone(),
        engine.clone(),
        SWEEP_INTERVAL,
        SWEEP_BATCH_MAX,
    );
    let state = AppState::new(store, engine, config, test_clock).await?;
    rails::spawn_jobs(state.clone());
    deliveries::spawn_job(state.clone());
    deposits::spawn_watcher(state.clone());
    Ok(state)
}

/// Start the ledger engine's writer on a thread of its own, with its own connections: on the
/// request runtime it would wait its turn behind the HTTP tasks at each of a batch's
/// statements, and every payment waits for its batch.
async fn start_engine(store: &Store, config: EngineConfig) -> anyhow::Result<StoreEngine> {
    let store = store.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("ledger-writer".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    let _ = tx.send(Err(anyhow::Error::from(err)));
                    return;
                }
            };
            runtime.block_on(async move {
                match store.reconnect_writer().await {
                    Ok(own) => {
                        let _ = tx.send(Ok(Engine::start(Arc::new(own), config)));
                        // The writer runs here for the life of the process.
                        std::future::pending::<()>().await;
                    }
                    Err(err) => {
                        let _ = tx.send(Err(anyhow::Error::from(err)));
                    }
                }
            });
        })?;
    rx.await
        .map_err(|_| anyhow::anyhow!("the ledger writer thread stopped"))?
}

/// Serve on `listener` under the configured connection limits until `shutdown` resolves, then
/// finish the requests in flight (see [`connections`]).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let limits = state.config.connections;
    connections::serve(listener, app(state), limits, shutdown).await
}
