//! [`RedisConnectionBuilder`]: URLs and timeouts, then `connect`; and [`ConnectionSource`], what
//! the other builders of the crate take.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManagerConfig;
use redis::cluster::ClusterClientBuilder;
use redis::IntoConnectionInfo;

use super::{connect_in_background, AbortOnDrop, Factory, Inner, RedisConnection, Slot};
use crate::error::{RedisCause, SetupError};
use crate::redact::redact_url;

/// Default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default response timeout.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Clone)]
pub(super) enum Target {
    Standalone(String),
    Cluster(Vec<String>),
    /// One URL: standalone or a Cluster node, as the server says; several: Cluster nodes.
    Detect(Vec<String>),
}

/// Builds a [`RedisConnection`]. Obtained from [`RedisConnection::standalone`],
/// [`RedisConnection::cluster`] or [`RedisConnection::detect`]; give it to
/// [`RedisTier::builder`](crate::RedisTier::builder) or
/// [`RedisBackplane::builder`](crate::RedisBackplane::builder) to connect there, or call
/// [`connect`](Self::connect).
///
/// Its `Debug` shows the URLs redacted ([`redact_url`](crate::redact_url)).
#[derive(Clone)]
#[must_use]
pub struct RedisConnectionBuilder {
    target: Target,
    connect_timeout: Duration,
    response_timeout: Duration,
    reconnect_retries: usize,
    when: When,
    /// PEM file of the CA certificates `rediss://` servers are verified against.
    #[cfg(feature = "tls")]
    tls_ca_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for RedisConnectionBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, urls) = match &self.target {
            Target::Standalone(url) => ("standalone", std::slice::from_ref(url)),
            Target::Cluster(urls) => ("cluster", &urls[..]),
            Target::Detect(urls) => ("detect", &urls[..]),
        };
        let urls: Vec<String> = urls.iter().map(|u| redact_url(u)).collect();
        f.debug_struct("RedisConnectionBuilder")
            .field("target", &kind)
            .field("urls", &urls)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("reconnect_retries", &self.reconnect_retries)
            .field("when", &self.when)
            .finish_non_exhaustive()
    }
}

impl RedisConnectionBuilder {
    pub(super) fn new(target: Target) -> Self {
        Self {
            target,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            reconnect_retries: 2,
            when: When::NowOrInBackground,
            #[cfg(feature = "tls")]
            tls_ca_file: None,
        }
    }

    /// Verify `rediss://` servers against the CA certificates in this PEM file (one or more
    /// certificates), instead of the system's trust store: a private CA. The file is read by
    /// [`connect`](Self::connect); one that cannot be read or holds no certificate fails it.
    /// The server's certificate must name the host of the URL (e.g. `IP:127.0.0.1` for
    /// `rediss://127.0.0.1:6380/`). Default: the system's trust store. Cargo feature `tls`.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.tls_ca_file = Some(path.into());
        self
    }

    /// How long one connection attempt may take. Default: 1 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long the server may take to answer one command. Default: 500 ms. (The hierarchy's
    /// per-tier timeout is usually much shorter; this one bounds direct use and background
    /// work such as retries.)
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// How many times a lost connection is retried (with exponential backoff from 50 ms up to
    /// 500 ms) before the waiting commands fail; the next command starts a new attempt.
    /// Default: 2.
    pub fn reconnect_retries(mut self, retries: usize) -> Self {
        self.reconnect_retries = retries;
        self
    }

    /// When the connection is made. By default [`connect`](Self::connect) tries now (within
    /// connect + response timeout), and when the server (for Cluster: the cluster) cannot be
    /// reached — refused, timed out, dropped — it still returns: the connection is made in the
    /// background (retried with backoff from 50 ms up to 2 s; one `warn` log line), and until it
    /// is, every call fails at once with [`Unavailable`](tier_core::TierErrorKind::Unavailable)
    /// — the hierarchy skips the tier, and a service whose Redis is down at start-up starts,
    /// serving from its other tiers and the origin. Any other failure (a TLS certificate that
    /// does not verify, a refused password) still fails `connect`.
    ///
    /// `lazy(true)`: do not even try now — `connect` returns at once and connects in the
    /// background. `lazy(false)`: fail `connect` when the connection cannot be made now (a
    /// tool that should say so at once). [`RedisConnection::connected`] waits for the
    /// connection. Bad URLs and settings always fail `connect`. Not for
    /// [`RedisConnection::detect`], which must ask the server what it is.
    pub fn lazy(mut self, lazy: bool) -> Self {
        self.when = if lazy { When::InBackground } else { When::Now };
        self
    }

    /// Connect. Fails when a URL is invalid, a timeout is zero, or the connection fails for
    /// another reason than an unreachable server; an unreachable one is connected to in the
    /// background (see [`lazy`](Self::lazy), which also says how to fail instead).
    pub async fn connect(self) -> Result<RedisConnection, SetupError> {
        if self.connect_timeout.is_zero() || self.response_timeout.is_zero() {
            return Err(SetupError::Config("timeouts must be positive".into()));
        }
        // A sum past `Duration::MAX` is as good as no bound.
        let op_timeout = self.connect_timeout.saturating_add(self.response_timeout);
        let tls = Tls::of(&self)?;
        match &self.target {
            Target::Standalone(url) => self.standalone(url, op_timeout, &tls).await,
            Target::Cluster(urls) => self.cluster(urls, op_timeout, &tls).await,
            Target::Detect(urls) => match &urls[..] {
                [] => Err(no_urls()),
                [url] if !is_cluster_node(url, op_timeout, &tls).await? => {
                    self.standalone(url, op_timeout, &tls).await
                }
                urls => self.cluster(urls, op_timeout, &tls).await,
            },
        }
    }

    /// Connections to single Cluster nodes made like the first of `clients` (its credentials,
    /// database and TLS), with this builder's timeouts.
    fn node_conns(&self, clients: &[redis::Client]) -> super::node::NodeConns {
        let template = clients.first().map(|c| c.get_connection_info().clone());
        super::node::NodeConns::new(template, self.connect_timeout, self.response_timeout)
    }

    fn urls(&self) -> &[String] {
        match &self.target {
            Target::Standalone(url) => std::slice::from_ref(url),
            Target::Cluster(urls) | Target::Detect(urls) => urls,
        }
    }

    async fn standalone(
        &self,
        url: &str,
        op_timeout: Duration,
        tls: &Tls,
    ) -> Result<RedisConnection, SetupError> {
        let client = tls.client(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.response_timeout))
            .set_number_of_retries(self.reconnect_retries)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let target = redact_url(url);
        let factory = Factory::Standalone(client.clone(), config);
        let (slot, connecting) = self.first_connection(&factory, &target, op_timeout).await?;
        Ok(RedisConnection {
            inner: Arc::new(Inner {
                slot,
                cluster: false,
                factory,
                _connecting: connecting,
                _repairing: None,
                lazy: self.when != When::Now,
                node_conns: self.node_conns(&[]),
                nodes: vec![client],
                targets: vec![target],
                op_timeout,
                link: Default::default(),
            }),
        })
    }

    async fn cluster(
        &self,
        urls: &[String],
        op_timeout: Duration,
        tls: &Tls,
    ) -> Result<RedisConnection, SetupError> {
        let first = urls.first().ok_or_else(no_urls)?;
        let mut infos = Vec::with_capacity(urls.len());
        let mut nodes = Vec::with_capacity(urls.len());
        for url in urls {
            infos.push(url.as_str().into_connection_info().map_err(|e| url_error(url, e))?);
            nodes.push(tls.client(url)?);
        }
        let builder = ClusterClientBuilder::new(infos)
            .connection_timeout(self.connect_timeout)
            .response_timeout(self.response_timeout)
            .retries(u32::try_from(self.reconnect_retries).unwrap_or(u32::MAX))
            .min_retry_wait(50)
            .max_retry_wait(500);
        let client = tls.cluster(builder).build().map_err(|e| url_error(first, e))?;
        let target = format!("cluster of {} node URLs", urls.len());
        let factory = Factory::Cluster(client);
        let (slot, connecting) = self.first_connection(&factory, &target, op_timeout).await?;
        let repairing = super::repair_when_broken(factory.clone(), &slot, op_timeout);
        Ok(RedisConnection {
            inner: Arc::new(Inner {
                slot,
                cluster: true,
                factory,
                _connecting: connecting,
                _repairing: Some(repairing),
                lazy: self.when != When::Now,
                node_conns: self.node_conns(&nodes),
                nodes,
                targets: urls.iter().map(|u| redact_url(u)).collect(),
                op_timeout,
                link: Default::default(),
            }),
        })
    }
}

impl RedisConnectionBuilder {
    /// The connection made now, or (lazy) an empty slot and the task that fills it.
    async fn first_connection(
        &self,
        factory: &Factory,
        target: &str,
        op_timeout: Duration,
    ) -> Result<(Arc<Slot>, Option<AbortOnDrop>), SetupError> {
        let in_background = || {
            let slot = Slot::new(None);
            let task = connect_in_background(factory.clone(), &slot, op_timeout);
            Ok((slot, Some(task)))
        };
        match self.when {
            When::InBackground => in_background(),
            When::Now => {
                let conn = bounded_connect(target, op_timeout, factory.connect()).await?;
                Ok((Slot::new(Some(conn)), None))
            }
            When::NowOrInBackground => {
                let why = match tokio::time::timeout(op_timeout, factory.connect()).await {
                    Ok(Ok(conn)) => return Ok((Slot::new(Some(conn)), None)),
                    Ok(Err(e)) if !unreachable(&e) => {
                        return Err(SetupError::Connect {
                            target: target.to_string(),
                            source: e.into(),
                        })
                    }
                    Ok(Err(e)) => RedisCause::new(e).to_string(),
                    Err(_) => format!("no connection within {op_timeout:?}"),
                };
                tracing::warn!(target, error = %why, "Redis not reachable at start-up: connecting in the background (calls fail at once with Unavailable until then)");
                in_background()
            }
        }
    }
}

/// When a connection is made (see [`RedisConnectionBuilder::lazy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum When {
    /// Now, or `connect` fails.
    Now,
    /// Now, and in the background when the server cannot be reached.
    NowOrInBackground,
    /// In the background only.
    InBackground,
}

/// Does `e` say the server could not be reached (rather than refusing us)?
fn unreachable(e: &redis::RedisError) -> bool {
    use std::io::ErrorKind;
    let io_kind = std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind);
    e.is_connection_refusal()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.kind() == redis::ErrorKind::ClusterConnectionNotFound
        || matches!(
            io_kind,
            Some(ErrorKind::TimedOut | ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable)
        )
}

/// Does the server at `url` say it is a Cluster node (`INFO cluster`: `cluster_enabled:1`)?
async fn is_cluster_node(url: &str, op_timeout: Duration, tls: &Tls) -> Result<bool, SetupError> {
    let client = tls.client(url)?;
    let target = redact_url(url);
    let asking = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        crate::commands::info("cluster").query_async::<String>(&mut conn).await
    };
    let info = bounded_connect(&target, op_timeout, asking).await?;
    Ok(info.lines().any(|l| l.trim() == "cluster_enabled:1"))
}

async fn bounded_connect<T>(
    target: &str,
    after: Duration,
    connecting: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, SetupError> {
    match tokio::time::timeout(after, connecting).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(SetupError::Connect { target: target.to_string(), source: e.into() }),
        Err(_) => Err(SetupError::Connect {
            target: target.to_string(),
            source: RedisCause::new(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {after:?}"),
            ))),
        }),
    }
}

fn no_urls() -> SetupError {
    SetupError::Config("a connection needs at least one node URL".into())
}

fn url_error(url: &str, e: redis::RedisError) -> SetupError {
    SetupError::Url { url: redact_url(url), source: e.into() }
}

/// How clients are made: with the CA certificates of
/// [`tls_ca_file`](RedisConnectionBuilder::tls_ca_file), or plain.
struct Tls {
    #[cfg(feature = "tls")]
    certs: Option<redis::TlsCertificates>,
}

impl Tls {
    /// Read the CA file, if any; check that TLS can run when a URL asks for it.
    fn of(builder: &RedisConnectionBuilder) -> Result<Self, SetupError> {
        let wants_tls = builder
            .urls()
            .iter()
            .any(|u| u.get(..9).is_some_and(|s| s.eq_ignore_ascii_case("rediss://")));
        #[cfg(feature = "tls")]
        {
            if wants_tls && rustls::crypto::CryptoProvider::get_default().is_none() {
                return Err(SetupError::Config(
                    "rediss:// needs a rustls CryptoProvider installed by the application at \
                     start, e.g. rustls::crypto::ring::default_provider().install_default()"
                        .into(),
                ));
            }
            let certs = match &builder.tls_ca_file {
                None => None,
                Some(path) => Some(redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(read_ca_file(path)?),
                }),
            };
            Ok(Self { certs })
        }
        #[cfg(not(feature = "tls"))]
        {
            if wants_tls {
                return Err(SetupError::Config(
                    "rediss:// URLs need tier-redis's cargo feature `tls`".into(),
                ));
            }
            Ok(Self {})
        }
    }

    fn client(&self, url: &str) -> Result<redis::Client, SetupError> {
        #[cfg(feature = "tls")]
        if let Some(certs) = &self.certs {
            return redis::Client::build_with_tls(url, certs.clone())
                .map_err(|e| url_error(url, e));
        }
        redis::Client::open(url).map_err(|e| url_error(url, e))
    }

    fn cluster(&self, builder: ClusterClientBuilder) -> ClusterClientBuilder {
        #[cfg(feature = "tls")]
        if let Some(certs) = &self.certs {
            return builder.certs(certs.clone());
        }
        builder
    }
}

/// The PEM text of a CA file with at least one certificate.
#[cfg(feature = "tls")]
fn read_ca_file(path: &std::path::Path) -> Result<Vec<u8>, SetupError> {
    use rustls::pki_types::pem::PemObject;
    let shown = path.display();
    let pem = std::fs::read(path)
        .map_err(|e| SetupError::Config(format!("cannot read the TLS CA file {shown}: {e}")))?;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            SetupError::Config(format!("TLS CA file {shown}: not PEM certificates: {e}"))
        })?;
    if certs.is_empty() {
        return Err(SetupError::Config(format!("TLS CA file {shown} holds no certificate")));
    }
    Ok(pem)
}

/// Where a builder of this crate gets its connection: an existing [`RedisConnection`] (shared
/// with the other parts of the crate and other tiers), or a [`RedisConnectionBuilder`] that the
/// builder's `build()` connects. Both convert into it, so a builder takes either:
///
/// ```no_run
/// # async fn demo() -> Result<(), tier_redis::SetupError> {
/// use std::time::Duration;
/// use tier_redis::{RedisConnection, RedisTier};
/// // Connect for this tier alone:
/// let tier = RedisTier::builder(
///     RedisConnection::standalone("redis://127.0.0.1:6379/").response_timeout(Duration::from_millis(100)),
/// )
/// .build()
/// .await?;
/// // Share one connection:
/// let conn = RedisConnection::cluster(["redis://10.0.0.1:7000/"]).connect().await?;
/// let users = RedisTier::builder(conn.clone()).prefix("app:users:").build().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub enum ConnectionSource {
    /// An existing connection.
    Connection(RedisConnection),
    /// A connection made when the builder builds.
    Builder(RedisConnectionBuilder),
}

impl ConnectionSource {
    /// The connection: the one given, or a new one.
    pub async fn connect(self) -> Result<RedisConnection, SetupError> {
        match self {
            Self::Connection(c) => Ok(c),
            Self::Builder(b) => b.connect().await,
        }
    }
}

impl From<RedisConnection> for ConnectionSource {
    fn from(c: RedisConnection) -> Self {
        Self::Connection(c)
    }
}

impl From<&RedisConnection> for ConnectionSource {
    fn from(c: &RedisConnection) -> Self {
        Self::Connection(c.clone())
    }
}

impl From<RedisConnectionBuilder> for ConnectionSource {
    fn from(b: RedisConnectionBuilder) -> Self {
        Self::Builder(b)
    }
}
