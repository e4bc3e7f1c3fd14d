//! The traces replayed: request sequences of object ids, generated from a seed (the same trace
//! every run), and each object's value length.

/// SplitMix64: a small generator whose sequence is fixed by its seed (no dependency whose
/// algorithm could change between versions).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// SplitMix64's finaliser: a well-spread hash of `z`.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Ranks 0..n drawn with probability ∝ 1 / (rank + 1)^alpha (inverse transform on the CDF).
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, alpha: f64) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for rank in 0..n {
            sum += 1.0 / ((rank + 1) as f64).powf(alpha);
            cdf.push(sum);
        }
        cdf.iter_mut().for_each(|c| *c /= sum);
        Self { cdf }
    }

    pub fn sample(&self, rng: &mut Rng) -> u64 {
        let u = rng.unit();
        self.cdf.partition_point(|c| *c < u).min(self.cdf.len() - 1) as u64
    }
}

/// What a trace is made of.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Zipf over the objects with this exponent.
    Zipf(f64),
    /// Zipf(1.0), with one request in five from a sequential scan over ids never seen otherwise.
    ScanZipf,
    /// The objects requested in a loop, 0, 1, ..., n-1, 0, ... (larger than every cache).
    Loop,
    /// Zipf(1.0) over a working set whose ids shift by a tenth of the objects every tenth of the
    /// trace.
    Shifting,
}

impl Kind {
    pub fn name(self) -> String {
        match self {
            Self::Zipf(alpha) => format!("zipf-{alpha:.1}"),
            Self::ScanZipf => "scan+zipf".into(),
            Self::Loop => "loop".into(),
            Self::Shifting => "shifting".into(),
        }
    }
}

/// A trace: the number of distinct objects it is drawn over (the cache sizes are shares of
/// it; a scan's ids lie above), and its requests.
pub struct Trace {
    pub objects: u64,
    pub requests: Vec<u64>,
}

impl Trace {
    pub fn generate(kind: Kind, objects: u64, requests: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let n = objects as usize;
        let out: Vec<u64> = match kind {
            Kind::Zipf(alpha) => {
                let zipf = Zipf::new(n, alpha);
                (0..requests).map(|_| zipf.sample(&mut rng)).collect()
            }
            Kind::ScanZipf => {
                let zipf = Zipf::new(n, 1.0);
                let mut scan = 0;
                (0..requests)
                    .map(|_| {
                        if rng.next_u64().is_multiple_of(5) {
                            scan += 1;
                            objects + scan % objects
                        } else {
                            zipf.sample(&mut rng)
                        }
                    })
                    .collect()
            }
            Kind::Loop => (0..requests as u64).map(|i| i % objects).collect(),
            Kind::Shifting => {
                let zipf = Zipf::new(n, 1.0);
                let phase = requests.div_ceil(10).max(1);
                (0..requests)
                    .map(|i| {
                        (zipf.sample(&mut rng) + (i / phase) as u64 * (objects / 10)) % objects
                    })
                    .collect()
            }
        };
        Self { objects, requests: out }
    }
}

/// How long each object's value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sizes {
    /// Every value the same length.
    Equal,
    /// Log-uniform between 16 bytes and 4 KiB, fixed per object id.
    Varied,
}

impl Sizes {
    pub fn name(self) -> &'static str {
        match self {
            Self::Equal => "equal",
            Self::Varied => "varied",
        }
    }

    /// The value length of object `id`.
    pub fn len_of(self, id: u64) -> usize {
        match self {
            Self::Equal => 64,
            Self::Varied => {
                let u = (mix(id ^ 0x5eed) >> 11) as f64 / (1u64 << 53) as f64;
                (16.0 * 256f64.powf(u)) as usize
            }
        }
    }
}
