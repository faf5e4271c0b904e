//! DoIP (ISO 13400-2) messages, sans I/O: the 8-byte generic header and the payloads a
//! diagnostic entity and a tester exchange (vehicle identification on UDP, routing
//! activation, alive check, entity status, power mode and diagnostic messages on TCP).
//!
//! Everything a peer sends is checked before it is believed: the header's pattern (protocol
//! version and its inverse), the payload type, and the payload length against both the
//! type's fixed layout and a limit the caller sets *before* any payload is read, so a
//! declared length can never make the reader allocate more than that limit.

/// The TCP and UDP port of unsecured DoIP.
pub const PORT: u16 = 13400;
/// Length of the generic header.
pub const HEADER_LEN: usize = 8;
/// Protocol version a tester uses for requests that take any version (vehicle identification).
pub const ANY_VERSION: u8 = 0xFF;

/// Payload types (ISO 13400-2 table 17).
pub mod payload {
    /// Generic DoIP header negative acknowledge.
    pub const GENERIC_NACK: u16 = 0x0000;
    /// Vehicle identification request.
    pub const VEHICLE_ID_REQUEST: u16 = 0x0001;
    /// Vehicle identification request with EID.
    pub const VEHICLE_ID_REQUEST_EID: u16 = 0x0002;
    /// Vehicle identification request with VIN.
    pub const VEHICLE_ID_REQUEST_VIN: u16 = 0x0003;
    /// Vehicle announcement / identification response.
    pub const VEHICLE_ANNOUNCEMENT: u16 = 0x0004;
    /// Routing activation request.
    pub const ROUTING_ACTIVATION_REQUEST: u16 = 0x0005;
    /// Routing activation response.
    pub const ROUTING_ACTIVATION_RESPONSE: u16 = 0x0006;
    /// Alive check request.
    pub const ALIVE_CHECK_REQUEST: u16 = 0x0007;
    /// Alive check response.
    pub const ALIVE_CHECK_RESPONSE: u16 = 0x0008;
    /// DoIP entity status request.
    pub const ENTITY_STATUS_REQUEST: u16 = 0x4001;
    /// DoIP entity status response.
    pub const ENTITY_STATUS_RESPONSE: u16 = 0x4002;
    /// Diagnostic power mode information request.
    pub const POWER_MODE_REQUEST: u16 = 0x4003;
    /// Diagnostic power mode information response.
    pub const POWER_MODE_RESPONSE: u16 = 0x4004;
    /// Diagnostic message.
    pub const DIAGNOSTIC: u16 = 0x8001;
    /// Diagnostic message positive acknowledgement.
    pub const DIAGNOSTIC_ACK: u16 = 0x8002;
    /// Diagnostic message negative acknowledgement.
    pub const DIAGNOSTIC_NACK: u16 = 0x8003;
}

/// Generic header negative acknowledge codes (ISO 13400-2 table 19).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum HeaderNack {
    /// The protocol version and its inverse do not match, or the version is unknown: the
    /// socket is closed.
    IncorrectPattern = 0x00,
    /// A payload type this entity does not know: the message is discarded.
    UnknownPayloadType = 0x01,
    /// A payload longer than this entity takes: the socket is closed.
    MessageTooLarge = 0x02,
    /// Out of memory.
    OutOfMemory = 0x03,
    /// A payload length that does not fit its type: the socket is closed.
    InvalidPayloadLength = 0x04,
}

impl HeaderNack {
    /// Whether the entity closes the TCP socket after sending it.
    pub fn closes(self) -> bool {
        !matches!(self, HeaderNack::UnknownPayloadType)
    }

    /// What it means, for logs.
    pub fn describe(self) -> &'static str {
        match self {
            HeaderNack::IncorrectPattern => "not a DoIP header (version and its inverse)",
            HeaderNack::UnknownPayloadType => "unknown payload type",
            HeaderNack::MessageTooLarge => "message larger than the entity takes",
            HeaderNack::OutOfMemory => "out of memory",
            HeaderNack::InvalidPayloadLength => "payload length does not fit its type",
        }
    }
}

/// Routing activation response codes (ISO 13400-2 table 25).
pub mod activation {
    /// Denied: unknown source address.
    pub const UNKNOWN_SOURCE: u8 = 0x00;
    /// Denied: all sockets registered and active.
    pub const NO_FREE_SOCKET: u8 = 0x01;
    /// Denied: the source address is already active on another socket.
    pub const SOURCE_ALREADY_ACTIVE: u8 = 0x03;
    /// Denied: unsupported activation type.
    pub const UNSUPPORTED_TYPE: u8 = 0x06;
    /// Routing successfully activated.
    pub const SUCCESS: u8 = 0x10;
}

/// Diagnostic message negative acknowledgement codes (ISO 13400-2 table 29).
pub mod diag_nack {
    /// The source address is not activated on this socket.
    pub const INVALID_SOURCE: u8 = 0x02;
    /// The target address is not this entity.
    pub const UNKNOWN_TARGET: u8 = 0x03;
    /// The diagnostic message is too large.
    pub const TOO_LARGE: u8 = 0x04;
}

/// A parsed generic header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Protocol version (0x01–0x03, or 0xFF in vehicle identification requests).
    pub version: u8,
    /// Payload type.
    pub payload_type: u16,
    /// Declared payload length.
    pub length: u32,
}

impl Header {
    /// Parses and checks the 8 header bytes: the pattern, and the declared length against
    /// `max_payload` (checked here, before anything reads or allocates the payload).
    pub fn parse(bytes: &[u8; HEADER_LEN], max_payload: u32) -> Result<Header, HeaderNack> {
        let [version, inverse, t0, t1, l0, l1, l2, l3] = *bytes;
        if version != !inverse || !matches!(version, 0x01..=0x04 | ANY_VERSION) {
            return Err(HeaderNack::IncorrectPattern);
        }
        let header = Header {
            version,
            payload_type: u16::from_be_bytes([t0, t1]),
            length: u32::from_be_bytes([l0, l1, l2, l3]),
        };
        if header.length > max_payload {
            return Err(HeaderNack::MessageTooLarge);
        }
        Ok(header)
    }
}

/// A DoIP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Generic header negative acknowledge.
    GenericNack(u8),
    /// Vehicle identification request (any entity answers).
    VehicleIdRequest,
    /// Vehicle identification request naming an EID.
    VehicleIdRequestEid([u8; 6]),
    /// Vehicle identification request naming a VIN.
    VehicleIdRequestVin([u8; 17]),
    /// Vehicle announcement / identification response.
    VehicleAnnouncement {
        /// VIN.
        vin: [u8; 17],
        /// The entity's logical address.
        logical_address: u16,
        /// Entity identification (often a MAC address).
        eid: [u8; 6],
        /// Group identification.
        gid: [u8; 6],
        /// Further action required (0x00 none).
        further_action: u8,
    },
    /// Routing activation request.
    RoutingActivationRequest {
        /// The tester's logical address.
        source: u16,
        /// Activation type (0x00 default, 0x01 WWH-OBD, 0xE0 central security).
        activation_type: u8,
        /// OEM-specific data, if present.
        oem: Option<u32>,
    },
    /// Routing activation response.
    RoutingActivationResponse {
        /// The tester's logical address.
        tester: u16,
        /// The entity's logical address.
        entity: u16,
        /// Response code ([`activation`]).
        code: u8,
    },
    /// Alive check request.
    AliveCheckRequest,
    /// Alive check response.
    AliveCheckResponse {
        /// The tester's logical address.
        source: u16,
    },
    /// Entity status request.
    EntityStatusRequest,
    /// Entity status response.
    EntityStatusResponse {
        /// 0x00 gateway, 0x01 node.
        node_type: u8,
        /// Concurrent TCP sockets it takes.
        max_sockets: u8,
        /// TCP sockets open now.
        open_sockets: u8,
        /// Largest diagnostic message it takes.
        max_data_size: u32,
    },
    /// Diagnostic power mode request.
    PowerModeRequest,
    /// Diagnostic power mode response (0x01 ready).
    PowerModeResponse(u8),
    /// A diagnostic message: UDS bytes from `source` to `target`.
    Diagnostic {
        /// Sender's logical address.
        source: u16,
        /// Receiver's logical address.
        target: u16,
        /// The UDS request or response.
        data: Vec<u8>,
    },
    /// Diagnostic message positive acknowledgement.
    DiagnosticAck {
        /// The entity's address.
        source: u16,
        /// The tester's address.
        target: u16,
    },
    /// Diagnostic message negative acknowledgement.
    DiagnosticNack {
        /// The entity's address.
        source: u16,
        /// The tester's address.
        target: u16,
        /// Code ([`diag_nack`]).
        code: u8,
    },
}

fn u16_at(p: &[u8], at: usize) -> u16 {
    match p.get(at..at + 2) {
        Some(&[a, b]) => u16::from_be_bytes([a, b]),
        _ => 0,
    }
}

fn u32_at(p: &[u8], at: usize) -> u32 {
    match p.get(at..at + 4) {
        Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
        _ => 0,
    }
}

fn array<const N: usize>(p: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(s) = p.get(at..at + N) {
        out.copy_from_slice(s);
    }
    out
}

impl Message {
    /// Decodes a payload of `payload_type`. A known type whose payload does not have its
    /// layout's length is [`HeaderNack::InvalidPayloadLength`]; an unknown type is
    /// [`HeaderNack::UnknownPayloadType`].
    pub fn decode(payload_type: u16, p: &[u8]) -> Result<Message, HeaderNack> {
        use payload::*;
        let len = p.len();
        let need = |ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(HeaderNack::InvalidPayloadLength)
            }
        };
        Ok(match payload_type {
            GENERIC_NACK => {
                need(len == 1)?;
                Message::GenericNack(array::<1>(p, 0)[0])
            }
            VEHICLE_ID_REQUEST => {
                need(len == 0)?;
                Message::VehicleIdRequest
            }
            VEHICLE_ID_REQUEST_EID => {
                need(len == 6)?;
                Message::VehicleIdRequestEid(array(p, 0))
            }
            VEHICLE_ID_REQUEST_VIN => {
                need(len == 17)?;
                Message::VehicleIdRequestVin(array(p, 0))
            }
            VEHICLE_ANNOUNCEMENT => {
                need(len == 32 || len == 33)?;
                Message::VehicleAnnouncement {
                    vin: array(p, 0),
                    logical_address: u16_at(p, 17),
                    eid: array(p, 19),
                    gid: array(p, 25),
                    further_action: array::<1>(p, 31)[0],
                }
            }
            ROUTING_ACTIVATION_REQUEST => {
                need(len == 7 || len == 11)?;
                Message::RoutingActivationRequest {
                    source: u16_at(p, 0),
                    activation_type: array::<1>(p, 2)[0],
                    oem: (len == 11).then(|| u32_at(p, 7)),
                }
            }
            ROUTING_ACTIVATION_RESPONSE => {
                need(len == 9 || len == 13)?;
                Message::RoutingActivationResponse {
                    tester: u16_at(p, 0),
                    entity: u16_at(p, 2),
                    code: array::<1>(p, 4)[0],
                }
            }
            ALIVE_CHECK_REQUEST => {
                need(len == 0)?;
                Message::AliveCheckRequest
            }
            ALIVE_CHECK_RESPONSE => {
                need(len == 2)?;
                Message::AliveCheckResponse {
                    source: u16_at(p, 0),
                }
            }
            ENTITY_STATUS_REQUEST => {
                need(len == 0)?;
                Message::EntityStatusRequest
            }
            ENTITY_STATUS_RESPONSE => {
                need(len == 3 || len == 7)?;
                let [node_type, max_sockets, open_sockets] = array(p, 0);
                Message::EntityStatusResponse {
                    node_type,
                    max_sockets,
                    open_sockets,
                    max_data_size: if len == 7 { u32_at(p, 3) } else { u32::MAX },
                }
            }
            POWER_MODE_REQUEST => {
                need(len == 0)?;
                Message::PowerModeRequest
            }
            POWER_MODE_RESPONSE => {
                need(len == 1)?;
                Message::PowerModeResponse(array::<1>(p, 0)[0])
            }
            DIAGNOSTIC => {
                // At least one byte of UDS after the two addresses.
                need(len >= 5)?;
                Message::Diagnostic {
                    source: u16_at(p, 0),
                    target: u16_at(p, 2),
                    data: p.get(4..).unwrap_or_default().to_vec(),
                }
            }
            DIAGNOSTIC_ACK | DIAGNOSTIC_NACK => {
                need(len >= 5)?;
                let (source, target, code) = (u16_at(p, 0), u16_at(p, 2), array::<1>(p, 4)[0]);
                if payload_type == DIAGNOSTIC_ACK {
                    Message::DiagnosticAck { source, target }
                } else {
                    Message::DiagnosticNack {
                        source,
                        target,
                        code,
                    }
                }
            }
            _ => return Err(HeaderNack::UnknownPayloadType),
        })
    }

    /// The payload type.
    pub fn payload_type(&self) -> u16 {
        use payload::*;
        match self {
            Message::GenericNack(_) => GENERIC_NACK,
            Message::VehicleIdRequest => VEHICLE_ID_REQUEST,
            Message::VehicleIdRequestEid(_) => VEHICLE_ID_REQUEST_EID,
            Message::VehicleIdRequestVin(_) => VEHICLE_ID_REQUEST_VIN,
            Message::VehicleAnnouncement { .. } => VEHICLE_ANNOUNCEMENT,
            Message::RoutingActivationRequest { .. } => ROUTING_ACTIVATION_REQUEST,
            Message::RoutingActivationResponse { .. } => ROUTING_ACTIVATION_RESPONSE,
            Message::AliveCheckRequest => ALIVE_CHECK_REQUEST,
            Message::AliveCheckResponse { .. } => ALIVE_CHECK_RESPONSE,
            Message::EntityStatusRequest => ENTITY_STATUS_REQUEST,
            Message::EntityStatusResponse { .. } => ENTITY_STATUS_RESPONSE,
            Message::PowerModeRequest => POWER_MODE_REQUEST,
            Message::PowerModeResponse(_) => POWER_MODE_RESPONSE,
            Message::Diagnostic { .. } => DIAGNOSTIC,
            Message::DiagnosticAck { .. } => DIAGNOSTIC_ACK,
            Message::DiagnosticNack { .. } => DIAGNOSTIC_NACK,
        }
    }

    /// The payload bytes.
    pub fn payload(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Message::GenericNack(code) | Message::PowerModeResponse(code) => out.push(*code),
            Message::VehicleIdRequest
            | Message::AliveCheckRequest
            | Message::EntityStatusRequest
            | Message::PowerModeRequest => {}
            Message::VehicleIdRequestEid(eid) => out.extend_from_slice(eid),
            Message::VehicleIdRequestVin(vin) => out.extend_from_slice(vin),
            Message::VehicleAnnouncement {
                vin,
                logical_address,
                eid,
                gid,
                further_action,
            } => {
                out.extend_from_slice(vin);
                out.extend_from_slice(&logical_address.to_be_bytes());
                out.extend_from_slice(eid);
                out.extend_from_slice(gid);
                out.push(*further_action);
            }
            Message::RoutingActivationRequest {
                source,
                activation_type,
                oem,
            } => {
                out.extend_from_slice(&source.to_be_bytes());
                out.push(*activation_type);
                out.extend_from_slice(&[0; 4]);
                if let Some(oem) = oem {
                    out.extend_from_slice(&oem.to_be_bytes());
                }
            }
            Message::RoutingActivationResponse {
                tester,
                entity,
                code,
            } => {
                out.extend_from_slice(&tester.to_be_bytes());
                out.extend_from_slice(&entity.to_be_bytes());
                out.push(*code);
                out.extend_from_slice(&[0; 4]);
            }
            Message::AliveCheckResponse { source } => out.extend_from_slice(&source.to_be_bytes()),
            Message::EntityStatusResponse {
                node_type,
                max_sockets,
                open_sockets,
                max_data_size,
            } => {
                out.extend_from_slice(&[*node_type, *max_sockets, *open_sockets]);
                out.extend_from_slice(&max_data_size.to_be_bytes());
            }
            Message::Diagnostic {
                source,
                target,
                data,
            } => {
                out.extend_from_slice(&source.to_be_bytes());
                out.extend_from_slice(&target.to_be_bytes());
                out.extend_from_slice(data);
            }
            Message::DiagnosticAck { source, target } => {
                out.extend_from_slice(&source.to_be_bytes());
                out.extend_from_slice(&target.to_be_bytes());
                out.push(0x00);
            }
            Message::DiagnosticNack {
                source,
                target,
                code,
            } => {
                out.extend_from_slice(&source.to_be_bytes());
                out.extend_from_slice(&target.to_be_bytes());
                out.push(*code);
            }
        }
        out
    }

    /// The whole message: header (with `version`) and payload.
    pub fn encode(&self, version: u8) -> Vec<u8> {
        let payload = self.payload();
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.push(version);
        out.push(!version);
        out.extend_from_slice(&self.payload_type().to_be_bytes());
        out.extend_from_slice(
            &u32::try_from(payload.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        out.extend_from_slice(&payload);
        out
    }
}

/// A diagnostic message in one allocation, without building a [`Message`] (the hot path of
/// a flash: one per block, both ways).
pub fn encode_diagnostic(version: u8, source: u16, target: u16, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + 4 + data.len());
    out.extend_from_slice(&[version, !version]);
    out.extend_from_slice(&payload::DIAGNOSTIC.to_be_bytes());
    let len = u32::try_from(4 + data.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&source.to_be_bytes());
    out.extend_from_slice(&target.to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// Decodes one whole message from a datagram (UDP): header, then exactly its payload.
pub fn decode_datagram(bytes: &[u8], max_payload: u32) -> Result<(Header, Message), HeaderNack> {
    let head: [u8; HEADER_LEN] = bytes
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(HeaderNack::IncorrectPattern)?;
    let header = Header::parse(&head, max_payload)?;
    let body = bytes.get(HEADER_LEN..).unwrap_or_default();
    if body.len() != header.length as usize {
        return Err(HeaderNack::InvalidPayloadLength);
    }
    Ok((header, Message::decode(header.payload_type, body)?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_message_round_trips() {
        let messages = [
            Message::GenericNack(0x01),
            Message::VehicleIdRequest,
            Message::VehicleIdRequestEid([1, 2, 3, 4, 5, 6]),
            Message::VehicleIdRequestVin(*b"WVWZZZ1JZXW000001"),
            Message::VehicleAnnouncement {
                vin: *b"WVWZZZ1JZXW000001",
                logical_address: 0x0010,
                eid: [2, 0, 0, 0, 0, 0x10],
                gid: [0; 6],
                further_action: 0,
            },
            Message::RoutingActivationRequest {
                source: 0x0E00,
                activation_type: 0,
                oem: None,
            },
            Message::RoutingActivationRequest {
                source: 0x0E00,
                activation_type: 0,
                oem: Some(7),
            },
            Message::RoutingActivationResponse {
                tester: 0x0E00,
                entity: 0x0010,
                code: activation::SUCCESS,
            },
            Message::AliveCheckRequest,
            Message::AliveCheckResponse { source: 0x0E00 },
            Message::EntityStatusRequest,
            Message::EntityStatusResponse {
                node_type: 1,
                max_sockets: 2,
                open_sockets: 1,
                max_data_size: 4096,
            },
            Message::PowerModeRequest,
            Message::PowerModeResponse(1),
            Message::Diagnostic {
                source: 0x0E00,
                target: 0x0010,
                data: vec![0x22, 0xF1, 0x90],
            },
            Message::DiagnosticAck {
                source: 0x10,
                target: 0x0E00,
            },
            Message::DiagnosticNack {
                source: 0x10,
                target: 0x0E00,
                code: diag_nack::UNKNOWN_TARGET,
            },
        ];
        for m in messages {
            let bytes = m.encode(0x02);
            let (header, back) = decode_datagram(&bytes, 4096).unwrap();
            assert_eq!(header.version, 2);
            assert_eq!(back, m, "{m:?}");
        }
    }

    #[test]
    fn the_diagnostic_fast_path_encodes_as_the_message_does() {
        let m = Message::Diagnostic {
            source: 0x0E80,
            target: 0x0010,
            data: vec![0x36, 0x01, 1, 2, 3],
        };
        assert_eq!(
            encode_diagnostic(2, 0x0E80, 0x0010, &[0x36, 0x01, 1, 2, 3]),
            m.encode(2)
        );
    }

    #[test]
    fn a_bad_pattern_a_huge_length_and_a_wrong_layout_are_refused() {
        let mut bytes = Message::AliveCheckRequest.encode(2);
        bytes[1] = 0x00;
        assert_eq!(
            decode_datagram(&bytes, 64).unwrap_err(),
            HeaderNack::IncorrectPattern
        );
        // The declared length is refused from the header alone, before any payload.
        let head = [2, 0xFD, 0x80, 0x01, 0xFF, 0xFF, 0xFF, 0xFF];
        assert_eq!(
            Header::parse(&head, 1 << 20).unwrap_err(),
            HeaderNack::MessageTooLarge
        );
        assert_eq!(
            Message::decode(payload::ROUTING_ACTIVATION_REQUEST, &[0x0E, 0x00]).unwrap_err(),
            HeaderNack::InvalidPayloadLength
        );
        assert_eq!(
            Message::decode(0x1234, &[]).unwrap_err(),
            HeaderNack::UnknownPayloadType
        );
        assert!(!HeaderNack::UnknownPayloadType.closes());
        assert!(HeaderNack::IncorrectPattern.closes());
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x1234_5678_u64;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed & 0xFF) as u8
                })
                .collect();
            let _ = decode_datagram(&bytes, 1024);
            for t in [0x0000, 0x0004, 0x0005, 0x4002, 0x8001, 0x8003] {
                let _ = Message::decode(t, &bytes);
            }
        }
    }
}
