//! Every size the parsers accept is bounded. The spec (§8.3 "Size Considerations") asks servers
//! to accept credentials of at least 4 KiB and to keep challenges under 8 KiB; these limits leave
//! room above that while keeping a hostile header cheap to refuse.

/// Longest `request` auth-param (the base64url string) a challenge may carry.
pub const REQUEST_PARAM_LEN_MAX: usize = 16 * 1024;
/// Longest `WWW-Authenticate` value (one line, possibly several comma-joined challenges).
pub const WWW_AUTHENTICATE_LEN_MAX: usize = 64 * 1024;
/// Most Payment challenges taken from one response.
pub const CHALLENGES_MAX: usize = 32;
/// Most auth-params in one challenge.
pub const AUTH_PARAMS_MAX: usize = 64;
/// Longest `Authorization` value we parse (the base64url token of a credential).
pub const CREDENTIAL_LEN_MAX: usize = 48 * 1024;
/// Longest `Payment-Receipt` value.
pub const RECEIPT_LEN_MAX: usize = 16 * 1024;
/// Longest `Accept-Payment` value.
pub const ACCEPT_PAYMENT_LEN_MAX: usize = 4 * 1024;
/// Most ranges read from one `Accept-Payment` value.
pub const ACCEPT_PAYMENT_RANGES_MAX: usize = 64;
/// Longest `id` a challenge may carry (an HMAC id is 43 characters).
pub const CHALLENGE_ID_LEN_MAX: usize = 256;
/// Shortest binding secret, in bytes (the reference SDKs require 32).
pub const BINDING_SECRET_LEN_MIN: usize = 32;
