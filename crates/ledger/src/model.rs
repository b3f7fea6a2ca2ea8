//! Accounts and transfers, modelled on TigerBeetle's: immutable transfers with client-chosen
//! ids, account totals kept as posted and pending debits and credits, balance limits as flags.
//! Amounts are `u128` minor units of one currency; there are no floats anywhere.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u128);

        impl fmt::Display for $name {
            /// 32 lowercase hex digits: the form stored and shown everywhere.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:032x}", self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdParseError;
            /// Reads 1 to 32 hex digits.
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                if s.is_empty() || s.len() > 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(IdParseError);
                }
                u128::from_str_radix(s, 16).map(Self).map_err(|_| IdParseError)
            }
        }
    };
}

id_type!(
    /// An account id, chosen by the client (unique across the ledger; zero is reserved).
    AccountId
);
id_type!(
    /// A transfer id, chosen by the client: the idempotency key of the transfer (zero is reserved).
    TransferId
);

/// An id that is not 1 to 32 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an id is 1 to 32 hexadecimal digits")]
pub struct IdParseError;

/// Longest currency code (ISO 4217 codes, token addresses, method-defined units).
pub const CURRENCY_LEN_MAX: usize = 64;

/// True when `code` may name a currency: 1 to 64 printable ASCII characters without spaces.
pub fn is_valid_currency(code: &str) -> bool {
    !code.is_empty() && code.len() <= CURRENCY_LEN_MAX && code.bytes().all(|b| b.is_ascii_graphic())
}

/// What an account is for. Stored as its snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountKind {
    /// A merchant's earnings.
    MerchantRevenue,
    /// An organisation's spendable balance on the platform.
    PayerBalance,
    /// The platform's fee income.
    PlatformFees,
    /// Money in transit on a rail (card processor, chain, Lightning).
    RailClearing,
    /// An agent's spend budget (reservations are pending transfers against it).
    Budget,
    /// The outside world: the counterpart of deposits and withdrawals.
    External,
}

impl AccountKind {
    /// Every kind.
    pub const ALL: [Self; 6] = [
        Self::MerchantRevenue,
        Self::PayerBalance,
        Self::PlatformFees,
        Self::RailClearing,
        Self::Budget,
        Self::External,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MerchantRevenue => "merchant_revenue",
            Self::PayerBalance => "payer_balance",
            Self::PlatformFees => "platform_fees",
            Self::RailClearing => "rail_clearing",
            Self::Budget => "budget",
            Self::External => "external",
        }
    }

    /// The kind with this stored name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// Balance limits of an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct AccountFlags {
    /// Debits (posted + pending) may never exceed posted credits: a balance that cannot go negative.
    pub debits_must_not_exceed_credits: bool,
    /// Credits (posted + pending) may never exceed posted debits.
    pub credits_must_not_exceed_debits: bool,
}

impl AccountFlags {
    /// Bit 0: debits_must_not_exceed_credits; bit 1: credits_must_not_exceed_debits.
    pub fn bits(self) -> u32 {
        u32::from(self.debits_must_not_exceed_credits)
            | (u32::from(self.credits_must_not_exceed_debits) << 1)
    }

    /// From stored bits; unknown bits are an error.
    pub fn from_bits(bits: u32) -> Option<Self> {
        (bits & !0b11 == 0).then_some(Self {
            debits_must_not_exceed_credits: bits & 1 != 0,
            credits_must_not_exceed_debits: bits & 2 != 0,
        })
    }
}

/// What a client asks for when it creates an account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NewAccount {
    /// Client-chosen id.
    pub id: AccountId,
    /// The tenant the account belongs to.
    pub tenant: String,
    /// Who holds it within the tenant (merchant, organisation, agent, platform).
    pub owner: String,
    /// What it is for.
    pub kind: AccountKind,
    /// The one currency it holds.
    pub currency: String,
    /// Balance limits.
    pub flags: AccountFlags,
}

/// An account and its totals.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Account {
    /// Id.
    pub id: AccountId,
    /// Tenant.
    pub tenant: String,
    /// Owner.
    pub owner: String,
    /// Kind.
    pub kind: AccountKind,
    /// Currency.
    pub currency: String,
    /// Limits.
    pub flags: AccountFlags,
    /// Sum of pending debits not yet posted, voided or expired.
    pub debits_pending: u128,
    /// Sum of posted debits.
    pub debits_posted: u128,
    /// Sum of pending credits.
    pub credits_pending: u128,
    /// Sum of posted credits.
    pub credits_posted: u128,
    /// Creation time, ms since the Unix epoch.
    pub created_at_ms: i64,
}

impl Account {
    /// A new account with zero totals.
    pub fn open(new: NewAccount, created_at_ms: i64) -> Self {
        Self {
            id: new.id,
            tenant: new.tenant,
            owner: new.owner,
            kind: new.kind,
            currency: new.currency,
            flags: new.flags,
            debits_pending: 0,
            debits_posted: 0,
            credits_pending: 0,
            credits_posted: 0,
            created_at_ms,
        }
    }

    /// True when `new` asks for exactly this account (idempotent creation).
    pub fn matches(&self, new: &NewAccount) -> bool {
        self.id == new.id
            && self.tenant == new.tenant
            && self.owner == new.owner
            && self.kind == new.kind
            && self.currency == new.currency
            && self.flags == new.flags
    }

    /// Posted credits minus posted debits (what a credit-normal account holds). Signed, as an
    /// account without limits may go either way.
    pub fn credit_balance_posted(&self) -> i128 {
        signed_difference(self.credits_posted, self.debits_posted)
    }

    /// Posted credits minus posted and pending debits: what may still be spent from a
    /// credit-normal account.
    pub fn credit_balance_available(&self) -> i128 {
        signed_difference(
            self.credits_posted,
            self.debits_posted.saturating_add(self.debits_pending),
        )
    }

    /// True when the totals respect the account's flags.
    pub fn within_limits(&self) -> bool {
        let debits = self.debits_posted.checked_add(self.debits_pending);
        let credits = self.credits_posted.checked_add(self.credits_pending);
        let (Some(debits), Some(credits)) = (debits, credits) else {
            return false;
        };
        let overdrawn = self.flags.debits_must_not_exceed_credits && debits > self.credits_posted;
        let overcredited =
            self.flags.credits_must_not_exceed_debits && credits > self.debits_posted;
        !overdrawn && !overcredited
    }
}

fn signed_difference(a: u128, b: u128) -> i128 {
    if a >= b {
        i128::try_from(a - b).unwrap_or(i128::MAX)
    } else {
        i128::try_from(b - a).map(|v| -v).unwrap_or(i128::MIN)
    }
}

/// What kind of movement a transfer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferKind {
    /// Posted at once.
    Posted,
    /// Reserves the amount until posted, voided or expired (two-phase, first phase).
    Pending,
    /// Posts (all or part of) a pending transfer.
    PostPending,
    /// Releases a pending transfer.
    VoidPending,
}

impl TransferKind {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Posted => "posted",
            Self::Pending => "pending",
            Self::PostPending => "post_pending",
            Self::VoidPending => "void_pending",
        }
    }

    /// From the stored name.
    pub fn parse(name: &str) -> Option<Self> {
        [
            Self::Posted,
            Self::Pending,
            Self::PostPending,
            Self::VoidPending,
        ]
        .into_iter()
        .find(|k| k.as_str() == name)
    }
}

/// A transfer as a client asks for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TransferRequest {
    /// Move `amount` from `debit_account_id` to `credit_account_id`, at once, or as a pending
    /// reservation when `timeout_ms` is set.
    Transfer {
        /// Idempotency key.
        id: TransferId,
        /// Account debited.
        debit_account_id: AccountId,
        /// Account credited.
        credit_account_id: AccountId,
        /// Minor units, more than zero.
        amount: u128,
        /// Must equal both accounts' currency.
        currency: String,
        /// `Some(ms)`: a pending transfer that expires after that long (at least 1 ms).
        timeout_ms: Option<u64>,
        /// Application-defined reason code.
        code: u16,
        /// Application reference (a payment id, a challenge id), at most 256 bytes.
        user_data: Option<String>,
    },
    /// Post a pending transfer: `amount` of it (the rest is released), or all of it when `None`.
    Post {
        /// Idempotency key.
        id: TransferId,
        /// The pending transfer.
        pending_id: TransferId,
        /// Amount to post, at most the pending amount; `None` posts it all.
        amount: Option<u128>,
    },
    /// Void (release) a pending transfer.
    Void {
        /// Idempotency key.
        id: TransferId,
        /// The pending transfer.
        pending_id: TransferId,
    },
}

/// Longest `user_data`.
pub const USER_DATA_LEN_MAX: usize = 256;

impl TransferRequest {
    /// The id of the transfer this request creates.
    pub fn id(&self) -> TransferId {
        match self {
            Self::Transfer { id, .. } | Self::Post { id, .. } | Self::Void { id, .. } => *id,
        }
    }

    /// The pending transfer this request resolves, if any.
    pub fn pending_id(&self) -> Option<TransferId> {
        match self {
            Self::Transfer { .. } => None,
            Self::Post { pending_id, .. } | Self::Void { pending_id, .. } => Some(*pending_id),
        }
    }

    /// Accounts named directly by the request.
    pub fn account_ids(&self) -> Option<[AccountId; 2]> {
        match self {
            Self::Transfer {
                debit_account_id,
                credit_account_id,
                ..
            } => Some([*debit_account_id, *credit_account_id]),
            _ => None,
        }
    }
}

/// A transfer as recorded: immutable once written.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Transfer {
    /// Client-chosen id.
    pub id: TransferId,
    /// Account debited.
    pub debit_account_id: AccountId,
    /// Account credited.
    pub credit_account_id: AccountId,
    /// Minor units moved (for a post: the amount posted; for a void: the amount released).
    pub amount: u128,
    /// Currency.
    pub currency: String,
    /// What kind of movement.
    pub kind: TransferKind,
    /// The pending transfer a post or void resolves.
    pub pending_id: Option<TransferId>,
    /// For a pending transfer: when it expires, ms since the epoch.
    pub expires_at_ms: Option<i64>,
    /// The requested timeout of a pending transfer.
    pub timeout_ms: Option<u64>,
    /// Reason code.
    pub code: u16,
    /// Application reference.
    pub user_data: Option<String>,
    /// When the ledger recorded it, ms since the epoch.
    pub timestamp_ms: i64,
}

impl Transfer {
    /// True when `request` asks for exactly this transfer (an idempotent retry).
    pub fn matches(&self, request: &TransferRequest) -> bool {
        match request {
            TransferRequest::Transfer {
                id,
                debit_account_id,
                credit_account_id,
                amount,
                currency,
                timeout_ms,
                code,
                user_data,
            } => {
                let kind = if timeout_ms.is_some() {
                    TransferKind::Pending
                } else {
                    TransferKind::Posted
                };
                self.id == *id
                    && self.kind == kind
                    && self.debit_account_id == *debit_account_id
                    && self.credit_account_id == *credit_account_id
                    && self.amount == *amount
                    && self.currency == *currency
                    && self.timeout_ms == *timeout_ms
                    && self.code == *code
                    && self.user_data == *user_data
            }
            TransferRequest::Post {
                id,
                pending_id,
                amount,
            } => {
                self.id == *id
                    && self.kind == TransferKind::PostPending
                    && self.pending_id == Some(*pending_id)
                    && amount.is_none_or(|a| a == self.amount)
            }
            TransferRequest::Void { id, pending_id } => {
                self.id == *id
                    && self.kind == TransferKind::VoidPending
                    && self.pending_id == Some(*pending_id)
            }
        }
    }
}

/// Where a pending transfer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PendingState {
    /// Still reserving its amount.
    Pending,
    /// Posted (fully or partly).
    Posted,
    /// Voided.
    Voided,
    /// Expired by the sweeper or on a late post/void.
    Expired,
}

impl PendingState {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Posted => "posted",
            Self::Voided => "voided",
            Self::Expired => "expired",
        }
    }

    /// From the stored name.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Pending, Self::Posted, Self::Voided, Self::Expired]
            .into_iter()
            .find(|k| k.as_str() == name)
    }
}

/// Why a transfer (or account) was refused. Serialized as snake_case reason codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum TransferError {
    /// Id zero is reserved.
    #[error("id_must_not_be_zero")]
    IdMustNotBeZero,
    /// Zero amount on a transfer.
    #[error("amount_must_not_be_zero")]
    AmountMustNotBeZero,
    /// Debit and credit are the same account.
    #[error("accounts_must_be_different")]
    AccountsMustBeDifferent,
    /// Currency is not 1-64 printable ASCII characters.
    #[error("invalid_currency")]
    InvalidCurrency,
    /// `user_data` over [`USER_DATA_LEN_MAX`].
    #[error("user_data_too_long")]
    UserDataTooLong,
    /// A zero pending timeout.
    #[error("timeout_must_not_be_zero")]
    TimeoutMustNotBeZero,
    /// The debit account does not exist.
    #[error("debit_account_not_found")]
    DebitAccountNotFound,
    /// The credit account does not exist.
    #[error("credit_account_not_found")]
    CreditAccountNotFound,
    /// The transfer's currency differs from an account's.
    #[error("currency_mismatch")]
    CurrencyMismatch,
    /// The accounts belong to different tenants.
    #[error("tenant_mismatch")]
    TenantMismatch,
    /// The debit would take the debit account beyond its credits.
    #[error("exceeds_credits")]
    ExceedsCredits,
    /// The credit would take the credit account beyond its debits.
    #[error("exceeds_debits")]
    ExceedsDebits,
    /// A total would overflow u128.
    #[error("overflow")]
    Overflow,
    /// A transfer with this id exists with other fields.
    #[error("exists_with_different_fields")]
    ExistsWithDifferentFields,
    /// An account with this id exists with other fields.
    #[error("account_exists_with_different_fields")]
    AccountExistsWithDifferentFields,
    /// No transfer with the pending id.
    #[error("pending_transfer_not_found")]
    PendingTransferNotFound,
    /// The transfer named as pending is not a pending transfer.
    #[error("pending_transfer_not_pending")]
    PendingTransferNotPending,
    /// The pending transfer was already posted.
    #[error("pending_already_posted")]
    PendingAlreadyPosted,
    /// The pending transfer was already voided.
    #[error("pending_already_voided")]
    PendingAlreadyVoided,
    /// The pending transfer expired.
    #[error("pending_expired")]
    PendingExpired,
    /// A post of more than the pending amount.
    #[error("exceeds_pending_amount")]
    ExceedsPendingAmount,
    /// Another transfer of the same linked batch failed, so this one was not applied.
    #[error("linked_event_failed")]
    LinkedEventFailed,
    /// The same id twice in one linked batch.
    #[error("duplicate_id_in_batch")]
    DuplicateIdInBatch,
}

impl TransferError {
    /// The reason code, e.g. `exceeds_credits`.
    pub fn code(self) -> String {
        self.to_string()
    }
}

/// The result of one transfer request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posted {
    /// The transfer as recorded (the original one on an idempotent retry).
    pub transfer: Transfer,
    /// False when the transfer already existed with the same fields.
    pub created: bool,
}

/// One transfer's outcome.
pub type TransferResult = Result<Posted, TransferError>;
