//! A deliberately naive legacy ECU: the diagnostic link's negative control.
//!
//! It speaks DoIP and UDS well enough for a tester to flash it, and checks nothing: every
//! tester may activate routing, every service is served in every session, every key is
//! right, blocks are written whatever their counter, and the "verify routine" switches to
//! whatever was written, under the name the director's targets give for this ECU (or any).
//! It uses the product only for mechanics — the DoIP codec and the A/B slots.

use std::sync::{Arc, Mutex};

use rampart_core::hash::compute_hashes;
use rampart_core::uptane::InstalledImage;
use rampart_vehicle::slots::{SlotWriter, Slots};
use rampart_vehicle::uds::doip::{self, activation, Header, Message, HEADER_LEN};
use rampart_vehicle::uds::service;
use rampart_vehicle::uds::UdsEcuConfig;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A legacy ECU that takes any flash from anyone.
pub struct NaiveUdsEcu {
    /// Where it listens (TCP).
    pub address: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for NaiveUdsEcu {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct State {
    ecu_id: String,
    logical_address: u16,
    banks: Slots,
    writer: Option<SlotWriter>,
    written: Vec<u8>,
}

impl NaiveUdsEcu {
    /// Takes over the banks of the legacy ECU `config` describes (its real process must be
    /// stopped first) and listens on a new loopback port.
    pub async fn start(config: &UdsEcuConfig) -> anyhow::Result<NaiveUdsEcu> {
        let factory = InstalledImage {
            filename: config.factory_image.clone(),
            length: 0,
            hashes: Default::default(),
            release_counter: 0,
        };
        let state = Arc::new(Mutex::new(State {
            ecu_id: config.ecu_id.clone(),
            logical_address: config.logical_address,
            banks: Slots::open(config.banks.clone(), factory)?,
            writer: None,
            written: Vec::new(),
        }));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    let _ = serve(&state, stream).await;
                });
            }
        });
        Ok(NaiveUdsEcu { address, task })
    }
}

/// The target the director's targets (`metadata`) name for `ecu`, else any.
fn target_for(metadata: &[u8], ecu: &str) -> String {
    let doc: Value = serde_json::from_slice(metadata).unwrap_or_default();
    let targets = doc
        .pointer("/signed/targets")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    targets
        .iter()
        .find(|(_, t)| {
            t.pointer("/custom/ecus")
                .and_then(Value::as_object)
                .is_some_and(|e| e.contains_key(ecu))
        })
        .or_else(|| targets.iter().next())
        .map_or_else(|| "unknown".to_owned(), |(name, _)| name.clone())
}

/// The answer to one request: a positive response to everything.
fn answer(s: &mut State, req: &[u8]) -> Vec<u8> {
    let sid = req.first().copied().unwrap_or_default();
    let mut out = vec![sid.wrapping_add(0x40)];
    match req {
        [0x10, sub, ..] => out.extend_from_slice(&[*sub, 0, 50, 1, 244]),
        [0x27, sub, ..] if sub % 2 == 1 => {
            out.push(*sub);
            out.extend_from_slice(&[0x11; 16]);
        }
        [0x31, sub, 0xFF, 0x00, ..] => {
            s.writer = s.banks.begin_write().ok();
            s.written.clear();
            out.extend_from_slice(&[*sub, 0xFF, 0x00, 0x00]);
        }
        [0x31, sub, 0xFF, 0x01, metadata @ ..] => {
            let image = InstalledImage {
                filename: target_for(metadata, &s.ecu_id),
                length: s.written.len() as u64,
                hashes: compute_hashes(&s.written),
                release_counter: 0,
            };
            if let Some(writer) = s.writer.take() {
                let _ = s.banks.commit_write(writer, image);
            }
            out.extend_from_slice(&[*sub, 0xFF, 0x01, 0x00]);
        }
        [0x34, ..] => out.extend_from_slice(&[0x20, 0x40, 0x02]),
        [0x36, counter, data @ ..] => {
            if let Some(w) = s.writer.as_mut() {
                let _ = w.write(data);
            }
            s.written.extend_from_slice(data);
            out.push(*counter);
        }
        [0x11, sub, ..] => {
            let _ = s.banks.boot();
            out.push(*sub);
        }
        [0x22, a, b] => {
            out.extend_from_slice(&[*a, *b]);
            let running = s.banks.running().cloned().unwrap_or(InstalledImage {
                filename: String::new(),
                length: 0,
                hashes: Default::default(),
                release_counter: 0,
            });
            match [*a, *b] {
                [0xF1, 0x89] => out.extend_from_slice(running.filename.as_bytes()),
                [0xF1, 0xA0] => out.extend_from_slice(&service::encode_running_image(&running)),
                // An empty security log: it never noticed anything.
                [0xF1, 0xA2] => out.extend_from_slice(&service::encode_security_log(0, "")),
                _ => {}
            }
        }
        [_, sub, rest @ ..] => {
            out.push(*sub);
            out.extend_from_slice(rest.get(..2).unwrap_or_default());
        }
        _ => {}
    }
    out
}

async fn serve(state: &Mutex<State>, mut stream: TcpStream) -> anyhow::Result<()> {
    loop {
        let mut head = [0u8; HEADER_LEN];
        stream.read_exact(&mut head).await?;
        let header = Header::parse(&head, 16 << 20).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let mut payload = vec![0u8; header.length as usize];
        stream.read_exact(&mut payload).await?;
        let me = state.lock().map(|s| s.logical_address).unwrap_or_default();
        match Message::decode(header.payload_type, &payload) {
            Ok(Message::RoutingActivationRequest { source, .. }) => {
                let m = Message::RoutingActivationResponse {
                    tester: source,
                    entity: me,
                    code: activation::SUCCESS,
                };
                stream.write_all(&m.encode(header.version)).await?;
            }
            Ok(Message::Diagnostic { source, data, .. }) => {
                let mut out = Message::DiagnosticAck {
                    source: me,
                    target: source,
                }
                .encode(header.version);
                let (response, reset) = {
                    let mut s = state
                        .lock()
                        .map_err(|_| anyhow::anyhow!("naive UDS ECU poisoned"))?;
                    (answer(&mut s, &data), data.first() == Some(&0x11))
                };
                out.extend_from_slice(&doip::encode_diagnostic(
                    header.version,
                    me,
                    source,
                    &response,
                ));
                stream.write_all(&out).await?;
                if reset {
                    return Ok(());
                }
            }
            _ => {}
        }
    }
}
