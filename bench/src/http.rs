//! A minimal HTTP/1.1 keep-alive client for the load generator: one request at a time per
//! connection, `Content-Length` bodies only (what both axum and nginx send here), over TCP or
//! TLS (a vehicle's client certificate, its own session cache for resumption). Kept tiny so
//! that the load generator costs the 2-core machine as little CPU as possible.

use std::sync::Arc;

use anyhow::{bail, Context};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A connection's byte stream: TCP, or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One keep-alive connection.
pub(crate) struct Conn {
    addr: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    stream: Option<Box<dyn Io>>,
    buf: Vec<u8>,
    /// Handshakes made, and how many of them resumed a session.
    pub(crate) handshakes: u64,
    pub(crate) resumed: u64,
}

/// A TLS client for `ca_pem` (the fleet CA), with a vehicle's certificate and key (PEM) if
/// given; `resume`: keep sessions for resumption (rustls's in-memory cache, per config).
pub(crate) fn tls_config(
    ca_pem: &[u8],
    identity: Option<(&str, &str)>,
    resume: bool,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem)?)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => builder.with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(cert.as_bytes())?],
            PrivateKeyDer::from_pem_slice(key.as_bytes())?,
        )?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(config))
}

/// A response: status and body.
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
    /// The `ETag` header, if any.
    pub(crate) etag: Option<String>,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl Conn {
    /// A connection to `addr` (`host:port`), opened on first use.
    pub(crate) fn new(addr: &str) -> Self {
        Conn {
            addr: addr.to_owned(),
            tls: None,
            stream: None,
            buf: Vec::with_capacity(16 * 1024),
            handshakes: 0,
            resumed: 0,
        }
    }

    /// A connection to `addr` over TLS with `config`.
    pub(crate) fn tls(addr: &str, config: Arc<rustls::ClientConfig>) -> Self {
        Conn {
            tls: Some(config),
            ..Conn::new(addr)
        }
    }

    /// Closes the connection (the next request opens a new one).
    pub(crate) fn close(&mut self) {
        self.stream = None;
    }

    async fn stream(&mut self) -> anyhow::Result<&mut Box<dyn Io>> {
        if self.stream.is_none() {
            let s = TcpStream::connect(&self.addr)
                .await
                .with_context(|| format!("connecting to {}", self.addr))?;
            s.set_nodelay(true)?;
            let stream: Box<dyn Io> = match &self.tls {
                None => Box::new(s),
                Some(config) => {
                    let name = rustls_pki_types::ServerName::try_from("localhost")?;
                    let tls = tokio_rustls::TlsConnector::from(config.clone())
                        .connect(name, s)
                        .await
                        .context("TLS handshake")?;
                    self.handshakes += 1;
                    if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                        self.resumed += 1;
                    }
                    Box::new(tls)
                }
            };
            self.stream = Some(stream);
            self.buf.clear();
        }
        self.stream.as_mut().context("no stream")
    }

    /// Sends one request and reads its response. On any error the connection is dropped (the
    /// next request reconnects).
    pub(crate) async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &str,
        body: &[u8],
    ) -> anyhow::Result<Response> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}");
        if method == "POST" {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        let r = self.exchange(&head, body).await;
        if r.is_err() {
            self.stream = None;
        }
        r
    }

    /// Writes `head` and `body`, reads the response.
    async fn exchange(&mut self, head: &str, body: &[u8]) -> anyhow::Result<Response> {
        let mut out = Vec::with_capacity(head.len() + body.len());
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(body);
        let stream = self.stream().await?;
        stream.write_all(&out).await?;
        // Read the head.
        let mut buf = std::mem::take(&mut self.buf);
        let result = read_response(self.stream.as_mut().context("no stream")?, &mut buf).await;
        self.buf = buf;
        let (response, close) = result?;
        if close {
            self.stream = None;
        }
        Ok(response)
    }
}

async fn fill(stream: &mut Box<dyn Io>, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk).await?;
    if n == 0 {
        bail!("connection closed by the server");
    }
    buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    Ok(())
}

/// Reads one response from `stream`; `buf` holds bytes already read (and keeps any bytes
/// past this response). Returns the response and whether the server will close.
async fn read_response(
    stream: &mut Box<dyn Io>,
    buf: &mut Vec<u8>,
) -> anyhow::Result<(Response, bool)> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 64 * 1024 {
            bail!("response head too large");
        }
        fill(stream, buf).await?;
    };
    let head = std::str::from_utf8(buf.get(..head_end).unwrap_or_default())?.to_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let mut length = None;
    let mut close = false;
    let mut etag = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        match name.as_str() {
            "content-length" => length = Some(value.parse::<usize>()?),
            "transfer-encoding" => bail!("chunked responses are not supported here"),
            "connection" if value.eq_ignore_ascii_case("close") => close = true,
            "etag" => etag = Some(value.to_owned()),
            _ => {}
        }
    }
    // A 304 has no body, whatever it says of its length (RFC 9110 15.4.5).
    let length = if status == 304 {
        0
    } else {
        length.context("response without Content-Length")?
    };
    let start = head_end + 4;
    while buf.len() < start + length {
        fill(stream, buf).await?;
    }
    let body = buf.get(start..start + length).unwrap_or_default().to_vec();
    buf.drain(..start + length);
    Ok((Response { status, body, etag }, close))
}
