//! A minimal HTTP/1.1 (or HTTPS) file server on loopback that honours `Range: bytes=N-`,
//! for the update agent's resume tests.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// Serves `body` at `http://127.0.0.1:PORT/image.wim`. The first response is cut after
/// `cut_first_at` body bytes if set (a dropped download). Returns the URL and the range
/// start of every request, in order.
pub async fn serve(body: Vec<u8>, cut_first_at: Option<usize>) -> (String, Arc<Mutex<Vec<u64>>>) {
    serve_on(body, cut_first_at, None).await
}

/// [`serve`] over HTTPS (rustls, ring: the tree's TLS stack) at
/// `https://localhost:PORT/image.wim`, with a server certificate from a fresh CA.
/// Returns the URL, the range starts, and that CA's certificate (PEM) to trust.
pub async fn serve_https(
    body: Vec<u8>,
    cut_first_at: Option<usize>,
) -> (String, Arc<Mutex<Vec<u64>>>, String) {
    let (ca_pem, config) = tls_server();
    let (url, seen) = serve_on(body, cut_first_at, Some(config)).await;
    (url, seen, ca_pem)
}

/// A CA and a `localhost` server certificate it issued: the CA (PEM) and the config.
fn tls_server() -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "range server test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("server key");
    let params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    let certificate = params.signed_by(&key, &issuer).expect("server certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![certificate.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server config");
    (ca.pem(), Arc::new(config))
}

async fn serve_on(
    body: Vec<u8>,
    cut_first_at: Option<usize>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> (String, Arc<Mutex<Vec<u64>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let url = match tls {
        Some(_) => format!("https://localhost:{port}/image.wim"),
        None => format!("http://127.0.0.1:{port}/image.wim"),
    };
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((socket, _)) = listener.accept().await {
            // The first answered request is cut (a refused handshake is no request).
            let mut cut = || cut_first_at.filter(|_| std::mem::replace(&mut first, false));
            match &acceptor {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(socket).await {
                        answer(stream, &body, cut(), &log).await;
                    }
                }
                None => answer(socket, &body, cut(), &log).await,
            }
        }
    });
    (url, seen)
}

/// Reads one request's head and answers it from `body` (from its range start), cut
/// after `cut` body bytes if set.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut socket: S,
    body: &[u8],
    cut: Option<usize>,
    log: &Mutex<Vec<u64>>,
) {
    let mut request = Vec::new();
    let mut buffer = [0u8; 1024];
    while !request.windows(4).any(|window| window == b"\r\n\r\n") {
        match socket.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => request.extend_from_slice(&buffer[..read]),
        }
    }
    let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
    let start = text
        .lines()
        .find_map(|line| line.strip_prefix("range: bytes="))
        .and_then(|range| range.split('-').next()?.trim().parse::<usize>().ok())
        .unwrap_or(0)
        .min(body.len());
    log.lock().expect("request log").push(start as u64);
    let head = if start > 0 {
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nConnection: close\r\n\r\n",
            body.len() - start,
            body.len().saturating_sub(1),
            body.len()
        )
    } else {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
    };
    let _ = socket.write_all(head.as_bytes()).await;
    let end = cut.map_or(body.len(), |cut| cut.min(body.len()));
    let _ = socket.write_all(&body[start..end.max(start)]).await;
    let _ = socket.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(url: &str, range_start: Option<usize>) -> (String, Vec<u8>) {
        let address = url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .expect("host:port");
        let mut socket = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        let range = range_start.map_or(String::new(), |start| format!("Range: bytes={start}-\r\n"));
        socket
            .write_all(format!("GET /image.wim HTTP/1.1\r\nHost: x\r\n{range}\r\n").as_bytes())
            .await
            .expect("request");
        let mut response = Vec::new();
        socket.read_to_end(&mut response).await.expect("response");
        let split = response
            .windows(4)
            .position(|window| window == b"\r\n\r\n")
            .expect("head");
        (
            String::from_utf8_lossy(&response[..split]).into_owned(),
            response[split + 4..].to_vec(),
        )
    }

    #[tokio::test]
    async fn cut_first_response_then_resume_from_a_range() {
        let body: Vec<u8> = (0..=255).collect();
        let (url, seen) = serve(body.clone(), Some(100)).await;
        let (head, first) = get(&url, None).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(first, body[..100]);
        let (head, rest) = get(&url, Some(100)).await;
        assert!(head.starts_with("HTTP/1.1 206"), "{head}");
        assert!(head.contains("Content-Range: bytes 100-255/256"), "{head}");
        assert_eq!(rest, body[100..]);
        assert_eq!(*seen.lock().expect("log"), vec![0, 100]);
    }
}
