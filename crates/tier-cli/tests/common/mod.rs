//! Helpers of the `tier` binary's integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;

use assert_cmd::Command;
use serde_json::Value;

/// The built `tier` binary, with a clean environment for logs.
pub fn tier() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tier"));
    cmd.env_remove("RUST_LOG");
    cmd
}

/// The standalone Redis of the test environment (scripts/test exports it). Never skipped.
pub fn redis_url() -> String {
    std::env::var("TIER_TEST_REDIS_URL").expect(
        "TIER_TEST_REDIS_URL is not set: run the tests through scripts/test (it starts Redis)",
    )
}

/// The Redis Cluster node URLs of the test environment, comma-separated.
pub fn cluster_urls() -> String {
    std::env::var("TIER_TEST_REDIS_CLUSTER_URLS").expect(
        "TIER_TEST_REDIS_CLUSTER_URLS is not set: run the tests through scripts/test (it starts a Redis Cluster)",
    )
}

/// A loopback port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A name unique to this test process and call, for cache names and Redis prefixes.
pub fn unique(what: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{what}{}x{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Run a command that must succeed; its output.
fn succeed(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run and parse stdout as one JSON document; the command must succeed.
pub fn json(cmd: &mut Command) -> Value {
    let out = succeed(cmd);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("stdout is not one JSON document ({e}):\n{}", String::from_utf8_lossy(&out.stdout))
    })
}

/// Run a command that must fail with `code` and exactly one line on stderr; returns the line.
pub fn fails(cmd: &mut Command, code: i32) -> String {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr, got:\n{stderr}");
    assert!(lines[0].starts_with("tier: error: "), "{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
    lines[0].to_string()
}

/// A runtime for the library calls that prepare a test's data.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Run and return stdout as text; the command must succeed.
pub fn text(cmd: &mut Command) -> String {
    String::from_utf8(succeed(cmd).stdout).unwrap()
}

/// A loopback HTTP server that answers `requests` requests with `status` and `body`, then stops.
/// With `basic_auth` (the expected `Authorization` header value), a request without it gets
/// 401. Returns the address (`127.0.0.1:port`) and a handle giving the requests it read.
pub fn http_server(
    requests: usize,
    status: &'static str,
    body: &'static str,
    basic_auth: Option<String>,
) -> (String, std::thread::JoinHandle<Vec<String>>) {
    use std::io::{Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handle = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..requests {
            let (mut sock, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match sock.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let request = String::from_utf8_lossy(&request).into_owned();
            let authorized = basic_auth.as_ref().is_none_or(|want| {
                request.lines().any(|l| l.eq_ignore_ascii_case(&format!("authorization: {want}")))
            });
            let (status, body) = if authorized { (status, body) } else { ("401 Unauthorized", "") };
            let _ = write!(
                sock,
                "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            seen.push(request);
        }
        seen
    });
    (addr, handle)
}
