//! Shared helpers of the benches (workload generator).
