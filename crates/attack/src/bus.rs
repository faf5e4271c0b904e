//! A man in the middle on the in-vehicle link (between the primary/gateway and one ECU). It
//! relays the protocol's frames and, as told, tampers with image chunks or injects garbage.

use std::sync::{Arc, Mutex};

use rampart_vehicle::protocol::{self, Kind};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// What the tap does to traffic towards the ECU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    /// Relay unchanged.
    None,
    /// Flip one bit in the first image chunk.
    FlipImageBit,
    /// Replace every connection by garbage bytes.
    Garbage,
}

/// A frame's kind and payload.
type Recorded = (Kind, Vec<u8>);

/// A running tap.
#[derive(Clone)]
pub struct BusTap {
    /// Address the primary should use instead of the ECU's.
    pub address: String,
    log: Arc<Mutex<Vec<String>>>,
    /// Control frames seen on their way to the ECU (everything but image chunks).
    recorded: Arc<Mutex<Vec<Recorded>>>,
}

impl std::fmt::Debug for BusTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusTap")
            .field("address", &self.address)
            .finish()
    }
}

impl BusTap {
    /// Starts a tap in front of the ECU at `ecu`.
    pub async fn start(ecu: &str, tamper: Tamper) -> anyhow::Result<BusTap> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let tap = BusTap {
            address: listener.local_addr()?.to_string(),
            log: Arc::new(Mutex::new(Vec::new())),
            recorded: Arc::new(Mutex::new(Vec::new())),
        };
        let (ecu, t) = (ecu.to_owned(), tap.clone());
        tokio::spawn(async move {
            while let Ok((primary, _)) = listener.accept().await {
                let (ecu, t) = (ecu.clone(), t.clone());
                tokio::spawn(async move {
                    let _ = t.relay(primary, &ecu, tamper).await;
                });
            }
        });
        Ok(tap)
    }

    /// What the tap did.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Payloads of the frames of `kind` the tap saw going to the ECU, oldest first.
    pub fn recorded(&self, kind: Kind) -> Vec<Vec<u8>> {
        self.recorded
            .lock()
            .map(|r| {
                r.iter()
                    .filter(|(k, _)| *k == kind)
                    .map(|(_, p)| p.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn note(&self, line: String) {
        if let Ok(mut l) = self.log.lock() {
            l.push(line);
        }
    }

    async fn relay(&self, primary: TcpStream, ecu: &str, tamper: Tamper) -> anyhow::Result<()> {
        let mut to_ecu = TcpStream::connect(ecu).await?;
        if tamper == Tamper::Garbage {
            let junk: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
            to_ecu.write_all(b"RV\x01\x04\xff\xff\xff\xff").await?;
            to_ecu.write_all(&junk).await?;
            self.note(
                "sent 4104 bytes of garbage (an oversized frame header and junk) to the ECU".into(),
            );
            let _ = to_ecu.shutdown().await;
            return Ok(());
        }
        let mut flipped = false;
        relay_frames(primary, to_ecu, |frame| {
            if frame.kind != Kind::ImageChunk {
                if let Ok(mut r) = self.recorded.lock() {
                    r.push((frame.kind, frame.payload.clone()));
                }
            }
            if tamper == Tamper::FlipImageBit && frame.kind == Kind::ImageChunk && !flipped {
                if let Some(b) = frame.payload.get_mut(100) {
                    *b ^= 0x20;
                    flipped = true;
                    self.note(format!(
                        "flipped a bit in an image chunk of {} bytes on its way to the ECU",
                        frame.payload.len()
                    ));
                }
            }
        })
        .await;
        Ok(())
    }
}

/// Relays one connection of the in-vehicle link: each frame from the primary goes through
/// `on_frame` (which may read or change it) on its way to the ECU; the ECU's answers go back
/// unchanged. Ends when either side closes.
pub async fn relay_frames(
    mut primary: TcpStream,
    to_ecu: TcpStream,
    mut on_frame: impl FnMut(&mut protocol::Frame),
) {
    let (mut ecu_read, mut ecu_write) = to_ecu.into_split();
    let (mut primary_read, mut primary_write) = primary.split();
    let upstream = async {
        while let Ok(mut frame) = protocol::read_frame(&mut primary_read).await {
            on_frame(&mut frame);
            if protocol::write_frame(&mut ecu_write, frame.kind, &frame.payload)
                .await
                .is_err()
            {
                break;
            }
        }
        let _ = ecu_write.shutdown().await;
    };
    let downstream = tokio::io::copy(&mut ecu_read, &mut primary_write);
    let _ = tokio::join!(upstream, downstream);
}
