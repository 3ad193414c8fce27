//! Client side: connections with multiplexed request streams, and a pool keyed by address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{TransportConfig, TransportError};
use crate::{Request, Response, Role};

/// A client endpoint: dials servers and performs the `Hello` handshake as `role`.
#[derive(Debug, Clone)]
pub struct ClientEndpoint {
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) tls: Arc<rustls::ClientConfig>,
    pub(crate) role: Role,
    pub(crate) config: TransportConfig,
}

impl ClientEndpoint {
    /// Binds an ephemeral UDP port on loopback or `0.0.0.0` matching `bind_ip`'s family.
    pub fn new(
        bind: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
        role: Role,
        config: TransportConfig,
    ) -> Result<ClientEndpoint, TransportError> {
        let _ = (bind, tls, role, config);
        todo!("transport: ClientEndpoint::new")
    }

    /// Connects to `addr` (`host:port`; `host` is also the TLS server name) and runs the
    /// handshake.
    pub async fn connect(&self, addr: &str) -> Result<Connection, TransportError> {
        let _ = addr;
        todo!("transport: ClientEndpoint::connect")
    }
}

/// An established, authenticated connection. Cheap to clone; clones share the connection.
#[derive(Debug, Clone)]
pub struct Connection {
    pub(crate) inner: Arc<()>,
}

impl Connection {
    /// Sends `request` and waits for its response, at most `timeout`.
    pub async fn call(&self, request: Request, timeout: Duration) -> Result<Response, TransportError> {
        let _ = (request, timeout);
        todo!("transport: Connection::call")
    }

    /// The role the server proved in its `HelloAck`.
    pub fn server_role(&self) -> Role {
        todo!()
    }

    /// The server's address.
    pub fn remote_addr(&self) -> SocketAddr {
        todo!()
    }

    /// True once the connection is closed or lost.
    pub fn is_closed(&self) -> bool {
        todo!()
    }
}

/// Connections keyed by address, dialled on first use and redialled when lost. Concurrent
/// callers for one address share a single dial.
#[derive(Debug, Clone)]
pub struct ConnectionPool {
    pub(crate) endpoint: ClientEndpoint,
}

impl ConnectionPool {
    /// A pool dialling through `endpoint`.
    pub fn new(endpoint: ClientEndpoint) -> ConnectionPool {
        ConnectionPool { endpoint }
    }

    /// The live connection to `addr`, dialling if needed.
    pub async fn get(&self, addr: &str) -> Result<Connection, TransportError> {
        let _ = addr;
        todo!()
    }

    /// `get(addr)` then `call`. A connection found closed is redialled once before sending.
    pub async fn call(&self, addr: &str, request: Request, timeout: Duration) -> Result<Response, TransportError> {
        let _ = (addr, request, timeout);
        todo!()
    }

    /// Drops the cached connection to `addr` (after an error that suggests it is broken).
    pub fn evict(&self, addr: &str) {
        let _ = addr;
        todo!()
    }
}
