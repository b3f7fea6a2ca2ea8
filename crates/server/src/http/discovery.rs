//! Discovery (draft-payment-discovery-00): `GET /gw/{tenant-slug}/openapi.json` is an OpenAPI
//! 3.1 document of the tenant's gateway routes (prices with an upstream), each operation with
//! its payment offers in `x-payment-info` and a `402` response. It is advisory: the 402
//! challenge stays authoritative.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use turnpike_rails::evm::EvmConfig;
use turnpike_rails::tempo::TempoConfig;
use turnpike_store::TenantRow;

use super::gateway;
use crate::catalog::{PriceDefinition, match_route};
use crate::error::{ApiError, ApiResult};
use crate::ids;
use crate::pipeline::{self, PriceRef};
use crate::state::AppState;

/// The OpenAPI version of the document.
pub const OPENAPI_VERSION: &str = "3.1.0";
/// Where the document lives under `/gw/{slug}` (the spec's `GET /openapi.json`).
pub const DOCUMENT_PATH: &str = "/openapi.json";
/// The spec's recommended `Cache-Control`.
pub const CACHE_CONTROL: &str = "max-age=300";
/// Hex digits of the content hash that is `info.version`.
const VERSION_HEX_LEN: usize = 16;
/// OpenAPI 3.1's operation fields, in the order a path item lists them. A route method
/// outside these (`PROPFIND`, ...) has no place in the document and is left out.
const OPERATIONS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];
/// Operations whose request body the gateway forwards and binds into the challenge.
const OPERATIONS_WITH_BODY: [&str; 3] = ["put", "post", "patch"];
/// The name of the parameter a final `*` becomes (suffixed when the route uses it already).
const WILDCARD_PARAMETER: &str = "rest";

/// `GET /gw/{slug}/openapi.json`; every other method on that path is the gateway's, as before.
pub fn router() -> Router<AppState> {
    Router::new().route(
        "/gw/{slug}/openapi.json",
        get(discovery).fallback(not_discovery),
    )
}

async fn discovery(State(state): State<AppState>, Path(slug): Path<String>) -> Response {
    let mut response = match document_for(&state, &slug).await {
        Ok(document) => {
            let mut response = axum::Json(document).into_response();
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static(CACHE_CONTROL),
            );
            response
        }
        Err(err) => err.into_response(),
    };
    // Browser agents read the document (and its 404s) from other origins.
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

async fn not_discovery(
    state: State<AppState>,
    Path(slug): Path<String>,
    request: Request,
) -> Response {
    gateway::handle(state, slug, request)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn document_for(state: &AppState, slug: &str) -> ApiResult<Value> {
    let tenant = state
        .tenant_by_slug(slug)
        .await?
        .ok_or_else(|| ApiError::not_found("gateway"))?;
    let prices = pipeline::prices(state, &tenant.id).await?;
    let server_url = format!("{}/gw/{}", state.config.public_url, tenant.slug);
    let evm = crate::rails::evm_config(state, &tenant.id).await?;
    let tempo = crate::rails::tempo_config(state, &tenant.id).await?;
    let rails = RailConfigs {
        evm: evm.as_deref(),
        tempo: tempo.as_deref(),
    };
    document(&tenant, &server_url, &prices, rails).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "this gateway has no paid routes, so no discovery document",
        )
    })
}

/// The offer's `currency` for `method`: what its challenge's `currency` will be (the token's
/// address for `evm` and `tempo`, the price's currency code otherwise).
pub fn offer_currency(method: &str, def: &PriceDefinition, rails: RailConfigs<'_>) -> String {
    let evm = rails.evm.and_then(|config| config.token(&def.currency));
    let tempo = rails.tempo.and_then(|config| config.token(&def.currency));
    match (method, evm, tempo) {
        ("evm", Some(token), _) => token.address.to_checksum(None),
        ("tempo", _, Some(token)) => token.address.to_checksum(None),
        _ => def.currency.clone(),
    }
}

/// The tenant's outside-rail configurations an offer's `currency` depends on.
#[derive(Debug, Clone, Copy, Default)]
pub struct RailConfigs<'a> {
    /// `evm`.
    pub evm: Option<&'a EvmConfig>,
    /// `tempo`.
    pub tempo: Option<&'a TempoConfig>,
}

/// The discovery document of `tenant`'s gateway at `server_url`, or `None` when no route is
/// paid through the gateway (the spec asks for at least one path).
pub fn document(
    tenant: &TenantRow,
    server_url: &str,
    prices: &[PriceRef],
    rails: RailConfigs<'_>,
) -> Option<Value> {
    let paths = paths(prices, rails);
    if paths.is_empty() {
        return None;
    }
    let mut info = Map::new();
    info.insert("title".into(), json!(tenant.name));
    info.insert(
        "description".into(),
        json!(
            "Paid routes of this gateway, payable with the Payment HTTP authentication scheme. \
             The offers are advisory: the 402 challenge is authoritative."
        ),
    );
    let mut document = Map::new();
    document.insert("openapi".into(), json!(OPENAPI_VERSION));
    document.insert("info".into(), Value::Object(info));
    document.insert("servers".into(), json!([{"url": server_url}]));
    document.insert("paths".into(), Value::Object(paths));
    // A content hash: it changes with any change the document shows (a price edited, added
    // or deleted, the tenant renamed), which no single price version does.
    let digest = Sha256::digest(Value::Object(document.clone()).to_string().as_bytes());
    let mut version = ids::hex(&digest);
    version.truncate(VERSION_HEX_LEN);
    if let Some(Value::Object(info)) = document.get_mut("info") {
        info.insert("version".into(), json!(version));
    }
    Some(Value::Object(document))
}

/// A path template's shape: `{}` for every parameter and for a final `*`. Two templates of
/// one shape are the same path to OpenAPI, so each shape is one path item.
fn shape(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            if segment == "*" || segment.starts_with('{') {
                "{}"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The `paths` object: per shape and operation, the price the gateway would charge for a
/// request of that shape (the most specific; the first created on a tie, as
/// [`pipeline::find_price`] picks), kept when it has an upstream.
fn paths(prices: &[PriceRef], rails: RailConfigs<'_>) -> Map<String, Value> {
    let mut by_shape: BTreeMap<String, Vec<&PriceRef>> = BTreeMap::new();
    for price in prices {
        by_shape
            .entry(shape(&price.definition.route.path))
            .or_default()
            .push(price);
    }
    let mut items: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for (shape, group) in &by_shape {
        let mut template: Option<(String, Vec<String>)> = None;
        for op in OPERATIONS {
            // The discovery document itself answers GET (and so HEAD) on this path.
            if shape == DOCUMENT_PATH && matches!(op, "get" | "head") {
                continue;
            }
            let request_method = op.to_ascii_uppercase();
            let mut best: Option<(Vec<u8>, &PriceRef)> = None;
            for price in group {
                // A `{}` segment matches only a parameter or a wildcard, never a literal.
                if let Some(key) = match_route(&price.definition.route, &request_method, shape)
                    && best.as_ref().is_none_or(|(k, _)| key > *k)
                {
                    best = Some((key, price));
                }
            }
            let Some((_, price)) = best else { continue };
            if price.definition.upstream_url.is_none() {
                continue;
            }
            let (path, names) =
                template.get_or_insert_with(|| path_template(&price.definition.route.path));
            let operation = operation(op, &price.definition, names, rails);
            items
                .entry(path.clone())
                .or_default()
                .insert(op.to_owned(), operation);
        }
    }
    items
        .into_iter()
        .map(|(path, item)| (path, Value::Object(item)))
        .collect()
}

/// The OpenAPI template of a route path and its parameter names, in order: `{name}` keeps
/// its name (made unique), a final `*` becomes `{rest}`.
fn path_template(path: &str) -> (String, Vec<String>) {
    let mut names: Vec<String> = Vec::new();
    let mut segments = Vec::new();
    for segment in path.split('/') {
        let wanted = if segment == "*" {
            WILDCARD_PARAMETER
        } else if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            name
        } else {
            segments.push(segment.to_owned());
            continue;
        };
        let mut name = wanted.to_owned();
        let mut n = 2;
        while names.contains(&name) {
            name = format!("{wanted}_{n}");
            n += 1;
        }
        segments.push(format!("{{{name}}}"));
        names.push(name);
    }
    (segments.join("/"), names)
}

/// One operation: its parameters, body, responses and offers.
fn operation(op: &str, def: &PriceDefinition, names: &[String], rails: RailConfigs<'_>) -> Value {
    let mut operation = Map::new();
    if let Some(description) = &def.description {
        operation.insert("summary".into(), json!(description));
    }
    let wildcard = def.route.path.ends_with("/*");
    let parameters: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut parameter = json!({
                "name": name,
                "in": "path",
                "required": true,
                "schema": {"type": "string"},
            });
            if wildcard && i + 1 == names.len() {
                parameter["description"] =
                    json!("The rest of the path: any value, `/` included, possibly empty.");
            }
            parameter
        })
        .collect();
    if !parameters.is_empty() {
        operation.insert("parameters".into(), Value::Array(parameters));
    }
    if OPERATIONS_WITH_BODY.contains(&op) {
        operation.insert(
            "requestBody".into(),
            json!({
                "description": format!(
                    "Forwarded to the upstream as is (at most {} bytes). The 402 challenge \
                     binds the body's digest: pay, then send the same body again.",
                    gateway::REQUEST_BODY_BYTES_MAX
                ),
                "required": false,
                "content": {"*/*": {"schema": {}}},
            }),
        );
    }
    operation.insert(
        "responses".into(),
        json!({
            "402": {
                "description": "Payment Required: `WWW-Authenticate: Payment` challenges, one \
                                per offer. Pay one and retry with `Authorization: Payment`.",
            },
            "default": {
                "description": "The upstream's answer; a 2xx carries a `Payment-Receipt`.",
            },
        }),
    );
    operation.insert("x-payment-info".into(), payment_info(def, rails));
    Value::Object(operation)
}

/// `x-payment-info` in the multi-offer form: one offer per accepted method, in the price's
/// order of preference.
fn payment_info(def: &PriceDefinition, rails: RailConfigs<'_>) -> Value {
    let offers: Vec<Value> = def
        .methods
        .iter()
        .map(|method| {
            let mut offer = Map::new();
            offer.insert("intent".into(), json!(def.intent));
            offer.insert("method".into(), json!(method));
            offer.insert("amount".into(), json!(def.amount));
            offer.insert("currency".into(), json!(offer_currency(method, def, rails)));
            if let Some(description) = &def.description {
                offer.insert("description".into(), json!(description));
            }
            Value::Object(offer)
        })
        .collect();
    json!({ "offers": offers })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{CHALLENGE_TTL_S_DEFAULT, Route};

    fn price(id: &str, method: &str, path: &str, upstream: bool) -> PriceRef {
        PriceRef {
            id: id.into(),
            version: 1,
            definition: PriceDefinition {
                route: Route {
                    method: method.into(),
                    path: path.into(),
                },
                amount: "250".into(),
                currency: "usd".into(),
                methods: vec!["turnpike".into()],
                intent: "charge".into(),
                description: None,
                challenge_ttl_s: CHALLENGE_TTL_S_DEFAULT,
                upstream_url: upstream.then(|| "http://upstream.test".to_owned()),
            },
        }
    }

    fn ops(paths: &Map<String, Value>, path: &str) -> Vec<String> {
        paths[path]
            .as_object()
            .map(|item| item.keys().cloned().collect())
            .unwrap_or_default()
    }

    #[test]
    fn templates_name_parameters_and_the_wildcard() {
        assert_eq!(
            path_template("/weather/{city}/*"),
            (
                "/weather/{city}/{rest}".into(),
                vec!["city".into(), "rest".into()]
            )
        );
        assert_eq!(
            path_template("/a/{rest}/{rest}/*"),
            (
                "/a/{rest}/{rest_2}/{rest_3}".into(),
                vec!["rest".into(), "rest_2".into(), "rest_3".into()]
            )
        );
        assert_eq!(path_template("/"), ("/".into(), vec![]));
        assert_eq!(shape("/a/{x}/*"), "/a/{}/{}");
    }

    #[test]
    fn one_path_item_per_shape_with_the_price_the_gateway_would_charge() {
        let prices = [
            price("p1", "*", "/files/*", true),
            price("p2", "GET", "/files/{name}", true),
            price("p3", "GET", "/files/{other}", true),
            price("p4", "DELETE", "/files/{name}", false),
            price("p5", "PROPFIND", "/dav", true),
            price("p6", "GET", "/openapi.json", true),
            price("p7", "POST", "/openapi.json", true),
        ];
        let paths = paths(&prices, RailConfigs::default());
        assert_eq!(
            paths.keys().collect::<Vec<_>>(),
            ["/files/{name}", "/openapi.json"]
        );
        // GET: the parameter route beats the wildcard; DELETE: its price has no upstream.
        assert_eq!(
            ops(&paths, "/files/{name}"),
            ["get", "put", "post", "options", "head", "patch", "trace"]
        );
        let get = &paths["/files/{name}"]["get"];
        assert!(get["parameters"][0].get("description").is_none(), "{get}");
        assert!(get.get("requestBody").is_none());
        let post = &paths["/files/{name}"]["post"];
        assert!(post["parameters"][0]["description"].is_string(), "{post}");
        assert!(post["requestBody"]["content"]["*/*"].is_object());
        assert_eq!(ops(&paths, "/openapi.json"), ["post"]);
    }

    #[test]
    fn no_gateway_route_is_no_document() {
        let tenant = TenantRow {
            id: "ten_a".into(),
            name: "Shop".into(),
            slug: "shop".into(),
            realm: "shop".into(),
            created_at: 0,
        };
        assert!(
            document(
                &tenant,
                "http://t/gw/shop",
                &[price("p", "GET", "/a", false)],
                RailConfigs::default()
            )
            .is_none()
        );
        let one = document(
            &tenant,
            "http://t/gw/shop",
            &[price("p", "GET", "/a", true)],
            RailConfigs::default(),
        )
        .unwrap();
        let two = document(
            &tenant,
            "http://t/gw/shop",
            &[price("p", "GET", "/b", true)],
            RailConfigs::default(),
        )
        .unwrap();
        assert_eq!(one["info"]["title"], "Shop");
        assert_eq!(
            one["info"]["version"].as_str().unwrap().len(),
            VERSION_HEX_LEN
        );
        assert_ne!(one["info"]["version"], two["info"]["version"]);
        let offer = &one["paths"]["/a"]["get"]["x-payment-info"]["offers"][0];
        assert_eq!(
            *offer,
            json!({"intent": "charge", "method": "turnpike", "amount": "250", "currency": "usd"})
        );
    }
}
