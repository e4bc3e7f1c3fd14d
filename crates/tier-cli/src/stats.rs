//! `tier stats --metrics URL [--watch]`: scrape a service's Prometheus endpoint over plain
//! HTTP/1.1 and show, per cache, each tier's hit ratio, latency quantiles (from the histogram
//! buckets), breaker state and size, and the loader's figures.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cli::StatsArgs;
use crate::demo::report::{count, rate, tier_row, tier_table, TierRow};
use crate::duration::short_secs;
use crate::error::{CliError, Result};
use crate::promtext::{CacheFigures, Figures};

/// How long a scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest response accepted.
const MAX_BODY: usize = 64 << 20;

/// Where to scrape: host:port and path, and the credentials to send.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port`.
    pub authority: String,
    /// Path and query, starting with `/`.
    pub path: String,
    /// The `Authorization` header's value (`Basic ...`) when the URL has `user:password@`.
    authorization: Option<String>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("authority", &self.authority)
            .field("path", &self.path)
            .field("authorization", &self.authorization.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Endpoint {
    /// The URL as shown: `http://host:port/path`, never the credentials.
    pub fn url(&self) -> String {
        format!("http://{}{}", self.authority, self.path)
    }
}

/// `http://[user:password@]host:port/path`, `host:port/path` or `host:port` (path `/metrics`).
/// Credentials (percent-encoded in the URL where needed) are sent as Basic authorization.
/// Errors never repeat the credentials.
pub fn parse_endpoint(url: &str) -> std::result::Result<Endpoint, String> {
    let shown = tier_redis::redact_url(url);
    let rest = if let Some(r) = url.strip_prefix("http://") {
        r
    } else if url.contains("://") {
        return Err(format!("unsupported URL {shown:?}: only http:// is supported"));
    } else {
        url
    };
    // The userinfo ends at the last `@` (a password may hold `/`, `@` or `:` unencoded).
    let (userinfo, rest) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/metrics"),
    };
    if authority.is_empty() {
        return Err(format!("invalid metrics URL {shown:?}: no host"));
    }
    let authorization = userinfo.map(basic_authorization);
    let authority =
        if authority.rsplit_once(':').is_some_and(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
            && !authority.ends_with(']')
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
    if authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_err()) {
        return Err(format!("invalid metrics URL {shown:?}: bad port"));
    }
    Ok(Endpoint { authority, path: path.to_string(), authorization })
}

/// `Basic base64(user:password)` of a URL's userinfo, percent-decoded.
fn basic_authorization(userinfo: &str) -> String {
    use base64::Engine as _;
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let decode = |s: &str| percent_encoding::percent_decode_str(s).collect::<Vec<u8>>();
    let mut credentials = decode(user);
    credentials.push(b':');
    credentials.extend(decode(password));
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(credentials))
}

/// GET the endpoint; the body as text.
pub async fn scrape(ep: &Endpoint) -> Result<String> {
    let what = format!("scrape {}", ep.url());
    tokio::time::timeout(SCRAPE_TIMEOUT, get(ep))
        .await
        .map_err(|_| CliError::runtime(format!("{what}: timed out after {SCRAPE_TIMEOUT:?}")))?
        .map_err(|e| CliError::runtime(format!("{what}: {e}")))
}

async fn get(ep: &Endpoint) -> std::result::Result<String, String> {
    let mut stream = TcpStream::connect(&ep.authority).await.map_err(|e| e.to_string())?;
    let host = ep.authority.trim_end_matches(":80");
    let authorization =
        ep.authorization.as_ref().map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nAccept: text/plain\r\nUser-Agent: tier-cli\r\n{authorization}Connection: close\r\n\r\n",
        ep.path
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if raw.len() > MAX_BODY {
            return Err(format!("response larger than {MAX_BODY} bytes"));
        }
    }
    parse_response(&raw)
}

/// Split an HTTP/1.1 response; check the status; undo chunked transfer encoding.
pub fn parse_response(raw: &[u8]) -> std::result::Result<String, String> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("not an HTTP response (no header end)")?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| "response header is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let (version, status) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !version.starts_with("HTTP/") {
        return Err(format!("not an HTTP response: {status_line:?}"));
    }
    if status != "200" {
        return Err(format!("HTTP status {}", status_line.trim_start_matches(version).trim()));
    }
    let mut chunked = false;
    let mut length = None;
    for h in lines {
        if let Some((name, value)) = h.split_once(':') {
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            if name == "transfer-encoding" && value.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            } else if name == "content-length" {
                length = value.parse::<usize>().ok();
            }
        }
    }
    let mut body = &raw[head_end + 4..];
    let bytes = if chunked {
        let mut out = Vec::new();
        loop {
            let line_end =
                body.windows(2).position(|w| w == b"\r\n").ok_or("truncated chunked body")?;
            let size_text = std::str::from_utf8(&body[..line_end]).map_err(|_| "bad chunk size")?;
            let size_text = size_text.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
            body = &body[line_end + 2..];
            if size == 0 {
                break;
            }
            if body.len() < size {
                return Err("truncated chunked body".into());
            }
            out.extend_from_slice(&body[..size]);
            body = body.get(size + 2..).unwrap_or(&[]);
        }
        out
    } else {
        match length {
            Some(n) if body.len() < n => return Err("truncated response body".into()),
            Some(n) => body[..n].to_vec(),
            None => body.to_vec(),
        }
    };
    String::from_utf8(bytes).map_err(|_| "response body is not UTF-8".into())
}

/// The samples of a scraped body: an empty body, or one without a single sample, is an error
/// (a Prometheus endpoint of a service using tier is never empty), and so is any line that is
/// not Prometheus text.
fn samples_of(url: &str, body: &str) -> Result<Vec<crate::promtext::Sample>> {
    let samples = crate::promtext::parse(body)
        .map_err(|e| CliError::runtime(format!("{url}: not Prometheus text: {e}")))?;
    if samples.is_empty() {
        let what = if body.trim().is_empty() { "empty response" } else { "no samples" };
        return Err(CliError::runtime(format!(
            "{url}: {what} (is this the metrics endpoint of a service using tier?)"
        )));
    }
    Ok(samples)
}

fn figures_of(url: &str, body: &str) -> Result<Figures> {
    Ok(Figures::from_samples(&samples_of(url, body)?))
}

/// Scrape the metrics endpoint `metrics` (as `tier stats --metrics` takes it) once: its samples.
pub async fn scrape_samples(metrics: &str) -> Result<Vec<crate::promtext::Sample>> {
    let ep = parse_endpoint(metrics).map_err(CliError::usage)?;
    samples_of(&ep.url(), &scrape(&ep).await?)
}

/// What `tier stats --json` prints per scrape.
#[derive(Debug, Serialize)]
pub struct StatsReport {
    /// The endpoint scraped.
    pub url: String,
    /// Seconds since the previous scrape (`--watch`), when there was one.
    pub interval_seconds: Option<f64>,
    /// Caches found.
    pub caches: Vec<CacheReport>,
}

/// One cache's figures.
#[derive(Debug, Serialize)]
pub struct CacheReport {
    /// Cache name.
    pub cache: String,
    /// Tiers, top first.
    pub tiers: Vec<TierRow>,
    /// Loads by result.
    pub loads: BTreeMap<String, u64>,
    /// Median load duration.
    pub load_p50_seconds: Option<f64>,
    /// 99th percentile load duration.
    pub load_p99_seconds: Option<f64>,
    /// Callers that joined a load in flight.
    pub coalesced: u64,
    /// Stale values served.
    pub stale_served: u64,
    /// Background refreshes.
    pub refreshes: u64,
    /// Invalidations by `kind/source`.
    pub invalidations: BTreeMap<String, u64>,
    /// Client-side caching (Redis `CLIENT TRACKING`), when the cache is tracked.
    pub tracking: Option<TrackingReport>,
}

/// Client-side caching of one cache, as `tier stats` and `tier redis stats --metrics` show it.
#[derive(Debug, Serialize, PartialEq)]
pub struct TrackingReport {
    /// `connected`, `reconnecting` or `refused` (the server will not track: the backplane
    /// alone).
    pub state: &'static str,
    /// Times a tracking connection was lost and made again.
    pub reconnects: u64,
    /// Keys Redis reported changed, by source (`other`, `own`, `flush`).
    pub invalidations: BTreeMap<String, u64>,
    /// Problems by kind (`connect`, `lost`, `refused`, `read_back`).
    pub errors: BTreeMap<String, u64>,
}

impl TrackingReport {
    /// The report of `figures`.
    pub fn of(figures: &crate::promtext::TrackingFigures) -> Self {
        let counts =
            |m: &BTreeMap<String, f64>| m.iter().map(|(k, v)| (k.clone(), round(*v))).collect();
        Self {
            state: figures.state(),
            reconnects: round(figures.reconnects),
            invalidations: counts(&figures.invalidations),
            errors: counts(&figures.errors),
        }
    }

    /// One line: `connected · invalidations other 3, own 5 · reconnects 1 · errors lost 1`.
    pub fn line(&self) -> String {
        let list = |m: &BTreeMap<String, u64>| {
            let items: Vec<String> = m.iter().map(|(k, v)| format!("{k} {}", count(*v))).collect();
            if items.is_empty() {
                "none".to_string()
            } else {
                items.join(", ")
            }
        };
        format!(
            "{} · invalidations {} · reconnects {} · errors {}",
            self.state,
            list(&self.invalidations),
            count(self.reconnects),
            list(&self.errors)
        )
    }
}

fn round(v: f64) -> u64 {
    if v.is_finite() && v > 0.0 {
        v.round() as u64
    } else {
        0
    }
}

fn cache_report(
    name: &str,
    total: &CacheFigures,
    window: Option<(&CacheFigures, f64)>,
) -> CacheReport {
    let tiers = total
        .tier_order()
        .into_iter()
        .filter_map(|t| total.tiers.get(&t).map(|f| (t, f)))
        .map(|(t, f)| {
            let mut row = tier_row(&t, f, 0.0);
            if let Some((w, secs)) = window {
                if let Some(wt) = w.tiers.get(&t) {
                    row.lookups_per_second = wt.lookups() / secs.max(1e-3);
                }
            }
            row
        })
        .collect();
    CacheReport {
        cache: name.to_string(),
        tiers,
        loads: total.loads.iter().map(|(k, v)| (k.clone(), round(*v))).collect(),
        load_p50_seconds: total.load_duration.quantile(0.5),
        load_p99_seconds: total.load_duration.quantile(0.99),
        coalesced: round(total.coalesced),
        stale_served: round(total.stale_served),
        refreshes: round(total.refreshes),
        invalidations: total.invalidations.iter().map(|(k, v)| (k.clone(), round(*v))).collect(),
        tracking: total.tracking.as_ref().map(TrackingReport::of),
    }
}

fn text(report: &StatsReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "{}", report.url);
    if report.caches.is_empty() {
        let _ = writeln!(out, "no tier metrics found (is this a service using tier?)");
    }
    for c in &report.caches {
        let _ = writeln!(out, "\ncache {:?}", c.cache);
        out.push_str(&tier_table(&c.tiers));
        if report.interval_seconds.is_some() {
            let rates: Vec<String> = c
                .tiers
                .iter()
                .map(|t| format!("{} {}", t.name, rate(t.lookups_per_second)))
                .collect();
            let _ = writeln!(out, "lookups   {}", rates.join(" · "));
        }
        let loads: Vec<String> =
            c.loads.iter().map(|(k, v)| format!("{k} {}", count(*v))).collect();
        let _ = writeln!(
            out,
            "loads     {} · p50 {} p99 {} · coalesced {} · stale served {} · refreshes {}",
            if loads.is_empty() { "none".to_string() } else { loads.join(", ") },
            short_secs(c.load_p50_seconds),
            short_secs(c.load_p99_seconds),
            count(c.coalesced),
            count(c.stale_served),
            count(c.refreshes)
        );
        if let Some(t) = &c.tracking {
            let _ = writeln!(out, "tracking  {}", t.line());
        }
    }
    out
}

/// Run `tier stats`.
pub async fn run(args: StatsArgs) -> Result<()> {
    let ep = parse_endpoint(&args.metrics).map_err(CliError::usage)?;
    let url = ep.url();
    let mut previous: Option<(Figures, Instant)> = None;
    let mut scrapes = 0u64;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let body = scrape(&ep).await?;
        let at = Instant::now();
        let mut figures = figures_of(&url, &body)?;
        if let Some(only) = &args.cache {
            figures.caches.retain(|name, _| name == only);
        }
        let interval = previous.as_ref().map(|(_, t)| at.duration_since(*t).as_secs_f64());
        let caches = figures
            .caches
            .iter()
            .map(|(name, c)| {
                let window = previous.as_ref().and_then(|(p, t)| {
                    p.caches.get(name).map(|pc| (c.since(pc), at.duration_since(*t).as_secs_f64()))
                });
                cache_report(name, c, window.as_ref().map(|(w, s)| (w, *s)))
            })
            .collect();
        let report = StatsReport { url: url.clone(), interval_seconds: interval, caches };
        if args.json {
            let doc = if args.watch {
                serde_json::to_string(&report)
            } else {
                serde_json::to_string_pretty(&report)
            };
            println!("{}", doc.map_err(|e| CliError::runtime(format!("encode JSON: {e}")))?);
        } else {
            if args.watch && std::io::stdout().is_terminal() {
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", text(&report));
        }
        scrapes += 1;
        if !args.watch || args.count.is_some_and(|n| scrapes >= n) {
            return Ok(());
        }
        previous = Some((figures, at));
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = &mut ctrl_c => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = parse_endpoint("http://127.0.0.1:9000/metrics").unwrap();
        assert_eq!((e.authority.as_str(), e.path.as_str()), ("127.0.0.1:9000", "/metrics"));
        let e = parse_endpoint("127.0.0.1:9000").unwrap();
        assert_eq!(e.path, "/metrics");
        assert_eq!(parse_endpoint("localhost/m").unwrap().authority, "localhost:80");
        assert!(parse_endpoint("https://x:1/").is_err());
        assert!(parse_endpoint("http:///x").is_err());
        assert!(parse_endpoint("x:99999").is_err());
    }

    #[test]
    fn credentials_are_sent_never_shown() {
        let e = parse_endpoint("http://me:p%40ss/w:rd@127.0.0.1:9/m").unwrap();
        assert_eq!((e.authority.as_str(), e.path.as_str()), ("127.0.0.1:9", "/m"));
        // base64("me:p@ss/w:rd")
        assert_eq!(e.authorization.as_deref(), Some("Basic bWU6cEBzcy93OnJk"));
        assert_eq!(e.url(), "http://127.0.0.1:9/m");
        assert!(!format!("{e:?}").contains("bWU6"), "{e:?}");
        let err = parse_endpoint("http://me:s3cret@127.0.0.1:99999/").unwrap_err();
        assert!(!err.contains("s3cret"), "{err}");
        assert!(parse_endpoint("127.0.0.1:9").unwrap().authorization.is_none());
    }

    #[test]
    fn bodies_without_samples_are_errors() {
        assert!(figures_of("u", "").is_err());
        assert!(figures_of("u", "# HELP x y\n").is_err());
        assert!(figures_of("u", "<html>\n").is_err());
        assert!(figures_of("u", "other_metric 1\n").is_ok());
    }

    #[test]
    fn responses() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(parse_response(plain).unwrap(), "hello");
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), "hello world");
        assert!(parse_response(b"HTTP/1.1 404 Not Found\r\n\r\n").unwrap_err().contains("404"));
        assert!(parse_response(b"garbage").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort").is_err());
    }
}
