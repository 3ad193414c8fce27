//! Certificate tooling for Tessera clusters.
//!
//! Every Tessera connection is mutually authenticated TLS 1.3 under one cluster CA, and every
//! certificate names who it belongs to in a URI subject alternative name:
//! `tessera://node/<id>`, `tessera://pd` or `tessera://client/<name>`.
//!
//! * Issuing: [`init_ca`], [`issue_node`], [`issue_pd`], [`issue_client`], and
//!   [`ensure_dev_certs`] for a local development set. Keys are ECDSA P-256, files are PEM,
//!   private keys are written with mode 0600. The layout of a certificate directory is fixed
//!   ([`TlsFiles`]).
//! * Configuring: [`server_tls_config`] (requires a client certificate from the CA) and
//!   [`client_tls_config`] (trusts only the CA), both TLS 1.3 only with ALPN `tessera/1` and
//!   the ring crypto provider chosen explicitly.
//! * Authorising: [`identity_of`] reads a certificate's [`Identity`];
//!   [`ClusterAuthenticator`] checks the role a peer claims in its `Hello` against it.
//!
//! ```
//! use tessera_certs::{ensure_dev_certs, identity_of, load_certs, server_tls_config, Identity, TlsFiles};
//! use tessera_wire::NodeId;
//!
//! let dir = tempfile::tempdir()?;
//! ensure_dev_certs(dir.path(), &[NodeId(1)])?;
//! let files = TlsFiles::node(dir.path(), NodeId(1));
//! let cert = &load_certs(&files.cert)?[0];
//! assert_eq!(identity_of(cert)?, Identity::Node(NodeId(1)));
//! let _server = server_tls_config(&files)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod auth;
mod error;
mod identity;
mod issue;
mod tls;
mod token;
mod web;

pub use auth::ClusterAuthenticator;
pub use error::CertError;
pub use identity::{identity_of, Identity};
pub use issue::{ensure_dev_certs, init_ca, issue_client, issue_node, issue_pd, TlsFiles, DEV_CLIENT};
pub use tls::{client_tls_config, load_certs, load_key, server_tls_config};
pub use token::{
    create_token, ensure_token_key, sign_claims, unix_now, Revocations, TokenSpec, TokenVerifier, MAX_TOKEN_TTL,
    TOKEN_SIGNING_KEY, TOKEN_VERIFY_KEY,
};
pub use web::{server_tls_config_web, wss_tls_config, WebCert, WEB_CERT_ROTATE_AFTER, WEB_CERT_VALIDITY};

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_wire::NodeId;

    #[test]
    fn every_identity_kind_round_trips_through_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        let cases = [
            (
                issue_node(dir.path(), NodeId(42), &["127.0.0.1".into(), "node42.local".into()]).unwrap(),
                Identity::Node(NodeId(42)),
            ),
            (issue_pd(dir.path(), &["::1".into()]).unwrap(), Identity::Pd),
            (issue_client(dir.path(), "billing-app").unwrap(), Identity::Client("billing-app".into())),
        ];
        for (files, expected) in cases {
            let certs = load_certs(&files.cert).unwrap();
            assert_eq!(identity_of(&certs[0]).unwrap(), expected);
        }
    }

    #[test]
    fn the_ca_certificate_has_no_identity() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        let ca = load_certs(&dir.path().join("ca.pem")).unwrap();
        assert!(matches!(identity_of(&ca[0]), Err(CertError::NoIdentity)));
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        let garbage = rustls_pki_types::CertificateDer::from(vec![1, 2, 3]);
        assert!(matches!(identity_of(&garbage), Err(CertError::Parse { .. })));
    }
}
