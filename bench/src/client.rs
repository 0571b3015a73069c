//! One keep-alive HTTP/1.1 client connection of the load generator.
//!
//! A [`Target`] is parsed once (host, port, path, headers, body) and turned
//! into a request per send with only reference-count clones of its parts; a
//! [`Connection`] wraps hyper's low-level `http1` client handshake over a
//! `TCP_NODELAY` socket and sends one request at a time, draining the answer
//! frame by frame without collecting it (unless an error body is wanted), or
//! handing each frame to a callback as it arrives (streamed answers).

use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// At most this much of an error body is kept for diagnosis.
const ERROR_BODY_LIMIT: usize = 4096;

/// Where and what to send.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL as given.
    pub url: String,
    host: String,
    port: u16,
    path: Uri,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
}

impl Target {
    /// Parses an `http://` URL; a body makes the request a JSON `POST`,
    /// otherwise it is a `GET`. `headers` are extra `Name: value` lines.
    pub fn new(url: &str, body: Option<Bytes>, headers: &[String]) -> anyhow::Result<Self> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("invalid URL {url:?}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                bail!("unsupported scheme {other:?} in {url:?}: only http:// is supported")
            }
            None => bail!("URL {url:?} has no scheme: write http://HOST:PORT/PATH"),
        }
        let authority = uri
            .authority()
            .with_context(|| format!("URL {url:?} has no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(80);
        let path: Uri = uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .with_context(|| format!("invalid path in {url:?}"))?;
        let mut map = HeaderMap::new();
        map.insert(HOST, HeaderValue::from_str(authority.as_str())?);
        let method = if body.is_some() {
            map.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Method::POST
        } else {
            Method::GET
        };
        for line in headers {
            let (name, value) = line
                .split_once(':')
                .with_context(|| format!("header {line:?} is not `Name: value`"))?;
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .with_context(|| format!("invalid header name in {line:?}"))?;
            let value = HeaderValue::from_str(value.trim())
                .with_context(|| format!("invalid header value in {line:?}"))?;
            map.insert(name, value);
        }
        Ok(Self {
            url: url.to_owned(),
            host,
            port,
            path,
            method,
            headers: map,
            body: body.unwrap_or_default(),
        })
    }

    /// The same host and port with another path, as a `GET` (health checks).
    pub fn get(&self, path: &str) -> anyhow::Result<Self> {
        let mut target = self.clone();
        target.path = path
            .parse()
            .with_context(|| format!("invalid path {path:?}"))?;
        target.method = Method::GET;
        target.headers.remove(CONTENT_TYPE);
        target.body = Bytes::new();
        Ok(target)
    }

    fn request(&self) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.path.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// Why a request failed.
#[derive(Debug)]
pub enum RequestError {
    /// The answer did not come within the per-request timeout.
    Timeout,
    /// Sending or reading failed; the connection is unusable.
    Io(hyper::Error),
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout => f.write_str("request timed out"),
            Self::Io(err) => write!(f, "I/O error: {err}"),
        }
    }
}

/// A completed exchange: the status and, when asked for on a non-2xx
/// answer, the start of its body.
#[derive(Debug)]
pub struct Answer {
    /// Response status.
    pub status: StatusCode,
    /// Up to 4 KiB of a non-2xx body, when it was asked for.
    pub error_body: Option<Bytes>,
}

/// One keep-alive HTTP/1.1 connection.
#[derive(Debug)]
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
}

impl Connection {
    /// Connects (with `TCP_NODELAY`) and performs the HTTP/1.1 handshake;
    /// the connection's I/O runs in its own task.
    pub async fn open(target: &Target) -> anyhow::Result<Self> {
        let stream = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .with_context(|| format!("cannot connect to {}:{}", target.host, target.port))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // The error, if any, surfaces on the next send.
            let _ = conn.await;
        });
        Ok(Self { sender })
    }

    /// Sends one request and reads the whole answer, within `timeout`.
    /// With `want_error_body`, the start of a non-2xx body is returned.
    pub async fn send(
        &mut self,
        target: &Target,
        timeout: Duration,
        want_error_body: bool,
    ) -> Result<Answer, RequestError> {
        match tokio::time::timeout(timeout, self.exchange(target, want_error_body)).await {
            Ok(result) => result.map_err(RequestError::Io),
            Err(_) => Err(RequestError::Timeout),
        }
    }

    /// Sends one request, drains its body and returns the status and the
    /// response headers (for scenarios that read the gateway's headers).
    pub async fn send_headers(
        &mut self,
        target: &Target,
        timeout: Duration,
    ) -> Result<(StatusCode, HeaderMap), RequestError> {
        let work = async {
            self.sender.ready().await?;
            let resp = self.sender.send_request(target.request()).await?;
            let (parts, mut body) = resp.into_parts();
            while let Some(frame) = body.frame().await {
                frame?;
            }
            Ok::<_, hyper::Error>((parts.status, parts.headers))
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => result.map_err(RequestError::Io),
            Err(_) => Err(RequestError::Timeout),
        }
    }

    /// Sends one request and hands every data frame of the answer, whatever
    /// its status, to `on_data` as it arrives (for streamed answers, where
    /// the arrival times matter); returns the status once the body has
    /// ended. There is no timeout here: wrap the call in one.
    pub async fn stream(
        &mut self,
        target: &Target,
        mut on_data: impl FnMut(&[u8]),
    ) -> Result<StatusCode, hyper::Error> {
        self.sender.ready().await?;
        let resp = self.sender.send_request(target.request()).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame?.data_ref() {
                on_data(data);
            }
        }
        Ok(status)
    }

    async fn exchange(
        &mut self,
        target: &Target,
        want_error_body: bool,
    ) -> Result<Answer, hyper::Error> {
        self.sender.ready().await?;
        let resp = self.sender.send_request(target.request()).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        let keep = want_error_body && !status.is_success();
        let mut kept = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            if keep && let Some(data) = frame.data_ref() {
                let room = ERROR_BODY_LIMIT.saturating_sub(kept.len());
                kept.extend_from_slice(&data[..data.len().min(room)]);
            }
        }
        Ok(Answer {
            status,
            error_body: keep.then(|| kept.freeze()),
        })
    }
}

/// Sends one request on a fresh connection and returns the status and the
/// whole body (capped at 4 KiB) whatever the status: for probes and health
/// checks, not for load.
pub async fn probe(target: &Target, timeout: Duration) -> anyhow::Result<(StatusCode, Bytes)> {
    fetch(target, timeout, ERROR_BODY_LIMIT).await
}

/// Like [`probe`], with the body capped at `limit` bytes instead (for
/// answers larger than an error, such as `/metrics`).
pub async fn fetch(
    target: &Target,
    timeout: Duration,
    limit: usize,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let work = async {
        let mut conn = Connection::open(target).await?;
        conn.sender.ready().await?;
        let resp = conn.sender.send_request(target.request()).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body.slice(..body.len().min(limit))))
    };
    tokio::time::timeout(timeout, work)
        .await
        .with_context(|| format!("no answer from {} within {timeout:?}", target.url))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        let t = Target::new(
            "http://127.0.0.1:8080/v1/chat/completions?x=1",
            Some(Bytes::from_static(b"{}")),
            &[],
        )
        .unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 8080));
        assert_eq!(t.path, "/v1/chat/completions?x=1");
        assert_eq!(t.method, Method::POST);
        assert_eq!(t.headers[HOST], "127.0.0.1:8080");
        assert_eq!(t.headers[CONTENT_TYPE], "application/json");

        let t = Target::new(
            "http://localhost",
            None,
            &["Authorization: Bearer k".to_owned()],
        )
        .unwrap();
        assert_eq!((t.host.as_str(), t.port), ("localhost", 80));
        assert_eq!(t.path, "/");
        assert_eq!(t.method, Method::GET);
        assert_eq!(t.headers["authorization"], "Bearer k");

        let h = t.get("/health").unwrap();
        assert_eq!(h.path, "/health");
        assert!(h.body.is_empty());

        assert!(Target::new("https://example.com/", None, &[]).is_err());
        assert!(Target::new("127.0.0.1:80/x", None, &[]).is_err());
        assert!(Target::new("http://h/", None, &["no-colon".to_owned()]).is_err());
    }
}
