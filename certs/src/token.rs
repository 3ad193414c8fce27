//! Scoped tokens: signing (`tessera token create`) and verification (nodes and PD).
//!
//! The cluster signing key is an Ed25519 key made next to the CA: `token-signing.pk8`
//! (PKCS#8, mode 0600, held by whoever issues tokens) and `token-signing.pub` (the raw
//! public key, base64; nodes and PD verify with it). The token format and the rules a token
//! imposes are in [`tessera_wire::token`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use tessera_wire::token::{Ops, TokenClaims, MAX_TOKEN_LEN, SIGNING_CONTEXT, TOKEN_PREFIX};
use tessera_wire::Error;

use crate::issue::{write_new, KEY_MODE};
use crate::CertError;

/// The private signing key, in the CA directory.
pub const TOKEN_SIGNING_KEY: &str = "token-signing.pk8";
/// The public verification key, in the CA directory.
pub const TOKEN_VERIFY_KEY: &str = "token-signing.pub";
/// Longest lifetime `create_token` accepts: tokens are meant to be short-lived.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Creates the signing key pair in `dir` unless it exists; returns whether it was created.
pub fn ensure_token_key(dir: &Path) -> Result<bool, CertError> {
    let private = dir.join(TOKEN_SIGNING_KEY);
    let public = dir.join(TOKEN_VERIFY_KEY);
    if private.exists() && public.exists() {
        return Ok(false);
    }
    if private.exists() != public.exists() {
        let (present, missing) = if private.exists() { (private, public) } else { (public, private) };
        return Err(CertError::IncompletePair { present, missing });
    }
    let rng = SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| CertError::generate("Ed25519 key generation"))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| CertError::generate("Ed25519 key parse"))?;
    let public_text = format!("{}\n", URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()));
    write_new(&private, pkcs8.as_ref(), KEY_MODE, false)?;
    write_new(&public, public_text.as_bytes(), 0o644, false)?;
    tracing::info!(dir = %dir.display(), "created the token signing key");
    Ok(true)
}

/// What to put in a new token.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    /// Key prefix (empty: every key).
    pub prefix: Vec<u8>,
    /// Allowed operations.
    pub ops: Ops,
    /// Lifetime.
    pub ttl: Duration,
    /// Label.
    pub name: String,
}

/// Signs a new token with the key in `dir`. Returns the token string and its claims.
pub fn create_token(dir: &Path, spec: &TokenSpec) -> Result<(String, TokenClaims), CertError> {
    if spec.ttl.is_zero() || spec.ttl > MAX_TOKEN_TTL {
        return Err(CertError::generate(format!("token lifetime must be between 1 s and {} days", 366)));
    }
    if !spec.ops.read && !spec.ops.write {
        return Err(CertError::generate("a token must allow read, write or both"));
    }
    let path = dir.join(TOKEN_SIGNING_KEY);
    let pkcs8 = std::fs::read(&path).map_err(|e| CertError::io(&path, e))?;
    let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
        .map_err(|_| CertError::Pem { path: path.clone(), reason: "not an Ed25519 PKCS#8 key".into() })?;
    let mut id = [0u8; 8];
    SystemRandom::new().fill(&mut id).map_err(|_| CertError::generate("no OS randomness"))?;
    let now = unix_now();
    let claims = TokenClaims {
        id: u64::from_be_bytes(id),
        name: spec.name.clone(),
        prefix: spec.prefix.clone(),
        ops: spec.ops,
        issued_at: now,
        expires_at: now.saturating_add(spec.ttl.as_secs().max(1)),
    };
    Ok((sign(&pair, &claims)?, claims))
}

/// Signs arbitrary `claims` with the key in `dir`, with no check of their lifetime or
/// operations: for tests and tools that need tokens `create_token` refuses to make (one
/// expired already, say).
pub fn sign_claims(dir: &Path, claims: &TokenClaims) -> Result<String, CertError> {
    let path = dir.join(TOKEN_SIGNING_KEY);
    let pkcs8 = std::fs::read(&path).map_err(|e| CertError::io(&path, e))?;
    let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
        .map_err(|_| CertError::Pem { path: path.clone(), reason: "not an Ed25519 PKCS#8 key".into() })?;
    sign(&pair, claims)
}

fn sign(pair: &Ed25519KeyPair, claims: &TokenClaims) -> Result<String, CertError> {
    let body = postcard::to_allocvec(claims).map_err(CertError::generate)?;
    let mut signed = SIGNING_CONTEXT.to_vec();
    signed.extend_from_slice(&body);
    let signature = pair.sign(&signed);
    Ok(format!("{TOKEN_PREFIX}{}.{}", URL_SAFE_NO_PAD.encode(&body), URL_SAFE_NO_PAD.encode(signature.as_ref())))
}

/// Token ids revoked through PD. Shared by a node's (or PD's) authenticator and services;
/// PD's list reaches nodes with heartbeat answers.
#[derive(Debug, Clone, Default)]
pub struct Revocations {
    ids: Arc<RwLock<HashSet<u64>>>,
}

impl Revocations {
    /// True when token `id` is revoked.
    pub fn is_revoked(&self, id: u64) -> bool {
        self.ids.read().unwrap_or_else(|p| p.into_inner()).contains(&id)
    }

    /// Replaces the set with `ids` (PD's full list).
    pub fn replace(&self, ids: impl IntoIterator<Item = u64>) {
        *self.ids.write().unwrap_or_else(|p| p.into_inner()) = ids.into_iter().collect();
    }

    /// Adds one id.
    pub fn insert(&self, id: u64) {
        self.ids.write().unwrap_or_else(|p| p.into_inner()).insert(id);
    }

    /// Every revoked id, sorted.
    pub fn ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.ids.read().unwrap_or_else(|p| p.into_inner()).iter().copied().collect();
        ids.sort_unstable();
        ids
    }
}

/// Checks tokens against the cluster's public key, expiry and revocations.
#[derive(Debug, Clone)]
pub struct TokenVerifier {
    public_key: Vec<u8>,
    revoked: Revocations,
}

impl TokenVerifier {
    /// A verifier for the raw Ed25519 `public_key`.
    pub fn new(public_key: Vec<u8>, revoked: Revocations) -> Self {
        TokenVerifier { public_key, revoked }
    }

    /// Loads `token-signing.pub` from `dir`; `Ok(None)` when the cluster has no signing key.
    pub fn load(dir: &Path, revoked: Revocations) -> Result<Option<Self>, CertError> {
        let path: PathBuf = dir.join(TOKEN_VERIFY_KEY);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CertError::io(&path, e)),
        };
        let key = URL_SAFE_NO_PAD
            .decode(text.trim())
            .ok()
            .filter(|k| k.len() == 32)
            .ok_or_else(|| CertError::Pem { path, reason: "not a base64 Ed25519 public key".into() })?;
        Ok(Some(TokenVerifier::new(key, revoked)))
    }

    /// The revocation set this verifier consults.
    pub fn revocations(&self) -> &Revocations {
        &self.revoked
    }

    /// Verifies `token` at `now` (seconds since the Unix epoch): format, signature, expiry
    /// and revocation. Errors are `Unauthenticated` with the reason.
    pub fn verify(&self, token: &str, now: u64) -> Result<TokenClaims, Error> {
        let bad = |reason: &str| Error::Unauthenticated { reason: format!("invalid token: {reason}") };
        if token.len() > MAX_TOKEN_LEN {
            return Err(bad("too long"));
        }
        let rest = token.strip_prefix(TOKEN_PREFIX).ok_or_else(|| bad("not a tst1 token"))?;
        let (body, signature) = rest.split_once('.').ok_or_else(|| bad("missing signature"))?;
        let body = URL_SAFE_NO_PAD.decode(body).map_err(|_| bad("claims are not base64url"))?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| bad("signature is not base64url"))?;
        let mut signed = SIGNING_CONTEXT.to_vec();
        signed.extend_from_slice(&body);
        UnparsedPublicKey::new(&ED25519, &self.public_key)
            .verify(&signed, &signature)
            .map_err(|_| bad("signature does not match the cluster's signing key"))?;
        let claims: TokenClaims = postcard::from_bytes(&body).map_err(|_| bad("malformed claims"))?;
        self.check_live(&claims, now)?;
        Ok(claims)
    }

    /// Expiry and revocation of already verified claims: run on every request, since a
    /// connection outlives both.
    pub fn check_live(&self, claims: &TokenClaims, now: u64) -> Result<(), Error> {
        claims.check_time(now)?;
        if self.revoked.is_revoked(claims.id) {
            return Err(Error::Unauthenticated { reason: format!("token {:016x} was revoked", claims.id) });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, TokenVerifier) {
        let dir = tempfile::tempdir().unwrap();
        assert!(ensure_token_key(dir.path()).unwrap());
        assert!(!ensure_token_key(dir.path()).unwrap(), "an existing key is kept");
        let verifier = TokenVerifier::load(dir.path(), Revocations::default()).unwrap().unwrap();
        (dir, verifier)
    }

    fn spec() -> TokenSpec {
        TokenSpec {
            prefix: b"app/".to_vec(),
            ops: Ops { read: true, write: false },
            ttl: Duration::from_secs(3600),
            name: "web".into(),
        }
    }

    #[test]
    fn a_created_token_verifies_with_its_claims() {
        let (dir, verifier) = setup();
        let (token, claims) = create_token(dir.path(), &spec()).unwrap();
        assert!(token.starts_with(TOKEN_PREFIX));
        assert_eq!(verifier.verify(&token, unix_now()).unwrap(), claims);
        assert_eq!(claims.prefix, b"app/");
        assert_eq!(claims.expires_at - claims.issued_at, 3600);
    }

    #[test]
    fn expired_tampered_foreign_and_revoked_tokens_are_refused() {
        let (dir, verifier) = setup();
        let (token, claims) = create_token(dir.path(), &spec()).unwrap();
        let unauthenticated = |r: Result<TokenClaims, Error>| matches!(r, Err(Error::Unauthenticated { .. }));
        assert!(unauthenticated(verifier.verify(&token, claims.expires_at)), "expired");

        // Widen the prefix in the claims and keep the old signature.
        let mut wider = claims.clone();
        wider.prefix.clear();
        let body = URL_SAFE_NO_PAD.encode(postcard::to_allocvec(&wider).unwrap());
        let signature = token.rsplit('.').next().unwrap();
        let tampered = format!("{TOKEN_PREFIX}{body}.{signature}");
        assert!(unauthenticated(verifier.verify(&tampered, unix_now())), "tampered");

        let other = tempfile::tempdir().unwrap();
        ensure_token_key(other.path()).unwrap();
        let (foreign, _) = create_token(other.path(), &spec()).unwrap();
        assert!(unauthenticated(verifier.verify(&foreign, unix_now())), "signed by another cluster");

        for garbage in ["", "tst1.", "tst1.abc", "tst1.!!!.???", "bearer xyz"] {
            assert!(unauthenticated(verifier.verify(garbage, unix_now())), "{garbage:?}");
        }

        verifier.revocations().insert(claims.id);
        assert!(unauthenticated(verifier.verify(&token, unix_now())), "revoked");
    }

    #[test]
    fn lifetimes_and_operations_are_validated() {
        let (dir, _) = setup();
        let zero = TokenSpec { ttl: Duration::ZERO, ..spec() };
        assert!(create_token(dir.path(), &zero).is_err());
        let none = TokenSpec { ops: Ops { read: false, write: false }, ..spec() };
        assert!(create_token(dir.path(), &none).is_err());
    }

    #[test]
    fn a_missing_key_means_no_tokens() {
        let dir = tempfile::tempdir().unwrap();
        assert!(TokenVerifier::load(dir.path(), Revocations::default()).unwrap().is_none());
        assert!(create_token(dir.path(), &spec()).is_err());
    }
}
