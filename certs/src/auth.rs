//! The [`Authenticator`] that binds a claimed [`Role`] to the certificate identity, or a
//! web client to its scoped token.

use rustls_pki_types::CertificateDer;
use tessera_wire::quic::{Authenticator, Principal};
use tessera_wire::{Error, Hello, Role, PROTOCOL_VERSION};

use crate::{identity_of, unix_now, Identity, TokenVerifier};

/// Checks a peer's [`Hello`] against its (already CA-verified) certificate:
///
/// * the protocol version must equal [`PROTOCOL_VERSION`], else `UnsupportedVersion`;
/// * the leaf certificate must carry a `tessera://` identity, else `Unauthenticated`;
/// * `Role::Client` needs a client identity, `Role::Node(n)` the identity of node `n`, and
///   `Role::Pd` the PD identity, else `PermissionDenied`.
///
/// A peer without a certificate (a web client over WebSocket or WebTransport) must present
/// a token ([`TokenVerifier`]) and may only act as `Role::Client`; its token's claims go
/// with the connection, and services check them on every request.
#[derive(Debug, Clone, Default)]
pub struct ClusterAuthenticator {
    tokens: Option<TokenVerifier>,
}

impl ClusterAuthenticator {
    /// The authenticator, accepting certificates only.
    pub fn new() -> Self {
        ClusterAuthenticator { tokens: None }
    }

    /// Also accepts tokens signed with the cluster's key.
    pub fn with_tokens(mut self, tokens: Option<TokenVerifier>) -> Self {
        self.tokens = tokens;
        self
    }

    /// The token verifier, if tokens are accepted.
    pub fn tokens(&self) -> Option<&TokenVerifier> {
        self.tokens.as_ref()
    }

    fn authenticate_token(&self, hello: &Hello, token: Option<&str>) -> Result<Principal, Error> {
        let Some(token) = token else {
            return Err(Error::Unauthenticated { reason: "no client certificate and no token".into() });
        };
        let Some(verifier) = &self.tokens else {
            return Err(Error::Unauthenticated { reason: "this server accepts no tokens (no signing key)".into() });
        };
        if hello.role != Role::Client {
            return Err(Error::PermissionDenied { reason: format!("a token may not act as {:?}", hello.role) });
        }
        let claims = verifier.verify(token, unix_now())?;
        Ok(Principal { role: Role::Client, grant: Some(std::sync::Arc::new(claims)) })
    }
}

impl Authenticator for ClusterAuthenticator {
    fn authenticate(
        &self,
        hello: &Hello,
        token: Option<&str>,
        certificates: &[CertificateDer<'static>],
    ) -> Result<Principal, Error> {
        if hello.protocol_version != PROTOCOL_VERSION {
            return Err(Error::UnsupportedVersion { ours: PROTOCOL_VERSION, theirs: hello.protocol_version });
        }
        let Some(leaf) = certificates.first() else {
            return self.authenticate_token(hello, token);
        };
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
        Ok(Principal::certified(hello.role))
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
        Hello::new(role)
    }

    #[test]
    fn matching_claims_are_accepted() {
        let c = certs();
        let auth = ClusterAuthenticator::new();
        assert_eq!(auth.authenticate(&hello(Role::Client), None, &c.client), Ok(Principal::certified(Role::Client)));
        assert_eq!(
            auth.authenticate(&hello(Role::Node(NodeId(2))), None, &c.node2),
            Ok(Principal::certified(Role::Node(NodeId(2))))
        );
        assert_eq!(auth.authenticate(&hello(Role::Pd), None, &c.pd), Ok(Principal::certified(Role::Pd)));
    }

    #[test]
    fn client_certificate_claiming_node_is_denied() {
        let c = certs();
        let result = ClusterAuthenticator::new().authenticate(&hello(Role::Node(NodeId(1))), None, &c.client);
        assert!(matches!(result, Err(Error::PermissionDenied { .. })), "{result:?}");
    }

    #[test]
    fn node_certificate_claiming_another_node_is_denied() {
        let c = certs();
        let result = ClusterAuthenticator::new().authenticate(&hello(Role::Node(NodeId(3))), None, &c.node2);
        assert!(matches!(result, Err(Error::PermissionDenied { .. })), "{result:?}");
        let result = ClusterAuthenticator::new().authenticate(&hello(Role::Pd), None, &c.node2);
        assert!(matches!(result, Err(Error::PermissionDenied { .. })), "{result:?}");
    }

    #[test]
    fn wrong_protocol_version_is_unsupported() {
        let c = certs();
        let hello = Hello { protocol_version: PROTOCOL_VERSION + 1, role: Role::Client };
        assert_eq!(
            ClusterAuthenticator::new().authenticate(&hello, None, &c.client),
            Err(Error::UnsupportedVersion { ours: PROTOCOL_VERSION, theirs: PROTOCOL_VERSION + 1 })
        );
    }

    #[test]
    fn missing_or_anonymous_certificates_are_unauthenticated() {
        let auth = ClusterAuthenticator::new();
        assert!(matches!(auth.authenticate(&hello(Role::Client), None, &[]), Err(Error::Unauthenticated { .. })));
        assert!(matches!(
            auth.authenticate(&hello(Role::Client), None, &[CertificateDer::from(vec![0x30, 0x00])]),
            Err(Error::Unauthenticated { .. })
        ));
    }

    #[test]
    fn a_token_authenticates_a_client_without_a_certificate_and_nothing_more() {
        let c = certs();
        let dir = c._dir.path();
        let verifier = TokenVerifier::load(dir, crate::Revocations::default()).unwrap().expect("init_ca makes the key");
        let auth = ClusterAuthenticator::new().with_tokens(Some(verifier));
        let spec = crate::TokenSpec {
            prefix: b"web/".to_vec(),
            ops: tessera_wire::token::Ops { read: true, write: true },
            ttl: std::time::Duration::from_secs(60),
            name: "t".into(),
        };
        let (token, claims) = crate::create_token(dir, &spec).unwrap();
        let principal = auth.authenticate(&hello(Role::Client), Some(&token), &[]).unwrap();
        assert_eq!(principal.role, Role::Client);
        assert_eq!(principal.grant.as_deref(), Some(&claims));
        // A token never makes a node or a PD.
        for role in [Role::Node(NodeId(1)), Role::Pd] {
            let result = auth.authenticate(&hello(role), Some(&token), &[]);
            assert!(matches!(result, Err(Error::PermissionDenied { .. })), "{result:?}");
        }
        // No token, or tokens not enabled: nothing.
        assert!(matches!(auth.authenticate(&hello(Role::Client), None, &[]), Err(Error::Unauthenticated { .. })));
        let certificates_only = ClusterAuthenticator::new();
        let result = certificates_only.authenticate(&hello(Role::Client), Some(&token), &[]);
        assert!(matches!(result, Err(Error::Unauthenticated { .. })), "{result:?}");
        // A certificate still decides for peers that present one.
        assert_eq!(
            auth.authenticate(&hello(Role::Client), Some(&token), &c.client),
            Ok(Principal::certified(Role::Client))
        );
    }
}
