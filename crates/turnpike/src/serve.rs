//! `turnpike serve` and `turnpike admin ...`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use turnpike_rails::outbound::OutboundPolicy;
use turnpike_server::http::admin::{NewTenant, create_tenant, tenant_json};
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
    /// For tests only: the clock stands still and moves only by `POST /v1/admin/clock`
    /// (needs TURNPIKE_ADMIN_TOKEN).
    #[arg(long, hide = true)]
    pub test_clock: bool,
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
        Ok(Config {
            public_url,
            admin_token,
            platform_fee_bps: self.platform_fee_bps,
            upstream_timeout: Duration::from_secs(self.upstream_timeout_s.clamp(1, 600)),
            test_clock: self.test_clock,
            secrets_key: secrets_key_from_env()?,
            outbound,
        })
    }
}

/// The key that seals rail secrets, from `TURNPIKE_SECRETS_KEY` (absent: rails with secrets
/// are refused with a clear error).
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
    /// The server's public URL (issuer of its tokens).
    #[arg(
        long,
        env = "TURNPIKE_PUBLIC_URL",
        default_value = "http://127.0.0.1:8402"
    )]
    pub public_url: String,
}

/// `turnpike admin tenant create`: prints the tenant and its API key as JSON.
pub async fn tenant_create(args: TenantCreateArgs) -> anyhow::Result<()> {
    let store = args.db.open(true).await?;
    let config = Config {
        public_url: args.public_url.trim_end_matches('/').to_owned(),
        admin_token: None,
        platform_fee_bps: 0,
        upstream_timeout: Duration::from_secs(30),
        test_clock: false,
        secrets_key: None,
        outbound: OutboundPolicy::default(),
    };
    let state = turnpike_server::start(store, config).await?;
    let input = NewTenant {
        name: args.name,
        slug: args.slug,
        realm: args.realm,
    };
    let (tenant, key, secret) = create_tenant(&state, input)
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
