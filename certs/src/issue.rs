//! Issuing the cluster CA and node, PD and client certificates into a directory.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tessera_wire::NodeId;

use crate::identity::validate_name;
use crate::{CertError, Identity};

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca-key.pem";
pub(crate) const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;
/// Certificates start being valid a day in the past to tolerate clock skew between hosts.
const BACKDATE_DAYS: i64 = 1;
const CA_VALIDITY_DAYS: i64 = 10 * 365;
const LEAF_VALIDITY_DAYS: i64 = 5 * 365;
/// Hosts put in the development node and PD certificates.
const DEV_HOSTS: [&str; 2] = ["127.0.0.1", "localhost"];
/// The client certificate [`ensure_dev_certs`] creates.
pub const DEV_CLIENT: &str = "dev";

/// The three files a TLS endpoint needs: the cluster CA certificate, its own certificate and
/// its own private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA certificate (`ca.pem`).
    pub ca: PathBuf,
    /// The endpoint's certificate.
    pub cert: PathBuf,
    /// The endpoint's private key (mode 0600).
    pub key: PathBuf,
}

impl TlsFiles {
    /// Files of node `id` in `dir`: `node-<ID>.pem`, `node-<ID>-key.pem`.
    pub fn node(dir: &Path, id: NodeId) -> Self {
        Self::named(dir, &format!("node-{}", id.0))
    }

    /// Files of the PD in `dir`: `pd.pem`, `pd-key.pem`.
    pub fn pd(dir: &Path) -> Self {
        Self::named(dir, "pd")
    }

    /// Files of client `name` in `dir`: `client-<NAME>.pem`, `client-<NAME>-key.pem`.
    pub fn client(dir: &Path, name: &str) -> Self {
        Self::named(dir, &format!("client-{name}"))
    }

    fn named(dir: &Path, stem: &str) -> Self {
        TlsFiles {
            ca: dir.join(CA_CERT),
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}-key.pem")),
        }
    }

    /// True when both the certificate and the key exist; an error when only one does.
    fn pair_exists(&self) -> Result<bool, CertError> {
        pair_exists(&self.cert, &self.key)
    }
}

fn pair_exists(cert: &Path, key: &Path) -> Result<bool, CertError> {
    match (cert.exists(), key.exists()) {
        (true, true) => Ok(true),
        (false, false) => Ok(false),
        (true, false) => Err(CertError::IncompletePair { present: cert.to_owned(), missing: key.to_owned() }),
        (false, true) => Err(CertError::IncompletePair { present: key.to_owned(), missing: cert.to_owned() }),
    }
}

/// Creates the cluster CA (`ca.pem`, `ca-key.pem`) in `dir`, creating `dir` if needed.
/// Refuses to overwrite an existing CA certificate or key.
pub fn init_ca(dir: &Path) -> Result<(), CertError> {
    let cert_path = dir.join(CA_CERT);
    let key_path = dir.join(CA_KEY);
    for path in [&cert_path, &key_path] {
        if path.exists() {
            return Err(CertError::AlreadyExists { path: path.clone() });
        }
    }
    create_dir(dir)?;

    let key = new_key()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name("Tessera cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    set_validity(&mut params, CA_VALIDITY_DAYS);
    let cert = params.self_signed(&key).map_err(CertError::generate)?;

    // Key first: a CA certificate without its key is useless, the reverse is recoverable.
    write_new(&key_path, key.serialize_pem().as_bytes(), KEY_MODE, false)?;
    write_new(&cert_path, cert.pem().as_bytes(), CERT_MODE, false)?;
    tracing::info!(dir = %dir.display(), "created cluster CA");
    crate::token::ensure_token_key(dir)?;
    Ok(())
}

/// Issues (or re-issues) the certificate of node `id`, valid for `hosts` (DNS names or IP
/// addresses) and carrying `tessera://node/<id>`. Usable as server and client certificate.
pub fn issue_node(dir: &Path, id: NodeId, hosts: &[String]) -> Result<TlsFiles, CertError> {
    let files = TlsFiles::node(dir, id);
    issue(dir, &files, &Identity::Node(id), hosts, true)?;
    Ok(files)
}

/// Issues (or re-issues) the PD certificate, valid for `hosts` and carrying `tessera://pd`.
/// Usable as server and client certificate.
pub fn issue_pd(dir: &Path, hosts: &[String]) -> Result<TlsFiles, CertError> {
    let files = TlsFiles::pd(dir);
    issue(dir, &files, &Identity::Pd, hosts, true)?;
    Ok(files)
}

/// Issues (or re-issues) the certificate of client `name` (`[A-Za-z0-9._-]`, at most 64
/// characters), carrying `tessera://client/<name>`; client authentication only.
pub fn issue_client(dir: &Path, name: &str) -> Result<TlsFiles, CertError> {
    validate_name(name)?;
    let files = TlsFiles::client(dir, name);
    issue(dir, &files, &Identity::Client(name.to_owned()), &[], false)?;
    Ok(files)
}

/// Makes sure `dir` holds a development certificate set: the CA, the PD, every node of
/// `nodes` (hosts `127.0.0.1` and `localhost`) and the client `dev`. Creates only what is
/// missing; when the CA itself is missing, every certificate is re-issued under the new CA.
pub fn ensure_dev_certs(dir: &Path, nodes: &[NodeId]) -> Result<(), CertError> {
    let new_ca = !pair_exists(&dir.join(CA_CERT), &dir.join(CA_KEY))?;
    if new_ca {
        init_ca(dir)?;
    }
    let hosts: Vec<String> = DEV_HOSTS.iter().map(|h| (*h).to_owned()).collect();
    if new_ca || !TlsFiles::pd(dir).pair_exists()? {
        issue_pd(dir, &hosts)?;
    }
    for &id in nodes {
        if new_ca || !TlsFiles::node(dir, id).pair_exists()? {
            issue_node(dir, id, &hosts)?;
        }
    }
    if new_ca || !TlsFiles::client(dir, DEV_CLIENT).pair_exists()? {
        issue_client(dir, DEV_CLIENT)?;
    }
    // Directories made before tokens existed get their signing key now.
    crate::token::ensure_token_key(dir)?;
    Ok(())
}

fn issue(dir: &Path, files: &TlsFiles, identity: &Identity, hosts: &[String], server: bool) -> Result<(), CertError> {
    let issuer = load_issuer(dir)?;

    let uri = identity.uri();
    let mut sans = vec![SanType::URI(uri.as_str().try_into().map_err(CertError::generate)?)];
    for host in hosts {
        sans.push(host_san(host)?);
    }
    let key = new_key()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(&uri);
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = if server {
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, LEAF_VALIDITY_DAYS);
    let cert = params.signed_by(&key, &issuer).map_err(CertError::generate)?;

    write_new(&files.key, key.serialize_pem().as_bytes(), KEY_MODE, true)?;
    write_new(&files.cert, cert.pem().as_bytes(), CERT_MODE, true)?;
    tracing::info!(identity = %identity, cert = %files.cert.display(), "issued certificate");
    Ok(())
}

fn load_issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>, CertError> {
    let cert_path = dir.join(CA_CERT);
    let key_path = dir.join(CA_KEY);
    let cert_pem = fs::read_to_string(&cert_path).map_err(|e| CertError::io(&cert_path, e))?;
    let key_pem = fs::read_to_string(&key_path).map_err(|e| CertError::io(&key_path, e))?;
    let key = KeyPair::from_pem(&key_pem).map_err(|e| CertError::Pem { path: key_path, reason: e.to_string() })?;
    Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| CertError::Pem { path: cert_path, reason: e.to_string() })
}

fn host_san(host: &str) -> Result<SanType, CertError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let invalid = |reason| CertError::InvalidName { name: host.to_owned(), reason };
    if host.is_empty() || host.len() > 253 {
        return Err(invalid("host name must be 1 to 253 characters long"));
    }
    if !host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'*')) {
        return Err(invalid("host name may contain only ASCII letters, digits, '.', '-' and '*'"));
    }
    Ok(SanType::DnsName(host.try_into().map_err(|_| invalid("not an IA5 string"))?))
}

fn new_key() -> Result<KeyPair, CertError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CertError::generate)
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Tessera");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn set_validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(BACKDATE_DAYS);
    params.not_after = now + time::Duration::days(days);
}

fn create_dir(dir: &Path) -> Result<(), CertError> {
    fs::create_dir_all(dir).map_err(|e| CertError::io(dir, e))
}

/// Writes `contents` to `path` through a temporary file created with `mode` (so a key is
/// never readable by others, not even briefly) and synced before it is moved into place.
/// With `overwrite` false the final step is a hard link, which fails atomically if `path`
/// exists.
pub(crate) fn write_new(path: &Path, contents: &[u8], mode: u32, overwrite: bool) -> Result<(), CertError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    static NEXT_TMP: AtomicU64 = AtomicU64::new(0);
    let unique = NEXT_TMP.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{file_name}.tmp-{}-{unique}", std::process::id()));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| CertError::io(&tmp, e))?;
        file.write_all(contents).map_err(|e| CertError::io(&tmp, e))?;
        file.sync_all().map_err(|e| CertError::io(&tmp, e))?;
        if overwrite {
            fs::rename(&tmp, path).map_err(|e| CertError::io(path, e))
        } else {
            fs::hard_link(&tmp, path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    CertError::AlreadyExists { path: path.to_owned() }
                } else {
                    CertError::io(path, e)
                }
            })
        }
    })();
    // After a rename the temporary name is gone already; otherwise remove it.
    let _ = fs::remove_file(&tmp);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn private_keys_are_written_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        let node = issue_node(dir.path(), NodeId(1), &["127.0.0.1".into()]).unwrap();
        let pd = issue_pd(dir.path(), &["localhost".into()]).unwrap();
        let client = issue_client(dir.path(), "app").unwrap();
        for key in [dir.path().join(CA_KEY), node.key, pd.key, client.key] {
            assert_eq!(mode(&key), 0o600, "{}", key.display());
        }
        assert_eq!(mode(&node.cert), 0o644);
    }

    #[test]
    fn reissuing_keeps_key_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        let first = issue_client(dir.path(), "app").unwrap();
        fs::set_permissions(&first.key, fs::Permissions::from_mode(0o644)).unwrap();
        let second = issue_client(dir.path(), "app").unwrap();
        assert_eq!(mode(&second.key), 0o600);
    }

    #[test]
    fn init_ca_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        let before = fs::read(dir.path().join(CA_CERT)).unwrap();
        assert!(matches!(init_ca(dir.path()), Err(CertError::AlreadyExists { .. })));
        assert_eq!(fs::read(dir.path().join(CA_CERT)).unwrap(), before);

        // A lone key is not overwritten either.
        let other = tempfile::tempdir().unwrap();
        fs::write(other.path().join(CA_KEY), b"precious").unwrap();
        assert!(matches!(init_ca(other.path()), Err(CertError::AlreadyExists { .. })));
        assert_eq!(fs::read(other.path().join(CA_KEY)).unwrap(), b"precious");
    }

    #[test]
    fn issuing_without_a_ca_fails() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(issue_pd(dir.path(), &[]), Err(CertError::Io { .. })));
    }

    #[test]
    fn invalid_names_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        assert!(matches!(issue_client(dir.path(), "../evil"), Err(CertError::InvalidName { .. })));
        assert!(matches!(issue_client(dir.path(), ""), Err(CertError::InvalidName { .. })));
        assert!(matches!(issue_node(dir.path(), NodeId(1), &["bad host".into()]), Err(CertError::InvalidName { .. })));
    }

    #[test]
    fn ensure_dev_certs_only_creates_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        ensure_dev_certs(&certs, &[NodeId(1), NodeId(2)]).unwrap();
        let ca = fs::read(certs.join(CA_CERT)).unwrap();
        let node1 = fs::read(TlsFiles::node(&certs, NodeId(1)).cert).unwrap();
        let pd = fs::read(TlsFiles::pd(&certs).cert).unwrap();
        assert!(TlsFiles::client(&certs, DEV_CLIENT).key.exists());

        // Remove one node's certificate and add a node: only those two are (re)created.
        fs::remove_file(TlsFiles::node(&certs, NodeId(2)).cert).unwrap();
        fs::remove_file(TlsFiles::node(&certs, NodeId(2)).key).unwrap();
        ensure_dev_certs(&certs, &[NodeId(1), NodeId(2), NodeId(3)]).unwrap();
        assert_eq!(fs::read(certs.join(CA_CERT)).unwrap(), ca);
        assert_eq!(fs::read(TlsFiles::node(&certs, NodeId(1)).cert).unwrap(), node1);
        assert_eq!(fs::read(TlsFiles::pd(&certs).cert).unwrap(), pd);
        for id in [2, 3] {
            let files = TlsFiles::node(&certs, NodeId(id));
            assert!(files.cert.exists() && files.key.exists());
        }
    }

    #[test]
    fn ensure_dev_certs_refuses_half_pairs() {
        let dir = tempfile::tempdir().unwrap();
        ensure_dev_certs(dir.path(), &[NodeId(1)]).unwrap();
        fs::remove_file(TlsFiles::node(dir.path(), NodeId(1)).key).unwrap();
        assert!(matches!(ensure_dev_certs(dir.path(), &[NodeId(1)]), Err(CertError::IncompletePair { .. })));
    }
}
