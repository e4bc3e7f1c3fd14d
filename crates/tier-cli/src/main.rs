//! The `tier` command (work in progress).
fn main() {}
