//! Reading rows back into ledger values, the same way for both databases: every query selects
//! amounts as decimal text (`::TEXT` on PostgreSQL, TEXT columns on SQLite), ids as 32-hex
//! text, user data as bytes. Writing goes the other way through [`amount_text`] and [`id_text`].

use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use turnpike_ledger::{
    Account, AccountFlags, AccountId, AccountKind, PendingState, Transfer, TransferId, TransferKind,
};

use crate::error::StoreError;

/// Typed column access common to both databases' rows.
pub(crate) trait Cols {
    fn text(&self, i: usize) -> Result<String, sqlx::Error>;
    fn opt_text(&self, i: usize) -> Result<Option<String>, sqlx::Error>;
    fn int64(&self, i: usize) -> Result<i64, sqlx::Error>;
    fn opt_int64(&self, i: usize) -> Result<Option<i64>, sqlx::Error>;
    fn int32(&self, i: usize) -> Result<i32, sqlx::Error>;
    fn opt_bytes(&self, i: usize) -> Result<Option<Vec<u8>>, sqlx::Error>;
}

macro_rules! impl_cols {
    ($row:ty) => {
        impl Cols for $row {
            fn text(&self, i: usize) -> Result<String, sqlx::Error> {
                self.try_get(i)
            }
            fn opt_text(&self, i: usize) -> Result<Option<String>, sqlx::Error> {
                self.try_get(i)
            }
            fn int64(&self, i: usize) -> Result<i64, sqlx::Error> {
                self.try_get(i)
            }
            fn opt_int64(&self, i: usize) -> Result<Option<i64>, sqlx::Error> {
                self.try_get(i)
            }
            fn int32(&self, i: usize) -> Result<i32, sqlx::Error> {
                self.try_get(i)
            }
            fn opt_bytes(&self, i: usize) -> Result<Option<Vec<u8>>, sqlx::Error> {
                self.try_get(i)
            }
        }
    };
}

impl_cols!(PgRow);
impl_cols!(SqliteRow);

/// The stored form of an id: 32 lowercase hex digits.
pub(crate) fn id_text(id: u128) -> String {
    format!("{id:032x}")
}

/// The stored form of an amount: canonical decimal.
pub(crate) fn amount_text(amount: u128) -> String {
    amount.to_string()
}

fn corrupt(table: &'static str, reason: &'static str) -> StoreError {
    StoreError::Corrupt { table, reason }
}

pub(crate) fn parse_amount(table: &'static str, text: &str) -> Result<u128, StoreError> {
    // `u128::from_str` accepts a leading '+'; stored amounts never have one.
    if text.starts_with('+') {
        return Err(corrupt(table, "amount is not a u128"));
    }
    text.parse()
        .map_err(|_| corrupt(table, "amount is not a u128"))
}

pub(crate) fn parse_account_id(table: &'static str, text: &str) -> Result<AccountId, StoreError> {
    text.parse()
        .map_err(|_| corrupt(table, "account id is not hex"))
}

pub(crate) fn parse_transfer_id(table: &'static str, text: &str) -> Result<TransferId, StoreError> {
    text.parse()
        .map_err(|_| corrupt(table, "transfer id is not hex"))
}

pub(crate) fn parse_transfer_kind(
    table: &'static str,
    text: &str,
) -> Result<TransferKind, StoreError> {
    TransferKind::parse(text).ok_or(corrupt(table, "unknown transfer kind"))
}

pub(crate) fn parse_pending_state(
    table: &'static str,
    text: &str,
) -> Result<PendingState, StoreError> {
    PendingState::parse(text).ok_or(corrupt(table, "unknown pending state"))
}

/// Columns, in order, that [`account_from_row`] reads; `$cast` follows each amount column
/// (`"::TEXT"` on PostgreSQL, `""` on SQLite).
macro_rules! account_columns {
    ($cast:literal) => {
        concat!(
            "id, tenant, owner, kind, currency, flags, debits_pending",
            $cast,
            ", debits_posted",
            $cast,
            ", credits_pending",
            $cast,
            ", credits_posted",
            $cast,
            ", created_at_ms"
        )
    };
}
pub(crate) use account_columns;

/// Columns, in order, that [`transfer_from_row`] reads; `$cast` as for [`account_columns`].
macro_rules! transfer_columns {
    ($cast:literal) => {
        concat!(
            "id, debit_account_id, credit_account_id, amount",
            $cast,
            ", currency, kind, pending_id, expires_at_ms, timeout_ms",
            $cast,
            ", code, user_data, timestamp_ms"
        )
    };
}
pub(crate) use transfer_columns;

pub(crate) fn account_from_row(row: &impl Cols) -> Result<Account, StoreError> {
    const T: &str = "ledger_accounts";
    let flags = u32::try_from(row.int32(5)?)
        .ok()
        .and_then(AccountFlags::from_bits)
        .ok_or(corrupt(T, "unknown flags"))?;
    Ok(Account {
        id: parse_account_id(T, &row.text(0)?)?,
        tenant: row.text(1)?,
        owner: row.text(2)?,
        kind: AccountKind::parse(&row.text(3)?).ok_or(corrupt(T, "unknown account kind"))?,
        currency: row.text(4)?,
        flags,
        debits_pending: parse_amount(T, &row.text(6)?)?,
        debits_posted: parse_amount(T, &row.text(7)?)?,
        credits_pending: parse_amount(T, &row.text(8)?)?,
        credits_posted: parse_amount(T, &row.text(9)?)?,
        created_at_ms: row.int64(10)?,
    })
}

pub(crate) fn transfer_from_row(row: &impl Cols) -> Result<Transfer, StoreError> {
    const T: &str = "ledger_transfers";
    let pending_id = row
        .opt_text(6)?
        .map(|p| parse_transfer_id(T, &p))
        .transpose()?;
    let timeout_ms = row
        .opt_text(8)?
        .map(|t| {
            t.parse::<u64>()
                .map_err(|_| corrupt(T, "timeout is not a u64"))
        })
        .transpose()?;
    let code = u16::try_from(row.int32(9)?).map_err(|_| corrupt(T, "code is not a u16"))?;
    let user_data = row
        .opt_bytes(10)?
        .map(|b| String::from_utf8(b).map_err(|_| corrupt(T, "user data is not UTF-8")))
        .transpose()?;
    Ok(Transfer {
        id: parse_transfer_id(T, &row.text(0)?)?,
        debit_account_id: parse_account_id(T, &row.text(1)?)?,
        credit_account_id: parse_account_id(T, &row.text(2)?)?,
        amount: parse_amount(T, &row.text(3)?)?,
        currency: row.text(4)?,
        kind: parse_transfer_kind(T, &row.text(5)?)?,
        pending_id,
        expires_at_ms: row.opt_int64(7)?,
        timeout_ms,
        code,
        user_data,
        timestamp_ms: row.int64(11)?,
    })
}

/// A transfer's columns as bound for an insert (ids, amounts and timeouts as text).
#[derive(Debug)]
pub(crate) struct TransferParams {
    pub id: String,
    pub debit: String,
    pub credit: String,
    pub amount: String,
    pub currency: String,
    pub kind: &'static str,
    pub pending_id: Option<String>,
    pub expires_at_ms: Option<i64>,
    pub timeout_ms: Option<String>,
    pub code: i32,
    pub user_data: Option<Vec<u8>>,
    pub timestamp_ms: i64,
}

impl From<&Transfer> for TransferParams {
    fn from(t: &Transfer) -> Self {
        Self {
            id: id_text(t.id.0),
            debit: id_text(t.debit_account_id.0),
            credit: id_text(t.credit_account_id.0),
            amount: amount_text(t.amount),
            currency: t.currency.clone(),
            kind: t.kind.as_str(),
            pending_id: t.pending_id.map(|p| id_text(p.0)),
            expires_at_ms: t.expires_at_ms,
            timeout_ms: t.timeout_ms.map(|m| m.to_string()),
            code: i32::from(t.code),
            user_data: t.user_data.as_ref().map(|u| u.as_bytes().to_vec()),
            timestamp_ms: t.timestamp_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_round_trip_at_the_extremes_and_reject_signs() {
        for amount in [0, 1, u128::from(u64::MAX) + 1, u128::MAX] {
            assert_eq!(parse_amount("t", &amount_text(amount)).unwrap(), amount);
        }
        assert!(parse_amount("t", "+1").is_err());
        assert!(parse_amount("t", "-1").is_err());
        assert!(parse_amount("t", "340282366920938463463374607431768211456").is_err());
        assert!(parse_amount("t", "1.5").is_err());
    }

    #[test]
    fn ids_are_32_lowercase_hex() {
        assert_eq!(id_text(0xab), "000000000000000000000000000000ab");
        assert_eq!(
            parse_account_id("t", &id_text(u128::MAX)).unwrap(),
            AccountId(u128::MAX)
        );
    }
}
