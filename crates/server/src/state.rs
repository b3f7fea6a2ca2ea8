//! Shared server state: the store, the ledger engine, the signing keys, configuration, and the
//! ledger accounts every payment touches.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use turnpike_ledger::{AccountFlags, AccountId, AccountKind, NewAccount};
use turnpike_policy::{KeyRing, SigningKey};
use turnpike_rails::balance::{Issuer, IssuerError, SignedGrants};
use turnpike_store::{Store, StoreEngine, TenantRow};

use crate::cache::TtlCache;
use crate::pipeline::{PriceRef, Secrets};

use crate::error::ApiError;
use crate::ids;

/// The ledger book every Turnpike account lives in: money moves between tenants, so they share
/// one book and each account's owner is the tenant (or `platform`).
pub const LEDGER_BOOK: &str = "turnpike";
/// The owner of the platform's own accounts.
pub const PLATFORM_OWNER: &str = "platform";

/// Server configuration, validated at start-up.
#[derive(Clone)]
pub struct Config {
    /// The URL clients reach this server at (issuer of grants and tokens).
    pub public_url: String,
    /// Enables the operator API when set.
    pub admin_token: Option<String>,
    /// Platform fee on `turnpike` payments, in basis points of the amount.
    pub platform_fee_bps: u32,
    /// Longest wait for a gateway upstream.
    pub upstream_timeout: Duration,
    /// For tests only: the clock stands still and moves only by `POST /v1/admin/clock`.
    pub test_clock: bool,
    /// The key that seals rail secrets at rest (`TURNPIKE_SECRETS_KEY`); without it, rail
    /// configurations with secrets are refused.
    pub secrets_key: Option<crate::secrets::SecretsKey>,
    /// Store the platform's signing keys in clear when there is no `secrets_key`
    /// (`--allow-unsealed-signing-keys`, for development only). Off, a server without a
    /// secrets key refuses to start: it cannot keep a signing key sealed.
    pub allow_unsealed_signing_keys: bool,
    /// A bearer token that may read `/metrics` besides the admin token
    /// (`TURNPIKE_METRICS_TOKEN`); with neither, `/metrics` is `404`.
    pub metrics_token: Option<String>,
    /// Where gateway upstreams and rail RPCs may be: public addresses plus the operator's
    /// `--outbound-allow` ranges.
    pub outbound: turnpike_rails::outbound::OutboundPolicy,
    /// Connection cap and timeouts.
    pub connections: crate::connections::ConnectionLimits,
    /// Rate limits on authentication failures, challenges and verifications.
    pub rate_limits: crate::limits::RateLimits,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("public_url", &self.public_url)
            .field("admin_api", &self.admin_token.is_some())
            .field("platform_fee_bps", &self.platform_fee_bps)
            .field("upstream_timeout", &self.upstream_timeout)
            .field("test_clock", &self.test_clock)
            .field("secrets_key", &self.secrets_key.is_some())
            .field(
                "allow_unsealed_signing_keys",
                &self.allow_unsealed_signing_keys,
            )
            .field("metrics_token", &self.metrics_token.is_some())
            .field("outbound_allow", &self.outbound.allowed())
            .field("connections", &self.connections)
            .field("rate_limits", &self.rate_limits)
            .finish()
    }
}

/// Highest platform fee (100%).
pub const PLATFORM_FEE_BPS_MAX: u32 = 10_000;

/// State shared by every request (cheap to clone).
#[derive(Clone, Debug)]
pub struct AppState(Arc<Inner>);

#[derive(Debug)]
pub struct Inner {
    /// The database.
    pub store: Store,
    /// The ledger's posting engine.
    pub engine: StoreEngine,
    /// Configuration.
    pub config: Config,
    /// HTTP client for gateway upstreams.
    pub http: reqwest::Client,
    /// Read-mostly rows, cached per replica.
    pub caches: Caches,
    /// The hand-set clock of a server started with a test clock.
    pub test_clock: Option<Arc<turnpike_ledger::ManualClock>>,
    /// The settlement rails.
    pub rails: crate::rails::Rails,
    /// Hot wallets' last gas readings.
    pub gas: crate::rails::GasReadings,
    /// The deposit watcher's last readings.
    pub deposits: crate::deposits::DepositReadings,
    /// The rate limiters.
    pub limiters: crate::limits::Limiters,
    keys: RwLock<KeyRing>,
    /// The public side of `keys`, as the `turnpike` rail verifies grants with it.
    issuer: RwLock<Arc<Issuer>>,
    /// Grants signed here and not yet verified (their signatures need no second check).
    signed_grants: Arc<SignedGrants>,
    accounts_known: Mutex<HashSet<u128>>,
}

/// How long a replica trusts a cached API key, tenant, price list or binding secret list. A
/// change made through this replica applies at once; other replicas see it within this time.
pub const CACHE_TTL: Duration = Duration::from_secs(2);
/// Most entries per cache.
pub const CACHE_ENTRIES_MAX: usize = 10_000;

/// The per-replica caches.
#[derive(Debug)]
pub struct Caches {
    /// API key hash -> (tenant, key id).
    pub api_keys: TtlCache<String, (TenantRow, String)>,
    /// Tenant id -> binding secrets.
    pub secrets: TtlCache<String, Arc<Secrets>>,
    /// Tenant id -> live prices.
    pub prices: TtlCache<String, Arc<Vec<PriceRef>>>,
    /// (tenant, price, version) -> that version (immutable, so kept as long as room allows).
    pub price_versions: TtlCache<(String, String, i64), PriceRef>,
    /// Tenant id -> tenant.
    pub tenants: TtlCache<String, TenantRow>,
    /// Tenant slug -> tenant.
    pub slugs: TtlCache<String, TenantRow>,
    /// SHA-256 of an agent token -> its verified claims: the signature is checked once per
    /// token and minute, not on every call. Expiry is still checked on every call, and
    /// revocation in the database (never cached).
    pub agent_tokens: TtlCache<[u8; 32], turnpike_policy::AgentTokenClaims>,
    /// Agent id -> its current policy, compiled. A payment evaluated under a version that is no
    /// longer current is refused by the ledger transaction and re-read here.
    pub policies: TtlCache<String, crate::spend::AgentPolicy>,
    /// Token id -> its row, for `/v1/agent/pay` only (its revocation is read again in the
    /// payment's ledger transaction).
    pub token_rows: TtlCache<String, turnpike_store::AgentTokenRow>,
    /// Token id -> its own limits, compiled (they never change).
    pub token_limits: TtlCache<String, Option<Arc<turnpike_policy::policy::CompiledTokenLimits>>>,
    /// Tenants' `evm` rail configurations (secrets opened).
    pub evm_configs: TtlCache<String, Option<Arc<turnpike_rails::evm::EvmConfig>>>,
    /// Tenants' `tempo` rail configurations (secrets opened).
    pub tempo_configs: TtlCache<String, Option<Arc<turnpike_rails::tempo::TempoConfig>>>,
}

impl Caches {
    fn new() -> Self {
        Self {
            api_keys: TtlCache::new(CACHE_TTL, CACHE_ENTRIES_MAX),
            secrets: TtlCache::new(CACHE_TTL, CACHE_ENTRIES_MAX),
            prices: TtlCache::new(CACHE_TTL, CACHE_ENTRIES_MAX),
            price_versions: TtlCache::new(Duration::from_secs(3_600), CACHE_ENTRIES_MAX),
            tenants: TtlCache::new(CACHE_TTL, CACHE_ENTRIES_MAX),
            slugs: TtlCache::new(CACHE_TTL, CACHE_ENTRIES_MAX),
            agent_tokens: TtlCache::new(Duration::from_secs(60), CACHE_ENTRIES_MAX),
            policies: TtlCache::new(CACHE_TTL, CACHE_ENTRIES_MAX),
            token_limits: TtlCache::new(Duration::from_secs(3_600), CACHE_ENTRIES_MAX),
            token_rows: TtlCache::new(Duration::from_secs(60), CACHE_ENTRIES_MAX),
            evm_configs: TtlCache::new(CACHE_TTL, CACHE_ENTRIES_MAX),
            tempo_configs: TtlCache::new(CACHE_TTL, CACHE_ENTRIES_MAX),
        }
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Build the state: load (or create, on first start) the platform signing keys.
    pub async fn new(
        store: Store,
        engine: StoreEngine,
        config: Config,
        test_clock: Option<Arc<turnpike_ledger::ManualClock>>,
    ) -> anyhow::Result<Self> {
        let keys = load_keys(&store, &config, engine.now_ms()).await?;
        let signed_grants = Arc::new(SignedGrants::new());
        let issuer =
            issuer_of(&config, &keys, &signed_grants).map_err(|err| anyhow::anyhow!("{err}"))?;
        // Upstreams' DNS names resolve through the outbound policy (IP literals are checked
        // before each request: reqwest does not resolve them).
        let http = config
            .outbound
            .guard(reqwest::Client::builder())
            .timeout(config.upstream_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let rails = crate::rails::Rails::new(&config.outbound);
        let limiters = crate::limits::Limiters::new(&config.rate_limits);
        Ok(Self(Arc::new(Inner {
            store,
            engine,
            limiters,
            config,
            http,
            caches: Caches::new(),
            test_clock,
            rails,
            gas: crate::rails::GasReadings::default(),
            deposits: crate::deposits::DepositReadings::default(),
            keys: RwLock::new(keys),
            issuer: RwLock::new(issuer),
            signed_grants,
            accounts_known: Mutex::new(HashSet::new()),
        })))
    }

    /// The signing keys.
    pub fn keys(&self) -> KeyRing {
        match self.keys.read() {
            Ok(keys) => keys.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reload the signing keys (another replica may have created one).
    pub async fn reload_keys(&self) -> Result<KeyRing, ApiError> {
        let keys = load_keys(&self.store, &self.config, self.engine.now_ms())
            .await
            .map_err(|err| {
                tracing::error!(error = %err, "loading signing keys failed");
                ApiError::unavailable("signing keys unavailable")
            })?;
        let issuer = issuer_of(&self.config, &keys, &self.signed_grants).map_err(|err| {
            tracing::error!(error = %err, "the signing keys do not make an issuer");
            ApiError::internal()
        })?;
        match self.keys.write() {
            Ok(mut slot) => *slot = keys.clone(),
            Err(poisoned) => *poisoned.into_inner() = keys.clone(),
        }
        match self.issuer.write() {
            Ok(mut slot) => *slot = issuer,
            Err(poisoned) => *poisoned.into_inner() = issuer,
        }
        Ok(keys)
    }

    /// This platform as the issuer of `turnpike` grants: its public URL and public keys.
    pub fn issuer(&self) -> Arc<Issuer> {
        match self.issuer.read() {
            Ok(issuer) => issuer.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Record a grant just signed here (see [`SignedGrants`]).
    pub fn remember_grant(&self, grant: &str, exp_s: i64) {
        self.signed_grants
            .remember(grant, exp_s, self.now_ms().div_euclid(1000));
    }

    /// Reload the signing keys and return the issuer they make.
    pub async fn reload_issuer(&self) -> Result<Arc<Issuer>, ApiError> {
        self.reload_keys().await?;
        Ok(self.issuer())
    }

    /// A tenant by id, through the cache.
    pub async fn tenant(&self, id: &str) -> Result<Option<TenantRow>, ApiError> {
        if let Some(tenant) = self.caches.tenants.get(&id.to_owned()) {
            return Ok(Some(tenant));
        }
        let tenant = self.store.tenant(id).await?;
        if let Some(t) = &tenant {
            self.caches.tenants.insert(id.to_owned(), t.clone());
        }
        Ok(tenant)
    }

    /// A tenant by slug, through the cache.
    pub async fn tenant_by_slug(&self, slug: &str) -> Result<Option<TenantRow>, ApiError> {
        if let Some(tenant) = self.caches.slugs.get(&slug.to_owned()) {
            return Ok(Some(tenant));
        }
        let tenant = self.store.tenant_by_slug(slug).await?;
        if let Some(t) = &tenant {
            self.caches.slugs.insert(slug.to_owned(), t.clone());
        }
        Ok(tenant)
    }

    /// Refuse `url` (the request member `field`) as a destination of this server's outbound
    /// connections when the outbound policy does: a 400 naming the field and why, never the
    /// address. DNS names are resolved now (and again at every connection).
    pub async fn check_outbound(&self, field: &str, url: &str) -> Result<(), ApiError> {
        self.config.outbound.validate_url(url).await.map_err(|err| {
            ApiError::invalid(format!("`{field}` {err}")).with("field", field.into())
        })
    }

    /// Now, in unix ms (the ledger engine's clock).
    pub fn now_ms(&self) -> i64 {
        self.engine.now_ms()
    }

    /// The id of `owner`'s account of `kind` in `currency`, created on first use.
    pub async fn account(
        &self,
        owner: &str,
        kind: AccountKind,
        currency: &str,
    ) -> Result<AccountId, ApiError> {
        let id = AccountId(ids::derived_u128(&[
            "account",
            owner,
            kind.as_str(),
            currency,
        ]));
        let known = self
            .accounts_known
            .lock()
            .map(|set| set.contains(&id.0))
            .unwrap_or(false);
        if known {
            return Ok(id);
        }
        let flags = AccountFlags {
            debits_must_not_exceed_credits: kind == AccountKind::PayerBalance,
            credits_must_not_exceed_debits: false,
        };
        let new = NewAccount {
            id,
            tenant: LEDGER_BOOK.to_owned(),
            owner: owner.to_owned(),
            kind,
            currency: currency.to_owned(),
            flags,
        };
        match self.store.create_account(new, self.now_ms()).await? {
            Ok(_) => {
                if let Ok(mut set) = self.accounts_known.lock() {
                    set.insert(id.0);
                }
                Ok(id)
            }
            Err(err) => {
                tracing::error!(error = %err, "creating a ledger account failed");
                Err(ApiError::internal())
            }
        }
    }
}

/// The grant issuer of a key ring: its public keys as published in the JWKS.
fn issuer_of(
    config: &Config,
    keys: &KeyRing,
    signed: &Arc<SignedGrants>,
) -> Result<Arc<Issuer>, IssuerError> {
    Issuer::from_jwks(config.public_url.clone(), &keys.jwks())
        .map(|issuer| Arc::new(issuer.with_signed(signed.clone())))
}

/// The associated data a signing key is sealed with: its row.
fn signing_key_context(kid: &str) -> String {
    format!("signing_keys/{kid}")
}

/// Why a server cannot keep its signing keys: it has no secrets key and may not store them in
/// clear.
const NO_SECRETS_KEY: &str = "TURNPIKE_SECRETS_KEY is not set: the platform's Ed25519 signing \
    keys are sealed with it at rest. Set it (32 bytes: 64 hex digits), or start with \
    --allow-unsealed-signing-keys to keep them in clear (development only)";

/// The platform's signing keys, creating the first one (sealed with the secrets key) when there
/// is none. A key stored in clear (before sealing existed, or by a server started with
/// `--allow-unsealed-signing-keys`) is sealed in place once a secrets key is configured.
async fn load_keys(store: &Store, config: &Config, now_ms: i64) -> anyhow::Result<KeyRing> {
    let sealer = config.secrets_key.as_ref();
    if sealer.is_none() && !config.allow_unsealed_signing_keys {
        anyhow::bail!("{NO_SECRETS_KEY}");
    }
    let mut stored = store.signing_keys().await?;
    if stored.is_empty() {
        let key = SigningKey::generate();
        let der = key.to_pkcs8_der();
        let at_rest = match sealer {
            Some(sealer) => sealer.seal(&der, &signing_key_context(key.kid()))?,
            None => URL_SAFE_NO_PAD.encode(&der),
        };
        store
            .insert_signing_key(key.kid(), &at_rest, now_ms)
            .await?;
        stored = store.signing_keys().await?;
    }
    let mut keys = Vec::with_capacity(stored.len());
    for (kid, at_rest) in stored {
        let der = open_signing_key(store, sealer, &kid, &at_rest).await?;
        let key = SigningKey::from_pkcs8_der(&der)
            .map_err(|_| anyhow::anyhow!("signing key {kid} is not a PKCS#8 Ed25519 key"))?;
        keys.push(key);
    }
    if sealer.is_none() {
        tracing::warn!(
            "the platform's signing keys are stored in clear (--allow-unsealed-signing-keys): \
             set TURNPIKE_SECRETS_KEY to seal them"
        );
    }
    let mut keys = keys.into_iter();
    let current = keys
        .next()
        .ok_or_else(|| anyhow::anyhow!("no signing key"))?;
    Ok(KeyRing::new(current, keys.collect()))
}

/// A stored signing key's PKCS#8 DER: opened when sealed; decoded (and sealed in place, when a
/// secrets key is configured) when in clear.
async fn open_signing_key(
    store: &Store,
    sealer: Option<&crate::secrets::SecretsKey>,
    kid: &str,
    at_rest: &str,
) -> anyhow::Result<Vec<u8>> {
    let context = signing_key_context(kid);
    if crate::secrets::is_sealed(at_rest) {
        let sealer = sealer.ok_or_else(|| {
            anyhow::anyhow!("signing key {kid} is sealed and TURNPIKE_SECRETS_KEY is not set")
        })?;
        return sealer
            .open(at_rest, &context)
            .map_err(|err| anyhow::anyhow!("signing key {kid}: {err}"));
    }
    let der = URL_SAFE_NO_PAD
        .decode(at_rest.as_bytes())
        .map_err(|_| anyhow::anyhow!("signing key {kid} is not base64url"))?;
    if let Some(sealer) = sealer {
        let sealed = sealer.seal(&der, &context)?;
        // Compare-and-set: a replica that sealed it first wins, both seals open.
        if store.reseal_signing_key(kid, at_rest, &sealed).await? {
            tracing::info!(kid, "sealed a signing key stored in clear");
        }
    }
    Ok(der)
}
