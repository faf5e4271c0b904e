//! An S3-compatible server for tests of the image repository on object storage: moto's
//! standalone server (`moto_server`, from PyPI, in the project's `.venv`; `scripts/test`
//! installs it), started on a free loopback port and stopped on drop. Anything that speaks
//! S3 with conditional writes (`If-None-Match: *`, `If-Match`) would do; moto is the one
//! installable here without a container engine.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rampart_server::store::ImageStoreConfig;

/// Credentials the tests give (moto accepts any).
pub const ACCESS_KEY: &str = "rampart-test";
/// Its secret.
pub const SECRET_KEY: &str = "rampart-test-secret";

/// A running S3-compatible server.
#[derive(Debug)]
pub struct S3Server {
    child: Child,
    addr: SocketAddr,
}

/// `moto_server`: `RAMPART_MOTO_SERVER`, or the project's `.venv/bin/moto_server`.
pub fn moto_server() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("RAMPART_MOTO_SERVER") {
        return Some(PathBuf::from(path));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/moto_server");
    venv.exists().then_some(venv)
}

impl S3Server {
    /// Starts moto on a free port; `None` when it is not installed.
    pub fn start() -> anyhow::Result<Option<S3Server>> {
        let Some(program) = moto_server() else {
            return Ok(None);
        };
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let server = S3Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(server.addr).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "{} did not listen on {} within 30 s",
                    program.display(),
                    server.addr
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Some(server))
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates `bucket` (moto takes an unsigned `PUT /BUCKET`).
    pub fn create_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        let (status, _) = self.request("PUT", &format!("/{bucket}"))?;
        if status != 200 {
            bail!("creating bucket {bucket}: HTTP {status}");
        }
        Ok(())
    }

    /// Lets anyone read `bucket`'s objects (a bucket policy), as an operator does for the
    /// CDN in front of it.
    pub fn allow_public_reads(&self, bucket: &str) -> anyhow::Result<()> {
        let policy = format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::{bucket}/*"}}]}}"#
        );
        let (status, _) = self.put(&format!("/{bucket}?policy"), policy.as_bytes())?;
        if status != 200 && status != 204 {
            bail!("bucket policy of {bucket}: HTTP {status}");
        }
        Ok(())
    }

    /// `GET /PATH` straight from the server (as a CDN in front of the bucket would): status
    /// and body.
    pub fn get(&self, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
        self.request("GET", path)
    }

    /// `PUT /PATH` with `body`, unsigned (moto takes it): status and body of the answer.
    pub fn put(&self, path: &str, body: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
        self.send("PUT", path, body)
    }

    fn request(&self, method: &str, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
        self.send(method, path, &[])
    }

    fn send(&self, method: &str, path: &str, body: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
        let mut stream = TcpStream::connect(self.addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr,
            body.len()
        )?;
        stream.write_all(body)?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer)?;
        let split = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .context("no end of headers")?;
        let head = String::from_utf8_lossy(answer.get(..split).unwrap_or_default()).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no status")?;
        let mut body = answer.get(split + 4..).unwrap_or_default().to_vec();
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            body = dechunk(&body);
        }
        Ok((status, body))
    }

    /// `[image_store]` for `bucket/prefix` on this server.
    pub fn image_store(&self, bucket: &str, prefix: &str) -> ImageStoreConfig {
        ImageStoreConfig {
            url: format!("s3://{bucket}/{prefix}"),
            endpoint: Some(self.endpoint()),
            region: Some("us-east-1".into()),
            lease_secs: None,
        }
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = body.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(body.get(..end).unwrap_or_default())
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(body.get(end + 2..end + 2 + size).unwrap_or_default());
        body = body.get(end + 2 + size + 2..).unwrap_or_default();
    }
    out
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
