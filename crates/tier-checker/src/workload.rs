//! A node's workload: a seeded random sequence of steps over the key space.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::space::KeySpace;

/// One step of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Read a key.
    Read(u32),
    /// Write a new version of a key to the origin, then `insert` it.
    Insert(u32),
    /// Write a new version of a key to the origin, then `invalidate` it.
    Invalidate(u32),
    /// Write a new version of every key of a tag, then `invalidate_tag`.
    InvalidateTag(u32),
    /// Write a new version of every key, then `invalidate_namespace`.
    InvalidateNamespace,
    /// Write a new version of every key, then `clear`.
    Clear,
}

/// How often each step comes, in parts per million (reads take what is left).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    /// `insert`.
    pub insert: u32,
    /// `invalidate` (after an update).
    pub invalidate: u32,
    /// `invalidate_tag` (after updating the tag's keys).
    pub invalidate_tag: u32,
    /// `invalidate_namespace` (after updating every key).
    pub invalidate_namespace: u32,
    /// `clear` (after updating every key).
    pub clear: u32,
}

impl Default for Mix {
    /// ~80 % reads, 8 % inserts, 8 % updates with invalidation, 3 % tag invalidations,
    /// 0.2 % namespace invalidations and 0.2 % clears.
    fn default() -> Self {
        Self {
            insert: 80_000,
            invalidate: 80_000,
            invalidate_tag: 30_000,
            invalidate_namespace: 2_000,
            clear: 2_000,
        }
    }
}

/// The steps of one node's life, from its seed.
pub struct Workload {
    rng: StdRng,
    space: KeySpace,
    mix: Mix,
}

impl Workload {
    /// A workload over `space` with `mix`, drawn from `seed`.
    pub fn new(seed: u64, space: KeySpace, mix: Mix) -> Self {
        Self { rng: StdRng::seed_from_u64(seed), space, mix }
    }

    /// The next step.
    pub fn next_step(&mut self) -> Step {
        let key = self.rng.random_range(0..self.space.keys.max(1));
        let mut draw = self.rng.random_range(0..1_000_000u32);
        let m = self.mix;
        for (weight, step) in [
            (m.insert, Step::Insert(key)),
            (m.invalidate, Step::Invalidate(key)),
            (m.invalidate_tag, Step::InvalidateTag(self.space.tag_of(key))),
            (m.invalidate_namespace, Step::InvalidateNamespace),
            (m.clear, Step::Clear),
        ] {
            if draw < weight {
                return step;
            }
            draw -= weight;
        }
        Step::Read(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_mix_is_mostly_reads_and_the_same_seed_gives_the_same_steps() {
        let space = KeySpace { keys: 200, tag_size: 10 };
        let steps: Vec<Step> = (0..10_000)
            .scan(Workload::new(7, space, Mix::default()), |w, _| Some(w.next_step()))
            .collect();
        let again: Vec<Step> = (0..10_000)
            .scan(Workload::new(7, space, Mix::default()), |w, _| Some(w.next_step()))
            .collect();
        assert_eq!(steps, again);
        let reads = steps.iter().filter(|s| matches!(s, Step::Read(_))).count();
        assert!((7_500..8_500).contains(&reads), "{reads} reads");
        assert!(steps.iter().any(|s| matches!(s, Step::InvalidateTag(t) if *t < 20)));
        assert!(steps.iter().all(|s| !matches!(s, Step::Read(k) if *k >= 200)));
    }
}
