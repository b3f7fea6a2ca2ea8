//! Matching the transfers a charge requires against the transfers a transaction's calls or a
//! receipt's logs contain: order-insensitive, addresses as 20-byte values, each observed transfer
//! used at most once; then the challenge-bound memo rule.

use alloy::primitives::{Address, B256, U256};

use super::{TempoError, attribution};

/// One TIP-20 payment effect: `amount` of the charge currency to `recipient`, with the memo of a
/// `transferWithMemo` (`None` for a plain `transfer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transfer {
    pub recipient: Address,
    pub amount: U256,
    pub memo: Option<B256>,
}

/// The challenge a payment must be bound to (through an MPP attribution memo) when the request
/// has no explicit memo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChallengeRef<'a> {
    pub id: &'a str,
    pub realm: &'a str,
}

/// How well an observed transfer serves an expectation without a memo: a memo bound to this
/// challenge first, then no memo or a foreign memo, an MPP memo for something else last.
fn rank(observed: &Transfer, binding: Option<ChallengeRef<'_>>) -> u8 {
    match (observed.memo, binding) {
        (Some(memo), Some(b)) if attribution::is_bound(&memo, b.id, b.realm) => 0,
        (Some(memo), _) if attribution::is_mpp_memo(&memo) => 2,
        _ => 1,
    }
}

/// For each expected transfer, the index of the observed transfer that satisfies it.
///
/// `binding`: when `Some` and `explicit_memo` is false (the request has no `methodDetails.memo`),
/// the matched transfers must carry at least one MPP attribution memo bound to that challenge and
/// realm, and no MPP memo for another challenge or server (so that one payment cannot be claimed
/// for several challenges). Memos that are not MPP memos are ignored by this rule.
pub(crate) fn match_transfers(
    expected: &[Transfer],
    observed: &[Transfer],
    found_in: &'static str,
    explicit_memo: bool,
    binding: Option<ChallengeRef<'_>>,
) -> Result<Vec<usize>, TempoError> {
    let mut used = vec![false; observed.len()];
    let mut matched = vec![usize::MAX; expected.len()];
    // Memo-bearing expectations first: they accept a subset of what a memo-less one accepts, so
    // serving them first can never starve a memo-less expectation that had a choice.
    let mut order: Vec<usize> = (0..expected.len()).collect();
    order.sort_by_key(|&i| expected[i].memo.is_none());
    for i in order {
        let want = &expected[i];
        let candidate = observed
            .iter()
            .enumerate()
            .filter(|(j, got)| {
                !used[*j]
                    && got.recipient == want.recipient
                    && got.amount == want.amount
                    && want.memo.is_none_or(|memo| got.memo == Some(memo))
            })
            .min_by_key(|(_, got)| rank(got, binding))
            .map(|(j, _)| j);
        let Some(j) = candidate else {
            return Err(TempoError::TransferNotFound {
                found_in,
                amount: want.amount,
                recipient: want.recipient,
                memo: if want.memo.is_some() {
                    " with the requested memo"
                } else {
                    ""
                },
            });
        };
        used[j] = true;
        matched[i] = j;
    }
    if let Some(binding) = binding
        && !explicit_memo
    {
        let memos = matched.iter().filter_map(|&j| observed[j].memo);
        let mut bound = false;
        for memo in memos {
            if !attribution::is_mpp_memo(&memo) {
                continue;
            }
            if !attribution::is_bound(&memo, binding.id, binding.realm) {
                return Err(TempoError::MemoNotBound);
            }
            bound = true;
        }
        if !bound {
            return Err(TempoError::MemoNotBound);
        }
    }
    Ok(matched)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(recipient: u8, amount: u64, memo: Option<B256>) -> Transfer {
        Transfer {
            recipient: Address::repeat_byte(recipient),
            amount: U256::from(amount),
            memo,
        }
    }

    const CHALLENGE: ChallengeRef<'static> = ChallengeRef {
        id: "c1",
        realm: "api.example.com",
    };

    #[test]
    fn order_does_not_matter_and_each_observation_is_used_once() {
        let expected = [
            t(1, 940, None),
            t(2, 50, None),
            t(3, 10, Some(B256::repeat_byte(7))),
        ];
        let observed = [
            t(3, 10, Some(B256::repeat_byte(7))),
            t(2, 50, None),
            t(1, 940, None),
        ];
        assert_eq!(
            match_transfers(&expected, &observed, "call", true, None).unwrap(),
            vec![2, 1, 0]
        );
        let twice = [t(1, 5, None), t(1, 5, None)];
        assert!(match_transfers(&twice, &observed[2..], "call", true, None).is_err());
    }

    #[test]
    fn a_required_memo_must_match_and_memo_first_matching_is_not_starved() {
        let memo = B256::repeat_byte(9);
        let expected = [t(1, 5, None), t(1, 5, Some(memo))];
        let observed = [t(1, 5, Some(memo)), t(1, 5, None)];
        assert!(match_transfers(&expected, &observed, "call", true, None).is_ok());
        let wrong = [t(1, 5, Some(B256::repeat_byte(8))), t(1, 5, None)];
        assert!(matches!(
            match_transfers(&expected, &wrong, "call", true, None),
            Err(TempoError::TransferNotFound { .. })
        ));
    }

    #[test]
    fn without_an_explicit_memo_a_challenge_bound_memo_is_required() {
        let bound = attribution::encode("api.example.com", None, "c1");
        let elsewhere = attribution::encode("api.example.com", None, "c2");
        let expected = [t(1, 5, None)];
        let ok = [t(1, 5, Some(bound))];
        assert!(match_transfers(&expected, &ok, "log", false, Some(CHALLENGE)).is_ok());
        for observed in [
            [t(1, 5, None)],
            [t(1, 5, Some(elsewhere))],
            [t(1, 5, Some(B256::repeat_byte(0xab)))],
        ] {
            assert_eq!(
                match_transfers(&expected, &observed, "log", false, Some(CHALLENGE)),
                Err(TempoError::MemoNotBound)
            );
        }
        // The bound transfer is preferred over an equal unbound one.
        let both = [t(1, 5, Some(elsewhere)), t(1, 5, Some(bound))];
        assert_eq!(
            match_transfers(&expected, &both, "log", false, Some(CHALLENGE)).unwrap(),
            vec![1]
        );
        // An explicit request memo replaces the attribution rule.
        assert!(match_transfers(&expected, &[t(1, 5, None)], "log", true, Some(CHALLENGE)).is_ok());
    }
}
