//! The real-chain harness and `contracts/TestStablecoin.sol` on anvil: the contract compiles from
//! source and matches the interface the tests call; EIP-3009 authorizations signed here move
//! tokens when another account submits them, once, and only inside their validity window; raw
//! `transfer` transactions signed here are what the chain mines; and the RPC proxy cuts and
//! restores the connection while the chain keeps its state.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::time::Duration;

use alloy::network::TransactionBuilder;
use alloy::primitives::{B256, FixedBytes, U256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use alloy::sol_types::{SolCall, SolEvent};
use support::chain::{
    ANVIL_CHAIN_ID, Anvil, RpcProxy, TOKEN_DECIMALS, TOKEN_NAME, TOKEN_VERSION, TestStablecoin,
    artifacts, broadcast_transfer, challenge_hash, deploy_stablecoin, mint, send_raw,
    sign_authorization, sign_receive_authorization, sign_transfer, submit_authorization,
    token_domain, transfers, unix_now,
};

/// 1 TUSD in base units.
const ONE: u128 = 1_000_000;

#[test]
fn the_contract_compiles_and_has_every_function_the_harness_calls() {
    let artifacts = artifacts();
    assert!(artifacts.path.is_file(), "{}", artifacts.path.display());
    assert!(artifacts.bytecode("TestStablecoin").len() > 1000);
    let abi = artifacts.abi("TestStablecoin");
    let compiled: HashSet<[u8; 4]> = abi.functions().map(|f| f.selector().0).collect();
    for selector in TestStablecoin::TestStablecoinCalls::SELECTORS {
        assert!(
            compiled.contains(selector),
            "the sol! interface calls {selector:02x?}, which the contract lacks"
        );
    }
    let events: HashSet<B256> = abi.events().map(|e| e.selector()).collect();
    assert!(events.contains(&TestStablecoin::Transfer::SIGNATURE_HASH));
    assert!(events.contains(&TestStablecoin::AuthorizationUsed::SIGNATURE_HASH));
    // Cached under the target directory, named by the hash of what it was compiled from.
    assert!(artifacts.path.starts_with(env!("CARGO_TARGET_TMPDIR")));
    let stem = artifacts.path.file_stem().unwrap().to_str().unwrap();
    assert!(stem.parse::<B256>().is_ok(), "{stem}");
}

#[tokio::test]
async fn deploy_and_mint_with_the_eip712_domain_from_the_constructor() {
    let anvil = Anvil::start().await;
    assert_eq!(anvil.chain_id(), ANVIL_CHAIN_ID);
    assert_eq!(anvil.private_keys().len(), 10);
    assert!(anvil.private_key_hex(1).starts_with("0x") && anvil.private_key_hex(1).len() == 66);
    assert!(anvil.balance(anvil.address(1)).await > U256::ZERO);

    let token = deploy_stablecoin(&anvil, TOKEN_NAME, TOKEN_VERSION).await;
    let coin = TestStablecoin::new(token, anvil.provider());
    assert_eq!(coin.name().call().await.unwrap(), TOKEN_NAME);
    assert_eq!(coin.symbol().call().await.unwrap(), "TUSD");
    assert_eq!(coin.version().call().await.unwrap(), TOKEN_VERSION);
    assert_eq!(coin.decimals().call().await.unwrap(), TOKEN_DECIMALS);

    // EIP-5267 reports the domain the harness signs with.
    let domain = token_domain(TOKEN_NAME, TOKEN_VERSION, anvil.chain_id(), token);
    let reported = coin.eip712Domain().call().await.unwrap();
    assert_eq!(reported.fields, FixedBytes([0x0f]));
    assert_eq!(reported.name, TOKEN_NAME);
    assert_eq!(reported.version, TOKEN_VERSION);
    assert_eq!(reported.chainId, U256::from(ANVIL_CHAIN_ID));
    assert_eq!(reported.verifyingContract, token);
    assert_eq!(reported.salt, B256::ZERO);
    assert!(reported.extensions.is_empty());
    assert_eq!(
        coin.DOMAIN_SEPARATOR().call().await.unwrap(),
        domain.separator()
    );

    let payer = anvil.address(1);
    mint(&anvil, token, payer, 5 * ONE).await;
    mint(&anvil, token, payer, ONE).await;
    assert_eq!(anvil.token_balance(token, payer).await, U256::from(6 * ONE));
    assert_eq!(
        coin.totalSupply().call().await.unwrap(),
        U256::from(6 * ONE)
    );

    // Only the deployer mints.
    let stranger = TestStablecoin::new(token, anvil.wallet_provider(anvil.signer(1)));
    let err = stranger
        .mint(payer, U256::from(ONE))
        .send()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("only the deployer mints"), "{err}");
}

#[tokio::test]
async fn an_authorization_moves_tokens_once_and_only_in_its_window() {
    let anvil = Anvil::start().await;
    let token = deploy_stablecoin(&anvil, TOKEN_NAME, TOKEN_VERSION).await;
    let coin = TestStablecoin::new(token, anvil.provider());
    let domain = token_domain(TOKEN_NAME, TOKEN_VERSION, anvil.chain_id(), token);
    let (payer, payee, relayer) = (anvil.signer(1), anvil.address(2), anvil.signer(3));
    mint(&anvil, token, payer.address(), 5 * ONE).await;

    // Signed by the payer, bound to a challenge, submitted (and paid for) by the relayer.
    let nonce = challenge_hash("ch_0123456789", "api.example.com");
    let auth = sign_authorization(
        &payer,
        &domain,
        payee,
        1_250_000,
        0,
        unix_now() + 300,
        nonce,
    );
    let payload = auth.payload();
    assert_eq!(payload["type"], "authorization");
    assert_eq!(payload["from"], payer.address().to_checksum(None));
    assert_eq!(payload["value"], "1250000");
    assert_eq!(payload["nonce"], nonce.to_string());
    assert_eq!(payload["signature"].as_str().unwrap().len(), 2 + 65 * 2);
    assert!(
        !coin
            .authorizationState(payer.address(), nonce)
            .call()
            .await
            .unwrap()
    );
    let payer_eth = anvil.balance(payer.address()).await;

    let receipt = submit_authorization(&anvil, relayer.clone(), token, &auth)
        .await
        .unwrap();
    assert!(receipt.status());
    assert_eq!(receipt.from, relayer.address());
    let moved = transfers(token, &receipt);
    assert_eq!(moved.len(), 1, "{receipt:?}");
    assert_eq!(
        (moved[0].from, moved[0].to, moved[0].value),
        (payer.address(), payee, U256::from(1_250_000))
    );
    let used: Vec<_> = receipt
        .inner
        .logs()
        .iter()
        .filter_map(|log| log.log_decode::<TestStablecoin::AuthorizationUsed>().ok())
        .map(|log| log.inner.data)
        .collect();
    assert_eq!(used.len(), 1);
    assert_eq!(
        (used[0].authorizer, used[0].nonce),
        (payer.address(), nonce)
    );
    assert_eq!(
        anvil.token_balance(token, payer.address()).await,
        U256::from(3_750_000)
    );
    assert_eq!(
        anvil.token_balance(token, payee).await,
        U256::from(1_250_000)
    );
    assert_eq!(
        anvil.balance(payer.address()).await,
        payer_eth,
        "the relayer pays gas"
    );
    assert!(
        coin.authorizationState(payer.address(), nonce)
            .call()
            .await
            .unwrap()
    );

    // Replayed: refused at estimation, and reverted on chain when forced in.
    let err = submit_authorization(&anvil, relayer.clone(), token, &auth)
        .await
        .unwrap_err();
    assert!(err.contains("authorization is used"), "{err}");
    let forced = TransactionRequest::default()
        .with_to(token)
        .with_input(auth.transfer_call().abi_encode())
        .with_gas_limit(200_000);
    let receipt = anvil
        .wallet_provider(relayer.clone())
        .send_transaction(forced)
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(!receipt.status(), "a replay must revert: {receipt:?}");
    assert!(transfers(token, &receipt).is_empty());

    // Expired (validBefore in the past) and not yet valid (validAfter in the future).
    let expired = sign_authorization(
        &payer,
        &domain,
        payee,
        ONE,
        0,
        unix_now() - 1,
        B256::repeat_byte(1),
    );
    let err = submit_authorization(&anvil, relayer.clone(), token, &expired)
        .await
        .unwrap_err();
    assert!(err.contains("authorization is expired"), "{err}");
    let early = sign_authorization(
        &payer,
        &domain,
        payee,
        ONE,
        unix_now() + 3600,
        unix_now() + 7200,
        B256::repeat_byte(2),
    );
    let err = submit_authorization(&anvil, relayer.clone(), token, &early)
        .await
        .unwrap_err();
    assert!(err.contains("authorization is not yet valid"), "{err}");

    // Valid when signed, expired once the chain's clock passes validBefore.
    let short = sign_authorization(
        &payer,
        &domain,
        payee,
        ONE,
        0,
        unix_now() + 60,
        B256::repeat_byte(3),
    );
    anvil.increase_time(120).await;
    anvil.mine(1).await;
    let err = submit_authorization(&anvil, relayer.clone(), token, &short)
        .await
        .unwrap_err();
    assert!(err.contains("authorization is expired"), "{err}");

    // Another domain (version), a tampered amount, another payer's claim: not the payer's signature.
    let other_domain = token_domain(TOKEN_NAME, "2", anvil.chain_id(), token);
    let wrong_domain = sign_authorization(
        &payer,
        &other_domain,
        payee,
        ONE,
        0,
        u64::MAX,
        B256::repeat_byte(4),
    );
    let mut tampered = sign_authorization(
        &payer,
        &domain,
        payee,
        ONE,
        0,
        u64::MAX,
        B256::repeat_byte(5),
    );
    tampered.value = U256::from(2 * ONE);
    let mut impostor = sign_authorization(
        &anvil.signer(4),
        &domain,
        payee,
        ONE,
        0,
        u64::MAX,
        B256::repeat_byte(6),
    );
    impostor.from = payer.address();
    for bad in [&wrong_domain, &tampered, &impostor] {
        let err = submit_authorization(&anvil, relayer.clone(), token, bad)
            .await
            .unwrap_err();
        assert!(err.contains("invalid signature"), "{err}");
    }

    // receiveWithAuthorization: only the payee may submit it.
    let receive = sign_receive_authorization(
        &payer,
        &domain,
        payee,
        ONE,
        0,
        u64::MAX,
        B256::repeat_byte(7),
    );
    let call = receive.receive_call();
    let err = TestStablecoin::new(token, anvil.wallet_provider(relayer.clone()))
        .receiveWithAuthorization(
            call.from,
            call.to,
            call.value,
            call.validAfter,
            call.validBefore,
            call.nonce,
            call.v,
            call.r,
            call.s,
        )
        .send()
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("caller must be the payee"),
        "{err}"
    );
    let receipt = TestStablecoin::new(token, anvil.wallet_provider(anvil.signer(2)))
        .receiveWithAuthorization(
            call.from,
            call.to,
            call.value,
            call.validAfter,
            call.validBefore,
            call.nonce,
            call.v,
            call.r,
            call.s,
        )
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(receipt.status());
    assert_eq!(
        anvil.token_balance(token, payer.address()).await,
        U256::from(2_750_000)
    );
    assert_eq!(
        anvil.token_balance(token, payee).await,
        U256::from(2_250_000)
    );
}

#[tokio::test]
async fn signed_and_broadcast_transfers_are_what_the_chain_mines() {
    let anvil = Anvil::start().await;
    let token = deploy_stablecoin(&anvil, TOKEN_NAME, TOKEN_VERSION).await;
    let (payer, payee) = (anvil.signer(1), anvil.address(2));
    mint(&anvil, token, payer.address(), 5 * ONE).await;

    // type="transaction": signed here, broadcast by someone else, mined under the same hash.
    let signed = sign_transfer(&anvil, &payer, token, payee, ONE).await;
    let payload = signed.payload();
    assert_eq!(payload["type"], "transaction");
    assert!(payload["signature"].as_str().unwrap().starts_with("0x02"));
    assert!(anvil.receipt(signed.hash).await.is_none());
    assert_eq!(send_raw(&anvil, &signed.raw).await.unwrap(), signed.hash);
    let receipt = anvil.receipt(signed.hash).await.expect("automine");
    assert!(receipt.status());
    assert_eq!(transfers(token, &receipt)[0].value, U256::from(ONE));
    // The same bytes again: the chain refuses them (nonce used).
    assert!(send_raw(&anvil, &signed.raw).await.is_err());

    // With automine off the transaction waits in the pool until a block is mined.
    anvil.set_automine(false).await;
    let pending = sign_transfer(&anvil, &payer, token, payee, ONE).await;
    let height = anvil.block_number().await;
    send_raw(&anvil, &pending.raw).await.unwrap();
    assert!(anvil.receipt(pending.hash).await.is_none());
    anvil.mine(2).await;
    assert_eq!(anvil.block_number().await, height + 2);
    assert!(anvil.receipt(pending.hash).await.expect("mined").status());
    anvil.set_automine(true).await;

    // type="hash": the payer broadcasts and waits itself.
    let hash = broadcast_transfer(&anvil, &payer, token, payee, ONE).await;
    let receipt = anvil.receipt(hash).await.expect("mined");
    assert_eq!(transfers(token, &receipt)[0].to, payee);
    assert_eq!(anvil.token_balance(token, payee).await, U256::from(3 * ONE));
    assert_eq!(
        anvil.token_balance(token, payer.address()).await,
        U256::from(2 * ONE)
    );
}

#[tokio::test]
async fn the_proxy_cuts_the_rpc_and_restores_it_with_the_chain_state_intact() {
    let anvil = Anvil::start().await;
    let proxy = RpcProxy::start(anvil.rpc_url()).await;
    let via_proxy = ProviderBuilder::new().connect_http(proxy.url().parse().unwrap());
    let height = via_proxy.get_block_number().await.unwrap();
    assert_eq!(height, anvil.block_number().await);

    // Mid-settlement: a transfer reaches the pool through the proxy, then the RPC dies.
    let token = deploy_stablecoin(&anvil, TOKEN_NAME, TOKEN_VERSION).await;
    let (payer, payee) = (anvil.signer(1), anvil.address(2));
    mint(&anvil, token, payer.address(), ONE).await;
    anvil.set_automine(false).await;
    let signed = sign_transfer(&anvil, &payer, token, payee, ONE).await;
    let hash = *via_proxy
        .send_raw_transaction(&signed.raw)
        .await
        .unwrap()
        .tx_hash();
    assert_eq!(hash, signed.hash);

    proxy.cut();
    assert!(proxy.is_cut());
    for _ in 0..3 {
        let result = tokio::time::timeout(Duration::from_secs(10), via_proxy.get_block_number())
            .await
            .expect("a cut RPC fails fast instead of hanging");
        assert!(result.is_err(), "the cut proxy answered: {result:?}");
        let receipt = tokio::time::timeout(
            Duration::from_secs(10),
            via_proxy.get_transaction_receipt(hash),
        )
        .await
        .expect("fails fast");
        assert!(receipt.is_err());
    }

    // The chain goes on without the proxy: the transfer is mined.
    anvil.mine(1).await;
    assert!(anvil.receipt(hash).await.expect("mined").status());

    proxy.restore();
    assert!(!proxy.is_cut());
    let receipt = via_proxy
        .get_transaction_receipt(hash)
        .await
        .unwrap()
        .expect("the restored RPC sees the mined transfer");
    assert!(receipt.status());
    assert!(via_proxy.get_block_number().await.unwrap() > height);
    assert_eq!(anvil.token_balance(token, payee).await, U256::from(ONE));
    anvil.set_automine(true).await;
}

/// The mppx CLI pays an `evm` charge with an `authorization` credential through
/// tests/mppx/mppx.config.mjs, against the JS stand-in in tests/mppx/e2e.mjs (its own anvil and
/// token): paid, replay refused, unfunded payer rejected (exit 75), `mppx validate` passes.
#[tokio::test]
async fn the_mppx_cli_pays_an_evm_charge_through_the_checked_in_config() {
    let root = support::chain::repo_root();
    assert!(
        root.join("node_modules/.bin/mppx").is_file(),
        "mppx not found in {}/node_modules: run `npm ci` at the repository root",
        root.display()
    );
    let out = tokio::process::Command::new("node")
        .arg(root.join("tests/mppx/e2e.mjs"))
        .current_dir(&root)
        .env("NO_UPDATE_NOTIFIER", "1")
        .env("TURNPIKE_CONTRACT_ARTIFACT", &artifacts().path)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(240), out)
        .await
        .expect("tests/mppx/e2e.mjs finishes")
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all steps passed"),
        "tests/mppx/e2e.mjs failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
