//! Server side: accept connections, authenticate, dispatch requests.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;

use super::{TransportConfig, TransportError};
use crate::{Hello, Request, Response, Role};

/// An authenticated peer.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The role the peer proved (the [`Authenticator`]'s answer).
    pub role: Role,
    /// Its address.
    pub remote: SocketAddr,
}

/// Decides who a connecting peer is, from its [`Hello`] and TLS certificate chain.
pub trait Authenticator: Send + Sync + 'static {
    /// Returns the verified role, or the typed error sent back in the `HelloAck`
    /// (`Unauthenticated`, `PermissionDenied`, `UnsupportedVersion`).
    fn authenticate(&self, hello: &Hello, certificates: &[CertificateDer<'static>]) -> Result<Role, crate::Error>;
}

/// Handles requests of authenticated peers.
pub trait Service: Send + Sync + 'static {
    /// Answers one request. Called concurrently for requests in flight.
    fn call(self: Arc<Self>, peer: Arc<PeerInfo>, request: Request) -> impl Future<Output = Response> + Send + 'static;
}

/// A listening QUIC endpoint. The same endpoint can also dial out ([`Server::client`]), so a
/// node uses one UDP socket for everything.
#[derive(Debug)]
pub struct Server {
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) config: TransportConfig,
    pub(crate) role: Role,
}

impl Server {
    /// Binds `addr` with the given TLS server configuration (which must require client
    /// certificates). `role` is what this server answers in its `HelloAck`. The optional
    /// `client_tls` lets the same endpoint dial out (node to node, node to PD).
    pub fn bind(
        addr: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
        client_tls: Option<Arc<rustls::ClientConfig>>,
        role: Role,
        config: TransportConfig,
    ) -> Result<Server, TransportError> {
        let _ = (addr, tls, client_tls, role, config);
        todo!("transport: Server::bind")
    }

    /// The bound address (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        todo!("transport: Server::local_addr")
    }

    /// A client endpoint sharing this server's socket (requires `client_tls` at bind).
    pub fn client(&self) -> ClientEndpointHandle {
        todo!("transport: Server::client")
    }

    /// Accepts and serves connections until `shutdown` resolves, then closes the endpoint
    /// and waits for in-flight requests to finish.
    pub async fn serve<S: Service, A: Authenticator>(
        self,
        service: Arc<S>,
        auth: Arc<A>,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        let _ = (service, auth, shutdown);
        todo!("transport: Server::serve")
    }
}

/// Re-export for the client handle type returned by [`Server::client`].
pub type ClientEndpointHandle = super::ClientEndpoint;
