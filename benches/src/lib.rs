//! Shared helpers of the benches.

use serde::{Deserialize, Serialize};

/// The value the Redis benches store: a small user record (~200 bytes of MessagePack).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    /// Its id.
    pub id: u64,
    /// A name.
    pub name: String,
    /// An address.
    pub email: String,
    /// Two roles.
    pub roles: Vec<String>,
    /// 120 bytes of text.
    pub bio: String,
}

/// The user of `id`.
pub fn user(id: u64) -> User {
    User {
        id,
        name: format!("user {id}"),
        email: format!("user{id}@example.invalid"),
        roles: vec!["reader".into(), "writer".into()],
        bio: "x".repeat(120),
    }
}
