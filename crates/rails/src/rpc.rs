//! JSON-RPC to EVM-compatible chains, shared by the `evm` and `tempo` rails: one client per
//! endpoint with bounded timeouts, broadcasts classified into accepted / rejected / unknown, and
//! receipts counted only with enough confirmations.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::client::RpcClient;
use alloy::rpc::types::{Filter, Log, TransactionReceipt};
use alloy::sol_types::SolEvent;
use alloy::transports::http::Http;
use alloy::transports::{RpcError, TransportErrorKind};

use crate::Unavailable;

/// Longest one JSON-RPC call may take.
pub const CALL_TIMEOUT_MS: u64 = 5_000;
/// Interval between receipt polls while waiting.
pub const POLL_INTERVAL_MS: u64 = 100;

/// Providers by endpoint URL, created once.
#[derive(Debug, Default)]
pub struct Providers {
    by_url: Mutex<HashMap<String, RootProvider>>,
}

impl Providers {
    /// The provider for `url` (http or https).
    pub fn get(&self, url: &str) -> Result<RootProvider, Unavailable> {
        let mut map = self.by_url.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(provider) = map.get(url) {
            return Ok(provider.clone());
        }
        let parsed = url
            .parse()
            .map_err(|_| Unavailable("the rail's RPC URL is invalid".into()))?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(CALL_TIMEOUT_MS))
            .connect_timeout(Duration::from_millis(CALL_TIMEOUT_MS))
            .build()
            .map_err(|_| Unavailable("no HTTP client for the rail's RPC".into()))?;
        let http = Http::with_client(client, parsed);
        let local = http.guess_local();
        let provider = RootProvider::new(RpcClient::new(http, local));
        map.insert(url.to_owned(), provider.clone());
        Ok(provider)
    }
}

/// What a broadcast achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broadcast {
    /// The node took it (or already had it).
    Accepted,
    /// The node refused it for good (invalid, reverted, underfunded): the message says why.
    Rejected(String),
    /// Unknown: the node was unreachable or answered ambiguously.
    Unknown,
}

/// Send a signed transaction.
pub async fn broadcast(provider: &RootProvider, raw: &Bytes) -> Broadcast {
    match provider.send_raw_transaction(raw).await {
        Ok(_) => Broadcast::Accepted,
        Err(err) => classify_send_error(&err),
    }
}

fn classify_send_error(err: &RpcError<TransportErrorKind>) -> Broadcast {
    let Some(payload) = err.as_error_resp() else {
        return Broadcast::Unknown;
    };
    let message = payload.message.to_ascii_lowercase();
    if message.contains("already known") || message.contains("already imported") {
        Broadcast::Accepted
    } else if message.contains("nonce too low") || message.contains("replacement") {
        // Perhaps this very transaction was mined already: only its receipt can tell.
        Broadcast::Unknown
    } else {
        Broadcast::Rejected(payload.message.to_string())
    }
}

/// What the chain says about a transaction.
#[derive(Debug, Clone)]
pub enum ReceiptState {
    /// Mined, successful, with enough confirmations.
    Confirmed(Box<TransactionReceipt>),
    /// Mined and reverted (final once confirmed).
    Reverted,
    /// Mined but fewer confirmations than required so far.
    Unconfirmed,
    /// Not mined (not known, or still in the mempool).
    NotFound,
    /// The node did not answer.
    Unreachable,
}

/// The state of `hash`, requiring `confirmations` blocks (the including block counts as one).
pub async fn receipt_state(
    provider: &RootProvider,
    hash: B256,
    confirmations: u32,
) -> ReceiptState {
    let receipt = match provider.get_transaction_receipt(hash).await {
        Ok(Some(receipt)) => receipt,
        Ok(None) => return ReceiptState::NotFound,
        Err(_) => return ReceiptState::Unreachable,
    };
    let Some(included) = receipt.block_number else {
        return ReceiptState::NotFound;
    };
    if confirmations > 1 {
        match provider.get_block_number().await {
            Ok(head) if head.saturating_sub(included) + 1 >= u64::from(confirmations) => {}
            Ok(_) => return ReceiptState::Unconfirmed,
            Err(_) => return ReceiptState::Unreachable,
        }
    }
    if receipt.status() {
        ReceiptState::Confirmed(Box::new(receipt))
    } else {
        ReceiptState::Reverted
    }
}

/// Poll [`receipt_state`] until it is final (confirmed or reverted) or `wait_ms` passes; returns
/// the last state seen.
pub async fn wait_receipt(
    provider: &RootProvider,
    hash: B256,
    confirmations: u32,
    wait_ms: u64,
) -> ReceiptState {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    loop {
        let state = receipt_state(provider, hash, confirmations).await;
        if matches!(state, ReceiptState::Confirmed(_) | ReceiptState::Reverted)
            || tokio::time::Instant::now() >= deadline
        {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }
}

alloy::sol! {
    /// ERC-20 `Transfer` (topic `0xddf252ad…`).
    event Transfer(address indexed from, address indexed to, uint256 value);
}

/// One ERC-20 transfer found in a receipt's logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenTransfer {
    /// Sender.
    pub from: Address,
    /// Recipient.
    pub to: Address,
    /// Base units.
    pub value: U256,
}

/// The `Transfer` logs emitted by `token` in `receipt` (logs of other contracts never count).
pub fn token_transfers(receipt: &TransactionReceipt, token: Address) -> Vec<TokenTransfer> {
    receipt
        .inner
        .logs()
        .iter()
        .filter(|log| log.address() == token)
        .filter_map(decode_transfer)
        .collect()
}

/// The ERC-20 `Transfer` a log carries, if it is one (three topics, a 32-byte value).
pub fn decode_transfer(log: &Log) -> Option<TokenTransfer> {
    let topics = log.topics();
    if topics.len() != 3 || topics[0] != Transfer::SIGNATURE_HASH {
        return None;
    }
    let data = &log.data().data;
    (data.len() == 32).then(|| TokenTransfer {
        from: Address::from_word(topics[1]),
        to: Address::from_word(topics[2]),
        value: U256::from_be_slice(data),
    })
}

/// Most addresses one [`transfer_logs`] call filters recipients by (one `eth_getLogs` topic
/// list; providers limit its length).
pub const LOG_RECIPIENTS_MAX: usize = 500;
/// Most blocks one [`transfer_logs`] call spans (providers limit `eth_getLogs` ranges).
pub const LOG_BLOCK_RANGE_MAX: u64 = 1_000;

/// One ERC-20 transfer found by [`transfer_logs`], with where the chain put it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferLog {
    /// The token contract that emitted it.
    pub token: Address,
    /// The transfer.
    pub transfer: TokenTransfer,
    /// The block that includes it.
    pub block_number: u64,
    /// Its transaction.
    pub tx_hash: B256,
    /// Its index among the block's logs.
    pub log_index: u64,
}

/// The chain's latest block number.
pub async fn block_number(provider: &RootProvider) -> Result<u64, Unavailable> {
    provider
        .get_block_number()
        .await
        .map_err(|_| Unavailable("the RPC did not answer eth_blockNumber".into()))
}

/// The chain id the RPC serves.
pub async fn chain_id(provider: &RootProvider) -> Result<u64, Unavailable> {
    provider
        .get_chain_id()
        .await
        .map_err(|_| Unavailable("the RPC did not answer eth_chainId".into()))
}

/// The `Transfer` logs of `tokens` to any of `recipients` in blocks `from_block..=to_block`
/// (`eth_getLogs`), in chain order. At most [`LOG_RECIPIENTS_MAX`] recipients and
/// [`LOG_BLOCK_RANGE_MAX`] blocks per call. Removed (reorged) logs and logs without a block,
/// transaction or index are left out.
pub async fn transfer_logs(
    provider: &RootProvider,
    tokens: &[Address],
    recipients: &[Address],
    from_block: u64,
    to_block: u64,
) -> Result<Vec<TransferLog>, Unavailable> {
    assert!(
        recipients.len() <= LOG_RECIPIENTS_MAX,
        "transfer_logs: too many recipients"
    );
    assert!(
        from_block <= to_block && to_block - from_block < LOG_BLOCK_RANGE_MAX,
        "transfer_logs: bad block range"
    );
    if tokens.is_empty() || recipients.is_empty() {
        return Ok(Vec::new());
    }
    let topic = |a: &Address| a.into_word();
    let filter = Filter::new()
        .address(tokens.to_vec())
        .event_signature(Transfer::SIGNATURE_HASH)
        .topic2(recipients.iter().map(topic).collect::<Vec<B256>>())
        .from_block(from_block)
        .to_block(to_block);
    let logs = provider
        .get_logs(&filter)
        .await
        .map_err(|_| Unavailable("the RPC did not answer eth_getLogs".into()))?;
    let mut found: Vec<TransferLog> = logs
        .iter()
        .filter(|log| !log.removed)
        .filter_map(|log| {
            Some(TransferLog {
                token: log.address(),
                transfer: decode_transfer(log)?,
                block_number: log.block_number?,
                tx_hash: log.transaction_hash?,
                log_index: log.log_index?,
            })
        })
        .filter(|found| tokens.contains(&found.token) && recipients.contains(&found.transfer.to))
        .collect();
    found.sort_by_key(|log| (log.block_number, log.log_index));
    Ok(found)
}
