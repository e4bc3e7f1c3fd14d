//! `tier disk stats|ls|get|verify|queue` against real disk tier directories.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{fails, json, runtime, text, tier};
use serde_json::{json as j, Value};
use tier_core::{Cache, Compression, Serializer, TierPolicy};
use tier_disk::DiskTier;

/// A disk tier of 1 MiB in `dir`.
fn small_disk(dir: &Path) -> DiskTier {
    DiskTier::builder(dir).capacity_bytes(1 << 20).segment_size(256 << 10).build().unwrap()
}

/// A cache named `shop` over a disk tier in `dir`, with three entries (one tagged).
fn fill(rt: &tokio::runtime::Runtime, dir: &Path) -> Cache<Value> {
    rt.block_on(async {
        let cache: Cache<Value> = Cache::builder("shop")
            .tier(
                small_disk(dir),
                TierPolicy::fresh(Duration::from_secs(60)).stale(Duration::from_secs(600)),
            )
            .build()
            .unwrap();
        cache.insert_with_tags(cache.key("user:1"), j!({"name": "Ada"}), &["users"]).await.unwrap();
        cache.insert(cache.key("user:2"), j!({"name": "Grace"})).await.unwrap();
        cache.insert(cache.key("order:9"), j!({"total": 42})).await.unwrap();
        cache
    })
}

fn segment_file(dir: &Path) -> std::path::PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .unwrap()
}

#[test]
fn stats_ls_get_verify_of_a_directory() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    drop(fill(&rt, dir.path()));

    let stats = json(tier().args(["disk", "stats", "--json"]).arg(dir.path()));
    assert_eq!(stats["entries"], 3, "{stats}");
    assert_eq!(stats["segments"], 1, "{stats}");
    assert_eq!(stats["by_prefix"]["shop:0:"]["entries"], 3, "{stats}");
    assert!(stats["live_bytes"].as_u64().unwrap() > 0);
    assert!(stats["damage"].as_array().unwrap().is_empty());
    assert_eq!(stats["state"]["intact"], true, "{stats}");
    assert_eq!(stats["suspect_entries"], 0, "{stats}");
    let stats_text = text(tier().args(["disk", "stats"]).arg(dir.path()));
    assert!(stats_text.contains("entries") && stats_text.contains("shop:0:"), "{stats_text}");

    let ls =
        json(tier().args(["disk", "ls", "--json", "--prefix", "shop:0:user:"]).arg(dir.path()));
    let mut keys: Vec<&str> =
        ls["records"].as_array().unwrap().iter().map(|r| r["key"].as_str().unwrap()).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["shop:0:user:1", "shop:0:user:2"]);
    assert_eq!(ls["more"], 0);
    let limited = json(tier().args(["disk", "ls", "--json", "--limit", "1"]).arg(dir.path()));
    assert_eq!(limited["records"].as_array().unwrap().len(), 1);
    assert_eq!(limited["more"], 2);
    let ls_text = text(tier().args(["disk", "ls"]).arg(dir.path()));
    assert!(ls_text.contains("shop:0:order:9"), "{ls_text}");

    let get = json(tier().args(["disk", "get", "--json"]).arg(dir.path()).arg("shop:0:user:1"));
    let env = &get["envelope"];
    assert_eq!(env["state"], "fresh", "{get}");
    assert_eq!(env["value"], j!({"name": "Ada"}), "{get}");
    assert_eq!(env["tags"][0]["tag"], "users", "{get}");
    assert!(env["fresh_until"].as_u64().unwrap() < env["stale_until"].as_u64().unwrap());
    let get_text = text(tier().args(["disk", "get"]).arg(dir.path()).arg("shop:0:user:1"));
    assert!(
        get_text.contains("Ada") && get_text.contains("fresh until") && get_text.contains("users"),
        "{get_text}"
    );

    let verify = json(tier().args(["disk", "verify", "--json"]).arg(dir.path()));
    assert_eq!(verify["clean"], true, "{verify}");
    assert!(verify["records"].as_u64().unwrap() >= 3);
    assert!(text(tier().args(["disk", "verify"]).arg(dir.path())).contains("ok"));
}

#[test]
fn get_decodes_every_built_in_codec() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let bio = "tiered caches ".repeat(200);
    let codecs = [
        (Serializer::MessagePack, None),
        (Serializer::MessagePack, Some(Compression::Lz4)),
        (Serializer::MessagePack, Some(Compression::Zstd)),
        (Serializer::Json, None),
        (Serializer::Json, Some(Compression::Zstd)),
        (Serializer::Cbor, None),
        (Serializer::Cbor, Some(Compression::Lz4)),
    ];
    for (i, (serializer, compression)) in codecs.into_iter().enumerate() {
        rt.block_on(async {
            let cache: Cache<Value> = Cache::builder("shop")
                .tier(small_disk(dir.path()), TierPolicy::fresh(Duration::from_secs(60)))
                .serializer(serializer)
                .compression(compression)
                .build()
                .unwrap();
            let value = j!({"name": "Ada", "bio": bio});
            cache.insert(cache.key(format!("c{i}")), value).await.unwrap();
        });
        let key = format!("shop:0:c{i}");
        let get = json(tier().args(["disk", "get", "--json"]).arg(dir.path()).arg(&key));
        let env = &get["envelope"];
        assert_eq!(env["serializer"], serializer.name(), "{get}");
        assert_eq!(env["compression"], j!(compression.map(|c| c.name())), "{get}");
        let text = text(tier().args(["disk", "get"]).arg(dir.path()).arg(&key));
        assert!(text.contains(serializer.name()), "{text}");
        assert_eq!(env["value"]["name"], j!("Ada"), "{get}");
        assert_eq!(env["value"]["bio"], j!(bio), "{get}");
        assert!(text.contains("tiered caches"), "{text}");
    }
}

#[test]
fn works_on_a_directory_a_service_holds() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let live = fill(&rt, dir.path()); // holds the writer's lock
    let stats = json(tier().args(["disk", "stats", "--json"]).arg(dir.path()));
    assert_eq!(stats["entries"], 3, "{stats}");
    assert_eq!(stats["owner_pid"], std::process::id(), "{stats}");
    assert_eq!(json(tier().args(["disk", "verify", "--json"]).arg(dir.path()))["clean"], true);
    drop(live);
}

#[test]
fn verify_fails_on_a_corrupted_record() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    drop(fill(&rt, dir.path()));
    let ls =
        json(tier().args(["disk", "ls", "--json", "--prefix", "shop:0:user:2"]).arg(dir.path()));
    let offset = ls["records"][0]["offset"].as_u64().unwrap() as usize;
    // Flip a byte inside that record's envelope.
    let seg = segment_file(dir.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[offset + 60] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();

    let out = tier().args(["disk", "verify", "--json"]).arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["clean"], false);
    assert_eq!(report["damage"][0]["offset"].as_u64().unwrap() as usize, offset, "{report}");
    let line = common::fails(tier().args(["disk", "verify"]).arg(dir.path()), 3);
    assert!(line.contains("damaged"), "{line}");
    // stats still works and reports the damage.
    let stats = json(tier().args(["disk", "stats", "--json"]).arg(dir.path()));
    assert_eq!(stats["damage"].as_array().unwrap().len(), 1, "{stats}");
}

#[test]
fn bad_directories_and_keys_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let line = fails(tier().args(["disk", "stats"]).arg(&missing), 1);
    assert!(line.contains("missing"), "{line}");
    let line = fails(tier().args(["disk", "verify"]).arg(dir.path()), 1);
    assert!(line.contains("not a disk tier directory"), "{line}");
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(fails(tier().args(["disk", "ls"]).arg(&file), 1).contains("not a directory"));

    let rt = runtime();
    let data = tempfile::tempdir().unwrap();
    drop(fill(&rt, data.path()));
    let line = fails(tier().args(["disk", "get"]).arg(data.path()).arg("shop:0:nope"), 1);
    assert!(line.contains("no entry"), "{line}");
    fails(tier().args(["disk", "stats", "--bogus"]).arg(data.path()), 2);
}

#[test]
fn demo_on_a_locked_directory_is_a_one_line_error() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let live = fill(&rt, dir.path());
    let line = fails(tier().args(["demo", "--duration", "1s", "--disk"]).arg(dir.path()), 1);
    assert!(line.contains("locked"), "{line}");
    drop(live);
}

#[test]
fn verify_reports_a_deleted_segment() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let disk = DiskTier::builder(dir.path())
            .capacity_bytes(4 << 20)
            .segment_size(64 << 10)
            .build()
            .unwrap();
        let cache: Cache<Value> = Cache::builder("shop")
            .tier(disk, TierPolicy::fresh(Duration::from_secs(60)).stale(Duration::from_secs(600)))
            .build()
            .unwrap();
        for i in 0..400 {
            cache
                .insert(cache.key(format!("item:{i}")), j!({"pad": "x".repeat(500)}))
                .await
                .unwrap();
        }
    });
    let mut segments: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segments.sort();
    assert!(segments.len() >= 4, "{segments:?}");
    std::fs::remove_file(&segments[1]).unwrap();
    let out = tier().args(["disk", "verify", "--json"]).arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["clean"], false, "{report}");
    let line = fails(tier().args(["disk", "verify"]).arg(dir.path()), 3);
    assert!(line.contains("missing"), "{line}");
}

#[test]
fn verify_reports_a_lost_state_file_and_a_stray() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    drop(fill(&rt, dir.path()));
    std::fs::remove_file(dir.path().join("STATE")).unwrap();
    std::fs::write(dir.path().join("00ffffff.seg"), [7u8; 100]).unwrap();
    let out = tier().args(["disk", "verify", "--json"]).arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["state"]["lost"], true, "{report}");
    assert_eq!(report["strays"][0]["name"], "00ffffff.seg", "{report}");
    let line = fails(tier().args(["disk", "verify"]).arg(dir.path()), 3);
    assert!(line.contains("state file") && line.contains("stray"), "{line}");
    let text = text(tier().args(["disk", "stats"]).arg(dir.path()));
    assert!(text.contains("LOST") && text.contains("00ffffff.seg"), "{text}");
}

#[test]
fn queue_shows_pending_writes_and_dead_letters_and_exits_3_on_damage() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let origin = tier_core::testing::RecordingOrigin::<Value>::new();
        origin.fail(u32::MAX);
        let disk =
            DiskTier::builder(dir.path()).capacity_bytes(1 << 20).segment_size(256 << 10).build();
        let opts = tier_core::WriteBehind::default()
            .max_delay(Duration::ZERO)
            .max_attempts(1)
            .backoff(Duration::from_millis(1), Duration::from_millis(1));
        let cache: Cache<Value> = Cache::builder("shop")
            .tier(disk.unwrap(), TierPolicy::fresh(Duration::from_secs(60)))
            .write_behind(origin.clone(), opts)
            .build()
            .unwrap();
        cache.write_behind("user:1", j!({"name": "Ada"})).await.unwrap();
        cache.flush_write_behind().await.unwrap(); // a dead letter: the origin is down
        origin.hold(); // the next batch waits: user:2 stays pending
        cache.write_behind("user:2", j!({"name": "Grace"})).await.unwrap();
        origin.entered().await;
        drop(cache);
    });
    let q = json(tier().args(["disk", "queue", "--json"]).arg(dir.path()));
    assert_eq!(q["present"], true, "{q}");
    assert_eq!((q["pending"].as_u64(), q["dead_letters"].as_u64()), (Some(1), Some(1)), "{q}");
    assert_eq!(q["pending_writes"][0]["key"], "user:2", "{q}");
    assert_eq!(q["pending_writes"][0]["value"], j!({"name": "Grace"}), "{q}");
    assert_eq!(q["dead"][0]["key"], "user:1", "{q}");
    assert_eq!(q["dead"][0]["attempts"], 1, "{q}");
    assert!(q["dead"][0]["reason"].as_str().unwrap().contains("origin down"), "{q}");
    let shown = text(tier().args(["disk", "queue"]).arg(dir.path()));
    assert!(shown.contains("1 pending") && shown.contains("1 dead letters"), "{shown}");
    // Damage in the last record: said, exit code 3.
    let path = dir.path().join("QUEUE");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let out = fails(tier().args(["disk", "queue"]).arg(dir.path()), 3);
    assert!(out.contains("damaged"), "{out}");
}
