//! The attacker on the diagnostic link: a man in the middle on the in-vehicle Ethernet
//! between the gateway (the primary's UDS tester) and a legacy ECU's DoIP entity, and a rogue
//! tester of its own.
//!
//! The tap relays DoIP both ways; towards the ECU it parses each message and, as told, alters
//! the TransferData requests of a flash — a block counter that skips, the image's bytes
//! replaced by another image's (a recorded older flash, replayed), or the link cut in the
//! middle of the transfer.

use std::sync::{Arc, Mutex};

use rampart_vehicle::uds::doip::{Header, Message, HEADER_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the tap does to the gateway's requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiagTamper {
    /// The block counter of the `n`-th TransferData request (from 1) skips one.
    SkipCounter(usize),
    /// Every TransferData block carries the bytes of this image at the same offset instead.
    ReplaceImage(Vec<u8>),
    /// The link is cut after `n` TransferData requests.
    CutAfter(usize),
}

/// A running tap.
#[derive(Clone)]
pub struct DiagTap {
    /// Address the gateway should use instead of the ECU's.
    pub address: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl std::fmt::Debug for DiagTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiagTap")
            .field("address", &self.address)
            .finish()
    }
}

async fn read_message(s: &mut tokio::net::tcp::OwnedReadHalf) -> Option<(Header, Vec<u8>)> {
    let mut head = [0u8; HEADER_LEN];
    s.read_exact(&mut head).await.ok()?;
    let header = Header::parse(&head, 16 << 20).ok()?;
    let mut payload = vec![0u8; header.length as usize];
    s.read_exact(&mut payload).await.ok()?;
    Some((header, payload))
}

impl DiagTap {
    /// Starts a tap in front of the DoIP entity at `ecu`.
    pub async fn start(ecu: &str, tamper: DiagTamper) -> anyhow::Result<DiagTap> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let tap = DiagTap {
            address: listener.local_addr()?.to_string(),
            log: Arc::new(Mutex::new(Vec::new())),
        };
        let (ecu, t) = (ecu.to_owned(), tap.clone());
        tokio::spawn(async move {
            while let Ok((gateway, _)) = listener.accept().await {
                let (ecu, t, tamper) = (ecu.clone(), t.clone(), tamper.clone());
                tokio::spawn(async move {
                    let _ = t.relay(gateway, &ecu, tamper).await;
                });
            }
        });
        Ok(tap)
    }

    /// What the tap did.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn note(&self, line: String) {
        if let Ok(mut l) = self.log.lock() {
            l.push(line);
        }
    }

    async fn relay(&self, gateway: TcpStream, ecu: &str, tamper: DiagTamper) -> anyhow::Result<()> {
        let ecu = TcpStream::connect(ecu).await?;
        let (mut from_ecu, mut to_ecu) = ecu.into_split();
        let (mut from_gateway, mut to_gateway) = gateway.into_split();
        let back = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut from_ecu, &mut to_gateway).await;
            let _ = to_gateway.shutdown().await;
        });
        let mut blocks = 0usize;
        let mut offset = 0usize;
        while let Some((header, payload)) = read_message(&mut from_gateway).await {
            let mut message = Message::decode(header.payload_type, &payload).ok();
            if let Some(Message::Diagnostic { data, .. }) = message.as_mut() {
                if let [0x36, counter, body @ ..] = data.as_mut_slice() {
                    blocks += 1;
                    let len = body.len();
                    match &tamper {
                        DiagTamper::SkipCounter(n) if *n == blocks => {
                            let was = *counter;
                            *counter = counter.wrapping_add(1);
                            self.note(format!(
                                "TransferData block {blocks}: counter {was} changed to {}",
                                *counter
                            ));
                        }
                        DiagTamper::ReplaceImage(other) => {
                            if let Some(theirs) = other.get(offset..offset + len) {
                                if theirs != &*body {
                                    body.copy_from_slice(theirs);
                                    self.note(format!(
                                        "TransferData block {blocks}: {len} bytes at offset {offset} replaced by the recorded image's"
                                    ));
                                }
                            }
                        }
                        DiagTamper::CutAfter(n) if blocks > *n => {
                            self.note(format!(
                                "link cut before TransferData block {blocks} ({offset} bytes through)"
                            ));
                            // Both sockets close: the gateway's and the ECU's.
                            back.abort();
                            return Ok(());
                        }
                        _ => {}
                    }
                    offset += len;
                }
            }
            let bytes = match message {
                Some(m) => m.encode(header.version),
                None => {
                    let mut raw = Vec::with_capacity(HEADER_LEN + payload.len());
                    raw.extend_from_slice(&[header.version, !header.version]);
                    raw.extend_from_slice(&header.payload_type.to_be_bytes());
                    raw.extend_from_slice(&header.length.to_be_bytes());
                    raw.extend_from_slice(&payload);
                    raw
                }
            };
            to_ecu.write_all(&bytes).await?;
        }
        let _ = to_ecu.shutdown().await;
        let _ = back.await;
        Ok(())
    }
}
