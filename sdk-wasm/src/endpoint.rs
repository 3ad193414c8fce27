//! Where a web client connects: PD endpoints given as URLs (`ws://host:port`,
//! `wss://host:port`) or bare `host:port`, and the WebSocket URL of a node, whose QUIC
//! address PD publishes (nodes listen for WebSocket on the same port number).

/// A parsed endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port`, as the routing table names nodes.
    pub addr: String,
    /// `wss://` (TLS) rather than `ws://`.
    pub secure: bool,
}

/// Parses `ws://host:port`, `wss://host:port` or `host:port` (a trailing `/` is allowed).
pub fn parse(text: &str) -> Result<Endpoint, String> {
    let trimmed = text.trim().trim_end_matches('/');
    let (rest, secure) = if let Some(rest) = trimmed.strip_prefix("wss://") {
        (rest, true)
    } else if let Some(rest) = trimmed.strip_prefix("ws://") {
        (rest, false)
    } else if trimmed.contains("://") {
        return Err(format!("endpoint {text:?}: only ws:// and wss:// URLs are supported"));
    } else {
        (trimmed, false)
    };
    match rest.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok() => {
            Ok(Endpoint { addr: rest.to_string(), secure })
        }
        _ => Err(format!("endpoint {text:?} is not ws://host:port")),
    }
}

/// Parses a WebTransport URL, `https://host:port/`, into `host:port`.
pub fn parse_webtransport(text: &str) -> Result<String, String> {
    let rest = text
        .trim()
        .trim_end_matches('/')
        .strip_prefix("https://")
        .ok_or_else(|| format!("WebTransport URL {text:?} is not https://host:port"))?;
    parse(rest).map(|e| e.addr).map_err(|_| format!("WebTransport URL {text:?} is not https://host:port"))
}

/// Parses a certificate hash given as 64 hex digits (as `web.json` lists them).
pub fn parse_hash(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim();
    let bad = || format!("certificate hash {text:?} is not 64 hex digits");
    if text.len() != 64 || !text.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// The WebSocket URL of `addr` (`host:port`).
pub fn url(addr: &str, secure: bool) -> String {
    format!("{}://{addr}", if secure { "wss" } else { "ws" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_bare_addresses_parse() {
        assert_eq!(parse("ws://127.0.0.1:7379").unwrap(), Endpoint { addr: "127.0.0.1:7379".into(), secure: false });
        assert_eq!(parse("wss://db.example:443/").unwrap(), Endpoint { addr: "db.example:443".into(), secure: true });
        assert_eq!(parse("[::1]:80").unwrap(), Endpoint { addr: "[::1]:80".into(), secure: false });
        for bad in ["", "http://a:1", "ws://a", "ws://:1", "ws://a:99999", "ws://a:1/path"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn webtransport_urls_and_hashes_parse() {
        assert_eq!(parse_webtransport("https://127.0.0.1:7379/").unwrap(), "127.0.0.1:7379");
        assert!(parse_webtransport("ws://127.0.0.1:7379").is_err());
        let hex = "00ff".repeat(16);
        assert_eq!(parse_hash(&hex).unwrap()[..2], [0x00, 0xff]);
        assert!(parse_hash("abc").is_err());
        assert!(parse_hash(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn node_urls_keep_the_scheme() {
        assert_eq!(url("10.0.0.1:9000", false), "ws://10.0.0.1:9000");
        assert_eq!(url("10.0.0.1:9000", true), "wss://10.0.0.1:9000");
    }
}
