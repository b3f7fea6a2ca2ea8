//! Serving connections: HTTP/1.1 over hyper with a cap on open connections, a header timeout,
//! a keep-alive idle timeout and a whole-request timeout, accept errors backed off, and a
//! graceful shutdown that finishes the requests in flight.
//!
//! Turnpike speaks HTTP/1.1 only: TLS (and HTTP/2 to clients) end at the proxy in front.
//!
//! - Connection cap: at most `max_connections` are open; when they are, the server stops
//!   accepting (new connections wait in the kernel's queue) and logs
//!   `connection limit (N) reached; new connections wait` at most once per
//!   [`LIMIT_LOG_INTERVAL`].
//! - Header timeout: a request's head must arrive within `header_timeout` of its first byte (of
//!   the connection's opening, for its first request), else the connection is closed.
//! - Keep-alive idle timeout: a connection with no request for `keep_alive_timeout` is closed.
//! - Request timeout: a request not answered within `request_timeout` (a body that never
//!   finishes, for one) is answered `408` problem+json and its connection closed. It must exceed
//!   the gateway's upstream timeout, which a paid request waits for.
//! - An accept that fails for want of file descriptors (or any other reason but a connection
//!   reset before it was accepted) is retried after a pause that doubles from
//!   [`ACCEPT_BACKOFF_MIN`] to [`ACCEPT_BACKOFF_MAX`], logged at most once per
//!   [`LIMIT_LOG_INTERVAL`].

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tower::ServiceExt as _;

use crate::error::ApiError;
use crate::state::AppState;

/// Default time for a request's head to arrive.
pub const HEADER_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Default time an idle keep-alive connection stays open (longer than the 60 s idle timeout
/// of common load balancers, which must close first).
pub const KEEP_ALIVE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(75);
/// The default request timeout is the gateway's upstream timeout plus this.
pub const REQUEST_TIMEOUT_MARGIN: Duration = Duration::from_secs(10);
/// File descriptors kept free of connections (database, RPC and upstream clients, logs) when
/// the default connection cap is derived from the open-file limit.
pub const FDS_RESERVED: usize = 256;
/// Fewest and most connections of the derived default cap.
pub const MAX_CONNECTIONS_DEFAULT_RANGE: (usize, usize) = (64, 10_000);
/// The open-file limit assumed where it cannot be read.
pub const OPEN_FILES_ASSUMED: usize = 1_024;
/// Most connections any cap allows.
pub const MAX_CONNECTIONS_MAX: usize = 1_000_000;
/// Shortest and longest pause after a failed accept.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// See [`ACCEPT_BACKOFF_MIN`].
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Shortest time between two warnings of the connection limit or of failed accepts.
pub const LIMIT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The limits on connections and requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Time for a request's head to arrive.
    pub header_timeout: Duration,
    /// Time an idle keep-alive connection stays open.
    pub keep_alive_timeout: Duration,
    /// Time to answer a request, its body read included.
    pub request_timeout: Duration,
}

impl ConnectionLimits {
    /// The defaults for a server whose gateway waits `upstream_timeout` for an upstream.
    pub fn defaults(upstream_timeout: Duration) -> Self {
        Self {
            max_connections: default_max_connections(),
            header_timeout: HEADER_TIMEOUT_DEFAULT,
            keep_alive_timeout: KEEP_ALIVE_TIMEOUT_DEFAULT,
            request_timeout: upstream_timeout + REQUEST_TIMEOUT_MARGIN,
        }
    }
}

/// The soft limit on open files of this process (Linux), if it can be read.
pub fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The default connection cap: the open-file limit less [`FDS_RESERVED`], within
/// [`MAX_CONNECTIONS_DEFAULT_RANGE`].
pub fn default_max_connections() -> usize {
    let (low, high) = MAX_CONNECTIONS_DEFAULT_RANGE;
    open_files_limit()
        .unwrap_or(OPEN_FILES_ASSUMED)
        .saturating_sub(FDS_RESERVED)
        .clamp(low, high)
}

/// Answer `408` problem+json to a request not answered within the request timeout, and close
/// its connection (its body may still be arriving).
pub async fn request_timeout(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let limit = state.config.connections.request_timeout;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            let mut response = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request-timeout",
                format!(
                    "the request was not complete within {} s",
                    limit.as_secs_f64()
                ),
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
    }
}

/// A rate-limited warning: [`Self::due`] is true at most once per [`LIMIT_LOG_INTERVAL`].
#[derive(Debug, Default)]
struct Every(Option<Instant>);

impl Every {
    fn due(&mut self) -> bool {
        let due = self.0.is_none_or(|at| at.elapsed() >= LIMIT_LOG_INTERVAL);
        if due {
            self.0 = Some(Instant::now());
        }
        due
    }
}

/// An accept error that concerns only the connection being accepted (retry at once).
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Serve `app` on `listener` under `limits` until `shutdown` resolves; then stop accepting,
/// close idle connections and wait for every request in flight.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let max = limits.max_connections.clamp(1, MAX_CONNECTIONS_MAX);
    let permits = Arc::new(Semaphore::new(max));
    let (stop_tx, stop_rx) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    let (mut full_log, mut accept_log) = (Every::default(), Every::default());
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if full_log.due() {
                    tracing::warn!("connection limit ({max}) reached; new connections wait");
                }
                tokio::select! {
                    permit = permits.clone().acquire_owned() => permit?,
                    () = &mut shutdown => break,
                }
            }
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                let conn = Connection::new(app.clone(), peer, limits, permit);
                tokio::spawn(conn.run(stream, stop_rx.clone()));
            }
            Err(err) if is_connection_error(&err) => {}
            Err(err) => {
                if accept_log.due() {
                    tracing::warn!(error = %err, "accept failed; retrying in {backoff:?}");
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {},
                    () = &mut shutdown => break,
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(());
    // Every connection holds a permit until it is closed.
    let _all = permits.acquire_many(u32::try_from(max)?).await?;
    Ok(())
}

/// No time recorded (an [`Activity`] field).
const NONE: u64 = u64::MAX;

/// What a connection is doing, for its timeouts (milliseconds since it was accepted).
#[derive(Debug)]
struct Activity {
    opened: Instant,
    /// Requests being answered.
    in_flight: AtomicU32,
    /// When the first byte of a request head arrived (NONE: none is arriving).
    head_since_ms: AtomicU64,
    /// When the connection last became idle.
    idle_since_ms: AtomicU64,
    /// Wakes the connection's timer when a request ends or a head starts to arrive.
    changed: Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicU32::new(0),
            // The first request's head is due within the header timeout of the opening.
            head_since_ms: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    fn on_bytes_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_since_ms.load(Ordering::Acquire) == NONE
        {
            self.head_since_ms.store(self.now_ms(), Ordering::Release);
            self.changed.notify_one();
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.opened + Duration::from_millis(ms)
    }

    /// What is due next, and when.
    fn next(&self, limits: &ConnectionLimits) -> (Due, Instant) {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            // The request timeout bounds the request; look again later.
            return (Due::Nothing, Instant::now() + limits.header_timeout);
        }
        match self.head_since_ms.load(Ordering::Acquire) {
            NONE => (
                Due::IdleTimeout,
                self.at(self.idle_since_ms.load(Ordering::Acquire)) + limits.keep_alive_timeout,
            ),
            since => (Due::HeaderTimeout, self.at(since) + limits.header_timeout),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    Nothing,
    HeaderTimeout,
    IdleTimeout,
}

/// Marks a request in flight until dropped (answered, or its future dropped).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: Arc<Activity>) -> Self {
        activity.head_since_ms.store(NONE, Ordering::Release);
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .idle_since_ms
            .store(self.0.now_ms(), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_one();
    }
}

/// The socket, noting when bytes arrive.
struct TrackedIo {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.on_bytes_read();
        }
        result
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The application as one connection's hyper service: each request carries the peer address
/// (`ConnectInfo<SocketAddr>`) and is counted in flight while it is answered.
#[derive(Clone)]
struct ConnService {
    app: Router,
    peer: SocketAddr,
    activity: Arc<Activity>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for ConnService {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, mut request: hyper::Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(ConnectInfo(self.peer));
        let in_flight = InFlight::new(self.activity.clone());
        let app = self.app.clone();
        Box::pin(async move {
            let response = app.oneshot(request.map(Body::new)).await;
            drop(in_flight);
            response
        })
    }
}

/// One accepted connection.
struct Connection {
    service: ConnService,
    limits: ConnectionLimits,
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    fn new(
        app: Router,
        peer: SocketAddr,
        limits: ConnectionLimits,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        let activity = Arc::new(Activity::new());
        Self {
            service: ConnService {
                app,
                peer,
                activity,
            },
            limits,
            _permit: permit,
        }
    }

    /// Serve the connection until it closes, a timeout closes it, or `stop` says to shut down
    /// (then the request in flight, if any, is finished first).
    async fn run(self, stream: TcpStream, mut stop: watch::Receiver<()>) {
        let activity = self.service.activity.clone();
        let io = TokioIo::new(TrackedIo {
            stream,
            activity: activity.clone(),
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.header_read_timeout(None).keep_alive(true);
        let mut conn = pin!(builder.serve_connection(io, self.service));
        let mut closing = false;
        loop {
            let (due, at) = activity.next(&self.limits);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(error = %err, "connection ended with an error");
                    }
                    return;
                }
                () = activity.changed.notified() => {}
                changed = stop.changed(), if !closing => {
                    let _ = changed;
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                () = tokio::time::sleep_until(at.into()) => match due {
                    Due::Nothing => {}
                    _ if activity.next(&self.limits) != (due, at) => {}
                    Due::HeaderTimeout => {
                        tracing::debug!("request head not complete in time; closing");
                        return;
                    }
                    Due::IdleTimeout if closing => return,
                    Due::IdleTimeout => {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                },
            }
        }
    }
}
