//! The fault schedule: `per_kind` faults of every kind, in a seeded random order, one every
//! `gap`; targets (nodes, servers) taken in turn. Each fault is recorded with the wall-clock
//! interval of its injection.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::error::HarnessError;
use crate::history::{now_us, Fault, FaultKind};
use crate::nodes::Fleet;
use crate::servers::CacheRedis;

/// How long a latency spike lasts, and how much it adds to every reply.
pub const LATENCY: (Duration, Duration) = (Duration::from_secs(1), Duration::from_millis(150));
/// How long the proxies refuse connections after dropping them.
pub const DROP_FOR: Duration = Duration::from_millis(300);

/// The order of the faults: `per_kind` of each kind, shuffled with `seed`.
pub fn schedule(per_kind: usize, seed: u64) -> Vec<FaultKind> {
    let mut kinds: Vec<FaultKind> =
        FaultKind::ALL.iter().flat_map(|k| std::iter::repeat_n(*k, per_kind)).collect();
    kinds.shuffle(&mut StdRng::seed_from_u64(seed));
    kinds
}

/// Injects faults into a run's fleet and cache Redis.
pub struct Injector {
    done: Vec<Fault>,
    counts: [usize; FaultKind::ALL.len()],
}

impl Default for Injector {
    fn default() -> Self {
        Self::new()
    }
}

impl Injector {
    /// No fault injected yet.
    pub fn new() -> Self {
        Self { done: Vec::new(), counts: [0; FaultKind::ALL.len()] }
    }

    /// Inject one fault of `kind`; returns when it is over (a node or server back, a
    /// latency spike lifted).
    pub async fn inject(
        &mut self,
        kind: FaultKind,
        fleet: &mut Fleet,
        redis: &mut CacheRedis,
    ) -> Result<(), HarnessError> {
        let nth = self.counts[kind as usize];
        self.counts[kind as usize] += 1;
        let start_us = now_us();
        let target = match kind {
            FaultKind::Kill => {
                let id = fleet.id(nth).to_string();
                fleet.kill_and_restart(nth).await?;
                id
            }
            FaultKind::ClientKill => {
                redis.client_kill().await?;
                "all".into()
            }
            FaultKind::RedisRestart | FaultKind::RedisRestartNopersist => {
                let port = redis.port(nth);
                redis.restart(nth, kind == FaultKind::RedisRestart).await?;
                format!("port {port}")
            }
            FaultKind::GenDelete => {
                redis.delete_generations().await?;
                "all".into()
            }
            FaultKind::ProxyLatency => {
                redis.set_latency(LATENCY.1);
                tokio::time::sleep(LATENCY.0).await;
                redis.set_latency(Duration::ZERO);
                "all".into()
            }
            FaultKind::ProxyDrop => {
                redis.drop_connections();
                tokio::time::sleep(DROP_FOR).await;
                redis.accept();
                "all".into()
            }
        };
        self.done.push(Fault { kind, target, start_us, end_us: now_us() });
        Ok(())
    }

    /// The faults injected so far.
    pub fn faults(&self) -> &[Fault] {
        &self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_has_every_kind_per_kind_times() {
        let s = schedule(5, 1);
        assert_eq!(s.len(), 35);
        for k in FaultKind::ALL {
            assert_eq!(s.iter().filter(|x| **x == k).count(), 5);
        }
        assert_eq!(s, schedule(5, 1));
    }
}
