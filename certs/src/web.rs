//! TLS for browsers (WebTransport): a short-lived self-signed ECDSA P-256 certificate that
//! browsers accept by its SHA-256 hash (`serverCertificateHashes`, valid at most 14 days),
//! chosen by ALPN next to the CA-signed certificate native peers get.
//!
//! [`WebCert`] holds the current certificate and replaces it before it expires
//! ([`WebCert::rotate_if_due`]); PD publishes each node's current hash, so a browser can pin
//! a node it has never seen.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::tls::{load_certs, load_key, load_roots, provider};
use crate::{CertError, TlsFiles};

/// Validity of a browser certificate: Chromium refuses hashes of certificates valid longer
/// than 14 days.
pub const WEB_CERT_VALIDITY: Duration = Duration::from_secs(13 * 24 * 3600);
/// A browser certificate is replaced once it is this old, well before it expires.
pub const WEB_CERT_ROTATE_AFTER: Duration = Duration::from_secs(6 * 24 * 3600);

struct Current {
    key: Arc<CertifiedKey>,
    hash: [u8; 32],
    made: SystemTime,
}

/// The current browser certificate of a server: self-signed and rotated, or an operator's
/// WebPKI certificate (which browsers trust without pinning, and which is never rotated
/// here).
#[derive(Clone)]
pub struct WebCert {
    hosts: Vec<String>,
    current: Arc<RwLock<Current>>,
    operator: bool,
}

impl std::fmt::Debug for WebCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebCert").field("hosts", &self.hosts).field("hash", &hex(&self.hash())).finish()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn generate(hosts: &[String]) -> Result<Current, CertError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CertError::generate)?;
    let mut params = CertificateParams::new(hosts.to_vec()).map_err(CertError::generate)?;
    let now = time::OffsetDateTime::now_utc();
    // A little backdating for clock skew, inside the 14 days browsers allow.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::seconds(WEB_CERT_VALIDITY.as_secs() as i64);
    let cert = params.self_signed(&key).map_err(CertError::generate)?;
    let der = cert.der().clone();
    let hash = ring::digest::digest(&ring::digest::SHA256, &der);
    let mut digest = [0u8; 32];
    digest.copy_from_slice(hash.as_ref());
    let private = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).map_err(CertError::generate)?;
    let signing = provider().key_provider.load_private_key(private).map_err(CertError::tls)?;
    Ok(Current { key: Arc::new(CertifiedKey::new(vec![der], signing)), hash: digest, made: SystemTime::now() })
}

impl WebCert {
    /// A fresh certificate for `hosts` (IP addresses or DNS names the browser dials).
    pub fn new(hosts: &[String]) -> Result<WebCert, CertError> {
        let current = generate(hosts)?;
        Ok(WebCert { hosts: hosts.to_vec(), current: Arc::new(RwLock::new(current)), operator: false })
    }

    /// An operator-supplied certificate chain and key (PEM), e.g. from a public CA: served
    /// to browsers as is; the operator renews it (restart to load a new one).
    pub fn from_files(cert: &std::path::Path, key: &std::path::Path) -> Result<WebCert, CertError> {
        let chain = load_certs(cert)?;
        let signing = provider().key_provider.load_private_key(load_key(key)?).map_err(CertError::tls)?;
        let digest = ring::digest::digest(&ring::digest::SHA256, &chain[0]);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(digest.as_ref());
        let current = Current { key: Arc::new(CertifiedKey::new(chain, signing)), hash, made: SystemTime::now() };
        Ok(WebCert { hosts: Vec::new(), current: Arc::new(RwLock::new(current)), operator: true })
    }

    /// SHA-256 of the current certificate (DER), what browsers pin.
    pub fn hash(&self) -> [u8; 32] {
        self.current.read().unwrap_or_else(|p| p.into_inner()).hash
    }

    fn key(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).key.clone()
    }

    /// Replaces the certificate when it is older than [`WEB_CERT_ROTATE_AFTER`]; returns
    /// whether it did. Connections already open keep the old one.
    pub fn rotate_if_due(&self) -> Result<bool, CertError> {
        let age = {
            let current = self.current.read().unwrap_or_else(|p| p.into_inner());
            current.made.elapsed().unwrap_or_default()
        };
        if self.operator || age < WEB_CERT_ROTATE_AFTER {
            return Ok(false);
        }
        self.rotate()?;
        Ok(true)
    }

    /// Replaces the certificate now.
    pub fn rotate(&self) -> Result<(), CertError> {
        let fresh = generate(&self.hosts)?;
        tracing::info!(hash = %hex(&fresh.hash), "browser certificate rotated");
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }
}

/// Picks the certificate by the ALPN a client offers: `h3` alone (a browser) gets the
/// browser certificate, everything else the CA-signed one.
#[derive(Debug)]
struct ByAlpn {
    native: Arc<CertifiedKey>,
    web: WebCert,
}

impl ResolvesServerCert for ByAlpn {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut offered = hello.alpn().into_iter().flatten();
        let native = offered.any(|p| p == tessera_wire::ALPN);
        Some(if native { self.native.clone() } else { self.web.key() })
    }
}

/// Server configuration for `wss://` with an operator's certificate and key (PEM): no client
/// certificate (web clients present a token), TLS 1.2 and 1.3.
pub fn wss_tls_config(cert: &std::path::Path, key: &std::path::Path) -> Result<Arc<ServerConfig>, CertError> {
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(CertError::tls)?
        .with_no_client_auth()
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(CertError::tls)?;
    Ok(Arc::new(config))
}

/// Server configuration for a server that also serves browsers: ALPN `tessera/1` (native,
/// CA-signed certificate, client certificate required by the server after the handshake)
/// and `h3` (WebTransport, `web`'s certificate, no client certificate). TLS accepts a
/// missing client certificate; one that is presented is fully verified against the CA.
pub fn server_tls_config_web(files: &TlsFiles, web: &WebCert) -> Result<Arc<ServerConfig>, CertError> {
    let provider = provider();
    let roots = Arc::new(load_roots(&files.ca)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(CertError::tls)?;
    let signing = provider.key_provider.load_private_key(load_key(&files.key)?).map_err(CertError::tls)?;
    let native = Arc::new(CertifiedKey::new(load_certs(&files.cert)?, signing));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(CertError::tls)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(ByAlpn { native, web: web.clone() }));
    config.alpn_protocols = vec![tessera_wire::ALPN.to_vec(), tessera_wire::quic::H3_ALPN.to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_browser_certificate_is_short_lived_p256_and_rotates() {
        let web = WebCert::new(&["127.0.0.1".into(), "localhost".into()]).unwrap();
        let key = web.key();
        let (_, cert) = x509_parser::parse_x509_certificate(&key.cert[0]).unwrap();
        let validity = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert!(validity <= 14 * 24 * 3600, "valid {validity} s");
        assert_eq!(cert.public_key().algorithm.algorithm.to_id_string(), "1.2.840.10045.2.1", "EC key");
        let before = web.hash();
        assert!(!web.rotate_if_due().unwrap(), "a new certificate is not due");
        web.rotate().unwrap();
        assert_ne!(web.hash(), before);
        let digest = ring::digest::digest(&ring::digest::SHA256, &web.key().cert[0]);
        assert_eq!(digest.as_ref(), web.hash(), "the hash is of the certificate served");
    }

    #[test]
    fn an_operator_certificate_is_served_as_is_and_never_rotated() {
        let dir = tempfile::tempdir().unwrap();
        crate::init_ca(dir.path()).unwrap();
        let files = crate::issue_node(dir.path(), tessera_wire::NodeId(1), &["db.example".into()]).unwrap();
        let web = WebCert::from_files(&files.cert, &files.key).unwrap();
        let served = web.key().cert[0].clone();
        assert_eq!(served, load_certs(&files.cert).unwrap()[0]);
        web.current.write().unwrap().made = SystemTime::UNIX_EPOCH;
        assert!(!web.rotate_if_due().unwrap(), "the operator renews it, not the server");
        assert_eq!(web.key().cert[0], served);
    }
}
