//! rustls configurations for Tessera endpoints: TLS 1.3 only, ALPN `tessera/1`, mutual
//! authentication against the cluster CA.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::{CertError, TlsFiles};

/// The crypto provider every configuration uses, chosen explicitly so nothing depends on a
/// process-wide default being installed.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Server configuration: presents `files.cert`, requires a client certificate issued by the
/// cluster CA `files.ca`. TLS 1.3 only, ALPN `tessera/1`.
pub fn server_tls_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, CertError> {
    let provider = provider();
    let roots = Arc::new(load_roots(&files.ca)?);
    let verifier =
        WebPkiClientVerifier::builder_with_provider(roots, provider.clone()).build().map_err(CertError::tls)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(CertError::tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&files.cert)?, load_key(&files.key)?)
        .map_err(CertError::tls)?;
    config.alpn_protocols = vec![tessera_wire::ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// Client configuration: presents `files.cert`, trusts only the cluster CA `files.ca`.
/// TLS 1.3 only, ALPN `tessera/1`.
pub fn client_tls_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, CertError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(CertError::tls)?
        .with_root_certificates(load_roots(&files.ca)?)
        .with_client_auth_cert(load_certs(&files.cert)?, load_key(&files.key)?)
        .map_err(CertError::tls)?;
    config.alpn_protocols = vec![tessera_wire::ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// Reads every certificate of a PEM file; at least one is required.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let pem_error = |reason: String| CertError::Pem { path: path.to_owned(), reason };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_error("no certificate found".into()));
    }
    Ok(certs)
}

/// Reads the first private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| read_error(path, e))
}

pub(crate) fn load_roots(path: &Path) -> Result<RootCertStore, CertError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| CertError::Pem { path: path.to_owned(), reason: e.to_string() })?;
    }
    Ok(roots)
}

fn read_error(path: &Path, e: rustls_pki_types::pem::Error) -> CertError {
    match e {
        rustls_pki_types::pem::Error::Io(source) => CertError::io(path, source),
        other => CertError::Pem { path: path.to_owned(), reason: other.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_wire::NodeId;

    #[test]
    fn configs_are_tls13_only_with_alpn() {
        let dir = tempfile::tempdir().unwrap();
        crate::ensure_dev_certs(dir.path(), &[NodeId(1)]).unwrap();
        let server = server_tls_config(&TlsFiles::node(dir.path(), NodeId(1))).unwrap();
        let client = client_tls_config(&TlsFiles::client(dir.path(), crate::DEV_CLIENT)).unwrap();
        assert_eq!(server.alpn_protocols, vec![b"tessera/1".to_vec()]);
        assert_eq!(client.alpn_protocols, vec![b"tessera/1".to_vec()]);
        assert!(server.crypto_provider().cipher_suites.iter().any(|s| s.version() == &rustls::version::TLS13));
    }

    #[test]
    fn missing_files_are_io_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = client_tls_config(&TlsFiles::client(dir.path(), "nobody")).unwrap_err();
        assert!(matches!(err, CertError::Io { .. }), "{err}");
    }

    #[test]
    fn a_pem_without_certificates_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "not pem at all\n").unwrap();
        assert!(matches!(load_certs(&path), Err(CertError::Pem { .. })));
    }
}
