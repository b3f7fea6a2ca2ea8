//! Zero-amount charges: the `proof` credential, an EIP-712 signature over the challenge.
//!
//! **Spec vs vectors.** `draft-tempo-charge-00` defines domain `{name:"MPP", version:"1",
//! chainId}` and `Proof(string challengeId)` ([`ProofVersion::V1`]). The conformance vector
//! `tempo-proof.json` (matching mppx and mpp-rs) uses domain version `"2"` and
//! `Proof(string challengeId,string realm)` ([`ProofVersion::V2`]), which also binds the realm.
//! The vectors judge conformance, so V2 is what Turnpike verifies; V1 is kept for the spec's
//! worked digest (§16.3) and for explicit opt-in.

use alloy::primitives::{Address, B256, Signature, U256};
use alloy::sol_types::{Eip712Domain, SolStruct};
use serde_json::{Value, json};

use super::TempoError;
use super::request::{Charge, parse_address};

/// The v2 proof message (conformance vectors, mppx).
mod v2 {
    alloy::sol! {
        struct Proof {
            string challengeId;
            string realm;
        }
    }
}

/// The v1 proof message (`draft-tempo-charge-00`).
mod v1 {
    alloy::sol! {
        struct Proof {
            string challengeId;
        }
    }
}

/// Which proof typed data to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofVersion {
    /// Domain version `"1"`, `Proof(string challengeId)`: the spec text.
    V1,
    /// Domain version `"2"`, `Proof(string challengeId,string realm)`: the conformance vectors.
    V2,
}

impl ProofVersion {
    fn domain_version(self) -> &'static str {
        match self {
            Self::V1 => "1",
            Self::V2 => "2",
        }
    }
}

/// `{name:"MPP", version, chainId}`, no `verifyingContract`.
pub fn domain(version: ProofVersion, chain_id: u64) -> Eip712Domain {
    Eip712Domain::new(
        Some("MPP".into()),
        Some(version.domain_version().into()),
        Some(U256::from(chain_id)),
        None,
        None,
    )
}

/// The EIP-712 digest the client signs.
pub fn signing_hash(version: ProofVersion, chain_id: u64, challenge_id: &str, realm: &str) -> B256 {
    let domain = domain(version, chain_id);
    match version {
        ProofVersion::V1 => v1::Proof {
            challengeId: challenge_id.to_owned(),
        }
        .eip712_signing_hash(&domain),
        ProofVersion::V2 => v2::Proof {
            challengeId: challenge_id.to_owned(),
            realm: realm.to_owned(),
        }
        .eip712_signing_hash(&domain),
    }
}

/// The typed data as JSON (`domain`, `types`, `primaryType`, `message`), as a wallet's
/// `eth_signTypedData_v4` takes it, without the implied `EIP712Domain` type.
pub fn typed_data(version: ProofVersion, chain_id: u64, challenge_id: &str, realm: &str) -> Value {
    let domain = json!({
        "name": "MPP",
        "version": version.domain_version(),
        "chainId": chain_id,
    });
    match version {
        ProofVersion::V1 => json!({
            "domain": domain,
            "types": { "Proof": [{ "name": "challengeId", "type": "string" }] },
            "primaryType": "Proof",
            "message": { "challengeId": challenge_id },
        }),
        ProofVersion::V2 => json!({
            "domain": domain,
            "types": { "Proof": [
                { "name": "challengeId", "type": "string" },
                { "name": "realm", "type": "string" },
            ] },
            "primaryType": "Proof",
            "message": { "challengeId": challenge_id, "realm": realm },
        }),
    }
}

/// `did:pkh:eip155:<chainId>:<address>` → (chain id, address).
pub fn parse_did_pkh(source: &str) -> Result<(u64, Address), TempoError> {
    let rest = source
        .strip_prefix("did:pkh:eip155:")
        .ok_or(TempoError::InvalidSource)?;
    let (chain, address) = rest.split_once(':').ok_or(TempoError::InvalidSource)?;
    let canonical = !chain.is_empty()
        && chain.bytes().all(|b| b.is_ascii_digit())
        && (chain == "0" || !chain.starts_with('0'));
    if !canonical {
        return Err(TempoError::InvalidSource);
    }
    let chain_id = chain.parse().map_err(|_| TempoError::InvalidSource)?;
    let address = parse_address("source", address).map_err(|_| TempoError::InvalidSource)?;
    Ok((chain_id, address))
}

/// A 65-byte `r ‖ s ‖ v` signature in `0x` hex (`v` 0/1 or 27/28).
pub(crate) fn parse_signature(hex: &str) -> Result<Signature, TempoError> {
    let bytes = hex
        .strip_prefix("0x")
        .and_then(|h| alloy::hex::decode(h).ok())
        .ok_or(TempoError::InvalidPayload(
            "signature is not 0x-prefixed hex",
        ))?;
    if bytes.len() != 65 {
        return Err(TempoError::InvalidPayload("signature is not 65 bytes"));
    }
    Signature::from_raw(&bytes).map_err(|_| TempoError::InvalidPayload("malformed signature"))
}

/// Verify a `proof` credential (spec "Proof Verification"): the request is zero-amount, `source`
/// is a `did:pkh:eip155` DID on the request's chain, and the EIP-712 signature recovers to it.
/// Returns the signer.
pub fn verify_proof(
    charge: &Charge,
    version: ProofVersion,
    challenge_id: &str,
    realm: &str,
    source: Option<&str>,
    signature_hex: &str,
) -> Result<Address, TempoError> {
    if !charge.is_zero_amount() {
        return Err(TempoError::ModeNotAllowed {
            credential: "proof",
            reason: "proof credentials are only for a zero amount",
        });
    }
    let (chain_id, expected) = parse_did_pkh(source.ok_or(TempoError::InvalidSource)?)?;
    if chain_id != charge.chain_id {
        return Err(TempoError::SourceChainMismatch {
            expected: charge.chain_id,
            got: chain_id,
        });
    }
    let signature = parse_signature(signature_hex)?;
    let hash = signing_hash(version, chain_id, challenge_id, realm);
    let recovered = signature
        .recover_address_from_prehash(&hash)
        .map_err(|_| TempoError::Recovery)?;
    if recovered != expected {
        return Err(TempoError::SignerMismatch {
            expected,
            recovered,
        });
    }
    Ok(recovered)
}

#[cfg(test)]
mod tests {
    use alloy::primitives::{b256, keccak256};
    use alloy::signers::SignerSync;
    use alloy::signers::local::PrivateKeySigner;
    use alloy::sol_types::SolStruct;

    use super::super::request::ChargeRequest;
    use super::*;

    #[test]
    fn digest_constants_of_16_3() {
        assert_eq!(
            keccak256("EIP712Domain(string name,string version,uint256 chainId)"),
            b256!("c2f8787176b8ac6bf7215b4adcc1e069bf4ab82d9ab1df05a57a91d425935b6e")
        );
        assert_eq!(
            v1::Proof {
                challengeId: String::new()
            }
            .eip712_type_hash(),
            b256!("9703df6c74d7551aec1f6e4eaddc66fb0e9ff2c7bd636ec1d206c3197a7871bd")
        );
        assert_eq!(
            signing_hash(ProofVersion::V1, 4217, "kM9xPqWvT2nJrHsY4aDfEb", "ignored"),
            b256!("5c4c97e07eff2c3434c52eaa9234a273fd4759f27ada76100a32bbc08a9b3940")
        );
        assert_eq!(
            v2::Proof {
                challengeId: String::new(),
                realm: String::new()
            }
            .eip712_type_hash(),
            keccak256("Proof(string challengeId,string realm)")
        );
    }

    #[test]
    fn typed_data_matches_the_conformance_vector() {
        assert_eq!(
            typed_data(
                ProofVersion::V2,
                42431,
                "proof-challenge-id",
                "api.example.com"
            ),
            json!({
                "domain": { "name": "MPP", "version": "2", "chainId": 42431 },
                "types": { "Proof": [
                    { "name": "challengeId", "type": "string" },
                    { "name": "realm", "type": "string" }
                ] },
                "primaryType": "Proof",
                "message": { "challengeId": "proof-challenge-id", "realm": "api.example.com" }
            })
        );
    }

    fn zero_charge(chain_id: u64) -> Charge {
        ChargeRequest::from_json(json!({
            "amount": "0", "currency": "0x20c0000000000000000000000000000000000000",
            "recipient": "0x742d35Cc6634C0532925a3b844Bc9e7595f8fE00",
            "methodDetails": { "chainId": chain_id }
        }))
        .unwrap()
        .validate()
        .unwrap()
    }

    #[test]
    fn a_signed_proof_verifies_and_tampering_fails() {
        let signer = PrivateKeySigner::from_bytes(&B256::repeat_byte(0x11)).unwrap();
        let hash = signing_hash(ProofVersion::V2, 42431, "ch-1", "api.example.com");
        let sig = signer.sign_hash_sync(&hash).unwrap();
        let sig_hex = format!("0x{}", alloy::hex::encode(sig.as_bytes()));
        let source = format!("did:pkh:eip155:42431:{:#x}", signer.address());
        let charge = zero_charge(42431);
        let ok = verify_proof(
            &charge,
            ProofVersion::V2,
            "ch-1",
            "api.example.com",
            Some(&source),
            &sig_hex,
        );
        assert_eq!(ok, Ok(signer.address()));
        // Another challenge, another realm, the v1 digest: another signer recovers.
        for (id, realm, version) in [
            ("ch-2", "api.example.com", ProofVersion::V2),
            ("ch-1", "evil.example.com", ProofVersion::V2),
            ("ch-1", "api.example.com", ProofVersion::V1),
        ] {
            assert!(matches!(
                verify_proof(&charge, version, id, realm, Some(&source), &sig_hex),
                Err(TempoError::SignerMismatch { .. })
            ));
        }
        let other_chain = format!("did:pkh:eip155:4217:{:#x}", signer.address());
        assert!(matches!(
            verify_proof(
                &charge,
                ProofVersion::V2,
                "ch-1",
                "api.example.com",
                Some(&other_chain),
                &sig_hex
            ),
            Err(TempoError::SourceChainMismatch { .. })
        ));
        assert_eq!(
            verify_proof(
                &charge,
                ProofVersion::V2,
                "ch-1",
                "api.example.com",
                None,
                &sig_hex
            ),
            Err(TempoError::InvalidSource)
        );
        let err = verify_proof(
            &charge,
            ProofVersion::V2,
            "ch-1",
            "api.example.com",
            Some(&source),
            "0x1234",
        )
        .unwrap_err();
        assert!(!err.to_string().contains("1234"), "{err}");
    }

    #[test]
    fn did_pkh_parsing() {
        assert!(
            parse_did_pkh("did:pkh:eip155:4217:0x1234567890abcdef1234567890abcdef12345678").is_ok()
        );
        for bad in [
            "did:pkh:eip155:04217:0x1234567890abcdef1234567890abcdef12345678",
            "did:pkh:solana:1:0x1234567890abcdef1234567890abcdef12345678",
            "did:pkh:eip155:4217",
            "did:pkh:eip155:4217:0x1234",
        ] {
            assert!(parse_did_pkh(bad).is_err(), "{bad}");
        }
    }
}
