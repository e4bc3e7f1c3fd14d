//! Property test: random inserts, invalidations and reads (with background backfill racing)
//! against a model. The cache never returns a value that was invalidated, or one older than a
//! later insert.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::*;
use proptest::prelude::*;
use tier_core::testing::MapTier;
use tier_core::Cache;
use tier_memory::MemoryTier;

#[derive(Debug, Clone)]
enum Op {
    Insert(u8, u16),
    Invalidate(u8),
    Get(u8),
    Load(u8, u16),
    InvalidateTag(u8),
    InsertTagged(u8, u16, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..6u8, any::<u16>()).prop_map(|(k, v)| Op::Insert(k, v)),
        2 => (0..6u8).prop_map(Op::Invalidate),
        4 => (0..6u8).prop_map(Op::Get),
        2 => (0..6u8, any::<u16>()).prop_map(|(k, v)| Op::Load(k, v)),
        1 => (0..2u8).prop_map(Op::InvalidateTag),
        1 => (0..6u8, any::<u16>(), 0..2u8).prop_map(|(k, v, t)| Op::InsertTagged(k, v, t)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
    #[test]
    fn never_returns_invalidated_or_overwritten_values(ops in proptest::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let l2 = Arc::new(MapTier::new("l2"));
            let l3 = Arc::new(MapTier::shared("l3"));
            let cache: Cache<String> = Cache::builder("m")
                .tier(MemoryTier::builder().build(), exact(MINUTE))
                .tier(l2.clone(), exact(MINUTE))
                .tier(l3.clone(), exact(MINUTE))
                .build()
                .unwrap();
            // key -> (value, tag) as the model sees it; absent = nothing valid cached.
            let mut model: HashMap<u8, (String, Option<u8>)> = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => {
                        cache.insert(k.to_string(), v.to_string()).await.unwrap();
                        model.insert(k, (v.to_string(), None));
                    }
                    Op::InsertTagged(k, v, t) => {
                        cache.insert_with_tags(k.to_string(), v.to_string(), &[format!("t{t}")]).await.unwrap();
                        model.insert(k, (v.to_string(), Some(t)));
                    }
                    Op::Invalidate(k) => {
                        cache.invalidate(k.to_string()).await.unwrap();
                        model.remove(&k);
                    }
                    Op::InvalidateTag(t) => {
                        cache.invalidate_tag(&format!("t{t}")).await.unwrap();
                        model.retain(|_, (_, tag)| *tag != Some(t));
                    }
                    Op::Get(k) => {
                        if let Some(v) = cache.get(k.to_string()).await {
                            let expected = model.get(&k).map(|(v, _)| v.as_str());
                            assert_eq!(Some(v.as_str()), expected, "key {k}");
                        }
                    }
                    Op::Load(k, v) => {
                        let calls = Calls::default();
                        let got = cache.get_or_load(k.to_string(), loader(&calls, &v.to_string())).await.unwrap();
                        let got = got.as_deref().cloned().unwrap();
                        match model.get(&k) {
                            Some((cached, _)) => assert_eq!(&got, cached, "key {k}: cached value"),
                            None => {
                                assert_eq!(got, v.to_string(), "key {k}: loaded value");
                                assert_eq!(calls.get(), 1);
                                model.insert(k, (got, None));
                            }
                        }
                    }
                }
            }
        });
    }
}
