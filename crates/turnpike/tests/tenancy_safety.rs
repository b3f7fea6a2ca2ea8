//! Black-box tests of issue 14's items 7 and 9 (tenancy and secrets): realms are unique across
//! tenants (and migration 0012 stops on a database where they are not); `/metrics` needs the
//! metrics or admin token; the platform's signing keys are sealed at rest (rows kept in clear are
//! sealed on start); only supported currencies make prices and credits; a tenant cannot revoke
//! its last API key, even with concurrent revocations. Through the real binary, on SQLite and on
//! PostgreSQL.

// The test bodies are plain `async fn`s that macro-generated `#[tokio::test]`s call, which
// clippy's `allow-unwrap-in-tests` does not recognise as tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use support::{ADMIN_TOKEN, Options, Server, TP_PROBLEMS, Tenant, describe, run_turnpike};
use turnpike_store::on_both_databases;
use turnpike_store::testing::TestDb;

on_both_databases!(
    a_realm_is_one_tenants_and_the_default_slug_realm_never_takes_another,
    concurrent_tenants_claiming_one_realm_get_it_once,
    migration_0012_stops_on_shared_realms_until_they_are_resolved,
    metrics_need_the_metrics_or_admin_token,
    signing_keys_are_sealed_at_rest_and_clear_rows_are_sealed_on_start,
    a_server_without_a_secrets_key_refuses_to_start_unless_allowed,
    prices_and_credits_take_only_supported_currencies,
    the_last_api_key_cannot_be_revoked,
    concurrent_revocations_never_revoke_every_key,
);

fn tp(code: &str) -> String {
    format!("{TP_PROBLEMS}{code}")
}

async fn new_tenant(server: &Server, slug: &str, realm: Option<&str>) -> support::Reply {
    let mut body = json!({"name": format!("Tenant {slug}"), "slug": slug});
    if let Some(realm) = realm {
        body["realm"] = json!(realm);
    }
    server.post("/v1/admin/tenants", ADMIN_TOKEN, body).await
}

// ---- item 7: realms ---------------------------------------------------------------------

async fn a_realm_is_one_tenants_and_the_default_slug_realm_never_takes_another(db: &TestDb) {
    let server = Server::start(db).await;
    let acme = server.create_tenant("acme").await;
    assert_eq!(acme.realm, "acme");

    // Another tenant claiming acme's realm is refused, and nothing is created.
    let problem = new_tenant(&server, "impostor", Some("acme"))
        .await
        .expect_problem(409, &tp("realm-taken"));
    assert_eq!(problem["field"], "realm", "{problem}");
    // An explicit realm, then a tenant whose slug (its default realm) is that realm.
    new_tenant(&server, "c", Some("deals"))
        .await
        .expect_status(201);
    let problem = new_tenant(&server, "deals", None)
        .await
        .expect_problem(409, &tp("realm-taken"));
    assert!(
        problem["detail"].as_str().unwrap().contains("`deals`"),
        "{problem}"
    );
    let deals = new_tenant(&server, "deals", Some("deals.example"))
        .await
        .expect_status(201)
        .json();
    assert_eq!(deals["tenant"]["realm"], "deals.example");
    // A realm that could pass for a tenant id (policies list both) is refused.
    for realm in [acme.id.as_str(), "ten_whatever"] {
        let problem = new_tenant(&server, "lookalike", Some(realm))
            .await
            .expect_problem(400, &tp("invalid-request"));
        assert_eq!(problem["field"], "realm", "{problem}");
    }
    // A taken slug is still a plain conflict.
    new_tenant(&server, "acme", Some("acme-2"))
        .await
        .expect_problem(409, &tp("conflict"));
    // `turnpike admin tenant create` refuses the same way.
    let out = run_turnpike(
        db,
        &[
            "admin", "tenant", "create", "--name", "Cli", "--slug", "cli", "--realm", "acme",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("realm `acme`"),
        "{}",
        describe(&out)
    );
    // The impostor never existed: acme's realm still names acme alone.
    let me = server.get("/v1/tenant", &acme.key).await.expect_status(200);
    assert_eq!(me.json()["realm"], "acme");
    server.assert_ledger_consistent().await;
}

async fn concurrent_tenants_claiming_one_realm_get_it_once(db: &TestDb) {
    const CLAIMS: usize = 8;
    let server = Server::start(db).await;
    let claims = (0..CLAIMS).map(|i| {
        let server = &server;
        async move { new_tenant(server, &format!("claim-{i}"), Some("contested.example")).await }
    });
    let replies = futures_util::future::join_all(claims).await;
    let created = replies.iter().filter(|r| r.status == 201).count();
    assert_eq!(created, 1, "{replies:?}");
    for reply in replies.iter().filter(|r| r.status != 201) {
        reply.expect_problem(409, &tp("realm-taken"));
    }
}

async fn migration_0012_stops_on_shared_realms_until_they_are_resolved(db: &TestDb) {
    // A database as it could be before 0012: two tenants share a realm, a third uses the first's
    // id as its realm.
    drop(db.open().await);
    db.exec_raw("DROP INDEX tenants_realm_key").await;
    db.exec_raw("DELETE FROM _sqlx_migrations WHERE version = 12")
        .await;
    db.exec_raw(
        "INSERT INTO tenants (id, name, slug, realm, created_at) VALUES \
         ('ten_first', 'First', 'first', 'shared.example', 1), \
         ('ten_second', 'Second', 'second', 'shared.example', 2), \
         ('ten_third', 'Third', 'third', 'ten_first', 3)",
    )
    .await;

    let out = run_turnpike(db, &["migrate"]).await;
    assert_ne!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("migration 0012: "),
        "{}",
        describe(&out)
    );
    // Nothing was changed behind the operator's back.
    assert_eq!(
        db.exec_raw("UPDATE tenants SET name = name WHERE realm = 'shared.example'")
            .await,
        2
    );

    db.exec_raw("UPDATE tenants SET realm = 'second.example' WHERE id = 'ten_second'")
        .await;
    let out = run_turnpike(db, &["migrate"]).await;
    assert_ne!(out.status.code(), Some(0), "{}", describe(&out));
    db.exec_raw("UPDATE tenants SET realm = 'third.example' WHERE id = 'ten_third'")
        .await;
    let out = run_turnpike(db, &["migrate"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    let server = Server::start(db).await;
    new_tenant(&server, "late", Some("shared.example"))
        .await
        .expect_problem(409, &tp("realm-taken"));
}

// ---- item 9a: /metrics ------------------------------------------------------------------

const METRICS_TOKEN: &str = "test-metrics-token-0123456789";

async fn metrics_need_the_metrics_or_admin_token(db: &TestDb) {
    let metrics = |server: &Server, bearer: Option<&'static str>| {
        let request = server.http.get(format!("{}/metrics", server.url));
        let request = match bearer {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        Server::read(request)
    };

    // Admin token only.
    let server = Server::start(db).await;
    for bearer in [None, Some("wrong-token-0123456789"), Some(METRICS_TOKEN)] {
        metrics(&server, bearer)
            .await
            .expect_problem(401, &tp("unauthorized"));
    }
    let text = metrics(&server, Some(ADMIN_TOKEN))
        .await
        .expect_status(200)
        .text();
    assert!(text.contains("turnpike_"), "{text}");
    drop(server);

    // A metrics token besides the admin token: it reads metrics, never the operator API.
    let with_token = Options {
        metrics_token: Some(METRICS_TOKEN),
        ..Options::default()
    };
    let server = Server::start_with(db, with_token).await;
    for bearer in [METRICS_TOKEN, ADMIN_TOKEN] {
        metrics(&server, Some(bearer)).await.expect_status(200);
    }
    server
        .get("/v1/admin/balances", METRICS_TOKEN)
        .await
        .expect_problem(401, &tp("unauthorized"));
    drop(server);

    // No admin API and no metrics token: metrics are off.
    let server = Server::start_with(
        db,
        Options {
            admin: false,
            ..Options::default()
        },
    )
    .await;
    for bearer in [None, Some(ADMIN_TOKEN)] {
        metrics(&server, bearer)
            .await
            .expect_problem(404, &tp("metrics-disabled"));
    }
    drop(server);

    // The metrics token alone.
    let server = Server::start_with(
        db,
        Options {
            admin: false,
            ..with_token
        },
    )
    .await;
    metrics(&server, Some(METRICS_TOKEN))
        .await
        .expect_status(200);
    metrics(&server, None)
        .await
        .expect_problem(401, &tp("unauthorized"));
}

// ---- item 9b: signing keys --------------------------------------------------------------

/// The stored form of the platform's signing keys: (kid, what the row holds).
async fn stored_signing_keys(db: &TestDb) -> Vec<(String, String)> {
    db.open().await.signing_keys().await.unwrap()
}

/// The kid the server publishes.
async fn published_kid(server: &Server) -> String {
    let jwks = Server::read(
        server
            .http
            .get(format!("{}/.well-known/jwks.json", server.url)),
    )
    .await
    .expect_status(200)
    .json();
    jwks["keys"][0]["kid"].as_str().unwrap().to_owned()
}

/// Whether a stored value is an Ed25519 private key in clear: base64url of a DER SEQUENCE that
/// holds the Ed25519 algorithm identifier (OID 1.3.101.112: `06 03 2b 65 70`).
fn is_clear_pkcs8(stored: &str) -> bool {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(stored)
        .is_ok_and(|der| {
            der.first() == Some(&0x30)
                && der.windows(5).any(|w| w == [0x06, 0x03, 0x2b, 0x65, 0x70])
        })
}

async fn signing_keys_are_sealed_at_rest_and_clear_rows_are_sealed_on_start(db: &TestDb) {
    // A server allowed to keep them in clear (as every server did before sealing existed).
    let clear = Server::start_with(
        db,
        Options {
            secrets_key: false,
            ..Options::default()
        },
    )
    .await;
    let kid = published_kid(&clear).await;
    assert!(clear.log().contains("stored in clear"), "{}", clear.log());
    drop(clear);
    let stored = stored_signing_keys(db).await;
    assert_eq!(stored.len(), 1);
    let (stored_kid, in_clear) = &stored[0];
    assert_eq!(stored_kid, &kid);
    assert!(is_clear_pkcs8(in_clear), "{in_clear}");

    // With TURNPIKE_SECRETS_KEY the row is sealed in place; the key (and its kid) is the same.
    let server = Server::start(db).await;
    assert_eq!(published_kid(&server).await, kid);
    let stored = stored_signing_keys(db).await;
    assert_eq!(stored.len(), 1);
    let (_, at_rest) = &stored[0];
    assert!(at_rest.starts_with("v1."), "{at_rest}");
    assert!(!at_rest.contains(in_clear.as_str()));
    assert!(!is_clear_pkcs8(at_rest));
    // It still signs and verifies: an agent token, issued and used to derive a child token.
    let payer = server.payer("buyer", 0).await;
    server
        .post("/v1/agent/tokens", &payer.token, json!({}))
        .await
        .expect_status(201);
    drop(server);

    // A fresh database: the first key is written sealed.
    let fresh = TestDb::sqlite().await;
    let server = Server::start(&fresh).await;
    let kid = published_kid(&server).await;
    let stored = stored_signing_keys(&fresh).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].0, kid);
    assert!(stored[0].1.starts_with("v1."), "{}", stored[0].1);
    assert!(!is_clear_pkcs8(&stored[0].1));
    drop(server);
    fresh.finish().await;
}

async fn a_server_without_a_secrets_key_refuses_to_start_unless_allowed(db: &TestDb) {
    let serve = |extra: &'static [&'static str]| async move {
        let args: Vec<&str> = ["serve", "--listen", "127.0.0.1:0"]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        tokio::time::timeout(Duration::from_secs(60), run_turnpike(db, &args))
            .await
            .expect("`turnpike serve` exits")
    };
    let out = serve(&[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TURNPIKE_SECRETS_KEY is not set"),
        "{}",
        describe(&out)
    );
    assert!(stored_signing_keys(db).await.is_empty());

    // Once sealed, a key cannot be read without the secrets key, switch or not.
    drop(Server::start(db).await);
    let out = serve(&["--allow-unsealed-signing-keys"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is sealed"),
        "{}",
        describe(&out)
    );
}

// ---- item 9c: currencies ----------------------------------------------------------------

async fn prices_and_credits_take_only_supported_currencies(db: &TestDb) {
    let server = Server::start(db).await;
    let shop = server.create_tenant("shop").await;
    let price = |currency: &str| {
        let path = format!("/in/{}", currency.len());
        json!({"route": {"method": "GET", "path": path}, "amount": "5", "currency": currency})
    };
    for currency in ["../../etc", "USD", "xyz", "usd ", "", "usdc/../x"] {
        let problem = server
            .post("/v1/prices", &shop.key, price(currency))
            .await
            .expect_problem(400, &tp("invalid-request"));
        assert_eq!(problem["field"], "currency", "{currency:?}: {problem}");
        let problem = server
            .post(
                &format!("/v1/admin/tenants/{}/credit", shop.id),
                ADMIN_TOKEN,
                json!({"amount": "100", "currency": currency}),
            )
            .await
            .expect_problem(400, &tp("invalid-request"));
        assert_eq!(problem["field"], "currency", "{currency:?}: {problem}");
    }
    // Nothing was created: no price, no account.
    let prices = server.get("/v1/prices", &shop.key).await.json();
    assert_eq!(prices["data"], json!([]));
    let balances = server.get("/v1/balances", &shop.key).await.json();
    assert_eq!(balances["data"], json!([]));

    // Supported ones: ISO 4217 and the rails' stablecoins.
    for currency in ["usd", "eur", "jpy", "usdc"] {
        let mut body = price(currency);
        body["route"]["path"] = json!(format!("/in/{currency}"));
        server
            .post("/v1/prices", &shop.key, body)
            .await
            .expect_status(201);
        server
            .post(
                &format!("/v1/admin/tenants/{}/credit", shop.id),
                ADMIN_TOKEN,
                json!({"amount": "100", "currency": currency}),
            )
            .await
            .expect_status(200);
    }
    // An update to an unsupported currency is refused and changes nothing.
    let created = server.create_price(&shop, price("usd")).await;
    let id = created["id"].as_str().unwrap();
    let problem = server
        .call(
            Method::PATCH,
            &format!("/v1/prices/{id}"),
            Some(&shop.key),
            Some(json!({"currency": "../../etc"})),
        )
        .await
        .expect_problem(400, &tp("invalid-request"));
    assert_eq!(problem["field"], "currency", "{problem}");
    let now = server
        .get(&format!("/v1/prices/{id}"), &shop.key)
        .await
        .json();
    assert_eq!(
        (now["currency"].clone(), now["version"].clone()),
        (json!("usd"), json!(1))
    );
    server.assert_ledger_consistent().await;
}

// ---- item 9d: the last API key ----------------------------------------------------------

async fn create_key(server: &Server, tenant: &Tenant) -> (String, String) {
    let body = server
        .post("/v1/api-keys", &tenant.key, json!({"name": "extra"}))
        .await
        .expect_status(201)
        .json();
    (
        body["id"].as_str().unwrap().to_owned(),
        body["secret"].as_str().unwrap().to_owned(),
    )
}

async fn active_keys(server: &Server, secret: &str) -> Vec<Value> {
    let list = server
        .get("/v1/api-keys", secret)
        .await
        .expect_status(200)
        .json();
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["revokedAt"].is_null())
        .cloned()
        .collect()
}

async fn the_last_api_key_cannot_be_revoked(db: &TestDb) {
    let server = Server::start(db).await;
    let shop = server.create_tenant("shop").await;
    let keys = active_keys(&server, &shop.key).await;
    assert_eq!(keys.len(), 1);
    let first = keys[0]["id"].as_str().unwrap().to_owned();
    let revoke = |id: String, secret: String| {
        let server = &server;
        async move {
            server
                .call(
                    Method::DELETE,
                    &format!("/v1/api-keys/{id}"),
                    Some(&secret),
                    None,
                )
                .await
        }
    };
    revoke(first.clone(), shop.key.clone())
        .await
        .expect_problem(409, &tp("last-api-key"));
    server.get("/v1/tenant", &shop.key).await.expect_status(200);

    // With a second key the first may go; then the second is the last.
    let (second, second_secret) = create_key(&server, &shop).await;
    revoke(first.clone(), second_secret.clone())
        .await
        .expect_status(200);
    // Revoking a revoked key again is still fine (idempotent), the last one is not.
    revoke(first, second_secret.clone())
        .await
        .expect_status(200);
    revoke(second, second_secret.clone())
        .await
        .expect_problem(409, &tp("last-api-key"));
    assert_eq!(active_keys(&server, &second_secret).await.len(), 1);
}

async fn concurrent_revocations_never_revoke_every_key(db: &TestDb) {
    const ROUNDS: usize = 4;
    const KEYS: usize = 6;
    let server = Server::start(db).await;
    for round in 0..ROUNDS {
        let tenant = server.create_tenant(&format!("shop-{round}")).await;
        let first = active_keys(&server, &tenant.key).await[0]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut keys = vec![(first, tenant.key.clone())];
        for _ in 1..KEYS {
            keys.push(create_key(&server, &tenant).await);
        }
        // Every key revokes itself, all at once.
        let revocations = keys.iter().map(|(id, secret)| {
            let server = &server;
            async move {
                server
                    .call(
                        Method::DELETE,
                        &format!("/v1/api-keys/{id}"),
                        Some(secret),
                        None,
                    )
                    .await
            }
        });
        let replies = futures_util::future::join_all(revocations).await;
        let revoked = replies.iter().filter(|r| r.status == 200).count();
        assert_eq!(revoked, KEYS - 1, "round {round}: {replies:?}");
        let refused: Vec<_> = replies.iter().filter(|r| r.status != 200).collect();
        assert_eq!(refused.len(), 1, "round {round}: {replies:?}");
        refused[0].expect_problem(409, &tp("last-api-key"));
        // The key that was refused is the one left, and it works.
        let survivor = keys
            .iter()
            .zip(&replies)
            .find(|(_, r)| r.status != 200)
            .map(|((_, secret), _)| secret.clone())
            .unwrap();
        assert_eq!(active_keys(&server, &survivor).await.len(), 1);
    }
}
