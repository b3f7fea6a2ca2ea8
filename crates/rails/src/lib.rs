//! Turnpike's settlement rails behind one trait (ARCHITECTURE.md, "Rails"): build a challenge's
//! method `request` from a price and the tenant's rail configuration, verify a credential (offline
//! where the method allows), settle it on the rail, and resolve a settlement whose outcome was
//! unknown. The verify pipeline and the ledger never see a rail's JSON.

pub mod tempo;
