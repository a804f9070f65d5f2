//! The PPTP control connection (RFC 2637 §2): message codec, a stream framer,
//! and the sans-IO light handshake ([`LightHandshake`]).
//!
//! Every control message starts with the same 12-byte header:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 2 | Length (of the whole message, header included) |
//! | 2 | 2 | PPTP Message Type (1 = control message) |
//! | 4 | 4 | Magic Cookie `0x1A2B3C4D` |
//! | 8 | 2 | Control Message Type |
//! | 10 | 2 | Reserved0 (must be 0) |
//!
//! Every message type has a fixed length; [`ControlMessage::decode`] rejects a
//! buffer whose length, length field and type disagree, a wrong cookie or
//! message type, and non-zero reserved fields. Decoding never panics.
//!
//! The Start-Control-Connection-Reply, whose offsets a popular scanner script
//! gets one byte wrong:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 12 | 2 | Protocol Version |
//! | 14 | 1 | Result Code |
//! | 15 | 1 | Error Code |
//! | 16 | 4 | Framing Capabilities |
//! | 20 | 4 | Bearer Capabilities |
//! | 24 | 2 | Maximum Channels |
//! | 26 | 2 | Firmware Revision |
//! | 28 | 64 | Host Name |
//! | 92 | 64 | Vendor String |
//!
//! ```
//! use connexa_core::pptp::control::{ControlMessage, StartControlConnectionRequest};
//!
//! let sccrq = ControlMessage::StartControlConnectionRequest(
//!     StartControlConnectionRequest::new("connexa", "connexa"),
//! );
//! let bytes = sccrq.encode();
//! assert_eq!(bytes.len(), 156);
//! assert_eq!(&bytes[4..8], &[0x1A, 0x2B, 0x3C, 0x4D]);
//! assert_eq!(ControlMessage::decode(&bytes), Ok(sccrq));
//! ```

use std::fmt;

use crate::domain::PptpIdentity;

mod framer;
mod handshake;
#[cfg(test)]
mod tests;

pub use framer::{FrameError, Framer};
pub use handshake::{HandshakeConfig, HandshakeResult, LightHandshake};

/// The magic cookie every control message carries at offset 4.
pub const MAGIC_COOKIE: u32 = 0x1A2B_3C4D;
/// PPTP Message Type of a control message (the only type RFC 2637 defines besides management, 2).
pub const CONTROL_MESSAGE: u16 = 1;
/// Length of the common header.
pub const HEADER_LEN: usize = 12;
/// The longest message the framer accepts. The longest RFC 2637 message
/// (Incoming-Call-Request) is 220 bytes; anything beyond this is not PPTP.
pub const MAX_MESSAGE_LEN: usize = 512;
/// Protocol version 1.0, the only one RFC 2637 defines.
pub const PROTOCOL_VERSION: u16 = 0x0100;
/// The PPTP control port.
pub const PPTP_PORT: u16 = 1723;

/// Framing capability bits (RFC 2637: 1 = asynchronous, 2 = synchronous).
pub mod framing {
    /// Asynchronous framing supported.
    pub const ASYNC: u32 = 1;
    /// Synchronous framing supported.
    pub const SYNC: u32 = 2;
}

/// Bearer capability bits (RFC 2637: 1 = analog, 2 = digital).
pub mod bearer {
    /// Analog access supported.
    pub const ANALOG: u32 = 1;
    /// Digital access supported.
    pub const DIGITAL: u32 = 2;
}

/// Control Message Types of RFC 2637 §2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ControlType {
    /// 1: Start-Control-Connection-Request.
    StartControlConnectionRequest,
    /// 2: Start-Control-Connection-Reply.
    StartControlConnectionReply,
    /// 3: Stop-Control-Connection-Request.
    StopControlConnectionRequest,
    /// 4: Stop-Control-Connection-Reply.
    StopControlConnectionReply,
    /// 5: Echo-Request.
    EchoRequest,
    /// 6: Echo-Reply.
    EchoReply,
    /// 7: Outgoing-Call-Request.
    OutgoingCallRequest,
    /// 8: Outgoing-Call-Reply.
    OutgoingCallReply,
    /// 9: Incoming-Call-Request (recognised, not decoded).
    IncomingCallRequest,
    /// 10: Incoming-Call-Reply (recognised, not decoded).
    IncomingCallReply,
    /// 11: Incoming-Call-Connected (recognised, not decoded).
    IncomingCallConnected,
    /// 12: Call-Clear-Request.
    CallClearRequest,
    /// 13: Call-Disconnect-Notify.
    CallDisconnectNotify,
    /// 14: WAN-Error-Notify.
    WanErrorNotify,
    /// 15: Set-Link-Info.
    SetLinkInfo,
}

impl ControlType {
    /// All types, in wire order.
    pub const ALL: [ControlType; 15] = [
        ControlType::StartControlConnectionRequest,
        ControlType::StartControlConnectionReply,
        ControlType::StopControlConnectionRequest,
        ControlType::StopControlConnectionReply,
        ControlType::EchoRequest,
        ControlType::EchoReply,
        ControlType::OutgoingCallRequest,
        ControlType::OutgoingCallReply,
        ControlType::IncomingCallRequest,
        ControlType::IncomingCallReply,
        ControlType::IncomingCallConnected,
        ControlType::CallClearRequest,
        ControlType::CallDisconnectNotify,
        ControlType::WanErrorNotify,
        ControlType::SetLinkInfo,
    ];

    /// The wire value (1..=15).
    pub fn code(self) -> u16 {
        match self {
            ControlType::StartControlConnectionRequest => 1,
            ControlType::StartControlConnectionReply => 2,
            ControlType::StopControlConnectionRequest => 3,
            ControlType::StopControlConnectionReply => 4,
            ControlType::EchoRequest => 5,
            ControlType::EchoReply => 6,
            ControlType::OutgoingCallRequest => 7,
            ControlType::OutgoingCallReply => 8,
            ControlType::IncomingCallRequest => 9,
            ControlType::IncomingCallReply => 10,
            ControlType::IncomingCallConnected => 11,
            ControlType::CallClearRequest => 12,
            ControlType::CallDisconnectNotify => 13,
            ControlType::WanErrorNotify => 14,
            ControlType::SetLinkInfo => 15,
        }
    }

    /// The type with this wire value, if RFC 2637 defines one.
    pub fn from_code(code: u16) -> Option<Self> {
        ControlType::ALL.into_iter().find(|t| t.code() == code)
    }

    /// The fixed length of a message of this type, header included.
    pub fn wire_len(self) -> usize {
        match self {
            ControlType::StartControlConnectionRequest
            | ControlType::StartControlConnectionReply => 156,
            ControlType::StopControlConnectionRequest
            | ControlType::StopControlConnectionReply
            | ControlType::EchoRequest
            | ControlType::CallClearRequest => 16,
            ControlType::EchoReply => 20,
            ControlType::OutgoingCallRequest => 168,
            ControlType::OutgoingCallReply => 32,
            ControlType::IncomingCallRequest => 220,
            ControlType::IncomingCallReply => 24,
            ControlType::IncomingCallConnected => 28,
            ControlType::CallDisconnectNotify => 148,
            ControlType::WanErrorNotify => 40,
            ControlType::SetLinkInfo => 24,
        }
    }

    /// The RFC name, e.g. `Start-Control-Connection-Reply`.
    pub fn name(self) -> &'static str {
        match self {
            ControlType::StartControlConnectionRequest => "Start-Control-Connection-Request",
            ControlType::StartControlConnectionReply => "Start-Control-Connection-Reply",
            ControlType::StopControlConnectionRequest => "Stop-Control-Connection-Request",
            ControlType::StopControlConnectionReply => "Stop-Control-Connection-Reply",
            ControlType::EchoRequest => "Echo-Request",
            ControlType::EchoReply => "Echo-Reply",
            ControlType::OutgoingCallRequest => "Outgoing-Call-Request",
            ControlType::OutgoingCallReply => "Outgoing-Call-Reply",
            ControlType::IncomingCallRequest => "Incoming-Call-Request",
            ControlType::IncomingCallReply => "Incoming-Call-Reply",
            ControlType::IncomingCallConnected => "Incoming-Call-Connected",
            ControlType::CallClearRequest => "Call-Clear-Request",
            ControlType::CallDisconnectNotify => "Call-Disconnect-Notify",
            ControlType::WanErrorNotify => "WAN-Error-Notify",
            ControlType::SetLinkInfo => "Set-Link-Info",
        }
    }
}

impl fmt::Display for ControlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A fixed-size, NUL-padded text field (host name, vendor, phone number, call
/// statistics). Keeps the exact bytes so that decode→encode is lossless.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FixedText<const N: usize>([u8; N]);

impl<const N: usize> FixedText<N> {
    /// `text`, cut to at most `N` bytes on a character boundary, NUL-padded.
    pub fn new(text: &str) -> Self {
        let mut end = text.len().min(N);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let mut bytes = [0u8; N];
        bytes[..end].copy_from_slice(&text.as_bytes()[..end]);
        FixedText(bytes)
    }

    /// The raw field.
    pub fn from_bytes(bytes: [u8; N]) -> Self {
        FixedText(bytes)
    }

    /// The raw field.
    pub fn as_bytes(&self) -> &[u8; N] {
        &self.0
    }

    /// The text up to the first NUL (the whole field if none), invalid UTF-8 replaced.
    pub fn to_string_lossy(&self) -> String {
        let end = self.0.iter().position(|b| *b == 0).unwrap_or(N);
        String::from_utf8_lossy(&self.0[..end]).into_owned()
    }
}

impl<const N: usize> Default for FixedText<N> {
    fn default() -> Self {
        FixedText([0; N])
    }
}

impl<const N: usize> fmt::Debug for FixedText<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string_lossy(), f)
    }
}

/// A 64-byte text field (host name, vendor, phone number, subaddress).
pub type Text64 = FixedText<64>;

/// Start-Control-Connection-Request (type 1, 156 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartControlConnectionRequest {
    /// Protocol version ([`PROTOCOL_VERSION`]).
    pub protocol_version: u16,
    /// Framing capabilities ([`framing`] bits).
    pub framing_capabilities: u32,
    /// Bearer capabilities ([`bearer`] bits).
    pub bearer_capabilities: u32,
    /// Maximum channels (0 for a PAC-less client).
    pub maximum_channels: u16,
    /// Firmware revision.
    pub firmware_revision: u16,
    /// Host name.
    pub host_name: Text64,
    /// Vendor string.
    pub vendor: Text64,
}

impl StartControlConnectionRequest {
    /// A request as a PNS (client) sends it: version 1.0, async+sync framing,
    /// analog+digital bearer, no channels, firmware 1.
    pub fn new(host_name: &str, vendor: &str) -> Self {
        StartControlConnectionRequest {
            protocol_version: PROTOCOL_VERSION,
            framing_capabilities: framing::ASYNC | framing::SYNC,
            bearer_capabilities: bearer::ANALOG | bearer::DIGITAL,
            maximum_channels: 0,
            firmware_revision: 1,
            host_name: Text64::new(host_name),
            vendor: Text64::new(vendor),
        }
    }
}

/// Start-Control-Connection-Reply (type 2, 156 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartControlConnectionReply {
    /// Protocol version.
    pub protocol_version: u16,
    /// Result code: 1 = success, 2..=5 see [`control_result_meaning`](crate::domain::control_result_meaning).
    pub result_code: u8,
    /// General error code (meaningful when `result_code` is 2).
    pub error_code: u8,
    /// Framing capabilities.
    pub framing_capabilities: u32,
    /// Bearer capabilities.
    pub bearer_capabilities: u32,
    /// Maximum channels.
    pub maximum_channels: u16,
    /// Firmware revision.
    pub firmware_revision: u16,
    /// Host name.
    pub host_name: Text64,
    /// Vendor string.
    pub vendor: Text64,
}

impl StartControlConnectionReply {
    /// A successful reply as a PAC (server) sends it.
    pub fn success(host_name: &str, vendor: &str, firmware_revision: u16) -> Self {
        StartControlConnectionReply {
            protocol_version: PROTOCOL_VERSION,
            result_code: 1,
            error_code: 0,
            framing_capabilities: framing::ASYNC | framing::SYNC,
            bearer_capabilities: bearer::ANALOG | bearer::DIGITAL,
            maximum_channels: 1,
            firmware_revision,
            host_name: Text64::new(host_name),
            vendor: Text64::new(vendor),
        }
    }

    /// What the server said about itself, for the domain.
    pub fn identity(&self) -> PptpIdentity {
        PptpIdentity {
            protocol_version: self.protocol_version,
            hostname: self.host_name.to_string_lossy(),
            vendor: self.vendor.to_string_lossy(),
            firmware: self.firmware_revision,
        }
    }
}

/// Stop-Control-Connection-Request (type 3, 16 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopControlConnectionRequest {
    /// Reason: 1 = none (general request), 2 = stop-protocol, 3 = stop-local-shutdown.
    pub reason: u8,
}

/// Stop-Control-Connection-Reply (type 4, 16 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopControlConnectionReply {
    /// Result code: 1 = OK, 2 = general error.
    pub result_code: u8,
    /// General error code.
    pub error_code: u8,
}

/// Echo-Request (type 5, 16 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EchoRequest {
    /// Identifier the reply repeats.
    pub identifier: u32,
}

/// Echo-Reply (type 6, 20 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EchoReply {
    /// The request's identifier.
    pub identifier: u32,
    /// Result code: 1 = OK, 2 = general error.
    pub result_code: u8,
    /// General error code.
    pub error_code: u8,
}

/// Outgoing-Call-Request (type 7, 168 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingCallRequest {
    /// The sender's call id.
    pub call_id: u16,
    /// Call serial number.
    pub call_serial_number: u16,
    /// Minimum acceptable speed, bit/s.
    pub minimum_bps: u32,
    /// Maximum acceptable speed, bit/s.
    pub maximum_bps: u32,
    /// Bearer type (1 analog, 2 digital, 3 any).
    pub bearer_type: u32,
    /// Framing type (1 async, 2 sync, 3 any).
    pub framing_type: u32,
    /// Receive window size, packets.
    pub packet_recv_window_size: u16,
    /// Packet processing delay, 1/10 s.
    pub packet_processing_delay: u16,
    /// Number of digits in `phone_number`.
    pub phone_number_length: u16,
    /// Phone number.
    pub phone_number: Text64,
    /// Subaddress.
    pub subaddress: Text64,
}

/// Outgoing-Call-Reply (type 8, 32 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutgoingCallReply {
    /// The sender's call id.
    pub call_id: u16,
    /// The call id of the Outgoing-Call-Request.
    pub peer_call_id: u16,
    /// Result code: 1 connected, 2 general error, 3 no carrier, 4 busy, 5 no dial tone, 6 time-out, 7 do not accept.
    pub result_code: u8,
    /// General error code.
    pub error_code: u8,
    /// Cause code.
    pub cause_code: u16,
    /// Connect speed, bit/s.
    pub connect_speed: u32,
    /// Receive window size, packets.
    pub packet_recv_window_size: u16,
    /// Packet processing delay, 1/10 s.
    pub packet_processing_delay: u16,
    /// Physical channel id.
    pub physical_channel_id: u32,
}

/// Call-Clear-Request (type 12, 16 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallClearRequest {
    /// The call to clear.
    pub call_id: u16,
}

/// Call-Disconnect-Notify (type 13, 148 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallDisconnectNotify {
    /// The sender's call id.
    pub call_id: u16,
    /// Result code: 1 lost carrier, 2 general error, 3 admin shutdown, 4 request.
    pub result_code: u8,
    /// General error code.
    pub error_code: u8,
    /// Cause code.
    pub cause_code: u16,
    /// Vendor-specific call statistics text (128 bytes).
    pub call_statistics: FixedText<128>,
}

/// WAN-Error-Notify (type 14, 40 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WanErrorNotify {
    /// The peer's call id.
    pub peer_call_id: u16,
    /// CRC errors.
    pub crc_errors: u32,
    /// Framing errors.
    pub framing_errors: u32,
    /// Hardware overruns.
    pub hardware_overruns: u32,
    /// Buffer overruns.
    pub buffer_overruns: u32,
    /// Time-out errors.
    pub timeout_errors: u32,
    /// Alignment errors.
    pub alignment_errors: u32,
}

/// Set-Link-Info (type 15, 24 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetLinkInfo {
    /// The peer's call id.
    pub peer_call_id: u16,
    /// Send ACCM.
    pub send_accm: u32,
    /// Receive ACCM.
    pub receive_accm: u32,
}

/// A decoded control message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ControlMessage {
    /// Type 1.
    StartControlConnectionRequest(StartControlConnectionRequest),
    /// Type 2.
    StartControlConnectionReply(StartControlConnectionReply),
    /// Type 3.
    StopControlConnectionRequest(StopControlConnectionRequest),
    /// Type 4.
    StopControlConnectionReply(StopControlConnectionReply),
    /// Type 5.
    EchoRequest(EchoRequest),
    /// Type 6.
    EchoReply(EchoReply),
    /// Type 7.
    OutgoingCallRequest(OutgoingCallRequest),
    /// Type 8.
    OutgoingCallReply(OutgoingCallReply),
    /// Type 12.
    CallClearRequest(CallClearRequest),
    /// Type 13.
    CallDisconnectNotify(CallDisconnectNotify),
    /// Type 14.
    WanErrorNotify(WanErrorNotify),
    /// Type 15.
    SetLinkInfo(SetLinkInfo),
}

/// Why bytes are not a valid control message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than the header (or than the length field) needs.
    #[error("truncated control message: {got} bytes, need {needed}")]
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        got: usize,
    },
    /// The length field disagrees with the number of bytes given.
    #[error("length field says {field} bytes but the message has {actual}")]
    LengthMismatch {
        /// The length field.
        field: u16,
        /// The bytes given.
        actual: usize,
    },
    /// The PPTP Message Type is not 1 (control).
    #[error("PPTP message type {0} is not a control message")]
    BadMessageType(u16),
    /// The magic cookie is not 0x1A2B3C4D.
    #[error("bad magic cookie {0:#010x}")]
    BadMagicCookie(u32),
    /// The Control Message Type is not one RFC 2637 defines.
    #[error("unknown control message type {0}")]
    UnknownControlType(u16),
    /// A known type this codec does not decode (the incoming-call messages).
    #[error("unsupported control message {0}")]
    Unsupported(ControlType),
    /// The length is not the fixed length of the type.
    #[error("{control_type} must be {expected} bytes, not {length}")]
    BadLength {
        /// The type.
        control_type: ControlType,
        /// The length found.
        length: usize,
        /// The length RFC 2637 fixes.
        expected: usize,
    },
    /// A reserved field is not zero.
    #[error("reserved field {field} is not zero")]
    ReservedNonZero {
        /// Which field.
        field: &'static str,
    },
}

impl DecodeError {
    /// `true` when the bytes are not PPTP at all (wrong cookie or message type),
    /// as opposed to PPTP that breaks the protocol.
    pub fn is_not_pptp(&self) -> bool {
        matches!(
            self,
            DecodeError::BadMessageType(_) | DecodeError::BadMagicCookie(_)
        )
    }
}

/// Big-endian reader over an already length-checked buffer; every read is checked.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let end = self.pos.saturating_add(N);
        let slice = self.buf.get(self.pos..end).ok_or(DecodeError::Truncated {
            needed: end,
            got: self.buf.len(),
        })?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        self.pos = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.take()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take()?))
    }
    fn text<const N: usize>(&mut self) -> Result<FixedText<N>, DecodeError> {
        Ok(FixedText(self.take()?))
    }
    fn reserved8(&mut self, field: &'static str) -> Result<(), DecodeError> {
        if self.u8()? != 0 {
            return Err(DecodeError::ReservedNonZero { field });
        }
        Ok(())
    }
    fn reserved16(&mut self, field: &'static str) -> Result<(), DecodeError> {
        if self.u16()? != 0 {
            return Err(DecodeError::ReservedNonZero { field });
        }
        Ok(())
    }
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}
fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Checks the header of a complete message (`buf` is exactly one message):
/// length field vs bytes, message type, cookie, reserved0. Returns the raw control type.
pub fn check_header(buf: &[u8]) -> Result<u16, DecodeError> {
    let mut r = Reader { buf, pos: 0 };
    if buf.len() < HEADER_LEN {
        return Err(DecodeError::Truncated {
            needed: HEADER_LEN,
            got: buf.len(),
        });
    }
    let length = r.u16()?;
    let message_type = r.u16()?;
    if message_type != CONTROL_MESSAGE {
        return Err(DecodeError::BadMessageType(message_type));
    }
    let cookie = r.u32()?;
    if cookie != MAGIC_COOKIE {
        return Err(DecodeError::BadMagicCookie(cookie));
    }
    if usize::from(length) != buf.len() {
        return Err(DecodeError::LengthMismatch {
            field: length,
            actual: buf.len(),
        });
    }
    let control_type = r.u16()?;
    r.reserved16("Reserved0")?;
    Ok(control_type)
}

impl ControlMessage {
    /// The message's Control Message Type.
    pub fn control_type(&self) -> ControlType {
        match self {
            ControlMessage::StartControlConnectionRequest(_) => {
                ControlType::StartControlConnectionRequest
            }
            ControlMessage::StartControlConnectionReply(_) => {
                ControlType::StartControlConnectionReply
            }
            ControlMessage::StopControlConnectionRequest(_) => {
                ControlType::StopControlConnectionRequest
            }
            ControlMessage::StopControlConnectionReply(_) => {
                ControlType::StopControlConnectionReply
            }
            ControlMessage::EchoRequest(_) => ControlType::EchoRequest,
            ControlMessage::EchoReply(_) => ControlType::EchoReply,
            ControlMessage::OutgoingCallRequest(_) => ControlType::OutgoingCallRequest,
            ControlMessage::OutgoingCallReply(_) => ControlType::OutgoingCallReply,
            ControlMessage::CallClearRequest(_) => ControlType::CallClearRequest,
            ControlMessage::CallDisconnectNotify(_) => ControlType::CallDisconnectNotify,
            ControlMessage::WanErrorNotify(_) => ControlType::WanErrorNotify,
            ControlMessage::SetLinkInfo(_) => ControlType::SetLinkInfo,
        }
    }

    /// The message on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.control_type().wire_len());
        self.encode_into(&mut out);
        out
    }

    /// Appends the message to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let ty = self.control_type();
        let start = out.len();
        // Every wire length is < 256, so the cast cannot truncate.
        put_u16(out, ty.wire_len() as u16);
        put_u16(out, CONTROL_MESSAGE);
        put_u32(out, MAGIC_COOKIE);
        put_u16(out, ty.code());
        put_u16(out, 0);
        match self {
            ControlMessage::StartControlConnectionRequest(m) => {
                put_u16(out, m.protocol_version);
                put_u16(out, 0);
                put_u32(out, m.framing_capabilities);
                put_u32(out, m.bearer_capabilities);
                put_u16(out, m.maximum_channels);
                put_u16(out, m.firmware_revision);
                out.extend_from_slice(m.host_name.as_bytes());
                out.extend_from_slice(m.vendor.as_bytes());
            }
            ControlMessage::StartControlConnectionReply(m) => {
                put_u16(out, m.protocol_version);
                out.push(m.result_code);
                out.push(m.error_code);
                put_u32(out, m.framing_capabilities);
                put_u32(out, m.bearer_capabilities);
                put_u16(out, m.maximum_channels);
                put_u16(out, m.firmware_revision);
                out.extend_from_slice(m.host_name.as_bytes());
                out.extend_from_slice(m.vendor.as_bytes());
            }
            ControlMessage::StopControlConnectionRequest(m) => {
                out.push(m.reason);
                out.push(0);
                put_u16(out, 0);
            }
            ControlMessage::StopControlConnectionReply(m) => {
                out.push(m.result_code);
                out.push(m.error_code);
                put_u16(out, 0);
            }
            ControlMessage::EchoRequest(m) => put_u32(out, m.identifier),
            ControlMessage::EchoReply(m) => {
                put_u32(out, m.identifier);
                out.push(m.result_code);
                out.push(m.error_code);
                put_u16(out, 0);
            }
            ControlMessage::OutgoingCallRequest(m) => {
                put_u16(out, m.call_id);
                put_u16(out, m.call_serial_number);
                put_u32(out, m.minimum_bps);
                put_u32(out, m.maximum_bps);
                put_u32(out, m.bearer_type);
                put_u32(out, m.framing_type);
                put_u16(out, m.packet_recv_window_size);
                put_u16(out, m.packet_processing_delay);
                put_u16(out, m.phone_number_length);
                put_u16(out, 0);
                out.extend_from_slice(m.phone_number.as_bytes());
                out.extend_from_slice(m.subaddress.as_bytes());
            }
            ControlMessage::OutgoingCallReply(m) => {
                put_u16(out, m.call_id);
                put_u16(out, m.peer_call_id);
                out.push(m.result_code);
                out.push(m.error_code);
                put_u16(out, m.cause_code);
                put_u32(out, m.connect_speed);
                put_u16(out, m.packet_recv_window_size);
                put_u16(out, m.packet_processing_delay);
                put_u32(out, m.physical_channel_id);
            }
            ControlMessage::CallClearRequest(m) => {
                put_u16(out, m.call_id);
                put_u16(out, 0);
            }
            ControlMessage::CallDisconnectNotify(m) => {
                put_u16(out, m.call_id);
                out.push(m.result_code);
                out.push(m.error_code);
                put_u16(out, m.cause_code);
                put_u16(out, 0);
                out.extend_from_slice(m.call_statistics.as_bytes());
            }
            ControlMessage::WanErrorNotify(m) => {
                put_u16(out, m.peer_call_id);
                put_u16(out, 0);
                put_u32(out, m.crc_errors);
                put_u32(out, m.framing_errors);
                put_u32(out, m.hardware_overruns);
                put_u32(out, m.buffer_overruns);
                put_u32(out, m.timeout_errors);
                put_u32(out, m.alignment_errors);
            }
            ControlMessage::SetLinkInfo(m) => {
                put_u16(out, m.peer_call_id);
                put_u16(out, 0);
                put_u32(out, m.send_accm);
                put_u32(out, m.receive_accm);
            }
        }
        debug_assert_eq!(out.len() - start, ty.wire_len());
    }

    /// Decodes exactly one message. `buf` must hold the whole message and
    /// nothing else (use [`Framer`] to cut a byte stream into messages).
    pub fn decode(buf: &[u8]) -> Result<ControlMessage, DecodeError> {
        let code = check_header(buf)?;
        let ty = ControlType::from_code(code).ok_or(DecodeError::UnknownControlType(code))?;
        if matches!(
            ty,
            ControlType::IncomingCallRequest
                | ControlType::IncomingCallReply
                | ControlType::IncomingCallConnected
        ) {
            return Err(DecodeError::Unsupported(ty));
        }
        if buf.len() != ty.wire_len() {
            return Err(DecodeError::BadLength {
                control_type: ty,
                length: buf.len(),
                expected: ty.wire_len(),
            });
        }
        let mut r = Reader {
            buf,
            pos: HEADER_LEN,
        };
        let msg = match ty {
            ControlType::StartControlConnectionRequest => {
                let protocol_version = r.u16()?;
                r.reserved16("Reserved1")?;
                ControlMessage::StartControlConnectionRequest(StartControlConnectionRequest {
                    protocol_version,
                    framing_capabilities: r.u32()?,
                    bearer_capabilities: r.u32()?,
                    maximum_channels: r.u16()?,
                    firmware_revision: r.u16()?,
                    host_name: r.text()?,
                    vendor: r.text()?,
                })
            }
            ControlType::StartControlConnectionReply => {
                ControlMessage::StartControlConnectionReply(StartControlConnectionReply {
                    protocol_version: r.u16()?,
                    result_code: r.u8()?,
                    error_code: r.u8()?,
                    framing_capabilities: r.u32()?,
                    bearer_capabilities: r.u32()?,
                    maximum_channels: r.u16()?,
                    firmware_revision: r.u16()?,
                    host_name: r.text()?,
                    vendor: r.text()?,
                })
            }
            ControlType::StopControlConnectionRequest => {
                let reason = r.u8()?;
                r.reserved8("Reserved1")?;
                r.reserved16("Reserved2")?;
                ControlMessage::StopControlConnectionRequest(StopControlConnectionRequest {
                    reason,
                })
            }
            ControlType::StopControlConnectionReply => {
                let result_code = r.u8()?;
                let error_code = r.u8()?;
                r.reserved16("Reserved1")?;
                ControlMessage::StopControlConnectionReply(StopControlConnectionReply {
                    result_code,
                    error_code,
                })
            }
            ControlType::EchoRequest => ControlMessage::EchoRequest(EchoRequest {
                identifier: r.u32()?,
            }),
            ControlType::EchoReply => {
                let identifier = r.u32()?;
                let result_code = r.u8()?;
                let error_code = r.u8()?;
                r.reserved16("Reserved1")?;
                ControlMessage::EchoReply(EchoReply {
                    identifier,
                    result_code,
                    error_code,
                })
            }
            ControlType::OutgoingCallRequest => {
                let call_id = r.u16()?;
                let call_serial_number = r.u16()?;
                let minimum_bps = r.u32()?;
                let maximum_bps = r.u32()?;
                let bearer_type = r.u32()?;
                let framing_type = r.u32()?;
                let packet_recv_window_size = r.u16()?;
                let packet_processing_delay = r.u16()?;
                let phone_number_length = r.u16()?;
                r.reserved16("Reserved1")?;
                ControlMessage::OutgoingCallRequest(OutgoingCallRequest {
                    call_id,
                    call_serial_number,
                    minimum_bps,
                    maximum_bps,
                    bearer_type,
                    framing_type,
                    packet_recv_window_size,
                    packet_processing_delay,
                    phone_number_length,
                    phone_number: r.text()?,
                    subaddress: r.text()?,
                })
            }
            ControlType::OutgoingCallReply => {
                ControlMessage::OutgoingCallReply(OutgoingCallReply {
                    call_id: r.u16()?,
                    peer_call_id: r.u16()?,
                    result_code: r.u8()?,
                    error_code: r.u8()?,
                    cause_code: r.u16()?,
                    connect_speed: r.u32()?,
                    packet_recv_window_size: r.u16()?,
                    packet_processing_delay: r.u16()?,
                    physical_channel_id: r.u32()?,
                })
            }
            ControlType::CallClearRequest => {
                let call_id = r.u16()?;
                r.reserved16("Reserved1")?;
                ControlMessage::CallClearRequest(CallClearRequest { call_id })
            }
            ControlType::CallDisconnectNotify => {
                let call_id = r.u16()?;
                let result_code = r.u8()?;
                let error_code = r.u8()?;
                let cause_code = r.u16()?;
                r.reserved16("Reserved1")?;
                ControlMessage::CallDisconnectNotify(CallDisconnectNotify {
                    call_id,
                    result_code,
                    error_code,
                    cause_code,
                    call_statistics: r.text()?,
                })
            }
            ControlType::WanErrorNotify => {
                let peer_call_id = r.u16()?;
                r.reserved16("Reserved1")?;
                ControlMessage::WanErrorNotify(WanErrorNotify {
                    peer_call_id,
                    crc_errors: r.u32()?,
                    framing_errors: r.u32()?,
                    hardware_overruns: r.u32()?,
                    buffer_overruns: r.u32()?,
                    timeout_errors: r.u32()?,
                    alignment_errors: r.u32()?,
                })
            }
            ControlType::SetLinkInfo => {
                let peer_call_id = r.u16()?;
                r.reserved16("Reserved1")?;
                ControlMessage::SetLinkInfo(SetLinkInfo {
                    peer_call_id,
                    send_accm: r.u32()?,
                    receive_accm: r.u32()?,
                })
            }
            ControlType::IncomingCallRequest
            | ControlType::IncomingCallReply
            | ControlType::IncomingCallConnected => return Err(DecodeError::Unsupported(ty)),
        };
        Ok(msg)
    }
}
