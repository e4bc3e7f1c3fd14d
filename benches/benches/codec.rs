//! Payload codecs on the demo's values (`tier demo`'s generator: an id, a version and a filler
//! repeating `item-{id}-`), at the demo's default size (512 bytes) and at 4 KiB and 64 KiB,
//! every compression beside the others in the same run:
//! - `codec/{size}/encode/{none,lz4,zstd1,zstd3}` and `…/decode/…`: `Codec::encode` of a whole
//!   envelope and `decode_value` of it (MessagePack; compression from 0 bytes on, so that the
//!   512-byte value is compressed too — the default threshold, 1024, would store it raw);
//! - `codec/{size}/encode/{json,cbor}`: the other serializers, uncompressed;
//! - the envelope sizes are printed first (stderr), one line per codec.
//!
//! `cargo bench -p tier-benches --bench codec`
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use tier_benches::{demo_item, DemoItem};
use tier_core::spi::envelope::{decode_meta, decode_value};
use tier_core::spi::{Codec, Meta};
use tier_core::{Compression, Serializer};

fn codecs() -> Vec<(&'static str, Codec)> {
    let base = Codec { compress_threshold: 0, ..Codec::new() };
    vec![
        ("none", Codec { compression: None, ..base }),
        ("lz4", Codec { compression: Some(Compression::Lz4), ..base }),
        ("zstd1", Codec { compression: Some(Compression::Zstd), zstd_level: 1, ..base }),
        ("zstd3", Codec { compression: Some(Compression::Zstd), zstd_level: 3, ..base }),
        ("json", Codec { serializer: Serializer::Json, compression: None, ..base }),
        ("cbor", Codec { serializer: Serializer::Cbor, compression: None, ..base }),
    ]
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .configure_from_args();
    let meta = Meta { created_at: 1, fresh_until: 2, stale_until: 3, ..Meta::default() };
    for size in [512usize, 4096, 65536] {
        let item = demo_item(42, size);
        for (name, codec) in codecs() {
            let bytes = codec.encode(&meta, Some(&item)).unwrap();
            eprintln!("codec size={size} {name}: envelope {} bytes", bytes.len());
        }
        let mut g = c.benchmark_group(format!("codec/{size}"));
        g.throughput(Throughput::Bytes(size as u64));
        for (name, codec) in codecs() {
            g.bench_function(format!("encode/{name}"), |b| {
                b.iter(|| codec.encode(&meta, Some(black_box(&item))).unwrap());
            });
            let bytes = codec.encode(&meta, Some(&item)).unwrap();
            g.bench_function(format!("decode/{name}"), |b| {
                b.iter(|| {
                    let (m, at) = decode_meta(black_box(&bytes)).unwrap();
                    decode_value::<DemoItem>(&bytes, &m, at).unwrap().unwrap()
                });
            });
        }
        g.finish();
    }
    c.final_summary();
}
