//! The Prometheus text format: a parser, and the figures of `tier` metrics gathered from it
//! (per tier: request results, latency histogram, breaker state, sizes; per cache: loads,
//! coalescing, stale serving). Used by `tier stats` (scraped text) and `tier demo` (the text of
//! its own recorder), so both show the same numbers a Prometheus would.

use std::collections::BTreeMap;

use tier_core::metrics as names;
use tier_redis::metrics as redis_names;

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (with `_bucket` / `_sum` / `_count` for histogram lines).
    pub name: String,
    /// Labels, sorted by name.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// Parse the text exposition format. Comments and blank lines are skipped; a malformed line is
/// an error naming its line number.
pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_line(line).map_err(|e| format!("metrics line {}: {e}", i + 1))?);
    }
    Ok(out)
}

fn parse_line(line: &str) -> Result<Sample, String> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace()).unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return Err("no metric name".into());
    }
    let valid = |i: usize, c: char| {
        c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
    };
    if !name.chars().enumerate().all(|(i, c)| valid(i, c)) {
        return Err(format!(
            "{:?} is not a metric name",
            name.chars().take(40).collect::<String>()
        ));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let end;
        loop {
            // Skip separators.
            while let Some((_, c)) = chars.peek() {
                if *c == ',' || c.is_whitespace() {
                    chars.next();
                } else {
                    break;
                }
            }
            let Some((start, c)) = chars.next() else { return Err("unterminated labels".into()) };
            if c == '}' {
                end = start + 1;
                break;
            }
            let mut key = String::from(c);
            loop {
                match chars.next() {
                    Some((_, '=')) => break,
                    Some((_, c)) => key.push(c),
                    None => return Err("label without value".into()),
                }
            }
            if !matches!(chars.next(), Some((_, '"'))) {
                return Err(format!("label {key} value is not quoted"));
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '"')) => break,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => return Err("unterminated label value".into()),
                    },
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value".into()),
                }
            }
            labels.insert(key.trim().to_string(), value);
        }
        rest = &body[end..];
    }
    let value_text = rest.split_whitespace().next().ok_or_else(|| format!("{name}: no value"))?;
    let value = match value_text {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().map_err(|_| format!("{name}: bad value {v:?}"))?,
    };
    Ok(Sample { name: name.to_string(), labels, value })
}

/// A cumulative histogram: `(upper bound, cumulative count)` sorted by bound.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Buckets, `+Inf` last.
    pub buckets: Vec<(f64, f64)>,
    /// Sum of observations.
    pub sum: f64,
    /// Number of observations.
    pub count: f64,
}

impl Histogram {
    fn add_bucket(&mut self, le: f64, count: f64) {
        match self.buckets.iter_mut().find(|(b, _)| *b == le) {
            Some((_, c)) => *c += count,
            None => {
                self.buckets.push((le, count));
                self.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            }
        }
    }

    /// The `q` quantile (0..=1) estimated like PromQL's `histogram_quantile`: linear within the
    /// bucket that holds it. `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last().map(|b| b.1).filter(|t| *t > 0.0)?;
        let rank = q.clamp(0.0, 1.0) * total;
        let mut prev_le = 0.0;
        let mut prev_count = 0.0;
        for &(le, count) in &self.buckets {
            if count >= rank && count > prev_count {
                if le.is_infinite() {
                    return Some(prev_le); // above the highest finite bound: report that bound
                }
                let within = (rank - prev_count) / (count - prev_count);
                return Some(prev_le + (le - prev_le) * within.clamp(0.0, 1.0));
            }
            prev_le = if le.is_finite() { le } else { prev_le };
            prev_count = count;
        }
        Some(prev_le)
    }

    /// The observations since `earlier` (counter-style difference, bucket by bucket).
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let buckets = self
            .buckets
            .iter()
            .map(|&(le, c)| {
                let before = earlier.buckets.iter().find(|(b, _)| *b == le).map_or(0.0, |b| b.1);
                (le, (c - before).max(0.0))
            })
            .collect();
        Histogram {
            buckets,
            sum: (self.sum - earlier.sum).max(0.0),
            count: (self.count - earlier.count).max(0.0),
        }
    }
}

/// Lookup results of `tier_requests_total{op="get"}`, in display order.
pub const RESULTS: [&str; 6] = ["hit", "stale", "miss", "error", "timeout", "skipped"];

/// Figures of one tier of one cache.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TierFigures {
    /// `get` requests by result (`hit`, `stale`, ...), summed over categories.
    pub get: BTreeMap<String, f64>,
    /// Writes by result (`ok`, `error`, `timeout`, `skipped`).
    pub insert: BTreeMap<String, f64>,
    /// Duration of `get`.
    pub get_duration: Histogram,
    /// `tier_breaker_state` (0 closed, 1 half-open, 2 open).
    pub breaker: Option<f64>,
    /// `tier_entries`.
    pub entries: Option<f64>,
    /// `tier_bytes`.
    pub bytes: Option<f64>,
    /// `tier_capacity_bytes`.
    pub capacity_bytes: Option<f64>,
    /// `tier_evictions_total`, all causes.
    pub evictions: f64,
    /// `tier_decode_errors_total`.
    pub decode_errors: f64,
    /// `tier_backfills_total` into this tier.
    pub backfills_in: f64,
}

impl TierFigures {
    /// `get` requests with result `r`.
    pub fn get(&self, r: &str) -> f64 {
        self.get.get(r).copied().unwrap_or(0.0)
    }

    /// Every `get` that reached the tier (skipped ones excluded).
    pub fn lookups(&self) -> f64 {
        RESULTS.iter().filter(|r| **r != "skipped").map(|r| self.get(r)).sum()
    }

    /// Fresh hits over lookups that reached the tier.
    pub fn hit_ratio(&self) -> Option<f64> {
        let n = self.lookups();
        (n > 0.0).then(|| self.get("hit") / n)
    }

    /// Counters since `earlier`; gauges are this snapshot's.
    pub fn since(&self, earlier: &TierFigures) -> TierFigures {
        TierFigures {
            get: diff_map(&self.get, &earlier.get),
            insert: diff_map(&self.insert, &earlier.insert),
            get_duration: self.get_duration.since(&earlier.get_duration),
            evictions: (self.evictions - earlier.evictions).max(0.0),
            decode_errors: (self.decode_errors - earlier.decode_errors).max(0.0),
            backfills_in: (self.backfills_in - earlier.backfills_in).max(0.0),
            ..self.clone()
        }
    }
}

/// Figures of one cache (hierarchy).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CacheFigures {
    /// Its tiers by name.
    pub tiers: BTreeMap<String, TierFigures>,
    /// `cache_loads_total` by result.
    pub loads: BTreeMap<String, f64>,
    /// `cache_load_duration_seconds`.
    pub load_duration: Histogram,
    /// `cache_coalesced_total`.
    pub coalesced: f64,
    /// `cache_stale_served_total`.
    pub stale_served: f64,
    /// `cache_refreshes_total`.
    pub refreshes: f64,
    /// `cache_invalidations_total` by `kind/source`.
    pub invalidations: BTreeMap<String, f64>,
    /// Client-side caching (`tier_redis_tracking_*`), when the cache is tracked.
    pub tracking: Option<TrackingFigures>,
}

/// Client-side caching of one cache (`tier_redis_tracking_*` of tier-redis).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrackingFigures {
    /// `tier_redis_tracking_connected`: 1 while every tracking connection is up.
    pub connected: Option<f64>,
    /// `tier_redis_tracking_reconnects_total`.
    pub reconnects: f64,
    /// `tier_redis_tracking_invalidations_total` by `source` (other / own / flush).
    pub invalidations: BTreeMap<String, f64>,
    /// `tier_redis_tracking_errors_total` by `kind` (connect / lost / refused / read_back).
    pub errors: BTreeMap<String, f64>,
}

impl TrackingFigures {
    /// `connected`, `reconnecting` (or not up yet) or `refused` (the server will not track:
    /// the backplane alone), `-` when the gauge is not exported.
    pub fn state(&self) -> &'static str {
        match self.connected {
            None => "-",
            Some(v) if v >= 0.5 => "connected",
            Some(_) if self.errors.get("refused").is_some_and(|n| *n > 0.0) => "refused",
            Some(_) => "reconnecting",
        }
    }

    /// Counters since `earlier`; the gauge is this snapshot's.
    pub fn since(&self, earlier: Option<&TrackingFigures>) -> TrackingFigures {
        let empty = TrackingFigures::default();
        let earlier = earlier.unwrap_or(&empty);
        TrackingFigures {
            connected: self.connected,
            reconnects: (self.reconnects - earlier.reconnects).max(0.0),
            invalidations: diff_map(&self.invalidations, &earlier.invalidations),
            errors: diff_map(&self.errors, &earlier.errors),
        }
    }
}

impl CacheFigures {
    /// Loads with result `r`.
    pub fn loads(&self, r: &str) -> f64 {
        self.loads.get(r).copied().unwrap_or(0.0)
    }

    /// Tier names, top first. The usual names come in their usual order (memory, disk, redis);
    /// other names follow by lookups, most first: a tier sees only what the tiers above it did
    /// not answer, so the one with the most lookups is the highest. (Lookups alone cannot order
    /// the usual names: a scrape is not atomic, and during a cold start every tier sees the
    /// same lookups.)
    pub fn tier_order(&self) -> Vec<String> {
        let rank = |name: &str| match name {
            "memory" => 0,
            "disk" => 1,
            "redis" => 2,
            _ => 3,
        };
        let mut names: Vec<(&String, f64)> =
            self.tiers.iter().map(|(n, t)| (n, t.get.values().sum::<f64>())).collect();
        names.sort_by(|a, b| {
            rank(a.0).cmp(&rank(b.0)).then_with(|| b.1.total_cmp(&a.1)).then_with(|| a.0.cmp(b.0))
        });
        names.into_iter().map(|(n, _)| n.clone()).collect()
    }

    /// Counters since `earlier`.
    pub fn since(&self, earlier: &CacheFigures) -> CacheFigures {
        let empty = TierFigures::default();
        CacheFigures {
            tiers: self
                .tiers
                .iter()
                .map(|(n, t)| (n.clone(), t.since(earlier.tiers.get(n).unwrap_or(&empty))))
                .collect(),
            loads: diff_map(&self.loads, &earlier.loads),
            load_duration: self.load_duration.since(&earlier.load_duration),
            coalesced: (self.coalesced - earlier.coalesced).max(0.0),
            stale_served: (self.stale_served - earlier.stale_served).max(0.0),
            refreshes: (self.refreshes - earlier.refreshes).max(0.0),
            invalidations: diff_map(&self.invalidations, &earlier.invalidations),
            tracking: self.tracking.as_ref().map(|t| t.since(earlier.tracking.as_ref())),
        }
    }
}

fn diff_map(now: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    now.iter()
        .map(|(k, v)| (k.clone(), (v - before.get(k).copied().unwrap_or(0.0)).max(0.0)))
        .collect()
}

/// Everything `tier` exposes, by cache name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    /// Caches by name.
    pub caches: BTreeMap<String, CacheFigures>,
}

impl Figures {
    /// Gather the `tier` metrics out of parsed samples (other metrics are ignored).
    pub fn from_samples(samples: &[Sample]) -> Self {
        let mut f = Figures::default();
        for s in samples {
            let cache = s.label("cache").to_string();
            if cache.is_empty() {
                // A cache always has a name; tiers label their own metrics `cache=""` until
                // they are attached to one.
                continue;
            }
            let name = s.name.as_str();
            let c = f.caches.entry(cache.clone()).or_default();
            let tier = s.label("tier").to_string();
            match name {
                n if n == names::TIER_REQUESTS => {
                    let t = c.tiers.entry(tier).or_default();
                    let map = if s.label("op") == "get" { &mut t.get } else { &mut t.insert };
                    *map.entry(s.label("result").to_string()).or_default() += s.value;
                }
                n if n == format!("{}_bucket", names::TIER_OP_DURATION)
                    && s.label("op") == "get" =>
                {
                    if let Some(le) = parse_le(s) {
                        c.tiers.entry(tier).or_default().get_duration.add_bucket(le, s.value);
                    }
                }
                n if n == format!("{}_sum", names::TIER_OP_DURATION) && s.label("op") == "get" => {
                    c.tiers.entry(tier).or_default().get_duration.sum += s.value;
                }
                n if n == format!("{}_count", names::TIER_OP_DURATION)
                    && s.label("op") == "get" =>
                {
                    c.tiers.entry(tier).or_default().get_duration.count += s.value;
                }
                n if n == names::TIER_BREAKER_STATE => {
                    c.tiers.entry(tier).or_default().breaker = Some(s.value)
                }
                n if n == names::TIER_ENTRIES => {
                    c.tiers.entry(tier).or_default().entries = Some(s.value)
                }
                n if n == names::TIER_BYTES => {
                    c.tiers.entry(tier).or_default().bytes = Some(s.value)
                }
                n if n == names::TIER_CAPACITY_BYTES => {
                    c.tiers.entry(tier).or_default().capacity_bytes = Some(s.value)
                }
                n if n == names::TIER_EVICTIONS => {
                    c.tiers.entry(tier).or_default().evictions += s.value
                }
                n if n == names::TIER_DECODE_ERRORS => {
                    c.tiers.entry(tier).or_default().decode_errors += s.value
                }
                n if n == names::TIER_BACKFILLS => {
                    c.tiers.entry(s.label("to").to_string()).or_default().backfills_in += s.value
                }
                n if n == names::CACHE_LOADS => {
                    *c.loads.entry(s.label("result").to_string()).or_default() += s.value
                }
                n if n == format!("{}_bucket", names::CACHE_LOAD_DURATION) => {
                    if let Some(le) = parse_le(s) {
                        c.load_duration.add_bucket(le, s.value);
                    }
                }
                n if n == format!("{}_sum", names::CACHE_LOAD_DURATION) => {
                    c.load_duration.sum += s.value
                }
                n if n == format!("{}_count", names::CACHE_LOAD_DURATION) => {
                    c.load_duration.count += s.value
                }
                n if n == names::CACHE_COALESCED => c.coalesced += s.value,
                n if n == names::CACHE_STALE_SERVED => c.stale_served += s.value,
                n if n == names::CACHE_REFRESHES => c.refreshes += s.value,
                n if n == names::CACHE_INVALIDATIONS => {
                    let k = format!("{}/{}", s.label("kind"), s.label("source"));
                    *c.invalidations.entry(k).or_default() += s.value;
                }
                n if n == redis_names::TRACKING_CONNECTED => {
                    let t = c.tracking.get_or_insert_with(Default::default);
                    // Several exporters of one cache (never in one process): the lowest.
                    t.connected = Some(t.connected.map_or(s.value, |v| v.min(s.value)));
                }
                n if n == redis_names::TRACKING_RECONNECTS => {
                    c.tracking.get_or_insert_with(Default::default).reconnects += s.value
                }
                n if n == redis_names::TRACKING_INVALIDATIONS => {
                    let t = c.tracking.get_or_insert_with(Default::default);
                    *t.invalidations.entry(s.label("source").to_string()).or_default() += s.value;
                }
                n if n == redis_names::TRACKING_ERRORS => {
                    let t = c.tracking.get_or_insert_with(Default::default);
                    *t.errors.entry(s.label("kind").to_string()).or_default() += s.value;
                }
                _ => {}
            }
        }
        // Samples of other metrics with a `cache` label leave empty entries behind.
        f.caches.retain(|_, c| *c != CacheFigures::default());
        f
    }

    /// Parse text and gather.
    pub fn from_text(text: &str) -> Result<Self, String> {
        Ok(Self::from_samples(&parse(text)?))
    }
}

fn parse_le(s: &Sample) -> Option<f64> {
    match s.labels.get("le")?.as_str() {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        v => v.parse().ok(),
    }
}

/// The name of a breaker gauge value.
pub fn breaker_name(v: Option<f64>) -> &'static str {
    match v {
        None => "-",
        Some(v) if v < 0.5 => "closed",
        Some(v) if v < 1.5 => "half_open",
        Some(_) => "open",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
# HELP tier_requests_total Requests to a tier.
# TYPE tier_requests_total counter
tier_requests_total{cache="demo",tier="memory",op="get",result="hit"} 90
tier_requests_total{cache="demo",tier="memory",op="get",result="miss"} 10
tier_requests_total{cache="demo",tier="disk",op="get",result="hit"} 6
tier_requests_total{cache="demo",tier="disk",op="get",result="miss"} 4
tier_requests_total{cache="demo",tier="disk",op="insert",result="ok"} 4
tier_op_duration_seconds_bucket{cache="demo",tier="disk",op="get",le="0.001"} 5
tier_op_duration_seconds_bucket{cache="demo",tier="disk",op="get",le="0.01"} 10
tier_op_duration_seconds_bucket{cache="demo",tier="disk",op="get",le="+Inf"} 10
tier_op_duration_seconds_sum{cache="demo",tier="disk",op="get"} 0.02
tier_op_duration_seconds_count{cache="demo",tier="disk",op="get"} 10
tier_breaker_state{cache="demo",tier="disk"} 2
cache_loads_total{cache="demo",result="ok"} 3
cache_loads_total{cache="demo",result="error"} 1
cache_stale_served_total{cache="demo"} 7
cache_coalesced_total{cache="demo"} 2
weird_metric{a="x\"y\\z",b="1"} 3 1700000000
"#;

    #[test]
    fn parses_labels_and_escapes() {
        let s = parse(TEXT).unwrap();
        let weird = s.iter().find(|s| s.name == "weird_metric").unwrap();
        assert_eq!(weird.labels["a"], "x\"y\\z");
        assert_eq!(weird.value, 3.0);
        assert!(parse("bad{a=1} 2").is_err());
        assert!(parse("x{a=\"1\"}").is_err());
    }

    #[test]
    fn gathers_tier_figures() {
        let f = Figures::from_text(TEXT).unwrap();
        let c = &f.caches["demo"];
        assert_eq!(c.tier_order(), vec!["memory".to_string(), "disk".to_string()]);
        let disk = &c.tiers["disk"];
        assert_eq!(disk.get("hit"), 6.0);
        assert_eq!(disk.insert["ok"], 4.0);
        assert_eq!(disk.hit_ratio(), Some(0.6));
        assert_eq!(breaker_name(disk.breaker), "open");
        let p50 = disk.get_duration.quantile(0.5).unwrap();
        assert!((p50 - 0.001).abs() < 1e-12, "{p50}");
        let p99 = disk.get_duration.quantile(0.99).unwrap();
        assert!(p99 > 0.009 && p99 <= 0.01, "{p99}");
        assert_eq!(c.loads("ok"), 3.0);
        assert_eq!(c.loads.values().sum::<f64>(), 4.0);
        assert_eq!(c.stale_served, 7.0);
    }

    #[test]
    fn tier_order_of_other_names_follows_lookups() {
        let text = r#"
tier_requests_total{cache="c",tier="l2",op="get",result="miss"} 10
tier_requests_total{cache="c",tier="l1",op="get",result="hit"} 90
tier_requests_total{cache="c",tier="l1",op="get",result="miss"} 10
tier_requests_total{cache="c",tier="disk",op="get",result="miss"} 1
tier_requests_total{cache="c",tier="memory",op="get",result="miss"} 1
"#;
        let f = Figures::from_text(text).unwrap();
        assert_eq!(f.caches["c"].tier_order(), ["memory", "disk", "l1", "l2"]);
    }

    #[test]
    fn differences() {
        let a = Figures::from_text(TEXT).unwrap();
        let b = a.caches["demo"].since(&a.caches["demo"]);
        assert_eq!(b.tiers["memory"].get("hit"), 0.0);
        assert_eq!(b.tiers["disk"].get_duration.quantile(0.5), None);
        assert_eq!(b.tiers["disk"].breaker, Some(2.0));
    }
}
