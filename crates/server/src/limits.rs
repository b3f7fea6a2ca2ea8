//! Rate limits (the MPP core's SHOULD: challenge issuance and verification), and a limit on
//! authentication failures, each per client address and, where a key is known, per API key.
//!
//! Every limit is a GCRA token bucket ([`KeyedLimiter`]) in a bounded map. Over a limit the
//! answer is `429` problem+json (`https://turnpike.dev/problems/rate-limited`) with
//! `Retry-After` in seconds, and nothing is done: no challenge issued, no credential looked at,
//! no payment recorded.
//!
//! What is limited where:
//! - authentication failures (a wrong or unknown API key, agent token or admin token; a missing
//!   or malformed `Authorization`): per client address, in [`crate::auth`]. While an address is
//!   over its budget every authentication from it is refused before the credential is looked
//!   at, so a guesser learns nothing and a flood costs a map look-up, not a hash and a database
//!   query; another address is not affected.
//! - `POST /v1/challenges` and gateway requests without a Payment credential (they are answered
//!   with a 402 and fresh challenges): per client address ([`middleware`]) and, for
//!   `/v1/challenges`, per API key ([`Limiters::challenge_by_key`]).
//! - `POST /v1/verify` and gateway requests with a Payment credential: the same, with the
//!   verification limit.
//!
//! The client address is the TCP peer; `X-Forwarded-For` is read only when the operator says a
//! proxy in front sets it (`--trust-forwarded-for`). IPv6 clients are counted per /64, the
//! smallest block one subscriber is usually given.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Extensions, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::state::AppState;

/// Most keys (addresses or API keys) one limiter tracks. At the limit, keys whose bucket is
/// full again are dropped (they are the same as absent); if none is, the eighth of the keys
/// nearest to a full bucket is dropped.
pub const LIMITER_KEYS_MAX: usize = 100_000;
/// Default authentication failures allowed per client address and minute (also the burst).
pub const AUTH_FAILURES_PER_MIN_DEFAULT: u32 = 30;
/// Default challenge issuances per second, per client address and per API key.
pub const CHALLENGES_PER_S_DEFAULT: u32 = 1_000;
/// Default verifications per second, per client address and per API key.
pub const VERIFICATIONS_PER_S_DEFAULT: u32 = 1_000;
/// Default burst of a per-second limit, in seconds' worth of its rate.
pub const BURST_S_DEFAULT: u32 = 2;
/// The problem code of a refusal.
pub const RATE_LIMITED: &str = "rate-limited";

/// A rate: `count` events per `period`, `burst` of them at once. A `count` of 0 is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Events per period (0: unlimited).
    pub count: u32,
    /// The period.
    pub period: Duration,
    /// Events allowed at once from a full bucket (at least 1).
    pub burst: u32,
}

impl Rate {
    /// `count` per second with `burst`.
    pub fn per_second(count: u32, burst: u32) -> Self {
        Self {
            count,
            period: Duration::from_secs(1),
            burst: burst.max(1),
        }
    }

    /// `count` per minute, all of them at once.
    pub fn per_minute(count: u32) -> Self {
        Self {
            count,
            period: Duration::from_secs(60),
            burst: count.max(1),
        }
    }

    /// No limit.
    pub fn unlimited() -> Self {
        Self::per_second(0, 1)
    }
}

/// The rate limits of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Authentication failures per client address.
    pub auth_failures: Rate,
    /// Challenge issuances per client address and per API key.
    pub challenges: Rate,
    /// Verifications per client address and per API key.
    pub verifications: Rate,
    /// Take the client address from the last `X-Forwarded-For` entry (a trusted proxy sets it).
    pub trust_forwarded_for: bool,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            auth_failures: Rate::per_minute(AUTH_FAILURES_PER_MIN_DEFAULT),
            challenges: Rate::per_second(
                CHALLENGES_PER_S_DEFAULT,
                CHALLENGES_PER_S_DEFAULT * BURST_S_DEFAULT,
            ),
            verifications: Rate::per_second(
                VERIFICATIONS_PER_S_DEFAULT,
                VERIFICATIONS_PER_S_DEFAULT * BURST_S_DEFAULT,
            ),
            trust_forwarded_for: false,
        }
    }
}

impl RateLimits {
    /// No limit at all (tests and benchmarks).
    pub fn unlimited() -> Self {
        Self {
            auth_failures: Rate::unlimited(),
            challenges: Rate::unlimited(),
            verifications: Rate::unlimited(),
            trust_forwarded_for: false,
        }
    }
}

/// A GCRA token bucket per key, in a map of at most [`LIMITER_KEYS_MAX`] keys.
#[derive(Debug)]
pub struct KeyedLimiter<K> {
    /// Nanoseconds between two events at the sustained rate (0: unlimited).
    interval_ns: u64,
    /// Nanoseconds of credit a full bucket holds (`burst` intervals).
    capacity_ns: u64,
    keys_max: usize,
    epoch: Instant,
    /// Key -> theoretical arrival time (ns since `epoch`): the bucket is full at or after it.
    tats: Mutex<HashMap<K, u64>>,
}

impl<K: Eq + Hash + Clone> KeyedLimiter<K> {
    /// A limiter of `rate` tracking at most `keys_max` keys.
    pub fn new(rate: Rate, keys_max: usize) -> Self {
        let interval_ns = if rate.count == 0 {
            0
        } else {
            u64::try_from(rate.period.as_nanos() / u128::from(rate.count)).unwrap_or(u64::MAX)
        };
        Self {
            interval_ns,
            capacity_ns: interval_ns.saturating_mul(u64::from(rate.burst.max(1))),
            keys_max: keys_max.max(1),
            epoch: Instant::now(),
            tats: Mutex::new(HashMap::new()),
        }
    }

    /// Whether this limiter limits anything.
    pub fn is_on(&self) -> bool {
        self.interval_ns > 0
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Take one event for `key`; `Err` is how long until one would be allowed.
    pub fn take(&self, key: &K) -> Result<(), Duration> {
        self.decide(key, true)
    }

    /// Whether one event for `key` would be allowed now, without taking it.
    pub fn peek(&self, key: &K) -> Result<(), Duration> {
        self.decide(key, false)
    }

    fn decide(&self, key: &K, take: bool) -> Result<(), Duration> {
        if !self.is_on() {
            return Ok(());
        }
        let now = self.now_ns();
        let Ok(mut tats) = self.tats.lock() else {
            return Ok(());
        };
        let tat = tats.get(key).copied().unwrap_or(now).max(now);
        let next = tat.saturating_add(self.interval_ns);
        if next - now > self.capacity_ns {
            return Err(Duration::from_nanos(next - now - self.capacity_ns));
        }
        if take {
            if !tats.contains_key(key) && tats.len() >= self.keys_max {
                self.evict(&mut tats, now);
            }
            tats.insert(key.clone(), next);
        }
        Ok(())
    }

    /// Make room: drop keys whose bucket is full again, else the eighth nearest to full.
    fn evict(&self, tats: &mut HashMap<K, u64>, now: u64) {
        tats.retain(|_, tat| *tat > now);
        if tats.len() < self.keys_max {
            return;
        }
        let mut by_tat: Vec<(u64, K)> = tats.iter().map(|(k, t)| (*t, k.clone())).collect();
        let drop_count = (self.keys_max / 8).max(1);
        by_tat.select_nth_unstable_by_key(drop_count - 1, |(tat, _)| *tat);
        for (_, key) in by_tat.into_iter().take(drop_count) {
            tats.remove(&key);
        }
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.tats.lock().map(|t| t.len()).unwrap_or(0)
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A client as the limits count it: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(u128);

impl ClientKey {
    /// The key of `ip` (IPv4-mapped IPv6 counts as IPv4).
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => Self((u128::from(v6) & !u128::from(u64::MAX)) | 1),
        }
    }
}

/// The client's address: the TCP peer (set by [`crate::serve`]), or with `trust_forwarded_for`
/// the last `X-Forwarded-For` entry. `None` for a request that did not come over a socket
/// (in-process tests), which is not limited by address.
pub fn client_ip(
    headers: &HeaderMap,
    extensions: &Extensions,
    trust_forwarded_for: bool,
) -> Option<IpAddr> {
    if trust_forwarded_for
        && let Some(ip) = headers
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse::<IpAddr>().ok())
    {
        return Some(ip);
    }
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

/// A 429 `rate-limited` problem with `Retry-After` (whole seconds, at least 1).
pub fn rate_limited(what: &str, wait: Duration) -> ApiError {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let seconds = seconds.max(1);
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        RATE_LIMITED,
        format!("too many {what}; retry in {seconds} s"),
    )
    .retry_after(seconds)
}

/// Every limiter of a server.
#[derive(Debug)]
pub struct Limiters {
    trust_forwarded_for: bool,
    auth_failures: KeyedLimiter<ClientKey>,
    challenges_by_client: KeyedLimiter<ClientKey>,
    challenges_by_key: KeyedLimiter<String>,
    verifications_by_client: KeyedLimiter<ClientKey>,
    verifications_by_key: KeyedLimiter<String>,
}

/// What a request spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spend {
    /// A challenge issuance.
    Challenge,
    /// A verification.
    Verification,
}

impl Limiters {
    /// Limiters for `limits`.
    pub fn new(limits: &RateLimits) -> Self {
        Self {
            trust_forwarded_for: limits.trust_forwarded_for,
            auth_failures: KeyedLimiter::new(limits.auth_failures, LIMITER_KEYS_MAX),
            challenges_by_client: KeyedLimiter::new(limits.challenges, LIMITER_KEYS_MAX),
            challenges_by_key: KeyedLimiter::new(limits.challenges, LIMITER_KEYS_MAX),
            verifications_by_client: KeyedLimiter::new(limits.verifications, LIMITER_KEYS_MAX),
            verifications_by_key: KeyedLimiter::new(limits.verifications, LIMITER_KEYS_MAX),
        }
    }

    /// The client of a request, as the limits count it.
    pub fn client(&self, headers: &HeaderMap, extensions: &Extensions) -> Option<ClientKey> {
        client_ip(headers, extensions, self.trust_forwarded_for).map(ClientKey::of)
    }

    /// Refuse an authentication from `client` while it is over its failure budget.
    pub fn auth_gate(&self, client: Option<ClientKey>) -> Result<(), ApiError> {
        match client {
            Some(client) => self
                .auth_failures
                .peek(&client)
                .map_err(|wait| rate_limited("authentication failures from this address", wait)),
            None => Ok(()),
        }
    }

    /// Count an authentication failure of `client`.
    pub fn auth_failed(&self, client: Option<ClientKey>) {
        if let Some(client) = client {
            let _ = self.auth_failures.take(&client);
        }
    }

    /// Spend one `spend` of `client`.
    pub fn by_client(&self, spend: Spend, client: Option<ClientKey>) -> Result<(), ApiError> {
        let Some(client) = client else { return Ok(()) };
        let (limiter, what) = match spend {
            Spend::Challenge => (&self.challenges_by_client, "challenges for this address"),
            Spend::Verification => (
                &self.verifications_by_client,
                "verifications for this address",
            ),
        };
        limiter
            .take(&client)
            .map_err(|wait| rate_limited(what, wait))
    }

    /// Spend one challenge issuance of API key `key_id`.
    pub fn challenge_by_key(&self, key_id: &str) -> Result<(), ApiError> {
        Self::by_key(
            &self.challenges_by_key,
            key_id,
            "challenges for this API key",
        )
    }

    /// Spend one verification of API key `key_id`.
    pub fn verification_by_key(&self, key_id: &str) -> Result<(), ApiError> {
        Self::by_key(
            &self.verifications_by_key,
            key_id,
            "verifications for this API key",
        )
    }

    fn by_key(limiter: &KeyedLimiter<String>, key_id: &str, what: &str) -> Result<(), ApiError> {
        if !limiter.is_on() {
            return Ok(());
        }
        limiter
            .take(&key_id.to_owned())
            .map_err(|wait| rate_limited(what, wait))
    }
}

/// What a request spends by its route: `POST /v1/challenges`, `POST /v1/verify`, and the
/// gateway (a Payment credential: a verification; none: a 402 with challenges). The gateway's
/// discovery document is not a challenge.
pub fn spend_of(method: &Method, path: &str, headers: &HeaderMap) -> Option<Spend> {
    if method == Method::POST && path == "/v1/challenges" {
        return Some(Spend::Challenge);
    }
    if method == Method::POST && path == "/v1/verify" {
        return Some(Spend::Verification);
    }
    let rest = path.strip_prefix("/gw/")?;
    let is_document = rest
        .split_once('/')
        .is_some_and(|(_, p)| p == "openapi.json");
    if is_document && (method == Method::GET || method == Method::HEAD) {
        return None;
    }
    // The gateway's own test for a credential (any `Authorization` naming "payment").
    let has_credential = headers
        .get_all(axum::http::header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("payment"));
    Some(if has_credential {
        Spend::Verification
    } else {
        Spend::Challenge
    })
}

/// The per-address limits of challenge issuance and verification, before anything else runs.
pub async fn middleware(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(spend) = spend_of(request.method(), request.uri().path(), request.headers()) {
        let client = state
            .limiters
            .client(request.headers(), request.extensions());
        if let Err(err) = state.limiters.by_client(spend, client) {
            return err.into_response();
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_allows_the_burst_then_the_rate() {
        let limiter = KeyedLimiter::new(Rate::per_second(10, 3), 10);
        for _ in 0..3 {
            assert_eq!(limiter.take(&1), Ok(()));
        }
        let wait = limiter.take(&1).expect_err("over the burst");
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        assert_eq!(limiter.take(&2), Ok(()), "another key has its own bucket");
        std::thread::sleep(Duration::from_millis(110));
        assert_eq!(limiter.take(&1), Ok(()));
        assert!(limiter.take(&1).is_err());
    }

    #[test]
    fn peek_takes_nothing() {
        let limiter = KeyedLimiter::new(Rate::per_minute(2), 10);
        for _ in 0..5 {
            assert_eq!(limiter.peek(&"a"), Ok(()));
        }
        assert_eq!(limiter.take(&"a"), Ok(()));
        assert_eq!(limiter.take(&"a"), Ok(()));
        let wait = limiter.peek(&"a").expect_err("spent");
        assert!(wait > Duration::from_secs(29) && wait <= Duration::from_secs(30));
    }

    #[test]
    fn zero_is_unlimited() {
        let limiter = KeyedLimiter::new(Rate::unlimited(), 1);
        for i in 0..1_000 {
            assert_eq!(limiter.take(&i), Ok(()));
        }
        assert!(limiter.is_empty());
    }

    #[test]
    fn the_map_stays_bounded_and_keeps_the_most_limited_keys() {
        let limiter = KeyedLimiter::new(Rate::per_minute(1), 16);
        assert_eq!(limiter.take(&0), Ok(()));
        for i in 1..1_000 {
            let _ = limiter.take(&i);
            assert!(limiter.len() <= 16);
        }
        // Key 0 was nearest to a full bucket, so it was dropped; the newest key is kept.
        assert!(limiter.take(&999).is_err());
        assert_eq!(limiter.take(&0), Ok(()));
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ClientKey::of(a), ClientKey::of(b));
        assert_ne!(ClientKey::of(a), ClientKey::of(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(ClientKey::of(mapped), ClientKey::of(v4));
        assert_ne!(ClientKey::of(v4), ClientKey::of("::".parse().unwrap()));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let err = rate_limited("x", Duration::from_millis(1_200));
        assert_eq!(err.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(err.extra.and_then(|e| e.retry_after_s), Some(2));
        let err = rate_limited("x", Duration::from_millis(1));
        assert_eq!(err.extra.and_then(|e| e.retry_after_s), Some(1));
    }

    #[test]
    fn routes_spend_what_they_issue_or_verify() {
        let none = HeaderMap::new();
        let mut paying = HeaderMap::new();
        paying.insert("authorization", "Payment abc".parse().unwrap());
        let post = Method::POST;
        let get = Method::GET;
        assert_eq!(
            spend_of(&post, "/v1/challenges", &none),
            Some(Spend::Challenge)
        );
        assert_eq!(
            spend_of(&post, "/v1/verify", &none),
            Some(Spend::Verification)
        );
        assert_eq!(spend_of(&get, "/gw/m/x", &none), Some(Spend::Challenge));
        assert_eq!(
            spend_of(&get, "/gw/m/x", &paying),
            Some(Spend::Verification)
        );
        assert_eq!(spend_of(&get, "/gw/m/openapi.json", &none), None);
        assert_eq!(
            spend_of(&post, "/gw/m/openapi.json", &none),
            Some(Spend::Challenge)
        );
        assert_eq!(spend_of(&get, "/v1/payments", &none), None);
        assert_eq!(spend_of(&get, "/v1/challenges", &none), None);
    }
}
