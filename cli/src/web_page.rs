//! `tessera dev --web`: a small page served over plain HTTP on loopback (a secure context
//! for browsers), built on the JavaScript SDK: the cluster's nodes and regions, live, and a
//! key browser. It reaches the cluster the way any web client does, over WebSocket with
//! the dev token from `web.json`.
//!
//! The server answers GET for a fixed list of files from the `sdk-wasm/` directory of the
//! source tree (the page, the package, the wasm) and `web.json`; nothing else.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Served paths: URL path, file under the package directory, content type.
const FILES: [(&str, &str, &str); 5] = [
    ("/", "web/index.html", "text/html; charset=utf-8"),
    ("/app.js", "web/app.js", "text/javascript; charset=utf-8"),
    ("/js/index.js", "js/index.js", "text/javascript; charset=utf-8"),
    ("/pkg/tessera.js", "pkg/tessera.js", "text/javascript; charset=utf-8"),
    ("/pkg/tessera_bg.wasm", "pkg/tessera_bg.wasm", "application/wasm"),
];

/// The `sdk-wasm/` directory: `explicit`, else the source tree this binary was built from,
/// else `./sdk-wasm`. It must hold a built package (`npm run build`).
pub fn package_dir(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let candidates: Vec<PathBuf> = match explicit {
        Some(dir) => vec![dir.to_path_buf()],
        None => vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk-wasm"), PathBuf::from("sdk-wasm")],
    };
    for dir in &candidates {
        if dir.join("web/index.html").is_file() {
            if !dir.join("pkg/tessera_bg.wasm").is_file() {
                bail!(
                    "{} has no built package: run `cd {} && npm ci && npm run build` first",
                    dir.display(),
                    dir.display()
                );
            }
            return Ok(dir.clone());
        }
    }
    bail!("the JavaScript SDK directory (sdk-wasm/) was not found; give it with --web-root")
}

/// Serves the page on `addr` until the task is dropped; returns the bound address.
pub async fn serve(addr: SocketAddr, package: PathBuf, web_json: PathBuf) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await.with_context(|| format!("binding the web page on {addr}"))?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let (package, web_json) = (package.clone(), web_json.clone());
            tokio::spawn(async move {
                if let Err(error) = answer(stream, &package, &web_json).await {
                    tracing::debug!(%error, "web page request failed");
                }
            });
        }
    });
    Ok(local)
}

async fn answer(mut stream: TcpStream, package: &Path, web_json: &Path) -> anyhow::Result<()> {
    // Requests are tiny: the request line and headers fit 8 KiB, or the request is refused.
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        if len == buf.len() {
            return respond(&mut stream, "431 Request Header Fields Too Large", "text/plain", b"too large").await;
        }
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok(());
        }
        len += n;
    }
    let request = String::from_utf8_lossy(&buf[..len]);
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" {
        return respond(&mut stream, "405 Method Not Allowed", "text/plain", b"GET only").await;
    }
    if path == "/favicon.ico" {
        return respond(&mut stream, "204 No Content", "text/plain", b"").await;
    }
    let file = if path == "/web.json" {
        Some((web_json.to_path_buf(), "application/json"))
    } else {
        FILES.iter().find(|(p, _, _)| *p == path).map(|(_, f, t)| (package.join(f), *t))
    };
    match file {
        Some((file, content_type)) => match tokio::fs::read(&file).await {
            Ok(body) => respond(&mut stream, "200 OK", content_type, &body).await,
            Err(_) => respond(&mut stream, "404 Not Found", "text/plain", b"not built").await,
        },
        None => respond(&mut stream, "404 Not Found", "text/plain", b"not found").await,
    }
}

async fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &[u8]) -> anyhow::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        // The server may reset a connection whose request it did not read to the end.
        let _ = stream.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn only_the_listed_files_are_served() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("web")).unwrap();
        std::fs::write(dir.path().join("web/index.html"), "<html>page</html>").unwrap();
        std::fs::write(dir.path().join("secret.txt"), "no").unwrap();
        let web_json = dir.path().join("web.json");
        std::fs::write(&web_json, "{\"token\":\"t\"}").unwrap();
        let addr = serve("127.0.0.1:0".parse().unwrap(), dir.path().to_path_buf(), web_json).await.unwrap();

        let page = get(addr, "GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(page.starts_with("HTTP/1.1 200") && page.contains("text/html") && page.ends_with("<html>page</html>"));
        let config = get(addr, "GET /web.json HTTP/1.1\r\n\r\n").await;
        assert!(config.contains("application/json") && config.ends_with("{\"token\":\"t\"}"));
        for path in ["/secret.txt", "/../secret.txt", "/web/../secret.txt", "/pkg/tessera.js"] {
            let answer = get(addr, &format!("GET {path} HTTP/1.1\r\n\r\n")).await;
            assert!(answer.starts_with("HTTP/1.1 404"), "{path}: {answer}");
        }
        assert!(get(addr, "POST / HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 405"));
        let huge = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(10_000));
        assert!(get(addr, &huge).await.starts_with("HTTP/1.1 431"));
    }
}
