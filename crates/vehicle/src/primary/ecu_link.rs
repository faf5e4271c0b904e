//! The primary's side of the in-vehicle link: report requests, installs (image and metadata
//! bundle streamed to the ECU), the director's receipts.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::*;

impl Primary {
    /// Streams an image (or the delta the director offered for it, `delta`) and its metadata
    /// to an ECU and waits for the result.
    pub async fn send_to_ecu(
        &self,
        ecu: &EcuRef,
        target: &str,
        bundle: MetadataBundle,
        file: &Path,
        length: u64,
        delta: bool,
    ) -> Result<InstallResult> {
        let mut stream = connect(&ecu.address).await?;
        let begin = InstallBegin {
            target: target.to_owned(),
            bundle,
            length,
            delta,
        };
        protocol::write_json(&mut stream, Kind::InstallBegin, &begin).await?;
        let mut f = tokio::fs::File::open(file)
            .await
            .map_err(|e| Error::io(file, e))?;
        let mut buf = vec![0u8; protocol::CHUNK];
        let mut progress = self.reporter.transfer(
            &format!(
                "install {target}{} → {}",
                if delta { " (delta)" } else { "" },
                ecu.ecu_id
            ),
            length,
        );
        let mut sent = 0u64;
        loop {
            let n = f.read(&mut buf).await.map_err(|e| Error::io(file, e))?;
            if n == 0 {
                break;
            }
            protocol::write_frame(
                &mut stream,
                Kind::ImageChunk,
                buf.get(..n).unwrap_or_default(),
            )
            .await?;
            sent += n as u64;
            progress.set(sent);
        }
        protocol::write_frame(&mut stream, Kind::ImageEnd, &[]).await?;
        let frame =
            tokio::time::timeout(Duration::from_secs(300), protocol::read_frame(&mut stream))
                .await
                .map_err(|_| Error::Protocol(format!("ECU {} did not answer", ecu.ecu_id)))??;
        progress.finish();
        match frame.kind {
            Kind::InstallResult => Ok(protocol::parse_json(&frame)?),
            Kind::Error => {
                let e: protocol::ErrorPayload = protocol::parse_json(&frame)?;
                Ok(InstallResult {
                    ok: false,
                    rule: Some(e.rule),
                    message: e.message,
                })
            }
            other => Err(Error::Frame(protocol::FrameError::Unexpected(other))),
        }
    }
}

async fn connect(address: &str) -> Result<TcpStream> {
    tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(address))
        .await
        .map_err(|_| Error::Protocol(format!("ECU at {address} did not accept a connection")))?
        .map_err(|e| Error::Protocol(format!("ECU at {address}: {e}")))
}

/// Asks the ECU at `address` for a signed report.
pub async fn request_report(address: &str, nonce: &str) -> Result<Value> {
    let mut stream = connect(address).await?;
    protocol::write_json(
        &mut stream,
        Kind::ReportRequest,
        &ReportRequest {
            nonce: nonce.to_owned(),
        },
    )
    .await?;
    let frame = tokio::time::timeout(Duration::from_secs(10), protocol::read_frame(&mut stream))
        .await
        .map_err(|_| Error::Protocol(format!("ECU at {address} did not answer")))??;
    if frame.kind != Kind::Report {
        return Err(Error::Frame(protocol::FrameError::Unexpected(frame.kind)));
    }
    serde_json::from_slice(&frame.payload)
        .map_err(|e| Error::Protocol(format!("report is not JSON: {e}")))
}

/// Gives the ECU at `address` the director's receipt for a manifest carrying its report.
pub async fn send_receipt(address: &str, receipt: &[u8]) -> Result<InstallResult> {
    let mut stream = connect(address).await?;
    protocol::write_frame(&mut stream, Kind::Ack, receipt).await?;
    let frame = tokio::time::timeout(Duration::from_secs(10), protocol::read_frame(&mut stream))
        .await
        .map_err(|_| Error::Protocol(format!("ECU at {address} did not answer")))??;
    match frame.kind {
        Kind::InstallResult => Ok(protocol::parse_json(&frame)?),
        Kind::Error => {
            let e: protocol::ErrorPayload = protocol::parse_json(&frame)?;
            Err(Error::Protocol(format!(
                "ECU at {address} refused the receipt ({}): {}",
                e.rule, e.message
            )))
        }
        other => Err(Error::Frame(protocol::FrameError::Unexpected(other))),
    }
}
