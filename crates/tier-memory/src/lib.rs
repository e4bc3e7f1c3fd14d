//! The memory tier of `tier` (work in progress).
