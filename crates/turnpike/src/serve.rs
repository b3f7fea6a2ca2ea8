//! `turnpike serve` and `turnpike admin ...`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use turnpike_rails::outbound::OutboundPolicy;
use turnpike_server::connections::{
    ConnectionLimits, FDS_RESERVED, MAX_CONNECTIONS_MAX, open_files_limit,
};
use turnpike_server::http::admin::{NewTenant, create_tenant, tenant_json};
use turnpike_server::limits::{BURST_S_DEFAULT, Rate, RateLimits};
use turnpike_server::{AppState, Config};

use crate::db::DbArgs;

/// Shortest admin token accepted (it guards the operator API).
pub const ADMIN_TOKEN_LEN_MIN: usize = 16;

/// Options of `turnpike serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "TURNPIKE_LISTEN", default_value = "127.0.0.1:8402")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub db: DbArgs,
    /// The URL clients reach this server at (default: http://LISTEN).
    #[arg(long, env = "TURNPIKE_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Platform fee on `turnpike` payments, in basis points (100 = 1%).
    #[arg(long, env = "TURNPIKE_PLATFORM_FEE_BPS", default_value_t = 0)]
    pub platform_fee_bps: u32,
    /// Longest wait for a gateway upstream, in seconds.
    #[arg(long, default_value_t = 30)]
    pub upstream_timeout_s: u64,
    /// Address ranges (CIDR, comma-separated) that gateway upstreams and rail RPCs may be in
    /// besides public addresses, e.g. `10.0.0.0/8` or `127.0.0.0/8,::1/128`. Default: none
    /// (loopback, private, link-local and other non-public addresses are refused).
    #[arg(long, env = "TURNPIKE_OUTBOUND_ALLOW", value_delimiter = ',')]
    pub outbound_allow: Vec<String>,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// A bearer token that may read `/metrics` (the admin token may too); with neither set,
    /// `/metrics` is `404`. At least 16 characters.
    #[arg(long, env = "TURNPIKE_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Keep the platform's signing keys in clear when TURNPIKE_SECRETS_KEY is not set
    /// (development only; without this switch such a server refuses to start).
    #[arg(long, env = "TURNPIKE_ALLOW_UNSEALED_SIGNING_KEYS")]
    pub allow_unsealed_signing_keys: bool,
    /// For tests only: the clock stands still and moves only by `POST /v1/admin/clock`
    /// (needs TURNPIKE_ADMIN_TOKEN).
    #[arg(long, hide = true)]
    pub test_clock: bool,
}

/// Longest timeout any `--*-timeout-s` accepts.
pub const TIMEOUT_S_MAX: u64 = 3_600;

/// Connection limits, timeouts and rate limits of `turnpike serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Most connections open at once; further ones wait to be accepted [default: the open-file
    /// limit less 256, between 64 and 10000].
    #[arg(long, env = "TURNPIKE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Seconds for a request's head to arrive (from its first byte, or from the connection's
    /// opening for its first request); then the connection is closed.
    #[arg(long, env = "TURNPIKE_HEADER_TIMEOUT_S", default_value_t = 10)]
    pub header_timeout_s: u64,
    /// Seconds an idle keep-alive connection stays open.
    #[arg(long, env = "TURNPIKE_KEEP_ALIVE_TIMEOUT_S", default_value_t = 75)]
    pub keep_alive_timeout_s: u64,
    /// Seconds to answer a request, its body read included, else `408`; must exceed
    /// --upstream-timeout-s [default: --upstream-timeout-s + 10].
    #[arg(long, env = "TURNPIKE_REQUEST_TIMEOUT_S")]
    pub request_timeout_s: Option<u64>,
    /// Authentication failures allowed per client address and minute (0: no limit).
    #[arg(long, env = "TURNPIKE_RATE_LIMIT_AUTH_FAILURES", default_value_t = 30)]
    pub rate_limit_auth_failures: u32,
    /// Challenge issuances per second, per client address and per API key (0: no limit).
    #[arg(long, env = "TURNPIKE_RATE_LIMIT_CHALLENGES", default_value_t = turnpike_server::limits::CHALLENGES_PER_S_DEFAULT)]
    pub rate_limit_challenges: u32,
    /// Challenge issuances allowed at once [default: twice the rate].
    #[arg(long, env = "TURNPIKE_RATE_LIMIT_CHALLENGES_BURST")]
    pub rate_limit_challenges_burst: Option<u32>,
    /// Verifications per second, per client address and per API key (0: no limit).
    #[arg(long, env = "TURNPIKE_RATE_LIMIT_VERIFICATIONS", default_value_t = turnpike_server::limits::VERIFICATIONS_PER_S_DEFAULT)]
    pub rate_limit_verifications: u32,
    /// Verifications allowed at once [default: twice the rate].
    #[arg(long, env = "TURNPIKE_RATE_LIMIT_VERIFICATIONS_BURST")]
    pub rate_limit_verifications_burst: Option<u32>,
    /// Count clients by the last `X-Forwarded-For` address, not the TCP peer: only behind a
    /// proxy that sets that header and that clients cannot reach past.
    #[arg(long, env = "TURNPIKE_TRUST_FORWARDED_FOR")]
    pub trust_forwarded_for: bool,
}

fn timeout(flag: &str, seconds: u64) -> anyhow::Result<Duration> {
    if !(1..=TIMEOUT_S_MAX).contains(&seconds) {
        anyhow::bail!("--{flag} must be 1 to {TIMEOUT_S_MAX} seconds");
    }
    Ok(Duration::from_secs(seconds))
}

fn per_second(rate: u32, burst: Option<u32>) -> Rate {
    Rate::per_second(
        rate,
        burst.unwrap_or_else(|| rate.saturating_mul(BURST_S_DEFAULT)),
    )
}

impl LimitArgs {
    /// The connection limits, for a gateway that waits `upstream_timeout` for an upstream.
    pub fn connections(&self, upstream_timeout: Duration) -> anyhow::Result<ConnectionLimits> {
        let mut limits = ConnectionLimits::defaults(upstream_timeout);
        if let Some(max) = self.max_connections {
            if !(1..=MAX_CONNECTIONS_MAX).contains(&max) {
                anyhow::bail!("--max-connections must be 1 to {MAX_CONNECTIONS_MAX}");
            }
            if let Some(files) = open_files_limit()
                && max.saturating_add(FDS_RESERVED) > files
            {
                tracing::warn!(
                    "--max-connections {max} leaves fewer than {FDS_RESERVED} of the \
                     {files} open files this process may have: accepts may fail"
                );
            }
            limits.max_connections = max;
        }
        limits.header_timeout = timeout("header-timeout-s", self.header_timeout_s)?;
        limits.keep_alive_timeout = timeout("keep-alive-timeout-s", self.keep_alive_timeout_s)?;
        if let Some(seconds) = self.request_timeout_s {
            limits.request_timeout = timeout("request-timeout-s", seconds)?;
        }
        if limits.request_timeout <= upstream_timeout {
            anyhow::bail!(
                "--request-timeout-s must exceed --upstream-timeout-s ({} s): a paid gateway \
                 request waits that long for its upstream",
                upstream_timeout.as_secs()
            );
        }
        Ok(limits)
    }

    /// The rate limits.
    pub fn rate_limits(&self) -> RateLimits {
        RateLimits {
            auth_failures: Rate::per_minute(self.rate_limit_auth_failures),
            challenges: per_second(self.rate_limit_challenges, self.rate_limit_challenges_burst),
            verifications: per_second(
                self.rate_limit_verifications,
                self.rate_limit_verifications_burst,
            ),
            trust_forwarded_for: self.trust_forwarded_for,
        }
    }
}

impl ServeArgs {
    /// The validated server configuration (the admin token comes from TURNPIKE_ADMIN_TOKEN).
    pub fn config(&self, listen: SocketAddr) -> anyhow::Result<Config> {
        let admin_token = std::env::var("TURNPIKE_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        if let Some(token) = &admin_token
            && token.len() < ADMIN_TOKEN_LEN_MIN
        {
            anyhow::bail!("TURNPIKE_ADMIN_TOKEN must be at least {ADMIN_TOKEN_LEN_MIN} characters");
        }
        let metrics_token = self.metrics_token.clone().filter(|t| !t.is_empty());
        if let Some(token) = &metrics_token
            && token.len() < ADMIN_TOKEN_LEN_MIN
        {
            anyhow::bail!(
                "--metrics-token (TURNPIKE_METRICS_TOKEN) must be at least {ADMIN_TOKEN_LEN_MIN} characters"
            );
        }
        if self.platform_fee_bps > turnpike_server::state::PLATFORM_FEE_BPS_MAX {
            anyhow::bail!("--platform-fee-bps must be at most 10000 (100%)");
        }
        let public_url = self
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{listen}"))
            .trim_end_matches('/')
            .to_owned();
        if !(public_url.starts_with("http://") || public_url.starts_with("https://")) {
            anyhow::bail!("--public-url must be an http(s) URL");
        }
        let outbound = OutboundPolicy::parse(&self.outbound_allow.join(","))
            .map_err(|err| anyhow::anyhow!("--outbound-allow: {err}"))?;
        if !outbound.allowed().is_empty() {
            tracing::info!(
                ranges = ?outbound.allowed(),
                "gateway upstreams and rail RPCs may be in these non-public ranges too"
            );
        }
        let upstream_timeout = Duration::from_secs(self.upstream_timeout_s.clamp(1, 600));
        Ok(Config {
            public_url,
            admin_token,
            platform_fee_bps: self.platform_fee_bps,
            upstream_timeout,
            test_clock: self.test_clock,
            secrets_key: secrets_key_from_env()?,
            allow_unsealed_signing_keys: self.allow_unsealed_signing_keys,
            metrics_token,
            outbound,
            connections: self.limits.connections(upstream_timeout)?,
            rate_limits: self.limits.rate_limits(),
        })
    }
}

/// The key that seals rail secrets and signing keys, from `TURNPIKE_SECRETS_KEY` (absent: rails
/// with secrets are refused with a clear error, and the server starts only with
/// `--allow-unsealed-signing-keys`).
pub fn secrets_key_from_env() -> anyhow::Result<Option<turnpike_server::secrets::SecretsKey>> {
    use turnpike_server::secrets::{SECRETS_KEY_ENV, SecretsKey};
    match std::env::var(SECRETS_KEY_ENV) {
        Ok(text) if !text.is_empty() => Ok(Some(SecretsKey::parse(&text)?)),
        _ => Ok(None),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Bind, open the database and start the engine: a server ready to serve.
pub async fn prepare(args: &ServeArgs) -> anyhow::Result<(TcpListener, AppState)> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let local = listener.local_addr()?;
    let config = args.config(local)?;
    let store = args.db.open(true).await?;
    let state = turnpike_server::start(store, config).await?;
    Ok((listener, state))
}

/// `turnpike serve`.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let (listener, state) = prepare(&args).await?;
    let local = listener.local_addr()?;
    tracing::info!(
        listen = %local,
        database = %args.db.describe(),
        public_url = %state.config.public_url,
        admin_api = state.config.admin_token.is_some(),
        max_connections = state.config.connections.max_connections,
        "turnpike serving"
    );
    eprintln!(
        "turnpike listening on http://{local} ({})",
        args.db.describe()
    );
    turnpike_server::serve(listener, state, shutdown_signal()).await?;
    eprintln!("turnpike stopped");
    Ok(())
}

/// Options of `turnpike admin tenant create`.
#[derive(Debug, Clone, clap::Args)]
pub struct TenantCreateArgs {
    /// Display name.
    #[arg(long)]
    pub name: String,
    /// URL slug (a-z, 0-9, `-`).
    #[arg(long)]
    pub slug: String,
    /// MPP realm (default: the slug).
    #[arg(long)]
    pub realm: Option<String>,
    #[command(flatten)]
    pub db: DbArgs,
    /// Accepted for compatibility and unused: creating a tenant signs nothing.
    #[arg(
        long,
        env = "TURNPIKE_PUBLIC_URL",
        default_value = "http://127.0.0.1:8402",
        hide = true
    )]
    pub public_url: String,
}

/// `turnpike admin tenant create`: prints the tenant and its API key as JSON. Only the database
/// is opened (and migrated): no ledger engine, no signing key.
pub async fn tenant_create(args: TenantCreateArgs) -> anyhow::Result<()> {
    let store = args.db.open(true).await?;
    let input = NewTenant {
        name: args.name,
        slug: args.slug,
        realm: args.realm,
    };
    let now_ms = turnpike_ledger::Clock::now_ms(&turnpike_ledger::SystemClock);
    let (tenant, key, secret) = create_tenant(&store, now_ms, input)
        .await
        .map_err(|err| anyhow::anyhow!("{}", err.detail))?;
    let out = serde_json::json!({
        "tenant": tenant_json(&tenant),
        "apiKey": {"id": key.id, "secret": secret},
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    eprintln!("the API key is shown once: store it now");
    Ok(())
}
