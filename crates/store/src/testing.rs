//! Test support (cargo feature `test-support`; for tests only, never for production code).
//!
//! Test databases: a temporary SQLite file, or a database on a private PostgreSQL server that
//! this test binary starts itself (once, on first use) and that is stopped and deleted when the
//! binary exits. Used by this crate's tests and by the `turnpike` binary's CLI tests.
//!
//! The PostgreSQL server: `initdb` into a fresh directory under the system temp dir (owned by
//! user `postgres` when the tests run as root, since PostgreSQL refuses to run as root), then
//! `pg_ctl start` listening on a free 127.0.0.1 port and a Unix socket in that directory. A
//! detached reaper shell waits for this process to exit, then stops the server
//! (`pg_ctl stop -m immediate`) and deletes the directory; a leftover from a killed run cannot
//! collide with the next one (fresh directory, fresh port). Each test creates its own database
//! and drops it at the end. Without PostgreSQL (Debian package `postgresql`) the PostgreSQL
//! tests fail with a message saying so; they never skip.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::Store;
use sqlx::Connection;

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

/// One test's database.
#[derive(Debug)]
pub struct TestDb {
    /// The database kind.
    pub kind: Kind,
    /// A URL that `Store::connect` and sqlx accept.
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg_name: Option<String>,
}

impl TestDb {
    /// A SQLite database `turnpike.db` (the binary's file name, so `--data-dir` finds it) in a
    /// new temporary directory.
    pub async fn sqlite() -> Self {
        Self::sqlite_named("turnpike.db").await
    }

    /// A SQLite database `file` (not created yet) in a new temporary directory, removed with
    /// `self`.
    pub async fn sqlite_named(file: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite:{}", dir.path().join(file).display());
        Self {
            kind: Kind::Sqlite,
            url,
            _dir: Some(dir),
            pg_name: None,
        }
    }

    /// A new, empty database on this process's private PostgreSQL server (started on first
    /// use); panics, failing the test, when PostgreSQL is not installed or does not start.
    pub async fn postgres() -> Self {
        let server = pg_server();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "turnpike_test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let mut admin = sqlx::PgConnection::connect(&server.url("postgres"))
            .await
            .expect("connect to the test server");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create test database");
        admin.close().await.ok();
        Self {
            kind: Kind::Postgres,
            url: server.url(&name),
            _dir: None,
            pg_name: Some(name),
        }
    }

    /// The temporary directory of a SQLite database (`None` for PostgreSQL).
    pub fn dir(&self) -> Option<&Path> {
        self._dir.as_ref().map(|d| d.path())
    }

    /// A new `Store` (its own connection pool: a "replica") on this database; migrates.
    pub async fn open(&self) -> Store {
        Store::connect(&self.url).await.expect("open store")
    }

    /// Run SQL behind the store's back (to tamper with the ledger).
    pub async fn exec_raw(&self, sql: &str) -> u64 {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        match self.kind {
            Kind::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.url)
                    .await
                    .expect("connect");
                let done = sqlx::query(sql).execute(&mut conn).await.expect("raw sql");
                conn.close().await.ok();
                done.rows_affected()
            }
            Kind::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.url)
                    .await
                    .expect("connect");
                let done = sqlx::query(sql).execute(&mut conn).await.expect("raw sql");
                conn.close().await.ok();
                done.rows_affected()
            }
        }
    }

    /// Drop the PostgreSQL database (SQLite: the temp dir goes with `self`).
    pub async fn finish(self) {
        if let Some(name) = &self.pg_name {
            let server = pg_server();
            let mut admin = sqlx::PgConnection::connect(&server.url("postgres"))
                .await
                .expect("connect to the test server");
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await
            .expect("drop test database");
            admin.close().await.ok();
        }
    }
}

/// The private PostgreSQL server of this test binary.
#[derive(Debug)]
pub struct PgServer {
    root: PathBuf,
    port: u16,
}

impl PgServer {
    /// The server's directory: its data directory, Unix socket and `server.log`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The URL of `database` on this server (user `postgres`, trust authentication).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

static PG: OnceLock<Result<PgServer, String>> = OnceLock::new();

/// The server, started on first use. Panics (failing the test) when it cannot start.
pub fn pg_server() -> &'static PgServer {
    match PG.get_or_init(start_pg) {
        Ok(server) => server,
        Err(message) => panic!("{message}"),
    }
}

const NOT_INSTALLED: &str = "PostgreSQL is not installed: the tests start a private \
     server with initdb, pg_ctl and postgres (Debian/Ubuntu: `apt-get install -y postgresql`)";

fn find_bindir() -> Option<PathBuf> {
    let has_tools = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_tools(&dir) {
            return Some(dir);
        }
    }
    // Debian keeps the server binaries out of PATH, one directory per major version.
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_tools(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A command run as the server's owner: `postgres` when we are root, else ourselves.
fn as_owner(root: bool, program: &Path) -> Command {
    if root {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot run: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn start_pg() -> Result<PgServer, String> {
    let bindir = find_bindir().ok_or_else(|| NOT_INSTALLED.to_owned())?;
    let root_user = running_as_root();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let root =
        std::env::temp_dir().join(format!("turnpike-test-pg-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&root).map_err(|e| format!("create {}: {e}", root.display()))?;
    if root_user {
        run(
            Command::new("chown").arg("postgres:postgres").arg(&root),
            "chown the test cluster directory to postgres",
        )
        .map_err(|e| format!("{e}\n(is there a `postgres` user? {NOT_INSTALLED})"))?;
    }
    spawn_reaper(&root, &bindir, root_user);

    let data = root.join("data");
    run(
        as_owner(root_user, &bindir.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
            .args(["--no-sync", "--no-instructions"]),
        "initdb",
    )?;
    let mut last_error = String::new();
    for _ in 0..3 {
        let port = free_port()?;
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            root.display()
        );
        let started = run(
            as_owner(root_user, &bindir.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(root.join("server.log"))
                .args(["-w", "-t", "60", "-o", &options, "start"]),
            "pg_ctl start",
        );
        match started {
            Ok(()) => return Ok(PgServer { root, port }),
            Err(e) => {
                let log = std::fs::read_to_string(root.join("server.log")).unwrap_or_default();
                last_error = format!("{e}\nserver log:\n{log}");
            }
        }
    }
    Err(last_error)
}

/// A detached shell that outlives this process: once it is gone, stop the server and delete
/// its directory. (Rust runs no destructors for statics, so no in-process hook would do.)
#[allow(clippy::zombie_processes)] // Deliberately detached: it must outlive this process.
fn spawn_reaper(root: &Path, bindir: &Path, root_user: bool) {
    let pg_ctl = bindir.join("pg_ctl");
    let stop = format!(
        "{}'{}' -D '{}' stop -m immediate",
        if root_user {
            "runuser -u postgres -- "
        } else {
            ""
        },
        pg_ctl.display(),
        root.join("data").display()
    );
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {stop} >/dev/null 2>&1; rm -rf '{}'",
        root.display(),
        pid = std::process::id(),
    );
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spawn the test server's reaper");
}

/// Turn each named `async fn(&TestDb)` into two tests, `<name>::sqlite` and `<name>::postgres`:
/// one behavioural suite, run against both backends.
#[macro_export]
macro_rules! on_both_databases {
    ($($test:ident),* $(,)?) => {
        $(
            mod $test {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let db = $crate::testing::TestDb::sqlite().await;
                    super::$test(&db).await;
                    db.finish().await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let db = $crate::testing::TestDb::postgres().await;
                    super::$test(&db).await;
                    db.finish().await;
                }
            }
        )*
    };
}
