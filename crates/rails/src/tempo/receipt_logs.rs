//! Verifying a transaction receipt's logs against a charge (spec "Hash Verification"; also the
//! post-broadcast check of pull mode): the `Transfer` / `TransferWithMemo` logs emitted by the
//! `currency` address must contain every required transfer. Other logs (fee transfers, other
//! contracts) are ignored.

use alloy::primitives::{Address, B256, Log, U256};

use super::matching::{ChallengeRef, Transfer, match_transfers};
use super::request::{Charge, SubmissionMode};
use super::{TRANSFER_TOPIC, TRANSFER_WITH_MEMO_TOPIC, TempoError};

/// A TIP-20 payment log of the charge currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaymentLog {
    /// Index of the log in the receipt.
    pub log_index: usize,
    pub from: Address,
    pub transfer: Transfer,
}

/// What a verified receipt proved: the payment logs that satisfied each expected transfer, in
/// [`Charge::expected_transfers`] order (primary first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedReceipt {
    pub transfers: Vec<PaymentLog>,
}

/// An address topic: 12 zero bytes, then the address.
fn topic_address(topic: &B256) -> Option<Address> {
    topic[..12]
        .iter()
        .all(|b| *b == 0)
        .then(|| Address::from_slice(&topic[12..]))
}

/// Read one log as a payment of `currency`, or `None` when it is something else.
///
/// `TransferWithMemo`: public ABIs disagree on whether `memo` is indexed (digest §16.3), so the
/// memo is topic 3 when the log has four topics, else `data[32..64]`.
pub fn payment_log(log: &Log, currency: Address) -> Option<(Address, Transfer)> {
    if log.address != currency {
        return None;
    }
    let topics = log.data.topics();
    let data = log.data.data.as_ref();
    let signature = topics.first()?;
    let amount = |d: &[u8]| U256::from_be_slice(&d[..32]);
    let (from, to, amount, memo) = if *signature == TRANSFER_TOPIC {
        if topics.len() != 3 || data.len() != 32 {
            return None;
        }
        (&topics[1], &topics[2], amount(data), None)
    } else if *signature == TRANSFER_WITH_MEMO_TOPIC {
        match (topics.len(), data.len()) {
            (4, 32) => (&topics[1], &topics[2], amount(data), Some(topics[3])),
            (3, 64) => (
                &topics[1],
                &topics[2],
                amount(data),
                Some(B256::from_slice(&data[32..64])),
            ),
            _ => return None,
        }
    } else {
        return None;
    };
    Some((
        topic_address(from)?,
        Transfer {
            recipient: topic_address(to)?,
            amount,
            memo,
        },
    ))
}

/// Check a receipt's status and logs against the charge. `success` is the receipt's status
/// (`0x1`). `binding` is the challenge for the attribution-memo rule ([`match_transfers`]); pass
/// it unless the payment is bound to the challenge some other way.
///
/// Does not check the credential type against `supportedModes`; see [`verify_hash_receipt`].
pub fn verify_receipt_logs(
    charge: &Charge,
    binding: Option<ChallengeRef<'_>>,
    success: bool,
    logs: &[Log],
) -> Result<VerifiedReceipt, TempoError> {
    if !success {
        return Err(TempoError::ReceiptFailed);
    }
    let found: Vec<PaymentLog> = logs
        .iter()
        .enumerate()
        .filter_map(|(log_index, log)| {
            payment_log(log, charge.currency).map(|(from, transfer)| PaymentLog {
                log_index,
                from,
                transfer,
            })
        })
        .collect();
    let observed: Vec<Transfer> = found.iter().map(|p| p.transfer).collect();
    let matched = match_transfers(
        &charge.expected_transfers(),
        &observed,
        "log",
        charge.memo.is_some(),
        binding,
    )?;
    Ok(VerifiedReceipt {
        transfers: matched.into_iter().map(|j| found[j]).collect(),
    })
}

/// Push mode: the credential's `hash` must be the receipt's transaction, the request must allow
/// `hash` credentials (`supportedModes`, `feePayer` false, non-zero amount), and the logs must
/// satisfy the charge.
pub fn verify_hash_receipt(
    charge: &Charge,
    binding: Option<ChallengeRef<'_>>,
    credential_hash: B256,
    receipt_hash: B256,
    success: bool,
    logs: &[Log],
) -> Result<VerifiedReceipt, TempoError> {
    charge.check_mode(SubmissionMode::Push)?;
    if credential_hash != receipt_hash {
        return Err(TempoError::ReceiptHashMismatch {
            expected: credential_hash.to_string(),
            got: receipt_hash.to_string(),
        });
    }
    verify_receipt_logs(charge, binding, success, logs)
}

#[cfg(test)]
mod tests {
    use alloy::primitives::{Bytes, LogData};

    use super::super::attribution;
    use super::super::request::ChargeRequest;
    use super::*;

    const CURRENCY: Address = Address::repeat_byte(0x20);
    const PAYER: Address = Address::repeat_byte(0xaa);
    const MERCHANT: Address = Address::repeat_byte(0x74);
    const PLATFORM: Address = Address::repeat_byte(0xa1);

    fn word(address: Address) -> B256 {
        address.into_word()
    }

    fn transfer_log(to: Address, amount: u64) -> Log {
        Log {
            address: CURRENCY,
            data: LogData::new_unchecked(
                vec![TRANSFER_TOPIC, word(PAYER), word(to)],
                Bytes::from(U256::from(amount).to_be_bytes_vec()),
            ),
        }
    }

    fn memo_log(to: Address, amount: u64, memo: B256, indexed: bool) -> Log {
        let mut topics = vec![TRANSFER_WITH_MEMO_TOPIC, word(PAYER), word(to)];
        let mut data = U256::from(amount).to_be_bytes_vec();
        if indexed {
            topics.push(memo);
        } else {
            data.extend_from_slice(memo.as_slice());
        }
        Log {
            address: CURRENCY,
            data: LogData::new_unchecked(topics, Bytes::from(data)),
        }
    }

    fn charge(details: serde_json::Value) -> Charge {
        ChargeRequest::from_json(serde_json::json!({
            "amount": "1000000", "currency": format!("{CURRENCY:#x}"),
            "recipient": format!("{MERCHANT:#x}"), "methodDetails": details
        }))
        .unwrap()
        .validate()
        .unwrap()
    }

    const C: ChallengeRef<'static> = ChallengeRef {
        id: "ch",
        realm: "api.example.com",
    };

    #[test]
    fn spec_split_example_events_satisfy_the_charge_in_any_order() {
        let charge = charge(serde_json::json!({
            "chainId": 4217, "memo": format!("{:#x}", B256::repeat_byte(1)),
            "splits": [{ "amount": "50000", "recipient": format!("{PLATFORM:#x}") }]
        }));
        let logs = [
            transfer_log(PLATFORM, 50_000),
            memo_log(MERCHANT, 950_000, B256::repeat_byte(1), true),
        ];
        let verified = verify_receipt_logs(&charge, Some(C), true, &logs).unwrap();
        assert_eq!(verified.transfers[0].log_index, 1);
        assert_eq!(verified.transfers[0].transfer.amount, U256::from(950_000));
        assert_eq!(verified.transfers[1].transfer.recipient, PLATFORM);
        assert_eq!(verified.transfers[1].from, PAYER);
        // Short by one base unit.
        let short = [
            transfer_log(PLATFORM, 50_000),
            memo_log(MERCHANT, 949_999, B256::repeat_byte(1), true),
        ];
        assert!(verify_receipt_logs(&charge, Some(C), true, &short).is_err());
    }

    #[test]
    fn memo_is_read_from_topic_3_or_from_data() {
        let charge = charge(serde_json::json!({}));
        let memo = attribution::encode("api.example.com", None, "ch");
        for indexed in [true, false] {
            let logs = [memo_log(MERCHANT, 1_000_000, memo, indexed)];
            assert!(verify_receipt_logs(&charge, Some(C), true, &logs).is_ok());
        }
        let plain = [transfer_log(MERCHANT, 1_000_000)];
        assert_eq!(
            verify_receipt_logs(&charge, Some(C), true, &plain),
            Err(TempoError::MemoNotBound)
        );
        assert!(verify_receipt_logs(&charge, None, true, &plain).is_ok());
    }

    #[test]
    fn logs_of_other_addresses_and_failed_receipts_do_not_count() {
        let charge = charge(serde_json::json!({}));
        let memo = attribution::encode("api.example.com", None, "ch");
        let mut log = memo_log(MERCHANT, 1_000_000, memo, true);
        log.address = Address::repeat_byte(0x99);
        assert!(matches!(
            verify_receipt_logs(&charge, Some(C), true, &[log]),
            Err(TempoError::TransferNotFound { .. })
        ));
        let good = memo_log(MERCHANT, 1_000_000, memo, true);
        assert_eq!(
            verify_receipt_logs(&charge, Some(C), false, &[good]),
            Err(TempoError::ReceiptFailed)
        );
    }

    #[test]
    fn hash_credentials_need_push_and_the_same_hash() {
        let memo = attribution::encode("api.example.com", None, "ch");
        let logs = [memo_log(MERCHANT, 1_000_000, memo, true)];
        let h = B256::repeat_byte(0x11);
        assert!(
            verify_hash_receipt(&charge(serde_json::json!({})), Some(C), h, h, true, &logs).is_ok()
        );
        assert!(matches!(
            verify_hash_receipt(
                &charge(serde_json::json!({})),
                Some(C),
                h,
                B256::ZERO,
                true,
                &logs
            ),
            Err(TempoError::ReceiptHashMismatch { .. })
        ));
        for details in [
            serde_json::json!({ "supportedModes": ["pull"] }),
            serde_json::json!({ "feePayer": true }),
        ] {
            assert!(matches!(
                verify_hash_receipt(&charge(details), Some(C), h, h, true, &logs),
                Err(TempoError::ModeNotAllowed { .. })
            ));
        }
    }
}
