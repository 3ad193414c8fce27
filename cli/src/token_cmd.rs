//! `tessera token ...`: scoped tokens for web clients.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use tessera_certs::{create_token, TokenSpec, MAX_TOKEN_TTL};
use tessera_wire::token::{Ops, TokenClaims, TOKEN_PREFIX};

use crate::client_cmd::Target;

/// Token commands.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token signed with the cluster's signing key and print it.
    ///
    /// A token lets a client without a certificate (a browser, Node.js, an edge function)
    /// read and/or write the keys that start with PREFIX, until it expires or is revoked.
    Create {
        /// Certificate directory holding the signing key (token-signing.pk8); default: the
        /// dev cluster's, DATA/certs.
        #[arg(long = "dir")]
        dir: Option<PathBuf>,
        /// Key prefix the token is limited to (UTF-8; empty for every key).
        #[arg(long, default_value = "")]
        prefix: String,
        /// Allowed operations: read, write or read,write.
        #[arg(long, default_value = "read")]
        ops: String,
        /// Lifetime: a number with a unit, s, m, h or d (at most 366d).
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// A label shown by `tessera token inspect`.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Revoke a token through PD: nodes refuse it within about a second.
    Revoke {
        /// The token (or its hex id with --id).
        token: Option<String>,
        /// The token's id (hex), when the token itself is lost; kept revoked for 366 days.
        #[arg(long, conflicts_with = "token")]
        id: Option<String>,
    },
    /// Print a token's claims (without checking its signature).
    Inspect {
        /// The token.
        token: String,
    },
}

/// Parses `90s`, `15m`, `1h`, `7d`.
pub fn parse_ttl(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().with_context(|| format!("bad lifetime {text:?}: expected e.g. 30m, 1h, 7d"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("bad lifetime {text:?}: the unit must be s, m, h or d"),
    };
    let ttl = Duration::from_secs(number.saturating_mul(secs));
    if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
        bail!("lifetime {text:?} must be between 1s and 366d");
    }
    Ok(ttl)
}

/// Reads a token's claims without verifying it (for inspect and revoke).
pub fn claims_of(token: &str) -> anyhow::Result<TokenClaims> {
    let body = token
        .trim()
        .strip_prefix(TOKEN_PREFIX)
        .and_then(|rest| rest.split_once('.'))
        .map(|(body, _)| body)
        .context("not a Tessera token (tst1.…)")?;
    let bytes = URL_SAFE_NO_PAD.decode(body).context("the token's claims are not base64url")?;
    postcard::from_bytes(&bytes).context("the token's claims are malformed")
}

/// Runs a token command.
pub async fn run(target: &Target, cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCommand::Create { dir, prefix, ops, ttl, name } => {
            let dir = dir.unwrap_or_else(|| target.data.join("certs"));
            let spec = TokenSpec {
                prefix: prefix.into_bytes(),
                ops: Ops::parse(&ops).map_err(anyhow::Error::msg)?,
                ttl: parse_ttl(&ttl)?,
                name,
            };
            let (token, claims) = create_token(&dir, &spec)
                .with_context(|| format!("creating a token with the signing key in {}", dir.display()))?;
            eprintln!(
                "token {:016x}: {} on prefix {:?}, expires in {}s",
                claims.id,
                claims.ops,
                String::from_utf8_lossy(&claims.prefix),
                claims.expires_at - claims.issued_at
            );
            println!("{token}");
        }
        TokenCommand::Revoke { token, id } => {
            let (id, expires_at) = match (token, id) {
                (Some(token), None) => {
                    let claims = claims_of(&token)?;
                    (claims.id, claims.expires_at)
                }
                (None, Some(id)) => {
                    let id = u64::from_str_radix(id.trim_start_matches("0x"), 16).context("--id must be hex")?;
                    (id, tessera_certs::unix_now() + MAX_TOKEN_TTL.as_secs())
                }
                _ => bail!("give the token, or its id with --id"),
            };
            let client = target.connect().await?;
            client.revoke_token(id, expires_at).await.context("revoking the token")?;
            println!("revoked token {id:016x}");
        }
        TokenCommand::Inspect { token } => {
            let c = claims_of(&token)?;
            println!("id       {:016x}", c.id);
            println!("name     {}", c.name);
            println!("prefix   {:?}", String::from_utf8_lossy(&c.prefix));
            println!("ops      {}", c.ops);
            println!("issued   {} (unix)", c.issued_at);
            println!("expires  {} (unix)", c.expires_at);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_parse_with_units_and_limits() {
        assert_eq!(parse_ttl("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_ttl("7d").unwrap(), Duration::from_secs(7 * 86_400));
        for bad in ["", "h", "10", "5y", "0s", "400d", "-1h"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
