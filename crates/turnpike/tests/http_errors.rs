//! Black-box tests of the error answers no handler writes (issue 14, item 8): a body over the
//! limit (declared by `Content-Length` or streamed chunked), a path no route serves and a method
//! a route does not serve are all RFC 9457 problem+json, as docs/api.md promises: `413
//! payload-too-large`, `404 not-found`, `405 method-not-allowed` with `Allow`. Also the gateway's
//! own body limit, and `turnpike serve` refusing a platform fee above 100%. On SQLite and on
//! PostgreSQL.

// The test bodies are plain `async fn`s that macro-generated `#[tokio::test]`s call, which
// clippy's `allow-unwrap-in-tests` does not recognise as tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use reqwest::Method;
use serde_json::{Value, json};
use support::{Reply, Server, TP_PROBLEMS, Upstream, describe, read_raw_answer, run_turnpike};
use turnpike_store::on_both_databases;
use turnpike_store::testing::TestDb;

on_both_databases!(
    oversized_bodies_are_413_problem_json_declared_or_streamed,
    a_body_of_exactly_the_limit_is_read,
    unknown_paths_are_404_problem_json,
    wrong_methods_are_405_problem_json_with_allow,
    gateway_bodies_over_its_limit_are_413_problem_json_and_never_forwarded,
    serve_refuses_a_platform_fee_above_100_percent,
);

/// The server's body limit (`turnpike_server::BODY_BYTES_MAX`, 1 MiB).
const BODY_BYTES_MAX: usize = 1 << 20;
/// The body the tests send: 2 MiB.
const BIG: usize = 2 << 20;

/// A JSON object of exactly `len` bytes: `{"pad":"xxx…"}`.
fn json_of_len(len: usize) -> Vec<u8> {
    let overhead = br#"{"pad":""}"#.len();
    let mut body = br#"{"pad":""#.to_vec();
    body.resize(len - 2, b'x');
    body.extend_from_slice(br#""}"#);
    assert_eq!(body.len(), len);
    assert!(len > overhead);
    body
}

/// POST `body` to `path` with `Content-Length` (reqwest sets it for a byte body).
async fn post_declared(server: &Server, path: &str, key: &str, body: Vec<u8>) -> Reply {
    Server::read(
        server
            .http
            .post(format!("{}{path}", server.url))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body),
    )
    .await
}

/// POST to `path` with a `Content-Length` of `len` over a raw connection, sending the head
/// only: the server must answer from the declared length alone, without reading a body (a
/// client library writing 2 MiB would race the early answer and see a broken pipe instead).
async fn post_declared_head(
    server: &Server,
    path: &str,
    key: &str,
    len: usize,
) -> (u16, String, String) {
    use tokio::io::AsyncWriteExt as _;
    let addr = server.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("write head");
    // No body was sent: an answer at all shows it came from the declared length alone.
    read_raw_answer(&mut stream).await
}

/// POST `len` bytes of JSON to `path` chunked (no `Content-Length`) over a raw connection, so
/// that only reading the body can find it too large: (status, head, body). The server may answer
/// and close before the whole body is sent; writing stops then.
async fn post_chunked(server: &Server, path: &str, key: &str, len: usize) -> (u16, String, String) {
    use tokio::io::AsyncWriteExt as _;
    let addr = server.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("write head");
    let body = json_of_len(len);
    for chunk in body.chunks(64 << 10) {
        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
        framed.extend_from_slice(chunk);
        framed.extend_from_slice(b"\r\n");
        if stream.write_all(&framed).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    read_raw_answer(&mut stream).await
}

/// A 413 `payload-too-large` problem in a raw answer (a chunked body is de-chunked loosely: the
/// problem is the JSON object in it).
fn assert_raw_413(status: u16, head: &str, body: &str) {
    assert_eq!(status, 413, "{head}\n{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/problem+json"),
        "{head}"
    );
    let start = body.find('{').unwrap_or_else(|| panic!("no JSON: {body}"));
    let end = body.rfind('}').unwrap_or_else(|| panic!("no JSON: {body}"));
    let problem: Value = serde_json::from_str(&body[start..=end]).expect("problem JSON");
    assert_eq!(
        problem["type"],
        format!("{TP_PROBLEMS}payload-too-large"),
        "{problem}"
    );
    assert_eq!(problem["status"], 413, "{problem}");
}

async fn oversized_bodies_are_413_problem_json_declared_or_streamed(db: &TestDb) {
    let server = Server::start(db).await;
    let shop = server.create_tenant("big-shop").await;
    // Declared: refused before the body is read. One byte over is enough.
    for len in [BIG, BODY_BYTES_MAX + 1] {
        let (status, head, body) = post_declared_head(&server, "/v1/prices", &shop.key, len).await;
        assert_raw_413(status, &head, &body);
        assert!(body.contains(&BODY_BYTES_MAX.to_string()), "{body}");
    }
    // Streamed: found while reading, by the JSON extractor and by the raw-body one.
    for path in ["/v1/prices", "/v1/api-keys"] {
        let (status, head, body) = post_chunked(&server, path, &shop.key, BIG).await;
        assert_raw_413(status, &head, &body);
    }
    // Nothing was created, and the server still answers.
    let prices = server.get("/v1/prices", &shop.key).await.expect_status(200);
    assert_eq!(prices.json()["data"], json!([]), "{prices:?}");
    let keys = server
        .get("/v1/api-keys", &shop.key)
        .await
        .expect_status(200);
    assert_eq!(keys.json()["data"].as_array().unwrap().len(), 1, "{keys:?}");
    server.assert_ledger_consistent().await;
}

async fn a_body_of_exactly_the_limit_is_read(db: &TestDb) {
    let server = Server::start(db).await;
    let shop = server.create_tenant("edge-shop").await;
    // Read in full and refused for what it says (no route), not for its size.
    let reply = post_declared(
        &server,
        "/v1/prices",
        &shop.key,
        json_of_len(BODY_BYTES_MAX),
    )
    .await;
    reply.expect_problem(400, &format!("{TP_PROBLEMS}invalid-request"));
    let (status, head, body) = post_chunked(&server, "/v1/prices", &shop.key, BODY_BYTES_MAX).await;
    assert_eq!(status, 400, "{head}\n{body}");
}

async fn unknown_paths_are_404_problem_json(db: &TestDb) {
    let server = Server::start(db).await;
    let shop = server.create_tenant("lost-shop").await;
    let not_found = format!("{TP_PROBLEMS}not-found");
    for (method, path, key) in [
        (Method::GET, "/nope", None),
        (Method::GET, "/nope", Some(shop.key.as_str())),
        (Method::POST, "/v1/nope/deeper", Some(shop.key.as_str())),
        (Method::GET, "/v1/prices/x/y", Some(shop.key.as_str())),
    ] {
        let reply = server.call(method.clone(), path, key, None).await;
        let problem = reply.expect_problem(404, &not_found);
        assert!(
            problem["detail"].as_str().unwrap().contains(path),
            "{method} {path}: {problem}"
        );
    }
}

async fn wrong_methods_are_405_problem_json_with_allow(db: &TestDb) {
    let server = Server::start(db).await;
    let shop = server.create_tenant("wrong-shop").await;
    let not_allowed = format!("{TP_PROBLEMS}method-not-allowed");
    for (method, path, allowed) in [
        (Method::DELETE, "/v1/balances", &["GET", "HEAD"][..]),
        (Method::PUT, "/v1/prices", &["GET", "HEAD", "POST"][..]),
        (Method::POST, "/healthz", &["GET", "HEAD"][..]),
    ] {
        let reply = server
            .call(method.clone(), path, Some(&shop.key), None)
            .await;
        let problem = reply.expect_problem(405, &not_allowed);
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains(method.as_str()),
            "{problem}"
        );
        let allow = reply
            .header("allow")
            .unwrap_or_else(|| panic!("no Allow: {reply:?}"));
        let mut listed: Vec<&str> = allow.split(',').map(str::trim).collect();
        listed.sort_unstable();
        assert_eq!(listed, allowed, "{method} {path}: {reply:?}");
    }
}

async fn gateway_bodies_over_its_limit_are_413_problem_json_and_never_forwarded(db: &TestDb) {
    let server = Server::start(db).await;
    let shop = server.create_tenant("gw-big").await;
    let upstream = Upstream::start().await;
    server
        .price(&shop, "POST", "/upload", 10, Some(&upstream.url))
        .await;
    let (status, head, body) =
        post_declared_head(&server, &format!("/gw/{}/upload", shop.slug), "x", BIG).await;
    assert_raw_413(status, &head, &body);
    let (status, head, body) =
        post_chunked(&server, &format!("/gw/{}/upload", shop.slug), "x", BIG).await;
    assert_raw_413(status, &head, &body);
    // A body within the limit reaches the payment step (402), so the route was right.
    let reply = Server::read(
        server
            .gateway(Method::POST, &shop.slug, "/upload")
            .header("content-type", "application/json")
            .body(json_of_len(1_000)),
    )
    .await;
    assert_eq!(reply.status, 402, "{reply:?}");
    assert_eq!(
        upstream.hits(),
        0,
        "an unpaid or oversized request reached the upstream"
    );
}

async fn serve_refuses_a_platform_fee_above_100_percent(db: &TestDb) {
    let out = run_turnpike(
        db,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--platform-fee-bps",
            "10001",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(
        errors,
        ["error: --platform-fee-bps must be at most 10000 (100%)"],
        "{}",
        describe(&out)
    );
}
