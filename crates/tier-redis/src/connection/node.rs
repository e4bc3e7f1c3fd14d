//! Connections of our own to single Cluster nodes, for per-node work (`SCAN`, `UNLINK`, `INFO`,
//! `DBSIZE`, the per-master probes), kept apart from the cluster client.
//!
//! Why not the cluster client's routing by address: when the cluster client has dropped its
//! connection to a node (a master that stopped answering), a command routed to that address
//! makes it reconnect to every initial node, and it holds *all* its traffic meanwhile — seen
//! with a paused master: every master's calls waited up to the connect timeout, once per probe
//! and per stats poll. A connection of our own to the lost node just fails.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, RedisResult};

use super::cluster::Route;

pub(super) struct NodeConns {
    /// The first node URL's settings (credentials, database, TLS); the address is replaced per
    /// node.
    template: Option<ConnectionInfo>,
    config: AsyncConnectionConfig,
    conns: Mutex<HashMap<Route, MultiplexedConnection>>,
}

impl NodeConns {
    pub(super) fn new(
        template: Option<ConnectionInfo>,
        connect: Duration,
        response: Duration,
    ) -> Self {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect))
            .set_response_timeout(Some(response));
        Self { template, config, conns: Mutex::default() }
    }

    fn conns(&self) -> std::sync::MutexGuard<'_, HashMap<Route, MultiplexedConnection>> {
        // The map holds connection handles only; a poisoned lock still holds a usable one.
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How to connect to `route`'s node: the first node URL's settings (credentials,
    /// database, TLS) with the node's address; `None` for the standalone server or without
    /// settings.
    pub(super) fn info(&self, route: &Route) -> Option<ConnectionInfo> {
        let (Route::Master { host, port }, Some(template)) = (route, &self.template) else {
            return None;
        };
        let addr = match template.addr() {
            ConnectionAddr::TcpTls { insecure, tls_params, .. } => ConnectionAddr::TcpTls {
                host: host.clone(),
                port: *port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host.clone(), *port),
        };
        Some(template.clone().set_addr(addr))
    }

    /// The connection to `route`'s node: kept, or made now.
    async fn get(&self, route: &Route) -> RedisResult<MultiplexedConnection> {
        if let Some(c) = self.conns().get(route) {
            return Ok(c.clone());
        }
        let Some(info) = self.info(route) else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "no connection settings for a Cluster node",
            )));
        };
        let client = redis::Client::open(info)?;
        let conn = client.get_multiplexed_async_connection_with_config(&self.config).await?;
        self.conns().insert(route.clone(), conn.clone());
        Ok(conn)
    }

    /// Run `call` on `route`'s node; a connection that failed is dropped (made again next time).
    pub(super) async fn run<T, F, Fut>(&self, route: &Route, call: F) -> RedisResult<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = RedisResult<T>>,
    {
        let result = call(self.get(route).await?).await;
        if let Err(e) = &result {
            if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                self.conns().remove(route);
            }
        }
        result
    }
}
