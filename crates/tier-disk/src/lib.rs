//! The disk tier of `tier` (work in progress).
