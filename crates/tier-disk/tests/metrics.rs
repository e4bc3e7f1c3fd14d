//! The tier's own metrics carry the labels given by `attach`: recovery figures (emitted on the
//! first attach), decode errors for damage found, evictions by cause.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use bytes::Bytes;
use common::{entry, segment_files, value_for};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tier_core::metrics::{TIER_DECODE_ERRORS as DECODE_ERRORS, TIER_EVICTIONS as EVICTIONS};
use tier_core::spi::{Tier, TierContext};
use tier_disk::{DiskTier, RECOVERY_CORRUPT, RECOVERY_RECORDS, RECOVERY_SECONDS, RECOVERY_SUSPECT};

type Snapshot = Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

fn value(snap: &Snapshot, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    snap.iter()
        .filter(|(k, _, _, _)| {
            k.key().name() == name
                && labels
                    .iter()
                    .all(|(l, v)| k.key().labels().any(|x| x.key() == *l && x.value() == *v))
        })
        .map(|(_, _, _, v)| match v {
            DebugValue::Counter(c) => *c as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            DebugValue::Histogram(h) => h.len() as f64,
        })
        .reduce(|a, b| a + b)
}

#[test]
fn recovery_damage_and_evictions_are_counted_with_the_attach_labels() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();
    let rt = common::runtime();
    let dir = tempfile::tempdir().unwrap();
    let build = || DiskTier::builder(dir.path()).segment_size(64 << 10).capacity_bytes(256 << 10);
    rt.block_on(async {
        let tier = build().build().unwrap();
        for i in 0..100 {
            let k = format!("k{i}");
            tier.insert(Bytes::from(k.clone()), entry(&value_for(&k, 1, 500), 600_000))
                .await
                .unwrap();
        }
    });
    // Damage the first segment in the middle.
    let first = &segment_files(dir.path())[0];
    OpenOptions::new().write(true).open(first).unwrap().write_all_at(&[0xAB; 8], 20_000).unwrap();

    let tier = build().build().unwrap();
    let report = tier.recovery_report().clone();
    assert_eq!(report.corrupt, 1);
    tier.attach(&TierContext::new("users", "l2"));
    rt.block_on(async {
        // Write well past the capacity: segments are reclaimed, their entries evicted.
        for i in 0..2000 {
            let k = format!("x{i}");
            tier.insert(Bytes::from(k.clone()), entry(&value_for(&k, 1, 500), 600_000))
                .await
                .unwrap();
        }
    });
    let snap: Snapshot = snapshotter.snapshot().into_vec();
    let labels = [("cache", "users"), ("tier", "l2")];
    assert_eq!(value(&snap, RECOVERY_CORRUPT, &labels), Some(1.0));
    assert_eq!(value(&snap, RECOVERY_RECORDS, &labels), Some(report.records as f64));
    assert_eq!(value(&snap, DECODE_ERRORS, &labels), Some(1.0));
    // The damage could have lost records that replaced the entries before it: suspect.
    assert!(report.suspect > 0, "{report:?}");
    assert_eq!(value(&snap, RECOVERY_SUSPECT, &labels), Some(report.suspect as f64));
    assert!(value(&snap, RECOVERY_SECONDS, &labels).is_some());
    let capacity =
        value(&snap, EVICTIONS, &[("cache", "users"), ("tier", "l2"), ("cause", "capacity")]);
    assert!(capacity.is_some_and(|n| n > 100.0), "{capacity:?}");
}
