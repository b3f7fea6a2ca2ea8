//! `turnpike-client`: the merchant SDK for Turnpike, the hosted MPP (HTTP 402) control plane.
//!
//! Two pieces:
//!
//! - [`TurnpikeClient`]: the tenant API calls a merchant makes per paid request,
//!   `POST /v1/challenges` ([`TurnpikeClient::challenge`]) and `POST /v1/verify`
//!   ([`TurnpikeClient::verify`]), each answering a [`Decision`] to forward to the caller.
//! - [`PaymentLayer`]: a [`tower::Layer`] that puts routes behind that flow. A request without an
//!   `Authorization: Payment` credential gets Turnpike's 402 challenge; a request with one is
//!   verified, and only a `paid` decision reaches the wrapped service, which finds a
//!   [`PaidRequest`] in the request extensions. Its 2xx response gets the `Payment-Receipt` and
//!   `Cache-Control: private` headers. When Turnpike cannot be reached or answers an error the
//!   layer fails closed with `503` (`https://turnpike.dev/problems/unavailable`).
//!
//! TLS: the workspace builds `reqwest` with `rustls-no-provider`, so the process must install a
//! rustls crypto provider before [`TurnpikeClient::new`] (which returns
//! [`ClientError::Config`] otherwise), for `http://` and `https://` base URLs alike:
//! `rustls::crypto::ring::default_provider().install_default()` at the top of `main`.
//!
//! Secrets: the API key, `Authorization: Payment` credentials and `Payment-Receipt` values never
//! appear in `Debug` output, logs or error messages produced by this crate.
//!
//! ```no_run
//! use axum::{Router, routing::get, Extension};
//! use turnpike_client::{PaidRequest, PaymentLayer, TurnpikeClient};
//!
//! async fn weather(Extension(paid): Extension<PaidRequest>) -> String {
//!     format!("sunny (payment {})", paid.payment_id)
//! }
//!
//! # fn build() -> Result<Router, turnpike_client::ClientError> {
//! let _ = rustls::crypto::ring::default_provider().install_default();
//! let turnpike = TurnpikeClient::new("http://127.0.0.1:8402", "tp_sk_...")?;
//! let paid = Router::new()
//!     .route("/weather/{city}", get(weather))
//!     .route_layer(PaymentLayer::new(turnpike));
//! let app = Router::new().route("/", get(|| async { "free" })).merge(paid);
//! # Ok(app)
//! # }
//! ```

mod client;
mod decision;
mod error;
mod layer;

pub use client::{ClientOptions, DEFAULT_REQUEST_TIMEOUT, RESPONSE_BYTES_MAX, TurnpikeClient};
pub use decision::{ChallengeQuery, Decision, DecisionKind, VerifyQuery};
pub use error::ClientError;
pub use layer::{
    BODY_BYTES_MAX, PaidRequest, PaymentLayer, PaymentService, UNAVAILABLE_PROBLEM_TYPE,
};
