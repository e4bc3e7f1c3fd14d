//! `tier disk get` / `tier redis get` of entries sealed at rest: metadata and "encrypted"
//! without a keyring; the value with a keyring from a file or `TIER_KEYRING`; a wrong keyring
//! or cache name says the entry does not open, and never shows key material.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{fails, json, redis_url, runtime, text, tier, unique};
use serde_json::{json as j, Value};
use tier_core::seal::Keyring;
use tier_core::{Cache, TierPolicy};
use tier_disk::DiskTier;

const HEX: &str = "4242424242424242424242424242424242424242424242424242424242424242";
const OTHER: &str = "4343434343434343434343434343434343434343434343434343434343434343";

fn keyring() -> Keyring {
    Keyring::parse(&format!("3:{HEX}")).unwrap()
}

#[test]
fn disk_get_of_a_sealed_entry_shows_metadata_and_opens_with_a_keyring() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let disk = DiskTier::builder(dir.path()).capacity_bytes(1 << 20).segment_size(256 << 10);
        let cache: Cache<Value> = Cache::builder("vault")
            .tier(disk.build().unwrap(), TierPolicy::fresh(Duration::from_secs(60)))
            .keyring(keyring())
            .build()
            .unwrap();
        cache
            .insert_with_tags(cache.key("1"), j!({"pin": "pin-7731"}), &["owner:7"])
            .await
            .unwrap();
    });
    let get = |extra: &[&str]| {
        let mut cmd = tier();
        cmd.env_remove("TIER_KEYRING").args(["disk", "get"]).arg(dir.path()).arg("vault:0:1");
        cmd.args(extra);
        cmd
    };

    let sealed = json(&mut get(&["--json"]));
    let env = &sealed["envelope"];
    assert_eq!((&env["encrypted"], &env["key_id"]), (&j!(true), &j!(3)), "{sealed}");
    assert_eq!(env["tags"][0]["tag"], "owner:7", "{sealed}");
    assert!(env["value"].is_null(), "{sealed}");
    assert!(env["value_error"].as_str().unwrap().contains("TIER_KEYRING"), "{sealed}");
    let shown = text(&mut get(&[]));
    assert!(shown.contains("encrypted") && shown.contains("key 3"), "{shown}");
    assert!(!shown.contains("pin-7731"), "{shown}");

    let opened = json(get(&["--json"]).env("TIER_KEYRING", format!("3:{HEX}")));
    assert_eq!(opened["envelope"]["value"], j!({"pin": "pin-7731"}), "{opened}");
    let file = dir.path().join("keyring.txt");
    std::fs::write(&file, format!("# rotated\n4:{OTHER}\n3:{HEX}\n")).unwrap();
    let opened = json(get(&["--json", "--keyring-file"]).arg(&file));
    assert_eq!(opened["envelope"]["value"], j!({"pin": "pin-7731"}), "{opened}");

    // Another key with the same id, or another cache: the entry does not open.
    let wrong = json(get(&["--json"]).env("TIER_KEYRING", format!("3:{OTHER}")));
    assert!(wrong["envelope"]["value_error"].as_str().unwrap().contains("authenticate"), "{wrong}");
    let elsewhere = json(get(&["--json", "--keyring-file"]).arg(&file).args(["--cache", "x"]));
    assert!(elsewhere["envelope"]["value"].is_null(), "{elsewhere}");
    // A keyring that does not parse is a usage error that quotes nothing of it.
    let err = fails(get(&[]).env("TIER_KEYRING", format!("3:{}", &HEX[..60])), 2);
    assert!(err.contains("TIER_KEYRING") && !err.contains(&HEX[..60]), "{err}");
}

#[test]
fn redis_get_of_a_sealed_entry_opens_with_a_keyring() {
    let rt = runtime();
    let prefix = format!("{}:", unique("sealed"));
    rt.block_on(async {
        let conn = tier_redis::RedisConnection::standalone(redis_url()).connect().await.unwrap();
        let l3 = tier_redis::RedisTier::builder(conn).prefix(&prefix).build().await.unwrap();
        let cache: Cache<Value> = Cache::builder("vault")
            .tier(l3, TierPolicy::fresh(Duration::from_secs(60)))
            .keyring(keyring())
            .build()
            .unwrap();
        cache.insert(cache.key("1"), j!({"pin": "pin-7731"})).await.unwrap();
    });
    let get = || {
        let mut cmd = tier();
        cmd.env_remove("TIER_KEYRING").args(["redis", "get", "--json", "--prefix", &prefix]);
        cmd.arg(redis_url()).arg("vault:0:1");
        cmd
    };
    let sealed = json(&mut get());
    assert_eq!(sealed["envelope"]["encrypted"], true, "{sealed}");
    assert!(sealed["envelope"]["value"].is_null(), "{sealed}");
    let opened = json(get().env("TIER_KEYRING", format!("3:{HEX}")));
    assert_eq!(opened["envelope"]["value"], j!({"pin": "pin-7731"}), "{opened}");
}

#[test]
fn disk_queue_shows_sealed_writes_as_encrypted_and_opens_them_with_a_keyring() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let origin = tier_core::testing::RecordingOrigin::<Value>::new();
        origin.fail(u32::MAX);
        let hour = Duration::from_secs(3600);
        let opts = tier_core::WriteBehind::default().max_delay(Duration::ZERO).backoff(hour, hour);
        let disk = DiskTier::builder(dir.path()).capacity_bytes(1 << 20).segment_size(256 << 10);
        let cache: Cache<Value> = Cache::builder("vault")
            .tier(disk.build().unwrap(), TierPolicy::fresh(Duration::from_secs(60)))
            .keyring(keyring())
            .write_behind(origin, opts)
            .build()
            .unwrap();
        cache.write_behind(cache.key("1"), j!({"pin": "pin-7731"})).await.unwrap();
    });
    let bytes = std::fs::read(dir.path().join("QUEUE")).unwrap();
    assert!(!bytes.windows(8).any(|w| w == b"pin-7731"), "the queue holds the value in clear");
    let queue = |extra: &[&str]| {
        let mut cmd = tier();
        cmd.env_remove("TIER_KEYRING").args(["disk", "queue"]).arg(dir.path()).args(extra);
        cmd
    };
    let q = json(&mut queue(&["--json"]));
    let w = &q["pending_writes"][0];
    assert_eq!((&w["encrypted"], &w["key_id"]), (&j!(true), &j!(3)), "{q}");
    assert!(w["value"].is_null(), "{q}");
    assert!(w["value_error"].as_str().unwrap().contains("TIER_KEYRING"), "{q}");
    let shown = text(&mut queue(&[]));
    assert!(shown.contains("encrypted, key 3") && !shown.contains("pin-7731"), "{shown}");

    let opened = json(queue(&["--json"]).env("TIER_KEYRING", format!("3:{HEX}")));
    assert_eq!(opened["pending_writes"][0]["value"], j!({"pin": "pin-7731"}), "{opened}");
    let file = dir.path().join("keyring.txt");
    std::fs::write(&file, format!("4:{OTHER}\n3:{HEX}\n")).unwrap();
    let shown = text(queue(&["--keyring-file"]).arg(&file));
    assert!(shown.contains("encrypted, key 3") && shown.contains("pin-7731"), "{shown}");
    // Another cache, or another key under the same id: it does not open.
    let elsewhere = json(queue(&["--json", "--cache", "x", "--keyring-file"]).arg(&file));
    let e = elsewhere["pending_writes"][0]["value_error"].as_str().unwrap();
    assert!(e.contains("authenticate"), "{elsewhere}");
    let wrong = json(queue(&["--json"]).env("TIER_KEYRING", format!("3:{OTHER}")));
    assert!(wrong["pending_writes"][0]["value"].is_null(), "{wrong}");
}
