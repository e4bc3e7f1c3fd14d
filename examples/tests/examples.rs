//! Each example program, run as a user runs it (its binary, its flags) against the test Redis of
//! `scripts/test`, and checked for what it says it does: through its output lines, its exit
//! code and, for the service, real HTTP requests on loopback.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

/// How long any one step may take (a loaded 2-core machine builds and runs other tests too).
const DEADLINE: Duration = Duration::from_secs(60);

fn redis_url() -> String {
    std::env::var("TIER_TEST_REDIS_URL").expect(
        "TIER_TEST_REDIS_URL is not set: run the tests through scripts/test (it starts Redis), \
         or start one with scripts/redis-env and source its env file",
    )
}

/// A running example: its output lines as they come, the process stopped by PID when dropped.
struct Running {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(binary: &str, args: &[&str]) -> Self {
        let mut child = Command::new(binary)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{binary} did not start: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines, seen: Vec::new() }
    }

    /// The next line that starts with `prefix` (the lines before it are kept in `seen`).
    fn wait_for(&mut self, prefix: &str) -> String {
        loop {
            match self.lines.recv_timeout(DEADLINE) {
                Ok(line) if line.starts_with(prefix) => {
                    self.seen.push(line.clone());
                    return line;
                }
                Ok(line) => self.seen.push(line),
                Err(e) => panic!("no line {prefix:?} ({e}); the output was {:?}", self.seen),
            }
        }
    }

    /// Every line until the program closes its output, and how it exited.
    fn finish(mut self) -> (Vec<String>, ExitStatus) {
        loop {
            match self.lines.recv_timeout(DEADLINE) {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(e) => panic!("the program did not end ({e}); its output was {:?}", self.seen),
            }
        }
        let status = self.child.wait().unwrap();
        (std::mem::take(&mut self.seen), status)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Run `binary` to its end; its output lines, after asserting that it exited 0.
fn run(binary: &str, args: &[&str]) -> Vec<String> {
    let (lines, status) = Running::start(binary, args).finish();
    assert!(status.success(), "{binary} exited with {status}; its output: {lines:#?}");
    lines
}

fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(DEADLINE))
        .build()
        .into()
}

/// Status, the `x-origin-reads` header and the body of a response.
fn answer(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, u64, String) {
    let mut response = response.unwrap();
    let reads = response
        .headers()
        .get("x-origin-reads")
        .map_or(0, |v| v.to_str().unwrap().parse().unwrap());
    (response.status().as_u16(), reads, response.body_mut().read_to_string().unwrap())
}

#[test]
fn the_service_caches_invalidates_by_key_and_tag_serves_metrics_and_shuts_down_gracefully() {
    let url = redis_url();
    let prefix = format!("tier-example-service-{}:", std::process::id());
    let mut service = Running::start(
        env!("CARGO_BIN_EXE_service"),
        &["--redis", &url, "--listen", "127.0.0.1:0", "--prefix", &prefix],
    );
    let base = service.wait_for("listening on ").trim_start_matches("listening on ").to_string();
    let http = http();
    let get = |path: &str| answer(http.get(format!("{base}{path}")).call());

    let (status, reads, body) = get("/users/1");
    assert_eq!((status, reads), (200, 1), "{body}");
    assert!(body.contains(r#""plan":"free","version":1"#), "{body}");
    assert_eq!(get("/users/1"), (200, 1, body), "the second read is a hit: no origin read");
    assert_eq!(get("/users/3").1, 2, "user 3, also of team 1, loaded");

    // The origin changes team 1: one tag invalidation, both users read anew.
    let put = http.put(format!("{base}/teams/1/plan")).send("pro");
    assert_eq!(answer(put).0, 204);
    let (_, reads, body) = get("/users/1");
    assert!(body.contains(r#""plan":"pro","version":2"#) && reads == 3, "{reads} {body}");
    let (_, reads, body) = get("/users/3");
    assert!(body.contains(r#""plan":"pro""#) && reads == 4, "{reads} {body}");

    // The invalidation endpoints: a key, a tag.
    assert_eq!(answer(http.post(format!("{base}/invalidate/keys/1")).send_empty()).0, 204);
    assert_eq!(get("/users/1").1, 5, "loaded again after its invalidation");
    assert_eq!(get("/users/3").1, 5, "user 3 untouched by user 1's invalidation");
    assert_eq!(answer(http.post(format!("{base}/invalidate/tags/team:1")).send_empty()).0, 204);
    assert_eq!(get("/users/3").1, 6, "loaded again after its tag's invalidation");
    assert_eq!(get("/users/0").0, 404, "the origin has no user 0");

    let (status, _, metrics) = get("/metrics");
    assert_eq!(status, 200);
    for line in [
        r#"cache_loads_total{cache="users",result="ok"} 6"#,
        r#"tier_requests_total{cache="users",tier="memory",op="get",result="hit"} 2"#,
        r#"cache_invalidations_total{cache="users",kind="tag",source="local"} 2"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "no {line} in\n{metrics}");
    }

    // SIGTERM: the server stops accepting, answers what is in flight and exits 0.
    let pid = rustix::process::Pid::from_child(&service.child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    service.wait_for("shut down cleanly");
    let (lines, status) = service.finish();
    assert!(status.success(), "exited with {status}: {lines:?}");
}

#[test]
fn two_instances_see_each_others_invalidation_and_insert() {
    let url = redis_url();
    let lines = run(env!("CARGO_BIN_EXE_two_instances"), &["--redis", &url]);
    let said = |prefix: &str| lines.iter().any(|l| l.starts_with(prefix));
    assert!(said("b read user:1 = Ada from Redis (its origin not called)"), "{lines:#?}");
    assert!(said("the origin now says Grace; b still serves Ada"), "{lines:#?}");
    assert!(said("a invalidated user:1; b read Grace"), "{lines:#?}");
    assert!(said("a inserted user:1 = Linus; b read it"), "{lines:#?}");
}

#[test]
fn a_warm_restart_answers_its_first_read_from_the_disk_tier() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().join("reports");
    let dir = dir.to_str().unwrap();
    let first = run(env!("CARGO_BIN_EXE_warm_restart"), &["--dir", dir]);
    assert!(first[0].starts_with("first read: origin in "), "{first:?}");
    let second = run(env!("CARGO_BIN_EXE_warm_restart"), &["--dir", dir]);
    assert!(second[0].starts_with("first read: disk in "), "{second:?}");
}

#[test]
fn fail_safe_serves_the_stale_value_during_an_origin_outage_and_counts_it() {
    let lines = run(env!("CARGO_BIN_EXE_fail_safe"), &[]);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("served stale") && l.contains("cache_stale_served_total 1")),
        "{lines:#?}"
    );
    assert_eq!(
        lines.last().map(String::as_str),
        Some("ok: the outage was served stale and counted")
    );
}

#[test]
fn conditional_refresh_renews_an_unchanged_value_without_its_body() {
    let url = redis_url();
    let lines = run(env!("CARGO_BIN_EXE_conditional_refresh"), &["--redis", &url]);
    let said = |prefix: &str| lines.iter().find(|l| l.starts_with(prefix)).cloned();
    let revalidated = said("after expire, unchanged at the origin").unwrap_or_default();
    assert!(
        revalidated.ends_with("1 full answers, 1 not-modified, 10000 body bytes in all"),
        "{lines:#?}"
    );
    assert!(said("the kept value is served").is_some(), "{lines:#?}");
    assert_eq!(
        lines.last().map(String::as_str),
        Some("ok: only changed documents were transferred")
    );
}
