//! Bounded HTTP(S) downloads.
//!
//! Every download has a hard byte limit given by the caller (a signed length, or a fixed
//! maximum for metadata) and is cut at the first byte past it, whatever `Content-Length`
//! says (endless data). Two clocks guard against slow retrieval: no bytes for
//! `stall_timeout`, or an average below `min_bytes_per_second` over any `speed_window`, ends
//! the download with [`Error::SlowRetrieval`]. So a download of N bytes either completes or
//! fails within about `N / min_bytes_per_second + speed_window + stall_timeout`.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::header::{CONTENT_LENGTH, IF_NONE_MATCH, RANGE};
use reqwest::StatusCode;

use crate::error::{Error, Result};

/// Limits of one download.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// TCP + TLS connection timeout.
    pub connect_timeout: Duration,
    /// Longest pause between two pieces of data.
    pub stall_timeout: Duration,
    /// Minimum average speed over each window.
    pub min_bytes_per_second: u64,
    /// Length of the window over which speed is averaged.
    pub speed_window: Duration,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            connect_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(20),
            min_bytes_per_second: 1024,
            speed_window: Duration::from_secs(10),
        }
    }
}

/// TLS settings: which CA to trust and which client certificate to present.
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    /// PEM CA certificate(s) to trust instead of the system roots (the fleet CA).
    pub ca_pem: Option<Vec<u8>>,
    /// PEM client certificate chain followed by its private key (mTLS; the vehicle's identity).
    pub identity_pem: Option<Vec<u8>>,
}

/// How a download ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchStatus {
    /// All bytes delivered; `resumed` if the server honoured the Range request.
    Complete {
        /// Whether the bytes started at the requested offset (206) rather than at 0 (200).
        resumed: bool,
    },
    /// 403 or 404: the file is not there.
    NotFound,
    /// 304: the copy named in `If-None-Match` is current (only when one was named).
    NotModified,
}

/// Receives a download: told first whether it resumes, then the bytes.
pub trait Sink: Send {
    /// Called once before any data: `resumed` is true when bytes continue at the requested
    /// offset, false when they start at 0 (discard anything kept from an earlier attempt).
    fn begin(&mut self, resumed: bool) -> Result<()>;
    /// Called for each piece of data, in order.
    fn data(&mut self, chunk: &[u8]) -> Result<()>;
}

impl Sink for Vec<u8> {
    fn begin(&mut self, _resumed: bool) -> Result<()> {
        self.clear();
        Ok(())
    }
    fn data(&mut self, chunk: &[u8]) -> Result<()> {
        self.extend_from_slice(chunk);
        Ok(())
    }
}

/// An HTTP(S) client with Rampart's limits.
#[derive(Debug, Clone)]
pub struct HttpFetcher {
    client: reqwest::Client,
    config: FetchConfig,
    /// An offline fetcher's folder: every URL is a `file://` URL inside it (an unpacked
    /// offline bundle); nothing goes to the network.
    offline_root: Option<std::path::PathBuf>,
}

/// Alias kept for readers looking for "the fetcher".
pub type Fetcher = HttpFetcher;

fn transport(url: &str, e: impl std::fmt::Display) -> Error {
    Error::Transport {
        url: url.to_owned(),
        reason: e.to_string(),
    }
}

/// A failed request, its cause named (see [`crate::diagnose`]).
fn request_failed(url: &str, e: &reqwest::Error) -> Error {
    Error::Transport {
        url: url.to_owned(),
        reason: crate::diagnose::explain(e),
    }
}

impl HttpFetcher {
    /// Builds a fetcher. With `tls.ca_pem`, only that CA is trusted.
    pub fn new(config: FetchConfig, tls: &TlsConfig) -> Result<Self> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .user_agent(concat!("rampart/", env!("CARGO_PKG_VERSION")))
            // Redirects could lead a bounded download somewhere else; repositories don't need them.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &tls.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(ca)
                .map_err(|e| transport("(CA bundle)", e))?;
            builder = builder.tls_certs_only(certs);
        }
        if let Some(identity) = &tls.identity_pem {
            let id = reqwest::Identity::from_pem(identity)
                .map_err(|e| transport("(client identity)", e))?;
            builder = builder.identity(id);
        }
        let client = builder.build().map_err(|e| transport("(client)", e))?;
        Ok(HttpFetcher {
            client,
            config,
            offline_root: None,
        })
    }

    /// A fetcher that reads `file://` URLs inside `root` (an unpacked offline bundle, the
    /// server's URL layout mirrored in folders) with the same limits a download has: a file
    /// longer than its signed length is cut and refused, a missing one is "not found", a URL
    /// outside `root` (traversal, another scheme) is refused. It never opens a connection.
    pub fn offline(root: &std::path::Path) -> Result<Self> {
        let mut f = HttpFetcher::new(FetchConfig::default(), &TlsConfig::default())?;
        f.offline_root = Some(root.to_path_buf());
        Ok(f)
    }

    /// The `file://` URL of the folder an offline fetcher reads (with a trailing `/`).
    pub fn offline_base(&self) -> Option<String> {
        let root = self.offline_root.as_ref()?;
        let url = reqwest::Url::from_directory_path(root).ok()?;
        Some(url.to_string())
    }

    /// [`HttpFetcher::fetch`] for an offline fetcher.
    fn fetch_file(
        &self,
        root: &std::path::Path,
        url: &str,
        start: u64,
        max_length: u64,
        sink: &mut dyn Sink,
    ) -> Result<FetchStatus> {
        use std::io::{Read, Seek, SeekFrom};
        let outside = |why: &str| Error::BadUrl {
            url: url.to_owned(),
            reason: format!("an offline fetch {why}"),
        };
        let path = reqwest::Url::parse(url)
            .ok()
            .filter(|u| u.scheme() == "file")
            .and_then(|u| u.to_file_path().ok())
            .ok_or_else(|| outside("takes only file:// URLs"))?;
        // The URL parser resolves `..` segments, decoding turns `%2e%2e` into `..` components:
        // both end up outside `root` or as a `..` component here.
        if !path.starts_with(root)
            || path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(outside("may not leave its folder"));
        }
        let mut file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FetchStatus::NotFound),
            Err(e) => return Err(transport(url, e)),
        };
        let len = file.metadata().map_err(|e| transport(url, e))?.len();
        if len > max_length {
            return Err(Error::Verification(rampart_core::Error::LengthExceeded {
                what: url.to_owned(),
                max: max_length,
            }));
        }
        let resumed = start > 0 && start <= len;
        if resumed {
            file.seek(SeekFrom::Start(start))
                .map_err(|e| transport(url, e))?;
        }
        sink.begin(resumed)?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf).map_err(|e| transport(url, e))?;
            if n == 0 {
                break;
            }
            sink.data(buf.get(..n).unwrap_or_default())?;
        }
        Ok(FetchStatus::Complete { resumed })
    }

    /// The limits in force.
    pub fn config(&self) -> &FetchConfig {
        &self.config
    }

    /// POSTs a JSON body (a signed manifest) and returns the status and at most
    /// `max_response` bytes of the answer.
    pub async fn post_json(
        &self,
        url: &str,
        body: Vec<u8>,
        max_response: u64,
    ) -> Result<(u16, Vec<u8>)> {
        if self.offline_root.is_some() {
            return Err(Error::BadUrl {
                url: url.to_owned(),
                reason: "an offline fetcher sends nothing".into(),
            });
        }
        let request = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send();
        let limit = self.config.stall_timeout + self.config.connect_timeout;
        let response = tokio::time::timeout(limit, request)
            .await
            .map_err(|_| Error::SlowRetrieval {
                url: url.to_owned(),
                bytes: 0,
                seconds: limit.as_secs_f64(),
                min_bytes_per_second: self.config.min_bytes_per_second,
            })?
            .map_err(|e| request_failed(url, &e))?;
        let status = response.status().as_u16();
        let mut stream = response.bytes_stream();
        let mut out = Vec::new();
        while let Some(chunk) = tokio::time::timeout(self.config.stall_timeout, stream.next())
            .await
            .map_err(|_| transport(url, "response stalled"))?
        {
            let chunk = chunk.map_err(|e| request_failed(url, &e))?;
            if out.len() as u64 + chunk.len() as u64 > max_response {
                return Err(Error::Verification(rampart_core::Error::LengthExceeded {
                    what: url.to_owned(),
                    max: max_response,
                }));
            }
            out.extend_from_slice(&chunk);
        }
        Ok((status, out))
    }

    /// Fetches `url` into memory, at most `max_length` bytes. `None` on 403/404.
    pub async fn fetch_bytes(&self, url: &str, max_length: u64) -> Result<Option<Vec<u8>>> {
        self.fetch_bytes_unless(url, max_length, None).await
    }

    /// [`HttpFetcher::fetch_bytes`] for a document the caller already holds (`held`): the
    /// server is asked for it only if it changed (`If-None-Match` with the held copy's
    /// [`rampart_core::hash::entity_tag`]); on 304 the held copy is returned, to be checked again like any
    /// fetched bytes (a 304 from an attacker is the old document replayed, which its
    /// expiry catches). Saves the body of the most frequent request of a fleet: the
    /// director's timestamp, unchanged on almost every check-in.
    pub async fn fetch_bytes_unless(
        &self,
        url: &str,
        max_length: u64,
        held: Option<&[u8]>,
    ) -> Result<Option<Vec<u8>>> {
        let mut out = Vec::new();
        let tag = held.map(rampart_core::hash::entity_tag);
        let status = self
            .fetch_conditional(url, 0, max_length, tag.as_deref(), &mut out)
            .await?;
        Ok(match status {
            FetchStatus::NotFound => None,
            FetchStatus::Complete { .. } => Some(out),
            FetchStatus::NotModified => held.map(<[u8]>::to_vec),
        })
    }

    /// Streams `url` from byte `start` (HTTP Range) into `sink`. The whole file may not exceed
    /// `max_length` bytes. If the server ignores the range (200), bytes start at 0 and
    /// `resumed` is false: the caller must start over.
    pub async fn fetch(
        &self,
        url: &str,
        start: u64,
        max_length: u64,
        sink: &mut dyn Sink,
    ) -> Result<FetchStatus> {
        self.fetch_conditional(url, start, max_length, None, sink)
            .await
    }

    /// [`HttpFetcher::fetch`], with `If-None-Match: if_none_match` when given (then 304 is
    /// [`FetchStatus::NotModified`]; without it, 304 is an unexpected status).
    async fn fetch_conditional(
        &self,
        url: &str,
        start: u64,
        max_length: u64,
        if_none_match: Option<&str>,
        sink: &mut dyn Sink,
    ) -> Result<FetchStatus> {
        if let Some(root) = &self.offline_root {
            return self.fetch_file(root, url, start, max_length, sink);
        }
        let mut request = self.client.get(url);
        if start > 0 {
            request = request.header(RANGE, format!("bytes={start}-"));
        }
        if let Some(tag) = if_none_match {
            request = request.header(IF_NONE_MATCH, tag);
        }
        let response = tokio::time::timeout(
            self.config.stall_timeout + self.config.connect_timeout,
            request.send(),
        )
        .await
        .map_err(|_| Error::SlowRetrieval {
            url: url.to_owned(),
            bytes: 0,
            seconds: (self.config.stall_timeout + self.config.connect_timeout).as_secs_f64(),
            min_bytes_per_second: self.config.min_bytes_per_second,
        })?
        .map_err(|e| request_failed(url, &e))?;
        let status = response.status();
        let resumed = match status {
            StatusCode::OK => false,
            StatusCode::PARTIAL_CONTENT if start > 0 => true,
            StatusCode::NOT_FOUND | StatusCode::FORBIDDEN => return Ok(FetchStatus::NotFound),
            StatusCode::NOT_MODIFIED if if_none_match.is_some() => {
                return Ok(FetchStatus::NotModified)
            }
            other => {
                return Err(Error::HttpStatus {
                    url: url.to_owned(),
                    status: other.as_u16(),
                })
            }
        };
        let offset = if resumed { start } else { 0 };
        let too_long = || {
            Error::Verification(rampart_core::Error::LengthExceeded {
                what: url.to_owned(),
                max: max_length,
            })
        };
        let announced = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|len| offset.saturating_add(len) > max_length) {
            return Err(too_long());
        }
        sink.begin(resumed)?;
        let mut stream = response.bytes_stream();
        let mut total = offset;
        let mut window_start = Instant::now();
        let mut window_bytes = 0u64;
        loop {
            let next = tokio::time::timeout(self.config.stall_timeout, stream.next())
                .await
                .map_err(|_| Error::SlowRetrieval {
                    url: url.to_owned(),
                    bytes: window_bytes,
                    seconds: window_start.elapsed().as_secs_f64(),
                    min_bytes_per_second: self.config.min_bytes_per_second,
                })?;
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(|e| request_failed(url, &e))?;
            total = total.saturating_add(chunk.len() as u64);
            if total > max_length {
                return Err(too_long());
            }
            sink.data(&chunk)?;
            window_bytes = window_bytes.saturating_add(chunk.len() as u64);
            let elapsed = window_start.elapsed();
            if elapsed >= self.config.speed_window {
                let required =
                    (self.config.min_bytes_per_second as f64 * elapsed.as_secs_f64()) as u64;
                if window_bytes < required {
                    return Err(Error::SlowRetrieval {
                        url: url.to_owned(),
                        bytes: window_bytes,
                        seconds: elapsed.as_secs_f64(),
                        min_bytes_per_second: self.config.min_bytes_per_second,
                    });
                }
                window_start = Instant::now();
                window_bytes = 0;
            }
        }
        Ok(FetchStatus::Complete { resumed })
    }
}

/// Joins a base URL (ending in `/`) and a relative path whose segments are already safe.
pub fn join_url(base: &str, path: &str) -> Result<String> {
    if !base.ends_with('/') {
        return Err(Error::BadUrl {
            url: base.to_owned(),
            reason: "base URL must end with '/'".into(),
        });
    }
    Ok(format!("{base}{path}"))
}

/// Percent-encodes each segment of a target path (keeping `/`), for use in a URL.
pub fn encode_target_path(path: &str) -> String {
    path.split('/')
        .map(rampart_core::client::safe_file_name)
        .collect::<Vec<_>>()
        .join("/")
}
