//! Account history: an account's transfers, newest first, in keyset-paginated pages.
//!
//! A page ends at the `(timestamp_ms, id)` of its last transfer; the next page starts strictly
//! below it. Since transfers are immutable and never deleted, no transfer appears on two pages
//! or is skipped between them, whatever is inserted in the meantime.

use std::fmt;
use std::str::FromStr;

use turnpike_ledger::{Transfer, TransferId};

use crate::error::StoreError;

/// Most transfers on one history page.
pub const HISTORY_PAGE_LIMIT_MAX: u32 = 1_000;

/// Where the next history page starts: opaque to clients (48 hex digits), stable across
/// concurrent inserts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cursor {
    timestamp_ms: i64,
    id: TransferId,
}

impl Cursor {
    /// The cursor just after `transfer` (the next page holds older transfers).
    pub fn after(transfer: &Transfer) -> Self {
        Self {
            timestamp_ms: transfer.timestamp_ms,
            id: transfer.id,
        }
    }

    pub(crate) fn timestamp_ms(&self) -> i64 {
        self.timestamp_ms
    }

    pub(crate) fn id(&self) -> TransferId {
        self.id
    }
}

impl fmt::Display for Cursor {
    /// 16 hex digits of the timestamp's bits, then the 32 of the id.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = u64::from_be_bytes(self.timestamp_ms.to_be_bytes());
        write!(f, "{bits:016x}{:032x}", self.id.0)
    }
}

impl FromStr for Cursor {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 48 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(StoreError::InvalidCursor);
        }
        let (time, id) = s.split_at(16);
        let bits = u64::from_str_radix(time, 16).map_err(|_| StoreError::InvalidCursor)?;
        let id = u128::from_str_radix(id, 16).map_err(|_| StoreError::InvalidCursor)?;
        Ok(Self {
            timestamp_ms: i64::from_be_bytes(bits.to_be_bytes()),
            id: TransferId(id),
        })
    }
}

/// One page of an account's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Transfers, newest first by `(timestamp_ms, id)`.
    pub transfers: Vec<Transfer>,
    /// Where the next page starts; `None` on the last page.
    pub next_cursor: Option<Cursor>,
}

impl Page {
    /// A page from up to `limit + 1` rows: the extra row only tells that more follow.
    pub(crate) fn from_rows(mut transfers: Vec<Transfer>, limit: u32) -> Self {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let more = transfers.len() > limit;
        transfers.truncate(limit);
        let next_cursor = if more {
            transfers.last().map(Cursor::after)
        } else {
            None
        };
        Self {
            transfers,
            next_cursor,
        }
    }
}

/// `limit` within 1..=[`HISTORY_PAGE_LIMIT_MAX`].
pub(crate) fn page_limit(limit: u32) -> u32 {
    limit.clamp(1, HISTORY_PAGE_LIMIT_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_foreign_strings() {
        let cursor = Cursor {
            timestamp_ms: 1_800_000_000_123,
            id: TransferId(u128::MAX - 5),
        };
        let text = cursor.to_string();
        assert_eq!(text.len(), 48);
        assert_eq!(text.parse::<Cursor>().unwrap(), cursor);
        let negative = Cursor {
            timestamp_ms: -1,
            id: TransferId(1),
        };
        assert_eq!(negative.to_string().parse::<Cursor>().unwrap(), negative);
        for bad in [
            "",
            "zz",
            &text[1..],
            &text.to_uppercase(),
            &format!("{text}0"),
        ] {
            assert_eq!(bad.parse::<Cursor>(), Err(StoreError::InvalidCursor));
        }
    }
}
