//! `turnpike migrate` and `turnpike ledger check`.

use crate::db::DbArgs;

/// Create or upgrade the schema.
pub async fn migrate(db: DbArgs) -> anyhow::Result<()> {
    let store = db.open(true).await?;
    store.migrate().await?;
    println!("migrated {}", db.describe());
    Ok(())
}

/// Verify the ledger invariants and tie every payment to its transfers; an error (exit 1)
/// lists every violation.
pub async fn check(db: DbArgs) -> anyhow::Result<()> {
    let store = db.open(false).await?;
    let mut report = store.check().await?;
    turnpike_server::refunds::audit(&store, &mut report).await?;
    print!("{}: {report}", db.describe());
    if !report.is_ok() {
        let found = report.violations.len() as u64 + report.violations_unlisted;
        anyhow::bail!("ledger check failed: {found} violation(s), listed above");
    }
    Ok(())
}
