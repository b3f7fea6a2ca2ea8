//! Merchant SDK (being written).
