//! Where Turnpike's database is: an embedded SQLite file in the data directory by default, or
//! PostgreSQL when a URL is given. Shared by `serve`, `migrate` and `ledger check`.

use std::path::PathBuf;

use anyhow::Context;
use turnpike_store::Store;

/// The SQLite file name inside the data directory.
pub const SQLITE_FILE: &str = "turnpike.db";

/// Options choosing the database.
#[derive(Debug, Clone, clap::Args)]
pub struct DbArgs {
    /// Data directory; the embedded SQLite database lives there.
    #[arg(long, env = "TURNPIKE_DATA_DIR", default_value = "./turnpike-data")]
    pub data_dir: PathBuf,
    /// PostgreSQL URL (`postgres://…`); when set, the data directory's SQLite is not used.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
}

impl DbArgs {
    /// A human description of the target (never the password of a URL).
    pub fn describe(&self) -> String {
        match &self.database_url {
            Some(url) => format!("PostgreSQL at {}", redact_url(url)),
            None => format!("SQLite at {}", self.data_dir.join(SQLITE_FILE).display()),
        }
    }

    /// Open (and migrate) the database. `create` allows creating the SQLite file.
    pub async fn open(&self, create: bool) -> anyhow::Result<Store> {
        match &self.database_url {
            Some(url) => Store::open_postgres(url)
                .await
                .with_context(|| format!("connecting to {}", self.describe())),
            None => {
                let file = self.data_dir.join(SQLITE_FILE);
                if !create && !file.exists() {
                    anyhow::bail!(
                        "no database at {} (run `turnpike migrate` or pass --database-url)",
                        file.display()
                    );
                }
                std::fs::create_dir_all(&self.data_dir).with_context(|| {
                    format!("creating data directory {}", self.data_dir.display())
                })?;
                Store::open_sqlite(&file)
                    .await
                    .with_context(|| format!("opening {}", self.describe()))
            }
        }
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<url>".into();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => format!("{scheme}://{userinfo}@{host}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_in_urls() {
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/d"),
            "postgres://u:***@h:5432/d"
        );
        assert_eq!(redact_url("postgres://h/d"), "postgres://h/d");
    }
}
