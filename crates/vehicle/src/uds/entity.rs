//! `rampart uds-ecu`: a legacy ECU's bootloader as a DoIP entity (ISO 13400-2) — vehicle
//! identification on UDP, routing activation and diagnostic messages on TCP — in front of
//! the UDS server of [`super::bootloader`].
//!
//! One tester at a time: routing is activated for one socket and one tester address; a
//! second tester is refused until the first leaves. When the active tester's socket closes,
//! the bootloader falls back to the default session, locked. A socket that does not activate
//! routing within the initial inactivity time, or goes quiet for the general inactivity
//! time, is closed; sockets are capped. Everything a peer sends is bounded before it is
//! read ([`super::doip::Header::parse`]); a bad header is answered with the generic NACK
//! ISO 13400-2 asks for and counted as an attack indicator.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::bootloader::{Bootloader, BootloaderConfig};
use super::doip::{self, activation, diag_nack, Header, HeaderNack, Message, HEADER_LEN};
use super::service::{self, negative, Nrc};
use crate::error::{Error, Result};
use crate::report::Reporter;
use crate::slots::SlotConfig;
use rampart_core::rule::Rule;

/// `uds-ecu.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UdsEcuConfig {
    /// The Uptane ECU identifier, also its serial number (DID 0xF18C).
    pub ecu_id: String,
    /// Hardware identifier.
    pub hardware_id: String,
    /// The vehicle it is built into (17 characters: DID 0xF190, vehicle identification).
    pub vin: String,
    /// TCP and UDP address (DoIP: port 13400).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// DoIP logical address of this entity.
    #[serde(default = "default_logical_address")]
    pub logical_address: u16,
    /// Entity identification (6 bytes as `02:00:00:00:00:10`); default: from the logical
    /// address.
    #[serde(default)]
    pub eid: Option<String>,
    /// Tester logical addresses allowed to activate routing; default: the external test
    /// equipment range 0x0E00–0x0FFF.
    #[serde(default)]
    pub testers: Option<Vec<u16>>,
    /// Boot software identification (DID 0xF180).
    #[serde(default = "default_boot_software_id")]
    pub boot_software_id: String,
    /// The per-ECU security-access secret (hex, ≥ 16 bytes, a 0600 file): the seed/key MAC
    /// key. Only the ECU and the gateway that flashes it hold it.
    pub security_secret: PathBuf,
    /// Director root the ECU was provisioned with.
    pub director_root: PathBuf,
    /// State (targets version, failed attempts, indicators).
    pub state_dir: PathBuf,
    /// The two flash banks (`slot_a`, `slot_b`, `boot_control`).
    pub banks: SlotConfig,
    /// Name of the image in bank A at first start.
    #[serde(default = "default_factory")]
    pub factory_image: String,
    /// Largest image a download may announce (bytes).
    #[serde(default = "default_bank_size")]
    pub bank_size: u64,
    /// maxNumberOfBlockLength announced to RequestDownload (SID and counter included).
    #[serde(default = "default_block")]
    pub max_block_length: u16,
    /// S3 server timeout (ms).
    #[serde(default = "default_s3")]
    pub s3_ms: u64,
    /// Wrong keys before the security delay.
    #[serde(default = "default_attempts")]
    pub max_attempts: u8,
    /// The security delay (ms).
    #[serde(default = "default_delay")]
    pub security_delay_ms: u64,
    /// Concurrent TCP sockets.
    #[serde(default = "default_sockets")]
    pub max_sockets: u8,
    /// A socket without routing activation for this long is closed (ms).
    #[serde(default = "default_initial_inactivity")]
    pub initial_inactivity_ms: u64,
    /// A socket silent for this long is closed (ms).
    #[serde(default = "default_general_inactivity")]
    pub general_inactivity_ms: u64,
}

fn default_listen() -> String {
    format!("127.0.0.1:{}", doip::PORT)
}
fn default_logical_address() -> u16 {
    0x0010
}

/// The DoIP logical address of a vehicle's `n`-th ECU in the layout `rampart provision` and
/// the lab write (0x0010, 0x0011, …); `None` past 0xFFFF.
pub fn logical_address_of(n: usize) -> Option<u16> {
    u16::try_from(n)
        .ok()
        .and_then(|n| default_logical_address().checked_add(n))
}
fn default_boot_software_id() -> String {
    concat!("rampart-uds-boot ", env!("CARGO_PKG_VERSION")).into()
}
fn default_factory() -> String {
    "factory".into()
}
fn default_bank_size() -> u64 {
    256 << 20
}
fn default_block() -> u16 {
    16 * 1024 + 2
}
fn default_s3() -> u64 {
    5_000
}
fn default_attempts() -> u8 {
    3
}
fn default_delay() -> u64 {
    10_000
}
fn default_sockets() -> u8 {
    2
}
fn default_initial_inactivity() -> u64 {
    2_000
}
fn default_general_inactivity() -> u64 {
    300_000
}

/// P2 server announced (ms).
const P2_MS: u16 = 50;
/// P2* server announced (ms): the longest a "response pending" may keep a tester waiting.
const P2_STAR_MS: u32 = 5_000;
/// Largest DoIP payload taken: a block, or the director's targets metadata for the verify
/// routine.
const MAX_PAYLOAD: u32 = 1 << 20;

impl UdsEcuConfig {
    /// An ECU whose files live in `dir`: `security-secret.hex`, `director-root.json`,
    /// `bank-a`, `bank-b`, `boot-control.json`, `state/`; listening on a port the system picks.
    pub fn in_folder(dir: &Path, ecu_id: &str, hardware_id: &str, vin: &str) -> UdsEcuConfig {
        UdsEcuConfig {
            ecu_id: ecu_id.into(),
            hardware_id: hardware_id.into(),
            vin: vin.into(),
            listen: "127.0.0.1:0".into(),
            logical_address: default_logical_address(),
            eid: None,
            testers: None,
            boot_software_id: default_boot_software_id(),
            security_secret: dir.join("security-secret.hex"),
            director_root: dir.join("director-root.json"),
            state_dir: dir.join("state"),
            banks: SlotConfig {
                slot_a: dir.join("bank-a"),
                slot_b: dir.join("bank-b"),
                boot_control: dir.join("boot-control.json"),
                max_boot_attempts: 2,
                health_check: None,
            },
            factory_image: default_factory(),
            bank_size: default_bank_size(),
            max_block_length: default_block(),
            s3_ms: default_s3(),
            max_attempts: default_attempts(),
            security_delay_ms: default_delay(),
            max_sockets: default_sockets(),
            initial_inactivity_ms: default_initial_inactivity(),
            general_inactivity_ms: default_general_inactivity(),
        }
    }

    fn eid_bytes(&self) -> Result<[u8; 6]> {
        let Some(text) = &self.eid else {
            let [a, b] = self.logical_address.to_be_bytes();
            return Ok([0x02, 0, 0, 0, a, b]);
        };
        let bytes: Vec<u8> = text
            .split(':')
            .map(|p| u8::from_str_radix(p, 16))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::Config(format!("eid {text:?}: {e}")))?;
        bytes
            .try_into()
            .map_err(|_| Error::Config(format!("eid {text:?}: six bytes, as 02:00:00:00:00:10")))
    }

    fn vin_bytes(&self) -> Result<[u8; 17]> {
        self.vin
            .as_bytes()
            .try_into()
            .map_err(|_| Error::Config(format!("vin {:?}: 17 characters", self.vin)))
    }

    fn tester_allowed(&self, address: u16) -> bool {
        match &self.testers {
            Some(list) => list.contains(&address),
            None => (0x0E00..=0x0FFF).contains(&address),
        }
    }

    /// The bootloader's part of the configuration.
    pub(crate) fn bootloader(&self) -> BootloaderConfig {
        BootloaderConfig {
            ecu_id: self.ecu_id.clone(),
            hardware_id: self.hardware_id.clone(),
            vin: self.vin.clone(),
            boot_software_id: self.boot_software_id.clone(),
            director_root: self.director_root.clone(),
            state_dir: self.state_dir.clone(),
            banks: self.banks.clone(),
            factory_image: self.factory_image.clone(),
            bank_size: self.bank_size,
            max_block_length: self.max_block_length,
            s3: Duration::from_millis(self.s3_ms),
            max_attempts: self.max_attempts.max(1),
            security_delay: Duration::from_millis(self.security_delay_ms),
            p2_ms: P2_MS,
            p2_star_ms: P2_STAR_MS,
        }
    }
}

/// Loads `uds-ecu.toml`; relative paths are taken from the file's folder.
pub fn load_config(path: &Path) -> Result<UdsEcuConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut c: UdsEcuConfig =
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    for p in [
        &mut c.security_secret,
        &mut c.director_root,
        &mut c.state_dir,
        &mut c.banks.slot_a,
        &mut c.banks.slot_b,
        &mut c.banks.boot_control,
    ] {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
    Ok(c)
}

/// A running entity: what its connections share.
struct Entity {
    config: UdsEcuConfig,
    vin: [u8; 17],
    eid: [u8; 6],
    bootloader: Mutex<Bootloader>,
    /// The socket and tester routing is active for.
    active: Mutex<Option<(u64, u16)>>,
    open: AtomicUsize,
}

impl Entity {
    fn lock(&self) -> std::sync::MutexGuard<'_, Bootloader> {
        self.bootloader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn active(&self) -> std::sync::MutexGuard<'_, Option<(u64, u16)>> {
        self.active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn record(&self, rule: Rule, message: &str) {
        self.lock().record(rule, message);
    }

    fn announcement(&self) -> Message {
        Message::VehicleAnnouncement {
            vin: self.vin,
            logical_address: self.config.logical_address,
            eid: self.eid,
            gid: [0; 6],
            further_action: 0,
        }
    }

    fn status(&self) -> Message {
        Message::EntityStatusResponse {
            node_type: 0x01,
            max_sockets: self.config.max_sockets,
            open_sockets: u8::try_from(self.open.load(Ordering::Relaxed)).unwrap_or(u8::MAX),
            max_data_size: MAX_PAYLOAD,
        }
    }
}

/// Opens the bootloader, binds TCP and UDP on `listen` and serves until the task is dropped.
/// `reporter` hears where it listens and what it flashed.
pub async fn run_with(config: UdsEcuConfig, reporter: Arc<dyn Reporter>) -> Result<()> {
    start(config, reporter).await?.serve().await;
    Ok(())
}

/// A bound entity, not yet serving.
pub struct Bound {
    entity: Arc<Entity>,
    tcp: TcpListener,
    udp: UdpSocket,
    reporter: Arc<dyn Reporter>,
    addr: SocketAddr,
}

impl Bound {
    /// Where it listens (TCP and UDP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until the task is dropped.
    pub async fn serve(self) {
        let udp_task = tokio::spawn(serve_udp(self.entity.clone(), self.udp));
        serve_tcp(self.entity, self.tcp, self.reporter).await;
        udp_task.abort();
    }
}

/// Opens the bootloader and binds TCP and UDP on `listen` (the system picks the port of
/// `:0`, the same for both).
pub async fn start(config: UdsEcuConfig, reporter: Arc<dyn Reporter>) -> Result<Bound> {
    let secret = service::read_secret(&config.security_secret)?;
    let bootloader = Bootloader::open(config.bootloader(), secret, Instant::now())?;
    let tcp = TcpListener::bind(&config.listen)
        .await
        .map_err(|e| Error::Config(format!("cannot listen on {}: {e}", config.listen)))?;
    let addr = tcp
        .local_addr()
        .map_err(|e| Error::Config(format!("{}: {e}", config.listen)))?;
    let udp = UdpSocket::bind(addr)
        .await
        .map_err(|e| Error::Config(format!("cannot listen on UDP {addr}: {e}")))?;
    // With port 0 the address is only known now: publish it for whoever starts us.
    rampart_client::store::write_atomic(
        &config.state_dir.join("listen-address"),
        addr.to_string().as_bytes(),
    )?;
    let running = bootloader.running().filename;
    let entity = Arc::new(Entity {
        vin: config.vin_bytes()?,
        eid: config.eid_bytes()?,
        bootloader: Mutex::new(bootloader),
        active: Mutex::new(None),
        open: AtomicUsize::new(0),
        config,
    });
    reporter.say(&format!(
        "{}: UDS over DoIP on {addr} (logical address 0x{:04X}), running {running}",
        entity.config.ecu_id, entity.config.logical_address
    ));
    Ok(Bound {
        entity,
        tcp,
        udp,
        reporter,
        addr,
    })
}

async fn serve_udp(entity: Arc<Entity>, socket: UdpSocket) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let bytes = buf.get(..n).unwrap_or_default();
        let version = bytes.first().copied().unwrap_or(2);
        let reply_version = if version == doip::ANY_VERSION {
            2
        } else {
            version
        };
        let reply = match doip::decode_datagram(bytes, 64) {
            Ok((_, Message::VehicleIdRequest)) => Some(entity.announcement()),
            Ok((_, Message::VehicleIdRequestEid(eid))) => {
                (eid == entity.eid).then(|| entity.announcement())
            }
            Ok((_, Message::VehicleIdRequestVin(vin))) => {
                (vin == entity.vin).then(|| entity.announcement())
            }
            Ok((_, Message::EntityStatusRequest)) => Some(entity.status()),
            Ok((_, Message::PowerModeRequest)) => Some(Message::PowerModeResponse(0x01)),
            Ok(_) => None,
            Err(nack) => {
                entity.record(
                    Rule::DoipFrame,
                    &format!("UDP datagram from {peer}: {}", nack.describe()),
                );
                Some(Message::GenericNack(nack as u8))
            }
        };
        if let Some(reply) = reply {
            let _ = socket.send_to(&reply.encode(reply_version), peer).await;
        }
    }
}

async fn serve_tcp(entity: Arc<Entity>, listener: TcpListener, reporter: Arc<dyn Reporter>) {
    let mut next_id = 0u64;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if entity.open.load(Ordering::Relaxed) >= usize::from(entity.config.max_sockets) {
            tracing::warn!(%peer, "DoIP socket refused: {} open", entity.config.max_sockets);
            drop(stream);
            continue;
        }
        next_id += 1;
        entity.open.fetch_add(1, Ordering::Relaxed);
        let (entity, reporter, id) = (entity.clone(), reporter.clone(), next_id);
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            connection(&entity, stream, peer, id, &*reporter).await;
            let was_active = {
                let mut active = entity.active();
                let was = active.is_some_and(|(s, _)| s == id);
                if was {
                    *active = None;
                }
                was
            };
            if was_active {
                entity.lock().tester_left();
            }
            entity.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn read_message(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    wait: Duration,
) -> Option<std::result::Result<(Header, Message), HeaderNack>> {
    // `None`: the peer closed or went quiet.
    let mut head = [0u8; HEADER_LEN];
    match tokio::time::timeout(wait, stream.read_exact(&mut head)).await {
        Ok(Ok(_)) => {}
        _ => return None,
    }
    let header = match Header::parse(&head, MAX_PAYLOAD) {
        Ok(h) => h,
        Err(nack) => return Some(Err(nack)),
    };
    let mut payload = vec![0u8; header.length as usize];
    match tokio::time::timeout(wait, stream.read_exact(&mut payload)).await {
        Ok(Ok(_)) => {}
        _ => return None,
    }
    Some(Message::decode(header.payload_type, &payload).map(|m| (header, m)))
}

/// Registers routing for `tester` on socket `id`. Another socket holding it is given the
/// alive-check time (ISO 13400-2: 500 ms) to be gone — a tester that closed its socket and
/// reconnects at once is not refused because its old socket's end is still being noticed.
async fn register(entity: &Entity, id: u64, tester: u16) -> u8 {
    let deadline = Instant::now() + ALIVE_CHECK;
    loop {
        {
            let mut active = entity.active();
            match *active {
                Some((s, _)) if s == id => return activation::SUCCESS,
                None => {
                    *active = Some((id, tester));
                    return activation::SUCCESS;
                }
                Some((_, t)) if Instant::now() >= deadline => {
                    return if t == tester {
                        activation::SOURCE_ALREADY_ACTIVE
                    } else {
                        activation::NO_FREE_SOCKET
                    };
                }
                Some(_) => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs one request on the bootloader, which writes flash (blocking I/O): in place on a
/// multi-threaded runtime (no hop to another thread per block of a flash), else on the
/// blocking pool.
async fn handle(entity: &Arc<Entity>, data: Vec<u8>) -> Option<super::bootloader::Answer> {
    let now = Instant::now();
    if tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread
    {
        return Some(tokio::task::block_in_place(|| {
            entity.lock().handle(&data, now)
        }));
    }
    let worker = entity.clone();
    match tokio::task::spawn_blocking(move || worker.lock().handle(&data, now)).await {
        Ok(a) => Some(a),
        Err(e) => {
            tracing::error!("UDS handler: {e}");
            None
        }
    }
}

/// T_TCP_Alive_Check.
const ALIVE_CHECK: Duration = Duration::from_millis(500);

async fn connection(
    entity: &Arc<Entity>,
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    reporter: &dyn Reporter,
) {
    let me = entity.config.logical_address;
    // Reads are buffered (a flash is thousands of small messages); every write is one
    // whole answer.
    let (read, mut stream) = stream.into_split();
    let mut read = tokio::io::BufReader::with_capacity(64 * 1024, read);
    let mut tester: Option<u16> = None;
    loop {
        let wait = Duration::from_millis(if tester.is_some() {
            entity.config.general_inactivity_ms
        } else {
            entity.config.initial_inactivity_ms
        });
        let (header, message) = match read_message(&mut read, wait).await {
            None => return,
            Some(Err(nack)) => {
                entity.record(
                    Rule::DoipFrame,
                    &format!("DoIP from {peer}: {}", nack.describe()),
                );
                let _ = stream
                    .write_all(&Message::GenericNack(nack as u8).encode(2))
                    .await;
                if nack.closes() {
                    return;
                }
                continue;
            }
            Some(Ok(m)) => m,
        };
        let version = if header.version == doip::ANY_VERSION {
            2
        } else {
            header.version
        };
        let send = |m: Message| m.encode(version);
        let reply = match message {
            Message::RoutingActivationRequest {
                source,
                activation_type,
                ..
            } => {
                let code = if !entity.config.tester_allowed(source) {
                    entity.record(
                        Rule::UnknownTester,
                        &format!("routing activation for tester 0x{source:04X} from {peer}"),
                    );
                    activation::UNKNOWN_SOURCE
                } else if !matches!(activation_type, 0x00 | 0x01) {
                    activation::UNSUPPORTED_TYPE
                } else {
                    register(entity, id, source).await
                };
                let bytes = send(Message::RoutingActivationResponse {
                    tester: source,
                    entity: me,
                    code,
                });
                if stream.write_all(&bytes).await.is_err() || code != activation::SUCCESS {
                    return;
                }
                tester = Some(source);
                continue;
            }
            Message::AliveCheckRequest => Message::AliveCheckResponse { source: me },
            Message::EntityStatusRequest => entity.status(),
            Message::PowerModeRequest => Message::PowerModeResponse(0x01),
            Message::VehicleIdRequest => entity.announcement(),
            Message::Diagnostic {
                source,
                target,
                data,
            } => {
                if tester != Some(source) {
                    entity.record(
                        Rule::UnknownTester,
                        &format!(
                            "diagnostic message from 0x{source:04X} without routing activation ({peer})"
                        ),
                    );
                    let _ = stream
                        .write_all(&send(Message::DiagnosticNack {
                            source: me,
                            target: source,
                            code: diag_nack::INVALID_SOURCE,
                        }))
                        .await;
                    return;
                }
                if target != me {
                    let _ = stream
                        .write_all(&send(Message::DiagnosticNack {
                            source: me,
                            target: source,
                            code: diag_nack::UNKNOWN_TARGET,
                        }))
                        .await;
                    continue;
                }
                // The acknowledgement goes first on the wire; when the answer is quick it
                // goes in the same write (one segment per block on a flash).
                let mut out = send(Message::DiagnosticAck {
                    source: me,
                    target: source,
                });
                if Bootloader::is_slow(&data) {
                    let service = data.first().copied().unwrap_or_default();
                    out.extend_from_slice(&doip::encode_diagnostic(
                        version,
                        me,
                        source,
                        &negative(service, Nrc::ResponsePending),
                    ));
                    if stream.write_all(&out).await.is_err() {
                        return;
                    }
                    out.clear();
                }
                let resetting = data.first() == Some(&service::sid::ECU_RESET);
                let before = resetting.then(|| entity.lock().running().filename);
                let answer = match handle(entity, data).await {
                    Some(a) => a,
                    None => return,
                };
                if let Some(response) = &answer.response {
                    out.extend_from_slice(&doip::encode_diagnostic(version, me, source, response));
                }
                if !out.is_empty() && stream.write_all(&out).await.is_err() {
                    return;
                }
                if answer.reset {
                    let after = entity.lock().running().filename;
                    if before.is_some_and(|b| b != after) {
                        reporter.say(&format!(
                            "{}: flashed over UDS/DoIP, now running {after}",
                            entity.config.ecu_id
                        ));
                    }
                    // A reset reboots the ECU: its DoIP sockets go with it.
                    let _ = stream.shutdown().await;
                    return;
                }
                continue;
            }
            // Answers and acknowledgements a tester sends are not requests: ignored.
            _ => continue,
        };
        if stream.write_all(&send(reply)).await.is_err() {
            return;
        }
    }
}
