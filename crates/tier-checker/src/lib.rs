//! # tier-checker
//!
//! The coherence checker of `tier` (the acceptance of the coherence work): several OS processes
//! (`tier-check-node`), each a hierarchy memory → disk → Redis with the Redis backplane and
//! generations, run seeded workloads against one cache Redis (standalone or a Cluster, behind
//! fault-injecting proxies) and one origin, while faults are injected on a schedule; every
//! operation is recorded with its wall-clock interval, and the merged histories are checked.
//! The README has the rules, the faults and how to run it.
//!
//! | module | what |
//! |---|---|
//! | [`history`] | the records of a node's history file and the faults |
//! | [`check`] | the checker over merged histories, and its report |
//! | [`space`], [`workload`], [`origin`] | the key space and values, a node's steps, the origin |
//! | [`proxy`], [`servers`], [`nodes`], [`faults`] | the run's parts and the faults done to them |
//! | [`mod@run`] | one run, start to report |

pub mod check;
pub mod error;
pub mod faults;
pub mod history;
pub mod nodes;
pub mod origin;
pub mod proxy;
pub mod run;
pub mod servers;
pub mod space;
pub mod workload;

pub use check::CheckReport;
pub use error::HarnessError;
pub use run::{run, RunConfig};
