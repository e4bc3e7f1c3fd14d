//! Bad input and unreachable services: one line on stderr, the documented exit code, never a
//! panic or a backtrace (RUST_BACKTRACE=1 is set on purpose).
#![allow(clippy::unwrap_used)]

mod common;

use std::net::TcpListener;

use common::{fails, free_port, tier};

fn cmd() -> assert_cmd::Command {
    let mut c = tier();
    c.env("RUST_BACKTRACE", "1");
    c
}

#[test]
fn usage_errors_exit_2() {
    let line = fails(cmd().args(["demo", "--duration", "10"]), 2);
    assert!(line.contains("missing unit"), "{line}");
    let line = fails(cmd().args(["demo", "--duration", "ten seconds"]), 2);
    assert!(line.contains("duration"), "{line}");
    let line = fails(cmd().args(["demo", "--origin-errors", "1.5"]), 2);
    assert!(line.contains("outside"), "{line}");
    let line = fails(cmd().args(["demo", "--redis", "localhost:6379"]), 2);
    assert!(line.contains("invalid Redis URL"), "{line}");
    fails(
        cmd().args([
            "demo",
            "--write-ratio",
            "0.7",
            "--invalidate-ratio",
            "0.5",
            "--duration",
            "1s",
        ]),
        2,
    );
    let line = fails(cmd().args(["demo", "--metrics-addr", "127.0.0.1:0"]), 2);
    assert!(line.contains("needs a port"), "{line}");
    fails(cmd().arg("frobnicate"), 2);
    let line = fails(cmd().args(["stats", "--metrics", "https://127.0.0.1:1/metrics"]), 2);
    assert!(line.contains("only http"), "{line}");
}

#[test]
fn runtime_errors_exit_1() {
    let closed = free_port();
    let line =
        fails(cmd().args(["stats", "--metrics", &format!("http://127.0.0.1:{closed}/metrics")]), 1);
    assert!(line.contains("refused"), "{line}");
    let line = fails(
        cmd().args([
            "demo",
            "--duration",
            "1s",
            "--redis",
            &format!("redis://127.0.0.1:{closed}/"),
        ]),
        1,
    );
    assert!(line.contains("cannot connect"), "{line}");
    let line = fails(
        cmd().args([
            "invalidate",
            "--redis",
            &format!("redis://127.0.0.1:{closed}/"),
            "--cache",
            "c",
            "--all",
        ]),
        1,
    );
    assert!(line.contains("cannot connect"), "{line}");
    // A metrics port already taken.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let line = fails(cmd().args(["demo", "--duration", "1s", "--metrics-addr", &addr]), 1);
    assert!(line.contains("in use"), "{line}");
    // Not a metrics endpoint: an HTTP error status.
    drop(taken);
}

#[test]
fn help_documents_exit_codes() {
    let out = cmd().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("Exit codes") && help.contains("3 damage"), "{help}");
    for sub in ["demo", "disk", "redis", "stats", "invalidate"] {
        assert!(help.contains(sub), "{sub} missing in help");
    }
}

#[test]
fn a_disk_capacity_a_disk_tier_cannot_have_is_a_usage_error() {
    for bytes in ["0", "1", "131071"] {
        let line = fails(cmd().args(["demo", "--duration", "100ms", "--disk-bytes", bytes]), 2);
        assert!(line.contains("--disk-bytes"), "{line}");
    }
    // More segments than a disk tier may hold: the flag is wrong too.
    let line = fails(
        cmd().args(["demo", "--duration", "100ms", "--disk-bytes", "18446744073709551615"]),
        2,
    );
    assert!(line.contains("capacity_bytes"), "{line}");
}

#[test]
fn a_metrics_body_that_is_empty_or_not_prometheus_is_an_error() {
    for (what, body) in [
        ("empty", ""),
        ("blank", " \r\n\n"),
        ("html", "<!DOCTYPE html>\n<html><body>It works!</body></html>\n"),
        ("json", "{\"status\":\"ok\"}\n"),
        ("plain text", "OK\n"),
        ("words", "hello world\n"),
    ] {
        let (addr, server) = common::http_server(1, "200 OK", body, None);
        let line = fails(cmd().args(["stats", "--metrics", &addr]), 1);
        assert!(line.contains(&addr), "{what}: {line}");
        server.join().unwrap();
    }
}
