//! The redis tier of `tier` (work in progress).
