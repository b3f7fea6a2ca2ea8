//! Real-chain harness for the `evm` rail: a local anvil chain (npm `@foundry-rs/anvil`, installed
//! by `npm ci` at the repository root), the project's `contracts/TestStablecoin.sol` compiled with
//! solc-js and cached under the cargo target directory, EIP-3009 authorization signing, raw ERC-20
//! transfer transactions, and a TCP proxy that can cut the RPC without losing chain state.
//!
//! ```ignore
//! let anvil = Anvil::start().await;
//! let token = deploy_stablecoin(&anvil, "Turnpike Test USD", "1").await;
//! mint(&anvil, token, anvil.address(1), 5_000_000).await;
//! let domain = token_domain("Turnpike Test USD", "1", anvil.chain_id(), token);
//! let auth = sign_authorization(&anvil.signer(1), &domain, anvil.address(2), 1_000_000, 0, u64::MAX, nonce);
//! ```

// Each test binary uses a different part of the harness. The `sol!` bindings of EIP-3009's
// nine-argument functions take more arguments than clippy likes.
#![allow(dead_code, clippy::too_many_arguments)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alloy::consensus::{SignableTransaction, TxEip1559, TxEnvelope};
use alloy::eips::eip2718::Encodable2718;
use alloy::network::{TransactionBuilder, TxSignerSync};
use alloy::primitives::{Address, B256, Bytes, TxKind, U256, keccak256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::{TransactionReceipt, TransactionRequest};
use alloy::signers::Signature;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol;
use alloy::sol_types::{Eip712Domain, SolCall, SolConstructor, SolStruct, eip712_domain};
use serde_json::{Value, json};

/// Chain id of a default anvil.
pub const ANVIL_CHAIN_ID: u64 = 31337;
/// The test stablecoin's EIP-712 name and version as the `evm` rail tests deploy it.
pub const TOKEN_NAME: &str = "Turnpike Test USD";
/// See [`TOKEN_NAME`].
pub const TOKEN_VERSION: &str = "1";
/// The token's decimals (fixed in the contract).
pub const TOKEN_DECIMALS: u8 = 6;

/// Longest wait for anvil to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Gas limit of the raw `transfer` transactions this harness signs (a transfer needs ~52k).
const TRANSFER_GAS: u64 = 100_000;

sol! {
    /// The interface of `contracts/TestStablecoin.sol` the tests call.
    #[sol(rpc)]
    #[derive(Debug)]
    contract TestStablecoin {
        constructor(string name_, string version_);

        event Transfer(address indexed from, address indexed to, uint256 value);
        event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);

        function name() external view returns (string);
        function symbol() external view returns (string);
        function decimals() external view returns (uint8);
        function version() external view returns (string);
        function totalSupply() external view returns (uint256);
        function balanceOf(address owner) external view returns (uint256);
        function transfer(address to, uint256 value) external returns (bool);
        function approve(address spender, uint256 value) external returns (bool);
        function allowance(address owner, address spender) external view returns (uint256);
        function mint(address to, uint256 value) external;
        function DOMAIN_SEPARATOR() external view returns (bytes32);
        function eip712Domain() external view returns (
            bytes1 fields,
            string name,
            string version,
            uint256 chainId,
            address verifyingContract,
            bytes32 salt,
            uint256[] extensions
        );
        function authorizationState(address authorizer, bytes32 nonce) external view returns (bool);
        function transferWithAuthorization(
            address from, address to, uint256 value, uint256 validAfter, uint256 validBefore,
            bytes32 nonce, uint8 v, bytes32 r, bytes32 s
        ) external;
        function receiveWithAuthorization(
            address from, address to, uint256 value, uint256 validAfter, uint256 validBefore,
            bytes32 nonce, uint8 v, bytes32 r, bytes32 s
        ) external;
    }

    /// `contracts/TestBatchSender.sol`: several ERC-20 transfers in one transaction.
    #[derive(Debug)]
    contract TestBatchSender {
        function send(address token, address[] to, uint256[] values) external;
    }

    /// EIP-3009's signed message (the `authorization` credential's EIP-712 primary type).
    #[derive(Debug)]
    struct TransferWithAuthorization {
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
    }

    /// Permit2's token permission (EIP-712 type, written here from Permit2's source, not
    /// taken from the code under test).
    #[derive(Debug)]
    struct TokenPermissions {
        address token;
        uint256 amount;
    }

    /// The `evm` spec's Permit2 witness.
    #[derive(Debug)]
    struct PaymentWitness {
        bytes32 challengeHash;
        string externalId;
    }

    /// What a `permit2` credential signs (domain `Permit2`, no version).
    #[derive(Debug)]
    struct PermitWitnessTransferFrom {
        TokenPermissions permitted;
        address spender;
        uint256 nonce;
        uint256 deadline;
        PaymentWitness witness;
    }

    /// EIP-3009's payee-submitted variant.
    #[derive(Debug)]
    struct ReceiveWithAuthorization {
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
    }
}

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// The anvil binary: `$TURNPIKE_ANVIL`, else the one `npm ci` installs.
pub fn anvil_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TURNPIKE_ANVIL") {
        return PathBuf::from(path);
    }
    repo_root().join("node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")
}

/// Seconds since the Unix epoch, by the wall clock (anvil stamps blocks with it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// alloy's HTTP transport is the workspace's reqwest 0.13, built without a rustls provider:
/// building a client panics unless one is installed, even for plain `http://`.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A running anvil on a free port, killed on drop.
#[derive(Debug)]
pub struct Anvil {
    child: Child,
    rpc_url: String,
    chain_id: u64,
    keys: Vec<B256>,
    log: Arc<Mutex<String>>,
}

impl Anvil {
    /// Start anvil (chain id 31337, automine, ten funded dev accounts).
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Start anvil with extra command-line arguments (e.g. `["--block-time", "1"]`).
    pub async fn start_with(args: &[&str]) -> Self {
        install_crypto_provider();
        let binary = anvil_binary();
        assert!(
            binary.is_file(),
            "anvil not found at {}: run `npm ci` at the repository root ({}) to install the \
             pinned test tools (package.json), or set TURNPIKE_ANVIL to an anvil binary",
            binary.display(),
            repo_root().display()
        );
        let mut child = Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()));
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<(String, Vec<B256>)>();
        let stdout = child.stdout.take().expect("piped stdout");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut keys = Vec::new();
            let mut in_keys = false;
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let trimmed = line.trim();
                if trimmed == "Private Keys" {
                    in_keys = true;
                } else if in_keys {
                    // "(0) 0xac09…ff80"; the section ends at the next blank-then-title line.
                    if let Some((_, key)) = trimmed.split_once(") ")
                        && let Ok(key) = key.parse::<B256>()
                    {
                        keys.push(key);
                    } else if !trimmed.is_empty() && !trimmed.starts_with('=') {
                        in_keys = false;
                    }
                }
                if !sent && let Some(addr) = trimmed.strip_prefix("Listening on ") {
                    let _ = tx.send((addr.to_owned(), std::mem::take(&mut keys)));
                    sent = true;
                }
                if let Ok(mut log) = sink.lock() {
                    // Keep the log bounded: anvil logs every RPC method it serves.
                    if log.len() > 1 << 20 {
                        log.clear();
                    }
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut log) = sink.lock() {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        let started = tokio::task::spawn_blocking(move || rx.recv_timeout(START_TIMEOUT))
            .await
            .expect("join");
        let mut anvil = Self {
            child,
            rpc_url: String::new(),
            chain_id: 0,
            keys: Vec::new(),
            log,
        };
        let Ok((addr, keys)) = started else {
            panic!("anvil did not report its address:\n{}", anvil.log());
        };
        assert!(
            !keys.is_empty(),
            "anvil printed no private keys:\n{}",
            anvil.log()
        );
        anvil.rpc_url = format!("http://{addr}");
        anvil.keys = keys;
        let provider = anvil.provider();
        let deadline = Instant::now() + START_TIMEOUT;
        anvil.chain_id = loop {
            match provider.get_chain_id().await {
                Ok(id) => break id,
                Err(e) if Instant::now() > deadline => {
                    panic!(
                        "anvil at {} does not answer: {e}\n{}",
                        anvil.rpc_url,
                        anvil.log()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let accounts = provider.get_accounts().await.expect("eth_accounts");
        assert_eq!(
            accounts.first(),
            Some(&anvil.address(0)),
            "anvil's first account is not the first printed key's"
        );
        anvil
    }

    /// `http://127.0.0.1:PORT`.
    pub fn rpc_url(&self) -> &str {
        &self.rpc_url
    }

    /// The chain id anvil reports (31337 unless started with `--chain-id`).
    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// What anvil printed so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The private keys of the funded dev accounts (anvil's default mnemonic), as printed.
    pub fn private_keys(&self) -> &[B256] {
        &self.keys
    }

    /// Dev account `i`'s private key as `0x…` hex (what `MPPX_PRIVATE_KEY` takes).
    pub fn private_key_hex(&self, i: usize) -> String {
        self.keys[i].to_string()
    }

    /// A signer for dev account `i` (each holds 10,000 ETH at genesis).
    pub fn signer(&self, i: usize) -> PrivateKeySigner {
        PrivateKeySigner::from_bytes(&self.keys[i]).expect("valid dev key")
    }

    /// Dev account `i`'s address.
    pub fn address(&self, i: usize) -> Address {
        self.signer(i).address()
    }

    /// A provider without a wallet (reads, raw transactions, anvil methods).
    pub fn provider(&self) -> DynProvider {
        install_crypto_provider();
        ProviderBuilder::new()
            .connect_http(self.rpc_url.parse().expect("RPC URL"))
            .erased()
    }

    /// A provider that signs what it sends with `signer`.
    pub fn wallet_provider(&self, signer: PrivateKeySigner) -> DynProvider {
        install_crypto_provider();
        ProviderBuilder::new()
            .wallet(signer)
            .connect_http(self.rpc_url.parse().expect("RPC URL"))
            .erased()
    }

    async fn rpc(&self, method: &'static str, params: Value) -> Value {
        self.provider()
            .raw_request::<_, Value>(method.into(), params)
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    /// Mine `n` blocks (`evm_mine`), e.g. to include what waits in the pool with automine off.
    pub async fn mine(&self, n: u64) {
        for _ in 0..n {
            self.rpc("evm_mine", json!([])).await;
        }
    }

    /// Turn automine on or off (`evm_setAutomine`). Off: transactions stay pending until
    /// [`Anvil::mine`].
    pub async fn set_automine(&self, on: bool) {
        self.rpc("evm_setAutomine", json!([on])).await;
    }

    /// Move the chain's clock forward by `seconds` for the next block (`evm_increaseTime`).
    pub async fn increase_time(&self, seconds: u64) {
        self.rpc("evm_increaseTime", json!([seconds])).await;
    }

    /// The latest block's number.
    pub async fn block_number(&self) -> u64 {
        self.provider()
            .get_block_number()
            .await
            .expect("eth_blockNumber")
    }

    /// Native balance (wei).
    pub async fn balance(&self, who: Address) -> U256 {
        self.provider()
            .get_balance(who)
            .await
            .expect("eth_getBalance")
    }

    /// ERC-20 balance of `who` at `token`.
    pub async fn token_balance(&self, token: Address, who: Address) -> U256 {
        TestStablecoin::new(token, self.provider())
            .balanceOf(who)
            .call()
            .await
            .expect("balanceOf")
    }

    /// The receipt of a mined transaction (`None` while pending or unknown).
    pub async fn receipt(&self, hash: B256) -> Option<TransactionReceipt> {
        self.provider()
            .get_transaction_receipt(hash)
            .await
            .expect("eth_getTransactionReceipt")
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail = &log[log.len().saturating_sub(8000)..];
            eprintln!("--- anvil log ({}), tail ---\n{tail}", self.rpc_url);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The compiled `contracts/` (ABI + creation bytecode per contract).
#[derive(Debug)]
pub struct Artifacts {
    /// The whole JSON `scripts/compile-contracts.mjs` wrote.
    pub json: Value,
    /// Where it is cached.
    pub path: PathBuf,
}

impl Artifacts {
    /// A contract's creation bytecode.
    pub fn bytecode(&self, contract: &str) -> Bytes {
        self.json["contracts"][contract]["bytecode"]
            .as_str()
            .unwrap_or_else(|| panic!("no bytecode for {contract} in {}", self.path.display()))
            .parse()
            .expect("hex bytecode")
    }

    /// A contract's ABI.
    pub fn abi(&self, contract: &str) -> alloy::json_abi::JsonAbi {
        serde_json::from_value(self.json["contracts"][contract]["abi"].clone())
            .unwrap_or_else(|e| panic!("ABI of {contract} in {}: {e}", self.path.display()))
    }
}

/// `contracts/` compiled by `scripts/compile-contracts.mjs` (solc-js from node_modules), once per
/// content: the artifact is cached in the cargo target directory under the hash of the sources,
/// the compile script and package-lock.json (which pins solc).
pub fn artifacts() -> &'static Artifacts {
    static ARTIFACTS: OnceLock<Artifacts> = OnceLock::new();
    ARTIFACTS.get_or_init(|| {
        let root = repo_root();
        let script = root.join("scripts/compile-contracts.mjs");
        let mut inputs: Vec<PathBuf> = std::fs::read_dir(root.join("contracts"))
            .expect("contracts/")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "sol"))
            .collect();
        inputs.sort();
        let mut material = Vec::new();
        for file in inputs
            .iter()
            .chain([&script, &root.join("package-lock.json")])
        {
            let name = file.file_name().expect("file name");
            material.extend_from_slice(name.to_string_lossy().as_bytes());
            material.extend(
                std::fs::read(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display())),
            );
        }
        let hash = keccak256(&material);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("contracts");
        let path = dir.join(format!("{hash}.json"));
        if !path.is_file() {
            std::fs::create_dir_all(&dir).expect("artifact dir");
            assert!(
                root.join("node_modules/solc").is_dir(),
                "solc-js not found in {}/node_modules: run `npm ci` at the repository root",
                root.display()
            );
            // Written beside and renamed into place: test binaries running at once may race.
            let tmp = dir.join(format!("{hash}.{}.tmp", std::process::id()));
            let out = Command::new("node")
                .arg(&script)
                .arg("--out")
                .arg(&tmp)
                .args(&inputs)
                .current_dir(&root)
                .output()
                .expect("run node (Node 20+ is needed to compile contracts/)");
            assert!(
                out.status.success(),
                "compiling contracts/ failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::rename(&tmp, &path).expect("move the artifact into place");
        }
        let text = std::fs::read_to_string(&path).expect("read the artifact");
        Artifacts {
            json: serde_json::from_str(&text).expect("artifact JSON"),
            path,
        }
    })
}

/// Send `tx` from dev account 0 and wait for a successful receipt.
async fn send_ok(anvil: &Anvil, what: &str, tx: TransactionRequest) -> TransactionReceipt {
    let receipt = anvil
        .wallet_provider(anvil.signer(0))
        .send_transaction(tx)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
        .get_receipt()
        .await
        .unwrap_or_else(|e| panic!("{what} receipt: {e}"));
    assert!(receipt.status(), "{what} reverted: {receipt:?}");
    receipt
}

/// Deploy `TestStablecoin(name, version)` from dev account 0 (its minter); its address.
pub async fn deploy_stablecoin(anvil: &Anvil, name: &str, version: &str) -> Address {
    let mut code = artifacts().bytecode("TestStablecoin").to_vec();
    code.extend(
        TestStablecoin::constructorCall {
            name_: name.to_owned(),
            version_: version.to_owned(),
        }
        .abi_encode(),
    );
    let tx = TransactionRequest::default().with_deploy_code(code);
    send_ok(anvil, "deploy TestStablecoin", tx)
        .await
        .contract_address
        .expect("a deployment has a contract address")
}

/// Mint `amount` base units of `token` to `to` (as dev account 0, the deployer).
pub async fn mint(anvil: &Anvil, token: Address, to: Address, amount: u128) {
    let call = TestStablecoin::mintCall {
        to,
        value: U256::from(amount),
    };
    let tx = TransactionRequest::default()
        .with_to(token)
        .with_input(call.abi_encode());
    send_ok(anvil, "mint", tx).await;
}

/// Deploy `TestBatchSender` from dev account 0; its address.
pub async fn deploy_batch_sender(anvil: &Anvil) -> Address {
    let code = artifacts().bytecode("TestBatchSender").to_vec();
    let tx = TransactionRequest::default().with_deploy_code(code);
    send_ok(anvil, "deploy TestBatchSender", tx)
        .await
        .contract_address
        .expect("a deployment has a contract address")
}

/// Have `sender` (a [`deploy_batch_sender`] contract holding `token`) make every transfer of
/// `transfers` in one transaction (one `Transfer` log each, in order); the receipt.
pub async fn batch_send(
    anvil: &Anvil,
    sender: Address,
    token: Address,
    transfers: &[(Address, u128)],
) -> TransactionReceipt {
    let call = TestBatchSender::sendCall {
        token,
        to: transfers.iter().map(|(to, _)| *to).collect(),
        values: transfers.iter().map(|(_, v)| U256::from(*v)).collect(),
    };
    let tx = TransactionRequest::default()
        .with_to(sender)
        .with_input(call.abi_encode());
    send_ok(anvil, "batch send", tx).await
}

/// The EIP-712 domain of a token deployed by [`deploy_stablecoin`].
pub fn token_domain(name: &str, version: &str, chain_id: u64, token: Address) -> Eip712Domain {
    eip712_domain! {
        name: name.to_owned(),
        version: version.to_owned(),
        chain_id: chain_id,
        verifying_contract: token,
    }
}

/// The `evm` charge's challenge binding: `keccak256(challenge.id ‖ challenge.realm)`, the
/// EIP-3009 nonce of an `authorization` credential.
pub fn challenge_hash(id: &str, realm: &str) -> B256 {
    keccak256([id.as_bytes(), realm.as_bytes()].concat())
}

/// A signed EIP-3009 authorization.
#[derive(Debug, Clone)]
pub struct Authorization {
    /// The payer (signer).
    pub from: Address,
    /// The payee.
    pub to: Address,
    /// Base units.
    pub value: U256,
    /// Unix seconds; valid strictly after.
    pub valid_after: u64,
    /// Unix seconds; valid strictly before.
    pub valid_before: u64,
    /// The `bytes32` nonce (the challenge hash for `evm` credentials).
    pub nonce: B256,
    /// The signature over the EIP-712 digest.
    pub signature: Signature,
}

impl Authorization {
    /// `0x` + r ‖ s ‖ v (65 bytes, v = 27/28), the credential's `signature`.
    pub fn signature_hex(&self) -> String {
        Bytes::from(self.signature.as_bytes()).to_string()
    }

    /// The `evm` credential `payload` of `type="authorization"` (draft-evm-charge-00).
    pub fn payload(&self) -> Value {
        json!({
            "type": "authorization",
            "from": self.from.to_checksum(None),
            "to": self.to.to_checksum(None),
            "value": self.value.to_string(),
            "validAfter": self.valid_after.to_string(),
            "validBefore": self.valid_before.to_string(),
            "nonce": self.nonce.to_string(),
            "signature": self.signature_hex(),
        })
    }

    /// The `receiveWithAuthorization` call that executes a [`sign_receive_authorization`] one.
    pub fn receive_call(&self) -> TestStablecoin::receiveWithAuthorizationCall {
        TestStablecoin::receiveWithAuthorizationCall {
            from: self.from,
            to: self.to,
            value: self.value,
            validAfter: U256::from(self.valid_after),
            validBefore: U256::from(self.valid_before),
            nonce: self.nonce,
            v: self.signature.v_byte(),
            r: self.signature.r().into(),
            s: self.signature.s().into(),
        }
    }

    /// The `transferWithAuthorization` call that executes it.
    pub fn transfer_call(&self) -> TestStablecoin::transferWithAuthorizationCall {
        TestStablecoin::transferWithAuthorizationCall {
            from: self.from,
            to: self.to,
            value: self.value,
            validAfter: U256::from(self.valid_after),
            validBefore: U256::from(self.valid_before),
            nonce: self.nonce,
            v: self.signature.v_byte(),
            r: self.signature.r().into(),
            s: self.signature.s().into(),
        }
    }
}

/// Sign an EIP-3009 `TransferWithAuthorization` of `value` from `signer` to `to`.
pub fn sign_authorization(
    signer: &PrivateKeySigner,
    domain: &Eip712Domain,
    to: Address,
    value: u128,
    valid_after: u64,
    valid_before: u64,
    nonce: B256,
) -> Authorization {
    use alloy::signers::SignerSync;
    let message = TransferWithAuthorization {
        from: signer.address(),
        to,
        value: U256::from(value),
        validAfter: U256::from(valid_after),
        validBefore: U256::from(valid_before),
        nonce,
    };
    let signature = signer
        .sign_hash_sync(&message.eip712_signing_hash(domain))
        .expect("sign");
    Authorization {
        from: message.from,
        to,
        value: message.value,
        valid_after,
        valid_before,
        nonce,
        signature,
    }
}

/// Sign an EIP-3009 `ReceiveWithAuthorization` (only `to` may submit it, with
/// [`Authorization::receive_call`]).
pub fn sign_receive_authorization(
    signer: &PrivateKeySigner,
    domain: &Eip712Domain,
    to: Address,
    value: u128,
    valid_after: u64,
    valid_before: u64,
    nonce: B256,
) -> Authorization {
    use alloy::signers::SignerSync;
    let message = ReceiveWithAuthorization {
        from: signer.address(),
        to,
        value: U256::from(value),
        validAfter: U256::from(valid_after),
        validBefore: U256::from(valid_before),
        nonce,
    };
    let signature = signer
        .sign_hash_sync(&message.eip712_signing_hash(domain))
        .expect("sign");
    Authorization {
        from: message.from,
        to,
        value: message.value,
        valid_after,
        valid_before,
        nonce,
        signature,
    }
}

/// Submit `auth` to `token` as `submitter` (the rail's fee payer): the receipt, or the RPC's
/// error (a revert is caught by gas estimation) as text.
pub async fn submit_authorization(
    anvil: &Anvil,
    submitter: PrivateKeySigner,
    token: Address,
    auth: &Authorization,
) -> Result<TransactionReceipt, String> {
    let tx = TransactionRequest::default()
        .with_to(token)
        .with_input(auth.transfer_call().abi_encode());
    let pending = anvil
        .wallet_provider(submitter)
        .send_transaction(tx)
        .await
        .map_err(|e| e.to_string())?;
    pending.get_receipt().await.map_err(|e| e.to_string())
}

/// Uniswap's Permit2 at its canonical address (the same on every chain).
pub const PERMIT2: Address =
    alloy::primitives::address!("0x000000000022D473030F116dDEE9F6B43aC78BA3");

/// Install Permit2 at [`PERMIT2`] on `anvil`: its runtime code is read from a throwaway
/// `anvil --network tempo` (which predeploys the canonical Permit2) and set with
/// `anvil_setCode`. Permit2 recomputes its domain separator from `block.chainid` and its own
/// address, both the same here.
pub async fn install_permit2(anvil: &Anvil) {
    static CODE: tokio::sync::OnceCell<Bytes> = tokio::sync::OnceCell::const_new();
    let code = CODE
        .get_or_init(|| async {
            let tempo = Anvil::start_with(&["--network", "tempo"]).await;
            let code = tempo
                .provider()
                .get_code_at(PERMIT2)
                .await
                .expect("eth_getCode Permit2");
            assert!(
                code.len() > 1000,
                "anvil --network tempo has no Permit2 at {PERMIT2}"
            );
            code
        })
        .await;
    anvil
        .rpc("anvil_setCode", json!([PERMIT2, code.to_string()]))
        .await;
}

/// `owner` (dev account `i`) approves Permit2 to move its `token` (the one-time set-up a
/// `permit2` credential needs).
pub async fn approve_permit2(anvil: &Anvil, i: usize, token: Address) {
    let call = TestStablecoin::approveCall {
        spender: PERMIT2,
        value: U256::MAX,
    };
    let tx = TransactionRequest::default()
        .with_to(token)
        .with_input(call.abi_encode());
    let receipt = anvil
        .wallet_provider(anvil.signer(i))
        .send_transaction(tx)
        .await
        .expect("approve Permit2")
        .get_receipt()
        .await
        .expect("approve receipt");
    assert!(receipt.status(), "approve reverted");
}

/// A signed Permit2 `PermitWitnessTransferFrom` for one transfer.
#[derive(Debug, Clone)]
pub struct Permit {
    /// The signer.
    pub owner: Address,
    /// Token and permitted amount.
    pub token: Address,
    /// The most the spender may move.
    pub permitted: U256,
    /// Where the transfer goes and how much (`transferDetails[0]`).
    pub to: Address,
    /// `requestedAmount`.
    pub requested: U256,
    /// Permit2's unordered nonce.
    pub nonce: U256,
    /// Unix seconds.
    pub deadline: u64,
    /// `witness.challengeHash`.
    pub challenge_hash: B256,
    /// The signature.
    pub signature: Signature,
}

impl Permit {
    /// The `evm` credential `payload` of `type="permit2"` (draft-evm-charge-00).
    pub fn payload(&self) -> Value {
        json!({
            "type": "permit2",
            "permit": {
                "permitted": [{"token": self.token.to_checksum(None), "amount": self.permitted.to_string()}],
                "nonce": self.nonce.to_string(),
                "deadline": self.deadline.to_string(),
            },
            "transferDetails": [{"to": self.to.to_checksum(None), "requestedAmount": self.requested.to_string()}],
            "witness": {"challengeHash": self.challenge_hash.to_string(), "externalId": ""},
            "signature": Bytes::from(self.signature.as_bytes()).to_string(),
        })
    }
}

/// Sign a Permit2 witness transfer of `amount` of `token` to `to`, spendable by `spender`.
pub fn sign_permit2(
    signer: &PrivateKeySigner,
    chain_id: u64,
    token: Address,
    spender: Address,
    to: Address,
    amount: u128,
    nonce: u64,
    deadline: u64,
    challenge_hash: B256,
) -> Permit {
    use alloy::signers::SignerSync;
    let domain = eip712_domain! {
        name: "Permit2",
        chain_id: chain_id,
        verifying_contract: PERMIT2,
    };
    let message = PermitWitnessTransferFrom {
        permitted: TokenPermissions {
            token,
            amount: U256::from(amount),
        },
        spender,
        nonce: U256::from(nonce),
        deadline: U256::from(deadline),
        witness: PaymentWitness {
            challengeHash: challenge_hash,
            externalId: String::new(),
        },
    };
    let signature = signer
        .sign_hash_sync(&message.eip712_signing_hash(&domain))
        .expect("sign");
    Permit {
        owner: signer.address(),
        token,
        permitted: U256::from(amount),
        to,
        requested: U256::from(amount),
        nonce: U256::from(nonce),
        deadline,
        challenge_hash,
        signature,
    }
}

/// A signed EIP-1559 `transfer(to, amount)` on `token` from `signer`, at the account's next
/// nonce and the chain's current fees (the `transaction` credential's `signature`); not sent.
pub async fn sign_transfer(
    anvil: &Anvil,
    signer: &PrivateKeySigner,
    token: Address,
    to: Address,
    amount: u128,
) -> SignedTransfer {
    let provider = anvil.provider();
    let nonce = provider
        .get_transaction_count(signer.address())
        .pending()
        .await
        .expect("eth_getTransactionCount");
    let fees = provider
        .estimate_eip1559_fees()
        .await
        .expect("fee estimate");
    sign_transfer_with(
        signer,
        anvil.chain_id(),
        nonce,
        fees.max_fee_per_gas,
        fees.max_priority_fee_per_gas,
        token,
        to,
        amount,
    )
}

/// [`sign_transfer`] with every field given (no RPC).
pub fn sign_transfer_with(
    signer: &PrivateKeySigner,
    chain_id: u64,
    nonce: u64,
    max_fee_per_gas: u128,
    max_priority_fee_per_gas: u128,
    token: Address,
    to: Address,
    amount: u128,
) -> SignedTransfer {
    let call = TestStablecoin::transferCall {
        to,
        value: U256::from(amount),
    };
    let mut tx = TxEip1559 {
        chain_id,
        nonce,
        gas_limit: TRANSFER_GAS,
        max_fee_per_gas,
        max_priority_fee_per_gas,
        to: TxKind::Call(token),
        value: U256::ZERO,
        access_list: Default::default(),
        input: call.abi_encode().into(),
    };
    let signature = signer.sign_transaction_sync(&mut tx).expect("sign tx");
    let envelope = TxEnvelope::from(tx.into_signed(signature));
    SignedTransfer {
        hash: *envelope.tx_hash(),
        raw: envelope.encoded_2718().into(),
    }
}

/// A signed, unsent transaction.
#[derive(Debug, Clone)]
pub struct SignedTransfer {
    /// The EIP-2718 encoding (`0x02…`).
    pub raw: Bytes,
    /// Its hash (what the chain will know it by).
    pub hash: B256,
}

impl SignedTransfer {
    /// The `evm` credential `payload` of `type="transaction"`.
    pub fn payload(&self) -> Value {
        json!({"type": "transaction", "signature": self.raw.to_string()})
    }
}

/// Broadcast a raw transaction (`eth_sendRawTransaction`); its hash. Does not wait.
pub async fn send_raw(anvil: &Anvil, raw: &Bytes) -> Result<B256, String> {
    anvil
        .provider()
        .send_raw_transaction(raw)
        .await
        .map(|pending| *pending.tx_hash())
        .map_err(|e| e.to_string())
}

/// Sign, broadcast and wait for a `transfer(to, amount)` from `signer` (a client that pays by
/// itself): the mined hash, for a `type="hash"` credential.
pub async fn broadcast_transfer(
    anvil: &Anvil,
    signer: &PrivateKeySigner,
    token: Address,
    to: Address,
    amount: u128,
) -> B256 {
    let signed = sign_transfer(anvil, signer, token, to, amount).await;
    let receipt = anvil
        .provider()
        .send_raw_transaction(&signed.raw)
        .await
        .expect("eth_sendRawTransaction")
        .get_receipt()
        .await
        .expect("transfer receipt");
    assert!(receipt.status(), "transfer reverted: {receipt:?}");
    receipt.transaction_hash
}

/// The `Transfer` events `token` emitted in `receipt`.
pub fn transfers(token: Address, receipt: &TransactionReceipt) -> Vec<TestStablecoin::Transfer> {
    receipt
        .inner
        .logs()
        .iter()
        .filter(|log| log.address() == token)
        .filter_map(|log| log.log_decode::<TestStablecoin::Transfer>().ok())
        .map(|log| log.inner.data)
        .collect()
}

/// A TCP proxy in front of an RPC endpoint: [`RpcProxy::cut`] drops every open connection and
/// refuses new ones (closing them at once) while the chain behind keeps its state;
/// [`RpcProxy::restore`] lets traffic through again. Stopped on drop.
#[derive(Debug)]
pub struct RpcProxy {
    url: String,
    cut: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RpcProxy {
    /// Proxy to `target` (`http://HOST:PORT`).
    pub async fn start(target: &str) -> Self {
        let upstream = target
            .strip_prefix("http://")
            .unwrap_or(target)
            .trim_end_matches('/')
            .to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the RPC proxy");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let cut = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> =
            Arc::new(Mutex::new(Vec::new()));
        let (flag, open) = (Arc::clone(&cut), Arc::clone(&connections));
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if flag.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let upstream = upstream.clone();
                let handle = tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
                if let Ok(mut open) = open.lock() {
                    open.retain(|h| !h.is_finished());
                    open.push(handle);
                }
            }
        });
        Self {
            url,
            cut,
            connections,
            task,
        }
    }

    /// `http://127.0.0.1:PORT`: give this to the code under test instead of the RPC URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The RPC dies: open connections are dropped, new ones are closed on accept.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        if let Ok(mut open) = self.connections.lock() {
            for handle in open.drain(..) {
                handle.abort();
            }
        }
    }

    /// The RPC is back.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    /// Whether it is cut.
    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }
}

impl Drop for RpcProxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}
