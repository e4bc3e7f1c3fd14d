//! The key space of a run: `keys` keys in tag groups of `tag_size` (key `i` carries tag
//! `i / tag_size`), and the values the origin holds: `k<i>|<version>|<writer>`.

use crate::history::Outcome;

/// The keys and tags of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpace {
    /// How many keys.
    pub keys: u32,
    /// Keys per tag.
    pub tag_size: u32,
}

impl KeySpace {
    /// The id a key has in the cache (before [`Cache::key`](tier_core::Cache::key) adds the
    /// namespace version).
    pub fn key_id(key: u32) -> String {
        format!("k{key}")
    }

    /// The tag of key `key`.
    pub fn tag_of(&self, key: u32) -> u32 {
        key / self.tag_size.max(1)
    }

    /// The tag's name in the cache.
    pub fn tag_name(tag: u32) -> String {
        format!("g{tag}")
    }

    /// How many tags.
    pub fn tags(&self) -> u32 {
        self.keys.div_ceil(self.tag_size.max(1))
    }

    /// The keys carrying `tag`.
    pub fn keys_of(&self, tag: u32) -> std::ops::Range<u32> {
        let size = self.tag_size.max(1);
        (tag * size).min(self.keys)..((tag + 1) * size).min(self.keys)
    }

    /// Every key.
    pub fn all(&self) -> std::ops::Range<u32> {
        0..self.keys
    }
}

/// The value the origin holds for `key` at `version`, written by `writer`.
pub fn value(key: u32, version: u64, writer: &str) -> String {
    format!("{}|{version}|{writer}", KeySpace::key_id(key))
}

/// What a read of `key` that answered `value` returned, as the history records it.
pub fn outcome_of(key: u32, value: Option<&str>) -> Outcome {
    let Some(value) = value else { return Outcome::None };
    let mut parts = value.splitn(3, '|');
    let (Some(k), Some(v), Some(writer)) = (parts.next(), parts.next(), parts.next()) else {
        return Outcome::Garbled(value.to_string());
    };
    match v.parse::<u64>() {
        Ok(version) if k == KeySpace::key_id(key) => {
            Outcome::Value { version, writer: writer.to_string() }
        }
        _ => Outcome::Garbled(value.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_back_and_foreign_ones_are_garbled() {
        assert_eq!(
            outcome_of(7, Some(&value(7, 12, "n1"))),
            Outcome::Value { version: 12, writer: "n1".into() }
        );
        assert_eq!(outcome_of(7, None), Outcome::None);
        assert!(matches!(outcome_of(7, Some(&value(8, 12, "n1"))), Outcome::Garbled(_)));
        assert!(matches!(outcome_of(7, Some("k7|x|n1")), Outcome::Garbled(_)));
        assert!(matches!(outcome_of(7, Some("k7")), Outcome::Garbled(_)));
    }

    #[test]
    fn tags_group_the_keys() {
        let s = KeySpace { keys: 25, tag_size: 10 };
        assert_eq!(s.tags(), 3);
        assert_eq!(s.tag_of(19), 1);
        assert_eq!(s.keys_of(2), 20..25);
        assert!(s.keys_of(1).all(|k| s.tag_of(k) == 1));
    }
}
