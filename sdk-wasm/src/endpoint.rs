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
    fn node_urls_keep_the_scheme() {
        assert_eq!(url("10.0.0.1:9000", false), "ws://10.0.0.1:9000");
        assert_eq!(url("10.0.0.1:9000", true), "wss://10.0.0.1:9000");
    }
}
