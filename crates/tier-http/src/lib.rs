#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod conditional;
mod directives;
mod entry;
mod key;
mod layer;
mod origin;
mod policy;
mod service;
mod shared;
mod status;

pub use body::CacheBody;
pub use entry::{CachedResponse, HttpEntry, Variants};
pub use layer::{HttpCacheLayer, DEFAULT_STATUSES};
pub use service::{HttpCache, ResponseFuture};
