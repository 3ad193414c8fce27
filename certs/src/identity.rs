//! Certificate identities: the `tessera://` URI subject alternative name.

use std::fmt;

use rustls_pki_types::CertificateDer;
use tessera_wire::NodeId;
use x509_parser::extensions::GeneralName;

use crate::CertError;

const SCHEME: &str = "tessera://";
const MAX_NAME_LEN: usize = 64;

/// Who a certificate belongs to, as named by its `tessera://` URI SAN.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// A storage node: `tessera://node/<id>`.
    Node(NodeId),
    /// A placement-driver server: `tessera://pd`.
    Pd,
    /// An application client: `tessera://client/<name>`.
    Client(String),
}

impl Identity {
    /// The URI put in the certificate's subject alternative names.
    pub fn uri(&self) -> String {
        match self {
            Identity::Node(id) => format!("{SCHEME}node/{}", id.0),
            Identity::Pd => format!("{SCHEME}pd"),
            Identity::Client(name) => format!("{SCHEME}client/{name}"),
        }
    }

    /// Parses a `tessera://` URI.
    pub fn from_uri(uri: &str) -> Result<Identity, CertError> {
        let invalid = |reason| CertError::InvalidIdentity { uri: uri.to_owned(), reason };
        let rest = uri.strip_prefix(SCHEME).ok_or_else(|| invalid("not a tessera:// URI"))?;
        if rest == "pd" {
            return Ok(Identity::Pd);
        }
        if let Some(id) = rest.strip_prefix("node/") {
            // `u64::from_str` accepts a leading '+'; identities are canonical decimal only.
            if id.is_empty() || id.len() > 20 || !id.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid("node id is not a decimal integer"));
            }
            let id = id.parse::<u64>().map_err(|_| invalid("node id out of range"))?;
            return Ok(Identity::Node(NodeId(id)));
        }
        if let Some(name) = rest.strip_prefix("client/") {
            validate_name(name).map_err(|e| match e {
                CertError::InvalidName { reason, .. } => invalid(reason),
                other => other,
            })?;
            return Ok(Identity::Client(name.to_owned()));
        }
        Err(invalid("unknown identity kind (expected node/<id>, pd or client/<name>)"))
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

/// Reads the identity of a certificate from its single `tessera://` URI SAN.
///
/// This does not verify the certificate: call it on chains rustls has already verified.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<Identity, CertError> {
    let (_, x509) =
        x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| CertError::Parse { reason: e.to_string() })?;
    let san = x509.subject_alternative_name().map_err(|e| CertError::Parse { reason: e.to_string() })?;
    let Some(san) = san else {
        return Err(CertError::NoIdentity);
    };
    let mut uris = san.value.general_names.iter().filter_map(|name| match name {
        GeneralName::URI(uri) if uri.starts_with(SCHEME) => Some(*uri),
        _ => None,
    });
    let uri = uris.next().ok_or(CertError::NoIdentity)?;
    if let Some(second) = uris.next() {
        return Err(CertError::InvalidIdentity {
            uri: second.to_owned(),
            reason: "certificate carries more than one tessera:// identity",
        });
    }
    Identity::from_uri(uri)
}

/// Client names go into file names and URIs: 1 to 64 characters of `[A-Za-z0-9._-]`, not
/// starting with a dot.
pub(crate) fn validate_name(name: &str) -> Result<(), CertError> {
    let invalid = |reason| CertError::InvalidName { name: name.to_owned(), reason };
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(invalid("must be 1 to 64 characters long"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return Err(invalid("may contain only ASCII letters, digits, '.', '_' and '-'"));
    }
    if name.starts_with('.') {
        return Err(invalid("must not start with '.'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip() {
        for id in [
            Identity::Node(NodeId(0)),
            Identity::Node(NodeId(u64::MAX)),
            Identity::Pd,
            Identity::Client("a-b.c_d".into()),
        ] {
            assert_eq!(Identity::from_uri(&id.uri()).unwrap(), id);
        }
    }

    #[test]
    fn malformed_uris_are_rejected() {
        for uri in [
            "tessera://node/",
            "tessera://node/+1",
            "tessera://node/-1",
            "tessera://node/18446744073709551616",
            "tessera://node/1/extra",
            "tessera://client/",
            "tessera://client/../x",
            "tessera://client/a/b",
            "tessera://pd/",
            "tessera://other",
            "https://node/1",
        ] {
            assert!(matches!(Identity::from_uri(uri), Err(CertError::InvalidIdentity { .. })), "{uri}");
        }
    }
}
