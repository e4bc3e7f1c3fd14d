//! A planted password never shows in what `tier` prints — text and JSON on stdout, errors and
//! logs at TRACE on stderr — for `tier demo`, `tier redis stats|ls|get`, `tier invalidate` and
//! `tier stats`: with the right password (an ACL user of the test servers, standalone and
//! Cluster), a wrong one, a closed port and a URL that does not parse.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{cluster_urls, free_port, redis_url, runtime, tier, unique};

/// The password, with every character that ends a part of a URL.
const PASSWORD: &str = "pl4nted/S3cr@t:pw?#x";
/// The same, percent-encoded, as it stands in a URL that parses.
const ENCODED: &str = "pl4nted%2FS3cr%40t%3Apw%3F%23x";
/// Pieces that a redaction stopping at the wrong character would leave.
const PIECES: [&str; 4] = ["pl4nted", "S3cr", "t:pw", "%2FS3"];

/// An ACL user with the planted password on every node of `urls`, deleted when dropped (also
/// when the test fails).
struct AclUser {
    name: String,
    nodes: Vec<String>,
}

async fn acl(node: &str, args: &[&str]) {
    let client = redis::Client::open(node).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: redis::Value = redis::cmd("ACL").arg(args).query_async(&mut conn).await.unwrap();
}

impl AclUser {
    fn create(nodes: &[String]) -> Self {
        let name = unique("tier-cli-secret-user");
        runtime().block_on(async {
            for node in nodes {
                let pass = format!(">{PASSWORD}");
                acl(node, &["SETUSER", &name, "on", &pass, "~*", "&*", "+@all"]).await;
            }
        });
        Self { name, nodes: nodes.to_vec() }
    }

    /// `node` with this user and the (encoded) password in it.
    fn url(&self, node: &str) -> String {
        node.replacen("redis://", &format!("redis://{}:{ENCODED}@", self.name), 1)
    }
}

impl Drop for AclUser {
    fn drop(&mut self) {
        runtime().block_on(async {
            for node in &self.nodes {
                acl(node, &["DELUSER", &self.name]).await;
            }
        });
    }
}

/// What one run of `tier` printed.
struct Output {
    /// The subcommand and its exit code (not the arguments: they hold the password).
    what: String,
    code: Option<i32>,
    /// stdout, then stderr.
    printed: String,
}

/// Run `tier` with `args` (logs at TRACE, backtraces on).
fn run(args: &[&str]) -> Output {
    let out =
        tier().env("RUST_LOG", "trace").env("RUST_BACKTRACE", "1").args(args).output().unwrap();
    let words: Vec<&str> = args.iter().take(2).copied().filter(|a| !a.contains("://")).collect();
    Output {
        what: words.join(" "),
        code: out.status.code(),
        printed: format!(
            "stdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Every output that shows the password or a piece of it.
fn leaks(outputs: &[Output]) -> Vec<String> {
    let secrets = || [PASSWORD, ENCODED].into_iter().chain(PIECES);
    outputs
        .iter()
        .filter(|o| secrets().any(|s| o.printed.contains(s)))
        .map(|o| format!("tier {} (exit {:?}):\n{}", o.what, o.code, o.printed))
        .collect()
}

/// Every command, as text and as JSON, against `url` (one node URL or comma-separated ones).
fn every_command(url: &str, outputs: &mut Vec<Output>) {
    for json in [&["--json"][..], &[]] {
        let prefix = format!("{}:", unique("tier-cli-secret"));
        let cache = unique("secret");
        let demo = [
            "demo",
            "--duration",
            "300ms",
            "--workers",
            "2",
            "--keys",
            "20",
            "--rate",
            "500",
            "--redis",
            url,
            "--redis-prefix",
            &prefix,
            "--cache",
            &cache,
        ];
        outputs.push(run(&[&demo[..], json].concat()));
        for sub in ["stats", "ls"] {
            outputs.push(run(&[&["redis", sub, url, "--prefix", &prefix][..], json].concat()));
        }
        // The demo's keys carry the namespace version it read from Redis (a fresh start, not
        // 0): item 1's key as `redis ls` printed it.
        let listed = outputs.last().map(|o| o.printed.clone()).unwrap_or_default();
        let key = key_of_item_1(&listed, &cache).unwrap_or_else(|| format!("{cache}:0:item:1"));
        outputs.push(run(&[&["redis", "get", url, "--prefix", &prefix, &key][..], json].concat()));
        for what in [&["--key", "1"][..], &["--tag", "t"], &["--namespace"], &["--all"]] {
            let invalidate = ["invalidate", "--redis", url, "--prefix", &prefix, "--cache", &cache];
            outputs.push(run(&[&invalidate[..], what, json].concat()));
        }
    }
}

/// `cache:VERSION:item:1` as it stands in `printed` (not `item:10` …).
fn key_of_item_1(printed: &str, cache: &str) -> Option<String> {
    let start = format!("{cache}:");
    printed.match_indices(&start).find_map(|(at, _)| {
        let rest = &printed[at + start.len()..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let tail = rest[digits..].strip_prefix(":item:1")?;
        let ends = !tail.starts_with(|c: char| c.is_ascii_digit());
        (digits > 0 && ends).then(|| format!("{start}{}:item:1", &rest[..digits]))
    })
}

#[test]
fn a_planted_password_is_never_printed() {
    let standalone = redis_url();
    let cluster: Vec<String> = cluster_urls().split(',').map(String::from).collect();
    let user = AclUser::create(&[std::slice::from_ref(&standalone), &cluster[..]].concat());
    let mut outputs = Vec::new();

    // The right password: every command works, and says nothing of it.
    let right = user.url(&standalone);
    every_command(&right, &mut outputs);
    let cluster_right: Vec<String> = cluster.iter().map(|n| user.url(n)).collect();
    every_command(&cluster_right.join(","), &mut outputs);
    every_command(&cluster_right[0], &mut outputs);
    let worked =
        |what: &str| outputs.iter().filter(|o| o.what == what && o.code == Some(0)).count();
    // Text and JSON, standalone, Cluster by its nodes and by one node.
    assert_eq!(worked("demo --duration"), 6, "the demo runs with the right password");
    assert_eq!(worked("redis get"), 6, "the entry is found with the right password");
    assert_eq!(worked("invalidate --redis"), 24, "invalidations work with the right password");

    // A wrong password, a closed port, a URL that does not parse.
    let wrong = right.replace(ENCODED, &format!("{ENCODED}x"));
    let closed = format!("redis://u:{ENCODED}@127.0.0.1:{}/", free_port());
    let unparsable = format!("redis://u:{PASSWORD}@127.0.0.1:{}/", free_port());
    for url in [&wrong, &closed, &unparsable] {
        every_command(url, &mut outputs);
    }

    // `tier stats` with credentials in the metrics URL: a closed port, and a server that wants
    // exactly them (Basic authorization).
    let closed_metrics = format!("http://user:{ENCODED}@127.0.0.1:{}/metrics", free_port());
    outputs.push(run(&["stats", "--metrics", &closed_metrics]));
    outputs.push(run(&["stats", "--metrics", &closed_metrics, "--json"]));
    let basic = {
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("user:{PASSWORD}"));
        format!("Basic {encoded}")
    };
    let body = "cache_loads_total{cache=\"c\",result=\"ok\"} 1\n";
    let (addr, server) = common::http_server(2, "200 OK", body, Some(basic));
    let metrics = format!("http://user:{ENCODED}@{addr}/metrics");
    for json in [&["--json"][..], &[]] {
        let out = run(&[&["stats", "--metrics", &metrics][..], json].concat());
        assert_eq!(out.code, Some(0), "authorized: {}", out.printed);
        assert!(out.printed.contains("\"c\""), "the scrape was read: {}", out.printed);
        outputs.push(out);
    }
    server.join().unwrap();

    assert!(
        outputs.iter().any(|o| o.printed.contains(" TRACE ")),
        "the logs at TRACE were captured"
    );
    let leaks = leaks(&outputs);
    assert!(leaks.is_empty(), "the password is shown:\n{}", leaks.join("\n---\n"));
}
