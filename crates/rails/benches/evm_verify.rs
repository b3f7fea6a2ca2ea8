//! Offline verification of an `evm` EIP-3009 `authorization` credential (issue 6 target: at
//! least 10,000 per second on one core): field checks, the EIP-712 digest and signer recovery.
//! `cargo bench -p turnpike-rails --bench evm_verify`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use alloy::primitives::{Address, U256};
use alloy::signers::SignerSync;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::{Eip712Domain, SolStruct};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use turnpike_protocol::Credential;
use turnpike_rails::evm::{EvmConfig, EvmSettings, TokenConfig, challenge_hash};
use turnpike_rails::{ChallengeFacts, PriceTerms, Rail};

alloy::sol! {
    struct TransferWithAuthorization {
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
    }
}

fn bench(c: &mut Criterion) {
    let token: Address = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
        .parse()
        .unwrap();
    let recipient: Address = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
        .parse()
        .unwrap();
    let settings = EvmSettings {
        chain_id: 31337,
        rpc_url: "http://127.0.0.1:8545".into(),
        recipient,
        confirmations: 1,
        tokens: vec![TokenConfig {
            currency: "usdc".into(),
            address: token,
            decimals: 6,
            name: Some("Turnpike Test USD".into()),
            version: Some("1".into()),
        }],
        credential_types: None,
        min_gas_wei: None,
        hash_max_amount: None,
        permit2_address: None,
        hot_wallet_address: None,
    };
    let config = EvmConfig::new(
        settings,
        Some("0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"),
    )
    .unwrap();
    let payer = PrivateKeySigner::random();
    let (id, realm) = ("kM9xPqWvT2nJrHsY4aDfEb", "api.example.com");
    let domain = Eip712Domain::new(
        Some("Turnpike Test USD".into()),
        Some("1".into()),
        Some(U256::from(31337)),
        Some(token),
        None,
    );
    let valid_before = 4_000_000_000u64;
    let message = TransferWithAuthorization {
        from: payer.address(),
        to: recipient,
        value: U256::from(250_000),
        validAfter: U256::ZERO,
        validBefore: U256::from(valid_before),
        nonce: challenge_hash(id, realm),
    };
    let signature = payer
        .sign_hash_sync(&message.eip712_signing_hash(&domain))
        .unwrap();
    let credential: Credential = serde_json::from_value(json!({
        "challenge": {"id": id, "realm": realm, "method": "evm", "intent": "charge",
                      "request": "e30", "expires": "2096-01-01T00:00:00Z"},
        "source": format!("did:pkh:eip155:31337:{}", payer.address()),
        "payload": {
            "type": "authorization",
            "from": payer.address().to_checksum(None),
            "to": recipient.to_checksum(None),
            "value": "250000",
            "validAfter": "0",
            "validBefore": valid_before.to_string(),
            "nonce": challenge_hash(id, realm).to_string(),
            "signature": alloy::primitives::Bytes::from(signature.as_bytes()).to_string(),
        }
    }))
    .unwrap();
    let rail = turnpike_rails::EvmRail::new();
    let price = PriceTerms {
        amount: "250000",
        amount_minor: 250_000,
        currency: "usdc",
        description: None,
    };
    let facts = ChallengeFacts {
        id,
        realm,
        expires_at_s: 4_000_000_000,
    };
    let now_s = 1_800_000_000;
    rail.verify(&config, facts, &price, &credential, now_s)
        .expect("the benchmark's credential verifies");
    c.bench_function("evm_authorization_verify_offline", |b| {
        b.iter(|| {
            rail.verify(
                &config,
                facts,
                &price,
                std::hint::black_box(&credential),
                now_s,
            )
            .unwrap()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
