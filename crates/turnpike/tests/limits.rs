//! Black-box tests of the connection limits, timeouts and rate limits: the real `turnpike
//! serve` binary with short timeouts and tight limits set by its flags, over raw TCP where a
//! well-behaved HTTP client would not do what is tested, on SQLite and on PostgreSQL.

// The test bodies are plain `async fn`s that macro-generated `#[tokio::test]`s call, which
// clippy's `allow-unwrap-in-tests` does not recognise as tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use support::{Limits, Options, Reply, Server, TP_PROBLEMS, Tenant, Upstream, decision_header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use turnpike_store::on_both_databases;
use turnpike_store::testing::TestDb;

on_both_databases!(
    a_connection_sending_half_a_head_is_closed_after_the_header_timeout,
    an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout,
    a_body_that_never_finishes_is_cut_with_a_408_after_the_request_timeout,
    idle_connections_beyond_the_cap_wait_and_a_real_request_is_answered,
    wrong_api_keys_from_one_address_are_refused_with_429_and_other_addresses_still_work,
    challenges_beyond_the_limit_are_429_per_address_and_per_key,
    verifications_beyond_the_limit_are_429_and_record_no_payment,
    sigterm_finishes_the_request_in_flight_and_closes_idle_connections,
);

/// Longest wait for anything the tests expect to happen after a timeout.
const SLACK: Duration = Duration::from_secs(5);

async fn start(db: &TestDb, limits: Limits) -> Server {
    Server::start_with(
        db,
        Options {
            limits,
            ..Options::default()
        },
    )
    .await
}

fn host_port(server: &Server) -> String {
    server.url.trim_start_matches("http://").to_owned()
}

/// Read until the server closes the connection (or resets it); what arrived, and when.
async fn read_to_close(stream: &mut TcpStream, within: Duration) -> (Vec<u8>, Instant) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let result = tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        result.is_ok(),
        "the server kept the connection open for {within:?}; it sent: {}",
        String::from_utf8_lossy(&got)
    );
    (got, Instant::now())
}

/// A client whose connections come from `ip` (any 127.x address is this machine).
fn client_from(ip: Ipv4Addr) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(IpAddr::V4(ip))
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn get(client: &reqwest::Client, url: String, bearer: &str) -> Reply {
    Server::read(client.get(url).bearer_auth(bearer)).await
}

#[track_caller]
fn expect_rate_limited(reply: &Reply) -> u64 {
    reply.expect_problem(429, &format!("{TP_PROBLEMS}rate-limited"));
    let seconds: u64 = reply
        .header("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After: {reply:?}"))
        .parse()
        .unwrap();
    assert!((1..=60).contains(&seconds), "{reply:?}");
    seconds
}

async fn a_connection_sending_half_a_head_is_closed_after_the_header_timeout(db: &TestDb) {
    let server = start(
        db,
        Limits {
            header_timeout_s: 1,
            ..Limits::GENEROUS
        },
    )
    .await;
    // Half a head, then nothing.
    let mut stream = TcpStream::connect(host_port(&server)).await.unwrap();
    let opened = Instant::now();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (_, closed) = read_to_close(&mut stream, SLACK).await;
    let open_for = closed - opened;
    assert!(open_for >= Duration::from_millis(900), "{open_for:?}");

    // A slow loris that keeps sending header bytes is closed all the same: the timeout is on the
    // whole head, not on each byte.
    let mut stream = TcpStream::connect(host_port(&server)).await.unwrap();
    let opened = Instant::now();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    let trickle = async {
        for i in 0..100 {
            let line = format!("X-Slow-{i}: y\r\n");
            if stream.write_all(line.as_bytes()).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let _ = tokio::time::timeout(SLACK, trickle).await;
    let open_for = opened.elapsed();
    assert!(
        open_for < SLACK,
        "still accepting header bytes after {open_for:?}"
    );
    let (_, closed) = read_to_close(&mut stream, SLACK).await;
    assert!(closed - opened >= Duration::from_millis(900));

    // A whole request on a fresh connection is answered as usual.
    let reply = Server::read(server.http.get(format!("{}/healthz", server.url))).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

async fn an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(db: &TestDb) {
    let server = start(
        db,
        Limits {
            header_timeout_s: 30,
            keep_alive_timeout_s: 1,
            ..Limits::GENEROUS
        },
    )
    .await;
    let mut stream = TcpStream::connect(host_port(&server)).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    let answered = Instant::now();
    let (rest, closed) = read_to_close(&mut stream, SLACK).await;
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    let idle_for = closed - answered;
    assert!(idle_for >= Duration::from_millis(900), "{idle_for:?}");
}

async fn a_body_that_never_finishes_is_cut_with_a_408_after_the_request_timeout(db: &TestDb) {
    let server = start(
        db,
        Limits {
            upstream_timeout_s: 1,
            request_timeout_s: 2,
            ..Limits::GENEROUS
        },
    )
    .await;
    let merchant = server.create_tenant("shop").await;
    let mut stream = TcpStream::connect(host_port(&server)).await.unwrap();
    let head = format!(
        "POST /v1/challenges HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"method\":",
        merchant.key
    );
    let sent = Instant::now();
    stream.write_all(head.as_bytes()).await.unwrap();
    // A byte now and then, never the whole body.
    let (reader, mut writer) = stream.split();
    let trickle = async {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if writer.write_all(b" ").await.is_err() {
                // Closed: the answer is read by `read`.
                std::future::pending::<()>().await;
            }
        }
    };
    let mut reader = reader;
    let read = async {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    let got = tokio::select! {
        got = read => got,
        () = trickle => panic!("the server read a never-ending body for 30 s"),
    };
    let took = sent.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    assert!(text.contains("request-timeout"), "{text}");
    assert!(
        took >= Duration::from_millis(1_900) && took < SLACK + Duration::from_secs(2),
        "{took:?}"
    );
}

async fn idle_connections_beyond_the_cap_wait_and_a_real_request_is_answered(db: &TestDb) {
    let server = start(
        db,
        Limits {
            max_connections: 20,
            header_timeout_s: 1,
            keep_alive_timeout_s: 1,
            ..Limits::GENEROUS
        },
    )
    .await;
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(TcpStream::connect(host_port(&server)).await.unwrap());
    }
    // A fresh client: its one connection waits behind the idle ones.
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let asked = Instant::now();
    let reply = Server::read(client.get(format!("{}/healthz", server.url))).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let waited = asked.elapsed();
    // Two rounds of 20 idle connections, each closed after the 1 s header timeout.
    assert!(waited < Duration::from_secs(15), "{waited:?}");
    let log = server.log();
    assert!(
        log.contains("connection limit (20) reached; new connections wait"),
        "{log}"
    );
    assert!(!log.contains("Too many open files"), "{log}");
    // At most one line per 10 s.
    let lines = log.matches("connection limit (20) reached").count();
    let test_s = usize::try_from(waited.as_secs()).unwrap();
    assert!(lines <= 1 + test_s / 10, "{log}");
    // Every idle connection was closed by the server.
    for mut stream in idle {
        read_to_close(&mut stream, SLACK).await;
    }
}

/// Authentication failures are counted per client address. Over the budget, the address is
/// refused before its credential is looked at (a correct key from it too: a guesser learns
/// nothing, and a flood costs no hash or database query); another address keeps working.
async fn wrong_api_keys_from_one_address_are_refused_with_429_and_other_addresses_still_work(
    db: &TestDb,
) {
    let server = start(
        db,
        Limits {
            auth_failures_per_min: 10,
            ..Limits::GENEROUS
        },
    )
    .await;
    let merchant = server.create_tenant("shop").await;
    let attacker = client_from(Ipv4Addr::new(127, 0, 0, 1));
    let url = format!("{}/v1/balances", server.url);
    let mut statuses = Vec::new();
    for i in 0..50 {
        let wrong = format!("tp_sk_{i:043}");
        let reply = get(&attacker, url.clone(), &wrong).await;
        if reply.status == 429 {
            expect_rate_limited(&reply);
        } else {
            reply.expect_problem(401, &format!("{TP_PROBLEMS}unauthorized"));
        }
        statuses.push(reply.status);
    }
    assert_eq!(statuses[..10], [401; 10], "{statuses:?}");
    assert_eq!(statuses[10..], [429; 40], "{statuses:?}");
    // Agent tokens and the admin token share the address's budget.
    let reply = Server::read(
        attacker
            .post(format!("{}/v1/agent/pay", server.url))
            .bearer_auth("x.y.z")
            .json(&json!({"challenges": []})),
    )
    .await;
    expect_rate_limited(&reply);
    let reply = Server::read(
        attacker
            .post(format!("{}/v1/admin/tenants", server.url))
            .bearer_auth("wrong-admin-token")
            .json(&json!({})),
    )
    .await;
    expect_rate_limited(&reply);

    // The right key from the same address waits too; from another address it works.
    expect_rate_limited(&get(&attacker, url.clone(), &merchant.key).await);
    let neighbour = client_from(Ipv4Addr::new(127, 0, 0, 2));
    get(&neighbour, url.clone(), &merchant.key)
        .await
        .expect_status(200);
    // Its failures are its own.
    for _ in 0..3 {
        get(&neighbour, url.clone(), "tp_sk_wrong")
            .await
            .expect_status(401);
    }
    // Unauthenticated routes are not affected.
    let reply = Server::read(attacker.get(format!("{}/healthz", server.url))).await;
    assert_eq!(reply.status, 200, "{reply:?}");
}

async fn challenges_beyond_the_limit_are_429_per_address_and_per_key(db: &TestDb) {
    let server = start(
        db,
        Limits {
            challenges_per_s: (2, 5),
            ..Limits::GENEROUS
        },
    )
    .await;
    let upstream = Upstream::start().await;
    let merchant = server.create_tenant("shop").await;
    let other = server.create_tenant("other").await;
    server
        .price(&merchant, "GET", "/item", 100, Some(&upstream.url))
        .await;
    server.price(&other, "GET", "/item", 100, None).await;
    let body = json!({"method": "GET", "path": "/item"});

    // One address, one key: the burst, then 429.
    let a = client_from(Ipv4Addr::new(127, 0, 0, 3));
    let challenge = |client: &reqwest::Client, key: &str| {
        Server::read(
            client
                .post(format!("{}/v1/challenges", server.url))
                .bearer_auth(key)
                .json(&body),
        )
    };
    let mut issued = 0;
    let mut refused = 0;
    for _ in 0..30 {
        let reply = challenge(&a, &merchant.key).await;
        if reply.status == 429 {
            expect_rate_limited(&reply);
            refused += 1;
        } else {
            assert_eq!(reply.json()["decision"], "payment_required", "{reply:?}");
            issued += 1;
        }
    }
    assert!(
        (5..=7).contains(&issued),
        "issued {issued}, refused {refused}"
    );

    // The key's own bucket is spent: from a fresh address it is refused too, while another
    // tenant's key from that address is served.
    let b = client_from(Ipv4Addr::new(127, 0, 0, 4));
    let reply = challenge(&b, &merchant.key).await;
    let problem = reply.expect_problem(429, &format!("{TP_PROBLEMS}rate-limited"));
    assert!(
        problem["detail"].as_str().unwrap().contains("API key"),
        "{problem}"
    );
    assert!(!reply.text().contains(&merchant.key), "{reply:?}");
    assert_eq!(challenge(&b, &other.key).await.status, 200);

    gateway_402s_spend_the_address_challenges(&server).await;
    assert_eq!(upstream.hits(), 0);
}

/// The gateway's 402s spend the address's challenges: a fresh address gets the burst.
async fn gateway_402s_spend_the_address_challenges(server: &Server) {
    let c = client_from(Ipv4Addr::new(127, 0, 0, 5));
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let reply = Server::read(c.get(format!("{}/gw/shop/item", server.url))).await;
        if reply.status == 429 {
            expect_rate_limited(&reply);
        }
        statuses.push(reply.status);
    }
    let challenged = statuses.iter().filter(|s| **s == 402).count();
    assert!((5..=7).contains(&challenged), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
}

async fn verifications_beyond_the_limit_are_429_and_record_no_payment(db: &TestDb) {
    let server = start(
        db,
        Limits {
            verifications_per_s: (1, 2),
            ..Limits::GENEROUS
        },
    )
    .await;
    let upstream = Upstream::start().await;
    let merchant = server.create_tenant("shop").await;
    let payer = server.payer("buyer", 100_000).await;
    server
        .price(&merchant, "GET", "/item", 100, Some(&upstream.url))
        .await;
    let mut credentials = Vec::new();
    for _ in 0..6 {
        credentials.push(server.credential(&merchant, &payer, "GET", "/item").await);
    }

    let (paid, refused) = verify_each(&server, &merchant, &credentials).await;
    assert!((2..=3).contains(&paid), "paid {paid}");
    assert_eq!(server.payments(&merchant).await.len(), paid);

    // Through the gateway, a credential over the address's limit reaches nothing.
    let mut gateway_refused = false;
    for credential in &refused[..2] {
        let reply = Server::read(
            server
                .gateway(Method::GET, "shop", "/item")
                .header("authorization", credential),
        )
        .await;
        if reply.status == 429 {
            expect_rate_limited(&reply);
            gateway_refused = true;
        }
    }
    assert!(gateway_refused);
    let hits_then = upstream.hits();
    assert!(hits_then <= 1, "{hits_then}");
    assert_eq!(
        server.payments(&merchant).await.len(),
        paid + hits_then,
        "a refused verification recorded a payment"
    );

    // Nothing was spent by a 429: after Retry-After the same credential pays.
    let last = refused.last().unwrap();
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let reply = server
        .verify(&merchant, json!(last), "GET", "/item", None)
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["decision"], "paid", "{reply:?}");
    assert!(decision_header(&reply.json(), "payment-receipt").len() == 1);
    server.assert_ledger_consistent().await;
}

async fn sigterm_finishes_the_request_in_flight_and_closes_idle_connections(db: &TestDb) {
    let mut server = start(db, Limits::GENEROUS).await;
    let merchant = server.create_tenant("shop").await;
    server.price(&merchant, "GET", "/item", 100, None).await;
    let mut idle = TcpStream::connect(host_port(&server)).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

    // A request whose body is still arriving when SIGTERM comes.
    let body = br#"{"method":"GET","path":"/item"}"#;
    let head = format!(
        "POST /v1/challenges HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        merchant.key,
        body.len()
    );
    let mut busy = TcpStream::connect(host_port(&server)).await.unwrap();
    busy.write_all(head.as_bytes()).await.unwrap();
    busy.write_all(&body[..5]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.terminate();
    // The idle keep-alive connection is closed at once.
    read_to_close(&mut idle, SLACK).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        server.exited().is_none(),
        "stopped with a request in flight"
    );
    busy.write_all(&body[5..]).await.unwrap();
    let (answer, _) = read_to_close(&mut busy, SLACK).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("payment_required"), "{text}");
    let deadline = Instant::now() + SLACK;
    while server.exited().is_none() {
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.exited().and_then(|s| s.code()), Some(0));
}

/// Verify each credential at once: how many paid, and the credentials refused with a 429.
async fn verify_each(
    server: &Server,
    merchant: &Tenant,
    credentials: &[String],
) -> (usize, Vec<String>) {
    let mut paid = 0;
    let mut refused = Vec::new();
    for credential in credentials {
        let reply = server
            .verify(merchant, json!(credential), "GET", "/item", None)
            .await;
        if reply.status == 429 {
            expect_rate_limited(&reply);
            refused.push(credential.clone());
        } else {
            assert_eq!(reply.json()["decision"], "paid", "{reply:?}");
            paid += 1;
        }
    }
    (paid, refused)
}
