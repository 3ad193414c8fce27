//! The running PD: storage, metadata and the QUIC endpoint, with graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_certs::ClusterAuthenticator;
use tessera_wire::quic::{ResetKeySeed, Server, SocketReleased, TransportConfig, WsServer};
use tessera_wire::Role;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::{PdConfig, PdError};
use crate::meta::ClusterMeta;
use crate::service::PdService;
use crate::store::Store;

/// Name of the metadata database inside [`PdConfig::data_dir`].
pub const DB_FILE: &str = "pd.redb";

/// A running placement driver. Dropping it without [`PdServer::shutdown`] also stops the
/// endpoint, but does not wait for in-flight requests.
#[derive(Debug)]
pub struct PdServer {
    local_addr: SocketAddr,
    web_cert: Option<tessera_certs::WebCert>,
    /// The certificate's rotation task, stopped with the server.
    _rotation: Option<AbortOnDrop>,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
    released: SocketReleased,
}

impl PdServer {
    /// Validates `cfg`, opens and loads the metadata database, builds the TLS configuration,
    /// binds the listen address and starts serving.
    pub async fn start(cfg: PdConfig) -> Result<PdServer, PdError> {
        cfg.validate()?;
        let meta_config = cfg.meta_config();
        let data_dir = cfg.data_dir.clone();
        let db_path = data_dir.join(DB_FILE);
        // Opening redb reads (and may repair) the file: blocking work.
        let (meta, store, epoch) = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&data_dir).map_err(|source| PdError::DataDir { path: data_dir.clone(), source })?;
            let storage = |source| PdError::Storage { path: db_path.clone(), source };
            let store = Store::open(&db_path).map_err(storage)?;
            let state = store.load().map_err(storage)?;
            let epoch = Instant::now();
            Ok::<_, PdError>((ClusterMeta::restore(meta_config, state, Duration::ZERO), store, epoch))
        })
        .await
        .map_err(|e| PdError::Internal { reason: e.to_string() })??;
        let bootstrapped = meta.is_bootstrapped();
        let nodes = meta.nodes(Duration::ZERO).len();

        let web_cert = match (&cfg.web_cert, cfg.webtransport) {
            (_, false) => None,
            (Some((cert, key)), true) => Some(tessera_certs::WebCert::from_files(cert, key).map_err(PdError::Tls)?),
            (None, true) => {
                let hosts = vec![cfg.listen.ip().to_string(), "localhost".to_string()];
                Some(tessera_certs::WebCert::new(&hosts).map_err(PdError::Tls)?)
            }
        };
        let tls = match &web_cert {
            Some(web) => tessera_certs::server_tls_config_web(&cfg.tls, web),
            None => tessera_certs::server_tls_config(&cfg.tls),
        }
        .map_err(PdError::Tls)?;
        // A stable stateless-reset key (from PD's private key): clients and nodes connected
        // to a previous PD process are reset at once when it restarts.
        let mut transport = match std::fs::read(&cfg.tls.key) {
            Ok(key) => {
                TransportConfig { reset_key_seed: Some(ResetKeySeed::derive(&key)), ..TransportConfig::default() }
            }
            Err(_) => TransportConfig::default(),
        };
        if cfg.webtransport {
            transport.max_concurrent_uni_streams = TransportConfig::WEB_UNI_STREAMS;
        }
        let server = Server::bind(cfg.listen, tls, None, Role::Pd, transport)
            .map_err(|source| PdError::Bind { addr: cfg.listen, source })?;
        let local_addr = server.local_addr();
        let released = server.released();

        let revocations = tessera_certs::Revocations::default();
        let service = PdService::new(meta, store, epoch, cfg.scheduler.clone(), revocations.clone())
            .map_err(|source| PdError::Storage { path: cfg.data_dir.join(DB_FILE), source })?;
        let service = Arc::new(service);
        let tokens = cfg
            .tls
            .ca
            .parent()
            .map(|dir| tessera_certs::TokenVerifier::load(dir, revocations))
            .transpose()
            .map_err(PdError::Tls)?
            .flatten();
        let auth = Arc::new(ClusterAuthenticator::new().with_tokens(tokens));
        let web = if cfg.websocket {
            let addr = SocketAddr::new(local_addr.ip(), local_addr.port());
            let ws = WsServer::bind(addr, Role::Pd, TransportConfig::default())
                .await
                .map_err(|source| PdError::Bind { addr, source })?;
            // With an operator's certificate, WebSocket clients get TLS (wss://) too.
            Some(match &cfg.web_cert {
                Some((cert, key)) => ws.with_tls(tessera_certs::wss_tls_config(cert, key).map_err(PdError::Tls)?),
                None => ws,
            })
        } else {
            None
        };
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            // Resolves on `shutdown()` and when the `PdServer` is dropped.
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let signal = async move {
                let _ = stopped.await;
                let _ = stop_tx.send(true);
            };
            let web = async {
                if let Some(ws) = web {
                    let mut rx = stop_rx.clone();
                    ws.serve(service.clone(), auth.clone(), async move {
                        let _ = rx.wait_for(|s| *s).await;
                    })
                    .await;
                }
            };
            tokio::join!(server.serve(service.clone(), auth.clone(), signal), web);
        });
        tracing::info!(%local_addr, bootstrapped, nodes, "PD serving");
        let rotation = web_cert.clone().map(|web| {
            let task = tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(3600));
                loop {
                    tick.tick().await;
                    if let Err(error) = web.rotate_if_due() {
                        tracing::error!(%error, "rotating the browser certificate failed");
                    }
                }
            });
            AbortOnDrop(task.abort_handle())
        });
        Ok(PdServer { local_addr, web_cert, _rotation: rotation, shutdown, task, released })
    }

    /// The bound address (useful after listening on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// SHA-256 of PD's current WebTransport certificate, when it serves browsers: what a
    /// browser pins to reach PD (`web.json`'s `certHashes`).
    pub fn web_cert_hash(&self) -> Option<[u8; 32]> {
        self.web_cert.as_ref().map(|w| w.hash())
    }

    /// Stops accepting connections, waits for in-flight requests to finish (each mutation
    /// is durable before its answer) and closes the metadata database.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(());
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "PD serve task failed");
        }
        if !self.released.wait(std::time::Duration::from_secs(5)).await {
            tracing::warn!(local_addr = %self.local_addr, "PD's socket was still open 5 s after shutdown");
        }
        tracing::info!(local_addr = %self.local_addr, "PD stopped");
    }
}

/// Aborts a background task when dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
