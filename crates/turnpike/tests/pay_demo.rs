//! Black-box tests of `turnpike demo` and `turnpike pay`: the real binary over real HTTP. Each
//! test starts its own demo (`--listen 127.0.0.1:0`, a temporary data directory) and reads the
//! addresses, the agent token and the keys from what the demo prints.

#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_turnpike");
/// The last line `turnpike demo` prints once it is up.
const READY: &str = "demo ready: Ctrl-C (or SIGTERM) stops it";
const WAIT: Duration = Duration::from_secs(20);

/// A `turnpike` command without the environment settings the tests do not choose.
fn turnpike() -> Command {
    let mut command = Command::new(BIN);
    for var in [
        "TURNPIKE_AGENT_TOKEN",
        "TURNPIKE_API",
        "TURNPIKE_ADMIN_TOKEN",
        "TURNPIKE_DATA_DIR",
        "DATABASE_URL",
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        command.env_remove(var);
    }
    command.env("RUST_LOG", "warn").env("NO_COLOR", "1");
    command
}

fn run(args: &[&str]) -> Output {
    turnpike()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the turnpike binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A running `turnpike demo`, its stdout read line by line.
struct Demo {
    child: Child,
    lines: Receiver<String>,
    output: Vec<String>,
    /// `http://127.0.0.1:PORT`.
    base: String,
}

impl Demo {
    /// Start the demo on `dir` and wait until it is ready.
    fn start(dir: &Path) -> Self {
        let mut child = turnpike()
            .args(["demo", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start turnpike demo");
        let (tx, lines) = channel();
        let stdout = child.stdout.take().expect("piped stdout");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stderr = child.stderr.take().expect("piped stderr");
        thread::spawn(move || {
            // Drained so the demo never blocks on a full pipe; shown by failed assertions below.
            let mut sink = Vec::new();
            let _ = stderr.read_to_end(&mut sink);
        });
        let mut demo = Self {
            child,
            lines,
            output: Vec::new(),
            base: String::new(),
        };
        let first = demo.wait_for(|_| true);
        demo.base = first
            .strip_prefix("turnpike listening on ")
            .unwrap_or_else(|| panic!("the first line names the address, got {first:?}"))
            .to_owned();
        demo.wait_for(|line| line == READY);
        demo
    }

    /// The next line matching `want` (every line read is kept in `output`).
    fn wait_for(&mut self, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.output.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("timed out; the demo printed:\n{}", self.output.join("\n"))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    panic!(
                        "the demo ended ({status:?}); it printed:\n{}",
                        self.output.join("\n")
                    )
                }
            }
        }
    }

    fn printed(&self) -> String {
        self.output.join("\n")
    }

    /// The printed line starting (after indentation) with `prefix`.
    fn line(&self, prefix: &str) -> String {
        self.output
            .iter()
            .map(|l| l.trim())
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starts with {prefix:?} in:\n{}", self.printed()))
            .to_owned()
    }

    /// The arguments of the printed `turnpike pay ...` command (without `turnpike`).
    fn pay_args(&self) -> Vec<String> {
        self.line("turnpike pay ")
            .split_whitespace()
            .skip(1)
            .map(str::to_owned)
            .collect()
    }

    /// SIGTERM, then the exit status (within 10 s) and the rest of the output.
    fn terminate(mut self) -> (ExitStatus, String) {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(killed.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for the demo") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the demo did not stop within 10 s of SIGTERM"
            );
            thread::sleep(Duration::from_millis(20));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.output.push(line);
        }
        (status, self.printed())
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Wait for the next wall-clock second.
///
/// Works around a server bug: challenges carry no nonce and `expires` has a one-second
/// resolution, so two 402s for the same price within one second hold the same challenge id, and
/// the second one cannot be paid (`409 conflict` from `/v1/agent/pay`).
fn next_second() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let into = Duration::from_nanos(u64::from(now.subsec_nanos()));
    thread::sleep(Duration::from_secs(1) - into + Duration::from_millis(20));
}

/// One plain HTTP/1.1 request; returns the status code and the body.
fn http(method: &str, url: &str, bearer: &str) -> (u16, String) {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut stream = TcpStream::connect(host).expect("connect");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {bearer}\r\n\
         Connection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn demo_walks_through_a_payment_and_its_pay_command_works() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(dir.path());
    let printed = demo.printed();
    for shown in [
        "HTTP 402 Payment Required",
        "WWW-Authenticate: Payment id=",
        "challenge, decoded:",
        "  amount      250 usd",
        "\"grant\": \"eyJ",
        "\"pyr\": \"ten_",
        "HTTP 200 OK",
        "Payment-Receipt, decoded:",
        "\"reference\": \"pay_",
        "\"xTurnpikePayment\": \"pay_",
        "transfers:",
        "demo-agents/payer_balance -> demo-weather/merchant_revenue",
        "demo-weather/merchant_revenue -> platform/platform_fees",
        "available   9750",
        "available    244",
        "turnpike ledger check --data-dir ",
    ] {
        assert!(
            printed.contains(shown),
            "{shown:?} missing from:\n{printed}"
        );
    }
    assert!(
        printed.contains(&format!("{}/gw/demo-weather/weather/london", demo.base)),
        "the pay command names the gateway URL:\n{printed}"
    );

    let args = demo.pay_args();
    assert!(args.iter().any(|a| a == "--token"), "{args:?}");
    next_second();
    let paid = turnpike().args(&args).output().unwrap();
    let (stdout, stderr) = (text(&paid.stdout), text(&paid.stderr));
    assert!(paid.status.success(), "{stdout}\n{stderr}");
    let body: Value = serde_json::from_str(&stdout).expect("the upstream's JSON");
    assert_eq!(body["weather"]["city"], "london");
    assert_eq!(body["method"], "GET");
    let payment = body["xTurnpikePayment"].as_str().unwrap();
    assert!(payment.starts_with("pay_"), "{body}");
    let summary = stderr.trim();
    assert!(
        summary.starts_with("paid 250 usd to ten_")
            && summary.ends_with(&format!("(payment {payment})")),
        "{stderr}"
    );
    let token = &args[args.iter().position(|a| a == "--token").unwrap() + 1];
    assert!(!stderr.contains(token.as_str()) && !stdout.contains(token.as_str()));

    next_second();
    let included = turnpike().args(&args).arg("-i").output().unwrap();
    let stdout = text(&included.stdout);
    assert!(
        included.status.success(),
        "{stdout}\n{}",
        text(&included.stderr)
    );
    assert!(stdout.starts_with("HTTP/1.1 200 OK\n"), "{stdout}");
    let (head, body) = stdout.split_once("\n\n").expect("headers, then the body");
    assert!(
        head.lines().any(|l| l.starts_with("payment-receipt: ")),
        "{head}"
    );
    let body: Value = serde_json::from_str(body).unwrap();
    assert_ne!(body["xTurnpikePayment"].as_str().unwrap(), payment);

    let check = run(&[
        "ledger",
        "check",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(check.status.success(), "{}", text(&check.stderr));

    let (status, printed) = demo.terminate();
    assert!(status.success(), "{status:?}\n{printed}");
    assert!(printed.contains("turnpike demo stopped"), "{printed}");
}

#[test]
fn pay_with_a_garbage_or_revoked_token_fails_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(dir.path());
    let mut args = demo.pay_args();
    let token_at = args.iter().position(|a| a == "--token").unwrap() + 1;

    let mut garbage = args.clone();
    garbage[token_at] = "not-a-token".to_owned();
    let out = turnpike().args(&garbage).output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains("unauthorized"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked") && !stderr.contains("not-a-token"));

    // Revoke the agent token with the payer's key, as the demo suggests.
    let revoke = demo.line("curl -s -X DELETE ");
    let words: Vec<&str> = revoke.split_whitespace().collect();
    let url = words[4];
    let key = revoke
        .split("Bearer ")
        .nth(1)
        .unwrap()
        .trim_end_matches('\'');
    let (status, body) = http("DELETE", url, key);
    assert_eq!(status, 200, "{body}");

    let out = turnpike().args(&args).output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains("revoked"),
        "{stderr}"
    );
    assert!(!stderr.contains(args[token_at].as_str()));

    // A 402 and no token at all.
    args.truncate(token_at - 1);
    let out = turnpike().args(&args).output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no agent token"), "{stderr}");
}

#[test]
fn pay_without_a_402_prints_the_body_and_exits_by_the_status() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(dir.path());

    let out = run(&[
        "pay",
        &format!("{}/healthz", demo.base),
        "--token",
        "unused",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), r#"{"status":"ok"}"#);
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));

    let missing = format!("{}/gw/demo-weather/nothing", demo.base);
    let out = run(&["pay", &missing, "-i"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stdout.starts_with("HTTP/1.1 404 Not Found\n"), "{stdout}");
    assert!(stdout.contains("no-matching-price"), "{stdout}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains("404"),
        "{stderr}"
    );

    // -X and -d go through unchanged: the merchant API refuses a POST without a key.
    let out = run(&[
        "pay",
        &format!("{}/v1/prices", demo.base),
        "-d",
        "{}",
        "-H",
        "Content-Type: application/json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("unauthorized"));

    // Nothing listens: the error names the URL.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/x");
    let out = run(&["pay", &url]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains(&url),
        "{stderr}"
    );
}

#[test]
fn demo_runs_again_on_its_own_data_dir_and_refuses_a_foreign_one() {
    let dir = tempfile::tempdir().unwrap();
    let first = Demo::start(dir.path());
    let (status, _) = first.terminate();
    assert!(status.success());
    let again = Demo::start(dir.path());
    assert!(
        again.printed().contains("wiped the previous demo database"),
        "{}",
        again.printed()
    );
    let (status, _) = again.terminate();
    assert!(status.success());

    let foreign = tempfile::tempdir().unwrap();
    std::fs::write(foreign.path().join("turnpike.db"), b"not the demo's").unwrap();
    let out = run(&[
        "demo",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        foreign.path().to_str().unwrap(),
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refusing to wipe it"), "{stderr}");
    assert_eq!(
        std::fs::read(foreign.path().join("turnpike.db")).unwrap(),
        b"not the demo's"
    );
}
