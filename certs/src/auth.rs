//! The [`Authenticator`] that binds a claimed [`Role`] to the certificate identity.

use rustls_pki_types::CertificateDer;
use tessera_wire::quic::Authenticator;
use tessera_wire::{Error, Hello, Role, PROTOCOL_VERSION};

use crate::{identity_of, Identity};

/// Checks a peer's [`Hello`] against its (already CA-verified) certificate:
///
/// * the protocol version must equal [`PROTOCOL_VERSION`], else `UnsupportedVersion`;
/// * the leaf certificate must carry a `tessera://` identity, else `Unauthenticated`;
/// * `Role::Client` needs a client identity, `Role::Node(n)` the identity of node `n`, and
///   `Role::Pd` the PD identity, else `PermissionDenied`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterAuthenticator {
    _private: (),
}

impl ClusterAuthenticator {
    /// The authenticator.
    pub fn new() -> Self {
        ClusterAuthenticator { _private: () }
    }
}

impl Authenticator for ClusterAuthenticator {
    fn authenticate(&self, hello: &Hello, certificates: &[CertificateDer<'static>]) -> Result<Role, Error> {
        if hello.protocol_version != PROTOCOL_VERSION {
            return Err(Error::UnsupportedVersion { ours: PROTOCOL_VERSION, theirs: hello.protocol_version });
        }
        let leaf =
            certificates.first().ok_or_else(|| Error::Unauthenticated { reason: "no client certificate".into() })?;
        let identity = identity_of(leaf).map_err(|e| Error::Unauthenticated { reason: e.to_string() })?;
        let allowed = match (&hello.role, &identity) {
            (Role::Client, Identity::Client(_)) | (Role::Pd, Identity::Pd) => true,
            (Role::Node(claimed), Identity::Node(proven)) => claimed == proven,
            _ => false,
        };
        if !allowed {
            return Err(Error::PermissionDenied {
                reason: format!("certificate identity {identity} may not act as {:?}", hello.role),
            });
        }
        Ok(hello.role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{init_ca, issue_client, issue_node, issue_pd, load_certs, TlsFiles};
    use tessera_wire::NodeId;

    struct Certs {
        _dir: tempfile::TempDir,
        node2: Vec<CertificateDer<'static>>,
        pd: Vec<CertificateDer<'static>>,
        client: Vec<CertificateDer<'static>>,
    }

    fn certs() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        let load = |files: TlsFiles| load_certs(&files.cert).unwrap();
        Certs {
            node2: load(issue_node(dir.path(), NodeId(2), &["127.0.0.1".into()]).unwrap()),
            pd: load(issue_pd(dir.path(), &["localhost".into()]).unwrap()),
            client: load(issue_client(dir.path(), "app").unwrap()),
            _dir: dir,
        }
    }

    fn hello(role: Role) -> Hello {
        Hello { protocol_version: PROTOCOL_VERSION, role }
    }

    #[test]
    fn matching_claims_are_accepted() {
        let c = certs();
        let auth = ClusterAuthenticator::new();
        assert_eq!(auth.authenticate(&hello(Role::Client), &c.client), Ok(Role::Client));
        assert_eq!(auth.authenticate(&hello(Role::Node(NodeId(2))), &c.node2), Ok(Role::Node(NodeId(2))));
        assert_eq!(auth.authenticate(&hello(Role::Pd), &c.pd), Ok(Role::Pd));
    }

    #[test]
    fn client_certificate_claiming_node_is_denied() {
        let c = certs();
        let result = ClusterAuthenticator::new().authenticate(&hello(Role::Node(NodeId(1))), &c.client);
        assert!(matches!(result, Err(Error::PermissionDenied { .. })), "{result:?}");
    }

    #[test]
    fn node_certificate_claiming_another_node_is_denied() {
        let c = certs();
        let result = ClusterAuthenticator::new().authenticate(&hello(Role::Node(NodeId(3))), &c.node2);
        assert!(matches!(result, Err(Error::PermissionDenied { .. })), "{result:?}");
        let result = ClusterAuthenticator::new().authenticate(&hello(Role::Pd), &c.node2);
        assert!(matches!(result, Err(Error::PermissionDenied { .. })), "{result:?}");
    }

    #[test]
    fn wrong_protocol_version_is_unsupported() {
        let c = certs();
        let hello = Hello { protocol_version: PROTOCOL_VERSION + 1, role: Role::Client };
        assert_eq!(
            ClusterAuthenticator::new().authenticate(&hello, &c.client),
            Err(Error::UnsupportedVersion { ours: PROTOCOL_VERSION, theirs: PROTOCOL_VERSION + 1 })
        );
    }

    #[test]
    fn missing_or_anonymous_certificates_are_unauthenticated() {
        let auth = ClusterAuthenticator::new();
        assert!(matches!(auth.authenticate(&hello(Role::Client), &[]), Err(Error::Unauthenticated { .. })));
        assert!(matches!(
            auth.authenticate(&hello(Role::Client), &[CertificateDer::from(vec![0x30, 0x00])]),
            Err(Error::Unauthenticated { .. })
        ));
    }
}
