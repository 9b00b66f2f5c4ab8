//! A minimal HTTP/1.1 GET for image downloads: one request per connection, over TCP or
//! over the unit's rustls config (which trusts the fleet CA only), the body streamed,
//! with a connect timeout and a timeout on every read.
//!
//! Written on hyper, which the tree already carries for its servers, instead of a full
//! client: the download needs none of a browser-grade client's features (redirects,
//! cookies, proxies, connection pools, IDNA host names), and leaving them out keeps the
//! shipped binary inside its size budget. Redirects are answered as errors: the fleet
//! never sends one, and a signed image needs no second origin.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::Uri;
use hyper::body::Incoming;
use hyper::header::{CONTENT_RANGE, HOST, RANGE, USER_AGENT};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Why a GET failed, in words for the operator's log (the caller adds the URL).
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error("not a valid URL: {0}")]
    Url(String),
    #[error("scheme {0:?} is not supported (http or https)")]
    Scheme(String),
    #[error("https needs a trusted CA and the unit passed none")]
    NoTls,
    #[error("no connection within {0:?}")]
    ConnectTimeout(Duration),
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("HTTP: {0}")]
    Http(hyper::Error),
    #[error("no data for {0:?}")]
    ReadTimeout(Duration),
}

/// Fetches one URL per call; cheap to clone.
#[derive(Debug, Clone)]
pub struct HttpGetter {
    tls: Option<Arc<rustls::ClientConfig>>,
    connect_timeout: Duration,
    read_timeout: Duration,
}

/// An answer whose body is read chunk by chunk.
pub struct Response {
    status: u16,
    content_range: Option<String>,
    body: Incoming,
    read_timeout: Duration,
}

impl HttpGetter {
    /// `tls`: the client config for `https://` URLs; `None` refuses them.
    pub fn new(
        tls: Option<rustls::ClientConfig>,
        connect_timeout: Duration,
        read_timeout: Duration,
    ) -> Self {
        Self {
            tls: tls.map(Arc::new),
            connect_timeout,
            read_timeout,
        }
    }

    /// GET `url`, asking for the bytes from `range_from` on when it is not zero.
    pub async fn get(&self, url: &str, range_from: u64) -> Result<Response, GetError> {
        let uri: Uri = url
            .parse()
            .map_err(|error| GetError::Url(format!("{error}")))?;
        let secure = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            other => return Err(GetError::Scheme(other.unwrap_or_default().to_owned())),
        };
        let connector = match (&self.tls, secure) {
            (Some(config), true) => Some(tokio_rustls::TlsConnector::from(Arc::clone(config))),
            (None, true) => return Err(GetError::NoTls),
            (_, false) => None,
        };
        let authority = uri
            .authority()
            .ok_or_else(|| GetError::Url("no host".into()))?
            .clone();
        if authority.as_str().contains('@') {
            return Err(GetError::Url(
                "credentials in the URL are not supported".into(),
            ));
        }
        // `Uri::host` keeps an IPv6 literal's brackets; sockets and TLS names want it bare.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority
            .port_u16()
            .unwrap_or(if secure { 443 } else { 80 });
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect((&*host, port)))
            .await
            .map_err(|_| GetError::ConnectTimeout(self.connect_timeout))?
            .map_err(GetError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let mut request = hyper::Request::get(
            uri.path_and_query()
                .map_or("/", |path_and_query| path_and_query.as_str()),
        )
        .header(HOST, authority.as_str())
        .header(
            USER_AGENT,
            concat!("warden-update/", env!("CARGO_PKG_VERSION")),
        );
        if range_from > 0 {
            request = request.header(RANGE, format!("bytes={range_from}-"));
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|error| GetError::Url(error.to_string()))?;
        if let Some(connector) = connector {
            let name = ServerName::try_from(host)
                .map_err(|error| GetError::Url(format!("host name: {error}")))?;
            let tls = tokio::time::timeout(self.connect_timeout, connector.connect(name, tcp))
                .await
                .map_err(|_| GetError::ConnectTimeout(self.connect_timeout))?
                .map_err(GetError::Tls)?;
            self.send(tls, request).await
        } else {
            self.send(tcp, request).await
        }
    }

    async fn send<S>(
        &self,
        stream: S,
        request: hyper::Request<Empty<Bytes>>,
    ) -> Result<Response, GetError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(GetError::Http)?;
        // The connection task ends when the body is read or dropped.
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "download connection ended");
            }
        });
        let response = tokio::time::timeout(self.read_timeout, sender.send_request(request))
            .await
            .map_err(|_| GetError::ReadTimeout(self.read_timeout))?
            .map_err(GetError::Http)?;
        let content_range = response
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        Ok(Response {
            status: response.status().as_u16(),
            content_range,
            body: response.into_body(),
            read_timeout: self.read_timeout,
        })
    }
}

impl Response {
    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The `Content-Range` header, when the server sent a readable one.
    pub fn content_range(&self) -> Option<&str> {
        self.content_range.as_deref()
    }

    /// The next piece of the body; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, GetError> {
        loop {
            let frame = tokio::time::timeout(self.read_timeout, self.body.frame())
                .await
                .map_err(|_| GetError::ReadTimeout(self.read_timeout))?;
            match frame {
                None => return Ok(None),
                Some(Err(error)) => return Err(GetError::Http(error)),
                // Trailers carry nothing a download needs.
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn getter() -> HttpGetter {
        HttpGetter::new(None, Duration::from_secs(1), Duration::from_secs(1))
    }

    #[tokio::test]
    async fn only_http_and_https_urls_without_credentials_are_fetched() {
        for (url, expected) in [
            ("ftp://fleet.example/image.wim", "scheme \"ftp\""),
            ("/images/1.wim", "scheme \"\""),
            ("http://user:secret@fleet.example/image.wim", "credentials"),
            ("http://fleet example/", "not a valid URL"),
            ("https://fleet.example/image.wim", "needs a trusted CA"),
        ] {
            let error = getter().get(url, 0).await.err().expect(url);
            assert!(error.to_string().contains(expected), "{url}: {error}");
        }
    }

    #[tokio::test]
    async fn a_silent_server_times_out_instead_of_hanging() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let _silent = tokio::spawn(async move {
            let (_stream, _) = listener.accept().await.expect("accept");
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let error = getter()
            .get(&format!("http://{address}/image.wim"), 0)
            .await
            .err()
            .expect("no answer");
        assert!(matches!(error, GetError::ReadTimeout(_)), "{error}");
    }
}
