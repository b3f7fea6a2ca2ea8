//! `turnpike-policy`: the payer side of the `turnpike` payment method.
//!
//! Turnpike signs two kinds of compact JWS (RFC 7515) with Ed25519 (`alg: EdDSA`):
//!
//! | token | JOSE `typ` | claims | signed by | verified on |
//! |---|---|---|---|---|
//! | agent token | [`AGENT_TOKEN_TYP`] | [`AgentTokenClaims`] | `POST /v1/agents/{id}/tokens` | every `/v1/agent/...` call |
//! | payment grant | [`GRANT_TYP`] | [`GrantClaims`] | `POST /v1/agent/pay` | `POST /v1/verify` (hot path) |
//!
//! A [`KeyRing`] holds the current [`SigningKey`] and the older ones that still verify, and
//! publishes their public halves as a JWKS (`GET /.well-known/jwks.json`). Verification is
//! strict: exact `typ` (an agent token is never a grant and vice versa), `alg: EdDSA` only, a
//! known `kid`, a valid signature, then `exp` and `iat` against a caller-supplied clock.
//!
//! Secrets (private keys, tokens) never appear in `Debug` output or error messages.
//!
//! [`policy`] holds agent spend policies and their pure evaluation ([`policy::evaluate`]).

mod jws;
pub mod keys;
pub mod policy;
pub mod tokens;

pub use keys::{KeyError, KeyRing, SigningKey};
pub use policy::{
    CompiledPolicy, CompiledTokenLimits, Decision, NarrowError, Policy, PolicyError, Reason,
    SpendRequest, TokenLimits, Usage, evaluate, usage_windows,
};
pub use tokens::{AgentTokenClaims, GrantClaims, Money, TokenError};

/// JOSE `typ` of an agent token.
pub const AGENT_TOKEN_TYP: &str = "tp-agent+jwt";
/// JOSE `typ` of a `turnpike` payment grant.
pub const GRANT_TYP: &str = "tp-grant+jwt";
/// How far in the future a token's `iat` may be before it is refused, in seconds.
pub const MAX_IAT_SKEW_S: i64 = 60;
/// The longest token accepted for verification, in bytes; longer input is `Malformed`.
pub const MAX_TOKEN_LEN_BYTES: usize = 4096;
