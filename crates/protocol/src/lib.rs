//! `turnpike-protocol`: the Machine Payments Protocol wire format.
//!
//! Everything here follows `draft-httpauth-payment-00` (the "Payment" HTTP authentication
//! scheme) and `draft-payment-intent-charge-00`. The crate does no I/O and has no async code:
//! it parses and formats headers, computes and checks the challenge binding, digests bodies,
//! negotiates `Accept-Payment` and names the problem types. Parsers never panic on any input
//! and every input size is bounded (see [`limits`]).
//!
//! | header | type |
//! |---|---|
//! | `WWW-Authenticate: Payment …` | [`Challenge`] ([`parse_challenges`], [`Challenge::to_header_value`]) |
//! | `Authorization: Payment …` | [`Credential`] ([`Credential::parse`], [`find_payment_credential`]) |
//! | `Payment-Receipt` | [`Receipt`] |
//! | `Accept-Payment` | [`AcceptPayment`] |
//! | `Content-Digest` / challenge `digest` | [`ContentDigest`] |

pub mod accept_payment;
pub mod auth_params;
pub mod b64;
pub mod binding;
pub mod challenge;
pub mod charge;
pub mod credential;
pub mod currency;
pub mod digest;
pub mod jcs;
pub mod limits;
pub mod problem;
pub mod receipt;

pub use accept_payment::{AcceptPayment, PaymentRange};
pub use binding::{BindingError, BindingKeyring, BindingSecret};
pub use challenge::{Challenge, ChallengeError, parse_challenges, parse_challenges_from_lines};
pub use charge::{ChargeRequest, ChargeRequestError};
pub use credential::{ChallengeEcho, Credential, CredentialError, find_payment_credential};
pub use digest::{ContentDigest, DigestError};
pub use problem::{Problem, ProblemType};
pub use receipt::{Receipt, ReceiptError};

/// The authentication scheme name, as registered (`draft-httpauth-payment-00` §5).
/// Compared case-insensitively on input; always emitted in this spelling.
pub const SCHEME: &str = "Payment";
